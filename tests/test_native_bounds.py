"""Bounded native buffers under hostile input, and the ``"usage":null`` members.

Memory: a 200 MiB line that never ends, fed at once or in 1 MiB chunks to ``SSEDecoder``,
``UsageTap``, ``LineDecoder`` and ``UsageChunkStripper`` with a 1 MiB limit, leaves the
resident set no more than twice the limit (plus slack) larger than before: nothing copies
more than the limit, and a discard gives the memory back. When memory runs out (an address
space limit in a child interpreter) a feed raises ``MemoryError`` or flags the discard; it
never aborts the process.

Stripper: ``max_event_size`` (keyword, default ``DEFAULT_MAX_EVENT_SIZE_BYTES``) bounds what
it holds; a longer block is forwarded unchanged and counted in ``oversized``. It removes the
``"usage":null`` member OpenAI writes into every chunk once ``include_usage`` is on, so the
recorded 2026 stream comes out as the same stream without the injection (built here by
parsing each line with ``json``), whatever the chunking; the 2024 captures, which have no
such member, lose only their usage-only chunk.
"""

from __future__ import annotations

import itertools
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from peak_memory import peak_reset, peak_rss
from ssetally._core import (
    DEFAULT_MAX_EVENT_SIZE_BYTES,
    EventTooLargeError,
    LineDecoder,
    SSEDecoder,
    UsageChunkStripper,
    UsageTap,
)

KiB = 1024
MiB = 1024 * KiB
LIMIT = 1 * MiB
HUGE = 200 * MiB
#: Growth of the resident set allowed after the feeds.
SLACK = 2 * LIMIT + 32 * MiB
CHAT = Path(__file__).parent / "data" / "corpus" / "openai-chat"
linux_only = pytest.mark.skipif(
    not sys.platform.startswith("linux"), reason="reads /proc/self/statm"
)

# ------------------------------------------------------------------------ memory


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def pieces(data: bytes, size: int | None) -> Iterator[bytes]:
    if size is None:
        yield data
        return
    view = memoryview(data)
    for at in range(0, len(data), size):
        yield bytes(view[at : at + size])


def feed_decoder(chunks: Iterator[bytes]) -> Callable[[bytes], object]:
    decoder = SSEDecoder(max_event_size=LIMIT)
    raised = 0
    for chunk in chunks:
        try:
            decoder.feed(chunk)
        except EventTooLargeError:
            raised += 1
    assert raised == 1

    def after(tail: bytes) -> object:
        return [e.data for e in decoder.feed(tail)]

    return after


def feed_tap(chunks: Iterator[bytes]) -> Callable[[bytes], object]:
    tap = UsageTap(max_event_size=LIMIT)
    for chunk in chunks:
        tap.feed(chunk)

    def after(tail: bytes) -> object:
        tap.feed(tail)
        (report,) = tap.finish_raw()
        return report[12]  # oversized_events

    return after


def feed_lines(chunks: Iterator[bytes]) -> Callable[[bytes], object]:
    lines = LineDecoder(max_line_size=LIMIT)
    raised = 0
    for chunk in chunks:
        try:
            lines.feed(chunk)
        except EventTooLargeError:
            raised += 1
    assert raised == 1

    def after(tail: bytes) -> object:
        return lines.feed(tail)

    return after


def feed_stripper(chunks: Iterator[bytes]) -> Callable[[bytes], object]:
    stripper = UsageChunkStripper(max_event_size=LIMIT)
    forwarded = 0
    for chunk in chunks:
        forwarded += len(stripper.feed(chunk))
    # Everything but at most the limit went straight through.
    assert forwarded >= len(b"data: ") + HUGE - LIMIT

    def after(tail: bytes) -> object:
        return stripper.feed(tail), stripper.oversized

    return after


TAIL = b"\n\ndata: ok\n\n"
FEEDERS: dict[str, tuple[Callable[[Iterator[bytes]], Callable[[bytes], object]], object]] = {
    "decoder": (feed_decoder, ["ok"]),
    "tap": (feed_tap, 1),
    "lines": (feed_lines, ["", "data: ok", ""]),
    "stripper": (feed_stripper, (b"\n\ndata: ok\n\n", 1)),
}


@pytest.fixture(scope="module")
def endless_line() -> bytes:
    return b"data: " + b"x" * HUGE


@linux_only
@pytest.mark.parametrize("chunk", [None, MiB], ids=["one-chunk", "1MiB-chunks"])
@pytest.mark.parametrize("kind", sorted(FEEDERS))
def test_an_endless_line_is_not_kept(kind: str, chunk: int | None, endless_line: bytes) -> None:
    feeder, after_tail = FEEDERS[kind]
    before = rss()
    after = feeder(pieces(endless_line, chunk))
    grown = rss() - before
    assert grown <= SLACK, f"{kind}: {grown / MiB:.0f} MiB retained"
    # The stream goes on normally after the discarded line.
    assert after(TAIL) == after_tail


def _feeder(kind: str, limit: int) -> Callable[[Any], object]:
    if kind == "decoder":
        decoder = SSEDecoder(max_event_size=limit)

        def feed(chunk: Any) -> object:
            try:
                return decoder.feed(chunk)
            except EventTooLargeError as exc:
                return exc.events

        return feed
    if kind == "lines":
        lines = LineDecoder(max_line_size=limit)

        def feed_lines(chunk: Any) -> object:
            try:
                return lines.feed(chunk)
            except EventTooLargeError as exc:
                return exc.lines

        return feed_lines
    if kind == "tap":
        return UsageTap(max_event_size=limit).feed
    return UsageChunkStripper(max_event_size=limit).feed


# ------------------------------------------------------------------------ peak memory, any buffer

PEAK_LINE = 64 * MiB
#: The buffer types a feed takes, each made from the line before the measure starts.
CONTAINERS: dict[str, Callable[[bytes], Any]] = {
    "bytes": lambda data: data,
    "bytearray": bytearray,
    "memoryview": memoryview,
    "memoryview-bytearray": lambda data: memoryview(bytearray(data)),
}


@pytest.fixture(scope="module")
def peak_line() -> bytes:
    return b"data: " + b"x" * PEAK_LINE


@linux_only
@pytest.mark.skipif(not peak_reset(), reason="the kernel does not let VmHWM be reset")
@pytest.mark.parametrize("chunk", [None, MiB], ids=["one-chunk", "1MiB-chunks"])
@pytest.mark.parametrize("container", sorted(CONTAINERS))
@pytest.mark.parametrize("kind", sorted(FEEDERS))
def test_peak_memory_of_an_endless_line_in_any_buffer(
    kind: str, container: str, chunk: int | None, peak_line: bytes
) -> None:
    """The peak resident set while a 64 MiB line that never ends is fed, in one chunk or in
    1 MiB chunks of ``bytes``, ``bytearray`` or ``memoryview``, grows by at most twice the
    1 MiB limit plus slack: no feed copies a buffer whole (one that is not ``bytes`` is read
    a 1 MiB window at a time), and the stripper hands back the very ``bytes`` it was given
    when it forwards all of it. Only a stripper given all of a ``bytearray`` at once may
    grow by its size more: it returns ``bytes``, so it must copy what it forwards, once."""
    whole = CONTAINERS[container](peak_line)
    feed = _feeder(kind, LIMIT)
    step = chunk or len(whole)
    copies = kind == "stripper" and chunk is None and "bytearray" in container
    allowed = 2 * LIMIT + 8 * MiB + 2 * (chunk or 0) + (len(whole) if copies else 0)
    peak_reset()
    before = peak_rss()
    if chunk is None:
        out = feed(whole)
        if kind == "stripper" and container in ("bytes", "memoryview"):
            assert out is peak_line
        del out
    else:
        for at in range(0, len(whole), step):
            feed(whole[at : at + step])
    grown = peak_rss() - before
    assert grown <= allowed, f"{kind} fed {container}: peak grew {grown / MiB:.1f} MiB"


def _chat(n: int) -> bytes:
    """A Chat stream with ``include_usage`` (CRLF lines, so windows cut CR from LF too)."""
    body = "".join(
        f'data: {{"id":"c","choices":[{{"index":0,"delta":{{"content":"w{i} \u00e9"}}}}],'
        f'"usage":null}}\r\n\r\n'
        for i in range(n)
    )
    usage = 'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}'
    return (body + usage + "\r\n\r\ndata: [DONE]\r\n\r\n").encode()


def _everything(data: Any) -> tuple[Any, ...]:
    """What each native class makes of ``data`` fed at once."""
    events = SSEDecoder().feed(data)
    lines = LineDecoder().feed(data)
    tap = UsageTap()
    tap.feed(data)
    (report,) = tap.finish_raw()
    stripper = UsageChunkStripper()
    out = stripper.feed(data)
    counters = (stripper.stripped, stripper.nulls_removed, stripper.oversized)
    return events, lines, report[:2], report[8:13], out, counters


def test_a_large_buffer_read_in_windows_decodes_like_bytes() -> None:
    """A ``bytearray`` or ``memoryview`` over 1 MiB is read a window at a time, and the
    windows cut events, lines and CRLFs: every class gives exactly what it gives for the
    same ``bytes``; so does a strided view (copied whole) and a view of part of ``bytes``.
    The stripper's output of a large chunk (counted, then written in place) is what it
    gives fed in small chunks."""
    data = _chat(40_000)
    assert len(data) > 3 * MiB
    want = _everything(data)
    assert want[5] == (1, 40_000, 0) and len(want[0]) == 40_002
    strided = memoryview(bytes(b for b in data for _ in (0, 1)))[::2]
    assert not strided.c_contiguous
    for buffer in (bytearray(data), memoryview(bytearray(data)), memoryview(data), strided):
        assert _everything(buffer) == want, type(buffer)
    part = memoryview(b"?" + data)[1:]
    assert _everything(part) == want
    stripper = UsageChunkStripper()
    small = b"".join(stripper.feed(data[i : i + 1000]) for i in range(0, len(data), 1000))
    assert small + stripper.finish() == want[4]


# ------------------------------------------------------------------------ out of memory

_OOM = """
import resource, sys
from ssetally._core import LineDecoder, SSEDecoder, UsageChunkStripper, UsageTap
GiB = 1 << 30
data = b"data: " + b"x" * (300 << 20)
kind = sys.argv[1]
if kind == "stripper-bytearray":
    data = bytearray(data)
with open("/proc/self/statm") as f:
    size = int(f.read().split()[0]) * resource.getpagesize()
resource.setrlimit(resource.RLIMIT_AS, (size + (96 << 20), resource.RLIM_INFINITY))
if kind == "tap":
    tap = UsageTap(max_event_size=GiB)
    tap.feed(data)
    tap.feed(b"\\n\\n")
    (report,) = tap.finish_raw()
    print("flagged" if report[12] == 1 and any("memory" in w for w in report[14]) else report)
elif kind == "stripper":
    # Too large to hold, so forwarded as it comes: nothing to copy, the very object back.
    stripper = UsageChunkStripper(max_event_size=GiB)
    out = stripper.feed(data)
    print("forwarded" if out is data and stripper.oversized == 1 else (len(out), stripper.oversized))
else:
    obj = {
        "decoder": lambda: SSEDecoder(max_event_size=GiB),
        "lines": lambda: LineDecoder(max_line_size=GiB),
        # A bytearray passes whole too, but its bytes must be copied: no room for that.
        "stripper-bytearray": lambda: UsageChunkStripper(max_event_size=GiB),
    }[kind]()
    try:
        obj.feed(data)
    except MemoryError:
        print("MemoryError" if getattr(obj, "oversized", 0) == 0 else "consumed")
    else:
        print("no error")
"""


@linux_only
@pytest.mark.parametrize(
    ("kind", "outcome"),
    [
        ("decoder", "MemoryError"),
        ("lines", "MemoryError"),
        ("stripper", "forwarded"),
        ("stripper-bytearray", "MemoryError"),
        ("tap", "flagged"),
    ],
)
def test_running_out_of_memory_does_not_abort(kind: str, outcome: str) -> None:
    """Under an address-space limit too small for the 300 MiB line, with a limit that
    would allow it, the feed fails cleanly instead of aborting the interpreter. The stripper
    needs no memory for a ``bytes`` line it cannot hold (it forwards the object itself,
    flagged oversized); a ``bytearray`` must be copied, and when it cannot be, nothing of it
    is consumed."""
    done = subprocess.run(
        [sys.executable, "-c", _OOM, kind], check=False, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().splitlines()[-1] == outcome


# ------------------------------------------------------------------------ stripper limit


def strip(chunks: list[bytes], **kwargs: int) -> tuple[bytes, tuple[int, int, int]]:
    stripper = UsageChunkStripper(**kwargs)
    out = b"".join(stripper.feed(c) for c in chunks) + stripper.finish()
    return out, (stripper.stripped, stripper.nulls_removed, stripper.oversized)


def test_stripper_limit_api() -> None:
    assert UsageChunkStripper().max_event_size == DEFAULT_MAX_EVENT_SIZE_BYTES == 16 * MiB
    assert UsageChunkStripper(max_event_size=100).max_event_size == 100
    with pytest.raises(ValueError, match="positive"):
        UsageChunkStripper(max_event_size=0)
    with pytest.raises(TypeError):
        UsageChunkStripper(100)  # type: ignore[misc]


USAGE = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}\r\n\r\n'
CONTENT = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}],"usage":null}\n\n'
CONTENT_CUT = b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n'
BIG = b'data: {"id":"c","choices":[{"delta":{"content":"' + b"y" * 500 + b'"}}],"usage":null}\n\n'


def test_a_block_over_the_limit_is_forwarded_unstripped() -> None:
    stream = CONTENT + BIG + USAGE + b"data: [DONE]\n\n"
    assert strip([stream], max_event_size=len(USAGE)) == (
        CONTENT_CUT + BIG + b"data: [DONE]\n\n",
        (1, 1, 1),
    )
    # A usage chunk longer than the limit too: it reaches the caller unchanged.
    assert strip([stream], max_event_size=len(USAGE) - 3) == (
        CONTENT_CUT + BIG + USAGE + b"data: [DONE]\n\n",
        (0, 1, 2),
    )


blocks = st.lists(
    st.sampled_from([USAGE, CONTENT, BIG, b": keep-alive\r\r", b"data: [DONE]\r\n\r\n", b"\r\n"]),
    max_size=12,
).map(b"".join)


@settings(max_examples=150, deadline=None)
@given(data=blocks, cuts=st.lists(st.integers(min_value=0, max_value=4000), max_size=12))
def test_stripper_limit_does_not_depend_on_chunking(data: bytes, cuts: list[int]) -> None:
    bounds = sorted({0, len(data), *(c % (len(data) + 1) for c in cuts)})
    chunks = [data[a:b] for a, b in itertools.pairwise(bounds)]
    for limit in (64, len(USAGE) - 1, 300, DEFAULT_MAX_EVENT_SIZE_BYTES):
        assert strip(chunks, max_event_size=limit) == strip([data], max_event_size=limit)
        assert strip(list(map(bytes, [[b] for b in data])), max_event_size=limit) == strip(
            [data], max_event_size=limit
        )


# ------------------------------------------------------------------------ "usage": null


def test_null_usage_members_are_removed_in_any_position() -> None:
    cases = {
        b'data: {"choices":[{}],"usage":null}\n\n': b'data: {"choices":[{}]}\n\n',
        b'data: {"choices": [{}], "usage": null}\n\n': b'data: {"choices": [{}]}\n\n',
        b'data: {"usage":null,"id":"x","choices":[{}]}\n\n': b'data: {"id":"x","choices":[{}]}\n\n',
        b'data: {"usage": null, "choices": []}\r\n\r\n': b'data: {"choices": []}\r\n\r\n',
        b'data: {"choices":[{}],"usage":null,"obfuscation":"ab"}\r\r': (
            b'data: {"choices":[{}],"obfuscation":"ab"}\r\r'
        ),
    }
    for block, want in cases.items():
        assert strip([block]) == (want, (0, 1, 0)), block


def test_everything_else_with_a_usage_member_is_kept() -> None:
    kept = [
        # a real usage object on a content chunk
        b'data: {"choices":[{}],"usage":{"total_tokens":3}}\n\n',
        # not a chat chunk: a Responses event
        b'event: response.created\ndata: {"type":"response.created","usage":null}\n\n',
        b'data: {"response":{"usage":null}}\n\n',
        # JSON that does not parse, or trailing bytes
        b'data: {"choices":[{}],"usage":null\n\n',
        b'data: {"choices":[{}],"usage":null} x\n\n',
        b'data: {"choices":[{}],"usage":nul}\n\n',
        # a nested usage
        b'data: {"choices":[{"usage":null}]}\n\n',
        # an unfinished block
        b'data: {"choices":[{}],"usage":null}\n',
    ]
    for block in kept:
        assert strip([block]) == (block, (0, 0, 0)), block


def uninjected(line: bytes) -> bytes | None:
    """The chunk OpenAI sends without ``include_usage``: no usage-only chunk, and no
    ``usage`` member in the others (JSON re-serialised compactly, as recorded)."""
    obj = json.loads(line)
    assert json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode() == line
    if obj["choices"] == [] and isinstance(obj.get("usage"), dict):
        return None
    assert obj.pop("usage") is None
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def framed(lines: list[bytes], crlf: bool) -> bytes:
    out = b"".join(b"data: " + line + b"\n\n" for line in lines) + b"data: [DONE]\n\n"
    return out.replace(b"\n", b"\r\n") if crlf else out


@pytest.mark.parametrize("crlf", [False, True], ids=["lf", "crlf"])
def test_the_2026_capture_becomes_the_uninjected_stream(crlf: bool) -> None:
    lines = [l for l in (CHAT / "openai-text.chunks.txt").read_bytes().split(b"\n") if l]
    assert all(b'"usage":null' in l for l in lines[:-1])
    expected = framed([u for u in map(uninjected, lines) if u is not None], crlf)
    stream = framed(lines, crlf)
    want = (expected, (1, len(lines) - 1, 0))
    assert strip([stream]) == want
    for size in (1, 7, 333, 4096):
        assert strip([stream[i : i + size] for i in range(0, len(stream), size)]) == want


@pytest.mark.parametrize("name", sorted(p.name for p in CHAT.glob("*.bin")))
def test_the_2024_captures_lose_only_their_usage_chunk(name: str) -> None:
    raw = (CHAT / name).read_bytes()
    blocks = raw.split(b"\n\n")
    assert blocks[-1] == b""
    usage_blocks = [b for b in blocks if b'"choices":[]' in b]
    assert len(usage_blocks) == 1 and b'"usage":{' in usage_blocks[0]
    content = [b for b in blocks[:-1] if b not in usage_blocks]
    assert not any(b"usage" in b for b in content)
    expected = b"".join(b + b"\n\n" for b in content)
    assert strip([raw]) == (expected, (1, 0, 0))
    assert strip([raw[i : i + 13] for i in range(0, len(raw), 13)]) == (expected, (1, 0, 0))


# ------------------------------------------------------------------------ any chunking (property)

#: The property's limit: small, so an unbounded buffer (the whole 24 MiB line) stands out from
#: the allowed growth by far.
PROPERTY_LIMIT = 64 * KiB
PROPERTY_LINE = 24 * MiB


#: The hostile line once per run (24 MiB); each example cuts it differently.
_LINE = b"x" * PROPERTY_LINE


@linux_only
@pytest.mark.skipif(not peak_reset(), reason="the kernel does not let VmHWM be reset")
@settings(max_examples=12, deadline=None)
@given(
    kind=st.sampled_from(sorted(FEEDERS)),
    head=st.sampled_from([b"", b"data: ", b"data: {}\n\n: c\ndata: ", b"event: x\nid: 1\ndata:"]),
    sizes=st.lists(st.integers(min_value=64 * KiB, max_value=2 * MiB), min_size=1, max_size=6),
    small=st.integers(min_value=16, max_value=4 * KiB),
)
def test_peak_memory_stays_within_the_limit_for_any_chunking(
    kind: str, head: bytes, sizes: list[int], small: int
) -> None:
    """Property: whatever the chunking, the peak resident set while feeding a 24 MiB line
    grows by no more than twice the 64 KiB limit, plus the largest chunk (each is a fresh
    ``bytes``) and allocator slack. The first 256 KiB (where the limit is crossed) go in
    ``small``-byte pieces, the rest in chunks cycling through ``sizes``."""
    feed = _feeder(kind, PROPERTY_LIMIT)
    data = head + _LINE
    tiny_span = 4 * PROPERTY_LIMIT
    peak_reset()
    before = peak_rss()
    for at in range(0, tiny_span, small):
        feed(data[at : min(at + small, tiny_span)])
    at, i = tiny_span, 0
    while at < len(data):
        step = sizes[i % len(sizes)]
        feed(data[at : at + step])
        at += step
        i += 1
    feed(b"\n\ndata: after\n\n")
    grown = peak_rss() - before
    assert grown <= 2 * PROPERTY_LIMIT + 2 * max(sizes) + 8 * MiB, (
        f"{kind}: peak grew {grown / MiB:.1f} MiB over {len(data) / MiB:.0f} MiB fed"
    )
