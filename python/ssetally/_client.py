"""``connect_usage`` / ``aconnect_usage``: stream an LLM response and always end with a usage
record, whatever happened (usage in the stream, a cut stream, no usage sent, an early break).
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from ._core import ServerSentEvent
from ._exceptions import SSEError
from ._meter import Meter
from ._mime import is_event_stream
from ._report import StreamReport
from ._request import json_body, wants_usage_injection, with_usage_requested
from ._retrieve import (
    RetrievalPolicy,
    RetrievalResult,
    aretrieve,
    redact,
    request_secrets,
    retrieval_request,
    retrieve,
)


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
    url: Any, include_usage: bool, kwargs: dict[str, Any]
) -> tuple[dict[str, Any] | None, bool]:
    """The request body as sent, and whether ``include_usage`` was added to it."""
    body = json_body(kwargs)
    path = str(url).split("?", 1)[0]
    if include_usage and body is not None and wants_usage_injection(path, body):
        body = with_usage_requested(body)
        kwargs.pop("content", None)
        kwargs["json"] = body
        return body, True
    return body, False


class _Base:
    def __init__(self, meter: Meter, policy: RetrievalPolicy, retrieve: bool, estimate: bool):
        self._meter = meter
        self._policy = policy
        self._retrieve = retrieve
        self._estimate = estimate
        self._response: Any = None
        # Set when the stream or the block was interrupted by a cancellation (asyncio, trio,
        # anyio), KeyboardInterrupt or SystemExit: the fallbacks must not wait on the network.
        self._interrupted: str | None = None
        self.report: StreamReport | None = None
        """The final report, set when the stream ends or the ``with`` block exits."""

    @property
    def response(self) -> Any:
        """The streaming HTTP response."""
        return self._response

    def _note_interruption(self, exc: BaseException) -> None:
        """Remember a cancellation (any ``BaseException`` that is not an ``Exception``)."""
        if not isinstance(exc, Exception) and self._interrupted is None:
            self._interrupted = type(exc).__name__

    def _retrieval_plan(
        self, report: StreamReport
    ) -> RetrievalResult | tuple[str, dict[str, str]] | None:
        """None when no retrieval is due, a final result when it must be skipped, else the URL
        and headers to ``GET``. Shared by the sync and async streams; only the I/O differs."""
        if not (self._retrieve and self._meter.needs_retrieval(report)):
            return None
        if self._interrupted is not None:
            # A cancelled task must not wait on the network (and, under trio or an anyio
            # cancel scope, could not: every await would raise again).
            return RetrievalResult(None, f"interrupted ({self._interrupted}); retrieval skipped")
        return retrieval_request(self._response.request, report.response_id or "")

    def _complete(self, report: StreamReport) -> StreamReport:
        """The estimate fallback, redaction and timings: the last steps of every report."""
        meter = self._meter
        if self._estimate:
            report = meter.with_estimate(report)
        self.report = meter.with_timings(meter.redacted(report))
        return self.report


class UsageStream(_Base):
    """A streamed LLM response: iterate it for events; ``report`` holds the usage record."""

    def __iter__(self) -> Iterator[ServerSentEvent]:
        try:
            for chunk in self._response.iter_bytes():
                yield from self._meter.on_chunk(chunk)
        except GeneratorExit:
            raise  # the caller stopped reading: "closed early"
        except BaseException as exc:
            self._note_interruption(exc)
            self._meter.on_end(f"{type(exc).__name__}: {exc}")
            raise
        self._meter.on_end("eof")

    def _finalize(self, client: Any) -> StreamReport:
        report = self._meter.stream_report()
        plan = self._retrieval_plan(report)
        if isinstance(plan, tuple):
            plan = retrieve(client, *plan, self._policy)
        if plan is not None:
            report = self._meter.with_retrieval(report, plan)
        return self._complete(report)


class AsyncUsageStream(_Base):
    """Async twin of ``UsageStream``: ``async for event in stream``."""

    async def __aiter__(self) -> AsyncIterator[ServerSentEvent]:
        try:
            async for chunk in self._response.aiter_bytes():
                for event in self._meter.on_chunk(chunk):
                    yield event
        except GeneratorExit:
            raise  # the caller stopped reading: "closed early"
        except BaseException as exc:
            self._note_interruption(exc)
            self._meter.on_end(f"{type(exc).__name__}: {exc}")
            raise
        self._meter.on_end("eof")

    async def _finalize(self, client: Any) -> StreamReport:
        report = self._meter.stream_report()
        plan = self._retrieval_plan(report)
        if isinstance(plan, tuple):
            plan = await aretrieve(client, *plan, self._policy)
        if plan is not None:
            report = self._meter.with_retrieval(report, plan)
        return self._complete(report)


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
    **kwargs: Any,
) -> Iterator[UsageStream]:
    """Stream a request with an ``httpx.Client`` or ``httpx2.Client``; yields a ``UsageStream``.

    - ``include_usage``: ask Chat/legacy Completions streams for usage when the body did not
      (the added usage chunk is not shown to the caller).
    - ``retrieve``: a Responses stream that ended without its terminal event has its usage
      fetched with ``GET /responses/{id}`` (polling while it is still in progress).
    - ``estimate``: when no usage can be had, count tokens with tiktoken (``source="estimate"``).

    ``stream.report`` is set when the block exits, also after an early ``break`` or an
    exception. A non-2xx answer raises ``APIStatusError``; fallbacks never raise.
    """
    body, injected = _prepare(url, include_usage, kwargs)
    meter = Meter(body, hide_usage_chunk=injected)
    stream = UsageStream(meter, retrieval or RetrievalPolicy(), retrieve, estimate)
    with client.stream(method, url, **kwargs) as response:
        stream._response = response
        meter.secrets = request_secrets(response.request)
        error_body = response.read() if response.status_code >= 300 else None
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
    **kwargs: Any,
) -> AsyncIterator[AsyncUsageStream]:
    """Async twin of ``connect_usage`` for ``httpx.AsyncClient`` / ``httpx2.AsyncClient``."""
    body, injected = _prepare(url, include_usage, kwargs)
    meter = Meter(body, hide_usage_chunk=injected)
    stream = AsyncUsageStream(meter, retrieval or RetrievalPolicy(), retrieve, estimate)
    async with client.stream(method, url, **kwargs) as response:
        stream._response = response
        meter.secrets = request_secrets(response.request)
        error_body = await response.aread() if response.status_code >= 300 else None
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
