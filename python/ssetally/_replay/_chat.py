"""Chat Completions and legacy Completions answers: their chunk events and JSON objects."""

from __future__ import annotations

import hashlib
import random
import time
from collections.abc import Sequence

from ._answers import _Choice, _last_user_text, _pick_tool, _Prompt
from ._errors import _STREAM_ERROR_MESSAGE, _BadRequest, _error
from ._plan import (
    _budget,
    _choice,
    _Context,
    _message_tokens,
    _n,
    _obfuscation,
    _Plan,
    _streaming_served,
    _tools_tokens,
)
from ._records import Served
from ._sse import _DONE, JSON, _data_event


def _plan_chat(server: _Context, body: JSON) -> _Plan:
    """The plan of a Chat Completions answer."""
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise _BadRequest("Invalid 'messages': expected a non-empty array.", "messages")
    model = str(body["model"])
    text = _last_user_text(messages)
    tokens = _message_tokens(server, messages) + _tools_tokens(server, body)
    prompt = server._prompt({"m": messages, "t": body.get("tools")}, tokens)
    budget = _budget(body, "max_completion_tokens", "max_tokens")
    tool = _pick_tool(body, text)
    choices = [_choice(server, model, text, i, budget, tool) for i in range(_n(body))]
    usage = _chat_usage(prompt, choices)
    served, stream, include_usage, options = _streaming_served(
        server, "chat.completions", "chatcmpl-", body, model, usage, choices
    )
    created = int(time.time())
    fingerprint = "fp_" + hashlib.sha256(server.seed.encode()).hexdigest()[:10]
    if not stream:
        return _Plan(
            served, body=_chat_object(served.id, created, model, fingerprint, choices, usage)
        )
    base = {
        "id": served.id,
        "object": "chat.completion.chunk",
        "created": created,
        "model": model,
        "service_tier": "default",
        "system_fingerprint": fingerprint,
    }
    rng = random.Random(f"{server.seed}|obfuscation|{served.id}")
    obfuscate = options.get("include_obfuscation") is not False

    def chunk(choice_list: list[JSON], usage_value: JSON | None = None) -> bytes:
        obj = {**base, "choices": choice_list}
        if include_usage:  # as OpenAI does: "usage" (null until the last chunk) only then
            obj["usage"] = usage_value
        if obfuscate:
            obj["obfuscation"] = _obfuscation(rng)
        return _data_event(obj)

    def delta_choice(index: int, delta: JSON, finish: str | None = None) -> JSON:
        return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

    events = []
    for c in choices:
        first: JSON = {
            "role": "assistant",
            "content": "" if c.tool is None else None,
            "refusal": None,
        }
        if c.tool is not None:
            first["tool_calls"] = [
                {
                    "index": 0,
                    "id": c.tool.id,
                    "type": "function",
                    "function": {"name": c.tool.name, "arguments": ""},
                }
            ]
        events.append(chunk([delta_choice(c.index, first)]))
    streams = [_chat_deltas(c) for c in choices]
    for step in range(max((len(s) for s in streams), default=0) + 1):
        for c, deltas in zip(choices, streams):
            if step < len(deltas):
                events.append(chunk([delta_choice(c.index, deltas[step])]))
            elif step == len(deltas):
                events.append(chunk([delta_choice(c.index, {}, c.finish)]))
    if include_usage:
        events.append(chunk([], usage))
    return _ending(served, events)


def _plan_completions(server: _Context, body: JSON) -> _Plan:
    """The plan of a legacy Completions answer."""
    prompt_value = body.get("prompt", "")
    prompts = prompt_value if isinstance(prompt_value, list) else [prompt_value]
    if not all(isinstance(p, str) for p in prompts) or not prompts:
        raise _BadRequest("Invalid 'prompt': expected a string or an array of strings.", "prompt")
    model = str(body["model"])
    text = str(prompts[0])
    prompt = server._prompt({"p": prompts}, sum(server.count_tokens(str(p)) for p in prompts))
    # Legacy Completions stops at 16 tokens unless told otherwise, as upstream does.
    budget = _budget(body, "max_tokens")
    choices = [
        _choice(server, model, text, i, 16 if budget is None else budget, None)
        for i in range(_n(body))
    ]
    completion = sum(c.completion_tokens for c in choices)
    usage = {
        "prompt_tokens": prompt.tokens,
        "completion_tokens": completion,
        "total_tokens": prompt.tokens + completion,
    }
    served, stream, include_usage, _ = _streaming_served(
        server, "completions", "cmpl-", body, model, usage, choices
    )
    created = int(time.time())
    if not stream:
        return _Plan(
            served,
            body={
                "id": served.id,
                "object": "text_completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "text": c.text,
                        "index": c.index,
                        "logprobs": None,
                        "finish_reason": c.finish,
                    }
                    for c in choices
                ],
                "usage": usage,
            },
        )

    def chunk(choice_list: list[JSON], usage_value: JSON | None = None) -> bytes:
        if usage_value is not None:
            return _data_event(
                {
                    "id": served.id,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "usage": usage_value,
                    "choices": choice_list,
                }
            )
        return _data_event(
            {
                "id": served.id,
                "object": "text_completion",
                "created": created,
                "choices": choice_list,
                "model": model,
                **({"usage": None} if include_usage else {}),
            }
        )

    events = []
    pieces = [c.pieces or [""] for c in choices]
    for step in range(max(len(p) for p in pieces)):
        for c, own in zip(choices, pieces):
            if step < len(own):
                finish = c.finish if step == len(own) - 1 else None
                events.append(
                    chunk(
                        [
                            {
                                "text": own[step],
                                "index": c.index,
                                "logprobs": None,
                                "finish_reason": finish,
                            }
                        ]
                    )
                )
    if include_usage:
        events.append(chunk([], usage))
    return _ending(served, events)


def _chat_deltas(choice: _Choice) -> list[JSON]:
    """The deltas streaming ``choice`` after its first chunk (text or tool arguments)."""
    if choice.tool is not None:
        return [
            {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            for piece in choice.tool.pieces
        ]
    return [{"content": piece} for piece in choice.pieces]


def _chat_usage(prompt: _Prompt, choices: Sequence[_Choice]) -> JSON:
    """The Chat Completions ``usage`` object."""
    completion = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt.tokens,
        "completion_tokens": completion,
        "total_tokens": prompt.tokens + completion,
        "prompt_tokens_details": {"cached_tokens": prompt.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": sum(c.reasoning_tokens for c in choices),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_object(
    answer_id: str,
    created: int,
    model: str,
    fingerprint: str,
    choices: Sequence[_Choice],
    usage: JSON,
) -> JSON:
    """The ``chat.completion`` object of a non-streamed answer."""
    out = []
    for c in choices:
        message: JSON = {
            "role": "assistant",
            "content": c.text if c.tool is None else None,
            "refusal": None,
            "annotations": [],
        }
        if c.tool is not None:
            message["tool_calls"] = [
                {
                    "id": c.tool.id,
                    "type": "function",
                    "function": {"name": c.tool.name, "arguments": c.tool.arguments},
                }
            ]
        out.append(
            {"index": c.index, "message": message, "logprobs": None, "finish_reason": c.finish}
        )
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": out,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": fingerprint,
    }


def _ending(served: Served, events: list[bytes]) -> _Plan:
    """``events`` closed by ``[DONE]``; a scripted error ends the stream as OpenAI's do."""
    events.append(_DONE)

    def on_error(position: int) -> list[bytes]:
        return [_data_event(_error(_STREAM_ERROR_MESSAGE, "server_error")), _DONE]

    return _Plan(served, events, on_error)
