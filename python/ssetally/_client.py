"""``connect_usage`` / ``aconnect_usage``: stream an LLM response and always end with a usage
record, whatever happened (usage in the stream, a cut stream, no usage sent, an early break).
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import AsyncExitStack, ExitStack, asynccontextmanager, contextmanager
from typing import Any, NamedTuple

from ._core import EventTooLargeError, ServerSentEvent, SSEDecoder
from ._exceptions import SSEError, StreamTimeoutError
from ._metering import (
    Plan,
    RetrievalPolicy,
    StreamMeter,
    arun_fallbacks,
    json_body,
    redact,
    request_secrets,
    run_fallbacks,
    usage_request,
)
from ._metering._rejected import RETRIED, stream_options_rejection
from ._mime import is_event_stream
from ._report import StreamReport


class APIStatusError(Exception):
    """The server answered with a non-2xx status. ``body`` is the parsed JSON error body (or
    the text when it is not JSON)."""

    def __init__(self, status_code: int, body: Any, response: Any) -> None:
        self.status_code = status_code
        self.body = body
        self.response = response
        super().__init__(f"HTTP {status_code}: {_error_message(body)}")


def _error_message(body: Any) -> str:
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])
        if isinstance(error, str):
            return error
    return str(body)[:500]


def _parse_body(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", "replace")


def _check_response(response: Any, content: bytes | None) -> None:
    # A server or proxy may echo the credentials it got: never repeat them in an error.
    secrets = request_secrets(response.request)
    if content is not None:
        body = redact(_parse_body(content), secrets)
        raise APIStatusError(response.status_code, body, response)
    content_type = response.headers.get("content-type", "")
    if not is_event_stream(content_type):
        message = f"Expected an event stream (text/event-stream), got {content_type!r}"
        raise SSEError(redact(message, secrets))


def _prepare(
    method: str, url: Any, include_usage: bool, kwargs: dict[str, Any]
) -> tuple[dict[str, Any] | None, bool]:
    """The request body as sent, and whether ``include_usage`` was added to it."""
    body = json_body(kwargs)
    new = usage_request(method, str(url), body) if include_usage else None
    if new is None:
        return body, False
    kwargs.pop("content", None)
    kwargs["json"] = new
    return new, True


class _Sent(NamedTuple):
    """The request that got the answer being streamed: its body, whether usage was injected,
    when it was sent, and why it was sent again (a rejected injection), if it was."""

    body: dict[str, Any] | None
    injected: bool
    at: float
    retried: str | None = None


def _rejected(injected: bool, response: Any, content: bytes | None) -> str | None:
    """The server's message when it rejected the injected ``stream_options``."""
    if not injected or content is None:
        return None
    return stream_options_rejection(response.status_code, content)


def _meter_for(response: Any, sent: _Sent, timeline: bool) -> StreamMeter:
    """The meter of an answer (its Content-Encoding, the credentials of its request)."""
    meter = StreamMeter(
        request_body=sent.body,
        injected=sent.injected,
        content_encoding=response.headers.get("content-encoding", ""),
        collect_output=True,
        request_sent=sent.at,
        secrets=request_secrets(response.request),
        pass_decoded=True,
        timeline=timeline,
    )
    if sent.retried is not None:
        meter.warn(RETRIED.format(message=sent.retried))
    return meter


class _Limits(NamedTuple):
    idle: float | None = None
    deadline: float | None = None


_NO_LIMITS = _Limits()


class _Base:
    """What ``UsageStream`` and ``AsyncUsageStream`` share. They are made by
    ``connect_usage`` / ``aconnect_usage``, never called directly."""

    # help() and inspect show no constructor arguments: they are the pipeline's internals.
    __signature__ = inspect.Signature()

    def __init__(
        self,
        meter: StreamMeter,
        policy: RetrievalPolicy,
        retrieve: bool,
        estimate: bool,
        limits: _Limits = _NO_LIMITS,
    ):
        self._meter = meter
        self._limits = limits
        self._decoder = SSEDecoder()
        self._policy = policy
        self._retrieve = retrieve
        self._estimate = estimate
        self._response: Any = None
        # Set when the stream or the block was interrupted by a cancellation (asyncio, trio,
        # anyio), KeyboardInterrupt or SystemExit: the fallbacks must not wait on the network.
        self._interrupted: str | None = None
        self.report: StreamReport | None = None
        """The final report, set when the stream ends or the ``with`` block exits."""

    def require_report(self) -> StreamReport:
        """``report``, never None: raises ``RuntimeError`` inside the ``with`` block, before
        the report is made (it is always made when the block exits)."""
        if self.report is None:
            raise RuntimeError("the report is made when the connect_usage block exits")
        return self.report

    @property
    def response(self) -> Any:
        """The streaming HTTP response."""
        return self._response

    @property
    def responses(self) -> tuple[StreamReport, ...]:
        """Every response the stream held, once it ended (usually one; ``report`` is the
        last one's, and its ``warnings`` say when there were several)."""
        return self._meter.responses

    def _events(self, data: bytes) -> list[ServerSentEvent]:
        """The events ``data`` (bytes the meter passed on) completes."""
        try:
            return self._decoder.feed(data)
        except EventTooLargeError as exc:
            self._meter.warn(str(exc))
            return exc.events

    def _on_chunk(self, chunk: bytes) -> list[ServerSentEvent]:
        events = self._events(self._meter.feed(chunk))
        if self._meter.undecodable is not None:
            raise SSEError(self._meter.undecodable)
        if self._limits.idle is not None or self._limits.deadline is not None:
            self._check_limits()
        return events

    def _check_limits(self) -> None:
        """Raise ``StreamTimeoutError`` past the idle timeout or the deadline (checked as
        bytes arrive: a silent connection is the HTTP client's read timeout's job)."""
        meter = self._meter
        now = time.monotonic()
        idle, deadline = self._limits
        if deadline is not None and now - meter.request_sent > deadline:
            raise StreamTimeoutError(f"the stream passed its deadline of {deadline:g}s")
        last = meter.last_content or meter.request_sent
        if idle is not None and now - last > idle:
            raise StreamTimeoutError(f"no output for {idle:g}s (idle_timeout)")

    def _on_eof(self) -> list[ServerSentEvent]:
        """The events of what the stripper held back, at the end of the body."""
        events = self._events(self._meter.held())
        self._decoder.finish()
        self._meter.end("eof")
        return events

    def _on_error(self, exc: BaseException) -> None:
        self._note_interruption(exc)
        self._meter.end(f"{type(exc).__name__}: {exc}", by_client=self._interrupted is not None)

    def _note_interruption(self, exc: BaseException) -> None:
        """Remember a cancellation (any ``BaseException`` that is not an ``Exception``)."""
        if not isinstance(exc, Exception) and self._interrupted is None:
            self._interrupted = type(exc).__name__

    def _stream_report(self) -> tuple[StreamReport, Plan]:
        """What the stream said, and the fallback plan: shared by the sync and async streams."""
        report = self._meter.report()
        plan = self._meter.plan(
            report,
            retrieve=self._retrieve,
            estimate=self._estimate,
            request=self._sent_request(),
            interrupted=self._interrupted,
        )
        return report, plan

    def _sent_request(self) -> Any:
        """The request as sent (``url`` and ``headers``), which a retrieval reads back."""
        return self._response.request


class UsageStream(_Base):
    """A streamed LLM response: iterate it for events; ``report`` holds the usage record."""

    def __iter__(self) -> Iterator[ServerSentEvent]:
        try:
            for chunk in self._response.iter_raw():
                yield from self._on_chunk(chunk)
        except GeneratorExit:
            raise  # the caller stopped reading: "closed early"
        except BaseException as exc:
            self._on_error(exc)
            raise
        yield from self._on_eof()

    def _finalize(self, client: Any) -> StreamReport:
        report, plan = self._stream_report()
        self.report = run_fallbacks(self._meter, report, plan, client, self._policy)
        return self.report


class AsyncUsageStream(_Base):
    """Async twin of ``UsageStream``: ``async for event in stream``."""

    def _raw_chunks(self) -> AsyncIterator[bytes]:
        """The body's raw bytes as they arrive (the HTTP library's own iterator)."""
        chunks: AsyncIterator[bytes] = self._response.aiter_raw()
        return chunks

    def _getter(self, client: Any) -> Any:
        """What the retrieval calls ``get`` on."""
        return client

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        try:
            async for chunk in self._raw_chunks():
                for event in self._on_chunk(chunk):
                    yield event
        except GeneratorExit:
            raise  # the caller stopped reading: "closed early"
        except BaseException as exc:
            self._on_error(exc)
            raise
        for event in self._on_eof():
            yield event

    async def _finalize(self, client: Any) -> StreamReport:
        report, plan = self._stream_report()
        self.report = await arun_fallbacks(
            self._meter, report, plan, self._getter(client), self._policy, offload=False
        )
        return self.report


@contextmanager
def connect_usage(
    client: Any,
    method: str,
    url: Any,
    *,
    include_usage: bool = True,
    retrieve: bool = True,
    estimate: bool = True,
    retrieval: RetrievalPolicy | None = None,
    idle_timeout: float | None = None,
    deadline: float | None = None,
    timeline: bool = False,
    **kwargs: Any,
) -> Iterator[UsageStream]:
    """Stream a request with an ``httpx.Client`` or ``httpx2.Client``; yields a ``UsageStream``.

    - ``include_usage``: ask Chat/legacy Completions streams for usage when the body did not
      (the added usage chunk is not shown to the caller). A server that rejects the added
      ``stream_options`` (HTTP 400 naming it) gets the caller's request once more, unchanged;
      ``report.warnings`` says so.
    - ``retrieve``: a Responses stream that ended without its terminal event has its usage
      fetched with ``GET /responses/{id}`` (polling while it is still in progress).
    - ``estimate``: when no usage can be had, count tokens with tiktoken (``source="estimate"``).
    - ``idle_timeout`` / ``deadline``: seconds without an output-bearing event, and in all,
      after which iterating raises ``StreamTimeoutError`` (default: no limit; comments and
      pings do not reset the idle clock, so they cannot keep a stream alive forever).
    - ``timeline``: ``report.timings.timeline`` gets every output-bearing event's arrival
      time and tokens, for ITL percentiles (``Timings``); off by default.

    ``stream.report`` is set when the block exits, also after an early ``break`` or an
    exception. A non-2xx answer raises ``APIStatusError``; fallbacks never raise.
    """
    plain = dict(kwargs)  # the caller's request, sent again if the injection is rejected
    body, injected = _prepare(method, url, include_usage, kwargs)
    sent = _Sent(body, injected, time.monotonic())
    # Replaced by the meter of the answer (its Content-Encoding) once it arrives.
    meter = StreamMeter(request_body=body, injected=injected, collect_output=True)
    stream = UsageStream(
        meter, retrieval or RetrievalPolicy(), retrieve, estimate, _Limits(idle_timeout, deadline)
    )
    with ExitStack() as opened:
        response = opened.enter_context(client.stream(method, url, **kwargs))
        error_body = response.read() if response.status_code >= 300 else None
        rejected = _rejected(injected, response, error_body)
        if rejected is not None:
            opened.close()
            sent = _Sent(json_body(plain), False, time.monotonic(), rejected)
            response = opened.enter_context(client.stream(method, url, **plain))
            error_body = response.read() if response.status_code >= 300 else None
        stream._response = response
        stream._meter = _meter_for(response, sent, timeline)
        _check_response(response, error_body)
        try:
            yield stream
        except BaseException as exc:
            stream._note_interruption(exc)
            raise
        finally:
            try:
                response.close()
            finally:
                stream._finalize(client)


@asynccontextmanager
async def aconnect_usage(
    client: Any,
    method: str,
    url: Any,
    *,
    include_usage: bool = True,
    retrieve: bool = True,
    estimate: bool = True,
    retrieval: RetrievalPolicy | None = None,
    idle_timeout: float | None = None,
    deadline: float | None = None,
    timeline: bool = False,
    **kwargs: Any,
) -> AsyncIterator[AsyncUsageStream]:
    """Async twin of ``connect_usage`` for ``httpx.AsyncClient`` / ``httpx2.AsyncClient``."""
    plain = dict(kwargs)  # the caller's request, sent again if the injection is rejected
    body, injected = _prepare(method, url, include_usage, kwargs)
    sent = _Sent(body, injected, time.monotonic())
    meter = StreamMeter(request_body=body, injected=injected, collect_output=True)
    stream = AsyncUsageStream(
        meter, retrieval or RetrievalPolicy(), retrieve, estimate, _Limits(idle_timeout, deadline)
    )
    async with AsyncExitStack() as opened:
        response = await opened.enter_async_context(client.stream(method, url, **kwargs))
        error_body = await response.aread() if response.status_code >= 300 else None
        rejected = _rejected(injected, response, error_body)
        if rejected is not None:
            await opened.aclose()
            sent = _Sent(json_body(plain), False, time.monotonic(), rejected)
            response = await opened.enter_async_context(client.stream(method, url, **plain))
            error_body = await response.aread() if response.status_code >= 300 else None
        stream._response = response
        stream._meter = _meter_for(response, sent, timeline)
        _check_response(response, error_body)
        try:
            yield stream
        except BaseException as exc:
            stream._note_interruption(exc)
            raise
        finally:
            try:
                await response.aclose()
            except BaseException as exc:
                # A cancel scope still in force cancels this await too; the report is still due.
                stream._note_interruption(exc)
                raise
            finally:
                await stream._finalize(client)
