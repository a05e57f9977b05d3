"""``meter`` / ``ameter``: meter any iterable of raw response bytes as the caller reads it.

The chunks come from whatever HTTP library the caller uses (``requests``' ``iter_content``,
``urllib3``'s ``stream``, aiohttp's ``content.iter_any()``, an asyncio stream...) and are
handed on as the very same objects; each goes through the native tap on its way (no Python
object per event, bounded memory). ``report`` is set, and ``on_report(report)`` called once,
when the iteration ends, is closed early, is cancelled or raises.
"""

from __future__ import annotations

import asyncio
import inspect
import logging
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Awaitable,
    Callable,
    Iterable,
    Iterator,
    Mapping,
)
from types import TracebackType
from typing import TYPE_CHECKING, Any

from ._metering import StreamMeter, parse_json_object
from ._report import Attempt, StreamReport

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = ["AsyncMeteredStream", "MeteredStream", "OnStreamReport", "ameter", "meter"]

logger = logging.getLogger("ssetally")

#: ``on_report(report)``: called once per stream. Exceptions are logged, never raised; an
#: awaitable it returns (``ameter``) is run as a task on the running loop.
OnStreamReport = Callable[[StreamReport], object | None]

RequestBody = Mapping[str, Any] | bytes | str | None

#: Tasks running awaitables returned by report callbacks (kept alive until done).
_callback_tasks: set[asyncio.Task[Any]] = set()


def request_body(request: RequestBody) -> Mapping[str, Any] | None:
    """The request's JSON body from a dict, or from JSON bytes/str (None otherwise)."""
    if request is None or isinstance(request, Mapping):
        return request
    if isinstance(request, (bytes, str)):
        return parse_json_object(request)
    return None


def final_report(
    meter: StreamMeter, *, estimate: bool, interrupted: str | None = None
) -> StreamReport:
    """What the stream said, with the estimate when planned (no retrieval: no I/O here).
    Never raises: a fault gives a bare report that says so."""
    try:
        report = meter.report()
        plan = meter.plan(report, retrieve=False, estimate=estimate, interrupted=interrupted)
        return meter.complete(report, plan)
    except Exception as exc:  # noqa: BLE001 - metering never breaks the caller
        logger.warning("ssetally: building the report failed (%s)", type(exc).__name__)
        why = f"report failed: {type(exc).__name__}"
        return StreamReport(warnings=(why,), attempts=(Attempt("stream", False, why),))


def deliver(callback: Callable[..., object] | None, *args: Any) -> None:
    """Call a report callback; log what it raises; run an awaitable it returns as a task."""
    if callback is None:
        return
    try:
        result = callback(*args)
    except Exception as exc:  # noqa: BLE001 - the caller's stream is not affected
        logger.warning(
            "ssetally: on_report raised %s; the stream was not affected", type(exc).__name__
        )
        return
    if inspect.isawaitable(result):
        try:
            task = asyncio.ensure_future(_logged(result))
        except RuntimeError:  # no running loop
            logger.warning("ssetally: on_report returned an awaitable outside an event loop")
            if inspect.iscoroutine(result):
                result.close()
            return
        _callback_tasks.add(task)
        task.add_done_callback(_callback_tasks.discard)


async def _logged(awaitable: Awaitable[Any]) -> None:
    try:
        await awaitable
    except Exception as exc:  # noqa: BLE001
        logger.warning(
            "ssetally: on_report raised %s; the stream was not affected", type(exc).__name__
        )


def _ignore(chunk: object) -> None:
    """The tap's stand-in once it failed: the chunks still flow."""


class _Metered:
    """What the sync and async wrappers share: the meter and the exactly-once report."""

    def __init__(
        self,
        chunks: Any,
        api: str,
        request: RequestBody,
        include_usage: bool,
        estimate: bool,
        on_report: OnStreamReport | None,
        content_encoding: str,
        timeline: bool = False,
        request_sent: float | None = None,
    ) -> None:
        self._chunks = chunks
        self._estimate = estimate
        self._on_report = on_report
        self._meter = StreamMeter(
            request_body=request_body(request),
            injected=include_usage,
            content_encoding=content_encoding,
            collect_output=estimate,
            api=api,
            timeline=timeline,
            request_sent=request_sent,
        )
        self._iterating = False
        self.report: StreamReport | None = None
        """The final report: set once the stream ended, was closed, cancelled or failed."""

    @property
    def meter(self) -> StreamMeter:
        """The underlying ``StreamMeter``."""
        return self._meter

    def _finish(self, how: str, interrupted: str | None = None) -> StreamReport:
        """Build the report and call ``on_report``, the first time only."""
        if self.report is None:
            self._meter.end(how)
            self.report = final_report(
                self._meter, estimate=self._estimate, interrupted=interrupted
            )
            deliver(self._on_report, self.report)
        return self.report

    def _failed(self, exc: BaseException) -> None:
        interrupted = None if isinstance(exc, Exception) else type(exc).__name__
        self._finish(f"{type(exc).__name__}: {exc}", interrupted)

    def _claim(self) -> None:
        if self._iterating:
            raise RuntimeError("a metered stream can be iterated only once")
        self._iterating = True


class MeteredStream(_Metered):
    """``meter(chunks)``: iterate it for the very same chunks; ``report`` when it ends.

    ``with meter(resp.iter_content(None)) as m: for chunk in m: ...`` sets ``m.report`` when
    the block exits, also after a ``break`` or an exception; without ``with``, the report is
    made when the loop ends or its iterator is closed or garbage-collected."""

    def __iter__(self) -> Iterator[bytes]:
        self._claim()
        return self._run(self._chunks)

    def _run(self, chunks: Iterable[bytes]) -> Iterator[bytes]:
        meter = self._meter
        direct = meter.direct()
        try:
            if direct is not None:
                # The hot loop: one native call per chunk (which reads the clock itself).
                feed = direct
                for chunk in chunks:
                    try:
                        feed(chunk)
                    except Exception as exc:  # noqa: BLE001 - metering never breaks the stream
                        meter.tap_failed(exc)
                        feed = _ignore
                    yield chunk
            elif meter.stripping:
                pipeline = meter.feed
                for chunk in chunks:
                    out = pipeline(chunk)
                    if out:
                        yield out
                tail = meter.held()
                if tail:
                    yield tail
            else:
                pipeline = meter.feed
                for chunk in chunks:
                    pipeline(chunk)
                    yield chunk
        except GeneratorExit:
            self._finish("closed early")
            raise
        except BaseException as exc:
            self._failed(exc)
            raise
        self._finish("eof")

    def close(self) -> StreamReport:
        """End metering now (``closed early`` unless the stream ended) and return the report;
        the source is closed too when it has a ``close()``."""
        report = self._finish("closed early")
        close = getattr(self._chunks, "close", None)
        if callable(close):
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - closing is best effort
                logger.warning("ssetally: closing the source failed (%s)", type(exc).__name__)
        return report

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.report is None:
            self._failed(exc)
        self.close()


class AsyncMeteredStream(_Metered):
    """``ameter(chunks)``: async twin of ``MeteredStream`` (``async for`` / ``async with``)."""

    def __aiter__(self) -> AsyncIterator[bytes]:
        self._claim()
        return self._run(self._chunks)

    async def _run(self, chunks: AsyncIterable[bytes]) -> AsyncIterator[bytes]:
        meter = self._meter
        direct = meter.direct()
        try:
            if direct is not None:
                # The hot loop, as in ``MeteredStream._run``.
                feed = direct
                async for chunk in chunks:
                    try:
                        feed(chunk)
                    except Exception as exc:  # noqa: BLE001 - metering never breaks the stream
                        meter.tap_failed(exc)
                        feed = _ignore
                    yield chunk
            elif meter.stripping:
                pipeline = meter.feed
                async for chunk in chunks:
                    out = pipeline(chunk)
                    if out:
                        yield out
                tail = meter.held()
                if tail:
                    yield tail
            else:
                pipeline = meter.feed
                async for chunk in chunks:
                    pipeline(chunk)
                    yield chunk
        except GeneratorExit:
            self._finish("closed early")
            raise
        except BaseException as exc:
            self._failed(exc)
            raise
        self._finish("eof")

    def close(self) -> StreamReport:
        """End metering now (``closed early`` unless the stream ended) and return the report.
        The source is left to its owner (closing it may need an await)."""
        return self._finish("closed early")

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc is not None and self.report is None:
            self._failed(exc)
        self.close()


def meter(
    chunks: Iterable[bytes],
    *,
    api: str = "auto",
    request: RequestBody = None,
    include_usage: bool = False,
    estimate: bool = False,
    on_report: OnStreamReport | None = None,
    content_encoding: str = "",
    timeline: bool = False,
    request_sent: float | None = None,
) -> MeteredStream:
    """Meter an iterable of raw response ``bytes``; iterate the result for the same objects.

    :param api: the API of the stream (``UsageTap``'s names); ``auto`` detects it.
    :param request: the request's JSON body (dict, or bytes/str of JSON), for the estimate.
    :param include_usage: you added ``stream_options.include_usage`` on the caller's behalf:
        the usage chunk it brings (and its ``"usage":null`` members) are removed from what is
        yielded, which is then new ``bytes`` objects instead of the very same ones.
    :param estimate: when the stream holds no usage, count tokens with tiktoken at the end
        (off by default: it reassembles the output text as it goes, and the first use of an
        encoding loads its vocabulary; it runs on the thread that ends the stream).
    :param on_report: ``on_report(report)``, called once when the stream ends, is closed,
        or fails. Exceptions it raises are logged.
    :param content_encoding: the ``Content-Encoding`` of the chunks when they are still
        compressed (e.g. urllib3 with ``decode_content=False``); the tap reads a
        decompressed copy, the caller still gets the raw chunks.
    :param timeline: ``report.timings.timeline`` gets every output-bearing event's arrival
        time and tokens, for ITL percentiles (``Timings``); off by default.
    :param request_sent: the ``time.monotonic()`` reading taken when the request was sent,
        which the latencies count from (default: when ``meter`` is called, usually after the
        answer's headers arrived, so TTFT would miss the wait for them).
    """
    return MeteredStream(
        chunks,
        api,
        request,
        include_usage,
        estimate,
        on_report,
        content_encoding,
        timeline,
        request_sent,
    )


def ameter(
    chunks: AsyncIterable[bytes],
    *,
    api: str = "auto",
    request: RequestBody = None,
    include_usage: bool = False,
    estimate: bool = False,
    on_report: OnStreamReport | None = None,
    content_encoding: str = "",
    timeline: bool = False,
    request_sent: float | None = None,
) -> AsyncMeteredStream:
    """Async twin of ``meter`` for an async iterable of ``bytes``. ``on_report`` may return
    an awaitable (run as a task). With ``estimate`` the count runs inline, on the loop."""
    return AsyncMeteredStream(
        chunks,
        api,
        request,
        include_usage,
        estimate,
        on_report,
        content_encoding,
        timeline,
        request_sent,
    )
