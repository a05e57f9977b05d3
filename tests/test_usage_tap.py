"""``ssetally.UsageTap`` over the recorded corpus and over hostile input.

The expected reports of every corpus stream live in ``tests/data/corpus_expected.json``,
transcribed from the hand-written ``cases()`` table of ``tests/rust_usage.rs`` (they were
read from the files by hand, not produced by the code under test), so the Rust and Python
suites check the same truth. The wire bytes come from ``tests/corpus.py`` (MANIFEST rules);
``test_expectations_match_corpus_framing`` checks that its framing of each file is the one
the Rust table was written for.

Covered here:

* every corpus stream, LF / CRLF / ``: keep-alive`` variants (and Responses streams with and
  without the Open Responses ``[DONE]``), fed whole and in several chunkings: every report
  equals the expectation, and the chunking never changes the reports;
* ``usage.raw`` is the provider's own usage object (checked against the JSON payloads);
* ``"usage"`` in text, tool arguments or metadata is never taken as usage; cut streams have
  no usage and a truthful status; garbage, random bytes, huge events and a never-ending line
  never make ``feed`` raise;
* determinism, ``to_dict`` JSON round trip, reuse after ``finish``, ``snapshot``;
* ``collect_output``: streamed text and tool calls, recomputed here from the payloads;
* ``feed`` creates no Python object per event (allocated blocks, tracemalloc peak and
  Python-level calls do not grow from 1k to 20k events);
* threads: one tap per thread is correct; one tap shared by two threads either works or
  raises PyO3's borrow ``RuntimeError``, never corrupts or crashes.
"""

from __future__ import annotations

import gc
import itertools
import json
import random
import re
import subprocess
import sys
import threading
import tracemalloc
import zlib
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from functools import cache
from pathlib import Path
from types import FrameType
from typing import Any, TypedDict, cast

import pytest
from corpus import (
    RAW_EVENT_COUNTS,
    RAW_TRUNCATED,
    CorpusFile,
    Variant,
    chunkings,
    corpus_files,
    event_type,
    expected_event_count,
    json_lines,
    random_chunking,
    rebuild,
    rebuild_variant,
    variants,
)
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ssetally import SSEDecoder, StreamReport, Usage, UsageTap

EXPECTED_PATH = Path(__file__).parent / "data" / "corpus_expected.json"

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
USAGE_FIELDS = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)
REPORT_FIELDS = (
    "api",
    "status",
    "response_id",
    "model",
    "finish_reason",
    "events",
    "delta_chunks",
    "done",
)
BORROW_ERROR = re.compile(r"^Already (mutably )?borrowed$", re.IGNORECASE)
KiB = 1024
MiB = 1024 * KiB

#: corpus.py family -> the framing ("wire") of rust_usage.rs.
FAMILY_WIRE = {
    "chat": "data_done",
    "responses": "typed_responses",
    "anthropic": "typed",
    "cohere": "typed",
    "gemini": "data",
    "raw": "raw",
}


class ExpectedUsage(TypedDict):
    input_tokens: int | None
    output_tokens: int | None
    total_tokens: int | None
    cached_input_tokens: int | None
    cache_write_tokens: int | None
    reasoning_tokens: int | None


class ExpectedReport(TypedDict):
    api: str
    status: str
    response_id: str | None
    model: str | None
    usage: ExpectedUsage | None
    finish_reason: str | None
    events: int
    delta_chunks: int
    done: bool


class ExpectedFile(TypedDict):
    wire: str
    reports: list[ExpectedReport]


def _load_expected() -> dict[str, ExpectedFile]:
    doc = json.loads(EXPECTED_PATH.read_text(encoding="utf-8"))
    return cast("dict[str, ExpectedFile]", doc["files"])


EXPECTED = _load_expected()
FILES = corpus_files()
BY_NAME = {f.name: f for f in FILES}
STREAMS = [(f, v) for f in FILES for v in variants(f)]


# ------------------------------------------------------------------------------ helpers


def run(chunks: Sequence[bytes], api: str = "auto", **kwargs: Any) -> tuple[StreamReport, ...]:
    """Feeds ``chunks`` to a fresh tap; the reports of ``finish``."""
    tap = UsageTap(api, **kwargs)
    for chunk in chunks:
        tap.feed(chunk)
    last = tap.finish()
    reports = tap.reports
    assert reports and last is reports[-1]
    assert all(isinstance(r, StreamReport) for r in reports)
    return reports


def comparable(reports: Sequence[StreamReport]) -> list[dict[str, Any]]:
    """``to_dict()`` of each report; with several reports the byte split depends on the
    chunking (bytes go to the report current when a chunk begins), so it is left out."""
    out = [r.to_dict() for r in reports]
    if len(out) > 1:
        for d in out:
            del d["bytes"]
    return out


def expected_reports(f: CorpusFile, v: Variant) -> list[ExpectedReport]:
    """The expectation for ``f`` framed as ``v``: the Open Responses ``[DONE]`` adds one
    event to the last report and sets its ``done``."""
    wants = [cast(ExpectedReport, dict(w)) for w in EXPECTED[f.name]["reports"]]
    if f.family == "responses" and v.done:
        wants[-1]["events"] += 1
        wants[-1]["done"] = True
    return wants


def six(usage: Usage) -> dict[str, int | None]:
    return {k: getattr(usage, k) for k in USAGE_FIELDS}


def check_reports(label: str, got: Sequence[StreamReport], wants: Sequence[ExpectedReport]) -> None:
    assert len(got) == len(wants), f"{label}: number of reports"
    for i, (report, want) in enumerate(zip(got, wants)):
        ctx = f"{label} report {i}"
        seen = {k: getattr(report, k) for k in REPORT_FIELDS}
        expected = {k: cast("dict[str, Any]", want)[k] for k in REPORT_FIELDS}
        assert seen == expected, ctx
        if want["usage"] is None:
            assert report.usage is None, ctx
        else:
            assert report.usage is not None, ctx
            assert six(report.usage) == dict(want["usage"]), ctx
            assert report.usage.source == "stream", ctx
            assert isinstance(report.usage.raw, dict) and report.usage.raw, ctx
        assert report.oversized_events == 0, ctx
        assert report.invalid_json_events == 0, ctx


def seed_of(label: str) -> int:
    return zlib.crc32(label.encode())


def payloads(f: CorpusFile) -> list[dict[str, Any]]:
    """The JSON payloads of a stream (raw captures: their ``data:`` lines)."""
    if f.is_raw:
        lines = [
            line[len(b"data: ") :]
            for line in f.path.read_bytes().split(b"\n")
            if line.startswith(b"data: ") and line != b"data: [DONE]"
        ]
    else:
        lines = json_lines(f)
    out = [json.loads(line) for line in lines]
    assert all(isinstance(p, dict) for p in out)
    return out


def frame(data: dict[str, Any], event: str | None = None) -> bytes:
    head = f"event: {event}\n" if event else ""
    return (head + "data: " + json.dumps(data, separators=(",", ":")) + "\n\n").encode()


# ------------------------------------------------------------------- expectations file


def test_expectations_cover_the_corpus() -> None:
    assert sorted(EXPECTED) == sorted(BY_NAME)
    assert len(FILES) == 59
    for name, entry in EXPECTED.items():
        assert entry["reports"], name
        for want in entry["reports"]:
            assert want["api"] in APIS and want["api"] != "auto", name
            assert want["status"] in STATUSES, name


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_expectations_match_corpus_framing(f: CorpusFile) -> None:
    """corpus.py frames each file the way rust_usage.rs does for its expectations."""
    wire = EXPECTED[f.name]["wire"]
    assert FAMILY_WIRE[f.family] == wire
    if wire == "raw":
        assert rebuild(f) == f.path.read_bytes()
        events = RAW_EVENT_COUNTS[f.name] + (1 if f.name in RAW_TRUNCATED else 0)
    else:
        # rust_usage.rs: every non-blank line, `event: <type>` for typed streams,
        # `data: [DONE]` after chat streams (and the Responses [DONE] variant).
        lines = [ln for ln in f.path.read_bytes().split(b"\n") if ln.strip()]
        typed = wire in ("typed", "typed_responses")
        body = b"".join(
            (b"event: " + event_type(ln).encode() + b"\n" if typed else b"")
            + b"data: "
            + ln
            + b"\n\n"
            for ln in lines
        )
        done = b"data: [DONE]\n\n"
        assert rebuild(f, done=wire == "data_done") == body + (done if wire == "data_done" else b"")
        if wire == "typed_responses":
            assert rebuild(f, done=True) == body + done
        events = expected_event_count(f, done=f.family == "chat")
    # The tap counts every dispatched event (and reads a raw capture's unterminated last
    # one): the per-report counts of the table add up to the stream's events.
    assert sum(w["events"] for w in EXPECTED[f.name]["reports"]) == events


# ------------------------------------------------------------------------------ corpus


@pytest.mark.parametrize(("f", "v"), STREAMS, ids=[f"{f.name}[{v.label}]" for f, v in STREAMS])
def test_corpus_reports(f: CorpusFile, v: Variant) -> None:
    data = rebuild_variant(f, v)
    wants = expected_reports(f, v)
    label = f"{f.name}[{v.label}]"

    tap = UsageTap()
    tap.feed(data)
    # Live properties before the stream ends.
    assert tap.api == wants[0]["api"]
    assert tap.response_id == wants[0]["response_id"]
    assert tap.delta_chunks == sum(w["delta_chunks"] for w in wants)
    assert tap.bytes_fed == len(data)
    last = tap.finish()
    whole = tap.reports
    assert last is whole[-1]
    check_reports(label, whole, wants)
    assert sum(r.bytes for r in whole) == len(data)
    base = comparable(whole)

    for k, pieces in enumerate(chunkings(data, seed_of(label))):
        assert b"".join(pieces) == data
        got = run(pieces)
        check_reports(f"{label} chunking {k}", got, wants)
        assert comparable(got) == base, f"{label} chunking {k}"
        assert sum(r.bytes for r in got) == len(data)


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_explicit_api_hint_gives_the_same_reports(f: CorpusFile) -> None:
    data = rebuild(f, done=f.family == "chat")
    hint = EXPECTED[f.name]["reports"][0]["api"]
    assert comparable(run([data], hint)) == comparable(run([data]))


# ------------------------------------------------------------------------- usage.raw


def provider_usage(f: CorpusFile) -> dict[str, Any]:
    """The usage object the provider sent for the stream's last response, found here by
    its documented path (independently of the tap)."""
    api = EXPECTED[f.name]["reports"][-1]["api"]
    found: list[dict[str, Any]] = []
    for p in payloads(f):
        candidates: list[Any] = []
        if api in ("chat.completions", "completions"):
            candidates = [p.get("usage"), (p.get("x_groq") or {}).get("usage")]
            candidates += [c.get("usage") for c in p.get("choices") or []]
        elif api == "responses" and p.get("type") in TERMINAL_RESPONSES:
            candidates = [p["response"].get("usage")]
        elif api in ("gemini", "gemini.interactions"):
            candidates = [p.get("usageMetadata"), (p.get("interaction") or {}).get("usage")]
        elif api == "cohere" and p.get("type") == "message-end":
            candidates = [p["delta"].get("usage")]
        found += [c for c in candidates if isinstance(c, dict)]
    assert found, f.name
    return found[-1]


TERMINAL_RESPONSES = ("response.completed", "response.incomplete", "response.failed")
WITH_USAGE = [f for f in FILES if EXPECTED[f.name]["reports"][-1]["usage"] is not None]


@pytest.mark.parametrize(
    "f",
    [f for f in WITH_USAGE if EXPECTED[f.name]["reports"][-1]["api"] != "anthropic.messages"],
    ids=lambda f: f.name,
)
def test_usage_raw_is_the_providers_object(f: CorpusFile) -> None:
    report = run([rebuild(f, done=f.family == "chat")])[-1]
    assert report.usage is not None
    assert report.usage.raw == provider_usage(f)


@pytest.mark.parametrize(
    "f",
    [f for f in WITH_USAGE if EXPECTED[f.name]["reports"][-1]["api"] == "anthropic.messages"],
    ids=lambda f: f.name,
)
def test_anthropic_usage_raw_merges_start_and_delta(f: CorpusFile) -> None:
    """Anthropic sends usage in message_start and (cumulative) in message_delta: raw keeps
    every key of the former and takes the values of the latter."""
    reports = run([rebuild(f)])
    starts = [p["message"]["usage"] for p in payloads(f) if p["type"] == "message_start"]
    deltas = [p["usage"] for p in payloads(f) if p["type"] == "message_delta"]
    report = reports[-1]
    assert report.usage is not None
    raw = report.usage.raw
    assert set(starts[-1]) <= set(raw)
    assert {k: raw[k] for k in deltas[-1]} == deltas[-1]


def _raw_of(name: str, index: int = -1) -> dict[str, Any]:
    f = BY_NAME[name]
    usage = run([rebuild(f, done=f.family == "chat")])[index].usage
    assert usage is not None
    return dict(usage.raw)


def test_usage_raw_spot_checks() -> None:
    raw = _raw_of("openai-chat/openai-text.chunks.txt")
    assert raw["completion_tokens_details"] == {
        "reasoning_tokens": 0,
        "audio_tokens": 0,
        "accepted_prediction_tokens": 0,
        "rejected_prediction_tokens": 0,
    }
    assert raw["prompt_tokens_details"] == {"cached_tokens": 0, "audio_tokens": 0}
    raw = _raw_of("anthropic/anthropic-code-execution-20260120-prompt-cache.1.chunks.txt")
    assert raw["cache_creation"] == {
        "ephemeral_5m_input_tokens": 3068,
        "ephemeral_1h_input_tokens": 0,
    }
    assert raw["server_tool_use"] == {"web_search_requests": 0, "web_fetch_requests": 0}
    raw = _raw_of("anthropic/anthropic-text.chunks.txt")
    assert (raw["output_tokens"], raw["service_tier"]) == (30, "standard")
    raw = _raw_of("groq/groq-text.chunks.txt")
    assert raw["queue_time"] == 0.041905864
    assert raw["prompt_time"] == 0.003940145
    assert raw["completion_time"] == 2.652230333
    assert raw["total_time"] == 2.656170478
    raw = _raw_of("xai/xai-text.chunks.txt")
    assert raw["cost_in_usd_ticks"] == 1466250
    assert raw["completion_tokens_details"]["reasoning_tokens"] == 290
    assert _raw_of("cohere/cohere-text.chunks.txt") == {
        "billed_units": {"input_tokens": 12, "output_tokens": 7},
        "tokens": {"input_tokens": 507, "output_tokens": 10},
        "cached_tokens": 448,
    }
    assert _raw_of("anthropic/anthropic-message-delta-input-tokens.chunks.txt") == {
        "input_tokens": 61,
        "output_tokens": 2,
    }
    raw = _raw_of("openai-responses/github-copilot-id-rotation.1.chunks.txt")
    assert raw["input_tokens_details"] == {"cache_write_tokens": 0, "cached_tokens": 0}
    first = _raw_of("cerebras/cererebras-structured-output-tools.1.chunks.txt", 0)
    assert (first["total_tokens"], first["prompt_tokens_details"]) == (426, {"cached_tokens": 256})


# ------------------------------------------------------------- usage only by its path

DECOY_CHAT = {"prompt_tokens": 999, "completion_tokens": 999, "total_tokens": 1998}
DECOY_RESP = {"input_tokens": 999, "output_tokens": 999, "total_tokens": 1998}
DECOY_ANTH = {"input_tokens": 999, "output_tokens": 999, "cache_read_input_tokens": 999}
DECOY_GEM = {"promptTokenCount": 999, "candidatesTokenCount": 999, "totalTokenCount": 1998}


def _decoy_chat(real: bool) -> bytes:
    base = {"id": "c1", "object": "chat.completion.chunk", "model": "m"}
    text = json.dumps({"usage": DECOY_CHAT}) + ' "usage":{"prompt_tokens":5}'
    out = frame(
        {**base, "choices": [{"index": 0, "delta": {"role": "assistant", "content": text}}]}
    )
    call = {
        "index": 0,
        "id": "t",
        "function": {"name": "f", "arguments": json.dumps({"usage": DECOY_CHAT})},
    }
    out += frame(
        {**base, "choices": [{"index": 0, "delta": {"tool_calls": [call]}}], "usage": None}
    )
    out += frame({**base, "choices": [{"index": 0, "delta": {"usage": DECOY_CHAT}}]})
    out += frame(
        {
            **base,
            "metadata": {"usage": DECOY_CHAT},
            "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        }
    )
    if real:
        usage = {"prompt_tokens": 4, "completion_tokens": 3, "total_tokens": 7}
        out += frame({**base, "choices": [], "usage": usage, "metadata": {"usage": DECOY_CHAT}})
    return out + b"data: [DONE]\n\n"


def _decoy_responses(real: bool) -> bytes:
    def response(status: str, usage: dict[str, int] | None) -> dict[str, Any]:
        return {
            "id": "r1",
            "object": "response",
            "model": "m",
            "status": status,
            "metadata": {"usage": DECOY_RESP, "note": json.dumps({"usage": DECOY_RESP})},
            "output": [
                {"type": "message", "content": [{"type": "output_text", "text": '"usage":{}'}]}
            ],
            "usage": usage,
        }

    created = {"type": "response.created", "sequence_number": 0, "metadata": {"usage": DECOY_RESP}}
    out = frame({**created, "response": response("in_progress", None)}, "response.created")
    delta = {
        "type": "response.output_text.delta",
        "sequence_number": 1,
        "item_id": "m",
        "output_index": 0,
    }
    out += frame(
        {**delta, "content_index": 0, "delta": json.dumps({"usage": DECOY_RESP})},
        "response.output_text.delta",
    )
    args = {"type": "response.function_call_arguments.delta", "sequence_number": 2, "item_id": "f"}
    out += frame(
        {**args, "output_index": 1, "delta": json.dumps({"usage": DECOY_RESP})},
        "response.function_call_arguments.delta",
    )
    usage = {"input_tokens": 4, "output_tokens": 3, "total_tokens": 7} if real else None
    done = {"type": "response.completed", "sequence_number": 3, "metadata": {"usage": DECOY_RESP}}
    return out + frame({**done, "response": response("completed", usage)}, "response.completed")


def _decoy_anthropic(real: bool) -> bytes:
    start: dict[str, Any] = {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude",
        "content": [],
    }
    if real:
        start["usage"] = {"input_tokens": 4, "output_tokens": 1}
    out = frame({"type": "message_start", "message": start}, "message_start")
    block = {
        "type": "content_block_start",
        "index": 0,
        "content_block": {"type": "text", "text": ""},
    }
    out += frame(block, "content_block_start")
    text = {"type": "text_delta", "text": json.dumps({"usage": DECOY_ANTH})}
    out += frame({"type": "content_block_delta", "index": 0, "delta": text}, "content_block_delta")
    out += frame({"type": "content_block_stop", "index": 0}, "content_block_stop")
    tool = {"type": "tool_use", "id": "t1", "name": "f", "input": {"usage": DECOY_ANTH}}
    out += frame(
        {"type": "content_block_start", "index": 1, "content_block": tool}, "content_block_start"
    )
    args = {"type": "input_json_delta", "partial_json": json.dumps({"usage": DECOY_ANTH})}
    out += frame({"type": "content_block_delta", "index": 1, "delta": args}, "content_block_delta")
    out += frame({"type": "content_block_stop", "index": 1}, "content_block_stop")
    delta: dict[str, Any] = {
        "type": "message_delta",
        "delta": {"stop_reason": "tool_use", "usage": DECOY_ANTH},
    }
    if real:
        delta["usage"] = {"output_tokens": 3}
    out += frame(delta, "message_delta")
    return out + frame({"type": "message_stop"}, "message_stop")


def _decoy_gemini(real: bool) -> bytes:
    base = {"modelVersion": "gemini-x", "responseId": "g1"}
    part = {"text": json.dumps({"usageMetadata": DECOY_GEM})}
    out = frame(
        {**base, "candidates": [{"content": {"parts": [part], "role": "model"}, "index": 0}]}
    )
    call = {"functionCall": {"name": "f", "args": {"usageMetadata": DECOY_GEM, "usage": DECOY_GEM}}}
    last: dict[str, Any] = {
        **base,
        "candidates": [
            {"content": {"parts": [call], "role": "model"}, "finishReason": "STOP", "index": 0}
        ],
    }
    if real:
        last["usageMetadata"] = {
            "promptTokenCount": 4,
            "candidatesTokenCount": 3,
            "totalTokenCount": 7,
        }
    return out + frame(last)


DECOYS: dict[str, Callable[[bool], bytes]] = {
    "chat.completions": _decoy_chat,
    "responses": _decoy_responses,
    "anthropic.messages": _decoy_anthropic,
    "gemini": _decoy_gemini,
}


@pytest.mark.parametrize("api", sorted(DECOYS))
@pytest.mark.parametrize("real", [True, False], ids=["with-usage", "without-usage"])
def test_usage_in_text_arguments_or_metadata_is_ignored(api: str, real: bool) -> None:
    data = DECOYS[api](real)
    for chunks in [[data], *chunkings(data, seed_of(api))]:
        for hint in ("auto", api):
            reports = run(chunks, hint)
            assert len(reports) == 1
            report = reports[0]
            assert (report.api, report.status, report.invalid_json_events) == (api, "completed", 0)
            if real:
                assert report.usage is not None
                assert six(report.usage) == {
                    "input_tokens": 4,
                    "output_tokens": 3,
                    "total_tokens": 7,
                    "cached_input_tokens": None,
                    "cache_write_tokens": None,
                    "reasoning_tokens": None,
                }
                assert 999 not in report.usage.raw.values()
            else:
                assert report.usage is None


# -------------------------------------------------------------------------- truncation


def cut_lines(name: str, keep: int, *, done: bool = False) -> bytes:
    """The first ``keep`` payloads of a corpus stream, framed as on the wire."""
    f = BY_NAME[name]
    lines = json_lines(f)
    assert 0 <= keep < len(lines)
    typed = f.has_event_lines
    out = b"".join(
        (b"event: " + event_type(ln).encode() + b"\n" if typed else b"") + b"data: " + ln + b"\n\n"
        for ln in lines[:keep]
    )
    return out + (b"data: [DONE]\n\n" if done else b"")


def is_terminal(p: dict[str, Any]) -> bool:
    """Whether a payload says its response ended (finish reason or terminal event)."""
    if any(c.get("finish_reason") or c.get("finishReason") for c in p.get("choices") or []):
        return True
    if any(c.get("finishReason") for c in p.get("candidates") or []):
        return True
    kind = p.get("type") or p.get("event_type")
    return kind in (*TERMINAL_RESPONSES, "message_delta", "message-end", "interaction.completed")


# (file, payloads kept, [DONE] appended, expected status)
TRUNCATIONS = [
    # Cut before the finish chunk: nothing says the answer ended.
    ("openai-chat/openai-text.chunks.txt", 301, False, "truncated"),
    # The finish chunk came (finish_reason "stop"), the usage chunk did not.
    ("openai-chat/openai-text.chunks.txt", 302, False, "completed"),
    ("groq/groq-text.chunks.txt", 662, False, "truncated"),
    ("deepseek/deepseek-text.chunks.txt", 400, False, "truncated"),
    ("openai-completions/openai-completion-text.chunks.txt", 15, False, "truncated"),
    # The finish chunk said "length", the usage chunk never came.
    ("openai-completions/openai-completion-text.chunks.txt", 16, False, "incomplete"),
    # Responses: everything but response.completed; [DONE] alone is not a terminal event.
    ("openai-responses/openai-phase.1.chunks.txt", 16, False, "truncated"),
    ("openai-responses/openai-phase.1.chunks.txt", 16, True, "truncated"),
    ("xai/xai-text-streaming.1.chunks.txt", 697, False, "truncated"),
    # Gemini: counts arrive only with the last (finishReason) chunk.
    ("google/google-vertex-stream-tool-call-arguments-nested.1.chunks.txt", 75, False, "truncated"),
    ("google-interactions/basic.chunks.txt", 8, False, "truncated"),
    ("cohere/cohere-text.chunks.txt", 10, False, "truncated"),
]


@pytest.mark.parametrize(
    ("name", "keep", "done", "status"),
    TRUNCATIONS,
    ids=[f"{n}:{k}{'+done' if d else ''}" for n, k, d, _ in TRUNCATIONS],
)
def test_truncated_stream_has_no_usage(name: str, keep: int, done: bool, status: str) -> None:
    f = BY_NAME[name]
    # The kept payloads really carry no usage (checked here from the JSON).
    kept = json_lines(f)[:keep]
    assert not any(b'"usage":{' in ln or b'"usageMetadata":{"prompt' in ln for ln in kept)
    # ... and a terminal signal exactly when the expected status is not "truncated".
    assert any(is_terminal(json.loads(ln)) for ln in kept) == (status != "truncated")
    data = cut_lines(name, keep, done=done)
    want = EXPECTED[name]["reports"][0]
    for chunks in [[data], *chunkings(data, seed_of(name), count=1)]:
        (report,) = run(chunks)
        assert report.usage is None
        assert report.status == status
        assert report.done == done
        assert (report.api, report.response_id, report.model) == (
            want["api"],
            want["response_id"],
            want["model"],
        )
        assert report.events == keep + done
        assert report.invalid_json_events == 0


def test_truncated_anthropic_keeps_message_start_usage() -> None:
    """Before message_delta only message_start's provisional usage exists: it is kept, and
    the status says the stream was cut."""
    (report,) = run([cut_lines("anthropic/anthropic-text.chunks.txt", 10)])
    assert (report.status, report.done, report.finish_reason) == ("truncated", False, None)
    assert report.usage is not None
    assert (report.usage.input_tokens, report.usage.output_tokens) == (12, 1)


def test_truncated_in_the_middle_of_the_usage_event() -> None:
    f = BY_NAME["openai-chat/openai-text.chunks.txt"]
    full = rebuild(f, done=True)
    at = full.rindex(b'"usage":{')
    (report,) = run([full[:at]])
    assert (report.status, report.usage, report.invalid_json_events) == ("completed", None, 1)
    assert any("without the blank line" in w for w in report.warnings)


def _offsets(data: bytes, line: bytes) -> int:
    """Offset just after ``line``'s JSON within ``data``."""
    return data.index(b"data: " + line + b"\n") + len(b"data: ") + len(line)


OPENAI_TEXT = rebuild(BY_NAME["openai-chat/openai-text.chunks.txt"], done=True)
OPENAI_TEXT_LINES = json_lines(BY_NAME["openai-chat/openai-text.chunks.txt"])
FINISH_END = _offsets(OPENAI_TEXT, OPENAI_TEXT_LINES[-2])
USAGE_END = _offsets(OPENAI_TEXT, OPENAI_TEXT_LINES[-1])


@settings(max_examples=80, deadline=None)
@given(
    cut=st.one_of(
        st.integers(0, len(OPENAI_TEXT)),
        st.integers(FINISH_END - 400, len(OPENAI_TEXT)),
    ),
    seed=st.integers(0, 2**32),
)
def test_any_prefix_is_truthful(cut: int, seed: int) -> None:
    """A stream cut anywhere: completed only once the finish chunk's JSON is complete, usage
    only once the usage chunk's JSON is complete (the tap reads an unterminated last event)."""
    prefix = OPENAI_TEXT[:cut]
    (report,) = run(random_chunking(prefix, random.Random(seed)))
    assert report.status == ("completed" if cut >= FINISH_END else "truncated")
    assert (report.usage is not None) == (cut >= USAGE_END)
    assert report.bytes == cut


# ----------------------------------------------------------------- garbage and binary

GARBAGE = [
    b"",
    b"\x00" * 1000,
    b"\xff\xfe\xfd" * 300,
    b"data: {\n\n" * 50,
    b'data: \xff\xfe{"usage":{}}\n\n',
    b"\r" * 5000,
    b"\n" * 5000,
    b"data: [DONE]",
    b"data: [DONE]\n\ndata: [DONE]\n\n",
    b": comment only\n\n" * 10,
    b"event: \xe2\x82\n" * 10,
    b'data: {"id":"c","object":"chat.completion.chunk","choices":[],"usage":'
    + b"[" * 100_000
    + b"\n\n",
    b"data: " + b'{"a":' * 50_000 + b"1" + b"}" * 50_000 + b"\n\n",
    b'data: {"type":"response.completed","response":{"usage":' + b'{"a":' * 50_000 + b"\n\n",
    b'data: {"choices":[],"usage":{"prompt_tokens":1e400,"completion_tokens":-5}}\n\n',
    b'data: {"choices":[],"usage":{"prompt_tokens":18446744073709551616}}\n\n',
    b'data: {"choices":[],"usage":"usage"}\n\ndata: {"usage":[]}\n\n',
    b"id: \x00\nretry: 99999999999999999999999\ndata: x\n\n",
    b"data:" + b"\xf0\x9f\x98" * 1000 + b"\n\n",
]


@pytest.mark.parametrize("data", GARBAGE, ids=range(len(GARBAGE)))
@pytest.mark.parametrize("api", APIS)
def test_garbage_never_raises(data: bytes, api: str) -> None:
    for collect in (False, True):
        for chunks in ([data], [data[i : i + 7] for i in range(0, min(len(data), 7000), 7)]):
            reports = run(chunks, api, collect_output=collect)
            assert_sane(reports, api, sum(len(c) for c in chunks))


def assert_sane(reports: Sequence[StreamReport], api: str, fed: int) -> None:
    assert reports
    assert sum(r.bytes for r in reports) == fed
    for r in reports:
        assert r.status in STATUSES
        assert r.api in APIS[1:] or r.api == "unknown"
        if api != "auto":
            assert r.api == api
        d = r.to_dict()
        assert json.loads(json.dumps(d)) == d


SSE_PIECES = [
    b"data: ",
    b"data:",
    b"event: ",
    b"message_delta",
    b"response.completed",
    b"id: 1",
    b": ka",
    b"\n",
    b"\r\n",
    b"\r",
    b"{",
    b"}",
    b"[",
    b"]",
    b'"usage":',
    b'{"prompt_tokens":3,"completion_tokens":2}',
    b'"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":"stop"}]',
    b'"type":"message_start","message":{"id":"m","usage":{"input_tokens":1}}',
    b'"candidates":[]',
    b'"usageMetadata":{"promptTokenCount":2}',
    b"[DONE]",
    b",",
    b'"',
    b"\xe2\x82",
    b"\xac",
    b"\xff",
    b"\x00",
]


@settings(max_examples=150, deadline=None)
@given(
    chunks=st.lists(
        st.one_of(
            st.binary(max_size=300),
            st.lists(st.sampled_from(SSE_PIECES), max_size=40).map(b"".join),
        ),
        max_size=12,
    ),
    api=st.sampled_from(APIS),
    collect=st.booleans(),
    max_event_size=st.sampled_from([1, 64, 16 * MiB]),
)
def test_random_bytes_never_raise(
    chunks: list[bytes], api: str, collect: bool, max_event_size: int
) -> None:
    reports = run(chunks, api, collect_output=collect, max_event_size=max_event_size)
    assert_sane(reports, api, sum(len(c) for c in chunks))


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_mutated_corpus_never_raises(data: st.DataObject) -> None:
    f = data.draw(st.sampled_from(FILES), label="file")
    raw = bytearray(rebuild(f, done=f.family == "chat"))
    for _ in range(data.draw(st.integers(1, 8), label="mutations")):
        raw[data.draw(st.integers(0, len(raw) - 1))] = data.draw(st.integers(0, 255))
    cut = data.draw(st.integers(0, len(raw)), label="cut")
    api = data.draw(st.sampled_from(APIS), label="api")
    mutated = bytes(raw[:cut])
    pieces = random_chunking(mutated, random.Random(data.draw(st.integers(0, 2**32))))
    assert_sane(run(pieces, api, collect_output=True), api, cut)


# ------------------------------------------------------------------ oversized events


def big_chat_event(size: int) -> bytes:
    head = (
        b'data: {"id":"big","object":"chat.completion.chunk","model":"m",'
        b'"choices":[{"index":0,"delta":{"content":"'
    )
    tail = (
        b'"},"finish_reason":"stop"}],'
        b'"usage":{"prompt_tokens":7,"completion_tokens":11,"total_tokens":18}}\n\n'
    )
    return head + b"a" * (size - len(head) - len(tail)) + tail


BIG_STREAM = (
    b'data: {"id":"big","object":"chat.completion.chunk","model":"m",'
    b'"choices":[{"index":0,"delta":{"role":"assistant"}}]}\n\n'
    + big_chat_event(50 * MiB)
    + b"data: [DONE]\n\n"
)


@pytest.mark.parametrize("chunk", [len(BIG_STREAM), MiB], ids=["whole", "1MiB"])
def test_50mb_event_over_the_default_limit_is_counted(chunk: int) -> None:
    pieces = [BIG_STREAM[i : i + chunk] for i in range(0, len(BIG_STREAM), chunk)]
    (report,) = run(pieces)
    assert report.oversized_events == 1
    assert any("max_event_size" in w and "16777216" in w for w in report.warnings)
    assert report.usage is None
    assert (report.api, report.response_id, report.events, report.done) == (
        "chat.completions",
        "big",
        2,  # the role chunk and [DONE]; the skipped event is not dispatched
        True,
    )
    assert report.bytes == len(BIG_STREAM)


@pytest.mark.parametrize("chunk", [len(BIG_STREAM), MiB], ids=["whole", "1MiB"])
def test_50mb_event_under_a_raised_limit_is_read(chunk: int) -> None:
    pieces = [BIG_STREAM[i : i + chunk] for i in range(0, len(BIG_STREAM), chunk)]
    (report,) = run(pieces, max_event_size=64 * MiB)
    assert report.oversized_events == 0
    assert report.warnings == ()
    assert report.usage is not None
    assert six(report.usage) == {
        "input_tokens": 7,
        "output_tokens": 11,
        "total_tokens": 18,
        "cached_input_tokens": None,
        "cache_write_tokens": None,
        "reasoning_tokens": None,
    }
    assert (report.status, report.finish_reason, report.events, report.delta_chunks) == (
        "completed",
        "stop",
        3,
        1,
    )


USAGE_TAIL = (
    b'data: {"id":"c","object":"chat.completion.chunk","model":"m","choices":[],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\ndata: [DONE]\n\n'
)


@pytest.mark.parametrize("start", [b"data: ", b": ", b"event: "])
def test_never_ending_line(start: bytes) -> None:
    """A line that never ends (40 MiB, no newline) is skipped with a warning; feed never
    raises, and the tap reads the stream that follows once the line ends."""
    line = b"x" * MiB
    tap = UsageTap()
    tap.feed(start)
    for _ in range(40):
        tap.feed(line)
    snap = tap.snapshot()
    assert (snap.usage, snap.status, snap.done) == (None, "truncated", False)
    assert snap.bytes == len(start) + 40 * MiB
    report = tap.finish()
    assert (report.usage, report.status, report.events) == (None, "truncated", 0)
    assert report.oversized_events == 1
    assert report.warnings, report
    # The same, then the line ends and a usage event follows.
    tap.feed(start)
    for _ in range(40):
        tap.feed(line)
    tap.feed(b"\n\n" + USAGE_TAIL)
    report = tap.finish()
    assert report.usage is not None and report.usage.total_tokens == 3
    assert (report.status, report.done) == ("completed", True)


_RSS_SCRIPT = """
import resource, sys
from ssetally import UsageTap
line = b"x" * (1 << 20)
tap = UsageTap()
tap.feed(b"data: ")
for _ in range(int(sys.argv[1])):
    tap.feed(line)
report = tap.finish()
assert report.usage is None and report.status == "truncated"
print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss)
"""


def _peak_rss(mib: int) -> int:
    out = subprocess.run(
        [sys.executable, "-c", _RSS_SCRIPT, str(mib)],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    # ru_maxrss is in KiB on Linux, in bytes on macOS.
    return int(out.stdout) * (1 if sys.platform == "darwin" else KiB)


def test_never_ending_line_memory_is_bounded() -> None:
    """256 MiB of one line costs about max_event_size (16 MiB), not 256 MiB."""
    assert _peak_rss(256) - _peak_rss(1) < 48 * MiB


# ------------------------------------------------------------ split invariance (hypothesis)


@cache
def whole_reports(name: str, crlf: bool, keepalive: bool, done: bool) -> list[dict[str, Any]]:
    data = rebuild(BY_NAME[name], crlf=crlf, keepalive=keepalive, done=done)
    return comparable(run([data]))


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data())
def test_any_split_gives_the_same_reports(data: st.DataObject) -> None:
    f = data.draw(st.sampled_from(FILES), label="file")
    done = data.draw(st.sampled_from(f.done_variants), label="done")
    crlf = data.draw(st.booleans(), label="crlf")
    keepalive = data.draw(st.booleans(), label="keepalive")
    raw = rebuild(f, crlf=crlf, keepalive=keepalive, done=done)
    cuts = sorted(set(data.draw(st.lists(st.integers(0, len(raw)), max_size=40), label="cuts")))
    bounds = [0, *cuts, len(raw)]
    pieces = [raw[a:b] for a, b in itertools.pairwise(bounds)]
    got = run(pieces)
    assert comparable(got) == whole_reports(f.name, crlf, keepalive, done)
    assert sum(r.bytes for r in got) == len(raw)


# Texts hostile to the learned-shape fast paths (JSON string bodies): escaped quotes and
# backslashes, ``\u0022``, ``"usage":{`` and the stream's own structure inside the string.
HOSTILE_TEXTS = (
    r"\"",
    r"\\",
    r"\\\"",
    r"\u0022",
    r"\u005c\u0022",
    r"\"usage\":{\"output_tokens\":999}",
    r"\"}},\"usage\":{\"output_tokens\":7}}",
    r"\"}],\"usageMetadata\":{\"promptTokenCount\":1}}",
    "usage",
    "x" * 5000 + r"\"usage\"",
)


def _hostile_stream(api: str) -> bytes:
    texts = ["Hi", " there", *HOSTILE_TEXTS]
    if api == "anthropic":
        start = (
            '{"type":"message_start","message":{"id":"m1","model":"c",'
            '"usage":{"input_tokens":5,"output_tokens":1}}}'
        )
        end = (
            '{"type":"message_delta","delta":{"stop_reason":"end_turn"},'
            '"usage":{"output_tokens":9}}'
        )
        delta = '{"type":"content_block_delta","index":0,"delta":{"type":"text_delta","text":"'
        events = [("message_start", start)]
        events += [("content_block_delta", f'{delta}{t}"}}}}') for t in texts]
        events += [("message_delta", end), ("message_stop", '{"type":"message_stop"}')]
        return "".join(f"event: {n}\ndata: {d}\n\n" for n, d in events).encode()
    chunks = [
        f'{{"candidates":[{{"content":{{"parts":[{{"text":"{t}"}}],"role":"model"}}'
        f'{finish},"index":0}}],"usageMetadata":{{"promptTokenCount":9,"candidatesTokenCount":{i},'
        f'"totalTokenCount":{9 + i}}},"modelVersion":"g","responseId":"r1"}}'
        for i, (t, finish) in enumerate(
            [(t, "") for t in texts] + [(".", ',"finishReason":"STOP"')], start=1
        )
    ]
    return "".join(f"data: {c}\n\n" for c in chunks).encode()


@pytest.mark.parametrize("api", ["anthropic", "gemini"])
def test_hostile_text_is_text_at_every_split(api: str) -> None:
    """Text that looks like structure is read as text whatever the reads: every split in
    two and one byte at a time give the reports of one feed, which are exact."""
    raw = _hostile_stream(api)
    whole = comparable(run([raw]))
    (report,) = whole
    deltas = len(HOSTILE_TEXTS) + 2 + (api == "gemini")
    assert (report["delta_chunks"], report["invalid_json_events"]) == (deltas, 0)
    assert report["status"] == "completed" and not report["warnings"]
    usage = report["usage"]
    expected = (5, 9, 14) if api == "anthropic" else (9, deltas, 9 + deltas)
    assert (usage["input_tokens"], usage["output_tokens"], usage["total_tokens"]) == expected
    assert comparable(run([raw[i : i + 1] for i in range(len(raw))])) == whole
    for cut in range(0, len(raw) + 1, 7):
        assert comparable(run([raw[:cut], raw[cut:]])) == whole


# ------------------------------------------------- determinism, to_dict, reuse, snapshot


@pytest.mark.parametrize("f", FILES, ids=lambda f: f.name)
def test_deterministic_and_json_ready(f: CorpusFile) -> None:
    data = rebuild(f, done=f.family == "chat")
    first = run([data])
    second = run([data])
    assert first == second
    assert [r.to_dict() for r in first] == [r.to_dict() for r in second]
    for report in first:
        d = report.to_dict()
        text = json.dumps(d)
        assert json.loads(text) == d
        usage = d["usage"]
        if report.usage is None:
            assert usage is None
        else:
            for k in USAGE_FIELDS:
                assert usage[k] == getattr(report.usage, k)
            assert usage["raw"] == report.usage.raw
            assert usage["source"] == "stream"
        for k in REPORT_FIELDS:
            assert d[k] == getattr(report, k)
        assert d["warnings"] == list(report.warnings)


def test_reuse_after_finish() -> None:
    a = BY_NAME["openai-responses/openai-shell-tool.1.chunks.txt"]
    b = BY_NAME["anthropic/anthropic-text.chunks.txt"]
    c = BY_NAME["openai-chat/openai-text.chunks.txt"]
    tap = UsageTap()
    for f, done in [(a, False), (b, False), (c, True), (a, True)]:
        data = rebuild(f, done=done)
        for piece in next(chunkings(data, seed_of(f.name))):
            tap.feed(piece)
        tap.finish()
        assert comparable(tap.reports) == comparable(run([data]))
        check_reports(f.name, tap.reports, expected_reports(f, Variant(done=done)))
        # finish() resets the live state.
        assert (tap.api, tap.response_id, tap.delta_chunks, tap.bytes_fed) == (
            "unknown",
            None,
            0,
            0,
        )
    # An empty stream after a full one.
    empty = tap.finish()
    assert tap.reports == (empty,)
    assert (empty.usage, empty.api, empty.status, empty.events, empty.bytes) == (
        None,
        "unknown",
        "truncated",
        0,
        0,
    )


def test_reuse_with_api_hint_keeps_the_hint() -> None:
    tap = UsageTap("chat.completions")
    tap.feed(rebuild(BY_NAME["groq/groq-tool-call.chunks.txt"], done=True))
    tap.finish()
    assert tap.api == "chat.completions"
    assert tap.finish().api == "chat.completions"


def test_snapshot_does_not_end_the_stream() -> None:
    f = BY_NAME["openai-chat/openai-text.chunks.txt"]
    data = rebuild(f, done=True)
    tap = UsageTap()
    tap.feed(data[:FINISH_END])
    snap = tap.snapshot()
    assert (snap.status, snap.usage, snap.done, snap.events) == ("truncated", None, False, 301)
    assert (snap.response_id, snap.api, snap.bytes) == (
        "chatcmpl-D8Z5oo6uDh67AD85p73ksdT1KxhE0",
        "chat.completions",
        FINISH_END,
    )
    assert snap.delta_chunks == tap.delta_chunks == 300
    tap.feed(data[FINISH_END : USAGE_END + 2])
    snap = tap.snapshot()
    assert snap.status == "completed" and snap.usage is not None
    assert snap.usage.total_tokens == 316
    tap.feed(data[USAGE_END + 2 :])
    tap.finish()
    assert comparable(tap.reports) == comparable(run([data]))


def test_snapshot_of_a_multi_response_stream_is_the_open_one() -> None:
    f = BY_NAME["openai-responses/openai-reasoning-encrypted-content.1.chunks.txt"]
    tap = UsageTap()
    tap.feed(rebuild(f))
    snap = tap.snapshot()
    want = EXPECTED[f.name]["reports"][-1]
    assert snap.response_id == want["response_id"]
    assert snap.usage is not None and six(snap.usage) == dict(want["usage"] or {})
    assert tap.response_id == EXPECTED[f.name]["reports"][0]["response_id"]


def test_rejects_unknown_api_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="unknown api"):
        UsageTap("openai")
    with pytest.raises(ValueError):
        UsageTap(max_event_size=0)
    tap = UsageTap()
    for good in (bytearray(b"data: x\n\n"), memoryview(b"data: y\n\n")):
        tap.feed(good)
    assert tap.finish().events == 2
    with pytest.raises(TypeError):
        tap.feed("data: text\n\n")  # type: ignore[arg-type]


# ----------------------------------------------------------------------- collect_output


def expected_chat_output(f: CorpusFile) -> dict[int, dict[str, str]]:
    """text / reasoning / refusal per choice, concatenated from the chunks' deltas."""
    out: dict[int, dict[str, str]] = {}
    for p in payloads(f):
        for choice in p.get("choices") or []:
            slot = out.setdefault(
                choice.get("index", 0), {"text": "", "reasoning": "", "refusal": ""}
            )
            if isinstance(choice.get("text"), str):
                slot["text"] += choice["text"]
            delta = choice.get("delta") or {}
            for key, dst in (
                ("content", "text"),
                ("refusal", "refusal"),
                ("reasoning_content", "reasoning"),
                ("reasoning", "reasoning"),
            ):
                if isinstance(delta.get(key), str):
                    slot[dst] += delta[key]
    return out


CHAT_TEXT = [
    "openai-chat/openai-text.chunks.txt",
    "openai-chat/e2aad469b71d1d4894ff833ea147020a9d875eb7ce644a0ff355581690a4cbfd.bin",
    "groq/groq-text.chunks.txt",
    "groq/groq-reasoning.chunks.txt",
    "deepseek/deepseek-reasoning.chunks.txt",
    "mistral/mistral-text.chunks.txt",
    "openai-completions/openai-completion-text.chunks.txt",
]


@pytest.mark.parametrize("name", CHAT_TEXT)
def test_collect_output_chat_text(name: str) -> None:
    f = BY_NAME[name]
    data = rebuild(f, done=f.family == "chat")
    want = expected_chat_output(f)
    assert want[0]["text"], name
    plain = run([data])
    for chunks in [[data], *chunkings(data, seed_of(name), count=1)]:
        tap = UsageTap(collect_output=True)
        for chunk in chunks:
            tap.feed(chunk)
        tap.finish()
        out = tap.output()
        assert out is not None
        got = {
            c["index"]: {"text": c["text"], "reasoning": c["reasoning"], "refusal": c["refusal"]}
            for c in out["choices"]
        }
        assert got == want
        # Collecting the output changes no report.
        assert comparable(tap.reports) == comparable(plain)
    assert UsageTap().output() is None


def expected_tool_calls(f: CorpusFile) -> list[dict[str, Any]]:
    """``{"index", "id", "name", "arguments"}`` per tool call, recomputed from the payloads:
    Chat deltas concatenated; Responses from output_item.added and the final arguments
    (the ``.done`` event, else the deltas); Anthropic tool_use blocks with their
    input_json_delta pieces (an empty input is the block's initial ``input``, ``{}``)."""
    calls: dict[int, dict[str, Any]] = {}
    done_args: dict[int, str] = {}
    start_input: dict[int, str] = {}
    for p in payloads(f):
        kind = p.get("type")
        if "choices" in p:  # Chat Completions, corpus-framed or a raw capture
            for choice in p.get("choices") or []:
                for tc in (choice.get("delta") or {}).get("tool_calls") or []:
                    slot = calls.setdefault(tc["index"], {"id": "", "name": "", "arguments": ""})
                    slot["id"] += tc.get("id") or ""
                    fn = tc.get("function") or {}
                    slot["name"] += fn.get("name") or ""
                    slot["arguments"] += fn.get("arguments") or ""
        elif kind == "response.output_item.added" and p["item"]["type"] in (
            "function_call",
            "custom_tool_call",
        ):
            item = p["item"]
            calls[p["output_index"]] = {
                "id": item["call_id"],
                "name": item["name"],
                "arguments": "",
            }
        elif kind in (
            "response.function_call_arguments.delta",
            "response.custom_tool_call_input.delta",
        ):
            calls[p["output_index"]]["arguments"] += p["delta"]
        elif kind == "response.function_call_arguments.done":
            done_args[p["output_index"]] = p["arguments"]
        elif kind == "response.custom_tool_call_input.done":
            done_args[p["output_index"]] = p["input"]
        elif kind == "content_block_start" and p["content_block"]["type"] in (
            "tool_use",
            "server_tool_use",
        ):
            block = p["content_block"]
            calls[p["index"]] = {"id": block["id"], "name": block["name"], "arguments": ""}
            start_input[p["index"]] = json.dumps(block["input"], separators=(",", ":"))
        elif kind == "content_block_delta" and p["delta"]["type"] == "input_json_delta":
            calls[p["index"]]["arguments"] += p["delta"]["partial_json"]
    for index, args in done_args.items():
        assert calls[index]["arguments"] in ("", args), f"{f.name}: deltas disagree with .done"
        calls[index]["arguments"] = args
    for index, initial in start_input.items():
        if not calls[index]["arguments"]:
            calls[index]["arguments"] = initial
    return [{"index": i, **calls[i]} for i in sorted(calls)]


TOOL_STREAMS = [
    "deepseek/deepseek-tool-call.chunks.txt",
    "alibaba/alibaba-tool-call.chunks.txt",
    "mistral/mistral-incremental-tool-call.chunks.txt",
    "groq/groq-tool-call.chunks.txt",
    "openai-compatible/anthropic-fallback-tool-call.sse",
    "anthropic/anthropic-tool-no-args.chunks.txt",
    "anthropic/anthropic-web-search-tool.1.chunks.txt",
    "azure/azure-tool-call.1.chunks.txt",
    "openai-responses/openai-custom-tool.1.chunks.txt",
    "lmstudio/lmstudio-tool-call.1.chunks.txt",
]


@pytest.mark.parametrize("name", TOOL_STREAMS)
def test_collect_output_tool_calls(name: str) -> None:
    f = BY_NAME[name]
    data = rebuild(f, done=f.family == "chat")
    want = expected_tool_calls(f)
    assert want and all(c["name"] for c in want), name
    for chunks in [[data], *chunkings(data, seed_of(name), count=1)]:
        tap = UsageTap(collect_output=True)
        for chunk in chunks:
            tap.feed(chunk)
        tap.finish()
        out = tap.output()
        assert out is not None
        got = [call for choice in out["choices"] for call in choice["tool_calls"]]
        assert got == want


def test_collect_output_is_per_stream_on_a_reused_tap() -> None:
    """finish() resets the tap for another stream: the next stream's output must not carry
    the previous stream's text."""
    first = rebuild(BY_NAME["mistral/mistral-text.chunks.txt"], done=True)
    second = rebuild(BY_NAME["groq/groq-tool-call.chunks.txt"], done=True)
    fresh = UsageTap(collect_output=True)
    fresh.feed(second)
    fresh.finish()
    reused = UsageTap(collect_output=True)
    reused.feed(first)
    reused.finish()
    reused.feed(second)
    reused.finish()
    assert reused.reports == fresh.reports
    assert reused.output() == fresh.output()


# ------------------------------------------------------------ no Python object per event


def synthetic_stream(api: str, n: int) -> bytes:
    if api == "chat.completions":
        line = (
            b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
            b'"delta":{"content":" Hello"},"finish_reason":null}],"usage":null}\n\n'
        )
        tail = (
            b'data: {"id":"c1","object":"chat.completion.chunk","model":"m","choices":[],'
            b'"usage":{"prompt_tokens":3,"completion_tokens":%d,"total_tokens":%d}}\n\n'
            b"data: [DONE]\n\n" % (n, n + 3)
        )
        return line * n + tail
    head = frame(
        {
            "type": "response.created",
            "response": {"id": "r1", "model": "m", "status": "in_progress", "usage": None},
        },
        "response.created",
    )
    line = frame(
        {
            "type": "response.output_text.delta",
            "item_id": "msg",
            "output_index": 0,
            "content_index": 0,
            "delta": " Hello",
        },
        "response.output_text.delta",
    )
    usage = {"input_tokens": 3, "output_tokens": n, "total_tokens": n + 3}
    tail = frame(
        {
            "type": "response.completed",
            "response": {"id": "r1", "model": "m", "status": "completed", "usage": usage},
        },
        "response.completed",
    )
    return head + line * n + tail


def in_chunks(data: bytes, count: int = 4) -> list[bytes]:
    size = -(-len(data) // count)
    return [data[i : i + size] for i in range(0, len(data), size)]


class FeedCost:
    def __init__(self, blocks: int, peak: int, calls: int) -> None:
        self.blocks, self.peak, self.calls = blocks, peak, calls

    def __repr__(self) -> str:
        return f"FeedCost(blocks={self.blocks}, peak={self.peak}, calls={self.calls})"


def feed_cost(feed: Callable[[bytes], object], chunks: Sequence[bytes]) -> FeedCost:
    """Allocated blocks kept, tracemalloc peak and Python-level calls while feeding."""
    kept: list[object] = []
    calls = 0

    def profile(frame: FrameType, event: str, arg: object) -> None:
        nonlocal calls
        calls += 1

    gc.collect()
    gc.disable()
    try:
        blocks = sys.getallocatedblocks()
        tracemalloc.start()
        try:
            base, _ = tracemalloc.get_traced_memory()
            tracemalloc.reset_peak()
            sys.setprofile(profile)
            try:
                for chunk in chunks:
                    kept.append(feed(chunk))
            finally:
                sys.setprofile(None)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        kept_blocks = sys.getallocatedblocks() - blocks
    finally:
        gc.enable()
    del kept
    return FeedCost(kept_blocks, peak - base, calls)


@pytest.mark.parametrize("collect", [False, True], ids=["meter", "collect_output"])
@pytest.mark.parametrize("api", ["chat.completions", "responses"])
def test_feed_creates_no_python_object_per_event(api: str, collect: bool) -> None:
    costs: dict[int, FeedCost] = {}
    for n in (1000, 20_000):
        chunks = in_chunks(synthetic_stream(api, n))
        tap = UsageTap(collect_output=collect)
        tap.feed(b"")
        costs[n] = feed_cost(tap.feed, chunks)
        report = tap.finish()
        assert (report.delta_chunks, report.events) == (n, n + 2)
        assert report.usage is not None and report.usage.output_tokens == n
    small, large = costs[1000], costs[20_000]
    assert large.calls == small.calls, costs
    assert large.blocks <= small.blocks + 8 and large.blocks < 100, costs
    assert large.peak <= small.peak + 4 * KiB and large.peak < 64 * KiB, costs


def test_feed_cost_instrument_sees_per_event_objects() -> None:
    """Control: the same measurement on SSEDecoder.feed (which returns one Python object per
    event) grows with the number of events, so the test above can fail."""
    costs: dict[int, FeedCost] = {}
    for n in (1000, 20_000):
        decoder = SSEDecoder()
        costs[n] = feed_cost(decoder.feed, in_chunks(synthetic_stream("chat.completions", n)))
    assert costs[20_000].blocks > costs[1000].blocks + 19_000, costs
    assert costs[20_000].peak > costs[1000].peak + 19_000 * 50, costs


# ------------------------------------------------------------------------------ threads


def _pool_jobs() -> Iterator[tuple[CorpusFile, Variant, list[bytes]]]:
    for f, v in STREAMS:
        if v.crlf != v.keepalive:
            continue
        data = rebuild_variant(f, v)
        rng = random.Random(seed_of(f.name + v.label))
        # Whole (chunks >= 64 KiB are decoded with the interpreter released) and in
        # 64-200 KiB pieces, so several threads are inside native code at once.
        yield f, v, [data]
        pieces, pos = [], 0
        while pos < len(data):
            size = rng.randint(64 * KiB, 200 * KiB)
            pieces.append(data[pos : pos + size])
            pos += size
        yield f, v, pieces


def test_one_tap_per_thread() -> None:
    jobs = list(_pool_jobs())

    def work(job: tuple[CorpusFile, Variant, list[bytes]]) -> tuple[str, list[StreamReport]]:
        f, v, chunks = job
        return f"{f.name}[{v.label}]", list(run(chunks))

    with ThreadPoolExecutor(max_workers=8) as pool:
        results = list(pool.map(work, jobs * 2))
    assert len(results) == 2 * len(jobs)
    for (f, v, _), (label, reports) in zip(jobs * 2, results):
        check_reports(label, reports, expected_reports(f, v))


SHARED = synthetic_stream("chat.completions", 40_000)  # ~5.5 MB


def _race(tap: UsageTap, chunk_lists: list[list[bytes]]) -> tuple[list[int], list[BaseException]]:
    """Each list of chunks is fed to ``tap`` by its own thread, all starting together.
    Returns the bytes each thread fed successfully and the unexpected errors."""
    barrier = threading.Barrier(len(chunk_lists))
    fed = [0] * len(chunk_lists)
    errors: list[BaseException] = []

    def worker(slot: int) -> None:
        try:
            barrier.wait()
            for chunk in chunk_lists[slot]:
                try:
                    tap.feed(chunk)
                    fed[slot] += len(chunk)
                except RuntimeError as e:
                    if not BORROW_ERROR.match(str(e)):
                        raise
        except BaseException as e:  # noqa: BLE001 - reported by the caller
            errors.append(e)

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(len(chunk_lists))]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
        assert not t.is_alive()
    return fed, errors


def test_shared_tap_fails_cleanly_or_works() -> None:
    """Two threads feed one tap at once (64-160 KiB chunks, released interpreter): each
    call either succeeds or raises the borrow RuntimeError, and a failed call leaves no
    trace: the tap counts exactly the bytes of the calls that succeeded."""
    rng = random.Random(7)
    for _ in range(6):
        tap = UsageTap()
        chunk_lists = []
        for _slot in range(2):
            start = rng.randrange(len(SHARED) // 2)
            chunk_lists.append(
                [
                    SHARED[start + i : start + i + rng.randint(64 * KiB, 160 * KiB)]
                    for i in range(0, 16 * 64 * KiB, 64 * KiB)
                ]
            )
        fed, errors = _race(tap, chunk_lists)
        assert errors == []
        assert sum(fed) > 0
        assert tap.bytes_fed == sum(fed)
        report = tap.finish()
        assert isinstance(report, StreamReport)
        assert sum(r.bytes for r in tap.reports) == sum(fed)
        assert all(r.status in STATUSES for r in tap.reports)


def test_shared_tap_readers_during_feed() -> None:
    """Reading a tap while another thread feeds it: a value or the borrow error."""
    tap = UsageTap()
    stop = threading.Event()
    errors: list[BaseException] = []
    seen: list[int] = []

    def reader() -> None:
        try:
            while not stop.is_set():
                try:
                    seen.append(tap.delta_chunks)
                    tap.snapshot()
                    assert tap.api in ("unknown", "chat.completions")
                    tap.output()
                except RuntimeError as e:
                    if not BORROW_ERROR.match(str(e)):
                        raise
        except BaseException as e:  # noqa: BLE001 - reported by the main thread
            errors.append(e)

    thread = threading.Thread(target=reader)
    thread.start()
    try:
        for chunk in in_chunks(SHARED, 64):
            tap.feed(chunk)
    finally:
        stop.set()
        thread.join(timeout=60)
    assert errors == []
    assert seen == sorted(seen)
    report = tap.finish()
    assert report.delta_chunks == 40_000
    assert report.usage is not None and report.usage.output_tokens == 40_000


@pytest.mark.parametrize(
    "raw",
    [
        '{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5}',
        (
            '{"prompt_tokens":3,"completion_tokens":2,"total_tokens":5,'
            '"big":123456789012345678901234567890,"neg":-7,"f":1.5e300,"tiny":5e-324,'
            '"s":"caf\\u00e9 \\ud83d\\ude80 \\"q\\"","list":[1,[2,{"a":null}],true],'
            '"dup":1,"dup":2}'
        ),
        '{"prompt_tokens":1,"completion_tokens":1,"deep":' + "[" * 100 + "]" * 100 + "}",
    ],
)
def test_raw_usage_and_error_are_what_json_loads_gives(raw: str) -> None:
    """The report's ``usage.raw`` (and ``error``) are built natively; they must equal what
    ``json.loads`` makes of the provider's text, including what the native parser leaves to
    it (huge integers, deep nesting)."""
    error = '{"message":"x","code":' + raw + "}"
    stream = (
        f'data: {{"id":"c","object":"chat.completion.chunk","model":"m","choices":[],"usage":{raw}}}\n\n'
        f'data: {{"error":{error}}}\n\n'
    ).encode()
    tap = UsageTap()
    tap.feed(stream)
    report = tap.finish()
    assert report.usage is not None
    want = json.loads(raw)
    assert dict(report.usage.raw) == want
    assert report.usage.input_tokens == want["prompt_tokens"]
    assert json.dumps(report.error, sort_keys=True) == json.dumps(json.loads(error), sort_keys=True)
