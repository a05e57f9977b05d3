"""Shared planning: an answer's ``_Plan``, request limits, token counts and replay plans."""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, NamedTuple, Protocol

from ._answers import (
    _PIECE,
    _TOOL_CALL_OVERHEAD,
    _answer_text,
    _Choice,
    _fake_object,
    _Prompt,
    _reasoning_tokens,
    _text_of,
    _ToolCall,
)
from ._errors import _STREAM_ERROR_MESSAGE, _BadRequest, _error
from ._records import Served
from ._sse import _SSE_TYPE, JSON, _data_event, _dumps, _Replay

_OBFUSCATION_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


class _Context(Protocol):
    """What planning needs from the server (``ReplayServer`` provides it)."""

    seed: str
    responses_done: bool

    def count_tokens(self, text: str) -> int: ...

    def _new_id(self, prefix: str, length: int) -> str: ...

    def _prompt(self, material: Any, tokens: int) -> _Prompt: ...

    def _add_served(self, served: Served) -> Served: ...

    def _store_response(self, obj: JSON, polls: int) -> None: ...


@dataclass
class _Plan:
    """What to send: the events of a stream (with the error tail to inject on request) or a
    JSON body."""

    served: Served
    events: list[bytes] = field(default_factory=list)
    on_error: Callable[[int], list[bytes]] | None = None
    body: JSON | None = None
    content_type: str = _SSE_TYPE


def _message_tokens(server: _Context, messages: Any) -> int:
    # openai-cookbook num_tokens_from_messages: 3 per message, +1 per name, 3 of priming.
    total = 3
    for message in messages if isinstance(messages, list) else ():
        if not isinstance(message, dict):
            continue
        total += 3
        for key, value in message.items():
            if isinstance(value, str):
                total += server.count_tokens(value)
            elif key == "content":
                total += server.count_tokens(_text_of(value))
            elif value is not None:
                total += server.count_tokens(_dumps(value).decode("utf-8"))
            if key == "name":
                total += 1
    return total


def _tools_tokens(server: _Context, body: Mapping[str, Any]) -> int:
    tools = body.get("tools")
    return server.count_tokens(_dumps(tools).decode("utf-8")) + 9 if tools else 0


def _choice(
    server: _Context,
    model: str,
    prompt: str,
    index: int,
    budget: int | None,
    tool: tuple[str, Any] | None,
) -> _Choice:
    """Choice ``index`` of the answer to ``prompt``: a tool call, or a text cut to ``budget``."""
    reasoning = _reasoning_tokens(model, prompt, index, server.seed)
    if tool is not None:
        rng = random.Random(f"{server.seed}|tool|{index}|{prompt}")
        arguments = _dumps(_fake_object(tool[1], rng)).decode("utf-8")
        call = _ToolCall(server._new_id("call_", 24), tool[0], arguments)
        tokens = server.count_tokens(tool[0]) + server.count_tokens(arguments) + _TOOL_CALL_OVERHEAD
        return _Choice(index, "", [], "tool_calls", reasoning + tokens, reasoning, call)
    text = _answer_text(prompt, index, server.seed)
    pieces = _PIECE.findall(text)
    if budget is None:
        return _Choice(
            index, text, pieces, "stop", reasoning + server.count_tokens(text), reasoning
        )
    reasoning = min(reasoning, budget)
    room = budget - reasoning
    kept: list[str] = []
    for piece in pieces:
        if server.count_tokens("".join(kept) + piece) > room:
            break
        kept.append(piece)
    if len(kept) == len(pieces):
        return _Choice(
            index, text, pieces, "stop", reasoning + server.count_tokens(text), reasoning
        )
    # Stopped at the limit: the model spent its whole budget (a last token may have been
    # part of a character that was never emitted), as the real API reports.
    return _Choice(index, "".join(kept), kept, "length", budget, reasoning)


def _plan_replay(server: _Context, replay: _Replay, body: Any, polls: int) -> _Plan:
    """The plan sending ``replay`` as it is (its final Response objects stored)."""
    model = body.get("model") if isinstance(body, dict) else None
    served = Served(
        "replay",
        replay.name,
        model if isinstance(model, str) else None,
        True,
        source=replay.name,
    )
    server._add_served(served)
    # The capture's final Response objects become retrievable, as after a live stream.
    for response in replay.final_responses:
        server._store_response(response, polls)
        served.usage = response.get("usage")
    is_typed = replay.typed

    def on_error(position: int) -> list[bytes]:
        if is_typed:
            error = {
                "type": "error",
                "sequence_number": position,
                "error": _error(_STREAM_ERROR_MESSAGE, "server_error")["error"],
            }
            return [b"event: error\n" + _data_event(error)]
        return [_data_event(_error(_STREAM_ERROR_MESSAGE, "server_error"))]

    return _Plan(served, list(replay.events), on_error, content_type="text/event-stream")


def _budget(body: Mapping[str, Any], *names: str) -> int | None:
    """The output token limit named by the first of ``names`` present in ``body``."""
    for name in names:
        value = body.get(name)
        if value is None:
            continue
        if not isinstance(value, int) or isinstance(value, bool) or value < 1:
            raise _BadRequest(f"Invalid '{name}': expected an integer >= 1.", name)
        return value
    return None


def _n(body: Mapping[str, Any]) -> int:
    """The number of choices asked for."""
    n = body.get("n", 1)
    if n is None:
        return 1
    if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
        raise _BadRequest("Invalid 'n': expected an integer from 1 to 128.", "n")
    return n


def _served_for(
    server: _Context,
    endpoint: str,
    answer_id: str,
    model: str,
    stream: bool,
    usage: JSON,
    usage_sent: bool,
    choices: Sequence[_Choice],
) -> Served:
    """The ``Served`` record of a generated answer, added to the server's list."""
    return server._add_served(
        Served(
            endpoint,
            answer_id,
            model,
            stream,
            usage,
            usage_sent,
            texts=[c.text for c in choices],
            finish_reasons=[c.finish for c in choices],
            reasoning_tokens=sum(c.reasoning_tokens for c in choices),
            tool_calls=[
                {"id": c.tool.id, "name": c.tool.name, "arguments": c.tool.arguments}
                for c in choices
                if c.tool is not None
            ],
        )
    )


def _stream_options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("stream_options")
    return options if isinstance(options, dict) else {}


class _Streaming(NamedTuple):
    """How a Chat or legacy Completions request asked to be answered."""

    served: Served
    stream: bool
    include_usage: bool
    options: dict[str, Any]


def _streaming_served(
    server: _Context,
    endpoint: str,
    id_prefix: str,
    body: Mapping[str, Any],
    model: str,
    usage: JSON,
    choices: Sequence[_Choice],
) -> _Streaming:
    """Read ``stream`` and ``stream_options`` and record the answer: usage is sent unless the
    request streams without ``include_usage``, as OpenAI does."""
    stream = body.get("stream") is True
    options = _stream_options(body)
    include_usage = stream and options.get("include_usage") is True
    served = _served_for(
        server,
        endpoint,
        server._new_id(id_prefix, 29),
        model,
        stream,
        usage,
        include_usage or not stream,
        choices,
    )
    return _Streaming(served, stream, include_usage, options)


def _obfuscation(rng: random.Random) -> str:
    """The random padding of an ``obfuscation`` field."""
    return "".join(rng.choice(_OBFUSCATION_CHARS) for _ in range(rng.randint(1, 16)))
