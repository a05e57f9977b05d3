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
from contextlib import asynccontextmanager
from typing import Any, NamedTuple

import aiohttp

from ._api import _sse_headers
from ._client import APIStatusError, _parse_body
from ._client import AsyncUsageStream as _AsyncUsageStream
from ._core import ServerSentEvent, SSEDecoder
from ._exceptions import SSEError
from ._metering import (
    RetrievalPolicy,
    StreamMeter,
    parse_json_object,
    redact,
    secrets_of,
    usage_request,
)
from ._mime import is_event_stream

__all__ = ["AsyncUsageStream", "EventSource", "aconnect_sse", "aconnect_usage"]

#: Error and retrieval bodies are read up to this size (the rest is dropped).
_MAX_BODY = 8 * 1024 * 1024


async def _read_capped(response: aiohttp.ClientResponse, limit: int = _MAX_BODY) -> bytes:
    parts: list[bytes] = []
    size = 0
    async for chunk in response.content.iter_any():
        parts.append(chunk)
        size += len(chunk)
        if size >= limit:
            break
    return b"".join(parts)[:limit]


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
    """The ``client.get`` that ``aretrieve`` needs, over an aiohttp session."""

    def __init__(self, session: aiohttp.ClientSession) -> None:
        self._session = session

    async def get(
        self, url: str, *, headers: dict[str, str], timeout: float, follow_redirects: bool = False
    ) -> _Answer:
        limit = aiohttp.ClientTimeout(total=timeout)
        async with self._session.get(
            url, headers=headers, timeout=limit, allow_redirects=follow_redirects
        ) as response:
            content = await _read_capped(response)
            lowered = {k.lower(): v for k, v in response.headers.items()}
            return _Answer(response.status, content, lowered)


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


def _prepare(
    method: str, url: Any, include_usage: bool, kwargs: dict[str, Any]
) -> tuple[dict[str, Any] | None, bool]:
    """The request body as sent (``json=`` or ``data=`` of JSON), and whether
    ``include_usage`` was added to it."""
    body = kwargs.get("json")
    if body is None:
        data = kwargs.get("data")
        body = parse_json_object(data) if isinstance(data, (bytes, str)) else None
    elif not isinstance(body, dict):
        body = None
    new = usage_request(method, str(url), body) if include_usage else None
    if new is None:
        return body, False
    kwargs.pop("data", None)
    kwargs["json"] = new
    return new, True


@asynccontextmanager
async def aconnect_usage(
    session: aiohttp.ClientSession,
    method: str,
    url: Any,
    *,
    include_usage: bool = True,
    retrieve: bool = True,
    estimate: bool = True,
    retrieval: RetrievalPolicy | None = None,
    timeline: bool = False,
    **kwargs: Any,
) -> AsyncIterator[AsyncUsageStream]:
    """``ssetally.aconnect_usage`` for an ``aiohttp.ClientSession``; yields an
    ``AsyncUsageStream``.

    - ``include_usage``: ask Chat/legacy Completions streams for usage when the body (``json=``
      or JSON ``data=``) did not; the added usage chunk is not shown to the caller.
    - ``retrieve``: a Responses stream that ended without its terminal event has its usage
      fetched with ``GET /responses/{id}`` through ``session`` (each GET with a timeout).
    - ``estimate``: when no usage can be had, count tokens with tiktoken.
    - ``timeline``: ``report.timings.timeline`` gets every output-bearing event's arrival
      time and tokens (and ITL percentiles); off by default.

    ``stream.report`` is set when the block exits, also after an early ``break``, an exception
    or a cancellation (then without waiting on the network). A non-2xx answer raises
    ``ssetally.APIStatusError``; a 2xx answer that is not an event stream ``SSEError``.
    """
    body, injected = _prepare(method, url, include_usage, kwargs)
    meter = StreamMeter(
        request_body=body, injected=injected, collect_output=True, timeline=timeline
    )
    stream = AsyncUsageStream(meter, retrieval or RetrievalPolicy(), retrieve, estimate)
    async with session.request(method, url, **kwargs) as response:
        stream._response = response
        secrets = _secrets(response)
        meter.secrets = secrets
        info = response.request_info
        stream._request = _Request(str(info.url), {k: v for k, v in info.headers.items()})
        if response.status >= 300:
            content = await _read_capped(response)
            error = redact(_parse_body(content), secrets)
            raise APIStatusError(response.status, error, response)
        _check_content_type(response, secrets)
        try:
            yield stream
        except BaseException as exc:
            stream._note_interruption(exc)
            raise
        finally:
            try:
                if response.content.at_eof():
                    response.release()
                else:
                    response.close()
            finally:
                await stream._finalize(session)
