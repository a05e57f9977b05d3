"""Responses answers: their typed events with sequence numbers and the Response objects."""

from __future__ import annotations

import random
import time
from collections.abc import Mapping
from typing import Any

from ._answers import _REASONING_MODEL, _last_user_text, _pick_tool
from ._errors import _STREAM_ERROR_MESSAGE, _BadRequest
from ._plan import (
    _budget,
    _choice,
    _Context,
    _message_tokens,
    _obfuscation,
    _Plan,
    _served_for,
    _tools_tokens,
)
from ._sse import _DONE, JSON, _data_event


def _plan_responses(server: _Context, body: JSON, polls: int) -> _Plan:
    """The plan of a Responses answer; its final object is stored before the first byte
    (``polls``: how many retrievals report it in progress first)."""
    input_value = body.get("input")
    if input_value is None or not isinstance(input_value, (str, list)):
        raise _BadRequest("Invalid 'input': expected a string or an array of items.", "input")
    model = str(body["model"])
    text = _last_user_text(input_value)
    messages: list[Any] = []
    if isinstance(body.get("instructions"), str):
        messages.append({"role": "developer", "content": body["instructions"]})
    if isinstance(input_value, str):
        messages.append({"role": "user", "content": input_value})
    else:
        messages.extend(input_value)
    tokens = _message_tokens(server, messages) + _tools_tokens(server, body)
    prompt = server._prompt({"m": messages, "t": body.get("tools")}, tokens)
    budget = _budget(body, "max_output_tokens")
    choice = _choice(server, model, text, 0, budget, _pick_tool(body, text))
    usage = {
        "input_tokens": prompt.tokens,
        "input_tokens_details": {"cached_tokens": prompt.cached},
        "output_tokens": choice.completion_tokens,
        "output_tokens_details": {"reasoning_tokens": choice.reasoning_tokens},
        "total_tokens": prompt.tokens + choice.completion_tokens,
    }
    stream = body.get("stream") is True
    served = _served_for(
        server, "responses", server._new_id("resp_", 48), model, stream, usage, True, [choice]
    )
    incomplete = choice.finish == "length"
    created = int(time.time())
    item_status = "incomplete" if incomplete else "completed"

    # The output items, each as (added item, [events between], done item).
    items: list[tuple[JSON, list[JSON], JSON]] = []
    if choice.reasoning_tokens:
        reasoning = {"id": server._new_id("rs_", 48), "type": "reasoning", "summary": []}
        items.append((reasoning, [], reasoning))
    if choice.tool is not None:
        call = choice.tool
        fc_id = server._new_id("fc_", 48)
        added: JSON = {
            "id": fc_id,
            "type": "function_call",
            "status": "in_progress",
            "arguments": "",
            "call_id": call.id,
            "name": call.name,
        }
        middle: list[JSON] = [
            {
                "type": "response.function_call_arguments.delta",
                "item_id": fc_id,
                "output_index": len(items),
                "delta": piece,
            }
            for piece in call.pieces
        ]
        middle.append(
            {
                "type": "response.function_call_arguments.done",
                "item_id": fc_id,
                "output_index": len(items),
                "arguments": call.arguments,
                "name": call.name,
            }
        )
        items.append((added, middle, {**added, "status": "completed", "arguments": call.arguments}))
    elif choice.pieces or not incomplete:
        msg_id = server._new_id("msg_", 48)
        index = len(items)
        part: JSON = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
        where = {"item_id": msg_id, "output_index": index, "content_index": 0}
        middle = [{"type": "response.content_part.added", **where, "part": part}]
        middle += [
            {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
            for piece in choice.pieces
        ]
        done_part = {**part, "text": choice.text}
        middle.append(
            {"type": "response.output_text.done", **where, "text": choice.text, "logprobs": []}
        )
        middle.append({"type": "response.content_part.done", **where, "part": done_part})
        added = {
            "id": msg_id,
            "type": "message",
            "status": "in_progress",
            "content": [],
            "role": "assistant",
        }
        items.append((added, middle, {**added, "status": item_status, "content": [done_part]}))

    def response(status: str, **changes: Any) -> JSON:
        obj = _response_object(body, served.id, created, model, status)
        obj.update(changes)
        return obj

    final = response(
        "incomplete" if incomplete else "completed",
        completed_at=None if incomplete else int(time.time()),
        incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
        output=[done for _, _, done in items],
        usage=usage,
    )
    # Stored before the first byte: a stream cut later can still be retrieved.
    server._store_response(final, polls)
    if not stream:
        return _Plan(served, body=final)

    obfuscate = not (
        isinstance(body.get("stream_options"), dict)
        and body["stream_options"].get("include_obfuscation") is False
    )
    rng = random.Random(f"{server.seed}|obfuscation|{served.id}")
    plain: list[JSON] = [
        {"type": "response.created", "response": response("in_progress")},
        {"type": "response.in_progress", "response": response("in_progress")},
    ]
    for i, (added, middle, done) in enumerate(items):
        plain.append({"type": "response.output_item.added", "output_index": i, "item": added})
        plain.extend(middle)
        plain.append({"type": "response.output_item.done", "output_index": i, "item": done})
    plain.append(
        {
            "type": "response.incomplete" if incomplete else "response.completed",
            "response": final,
        }
    )

    def encode(obj: JSON, position: int) -> bytes:
        obj = {**obj, "sequence_number": position}
        if obfuscate and obj["type"].endswith(".delta"):
            obj["obfuscation"] = _obfuscation(rng)
        kind: str = obj["type"]
        return b"event: " + kind.encode() + b"\n" + _data_event(obj)

    events = [encode(obj, i) for i, obj in enumerate(plain)]
    if server.responses_done:
        events.append(_DONE)

    def on_error(position: int) -> list[bytes]:
        error = {
            "type": "server_error",
            "code": "server_error",
            "message": _STREAM_ERROR_MESSAGE,
            "param": None,
        }
        failed = response(
            "failed", error={"code": "server_error", "message": _STREAM_ERROR_MESSAGE}
        )
        server._store_response(failed, polls)
        served.usage_sent = False
        out = [
            encode({"type": "error", "error": error}, position),
            encode({"type": "response.failed", "response": failed}, position + 1),
        ]
        return out + ([_DONE] if server.responses_done else [])

    return _Plan(served, events, on_error)


def _response_object(
    body: Mapping[str, Any], rid: str, created: int, model: str, status: str
) -> JSON:
    """A Response object with ``status`` and nothing in it yet."""
    reasoning_model = bool(_REASONING_MODEL.match(model))
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": None,
        "prompt_cache_retention": None,
        "reasoning": {"effort": "medium" if reasoning_model else None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": 1,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": 0,
        "top_p": 1,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }
