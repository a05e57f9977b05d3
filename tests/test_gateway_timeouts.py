"""The gateway's time and size limits, attacked from outside: slowloris headers, the cap on
client connections, slow and oversized bodies, the in-flight body budget, and streams that
idle or never end.

Every test talks to a ``ProxyServer`` on 127.0.0.1, with raw sockets where an HTTP library
would tidy the request up itself, and is bounded in time (socket timeouts, stop events).
Paths and smuggling are in ``test_gateway_paths.py``.
"""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import (
    AUTH,
    CHAT,
    KEY,
    PARSERS,
    TIMEOUT,
    Scripted,
    answer_ok,
    chat_body,
    chunked,
    get,
    proxied,
    records,
    sse_chat_chunk,
)
from loopback_http import raw_exchange, read_until_close, statuses
from ssetally._replay import ReplayServer

pytest.importorskip("uvicorn")


# --------------------------------------------------------------------------- 1. slowloris


async def _slow_client(port: int, interval: float, until: float) -> float | None:
    """Send a request header one byte every ``interval`` s; the seconds until the proxy
    closed the connection, or None when it was still open at ``until``."""
    start = time.monotonic()
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    header = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Pad: " + b"a" * 200
    try:
        for byte in header:
            writer.write(bytes([byte]))
            try:
                await writer.drain()
                data = await asyncio.wait_for(reader.read(1024), interval)
            except asyncio.TimeoutError:
                data = None
            except (ConnectionError, OSError):
                return time.monotonic() - start
            if data == b"":
                return time.monotonic() - start
            if time.monotonic() > until:
                return None
        return None
    finally:
        writer.close()


class TestSlowloris:
    @pytest.mark.parametrize("http", PARSERS)
    def test_slow_headers_are_cut_and_others_are_served(self, tmp_path: Path, http: str) -> None:
        header_timeout = 1.0
        with (
            Scripted(answer_ok) as upstream,
            proxied(
                upstream.origin,
                tmp_path,
                http,
                header_timeout=header_timeout,
                max_client_connections=64,
            ) as proxy,
        ):

            async def attack() -> tuple[list[float | None], list[float]]:
                until = time.monotonic() + 6.0
                slow = [
                    asyncio.ensure_future(_slow_client(proxy.port, 0.3, until)) for _ in range(30)
                ]
                latencies: list[float] = []
                async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as client:
                    await asyncio.sleep(0.2)
                    for _ in range(8):
                        t = time.monotonic()
                        r = await client.get(proxy.url + "/v1/models")
                        latencies.append(time.monotonic() - t)
                        assert r.status_code == 200
                        await asyncio.sleep(0.2)
                return list(await asyncio.gather(*slow)), latencies

            closed, latencies = asyncio.run(attack())
            # After the attack the proxy still serves.
            r = httpx.get(proxy.url + "/v1/models", timeout=TIMEOUT, trust_env=False)
            assert r.status_code == 200
        assert all(c is not None for c in closed), closed
        assert max(c for c in closed if c is not None) < header_timeout + 1.5, closed
        assert min(c for c in closed if c is not None) >= header_timeout * 0.9, closed
        assert max(latencies) < 1.0, latencies

    @pytest.mark.parametrize("http", PARSERS)
    def test_slow_second_request_on_a_kept_alive_connection_is_cut(
        self, tmp_path: Path, http: str
    ) -> None:
        with (
            Scripted(answer_ok) as upstream,
            proxied(
                upstream.origin, tmp_path, http, header_timeout=1.0, keep_alive_timeout=30
            ) as proxy,
            socket.create_connection(("127.0.0.1", proxy.port), timeout=5) as sock,
        ):
            sock.sendall(b"GET /v1/models HTTP/1.1\r\nHost: x\r\n\r\n")
            first = sock.recv(65536)
            assert statuses(first) == [200]
            start = time.monotonic()
            closed_after = None
            for byte in b"GET /v1/models HTTP/1.1\r\nHost: x\r\nX-Pad: " + b"a" * 100:
                try:
                    sock.sendall(bytes([byte]))
                    sock.settimeout(0.3)
                    if sock.recv(1024) == b"":
                        closed_after = time.monotonic() - start
                        break
                except TimeoutError:
                    continue
                except OSError:
                    closed_after = time.monotonic() - start
                    break
        assert closed_after is not None and closed_after < 2.5, closed_after

    @pytest.mark.parametrize("http", PARSERS)
    def test_connections_past_the_cap_get_503(self, tmp_path: Path, http: str) -> None:
        cap = 4
        with (
            Scripted(answer_ok) as upstream,
            proxied(
                upstream.origin, tmp_path, http, header_timeout=20, max_client_connections=cap
            ) as proxy,
        ):
            idle = [
                socket.create_connection(("127.0.0.1", proxy.port), timeout=5) for _ in range(cap)
            ]
            try:
                for s in idle:
                    s.sendall(b"GET /v1/mo")  # half a request line: held open
                time.sleep(0.2)
                start = time.monotonic()
                answer = raw_exchange(proxy.port, get(b"/v1/models"), timeout=5)
                elapsed = time.monotonic() - start
            finally:
                for s in idle:
                    s.close()
            time.sleep(0.3)
            after = raw_exchange(proxy.port, get(b"/v1/models"), timeout=5)
        assert statuses(answer) == [503], answer[:300]
        assert elapsed < 2.0
        assert statuses(after) == [200]


# --------------------------------------------------------------------------- 2. bodies


def _open_upload(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(head)
    return sock


def _head(headers: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\nAuthorization: Bearer "
        + KEY.encode()
        + b"\r\n"
        + headers
        + b"\r\n"
    )


class TestBodies:
    @pytest.mark.parametrize("http", PARSERS)
    @pytest.mark.parametrize("how", ["stalled", "trickle", "chunked-stalled"])
    def test_slow_body_gets_408_and_a_close(self, tmp_path: Path, http: str, how: str) -> None:
        body = chat_body(200)
        with (
            ReplayServer() as upstream,
            proxied(upstream.origin, tmp_path, http, body_timeout=1.0) as proxy,
        ):
            start = time.monotonic()
            if how == "chunked-stalled":
                sock = _open_upload(proxy.port, _head(b"Transfer-Encoding: chunked\r\n"))
                sock.sendall(b"a\r\n" + body[:10] + b"\r\n")
            else:
                sock = _open_upload(proxy.port, _head(b"Content-Length: 200\r\n"))
                sock.sendall(body[:10])
            with sock:
                if how == "trickle":  # always moving, never done in time
                    sock.settimeout(0.25)
                    for byte in body[10:]:
                        try:
                            sock.sendall(bytes([byte]))
                            if sock.recv(65536, socket.MSG_PEEK):
                                break
                        except TimeoutError:
                            continue
                        except OSError:
                            break
                sock.settimeout(5)
                answer = read_until_close(sock)
            elapsed = time.monotonic() - start
            seen = [r.path for r in upstream.requests]
            held = proxy.app._bodies.held
            recs = records(proxy, tmp_path)
        assert statuses(answer) == [408], answer[:300]
        assert 0.9 < elapsed < 3.0
        assert seen == []
        assert held == 0
        assert [r["http_status"] for r in recs] == [408]

    @pytest.mark.parametrize("http", PARSERS)
    @pytest.mark.parametrize("framing", ["content-length", "chunked"])
    def test_inflight_budget_refuses_the_second_upload(
        self, tmp_path: Path, http: str, framing: str
    ) -> None:
        body = chat_body(600)
        headers = (
            b"Content-Length: 600\r\n"
            if framing == "content-length"
            else b"Transfer-Encoding: chunked\r\n"
        )

        def part(data: bytes) -> bytes:
            return data if framing == "content-length" else chunked(data)[:-5]

        def end() -> bytes:
            return b"" if framing == "content-length" else b"0\r\n\r\n"

        with (
            ReplayServer() as upstream,
            proxied(upstream.origin, tmp_path, http, max_inflight_body_bytes=1000) as proxy,
        ):
            first = _open_upload(proxy.port, _head(headers + b"Connection: close\r\n"))
            first.sendall(part(body[:500]))
            time.sleep(0.3)
            held_during = proxy.app._bodies.held
            second = _open_upload(proxy.port, _head(headers + b"Connection: close\r\n"))
            second.sendall(part(body[:400]))
            second.settimeout(5)
            if framing == "chunked":
                second.sendall(part(body[400:]))
            refused = read_until_close(second)
            second.close()
            first.sendall(part(body[500:]) + end())
            first.settimeout(TIMEOUT)
            ok = read_until_close(first)
            first.close()
            assert proxy.flush(TIMEOUT)
            held_after = proxy.app._bodies.held
            third = raw_exchange(
                proxy.port, _head(b"Content-Length: 600\r\nConnection: close\r\n") + body
            )
            assert proxy.flush(TIMEOUT)
            held_end = proxy.app._bodies.held
        assert held_during == (600 if framing == "content-length" else 500)
        assert statuses(refused) == [503], refused[:300]
        assert statuses(ok) == [200], ok[:300]
        assert statuses(third) == [200], third[:300]
        assert held_after == 0 and held_end == 0

    @pytest.mark.parametrize("http", PARSERS)
    def test_budget_is_given_back_when_the_client_leaves(self, tmp_path: Path, http: str) -> None:
        with (
            ReplayServer() as upstream,
            proxied(upstream.origin, tmp_path, http, max_inflight_body_bytes=1000) as proxy,
        ):
            with _open_upload(proxy.port, _head(b"Content-Length: 900\r\n")) as sock:
                sock.sendall(b"x" * 100)
                time.sleep(0.3)
                held_during = proxy.app._bodies.held
            deadline = time.monotonic() + 5
            while proxy.app._bodies.held and time.monotonic() < deadline:
                time.sleep(0.02)
            held_after = proxy.app._bodies.held
        assert held_during == 900
        assert held_after == 0

    @pytest.mark.parametrize("http", PARSERS)
    @pytest.mark.parametrize("framing", ["content-length", "chunked", "chunked-many"])
    def test_body_over_max_body_bytes_gets_413(
        self, tmp_path: Path, http: str, framing: str
    ) -> None:
        body = chat_body(2000)
        if framing == "content-length":
            request = _head(b"Content-Length: 2000\r\n") + body
        elif framing == "chunked":
            request = _head(b"Transfer-Encoding: chunked\r\n") + chunked(body)
        else:
            pieces = b"".join(b"64\r\n" + body[i : i + 100] + b"\r\n" for i in range(0, 2000, 100))
            request = _head(b"Transfer-Encoding: chunked\r\n") + pieces + b"0\r\n\r\n"
        with (
            ReplayServer() as upstream,
            proxied(upstream.origin, tmp_path, http, max_body_bytes=1000) as proxy,
        ):
            start = time.monotonic()
            answer = raw_exchange(proxy.port, request)
            elapsed = time.monotonic() - start
            assert proxy.flush(TIMEOUT)
            seen = [r.path for r in upstream.requests]
            held = proxy.app._bodies.held
        assert statuses(answer) == [413], answer[:300]
        # Refused and closed at once: the unread body is not waited for.
        assert elapsed < 2.0, elapsed
        assert seen == [] and held == 0


# --------------------------------------------------------------------------- 3. idle, deadline


def _pinger(h: Any, stop: Any) -> None:
    h.send_response(200)
    h.send_header("Content-Type", "text/event-stream")
    h.end_headers()
    h.wfile.write(sse_chat_chunk("chatcmpl-ping", "Hello"))
    h.wfile.flush()
    while not stop.wait(0.05):
        h.wfile.write(b": ping\n\n")
        h.wfile.flush()


def _slow_deltas(count: int | None, every: float) -> Any:
    def handle(h: Any, stop: Any) -> None:
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        n = 0
        while (count is None or n < count) and not stop.wait(every):
            h.wfile.write(sse_chat_chunk("chatcmpl-slow", f"word{n} "))
            h.wfile.flush()
            n += 1
        h.wfile.write(b"data: [DONE]\n\n")
        h.wfile.flush()

    return handle


def _read_stream(url: str) -> tuple[bytes, float, str | None]:
    """The body bytes received, the seconds taken, and the error that ended it (if any)."""
    start = time.monotonic()
    data = b""
    error = None
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
        try:
            with client.stream("POST", url, json=CHAT, headers=AUTH) as response:
                assert response.status_code == 200
                for piece in response.iter_raw():
                    data += piece
        except httpx.HTTPError as exc:
            error = type(exc).__name__
    return data, time.monotonic() - start, error


class TestIdleAndDeadline:
    @pytest.mark.parametrize("http", PARSERS)
    def test_pings_without_output_are_cut_at_the_idle_timeout(
        self, tmp_path: Path, http: str
    ) -> None:
        with (
            Scripted(_pinger) as upstream,
            proxied(upstream.origin, tmp_path, http, idle_timeout=0.5) as proxy,
        ):
            data, elapsed, error = _read_stream(proxy.url + "/v1/chat/completions")
            recs = records(proxy, tmp_path)
        assert b": ping" in data and b"Hello" in data
        assert error is not None  # the client sees a cut, not a clean end
        assert 0.4 < elapsed < 1.5, elapsed
        assert len(recs) == 1
        assert "no output for 0.5s" in recs[0]["ended_by"]
        assert recs[0]["status"] not in ("completed", "ok")

    def test_output_keeps_the_stream_alive(self, tmp_path: Path) -> None:
        with (
            Scripted(_slow_deltas(8, 0.15)) as upstream,
            proxied(upstream.origin, tmp_path, idle_timeout=0.5) as proxy,
        ):
            data, elapsed, error = _read_stream(proxy.url + "/v1/chat/completions")
            recs = records(proxy, tmp_path)
        assert error is None, error
        assert data.endswith(b"data: [DONE]\n\n")
        assert elapsed > 1.0  # longer than the idle timeout, never idle
        assert recs[0]["ended_by"] == "eof"

    @pytest.mark.parametrize("http", PARSERS)
    def test_stream_deadline_cuts_an_endless_stream(self, tmp_path: Path, http: str) -> None:
        with (
            Scripted(_slow_deltas(None, 0.1)) as upstream,
            proxied(
                upstream.origin, tmp_path, http, stream_deadline=1.0, idle_timeout=None
            ) as proxy,
        ):
            data, elapsed, error = _read_stream(proxy.url + "/v1/chat/completions")
            recs = records(proxy, tmp_path)
        assert error is not None
        assert b"word0" in data
        assert 0.9 < elapsed < 2.0, elapsed
        assert "stream deadline of 1s" in recs[0]["ended_by"]
        assert recs[0]["status"] not in ("completed", "ok")
