"""The proxy's lean upstream client (``_gateway._upstream``): the default when httptools is
installed, against a real upstream on 127.0.0.1 (``http_upstream``): HTTPS with a
self-signed certificate, chunked, Content-Length and close-delimited bodies, keep-alive
reuse counted at the upstream, a pooled connection closed by the upstream between requests
(and the exact retry rule), client disconnects, and the httpx2 fallback.
"""

from __future__ import annotations

import socket
import ssl
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_upstream import USAGE, Upstream, chat_stream, records, self_signed
from ssetally._gateway import ProxyConfig, ProxyServer
from ssetally._gateway import _upstream as upstream_module
from ssetally._gateway._server import runtime_line

pytest.importorskip("uvicorn")
pytest.importorskip("httptools")

TIMEOUT = 10.0
BODY = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def proxied(
    origin: str, sink: Path, ssl_context: ssl.SSLContext | None = None, **options: Any
) -> Iterator[ProxyServer]:
    config = ProxyConfig(upstream=origin, otel=False, estimate=False, **options)
    with ProxyServer(config, f"jsonl:{sink}", ssl_context=ssl_context) as proxy:
        yield proxy


def client(proxy: ProxyServer) -> httpx.Client:
    return httpx.Client(base_url=proxy.url, timeout=TIMEOUT, trust_env=False)


def stream(c: httpx.Client, **headers: str) -> tuple[int, bytes]:
    with c.stream("POST", "/v1/chat/completions", json=BODY, headers=headers) as r:
        return r.status_code, b"".join(r.iter_raw())


def settled(proxy: ProxyServer, sink: Path, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert proxy.flush(TIMEOUT)
        recs = records(sink)
        if len(recs) >= n or time.monotonic() > deadline:
            assert len(recs) == n, recs
            return recs
        time.sleep(0.02)


def test_the_lean_client_is_the_default(tmp_path: Path) -> None:
    with Upstream() as up, proxied(up.origin, tmp_path / "u.jsonl") as proxy:
        assert proxy.app.upstream_path == "httptools"
    line = runtime_line(ProxyConfig(upstream="http://127.0.0.1:1"))
    assert "upstream client httptools" in line and "HTTP parser httptools" in line
    assert "event loop uvloop" in line or "event loop asyncio" in line


@pytest.mark.parametrize("frame", ["chunked", "length", "close"])
def test_bodies_of_every_framing_arrive_byte_for_byte(tmp_path: Path, frame: str) -> None:
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink) as proxy, client(proxy) as c:
        status, data = stream(c, **{"x-frame": frame, "x-chunks": "30"})
        assert status == 200
        assert data == chat_stream(30)
        (rec,) = settled(proxy, sink, 1)
    assert rec["status"] == "completed" and rec["ended_by"] == "eof"
    assert rec["usage"]["input_tokens"] == USAGE["prompt_tokens"]
    assert rec["usage"]["output_tokens"] == USAGE["completion_tokens"]
    assert rec["bytes"]["upstream"] == rec["bytes"]["client"] == len(chat_stream(30))
    assert rec["upstream_request_id"] == "req-1"


def test_https_upstream_with_a_self_signed_certificate(tmp_path: Path) -> None:
    cert, key = self_signed(tmp_path)
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert, key)
    trusted = ssl.create_default_context(cafile=str(cert))
    sink = tmp_path / "u.jsonl"
    with Upstream(tls=server_ctx) as up:
        with proxied(up.origin, sink, ssl_context=trusted) as proxy, client(proxy) as c:
            for _ in range(3):
                assert stream(c) == (200, chat_stream(4))
            recs = settled(proxy, sink, 3)
        assert [r["status"] for r in recs] == ["completed"] * 3
        assert up.connections == 1, up.requests  # TLS keep-alive reused too
        # Verification is on by default: the self-signed certificate is refused.
        with proxied(up.origin, tmp_path / "v.jsonl") as proxy, client(proxy) as c:
            status, data = stream(c)
            assert status == 502, data
            (rec,) = settled(proxy, tmp_path / "v.jsonl", 1)
        assert rec["status"] == "upstream_error"
        assert "CERTIFICATE_VERIFY_FAILED" in rec["ended_by"], rec["ended_by"]


def test_keep_alive_connections_are_reused(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink) as proxy, client(proxy) as c:
        for frame in ("chunked", "length", "chunked", "length", "chunked"):
            assert stream(c, **{"x-frame": frame}) == (200, chat_stream(4))
        settled(proxy, sink, 5)
        assert up.connections == 1 and up.requests == [5]
        # A close-delimited answer cannot leave its connection reusable.
        assert stream(c, **{"x-frame": "close"}) == (200, chat_stream(4))
        assert stream(c) == (200, chat_stream(4))
        settled(proxy, sink, 7)
    assert up.connections == 2 and up.requests == [6, 1]


def test_a_pooled_connection_closed_between_requests_is_not_used(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink) as proxy, client(proxy) as c:
        assert stream(c, **{"x-close-after": "1"}) == (200, chat_stream(4))
        time.sleep(0.3)  # the upstream's FIN reaches the idle pooled connection
        assert stream(c) == (200, chat_stream(4))
        recs = settled(proxy, sink, 2)
    assert [r["status"] for r in recs] == ["completed", "completed"]
    assert up.connections == 2 and up.requests == [1, 1]


def test_a_post_sent_on_a_connection_that_then_closes_is_not_retried(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink) as proxy, client(proxy) as c:
        assert stream(c, **{"x-drop-next": "1"}) == (200, chat_stream(4))
        status, _ = stream(c)  # reached the upstream, which closed without answering
        assert status == 502
        recs = settled(proxy, sink, 2)
    assert recs[1]["status"] == "upstream_error"
    assert "closed the connection without an answer" in recs[1]["ended_by"]
    assert up.requests == [2], up.requests  # the POST went out once, never again


def test_a_get_sent_on_a_connection_that_then_closes_is_retried_once(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink) as proxy, client(proxy) as c:
        assert stream(c, **{"x-drop-next": "1"}) == (200, chat_stream(4))
        r = c.get("/v1/models")
        assert r.status_code == 200 and r.content == chat_stream(4)
        settled(proxy, sink, 2)
    # The GET reached the closing connection, then a fresh one.
    assert up.requests == [2, 1], up.requests


def stream_and_leave(proxy: ProxyServer, *headers: bytes) -> None:
    """Ask for a stream (``headers`` for the test upstream), read the answer's head, leave."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as s:
        body = httpx.Request("POST", "http://x/", json=BODY).read()
        extra = b"".join(h + b"\r\n" for h in headers)
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\n"
            b"%scontent-length: %d\r\n\r\n%s" % (extra, len(body), body)
        )
        assert s.recv(65536).startswith(b"HTTP/1.1 200")


def test_a_client_disconnect_closes_the_upstream_connection(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink) as proxy:
        stream_and_leave(proxy, b"x-chunks: 50", b"x-delay-ms: 50")
        (rec,) = settled(proxy, sink, 1)
        assert rec["ended_by"] == "client disconnected"
        assert rec["status"] == "cancelled"
        pool = proxy.app._pool
        assert pool is not None and pool.idle_connections == 0
        deadline = time.monotonic() + TIMEOUT
        while up.cut_by_client == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert up.cut_by_client == 1  # the upstream saw its connection closed
        with client(proxy) as c:
            assert stream(c) == (200, chat_stream(4))
        settled(proxy, sink, 2)
    assert up.connections == 2


@pytest.mark.parametrize("frame", ["chunked", "length"])
def test_a_client_leaving_a_silent_stream_is_seen_at_once(tmp_path: Path, frame: str) -> None:
    """A client that leaves while the upstream is silent (a model thinking) is seen when it
    leaves, not when the next chunk comes: the stream is cut and recorded at once, and the
    upstream connection closed."""
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink) as proxy:
        stream_and_leave(proxy, b"x-chunks: 2", b"x-delay-ms: 3000", b"x-frame: " + frame.encode())
        left = time.monotonic()
        while not records(sink) and time.monotonic() < left + TIMEOUT:
            time.sleep(0.02)
        seen = time.monotonic() - left
        (rec,) = settled(proxy, sink, 1)
        assert seen < 2.0, seen  # not at the next chunk, 3 s on
        assert rec["ended_by"] == "client disconnected" and rec["status"] == "cancelled"
        assert rec["bytes"]["client"] == 0
        deadline = time.monotonic() + TIMEOUT
        while up.cut_by_client == 0 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert up.cut_by_client == 1


def test_an_oversized_upstream_header_section_is_refused(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve() -> None:
        conn, _ = listener.accept()
        with conn:
            conn.recv(65536)
            conn.sendall(b"HTTP/1.1 200 OK\r\n" + b"x-big: " + b"a" * 200_000 + b"\r\n\r\n")
            time.sleep(1)

    import threading

    threading.Thread(target=serve, daemon=True).start()
    with proxied(f"http://127.0.0.1:{port}", sink, max_header_bytes=16 * 1024) as proxy:
        with client(proxy) as c:
            assert stream(c)[0] == 502
        (rec,) = settled(proxy, sink, 1)
    listener.close()
    assert "header section passed 16384 bytes" in rec["ended_by"]


def test_the_fallback_path_without_httptools(tmp_path: Path, monkeypatch: Any) -> None:
    monkeypatch.setattr(upstream_module, "httptools", None)
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink) as proxy, client(proxy) as c:
        assert proxy.app.upstream_path == "httpx2"
        assert stream(c, **{"x-frame": "length"}) == (200, chat_stream(4))
        (rec,) = settled(proxy, sink, 1)
    assert rec["status"] == "completed"
    line = runtime_line(ProxyConfig(upstream="http://127.0.0.1:1"))
    assert "upstream client httpx2" in line
    with pytest.raises(ImportError, match="httptools"):
        runtime_line(ProxyConfig(upstream="http://127.0.0.1:1", upstream_client="httptools"))


def _slow_client(proxy: Any, frame: str, watch: Callable[[Any], None]) -> bytes:
    """A client that asks for a ~7 MB answer (``x-frame`` from the upstream), reads nothing
    for 2 s while ``watch`` sees each open upstream connection every 10 ms, then reads all."""
    with socket.create_connection(("127.0.0.1", proxy.port), timeout=TIMEOUT) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * 1024)
        body = httpx.Request("POST", "http://x/", json=BODY).read()
        s.sendall(
            b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nconnection: close\r\n"
            b"content-type: application/json\r\nx-chunks: 40000\r\nx-frame: %b\r\n"
            b"content-length: %d\r\n\r\n%b" % (frame.encode(), len(body), body)
        )
        pool = proxy.app._pool
        assert pool is not None
        deadline = time.monotonic() + 2.0
        while time.monotonic() < deadline:
            for conn in list(pool._open):
                watch(conn)
            time.sleep(0.01)
        received = b""
        while True:
            piece = s.recv(1 << 20)
            if not piece:
                return received
            received += piece


def test_a_slow_client_pauses_the_upstream_within_a_bound(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    want = chat_stream(40_000)  # ~7 MB, sent as fast as the upstream can
    seen = {"paused": False, "most": 0}

    def watch(conn: Any) -> None:
        seen["most"] = max(seen["most"], conn._size)
        seen["paused"] = seen["paused"] or conn._paused

    with Upstream() as up, proxied(up.origin, sink) as proxy:
        received = _slow_client(proxy, "length", watch)
        (rec,) = settled(proxy, sink, 1)
    assert seen["paused"], "the upstream was never paused"
    assert seen["most"] <= upstream_module.HIGH_WATER + 256 * 1024, seen["most"]
    assert received.split(b"\r\n\r\n", 1)[1] == want
    assert rec["status"] == "completed" and rec["bytes"]["client"] == len(want)


def test_bytes_after_the_answer_are_never_relayed(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    body = chat_stream(2)
    extra = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\n\r\nEVIL!"

    def serve() -> None:
        for _ in range(2):
            conn, _ = listener.accept()
            with conn:
                conn.recv(65536)
                head = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                conn.sendall(head + b"content-length: %d\r\n\r\n%s%s" % (len(body), body, extra))
                time.sleep(0.5)

    import threading

    threading.Thread(target=serve, daemon=True).start()
    with proxied(f"http://127.0.0.1:{port}", sink) as proxy, client(proxy) as c:
        assert stream(c) == (200, body)
        assert stream(c) == (200, body)  # on a fresh connection: the first was not pooled
        recs = settled(proxy, sink, 2)
    listener.close()
    assert [r["status"] for r in recs] == ["completed", "completed"]


def dechunk(data: bytes) -> bytes:
    """The body of a chunked HTTP/1.1 message body (``data``: from the first size line)."""
    out = bytearray()
    while True:
        size_line, data = data.split(b"\r\n", 1)
        size = int(size_line, 16)
        if size == 0:
            return bytes(out)
        out += data[:size]
        assert data[size : size + 2] == b"\r\n"
        data = data[size + 2 :]


def test_chunked_streams_are_relayed_from_the_upstream_protocol(
    tmp_path: Path, monkeypatch: Any
) -> None:
    from ssetally._gateway import _app

    used: list[bool] = []
    direct = _app.pump_direct

    async def counted(*args: Any) -> None:
        used.append(True)
        await direct(*args)

    monkeypatch.setattr(_app, "pump_direct", counted)
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink) as proxy, client(proxy) as c:
        assert stream(c, **{"x-frame": "chunked", "x-chunks": "30"}) == (200, chat_stream(30))
        assert len(used) == 1
        # A Content-Length answer keeps its length: uvicorn's own send relays it.
        assert stream(c, **{"x-frame": "length"}) == (200, chat_stream(4))
        assert len(used) == 1
        for _ in range(3):  # the client connection and the pooled one carry on
            assert stream(c, **{"x-chunks": "3"}) == (200, chat_stream(3))
        recs = settled(proxy, sink, 5)
    assert len(used) == 4
    assert [r["status"] for r in recs] == ["completed"] * 5
    assert recs[0]["bytes"]["client"] == len(chat_stream(30))
    assert up.connections == 1


def test_a_slow_client_pauses_a_directly_relayed_stream(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    want = chat_stream(40_000)  # ~7 MB, sent as fast as the upstream can
    seen = {"paused": False, "diverted": False}

    def watch(conn: Any) -> None:
        seen["paused"] = seen["paused"] or conn.paused
        seen["diverted"] = seen["diverted"] or conn.diverted

    with Upstream() as up, proxied(up.origin, sink) as proxy:
        received = _slow_client(proxy, "chunked", watch)
        (rec,) = settled(proxy, sink, 1)
    assert seen["diverted"], "the stream was not relayed from the upstream protocol"
    assert seen["paused"], "the upstream was never paused"
    head, chunked = received.split(b"\r\n\r\n", 1)
    assert b"transfer-encoding: chunked" in head.lower()
    assert dechunk(chunked) == want
    assert rec["status"] == "completed" and rec["bytes"]["client"] == len(want)


def test_no_metering_is_a_pass_through_without_records(tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    with Upstream() as up, proxied(up.origin, sink, metering=False) as proxy, client(proxy) as c:
        for frame in ("chunked", "length", "close"):
            assert stream(c, **{"x-frame": frame, "x-chunks": "5"}) == (200, chat_stream(5))
        assert c.get("/v1/%2e%2e/%2e%2e/x").status_code == 400  # the door's checks hold
        assert proxy.flush(TIMEOUT)
        assert proxy.app.records_emitted == 0
    assert records(sink) == []
    with pytest.raises(ValueError, match="--inject-usage needs metering"):
        ProxyConfig(upstream="http://127.0.0.1:1", inject_usage=True, metering=False)
    for field in ("header_timeout", "keep_alive_timeout", "idle_timeout", "stream_deadline"):
        with pytest.raises(ValueError, match="positive number of seconds"):
            ProxyConfig(upstream="http://127.0.0.1:1", **{field: 0})


def test_the_command_line_sets_metering_and_the_timeouts() -> None:
    import subprocess
    import sys

    done = subprocess.run(
        [sys.executable, "-m", "ssetally", "proxy", "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    text = " ".join(done.stdout.split())
    assert "--no-metering pure pass-through" in text
    for flag, default in (
        ("--header-timeout", "10.0"),
        ("--body-timeout", "60.0"),
        ("--keep-alive-timeout", "5.0"),
        ("--idle-timeout", "900.0"),
        ("--stream-deadline", "3600.0"),
    ):
        assert flag in text
        assert f"(default: {default})" in text.split(flag, 2)[-1].split("--", 1)[0], flag
    bad = subprocess.run(
        [sys.executable, "-m", "ssetally", "proxy", "--upstream", "http://127.0.0.1:1",
         "--no-metering", "--inject-usage", "--port", "0"],
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert bad.returncode == 2 and "--inject-usage needs metering" in bad.stderr
