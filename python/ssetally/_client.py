"""``connect_usage`` / ``aconnect_usage``: stream an LLM response and always end with a usage
record, whatever happened (usage in the stream, a cut stream, no usage sent, an early break).
"""

from __future__ import annotations

import inspect
import json
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import (
    AbstractAsyncContextManager,
    AsyncExitStack,
    ExitStack,
    asynccontextmanager,
    contextmanager,
)
from functools import partial
from typing import TYPE_CHECKING, Any, NamedTuple, TypeVar

from ._core import EventTooLargeError, ServerSentEvent, SSEDecoder
from ._exceptions import SSEError, StreamTimeoutError
from ._metering import (
    Plan,
    RetrievalPolicy,
    StreamMeter,
    arun_fallbacks,
    inject_usage,
    parse_json_object,
    redact,
    request_secrets,
    run_fallbacks,
)
from ._metering._decode import MAX_ERROR_BODY, Body, aread_response, read_response
from ._metering._rejected import RETRIED, stream_options_rejection
from ._mime import is_event_stream
from ._report import StreamReport

if TYPE_CHECKING:
    from typing_extensions import ParamSpec

    _P = ParamSpec("_P")
    _T = TypeVar("_T")


class APIStatusError(Exception):
    """The server answered with a non-2xx status. ``body`` is the parsed JSON error body (or
    the text when it is not JSON), read raw and decoded with a bound: at most 64 KiB
    (``MAX_ERROR_BODY``) of it is kept, and ``truncated`` then says why the rest is missing
    (None for a whole body)."""

    def __init__(
        self, status_code: int, body: Any, response: Any, truncated: str | None = None
    ) -> None:
        self.status_code = status_code
        self.body = body
        self.response = response
        self.truncated = truncated
        cut = "" if truncated is None else f" (error body truncated: {truncated})"
        super().__init__(f"HTTP {status_code}: {_error_message(body)}{cut}")


def _error_message(body: Any) -> str:
    if isinstance(body, Mapping):
        error = body.get("error")
        if isinstance(error, Mapping) and error.get("message"):
            return str(error["message"])[:500]
        if isinstance(error, str):
            return error[:500]
    return str(body)[:500]


def _parse_body(content: bytes) -> Any:
    try:
        return json.loads(content)
    except (ValueError, RecursionError):
        return content.decode("utf-8", "replace")


def _check_response(
    status: int, content_type: str, secrets: tuple[str, ...], error: Body | None, response: Any
) -> None:
    """Raise for an error answer (``error``: its bounded body) or one that is no event stream."""
    # A server or proxy may echo the credentials it got: never repeat them in an error.
    if error is not None:
        body = redact(_parse_body(error.content), secrets)
        raise APIStatusError(status, body, response, error.truncated)
    if not is_event_stream(content_type):
        message = f"Expected an event stream (text/event-stream), got {content_type!r}"
        raise SSEError(redact(message, secrets))


def _error_body(response: Any) -> Body | None:
    """The bounded, decoded body of an error answer (status >= 300), read raw; else None."""
    if response.status_code < 300:
        return None
    return read_response(response, MAX_ERROR_BODY)


async def _aerror_body(response: Any) -> Body | None:
    """Async twin of ``_error_body``."""
    if response.status_code < 300:
        return None
    return await aread_response(response, MAX_ERROR_BODY)


def _prepare(
    method: str, url: Any, include_usage: bool, kwargs: dict[str, Any], raw: str = "content"
) -> tuple[dict[str, Any] | None, bool, str | None]:
    """The request body as sent (``json=``, or JSON in ``kwargs[raw]``), whether
    ``include_usage`` was added to it, and why not when it could not be.

    A body that cannot be encoded again (a lone surrogate, a NaN) is left as the caller gave
    it: the HTTP library sends it, or raises, exactly as it would without ssetally."""
    body = kwargs.get("json")
    if body is None:
        data = kwargs.get(raw)
        body = parse_json_object(data) if isinstance(data, (bytes, str)) else None
    elif not isinstance(body, dict):
        body = None
    if not include_usage:
        return body, False, None
    injection = inject_usage(method, str(url), body)
    if injection.body is None:
        return body, False, injection.skipped
    kwargs.pop(raw, None)
    kwargs["json"] = injection.body
    return injection.body, True, None


class _Sent(NamedTuple):
    """The request that got the answer being streamed: its body, whether usage was injected,
    when it was sent, why it was sent again (a rejected injection), if it was, and why usage
    could not be injected, if it could not."""

    body: dict[str, Any] | None
    injected: bool
    at: float
    retried: str | None = None
    skipped: str | None = None


def _rejected(sent: _Sent, status: int, error: Body | None) -> str | None:
    """The server's message when it rejected the injected ``stream_options`` (a whole error
    body only: a truncated one is passed on as it is)."""
    if not sent.injected or error is None or error.truncated is not None:
        return None
    return stream_options_rejection(status, error.content)


#: The meters of a client's stream: they keep the output text (the report's ``output``, the
#: estimate), and are fed the raw body (the library's decoder is bypassed), which they decode
#: and pass on decoded.
_client_meter = partial(StreamMeter, collect_output=True, pass_decoded=True)


def _meter_for(
    sent: _Sent, content_encoding: str, secrets: tuple[str, ...], timeline: bool
) -> StreamMeter:
    """The meter of an answer (its Content-Encoding, the credentials of its request)."""
    meter = _client_meter(
        request_body=sent.body,
        injected=sent.injected,
        content_encoding=content_encoding,
        request_sent=sent.at,
        secrets=secrets,
        timeline=timeline,
    )
    if sent.retried is not None:
        meter.warn(RETRIED.format(message=sent.retried))
    if sent.skipped is not None:
        meter.warn(sent.skipped)
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


class _Options(NamedTuple):
    """The front-ends' own arguments (the rest go to the HTTP library)."""

    include_usage: bool = True
    retrieve: bool = True
    estimate: bool = True
    retrieval: RetrievalPolicy | None = None
    idle_timeout: float | None = None
    deadline: float | None = None
    timeline: bool = False


_S = TypeVar("_S", bound=_Base)


def _start(
    kind: type[_S], method: str, url: Any, options: _Options, kwargs: dict[str, Any], raw: str
) -> tuple[_S, _Sent]:
    """The stream object and the first request (``kwargs`` gets the injection, if any)."""
    body, injected, skipped = _prepare(method, url, options.include_usage, kwargs, raw)
    sent = _Sent(body, injected, time.monotonic(), skipped=skipped)
    # Replaced by the meter of the answer (its Content-Encoding) once it arrives.
    meter = _client_meter(request_body=body, injected=injected)
    limits = _Limits(options.idle_timeout, options.deadline)
    policy = options.retrieval or RetrievalPolicy()
    return kind(meter, policy, options.retrieve, options.estimate, limits), sent


def _resent(method: str, url: Any, plain: dict[str, Any], raw: str, rejected: str) -> _Sent:
    """The caller's own request, sent again after the server rejected the injection."""
    body = _prepare(method, url, False, dict(plain), raw)[0]
    return _Sent(body, False, time.monotonic(), rejected)


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
      ``report.warnings`` says so. A body that cannot be sent again as UTF-8 JSON (a lone
      surrogate) goes out as the caller gave it, without the injection, with a warning.
    - ``retrieve``: a Responses stream that ended without its terminal event has its usage
      fetched with ``GET /responses/{id}`` (polling while it is still in progress).
    - ``estimate``: when no usage can be had, count tokens with tiktoken (``source="estimate"``).
    - ``idle_timeout`` / ``deadline``: seconds without an output-bearing event, and in all,
      after which iterating raises ``StreamTimeoutError`` (default: no limit; comments and
      pings do not reset the idle clock, so they cannot keep a stream alive forever).
    - ``timeline``: ``report.timings.timeline`` gets every output-bearing event's arrival
      time and tokens, for ITL percentiles (``Timings``); off by default.

    ``stream.report`` is set when the block exits, also after an early ``break`` or an
    exception. A non-2xx answer raises ``APIStatusError`` (its body read with a 64 KiB
    bound); fallbacks never raise.
    """
    options = _Options(
        include_usage, retrieve, estimate, retrieval, idle_timeout, deadline, timeline
    )
    plain = dict(kwargs)  # the caller's request, sent again if the injection is rejected
    stream, sent = _start(UsageStream, method, url, options, kwargs, "content")
    with ExitStack() as opened:
        response = opened.enter_context(client.stream(method, url, **kwargs))
        error = _error_body(response)
        rejected = _rejected(sent, response.status_code, error)
        if rejected is not None:
            opened.close()
            sent = _resent(method, url, plain, "content", rejected)
            response = opened.enter_context(client.stream(method, url, **plain))
            error = _error_body(response)
        stream._response = response
        secrets = request_secrets(response.request)
        encoding = response.headers.get("content-encoding", "")
        stream._meter = _meter_for(sent, encoding, secrets, timeline)
        content_type = response.headers.get("content-type", "")
        _check_response(response.status_code, content_type, secrets, error, response)
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


class Wire:
    """How ``aconnect_usage`` speaks to one HTTP library: httpx/httpx2 here (``client.stream``,
    raw bytes decoded by the meter); ``ssetally.aiohttp`` has aiohttp's."""

    #: The stream type yielded, and the keyword of a raw request body.
    stream_type: type[AsyncUsageStream] = AsyncUsageStream
    raw_body = "content"
    #: The client's method that opens a streaming request, and the response's status attribute.
    opener = "stream"
    status_attribute = "status_code"

    def open(
        self, client: Any, method: str, url: Any, kwargs: dict[str, Any]
    ) -> AbstractAsyncContextManager[Any]:
        """The streaming request, as an async context manager giving the response."""
        opened: AbstractAsyncContextManager[Any] = getattr(client, self.opener)(
            method, url, **kwargs
        )
        return opened

    def status(self, response: Any) -> int:
        return int(getattr(response, self.status_attribute))

    def content_encoding(self, client: Any, response: Any) -> str:
        """The coding of the bytes the stream's chunks hold (raw: the header's)."""
        return str(response.headers.get("content-encoding", ""))

    def secrets(self, response: Any) -> tuple[str, ...]:
        return request_secrets(response.request)

    async def error_body(self, client: Any, response: Any) -> Body | None:
        return await _aerror_body(response)

    def attach(self, stream: AsyncUsageStream, response: Any) -> None:
        stream._response = response

    async def close(self, response: Any) -> None:
        await response.aclose()


_HTTPX = Wire()


@asynccontextmanager
async def _aopen(
    wire: Wire, client: Any, method: str, url: Any, options: _Options, kwargs: dict[str, Any]
) -> AsyncIterator[AsyncUsageStream]:
    """``aconnect_usage`` over ``wire``'s HTTP library."""
    raw = wire.raw_body
    plain = dict(kwargs)  # the caller's request, sent again if the injection is rejected
    stream, sent = _start(wire.stream_type, method, url, options, kwargs, raw)
    async with AsyncExitStack() as opened:
        response = await opened.enter_async_context(wire.open(client, method, url, kwargs))
        error = await wire.error_body(client, response)
        rejected = _rejected(sent, wire.status(response), error)
        if rejected is not None:
            await opened.aclose()
            sent = _resent(method, url, plain, raw, rejected)
            response = await opened.enter_async_context(wire.open(client, method, url, plain))
            error = await wire.error_body(client, response)
        wire.attach(stream, response)
        secrets = wire.secrets(response)
        encoding = wire.content_encoding(client, response)
        stream._meter = _meter_for(sent, encoding, secrets, options.timeline)
        content_type = response.headers.get("content-type", "")
        _check_response(wire.status(response), content_type, secrets, error, response)
        try:
            yield stream
        except BaseException as exc:
            stream._note_interruption(exc)
            raise
        finally:
            try:
                await wire.close(response)
            except BaseException as exc:
                # A cancel scope still in force cancels this await too; the report is still due.
                stream._note_interruption(exc)
                raise
            finally:
                await stream._finalize(client)


def aconnect_usage(
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
) -> AbstractAsyncContextManager[AsyncUsageStream]:
    """Async twin of ``connect_usage`` for ``httpx.AsyncClient`` / ``httpx2.AsyncClient``:
    ``async with aconnect_usage(client, "POST", url, json=body) as stream``."""
    options = _Options(
        include_usage, retrieve, estimate, retrieval, idle_timeout, deadline, timeline
    )
    return _aopen(_HTTPX, client, method, url, options, kwargs)


_SIGNATURE = inspect.signature(aconnect_usage)


def aconnect_over(wire: Wire, *args: Any, **kwargs: Any) -> AbstractAsyncContextManager[Any]:
    """``aconnect_usage(*args, **kwargs)`` over another HTTP library's ``wire``."""
    bound = _SIGNATURE.bind(*args, **kwargs)
    bound.apply_defaults()
    given = dict(bound.arguments)
    request = given.pop("kwargs")
    client, method, url = given.pop("client"), given.pop("method"), given.pop("url")
    return _aopen(wire, client, method, url, _Options(**given), request)


def same_options(front: Callable[_P, object]) -> Callable[[Callable[..., _T]], Callable[_P, _T]]:
    """Decorates a front-end that takes what ``front`` takes: its signature and its types."""

    def wrap(impl: Callable[..., _T]) -> Callable[_P, _T]:
        impl.__signature__ = inspect.signature(front)  # type: ignore[attr-defined]
        return impl

    return wrap
