"""The gateway's defences against request targets and framing, attacked from outside: paths
that try to leave the upstream prefix (and the path normalisation as a property against RFC
3986) and smuggled requests.

Every test talks to a ``ProxyServer`` on 127.0.0.1 with raw sockets where an HTTP library
would tidy the request up itself. Slow clients, body limits and stream timeouts are in
``test_gateway_timeouts.py``; credentials, fingerprints and the usage that could be silently
wrong in ``test_gateway_usage.py``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from gateway_support import CHAT, PARSERS, TIMEOUT, Scripted, answer_ok, chunked, get, proxied
from hypothesis import given, settings
from hypothesis import strategies as st
from loopback_http import raw_exchange, statuses
from ssetally._gateway import ProxyServer
from ssetally._gateway._guard import Refused, normalize_path
from ssetally._replay import ReplayServer

pytest.importorskip("uvicorn")


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


_JSON = json.dumps(CHAT).encode()
SMUGGLING = {
    # CL covers the chunked body only; TE would end it early, leaving the smuggled request.
    "cl+te": _post(
        b"Content-Length: %d\r\nTransfer-Encoding: chunked\r\n" % len(chunked(_JSON) + SMUGGLED),
        chunked(_JSON) + SMUGGLED,
    ),
    # TE first, then CL: the other order.
    "te+cl": _post(
        b"Transfer-Encoding: chunked\r\nContent-Length: 4\r\n", chunked(_JSON) + SMUGGLED
    ),
    "two-lengths": _post(
        b"Content-Length: %d\r\nContent-Length: %d\r\n" % (len(_JSON), len(_JSON + SMUGGLED)),
        _JSON + SMUGGLED,
    ),
    "length-list": _post(
        b"Content-Length: %d, %d\r\n" % (len(_JSON), len(_JSON + SMUGGLED)), _JSON + SMUGGLED
    ),
    "gzip,chunked": _post(b"Transfer-Encoding: gzip, chunked\r\n", chunked(_JSON) + SMUGGLED),
    "xchunked": _post(b"Transfer-Encoding: xchunked\r\n", chunked(_JSON) + SMUGGLED),
    "chunked,identity": _post(
        b"Transfer-Encoding: chunked, identity\r\n", chunked(_JSON) + SMUGGLED
    ),
    "two-te-headers": _post(
        b"Transfer-Encoding: chunked\r\nTransfer-Encoding: x\r\n", chunked(_JSON) + SMUGGLED
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
        with Scripted(answer_ok) as upstream, proxied(upstream.origin, tmp_path, http) as proxy:
            answer = raw_exchange(proxy.port, first + second)
            seen = [path for _, path in upstream.requests]
        assert statuses(answer) == [200, 200], answer[:400]
        assert seen == ["/v1/chat/completions", "/v1/models"]
