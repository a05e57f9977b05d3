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
from collections.abc import AsyncIterator, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Union

import httpx
import pytest
from ssetally import (
    APIStatusError,
    RetrievalPolicy,
    SSEError,
    StreamReport,
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

Raised = Union[type[BaseException], tuple[type[BaseException], ...]]

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
