"""What the gateway's tests share: a ``ProxyServer`` in front of an upstream, its JSONL
records, a scripted upstream, and hand-written requests and Chat chunks."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from loopback_http import TIMEOUT, QuietHandler, ThreadedServer
from ssetally._gateway import ProxyConfig, ProxyServer

__all__ = [
    "AUTH",
    "CHAT",
    "KEY",
    "PARSERS",
    "TIMEOUT",
    "Handler",
    "Scripted",
    "answer_ok",
    "chat_body",
    "chunked",
    "get",
    "proxied",
    "records",
    "sse_chat_chunk",
]

KEY = "sk-gateway-security-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PARSERS = ["h11", "httptools"]
CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}


@contextmanager
def proxied(
    origin: str, tmp_path: Path, http: str = "h11", **options: Any
) -> Iterator[ProxyServer]:
    config = ProxyConfig(upstream=origin, otel=False, **options)
    with ProxyServer(config, f"jsonl:{tmp_path / 'usage.jsonl'}", http=http) as proxy:
        yield proxy


Handler = Callable[[Any, threading.Event], None]


class Scripted(ThreadedServer):
    """A threaded HTTP/1.0 server on 127.0.0.1 whose answers are written by ``handle(h,
    stop)`` (``h`` the request handler; loops end when ``stop`` is set, at the latest when
    the block ends). ``requests`` lists ``(method, path)`` as they arrive."""

    def __init__(self, handle: Handler) -> None:
        self.requests: list[tuple[str, str]] = []
        owner = self

        class H(QuietHandler):
            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.body = self.rfile.read(length) if length else b""
                owner.requests.append((self.command, self.path))
                try:
                    handle(self, owner.stop)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _any

        super().__init__(H)


def sse_chat_chunk(
    response_id: str, text: str | None, usage: dict[str, Any] | None = None
) -> bytes:
    """One Chat chunk event: a text delta, or (``text`` None) the usage-only chunk."""
    choices = [] if text is None else [{"index": 0, "delta": {"content": text}}]
    chunk = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": choices,
        "usage": usage,
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def records(proxy: ProxyServer, tmp_path: Path) -> list[dict[str, Any]]:
    assert proxy.flush(TIMEOUT)
    path = tmp_path / "usage.jsonl"
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def answer_ok(h: Any, stop: threading.Event) -> None:
    """A ``Scripted`` answer: 200 with ``{}``."""
    h.send_response(200)
    h.send_header("Content-Type", "application/json")
    h.send_header("Content-Length", "2")
    h.end_headers()
    h.wfile.write(b"{}")


def get(path: bytes, host: bytes = b"127.0.0.1") -> bytes:
    return (
        b"GET "
        + path
        + b" HTTP/1.1\r\nHost: "
        + host
        + b"\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\nConnection: close\r\n\r\n"
    )


def chat_body(size: int) -> bytes:
    """A valid Chat request body of exactly ``size`` bytes (padded with a spare field)."""
    head = json.dumps({**CHAT, "pad": ""}).encode()
    assert size >= len(head)
    return head[:-2] + b"x" * (size - len(head)) + b'"}'


def chunked(data: bytes) -> bytes:
    """``data`` as one chunk of a chunked body, then the last chunk."""
    return b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"
