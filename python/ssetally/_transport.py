"""``MeteringTransport`` / ``AsyncMeteringTransport``: usage metering as an httpx transport.

Put one under any ``httpx`` or ``httpx2`` client (so under the OpenAI SDK, or any SDK that
takes an ``http_client``) and every ``text/event-stream`` response is metered as the caller
reads it; ``on_report(report, request)`` is called once per stream with its ``StreamReport``.

The same class works in both libraries: it subclasses ``httpx.BaseTransport`` and, when
``httpx2`` is installed, ``httpx2.BaseTransport``. With no ``inner`` transport given, it
creates the default transport of the library of the first request it sees
(``httpx.HTTPTransport()`` or ``httpx2.HTTPTransport()``). Client-level settings that a
client only applies to its own default transport (``verify``, ``limits``, ``http2``,
``proxy``...) then need an explicit ``inner``, as with any custom transport.

The caller's path gets the same ``bytes`` objects the inner transport produced, each fed to a
native ``UsageTap`` on the way (no copy, no Python object per event). Fallbacks (retrieval of
a cut Responses stream, the tiktoken estimate) run off the caller's path: in a worker thread
(sync) or a task on the running asyncio loop (async), after which ``on_report`` is called
from there.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from concurrent.futures import wait as wait_futures
from dataclasses import dataclass, field
from types import TracebackType
from typing import TYPE_CHECKING, Any, Generic, TypeVar

import httpx

from ._getters import AsyncTransportGetter, TransportGetter
from ._metering import (
    Plan,
    RetrievalPolicy,
    StreamMeter,
    _rejected,
    arun_fallbacks,
    parse_json_object,
    redact,
    request_secrets,
    run_fallbacks,
    skipped,
)
from ._mime import is_event_stream
from ._report import StreamReport
from ._sending import Prepared, library, prepare, request_content
from ._tasks import TaskSet

if TYPE_CHECKING:
    from httpx2 import AsyncBaseTransport as _AsyncBaseTransport2
    from httpx2 import AsyncByteStream as _AsyncByteStream2
    from httpx2 import BaseTransport as _BaseTransport2
    from httpx2 import SyncByteStream as _SyncByteStream2
    from typing_extensions import Self
else:
    try:
        from httpx2 import AsyncBaseTransport as _AsyncBaseTransport2
        from httpx2 import AsyncByteStream as _AsyncByteStream2
        from httpx2 import BaseTransport as _BaseTransport2
        from httpx2 import SyncByteStream as _SyncByteStream2
    except ImportError:  # httpx2 is optional: the classes then serve httpx alone

        class _BaseTransport2:
            pass

        class _AsyncBaseTransport2:
            pass

        class _SyncByteStream2:
            pass

        class _AsyncByteStream2:
            pass


__all__ = ["AsyncMeteringTransport", "MeteringTransport", "OnReport"]

logger = logging.getLogger("ssetally")

#: ``on_report(report, request)``: called once per metered stream. ``request`` is the request
#: the caller sent (an ``httpx.Request`` or ``httpx2.Request``). Its return value is ignored
#: (the async transport awaits it when it is awaitable). Exceptions are logged, never raised.
OnReport = Callable[[StreamReport, Any], object | None]


def _log_report(report: StreamReport, request: Any) -> None:
    usage = report.usage
    logger.info(
        "%s %s: %s, %s input / %s output tokens (%s)",
        request.method,
        redact(str(request.url), request_secrets(request)),
        report.status,
        None if usage is None else usage.input_tokens,
        None if usage is None else usage.output_tokens,
        "no usage" if usage is None else usage.source,
    )


@dataclass(frozen=True)
class _Options:
    on_report: OnReport
    include_usage: bool
    retrieve: bool
    estimate: bool
    policy: RetrievalPolicy


#: The warning of an injected stream whose upstream compressed the answer anyway.
DECODED_FOR_CALLER = (
    "the upstream answered with Content-Encoding {coding!r} although identity was asked: the "
    "body was decoded for the caller (Content-Encoding and Content-Length removed) so that "
    "the added usage chunk could be removed"
)


class _Stream:
    """What the sync and async stream wrappers share: the meter and the exactly-once end."""

    def __init__(
        self,
        inner: Any,
        meter: StreamMeter,
        end: Callable[[str], None],
        failure: type[Exception] | None = None,
    ) -> None:
        self._inner = inner
        self._meter = meter
        self._end = end
        #: Raised when a body decoded for the caller stops decoding (``DecodingError``).
        self._failure = failure

    def _check(self) -> None:
        why = self._meter.undecodable
        if why is not None and self._failure is not None:
            raise self._failure(why)

    def _failed(self, exc: BaseException) -> bytes:
        """End the stream for ``exc``; returns what the caller would have read before the
        failure (held bytes included), or nothing when the read was cancelled."""
        self._end(f"{type(exc).__name__}: {exc}")
        return b"" if isinstance(exc, asyncio.CancelledError) else self._meter.held()


class _SyncTapStream(_Stream, httpx.SyncByteStream, _SyncByteStream2):
    def __iter__(self) -> Iterator[bytes]:
        feed = self._meter.feed
        try:
            for chunk in self._inner:
                out = feed(chunk)
                if out:
                    yield out
                self._check()
        except GeneratorExit:
            self._end("closed early")
            raise
        except BaseException as exc:
            tail = self._failed(exc)
            if tail:
                yield tail
            raise
        tail = self._meter.held()
        if tail:
            yield tail
        self._end("eof")

    def close(self) -> None:
        try:
            self._inner.close()
        finally:
            self._end("closed early")


class _AsyncTapStream(_Stream, httpx.AsyncByteStream, _AsyncByteStream2):
    async def __aiter__(self) -> AsyncIterator[bytes]:
        feed = self._meter.feed
        try:
            async for chunk in self._inner:
                out = feed(chunk)
                if out:
                    yield out
                self._check()
        except GeneratorExit:
            self._end("closed early")
            raise
        except BaseException as exc:
            tail = self._failed(exc)
            if tail:
                yield tail
            raise
        tail = self._meter.held()
        if tail:
            yield tail
        self._end("eof")

    async def aclose(self) -> None:
        try:
            await self._inner.aclose()
        finally:
            self._end("closed early")


class _Base:
    """Options, the lazily created default inner transports, and report delivery."""

    def __init__(
        self,
        inner: Any,
        on_report: OnReport | None,
        include_usage: bool,
        retrieve: bool,
        estimate: bool,
        retrieval: RetrievalPolicy | None,
    ) -> None:
        self._inner = inner
        self._defaults: dict[str, Any] = {}
        self._defaults_lock = threading.Lock()
        self._options = _Options(
            on_report=on_report or _log_report,
            include_usage=include_usage,
            retrieve=retrieve,
            estimate=estimate,
            policy=retrieval or RetrievalPolicy(),
        )

    def _inner_for(self, lib: Any, kind: str) -> Any:
        if self._inner is not None:
            return self._inner
        with self._defaults_lock:
            transport = self._defaults.get(lib.__name__)
            if transport is None:
                transport = getattr(lib, kind)()
                self._defaults[lib.__name__] = transport
            return transport

    def _transports(self) -> list[Any]:
        if self._inner is not None:
            return [self._inner]
        with self._defaults_lock:
            return list(self._defaults.values())

    def _deliver(self, report: StreamReport, request: Any) -> object:
        try:
            return self._options.on_report(report, request)
        except Exception:
            logger.exception("ssetally: on_report raised; the stream was not affected")
            return None

    def _meter(
        self,
        response: Any,
        request: Any,
        prepared: Prepared,
        make_end: Callable[[StreamMeter], Callable[[str], None]],
        stream_type: type[_SyncTapStream | _AsyncTapStream],
        rejected: str | None = None,
    ) -> Any:
        """Wrap an event-stream answer's body so it is metered as the caller reads it;
        ``rejected`` is the server's message when it refused the injected ``stream_options``
        (the request was then sent again without them)."""
        if not is_event_stream(response.headers.get("content-type", "")):
            return response
        consumed = getattr(response, "is_stream_consumed", False)
        injected = prepared.injected and not consumed
        coding = "" if consumed else response.headers.get("content-encoding", "")
        meter = StreamMeter(
            request_body=prepared.body,
            injected=injected,
            # A body the inner transport read already (e.g. a mock) is decoded already.
            content_encoding=coding,
            collect_output=self._options.estimate,
            secrets=request_secrets(request),
            # An upstream that compressed although identity was asked: the caller gets the
            # decoded bytes, so that the usage chunk it did not ask for can be removed.
            pass_decoded=injected,
        )
        for note in (prepared.skipped, rejected and _rejected.RETRIED.format(message=rejected)):
            if note:
                meter.warn(note)
        if consumed:
            meter.feed(response.content)
            make_end(meter)("eof")
            return response
        failure = None
        if injected and meter.compressed and meter.metering:
            meter.warn(DECODED_FOR_CALLER.format(coding=coding[:50]))
            for name in ("content-encoding", "content-length"):
                if name in response.headers:
                    del response.headers[name]
            failure = library(request).DecodingError
        response.stream = stream_type(response.stream, meter, make_end(meter), failure)
        return response


_Owner = TypeVar("_Owner", bound=_Base)


@dataclass(eq=False, repr=False)
class _End(Generic[_Owner]):
    """The end of one stream: the report is built once, however many ways the stream ends;
    subclasses deliver it (sync: fallbacks in a worker thread; async: as a task)."""

    _owner: _Owner
    _request: Any
    _sent: Any
    _meter: StreamMeter
    _inner: Any
    _lib: Any
    _status: int
    _lock: threading.Lock = field(default_factory=threading.Lock, init=False)
    _ended: bool = field(default=False, init=False)

    def _finish(self, how: str) -> tuple[StreamReport, Plan] | None:
        """The stream's report and fallback plan the first time it ends; None after that."""
        with self._lock:
            if self._ended:
                return None
            self._ended = True
        meter = self._meter
        # The caller closed the response, or its task was cancelled, before the end.
        meter.end(how, by_client=how == "closed early" or how.startswith("CancelledError"))
        report = meter.report()
        options = self._owner._options
        plan = meter.plan(
            report,
            retrieve=options.retrieve,
            estimate=options.estimate,
            request=self._sent,
            http_status=self._status,
        )
        return report, plan


class MeteringTransport(_Base, httpx.BaseTransport, _BaseTransport2):
    """A sync httpx/httpx2 transport that meters every event-stream response.

    :param inner: the transport that does the I/O (default: the library's ``HTTPTransport()``,
        created on the first request).
    :param on_report: ``on_report(report, request)``, called exactly once per event stream when
        it ends, is closed early, or fails (default: log the report on the ``ssetally``
        logger). Exceptions it raises are logged. It runs on the thread that ended the stream,
        or on a worker thread when a fallback ran.
    :param include_usage: ask Chat/legacy Completions streams for usage when the body did not
        (``stream_options.include_usage``); the usage-only chunk this adds is removed
        byte-exactly from what the caller reads. A 400 answer (up to 64 KiB) that names
        ``stream_options`` gets the caller's own request sent once more, unchanged. An answer
        compressed although identity was asked is decoded for the caller (a warning says so);
        a body that cannot be re-encoded is sent unchanged, without the injection.
    :param retrieve: a Responses stream that ended without its terminal event has its usage
        fetched with ``GET /responses/{id}`` through the inner transport, in a worker thread.
    :param estimate: when no usage can be had, count tokens with tiktoken (worker thread).
    :param retrieval: the retrieval's deadline and backoff.
    :param max_workers: worker threads for the fallbacks.

    Responses that are not event streams pass through untouched.
    """

    def __init__(
        self,
        inner: Any = None,
        on_report: OnReport | None = None,
        *,
        include_usage: bool = False,
        retrieve: bool = False,
        estimate: bool = False,
        retrieval: RetrievalPolicy | None = None,
        max_workers: int = 4,
    ) -> None:
        super().__init__(inner, on_report, include_usage, retrieve, estimate, retrieval)
        self._max_workers = max_workers
        self._executor: ThreadPoolExecutor | None = None
        self._pending: set[Future[None]] = set()
        self._pending_lock = threading.Lock()

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        self.close()

    def handle_request(self, request: Any) -> Any:
        """Send the request through the inner transport; meter an event-stream answer."""
        prepared = prepare(request, self._options.include_usage)
        lib = library(request)
        inner = self._inner_for(lib, "HTTPTransport")
        response = inner.handle_request(prepared.request)
        rejected = None
        if prepared.injected and _rejected.worth_reading(response):
            raw = _rejected.read_closed(response)
            rejected = _rejected.rejection(response, raw)
            if rejected is None:
                return _rejected.rebuilt(lib, response, raw)
            # Sent again as the caller wrote it, and metered as usual.
            prepared = Prepared(request, parse_json_object(request_content(request)), False)
            response = inner.handle_request(request)
        sent = prepared.request

        def make_end(meter: StreamMeter) -> _SyncEnd:
            return _SyncEnd(self, request, sent, meter, inner, lib, response.status_code)

        return self._meter(response, request, prepared, make_end, _SyncTapStream, rejected)

    def _submit(self, job: Callable[[], None]) -> None:
        with self._pending_lock:
            if self._executor is None:
                self._executor = ThreadPoolExecutor(
                    self._max_workers, thread_name_prefix="ssetally-report"
                )
            future = self._executor.submit(job)
            self._pending.add(future)
        future.add_done_callback(self._done)

    def _done(self, future: Future[None]) -> None:
        with self._pending_lock:
            self._pending.discard(future)

    def wait(self, timeout: float | None = None) -> bool:
        """Wait for the reports whose fallbacks are still running; True when none is left."""
        with self._pending_lock:
            pending = set(self._pending)
        if not pending:
            return True
        _, not_done = wait_futures(pending, timeout)
        return not not_done

    def close(self) -> None:
        """Wait for pending reports, then close the inner transport(s)."""
        with self._pending_lock:
            executor, self._executor = self._executor, None
        if executor is not None:
            executor.shutdown(wait=True)
        for transport in self._transports():
            transport.close()


class _SyncEnd(_End["MeteringTransport"]):
    """The end of one sync stream: fallbacks run in the transport's worker threads."""

    def __call__(self, how: str) -> None:
        try:
            ended = self._finish(how)
            if ended is None:
                return
            report, plan = ended
            if plan.due:
                self._owner._submit(lambda: self._complete(report, plan))
                return
            self._owner._deliver(self._meter.complete(report, plan), self._request)
        except Exception:
            logger.exception("ssetally: metering failed; the stream was not affected")

    def _complete(self, report: StreamReport, plan: Plan) -> None:
        getter = TransportGetter(self._inner, self._lib)
        policy = self._owner._options.policy
        final = run_fallbacks(self._meter, report, plan, getter, policy)
        self._owner._deliver(final, self._request)


class AsyncMeteringTransport(_Base, httpx.AsyncBaseTransport, _AsyncBaseTransport2):
    """Async twin of ``MeteringTransport`` for ``httpx.AsyncClient`` / ``httpx2.AsyncClient``.

    ``on_report`` runs on the event loop (keep it quick); when it returns an awaitable, the
    awaitable is run as a task. Fallbacks run as tasks on the running asyncio loop (the
    estimate in a worker thread); ``await transport.wait()`` waits for them, ``aclose()`` too.
    """

    def __init__(
        self,
        inner: Any = None,
        on_report: OnReport | None = None,
        *,
        include_usage: bool = False,
        retrieve: bool = False,
        estimate: bool = False,
        retrieval: RetrievalPolicy | None = None,
    ) -> None:
        super().__init__(inner, on_report, include_usage, retrieve, estimate, retrieval)
        self._tasks = TaskSet()

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None = None,
        exc_value: BaseException | None = None,
        traceback: TracebackType | None = None,
    ) -> None:
        await self.aclose()

    async def handle_async_request(self, request: Any) -> Any:
        """Send the request through the inner transport; meter an event-stream answer."""
        prepared = prepare(request, self._options.include_usage)
        lib = library(request)
        inner = self._inner_for(lib, "AsyncHTTPTransport")
        response = await inner.handle_async_request(prepared.request)
        rejected = None
        if prepared.injected and _rejected.worth_reading(response):
            raw = await _rejected.aread_closed(response)
            rejected = _rejected.rejection(response, raw)
            if rejected is None:
                return _rejected.rebuilt(lib, response, raw)
            # Sent again as the caller wrote it, and metered as usual.
            prepared = Prepared(request, parse_json_object(request_content(request)), False)
            response = await inner.handle_async_request(request)
        sent = prepared.request

        def make_end(meter: StreamMeter) -> _AsyncEnd:
            return _AsyncEnd(self, request, sent, meter, inner, lib, response.status_code)

        return self._meter(response, request, prepared, make_end, _AsyncTapStream, rejected)

    def _deliver_async(self, report: StreamReport, request: Any) -> None:
        result = self._deliver(report, request)
        if inspect.isawaitable(result) and not self._tasks.start(_await_logged(result)):
            logger.error("ssetally: on_report returned an awaitable outside an event loop")

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait for the reports whose fallbacks are still running; True when none is left."""
        return await self._tasks.wait(timeout)

    async def aclose(self) -> None:
        """Wait for pending reports, then close the inner transport(s)."""
        await self._tasks.drain()
        for transport in self._transports():
            await transport.aclose()


async def _await_logged(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception:
        logger.exception("ssetally: on_report raised; the stream was not affected")


class _AsyncEnd(_End["AsyncMeteringTransport"]):
    """The end of one async stream: fallbacks run as tasks on the running loop."""

    def __call__(self, how: str) -> None:
        try:
            ended = self._finish(how)
            if ended is None:
                return
            report, plan = ended
            if plan.due:
                if self._owner._tasks.start(self._complete(report, plan)):
                    return
                report = skipped(report, "fallback", "no running event loop for the fallbacks")
                plan = Plan(skipped=plan.skipped)
            self._owner._deliver_async(self._meter.complete(report, plan), self._request)
        except Exception:
            logger.exception("ssetally: metering failed; the stream was not affected")

    async def _complete(self, report: StreamReport, plan: Plan) -> None:
        getter = AsyncTransportGetter(self._inner, self._lib)
        policy = self._owner._options.policy
        final = await arun_fallbacks(self._meter, report, plan, getter, policy)
        self._owner._deliver_async(final, self._request)
