"""Raw HTTP on 127.0.0.1 for the tests: a threaded ``http.server`` run during a block, a free
port, and exchanges of raw bytes where an HTTP library would tidy the request up itself."""

from __future__ import annotations

import http.server
import re
import socket
import threading
from typing import Any

from typing_extensions import Self

TIMEOUT = 10.0


def free_port() -> int:
    """A port of 127.0.0.1 that nothing listens on (bound, then let go)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class QuietHandler(http.server.BaseHTTPRequestHandler):
    """A request handler that logs nothing."""

    def log_message(self, format: str, *args: Any) -> None:
        pass


class ThreadedServer:
    """A threaded HTTP/1.0 server on 127.0.0.1 serving ``handler`` from a thread during the
    block. ``stop`` is set when the block ends: handlers that loop wait on it."""

    def __init__(self, handler: type[http.server.BaseHTTPRequestHandler]) -> None:
        self.stop = threading.Event()
        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


def raw_exchange(
    port: int, data: bytes, timeout: float = TIMEOUT, host: str = "127.0.0.1"
) -> bytes:
    """Send ``data``, return everything received until the server closes or resets the
    connection (a timeout fails)."""
    with socket.create_connection((host, port), timeout=timeout) as sock:
        sock.sendall(data)
        return read_until_close(sock)


def read_until_close(sock: socket.socket) -> bytes:
    """Everything ``sock`` receives until the peer closes or resets the connection."""
    received = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return received
        if not piece:
            return received
        received += piece


def statuses(data: bytes) -> list[int]:
    """The status codes of every response in ``data``."""
    return [int(code) for code in re.findall(rb"HTTP/1\.[01] (\d{3}) ", data)]
