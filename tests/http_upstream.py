"""A small HTTP/1.1 upstream on 127.0.0.1 for the relay and worker tests: real sockets (TLS
optional), one thread per connection, Chat Completions event streams framed as asked, and
counters of what happened on the wire (connections accepted, requests per connection,
connections the client closed mid-answer).

Request headers steer it:

* ``x-frame``: ``chunked`` (default), ``length`` (Content-Length) or ``close``
  (close-delimited: no length, connection closed at the end);
* ``x-chunks``: content chunks before the usage chunk (default 4);
* ``x-delay-ms``: pause before each chunk;
* ``x-close-after``: close the connection right after this answer (without saying so);
* ``x-drop-next``: read the next request on this connection, then close without an answer.
"""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from pathlib import Path
from typing import Any

from typing_extensions import Self

USAGE = {"prompt_tokens": 5, "completion_tokens": 7, "total_tokens": 12}


def chat_stream(chunks: int) -> bytes:
    """A Chat Completions event stream: ``chunks`` content chunks, the usage chunk, [DONE]."""
    out = []
    for i in range(chunks):
        chunk = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "created": 1,
            "model": "gpt-4o-mini",
            "choices": [{"index": 0, "delta": {"content": f"word{i} "}, "finish_reason": None}],
        }
        out.append(b"data: " + json.dumps(chunk).encode() + b"\n\n")
    last = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [],
        "usage": USAGE,
    }
    out.append(b"data: " + json.dumps(last).encode() + b"\n\n")
    out.append(b"data: [DONE]\n\n")
    return b"".join(out)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 and localhost (openssl CLI) and its key."""
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(
        [
            "openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "1",
            "-keyout", str(key), "-out", str(cert), "-subj", "/CN=localhost",
            "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost",
        ],
        check=True,
        capture_output=True,
        timeout=60,
    )  # fmt: skip
    return cert, key


class Upstream:
    """The server; ``with Upstream() as up:`` serves on ``up.origin`` until the block ends."""

    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self._tls = tls
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.2)
        self.port = self._sock.getsockname()[1]
        self.origin = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        self.lock = threading.Lock()
        #: Connections accepted.
        self.connections = 0
        #: Requests received per connection (in accept order).
        self.requests: list[int] = []
        #: Connections closed by the client before the answer was sent whole.
        self.cut_by_client = 0
        #: Request heads received, in order.
        self.heads: list[bytes] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
        self._sock.close()

    def _accept(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self._sock.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            with self.lock:
                self.connections += 1
                index = len(self.requests)
                self.requests.append(0)
            threading.Thread(target=self._serve, args=(conn, index), daemon=True).start()

    def _serve(self, raw: socket.socket, index: int) -> None:
        raw.settimeout(30)
        try:
            conn = self._tls.wrap_socket(raw, server_side=True) if self._tls else raw
        except (OSError, ssl.SSLError):
            raw.close()
            return
        buf = b""
        drop_next = False
        try:
            while True:
                request = read_request(conn, buf)
                if request is None:
                    return
                head, headers, buf = request
                with self.lock:
                    self.requests[index] += 1
                    self.heads.append(head)
                if drop_next:
                    return
                if not self._answer(conn, headers):
                    return
                if headers.get("x-close-after"):
                    return
                drop_next = bool(headers.get("x-drop-next"))
        except (ConnectionError, OSError):
            with self.lock:
                self.cut_by_client += 1
        finally:
            try:
                conn.close()
            except OSError:
                pass

    def _answer(self, conn: socket.socket, headers: dict[str, str]) -> bool:
        """Send the answer; False when the connection must close after it."""
        frame = headers.get("x-frame", "chunked")
        body = chat_stream(int(headers.get("x-chunks", "4")))
        delay = int(headers.get("x-delay-ms", "0")) / 1000
        pieces = [p + b"\n\n" for p in body.split(b"\n\n") if p]
        head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\nx-request-id: req-1\r\n"
        if frame == "length":
            head += b"content-length: %d\r\n" % len(body)
        elif frame == "chunked":
            head += b"transfer-encoding: chunked\r\n"
        else:
            head += b"connection: close\r\n"
        conn.sendall(head + b"\r\n")
        for piece in pieces:
            if delay:
                time.sleep(delay)
            if frame == "chunked":
                conn.sendall(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                conn.sendall(piece)
        if frame == "chunked":
            conn.sendall(b"0\r\n\r\n")
        return frame != "close"


def read_request(
    conn: socket.socket | ssl.SSLSocket, buf: bytes
) -> tuple[bytes, dict[str, str], bytes] | None:
    """The next request on ``conn`` (``buf``: what was read past the previous one): its head,
    its header fields and the bytes read past its body; None when the peer closed first."""
    while b"\r\n\r\n" not in buf:
        piece = conn.recv(65536)
        if not piece:
            return None
        buf += piece
    head, buf = buf.split(b"\r\n\r\n", 1)
    headers = _headers(head)
    length = int(headers.get("content-length", "0"))
    while len(buf) < length:
        piece = conn.recv(65536)
        if not piece:
            return None
        buf += piece
    return head, headers, buf[length:]


def _headers(head: bytes) -> dict[str, str]:
    out: dict[str, str] = {}
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        out[name.decode("latin-1").strip().lower()] = value.decode("latin-1").strip()
    return out


def records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]
