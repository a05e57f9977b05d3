"""Recorded LLM streams, framed as they go over the wire, through ``ssetally.SSEDecoder``.

Every corpus stream (``tests/data/corpus``, see MANIFEST.md there) in every variant
(LF / CRLF line endings, with and without ``: keep-alive`` comment blocks, with and
without the Open Responses ``[DONE]`` for Responses streams) is fed whole and in
several deterministic chunkings (cuts after every CR and inside every multi-byte
character, and random 1 byte .. 4 KiB pieces with 1-byte runs). The decoded events
must be exactly the recorded JSON payloads, in order, with the right event names.
"""

from __future__ import annotations

import json
import random
import re
import zlib
from collections.abc import Sequence

import pytest
import ssetally
from corpus import (
    CORPUS_DIR,
    DONE,
    KEEPALIVE,
    RAW_EVENT_COUNTS,
    RAW_TRUNCATED,
    CorpusFile,
    Variant,
    boundary_chunking,
    chunkings,
    corpus_files,
    event_type,
    expected_event_count,
    expected_events,
    json_lines,
    random_chunking,
    rebuild,
    rebuild_variant,
    variants,
)

FILES = corpus_files()
STREAMS = [(f, v) for f in FILES for v in variants(f)]

Ev = tuple[str, str, str, int | None]


def stream_id(param: tuple[CorpusFile, Variant]) -> str:
    f, v = param
    return f"{f.name}[{v.label}]"


def decode(chunks: Sequence[bytes]) -> tuple[list[Ev], bool]:
    decoder = ssetally.SSEDecoder()
    out: list[Ev] = []
    for chunk in chunks:
        for e in decoder.feed(chunk):
            out.append((e.event, e.data, e.id, e.retry))
    dropped = decoder.finish()
    assert isinstance(dropped, bool)
    return out, dropped


def simple_raw_events(data: bytes) -> tuple[list[tuple[str, str]], bool]:
    """Independent parser for the raw captures only (blank-line separated blocks of
    ``event: x`` / ``data: y`` lines and comments, LF or CRLF). Returns the
    (event, data) pairs of complete blocks and whether a partial block was left over."""
    text = data.decode("utf-8").replace("\r\n", "\n")
    assert "\r" not in text
    blocks = text.split("\n\n")
    tail = blocks.pop()
    events: list[tuple[str, str]] = []
    for block in blocks:
        name, values = "message", []
        for line in block.split("\n"):
            if line.startswith(":"):
                continue
            field, sep, value = line.partition(": ")
            assert sep, f"unexpected line {line!r}"
            if field == "event":
                name = value
            elif field == "data":
                values.append(value)
            else:
                raise AssertionError(f"unexpected field {line!r}")
        if values:
            events.append((name, "\n".join(values)))
    return events, tail != ""


def want_events(f: CorpusFile, v: Variant) -> list[tuple[str, str]]:
    if f.is_raw:
        return simple_raw_events(rebuild_variant(f, v))[0]
    return expected_events(f, done=v.done)


def assert_same_events(got: list[tuple[str, str]], want: list[tuple[str, str]], ctx: str) -> None:
    for i, (g, w) in enumerate(zip(got, want)):
        if g != w:
            pytest.fail(f"{ctx}: event {i} differs\n  got  {g!r:.400}\n  want {w!r:.400}")
    assert len(got) == len(want), f"{ctx}: {len(got)} events, expected {len(want)}"


# ------------------------------------------------------------------- streams


@pytest.mark.parametrize("param", STREAMS, ids=stream_id)
def test_stream_decodes_to_recorded_payloads(param: tuple[CorpusFile, Variant]) -> None:
    f, v = param
    data = rebuild_variant(f, v)
    count = expected_event_count(f, done=v.done)
    want = want_events(f, v)
    assert len(want) == count
    seed = zlib.crc32(stream_id(param).encode())
    for k, chunks in enumerate([[data], *chunkings(data, seed)]):
        assert b"".join(chunks) == data
        ctx = f"{stream_id(param)} chunking #{k} ({len(chunks)} pieces)"
        events, dropped = decode(chunks)
        assert len(events) == count, f"{ctx}: {len(events)} events, expected {count}"
        assert_same_events([(e[0], e[1]) for e in events], want, ctx)
        assert all(e[2] == "" and e[3] is None for e in events), f"{ctx}: id/retry set"
        assert dropped is (f.name in RAW_TRUNCATED), f"{ctx}: finish() returned {dropped}"
        if f.has_event_lines or f.name == "anthropic/basic_response.txt":
            for name, payload, _, _ in events:
                if payload != "[DONE]":
                    assert name == event_type(payload.encode("utf-8")), ctx


@pytest.mark.parametrize("f", [f for f in FILES if not f.is_raw], ids=lambda f: f.name)
def test_payloads_are_the_original_lines_byte_for_byte(f: CorpusFile) -> None:
    lines = json_lines(f)
    for done in f.done_variants:
        events, _ = decode([rebuild(f, crlf=True, keepalive=True, done=done)])
        payloads = [e[1].encode("utf-8") for e in events]
        tail = [b"[DONE]"] if (f.family == "chat" or done) else []
        assert payloads == lines + tail


# ------------------------------------------------------- corpus and helpers


def _manifest_rows() -> dict[str, tuple[int, int]]:
    """file -> (bytes, non-empty lines) from the MANIFEST.md "Files" table."""
    rows: dict[str, tuple[int, int]] = {}
    text = (CORPUS_DIR / "MANIFEST.md").read_text(encoding="utf-8")
    for line in text.splitlines():
        m = re.match(r"\| `([^`]+)` \|.*\| ([\d,]+) \| (\d+) \| [^|]*\|$", line)
        if m:
            rows[m.group(1)] = (int(m.group(2).replace(",", "")), int(m.group(3)))
    return rows


def test_manifest_describes_every_file() -> None:
    rows = _manifest_rows()
    assert sorted(rows) == [f.name for f in FILES]
    assert len(FILES) == 59
    for f in FILES:
        raw = f.path.read_bytes()
        size, lines = rows[f.name]
        assert len(raw) == size, f.name
        assert sum(1 for line in raw.split(b"\n") if line) == lines, f.name


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_expected_count_matches_manifest(f: CorpusFile) -> None:
    lines = _manifest_rows()[f.name][1]
    if f.is_raw:
        events, partial = simple_raw_events(f.path.read_bytes())
        assert len(events) == RAW_EVENT_COUNTS[f.name]
        assert partial is (f.name in RAW_TRUNCATED)
        return
    for done in f.done_variants:
        plus_done = 1 if (f.family == "chat" or done) else 0
        assert expected_event_count(f, done=done) == lines + plus_done


def test_families_match_line_contents() -> None:
    for f in FILES:
        if f.is_raw:
            continue
        for line in json_lines(f):
            obj = json.loads(line)
            if f.family == "chat":
                assert "choices" in obj, f.name
            elif f.family == "gemini":
                assert "type" not in obj, f.name
            elif f.family == "responses":
                t = event_type(line)
                assert t.startswith("response.") or t == "error", (f.name, t)
            elif f.family == "anthropic":
                assert event_type(line) in {
                    "message_start",
                    "content_block_start",
                    "content_block_delta",
                    "content_block_stop",
                    "message_delta",
                    "message_stop",
                    "ping",
                    "error",
                }, f.name
            else:
                assert f.family == "cohere"
                assert "-" in event_type(line), f.name


def test_rebuild_framing_examples() -> None:
    by_name = {f.name: f for f in FILES}
    chat = by_name["mistral/mistral-tool-call.chunks.txt"]
    lines = json_lines(chat)
    assert rebuild(chat) == b"".join(b"data: " + x + b"\n\n" for x in lines) + DONE
    assert rebuild(chat, keepalive=True) == KEEPALIVE.join(
        [b"data: " + x + b"\n\n" for x in lines] + [DONE]
    )
    assert rebuild(chat, crlf=True) == rebuild(chat).replace(b"\n", b"\r\n")
    resp = by_name["openai-responses/openai-error.1.chunks.txt"]
    first = json_lines(resp)[0]
    assert rebuild(resp).startswith(b"event: response.created\ndata: " + first + b"\n\n")
    assert not rebuild(resp).endswith(DONE)
    assert rebuild(resp, done=True) == rebuild(resp) + DONE
    gemini = by_name["google/google-tool-call.chunks.txt"]
    assert rebuild(gemini) == b"".join(b"data: " + x + b"\n\n" for x in json_lines(gemini))
    raw = by_name["anthropic/basic_response.txt"]
    assert rebuild(raw) == raw.path.read_bytes()
    with pytest.raises(ValueError):
        rebuild(raw, done=True)


def test_chunkings_are_deterministic_and_lossless() -> None:
    data = rebuild(
        next(f for f in FILES if f.name == "openai-chat/openai-text.chunks.txt"),
        crlf=True,
        keepalive=True,
    )
    first = list(chunkings(data, 7))
    assert first == list(chunkings(data, 7))
    assert first != list(chunkings(data, 8))
    for chunks in first:
        assert b"".join(chunks) == data
        assert all(1 <= len(c) <= 4096 for c in chunks)
    pieces = first[1:]
    assert any(len(c) == 1 for chunks in pieces for c in chunks)
    assert any(len(c) > 1024 for chunks in pieces for c in chunks)
    # The boundary chunking cuts every CRLF and every multi-byte character.
    cut = boundary_chunking(data)
    assert sum(c.endswith(b"\r") for c in cut) == data.count(b"\r")
    assert sum(c[-1] >= 0xC0 for c in cut) == sum(b >= 0xC0 for b in data)
    run = random_chunking(b"x" * 50_000, random.Random(1))
    assert b"".join(run) == b"x" * 50_000
    assert max(len(c) for c in run) <= 4096
