"""The upstream connection pools a proxy can read answers through: the lean pool
(``UpstreamPool``, connections of ``_upstream``), or an httpx/httpx2 client (the fallback,
and always the usage retrieval).

``UpstreamPool``: keep-alive connections to one origin. ``connect_timeout`` covers the TCP
connect, the TLS handshake and the wait for a pool slot. Reuse: before a request is written
on an idle connection, the connection is checked (closed, or readable: an end-of-file, a
reset or a stray byte while idle all mean it cannot carry a request) and dropped if so; the
request then goes on another or a fresh connection. Once a request byte was written it is
never sent again, except for an idempotent method (GET, HEAD, OPTIONS) on a reused
connection that the upstream closed before a single byte of the answer: that is the
keep-alive race (RFC 9112 9.3.1), retried once on a fresh connection. A POST is never
retried: the upstream may have run (and billed) it.
"""

from __future__ import annotations

import asyncio
import base64
import ssl
import time
from collections import deque
from typing import Any

import httpx

from ._config import ProxyConfig, http_library
from ._upstream import (
    Connection,
    NotSent,
    UpstreamConnectError,
    UpstreamConnectTimeout,
    UpstreamError,
    UpstreamPoolTimeout,
    UpstreamResponse,
    UpstreamTimeout,
    default_ssl_context,
    httptools_available,
)

__all__ = ["UpstreamPool", "lean_pool", "stack_client", "upstream_path"]

#: Seconds an idle pooled connection is kept (below the 5 s keep-alive of common servers, so
#: the upstream rarely closes one just as a request goes out on it).
KEEPALIVE_EXPIRY = 4.0
_IDEMPOTENT = frozenset({"GET", "HEAD", "OPTIONS"})
_BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})

#: Idle keep-alive connections kept per pool at most.
MAX_IDLE = 200


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
        if not httptools_available():
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
        self._idle: deque[Connection] = deque()
        self._open: set[Connection] = set()
        #: Connections opened so far (tests, diagnostics).
        self.connections_opened = 0

    # -------------------------------------------------------------- connections

    async def _connect(self) -> Connection:
        loop = asyncio.get_running_loop()
        self.connections_opened += 1
        try:
            _, conn = await asyncio.wait_for(
                loop.create_connection(
                    lambda: Connection(self),
                    self.host,
                    self.port,
                    ssl=self._ssl,
                    server_hostname=self.host if self._ssl is not None else None,
                ),
                self.connect_timeout,
            )
        except asyncio.TimeoutError:
            raise UpstreamConnectTimeout(
                f"no connection within {self.connect_timeout:g}s"
            ) from None
        except OSError as exc:  # refused, unreachable, TLS verification (ssl.SSLError)
            raise UpstreamConnectError(f"{type(exc).__name__}: {exc}") from exc
        self._open.add(conn)
        return conn

    def _take(self) -> Connection | None:
        now = time.monotonic()
        while self._idle:
            conn = self._idle.pop()  # the most recently used: the warmest
            if now - conn.idle_since < KEEPALIVE_EXPIRY and conn.usable():
                conn.reused = True
                return conn
            conn.close()
        return None

    def forget(self, conn: Connection) -> None:
        """A connection closed (called from the protocol)."""
        self._open.discard(conn)
        try:
            self._idle.remove(conn)
        except ValueError:
            pass

    def release(self, conn: Connection, reusable: bool) -> None:
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
            if self._slots.locked():  # a wait: bounded (wait_for costs a task)
                await asyncio.wait_for(self._slots.acquire(), self.connect_timeout)
            else:
                await self._slots.acquire()
        except asyncio.TimeoutError:
            raise UpstreamPoolTimeout(
                f"no free upstream connection within {self.connect_timeout:g}s"
            ) from None
        head = self._request_head(method, target, headers, body)
        inline = len(body) <= 64 * 1024
        data = head + body if inline else head
        retried = False
        conn: Connection | None = None
        try:
            while True:
                conn = self._take()
                if conn is None:
                    conn = await self._connect()
                    conn.reused = False
                try:
                    conn.start(method, data)
                except NotSent:  # closed after the check: nothing went out, try another
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


def upstream_path(name: str, client: Any = None) -> str:
    """The client that reads the answers for ``upstream_client`` ``name``: ``httptools``
    (the lean pool; ``auto`` picks it when httptools is installed and no ``client`` is
    given), ``httpx2`` or ``httpx``."""
    if name == "httptools":
        if not httptools_available():
            raise ImportError("upstream_client httptools needs httptools: pip install httptools")
        if client is None:
            return "httptools"
    if name == "auto" and client is None and httptools_available():
        return "httptools"
    return str(http_library("auto" if name == "httptools" else name, client).__name__)


def lean_pool(
    url: httpx.URL, cfg: ProxyConfig, ssl_context: ssl.SSLContext | None = None
) -> UpstreamPool:
    """The lean pool to ``url`` with the limits and timeouts of ``cfg``."""
    return UpstreamPool(
        url,
        max_connections=cfg.max_connections,
        max_idle=min(cfg.max_connections, MAX_IDLE),
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        max_header_bytes=cfg.max_header_bytes,
        ssl_context=ssl_context,
    )


def stack_client(http: Any, cfg: ProxyConfig) -> Any:
    """An ``AsyncClient`` of ``http`` (the httpx or httpx2 module) with the limits and
    timeouts of ``cfg``."""
    return http.AsyncClient(
        timeout=http.Timeout(
            connect=cfg.connect_timeout,
            read=cfg.read_timeout,
            write=cfg.read_timeout,
            pool=cfg.connect_timeout,
        ),
        limits=http.Limits(
            max_connections=cfg.max_connections,
            max_keepalive_connections=min(cfg.max_connections, MAX_IDLE),
        ),
        follow_redirects=False,
        trust_env=False,
    )
