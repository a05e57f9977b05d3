"""Usage and reassembly edge cases, as a user of ``UsageTap`` and ``connect_usage`` sees them:
Assistants runs without run usage, Gemini streamed function-call arguments, several
responses in one capture, ``n > 1`` choices, ``store: false`` echoed by the response, and
token counts that are not counts.

Streams are the recorded corpus (``tests/data/corpus``, see its MANIFEST for sources and
licences) rebuilt into wire bytes, or written here by hand; upstreams are small scripted
servers on 127.0.0.1 (``Scripted`` from ``gateway_support``), every wait bounded.
"""

from __future__ import annotations

import json
from typing import Any

import httpx
import pytest
from corpus import corpus_files, rebuild
from gateway_support import TIMEOUT, Scripted
from hypothesis import given, settings
from hypothesis import strategies as st
from ssetally import UsageTap, connect_usage

BY_NAME = {f.name: f for f in corpus_files()}


def typed(events: list[tuple[str, dict[str, Any]]]) -> bytes:
    return b"".join(
        f"event: {name}\ndata: {json.dumps(data)}\n\n".encode() for name, data in events
    )


def data_only(events: list[dict[str, Any] | str]) -> bytes:
    return b"".join(
        f"data: {e if isinstance(e, str) else json.dumps(e)}\n\n".encode() for e in events
    )


def tap_all(data: bytes) -> UsageTap:
    tap = UsageTap(collect_output=True)
    for at in range(0, len(data), 61):
        tap.feed(data[at : at + 61])
    tap.finish()
    return tap


def answer(data: bytes) -> Any:
    def handle(h: Any, stop: Any) -> None:
        if h.command != "POST":
            h.send_response(404)
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        h.send_response(200)
        h.send_header("Content-Type", "text/event-stream")
        h.end_headers()
        h.wfile.write(data)

    return handle


# ------------------------------------------------------------------ 1. Assistants step usage


def _step(step_id: str, out: int) -> dict[str, Any]:
    return {
        "id": step_id,
        "object": "thread.run.step",
        "status": "completed",
        "usage": {"prompt_tokens": 100, "completion_tokens": out, "total_tokens": 100 + out},
    }


def _message_delta(text: str) -> dict[str, Any]:
    return {
        "id": "msg_1",
        "object": "thread.message.delta",
        "delta": {"content": [{"index": 0, "type": "text", "text": {"value": text}}]},
    }


def assistants_run(end: str | None) -> bytes:
    events: list[tuple[str, dict[str, Any]]] = [
        ("thread.run.created", {"id": "run_1", "object": "thread.run", "status": "queued"}),
        ("thread.message.delta", _message_delta("Hel")),
        ("thread.run.step.completed", _step("step_1", 120)),
        ("thread.message.delta", _message_delta("lo")),
        ("thread.run.step.completed", _step("step_2", 180)),
        # Sent twice by the server: one step, counted once.
        ("thread.run.step.completed", _step("step_2", 180)),
    ]
    if end is not None:
        run = {"id": "run_1", "object": "thread.run", "status": end, "usage": None}
        events.append((f"thread.run.{end}", run))
    return typed(events)


@pytest.mark.parametrize("end", ["requires_action", None])
def test_assistants_run_without_run_usage_reports_the_sum_of_its_steps(end: str | None) -> None:
    """Regression: the report said no usage (then an estimate of 0 output tokens) while the
    step usages summed to 300; a repeated step event was counted twice."""
    tap = tap_all(assistants_run(end))
    report = tap.reports[-1]
    assert report.usage is not None
    assert (report.usage.input_tokens, report.usage.output_tokens) == (200, 300)
    assert report.usage.note is not None and "sum" in report.usage.note
    assert len(report.step_usages) == 2
    out = tap.output()
    assert out is not None and out["choices"][0]["text"] == "Hello"

    with (
        Scripted(answer(assistants_run(end))) as upstream,
        httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
        connect_usage(client, "POST", upstream.origin + "/v1/threads/runs", json={}) as s,
    ):
        for _ in s:
            pass
    assert s.report is not None and s.report.usage is not None
    assert s.report.usage.source == "stream"
    assert s.report.usage.output_tokens == 300
    assert "sum" in (s.report.usage.note or "")
    assert [a.source for a in s.report.attempts] == ["stream"]


# ------------------------------------------------------------ 2. Gemini streamed arguments


def test_gemini_streamed_function_call_arguments() -> None:
    """Regression: ``partialArgs`` / ``willContinue`` gave 8 empty tool calls instead of 2
    calls with their arguments."""
    f = BY_NAME["google/google-stream-tool-call-arguments.chunks.txt"]
    out = tap_all(rebuild(f)).output()
    assert out is not None
    calls = [(c["name"], json.loads(c["arguments"])) for c in out["choices"][0]["tool_calls"]]
    assert calls == [
        ("getWeather", {"location": "Boston"}),
        ("getWeather", {"location": "San Francisco"}),
    ]
    f = BY_NAME["google/google-vertex-stream-tool-call-arguments-nested.1.chunks.txt"]
    out = tap_all(rebuild(f)).output()
    assert out is not None
    [call] = out["choices"][0]["tool_calls"]
    args = json.loads(call["arguments"])
    assert args["recipe"]["ingredients"][1] == {"amount": "1 lb", "name": "Ground beef"}


# ----------------------------------------------------------- 3. one output per response


def test_each_response_of_a_capture_has_its_own_output() -> None:
    """Regression: two concatenated responses were reassembled into one output
    (``nonUsefulToolnonUsefulTool`` for the Cerebras capture)."""
    f = BY_NAME["cerebras/cererebras-structured-output-tools.1.chunks.txt"]
    tap = tap_all(rebuild(f, done=True))
    outputs = tap.outputs()
    assert [o["response_id"] for o in outputs] == [r.response_id for r in tap.reports]
    assert len(outputs) == 2
    names = [c["name"] for o in outputs for ch in o["choices"] for c in ch["tool_calls"]]
    assert "nonUsefulTool" in names
    assert not any("nonUsefulToolnonUsefulTool" in n for n in names)
    assert tap.output() == outputs[-1]

    def chunk(rid: str, call: str, finish: str | None = None) -> dict[str, Any]:
        delta: dict[str, Any] = (
            {}
            if finish
            else {
                "tool_calls": [
                    {"index": 0, "id": call, "function": {"name": "f", "arguments": "{}"}}
                ]
            }
        )
        choice = {"index": 0, "delta": delta, "finish_reason": finish}
        return {"id": rid, "object": "chat.completion.chunk", "model": "m", "choices": [choice]}

    data = data_only(
        [
            chunk("r1", "call_a"),
            chunk("r1", "", "tool_calls"),
            chunk("r2", "call_b"),
            chunk("r2", "", "tool_calls"),
            "[DONE]",
        ]
    )
    tap = tap_all(data)
    got = [
        (
            o["response_id"],
            [(c["id"], c["name"], c["arguments"]) for c in o["choices"][0]["tool_calls"]],
        )
        for o in tap.outputs()
    ]
    assert got == [("r1", [("call_a", "f", "{}")]), ("r2", [("call_b", "f", "{}")])]
    assert UsageTap().outputs() == []


# ----------------------------------------------------------------------- 4. n > 1 choices


def test_per_choice_text_finish_reason_and_counts() -> None:
    def chunk(choices: list[dict[str, Any]], usage: Any = None) -> dict[str, Any]:
        return {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": choices,
            "usage": usage,
        }

    data = data_only(
        [
            chunk(
                [{"index": 0, "delta": {"content": "a"}}, {"index": 1, "delta": {"content": "b"}}]
            ),
            chunk([{"index": 1, "delta": {}, "finish_reason": "length"}]),
            chunk([{"index": 0, "delta": {}, "finish_reason": "stop"}]),
            chunk([], {"prompt_tokens": 2, "completion_tokens": 3, "total_tokens": 5}),
            "[DONE]",
        ]
    )
    out = tap_all(data).output()
    assert out is not None
    got = [(c["index"], c["text"], c["finish_reason"]) for c in out["choices"]]
    assert got == [(0, "a", "stop"), (1, "b", "length")]
    gemini = {
        "candidates": [
            {
                "index": 0,
                "content": {"parts": [{"text": "x"}]},
                "finishReason": "STOP",
                "tokenCount": 4,
            },
            {
                "index": 1,
                "content": {"parts": [{"text": "y"}]},
                "finishReason": "STOP",
                "tokenCount": 9,
            },
        ],
        "usageMetadata": {"promptTokenCount": 1, "candidatesTokenCount": 13},
        "responseId": "g1",
    }
    out = tap_all(data_only([gemini])).output()
    assert out is not None
    assert [c["output_tokens"] for c in out["choices"]] == [4, 9]


# ------------------------------------------------------- 5. store: false in response.created


def _cut_responses_stream(store: bool) -> bytes:
    response = {"id": "resp_abc", "model": "m", "status": "in_progress", "store": store}
    delta = {"type": "response.output_text.delta", "output_index": 0, "delta": "Hi there"}
    return typed(
        [
            ("response.created", {"type": "response.created", "response": response}),
            ("response.output_text.delta", delta),
        ]
    )


def test_store_false_in_response_created_skips_the_retrieval() -> None:
    """Regression: a response that said ``store: false`` still got a ``GET`` that could
    only 404; it is skipped now, and the report says why."""
    with Scripted(answer(_cut_responses_stream(False))) as upstream:
        with (
            httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
            connect_usage(client, "POST", upstream.origin + "/v1/responses", json={}) as s,
        ):
            for _ in s:
                pass
        methods = [m for m, _ in upstream.requests]
    assert methods == ["POST"]
    assert s.report is not None
    [retrieval] = [a for a in s.report.attempts if a.source == "retrieval"]
    assert not retrieval.ok and "store=false" in retrieval.reason
    assert "response.created" in retrieval.reason

    tap = tap_all(_cut_responses_stream(True))
    assert tap.store is True
    tap = tap_all(_cut_responses_stream(False))
    assert tap.store is False
    assert UsageTap().store is None


# --------------------------------------------------------------- 6. counts that are not


BAD_COUNTS = st.one_of(
    st.integers(max_value=-1),
    st.integers(min_value=2**64),
    st.floats(allow_nan=False, allow_infinity=False).filter(lambda f: f != int(f) or f < 0),
    st.sampled_from([1e308, -0.5, 2.5]),
    st.text(max_size=50),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


@settings(max_examples=150, deadline=None)
@given(value=st.one_of(BAD_COUNTS, st.integers(min_value=0, max_value=2**64 - 1)))
def test_any_value_in_a_token_field_gives_a_count_or_a_warning(value: Any) -> None:
    """Property: whatever a token field holds, the report either counts it or warns naming
    the field; never silence."""
    usage = {"prompt_tokens": 3, "completion_tokens": value}
    chunk = {
        "id": "c",
        "object": "chat.completion.chunk",
        "model": "m",
        "choices": [],
        "usage": usage,
    }
    report = tap_all(data_only([chunk, "[DONE]"])).reports[-1]
    assert report.usage is not None
    counted = report.usage.output_tokens
    warned = [w for w in report.warnings if "completion_tokens" in w]
    if counted is None:
        assert warned, (value, report.warnings)
        assert all(len(w) < 300 for w in warned)
    else:
        assert counted == value and not warned


def test_duplicate_usage_with_other_numbers_warns() -> None:
    def usage(out: int) -> dict[str, Any]:
        u = {"prompt_tokens": 3, "completion_tokens": out, "total_tokens": 3 + out}
        return {
            "id": "c",
            "object": "chat.completion.chunk",
            "model": "m",
            "choices": [],
            "usage": u,
        }

    report = tap_all(data_only([usage(5), usage(9), "[DONE]"])).reports[-1]
    assert report.usage is not None and report.usage.output_tokens == 9
    assert any("more than once" in w for w in report.warnings), report.warnings


def test_reassembly_caps_warn_when_they_cut() -> None:
    choices = [{"index": i, "delta": {"content": "x"}} for i in range(130)]
    chunk = {"id": "c", "object": "chat.completion.chunk", "model": "m", "choices": choices}
    tap = tap_all(data_only([chunk, "[DONE]"]))
    out = tap.output()
    assert out is not None and len(out["choices"]) == 128
    assert any("128" in w for w in tap.reports[-1].warnings), tap.reports[-1].warnings
