"""The HTTP layer (connect_sse, aconnect_sse, EventSource) over httpx and httpx2.

Responses come from ``MockTransport`` handlers whose bodies stream bytes in awkward chunk
sizes: one byte at a time, seven bytes, and cuts inside CRLF pairs, inside multi-byte UTF-8
characters and inside the byte order mark. Every test runs with both HTTP clients, and most
run both sync (``connect_sse``/``iter_sse``) and async (``aconnect_sse``/``aiter_sse``).
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any

import httpx
import httpx2
import pytest
from ssetally import (
    EventSource,
    EventTooLargeError,
    ServerSentEvent,
    SSEDecoder,
    SSEError,
    aconnect_sse,
    connect_sse,
)
from ssetally._api import _aiter_sse_lines, _iter_sse_lines

URL = "http://testserver/sse"
BOM = b"\xef\xbb\xbf"

SyncSource = Callable[[], Iterable[bytes]]
AsyncSource = Callable[[], AsyncIterator[bytes]]


# --------------------------------------------------------------------------- chunking


def split_every(data: bytes, size: int) -> list[bytes]:
    return [data[i : i + size] for i in range(0, len(data), size)]


def split_at(data: bytes, cuts: Iterable[int]) -> list[bytes]:
    bounds = [0, *sorted({c for c in cuts if 0 < c < len(data)}), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


def tricky_cuts(data: bytes) -> list[int]:
    """Cut positions inside the BOM, between each CR and its LF, and inside every
    multi-byte UTF-8 sequence (before each continuation byte)."""
    cuts = [1, 2] if data.startswith(BOM) else []
    for i in range(1, len(data)):
        if data[i - 1 : i + 1] == b"\r\n" or 0x80 <= data[i] <= 0xBF:
            cuts.append(i)
    return cuts


def split_random(data: bytes, seed: int) -> list[bytes]:
    rng = random.Random(seed)
    return split_at(data, [i for i in range(1, len(data)) if rng.random() < 0.3])


CHUNKINGS: dict[str, Callable[[bytes], list[bytes]]] = {
    "whole": lambda data: [data],
    "1-byte": lambda data: split_every(data, 1),
    "2-byte": lambda data: split_every(data, 2),
    "3-byte": lambda data: split_every(data, 3),
    "7-byte": lambda data: split_every(data, 7),
    "tricky": lambda data: split_at(data, tricky_cuts(data)),
    "random-1": lambda data: split_random(data, 1),
    "random-2": lambda data: split_random(data, 2),
}


def test_chunkings_cut_where_intended() -> None:
    data = BOM + b"a\r\nb\xc3\xa9\r\n"
    chunks = CHUNKINGS["tricky"](data)
    assert b"".join(chunks) == data
    assert chunks == [b"\xef", b"\xbb", b"\xbfa\r", b"\nb\xc3", b"\xa9\r", b"\n"]
    for split in CHUNKINGS.values():
        assert b"".join(split(data)) == data


# --------------------------------------------------------------------------- mock server


@dataclass
class BodyLog:
    iterated: bool = False
    closed: bool = False
    chunks_sent: int = 0


class _SyncChunks:
    def __init__(self, source: SyncSource, log: BodyLog) -> None:
        self._source = source
        self._log = log

    def __iter__(self) -> Iterator[bytes]:
        self._log.iterated = True
        for chunk in self._source():
            self._log.chunks_sent += 1
            yield chunk

    def close(self) -> None:
        self._log.closed = True


class _AsyncChunks:
    def __init__(self, source: AsyncSource, log: BodyLog) -> None:
        self._source = source
        self._log = log

    async def __aiter__(self) -> AsyncIterator[bytes]:
        self._log.iterated = True
        async for chunk in self._source():
            self._log.chunks_sent += 1
            yield chunk

    async def aclose(self) -> None:
        self._log.closed = True


class HttpxSyncBody(_SyncChunks, httpx.SyncByteStream):
    pass


class HttpxAsyncBody(_AsyncChunks, httpx.AsyncByteStream):
    pass


class Httpx2SyncBody(_SyncChunks, httpx2.SyncByteStream):
    pass


class Httpx2AsyncBody(_AsyncChunks, httpx2.AsyncByteStream):
    pass


@dataclass(frozen=True)
class Flavor:
    name: str
    mod: ModuleType
    sync_body: type[_SyncChunks]
    async_body: type[_AsyncChunks]


FLAVORS = [
    Flavor("httpx", httpx, HttpxSyncBody, HttpxAsyncBody),
    Flavor("httpx2", httpx2, Httpx2SyncBody, Httpx2AsyncBody),
]


@pytest.fixture(params=FLAVORS, ids=[f.name for f in FLAVORS])
def flavor(request: pytest.FixtureRequest) -> Flavor:
    result: Flavor = request.param
    return result


@pytest.fixture(params=["sync", "async"])
def mode(request: pytest.FixtureRequest) -> str:
    result: str = request.param
    return result


@dataclass
class Server:
    """A MockTransport handler that records requests and serves one streamed body."""

    flavor: Flavor
    content_type: str | None = "text/event-stream"
    requests: list[Any] = field(default_factory=list)
    log: BodyLog = field(default_factory=BodyLog)

    def _headers(self) -> dict[str, str]:
        return {} if self.content_type is None else {"Content-Type": self.content_type}

    def sync_client(self, source: SyncSource, **client_kwargs: Any) -> Any:
        mod = self.flavor.mod

        def handler(request: Any) -> Any:
            self.requests.append(request)
            body = self.flavor.sync_body(source, self.log)
            return mod.Response(200, headers=self._headers(), stream=body)

        return mod.Client(transport=mod.MockTransport(handler), **client_kwargs)

    def async_client(self, source: AsyncSource, **client_kwargs: Any) -> Any:
        mod = self.flavor.mod

        def handler(request: Any) -> Any:
            self.requests.append(request)
            body = self.flavor.async_body(source, self.log)
            return mod.Response(200, headers=self._headers(), stream=body)

        return mod.AsyncClient(transport=mod.MockTransport(handler), **client_kwargs)


def sync_source(chunks: Sequence[bytes]) -> SyncSource:
    return lambda: list(chunks)


def async_source(chunks: Sequence[bytes]) -> AsyncSource:
    async def source() -> AsyncIterator[bytes]:
        for chunk in chunks:
            await asyncio.sleep(0)
            yield chunk

    return source


async def collect(
    server: Server, mode: str, chunks: Sequence[bytes], **kwargs: Any
) -> list[ServerSentEvent]:
    """All events of a response streaming ``chunks``, read with connect_sse/aconnect_sse."""
    if mode == "sync":
        client = server.sync_client(sync_source(chunks))
        with client, connect_sse(client, "GET", URL, **kwargs) as source:
            return list(source.iter_sse())
    aclient = server.async_client(async_source(chunks))
    async with aclient, aconnect_sse(aclient, "GET", URL, **kwargs) as asource:
        return [event async for event in asource.aiter_sse()]


# --------------------------------------------------------------------------- framing


SAMPLE = (
    BOM
    + b": stream opened\r\n"
    + b"id: 1\r\n"
    + b"event: caf\xc3\xa9\r\n"
    + b"data: \xe2\x82\xac 5 \xf0\x9f\x98\x80\r\n"
    + b"data: line2\r\n"
    + b"\r\n"
    + b"\r\n"
    + b": keep-alive\r\n\r\n"
    + b"data: second\r\r"
    + b"retry: 2500\n\n"
    + b"data: third\nretry: -1\n\n"
    + b"id\n"
    + b"data: fourth\r\n\r\n"
    + b"data: unterminated"
)
SAMPLE_EVENTS = [
    ServerSentEvent(event="caf\u00e9", data="\u20ac 5 \U0001f600\nline2", id="1"),
    ServerSentEvent(data="second", id="1"),
    ServerSentEvent(data="", id="1", retry=2500),
    ServerSentEvent(data="third", id="1"),
    ServerSentEvent(data="fourth", id=""),
]


@pytest.mark.parametrize("chunking", list(CHUNKINGS))
async def test_sample_stream_any_chunking(flavor: Flavor, mode: str, chunking: str) -> None:
    chunks = CHUNKINGS[chunking](SAMPLE)
    server = Server(flavor)
    events = await collect(server, mode, chunks)
    assert events == SAMPLE_EVENTS
    assert [e.retry for e in events] == [None, None, 2500, None, None]
    assert server.log.iterated
    assert server.log.chunks_sent == len(chunks)


async def test_event_source_on_a_plain_response(flavor: Flavor, mode: str) -> None:
    """EventSource also works on a response built directly (no client)."""
    data = b"event: a\ndata: 1\n\nevent: b\ndata: 2\n\n"
    log = BodyLog()
    if mode == "sync":
        body: Any = flavor.sync_body(sync_source(split_every(data, 7)), log)
        response = flavor.mod.Response(
            200, headers={"content-type": "text/event-stream"}, stream=body
        )
        source = EventSource(response)
        assert source.response is response
        events = list(source.iter_sse())
    else:
        body = flavor.async_body(async_source(split_every(data, 7)), log)
        response = flavor.mod.Response(
            200, headers={"content-type": "text/event-stream"}, stream=body
        )
        source = EventSource(response)
        assert source.response is response
        events = [event async for event in source.aiter_sse()]
    assert events == [ServerSentEvent(event="a", data="1"), ServerSentEvent(event="b", data="2")]
    assert [e.json() for e in events] == [1, 2]


@pytest.mark.parametrize("encoding", ["gzip", "identity", "already-read"])
async def test_event_source_body_encodings(flavor: Flavor, mode: str, encoding: str) -> None:
    """Raw reads are used only when there is nothing to decode: a compressed body is
    decompressed first, and a body already read is served from memory."""
    import gzip

    data = b"event: a\ndata: caf\xc3\xa9\n\nevent: b\ndata: 2\n\n"
    wire = gzip.compress(data) if encoding == "gzip" else data
    headers = {"content-type": "text/event-stream"}
    if encoding != "already-read":
        headers["content-encoding"] = encoding
    log = BodyLog()
    if mode == "sync":
        body: Any = flavor.sync_body(sync_source(split_every(wire, 5)), log)
        response = flavor.mod.Response(200, headers=headers, stream=body)
        if encoding == "already-read":
            response.read()
        events = list(EventSource(response).iter_sse())
    else:
        body = flavor.async_body(async_source(split_every(wire, 5)), log)
        response = flavor.mod.Response(200, headers=headers, stream=body)
        if encoding == "already-read":
            await response.aread()
        events = [event async for event in EventSource(response).aiter_sse()]
    assert events == [
        ServerSentEvent(event="a", data="caf\u00e9"),
        ServerSentEvent(event="b", data="2"),
    ]


# --------------------------------------------------------------------------- request headers


@pytest.mark.parametrize("container", ["dict", "Headers", "none"])
async def test_request_headers(flavor: Flavor, mode: str, container: str) -> None:
    server = Server(flavor)
    caller = {"X-Trace": "abc", "Accept": "application/json"}
    kwargs: dict[str, Any] = {"params": {"stream": "1"}, "json": {"model": "m"}}
    if container == "dict":
        kwargs["headers"] = dict(caller)
    elif container == "Headers":
        kwargs["headers"] = flavor.mod.Headers(caller)
    client_kwargs = {"headers": {"Authorization": "Bearer t0k"}}
    chunks = [b"data: ok\n\n"]
    if mode == "sync":
        client = server.sync_client(sync_source(chunks), **client_kwargs)
        with client, connect_sse(client, "POST", URL, **kwargs) as source:
            events = list(source.iter_sse())
            assert source.response.request is server.requests[0]
    else:
        aclient = server.async_client(async_source(chunks), **client_kwargs)
        async with aclient, aconnect_sse(aclient, "POST", URL, **kwargs) as asource:
            events = [event async for event in asource.aiter_sse()]
            assert asource.response.request is server.requests[0]

    assert events == [ServerSentEvent(data="ok")]
    (request,) = server.requests
    assert request.method == "POST"
    assert request.headers.get_list("accept") == ["text/event-stream"]
    assert request.headers["cache-control"] == "no-store"
    assert request.headers["authorization"] == "Bearer t0k"
    assert request.url.params["stream"] == "1"
    assert json.loads(request.content) == {"model": "m"}
    if container == "none":
        assert "x-trace" not in request.headers
    else:
        assert request.headers["x-trace"] == "abc"


# --------------------------------------------------------------------------- Content-Type


@pytest.mark.parametrize(
    ("content_type", "named"),
    [
        ("application/json", "application/json"),
        ("text/plain; charset=utf-8", "text/plain"),
        ("text/html", "text/html"),
        ("text/event-streamx", "text/event-streamx"),
        ("text/event-stream-v2", "text/event-stream-v2"),
        ("application/text/event-stream", "application/text/event-stream"),
        ("event-stream", "event-stream"),
        ("", "''"),
        (None, "''"),
    ],
)
async def test_wrong_content_type(
    flavor: Flavor, mode: str, content_type: str | None, named: str
) -> None:
    server = Server(flavor, content_type=content_type)
    with pytest.raises(SSEError) as excinfo:
        await collect(server, mode, [b"data: not an event stream\n\n"])
    message = str(excinfo.value)
    assert named in message
    assert "text/event-stream" in message
    # Catchable as the transport error of either client.
    assert isinstance(excinfo.value, httpx.TransportError)
    assert isinstance(excinfo.value, httpx2.TransportError)
    assert isinstance(excinfo.value, flavor.mod.TransportError)
    # The body is not read.
    assert not server.log.iterated


@pytest.mark.parametrize(
    "content_type",
    [
        "text/event-stream",
        "TEXT/EVENT-STREAM",
        "Text/Event-Stream",
        "text/event-stream; charset=utf-8",
        "text/event-stream;",
        "text/event-stream ; charset=utf-8",
        "application/json, text/event-stream",
    ],
)
async def test_accepted_content_type(flavor: Flavor, mode: str, content_type: str) -> None:
    server = Server(flavor, content_type=content_type)
    events = await collect(server, mode, [b"data: x\n\n"])
    assert events == [ServerSentEvent(data="x")]


@pytest.mark.parametrize("charset", ["windows-1252", "iso-8859-1", "utf-16"])
async def test_charset_parameter_ignored(flavor: Flavor, mode: str, charset: str) -> None:
    """The body is UTF-8 whatever the charset parameter says (WHATWG)."""
    server = Server(flavor, content_type=f"text/event-stream; charset={charset}")
    body = b"data: caf\xc3\xa9 \x80\n\n"
    for chunks in ([body], split_every(body, 1)):
        assert await collect(server, mode, chunks) == [ServerSentEvent(data="caf\u00e9 \ufffd")]


# --------------------------------------------------------------------------- WHATWG rules


@pytest.mark.parametrize("chunking", ["whole", "1-byte", "tricky"])
async def test_bom_stripped_once(flavor: Flavor, mode: str, chunking: str) -> None:
    server = Server(flavor)
    stream = BOM + b"data: a\r\n\r\n" + BOM + b"data: b\r\n\r\ndata: c\r\n\r\n"
    events = await collect(server, mode, CHUNKINGS[chunking](stream))
    # Only the leading BOM is stripped; a later one makes the field name unknown.
    assert events == [ServerSentEvent(data="a"), ServerSentEvent(data="c")]

    double = BOM + BOM + b"data: a\n\ndata: b\n\n"
    events = await collect(server, mode, CHUNKINGS[chunking](double))
    assert events == [ServerSentEvent(data="b")]


@pytest.mark.parametrize("chunking", ["whole", "1-byte", "7-byte"])
async def test_no_empty_events_after_id(flavor: Flavor, mode: str, chunking: str) -> None:
    """httpx-sse yields an empty event for every blank line once an id was seen."""
    stream = (
        b"id: 1\ndata: a\n\n"
        + b"\n\n\n"
        + b": keep-alive\n\n" * 3
        + b"\r\n\r\n\r\r"
        + b"event: ping\n\n"
        + b"id: 2\n\n"
        + b"data: b\n\n"
        + b"\n"
    )
    events = await collect(Server(flavor), mode, CHUNKINGS[chunking](stream))
    assert events == [ServerSentEvent(data="a", id="1"), ServerSentEvent(data="b", id="2")]


@pytest.mark.parametrize(
    "value",
    [b"-1", b"+5", b"1_000", b"\xef\xbc\x95", b" 5", b"5 ", b"1e3", b"0x10", b"", b"5.0"],
)
async def test_invalid_retry_ignored(flavor: Flavor, mode: str, value: bytes) -> None:
    """``retry`` must be ASCII digits only (httpx-sse accepts whatever int() accepts)."""
    stream = b"retry: " + value + b"\n\ndata: x\nretry: " + value + b"\n\ndata: y\n\n"
    events = await collect(Server(flavor), mode, split_every(stream, 3))
    # No retry-only event for the first block, no retry on the second event.
    assert events == [ServerSentEvent(data="x"), ServerSentEvent(data="y")]
    assert [e.retry for e in events] == [None, None]


@pytest.mark.parametrize(("value", "expected"), [(b"0", 0), (b"0010", 10), (b"3000", 3000)])
async def test_valid_retry(flavor: Flavor, mode: str, value: bytes, expected: int) -> None:
    stream = b"retry: " + value + b"\n\ndata: x\nretry: " + value + b"\n\n"
    events = await collect(Server(flavor), mode, split_every(stream, 1))
    assert events == [
        ServerSentEvent(data="", retry=expected),
        ServerSentEvent(data="x", retry=expected),
    ]


@pytest.mark.parametrize(
    "bad",
    [
        b"\xff",
        b"\xc3(",
        b"\xe2\x82",
        b"\xed\xa0\x80",  # UTF-16 surrogate
        b"\xc0\xaf",  # overlong
        b"\xf4\x90\x80\x80",  # above U+10FFFF
        b"\x80\x80",
    ],
)
@pytest.mark.parametrize("chunking", ["whole", "1-byte"])
async def test_invalid_utf8_replaced(flavor: Flavor, mode: str, bad: bytes, chunking: str) -> None:
    raw = b"a" + bad + b"z"
    expected = raw.decode("utf-8", "replace")
    assert "\ufffd" in expected
    stream = b"event: " + raw + b"\nid: " + raw + b"\ndata: " + raw + b"\ndata: \xc3\xa9\n\n"
    events = await collect(Server(flavor), mode, CHUNKINGS[chunking](stream))
    assert events == [ServerSentEvent(event=expected, data=expected + "\n\u00e9", id=expected)]


# --------------------------------------------------------------------------- no hold-back on CR


@pytest.mark.parametrize("first", [b"data: a\r\r", b"data: a\r\n\r", b"data: a\n\r"])
def test_cr_at_chunk_end_sync(flavor: Flavor, first: bytes) -> None:
    """An event ending in CR is yielded before the next chunk is asked for.

    The body and the consumer log into one timeline: the first event must come between
    the first and the second chunk. A decoder holding back a trailing CR (as httpx-sse
    does) would only yield it after reading chunk 2.
    """
    timeline: list[str] = []
    received: list[ServerSentEvent] = []

    def source() -> Iterator[bytes]:
        timeline.append("chunk 1")
        yield first
        timeline.append("chunk 2")
        yield b"\ndata: b\r"  # this LF completes the CRLF: not a blank line
        timeline.append("chunk 3")
        yield b"\ndata: c\r\n\r\n"

    server = Server(flavor)
    client = server.sync_client(source)
    with client, connect_sse(client, "GET", URL) as events:
        for event in events.iter_sse():
            timeline.append(f"event {event.data!r}")
            received.append(event)
    assert timeline == ["chunk 1", "event 'a'", "chunk 2", "chunk 3", "event 'b\\nc'"]
    assert received == [ServerSentEvent(data="a"), ServerSentEvent(data="b\nc")]


@pytest.mark.parametrize("first", [b"data: a\r\r", b"data: a\r\n\r", b"data: a\n\r"])
async def test_cr_at_chunk_end_async(flavor: Flavor, first: bytes) -> None:
    """The body blocks after the first chunk until the consumer has the first event."""
    got_first = asyncio.Event()
    delivered_in_time: list[bool] = []

    async def source() -> AsyncIterator[bytes]:
        yield first
        try:
            await asyncio.wait_for(got_first.wait(), timeout=2)
            delivered_in_time.append(True)
        except asyncio.TimeoutError:
            delivered_in_time.append(False)
        yield b"\ndata: b\r"
        yield b"\ndata: c\n\n"

    received: list[ServerSentEvent] = []
    server = Server(flavor)
    client = server.async_client(source)
    async with client, aconnect_sse(client, "GET", URL) as events:
        async for event in events.aiter_sse():
            received.append(event)
            got_first.set()
    assert delivered_in_time == [True]
    assert received == [ServerSentEvent(data="a"), ServerSentEvent(data="b\nc")]


# --------------------------------------------------------------------------- early exit


def endless_sync(log: list[int]) -> SyncSource:
    def source() -> Iterator[bytes]:
        n = 0
        while True:
            log.append(n)
            yield b"data: %d\n\n" % n
            n += 1

    return source


def test_break_closes_cleanly_sync(flavor: Flavor) -> None:
    produced: list[int] = []
    server = Server(flavor)
    client = server.sync_client(endless_sync(produced))
    with client:
        with connect_sse(client, "GET", URL) as source:
            for event in source.iter_sse():
                assert event == ServerSentEvent(data="0")
                break
            response = source.response
        assert response.is_closed
        assert server.log.closed
        assert produced == [0]
        # The client stays usable.
        server.log = BodyLog()
        with connect_sse(client, "GET", URL) as source:
            first_three = [e.data for _, e in zip(range(3), source.iter_sse())]
        assert first_three == ["0", "1", "2"]
        assert server.log.closed


async def test_break_closes_cleanly_async(flavor: Flavor) -> None:
    produced: list[int] = []

    async def source() -> AsyncIterator[bytes]:
        n = 0
        while True:
            produced.append(n)
            yield b"data: %d\n\n" % n
            n += 1

    server = Server(flavor)
    client = server.async_client(source)
    async with client:
        async with aconnect_sse(client, "GET", URL) as event_source:
            events = event_source.aiter_sse()
            assert isinstance(events, AsyncGenerator)
            async for event in events:
                assert event == ServerSentEvent(data="0")
                break
            response = event_source.response
        assert response.is_closed
        assert server.log.closed
        assert produced == [0]
        await events.aclose()  # finalising the abandoned generator after the close is fine

        server.log = BodyLog()
        async with aconnect_sse(client, "GET", URL) as event_source:
            data = []
            async for event in event_source.aiter_sse():
                data.append(event.data)
                if len(data) == 3:
                    break
        assert data == ["0", "1", "2"]
        assert server.log.closed


# --------------------------------------------------------------------------- size limit


@pytest.mark.parametrize("chunking", ["whole", "7-byte", "1-byte"])
async def test_event_too_large_carries_other_events(
    flavor: Flavor, mode: str, chunking: str
) -> None:
    """A decoder with a small limit over a streamed body: the oversized event is dropped,
    the error carries the other events of the same chunk, and decoding goes on."""
    stream = b"data: a\n\ndata: " + b"x" * 200 + b"\n\ndata: b\n\ndata: c\n\n"
    server = Server(flavor)
    decoder = SSEDecoder(max_event_size=64)
    assert decoder.max_event_size == 64
    events: list[ServerSentEvent] = []
    errors: list[EventTooLargeError] = []

    def feed(chunk: bytes) -> None:
        try:
            events.extend(decoder.feed(chunk))
        except EventTooLargeError as exc:
            errors.append(exc)
            events.extend(exc.events)

    chunks = CHUNKINGS[chunking](stream)
    if mode == "sync":
        client = server.sync_client(sync_source(chunks))
        with client, client.stream("GET", URL) as response:
            for chunk in response.iter_bytes():
                feed(chunk)
    else:
        aclient = server.async_client(async_source(chunks))
        async with aclient, aclient.stream("GET", URL) as aresponse:
            async for chunk in aresponse.aiter_bytes():
                feed(chunk)
    assert decoder.finish() is False

    assert events == [ServerSentEvent(data=d) for d in "abc"]
    (error,) = errors
    assert isinstance(error, ValueError)
    assert "max_event_size=64" in str(error)
    if chunking == "whole":
        assert error.events == [ServerSentEvent(data=d) for d in "abc"]


# --------------------------------------------------------------------------- line helpers


LINE_CHUNKS = [
    b"a\r",
    b"\nb\r\n",
    b"\r",
    b"\n",
    b"c\rd",
    b"\xe2\x82",
    b"\xac\n",
    b"\r\r\n",
    b"tail",
]
LINES = ["a", "b", "", "c", "d\u20ac", "", "", "tail"]


def test_iter_sse_lines_crlf_splits(flavor: Flavor) -> None:
    timeline: list[str] = []

    def source() -> Iterator[bytes]:
        for index, chunk in enumerate(LINE_CHUNKS):
            timeline.append(f"chunk {index}")
            yield chunk

    client = Server(flavor).sync_client(source)
    with client, client.stream("GET", URL) as response:
        lines: list[str] = []
        for line in _iter_sse_lines(response):
            timeline.append(f"line {line!r}")
            lines.append(line)
    assert lines == LINES
    # A line ended by CR is out before the next chunk is read (no hold-back).
    assert timeline[:3] == ["chunk 0", "line 'a'", "chunk 1"]


async def test_aiter_sse_lines_crlf_splits(flavor: Flavor) -> None:
    client = Server(flavor).async_client(async_source(LINE_CHUNKS))
    async with client, client.stream("GET", URL) as response:
        lines = [line async for line in _aiter_sse_lines(response)]
    assert lines == LINES


@pytest.mark.parametrize("chunking", ["whole", "1-byte", "tricky"])
def test_iter_sse_lines_any_chunking(flavor: Flavor, chunking: str) -> None:
    data = b"".join(LINE_CHUNKS)
    client = Server(flavor).sync_client(sync_source(CHUNKINGS[chunking](data)))
    with client, client.stream("GET", URL) as response:
        assert list(_iter_sse_lines(response)) == LINES
