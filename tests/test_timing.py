"""Timing that benchmark scripts can trust: ``Timings.timeline``, TTFT/TTFB/TPOT and per-token
ITL percentiles, through ``StreamMeter`` (with a given clock), ``connect_usage``, ``meter``
over a real byte iterator, ``ameter`` over aiohttp and the ASGI middleware, against a local
server that follows a scripted schedule (first content at 200 ms, then k tokens per event every
50 ms).

Figures computed from arrival times this test controls or records itself are checked within
2 ms; end-to-end wall-clock figures (the machine is loaded) within looser bounds that still
tell the schedule from chunk counting.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import math
import re
import statistics
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests
import ssetally
from hypothesis import given
from hypothesis import strategies as st
from loopback_http import QuietHandler, ThreadedServer
from ssetally._metering import StreamMeter
from ssetally._metering._timeline import apportion
from ssetally._replay import ReplayServer
from tiktoken_cache import subprocess_env
from uvicorn_thread import UvicornThread

TIMEOUT = 10.0
FIRST = 0.2  # seconds from the request to the first content event
GAP = 0.05  # seconds between content events
EVENTS = 6
EXACT = 0.002  # figures from arrival times we recorded ourselves
MAX_EVENTS = 100_000  # the timeline's cap
README = Path(__file__).resolve().parent.parent / "README.md"


# ----------------------------------------------------------------------------- the wire formats


def _chat(delta: dict[str, Any], usage: int | None = None, finish: str | None = None) -> bytes:
    chunk: dict[str, Any] = {
        "id": "chatcmpl-1",
        "object": "chat.completion.chunk",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    if usage is not None:
        chunk["usage"] = {"prompt_tokens": 7, "completion_tokens": usage, "total_tokens": 7 + usage}
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _text(k: int) -> str:
    """k tokens of text for every tokenizer we use ("ab" is one token, so is " ab")."""
    return " ab" * k


def chat_stream(k: int, usage: str) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Chat Completions: (before the first content, one per content event, after).
    ``usage``: ``running`` (vLLM ``continuous_usage_stats``), ``final`` (``include_usage``)."""
    running = usage == "running"
    head = [_chat({"role": "assistant", "content": ""}, 0 if running else None)]
    body = [_chat({"content": _text(k)}, k * (i + 1) if running else None) for i in range(EVENTS)]
    total = k * EVENTS
    tail = [_chat({}, total if running else None, finish="stop")]
    final = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
             "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": total,
                                      "total_tokens": 7 + total}}  # fmt: skip
    tail += [b"data: " + json.dumps(final).encode() + b"\n\n", b"data: [DONE]\n\n"]
    return head, body, tail


def _sse(name: str, data: dict[str, Any]) -> bytes:
    return f"event: {name}\ndata: {json.dumps(data)}\n\n".encode()


def anthropic_stream(k: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Anthropic Messages: usage only in ``message_start`` (1) and ``message_delta``."""
    start = {"type": "message_start", "message": {"id": "msg_1", "type": "message",
             "role": "assistant", "model": "claude-sonnet-4-5", "content": [],
             "usage": {"input_tokens": 7, "output_tokens": 1}}}  # fmt: skip
    head = [
        _sse("message_start", start),
        _sse("ping", {"type": "ping"}),
        _sse("content_block_start", {"type": "content_block_start", "index": 0,
                                     "content_block": {"type": "text", "text": ""}}),
    ]  # fmt: skip
    body = [
        _sse("content_block_delta", {"type": "content_block_delta", "index": 0,
                                     "delta": {"type": "text_delta", "text": _text(k)}})
        for _ in range(EVENTS)
    ]  # fmt: skip
    tail = [
        _sse("content_block_stop", {"type": "content_block_stop", "index": 0}),
        _sse("message_delta", {"type": "message_delta", "delta": {"stop_reason": "end_turn"},
                               "usage": {"output_tokens": k * EVENTS}}),
        _sse("message_stop", {"type": "message_stop"}),
    ]  # fmt: skip
    return head, body, tail


def gemini_stream(k: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """Gemini ``streamGenerateContent?alt=sse``: running ``usageMetadata`` on every chunk."""

    def chunk(text: str, count: int, finish: str | None = None) -> bytes:
        candidate: dict[str, Any] = {"content": {"role": "model", "parts": [{"text": text}]},
                                     "index": 0}  # fmt: skip
        if finish:
            candidate["finishReason"] = finish
        data = {"candidates": [candidate], "modelVersion": "gemini-2.5-flash",
                "responseId": "resp-1",
                "usageMetadata": {"promptTokenCount": 7, "candidatesTokenCount": count,
                                  "totalTokenCount": 7 + count}}  # fmt: skip
        return b"data: " + json.dumps(data).encode() + b"\r\n\r\n"

    body = [chunk(_text(k), k * (i + 1)) for i in range(EVENTS - 1)]
    body.append(chunk(_text(k), k * EVENTS, finish="STOP"))
    return [], body, []


def responses_stream(k: int) -> tuple[list[bytes], list[bytes], list[bytes]]:
    """OpenAI Responses: created, in_progress, an empty output item and content part first."""
    response = {"id": "resp_1", "object": "response", "status": "in_progress",
                "model": "gpt-4o-mini", "output": [], "usage": None}  # fmt: skip
    head = [
        _sse("response.created", {"type": "response.created", "response": response}),
        _sse("response.in_progress", {"type": "response.in_progress", "response": response}),
        _sse("response.output_item.added", {"type": "response.output_item.added",
             "output_index": 0, "item": {"id": "msg_1", "type": "message", "content": []}}),
        _sse("response.content_part.added", {"type": "response.content_part.added",
             "item_id": "msg_1", "output_index": 0, "content_index": 0,
             "part": {"type": "output_text", "text": ""}}),
    ]  # fmt: skip
    body = [
        _sse("response.output_text.delta", {"type": "response.output_text.delta",
             "item_id": "msg_1", "output_index": 0, "content_index": 0, "delta": _text(k)})
        for _ in range(EVENTS)
    ]  # fmt: skip
    done = {**response, "status": "completed",
            "usage": {"input_tokens": 7, "output_tokens": k * EVENTS,
                      "total_tokens": 7 + k * EVENTS}}  # fmt: skip
    tail = [_sse("response.completed", {"type": "response.completed", "response": done})]
    return head, body, tail


STREAMS = {
    "chat-running": lambda k: chat_stream(k, "running"),
    "chat-final": lambda k: chat_stream(k, "final"),
    "anthropic": anthropic_stream,
    "gemini": gemini_stream,
    "responses": responses_stream,
}


# ------------------------------------------------------------------------ the scripted server


class _Handler(QuietHandler):
    protocol_version = "HTTP/1.1"

    def do_POST(self) -> None:
        arrived = time.monotonic()
        length = int(self.headers.get("content-length") or 0)
        script = json.loads(self.rfile.read(length) or b"{}").get("script", {})
        head, body, tail = STREAMS[script.get("stream", "chat-running")](int(script.get("k", 1)))
        self.send_response(200)
        self.send_header("content-type", "text/event-stream")
        self.send_header("transfer-encoding", "chunked")
        self.send_header("connection", "close")
        self.end_headers()
        self.chunk(b"".join(head))
        for i, event in enumerate(body):
            wait = arrived + FIRST + i * GAP - time.monotonic()
            if wait > 0:
                time.sleep(wait)
            self.chunk(event)
        self.chunk(b"".join(tail))
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()
        self.close_connection = True

    def chunk(self, data: bytes) -> None:
        """One HTTP chunk, written at once (every client reads it as one read or more)."""
        if data:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()


class ScriptedServer(ThreadedServer):
    """Serves the scripted streams on 127.0.0.1, the schedule counted from each request's
    arrival; the request body's ``script`` says which stream and how many tokens per event."""

    def __init__(self) -> None:
        super().__init__(_Handler)


@pytest.fixture(scope="module")
def server() -> Iterator[ScriptedServer]:
    with ScriptedServer() as s:
        yield s


PATHS = {
    "anthropic": "/v1/messages",
    "gemini": "/v1beta/models/gemini-2.5-flash:streamGenerateContent?alt=sse",
    "responses": "/v1/responses",
}


def request_of(stream: str, k: int) -> tuple[str, dict[str, Any]]:
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}],
            "script": {"stream": stream, "k": k}}  # fmt: skip
    return PATHS.get(stream, "/v1/chat/completions"), body


def content_events(data: bytes) -> int:
    """Output-bearing events in a read of the scripted streams (their content is " ab"...)."""
    return data.count(b'" ab')


# ---------------------------------------------------------------- the figures, from the schedule


def expected_source(stream: str) -> str:
    return "usage" if stream in ("chat-running", "gemini") else "apportioned"


def check_exact(timings: ssetally.Timings, stream: str, k: int, arrivals: list[float]) -> None:
    """Every figure against the arrival times of the content events (``arrivals``, seconds
    since the request was sent, one per event)."""
    n = len(arrivals)
    assert n == EVENTS
    assert timings.timeline_source == expected_source(stream)
    assert [tokens for _, tokens in timings.timeline] == [k] * EVENTS
    assert timings.output_tokens == k * EVENTS
    for (at, _), arrived in zip(timings.timeline, arrivals):
        assert abs(at - arrived) <= EXACT, (timings.timeline, arrivals)
    assert timings.ttft is not None and abs(timings.ttft - arrivals[0]) <= EXACT
    assert timings.tpot is not None
    expected_tpot = (arrivals[-1] - arrivals[0]) / (k * EVENTS - 1)
    assert abs(timings.tpot - expected_tpot) <= EXACT / (k * EVENTS - 1)
    gaps = sorted((b - a) / k for a, b in itertools.pairwise(arrivals))
    # k equal per-token gaps per event: the median is the median gap's share.
    assert timings.itl_p50 is not None
    assert abs(timings.itl_p50 - statistics.median(gaps)) <= EXACT / k
    assert timings.itl_p99 is not None and timings.itl_p99 <= max(gaps) + EXACT / k


def check_schedule(timings: ssetally.Timings, k: int, stream: str) -> None:
    """End to end, against the wall clock of a loaded machine: the schedule, not the chunks."""
    assert timings.ttfb is not None and timings.ttft is not None
    if stream != "gemini":  # the role chunk or message_start came at once
        assert timings.ttfb < FIRST - 0.02
    assert FIRST - EXACT <= timings.ttft < FIRST + 1.0
    assert timings.itl_p50 is not None and timings.tpot is not None
    assert GAP / k * 0.9 <= timings.itl_p50 < GAP / k + 0.5 / k
    assert GAP * (EVENTS - 1) / (k * EVENTS - 1) * 0.9 <= timings.tpot


# --------------------------------------------------------------- StreamMeter with a given clock


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def metered(
    stream: str, k: int, *, timeline: bool = True, usage_total: bool = True
) -> ssetally.StreamReport:
    """Feeds a scripted stream to a ``StreamMeter`` at exactly the scheduled times."""
    clock = Clock()
    meter = StreamMeter(timeline=timeline, clock=clock, request_sent=clock.now)
    head, body, tail = STREAMS[stream](k)
    start = clock.now
    clock.now = start + 0.01
    for event in head:
        meter.feed(event)
    for i, event in enumerate(body):
        clock.now = start + FIRST + i * GAP
        meter.feed(event)
    clock.now += 0.01
    for event in tail if usage_total else tail[-1:]:
        meter.feed(event)
    meter.end("eof")
    report = meter.report()
    return meter.complete(report, meter.plan(report, retrieve=False, estimate=False))


@pytest.mark.parametrize("stream", sorted(STREAMS))
@pytest.mark.parametrize("k", [1, 3])
def test_the_schedule_with_a_given_clock(stream: str, k: int) -> None:
    report = metered(stream, k)
    assert report.timings is not None
    arrivals = [FIRST + i * GAP for i in range(EVENTS)]
    check_exact(report.timings, stream, k, arrivals)
    assert report.timings.ttfb == pytest.approx(0.01 if stream != "gemini" else FIRST)
    assert report.timings.itl_p50 == pytest.approx(GAP / k)
    assert report.timings.itl_p90 == pytest.approx(GAP / k)
    assert report.timings.tpot == pytest.approx(GAP * (EVENTS - 1) / (k * EVENTS - 1))
    assert len(report.timings.itls()) == k * (EVENTS - 1)


def test_several_events_in_one_read_share_its_time() -> None:
    clock = Clock()
    meter = StreamMeter(timeline=True, clock=clock, request_sent=clock.now)
    head, body, tail = chat_stream(2, "running")
    clock.now += 0.2
    meter.feed(b"".join(head + body[:3]))
    clock.now += 0.1
    meter.feed(b"".join(body[3:] + tail))
    meter.end("eof")
    report = meter.report()
    timings = meter.complete(report, meter.plan(report, retrieve=False, estimate=False)).timings
    assert timings is not None
    assert [round(at, 9) for at, _ in timings.timeline] == [0.2] * 3 + [0.3] * 3
    assert [tokens for _, tokens in timings.timeline] == [2] * 6
    # Three events of 2 tokens 0.1 s after the previous read: 6 gaps of 0.1/6.
    assert timings.itl_p50 == pytest.approx(0.1 / 6)
    assert timings.itls() == pytest.approx([0.1 / 6] * 6)


def test_off_by_default() -> None:
    report = metered("chat-running", 2, timeline=False)
    timings = report.timings
    assert timings is not None
    assert type(StreamMeter()) is StreamMeter
    assert timings.timeline == () and timings.timeline_source is None
    assert timings.itl_p50 is None and timings.itls() == ()
    # The rest of the timings do not need the timeline.
    assert timings.ttft == pytest.approx(FIRST)
    assert timings.tpot == pytest.approx(GAP * (EVENTS - 1) / (2 * EVENTS - 1))
    assert ssetally.UsageTap().timeline_raw() is None


def test_without_an_exact_total_the_tokens_are_an_estimate() -> None:
    # The stream is cut before its usage: tokenizer counts, marked as such.
    report = metered("chat-final", 3, usage_total=False)
    assert report.usage is None and report.timings is not None
    assert report.timings.timeline_source == "estimate"
    assert [tokens for _, tokens in report.timings.timeline] == [3] * EVENTS


def test_ttft_is_the_first_output_event_in_every_api() -> None:
    """Role chunks, usage-only chunks, ``message_start``/``ping``, Responses' opening events
    and empty Gemini parts arrive first and are never TTFT."""
    leading = {
        "chat": [_chat({"role": "assistant", "content": ""}, 0),
                 _chat({"role": "assistant"}), _chat({"content": None, "refusal": None}),
                 _chat({"tool_calls": [{"index": 0, "id": "c", "type": "function",
                                         "function": {"name": "f", "arguments": ""}}]})],
        "anthropic": anthropic_stream(1)[0],
        "responses": responses_stream(1)[0],
        "gemini": [(b'data: {"candidates":[{"content":{"role":"model","parts":[{"text":""}]},'
                    b'"index":0}],"usageMetadata":{"promptTokenCount":7}}\n\n')],
    }  # fmt: skip
    firsts = {"chat": chat_stream(1, "final")[1][0], "anthropic": anthropic_stream(1)[1][0],
              "responses": responses_stream(1)[1][0], "gemini": gemini_stream(1)[1][0]}  # fmt: skip
    for api, events in leading.items():
        clock = Clock()
        meter = StreamMeter(timeline=True, clock=clock, request_sent=clock.now)
        for i, event in enumerate(events):
            clock.now = 100.0 + 0.01 * (i + 1)
            meter.feed(event)
        clock.now = 100.5
        meter.feed(firsts[api])
        meter.end("eof")
        report = meter.report()
        timings = meter.complete(report, meter.plan(report, retrieve=False, estimate=False))
        assert timings.timings is not None
        assert timings.timings.ttft == pytest.approx(0.5), api
        assert timings.timings.ttfb == pytest.approx(0.01), api
        assert [round(at, 9) for at, _ in timings.timings.timeline] == [0.5], api
        assert timings.delta_chunks == 1, api


def test_the_timeline_is_bounded() -> None:
    n = MAX_EVENTS + 50
    event = _chat({"content": " ab ab"})
    clock = Clock()
    meter = StreamMeter(timeline=True, clock=clock, request_sent=clock.now)
    meter.feed(_chat({"role": "assistant", "content": ""}))
    batch = event * 1000
    for i in range(0, n, 1000):
        clock.now += 0.001
        meter.feed(batch[: len(event) * min(1000, n - i)])
    final = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
             "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 2 * n,
                                      "total_tokens": 7 + 2 * n}}  # fmt: skip
    meter.feed(b"data: " + json.dumps(final).encode() + b"\n\ndata: [DONE]\n\n")
    meter.end("eof")
    report = meter.report()
    timings = meter.complete(report, meter.plan(report, retrieve=False, estimate=False)).timings
    assert timings is not None
    assert len(timings.timeline) == MAX_EVENTS
    assert timings.timeline_dropped == 50
    assert timings.timeline_source == "apportioned"
    # The dropped events keep their share of the total: the kept ones show only theirs.
    assert {tokens for _, tokens in timings.timeline} == {2}
    assert "50 more dropped" in repr(timings)


def test_a_running_count_is_exact_past_the_cap_too() -> None:
    n = MAX_EVENTS + 5
    meter = StreamMeter(timeline=True)
    chunks = b"".join(_chat({"content": " ab"}, i + 1) for i in range(n))
    meter.feed(chunks)
    meter.end("eof")
    report = meter.report()
    timings = meter.complete(report, meter.plan(report, retrieve=False, estimate=False)).timings
    assert timings is not None
    assert timings.timeline_dropped == 5 and timings.timeline_source == "usage"
    assert sum(tokens for _, tokens in timings.timeline) == MAX_EVENTS


@given(
    st.integers(min_value=0, max_value=10**9),
    st.lists(st.integers(min_value=0, max_value=10**6), min_size=1, max_size=50),
)
def test_apportioning_adds_up_exactly(budget: int, weights: list[int]) -> None:
    shares = apportion(budget, weights)
    assert sum(shares) == budget and len(shares) == len(weights)
    total = sum(weights) or len(weights)
    for share, weight in zip(shares, weights if sum(weights) else [1] * len(weights)):
        assert abs(share - budget * weight / total) < 1


def test_apportioning_follows_the_text() -> None:
    clock = Clock()
    meter = StreamMeter(timeline=True, clock=clock, request_sent=clock.now)
    texts = [" ab", " ab ab ab", " ab", " ab ab ab ab ab"]
    for text in texts:
        clock.now += 0.05
        meter.feed(_chat({"content": text}))
    # 10 tokens of text; the provider says 20 (hidden reasoning, say): twice each.
    final = {"id": "chatcmpl-1", "object": "chat.completion.chunk", "model": "gpt-4o-mini",
             "choices": [], "usage": {"prompt_tokens": 7, "completion_tokens": 20,
                                      "total_tokens": 27}}  # fmt: skip
    meter.feed(b"data: " + json.dumps(final).encode() + b"\n\n")
    meter.end("eof")
    report = meter.report()
    timings = meter.complete(report, meter.plan(report, retrieve=False, estimate=False)).timings
    assert timings is not None
    assert [tokens for _, tokens in timings.timeline] == [2, 6, 2, 10]


def test_repr_and_dict_say_what_a_user_needs() -> None:
    timings = metered("chat-running", 2).timings
    assert timings is not None
    text = repr(timings)
    for name in ("ttft=0.200000s", "ttfb=", "duration=", "output_tokens=12", "tpot=",
                 "itl_p50=0.025000s", "timeline=<6 events, usage>"):  # fmt: skip
        assert name in text, text
    d = timings.to_dict()
    json.dumps(d, allow_nan=False)
    for key in ("ttft", "ttfb", "tpot", "itl_p50", "itl_p90", "itl_p99", "timeline",
                "timeline_dropped", "timeline_source", "duration"):  # fmt: skip
        assert key in d
    assert d["itl_p50"] == pytest.approx(0.025)
    assert d["timeline"][0] == [pytest.approx(FIRST), 2]


# --------------------------------------------------------------------- the real front-ends


@pytest.mark.parametrize("stream", ["chat-running", "chat-final", "anthropic", "gemini"])
def test_connect_usage(server: ScriptedServer, stream: str) -> None:
    k = 2
    path, body = request_of(stream, k)
    seen: list[float] = []
    with (
        httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
        ssetally.connect_usage(
            client, "POST", server.origin + path, json=body, include_usage=False, timeline=True
        ) as events,
    ):
        for event in events:
            if '" ab' in event.data:
                seen.append(time.monotonic())
    report = events.report
    assert report is not None and report.timings is not None
    sent = report.timings.request_sent
    # Each event is yielded right after the read that carried it was metered.
    arrivals = [t - sent for t in seen]
    for (at, _), yielded in zip(report.timings.timeline, arrivals):
        assert at <= yielded
    check_exact(report.timings, stream, k, arrivals)
    check_schedule(report.timings, k, stream)


class Recorded:
    """A byte iterator that records when each read arrived (and how many content events)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self.chunks = chunks
        self.reads: list[tuple[float, int]] = []

    def __iter__(self) -> Iterator[bytes]:
        for chunk in self.chunks:
            self.reads.append((time.monotonic(), content_events(chunk)))
            yield chunk

    def arrivals(self, since: float) -> list[float]:
        return [t - since for t, n in self.reads for _ in range(n)]


@pytest.mark.parametrize("stream", ["chat-running", "responses"])
def test_meter_over_requests(server: ScriptedServer, stream: str) -> None:
    k = 3
    path, body = request_of(stream, k)
    sent = time.monotonic()
    with requests.post(server.origin + path, json=body, stream=True, timeout=TIMEOUT) as resp:
        recorded = Recorded(resp.iter_content(None))
        with ssetally.meter(recorded, request=body, timeline=True, request_sent=sent) as chunks:
            for _ in chunks:
                pass
    report = chunks.report
    assert report is not None and report.timings is not None
    check_exact(report.timings, stream, k, recorded.arrivals(sent))
    check_schedule(report.timings, k, stream)


def test_ameter_over_aiohttp(server: ScriptedServer) -> None:
    aiohttp = pytest.importorskip("aiohttp")
    k = 2
    path, body = request_of("anthropic", k)

    async def main() -> tuple[ssetally.StreamReport | None, list[float]]:
        reads: list[tuple[float, int]] = []

        async def recorded(source: AsyncIterator[bytes]) -> AsyncIterator[bytes]:
            async for chunk in source:
                reads.append((time.monotonic(), content_events(chunk)))
                yield chunk

        async with aiohttp.ClientSession() as session:
            sent = time.monotonic()
            async with (
                session.post(server.origin + path, json=body) as resp,
                ssetally.ameter(
                    recorded(resp.content.iter_any()), timeline=True, request_sent=sent
                ) as chunks,
            ):
                async for _ in chunks:
                    pass
        return chunks.report, [t - sent for t, n in reads for _ in range(n)]

    report, arrivals = asyncio.run(asyncio.wait_for(main(), TIMEOUT))
    assert report is not None and report.timings is not None
    check_exact(report.timings, "anthropic", k, arrivals)
    check_schedule(report.timings, k, "anthropic")


def test_the_middleware() -> None:
    """The app follows the schedule itself and records when it yields each chunk; the
    middleware's timeline counts from the request's arrival to the body messages it sent."""
    pytest.importorskip("uvicorn")
    from fastapi import FastAPI
    from fastapi.responses import StreamingResponse
    from ssetally.asgi import UsageMiddleware

    k = 2
    yielded: list[float] = []
    reports: list[ssetally.StreamReport] = []
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def chat() -> StreamingResponse:
        async def chunks() -> AsyncIterator[bytes]:
            start = time.monotonic()
            head, body, tail = chat_stream(k, "running")
            yield b"".join(head)
            for i, event in enumerate(body):
                await asyncio.sleep(max(0.0, start + FIRST + i * GAP - time.monotonic()))
                yielded.append(time.monotonic())
                yield event
            yield b"".join(tail)

        return StreamingResponse(chunks(), media_type="text/event-stream")

    wrapped = UsageMiddleware(app, on_report=lambda r, scope: reports.append(r), timeline=True)
    with UvicornThread(wrapped, lifespan="on", timeout=TIMEOUT) as served:
        url = served.url + "/v1/chat/completions"
        _, body = request_of("chat-running", k)
        with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
            answer = client.post(url, json=body)
        assert answer.status_code == 200 and content_events(answer.content) == EVENTS
        deadline = time.monotonic() + TIMEOUT
        while not reports and time.monotonic() < deadline:
            time.sleep(0.01)
    assert len(reports) == 1
    timings = reports[0].timings
    assert timings is not None
    check_exact(timings, "chat-running", k, [t - timings.request_sent for t in yielded])
    check_schedule(timings, k, "chat-running")


def test_readme_benchmark_loop_runs_as_written(tmp_path: Path) -> None:
    readme = README.read_text(encoding="utf-8")
    section = readme[readme.index("### Timing for benchmark scripts") :]
    code = re.search(r"^```python\n(.*?)^```", section, re.MULTILINE | re.DOTALL)
    assert code is not None
    script = tmp_path / "bench_loop.py"
    script.write_text(code[1], encoding="utf-8")
    with ReplayServer(delay=0.005) as replay:
        run = subprocess.run(
            [sys.executable, str(script)],
            env={**{k: v for k, v in subprocess_env().items() if "proxy" not in k.lower()},
                 "OPENAI_BASE_URL": replay.url},
            capture_output=True, text=True, timeout=120, check=False,
        )  # fmt: skip
        served = replay.served
    assert run.returncode == 0, run.stderr[-2000:]
    lines = [line for line in run.stdout.splitlines() if line.startswith("ttft=")]
    assert len(lines) == len(served) == 3
    for line, truth in zip(lines, served):
        fields = dict(re.findall(r"(\w+)=(\S+)", line))
        assert 0 < float(fields["ttft"]) < 10 and not math.isnan(float(fields["ttft"]))
        assert 0 <= float(fields["itl_p50"]) <= float(fields["itl_p99"])
        assert int(fields["tokens"]) == truth.usage["completion_tokens"]
        assert fields["source"] == "apportioned"
