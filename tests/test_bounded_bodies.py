"""What ``connect_usage`` reads whole (an error answer, the retrieval ``GET``) is read raw and
decoded with a bound, whatever the encoding, the size and the status; and a request body that
cannot be encoded again goes out as the HTTP library would send it without ssetally."""

from __future__ import annotations

import json
import math
import types
import zlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import httpx2
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ssetally import APIStatusError, RetrievalPolicy, aconnect_usage, connect_usage
from ssetally._metering import retrieve

URL = "http://upstream.test/v1/chat/completions"
ENCODINGS = ["identity", "gzip", "deflate", "br", "zstd"]
KEPT = 64 * 1024
MiB = 1024 * 1024
SSE = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\ndata: [DONE]\n\n'


@pytest.fixture(params=["httpx", "httpx2"])
def lib(request: pytest.FixtureRequest) -> types.ModuleType:
    return httpx if request.param == "httpx" else httpx2


def compress(encoding: str, blocks: Iterator[bytes]) -> bytes:
    if encoding == "identity":
        return b"".join(blocks)
    if encoding in ("gzip", "deflate"):
        z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else 15)
        return b"".join(z.compress(b) for b in blocks) + z.flush()
    if encoding == "br":
        c = pytest.importorskip("brotli").Compressor(quality=5, lgwin=22)
        return bytes(b"".join(c.process(b) for b in blocks) + c.finish())
    z = pytest.importorskip("zstandard").ZstdCompressor(level=3).compressobj()
    return b"".join(z.compress(b) for b in blocks) + z.flush()


def answering(
    lib: types.ModuleType, status: int, encoding: str, raw: bytes, seen: list[Any]
) -> Any:
    """A mock upstream streaming ``raw`` (never read eagerly: the front-end reads it raw)."""

    class Raw(lib.SyncByteStream, lib.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __iter__(self) -> Iterator[bytes]:
            for i in range(0, len(raw), 1 << 16):
                yield raw[i : i + (1 << 16)]

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for i in range(0, len(raw), 1 << 16):
                yield raw[i : i + (1 << 16)]

    def handler(request: Any) -> Any:
        seen.append(request)
        headers = {"content-type": "application/json"}
        if encoding != "identity":
            headers["content-encoding"] = encoding
        if status == 200 and not raw.startswith(b"{"):
            headers["content-type"] = "text/event-stream"
        return lib.Response(status, headers=headers, stream=Raw())

    return lib.MockTransport(handler)


@pytest.mark.parametrize("status", [400, 401, 429, 502])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_small_error_body_is_decoded_whole(
    lib: types.ModuleType, encoding: str, status: int
) -> None:
    body = {"error": {"message": f"nope {status}", "type": "invalid_request_error"}}
    raw = compress(encoding, iter([json.dumps(body).encode()]))
    client = lib.Client(transport=answering(lib, status, encoding, raw, []))
    with pytest.raises(APIStatusError) as info, connect_usage(client, "POST", URL, json={}):
        pass
    assert info.value.status_code == status and info.value.body == body
    assert info.value.truncated is None and f"nope {status}" in str(info.value)


@pytest.mark.parametrize("size", [KEPT + 1, 4 * MiB, 64 * MiB])
@pytest.mark.parametrize("encoding", ENCODINGS)
def test_large_error_body_is_cut_and_flagged(
    lib: types.ModuleType, encoding: str, size: int
) -> None:
    head = b'{"error":{"message":"'
    blocks = iter([head, *[b"x" * (size // 16)] * 16, b'"}}'])
    client = lib.Client(transport=answering(lib, 500, encoding, compress(encoding, blocks), []))
    with pytest.raises(APIStatusError) as info, connect_usage(client, "POST", URL, json={}):
        pass
    error = info.value
    assert error.status_code == 500 and isinstance(error.body, str)
    assert error.body.startswith(head.decode()) and len(error.body) <= KEPT
    assert error.truncated is not None and "truncated" in str(error)


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
async def test_async_error_bomb_is_cut_and_flagged(encoding: str) -> None:
    raw = compress(encoding, iter([b'{"error":"', *[b" " * MiB] * 64, b'"}']))
    transport = answering(httpx, 503, encoding, raw, [])
    async with httpx.AsyncClient(transport=transport) as client:
        with pytest.raises(APIStatusError) as info:
            async with aconnect_usage(client, "POST", URL, json={}):
                pass
    assert info.value.status_code == 503 and info.value.truncated is not None
    assert len(info.value.body) <= KEPT


CHAT = {"model": "gpt-4o", "stream": True, "messages": [{"role": "user", "content": "\ud800"}]}


def test_json_body_httpx_cannot_encode_raises_what_httpx_raises(lib: types.ModuleType) -> None:
    """``json=`` with a lone surrogate: httpx raises ``UnicodeEncodeError`` itself; with
    ssetally injecting usage, the caller gets the same error from httpx, not from ssetally."""
    seen: list[Any] = []
    client = lib.Client(transport=answering(lib, 200, "identity", SSE, seen))
    with pytest.raises(Exception) as plain:
        client.post(URL, json=CHAT)
    with pytest.raises(type(plain.value)), connect_usage(client, "POST", URL, json=CHAT):
        pass
    assert seen == []


@pytest.mark.parametrize(
    "content",
    [
        json.dumps(CHAT).encode("ascii"),  # the valid \\ud800 escape
        b'{"model":"gpt-4o","stream":true,"temperature":NaN,"messages":[]}',
        json.dumps(CHAT),  # a str with the escape
    ],
    ids=["surrogate-bytes", "nan", "surrogate-str"],
)
def test_content_that_cannot_be_encoded_again_goes_out_unchanged(
    lib: types.ModuleType, content: bytes | str
) -> None:
    seen: list[Any] = []
    client = lib.Client(transport=answering(lib, 200, "identity", SSE, seen))
    headers = {"content-type": "application/json"}
    with connect_usage(client, "POST", URL, content=content, headers=headers) as stream:
        events = list(stream)
    sent = content.encode() if isinstance(content, str) else content
    assert [r.content for r in seen] == [sent]
    report = stream.require_report()
    assert any("include_usage was not added" in w for w in report.warnings), report.warnings
    assert report.usage is not None and report.usage.total_tokens == 4
    assert events  # the upstream sent usage itself: shown, the caller's request did not hide it


def test_encodable_content_still_gets_usage_injected(lib: types.ModuleType) -> None:
    seen: list[Any] = []
    client = lib.Client(transport=answering(lib, 200, "identity", SSE, seen))
    body = {"model": "gpt-4o", "stream": True, "temperature": 0.5, "messages": [{"content": "é"}]}
    with connect_usage(client, "POST", URL, content=json.dumps(body)) as stream:
        assert [e for e in stream if '"choices":[]' in e.data] == []
    sent = json.loads(seen[0].content)
    assert sent["stream_options"] == {"include_usage": True} and not math.isnan(sent["temperature"])
    assert stream.require_report().warnings == ()


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_retrieval_reads_a_bounded_body(lib: types.ModuleType, encoding: str) -> None:
    """The retrieval ``GET`` over a client reads raw, decoded with its 16 MiB bound."""
    size = 20 * MiB
    blocks = iter(
        [b'{"id":"resp_1","status":"completed","x":"', *[b" " * MiB] * (size // MiB), b'"}']
    )
    raw = compress(encoding, blocks)
    client = lib.Client(transport=answering(lib, 200, encoding, raw, []))
    policy = RetrievalPolicy(deadline=2.0, first_delay=0.01, max_delay=0.05)
    result = retrieve(client, "http://upstream.test/v1/responses/resp_1", {}, policy)
    assert result.report is None and "not read whole" in result.reason, result.reason
    small = b'{"id":"resp_1","status":"completed","usage":{"input_tokens":2,"output_tokens":3,"total_tokens":5}}'
    client = lib.Client(
        transport=answering(lib, 200, encoding, compress(encoding, iter([small])), [])
    )
    result = retrieve(client, "http://upstream.test/v1/responses/resp_1", {}, policy)
    assert result.reason == "ok" and result.report is not None and result.report.usage is not None
    assert result.report.usage.total_tokens == 5


@settings(max_examples=60, deadline=None)
@given(
    encoding=st.sampled_from(ENCODINGS),
    size=st.integers(0, 3 * KEPT),
    cuts=st.lists(st.integers(1, 4096), max_size=40),
    limit=st.sampled_from([1, 100, KEPT]),
)
def test_body_reader_keeps_the_decoded_head_for_any_chunking(
    encoding: str, size: int, cuts: list[int], limit: int
) -> None:
    """Whatever the chunking: the kept bytes are the head of the decoded body, at most
    ``limit`` of them, and ``truncated`` is set exactly when the body is longer."""
    from ssetally._metering._decode import BodyReader

    body = bytes(i % 251 for i in range(size))
    raw = compress(encoding, iter([body]))
    reader = BodyReader(encoding, limit)
    start = 0
    for cut in [*cuts, len(raw)]:
        if not reader.feed(raw[start : start + cut]):
            break
        start += cut
        if start >= len(raw):
            break
    result = reader.result()
    assert result.content == body[:limit]
    assert (result.truncated is not None) == (size > limit), result.truncated
