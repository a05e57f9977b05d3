"""``ssetally proxy``: a metering reverse proxy for LLM APIs.

A plain ASGI application (``MeteringProxy``) served by uvicorn. Every request is forwarded to
one fixed upstream (method, path, query, headers less the hop-by-hop ones, body); the answer is
relayed byte for byte as it arrives, and exactly one usage record per proxied request goes to
a sink (see ``ssetally.sinks``). ``/metrics`` serves Prometheus metrics.

Safety and failure rules:

* Never an open proxy: the upstream is fixed. A request target in absolute form
  (``GET http://host/...``), authority form (``CONNECT``) or asterisk form is refused with
  400; the ``Host`` header is never used for routing.
* Fail-open: a metering fault never alters or breaks a stream. It is logged and counted in
  ``ssetally_proxy_metering_failures_total``.
* A client that disconnects mid-stream closes the upstream stream; its record is still
  written (after the retrieval/estimate fallbacks, which run in the background).
* An upstream that fails mid-stream makes the proxy drop the client connection the same way,
  so the client sees the cut; an upstream that cannot be reached gives 502 (504 on timeout).
* ``metering=False`` (``--no-metering``): a pure pass-through, no meter and no records; the
  checks at the door, bounds and timeouts stay.

Scaling out: ``--workers N`` runs N processes on one port (``_supervisor``); across machines,
run instances behind a load balancer, each with its own sink and ``--instance-id``.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from .._metering import (
    JsonCapture,
    Plan,
    StreamMeter,
    arun_fallbacks,
    inject_usage,
    is_llm_path,
    parse_json_object,
    redact,
    requested_model,
    skipped,
)
from .._mime import is_event_stream
from .._report import StreamReport
from ..sinks import Sink
from ._config import ProxyConfig, http_library, safe_url
from ._exposition import run_lifespan, serve_metrics
from ._guard import BodyBudget, Refused, framing_error, normalize_path, read_body
from ._headers import (
    HOP_BY_HOP,
    Credentials,
    client_headers,
    connection_tokens,
    forward_headers,
    header,
    send_error,
)
from ._journal import Journal, in_flight_entry
from ._metrics import ProxyMetrics
from ._pools import UpstreamPool, lean_pool, stack_client, upstream_path
from ._record import Exchange, build_record, new_request_id, now_iso, subject_of
from ._relay import (
    UpstreamAborted,
    Watchdog,
    direct_cycle,
    metering_of,
    pump_direct,
    pump_lean,
    pump_stack,
    quiet_abort,
    watch_client,
)
from ._salt import key_salt
from ._trace import trace_failed_request
from ._upstream import (
    SentRequest,
    UpstreamError,
    UpstreamResponse,
    UpstreamTimeout,
    failure_name,
)

__all__ = ["MeteringProxy"]

logger = logging.getLogger("ssetally.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

_PARSE_INLINE_LIMIT = 256 * 1024


class MeteringProxy:
    """The ASGI application of the metering proxy.

    ``sink`` receives one record (a JSON-ready dict) per proxied request; ``metrics``
    defaults to a new ``ProxyMetrics``. ``client`` is the upstream ``httpx.AsyncClient`` or
    ``httpx2.AsyncClient`` (default: one with connection pooling, of the library chosen by
    ``config.upstream_client``, created at start-up and closed at shutdown). Without a
    ``client``, answers are read by the lean client of ``_upstream`` when httptools is
    installed (``upstream_client`` ``auto`` or ``httptools``); the httpx library then serves
    only the usage retrieval. ``ssl_context`` verifies an https upstream (default: certifi's
    CA bundle when installed, else the system's). ``journal`` (a worker of
    ``ssetally proxy --workers``) notes the requests in flight for the supervisor.
    """

    def __init__(
        self,
        config: ProxyConfig,
        sink: Sink,
        metrics: ProxyMetrics | None = None,
        *,
        client: Any = None,
        ssl_context: ssl.SSLContext | None = None,
        journal: Journal | None = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self._upstream = config.upstream_url()
        self._prefix = self._upstream.raw_path.rstrip(b"/")
        # scheme://[userinfo@]host[:port], the request target appended per request.
        self._origin = str(self._upstream.copy_with(raw_path=b"/"))[:-1]
        # Userinfo of the upstream URL never reaches a log line or a record.
        self._upstream_secrets = tuple(
            v for v in (self._upstream.username, self._upstream.password) if v and len(v) >= 4
        )
        self.metrics = metrics or ProxyMetrics()
        self._client = client
        self._owns_client = client is None
        #: The upstream client reading the answers: ``httptools``, ``httpx2`` or ``httpx``.
        self.upstream_path = upstream_path(config.upstream_client, client)
        self._lean = self.upstream_path == "httptools"
        name = config.upstream_client
        self._http = http_library("auto" if self._lean or name == "httptools" else name, client)
        self._ssl_context = ssl_context
        self.journal = journal
        self._pool: UpstreamPool | None = None
        self._timeout_errors: tuple[type[BaseException], ...] = (
            self._http.TimeoutException,
            UpstreamTimeout,
        )
        self._transport_errors: tuple[type[BaseException], ...] = (
            self._http.HTTPError,
            UpstreamError,
            OSError,
        )
        self._tasks: set[asyncio.Task[None]] = set()
        self._bodies = BodyBudget(config.max_inflight_body_bytes)
        if isinstance(sink, Sink):  # its counters on /metrics, its write failures as faults
            self.metrics.watch(sink)
        #: The salt of this proxy's key fingerprints (``--key-salt``, or the sink's own).
        self.key_salt = key_salt(config.key_salt, sink)
        self._credentials = Credentials(self.key_salt)
        #: Records handed to the sink so far.
        self.records_emitted = 0
        #: Requests being proxied now.
        self.active = 0
        uvicorn_logger = logging.getLogger("uvicorn.error")
        if quiet_abort not in uvicorn_logger.filters:
            uvicorn_logger.addFilter(quiet_abort)

    # ------------------------------------------------------------------ lifecycle

    def _upstream_client(self) -> Any:
        if self._client is None:
            self._client = stack_client(self._http, self.config)
        return self._client

    def _upstream_pool(self) -> UpstreamPool:
        if self._pool is None:
            self._pool = lean_pool(self._upstream, self.config, self._ssl_context)
        return self._pool

    async def startup(self) -> None:
        """Open the upstream connection pool."""
        if self._lean:
            self._upstream_pool()
        else:
            self._upstream_client()

    async def shutdown(self) -> None:
        """Wait (bounded) for the background fallbacks, close the pool, flush the sink."""
        tasks = [t for t in self._tasks if not t.done()]
        if tasks:
            _, pending = await asyncio.wait(tasks, timeout=self.config.shutdown_timeout)
            for task in pending:
                task.cancel()
            if pending:
                await asyncio.wait(pending, timeout=5)
        if self._client is not None and self._owns_client:
            await self._client.aclose()
            self._client = None
        if self._pool is not None:
            await self._pool.aclose()
            self._pool = None
        await asyncio.to_thread(self.sink.close, self.config.shutdown_timeout)

    @property
    def idle(self) -> bool:
        """True when no request is being proxied and no fallback is running."""
        return self.active == 0 and all(t.done() for t in list(self._tasks))

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope["type"]
        if kind == "http":
            if scope["path"] == self.config.metrics_path and scope["method"] in ("GET", "HEAD"):
                await serve_metrics(self.metrics, send)
                return
            self.metrics.in_flight.inc()
            self.active += 1
            try:
                await self._proxy(scope, receive, send)
            finally:
                self.active -= 1
                self.metrics.in_flight.dec()
        elif kind == "lifespan":
            await self._lifespan(receive, send)
        elif kind == "websocket":
            await send({"type": "websocket.close", "code": 1003})

    async def _lifespan(self, receive: Receive, send: Send) -> None:
        await run_lifespan(self.startup, self.shutdown, receive, send)

    # ------------------------------------------------------------------ the request

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        x = Exchange(
            request_id=new_request_id(),
            time=now_iso(),
            start=time.monotonic(),
            method=scope["method"],
            path=scope["path"] if raw_path.startswith(b"/") else "",
        )
        try:
            await self._exchange(x, scope, raw_path, receive, send)
        except BaseException as exc:
            self._bodies.give(x.budget)
            x.budget = 0
            # An upstream cut is re-raised after the fallbacks were started: they write it.
            if not x.recorded and not x.deferred:
                x.ended_by = x.ended_by or f"{type(exc).__name__}: {exc}"
                self._emit(x, None)
            raise
        self._bodies.give(x.budget)

    async def _reject(
        self, x: Exchange, send: Send, status: int, message: str, *, close: bool = False
    ) -> None:
        x.outcome = "rejected"
        x.ended_by = message
        await send_error(send, status, message, "invalid_request_error", close=close)
        x.http_status = status
        self._emit(x, None)

    async def _exchange(
        self, x: Exchange, scope: Scope, raw_path: bytes, receive: Receive, send: Send
    ) -> None:
        cfg = self.config
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        query: bytes = scope.get("query_string", b"")
        if cfg.metering:
            x.key_fingerprint, x.secrets = self._credentials(headers, query)
            x.subject = subject_of(headers, cfg.subject_header, x.secrets)

        try:
            path = normalize_path(raw_path)
            why = framing_error(headers)
            if why is not None:
                raise Refused(400, f"ambiguous request framing: {why}")
        except Refused as refused:
            await self._reject(x, send, refused.status, refused.message, close=True)
            return
        if sum(len(k) + len(v) + 4 for k, v in headers) > cfg.max_header_bytes:
            await self._reject(x, send, 431, "request header fields too large")
            return
        length = header(headers, b"content-length")
        declared = 0 if length is None else int(length.split(",", 1)[0])
        if declared > cfg.max_body_bytes:
            # The body is left unread: the connection cannot carry another request.
            await self._reject(x, send, 413, "request body too large", close=True)
            return
        try:
            body_parts = await read_body(
                receive,
                declared,
                cfg.max_body_bytes,
                cfg.body_timeout,
                lambda n: self._take_budget(x, n),
            )
        except Refused as refused:
            await self._reject(x, send, refused.status, refused.message, close=True)
            return
        except asyncio.TimeoutError:
            msg = f"the request body did not arrive within {cfg.body_timeout:g}s"
            await self._reject(x, send, 408, msg, close=True)
            return
        if body_parts is None:
            x.outcome = "client_disconnected"
            x.ended_by = "client disconnected before sending the whole body"
            self._emit(x, None)
            return
        body = b"".join(body_parts)
        x.request_bytes = len(body)

        forward = forward_headers(headers)
        parsed: dict[str, Any] | None = None
        content_type = header(headers, b"content-type") or ""
        if cfg.metering and body and "json" in content_type.lower() and is_llm_path(x.path):
            if len(body) <= _PARSE_INLINE_LIMIT:
                parsed = parse_json_object(body)
            else:
                parsed = await asyncio.to_thread(parse_json_object, body)
            x.requested_model = requested_model(parsed)
        if cfg.inject_usage:
            injection = inject_usage(x.method, x.path, parsed)
            if injection.content is not None:
                body, parsed = injection.content, injection.body
                forward = [(k, v) for k, v in forward if k.lower() != b"accept-encoding"]
                forward.append((b"accept-encoding", b"identity"))
                x.injected = True
            elif injection.skipped is not None:  # sent as it came; the record says why
                x.warnings.append(injection.skipped)
                self._failure(x, "inject")

        target = self._prefix + path + (b"?" + query if query else b"")
        self._journal(x)
        url = self._origin + target.decode("latin-1")
        request: Any
        try:
            if self._lean:
                request = SentRequest(url, forward)
                response = await self._upstream_pool().request(x.method, target, forward, body)
            else:
                request = self._http.Request(x.method, url, headers=forward, content=body or None)
                response = await self._upstream_client().send(request, stream=True)
        except self._timeout_errors as exc:
            await self._upstream_failed(x, send, 504, exc)
            return
        except self._transport_errors as exc:
            await self._upstream_failed(x, send, 502, exc)
            return
        try:
            await self._relay(x, request, parsed, response, receive, send)
        finally:
            await response.aclose()

    def _take_budget(self, x: Exchange, n: int) -> bool:
        if not self._bodies.take(n):
            self.metrics.failure("body_budget")
            return False
        x.budget += n
        return True

    async def _upstream_failed(
        self, x: Exchange, send: Send, status: int, exc: BaseException
    ) -> None:
        x.outcome = "upstream_error"
        x.ended_by = failure_name(exc)
        logger.warning(
            "ssetally proxy: upstream %s failed: %s",
            safe_url(self._upstream),
            redact(x.ended_by, self._upstream_secrets),
        )
        await send_error(send, status, "the upstream could not be reached", "upstream_error")
        x.http_status = status
        self._emit(x, None)

    # ------------------------------------------------------------------ the answer

    def _meter_for(
        self, x: Exchange, response: Any, body: dict[str, Any] | None
    ) -> StreamMeter | JsonCapture | None:
        """The meter of an event stream, the capture of a JSON answer, or None."""
        if not self.config.metering:
            return None
        content_type = response.headers.get("content-type", "")
        encoding = response.headers.get("content-encoding", "")
        x.upstream_content_encoding = encoding
        try:
            if is_event_stream(content_type):
                x.event_stream = True
                meter = StreamMeter(
                    request_body=body,
                    injected=x.injected,
                    content_encoding=encoding,
                    collect_output=self.config.estimate,
                    keep_output=False,  # records carry no output: read only for an estimate
                    request_sent=x.start,
                    secrets=x.secrets,
                    telemetry=self.config.otel,
                    price=self.config.cost,
                    # Compressed although identity was asked: decoded for the client, so
                    # that the usage chunk it did not ask for can be removed.
                    pass_decoded=x.injected,
                )
                return meter
            if 200 <= response.status_code < 300:
                if "json" in content_type.lower():
                    return JsonCapture(self.config.json_capture_bytes, encoding)
                if is_llm_path(x.path):
                    x.warnings.append(
                        f"not metered: the answer's content type {content_type[:100]!r} is "
                        "neither an event stream nor JSON"
                    )
        except Exception:  # noqa: BLE001 - fail open
            self._failure(x, "setup")
        return None

    async def _relay(
        self,
        x: Exchange,
        request: Any,
        body: dict[str, Any] | None,
        response: Any,
        receive: Receive,
        send: Send,
    ) -> None:
        x.headers_at = time.monotonic()
        x.upstream_status = response.status_code
        x.upstream_request_id = response.headers.get("x-request-id") or response.headers.get(
            "request-id"
        )
        meter = self._meter_for(x, response, body)
        hidden = connection_tokens(response.headers.get("connection"))
        out_headers = [
            (k, v)
            for k, v in response.headers.raw
            if (name := k.lower()) not in HOP_BY_HOP and name not in hidden
        ]
        if response.status_code in (204, 304):  # no body follows, whatever a length says
            out_headers = [(k, v) for k, v in out_headers if k.lower() != b"content-length"]
        if isinstance(meter, StreamMeter):
            out_headers = client_headers(meter, out_headers, x.warnings)
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": out_headers}
        )
        x.http_status = response.status_code
        self._journal(x)

        task = asyncio.current_task()
        cycle = direct_cycle(send) if isinstance(response, UpstreamResponse) else None
        watch = watch_client(x, task, cycle, receive)
        timer = Watchdog(x, meter, task, self.config.idle_timeout, self.config.stream_deadline)
        aborted: BaseException | None = None
        finished = False
        metering = metering_of(meter)
        try:
            if cycle is not None:
                await pump_direct(x, metering, response, cycle)
            elif isinstance(response, UpstreamResponse):
                await pump_lean(x, metering, response, send)
            else:
                await pump_stack(x, metering, response, send)
            tail = meter.held() if isinstance(meter, StreamMeter) else b""
            x.client_bytes += len(tail)
            x.outcome = "relayed"
            # The record first: a next request sent on seeing the end finds the proxy free.
            timer.cancel()
            finished = True
            self._finish(x, meter, request)
            await send({"type": "http.response.body", "body": tail, "more_body": False})
        except asyncio.CancelledError:
            if x.ended_by != "client disconnected" and x.timed_out is None:
                raise  # the server is shutting down: the record is written by _proxy
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
            if x.timed_out is not None:
                x.ended_by = x.timed_out
                aborted = TimeoutError(x.timed_out)
        except self._transport_errors as exc:
            x.ended_by = f"upstream failed mid-body: {failure_name(exc)}"
            aborted = exc
        finally:
            x.outcome = x.outcome or "relayed"
            watch.cancel()
            timer.cancel()
        if not finished:
            self._finish(x, meter, request)
        if aborted is not None:
            raise UpstreamAborted(x.ended_by) from aborted

    # ------------------------------------------------------------------ the record

    def _failure(self, x: Exchange, stage: str, *notes: str) -> None:
        # Counted and logged (rate-limited) by the metrics; per request only at debug level.
        logger.debug("ssetally proxy: metering fault (%s) on %s", stage, x.request_id)
        x.notes.append(stage if not notes else f"{stage}: {'; '.join(notes)}")
        self.metrics.failure(stage)

    def _finish(self, x: Exchange, meter: StreamMeter | JsonCapture | None, request: Any) -> None:
        """End of the relay: the report now, or after the fallbacks in the background."""
        try:
            if not isinstance(meter, StreamMeter):
                self._emit(x, self._json_report(x, meter))
                return
            meter.end(x.ended_by or "closed early", by_client=x.ended_by == "client disconnected")
            x.stripped = meter.stripped
            for stage in meter.faults:  # set-up, mid-stream and end-of-body faults alike
                self._failure(x, stage)
            report = meter.report()
            cfg = self.config
            plan = meter.plan(
                report,
                retrieve=cfg.retrieve,
                estimate=cfg.estimate,
                request=request,
                http_status=x.upstream_status,
            )
            if plan.due:
                task = asyncio.ensure_future(self._fallbacks(x, meter, report, plan))
                x.deferred = True
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            self._emit(x, meter.complete(report, plan), meter)
        except Exception:  # noqa: BLE001 - fail open
            self._failure(x, "report")
            self._emit(x, None)

    def _json_report(self, x: Exchange, capture: JsonCapture | None) -> StreamReport | None:
        if capture is None or x.ended_by != "eof":
            return None
        try:
            return capture.report()
        except Exception:  # noqa: BLE001 - fail open
            self._failure(x, "json_body")
            return None

    async def _fallbacks(
        self, x: Exchange, meter: StreamMeter, report: StreamReport, plan: Plan
    ) -> None:
        try:
            final = await arun_fallbacks(
                meter, report, plan, self._upstream_client(), self.config.retrieval
            )
        except asyncio.CancelledError:
            cancelled = skipped(report, "fallback", "cancelled at shutdown")
            final = meter.complete(cancelled, Plan())
        self._emit(x, final, meter)

    def _journal(self, x: Exchange) -> None:
        """Note ``x`` as in flight (what its record would say if this process died now)."""
        if self.journal is not None and self.config.metering:
            self.journal.begin(x.request_id, in_flight_entry(x))

    def _emit(
        self, x: Exchange, report: StreamReport | None, meter: StreamMeter | None = None
    ) -> None:
        """Write the one record of this request and count it. Never raises."""
        if x.recorded:
            return
        x.recorded = True
        if not self.config.metering:  # --no-metering: a pass-through writes no records
            return
        if self.config.otel:
            trace_failed_request(x, report, self._upstream)
        try:
            responses = () if meter is None else meter.responses
            record = build_record(x, report, self.config.instance_id, responses)
        except Exception:
            logger.exception("ssetally proxy: building the record failed")
            self.metrics.failure("record")
            record = {
                "time": x.time,
                "request_id": x.request_id,
                "instance_id": self.config.instance_id,
                "status": "unknown",
                "notes": ["record"],
            }
        try:
            queued = self.sink.write(record)
            if not queued:
                self.metrics.failure("sink")
            self.metrics.observe(record, queued)
            self.records_emitted += 1
        except Exception:
            logger.exception("ssetally proxy: writing the record failed")
            self.metrics.failure("sink")
        finally:
            if self.journal is not None:
                self.journal.end(x.request_id)
