"""SSEDecoder and LineDecoder used from several threads.

One decoder per thread must give every thread exactly its own events. A decoder shared
between threads is a misuse that must fail cleanly: ``SSEDecoder.feed`` releases the
interpreter while it decodes a chunk of 64 KiB or more, so a second thread calling into the
same decoder meanwhile gets PyO3's ``RuntimeError`` ("Already borrowed" / "Already mutably
borrowed") instead of touching the decoder's state. A call that succeeds must return exactly
the events of its own chunk.
"""

from __future__ import annotations

import random
import re
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import pytest
from ssetally import LineDecoder, ServerSentEvent, SSEDecoder

THREADS = 8
STREAMS = 64
BORROW_ERROR = re.compile(r"^Already (mutably )?borrowed$", re.IGNORECASE)
TERMINATORS = ["\n", "\r\n", "\r"]
ALPHABET = "abcxyz0189 :{}\"'\u00e9\u20ac\U0001f600\u2028\t"
TEXT = "".join(random.Random(0).choices(ALPHABET, k=1 << 16))


def random_text(rng: random.Random, longest: int) -> str:
    """A random slice of TEXT (faster than drawing every character)."""
    start = rng.randrange(len(TEXT) - longest)
    return TEXT[start : start + rng.randint(0, longest)]


@dataclass(frozen=True)
class Stream:
    data: bytes
    events: list[ServerSentEvent]
    chunks: list[bytes]


def _lines_to_bytes(lines: Sequence[str], rng: random.Random) -> bytes:
    """Joins lines with random terminators, never letting a CR and the LF of the next
    terminator form a single CRLF by accident."""
    out: list[str] = []
    previous = ""
    for line in lines:
        choices = TERMINATORS
        if previous == "\r" and line == "":
            choices = ["\r", "\r\n"]
        previous = rng.choice(choices)
        out.append(line + previous)
    return "".join(out).encode()


def _chunk(data: bytes, rng: random.Random, kind: int) -> list[bytes]:
    if kind == 0:  # one chunk: decoded with the interpreter released
        return [data]
    if kind == 1:  # small chunks
        low, high = 1, 200
    else:  # chunks around the 64 KiB threshold
        low, high = 60 * 1024, 100 * 1024
    chunks = []
    i = 0
    while i < len(data):
        size = rng.randint(low, high)
        chunks.append(data[i : i + size])
        i += size
    return chunks


def make_stream(seed: int, n_events: int = 500) -> Stream:
    """A random event stream (> 64 KiB) and the events it must decode to."""
    rng = random.Random(seed)
    lines: list[str] = []
    events: list[ServerSentEvent] = []
    last_id = ""
    for index in range(n_events):
        if rng.random() < 0.1:
            lines.append(": keep-alive")
        event = rng.choice(["", "delta", "ping", "caf\u00e9"])
        if event:
            lines.append(f"event: {event}")
        if rng.random() < 0.2:
            last_id = f"s{seed}-{index}"
            lines.append(f"id: {last_id}")
        retry = rng.randint(0, 10_000) if rng.random() < 0.05 else None
        if retry is not None:
            lines.append(f"retry: {retry}")
        data_lines = [random_text(rng, 150) for _ in range(rng.randint(1, 3))]
        lines.extend(f"data: {d}" for d in data_lines)
        lines.append("")
        events.append(
            ServerSentEvent(event=event, data="\n".join(data_lines), id=last_id, retry=retry)
        )
    data = _lines_to_bytes(lines, rng)
    assert len(data) > 64 * 1024
    return Stream(data, events, _chunk(data, rng, seed % 3))


def decode(stream: Stream) -> list[ServerSentEvent]:
    decoder = SSEDecoder()
    events: list[ServerSentEvent] = []
    for chunk in stream.chunks:
        events.extend(decoder.feed(chunk))
    assert decoder.finish() is False
    return events


def test_one_decoder_per_thread() -> None:
    streams = [make_stream(seed) for seed in range(STREAMS)]
    assert {len(s.chunks) == 1 for s in streams} == {True, False}
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(decode, streams))
    for stream, events in zip(streams, results):
        assert events == stream.events


def split_lines(chunks: Sequence[bytes]) -> list[str]:
    decoder = LineDecoder()
    lines: list[str] = []
    for chunk in chunks:
        lines.extend(decoder.feed(chunk))
    lines.extend(decoder.finish())
    return lines


def test_one_line_decoder_per_thread() -> None:
    cases: list[tuple[list[bytes], list[str]]] = []
    for seed in range(STREAMS):
        rng = random.Random(seed)
        lines = [random_text(rng, 80) for _ in range(1500)]
        data = _lines_to_bytes(lines, rng)
        cases.append((_chunk(data, rng, seed % 3), lines))
    with ThreadPoolExecutor(max_workers=THREADS) as pool:
        results = list(pool.map(split_lines, [chunks for chunks, _ in cases]))
    for (_, lines), got in zip(cases, results):
        assert got == lines


# --------------------------------------------------------------------------- shared decoder


def big_chunk(tag: str, size: int = 4 * 1024 * 1024) -> tuple[bytes, list[ServerSentEvent]]:
    """About ``size`` bytes of complete events, each with its own id, so that the events a
    successful ``feed`` returns do not depend on what other threads fed before."""
    payload = "x" * 150
    parts: list[bytes] = []
    events: list[ServerSentEvent] = []
    total = 0
    index = 0
    while total < size:
        event_id = f"{tag}-{index}"
        data = f'{{"n":{index},"p":"{payload}"}}'
        part = f"id: {event_id}\nevent: {tag}\ndata: {data}\n\n".encode()
        parts.append(part)
        events.append(ServerSentEvent(event=tag, data=data, id=event_id))
        total += len(part)
        index += 1
    return b"".join(parts), events


@dataclass
class Outcome:
    ok: int = 0
    busy: int = 0


def race(calls: Sequence[Callable[[], None]], outcome: Outcome, failures: list[Exception]) -> None:
    """Runs the calls in threads released together by a barrier."""
    barrier = threading.Barrier(len(calls))
    lock = threading.Lock()

    def run(call: Callable[[], None]) -> None:
        barrier.wait()
        try:
            call()
        except RuntimeError as exc:
            if not BORROW_ERROR.match(str(exc)):
                with lock:
                    failures.append(exc)
            with lock:
                outcome.busy += 1
        except AssertionError as exc:  # reported by the test, not lost in the thread
            with lock:
                failures.append(exc)
        else:
            with lock:
                outcome.ok += 1

    threads = [threading.Thread(target=run, args=(call,)) for call in calls]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


REPETITIONS = 12


def test_shared_decoder_fails_cleanly() -> None:
    chunks = [big_chunk(tag) for tag in ("alpha", "beta")]
    final_ids = {"", *(events[-1].id for _, events in chunks)}
    decoder = SSEDecoder()
    outcome = Outcome()
    failures: list[Exception] = []

    def feeder(data: bytes, expected: list[ServerSentEvent]) -> Callable[[], None]:
        def call() -> None:
            events = decoder.feed(data)
            # A call that got the decoder returns exactly its own events.
            assert len(events) == len(expected)
            assert events == expected

        return call

    def reader() -> None:
        assert decoder.last_event_id in final_ids

    calls = [feeder(data, expected) for data, expected in chunks] + [reader]
    for _ in range(REPETITIONS):
        race(calls, outcome, failures)
        if failures:
            raise failures[0]

    assert outcome.ok + outcome.busy == REPETITIONS * len(calls)
    # With a barrier and 4 MiB chunks, threads meet inside feed(): a clean refusal.
    assert outcome.busy >= 1
    assert outcome.ok >= REPETITIONS  # at least one call of each round got the decoder
    # The decoder is intact after all the refused calls.
    assert decoder.feed(b"id: tail\ndata: tail\n\n") == [ServerSentEvent(data="tail", id="tail")]
    assert decoder.last_event_id == "tail"
    assert decoder.finish() is False


def test_shared_line_decoder_fails_cleanly() -> None:
    """LineDecoder shared between threads: each call that succeeds returns exactly its
    own lines (chunks end on a line boundary), any refusal is PyO3's clean RuntimeError.

    A refusal is not required here: LineDecoder.feed keeps the interpreter, so on a build
    with the GIL the calls simply take turns.
    """
    decoder = LineDecoder()
    inputs: list[tuple[bytes, list[str]]] = []
    for tag in ("alpha", "beta", "gamma"):
        lines = [f"{tag} {i} \u00e9\u20ac" for i in range(100_000)]
        inputs.append((("\r\n".join(lines) + "\r\n").encode(), lines))
    outcome = Outcome()
    failures: list[Exception] = []

    def feeder(data: bytes, expected: list[str]) -> Callable[[], None]:
        def call() -> None:
            assert decoder.feed(data) == expected

        return call

    calls = [feeder(data, expected) for data, expected in inputs]
    for _ in range(3):
        race(calls, outcome, failures)
        if failures:
            raise failures[0]
    assert outcome.ok >= 3
    assert outcome.ok + outcome.busy == 3 * len(calls)
    assert decoder.feed(b"end\r") == ["end"]
    assert decoder.feed(b"\n") == []  # the LF of a CRLF split across feeds
    assert decoder.finish() == []


@pytest.mark.parametrize("size", [64 * 1024 - 1, 64 * 1024])
def test_chunks_at_the_threshold(size: int) -> None:
    """Chunks just under and at the size where feed releases the interpreter decode alike."""
    event = b"data: " + b"y" * 94 + b"\n\n"
    data = (event * (size // len(event) + 1))[:size]
    expected = [ServerSentEvent(data="y" * 94)] * (size // len(event))
    decoder = SSEDecoder()
    assert decoder.feed(data) == expected
    assert size % len(event) != 0  # the chunk ends inside an event
    assert decoder.feed(event[size % len(event) :]) == [ServerSentEvent(data="y" * 94)]
    assert decoder.finish() is False
