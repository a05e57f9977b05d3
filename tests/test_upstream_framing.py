"""The lean upstream client's own HTTP/1.1 framing (``UpstreamBody`` and ``head_end``) through
the real proxy, against a scripted upstream on 127.0.0.1 that writes exact bytes in exact
pieces: header sections split anywhere (and after interim 1xx answers), chunk extensions
and trailers, every read size, bodies that end inside a read, broken framing, and the
bounds on a chunk-size line and on a trailer section. A body the proxy cannot read is cut
for the client and named in the record; a connection is pooled only after a whole body.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_upstream import read_request, records
from ssetally._core import UpstreamBody, head_end
from ssetally._gateway import ProxyConfig, ProxyServer

pytest.importorskip("uvicorn")
pytest.importorskip("httptools")

TIMEOUT = 10.0
BODY = {"model": "m", "stream": True, "messages": [{"role": "user", "content": "hi"}]}
SSE = b'data: {"choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n' * 3 + b"data: [DONE]\n\n"
HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"


def chunked(body: bytes, size: int, ext: bytes = b"", trailers: bytes = b"") -> bytes:
    out = b"".join(
        b"%x%s\r\n%s\r\n" % (len(body[i : i + size]), ext, body[i : i + size])
        for i in range(0, len(body), size)
    )
    return out + b"0\r\n" + trailers + b"\r\n"


class Scripted:
    """Answers each request (on any connection) with the next reply: a list of pieces,
    each written on its own (``TCP_NODELAY`` and a pause between them, so that each is read
    on its own), then the connection stays open for the next request, or closes when the
    reply ends with ``None``."""

    def __init__(self, replies: list[list[bytes | None]]) -> None:
        self.replies = list(replies)
        self.connections = 0
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.origin = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        while self.replies:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            self.connections += 1
            threading.Thread(target=self._connection, args=(conn,), daemon=True).start()

    def _connection(self, conn: socket.socket) -> None:
        conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        conn.settimeout(TIMEOUT)
        data = b""
        with conn:
            while self.replies:
                request = read_request(conn, data)
                if request is None:
                    return
                data = request[2]
                reply = self.replies.pop(0)
                for piece in reply:
                    if piece is None:
                        return
                    conn.sendall(piece)
                    time.sleep(0.003)

    def close(self) -> None:
        self.listener.close()


@contextmanager
def proxy_of(up: Scripted, sink: Path, **options: Any) -> Iterator[httpx.Client]:
    config = ProxyConfig(upstream=up.origin, otel=False, estimate=False, **options)
    with (
        ProxyServer(config, f"jsonl:{sink}") as proxy,
        httpx.Client(base_url=proxy.url, timeout=TIMEOUT, trust_env=False) as c,
    ):
        yield c
        assert proxy.flush(TIMEOUT)
    up.close()


def post(c: httpx.Client) -> tuple[int, bytes, str | None]:
    """Status, the body bytes received, and the error that cut them (None: whole)."""
    got = b""
    try:
        with c.stream("POST", "/v1/chat/completions", json=BODY) as r:
            for part in r.iter_raw():
                got += part
            return r.status_code, got, None
    except httpx.HTTPError as exc:
        return 0, got, type(exc).__name__


def settled(sink: Path, n: int) -> list[dict[str, Any]]:
    deadline = time.monotonic() + TIMEOUT
    while len(recs := records(sink)) < n and time.monotonic() < deadline:
        time.sleep(0.02)
    assert len(recs) == n, recs
    return recs


def pieces(data: bytes, size: int) -> list[bytes | None]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def test_head_end_finds_the_blank_line() -> None:
    assert head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n\r\nxyz") == 25
    assert head_end(b"HTTP/1.1 200 OK\nA: b\n\n") == 22
    assert head_end(b"HTTP/1.1 200 OK\r\nA: b\r\n") == -1
    assert head_end(b"") == -1


def test_upstream_body_refuses_a_bad_content_length() -> None:
    with pytest.raises(ValueError, match="not a number"):
        UpstreamBody(object(), None, b"12a", False, 1024)
    assert UpstreamBody(object(), b"gzip, chunked", None, False, 1024).framing == "chunked"
    assert UpstreamBody(object(), b"chunked, gzip", None, False, 1024).framing == "close"
    assert UpstreamBody(object(), None, b"7, 7", False, 1024).framing == "length"
    assert UpstreamBody(object(), None, None, True, 1024).done


@pytest.mark.parametrize("size", [1, 2, 5, 64, 100_000])
def test_answers_read_in_pieces_of_any_size(tmp_path: Path, size: int) -> None:
    """The head, chunk framing, extensions and trailers split anywhere; the connection
    is pooled after each whole body."""
    answer = (
        HEAD
        + b"transfer-encoding: chunked\r\n\r\n"
        + chunked(SSE, 17, ext=b';name="a;b" ; x=1', trailers=b"x-trailer: 1\r\nY: 2\r\n")
    )
    length = HEAD + b"content-length: %d\r\n\r\n%s" % (len(SSE), SSE)
    up = Scripted([pieces(answer, size), pieces(length, size), pieces(answer, size)])
    sink = tmp_path / "u.jsonl"
    with proxy_of(up, sink) as c:
        for _ in range(3):
            assert post(c) == (200, SSE, None)
    assert up.connections == 1
    assert [r["status"] for r in settled(sink, 3)] == ["completed"] * 3


def test_interim_answers_before_the_answer(tmp_path: Path) -> None:
    answer = HEAD + b"transfer-encoding: chunked\r\n\r\n" + chunked(SSE, 40)
    interim = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n"
    up = Scripted(
        [[interim + answer], [interim, answer[:10], answer[10:]], pieces(interim + answer, 3)]
    )
    sink = tmp_path / "u.jsonl"
    with proxy_of(up, sink) as c:
        for _ in range(3):
            assert post(c) == (200, SSE, None)
    assert up.connections == 1
    recs = settled(sink, 3)
    assert all(r["status"] == "completed" and r["http_status"] == 200 for r in recs)


@pytest.mark.parametrize(
    ("framing", "why"),
    [
        (b"zz\r\n", "a chunk-size line is malformed"),
        (b"5\r\nhelloXX", "a chunk's data does not end in CRLF"),
        (b"5\nhello\r\n", "a chunk-size line does not end in CRLF"),
        (b"5;" + b"e" * 5000 + b"\r\nhello\r\n", "a chunk-size line is too long"),
        (b"fffffffffffffffff\r\n", "a chunk size is too large"),
        (b"0\r\n" + b"x-t: " + b"v" * 3000 + b"\r\n\r\n", "the trailer section is too large"),
    ],
)
def test_broken_chunked_framing_cuts_the_stream(tmp_path: Path, framing: bytes, why: str) -> None:
    good = chunked(SSE[:60], 60)[: -len(b"0\r\n\r\n")]
    answer = HEAD + b"transfer-encoding: chunked\r\n\r\n" + good
    fine = HEAD + b"content-length: %d\r\n\r\n%s" % (len(SSE), SSE)
    up = Scripted([[answer, framing], [fine]])
    sink = tmp_path / "u.jsonl"
    with proxy_of(up, sink, max_header_bytes=2048) as c:
        _status, got, error = post(c)
        # What was relayed before the fault stays relayed; nothing after it is.
        assert error is not None and got in (SSE[:60], SSE[:60] + b"hello")
        assert post(c) == (200, SSE, None)  # on a new connection: the broken one is dropped
    assert up.connections == 2
    broken, ok = settled(sink, 2)
    assert "malformed answer from the upstream: " in broken["ended_by"]
    assert why in broken["ended_by"]
    assert broken["status"] != "completed" and ok["status"] == "completed"


@pytest.mark.parametrize("frame", ["chunked", "length"])
def test_a_close_mid_body_cuts_the_stream(tmp_path: Path, frame: str) -> None:
    if frame == "chunked":
        answer = HEAD + b"transfer-encoding: chunked\r\n\r\n" + chunked(SSE, 30)[:70]
    else:
        answer = HEAD + b"content-length: %d\r\n\r\n%s" % (len(SSE), SSE[:50])
    up = Scripted([[answer, None]])
    sink = tmp_path / "u.jsonl"
    with proxy_of(up, sink) as c:
        _status, got, error = post(c)
        assert error is not None and SSE.startswith(got) and len(got) < len(SSE)
    (rec,) = settled(sink, 1)
    assert "closed the connection mid-body" in rec["ended_by"]


def test_a_close_delimited_body_and_bodyless_answers(tmp_path: Path) -> None:
    up = Scripted(
        [
            [b"HTTP/1.1 204 No Content\r\ncontent-length: 99\r\n\r\n"],
            [HEAD + b"content-length: 0\r\n\r\n"],
            [HEAD + b"transfer-encoding: gzip, identity\r\n\r\n", SSE[:30], SSE[30:], None],
        ]
    )
    sink = tmp_path / "u.jsonl"
    with proxy_of(up, sink) as c:
        assert post(c)[:2] == (204, b"")
        assert post(c)[:2] == (200, b"")
        assert post(c) == (200, SSE, None)
    assert up.connections == 1
    recs = settled(sink, 3)
    assert [r["http_status"] for r in recs] == [204, 200, 200]
    assert recs[2]["status"] == "completed" and recs[2]["bytes"]["client"] == len(SSE)


def raw_chunks(url: str) -> list[bytes]:
    """The data of each HTTP chunk of one streamed answer, read off the wire."""
    host, _, port = url.removeprefix("http://").rstrip("/").partition(":")
    body = httpx.Request("POST", url + "/v1/chat/completions", json=BODY)
    head = f"POST /v1/chat/completions HTTP/1.1\r\nhost: {host}\r\n"
    head += "content-type: application/json\r\n"
    head += f"content-length: {len(body.read())}\r\nconnection: close\r\n\r\n"
    with socket.create_connection((host, int(port)), timeout=TIMEOUT) as s:
        s.sendall(head.encode() + body.read())
        data = b""
        while chunk := s.recv(65536):
            data += chunk
    rest = data.partition(b"\r\n\r\n")[2]
    out = []
    while True:
        size, _, rest = rest.partition(b"\r\n")
        n = int(size, 16)
        if n == 0:
            return out
        out.append(rest[:n])
        rest = rest[n + 2 :]


@pytest.mark.parametrize("size", [7, 40, 1000])
def test_the_chunks_of_one_read_leave_in_one_write(tmp_path: Path, size: int) -> None:
    """Upstream chunks that arrive in one read reach the client as one chunk (one write,
    one meter call): the client gets the same bytes in fewer pieces; reads that come apart
    stay apart (nothing waits for a later read)."""
    together = HEAD + b"transfer-encoding: chunked\r\n\r\n" + chunked(SSE, size)
    apart = HEAD + b"transfer-encoding: chunked\r\n\r\n"
    parts = [chunked(SSE[i : i + 40], 40)[: -len(b"0\r\n\r\n")] for i in range(0, len(SSE), 40)]
    up = Scripted([[together], [apart, *parts, b"0\r\n\r\n"]])
    sink = tmp_path / "u.jsonl"
    config = ProxyConfig(upstream=up.origin, otel=False, estimate=False)
    with ProxyServer(config, f"jsonl:{sink}") as proxy:
        one = raw_chunks(proxy.url)
        several = raw_chunks(proxy.url)
        assert proxy.flush(TIMEOUT)
    up.close()
    assert b"".join(one) == SSE and b"".join(several) == SSE
    assert len(one) == 1  # one read of the upstream: one chunk to the client
    # A read each (3 ms apart): a chunk each as they came, unless two met in one read.
    assert 2 <= len(several) <= len(parts)
    recs = settled(sink, 2)
    assert [(r["status"], r["bytes"]["client"]) for r in recs] == [("completed", len(SSE))] * 2
