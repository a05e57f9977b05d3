"""Exceptions raised by ssetally's HTTP layer."""

from __future__ import annotations

import httpx

try:  # httpx2 is the HTTP client of the openai SDK 3.x; support it when present.
    import httpx2

    _TRANSPORT_ERRORS: tuple[type[Exception], ...] = (httpx.TransportError, httpx2.TransportError)
except ImportError:  # pragma: no cover - depends on the environment
    _TRANSPORT_ERRORS = (httpx.TransportError,)


class SSEError(*_TRANSPORT_ERRORS):  # type: ignore[misc]
    """The response is not an event stream (its Content-Type is not ``text/event-stream``).

    A subclass of ``httpx.TransportError`` (and of ``httpx2.TransportError`` when httpx2 is
    installed), as in httpx-sse.
    """


class StreamTimeoutError(TimeoutError):
    """A stream went on too long: no output-bearing event for ``idle_timeout`` seconds
    (comments and pings keep a connection alive but do not count), or past ``deadline``."""
