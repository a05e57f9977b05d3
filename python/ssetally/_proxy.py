"""``ssetally proxy``: a metering reverse proxy for LLM APIs.

A plain ASGI application (``MeteringProxy``) served by uvicorn. Every request is forwarded to
one fixed upstream (method, path, query, headers less the hop-by-hop ones, body); the answer is
relayed byte for byte as it arrives, and exactly one usage record per proxied request goes to
a sink (JSONL or SQLite, see ``_sinks``). ``/metrics`` serves Prometheus metrics.

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

Scaling out: run several instances behind a load balancer, each with its own sink file and
``--instance-id`` (every record carries it); sum the ``/metrics`` of every instance.
"""

from __future__ import annotations

import asyncio
import hashlib
import importlib
import json
import logging
import math
import os
import socket
import threading
import time
import uuid
from collections.abc import Awaitable, Iterable, MutableMapping
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Callable
from urllib.parse import parse_qsl

import httpx

from ._core import UsageChunkStripper
from ._meter import redact_report
from ._metrics import ProxyMetrics
from ._mime import is_event_stream
from ._report import StreamReport
from ._request import wants_usage_injection, with_usage_requested
from ._retrieve import (
    RetrievalPolicy,
    RetrievalResult,
    aretrieve,
    retrieval_request,
    secrets_of,
)
from ._tally import (
    StreamTally,
    decompressor_for,
    is_llm_path,
    parse_json_object,
    report_of_json_body,
    requested_model,
    skipped,
)
from .sinks import Sink, open_sink

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["MeteringProxy", "ProxyConfig", "ProxyServer", "key_fingerprint", "serve_proxy"]

logger = logging.getLogger("ssetally.proxy")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

#: Hop-by-hop headers (RFC 9110 7.6.1) and others a proxy must not forward as they are.
_HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Request headers the proxy sets itself (httpx computes Host and Content-Length).
_REQUEST_DROP = frozenset({b"host", b"content-length", b"expect"})
#: Credentials headers whose value is fingerprinted (never stored).
_KEY_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
_PARSE_INLINE_LIMIT = 256 * 1024


def default_instance_id() -> str:
    """``HOSTNAME-PID-RANDOM``: unique per proxy process."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def key_fingerprint(key: str | None, salt: str = "") -> str | None:
    """The first 16 hex digits of SHA-256(salt + key): enough to tell keys apart, useless to
    recover one. A ``Bearer`` prefix is removed first."""
    if not key:
        return None
    parts = key.split(None, 1)
    if parts and parts[0].lower() == "bearer":
        parts = parts[1:]
    if not parts or not parts[0].strip():
        return None
    key = parts[0].strip()
    return hashlib.sha256((salt + key).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ProxyConfig:
    """Settings of a ``MeteringProxy``.

    :param upstream: the one origin (and optional path prefix) requests go to, e.g.
        ``https://api.openai.com``; the request path is appended to it.
    :param inject_usage: add ``stream_options.include_usage`` to Chat/legacy Completions
        streams that did not ask for usage, and strip the added chunk from what the client
        receives.
    :param retrieve: fetch the usage of a cut Responses stream with ``GET /responses/{id}``.
    :param estimate: count tokens with tiktoken when no usage could be had.
    :param max_body_bytes: larger request bodies get 413.
    :param max_header_bytes: larger request header sections get 431.
    :param key_salt: salt of the API key fingerprints.
    :param metrics_path: the path served by the proxy itself (not forwarded).
    :param json_capture_bytes: non-streamed JSON answers up to this size are read for usage.
    :param upstream_client: the HTTP library of the upstream pool: ``httpx2`` (its pool scales
        to hundreds of concurrent streams), ``httpx``, or ``auto`` (httpx2 when installed).
    """

    upstream: str
    inject_usage: bool = False
    retrieve: bool = True
    estimate: bool = True
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    max_connections: int = 1000
    instance_id: str = field(default_factory=default_instance_id)
    key_salt: str = ""
    metrics_path: str = "/metrics"
    retrieval: RetrievalPolicy = field(default_factory=RetrievalPolicy)
    json_capture_bytes: int = 8 * 1024 * 1024
    otel: bool = True
    shutdown_timeout: float = 30.0
    upstream_client: str = "auto"

    def upstream_url(self) -> httpx.URL:
        """The validated upstream URL."""
        url = httpx.URL(self.upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"--upstream must be an http(s) URL, got {self.upstream!r}")
        if url.query or url.fragment:
            raise ValueError("--upstream must not have a query or a fragment")
        return url


class _UpstreamAborted(Exception):
    """Raised to make the ASGI server drop the client connection, as the upstream did."""


class _QuietAbort(logging.Filter):
    """Keeps uvicorn from logging a traceback for a deliberate abort."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, _UpstreamAborted)


_quiet_abort = _QuietAbort()


def _now_iso() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass
class _Exchange:
    """Everything known about one proxied request, for its record."""

    request_id: str
    time: str
    start: float
    method: str
    path: str
    key_fingerprint: str | None = None
    #: The request's credential values, kept only to redact them from the record.
    secrets: tuple[str, ...] = ()
    requested_model: str | None = None
    request_bytes: int = 0
    injected: bool = False
    http_status: int | None = None
    upstream_status: int | None = None
    upstream_request_id: str | None = None
    headers_at: float | None = None
    event_stream: bool = False
    upstream_content_encoding: str = ""
    upstream_bytes: int = 0
    client_bytes: int = 0
    stripped: int = 0
    ended_by: str | None = None
    outcome: str | None = None
    notes: list[str] = field(default_factory=list)
    recorded: bool = False
    #: The record is left to the background fallbacks (retrieval, estimate).
    deferred: bool = False


class _Relay:
    """Per-response metering state of the relay loop."""

    __slots__ = ("capture", "capture_bytes", "stripper", "tally")

    def __init__(self) -> None:
        self.tally: StreamTally | None = None
        self.stripper: UsageChunkStripper | None = None
        self.capture: list[bytes] | None = None
        self.capture_bytes = 0


class MeteringProxy:
    """The ASGI application of the metering proxy.

    ``sink`` receives one record (a JSON-ready dict) per proxied request; ``metrics``
    defaults to a new ``ProxyMetrics``. ``client`` is the upstream ``httpx.AsyncClient`` or
    ``httpx2.AsyncClient`` (default: one with connection pooling, of the library chosen by
    ``config.upstream_client``, created at start-up and closed at shutdown).
    """

    def __init__(
        self,
        config: ProxyConfig,
        sink: Sink,
        metrics: ProxyMetrics | None = None,
        *,
        client: Any = None,
    ) -> None:
        self.config = config
        self.sink = sink
        self._upstream = config.upstream_url()
        self._prefix = self._upstream.raw_path.rstrip(b"/")
        self.metrics = metrics or ProxyMetrics(otel=config.otel, server_address=self._upstream.host)
        self._client = client
        self._owns_client = client is None
        self._http = _http_library(config.upstream_client, client)
        self._timeout_errors: tuple[type[BaseException], ...] = (self._http.TimeoutException,)
        self._transport_errors: tuple[type[BaseException], ...] = (self._http.HTTPError, OSError)
        self._tasks: set[asyncio.Task[None]] = set()
        #: Records handed to the sink so far.
        self.records_emitted = 0
        #: Requests being proxied now.
        self.active = 0
        uvicorn_logger = logging.getLogger("uvicorn.error")
        if _quiet_abort not in uvicorn_logger.filters:
            uvicorn_logger.addFilter(_quiet_abort)

    # ------------------------------------------------------------------ lifecycle

    def _upstream_client(self) -> Any:
        if self._client is None:
            cfg = self.config
            http = self._http
            self._client = http.AsyncClient(
                timeout=http.Timeout(
                    connect=cfg.connect_timeout,
                    read=cfg.read_timeout,
                    write=cfg.read_timeout,
                    pool=cfg.connect_timeout,
                ),
                limits=http.Limits(
                    max_connections=cfg.max_connections,
                    max_keepalive_connections=min(cfg.max_connections, 200),
                ),
                follow_redirects=False,
                trust_env=False,
            )
        return self._client

    async def startup(self) -> None:
        """Open the upstream connection pool."""
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
                await self._serve_metrics(send)
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
        while True:
            message = await receive()
            if message["type"] == "lifespan.startup":
                try:
                    await self.startup()
                except Exception as exc:  # noqa: BLE001 - fail open
                    await send({"type": "lifespan.startup.failed", "message": str(exc)})
                    return
                await send({"type": "lifespan.startup.complete"})
            elif message["type"] == "lifespan.shutdown":
                try:
                    await self.shutdown()
                finally:
                    await send({"type": "lifespan.shutdown.complete"})
                return

    async def _serve_metrics(self, send: Send) -> None:
        body, content_type = self.metrics.render()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [
                    (b"content-type", content_type.encode("latin-1")),
                    (b"content-length", str(len(body)).encode()),
                ],
            }
        )
        await send({"type": "http.response.body", "body": body})

    # ------------------------------------------------------------------ the request

    async def _proxy(self, scope: Scope, receive: Receive, send: Send) -> None:
        raw_path: bytes = scope.get("raw_path") or scope["path"].encode("utf-8")
        x = _Exchange(
            request_id=uuid.uuid4().hex,
            time=_now_iso(),
            start=time.monotonic(),
            method=scope["method"],
            path=scope["path"] if raw_path.startswith(b"/") else "",
        )
        try:
            await self._exchange(x, scope, raw_path, receive, send)
        except BaseException as exc:
            # An upstream cut is re-raised after the fallbacks were started: they write it.
            if not x.recorded and not x.deferred:
                x.ended_by = x.ended_by or f"{type(exc).__name__}: {exc}"
                self._emit(x, None)
            raise

    async def _reject(self, x: _Exchange, send: Send, status: int, message: str) -> None:
        x.outcome = "rejected"
        x.ended_by = message
        await _send_error(send, status, message, "invalid_request_error")
        x.http_status = status
        self._emit(x, None)

    async def _exchange(
        self, x: _Exchange, scope: Scope, raw_path: bytes, receive: Receive, send: Send
    ) -> None:
        cfg = self.config
        headers: list[tuple[bytes, bytes]] = list(scope["headers"])
        query: bytes = scope.get("query_string", b"")
        x.key_fingerprint = _fingerprint(headers, query, cfg.key_salt)
        x.secrets = secrets_of(
            {k.decode("latin-1"): v.decode("latin-1") for k, v in headers},
            "?" + query.decode("latin-1"),
        )

        if not raw_path.startswith(b"/"):
            await self._reject(
                x, send, 400, "this proxy accepts origin-form request targets only (/path)"
            )
            return
        if sum(len(k) + len(v) + 4 for k, v in headers) > cfg.max_header_bytes:
            await self._reject(x, send, 431, "request header fields too large")
            return
        declared = _header(headers, b"content-length")
        if declared is not None and declared.isdigit() and int(declared) > cfg.max_body_bytes:
            await self._reject(x, send, 413, "request body too large")
            return

        body_parts: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] == "http.disconnect":
                x.outcome = "client_disconnected"
                x.ended_by = "client disconnected before sending the whole body"
                self._emit(x, None)
                return
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > cfg.max_body_bytes:
                await self._reject(x, send, 413, "request body too large")
                return
            if chunk:
                body_parts.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(body_parts)
        x.request_bytes = len(body)

        forward = _forward_headers(headers)
        parsed: dict[str, Any] | None = None
        content_type = _header(headers, b"content-type") or ""
        if body and "json" in content_type.lower() and is_llm_path(x.path):
            try:
                if len(body) <= _PARSE_INLINE_LIMIT:
                    parsed = parse_json_object(body)
                else:
                    parsed = await asyncio.to_thread(parse_json_object, body)
            except Exception:  # noqa: BLE001 - fail open
                self._failure(x, "request_parse")
            x.requested_model = requested_model(parsed)
        if cfg.inject_usage and x.method == "POST" and parsed is not None:
            try:
                if wants_usage_injection(x.path, parsed):
                    body = json.dumps(
                        with_usage_requested(parsed), separators=(",", ":"), ensure_ascii=False
                    ).encode("utf-8")
                    forward = [(k, v) for k, v in forward if k.lower() != b"accept-encoding"]
                    forward.append((b"accept-encoding", b"identity"))
                    x.injected = True
            except Exception:  # noqa: BLE001 - fail open
                self._failure(x, "inject")

        url = self._upstream.copy_with(
            raw_path=self._prefix + raw_path + (b"?" + query if query else b"")
        )
        request = self._http.Request(x.method, str(url), headers=forward, content=body or None)
        client = self._upstream_client()
        try:
            response = await client.send(request, stream=True)
        except self._timeout_errors as exc:
            await self._upstream_failed(x, send, 504, exc)
            return
        except self._transport_errors as exc:
            await self._upstream_failed(x, send, 502, exc)
            return
        try:
            await self._relay(x, request, body, response, receive, send)
        finally:
            await response.aclose()

    async def _upstream_failed(
        self, x: _Exchange, send: Send, status: int, exc: BaseException
    ) -> None:
        x.outcome = "upstream_error"
        x.ended_by = f"{type(exc).__name__}: {exc}"
        logger.warning("ssetally proxy: upstream %s failed: %s", self._upstream, x.ended_by)
        await _send_error(send, status, "the upstream could not be reached", "upstream_error")
        x.http_status = status
        self._emit(x, None)

    # ------------------------------------------------------------------ the answer

    def _metering_for(self, x: _Exchange, response: Any) -> _Relay:
        relay = _Relay()
        content_type = response.headers.get("content-type", "")
        encoding = response.headers.get("content-encoding", "")
        x.upstream_content_encoding = encoding
        try:
            if is_event_stream(content_type):
                x.event_stream = True
                tally = StreamTally(
                    estimate=self.config.estimate, content_encoding=encoding, request_sent=x.start
                )
                if not tally.metering:
                    self._failure(x, "decode", *tally.meter.warnings)
                relay.tally = tally
                if x.injected and tally.metering and not tally.compressed:
                    relay.stripper = UsageChunkStripper()
            elif "json" in content_type.lower() and 200 <= response.status_code < 300:
                relay.capture = []
        except Exception:  # noqa: BLE001 - fail open
            self._failure(x, "setup")
        return relay

    async def _relay(
        self,
        x: _Exchange,
        request: Any,
        body: bytes,
        response: Any,
        receive: Receive,
        send: Send,
    ) -> None:
        x.headers_at = time.monotonic()
        x.upstream_status = response.status_code
        x.upstream_request_id = response.headers.get("x-request-id") or response.headers.get(
            "request-id"
        )
        relay = self._metering_for(x, response)
        out_headers = [
            (k, v)
            for k, v in response.headers.raw
            if k.lower() not in _HOP_BY_HOP and k.lower() not in _connection_tokens(response)
        ]
        if relay.stripper is not None:
            out_headers = [(k, v) for k, v in out_headers if k.lower() != b"content-length"]
        await send(
            {"type": "http.response.start", "status": response.status_code, "headers": out_headers}
        )
        x.http_status = response.status_code

        task = asyncio.current_task()
        watch = asyncio.ensure_future(_watch_disconnect(receive, x, task))
        aborted: BaseException | None = None
        try:
            await self._pump(x, relay, response, send)
        except asyncio.CancelledError:
            if x.ended_by != "client disconnected":
                raise  # the server is shutting down: the record is written by _proxy
            uncancel = getattr(task, "uncancel", None)
            if uncancel is not None:
                uncancel()
        except self._transport_errors as exc:
            x.ended_by = f"upstream failed mid-body: {type(exc).__name__}: {exc}"
            aborted = exc
        finally:
            x.outcome = x.outcome or "relayed"
            watch.cancel()
        self._finish(x, relay, request, body)
        if aborted is not None:
            raise _UpstreamAborted(x.ended_by) from aborted

    async def _pump(self, x: _Exchange, relay: _Relay, response: Any, send: Send) -> None:
        tally = relay.tally
        feed = None if tally is None else tally.feed
        stripper = relay.stripper
        capture = relay.capture
        limit = self.config.json_capture_bytes
        sender = _Sender(send)
        try:
            async for chunk in response.aiter_raw():
                x.upstream_bytes += len(chunk)
                if feed is not None:
                    feed(chunk)
                elif capture is not None:
                    relay.capture_bytes += len(chunk)
                    if relay.capture_bytes <= limit:
                        capture.append(chunk)
                    else:
                        relay.capture = capture = None
                out = chunk
                if stripper is not None:
                    try:
                        out = stripper.feed(chunk)
                    except Exception:  # noqa: BLE001 - fail open
                        # What the stripper held back is lost; pass the raw bytes from now on.
                        self._failure(x, "strip")
                        relay.stripper = stripper = None
                if out:
                    x.client_bytes += len(out)
                    if sender.put(out):
                        await sender.room()
        except asyncio.CancelledError:
            sender.cancel()
            raise
        except BaseException:
            await sender.drain()  # the client gets every byte the upstream sent, then the cut
            raise
        await sender.drain()
        x.ended_by = "eof"
        tail = b""
        if stripper is not None:
            try:
                tail = stripper.finish()
                x.stripped = stripper.stripped
            except Exception:  # noqa: BLE001 - fail open
                self._failure(x, "strip")
        x.client_bytes += len(tail)
        x.outcome = "relayed"
        await send({"type": "http.response.body", "body": tail, "more_body": False})

    # ------------------------------------------------------------------ the record

    def _failure(self, x: _Exchange, stage: str, *notes: str) -> None:
        logger.warning("ssetally proxy: metering fault (%s) on %s", stage, x.request_id)
        x.notes.append(stage if not notes else f"{stage}: {'; '.join(notes)}")
        self.metrics.failure(stage)

    def _finish(self, x: _Exchange, relay: _Relay, request: Any, body: bytes) -> None:
        """End of the relay: the report now, or after the fallbacks in the background."""
        try:
            tally = relay.tally
            if tally is None:
                report = self._json_report(x, relay)
                self._emit(x, report)
                return
            report = tally.finish(x.ended_by or "closed early")
            cfg = self.config
            if tally.needs_fallback(
                report, retrieve=cfg.retrieve, estimate=cfg.estimate
            ):
                task = asyncio.ensure_future(self._fallbacks(x, tally, report, request, body))
                x.deferred = True
                self._tasks.add(task)
                task.add_done_callback(self._tasks.discard)
                return
            self._emit(x, tally.final(report))
        except Exception:  # noqa: BLE001 - fail open
            self._failure(x, "report")
            self._emit(x, None)

    def _json_report(self, x: _Exchange, relay: _Relay) -> StreamReport | None:
        if not relay.capture or x.ended_by != "eof":
            return None
        try:
            data = b"".join(relay.capture)
            decoder = decompressor_for(x.upstream_content_encoding)
            if decoder is not None:
                data = decoder.decompress(data)
            return report_of_json_body(data)
        except Exception:  # noqa: BLE001 - fail open
            self._failure(x, "json_body")
            return None

    async def _fallbacks(
        self,
        x: _Exchange,
        tally: StreamTally,
        report: StreamReport,
        request: Any,
        body: bytes,
    ) -> None:
        cfg = self.config
        try:
            if cfg.retrieve and tally.needs_retrieval(report):
                url, headers = retrieval_request(request, report.response_id or "")
                result: RetrievalResult = await aretrieve(
                    self._upstream_client(), url, headers, cfg.retrieval
                )
                report = tally.with_retrieval(report, result)
            if cfg.estimate and report.usage is None:
                report = await asyncio.to_thread(tally.with_estimate, report, body)
        except asyncio.CancelledError:
            report = skipped(report, "fallback", "cancelled at shutdown")
        except Exception as exc:  # noqa: BLE001 - fail open
            self._failure(x, "fallback")
            report = skipped(report, "fallback", f"{type(exc).__name__}: {exc}")
        self._emit(x, tally.final(report))

    def _emit(self, x: _Exchange, report: StreamReport | None) -> None:
        """Write the one record of this request and count it. Never raises."""
        if x.recorded:
            return
        x.recorded = True
        try:
            if report is not None:
                report = redact_report(report, x.secrets)
            record = self._record(x, report)
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
            self.metrics.records.labels("queued" if queued else "dropped").inc()
            if not queued:
                self.metrics.failure("sink")
            self.metrics.observe(record)
            self.records_emitted += 1
        except Exception:
            logger.exception("ssetally proxy: writing the record failed")
            self.metrics.failure("sink")

    def _record(self, x: _Exchange, report: StreamReport | None) -> dict[str, Any]:
        status = _status(x, report)
        usage = None if report is None else report.usage
        timings = None if report is None else report.timings
        end = time.monotonic() if timings is None or timings.end is None else timings.end
        ttfb = None
        if timings is not None and timings.first_byte is not None:
            ttfb = timings.first_byte - x.start
        warnings = [] if report is None else list(report.warnings)[:10]
        return {
            "time": x.time,
            "request_id": x.request_id,
            "instance_id": self.config.instance_id,
            "key_fingerprint": x.key_fingerprint,
            "method": x.method,
            "path": x.path,
            "requested_model": x.requested_model,
            "model": (report.model if report is not None else None) or x.requested_model,
            "api": None if report is None else report.api,
            "stream": x.event_stream,
            "status": status,
            "http_status": x.http_status,
            "upstream_status": x.upstream_status,
            "upstream_request_id": x.upstream_request_id,
            "response_id": None if report is None else report.response_id,
            "finish_reason": None
            if report is None
            else report.finish_reason or report.incomplete_reason,
            "usage": None if usage is None else _usage_dict(usage),
            "usage_source": None if usage is None else usage.source,
            "attempts": []
            if report is None
            else [{"source": a.source, "ok": a.ok, "reason": a.reason} for a in report.attempts],
            "injected_usage": x.injected,
            "stripped_usage_chunks": x.stripped,
            "ended_by": x.ended_by,
            "timings": {
                "upstream_headers": None if x.headers_at is None else x.headers_at - x.start,
                "ttfb": ttfb,
                "ttft": None if timings is None else timings.ttft,
                "duration": end - x.start,
                "inter_token_latency": None if timings is None else timings.inter_token_latency,
                "output_tokens_per_s": None if timings is None else timings.output_tokens_per_s,
            },
            "bytes": {
                "request": x.request_bytes,
                "upstream": x.upstream_bytes,
                "client": x.client_bytes,
            },
            "events": None if report is None else report.events,
            "error": None if report is None else _short(report.error),
            "warnings": warnings,
            "metering_faults": x.notes,
        }


# ---------------------------------------------------------------------------- helpers


def _http_library(name: str, client: Any) -> Any:
    """The ``httpx`` or ``httpx2`` module for the upstream pool."""
    if client is not None:
        name = type(client).__module__.split(".", 1)[0]
    if name not in ("auto", "httpx", "httpx2"):
        raise ValueError(f"upstream_client must be auto, httpx or httpx2, not {name!r}")
    if name in ("auto", "httpx2"):
        try:
            return importlib.import_module("httpx2")
        except ImportError:
            if name == "httpx2":
                raise
    return httpx


def _short(value: Any, limit: int = 2000) -> Any:
    if value is None or isinstance(value, (int, float, bool)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= limit:
        return value
    return text[: limit - 3] + "..."


def _usage_dict(usage: Any) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "source": usage.source,
    }


def _status(x: _Exchange, report: StreamReport | None) -> str:
    """The record's status: the stream's own status for a relayed answer, else what
    happened (``rejected``, ``upstream_error``, ``http_error``, ``client_disconnected``)."""
    if x.outcome in ("rejected", "upstream_error", "client_disconnected"):
        return x.outcome
    if x.upstream_status is not None and x.upstream_status >= 400:
        return "http_error"
    if report is not None and (x.event_stream or report.usage is not None):
        return report.status
    if x.ended_by == "eof":
        return "completed"
    return "truncated"


def _header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def _connection_tokens(response: Any) -> frozenset[bytes]:
    value = response.headers.get("connection")
    if not value:
        return frozenset()
    return frozenset(t.strip().lower().encode("latin-1") for t in value.split(",") if t.strip())


def _forward_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    named = _header(headers, b"connection") or ""
    also = {t.strip().lower().encode("latin-1") for t in named.split(",") if t.strip()}
    return [
        (k, v)
        for k, v in headers
        if (name := k.lower()) not in _HOP_BY_HOP and name not in _REQUEST_DROP and name not in also
    ]


def _fingerprint(headers: list[tuple[bytes, bytes]], query: bytes, salt: str) -> str | None:
    for name in _KEY_HEADERS:
        value = _header(headers, name.encode())
        if value:
            return key_fingerprint(value, salt)
    if b"key=" in query:
        for k, v in parse_qsl(query.decode("latin-1")):
            if k == "key":
                return key_fingerprint(v, salt)
    return None


async def _send_error(send: Send, status: int, message: str, kind: str) -> None:
    body = json.dumps({"error": {"message": message, "type": kind, "code": None}}).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


class _Sender:
    """Relays body chunks to the client from a task of its own, so that chunks the upstream
    delivered together (already read while the previous send was under way) leave in one
    write: no chunk waits for a later one, and a loaded proxy makes fewer system calls."""

    #: Bytes waiting for the client beyond which the upstream is not read (backpressure).
    HIGH_WATER = 1024 * 1024

    def __init__(self, send: Send) -> None:
        self._send = send
        self._parts: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._done = False
        self._task = asyncio.ensure_future(self._run())

    def put(self, data: bytes) -> bool:
        """Queue ``data``; True when the caller should ``await room()`` before more."""
        self._parts.append(data)
        self._size += len(data)
        self._wake.set()
        if self._size < self.HIGH_WATER:
            return False
        self._room.clear()
        return True

    async def room(self) -> None:
        """Wait until the queued bytes went below the high-water mark."""
        await self._room.wait()

    async def _run(self) -> None:
        send = self._send
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._parts:
                parts, self._parts, self._size = self._parts, [], 0
                self._room.set()
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if self._done and not self._parts:
                return

    async def drain(self) -> None:
        """Send what is queued and stop the task."""
        self._done = True
        self._wake.set()
        await self._task

    def cancel(self) -> None:
        """Drop what is queued (the client is gone)."""
        self._task.cancel()


async def _watch_disconnect(receive: Receive, x: _Exchange, task: asyncio.Task[Any] | None) -> None:
    """Cancel the relay when the client goes away (not when the relay has finished)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if x.outcome is None and task is not None:
                x.ended_by = "client disconnected"
                task.cancel()
            return


# ---------------------------------------------------------------------------- running it


def _uvicorn_config(
    app: MeteringProxy, host: str, port: int, log_level: str, http: str = "auto"
) -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            "the metering proxy needs uvicorn: pip install 'ssetally[proxy]'"
        ) from exc
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        http=http,
        log_level=log_level,
        access_log=False,
        server_header=False,
        date_header=False,
        # The application answers 431 itself; the parser only stops absurd header sections.
        h11_max_incomplete_event_size=app.config.max_header_bytes + 64 * 1024,
        timeout_graceful_shutdown=math.ceil(app.config.shutdown_timeout),
        backlog=2048,
        proxy_headers=False,
    )


def serve_proxy(
    config: ProxyConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    sink: str = "jsonl:ssetally-usage.jsonl",
    log_level: str = "info",
    http: str = "auto",
) -> None:
    """Run the proxy in the calling thread until interrupted (what ``ssetally proxy`` does).

    ``http`` is uvicorn's HTTP implementation: ``h11`` refuses absolute-form request targets
    with 400; ``httptools`` (faster; ``auto`` picks it when installed) reduces them to their
    path, so they still go to the fixed upstream only.
    """
    import uvicorn

    app = MeteringProxy(config, open_sink(sink))
    try:
        uvicorn.Server(_uvicorn_config(app, host, port, log_level, http)).run()
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled, after a graceful shutdown (records flushed).
        pass


class ProxyServer:
    """A metering proxy served by uvicorn from a background thread (tests, benchmarks,
    embedding). ``with ProxyServer(config, sink) as proxy:`` listens on ``proxy.url`` until the
    block ends; on exit the fallbacks finish and the sink is flushed and closed.
    """

    def __init__(
        self,
        config: ProxyConfig,
        sink: Sink | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        start_timeout: float = 10.0,
        http: str = "auto",
    ) -> None:
        self.app = MeteringProxy(config, open_sink(sink) if isinstance(sink, str) else sink)
        self._http = http
        self.host = host
        self._port = port
        self._log_level = log_level
        self._start_timeout = start_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def sink(self) -> Sink:
        """Where the records go."""
        return self.app.sink

    @property
    def metrics(self) -> ProxyMetrics:
        """The proxy's metrics."""
        return self.app.metrics

    @property
    def port(self) -> int:
        """The bound port."""
        if self._socket is not None:
            return int(self._socket.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"

    def start(self) -> Self:
        """Bind and serve from a daemon thread; returns once the server accepts."""
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._socket = sock
        self._server = uvicorn.Server(
            _uvicorn_config(self.app, self.host, 0, self._log_level, self._http)
        )
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"ssetally-proxy:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the proxy did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving, finish the fallbacks, flush and close the sink. Idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
        self.app.sink.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until no request is in flight and every record is written to the sink."""
        deadline = time.monotonic() + timeout
        while not self.app.idle:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return self.app.sink.flush(max(0.0, deadline - time.monotonic()))
