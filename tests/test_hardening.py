"""Hardening: memory and resource bounds, threads, and credentials.

Memory (each case in a fresh interpreter, peak RSS from ``getrusage``; tests/test_usage_tap.py
already covers a never-ending ``data:`` line through ``UsageTap``):

* ``max_event_size`` holds for one giant event made of many lines, for a never-ending line
  through ``SSEDecoder``, and for a giant event arriving in a single chunk (no copy of it is
  made); a huge ``id:`` line is not kept as the last event id;
* hostile streams cannot make memory grow faster than they arrive: thousands of tiny
  responses (reports are capped per stream), ever-new choice indexes (the reassembled output
  is capped), endless run steps (step usages are capped);
* no leak: ~10^5-10^6 small streams (as many as fit in about 12 s) through fresh and reused
  taps, decoders, line decoders and strippers keep RSS flat between the 10th and the 100th
  percent of the run.

Threads (tests/test_threads.py and tests/test_usage_tap.py cover one decoder / tap per
thread and shared feeders): every native type at once, one per thread, gives the
single-threaded results; ``finish()`` racing a detached ``feed()`` on a shared tap or decoder
is refused with PyO3's "Already borrowed" and loses no byte; a ``bytearray`` mutated by
another thread during a detached ``feed`` is read as one consistent snapshot; a shared
``UsageChunkStripper`` (it keeps the interpreter) serialises cleanly.

Credentials: a recognisable fake key, sent as ``Authorization: Bearer``, ``api-key`` or a
``?key=`` query parameter through the replay server (stream, include_usage injection,
retrieval, retrieval failures, error statuses, HTML answers) and through a loopback server
that echoes the credentials back (error bodies, stream error events, retrieval errors), never
appears in a ``StreamReport`` (repr, ``to_dict()``), in ``APIStatusError`` / ``SSEError``
(str, repr, args, body) or in any log record emitted meanwhile; where it was echoed, the
report or error says ``[REDACTED]`` instead.

Every server binds 127.0.0.1; every client and subprocess has a timeout.
"""

from __future__ import annotations

import functools
import http.server
import itertools
import json
import logging
import random
import re
import subprocess
import sys
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from ssetally import (
    APIStatusError,
    EventTooLargeError,
    LineDecoder,
    RetrievalPolicy,
    ServerSentEvent,
    SSEDecoder,
    SSEError,
    StreamReport,
    UsageTap,
    aconnect_usage,
    connect_usage,
)
from ssetally._core import UsageChunkStripper
from ssetally._replay import ReplayServer

KiB = 1024
MiB = 1024 * KiB
TIMEOUT = 10.0
BORROW_ERROR = re.compile(r"^Already (mutably )?borrowed$", re.IGNORECASE)
unix_only = pytest.mark.skipif(sys.platform == "win32", reason="getrusage is POSIX-only")

# ------------------------------------------------------------------------ subprocess RSS

#: Run first in every child: ``peak()``, the peak RSS in bytes (Linux: ``VmHWM``, which
#: ``reset_peak()`` brings down to the current RSS; elsewhere ``ru_maxrss``), and JSON output.
_PRELUDE = f"""
import json, resource, sys
sys.path.append({str(Path(__file__).resolve().parent)!r})
from peak_memory import peak_reset as reset_peak, peak_rss as peak
def done(**values):
    print(json.dumps(values))
"""


def child(script: str, *args: str, timeout: float = 120) -> dict[str, Any]:
    """Runs ``script`` in a fresh interpreter; returns the JSON it printed last."""
    out = subprocess.run(
        [sys.executable, "-c", _PRELUDE + script, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-3000:]
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


_GIANT = """
from ssetally import SSEDecoder, UsageTap, EventTooLargeError
mib, target, shape = int(sys.argv[1]), sys.argv[2], sys.argv[3]
TAIL = (b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\\n\\ndata: [DONE]\\n\\n')
decoder, tap = SSEDecoder(), UsageTap()
seen = {"events": [], "errors": 0}
def feed(b):
    if target == "tap":
        tap.feed(b)
        return
    try:
        seen["events"] += [e.data for e in decoder.feed(b)]
    except EventTooLargeError as e:
        seen["errors"] += 1
        seen["events"] += [x.data for x in e.events]
line = b"data: " + b"x" * ((1 << 20) - 7) + b"\\n"   # 1 MiB data lines of one event
piece = b"x" * (1 << 20)                             # or one line that never ends
feed(b"data: first\\n\\n")
base = peak()
reset = True
if shape == "one-chunk":
    big = b"data: " + b"x" * (mib << 20) + b"\\n\\n" + TAIL
    # Building ``big`` briefly took twice its size: forget that peak.
    reset = reset_peak()
    base = peak()
    if mib:
        feed(big)
else:
    if shape == "line":
        feed(b"data: ")
    for _ in range(mib):
        feed(line if shape == "lines" else piece)
    feed(b"\\n\\n" + TAIL)
grown = peak() - base
if target == "tap":
    r = tap.finish()
    done(grown=grown, oversized=r.oversized_events, usage=r.usage and r.usage.total_tokens,
         status=r.status, reset=reset)
else:
    done(grown=grown, oversized=seen["errors"], events=seen["events"][-1:], n=len(seen["events"]),
         reset=reset)
"""


@unix_only
@pytest.mark.parametrize(
    ("target", "shape"),
    [("decoder", "lines"), ("tap", "lines"), ("decoder", "line")],
)
def test_giant_event_memory_is_bounded(target: str, shape: str) -> None:
    """256 MiB of one event (many data lines, or one line that never ends) costs about
    ``max_event_size`` (16 MiB), and the events after it are read."""
    small = child(_GIANT, "4", target, shape)
    big = child(_GIANT, "256", target, shape)
    assert big["grown"] - small["grown"] < 40 * MiB, (small, big)
    assert small["oversized"] == 0 and big["oversized"] == 1
    if target == "tap":
        assert big["usage"] == 3 and big["status"] == "completed"
    else:
        assert big["events"] == ["[DONE]"] and big["n"] == 3


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="needs /proc/self/clear_refs")
@pytest.mark.parametrize("target", ["decoder", "tap"])
def test_giant_event_in_one_chunk_is_not_copied(target: str) -> None:
    """A 64 MiB event that arrives whole in one ``feed`` is skipped without being copied:
    the only memory it takes is the caller's own chunk."""
    without = child(_GIANT, "0", target, "one-chunk")
    with_event = child(_GIANT, "64", target, "one-chunk")
    assert with_event["reset"], "the peak RSS mark could not be reset"
    assert with_event["grown"] - without["grown"] < 8 * MiB, (without, with_event)
    assert with_event["oversized"] == 1
    if target == "tap":
        assert with_event["usage"] == 3
    else:
        assert with_event["events"] == ["[DONE]"]


@pytest.mark.parametrize("cut", [None, 3, 100, 2000, 5004])
def test_huge_id_line_is_not_kept(cut: int | None) -> None:
    """An ``id:`` line over the limit makes its event oversized and is never stored as the
    last event id, wherever the chunks are cut."""
    stream = b"id: " + b"x" * 5000 + b"\ndata: a\n\nid: ok\ndata: b\n\n"
    decoder = SSEDecoder(max_event_size=1024)
    chunks = [stream] if cut is None else [stream[:cut], stream[cut:]]
    events: list[ServerSentEvent] = []
    errors = 0
    for chunk in chunks:
        try:
            events += decoder.feed(chunk)
            assert decoder.last_event_id in ("", "ok")
        except EventTooLargeError as exc:
            errors += 1
            events += exc.events
            assert decoder.last_event_id in ("", "ok")
    assert errors == 1
    assert events == [ServerSentEvent(data="b", id="ok")]


@pytest.mark.parametrize("cut", [None, 1, 3, 700, 2500])
def test_never_ending_line_is_bounded(cut: int | None) -> None:
    """``LineDecoder`` drops a line over ``max_line_size`` (and says so) wherever the chunks
    cut it, keeps the lines around it, and never buffers more than the limit."""
    stream = b"a\r\n" + b"x" * 3000 + b"\nb\n"
    decoder = LineDecoder(max_line_size=1024)
    assert decoder.max_line_size == 1024
    chunks = [stream] if cut is None else [stream[:cut], stream[cut:]]
    lines: list[str] = []
    errors = 0
    for chunk in chunks:
        try:
            lines += decoder.feed(chunk)
        except EventTooLargeError as exc:
            errors += 1
            lines += exc.lines
    assert errors == 1
    assert lines + decoder.finish() == ["a", "b"]
    endless = LineDecoder(max_line_size=1024)
    with pytest.raises(EventTooLargeError):
        endless.feed(b"y" * 2000)
    for _ in range(1000):  # the rest of that line is skipped, not stored
        assert endless.feed(b"y" * 4096) == []
    assert endless.feed(b"\nz\n") == ["z"]
    with pytest.raises(ValueError, match="positive"):
        LineDecoder(max_line_size=0)


_HOSTILE = """
from ssetally import UsageTap
kind, mb = sys.argv[1], int(sys.argv[2])
CHAT = (b'data: {"id":"a%d","object":"chat.completion.chunk","model":"m",'
        b'"choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\\n\\n')
STEP = (b'event: thread.run.step.completed\\ndata: {"id":"step_%d","object":"thread.run.step",'
        b'"status":"completed","usage":{"prompt_tokens":1,"completion_tokens":1,"total_tokens":2}}\\n\\n')
tap = UsageTap(collect_output=kind == "choices")
def unit(k):
    if kind == "responses":
        return b"".join(CHAT % i for i in range(1000))
    if kind == "steps":  # distinct steps: a repeated step id is one step
        return b"".join(STEP % (k * 1000 + i) for i in range(1000))
    items = b",".join(b'{"index":%d}' % (k * 4000 + i) for i in range(4000))
    return b'data: {"id":"a","object":"chat.completion.chunk","model":"m","choices":[' + items + b']}\\n\\n'
fixed = unit(0)
tap.feed(fixed[:200])
base = peak()
fed, k = 0, 0
while fed < mb * 1000000:
    u = fixed if kind == "responses" else unit(k)
    tap.feed(u)
    fed, k = fed + len(u), k + 1
report = tap.finish()
output = tap.output()
done(grown=peak() - base, fed=fed, reports=len(tap.reports),
     steps=max(len(r.step_usages) for r in tap.reports),
     choices=None if output is None else len(output["choices"]),
     warnings=[w for r in tap.reports for w in r.warnings])
"""


@unix_only
@pytest.mark.parametrize(
    ("kind", "mb"),
    [("responses", 10), ("choices", 8), ("steps", 10)],
)
def test_hostile_streams_cannot_amplify_memory(kind: str, mb: int) -> None:
    """Before the caps, these streams cost 5x (tiny responses), 11x (choice indexes) and
    1.2x (run steps) their size in native memory, and several times more once turned into
    Python reports; now the growth stays far below the stream size."""
    result = child(_HOSTILE, kind, str(mb))
    assert result["fed"] >= mb * 1_000_000
    assert result["grown"] < 24 * MiB, result
    if kind == "responses":
        assert result["reports"] == 1024
        assert any("more than 1024 responses" in w for w in result["warnings"])
    elif kind == "steps":
        assert result["steps"] == 1024
        assert any("run steps" in w for w in result["warnings"])
    else:
        assert result["choices"] == 128


_LEAK = """
import random, time
from ssetally import UsageTap, SSEDecoder, LineDecoder, EventTooLargeError
from ssetally._core import UsageChunkStripper
budget, most = float(sys.argv[1]), int(sys.argv[2])
CHAT = (b'data: {"id":"c%d","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{"content":"Hi \\xc3\\xa9"},"finish_reason":null}],"usage":null}\\n\\n'
        b'data: {"id":"c%d","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{},"finish_reason":"stop"}],"usage":null}\\n\\n'
        b'data: {"id":"c%d","object":"chat.completion.chunk","model":"m","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}\\n\\ndata: [DONE]\\n\\n')
RESPONSES = (b'event: response.created\\ndata: {"type":"response.created","response":{"id":"r%d","model":"m"}}\\n\\n'
             b'event: response.output_text.delta\\ndata: {"type":"response.output_text.delta","delta":"x"}\\n\\n'
             b'event: response.completed\\ndata: {"type":"response.completed","response":{"id":"r%d",'
             b'"status":"completed","usage":{"input_tokens":4,"output_tokens":6,"total_tokens":10}}}\\n\\n')
ANTHROPIC = (b'event: message_start\\ndata: {"type":"message_start","message":{"id":"m%d","model":"c",'
             b'"usage":{"input_tokens":9,"output_tokens":1}}}\\n\\n'
             b'event: message_delta\\ndata: {"type":"message_delta","delta":{"stop_reason":"max_tokens"},'
             b'"usage":{"output_tokens":7}}\\n\\nevent: message_stop\\ndata: {"type":"message_stop"}\\n\\n')
GARBAGE = b"data: {\\xff\\n\\nid: \\x00\\nretry: 1\\n: c\\r\\ndata: " + b"y" * 100 + b"\\n\\ndata: [DONE]"
streams = [CHAT, RESPONSES, ANTHROPIC, GARBAGE, CHAT + CHAT.replace(b"c%d", b"d%d")]
rng = random.Random(1)
reused_tap, reused_decoder = UsageTap(collect_output=True), SSEDecoder()
def one(i):
    s = streams[i % len(streams)]
    data = s.replace(b"%d", str(i % 97).encode())
    cut = rng.randrange(len(data) + 1)
    tap = UsageTap(max_event_size=64) if i % 3 == 0 else (UsageTap() if i % 3 == 1 else reused_tap)
    tap.feed(data[:cut]); tap.feed(data[cut:])
    if i % 7 == 0:
        tap.snapshot()
    report = tap.finish()
    if i % 11 == 0:
        report.to_dict(); tap.output()
    decoder = SSEDecoder(max_event_size=64) if i % 2 else reused_decoder
    for part in (data[:cut], data[cut:]):
        try:
            decoder.feed(part)
        except EventTooLargeError as exc:
            exc.events
    decoder.finish()
    lines = LineDecoder(); lines.feed(data); lines.finish()
    stripper = UsageChunkStripper(); stripper.feed(data[:cut]); stripper.feed(data[cut:]); stripper.finish()
start = time.monotonic()
for i in range(2000):
    one(i)
rate = 2000 / (time.monotonic() - start)
n = max(20000, min(most, int(rate * budget)))
marks = {}
for i in range(n):
    one(i)
    if i + 1 == n // 10:
        marks["p10"] = peak()
marks["p100"] = peak()
done(n=n, grown=marks["p100"] - marks["p10"], rate=rate)
"""


@unix_only
def test_no_leak_over_many_small_streams() -> None:
    """As many small streams as fit in about 12 s (up to 10^6): peak RSS between the 10th
    and the 100th percent of the run grows by less than 4 MiB, where leaking one report,
    event or output per stream would cost tens of MiB."""
    result = child(_LEAK, "12", "1000000", timeout=180)
    assert result["n"] >= 20_000
    assert result["grown"] < 4 * MiB, result


# ------------------------------------------------------------------------ threads


def chat_stream(tag: str, n: int) -> bytes:
    """A chat stream (~150 bytes per event) with a usage-only chunk and [DONE]."""
    events = [
        f'data: {{"id":"{tag}","object":"chat.completion.chunk","model":"m","choices":[{{"index":0,'
        f'"delta":{{"content":"{tag}-{i} \u00e9"}},"finish_reason":null}}],"usage":null}}\r\n\r\n'
        for i in range(n)
    ]
    events.append(
        f'data: {{"id":"{tag}","object":"chat.completion.chunk","model":"m","choices":[],'
        f'"usage":{{"prompt_tokens":{n},"completion_tokens":{n},"total_tokens":{2 * n}}}}}'
        "\r\n\r\ndata: [DONE]\r\n\r\n"
    )
    return "".join(events).encode()


@dataclass(frozen=True)
class Outcome:
    events: tuple[ServerSentEvent, ...]
    lines: tuple[str, ...]
    stripped: bytes
    stripped_count: int
    reports: tuple[StreamReport, ...]


def run_all(chunks: list[bytes]) -> Outcome:
    """Every native type over the same chunks, one object each."""
    decoder, lines, stripper, tap = SSEDecoder(), LineDecoder(), UsageChunkStripper(), UsageTap()
    events: list[ServerSentEvent] = []
    got_lines: list[str] = []
    out: list[bytes] = []
    for chunk in chunks:
        events += decoder.feed(chunk)
        got_lines += lines.feed(chunk)
        out.append(stripper.feed(chunk))
        tap.feed(chunk)
    assert decoder.finish() is False
    got_lines += lines.finish()
    out.append(stripper.finish())
    tap.finish()
    return Outcome(
        tuple(events),
        tuple(got_lines),
        b"".join(out),
        stripper.stripped,
        tuple(r.replace(bytes=0) for r in tap.reports),
    )


def test_every_type_at_once_one_per_thread() -> None:
    jobs: list[list[bytes]] = []
    for k in range(24):
        data = chat_stream(f"t{k}", 1500 + 37 * k)  # ~250 KiB: detached feeds
        rng = random.Random(k)
        cuts = sorted(rng.sample(range(1, len(data)), 3))
        bounds = [0, *cuts, len(data)]
        jobs.append([data[a:b] for a, b in itertools.pairwise(bounds)])
    expected = [run_all(job) for job in jobs]
    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(run_all, jobs * 2))
    assert results == expected * 2
    for k, outcome in enumerate(expected):
        assert outcome.stripped_count == 1
        assert b'"choices":[],' not in outcome.stripped
        (report,) = outcome.reports
        assert report.usage is not None and report.usage.total_tokens == 2 * (1500 + 37 * k)


def race(calls: list[Callable[[], None]], rounds: int) -> tuple[int, int]:
    """Runs the calls in threads released together, ``rounds`` times; returns how many calls
    succeeded and how many were refused with the borrow error (anything else fails)."""
    ok = busy = 0
    lock = threading.Lock()
    failures: list[BaseException] = []
    for _ in range(rounds):
        barrier = threading.Barrier(len(calls))

        def run(call: Callable[[], None], barrier: threading.Barrier = barrier) -> None:
            nonlocal ok, busy
            barrier.wait()
            try:
                call()
            except RuntimeError as exc:
                with lock:
                    busy += 1
                    if not BORROW_ERROR.match(str(exc)):
                        failures.append(exc)
            except BaseException as exc:  # noqa: BLE001 - re-raised by the caller
                with lock:
                    failures.append(exc)
            else:
                with lock:
                    ok += 1

        threads = [threading.Thread(target=run, args=(c,)) for c in calls]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=60)
            assert not t.is_alive()
        if failures:
            raise failures[0]
    return ok, busy


def hammer(
    feed: Callable[[], object], other: Callable[[], object], most: int = 40
) -> tuple[int, int, int]:
    """Calls ``feed`` in one thread (pausing 5 ms between calls) while another thread calls
    ``other`` over and over, until ``other`` has both succeeded and been refused with the
    borrow error at least once, or ``feed`` ran ``most`` times. Returns the feeds done, the
    ``other`` calls that succeeded and those refused (any other exception fails the test)."""
    done = threading.Event()
    counts = [0, 0, 0]  # feeds, ok, busy
    failures: list[BaseException] = []

    def feeder() -> None:
        try:
            while counts[0] < most and not (counts[1] and counts[2]):
                feed()
                counts[0] += 1
                time.sleep(0.005)
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)
        finally:
            done.set()

    def caller() -> None:
        try:
            while not done.is_set():
                try:
                    other()
                    counts[1] += 1
                except RuntimeError as exc:
                    if not BORROW_ERROR.match(str(exc)):
                        raise
                    counts[2] += 1
        except BaseException as exc:  # noqa: BLE001 - re-raised below
            failures.append(exc)

    threads = [threading.Thread(target=feeder), threading.Thread(target=caller)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=300)
        assert not t.is_alive()
    if failures:
        raise failures[0]
    return counts[0], counts[1], counts[2]


def test_shared_tap_finish_racing_feed_loses_nothing() -> None:
    """``finish()`` on a tap another thread is feeding (8 MiB chunks, interpreter released,
    full parse of every event so that each feed takes a while) is refused with the borrow
    error, or runs between feeds; either way every byte fed is in exactly one finished
    report, and each stream fed is one whole report."""
    data = chat_stream("shared", 50_000)  # ~8 MiB of complete events
    tap = UsageTap(collect_output=True)
    finished: list[StreamReport] = []

    def finisher() -> None:
        tap.finish()
        finished.extend(tap.reports)  # the feeding thread never touches ``reports``

    feeds, ok, busy = hammer(lambda: tap.feed(data), finisher)
    tap.finish()
    finished.extend(tap.reports)
    assert busy >= 1, "finish() never met a running feed()"
    assert ok >= 1, "finish() never ran between two feeds"
    assert sum(r.bytes for r in finished) == feeds * len(data)
    # (A chunk's bytes go to the report current when it begins: count streams by events.)
    streams = [r for r in finished if r.events]
    assert len(streams) == feeds
    assert all(r.usage is not None and r.usage.total_tokens == 100_000 for r in streams)
    assert all(r.status == "completed" and r.events == 50_002 for r in streams)


def test_shared_decoder_finish_racing_feed() -> None:
    data = chat_stream("dec", 120_000)  # ~19 MiB: a long detached decode
    decoder = SSEDecoder()
    outputs: list[int] = []
    feeds, ok, busy = hammer(lambda: outputs.append(len(decoder.feed(data))), decoder.finish)
    assert busy >= 1, "finish() never met a running feed()"
    assert ok >= 1, "finish() never ran between two feeds"
    # Every feed did its whole chunk: all its events (it starts on an event boundary).
    assert outputs == [120_002] * feeds
    assert decoder.feed(b"data: tail\n\n") == [ServerSentEvent(data="tail")]


def test_bytearray_mutated_during_a_detached_feed_is_one_snapshot() -> None:
    """The buffer is copied before the interpreter is released: a feed sees exactly one of
    the two contents another thread keeps swapping in, never a mix."""
    a, b = chat_stream("AAAA", 6000), chat_stream("BBBB", 6000)
    assert len(a) == len(b) and len(a) > 64 * KiB
    buf = bytearray(a)
    stop = threading.Event()

    def flipper() -> None:
        while not stop.is_set():
            buf[:] = b
            buf[:] = a

    events_a = SSEDecoder().feed(a)
    events_b = SSEDecoder().feed(b)
    assert events_a != events_b
    thread = threading.Thread(target=flipper)
    thread.start()
    try:
        for _ in range(40):
            got = SSEDecoder().feed(buf)
            assert got == events_a or got == events_b
            tap = UsageTap()
            tap.feed(memoryview(buf))
            report = tap.finish()
            assert len(tap.reports) == 1
            assert report.response_id in ("AAAA", "BBBB") and report.usage is not None
    finally:
        stop.set()
        thread.join(timeout=30)


def test_shared_stripper_serialises_cleanly() -> None:
    """``UsageChunkStripper.feed`` keeps the interpreter: calls from several threads take
    turns, and each returns exactly its own chunk minus the usage chunk (every chunk is
    whole event blocks)."""
    stripper = UsageChunkStripper()
    chunks = [chat_stream(f"s{k}", 800) for k in range(6)]
    wanted: dict[bytes, bytes] = {}
    for chunk in chunks:
        usage_start = chunk.rindex(b'data: {"id"')  # the usage-only chunk comes last
        usage_end = chunk.index(b"\r\n\r\n", usage_start) + 4
        # The usage chunk goes, and so does each "usage":null member include_usage added.
        wanted[chunk] = (chunk[:usage_start] + chunk[usage_end:]).replace(b',"usage":null', b"")
    results: dict[bytes, bytes] = {}
    lock = threading.Lock()

    def work(chunk: bytes) -> None:
        out = stripper.feed(chunk)
        with lock:
            results[chunk] = out

    ok, busy = race([functools.partial(work, c) for c in chunks], rounds=3)
    assert (ok, busy) == (18, 0)
    assert results == wanted
    assert stripper.stripped == 18
    assert stripper.finish() == b""


# ------------------------------------------------------------------------ credentials

KEY = "sk-ssetally-HARDENING-0f9e8d7c6b5a4f3e2d1c0b9a"
AUTH = {"Authorization": f"Bearer {KEY}"}
FAST = RetrievalPolicy(deadline=3.0, first_delay=0.01, backoff=2.0, max_delay=0.2)
CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "Say something"}],
}
RESPONSES_BODY: dict[str, Any] = {"model": "gpt-4o-mini", "stream": True, "input": "Hello"}


def rendered(value: Any) -> str:
    """Everything ssetally makes a value show: repr, str, and for reports and errors their
    dict, args, body and formatted traceback. (``APIStatusError.response`` is httpx's own
    response object: its request keeps the headers and URL as sent, by design.)"""
    parts = [repr(value), str(value)]
    if isinstance(value, StreamReport):
        parts.append(json.dumps(value.to_dict(), default=repr))
    if isinstance(value, BaseException):
        trace = traceback.format_exception(type(value), value, value.__traceback__)
        parts += [repr(value.args), "".join(trace), repr(getattr(value, "body", None))]
    return "\n".join(parts)


def assert_clean(*values: Any) -> None:
    for value in values:
        text = rendered(value)
        assert KEY not in text, text[:2000]
        assert KEY[3:20] not in text, text[:2000]


def log_text(records: list[logging.LogRecord], *, skip_httpx_urls: bool = False) -> str:
    return "\n".join(
        f"{r.name}: {r.getMessage()}"
        for r in records
        if not (skip_httpx_urls and r.name == "httpx" and r.getMessage().startswith("HTTP "))
    )


@pytest.fixture
def logs(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    """Every log record, at DEBUG, from every logger (httpx and httpcore included), must be
    free of the key."""
    with caplog.at_level(logging.DEBUG):
        yield caplog
    records = caplog.get_records("call")
    assert records, "nothing was logged: the check would be empty"
    assert KEY not in log_text(records)


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as s:
        yield s


def stream_report(
    url: str, body: dict[str, Any], headers: dict[str, str], **kwargs: Any
) -> StreamReport:
    """The report of one ``connect_usage`` call; a connection the server cuts on purpose
    (``x-replay-cut-after-events``) is caught inside the block, so the fallbacks run."""
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as client, connect_usage(
        client, "POST", url, json=body, headers=headers, retrieval=FAST, **kwargs
    ) as stream:  # fmt: skip
        try:
            for _ in stream:
                pass
        except httpx.RemoteProtocolError as exc:
            assert "x-replay-cut-after-events" in headers, exc
    assert stream.report is not None
    return stream.report


def test_key_not_in_a_normal_chat_report(server: ReplayServer, logs: Any) -> None:
    report = stream_report(server.url + "/chat/completions", CHAT_BODY, AUTH)
    assert report.usage is not None and report.usage.source == "stream"
    assert server.requests[-1].header("authorization") == f"Bearer {KEY}"
    assert server.requests[-1].body["stream_options"] == {"include_usage": True}
    assert_clean(report)


def test_key_not_in_retrieval_reports(server: ReplayServer, logs: Any) -> None:
    """Cut Responses streams: retrieved (the GET carried the key), not stored (404), and
    server errors on retrieval."""
    cut = {**AUTH, "x-replay-cut-after-events": "3"}
    retrieved = stream_report(server.url + "/responses", RESPONSES_BODY, cut)
    assert retrieved.usage is not None and retrieved.usage.source == "retrieval"
    gets = [r for r in server.requests if r.method == "GET"]
    assert gets and gets[-1].header("authorization") == f"Bearer {KEY}"

    not_stored = stream_report(server.url + "/responses", {**RESPONSES_BODY, "store": False}, cut)
    assert any(a.source == "retrieval" and not a.ok for a in not_stored.attempts)

    with httpx.Client(timeout=TIMEOUT, trust_env=False) as client, connect_usage(
        client, "POST", server.url + "/responses", json=RESPONSES_BODY, headers=cut,
        retrieval=FAST,
    ) as stream:  # fmt: skip
        with pytest.raises(httpx.RemoteProtocolError):
            for _ in stream:
                pass
        server.queue_statuses(503, 503, 503)
    assert stream.report is not None
    failed = [a for a in stream.report.attempts if a.source == "retrieval"]
    assert failed and not failed[0].ok
    assert_clean(retrieved, not_stored, stream.report)


@pytest.mark.parametrize(
    "headers",
    [
        {"x-replay-status": "401"},
        {"x-replay-status": "429", "x-replay-retry-after": "0"},
        {"x-replay-status": "500"},
        {"x-replay-status": "502", "x-replay-html": "1"},
        {},  # model "error-400"
    ],
)
def test_key_not_in_api_status_errors(
    server: ReplayServer, logs: Any, headers: dict[str, str]
) -> None:
    body = CHAT_BODY if headers else {**CHAT_BODY, "model": "error-400"}
    with pytest.raises(APIStatusError) as info:
        stream_report(server.url + "/chat/completions", body, {**AUTH, **headers})
    assert info.value.status_code >= 400
    assert info.value.response.request.headers["authorization"] == f"Bearer {KEY}"
    assert_clean(info.value)


def test_key_not_in_sse_errors(server: ReplayServer, logs: Any) -> None:
    with pytest.raises(SSEError) as info:
        stream_report(
            server.url + "/chat/completions",
            CHAT_BODY,
            {**AUTH, "x-replay-status": "200", "x-replay-html": "1"},
        )
    assert_clean(info.value)


async def test_key_not_in_async_reports_and_errors(server: ReplayServer, logs: Any) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as client:
        async with aconnect_usage(
            client, "POST", server.url + "/responses", json=RESPONSES_BODY,
            headers={**AUTH, "x-replay-cut-after-events": "2"}, retrieval=FAST,
        ) as stream:  # fmt: skip
            with pytest.raises(httpx.RemoteProtocolError):
                async for _ in stream:
                    pass
        with pytest.raises(APIStatusError) as info:
            async with aconnect_usage(
                client, "POST", server.url + "/responses", json=RESPONSES_BODY,
                headers={**AUTH, "x-replay-status": "403"},
            ):  # fmt: skip
                pass
    assert stream.report is not None and stream.report.usage is not None
    assert_clean(stream.report, info.value)


@pytest.mark.parametrize("response_id", ["../../v1/files/file-1/content?x=1#y", "a/b", "%2e%2e"])
def test_retrieval_stays_on_the_responses_path(logs: Any, response_id: str) -> None:
    """The response id comes from the stream: the authenticated retrieval ``GET`` must name
    ``/responses/{id}`` and nothing else, whatever the id holds."""
    created = {"type": "response.created", "response": {"id": response_id, "model": "m"}}
    delta = {"type": "response.output_text.delta", "delta": "Hi"}
    capture = "".join(
        f"event: {e['type']}\ndata: {json.dumps(e)}\n\n" for e in (created, delta)
    ).encode()  # no terminal event: the usage must be retrieved
    with ReplayServer(streams=[capture]) as server:
        report = stream_report(server.url + "/responses", RESPONSES_BODY, AUTH)
        gets = [r for r in server.requests if r.method == "GET"]
    assert report.response_id == response_id
    # Such an id names no response: no authenticated GET is built from it at all.
    assert gets == []
    retrieval = [a for a in report.attempts if a.source == "retrieval"]
    assert retrieval and not retrieval[0].ok and "not a valid id" in retrieval[0].reason
    assert_clean(report)


class _Echo(http.server.BaseHTTPRequestHandler):
    """A loopback server that repeats the credentials it receives, as some proxies and
    debugging gateways do: in 4xx bodies, in a stream's error event, and in a retrieval
    error body. Paths: ``/v1/chat/completions`` (401), ``/v1/responses`` (an error event,
    or with ``/cut`` a stream cut before its end, whose retrieval gets a 403)."""

    protocol_version = "HTTP/1.1"

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _credentials(self) -> str:
        return (
            " ".join(
                f"{name}={self.headers.get(name, '')}" for name in ("Authorization", "api-key")
            )
            + f" url={self.path}"
        )

    def _send(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        echo = self._credentials()
        if "/chat/completions" in self.path:
            status: dict[str, Any] = {
                "error": {"message": f"Incorrect API key provided: {echo}", "echo": [echo]}
            }
            self._send(401, "application/json", json.dumps(status).encode())
            return
        created = {"type": "response.created", "response": {"id": "resp_echo", "model": echo}}
        body = f"event: response.created\ndata: {json.dumps(created)}\n\n"
        if "/cut" not in self.path:
            event: dict[str, Any] = {
                "type": "error",
                "sequence_number": 1,
                "error": {"message": echo},
            }
            body += f"event: error\ndata: {json.dumps(event)}\n\n"
        self._send(200, "text/event-stream", body.encode())

    def do_GET(self) -> None:
        self._send(403, "text/plain", f"forbidden: {self._credentials()}".encode())


class _EchoServer(http.server.ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that hangs up after its answer (connection reset) is not an error here;
        # anything wrong in the answers shows in the tests' own assertions.
        pass


@pytest.fixture
def echo() -> Iterator[str]:
    httpd = _EchoServer(("127.0.0.1", 0), _Echo)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/v1"
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=10)


@pytest.mark.parametrize(
    ("headers", "query"),
    [(AUTH, ""), ({"api-key": KEY}, ""), ({}, f"?key={KEY}")],
    ids=["bearer", "api-key", "query"],
)
def test_echoed_credentials_are_redacted(
    echo: str, caplog: pytest.LogCaptureFixture, headers: dict[str, str], query: str
) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(APIStatusError) as info:
        stream_report(echo + "/chat/completions" + query, CHAT_BODY, headers)
    error = info.value
    assert error.status_code == 401
    assert "[REDACTED]" in str(error) and "[REDACTED]" in json.dumps(error.body)

    failed = stream_report(echo + "/responses" + query, RESPONSES_BODY, headers)
    assert failed.status == "failed"
    assert "[REDACTED]" in json.dumps(failed.error) and "[REDACTED]" in (failed.model or "")

    cut = stream_report(echo + "/responses/cut" + query, RESPONSES_BODY, headers)
    (retrieval,) = [a for a in cut.attempts if a.source == "retrieval"]
    assert not retrieval.ok and "403" in retrieval.reason
    if not query:  # the retrieval URL drops the query string, so nothing to echo there
        assert "[REDACTED]" in retrieval.reason
    assert_clean(error, failed, cut)
    # httpx itself logs every request URL at INFO, query string included: a key passed as
    # ``?key=`` shows there (see the README's threat model); nothing else may show it.
    assert KEY not in log_text(caplog.records, skip_httpx_urls=True)
    assert (KEY in log_text(caplog.records)) == bool(query)


def test_short_credentials_are_left_alone(echo: str) -> None:
    """Values under 8 characters are not redacted (they would blank out ordinary words); a
    whole ``Bearer`` header value is long enough."""
    with pytest.raises(APIStatusError) as info:
        stream_report(
            echo + "/chat/completions",
            CHAT_BODY,
            {"Authorization": "Bearer abc", "api-key": "short"},
        )
    assert "Authorization=[REDACTED] api-key=short" in str(info.value)


async def test_async_echoed_credentials_are_redacted(echo: str, logs: Any) -> None:
    async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as client:
        async with aconnect_usage(
            client, "POST", echo + "/responses/cut", json=RESPONSES_BODY, headers=AUTH,
            retrieval=FAST,
        ) as stream:  # fmt: skip
            async for _ in stream:
                pass
        with pytest.raises(APIStatusError) as info:
            async with aconnect_usage(
                client, "POST", echo + "/chat/completions", json=CHAT_BODY, headers=AUTH
            ):
                pass
    report = stream.report
    assert report is not None
    (retrieval,) = [a for a in report.attempts if a.source == "retrieval"]
    assert "[REDACTED]" in retrieval.reason and "[REDACTED]" in str(info.value)
    assert_clean(report, info.value)


def test_metering_transport_reports_never_carry_the_key() -> None:
    import httpx as _httpx
    import ssetally as _ssetally

    key = "sk-test-SECRETVALUE12345"
    body = (
        b'data: {"error": {"message": "invalid key ' + key.encode() + b'", "type": "auth"}}\n\n'
        b"data: [DONE]\n\n"
    )

    def upstream(request: _httpx.Request) -> _httpx.Response:
        return _httpx.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    reports: list[Any] = []
    transport = _ssetally.MeteringTransport(
        _httpx.MockTransport(upstream), on_report=lambda r, _req: reports.append(r)
    )
    with (
        _httpx.Client(transport=transport) as client,
        client.stream(
            "POST",
            "http://upstream.test/v1/chat/completions",
            headers={"Authorization": f"Bearer {key}"},
            json={"model": "m", "stream": True, "messages": []},
        ) as response,
    ):
        assert key.encode() in response.read()  # the caller's bytes are untouched
    assert len(reports) == 1
    assert reports[0].status == "failed"
    assert key not in repr(reports[0]) and key not in json.dumps(reports[0].to_dict())
    assert "[REDACTED]" in json.dumps(reports[0].error)
