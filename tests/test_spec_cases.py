"""SSE conformance cases (WHATWG HTML "Interpreting an event stream") for ssetally.

The cases live in ``tests/data/spec_cases.json`` (70 cases, see the ``source`` of each).
Cases 1-64 are about the byte-level decoder and run through ``ssetally.SSEDecoder``
under many chunkings; cases 54 and 65-70 carry a ``content_type`` and also run through
``ssetally.EventSource`` on an ``httpx.Response``.

A small pure-Python reference implementation of the spec (``reference_parse``) is the
oracle of the property-based tests; it is itself checked against every case.
"""

from __future__ import annotations

import ast
import base64
import itertools
import json
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import httpx
import pytest
import ssetally
from hypothesis import given, settings
from hypothesis import strategies as st

DATA_DIR = Path(__file__).parent / "data"
CASES: list[dict[str, Any]] = json.loads((DATA_DIR / "spec_cases.json").read_text(encoding="utf-8"))

# One dispatched event as (event, data, id, retry).
Ev = tuple[str, str, str, int | None]

U64_MAX = 2**64 - 1
CHUNKINGS = ("as-given", "bytewise", "every-split-with-empty")
# Inputs up to this size are also split into three pieces at every pair of positions.
THREE_WAY_MAX = 96


# --------------------------------------------------------------------------- helpers


def case_input(case: dict[str, Any]) -> bytes:
    return b"".join(base64.b64decode(c) for c in case["chunks_b64"])


def case_chunkings(case: dict[str, Any]) -> list[list[bytes]]:
    """The chunkings a case prescribes ("as given")."""
    data = case_input(case)
    if case["chunking"] == "bytewise":
        return [[data[i : i + 1] for i in range(len(data))]]
    if case["chunking"] == "every-split-with-empty":
        return [[data[:s], b"", data[s:]] for s in range(len(data) + 1)]
    return [[base64.b64decode(c) for c in case["chunks_b64"]]]


def expected_events(events: list[dict[str, Any]]) -> list[Ev]:
    return [(e["event"], e["data"], e["id"], e["retry"]) for e in events]


def as_tuple(event: object) -> Ev:
    assert isinstance(event, ssetally.ServerSentEvent), type(event)
    assert isinstance(event.event, str), event.event
    assert isinstance(event.data, str), event.data
    assert isinstance(event.id, str), event.id
    retry = event.retry
    assert retry is None or (isinstance(retry, int) and not isinstance(retry, bool)), retry
    return (event.event, event.data, event.id, retry)


def decode(chunks: Sequence[bytes], **options: Any) -> tuple[list[Ev], bool]:
    """Feed ``chunks`` to a fresh ``SSEDecoder``; return the events and ``finish()``."""
    decoder = ssetally.SSEDecoder(**options)
    out: list[Ev] = []
    for chunk in chunks:
        got = decoder.feed(chunk)
        assert isinstance(got, list), type(got)
        out.extend(as_tuple(e) for e in got)
    dropped = decoder.finish()
    assert isinstance(dropped, bool), type(dropped)
    return out, dropped


def case_id(case: dict[str, Any]) -> str:
    return f"{case['n']:02d}-{case['name']}"


DECODER_CASES = [c for c in CASES if c["n"] <= 64]
HTTP_CASES = [c for c in CASES if "content_type" in c]


# ------------------------------------------------------- reference implementation

_LINE_END = re.compile(r"\r\n|\r|\n")


def _valid_retry(value: str) -> bool:
    return bool(value) and all("0" <= ch <= "9" for ch in value) and int(value) <= U64_MAX


def reference_parse(stream: bytes, *, retry_only_events: bool = False) -> list[Ev]:
    """The WHATWG algorithm, written plainly over the whole stream.

    UTF-8 decode with replacement (one leading BOM stripped), split on CRLF / CR / LF,
    interpret line by line, discard whatever follows the last blank line. ``retry`` is
    the last valid value of the dispatched block; values beyond u64 are ignored (the
    decoder stores them as u64). With ``retry_only_events`` a block with a valid
    ``retry`` and no data yields an event with empty data (httpx-sse behaviour).
    """
    text = stream.decode("utf-8", "replace")
    text = text.removeprefix("\ufeff")
    lines = _LINE_END.split(text)
    lines.pop()  # an unterminated last line (or "") is never processed
    events: list[Ev] = []
    data, event_type, last_id = "", "", ""
    retry: int | None = None
    for line in lines:
        if line == "":
            if data:
                events.append((event_type or "message", data[:-1], last_id, retry))
            elif retry_only_events and retry is not None:
                events.append((event_type or "message", "", last_id, retry))
            data, event_type, retry = "", "", None
            continue
        if line.startswith(":"):
            continue
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "data":
            data += value + "\n"
        elif name == "event":
            event_type = value
        elif name == "id":
            if "\0" not in value:
                last_id = value
        elif name == "retry" and _valid_retry(value):
            retry = int(value)
    return events


# ------------------------------------------------------------- data file sanity


def test_case_file_is_complete() -> None:
    assert [c["n"] for c in CASES] == list(range(1, 71))
    names = [c["name"] for c in CASES]
    assert len(set(names)) == len(names)
    for case in CASES:
        assert case["chunking"] in CHUNKINGS, case_id(case)
        assert ast.literal_eval(case["input_repr"]) == case_input(case), case_id(case)
        assert case["source"], case_id(case)
        for key in ("expected", "httpx_sse"):
            for event in case.get(key, []):
                assert set(event) == {"event", "data", "id", "retry"}, case_id(case)
        if case["n"] <= 64:
            assert isinstance(case["finish_dropped"], bool), case_id(case)
    assert {c["n"] for c in CASES if c.get("expect_error")} == {65, 66, 70}
    assert {c["n"] for c in HTTP_CASES if not c["expect_error"]} == {54, 67, 68, 69}


@pytest.mark.parametrize("case", [c for c in CASES if not c.get("expect_error")], ids=case_id)
def test_reference_parser_agrees_with_case(case: dict[str, Any]) -> None:
    """The oracle used by the property tests reproduces every hand-written expectation."""
    assert reference_parse(case_input(case)) == expected_events(case["expected"])


# ------------------------------------------------------------------ decoder cases


@pytest.mark.parametrize("case", DECODER_CASES, ids=case_id)
def test_case_as_given(case: dict[str, Any]) -> None:
    want = expected_events(case["expected"])
    for chunks in case_chunkings(case):
        got, dropped = decode(chunks)
        assert got == want, f"chunks={chunks!r}"
        assert dropped is case["finish_dropped"], f"chunks={chunks!r}"


@pytest.mark.parametrize("case", DECODER_CASES, ids=case_id)
def test_case_whole(case: dict[str, Any]) -> None:
    got, dropped = decode([case_input(case)])
    assert got == expected_events(case["expected"])
    assert dropped is case["finish_dropped"]


@pytest.mark.parametrize("case", DECODER_CASES, ids=case_id)
def test_case_bytewise(case: dict[str, Any]) -> None:
    data = case_input(case)
    got, dropped = decode([data[i : i + 1] for i in range(len(data))])
    assert got == expected_events(case["expected"])
    assert dropped is case["finish_dropped"]


@pytest.mark.parametrize("case", DECODER_CASES, ids=case_id)
def test_case_every_two_way_split(case: dict[str, Any]) -> None:
    data = case_input(case)
    want = expected_events(case["expected"])
    for i in range(len(data) + 1):
        got, dropped = decode([data[:i], data[i:]])
        assert got == want, f"split at {i}: {data[:i]!r} | {data[i:]!r}"
        assert dropped is case["finish_dropped"], f"split at {i}"


@pytest.mark.parametrize(
    "case", [c for c in DECODER_CASES if len(case_input(c)) <= THREE_WAY_MAX], ids=case_id
)
def test_case_every_three_way_split(case: dict[str, Any]) -> None:
    data = case_input(case)
    want = expected_events(case["expected"])
    for i in range(len(data) + 1):
        for j in range(i, len(data) + 1):
            got, _ = decode([data[:i], data[i:j], data[j:]])
            assert got == want, f"splits at {i},{j}: {[data[:i], data[i:j], data[j:]]!r}"


def test_three_way_split_covers_most_cases() -> None:
    small = [c for c in DECODER_CASES if len(case_input(c)) <= THREE_WAY_MAX]
    assert len(small) >= 55


# ------------------------------------------------------------- httpx-sse option

# Cases whose output changes when retry-only blocks are dispatched (httpx-sse behaviour).
RETRY_ONLY_DIFFERS = {48}


def test_retry_only_events_case_48() -> None:
    case = CASES[47]
    assert case["name"] == "retry-only-block"
    data = case_input(case)
    want = expected_events(case["httpx_sse"])
    assert want == [("message", "", "", 10000)]
    assert decode([data], retry_only_events=True)[0] == want
    assert decode([data[i : i + 1] for i in range(len(data))], retry_only_events=True)[0] == want
    # The default (strict WHATWG) decoder dispatches nothing for the same bytes.
    assert decode([data])[0] == []


def test_retry_only_events_ignores_invalid_retry() -> None:
    assert decode([b"retry: 1667a\n\n"], retry_only_events=True)[0] == []
    assert decode([b"retry: 1667a\n\n"])[0] == []


@pytest.mark.parametrize("case", DECODER_CASES, ids=case_id)
def test_retry_only_events_other_cases_unchanged(case: dict[str, Any]) -> None:
    key = "httpx_sse" if case["n"] in RETRY_ONLY_DIFFERS else "expected"
    want = expected_events(case[key])
    assert reference_parse(case_input(case), retry_only_events=True) == want
    for chunks in case_chunkings(case):
        assert decode(chunks, retry_only_events=True)[0] == want


# ------------------------------------------------------------------- HTTP layer


class _ChunkStream(httpx.SyncByteStream):
    def __init__(self, chunks: Sequence[bytes]) -> None:
        self._chunks = list(chunks)

    def __iter__(self) -> Iterator[bytes]:
        yield from self._chunks


def _response(content_type: str, chunks: Sequence[bytes]) -> httpx.Response:
    return httpx.Response(200, headers={"content-type": content_type}, stream=_ChunkStream(chunks))


def _content_types(case: dict[str, Any]) -> list[str]:
    return [case["content_type"], *case.get("also_content_types", [])]


@pytest.mark.parametrize("case", HTTP_CASES, ids=case_id)
def test_http_content_type(case: dict[str, Any]) -> None:
    for content_type in _content_types(case):
        for chunks in case_chunkings(case):
            source = ssetally.EventSource(_response(content_type, chunks))
            if case["expect_error"]:
                events = source.iter_sse()
                with pytest.raises(ssetally.SSEError) as excinfo:
                    next(events)  # the check happens before the first event
                assert content_type in str(excinfo.value), (content_type, str(excinfo.value))
            else:
                got = [as_tuple(e) for e in source.iter_sse()]
                assert got == expected_events(case["expected"]), content_type


@pytest.mark.parametrize("case", DECODER_CASES, ids=case_id)
def test_http_layer_decodes_like_decoder(case: dict[str, Any]) -> None:
    """EventSource over text/event-stream gives the spec events (BOM, charset, ...).

    EventSource is the httpx-sse drop-in and decodes with ``retry_only_events=True``,
    so a retry-only block (case 48) yields the httpx-sse event there.
    """
    key = "httpx_sse" if case["n"] in RETRY_ONLY_DIFFERS else "expected"
    for chunks in case_chunkings(case):
        source = ssetally.EventSource(_response("text/event-stream", chunks))
        got = [as_tuple(e) for e in source.iter_sse()]
        assert got == expected_events(case[key]), f"chunks={chunks!r}"


# ------------------------------------------------------------- property tests

_SSE_TOKENS: list[bytes] = [
    b"data:",
    b"data: ",
    b"data",
    b"event:",
    b"event: ",
    b"id:",
    b"id: ",
    b"retry:",
    b"retry: ",
    b":",
    b": keep-alive",
    b" ",
    b"\r",
    b"\n",
    b"\r\n",
    b"\n\n",
    b"\r\n\r\n",
    b"\xef\xbb\xbf",  # BOM
    b"\xef",
    b"\xbb\xbf",
    b"\x00",
    b"x",
    b"message",
    b"123",
    b"0",
    b"-1",
    "é".encode(),
    "€".encode(),
    "известни".encode(),
    "😀".encode(),
    "\u2028".encode(),
    b"\xf0\x9f",  # truncated 4-byte sequence
    b"\x80",
    b"\xff",
    b"\xc3",
    b"\xed\xa0\x80",  # encoded surrogate
]

sse_ish_bytes = st.lists(
    st.one_of(st.sampled_from(_SSE_TOKENS), st.binary(max_size=3)), max_size=60
).map(b"".join)
any_stream = st.one_of(st.binary(max_size=300), sse_ish_bytes)


def _pieces(data: bytes, cuts: list[int]) -> list[bytes]:
    bounds = [0, *sorted(cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


@st.composite
def stream_and_pieces(draw: st.DrawFn) -> tuple[bytes, list[bytes]]:
    data = draw(any_stream)
    if draw(st.booleans()) and len(data) <= 200:
        return data, [data[i : i + 1] for i in range(len(data))]
    cuts = draw(st.lists(st.integers(0, len(data)), max_size=12))
    return data, _pieces(data, cuts)


@settings(max_examples=400, deadline=None)
@given(stream_and_pieces())
def test_property_pieces_equal_whole(sample: tuple[bytes, list[bytes]]) -> None:
    data, pieces = sample
    whole, whole_dropped = decode([data])
    split, split_dropped = decode(pieces)
    assert split == whole
    assert split_dropped is whole_dropped


@settings(max_examples=400, deadline=None)
@given(stream_and_pieces())
def test_property_matches_reference(sample: tuple[bytes, list[bytes]]) -> None:
    data, pieces = sample
    assert decode(pieces)[0] == reference_parse(data)


@settings(max_examples=200, deadline=None)
@given(stream_and_pieces())
def test_property_retry_only_events_matches_reference(sample: tuple[bytes, list[bytes]]) -> None:
    data, pieces = sample
    assert decode(pieces, retry_only_events=True)[0] == reference_parse(
        data, retry_only_events=True
    )
