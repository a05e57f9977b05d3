"""SSE wire bytes: JSON payloads, event framing and splitting, and loading captures to replay."""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Union

#: A stream to replay: a file path (raw SSE capture, or ``*.chunks.txt``) or raw SSE bytes.
StreamSource = Union[str, "os.PathLike[str]", bytes]

JSON = dict[str, Any]

_DONE = b"data: [DONE]\n\n"
_SSE_TYPE = "text/event-stream; charset=utf-8"

_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_CHAT_OBJECTS = ("chat.completion.chunk", "text_completion", "chat.completion.done")


def split_events(data: bytes) -> list[bytes]:
    """Split SSE bytes into events, each with its terminating blank line.

    The pieces join back to ``data`` exactly; bytes after the last blank line (an event
    never terminated) form the last piece.
    """
    out: list[bytes] = []
    start = 0
    for match in _EVENT_END.finditer(data):
        out.append(data[start : match.end()])
        start = match.end()
    if start < len(data):
        out.append(data[start:])
    return out


def _line_family(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if obj.get("object") in _CHAT_OBJECTS or "choices" in obj:
        return "chat"
    if "candidates" in obj or "usageMetadata" in obj or "event_type" in obj:
        return "gemini"
    kind = obj.get("type")
    if isinstance(kind, str):
        return "typed"
    return None


def frame_chunks(text: str | bytes, *, done: bool | None = None) -> bytes:
    """Wire-faithful SSE bytes for a ``*.chunks.txt`` capture (one JSON payload per line).

    The rules of the corpus MANIFEST: Chat Completions and legacy Completions lines become
    ``data: <line>`` and the stream ends with ``data: [DONE]``; lines with a ``type``
    (OpenAI Responses, Anthropic, Cohere) get an ``event: <type>`` line and no ``[DONE]``;
    Gemini (``candidates``/``usageMetadata``/``event_type``) lines are ``data:`` only, no
    ``[DONE]``. ``done`` forces the ``[DONE]`` sentinel on (Open Responses) or off.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    lines = [line for line in raw.split(b"\n") if line.strip()]
    family = None
    for line in lines:
        try:
            family = _line_family(json.loads(line))
        except ValueError:
            continue
        if family is not None:
            break
    out = bytearray()
    for line in lines:
        kind = None
        if family == "typed":
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("type"), str):
                kind = obj["type"]
        if kind is not None:
            out += b"event: " + kind.encode("utf-8") + b"\n"
        out += b"data: " + line + b"\n\n"
    if done if done is not None else family == "chat":
        out += _DONE
    return bytes(out)


def load_stream(source: StreamSource) -> bytes:
    """The bytes to send for ``source``: raw bytes as given, a ``*.chunks.txt`` file framed
    by ``frame_chunks``, any other file as it is on disk."""
    if isinstance(source, bytes):
        return source
    path = Path(source)
    data = path.read_bytes()
    return frame_chunks(data) if path.name.endswith(".chunks.txt") else data


def _sse_data_payloads(event: bytes) -> Iterator[bytes]:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            payload = line[5:]
            yield payload[1:] if payload.startswith(b" ") else payload


def _truncate_event(event: bytes) -> bytes:
    """``event`` with the JSON of its (first) data line cut in half: a malformed event."""
    lines = event.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(b"data:"):
            body = line.rstrip(b"\r\n")
            ending = line[len(body) :]
            keep = 6 + max(1, (len(body) - 6) // 2)
            lines[i] = body[:keep] + ending
            return b"".join(lines)
    return event


def _dumps(obj: Any) -> bytes:
    # Compact like the real API; raw UTF-8 (not \u escapes) so multi-byte characters cross
    # the wire as bytes and can be split by chunking.
    text = json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError:  # a lone surrogate echoed from a request: keep its escape
        return json.dumps(obj, separators=(",", ":")).encode("ascii")


def _data_event(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


_TERMINAL_TYPES = ("response.completed", "response.incomplete", "response.failed")


@dataclass
class _Replay:
    """A capture queued for replay: its events and what they tell."""

    name: str
    events: list[bytes]
    #: Its events carry ``event:`` lines (Responses, Anthropic...): errors are typed too.
    typed: bool = False
    #: The Response objects of its terminal Responses events.
    final_responses: list[JSON] = field(default_factory=list)

    @classmethod
    def load(cls, source: StreamSource) -> _Replay:
        name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
        data = load_stream(source)
        replay = cls(name, split_events(data))
        replay.typed = any(e.lstrip().startswith(b"event:") for e in replay.events[:3])
        for event in replay.events:
            for payload in _sse_data_payloads(event):
                try:
                    obj = json.loads(payload)
                except ValueError:
                    continue
                if not isinstance(obj, dict) or obj.get("type") not in _TERMINAL_TYPES:
                    continue
                response = obj.get("response")
                if isinstance(response, dict) and isinstance(response.get("id"), str):
                    replay.final_responses.append(response)
        return replay
