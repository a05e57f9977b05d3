"""The lean upstream client of the proxy, one connection: HTTP/1.1 over an asyncio protocol,
answers parsed by httptools (llhttp). Pooling and the retry rule: ``_pools``.

Why not httpx/httpx2 here: their stack (httpcore, h11, anyio) opens a cancel scope and a
timeout for every read, which costs more CPU than relaying and metering together. Here bytes
go from ``data_received`` through the parser into one buffer that the relay drains (the tap
reads what is forwarded); the only timers are one silence timer per connection
(``read_timeout``: the longest silence of the upstream while an answer is due or streaming,
not counted while the proxy paused reading for a slow client) and the proxy's per-stream
idle timer and deadline. Bodies: chunked, Content-Length or close-delimited; the header
section is bounded; bytes past the answer are never relayed.
"""

from __future__ import annotations

import asyncio
import select
import ssl
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

from .._core import BodyRelay, UpstreamBody, head_end

if TYPE_CHECKING:
    from ._pools import UpstreamPool

__all__ = [
    "SentRequest",
    "UpstreamConnectError",
    "UpstreamConnectTimeout",
    "UpstreamError",
    "UpstreamPoolTimeout",
    "UpstreamReadError",
    "UpstreamReadTimeout",
    "UpstreamResponse",
    "UpstreamTimeout",
    "default_ssl_context",
    "httptools_available",
]

httptools: Any
try:
    import httptools
except ImportError:  # the proxy falls back to httpx2/httpx
    httptools = None


def httptools_available() -> bool:
    """True when the lean upstream client can run (httptools is importable)."""
    return httptools is not None


class UpstreamError(Exception):
    """The upstream could not be reached, broke the connection, or sent a malformed answer.

    ``kind`` names the failure as httpx names its errors (``ConnectError``, ``ReadTimeout``):
    it is the first word of a record's ``ended_by`` and the trace's ``error.type``."""

    kind = "UpstreamError"

    def __init_subclass__(cls, kind: str = "", **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.kind = kind or cls.kind


class UpstreamConnectError(UpstreamError, kind="ConnectError"):
    """No connection to the upstream: refused, unreachable, DNS, TLS verification."""


class UpstreamReadError(UpstreamError, kind="ReadError"):
    """The connection broke while an answer was due (reset, aborted)."""


class UpstreamTimeout(UpstreamError, kind="TimeoutException"):
    """No connection, pool slot or byte from the upstream within its timeout."""


class UpstreamConnectTimeout(UpstreamTimeout, kind="ConnectTimeout"):
    """No connection within ``connect_timeout``."""


class UpstreamPoolTimeout(UpstreamTimeout, kind="PoolTimeout"):
    """No free pool slot within ``connect_timeout``."""


class UpstreamReadTimeout(UpstreamTimeout, kind="ReadTimeout"):
    """No byte from the upstream for ``read_timeout`` while an answer was due."""


#: Buffered answer bytes beyond which the upstream is not read (the client is slower).
HIGH_WATER = 256 * 1024


class SentRequest:
    """What the retrieval fallback needs of a sent request: its ``url`` and ``headers``."""

    __slots__ = ("headers", "url")

    def __init__(self, url: str, headers: list[tuple[bytes, bytes]]) -> None:
        self.url = url
        self.headers = {k.decode("latin-1"): v.decode("latin-1") for k, v in headers}


class UpstreamHeaders:
    """An answer's header fields: ``raw`` as received, ``get`` by case-insensitive name
    (repeated fields joined with ``, ``, as httpx does)."""

    __slots__ = ("_index", "raw")

    def __init__(self, raw: list[tuple[bytes, bytes]]) -> None:
        self.raw = raw
        index: dict[str, str] = {}
        for k, v in raw:
            name = k.decode("latin-1").lower()
            value = v.decode("latin-1")
            index[name] = f"{index[name]}, {value}" if name in index else value
        self._index = index

    def get(self, name: str, default: Any = None) -> Any:
        return self._index.get(name.lower(), default)


class Connection(asyncio.Protocol):
    """One upstream connection; carries one request at a time."""

    def __init__(self, pool: UpstreamPool) -> None:
        self._pool = pool
        self._loop = asyncio.get_running_loop()
        self.transport: Any = None  # an asyncio.Transport (uvloop's do not subclass it)
        self.closed = False
        self.idle_since = 0.0
        self.reused = False
        self._parser: Any = None
        self._reset()

    def _reset(self) -> None:
        self.method = ""
        self.active = False
        self.headers_done = False
        self.complete = False
        self.got_bytes = False
        self.error: BaseException | None = None
        self.status = 0
        self.raw_headers: list[tuple[bytes, bytes]] = []
        # The header section so far (split over reads) and its last bytes, for the search
        # of its end; the bytes of every section read (interim ones too), for their bound.
        self._head: list[bytes] = []
        self._tail = b""
        self._head_bytes = 0
        self._section_done = False
        self._te: bytes | None = None
        self._cl: bytes | None = None
        self._interim = False
        self._keep_alive = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._write_ok: asyncio.Future[None] | None = None
        #: The body being read: the transport's protocol until the body ends.
        self._body: UpstreamBody | None = None
        #: Body bytes go to a relay (``divert``), not to ``read()``.
        self.diverted = False

    # -------------------------------------------------------------- transport events

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        if not self.active or self.complete:
            # A byte while idle, or after the answer: the connection cannot be reused.
            self.closed = True
            if self.transport is not None:
                self.transport.close()
            return
        self.got_bytes = True
        self._last = self._loop.time()
        self._read_head(data)

    def _read_head(self, data: bytes) -> None:
        """Give the parser whole header sections only (interim 1xx ones, then the
        answer's); the body after the last is read natively by an ``UpstreamBody``."""
        limit = self._pool.max_header_bytes
        while data:
            probe = self._tail + data
            end = head_end(probe)
            cut = len(data) if end < 0 else end - len(self._tail)
            self._head_bytes += cut
            if self._head_bytes > limit:
                self._fail(UpstreamError(f"the upstream's header section passed {limit} bytes"))
                return
            if end < 0:
                self._head.append(data)
                self._tail = probe[-3:]
                return
            self._head.append(data[:cut])
            section = b"".join(self._head)
            self._head, self._tail, data = [], b"", data[cut:]
            self._section_done = False
            try:
                self._parser.feed_data(section)
            except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
                self._fail(UpstreamError(f"malformed answer from the upstream: {exc}"))
                return
            if self.error is not None:
                return
            if not self._section_done:
                self._fail(UpstreamError("malformed answer from the upstream: a header section"))
                return
            if self.headers_done:
                self._start_body(data)
                return

    def _start_body(self, rest: bytes) -> None:
        """The answer's header section was read: its body (from ``rest`` on) is read by an
        ``UpstreamBody``, the transport's protocol until the body ends."""
        bodyless = self.method == "HEAD" or self.status in (204, 304)
        try:
            body = UpstreamBody(self, self._te, self._cl, bodyless, self._pool.max_header_bytes)
        except ValueError as exc:
            self._fail(UpstreamError(f"malformed answer from the upstream: {exc}"))
            return
        if body.done:
            self.body_done(bool(rest))
            return
        self._body = body
        if self.transport is not None:
            self.transport.set_protocol(body)
        if rest:
            body.data_received(rest)

    def eof_received(self) -> bool | None:
        if self.active and not self.complete:
            self._fail(self._closed_early())
        self.closed = True
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.active and not self.complete and self.error is None:
            if exc is None:
                self._fail(self._closed_early())
            else:
                self._fail(UpstreamReadError(f"{type(exc).__name__}: {exc}"))
        if self._write_ok is not None and not self._write_ok.done():
            self._write_ok.set_result(None)
        self._pool.forget(self)

    def pause_writing(self) -> None:
        self._write_ok = self._loop.create_future()

    def resume_writing(self) -> None:
        if self._write_ok is not None and not self._write_ok.done():
            self._write_ok.set_result(None)
        self._write_ok = None

    def _closed_early(self) -> UpstreamError:
        if self.headers_done:
            return UpstreamError("the upstream closed the connection mid-body")
        return UpstreamError("the upstream closed the connection without an answer")

    # -------------------------------------------------------------- httptools callbacks

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"transfer-encoding":
            self._te = value if self._te is None else self._te + b", " + value
        elif lower == b"content-length":
            self._cl = value if self._cl is None else self._cl + b", " + value
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        self._section_done = True
        status = int(self._parser.get_status_code())
        if 100 <= status < 200:
            if status == 101:
                self._fail(UpstreamError("the upstream switched protocols (101)"))
                return
            self._interim = True  # 100 Continue and kin: the answer follows
            self.raw_headers = []
            self._te = self._cl = None
            return
        self.status = status
        self.headers_done = True
        # Read now: llhttp resets its flags once the message is complete.
        self._keep_alive = bool(self._parser.should_keep_alive()) and (
            self._parser.get_http_version() == "1.1"
        )
        self._wake()

    def on_message_complete(self) -> None:
        # Only an interim answer's: the parser never sees a body (UpstreamBody reads it).
        self._interim = False

    # -------------------------------------------------------------- UpstreamBody events

    def on_body(self, body: bytes) -> None:
        """Body bytes while no relay is diverted: buffered for ``read()``."""
        self._chunks.append(body)
        self._size += len(body)
        if self._size > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def body_congested(self) -> None:
        """The diverted relay's client is past its high-water mark: stop reading."""
        if not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
            self._wake()

    def body_done(self, stray: bool) -> None:
        """The body ended; ``stray``: bytes followed it (the connection is not reused)."""
        self.complete = True
        body, self._body = self._body, None
        if body is not None and self.transport is not None and not self.closed:
            self.transport.set_protocol(self)
        if stray:
            self.close()
        self._wake()

    def body_failed(self, message: str) -> None:
        """The body cannot be read (broken framing, or closed before its end)."""
        self._fail(UpstreamError(message))

    # -------------------------------------------------------------- the exchange

    def _wake(self) -> None:
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def _fail(self, exc: BaseException) -> None:
        if self.error is None:
            self.error = exc
        self.closed = True
        if self.transport is not None:
            self.transport.close()
        self._wake()

    def _check_silence(self) -> None:
        self._timer = None
        if not self.active or self.complete or self.error is not None:
            return
        timeout = self._pool.read_timeout
        silent = self._loop.time() - self._last
        if self._body is not None:  # reading the body: its own clock of the last read
            silent = min(silent, self._body.idle_seconds())
        if self._paused:  # the proxy stopped reading: not the upstream's silence
            self._last = self._loop.time()
            silent = 0.0
        if silent >= timeout:
            self._fail(UpstreamReadTimeout(f"no byte from the upstream for {timeout:g}s"))
            return
        self._timer = self._loop.call_later(timeout - silent, self._check_silence)

    def start(self, method: str, data: bytes) -> None:
        """Write one request; raises ``NotSent`` when the connection was already closed."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise NotSent
        assert httptools is not None
        self._reset()
        self.method = method
        self.active = True
        self._parser = httptools.HttpResponseParser(self)
        self._last = self._loop.time()
        self._timer = self._loop.call_later(self._pool.read_timeout, self._check_silence)
        transport.write(data)

    async def write_body(self, body: bytes) -> None:
        """Write the request body, waiting while the transport's buffer is full."""
        view = memoryview(body)
        step = 256 * 1024
        for i in range(0, len(view), step):
            if self.closed or self.transport is None:
                return  # the failure is reported by the answer
            self.transport.write(view[i : i + step])
            if self._write_ok is not None:
                await self._write_ok

    async def head(self) -> None:
        """Wait for the answer's header section (or the failure)."""
        while not self.headers_done and self.error is None:
            self._waiter = self._loop.create_future()
            await self._waiter
        self._waiter = None
        if not self.headers_done and self.error is not None:
            raise self.error

    async def read(self) -> bytes:
        """Every answer byte received so far (waiting for some); b"" at the end."""
        while not self._chunks:
            if self.error is not None:
                raise self.error
            if self.complete:
                return b""
            self._waiter = self._loop.create_future()
            await self._waiter
            self._waiter = None
        chunks = self._chunks
        data = chunks[0] if len(chunks) == 1 else b"".join(chunks)
        self._chunks = []
        self._size = 0
        if self._paused:
            self._paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()
        return data

    def divert(self, relay: BodyRelay | None) -> bytes:
        """Hand every body byte read from now on to ``relay``, from the native body reader,
        instead of buffering it for ``read()``; returns what was buffered before. When the
        relay's client is congested, reading pauses until ``resume()``. None: back to
        buffering."""
        self.diverted = relay is not None
        if self._body is not None:
            self._body.divert(relay)
        chunks = self._chunks
        self._chunks = []
        self._size = 0
        return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    @property
    def paused(self) -> bool:
        """Reading is paused until the relay's client takes what it was sent."""
        return self._paused

    def resume(self) -> None:
        """Read from the upstream again (after ``paused``)."""
        if self._paused:
            self._paused = False
            if self.transport is not None and not self.closed:
                self.transport.resume_reading()

    async def settle(self) -> None:
        """Wait until the diverted answer ended, failed, or paused for its client."""
        while not (self.complete or self.error is not None or self._paused):
            self._waiter = self._loop.create_future()
            await self._waiter
        self._waiter = None

    def finish(self) -> bool:
        """End the exchange; True when the connection can carry another request."""
        self.diverted = False
        if self._body is not None:
            self._body.divert(None)
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self.active:
            self.close()
            return False
        ok = (
            self.complete
            and self.error is None
            and not self.closed
            and not self._chunks
            and not self._paused
            and self.method != "HEAD"
            and self._keep_alive
        )
        self.active = False
        self._parser = None
        if not ok:
            self.close()
        return ok

    def close(self) -> None:
        self.closed = True
        if self.transport is not None:
            self.transport.close()

    def usable(self) -> bool:
        """An idle connection can carry a request: open, and nothing to read on it."""
        if self.closed or self.transport is None or self.transport.is_closing():
            return False
        sock = self.transport.get_extra_info("socket")
        if sock is None:
            return True
        try:
            readable, _, _ = select.select([sock.fileno()], [], [], 0)
        except (OSError, ValueError):
            return False
        return not readable


async def _ended() -> bytes:
    return b""


class NotSent(Exception):
    """The connection was found closed before any byte of the request was written."""


class UpstreamResponse:
    """An answer being received: ``status_code``, ``headers``, then ``read()`` until b""."""

    __slots__ = ("_conn", "_pool", "connection", "headers", "read", "status_code")

    def __init__(self, pool: UpstreamPool, conn: Connection) -> None:
        self._pool = pool
        self._conn: Connection | None = conn
        self.status_code = conn.status
        self.headers = UpstreamHeaders(conn.raw_headers)
        #: The connection the answer arrives on (its ``divert`` relays from the protocol).
        self.connection = conn
        #: ``await read()``: the answer's body bytes received since the last call (as sent:
        #: transfer coding removed, content coding kept); b"" at its end. Raises
        #: ``UpstreamError`` when the answer broke off, after every byte received before
        #: the break was returned. (The connection's own method: one call per read.)
        self.read: Callable[[], Awaitable[bytes]] = conn.read

    async def aclose(self) -> None:
        """Release the connection: back to the pool when the answer was read whole and the
        upstream keeps it alive, closed otherwise (e.g. the client left mid-stream)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self.read = _ended
            self._pool.release(conn, conn.finish())


def default_ssl_context() -> ssl.SSLContext:
    """Certificate and host name verification against certifi's CA bundle (what httpx
    trusts) when installed, else the system's."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()


def failure_name(exc: BaseException) -> str:
    """ "Kind: message" of an upstream failure, by its type: the lean client's errors by their
    ``kind`` (``ConnectError``, ``ReadTimeout``, as httpx names its own), others by class."""
    kind = exc.kind if isinstance(exc, UpstreamError) else type(exc).__name__
    return f"{kind}: {exc}"
