"""Server-Sent Events and usage metering over an ``aiohttp.ClientSession``.

``aconnect_sse`` is the httpx-sse shape (``async with aconnect_sse(session, "GET", url) as
source: async for event in source.aiter_sse()``), framed by the native ``SSEDecoder``.
``aconnect_usage`` is ``ssetally.aconnect_usage`` for aiohttp: an async-iterable stream of
``ServerSentEvent`` whose ``report`` is always set when the block exits.

Timeouts are the session's (or a ``timeout=aiohttp.ClientTimeout(...)`` passed through);
the retrieval fallback uses one of its own per request (``RetrievalPolicy``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any, NamedTuple

import aiohttp

from . import _client
from ._api import _sse_headers
from ._client import AsyncUsageStream as _AsyncUsageStream
from ._client import Wire, same_options
from ._core import ServerSentEvent, SSEDecoder
from ._exceptions import SSEError
from ._metering import redact, secrets_of
from ._metering._decode import MAX_ERROR_BODY, MAX_JSON_BODY, Body, aread_body
from ._mime import is_event_stream

__all__ = ["AsyncUsageStream", "EventSource", "aconnect_sse", "aconnect_usage"]


async def _raw(response: aiohttp.ClientResponse) -> AsyncIterator[bytes]:
    """The body as aiohttp hands it over (decoded, unless the session's ``auto_decompress``
    is off)."""
    async for chunk in response.content.iter_any():
        yield chunk


def _coding(session: aiohttp.ClientSession | None, response: aiohttp.ClientResponse) -> str:
    """The coding of what ``_raw`` yields: aiohttp decodes itself unless told not to."""
    if session is None or getattr(session, "auto_decompress", True):
        return ""
    return response.headers.get("content-encoding", "")


async def _read_capped(
    response: aiohttp.ClientResponse, limit: int, session: aiohttp.ClientSession | None = None
) -> Body:
    return await aread_body(_raw(response), _coding(session, response), limit)


def _check_content_type(response: aiohttp.ClientResponse, secrets: tuple[str, ...]) -> None:
    content_type = response.headers.get("content-type", "")
    if not is_event_stream(content_type):
        raise SSEError(
            redact(
                "Expected response header Content-Type to contain 'text/event-stream', "
                f"got {content_type.partition(';')[0]!r}",
                secrets,
            )
        )


def _secrets(response: aiohttp.ClientResponse) -> tuple[str, ...]:
    try:
        info = response.request_info
        return secrets_of({k: v for k, v in info.headers.items()}, str(info.url))
    except Exception:  # noqa: BLE001 - nothing to redact then
        return ()


class EventSource:
    """Reads Server-Sent Events from a streaming ``aiohttp.ClientResponse``."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    @property
    def response(self) -> aiohttp.ClientResponse:
        """The wrapped response (e.g. to call ``raise_for_status()``)."""
        return self._response

    async def aiter_sse(self) -> AsyncIterator[ServerSentEvent]:
        """Yield events as their bytes arrive. Raises ``SSEError`` for a non event-stream."""
        _check_content_type(self._response, _secrets(self._response))
        decoder = SSEDecoder(retry_only_events=True)
        async for chunk in self._response.content.iter_any():
            for event in decoder.feed(chunk):
                yield event
        decoder.finish()


@asynccontextmanager
async def aconnect_sse(
    session: aiohttp.ClientSession, method: str, url: Any, **kwargs: Any
) -> AsyncIterator[EventSource]:
    """Open a request with SSE headers (``Accept: text/event-stream``, ``Cache-Control:
    no-store``) and yield an ``EventSource`` on its response."""
    headers = _sse_headers(kwargs)
    async with session.request(method, url, headers=headers, **kwargs) as response:
        yield EventSource(response)


class _Request(NamedTuple):
    """What the retrieval reads back: the request's URL and headers."""

    url: str
    headers: Mapping[str, str]


class _Answer(NamedTuple):
    status_code: int
    content: bytes
    headers: Mapping[str, str]


class _SessionGetter:
    """The ``client.get`` that ``aretrieve`` needs, over an aiohttp session (the body is read
    with the retrieval's bound)."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def get(
        self, url: str, *, headers: dict[str, str], timeout: float, follow_redirects: bool = False
    ) -> _Answer:
        limit = aiohttp.ClientTimeout(total=timeout)
        async with self._session.get(
            url, headers=headers, timeout=limit, allow_redirects=follow_redirects
        ) as response:
            body = await _read_capped(response, MAX_JSON_BODY, self._session)
            lowered = {k.lower(): v for k, v in response.headers.items()}
            return _Answer(response.status, body.content, lowered)


class AsyncUsageStream(_AsyncUsageStream):
    """A streamed LLM response over aiohttp: ``async for event in stream``; ``report`` holds
    the usage record once the ``async with`` block exited."""

    _request: _Request | None = None

    def _raw_chunks(self) -> AsyncIterator[bytes]:
        chunks: AsyncIterator[bytes] = self._response.content.iter_any()
        return chunks

    def _sent_request(self) -> Any:
        return self._request

    def _getter(self, client: Any) -> Any:
        return _SessionGetter(client)


class _AiohttpWire(Wire):
    """``aconnect_usage`` over an ``aiohttp.ClientSession``."""

    stream_type = AsyncUsageStream
    raw_body = "data"
    opener = "request"
    status_attribute = "status"

    def content_encoding(self, client: Any, response: Any) -> str:
        return _coding(client, response)

    def secrets(self, response: Any) -> tuple[str, ...]:
        return _secrets(response)

    async def error_body(self, client: Any, response: Any) -> Body | None:
        if response.status < 300:
            return None
        return await _read_capped(response, MAX_ERROR_BODY, client)

    def attach(self, stream: Any, response: Any) -> None:
        super().attach(stream, response)
        info = response.request_info
        stream._request = _Request(str(info.url), {k: v for k, v in info.headers.items()})

    async def close(self, response: Any) -> None:
        if response.content.at_eof():
            response.release()
        else:
            response.close()


_AIOHTTP = _AiohttpWire()


@same_options(_client.aconnect_usage)
def aconnect_usage(*args: Any, **kwargs: Any) -> AbstractAsyncContextManager[AsyncUsageStream]:
    """``ssetally.aconnect_usage`` for an ``aiohttp.ClientSession`` (the first argument);
    yields an ``AsyncUsageStream``. The same options, over aiohttp:

    - ``include_usage``: ask Chat/legacy Completions streams for usage when the body (``json=``
      or JSON ``data=``) did not; the added usage chunk is not shown to the caller, and a 400
      that rejects it gets the caller's own request once more.
    - ``retrieve``: a Responses stream that ended without its terminal event has its usage
      fetched with ``GET /responses/{id}`` through the session (each GET with a timeout).
    - ``estimate``: when no usage can be had, count tokens with tiktoken.
    - ``idle_timeout`` / ``deadline``: seconds without output, and in all (``StreamTimeoutError``).
    - ``timeline``: ``report.timings.timeline`` gets every output-bearing event's arrival
      time and tokens (and ITL percentiles); off by default.

    ``stream.report`` is set when the block exits, also after an early ``break``, an exception
    or a cancellation (then without waiting on the network). A non-2xx answer raises
    ``ssetally.APIStatusError`` (its body read with a 64 KiB bound); a 2xx answer that is not
    an event stream ``SSEError``.
    """
    opened: AbstractAsyncContextManager[AsyncUsageStream] = _client.aconnect_over(
        _AIOHTTP, *args, **kwargs
    )
    return opened
