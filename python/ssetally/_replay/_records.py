"""The records: ``RecordedRequest`` (a request) and ``Served`` (an answer, true usage)."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from ._sse import JSON


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    #: The path without the query string.
    path: str
    query: str
    #: Header names in lower case (repeated headers joined with ", ").
    headers: Mapping[str, str]
    #: The parsed JSON body, or None when the body is empty or not JSON.
    body: Any
    raw_body: bytes = b""

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name, or None."""
        return self.headers.get(name.lower())


@dataclass
class Served:
    """One answer the server produced, with its true token counts.

    ``usage`` is in the wire shape of the endpoint (``prompt_tokens``... for Chat and legacy
    Completions, ``input_tokens``... for Responses) and is set even when the stream did not
    carry it (``usage_sent`` False). For a replayed capture it is the usage of the capture's
    last Responses terminal event, else None. The counters at the end are updated while the
    answer is being written.
    """

    endpoint: str
    id: str
    model: str | None
    stream: bool
    usage: JSON | None = None
    usage_sent: bool = False
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    tool_calls: list[JSON] = field(default_factory=list)
    #: The replayed file (or "<bytes>"), None for generated answers.
    source: str | None = None
    events_planned: int = 0
    events_sent: int = 0
    #: The whole body was written and terminated normally.
    completed: bool = False
    #: The server dropped the connection on purpose (``cut_after_events``).
    cut: bool = False
    #: Writing failed because the client went away.
    client_disconnected: bool = False
    #: The ``x-request-id`` header sent with the answer.
    request_id: str | None = None
    #: Body bytes written (without the chunked framing), and their SHA-256 (hex): set before
    #: the body ends, so a client that has read the whole body finds them final.
    bytes_sent: int = 0
    body_sha256: str = ""

    @property
    def input_tokens(self) -> int | None:
        """True prompt tokens, whatever the endpoint."""
        return _usage_field(self.usage, "input_tokens", "prompt_tokens")

    @property
    def output_tokens(self) -> int | None:
        """True output tokens (reasoning included), whatever the endpoint."""
        return _usage_field(self.usage, "output_tokens", "completion_tokens")

    @property
    def total_tokens(self) -> int | None:
        """True total tokens."""
        return _usage_field(self.usage, "total_tokens", "total_tokens")


def _usage_field(usage: JSON | None, responses_name: str, chat_name: str) -> int | None:
    if usage is None:
        return None
    value = usage.get(responses_name, usage.get(chat_name))
    return value if isinstance(value, int) else None
