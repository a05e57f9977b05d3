"""The gateway's defences, attacked from outside: request paths that try to leave the upstream
prefix, smuggled requests, slowloris, body limits, idle and endless streams.

Every test talks to a ``ProxyServer`` on 127.0.0.1 with raw sockets where an HTTP library
would tidy the request up itself, and is bounded in time (socket timeouts, stop events).
Credentials, fingerprints and the usage that could be silently wrong are in
``test_gateway_usage.py``.
"""

from __future__ import annotations

import asyncio
import http.server
import json
import re
import socket
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Callable

import httpx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ssetally._gateway import ProxyConfig, ProxyServer
from ssetally._gateway._guard import Refused, normalize_path
from ssetally._replay import ReplayServer
from typing_extensions import Self

pytest.importorskip("uvicorn")

TIMEOUT = 10.0
KEY = "sk-gateway-security-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
PARSERS = ["h11", "httptools"]
CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}


# --------------------------------------------------------------------------- helpers


@contextmanager
def proxied(
    origin: str, tmp_path: Path, http: str = "h11", **options: Any
) -> Iterator[ProxyServer]:
    config = ProxyConfig(upstream=origin, otel=False, **options)
    with ProxyServer(config, f"jsonl:{tmp_path / 'usage.jsonl'}", http=http) as proxy:
        yield proxy


Handler = Callable[[Any, threading.Event], None]


class Scripted:
    """A threaded HTTP/1.0 server on 127.0.0.1 whose answers are written by ``handle(h,
    stop)`` (``h`` the request handler; loops end when ``stop`` is set, at the latest when
    the block ends). ``requests`` lists ``(method, path)`` as they arrive."""

    def __init__(self, handle: Handler) -> None:
        self.stop = threading.Event()
        self.requests: list[tuple[str, str]] = []
        owner = self

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def _any(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                self.body = self.rfile.read(length) if length else b""
                owner.requests.append((self.command, self.path))
                try:
                    handle(self, owner.stop)
                except (BrokenPipeError, ConnectionResetError):
                    pass

            do_GET = do_POST = _any

        self._server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._server.server_address[1]}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5)


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


def raw_exchange(port: int, data: bytes, timeout: float = TIMEOUT) -> bytes:
    """Send ``data``, return everything received until the server closes (a timeout fails)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(data)
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


def _ok(h: Any, stop: threading.Event) -> None:
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


@pytest.fixture(scope="module", params=PARSERS)
def prefixed(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[ReplayServer, ProxyServer]]:
    """One upstream (under ``/prefix``) and one proxy per parser, shared by the path and
    framing cases; each case looks only at the upstream requests it caused."""
    tmp = tmp_path_factory.mktemp("shared")
    with (
        ReplayServer() as upstream,
        proxied(upstream.origin + "/prefix", tmp, request.param) as proxy,
    ):
        yield upstream, proxy


def _new_paths(upstream: ReplayServer, proxy: ProxyServer, before: int) -> list[str]:
    assert proxy.flush(TIMEOUT)
    return [r.path for r in upstream.requests[before:]]


# --------------------------------------------------------------------------- 1. paths


class TestPaths:
    """A path may resolve its dot segments, never climb out of the upstream prefix."""

    ESCAPES = (
        b"/v1/../../other",
        b"/..",
        b"/../x",
        b"/%2e%2e/x",
        b"/%2E%2e/x",
        b"/v1/%2E%2E/%2e%2e/x",
        b"/v1/.%2e/../x",
        b"/v1/%2e./../x",
        b"/v1%2f..%2f..%2fx",
        b"/v1%2F..%2F..%2Fx",
        b"/v1%5c..%5c..%5cx",
        b"/v1\\..\\x",
        b"/v1/..\\..\\x",
        b"/v1/%00/x",
        b"/a/b/../../../x",
        b"/./../x",
    )
    RESOLVED = (
        (b"/./v1/./chat/completions", "/prefix/v1/chat/completions"),
        (b"/v1/x/../chat/completions", "/prefix/v1/chat/completions"),
        (b"/v1/x/%2e%2e/chat/completions", "/prefix/v1/chat/completions"),
        (b"/v1/x/y/.%2E/%2e%2e/models", "/prefix/v1/models"),
        (b"/v1/..", "/prefix/"),
        (b"/v1/.", "/prefix/v1/"),
    )

    @pytest.mark.parametrize("path", ESCAPES, ids=lambda p: p.decode("latin-1"))
    def test_escape_is_refused_and_nothing_goes_upstream(
        self, prefixed: tuple[ReplayServer, ProxyServer], path: bytes
    ) -> None:
        upstream, proxy = prefixed
        before = len(upstream.requests)
        answer = raw_exchange(proxy.port, get(path))
        seen = _new_paths(upstream, proxy, before)
        assert statuses(answer) == [400], answer[:300]
        # Nothing at all left for the upstream, inside or outside the prefix.
        assert seen == []

    @pytest.mark.parametrize("path,expected", RESOLVED, ids=lambda p: str(p))
    def test_dot_segments_are_resolved_inside_the_prefix(
        self, prefixed: tuple[ReplayServer, ProxyServer], path: bytes, expected: str
    ) -> None:
        upstream, proxy = prefixed
        before = len(upstream.requests)
        answer = raw_exchange(proxy.port, get(path))
        seen = _new_paths(upstream, proxy, before)
        assert statuses(answer) and statuses(answer)[0] != 400, answer[:300]
        assert seen == [expected]

    @pytest.mark.parametrize(
        "path", [b"http://127.0.0.1:1/x", b"*", b"v1/models", b"/v1/a b", b"/v1/\x7f"]
    )
    def test_other_targets_are_refused_by_the_guard(self, path: bytes) -> None:
        with pytest.raises(Refused) as info:
            normalize_path(path)
        assert info.value.status == 400


#: Segments whose dot-decoding matters; empty ones make ``//``.
SEGMENTS = [".", "..", "%2e", "%2E", "%2e%2e", "%2E%2e", ".%2e", "%2e.", "a", "%41", "", "b.c"]


def _dot_decoded(path: str) -> str:
    """``path`` with every segment that decodes to ``.`` or ``..`` written plainly."""
    out = []
    for seg in path.split("/"):
        low = seg.lower().replace("%2e", ".")
        out.append(low if low in (".", "..") else seg)
    return "/".join(out)


def remove_dot_segments(path: str) -> str:
    """RFC 3986 section 5.2.4, step by step on the string buffers."""
    inp, out = path, ""
    while inp:
        if inp.startswith("../"):
            inp = inp[3:]
        elif inp.startswith(("./", "/./")):
            inp = inp[2:]
        elif inp == "/.":
            inp = "/"
        elif inp.startswith("/../"):
            inp = inp[3:]
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp == "/..":
            inp = "/"
            out = out[: out.rfind("/")] if "/" in out else ""
        elif inp in (".", ".."):
            inp = ""
        else:
            start = 1 if inp.startswith("/") else 0
            end = inp.find("/", start)
            end = len(inp) if end < 0 else end
            out += inp[:end]
            inp = inp[end:]
    return out


class TestNormalizePathProperty:
    @settings(max_examples=400, deadline=None)
    @given(st.lists(st.sampled_from(SEGMENTS), min_size=1, max_size=10))
    def test_matches_rfc3986_and_never_leaves_the_prefix(self, segments: list[str]) -> None:
        path = "/" + "/".join(segments)
        decoded = _dot_decoded(path)
        # Under a prefix, the RFC resolution says whether the path would leave it.
        under = remove_dot_segments("/prefix" + decoded)
        leaves = not under.startswith("/prefix/")
        try:
            result = normalize_path(path.encode()).decode()
        except Refused as refused:
            assert refused.status == 400
            assert leaves, f"{path!r} was refused but resolves to {under!r}"
            return
        assert not leaves, f"{path!r} gave {result!r} though it resolves to {under!r}"
        assert result.startswith("/")
        for seg in result.split("/"):
            assert seg.lower().replace("%2e", ".") not in (".", ".."), result
        assert result == remove_dot_segments(decoded)
        assert "/prefix" + result == under

    def test_reference_is_the_rfc_one(self) -> None:
        # RFC 3986 5.2.4 examples: the reference the property leans on is right.
        assert remove_dot_segments("/a/b/c/./../../g") == "/a/g"
        assert remove_dot_segments("mid/content=5/../6") == "mid/6"
        assert remove_dot_segments("/a/b/..") == "/a/"


# --------------------------------------------------------------------------- 2. smuggling


SMUGGLED = b"GET /smuggled HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"


def _post(headers: bytes, body: bytes) -> bytes:
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
        b"Content-Type: application/json\r\n" + headers + b"\r\n" + body
    )


def _chunked(data: bytes) -> bytes:
    return b"%x\r\n" % len(data) + data + b"\r\n0\r\n\r\n"


_JSON = json.dumps(CHAT).encode()
SMUGGLING = {
    # CL covers the chunked body only; TE would end it early, leaving the smuggled request.
    "cl+te": _post(
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(_chunked(_JSON) + SMUGGLED),
        _chunked(_JSON) + SMUGGLED,
    ),
    # TE first, then CL: the other order.
    "te+cl": _post(
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", _chunked(_JSON) + SMUGGLED
    ),
    "two-lengths": _post(
        b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(_JSON), len(_JSON + SMUGGLED)),
        _JSON + SMUGGLED,
    ),
    "length-list": _post(
        b"Content-Length: %d, %d\r\n" % (len(_JSON), len(_JSON + SMUGGLED)), _JSON + SMUGGLED
    ),
    "gzip,chunked": _post(b"Transfer-Encoding: gzip, chunked\r\n", _chunked(_JSON) + SMUGGLED),
    "xchunked": _post(b"Transfer-Encoding: xchunked\r\n", _chunked(_JSON) + SMUGGLED),
    "chunked,identity": _post(
        b"Transfer-Encoding: chunked, identity\r\n", _chunked(_JSON) + SMUGGLED
    ),
    "two-te-headers": _post(
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", _chunked(_JSON) + SMUGGLED
    ),
    "signed-length": _post(b"Content-Length: +%d\r\n" % len(_JSON), _JSON + SMUGGLED),
}


class TestSmuggling:
    @pytest.mark.parametrize("http", PARSERS)
    @pytest.mark.parametrize("case", list(SMUGGLING))
    def test_ambiguous_framing_gets_one_400_and_a_close(
        self, tmp_path: Path, http: str, case: str
    ) -> None:
        with ReplayServer() as upstream, proxied(upstream.origin, tmp_path, http) as proxy:
            answer = raw_exchange(proxy.port, SMUGGLING[case])
            assert proxy.flush(TIMEOUT)
            time.sleep(0.1)  # a smuggled request forwarded late would show now
            seen = [r.path for r in upstream.requests]
        # Exactly one answer, a refusal; raw_exchange returned, so the proxy closed.
        assert statuses(answer) == [400], answer[:400]
        assert not [p for p in seen if "smuggled" in p]
        assert seen == []

    @pytest.mark.parametrize("http", PARSERS)
    def test_a_clean_pipelined_pair_is_still_served(self, tmp_path: Path, http: str) -> None:
        # The control: the same bytes with honest framing give two answers.
        body = json.dumps({**CHAT, "stream": False}).encode()
        first = _post(b"Content-Length: %d\r\n" % len(body), body)
        second = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n"
        with Scripted(_ok) as upstream, proxied(upstream.origin, tmp_path, http) as proxy:
            answer = raw_exchange(proxy.port, first + second)
            seen = [path for _, path in upstream.requests]
        assert statuses(answer) == [200, 200], answer[:400]
        assert seen == ["/v1/chat/completions", "/v1/models"]


# --------------------------------------------------------------------------- 3. slowloris


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
            Scripted(_ok) as upstream,
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
            Scripted(_ok) as upstream,
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
                except socket.timeout:
                    continue
                except OSError:
                    closed_after = time.monotonic() - start
                    break
        assert closed_after is not None and closed_after < 2.5, closed_after

    @pytest.mark.parametrize("http", PARSERS)
    def test_connections_past_the_cap_get_503(self, tmp_path: Path, http: str) -> None:
        cap = 4
        with (
            Scripted(_ok) as upstream,
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


# --------------------------------------------------------------------------- 4. bodies


def _open_upload(port: int, head: bytes) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.sendall(head)
    return sock


def _read_until_close(sock: socket.socket) -> bytes:
    data = b""
    while True:
        try:
            piece = sock.recv(65536)
        except ConnectionResetError:
            return data
        if not piece:
            return data
        data += piece


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
                        except socket.timeout:
                            continue
                        except OSError:
                            break
                sock.settimeout(5)
                answer = _read_until_close(sock)
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
            return data if framing == "content-length" else _chunked(data)[:-5]

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
            refused = _read_until_close(second)
            second.close()
            first.sendall(part(body[500:]) + end())
            first.settimeout(TIMEOUT)
            ok = _read_until_close(first)
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
            request = _head(b"Transfer-Encoding: chunked\r\n") + _chunked(body)
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


# --------------------------------------------------------------------------- 5. idle, deadline


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
