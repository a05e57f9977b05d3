"""Metering a non-streamed JSON answer with the same native code that reads streams."""

from __future__ import annotations

import json
from typing import Any

from .._report import Attempt, StreamReport
from .._tap import UsageTap
from ._decode import decoder_for
from ._request import parse_json_object


def report_of_json_body(body: bytes) -> StreamReport | None:
    """The report of a non-streamed JSON answer (Chat, Completions, Responses, Messages...),
    read by the same native code as streams; None when the body holds no usage."""
    obj = parse_json_object(body)
    if obj is None or not isinstance(obj.get("usage") or obj.get("usageMetadata"), dict):
        return None
    if obj.get("object") == "response":
        event: Any = {"type": "response.completed", "response": obj}
        data = b"event: response.completed\ndata: " + json.dumps(event).encode() + b"\n\n"
    elif obj.get("type") == "message":
        # Anthropic Messages: message_start with the usage, the stop reason, message_stop.
        usage = obj["usage"]
        events = [
            ("message_start", {"type": "message_start", "message": obj}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": obj.get("stop_reason")},
                    "usage": {"output_tokens": usage.get("output_tokens")},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        data = b"".join(
            b"event: " + name.encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"
            for name, e in events
        )
    else:
        data = b"data: " + body.strip() + b"\n\n"
    tap = UsageTap()
    tap.feed(data)
    report = tap.finish()
    if report.usage is None:
        return None
    attempt = Attempt("stream", True, "usage read from the JSON answer")
    return report.replace(attempts=(attempt,))


class JsonCapture:
    """Keeps the raw bytes of a non-streamed JSON answer, up to ``limit`` bytes, to read its
    usage once it is complete (a larger answer is not metered: its report is None)."""

    __slots__ = ("_encoding", "_limit", "_parts", "_size")

    def __init__(self, limit: int, content_encoding: str = "") -> None:
        self._limit = limit
        self._encoding = content_encoding
        self._parts: list[bytes] | None = []
        self._size = 0

    def feed(self, chunk: bytes) -> None:
        """Keep ``chunk`` (or drop the capture once it passes the limit)."""
        if self._parts is None:
            return
        self._size += len(chunk)
        if self._size > self._limit:
            self._parts = None
        else:
            self._parts.append(chunk)

    def passing(self, chunk: bytes) -> bytes:
        """``feed`` for a relay: keeps ``chunk`` and returns it to pass on unchanged."""
        self.feed(chunk)
        return chunk

    def report(self) -> StreamReport | None:
        """The answer's report, None when it was too large or holds no usage. Raises
        ``ValueError`` for a body that cannot be decoded."""
        if not self._parts:
            return None
        decoder = decoder_for(self._encoding)
        if decoder is None:
            return report_of_json_body(b"".join(self._parts))
        # Chunk by chunk: the per-feed output limit then applies to each, as it arrived.
        data = b"".join([decoder.feed(part) for part in self._parts])
        decoder.finish()
        return report_of_json_body(data)
