"""The lean upstream client of the proxy: HTTP/1.1 over asyncio protocols, answers parsed by
httptools (llhttp), keep-alive connections pooled per origin.

Why not httpx/httpx2 here: their stack (httpcore, h11, anyio) opens a cancel scope and a
timeout for every read, which costs more CPU than relaying and metering together. Here bytes
go from ``data_received`` through the parser into one buffer that the relay drains; the only
timers are one silence timer per connection (``read_timeout``) and the proxy's per-stream
idle timer and deadline.

Timeouts: ``connect_timeout`` covers the TCP connect, the TLS handshake and the wait for a
pool slot; ``read_timeout`` is the longest silence of the upstream while an answer is due or
streaming (not counted while the proxy itself paused reading for a slow client).

Reuse of a pooled connection: before a request is written on an idle connection, the
connection is checked (closed, or readable: an end-of-file, a reset or a stray byte while
idle all mean it cannot carry a request) and dropped if so; the request then goes on another
or a fresh connection. Once a request byte was written it is never sent again, except for an
idempotent method (GET, HEAD, OPTIONS) on a reused connection that the upstream closed before
a single byte of the answer: that is the keep-alive race (RFC 9112 9.3.1), retried once on a
fresh connection. A POST is never retried: the upstream may have run (and billed) it.
"""

from __future__ import annotations

import asyncio
import base64
import select
import ssl
import time
from collections import deque
from typing import Any

import httpx

__all__ = [
    "SentRequest",
    "UpstreamError",
    "UpstreamPool",
    "UpstreamResponse",
    "UpstreamTimeout",
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
    """The upstream could not be reached, broke the connection, or sent a malformed answer."""


class UpstreamTimeout(UpstreamError):
    """No connection, pool slot or byte from the upstream within its timeout."""


#: Buffered answer bytes beyond which the upstream is not read (the client is slower).
HIGH_WATER = 256 * 1024
#: Seconds an idle pooled connection is kept (below the 5 s keep-alive of common servers, so
#: the upstream rarely closes one just as a request goes out on it).
KEEPALIVE_EXPIRY = 4.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


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


class _Connection(asyncio.Protocol):
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
        self._head_bytes = 0
        self._chunked = False
        self._length = False
        self._interim = False
        self._keep_alive = False
        self._chunks: list[bytes] = []
        self._size = 0
        self._paused = False
        self._waiter: asyncio.Future[None] | None = None
        self._last = 0.0
        self._timer: asyncio.TimerHandle | None = None
        self._write_ok: asyncio.Future[None] | None = None

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
        try:
            self._parser.feed_data(data)
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as exc:
            if self.complete:  # bytes after the answer (see on_message_begin): not reusable
                self.close()
            else:
                self._fail(UpstreamError(f"malformed answer from the upstream: {exc}"))
            return
        if not self.headers_done:
            self._head_bytes += len(data)
            if self._head_bytes > self._pool.max_header_bytes:
                self._fail(
                    UpstreamError(
                        f"the upstream's header section passed {self._pool.max_header_bytes} bytes"
                    )
                )

    def eof_received(self) -> bool | None:
        if self.active and not self.complete:
            if self.headers_done and not self._chunked and not self._length:
                self.complete = True  # a close-delimited body ends here
                self._wake()
            else:
                self._fail(self._closed_early())
        self.closed = True
        return None  # the transport closes itself

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        if self.active and not self.complete and self.error is None:
            if exc is None:
                self._fail(self._closed_early())
            else:
                self._fail(UpstreamError(f"{type(exc).__name__}: {exc}"))
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

    def on_message_begin(self) -> None:
        if self.complete:  # a second answer in the same read: never relayed
            raise _StrayBytes

    def on_header(self, name: bytes, value: bytes) -> None:
        lower = name.lower()
        if lower == b"transfer-encoding" and b"chunked" in value.lower():
            self._chunked = True
        elif lower == b"content-length":
            self._length = True
        self.raw_headers.append((name, value))

    def on_headers_complete(self) -> None:
        status = int(self._parser.get_status_code())
        if 100 <= status < 200:
            if status == 101:
                self._fail(UpstreamError("the upstream switched protocols (101)"))
                return
            self._interim = True  # 100 Continue and kin: the answer follows
            self.raw_headers = []
            self._chunked = self._length = False
            return
        self.status = status
        self.headers_done = True
        # Read now: llhttp resets its flags once the message is complete.
        self._keep_alive = bool(self._parser.should_keep_alive()) and (
            self._parser.get_http_version() == "1.1"
        )
        if self.method == "HEAD" or status in (204, 304):
            self._length = True  # no body, whatever the headers say
            if self.method == "HEAD":
                self.complete = True
        self._wake()

    def on_body(self, body: bytes) -> None:
        if self.complete:  # a body after HEAD's header section
            return
        self._chunks.append(body)
        self._size += len(body)
        if self._size > HIGH_WATER and not self._paused and self.transport is not None:
            self._paused = True
            self.transport.pause_reading()
        self._wake()

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        self.complete = True
        self._wake()

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
        if self._paused:  # the proxy stopped reading: not the upstream's silence
            self._last = self._loop.time()
            silent = 0.0
        if silent >= timeout:
            self._fail(UpstreamTimeout(f"ReadTimeout: no byte from the upstream for {timeout:g}s"))
            return
        self._timer = self._loop.call_later(timeout - silent, self._check_silence)

    def start(self, method: str, data: bytes) -> None:
        """Write one request; raises ``_NotSent`` when the connection was already closed."""
        transport = self.transport
        if self.closed or transport is None or transport.is_closing():
            raise _NotSent
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

    def finish(self) -> bool:
        """End the exchange; True when the connection can carry another request."""
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


class _StrayBytes(Exception):
    """Raised from the parser to stop it at bytes past the answer."""


class _NotSent(Exception):
    """The connection was found closed before any byte of the request was written."""


class UpstreamResponse:
    """An answer being received: ``status_code``, ``headers``, then ``read()`` until b""."""

    __slots__ = ("_conn", "_pool", "headers", "status_code")

    def __init__(self, pool: UpstreamPool, conn: _Connection) -> None:
        self._pool = pool
        self._conn: _Connection | None = conn
        self.status_code = conn.status
        self.headers = UpstreamHeaders(conn.raw_headers)

    async def read(self) -> bytes:
        """The answer's body bytes received since the last call (as sent: transfer coding
        removed, content coding kept); b"" at its end. Raises ``UpstreamError`` when the
        answer broke off, after every byte received before the break was returned."""
        conn = self._conn
        if conn is None:
            return b""
        return await conn.read()

    async def aclose(self) -> None:
        """Release the connection: back to the pool when the answer was read whole and the
        upstream keeps it alive, closed otherwise (e.g. the client left mid-stream)."""
        conn, self._conn = self._conn, None
        if conn is not None:
            self._pool.release(conn, conn.finish())


class UpstreamPool:
    """Keep-alive HTTP/1.1 connections to one origin (``scheme://host:port``), at most
    ``max_connections`` at once, at most ``max_idle`` of them idle."""

    def __init__(
        self,
        url: httpx.URL,
        *,
        max_connections: int,
        max_idle: int,
        connect_timeout: float,
        read_timeout: float,
        max_header_bytes: int,
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        if httptools is None:
            raise ImportError("the lean upstream client needs httptools: pip install httptools")
        self.scheme = url.scheme
        self.host = url.host
        self.port = url.port or (443 if url.scheme == "https" else 80)
        self._authority = url.netloc  # host[:port], IDNA-encoded, without userinfo
        self._basic: bytes | None = None
        if url.username or url.password:
            token = base64.b64encode(f"{url.username}:{url.password}".encode())
            self._basic = b"Basic " + token
        self._ssl: ssl.SSLContext | None = None
        if url.scheme == "https":
            self._ssl = ssl_context or default_ssl_context()
        self.max_connections = max_connections
        self.max_idle = max_idle
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.max_header_bytes = max_header_bytes
        self._slots = asyncio.Semaphore(max_connections)
        self._idle: deque[_Connection] = deque()
        self._open: set[_Connection] = set()
        #: Connections opened so far (tests, diagnostics).
        self.connections_opened = 0

    # -------------------------------------------------------------- connections

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        self.connections_opened += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: _Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamTimeout(
                f"ConnectTimeout: no connection within {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:  # refused, unreachable, TLS verification (ssl.SSLError)
            raise UpstreamError(f"ConnectError: {type(exc).__name__}: {exc}") from exc
        self._open.add(conn)
        return conn

    def _take(self) -> _Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the warmest
            if now - conn.idle_since < KEEPALIVE_EXPIRY and conn.usable():
                conn.reused = True
                return conn
            conn.close()
        return None

    def forget(self, conn: _Connection) -> None:
        """A connection closed (called from the protocol)."""
        self._open.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def release(self, conn: _Connection, reusable: bool) -> None:
        """The exchange on ``conn`` ended: pool it when ``reusable``, free its slot."""
        self._slots.release()
        if reusable and len(self._idle) < self.max_idle:
            conn.idle_since = time.monotonic()
            self._idle.append(conn)
        elif reusable:
            conn.close()

    @property
    def idle_connections(self) -> int:
        """Connections waiting in the pool."""
        return len(self._idle)

    # -------------------------------------------------------------- requests

    def _request_head(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> bytes:
        parts = [method.encode("ascii"), b" ", target, b" HTTP/1.1\r\nhost: ", self._authority]
        has_auth = False
        for k, v in headers:
            # Names and values come from the ASGI server's parser: no CR or LF in them.
            parts += (b"\r\n", k, b": ", v)
            has_auth = has_auth or k.lower() == b"authorization"
        if self._basic is not None and not has_auth:
            parts += (b"\r\nauthorization: ", self._basic)
        if body or method in _BODY_METHODS:
            parts += (b"\r\ncontent-length: ", str(len(body)).encode("ascii"))
        parts.append(b"\r\n\r\n")
        return b"".join(parts)

    async def request(
        self, method: str, target: bytes, headers: list[tuple[bytes, bytes]], body: bytes
    ) -> UpstreamResponse:
        """Send one request (``target``: path and query) and wait for the answer's header
        section. Raises ``UpstreamTimeout`` or ``UpstreamError``."""
        try:
            await asyncio.wait_for(self._slots.acquire(), self.connect_timeout)
        except asyncio.TimeoutError:
            raise UpstreamTimeout(
                f"PoolTimeout: no free upstream connection within {self.connect_timeout:g}s"
            ) from None
        head = self._request_head(method, target, headers, body)
        inline = len(body) <= 64 * 1024
        data = head + body if inline else head
        retried = False
        conn: _Connection | None = None
        try:
            while True:
                conn = self._take()
                if conn is None:
                    conn = await self._connect()
                    conn.reused = False
                try:
                    conn.start(method, data)
                except _NotSent:  # closed after the check: nothing went out, try another
                    if not conn.reused:
                        raise UpstreamError(
                            "the upstream closed the connection without an answer"
                        ) from None
                    continue
                try:
                    if not inline:
                        await conn.write_body(body)
                    await conn.head()
                except UpstreamError:
                    if (
                        conn.reused
                        and not retried
                        and not conn.got_bytes
                        and method in _IDEMPOTENT
                        and not isinstance(conn.error, UpstreamTimeout)
                    ):
                        retried = True
                        conn.finish()
                        continue
                    raise
                return UpstreamResponse(self, conn)
        except BaseException:
            if conn is not None:
                conn.finish()
                conn.close()
            self._slots.release()
            raise

    async def aclose(self) -> None:
        """Close every connection, idle or not."""
        for conn in list(self._open):
            conn.close()
        self._idle.clear()


def default_ssl_context() -> ssl.SSLContext:
    """Certificate and host name verification against certifi's CA bundle (what httpx
    trusts) when installed, else the system's."""
    try:
        import certifi

        return ssl.create_default_context(cafile=certifi.where())
    except ImportError:
        return ssl.create_default_context()
