"""Property tests (hypothesis) of the native parsers, through the Python API.

* ``SSEDecoder``: the events (and the oversized-event count carried by ``EventTooLargeError``)
  do not depend on how the bytes are cut into chunks, empty chunks included, for arbitrary
  and SSE-shaped bytes and for small ``max_event_size`` limits; with the default limit they
  equal a whole-input reference written here from the WHATWG algorithm; ``finish()`` always
  returns.
* ``UsageTap``: the reports (byte counts aside, whose sum is checked) do not depend on the
  chunking or on ``snapshot()`` calls, are deterministic, and ``finish()`` always returns a
  report whatever the bytes, API hint and limit.
* ``UsageChunkStripper``: chunk-invariant output; nothing stripped means output == input.
* ``LineDecoder``: chunk-invariant lines, equal to a regex split at CR, LF or CRLF.

Every test is bounded (``max_examples``), under 15 s in all. The Rust side of the same
properties runs under cargo-fuzz (``rust/fuzz``).
"""

from __future__ import annotations

import itertools
import re

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ssetally import (
    EventTooLargeError,
    LineDecoder,
    ServerSentEvent,
    SSEDecoder,
    StreamReport,
    UsageTap,
)
from ssetally._core import UsageChunkStripper

APIS = (
    "auto",
    "chat.completions",
    "completions",
    "responses",
    "assistants",
    "anthropic.messages",
    "gemini",
    "gemini.interactions",
    "cohere",
)
STATUSES = ("completed", "incomplete", "failed", "cancelled", "truncated")
OVERSIZED = re.compile(r"^(\d+) event\(s\) exceeded max_event_size=(\d+) bytes")
SETTINGS = settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ------------------------------------------------------------------------ strategies

#: Pieces SSE streams are made of, including the awkward ones: BOM, lone CR, split UTF-8,
#: NUL, long comment lines, JSON fragments of several APIs.
SSE_PIECES = [
    b"data: ",
    b"data:",
    b"data",
    b"event: ",
    b"event: message_delta",
    b"event: response.completed",
    b"id: 1",
    b"id: a\x00b",
    b"id",
    b"retry: 1500",
    b"retry: -1",
    b": keep-alive",
    b":" + b"p" * 40,
    b"\n",
    b"\r\n",
    b"\r",
    b"\n\n",
    b"\r\n\r\n",
    b"\xef\xbb\xbf",
    b"\xe2\x82",
    b"\xac",
    b"\xff",
    b"\x00",
    b"x" * 30,
    b"{",
    b"}",
    b"[DONE]",
    b'"usage":',
    b'{"id":"c1","object":"chat.completion.chunk","model":"m","choices":[]}',
    b'{"choices":[{"index":0,"delta":{"content":"hi"},"finish_reason":null}]}',
    b'{"choices":[{"index":0,"delta":{},"finish_reason":"stop"}]}',
    b'{"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}}',
    b'{"type":"response.created","response":{"id":"r1","model":"m"}}',
    b'{"type":"response.output_text.delta","delta":"Hi"}',
    (
        b'{"type":"response.completed","response":{"id":"r1","status":"completed",'
        b'"usage":{"input_tokens":4,"output_tokens":6,"total_tokens":10}}}'
    ),
    b'{"type":"message_start","message":{"id":"m1","model":"c","usage":{"input_tokens":9}}}',
    b'{"type":"message_delta","delta":{"stop_reason":"end_turn"},"usage":{"output_tokens":7}}',
    b'{"type":"message_stop"}',
    b'{"candidates":[{"content":{"parts":[{"text":"x"}]}}],"usageMetadata":{"promptTokenCount":2}}',
]

arbitrary_bytes = st.binary(max_size=600)
sse_bytes = st.lists(st.sampled_from(SSE_PIECES), max_size=60).map(b"".join)
any_bytes = st.one_of(arbitrary_bytes, sse_bytes)
limits = st.sampled_from([1, 8, 24, 64, 200, 16 * 1024 * 1024])


def cut(data: bytes, cuts: list[int]) -> list[bytes]:
    """``data`` cut at the given offsets (repeated offsets give empty chunks)."""
    bounds = [0, *sorted(c % (len(data) + 1) for c in cuts), len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds)]


chunk_cuts = st.lists(st.integers(0, 10_000), max_size=30)

# ------------------------------------------------------------------------ SSEDecoder


def decode(
    chunks: list[bytes], max_event_size: int, *, retry_only: bool = False
) -> tuple[list[ServerSentEvent], int, bool]:
    """Events, the oversized count from ``EventTooLargeError``, and ``finish()``."""
    decoder = SSEDecoder(max_event_size=max_event_size, retry_only_events=retry_only)
    events: list[ServerSentEvent] = []
    oversized = 0
    for chunk in chunks:
        try:
            events.extend(decoder.feed(chunk))
        except EventTooLargeError as exc:
            match = OVERSIZED.match(str(exc))
            assert match is not None, str(exc)
            assert int(match.group(2)) == max_event_size
            oversized += int(match.group(1))
            events.extend(exc.events)
    return events, oversized, decoder.finish()


def reference_events(data: bytes) -> tuple[list[ServerSentEvent], bool]:
    """The WHATWG "interpret an event stream" steps over the whole input (with ssetally's
    documented choices: one leading BOM stripped; ``retry`` only as ASCII digits and reported
    on its block's event; ``id`` with NUL ignored; each field decoded as UTF-8 with
    replacement). Returns the events and whether an unfinished event was dropped."""
    partial_bom = 0 < len(data) < 3 and b"\xef\xbb\xbf".startswith(data)
    if data.startswith(b"\xef\xbb\xbf"):
        data = data[3:]
    *lines, rest = re.split(rb"\r\n|\r|\n", data)
    events: list[ServerSentEvent] = []
    buf: list[bytes] = []
    event_type = b""
    last_id = b""
    retry: int | None = None
    started = False
    for line in lines:
        if not line:
            if buf:
                events.append(
                    ServerSentEvent(
                        event=event_type.decode("utf-8", "replace"),
                        data=b"\n".join(buf).decode("utf-8", "replace"),
                        id=last_id.decode("utf-8", "replace"),
                        retry=retry,
                    )
                )
            buf, event_type, retry, started = [], b"", None, False
            continue
        if line.startswith(b":"):
            continue
        started = True
        name, colon, value = line.partition(b":")
        if colon and value.startswith(b" "):
            value = value[1:]
        if name == b"data":
            buf.append(value)
        elif name == b"event":
            event_type = value
        elif name == b"id" and b"\x00" not in value:
            last_id = value
        elif name == b"retry" and re.fullmatch(rb"[0-9]+", value) and int(value) < 2**64:
            retry = int(value)
    return events, started or bool(rest) or partial_bom


@SETTINGS
@given(data=any_bytes, cuts=chunk_cuts, limit=limits, retry_only=st.booleans())
def test_decoder_chunk_invariance(
    data: bytes, cuts: list[int], limit: int, retry_only: bool
) -> None:
    whole = decode([data], limit, retry_only=retry_only)
    assert decode(cut(data, cuts), limit, retry_only=retry_only) == whole
    events, _, _ = whole
    for event in events:
        # The limit holds for every event that got through: its data and type took at most
        # ``limit`` bytes (a character decodes from at least one byte; "message" is the
        # default type, not bytes of the stream).
        typed = "" if event.event == "message" else event.event
        assert len(event.data) + len(typed) <= limit
        assert "\n" not in event.event and "\r" not in event.event


@SETTINGS
@given(data=any_bytes, cuts=chunk_cuts)
def test_decoder_matches_reference(data: bytes, cuts: list[int]) -> None:
    events, oversized, dropped = decode(cut(data, cuts), 16 * 1024 * 1024)
    expected_events, expected_dropped = reference_events(data)
    assert events == expected_events
    assert (oversized, dropped) == (0, expected_dropped)


@settings(max_examples=60, deadline=None)
@given(data=any_bytes, cuts=chunk_cuts)
def test_decoder_finish_always_returns_and_resets(data: bytes, cuts: list[int]) -> None:
    decoder = SSEDecoder(max_event_size=64)
    for chunk in cut(data, cuts):
        try:
            decoder.feed(chunk)
        except EventTooLargeError:
            pass
    assert decoder.finish() in (True, False)
    assert decoder.last_event_id == ""
    assert decoder.feed(b"data: again\n\n") == [ServerSentEvent(data="again")]


# ------------------------------------------------------------------------ UsageTap


def tap_reports(
    chunks: list[bytes], api: str, limit: int, *, snapshots: bool = False
) -> tuple[StreamReport, ...]:
    tap = UsageTap(api, max_event_size=limit)
    for i, chunk in enumerate(chunks):
        tap.feed(chunk)
        if snapshots and i % 3 == 1:
            assert tap.snapshot().status in STATUSES
    last = tap.finish()
    assert isinstance(last, StreamReport)
    assert tap.reports and tap.reports[-1] is last
    return tap.reports


def without_bytes(reports: tuple[StreamReport, ...]) -> list[StreamReport]:
    return [r.replace(bytes=0) for r in reports]


@SETTINGS
@given(
    data=any_bytes,
    cuts=chunk_cuts,
    api=st.sampled_from(APIS),
    limit=st.sampled_from([64, 200, 16 * 1024 * 1024]),
)
def test_tap_chunk_invariance(data: bytes, cuts: list[int], api: str, limit: int) -> None:
    whole = tap_reports([data], api, limit)
    pieces = tap_reports(cut(data, cuts), api, limit, snapshots=True)
    assert without_bytes(pieces) == without_bytes(whole)
    assert sum(r.bytes for r in pieces) == sum(r.bytes for r in whole) == len(data)
    for report in whole:
        assert report.status in STATUSES
        assert report.delta_chunks <= report.events
        if api != "auto":
            assert report.api == api
        if report.usage is not None:
            assert report.usage.source == "stream"
            assert isinstance(report.usage.raw, dict)


@settings(max_examples=60, deadline=None)
@given(data=any_bytes, api=st.sampled_from(APIS))
def test_tap_reports_are_deterministic_and_the_tap_reusable(data: bytes, api: str) -> None:
    tap = UsageTap(api)
    tap.feed(data)
    first = tap.finish()
    first_all = tap.reports
    tap.feed(data)
    assert tap.finish() == first
    assert tap.reports == first_all
    assert tap_reports([data], api, 16 * 1024 * 1024) == first_all
    assert first.to_dict() == tap_reports([data], api, 16 * 1024 * 1024)[-1].to_dict()


# ------------------------------------------------------------------------ stripper, lines


def strip(chunks: list[bytes]) -> tuple[bytes, int]:
    stripper = UsageChunkStripper()
    out = b"".join(stripper.feed(c) for c in chunks) + stripper.finish()
    return out, stripper.stripped


USAGE_CHUNK = b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":1,"completion_tokens":2}}'
stripper_streams = st.lists(
    st.sampled_from([*SSE_PIECES, USAGE_CHUNK, USAGE_CHUNK + b"\r\n\r\n", USAGE_CHUNK + b"\r\r"]),
    max_size=40,
).map(b"".join)


@SETTINGS
@given(data=st.one_of(arbitrary_bytes, stripper_streams), cuts=chunk_cuts)
def test_stripper_chunk_invariance(data: bytes, cuts: list[int]) -> None:
    out, stripped = strip([data])
    assert strip(cut(data, cuts)) == (out, stripped)
    if stripped == 0:
        assert out == data
    else:
        assert len(out) < len(data)


@SETTINGS
@given(data=st.one_of(arbitrary_bytes, stripper_streams), cuts=chunk_cuts)
def test_stripper_feeding_a_tap_is_the_two_fed_apart(data: bytes, cuts: list[int]) -> None:
    """``feed(data, tap=tap)``: the tap reads every byte as it came, the output is the same."""
    chunks = cut(data, cuts)
    stripper, apart = UsageChunkStripper(), UsageTap("auto", clock=True)
    expected = [stripper.feed(c) for c in chunks]
    for c in chunks:
        apart.feed(c)
    fused_stripper, fused = UsageChunkStripper(), UsageTap("auto", clock=True)
    assert [fused_stripper.feed(c, tap=fused) for c in chunks] == expected
    assert fused.bytes_fed == apart.bytes_fed == len(data)
    assert (fused.first_output_at is None) == (apart.first_output_at is None)
    assert fused.finish() == apart.finish()
    assert fused_stripper.stripped == stripper.stripped


def test_stripper_strips_something_in_the_generated_streams() -> None:
    """The stripping branch of the property above is reachable."""
    out, stripped = strip([b"data: x\n\n" + USAGE_CHUNK + b"\r\n\r\n" + b"data: [DONE]\n\n"])
    assert (out, stripped) == (b"data: x\n\ndata: [DONE]\n\n", 1)


def lines_of(chunks: list[bytes]) -> list[str]:
    decoder = LineDecoder()
    lines: list[str] = []
    for chunk in chunks:
        lines.extend(decoder.feed(chunk))
    return lines + decoder.finish()


@SETTINGS
@given(data=any_bytes, cuts=chunk_cuts)
def test_line_decoder_chunk_invariance(data: bytes, cuts: list[int]) -> None:
    whole = lines_of([data])
    assert lines_of(cut(data, cuts)) == whole
    *complete, rest = re.split(rb"\r\n|\r|\n", data)
    expected = [line.decode("utf-8", "replace") for line in complete]
    if rest:
        expected.append(rest.decode("utf-8", "replace"))
    assert whole == expected
