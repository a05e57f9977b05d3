"""``UsageTap(collect_output="lazy")``: the output read only where an estimate needs it.

Over every recorded stream (and its CRLF and keep-alive variants), in several chunkings,
whole, cut short at random points and with its usage events removed, a lazy tap gives the
reports of an eager one (``collect_output=True``), and its output wherever a response came
without usage; where every response gave its usage it gives none. Streams longer than the
bytes or reads a lazy tap holds are collected as they come from there on, with the same
result. The metering pipeline uses it when the output is not kept (the proxy's records).
"""

from __future__ import annotations

import random
from typing import Any

import pytest
from corpus import CorpusFile, chunkings, corpus_files, rebuild_variant, variants
from ssetally import UsageTap
from ssetally._core import MAX_HELD_BYTES, MAX_HELD_READS
from ssetally._metering import StreamMeter

FILES = corpus_files()


def _read(tap: UsageTap, pieces: list[bytes]) -> tuple[list[Any], list[dict[str, Any]]]:
    for piece in pieces:
        tap.feed(piece)
    reports = list(tap.finish_raw())
    return reports, tap.outputs()


def _same(pieces: list[bytes], label: str) -> bool:
    """Checks a lazy tap against an eager one on ``pieces``; whether usage was missing."""
    eager = _read(UsageTap(collect_output=True), pieces)
    lazy_tap = UsageTap(collect_output="lazy")
    lazy = _read(lazy_tap, pieces)
    assert lazy[0] == eager[0], label
    missing = any(report[0] is None for report in lazy[0])
    if missing:
        assert lazy[1] == eager[1], label
        assert lazy_tap.output() == eager[1][-1], label
    else:
        assert lazy[1] == [], label
        assert lazy_tap.output() is None, label
    return missing


def _without_usage(data: bytes) -> bytes:
    """``data`` less every event block that holds a usage object (``"usage":{``)."""
    sep = b"\r\n\r\n" if b"\r\n\r\n" in data else b"\n\n"
    blocks = data.split(sep)
    return sep.join(b for b in blocks if b'"usage":{' not in b and b'"usage": {' not in b)


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_lazy_collection_reads_what_eager_collection_reads(f: CorpusFile) -> None:
    rng = random.Random(f.name)
    missing = 0
    for variant in variants(f):
        data = rebuild_variant(f, variant)
        for k, pieces in enumerate(chunkings(data, seed=len(data), count=2)):
            label = f"{f.name} {variant.label} chunking {k}"
            missing += _same(pieces, label)
            cut = data[: rng.randrange(len(data) + 1)]
            missing += _same([cut[i : i + 97] for i in range(0, len(cut), 97)], f"{label} cut")
            bare = _without_usage(data)
            missing += _same([bare[i : i + 61] for i in range(0, len(bare), 61)], f"{label} bare")
    assert missing > 0  # the comparison of outputs ran for this file


@pytest.mark.parametrize("usage", [True, False])
@pytest.mark.parametrize("piece", [1, 7, 4096])
def test_past_the_bounds_it_collects_as_it_comes(usage: bool, piece: int) -> None:
    event = (
        b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
        b'"delta":{"content":"%d \\u00e9\\"x\\" "},"finish_reason":null}]}\n\n'
    )
    # Past the held reads (small pieces) or the held bytes (large ones).
    size = MAX_HELD_READS * piece + 1 if piece < 100 else MAX_HELD_BYTES + 1
    data = b""
    n = 0
    while len(data) < size:
        data += event % n
        n += 1
    if usage:
        data += (
            b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],'
            b'"usage":{"prompt_tokens":1,"completion_tokens":%d,"total_tokens":%d}}\n\n'
            % (n, n + 1)
        )
    data += b"data: [DONE]\n\n"
    pieces = [data[i : i + piece] for i in range(0, len(data), piece)]
    assert _same(pieces, f"{n} events in pieces of {piece}") is not usage
    tap = UsageTap(collect_output="lazy")
    for p in pieces:
        tap.feed(p)
    report = tap.finish()
    if not usage:
        output = tap.output()
        assert output is not None
        assert output["choices"][0]["text"].count('\u00e9"x"') == n
        assert report.usage is None


def test_one_lazy_tap_meters_stream_after_stream() -> None:
    f = next(f for f in FILES if f.family == "chat")
    data = rebuild_variant(f, variants(f)[0])
    tap = UsageTap(collect_output="lazy")
    for cut in (len(data), len(data) // 2, len(data), 0, len(data) // 3):
        eager = UsageTap(collect_output=True)
        eager.feed(data[:cut])
        expected = eager.finish()
        tap.feed(data[:cut])
        assert tap.finish() == expected
        assert tap.output() == (None if expected.usage is not None else eager.output())


@pytest.mark.parametrize("value", ["eager", "", 1, 0, "LAZY"])
def test_collect_output_takes_a_flag_or_lazy(value: object) -> None:
    with pytest.raises(ValueError, match="collect_output"):
        UsageTap(collect_output=value)  # type: ignore[arg-type]


def test_the_meter_reads_lazily_when_it_does_not_keep_the_output() -> None:
    f = next(f for f in FILES if f.family == "chat")
    data = rebuild_variant(f, variants(f)[0])
    body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": "hi"}]}
    for kept in (True, False):
        for stream in (data, _without_usage(data)):
            meter = StreamMeter(
                request_body=body, collect_output=True, keep_output=kept, telemetry=False
            )
            for i in range(0, len(stream), 50):
                meter.feed(stream[i : i + 50])
            meter.end("eof")
            report = meter.report()
            if report.usage is not None:
                assert (report.output is not None) is kept
            else:
                assert report.output is not None and report.output["choices"]
