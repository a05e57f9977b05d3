"""The fault matrix: every way an upstream can fail, in one table, for both layers that meter.

Layers (columns):

* ``sync``: ``connect_usage`` with an ``httpx.Client``, straight to a ``ReplayServer``;
* ``async``: ``aconnect_usage`` with an ``httpx.AsyncClient``, straight to it;
* ``proxy``: the metering proxy (``ProxyServer``, JSONL sink) in front of the ``ReplayServer``,
  read by ``connect_usage`` with its own retrieval off (so the proxy's is the only one).

Faults (rows of ``CASES``): the connection dropped by an orderly close (FIN) and by a reset
(RST) before the headers, after the headers before the first event, in the middle of an event
and between events; a reset, 404, 429 with ``Retry-After`` or 500 when the usage of a cut
Responses stream is retrieved; a server that stops sending before or after its headers (read
timeouts); a trickle of one byte per 100 ms; invalid UTF-8, truncated JSON, a mid-stream error
event, and an HTML page with status 200. Clean streams are the first rows, for reference.

A second table (``HOSTILE_CASES``, ``test_hostile_matrix``) holds what a hostile upstream can
send: a line past ``max_event_size`` (with and without usage injection), a decompression bomb
in each supported coding, truncated and undecodable compressed bodies, numbers no counter holds
in the usage and hostile strings in the request, two response ids in one stream, an endless
comment stream (idle timeout), a stream past its deadline, an event stream labelled
``text/html`` and event streams with error statuses.

Checked in every cell: what the caller gets (a report whose ``status`` and usage source tell
the truth, or the exception when no stream could be opened); the usage against the server's
own truth when it was read or retrieved; the events counted against the bytes received; the
retrieval ``GET``s the upstream saw; for the proxy, exactly one record with a truthful status,
the client receiving exactly the bytes the upstream sent and the record's byte counts agreeing;
and the elapsed time within bounds. Every run has a hard time limit of its own (a thread join),
so a hang fails the test instead of blocking the suite.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from loopback_http import QuietHandler, ThreadedServer
from ssetally import (
    APIStatusError,
    RetrievalPolicy,
    SSEError,
    StreamReport,
    StreamTimeoutError,
    aconnect_usage,
    connect_usage,
)
from ssetally._gateway import ProxyConfig, ProxyServer
from ssetally._replay import Faults, ReplayServer, Served, split_events

KEY = "sk-fault-matrix-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "gpt-4o-mini"
#: The read timeout of the direct clients and of the proxy's upstream pool.
READ_TIMEOUT = 1.0
#: The proxy layer's client waits longer than the proxy: the proxy must give up first.
VIA_READ_TIMEOUT = 4.0
#: A pause no test waits for: the server has stopped sending.
STALL_MS = "30000"
#: Hard limit of one run (client, fallbacks and the proxy's record).
GUARD = 25.0
RETRIEVAL = RetrievalPolicy(
    deadline=5.0, first_delay=0.02, backoff=2.0, max_delay=0.5, max_server_errors=3
)

Raised = type[BaseException] | tuple[type[BaseException], ...]

# --------------------------------------------------------------------------- streams

#: The smallest complete Chat stream with usage: 84 bytes, 8.3 s at one byte per 100 ms.
TINY = b'data:{"choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\n\ndata:[DONE]\n\n'
TINY_USAGE = {"prompt_tokens": 1, "completion_tokens": 2}


def _chunk(choices: bytes, usage: bytes = b"null") -> bytes:
    return (
        b'data: {"id":"chatcmpl-bad","object":"chat.completion.chunk","created":1,'
        b'"model":"gpt-4o-mini","choices":' + choices + b',"usage":' + usage + b"}\n\n"
    )


#: A Chat stream whose text is not valid UTF-8 (a cut two-byte sequence, stray 0xFF 0xFE).
BAD_UTF8 = b"".join(
    [
        _chunk(b'[{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null}]'),
        _chunk(b'[{"index":0,"delta":{"content":"caf\xc3"},"finish_reason":null}]'),
        _chunk(b'[{"index":0,"delta":{"content":"\xff\xfe ok"},"finish_reason":null}]'),
        _chunk(b'[{"index":0,"delta":{},"finish_reason":"stop"}]'),
        _chunk(b"[]", b'{"prompt_tokens":9,"completion_tokens":4,"total_tokens":13}'),
        b"data: [DONE]\n\n",
    ]
)
BAD_UTF8_USAGE = {"prompt_tokens": 9, "completion_tokens": 4, "total_tokens": 13}

#: What each kind of row streams: the path, the request body, replayed bytes (or None: the
#: server generates the answer and knows its usage).
STREAMS: dict[str, tuple[str, dict[str, Any], bytes | None]] = {
    "chat": (
        "/chat/completions",
        {"model": MODEL, "stream": True, "messages": [{"role": "user", "content": "Faults?"}]},
        None,
    ),
    "responses": ("/responses", {"model": MODEL, "stream": True, "input": "Faults?"}, None),
    "tiny": ("/chat/completions", {"model": MODEL, "stream": True, "messages": []}, TINY),
    "bad-utf8": ("/chat/completions", {"model": MODEL, "stream": True, "messages": []}, BAD_UTF8),
}

# --------------------------------------------------------------------------- the table


@dataclass(frozen=True)
class Expect:
    """What the caller gets."""

    #: The report's status; None when no stream opened (the request itself raised).
    status: str | None
    #: What was raised: by the request when ``status`` is None, else while reading.
    raises: Raised | None = None
    #: The status of the ``APIStatusError`` raised by the request.
    http: int | None = None
    #: ``usage.source`` of the report.
    source: str | None = None


@dataclass(frozen=True)
class Case:
    id: str
    stream: str
    #: ``x-replay-*`` headers of the request.
    headers: Mapping[str, str]
    #: Straight to the server (sync and async).
    direct: Expect
    #: The client through the proxy.
    via: Expect
    #: The proxy record's ``status`` and ``usage_source``.
    record: str
    record_source: str | None
    #: Fault sets for the requests that follow the streamed one (the retrieval ``GET``s).
    then: tuple[Faults, ...] = ()
    #: ``GET /responses/{id}`` requests the upstream receives.
    gets: int = 0
    #: Words the retrieval attempt's reason contains.
    reason: str | None = None
    #: Bounds of the time until the report (and, for the proxy, its record).
    seconds: tuple[float, float] = (0.0, 3.0)
    layers: tuple[str, ...] = ("sync", "async", "proxy")
    retry_after: float = 1.0
    #: Invalid JSON events the report counts.
    invalid_json: int = 0
    #: The first byte reaches the caller within this many seconds (relayed as it comes).
    first_byte_within: float | None = None


def _expect(status: str | None, raises: Raised | None = None, **kw: Any) -> Expect:
    return Expect(status, raises, **kw)


FIN_CUT = httpx.RemoteProtocolError  # the body ended mid-message (orderly close)
RST_CUT = httpx.ReadError  # connection reset by peer
PROXY_CUT = httpx.RemoteProtocolError  # the proxy drops its client the orderly way
RESET = {"x-replay-reset": "1"}
#: A Responses stream cut after 4 events: created, in_progress, item added, part added.
CUT_RESPONSES = {"x-replay-cut-after-events": "4"}
#: The streamed POST keeps its own faults (its headers); the GETs after it get these.
NO_FAULT = Faults()
RESET_GET = Faults(drop_before_headers=True, reset=True)


def _cut_chat(case_id: str, headers: dict[str, str], raised: Raised) -> Case:
    """A Chat stream cut after its headers: truncated, usage estimated, the cut passed on."""
    return Case(
        case_id,
        "chat",
        headers,
        direct=_expect("truncated", raised, source="estimate"),
        via=_expect("truncated", PROXY_CUT, source="estimate"),
        record="truncated",
        record_source="estimate",
    )


def _refused(case_id: str, headers: dict[str, str], raised: Raised, http: int, **kw: Any) -> Case:
    """No answer at all: the request raises; the proxy answers ``http`` and records it."""
    return Case(
        case_id,
        "chat",
        headers,
        direct=_expect(None, raised),
        via=_expect(None, APIStatusError, http=http),
        record="upstream_error",
        record_source=None,
        **kw,
    )


def _retrieval(
    case_id: str, then: tuple[Faults, ...], ok: bool, gets: int, reason: str, **kw: Any
) -> Case:
    """A Responses stream cut before its terminal event, then retrieval under ``then``."""
    status, source = ("completed", "retrieval") if ok else ("truncated", "estimate")
    return Case(
        case_id,
        "responses",
        CUT_RESPONSES,
        direct=_expect(status, FIN_CUT, source=source),
        via=_expect("truncated", PROXY_CUT, source="estimate"),
        record=status,
        record_source=source,
        then=(NO_FAULT, *then),
        gets=gets,
        reason=reason,
        **kw,
    )


CASES: list[Case] = [
    Case(
        "clean-chat",
        "chat",
        {},
        _expect("completed", source="stream"),
        _expect("completed", source="stream"),
        "completed",
        "stream",
    ),
    Case(
        "clean-responses",
        "responses",
        {},
        _expect("completed", source="stream"),
        _expect("completed", source="stream"),
        "completed",
        "stream",
    ),
    # ---- connection drops, by phase
    _refused("close-before-headers", {"x-replay-drop": "1"}, httpx.RemoteProtocolError, 502),
    _refused("reset-before-headers", {"x-replay-drop": "1", **RESET}, RST_CUT, 502),
    _cut_chat("close-after-headers", {"x-replay-cut-after-events": "0"}, FIN_CUT),
    _cut_chat("reset-after-headers", {"x-replay-cut-after-events": "0", **RESET}, RST_CUT),
    _cut_chat("close-mid-event", {"x-replay-cut-mid-event": "3"}, FIN_CUT),
    _cut_chat("reset-mid-event", {"x-replay-cut-mid-event": "3", **RESET}, RST_CUT),
    _cut_chat("close-between-events", {"x-replay-cut-after-events": "3"}, FIN_CUT),
    _cut_chat("reset-between-events", {"x-replay-cut-after-events": "3", **RESET}, RST_CUT),
    # ---- retrieval of a cut Responses stream
    _retrieval("retrieval-ok", (), True, 1, "ok"),
    _retrieval("retrieval-reset-once", (RESET_GET,), True, 2, "ok"),
    _retrieval("retrieval-reset-always", (RESET_GET,) * 3, False, 3, "failed: ReadError"),
    _retrieval("retrieval-404", (Faults(status=404),), False, 1, "404"),
    _retrieval("retrieval-429-retry-after", (Faults(status=429),), True, 2, "ok", seconds=(1, 4)),
    _retrieval("retrieval-500", (Faults(status=500),) * 3, False, 3, "last 500"),
    # ---- the server stops sending: the read timeout ends it
    _refused(
        "stall-before-headers",
        {"x-replay-first-byte-ms": STALL_MS},
        httpx.ReadTimeout,
        504,
        seconds=(READ_TIMEOUT * 0.9, READ_TIMEOUT + 2.5),
    ),
    Case(
        "stall-mid-stream",
        "chat",
        {"x-replay-delay-ms": STALL_MS},  # the first event, then nothing
        direct=_expect("truncated", httpx.ReadTimeout, source="estimate"),
        via=_expect("truncated", PROXY_CUT, source="estimate"),
        record="truncated",
        record_source="estimate",
        seconds=(READ_TIMEOUT * 0.9, READ_TIMEOUT + 2.5),
    ),
    # ---- slow, but within the read timeout: completes
    Case(
        "trickle-1-byte-per-100ms",
        "tiny",
        {"x-replay-trickle-ms": "100"},
        direct=_expect("completed", source="stream"),
        via=_expect("completed", source="stream"),
        record="completed",
        record_source="stream",
        seconds=(0.1 * (len(TINY) - 1) * 0.95, 0.1 * len(TINY) + 4.0),
        first_byte_within=1.0,
        # The proxy layer's client is the sync one, reading the bytes as the proxy relays them.
        layers=("async", "proxy"),
    ),
    # ---- what the upstream sends is broken
    Case(
        "invalid-utf8",
        "bad-utf8",
        {},
        _expect("completed", source="stream"),
        _expect("completed", source="stream"),
        "completed",
        "stream",
    ),
    Case(
        "truncated-json",
        "chat",
        {"x-replay-malformed": "2"},
        _expect("completed", source="stream"),
        _expect("completed", source="stream"),
        "completed",
        "stream",
        invalid_json=1,
    ),
    Case(
        "error-event",
        "chat",
        {"x-replay-error-event": "3"},
        _expect("failed", source="estimate"),
        _expect("failed", source="estimate"),
        "failed",
        "estimate",
    ),
    Case(
        "html-200",
        "chat",
        {"x-replay-status": "200", "x-replay-html": "1"},
        direct=_expect(None, SSEError),
        via=_expect(None, SSEError),
        # Relayed whole; not an event stream and no usage: the record says so (stream false).
        # ("truncated" when the proxy saw the client hang up first: see check_record.)
        record="completed",
        record_source=None,
    ),
]

LAYERS = ("sync", "async", "proxy")
PARAMS = [
    pytest.param(case, layer, id=f"{case.id}-{layer}")
    for case in CASES
    for layer in LAYERS
    if layer in case.layers
]

# --------------------------------------------------------------------------- running a cell


class _Tee(httpx.SyncByteStream):
    """A response body that keeps a copy of every byte the caller reads."""

    def __init__(self, inner: httpx.SyncByteStream, into: bytearray) -> None:
        self._inner = inner
        self._into = into

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self._inner:
            self._into += chunk
            yield chunk

    def close(self) -> None:
        self._inner.close()


class _AsyncTee(httpx.AsyncByteStream):
    def __init__(self, inner: httpx.AsyncByteStream, into: bytearray) -> None:
        self._inner = inner
        self._into = into

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._inner:
            self._into += chunk
            yield chunk

    async def aclose(self) -> None:
        await self._inner.aclose()


class Recording(httpx.HTTPTransport):
    """Keeps the body bytes (after the transfer coding, as sent) of every response."""

    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytearray] = []

    def handle_request(self, request: httpx.Request) -> httpx.Response:
        response = super().handle_request(request)
        assert isinstance(response.stream, httpx.SyncByteStream)
        self.bodies.append(bytearray())
        response.stream = _Tee(response.stream, self.bodies[-1])
        return response


class AsyncRecording(httpx.AsyncHTTPTransport):
    def __init__(self) -> None:
        super().__init__()
        self.bodies: list[bytearray] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        response = await super().handle_async_request(request)
        assert isinstance(response.stream, httpx.AsyncByteStream)
        self.bodies.append(bytearray())
        response.stream = _AsyncTee(response.stream, self.bodies[-1])
        return response


@dataclass
class Outcome:
    """What the caller got."""

    #: A stream was opened (else the request raised ``error``).
    opened: bool = False
    report: StreamReport | None = None
    #: Raised by the request (not opened) or while reading the stream.
    error: BaseException | None = None
    #: The body of the streamed answer as the client received it.
    received: bytes = b""
    #: From the request to the final report.
    seconds: float = 0.0
    events: list[Any] = field(default_factory=list)


def run_sync(url: str, body: dict[str, Any], headers: Mapping[str, str], *, read: float,
             retrieve: bool) -> Outcome:  # fmt: skip
    out = Outcome()
    transport = Recording()
    timeout = httpx.Timeout(10.0, read=read)
    start = time.monotonic()
    with httpx.Client(transport=transport, timeout=timeout, trust_env=False) as client:
        try:
            with connect_usage(
                client, "POST", url, json=body, headers={**AUTH, **headers},
                retrieve=retrieve, retrieval=RETRIEVAL,
            ) as stream:  # fmt: skip
                out.opened = True
                try:
                    out.events.extend(stream)
                except Exception as exc:  # noqa: BLE001 - checked by the caller
                    out.error = exc
            out.report = stream.report
        except Exception as exc:  # noqa: BLE001 - the request itself failed
            out.error = exc
    out.seconds = time.monotonic() - start
    out.received = bytes(transport.bodies[0]) if transport.bodies else b""
    return out


async def run_async(url: str, body: dict[str, Any], headers: Mapping[str, str], *, read: float,
                    retrieve: bool) -> Outcome:  # fmt: skip
    out = Outcome()
    transport = AsyncRecording()
    timeout = httpx.Timeout(10.0, read=read)
    start = time.monotonic()
    async with httpx.AsyncClient(transport=transport, timeout=timeout, trust_env=False) as client:
        try:
            async with aconnect_usage(
                client, "POST", url, json=body, headers={**AUTH, **headers},
                retrieve=retrieve, retrieval=RETRIEVAL,
            ) as stream:  # fmt: skip
                out.opened = True
                try:
                    async for event in stream:
                        out.events.append(event)
                except Exception as exc:  # noqa: BLE001 - checked by the caller
                    out.error = exc
            out.report = stream.report
        except Exception as exc:  # noqa: BLE001 - the request itself failed
            out.error = exc
    out.seconds = time.monotonic() - start
    out.received = bytes(transport.bodies[0]) if transport.bodies else b""
    return out


def guarded(fn: Callable[[], Any], limit: float = GUARD) -> Any:
    """``fn()`` in a thread of its own, failing the test when it does not return in time."""
    result: list[Any] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(fn())
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            errors.append(exc)

    thread = threading.Thread(target=target, name="fault-matrix-run", daemon=True)
    thread.start()
    thread.join(limit)
    if thread.is_alive():
        pytest.fail(f"hung: no result after {limit} s")
    if errors:
        raise errors[0]
    return result[0]


def jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


@contextmanager
def proxy_for(server: ReplayServer, sink: Path) -> Iterator[ProxyServer]:
    config = ProxyConfig(
        upstream=server.origin,
        otel=False,
        read_timeout=READ_TIMEOUT,
        connect_timeout=2.0,
        retrieval=RETRIEVAL,
        shutdown_timeout=5.0,
    )
    with ProxyServer(config, f"jsonl:{sink}") as proxy:
        yield proxy


def run_via_proxy(
    proxy: ProxyServer, sink: Path, path: str, body: dict[str, Any], headers: Mapping[str, str]
) -> tuple[Outcome, list[dict[str, Any]], float]:
    """The client through the proxy; then the records, once the proxy is idle and flushed, and
    the seconds until the first record was written."""
    start = time.monotonic()
    out = run_sync(proxy.url + "/v1" + path, body, headers, read=VIA_READ_TIMEOUT, retrieve=False)
    while not jsonl(sink) and time.monotonic() - start < GUARD - 2:
        time.sleep(0.01)
    record_seconds = time.monotonic() - start
    assert proxy.flush(5.0), "the proxy did not finish its fallbacks and flush its sink"
    return out, jsonl(sink), record_seconds


# --------------------------------------------------------------------------- checks


def events_in(data: bytes) -> tuple[int, bool]:
    """The events a tap counts in ``data``, and whether the last one was cut: the pieces that
    end with a blank line, plus a last piece cut in its data line (read anyway, and counted
    with a warning, by the tap)."""
    pieces = split_events(data)
    complete = sum(1 for e in pieces if e.endswith((b"\n\n", b"\r\n\r\n", b"\r\r")))
    cut = complete < len(pieces) and b"data:" in pieces[-1]
    return complete + cut, cut


def tokens_of(usage: Mapping[str, Any]) -> tuple[Any, Any]:
    """(input, output) of a wire usage object (Chat or Responses) or a record's usage."""
    return (
        usage.get("input_tokens", usage.get("prompt_tokens")),
        usage.get("output_tokens", usage.get("completion_tokens")),
    )


def truth_of(case: Case, served: Served | None) -> dict[str, Any] | None:
    """The usage the upstream reported (or stored) for this answer."""
    replayed = STREAMS[case.stream][2]
    if replayed is TINY:
        return TINY_USAGE
    if replayed is BAD_UTF8:
        return BAD_UTF8_USAGE
    return None if served is None else served.usage


def check_caller(case: Case, exp: Expect, out: Outcome, truth: Mapping[str, Any] | None) -> None:
    if exp.status is None:
        assert not out.opened and out.report is None, out.report
        assert exp.raises is not None and isinstance(out.error, exp.raises), repr(out.error)
        if exp.http is not None:
            assert isinstance(out.error, APIStatusError) and out.error.status_code == exp.http
        return
    report = out.report
    assert out.opened and report is not None, repr(out.error)
    if exp.raises is None:
        assert out.error is None, repr(out.error)
    else:
        assert isinstance(out.error, exp.raises), repr(out.error)
    assert report.status == exp.status, (report.status, report.attempts)
    if case.first_byte_within is not None:
        t = report.timings
        assert t is not None and t.first_byte is not None and t.end is not None
        assert t.first_byte - t.request_sent < case.first_byte_within < t.end - t.request_sent
    events, cut = events_in(out.received)
    assert report.events == events
    # An event cut in its middle carries half its JSON.
    assert report.invalid_json_events == case.invalid_json + cut
    assert cut is any("without the blank line" in w for w in report.warnings), report.warnings
    if exp.source is None:
        assert report.usage is None
        return
    assert report.usage is not None, report.attempts
    assert report.usage.source == exp.source, report.attempts
    if exp.source in ("stream", "retrieval"):
        assert truth is not None and dict(report.usage.raw) == truth
    # The attempts tell the same story as the source.
    assert [a.ok for a in report.attempts][-1] is True
    assert report.attempts[-1].source == exp.source


def check_gets(case: Case, server: ReplayServer, reason: str | None) -> None:
    methods = [r.method for r in server.requests]
    assert methods.count("POST") == 1, methods  # no request was sent twice
    assert methods.count("GET") == case.gets, methods
    if case.reason is not None:
        assert reason is not None and case.reason in reason, reason


def retrieval_reason(attempts: list[tuple[str, bool, str]]) -> str | None:
    found = [why for source, _, why in attempts if source == "retrieval"]
    assert len(found) <= 1, attempts
    return found[0] if found else None


def check_bytes(out: Outcome, served: Served | None, replayed: bytes | None) -> None:
    """The client received exactly the body bytes the upstream wrote."""
    if served is None:
        return
    assert len(out.received) == served.bytes_sent
    assert hashlib.sha256(out.received).hexdigest() == served.body_sha256
    if replayed is not None and served.completed:
        assert out.received == replayed


def check_record(
    case: Case, record: dict[str, Any], out: Outcome, served: Served | None, server: ReplayServer
) -> None:
    status = record["status"]
    assert record["usage_source"] == case.record_source, record
    assert record["key_fingerprint"] and KEY not in json.dumps(record)
    truth = truth_of(case, served)
    if case.record_source in ("stream", "retrieval"):
        assert truth is not None and tokens_of(record["usage"]) == tokens_of(truth)
    sent = record["bytes"]
    if served is not None:
        # Everything the upstream wrote reached the client, nothing else.
        assert sent["upstream"] == sent["client"] == served.bytes_sent == len(out.received)
        assert record["upstream_request_id"] == served.request_id
        assert status == case.record, (record["ended_by"], record["attempts"])
        assert record["stream"] is True and record["http_status"] == 200
        if case.via.raises is PROXY_CUT:
            assert record["ended_by"].startswith("upstream failed mid-body"), record["ended_by"]
        else:
            assert record["ended_by"] == "eof"
    elif case.via.http is not None:
        # No answer upstream: the proxy's own error, and the record of it.
        assert status == case.record, record["ended_by"]
        assert sent["upstream"] == 0 and record["http_status"] == case.via.http
        assert record["upstream_status"] is None
    else:
        # An answer that is not an event stream (the HTML page): relayed whole.
        with httpx.Client(timeout=5.0, trust_env=False) as client:
            path, body, _ = STREAMS[case.stream]
            direct = client.post(server.url + path, json=body, headers={**AUTH, **case.headers})
        page = len(direct.content)
        assert record["stream"] is False and record["usage"] is None and page > 0
        assert record["upstream_status"] == record["http_status"] == direct.status_code
        # The client raised at the headers and hung up without reading the body: the proxy
        # relayed it whole ("completed") unless it saw the hang-up before the body's end.
        if record["ended_by"] == "eof":
            assert status == case.record
            assert sent["upstream"] == sent["client"] == page
        else:
            assert record["ended_by"] == "client disconnected" and status == "truncated"
            assert sent["client"] <= sent["upstream"] <= page


# --------------------------------------------------------------------------- the test


@pytest.fixture(scope="module", autouse=True)
def _warm() -> None:
    """The first stream of the process pays one-time costs (imports, the tokenizer's tables)
    that the 1 s read timeout of the first cell must not see."""
    path, body, replayed = STREAMS["chat"]
    streams = [] if replayed is None else [replayed]
    client = httpx.Client(timeout=30.0, trust_env=False)
    with (
        ReplayServer(streams=streams) as server,
        client,
        connect_usage(client, "POST", server.url + path, json=body, headers=AUTH) as stream,
    ):
        assert list(stream)


@pytest.mark.parametrize(("case", "layer"), PARAMS)
def test_fault_matrix(case: Case, layer: str, tmp_path: Path) -> None:
    path, body, replayed = STREAMS[case.stream]
    streams = [] if replayed is None else [replayed]
    sink = tmp_path / "usage.jsonl"
    low, high = case.seconds
    with ReplayServer(streams=streams, retry_after=case.retry_after) as server:
        server.queue_faults(*case.then)
        if layer == "proxy":
            with proxy_for(server, sink) as proxy:
                out, records, record_seconds = guarded(
                    lambda: run_via_proxy(proxy, sink, path, body, case.headers)
                )
                # Settled: still exactly one record once every fallback has finished.
                time.sleep(0.05)
                assert proxy.flush(5.0)
                assert len(jsonl(sink)) == 1
            assert len(records) == 1, records
            record = records[0]
            attempts = [(a["source"], a["ok"], a["reason"]) for a in record["attempts"]]
            elapsed = record_seconds
            assert out.seconds <= high, out.seconds
        else:
            url = server.url + path
            if layer == "sync":
                out = guarded(
                    lambda: run_sync(url, body, case.headers, read=READ_TIMEOUT, retrieve=True)
                )
            else:
                out = guarded(
                    lambda: asyncio.run(
                        asyncio.wait_for(
                            run_async(url, body, case.headers, read=READ_TIMEOUT, retrieve=True),
                            GUARD - 1,
                        )
                    )
                )
            report = out.report
            attempts = [] if report is None else [tuple(a) for a in report.attempts]
            elapsed = out.seconds
        served_list = server.served
        assert len(served_list) <= 1
        served = served_list[0] if served_list else None
        check_gets(case, server, retrieval_reason(attempts))
        exp = case.via if layer == "proxy" else case.direct
        check_caller(case, exp, out, truth_of(case, served))
        check_bytes(out, served, replayed)
        if layer == "proxy":
            check_record(case, record, out, served, server)
    assert low <= elapsed <= high, (low, elapsed, high)


# =========================================================================== hostile upstreams
#
# The second table: answers an attacker (or a broken provider) could send, which the replay
# server cannot make. A scripted HTTP/1.0 upstream on 127.0.0.1 writes each case's bytes as
# they are (the body ends when the connection closes); the layers are the same three, except
# that the proxy's client reads the raw body (``iter_raw``), so every byte it gets is checked
# against what the upstream wrote whatever the body holds. Every cell asserts a report or a
# record with a truthful status or warning, the bytes unchanged, and a time bound.

MiB = 1 << 20
#: Past ``DEFAULT_MAX_EVENT_SIZE_BYTES`` (16 MiB): the longest event any layer buffers.
LONG_LINE = 17 * MiB
#: Past the metering decoders' total budget (256 MiB) however the body is read.
BOMB_SIZE = 300 * MiB
HOSTILE_GUARD = 60.0
#: The idle timeout and deadline of the endless cases (proxy config, connect_usage options).
IDLE = 0.5
DEADLINE = 1.0


def _text_chunk(text: str, response_id: str = "chatcmpl-hostile") -> bytes:
    chunk = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {"content": text}, "finish_reason": None}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _finish_chunk(response_id: str = "chatcmpl-hostile") -> bytes:
    chunk = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _usage_chunk(usage: bytes, response_id: str = "chatcmpl-hostile") -> bytes:
    return (
        b'data: {"id":"' + response_id.encode() + b'","object":"chat.completion.chunk",'
        b'"created":1,"model":"gpt-4o-mini","choices":[],"usage":' + usage + b"}\n\n"
    )


HOSTILE_USAGE = {"prompt_tokens": 11, "completion_tokens": 5, "total_tokens": 16}
USAGE_CHUNK = _usage_chunk(json.dumps(HOSTILE_USAGE).encode())
DONE = b"data: [DONE]\n\n"
#: A normal Chat stream: text, finish, the usage-only chunk, [DONE].
NORMAL = _text_chunk("Hello") + _finish_chunk() + USAGE_CHUNK + DONE


def _long_line_stream() -> bytes:
    """An event whose one data line is past every event limit, then a normal stream."""
    return b"data: " + b"x" * LONG_LINE + b"\n\n" + NORMAL


#: Numbers no column or counter can hold: 2**63 (one past int64) and 1e308.
HOSTILE_NUMBERS = (
    b'{"prompt_tokens":9223372036854775808,"completion_tokens":1e308,"total_tokens":-1}'
)
HOSTILE_NUMBERS_STREAM = _text_chunk("Hi") + _finish_chunk() + _usage_chunk(HOSTILE_NUMBERS) + DONE
TWO_IDS = (
    _text_chunk("one", "chatcmpl-first")
    + _finish_chunk("chatcmpl-first")
    + _usage_chunk(b'{"prompt_tokens":5,"completion_tokens":7,"total_tokens":12}', "chatcmpl-first")
    + _text_chunk("two", "chatcmpl-second")
    + _finish_chunk("chatcmpl-second")
    + _usage_chunk(b'{"prompt_tokens":3,"completion_tokens":4,"total_tokens":7}', "chatcmpl-second")
    + DONE
)


def _compress(encoding: str, blocks: Iterator[bytes]) -> bytes:
    import zlib

    if encoding in ("gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        z = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return b"".join(z.compress(b) for b in blocks) + z.flush()
    if encoding == "br":
        brotli = pytest.importorskip("brotli")
        c = brotli.Compressor(quality=5, lgwin=22)
        return bytes(b"".join(c.process(b) for b in blocks) + c.finish())
    zstandard = pytest.importorskip("zstandard")
    z = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join(z.compress(b) for b in blocks) + z.flush()


_BOMBS: dict[str, bytes] = {}


def bomb(encoding: str) -> bytes:
    """A valid event, then a comment line of 300 MiB of spaces, compressed (made once)."""
    if encoding not in _BOMBS:
        spaces = b" " * MiB
        blocks = iter(
            [_text_chunk("Hello"), b":", *([spaces] * (BOMB_SIZE // MiB)), b"\n\n", NORMAL]
        )
        _BOMBS[encoding] = _compress(encoding, blocks)
    return _BOMBS[encoding]


@dataclass(frozen=True)
class Answer:
    """What the scripted upstream writes: status, headers, then ``body`` (or, ``endless``, a
    stream that goes on until the client hangs up: ``body`` then ``endless`` every 50 ms)."""

    body: Callable[[], bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    encoding: str | None = None
    endless: bytes | None = None


class HostileUpstream(ThreadedServer):
    """A threaded HTTP/1.0 server on 127.0.0.1 writing ``answer`` for every request. Keeps the
    bytes it wrote (``written``, per request) and the request bodies it got (``bodies``)."""

    def __init__(self, answer: Answer) -> None:
        self.written: list[bytearray] = []
        self.bodies: list[bytes] = []
        self.completed: list[bool] = []
        owner = self

        class H(QuietHandler):
            def do_POST(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                owner.bodies.append(self.rfile.read(length) if length else b"")
                sent = bytearray()
                owner.written.append(sent)
                owner.completed.append(False)
                self.send_response(answer.status)
                self.send_header("Content-Type", answer.content_type)
                if answer.encoding:
                    self.send_header("Content-Encoding", answer.encoding)
                self.end_headers()
                try:
                    data = answer.body()
                    for i in range(0, len(data), 1 << 16):
                        # Counted before the write: a client that reads a piece and hangs up
                        # at once must never see more than ``written`` (no race with the test).
                        sent += data[i : i + (1 << 16)]
                        self.wfile.write(data[i : i + (1 << 16)])
                    while answer.endless is not None and not owner.stop.wait(0.05):
                        sent += answer.endless
                        self.wfile.write(answer.endless)
                        self.wfile.flush()
                    owner.completed[-1] = answer.endless is None
                except (BrokenPipeError, ConnectionResetError):
                    pass

        super().__init__(H)


#: A case's own checks of one cell.
Check = Callable[["HostileCell"], None]


@dataclass
class HostileCell:
    """One cell's results: what the caller got and, for the proxy, its record."""

    layer: str
    case: HostileCase
    out: Outcome
    record: dict[str, Any] | None = None
    #: The request body the upstream received.
    upstream_body: bytes = b""

    @property
    def warnings(self) -> str:
        """Every warning of the report or record, as one text."""
        if self.record is not None:
            return " | ".join(self.record["warnings"])
        assert self.out.report is not None, repr(self.out.error)
        return " | ".join(self.out.report.warnings)

    @property
    def status(self) -> str:
        if self.record is not None:
            return str(self.record["status"])
        assert self.out.report is not None, repr(self.out.error)
        return self.out.report.status


@dataclass(frozen=True)
class HostileCase:
    id: str
    answer: Answer
    #: Checks of the report (sync, async) or the record (proxy).
    check: Check
    #: The request body; the default is a Chat stream that did not ask for usage.
    body: Callable[[], dict[str, Any]] = lambda: {"model": MODEL, "stream": True, "messages": []}
    #: connect_usage's ``include_usage`` and the proxy's ``inject_usage``.
    inject: bool = False
    #: What the direct request raises (None: a stream opens; raised while reading: ``reading``).
    raises: Raised | None = None
    reading: Raised | None = None
    #: connect_usage ``idle_timeout`` / ``deadline`` and the proxy's.
    idle: float | None = None
    deadline: float | None = None
    seconds: float = 20.0
    #: The cell may not end before this (a cut by time comes at its timeout, not early).
    at_least: float = 0.0
    #: The bytes that reach the proxy's client, from what the upstream wrote (default: all).
    relayed: Callable[[bytes], bytes] = lambda b: b
    #: A known gap: the cell is expected to fail its ``check`` (strict), for this reason.
    xfail: str | None = None
    #: The layers the known gap is in.
    xfail_layers: tuple[str, ...] = LAYERS
    #: ``check`` also looks at what the direct request raised.
    check_raised: bool = False


def _stripped(data: bytes) -> bytes:
    """What a client that did not ask for usage receives when the proxy injected it."""
    return data.replace(USAGE_CHUNK, b"")


def _usage_read(cell: HostileCell) -> None:
    """The stream's own usage was read, whatever came before it."""
    if cell.record is not None:
        assert cell.record["usage_source"] == "stream", cell.record["attempts"]
        assert tokens_of(cell.record["usage"]) == (11, 5)
    else:
        report = cell.out.report
        assert report is not None and report.usage is not None, repr(cell.out.error)
        assert report.usage.source == "stream", report.attempts
        assert (report.usage.input_tokens, report.usage.output_tokens) == (11, 5)


def check_long_line(cell: HostileCell) -> None:
    assert cell.status == "completed"
    _usage_read(cell)
    if cell.record is None:
        report = cell.out.report
        assert report is not None and report.oversized_events == 1, report
        # The oversized event is skipped, the events around it are the caller's.
        assert all(len(e.data) < 1000 for e in cell.out.events) and cell.out.events
    else:
        assert "larger than max_event_size" in cell.warnings, cell.warnings


def check_bomb(cell: HostileCell) -> None:
    assert "decompression limit" in cell.warnings, cell.warnings
    if cell.record is not None:
        assert cell.record["usage_source"] != "stream"


def check_undecodable(cell: HostileCell) -> None:
    text = cell.warnings
    assert "does not decode" in text or "ended early" in text, text
    if cell.record is not None:
        assert cell.record["usage_source"] != "stream"


def check_truncated(cell: HostileCell) -> None:
    assert cell.status == "truncated"
    if cell.record is None:
        # Read to the cut: the events before it are the caller's, the cut is said.
        assert "ended early" in cell.warnings, cell.warnings
        assert cell.out.events
    else:
        assert cell.record["usage_source"] != "stream"


def check_numbers_flagged(cell: HostileCell) -> None:
    """A count that is not one (1e308, -1) is said in the warnings, not silently dropped."""
    text = cell.warnings
    assert "completion_tokens" in text and "total_tokens" in text, text


def check_hostile_numbers(cell: HostileCell) -> None:
    assert cell.status == "completed"
    if cell.record is not None:
        # 2**63 does not fit a signed 64-bit column: stored as None, and said.
        assert any("input_tokens" in path for path in cell.record["sanitized"]), cell.record
        usage = cell.record["usage"] or {}
        for name in ("input_tokens", "output_tokens", "total_tokens"):
            value = usage.get(name)
            assert value is None or (isinstance(value, int) and 0 <= value < 2**63), usage
    else:
        report = cell.out.report
        assert report is not None
        usage = report.usage
        # What the provider said where it is a count (2**63 fits u64), never 1e308 or -1.
        assert usage is not None and usage.source == "stream", report.attempts
        assert (usage.input_tokens, usage.output_tokens, usage.total_tokens) == (2**63, None, None)


def check_hostile_request(cell: HostileCell) -> None:
    assert cell.status == "completed"
    _usage_read(cell)
    if cell.record is not None:
        if cell.case.inject:  # injected, or the fault of not injecting is counted
            injected = b"include_usage" in cell.upstream_body
            assert injected or "inject" in cell.record["metering_faults"], cell.record
        text = json.dumps(cell.record, ensure_ascii=False)
        text.encode("utf-8")  # no lone surrogate left
        assert len(text) < 64 * 1024, len(text)  # the 4 MiB name is capped
        assert cell.record["sanitized"], cell.record
    elif cell.case.inject:
        # The body has no UTF-8 form: it went out as the caller wrote it, and the report says
        # why usage was not asked for.
        assert cell.upstream_body == _encoded(cell.case)
        assert "include_usage was not added" in cell.warnings, cell.warnings


def check_two_ids(cell: HostileCell) -> None:
    text = cell.warnings
    assert "chatcmpl-first" in text and "chatcmpl-second" in text, text
    if cell.record is not None:
        ids = [r["response_id"] for r in cell.record["responses"]]
        assert ids == ["chatcmpl-first", "chatcmpl-second"], cell.record["responses"]


def check_cut_by_time(words: str) -> Check:
    def check(cell: HostileCell) -> None:
        assert cell.status not in ("completed",), cell.status
        if cell.record is not None:
            assert words in cell.record["ended_by"], cell.record["ended_by"]
        else:
            assert isinstance(cell.out.error, StreamTimeoutError), repr(cell.out.error)
            assert words in str(cell.out.error)

    return check


def check_html_sse(cell: HostileCell) -> None:
    if cell.record is not None:
        assert "not metered" in cell.warnings and "text/html" in cell.warnings, cell.warnings
        assert cell.record["usage"] is None
    else:
        assert isinstance(cell.out.error, SSEError), repr(cell.out.error)


def check_sse_error_status(status: int) -> Check:
    def check(cell: HostileCell) -> None:
        if cell.record is not None:
            assert cell.record["http_status"] == cell.record["upstream_status"] == status
            assert cell.record["usage_source"] != "estimate", cell.record
            assert cell.record["status"] != "completed", cell.record["status"]
        else:
            assert isinstance(cell.out.error, APIStatusError), repr(cell.out.error)
            assert cell.out.error.status_code == status

    return check


ENCODINGS = ("gzip", "deflate", "br", "zstd")
#: Decoded size of the error-page bomb: small enough for the suite, large enough to tell.
ERROR_BOMB = 64 * MiB


def _error_bomb(encoding: str) -> bytes:
    head = b'{"error":{"message":"stream_options ' + b"x" * 100
    return _compress(encoding, iter([head, *([b" " * MiB] * (ERROR_BOMB // MiB)), b'"}}']))


def check_error_bomb(status: int) -> Check:
    """An error answer whose compressed body is a bomb: relayed as it is by the proxy, and
    never decoded past 64 KiB into ``APIStatusError.body``, which says it was cut (a 400 that
    names ``stream_options`` but is cut is not taken for a rejected injection)."""

    def check(cell: HostileCell) -> None:
        if cell.record is not None:
            assert cell.record["http_status"] == status
            assert cell.record["usage_source"] != "estimate"
            return
        error = cell.out.error
        assert isinstance(error, APIStatusError), repr(error)
        assert error.status_code == status
        assert isinstance(error.body, str) and error.body.startswith('{"error"'), error.body[:80]
        assert len(error.body) <= 64 * 1024, len(error.body)
        assert error.truncated is not None and "truncated" in str(error), str(error)[-200:]

    return check


def _decompress(encoding: str, data: bytes) -> bytes:
    import zlib

    if encoding in ("gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        return zlib.decompress(data, wbits)
    if encoding == "br":
        return bytes(pytest.importorskip("brotli").decompress(data))
    return bytes(
        pytest.importorskip("zstandard").ZstdDecompressor().decompressobj().decompress(data)
    )


def _decoded_stripped(encoding: str) -> Callable[[bytes], bytes]:
    """What the proxy's client gets from an upstream that compressed although the proxy asked
    for identity: the decoded stream, less the usage chunk the client did not ask for."""
    return lambda written: _stripped(_decompress(encoding, written))


def check_compressed_anyway(cell: HostileCell) -> None:
    """Usage injected, and the upstream compressed its answer anyway: the usage is read, the
    usage chunk never reaches the client, and the record says how the answer was changed."""
    assert cell.status == "completed"
    _usage_read(cell)
    if cell.record is not None:
        assert "decoded for the client" in cell.warnings, cell.warnings
        assert cell.record["stripped_usage_chunks"] == 1, cell.record


def _truncated_gzip() -> bytes:
    """A gzip stream cut in its middle: text deltas, never their end."""
    stream = _text_chunk("word ") * 2000 + _finish_chunk() + USAGE_CHUNK + DONE
    whole = _compress("gzip", iter([stream]))
    return whole[: len(whole) // 2]


HOSTILE_CASES: list[HostileCase] = [
    HostileCase("line-over-max-event-size", Answer(_long_line_stream), check_long_line),
    HostileCase(
        "line-over-max-event-size-injected",
        Answer(_long_line_stream),
        check_long_line,
        inject=True,
        relayed=_stripped,
    ),
    *[
        HostileCase(
            f"bomb-{encoding}",
            Answer(lambda e=encoding: bomb(e), encoding=encoding),  # type: ignore[misc]
            check_bomb,
            reading=SSEError,
            seconds=40.0,
        )
        for encoding in ENCODINGS
    ],
    *[
        HostileCase(
            f"bomb-{encoding}-injected",
            Answer(lambda e=encoding: bomb(e), encoding=encoding),  # type: ignore[misc]
            check_bomb,
            inject=True,
            reading=SSEError,
            seconds=40.0,
            # Decoded for the client (the upstream ignored identity): the first write is past
            # the decoder's limit, so nothing reaches the client, never raw compressed bytes.
            relayed=lambda written: b"",
        )
        for encoding in ("gzip", "zstd")
    ],
    HostileCase(
        "truncated-gzip",
        Answer(_truncated_gzip, encoding="gzip"),
        check_truncated,
    ),
    HostileCase(
        "undecodable-br",
        Answer(lambda: b"\xff\xfe this is not brotli " * 64, encoding="br"),
        check_undecodable,
        reading=SSEError,
    ),
    HostileCase(
        "hostile-numbers-in-usage", Answer(lambda: HOSTILE_NUMBERS_STREAM), check_hostile_numbers
    ),
    HostileCase(
        "hostile-numbers-flagged",
        Answer(lambda: HOSTILE_NUMBERS_STREAM),
        check_numbers_flagged,
    ),
    HostileCase(
        "hostile-strings-in-request",
        Answer(lambda: NORMAL),
        check_hostile_request,
        body=lambda: {
            "model": "\ud800" + "m" * (4 * MiB),
            "user": "\udfff\x00",
            "stream": True,
            "messages": [{"role": "user", "content": "\ud83d"}],
        },
    ),
    HostileCase(
        "hostile-strings-in-request-injected",
        Answer(lambda: NORMAL),
        check_hostile_request,
        body=lambda: {
            "model": "\ud800" + "m" * (4 * MiB),
            "user": "\udfff\x00",
            "stream": True,
            "messages": [{"role": "user", "content": "\ud83d"}],
        },
        inject=True,
        relayed=_stripped,
        # No layer can re-encode a lone surrogate as UTF-8: the request goes out as it came
        # (no injection), the proxy counts a metering fault, connect_usage warns.
        check_raised=True,
    ),
    *[
        HostileCase(
            f"compressed-despite-identity-{encoding}",
            Answer(
                lambda e=encoding: _compress(e, iter([NORMAL])),  # type: ignore[misc]
                encoding=encoding,
            ),
            check_compressed_anyway,
            inject=True,
            relayed=_decoded_stripped(encoding),
        )
        for encoding in ENCODINGS
    ],
    HostileCase("two-response-ids", Answer(lambda: TWO_IDS), check_two_ids),
    HostileCase(
        "endless-comments",
        Answer(lambda: _text_chunk("Hello"), endless=b": keep-alive\n\n"),
        check_cut_by_time(f"{IDLE:g}s"),
        idle=IDLE,
        reading=StreamTimeoutError,
        seconds=10.0,
        at_least=IDLE * 0.9,
    ),
    HostileCase(
        "past-the-deadline",
        Answer(lambda: _text_chunk("Hello"), endless=_text_chunk("more ")),
        check_cut_by_time(f"deadline of {DEADLINE:g}s"),
        deadline=DEADLINE,
        reading=StreamTimeoutError,
        seconds=10.0,
        at_least=DEADLINE * 0.9,
    ),
    HostileCase(
        "sse-body-as-text-html",
        Answer(lambda: NORMAL, content_type="text/html"),
        check_html_sse,
        raises=SSEError,
    ),
    *[
        HostileCase(
            f"sse-error-status-{status}",
            Answer(lambda: _text_chunk("lots of words to count " * 20) + DONE, status=status),
            check_sse_error_status(status),
            raises=APIStatusError,
        )
        for status in (400, 429, 500, 503)
    ],
    *[
        HostileCase(
            f"error-status-{encoding}-bomb",
            Answer(
                lambda e=encoding: _error_bomb(e),  # type: ignore[misc]
                status=status,
                content_type="application/json",
                encoding=encoding,
            ),
            check_error_bomb(status),
            raises=APIStatusError,
            check_raised=True,
        )
        for encoding, status in zip(ENCODINGS, (500, 400, 429, 503))
    ],
]

HOSTILE_PARAMS = [
    pytest.param(
        case,
        layer,
        id=f"{case.id}-{layer}",
        marks=[pytest.mark.xfail(strict=True, reason=case.xfail)]
        if case.xfail and layer in case.xfail_layers
        else [],
    )
    for case in HOSTILE_CASES
    for layer in LAYERS
]


JSON_AUTH = {**AUTH, "Content-Type": "application/json"}


def _encoded(case: HostileCase) -> bytes:
    """The request body as JSON with every non-ASCII character escaped: a lone surrogate is a
    valid ``\\ud800`` escape on the wire, as a hostile client would send it."""
    return json.dumps(case.body()).encode("ascii")


def _direct(case: HostileCase, url: str, layer: str) -> Outcome:
    options = {
        "include_usage": case.inject,
        "idle_timeout": case.idle,
        "deadline": case.deadline,
        "retrieve": False,
    }
    out = Outcome()
    start = time.monotonic()
    if layer == "sync":
        transport = Recording()
        with httpx.Client(transport=transport, timeout=10.0, trust_env=False) as client:
            try:
                with connect_usage(
                    client, "POST", url, content=_encoded(case), headers=JSON_AUTH, **options
                ) as stream:
                    out.opened = True
                    try:
                        out.events.extend(stream)
                    except Exception as exc:  # noqa: BLE001 - checked by the caller
                        out.error = exc
                out.report = stream.report
            except Exception as exc:  # noqa: BLE001 - the request itself failed
                out.error = exc
        bodies = transport.bodies
    else:
        atransport = AsyncRecording()

        async def go() -> None:
            async with httpx.AsyncClient(transport=atransport, timeout=10.0, trust_env=False) as c:
                try:
                    async with aconnect_usage(
                        c, "POST", url, content=_encoded(case), headers=JSON_AUTH, **options
                    ) as stream:
                        out.opened = True
                        try:
                            async for event in stream:
                                out.events.append(event)
                        except Exception as exc:  # noqa: BLE001 - checked by the caller
                            out.error = exc
                    out.report = stream.report
                except Exception as exc:  # noqa: BLE001 - the request itself failed
                    out.error = exc

        asyncio.run(asyncio.wait_for(go(), HOSTILE_GUARD - 1))
        bodies = atransport.bodies
    out.seconds = time.monotonic() - start
    out.received = bytes(bodies[0]) if bodies else b""
    return out


def _through_proxy(case: HostileCase, proxy: ProxyServer, sink: Path) -> Outcome:
    """The raw body through the proxy, then (after the proxy flushed) the wait for its record."""
    out = Outcome()
    start = time.monotonic()
    received = bytearray()
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        try:
            with client.stream(
                "POST",
                proxy.url + "/v1/chat/completions",
                content=_encoded(case),
                headers=JSON_AUTH,
            ) as response:
                out.opened = True
                try:
                    for piece in response.iter_raw():
                        received += piece
                except httpx.HTTPError as exc:
                    out.error = exc
        except httpx.HTTPError as exc:
            out.error = exc
    out.received = bytes(received)
    while not jsonl(sink) and time.monotonic() - start < HOSTILE_GUARD - 2:
        time.sleep(0.01)
    out.seconds = time.monotonic() - start
    return out


@pytest.mark.parametrize(("case", "layer"), HOSTILE_PARAMS)
def test_hostile_matrix(case: HostileCase, layer: str, tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    with HostileUpstream(case.answer) as upstream:
        record = None
        if layer == "proxy":
            config = ProxyConfig(
                upstream=upstream.origin,
                otel=False,
                read_timeout=5.0,
                connect_timeout=2.0,
                shutdown_timeout=5.0,
                inject_usage=case.inject,
                idle_timeout=case.idle,
                stream_deadline=case.deadline,
            )
            with ProxyServer(config, f"jsonl:{sink}") as proxy:
                out = guarded(lambda: _through_proxy(case, proxy, sink), HOSTILE_GUARD)
                assert proxy.flush(10.0)
                upstream.stop.set()
                records = jsonl(sink)
            assert len(records) == 1, records
            record = records[0]
            assert record["key_fingerprint"] and KEY not in json.dumps(record)
            assert record["http_status"] == case.answer.status
        else:
            url = upstream.origin + "/v1/chat/completions"
            out = guarded(lambda: _direct(case, url, layer), HOSTILE_GUARD)
            upstream.stop.set()
        cell = HostileCell(layer, case, out, record, (upstream.bodies or [b""])[0])
        written = bytes(upstream.written[0]) if upstream.written else b""
        if layer == "proxy":
            # Every byte the upstream wrote reached the client unchanged (less the usage chunk,
            # when the proxy asked for it); an endless stream is cut, so what came is a prefix.
            injected = bool(upstream.bodies) and b"include_usage" in upstream.bodies[0]
            expected = case.relayed(written) if injected else written
            if case.answer.endless is None:
                assert out.received == expected, (len(out.received), len(expected))
                assert record is not None and record["bytes"]["client"] == len(expected)
            else:
                assert out.received and expected.startswith(out.received)
        elif case.raises is not None:
            assert not out.opened and isinstance(out.error, case.raises), repr(out.error)
        else:
            assert out.opened and out.report is not None, repr(out.error)
            if case.reading is None:
                assert out.error is None, repr(out.error)
                assert upstream.completed == [True]
                assert out.received == written  # the transport saw the upstream's bytes
            else:
                assert isinstance(out.error, case.reading), repr(out.error)
                assert written.startswith(out.received)
            if case.inject and b"include_usage" in cell.upstream_body:
                # The usage chunk the caller did not ask for is not shown.
                assert not [e for e in out.events if '"choices":[]' in e.data]
        if case.raises is None or layer == "proxy" or case.check_raised:
            case.check(cell)
    assert case.at_least <= out.seconds <= case.seconds, out.seconds


# --------------------------------------------------------------------------- upstream failures


def test_upstream_failures_are_classified_by_type() -> None:
    """The lean upstream client raises typed errors; ``failure_name`` (a record's
    ``ended_by``, the span's ``error.type``) reads the type, never the message."""
    import socket

    from ssetally._gateway import _upstream
    from ssetally._gateway._pools import UpstreamPool

    pytest.importorskip("httptools")
    # A port nobody listens on: bound, never listening.
    with socket.socket() as placeholder:
        placeholder.bind(("127.0.0.1", 0))
        port = placeholder.getsockname()[1]

        async def go() -> BaseException:
            pool = UpstreamPool(
                httpx.URL(f"http://127.0.0.1:{port}"),
                max_connections=1,
                max_idle=1,
                connect_timeout=2.0,
                read_timeout=2.0,
                max_header_bytes=65536,
            )
            try:
                await pool.request("GET", b"/", [(b"host", b"x")], b"")
            except BaseException as exc:  # noqa: BLE001 - inspected below
                return exc
            raise AssertionError("a refused connection was answered")

        refused = asyncio.run(go())
    assert isinstance(refused, _upstream.UpstreamConnectError), repr(refused)
    assert _upstream.failure_name(refused).startswith("ConnectError: ")
    cases = [
        (_upstream.UpstreamConnectTimeout("no connection within 1s"), "ConnectTimeout"),
        (_upstream.UpstreamPoolTimeout("no free upstream connection"), "PoolTimeout"),
        (_upstream.UpstreamReadTimeout("no byte for 5s"), "ReadTimeout"),
        (_upstream.UpstreamReadError("ConnectionResetError: reset"), "ReadError"),
        # A message that looks like a kind is not taken for one.
        (_upstream.UpstreamError("ReadTimeout: not really"), "UpstreamError"),
        (httpx.ConnectError("refused"), "ConnectError"),
        (OSError("unreachable"), "OSError"),
    ]
    for exc, kind in cases:
        name = _upstream.failure_name(exc)
        assert name == f"{kind}: {exc}", name
    assert all(
        issubclass(c, _upstream.UpstreamTimeout)
        for c in (
            _upstream.UpstreamConnectTimeout,
            _upstream.UpstreamPoolTimeout,
            _upstream.UpstreamReadTimeout,
        )
    )
    assert issubclass(_upstream.UpstreamConnectError, _upstream.UpstreamError)
