"""``UsageMiddleware``: meter every LLM answer an ASGI application sends, without changing it.

Wrap any ASGI app (FastAPI, Starlette, a hand-written one) that serves LLM answers, streamed
(``text/event-stream``) or JSON::

    app = UsageMiddleware(app, on_report=print, sink=JsonlSink("usage.jsonl"))

For a ``POST`` to an LLM path (``/chat/completions``, ``/responses``, ``/messages``...), the
request body is read first (up to ``max_body_bytes``) and replayed to the app message for
message, so the app gets the very same messages; every ``http.response.body`` message the app
sends is fed to a ``StreamMeter`` on its way out and passed on as the same object. Other
requests, websockets and lifespan events pass through untouched.

Fail-open: any metering fault is logged (without request data) and metering stops for that
response; the response itself is never altered, delayed or broken by it.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid
from collections import deque
from collections.abc import Awaitable, Callable, Mapping, MutableMapping
from typing import Any, NamedTuple, Protocol

from ._gateway._headers import fingerprint
from ._gateway._record import Exchange, build_record, now_iso
from ._iterate import deliver
from ._metering import (
    JsonCapture,
    Plan,
    RetrievalPolicy,
    StreamMeter,
    arun_fallbacks,
    inject_usage,
    is_llm_path,
    parse_json_object,
    redact_report,
    requested_model,
    skipped,
    wire_secrets,
)
from ._metering._fallback import needs_retrieval
from ._mime import is_event_stream
from ._report import StreamReport
from ._tasks import TaskSet

__all__ = ["OnReport", "RecordSink", "UsageMiddleware"]

logger = logging.getLogger("ssetally.asgi")

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

#: ``on_report(report, scope)``: called once per metered response (the scope the app got).
#: An awaitable it returns is run as a task. Exceptions are logged, never raised.
OnReport = Callable[[StreamReport, Scope], object | None]

#: Bodies parsed inline; larger ones are parsed in a worker thread.
_PARSE_INLINE_LIMIT = 256 * 1024


class RecordSink(Protocol):
    """Where records go: the proxy's sinks (``JsonlSink``, ``SqliteSink``) or anything with a
    non-blocking ``write(record) -> bool``."""

    def write(self, record: Mapping[str, Any]) -> bool: ...


class _Target(NamedTuple):
    """The request a retrieval reads back (``url`` and ``headers``, as ``StreamMeter.plan``
    expects)."""

    url: str
    headers: Mapping[str, str]


class UsageMiddleware:
    """ASGI middleware that meters the LLM answers of ``app``.

    :param app: the ASGI application.
    :param on_report: ``on_report(report, scope)``, once per event-stream answer and per JSON
        answer whose usage could be read, also when the client disconnected or the app raised.
    :param sink: gets one record per metered request (the proxy's record shape, see
        ``ssetally.asgi`` docs); ``write`` must not block.
    :param include_usage: ask Chat/legacy Completions streams for usage when the body did not
        (``stream_options.include_usage`` is added to the body the app reads, its
        ``content-length`` fixed); the usage chunk this brings is removed from what the
        client gets, byte for byte.
    :param retrieve: a Responses stream that ended without its terminal event (e.g. the client
        disconnected) has its usage read back with ``GET {upstream_url}{path}/{id}``. The
        middleware does not know where the app sends its requests: retrieval needs
        ``upstream_url`` (and ``upstream_headers`` when the app uses credentials of its own).
    :param estimate: when no usage can be had, count tokens with tiktoken (in a worker thread).
    :param max_body_bytes: request bodies up to this size are read for the model and the
        estimate (and for ``include_usage``); larger ones are passed on unread.
    :param json_capture_bytes: non-streamed JSON answers up to this size are read for usage.
    :param upstream_url: the base URL the app's paths map onto (``https://api.openai.com``
        for an app serving ``/v1/responses``), for the retrieval.
    :param upstream_headers: the credentials for the retrieval (default: the incoming
        request's ``Authorization``/``api-key``... headers).
    :param client: the ``httpx.AsyncClient`` for the retrieval (default: one created on first
        use and closed by ``aclose()`` or at lifespan shutdown).
    :param retrieval: the retrieval's deadline and backoff.
    :param instance_id: carried in every record.
    :param key_salt: salt of the API-key fingerprints in the records.
    :param shutdown_timeout: how long ``aclose()`` (and lifespan shutdown) waits for the
        fallbacks still running.
    :param timeline: give each event-stream report's ``timings`` the arrival time and tokens
        of every output-bearing event as the app sent it (``Timings.timeline``, ITL
        percentiles), from the request's arrival; off by default.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        on_report: OnReport | None = None,
        sink: RecordSink | None = None,
        include_usage: bool = False,
        retrieve: bool = False,
        estimate: bool = False,
        max_body_bytes: int = 8 * 1024 * 1024,
        json_capture_bytes: int = 8 * 1024 * 1024,
        upstream_url: str | None = None,
        upstream_headers: Mapping[str, str] | None = None,
        client: Any = None,
        retrieval: RetrievalPolicy | None = None,
        instance_id: str = "asgi",
        key_salt: str = "",
        shutdown_timeout: float = 30.0,
        timeline: bool = False,
    ) -> None:
        self.app = app
        self.timeline = timeline
        self.on_report = on_report
        self.sink = sink
        self.include_usage = include_usage
        self.retrieve = retrieve
        self.estimate = estimate
        self.max_body_bytes = max_body_bytes
        self.json_capture_bytes = json_capture_bytes
        self.upstream_url = None if upstream_url is None else upstream_url.rstrip("/")
        self.upstream_headers = None if upstream_headers is None else dict(upstream_headers)
        self.retrieval = retrieval or RetrievalPolicy()
        self.instance_id = instance_id
        self.key_salt = key_salt
        self.shutdown_timeout = shutdown_timeout
        self._client = client
        self._owns_client = client is None
        self._tasks = TaskSet()
        #: Records handed to the sink, and metering faults, so far.
        self.records = 0
        self.faults = 0

    # ------------------------------------------------------------------ ASGI

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        kind = scope.get("type")
        if kind == "http" and scope.get("method") == "POST" and is_llm_path(scope.get("path", "")):
            await _Exchange(self, scope).run(receive, send)
        elif kind == "lifespan":
            await self.app(scope, receive, self._lifespan_send(send))
        else:
            await self.app(scope, receive, send)

    def _lifespan_send(self, send: Send) -> Send:
        async def lifespan_send(message: Message) -> None:
            if message.get("type") in ("lifespan.shutdown.complete", "lifespan.shutdown.failed"):
                try:
                    await self.aclose()
                except Exception as exc:  # noqa: BLE001 - shutdown goes on
                    logger.warning("ssetally.asgi: closing failed (%s)", type(exc).__name__)
            await send(message)

        return lifespan_send

    # ------------------------------------------------------------------ lifecycle

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the fallbacks still running; True when none is left."""
        return await self._tasks.wait(timeout)

    async def aclose(self) -> None:
        """Wait (``shutdown_timeout``) for the fallbacks, cancel the rest (their records are
        still written), close the retrieval client if it was created here."""
        if not await self.wait(self.shutdown_timeout):
            await self._tasks.cancel(5)
        if self._client is not None and self._owns_client:
            client, self._client = self._client, None
            await client.aclose()

    def _retrieval_client(self) -> Any:
        if self._client is None:
            import httpx

            self._client = httpx.AsyncClient(
                timeout=httpx.Timeout(10.0), follow_redirects=False, trust_env=False
            )
        return self._client

    # ------------------------------------------------------------------ delivery

    def _fault(self, x: Exchange, stage: str, exc: BaseException | None = None) -> None:
        self.faults += 1
        why = stage if exc is None else f"{stage}: {type(exc).__name__}"
        x.notes.append(why)
        logger.warning("ssetally.asgi: metering fault (%s) on request %s", why, x.request_id)

    def _emit(self, x: Exchange, report: StreamReport | None, scope: Scope) -> None:
        """The one report and record of a request. Never raises."""
        if x.recorded:
            return
        x.recorded = True
        if report is not None:
            deliver(self.on_report, report, scope)
        if self.sink is None:
            return
        try:
            record = build_record(x, report, self.instance_id)
            if not self.sink.write(record):
                self._fault(x, "sink")
            self.records += 1
        except Exception as exc:  # noqa: BLE001 - fail open
            self._fault(x, "record", exc)

    def _spawn(self, x: Exchange, meter: StreamMeter, report: StreamReport, plan: Plan,
               scope: Scope) -> None:  # fmt: skip
        self._tasks.start(self._fallbacks(x, meter, report, plan, scope))

    async def _fallbacks(
        self, x: Exchange, meter: StreamMeter, report: StreamReport, plan: Plan, scope: Scope
    ) -> None:
        client = self._retrieval_client() if plan.retrieval is not None else None
        # The retrieval has its own deadline; this bounds the estimate and the rest too.
        limit = self.retrieval.deadline + 4 * self.retrieval.max_delay + 30.0
        try:
            final = await asyncio.wait_for(
                arun_fallbacks(meter, report, plan, client, self.retrieval), limit
            )
        except asyncio.TimeoutError:
            final = meter.complete(skipped(report, "fallback", f"timed out after {limit}s"), Plan())
        except asyncio.CancelledError:
            final = meter.complete(skipped(report, "fallback", "cancelled at shutdown"), Plan())
            self._emit(x, final, scope)
            raise
        except Exception as exc:  # noqa: BLE001 - fail open
            self._fault(x, "fallback", exc)
            final = meter.complete(report, Plan())
        self._emit(x, final, scope)


class _Exchange:
    """One metered request: the body read and replayed, the answer tapped, the report."""

    def __init__(self, owner: UsageMiddleware, scope: Scope) -> None:
        self.owner = owner
        self.scope = scope
        self.x = Exchange(
            request_id=uuid.uuid4().hex,
            time=now_iso(),
            start=time.monotonic(),
            method=str(scope.get("method", "")),
            path=str(scope.get("path", "")),
        )
        self.body: dict[str, Any] | None = None
        self.meter: StreamMeter | JsonCapture | None = None
        self.replay: deque[Message] = deque()
        self.disconnected = False
        self.started = False
        self.live = True  # False once metering stopped for this request
        self.request_headers: dict[str, str] = {}

    async def run(self, receive: Receive, send: Send) -> None:
        x = self.x
        scope = self.scope
        try:
            scope = await self._read_request(receive)
        except Exception as exc:  # noqa: BLE001 - fail open: the app gets what was read
            self.owner._fault(x, "request", exc)
            self.live = False
        except BaseException as exc:  # cancelled while reading the body: still one record
            x.outcome = "client_disconnected"
            x.ended_by = f"{type(exc).__name__} while reading the request body"
            self.owner._emit(x, None, scope)
            raise
        try:
            await self.owner.app(scope, self._receive(receive), self._send(send))
        except BaseException as exc:
            if x.ended_by is None:
                x.ended_by = f"app raised {type(exc).__name__}"
                if not self.started:
                    x.outcome = "upstream_error"
            raise
        finally:
            self._finish(scope)

    # ------------------------------------------------------------------ request

    async def _read_request(self, receive: Receive) -> Scope:
        """Read the body (bounded) for the model and the estimate; returns the scope the app
        gets (with ``include_usage`` added, its headers fixed)."""
        owner, x, scope = self.owner, self.x, self.scope
        headers: list[tuple[bytes, bytes]] = list(scope.get("headers") or [])
        query: bytes = scope.get("query_string") or b""
        text_headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in headers}
        x.secrets = wire_secrets(headers, query)
        x.key_fingerprint = fingerprint(headers, query, owner.key_salt)
        self.request_headers = text_headers

        size = 0
        complete = False
        while True:
            message = await receive()
            self.replay.append(message)
            if message.get("type") != "http.request":
                break
            size += len(message.get("body") or b"")
            if size > owner.max_body_bytes:
                break
            if not message.get("more_body", False):
                complete = True
                break
        x.request_bytes = size
        if not complete or size == 0:
            return scope
        raw = b"".join(m.get("body") or b"" for m in self.replay)
        if size <= _PARSE_INLINE_LIMIT:
            self.body = parse_json_object(raw)
        else:
            self.body = await asyncio.to_thread(parse_json_object, raw)
        x.requested_model = requested_model(self.body)
        if not owner.include_usage:
            return scope
        injection = inject_usage(x.method, x.path, self.body)
        if injection.skipped is not None:  # the app sees the request as it came
            x.warnings.append(injection.skipped)
        if injection.content is None:
            return scope
        content = injection.content
        self.replay = deque([{"type": "http.request", "body": content, "more_body": False}])
        self.body = injection.body
        x.injected = True
        fixed = [
            (k, v)
            for k, v in headers
            if k.lower() not in (b"content-length", b"transfer-encoding", b"accept-encoding")
        ]
        fixed.append((b"content-length", str(len(content)).encode()))
        # The usage chunk is removed from the raw answer: it must not be compressed.
        fixed.append((b"accept-encoding", b"identity"))
        return {**scope, "headers": fixed}

    def _receive(self, receive: Receive) -> Receive:
        replay = self.replay

        async def metered_receive() -> Message:
            if replay:
                message = replay.popleft()
            else:
                message = await receive()
            if message.get("type") == "http.disconnect":
                self.disconnected = True
            return message

        return metered_receive

    # ------------------------------------------------------------------ answer

    def _send(self, send: Send) -> Send:
        async def metered_send(message: Message) -> None:
            if self.live:
                try:
                    message = self._tap(message)
                except Exception as exc:  # noqa: BLE001 - fail open: the message as it was
                    self.live = False
                    self.owner._fault(self.x, "tap", exc)
            await send(message)

        return metered_send

    def _tap(self, message: Message) -> Message:
        kind = message.get("type")
        x = self.x
        if kind == "http.response.body":
            body: bytes = message.get("body") or b""
            x.upstream_bytes += len(body)
            meter = self.meter
            if isinstance(meter, StreamMeter):
                out = meter.feed(body)
                if not message.get("more_body", False):
                    tail = meter.held()
                    if tail:
                        out += tail
                if out is not body:
                    message = {**message, "body": out}
                x.client_bytes += len(out)
            else:
                x.client_bytes += len(body)
                if meter is not None:
                    meter.feed(body)
            if not message.get("more_body", False):
                x.ended_by = "eof"
        elif kind == "http.response.start":
            message = self._start(message)
        return message

    def _start(self, message: Message) -> Message:
        x, owner = self.x, self.owner
        self.started = True
        x.headers_at = time.monotonic()
        status = int(message.get("status", 200))
        x.http_status = x.upstream_status = status
        headers = list(message.get("headers") or [])
        content_type = encoding = ""
        for key, value in headers:
            name = key.lower()
            if name == b"content-type":
                content_type = value.decode("latin-1")
            elif name == b"content-encoding":
                encoding = value.decode("latin-1")
            elif name in (b"x-request-id", b"request-id") and x.upstream_request_id is None:
                x.upstream_request_id = value.decode("latin-1")[:200]
        x.upstream_content_encoding = encoding
        if is_event_stream(content_type):
            x.event_stream = True
            meter = StreamMeter(
                request_body=self.body,
                injected=x.injected,
                content_encoding=encoding,
                collect_output=owner.estimate,
                request_sent=x.start,
                secrets=x.secrets,
                timeline=owner.timeline,
            )
            self.meter = meter
            if meter.stripping:
                kept = [(k, v) for k, v in headers if k.lower() != b"content-length"]
                return {**message, "headers": kept}
        elif "json" in content_type.lower() and 200 <= status < 300:
            self.meter = JsonCapture(owner.json_capture_bytes, encoding)
        return message

    # ------------------------------------------------------------------ report

    def _finish(self, scope: Scope) -> None:
        """The report now, or after the fallbacks in a task. Never raises."""
        x, owner = self.x, self.owner
        if x.ended_by is None:
            x.ended_by = "client disconnected" if self.disconnected else "closed early"
        meter = self.meter
        try:
            if not isinstance(meter, StreamMeter):
                owner._emit(x, self._json_report(meter), scope)
                return
            meter.end(x.ended_by)
            x.stripped = meter.stripped
            x.notes.extend(meter.faults)
            report = meter.report()
            target = self._target()
            plan = meter.plan(
                report, retrieve=owner.retrieve, estimate=owner.estimate, request=target
            )
            if owner.retrieve and target is None and meter.metering and needs_retrieval(report):
                report = skipped(report, "retrieval", "no upstream_url to read the response back")
            if plan.due:
                owner._spawn(x, meter, report, plan, scope)
                return
            owner._emit(x, meter.complete(report, plan), scope)
        except Exception as exc:  # noqa: BLE001 - fail open
            owner._fault(x, "report", exc)
            owner._emit(x, None, scope)

    def _target(self) -> _Target | None:
        base = self.owner.upstream_url
        if base is None:
            return None
        headers = self.owner.upstream_headers
        return _Target(base + self.x.path, self.request_headers if headers is None else headers)

    def _json_report(self, capture: JsonCapture | None) -> StreamReport | None:
        if capture is None or self.x.ended_by != "eof":
            return None
        try:
            report = capture.report()
        except Exception as exc:  # noqa: BLE001 - fail open
            self.owner._fault(self.x, "json_body", exc)
            return None
        return None if report is None else redact_report(report, self.x.secrets)
