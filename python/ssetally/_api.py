"""httpx-sse compatible API: ``connect_sse``, ``aconnect_sse`` and ``EventSource``.

Works with ``httpx`` and ``httpx2`` clients and responses alike (they are used by duck typing).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Any

from ._core import LineDecoder, ServerSentEvent, SSEDecoder
from ._exceptions import SSEError
from ._mime import is_event_stream


class EventSource:
    """Reads Server-Sent Events from a streaming HTTP response."""

    def __init__(self, response: Any) -> None:
        self._response = response

    @property
    def response(self) -> Any:
        """The wrapped response (e.g. to call ``raise_for_status()``)."""
        return self._response

    def _check_content_type(self) -> None:
        content_type = self._response.headers.get("content-type", "")
        if not is_event_stream(content_type):
            raise SSEError(
                "Expected response header Content-Type to contain 'text/event-stream', "
                f"got {content_type.partition(';')[0]!r}"
            )

    def iter_sse(self) -> Iterator[ServerSentEvent]:
        """Yield events as their bytes arrive. Raises ``SSEError`` for a non event-stream."""
        self._check_content_type()
        decoder = SSEDecoder(retry_only_events=True)
        raw = _identity(self._response)
        chunks = self._response.iter_raw() if raw else self._response.iter_bytes()
        for chunk in chunks:
            yield from decoder.feed(chunk)
        decoder.finish()

    async def aiter_sse(self) -> AsyncIterator[ServerSentEvent]:
        """Async twin of ``iter_sse``."""
        self._check_content_type()
        decoder = SSEDecoder(retry_only_events=True)
        raw = _identity(self._response)
        chunks = self._response.aiter_raw() if raw else self._response.aiter_bytes()
        try:
            async for chunk in chunks:
                for event in decoder.feed(chunk):
                    yield event
            decoder.finish()
        finally:
            aclose = getattr(chunks, "aclose", None)
            if aclose is not None:
                await aclose()


def _identity(response: Any) -> bool:
    """Whether the body can be read raw: nothing to decompress and not read yet. Raw reads
    skip httpx's content-decoding layer, which costs more per chunk than framing it."""
    encoding = response.headers.get("content-encoding", "")
    unread = getattr(response, "is_stream_consumed", True) is False
    return unread and encoding.strip().lower() in ("", "identity")


def _sse_headers(kwargs: dict[str, Any]) -> dict[str, str]:
    """The caller's headers (never mutated) with the two SSE request headers set."""
    given = kwargs.pop("headers", None) or {}
    items = given.items() if hasattr(given, "items") else given
    headers = {k: v for k, v in items if k.lower() not in ("accept", "cache-control")}
    headers["Accept"] = "text/event-stream"
    headers["Cache-Control"] = "no-store"
    return headers


@contextmanager
def connect_sse(client: Any, method: str, url: Any, **kwargs: Any) -> Iterator[EventSource]:
    """Open a streaming request with SSE headers and yield an ``EventSource`` on its response."""
    headers = _sse_headers(kwargs)
    with client.stream(method, url, headers=headers, **kwargs) as response:
        yield EventSource(response)


@asynccontextmanager
async def aconnect_sse(
    client: Any, method: str, url: Any, **kwargs: Any
) -> AsyncIterator[EventSource]:
    """Async twin of ``connect_sse`` for ``httpx.AsyncClient`` / ``httpx2.AsyncClient``."""
    headers = _sse_headers(kwargs)
    async with client.stream(method, url, headers=headers, **kwargs) as response:
        yield EventSource(response)


def _iter_sse_lines(response: Any) -> Iterator[str]:
    """The response body split into lines at CR, LF or CRLF (httpx-sse's private helper)."""
    decoder = LineDecoder()
    for chunk in response.iter_bytes():
        yield from decoder.feed(chunk)
    yield from decoder.finish()


async def _aiter_sse_lines(response: Any) -> AsyncIterator[str]:
    """Async twin of ``_iter_sse_lines``."""
    decoder = LineDecoder()
    async for chunk in response.aiter_bytes():
        for line in decoder.feed(chunk):
            yield line
    for line in decoder.finish():
        yield line
