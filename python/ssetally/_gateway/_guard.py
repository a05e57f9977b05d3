"""The proxy's defences at the door: request paths that stay under the upstream prefix, message
framing that cannot smuggle a second request, a shared budget for request bodies held in
memory and the bounded read of one, and a deadline for a request's header section (against
slowloris)."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import unquote_to_bytes

#: Percent-encoded bytes that would change how a path splits or ends, refused outright: the
#: upstream may decode them into a separator (``%2f``, ``%5c``) or a terminator (``%00``).
_AMBIGUOUS = (b"%2f", b"%5c", b"%00")
#: Bytes no request path may hold raw: controls, space and DEL.
_CONTROL = re.compile(rb"[\x00-\x20\x7f]")


class Refused(Exception):
    """A request the proxy will not forward: ``status`` and a message for the client."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


def normalize_path(raw_path: bytes) -> bytes:
    """The request path with its dot segments resolved (RFC 3986 5.2.4), decoded or not.

    Raises ``Refused`` for a path that is not origin-form, that climbs above the root (it
    would leave the upstream prefix), or that holds an encoded separator, backslash, NUL or
    control character. Other bytes are forwarded as the client wrote them.
    """
    if not raw_path.startswith(b"/"):
        raise Refused(400, "this proxy accepts origin-form request targets only (/path)")
    lowered = raw_path.lower()
    if b"\\" in raw_path or any(seq in lowered for seq in _AMBIGUOUS):
        raise Refused(400, "the request path holds an encoded separator or a backslash")
    if _CONTROL.search(raw_path) is not None:
        raise Refused(400, "the request path holds a control character or a space")
    segments = raw_path[1:].split(b"/")
    out: list[bytes] = []
    for i, segment in enumerate(segments):
        last = i == len(segments) - 1
        name = unquote_to_bytes(segment) if b"%" in segment else segment
        if name == b".":
            if last:
                out.append(b"")
            continue
        if name == b"..":
            if not out:
                raise Refused(400, "the request path leaves the upstream prefix")
            out.pop()
            if last:
                out.append(b"")
            continue
        out.append(segment)
    return b"/" + b"/".join(out)


def framing_error(headers: Iterable[tuple[bytes, bytes]]) -> str | None:
    """Why a request's framing is ambiguous (RFC 9112 6.1, 6.3), or None.

    A request with both ``Content-Length`` and ``Transfer-Encoding``, with several differing
    or malformed lengths, or with a transfer coding other than a final ``chunked`` can be
    read two ways by two parsers: its tail could be served as a second request.
    """
    lengths: set[bytes] = set()
    codings: list[bytes] = []
    for name, value in headers:
        name = name.lower()
        if name == b"content-length":
            lengths.update(v.strip() for v in value.split(b","))
        elif name == b"transfer-encoding":
            codings.extend(c.strip().lower() for c in value.split(b","))
    if lengths and codings:
        return "both Content-Length and Transfer-Encoding"
    if len(lengths) > 1:
        return "several different Content-Length values"
    if lengths and not next(iter(lengths)).isdigit():
        return "a Content-Length that is not a number"
    if codings and codings != [b"chunked"]:
        return "a Transfer-Encoding other than chunked"
    return None


class BodyBudget:
    """The bytes of request bodies that all requests together may hold in memory at once.

    One event loop uses it (no lock). ``take`` is refused past the budget; what was taken is
    given back with ``give`` when the request ends."""

    __slots__ = ("held", "limit")

    def __init__(self, limit: int) -> None:
        self.limit = limit
        #: Bytes held now.
        self.held = 0

    def take(self, n: int) -> bool:
        """Reserve ``n`` more bytes; False (nothing reserved) when that would pass the limit."""
        if self.held + n > self.limit:
            return False
        self.held += n
        return True

    def give(self, n: int) -> None:
        """Release ``n`` bytes taken earlier."""
        self.held = max(0, self.held - n)


async def read_body(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    declared: int,
    limit: int,
    timeout: float,
    take: Callable[[int], bool],
) -> list[bytes] | None:
    """A request body's parts (None when the client left first) within ``timeout`` seconds
    (``asyncio.TimeoutError`` past it). ``take(n)`` reserves ``n`` more bytes of the shared
    body budget (``declared`` first): refused, 503; past ``limit`` bytes, 413."""
    task = asyncio.current_task()
    if task is None or not hasattr(task, "uncancel"):  # Python 3.10
        return await asyncio.wait_for(_read_body(receive, declared, limit, take), timeout)
    # One timer that cancels the task, as asyncio.timeout does, at a fraction of its cost:
    # the body has mostly come with the header section, and the timer is never due.
    expired: list[bool] = []
    cancelling = task.cancelling()

    def expire() -> None:
        expired.append(True)
        task.cancel()

    handle = asyncio.get_running_loop().call_later(timeout, expire)
    try:
        return await _read_body(receive, declared, limit, take)
    except asyncio.CancelledError:
        if expired and task.uncancel() <= cancelling:
            raise asyncio.TimeoutError from None
        raise  # cancelled by someone else (a shutdown) too
    finally:
        handle.cancel()


_BUSY = "the proxy is holding too many request bodies; retry later"


async def _read_body(
    receive: Callable[[], Awaitable[MutableMapping[str, Any]]],
    declared: int,
    limit: int,
    take: Callable[[int], bool],
) -> list[bytes] | None:
    if declared and not take(declared):
        raise Refused(503, _BUSY)
    held = declared
    parts: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            return None
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise Refused(413, "request body too large")
        if size > held:
            if not take(size - held):
                raise Refused(503, _BUSY)
            held = size
        if chunk:
            parts.append(chunk)
        if not message.get("more_body", False):
            return parts


#: The attribute of a uvicorn request cycle that may hold a callable: the proxy's protocol
#: calls it when the cycle's client connection is lost (``on_client_lost``).
CLIENT_LOST = "ssetally_client_lost"


def on_client_lost(cycle: Any, callback: Callable[[], None]) -> bool:
    """Have ``callback()`` called when the client of uvicorn's request ``cycle`` goes away,
    with no task waiting on ``receive()`` (``CLIENT_LOST`` set to None: no more); False, and
    nothing set, when the connection's protocol is not the proxy's own
    (``with_header_timeout``), which alone does it. Called at once when the client is gone
    already."""
    try:
        protocol = cycle.transport.get_protocol()
    except AttributeError:
        return False
    if not getattr(protocol, "reports_client_lost", False):
        return False
    setattr(cycle, CLIENT_LOST, callback)
    if getattr(cycle, "disconnected", False):
        callback()
    return True


def with_header_timeout(base: type[Any], seconds: float) -> type[Any]:
    """A subclass of uvicorn's HTTP protocol ``base`` (h11 or httptools) that closes a
    connection whose request header section has not arrived within ``seconds`` of its first
    byte (or of the connection): a client sending a byte a second cannot hold it open.
    Keep-alive idleness between requests stays uvicorn's ``timeout_keep_alive``. When the
    connection is lost it also calls its request cycle's ``on_client_lost`` callback."""

    class HeaderDeadline(base):  # type: ignore[misc]
        reports_client_lost = True

        def connection_made(self, transport: asyncio.Transport) -> None:
            self._header_timer: asyncio.TimerHandle | None = None
            self._known_cycle: Any = None
            super().connection_made(transport)
            self._arm()

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            cycle = getattr(self, "cycle", None)
            if cycle is not None and cycle is not self._known_cycle:
                # A new request's headers are complete.
                self._known_cycle = cycle
                self._disarm()
            elif self._header_timer is None and self._awaiting_headers():
                self._arm()

        def connection_lost(self, exc: Exception | None) -> None:
            self._disarm()
            cycle = getattr(self, "cycle", None)
            super().connection_lost(exc)
            callback = getattr(cycle, CLIENT_LOST, None)
            if callback is not None:
                callback()

        def _awaiting_headers(self) -> bool:
            cycle = getattr(self, "cycle", None)
            return cycle is None or (cycle is self._known_cycle and cycle.response_complete)

        def _arm(self) -> None:
            self._header_timer = self.loop.call_later(seconds, self._expired)

        def _disarm(self) -> None:
            if self._header_timer is not None:
                self._header_timer.cancel()
                self._header_timer = None

        def _expired(self) -> None:
            self._header_timer = None
            if self._awaiting_headers() and not self.transport.is_closing():
                self.transport.close()

    HeaderDeadline.__name__ = f"HeaderDeadline{base.__name__}"
    return HeaderDeadline
