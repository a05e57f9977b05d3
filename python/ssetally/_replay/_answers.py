"""Answer content: texts, reasoning tokens, prompt text, tool choice and fake arguments."""

from __future__ import annotations

import random
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from ._sse import JSON

_WORDS = (
    "stream",
    "token",
    "usage",
    "tally",
    "event",
    "chunk",
    "parser",
    "replay",
    "server",
    "budget",
    "cache",
    "delta",
    "offline",
    "client",
    "café",
    "naïve",
    "Grüße",
    "façade",
    "mañana",
    "données",
    "日本語",
    "データ",
    "Ελληνικά",
    "привет",
)
_EMOJI = ("🚀", "✨", "🧮", "📈", "🎉")
_PLACES = ("São Paulo", "Zürich", "東京", "Kraków", "Reykjavík")
_PIECE = re.compile(r"\s*\S+")
_ARG_PIECE = re.compile(r"\w+|\W+")
_REASONING_MODEL = re.compile(r"o\d|gpt-5")
#: Tokens a function call costs on top of its name and arguments (the call's framing).
_TOOL_CALL_OVERHEAD = 7


def _answer_text(prompt: str, index: int, seed: str) -> str:
    rng = random.Random(f"{seed}|answer|{index}|{prompt}")
    topic = " ".join(prompt.split()[:6]) or "nothing in particular"
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(18, 30)))
    return f"Replay {index + 1} on “{topic}”: {words} {rng.choice(_EMOJI)} — done."


def _reasoning_tokens(model: str, prompt: str, index: int, seed: str) -> int:
    if not _REASONING_MODEL.match(model):
        return 0
    return 64 * random.Random(f"{seed}|reasoning|{index}|{prompt}").randint(1, 6)


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _last_user_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    if isinstance(items, list):
        for item in reversed(items):
            if isinstance(item, dict) and item.get("role") == "user":
                return _text_of(item.get("content"))
    return ""


def _tool_specs(body: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, parameters) of the function tools, in Chat (nested) or Responses (flat) shape."""
    specs = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        inner: Any = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = inner.get("name")
        if isinstance(name, str):
            specs.append((name, inner.get("parameters")))
    return specs


def _pick_tool(body: Mapping[str, Any], prompt: str) -> tuple[str, Any] | None:
    specs = _tool_specs(body)
    choice = body.get("tool_choice", "auto")
    if not specs or choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        wanted = choice.get("name") or (
            function.get("name") if isinstance(function, dict) else None
        )
        for spec in specs:
            if spec[0] == wanted:
                return spec
    lowered = prompt.lower()
    for spec in specs:
        if spec[0].lower() in lowered:
            return spec
    return specs[0] if choice == "required" or isinstance(choice, dict) else None


def _fake_value(schema: Any, rng: random.Random) -> Any:
    if not isinstance(schema, dict):
        return rng.choice(_PLACES)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        return _fake_object(schema, rng)
    if kind == "array":
        return [_fake_value(schema.get("items"), rng)]
    if kind == "integer":
        return rng.randint(1, 9)
    if kind == "number":
        return rng.randint(10, 300) / 10
    if kind == "boolean":
        return True
    return rng.choice(_PLACES)


def _fake_object(schema: Any, rng: random.Random) -> JSON:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    names = [n for n in properties if not isinstance(required, list) or n in required]
    return {n: _fake_value(properties[n], rng) for n in names}


@dataclass
class _ToolCall:
    """A generated function call."""

    id: str
    name: str
    arguments: str

    @property
    def pieces(self) -> list[str]:
        return _ARG_PIECE.findall(self.arguments)


@dataclass
class _Choice:
    """One generated choice: its text (or tool call), how it ends and its token counts."""

    index: int
    text: str
    pieces: list[str]
    finish: str
    completion_tokens: int
    reasoning_tokens: int
    tool: _ToolCall | None = None


@dataclass
class _Prompt:
    """The token count of a prompt and how many of them were served from cache."""

    tokens: int
    cached: int
