"""Hand-written pure-Python baselines: the naive line loop and the usage-only byte scan."""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import Any


def naive_payloads(reads: Iterable[bytes]) -> Iterator[str]:
    """The loop benchmark tools write (sglang, llmperf, legacy vLLM): split reads at LF,
    strip each line, keep the text after ``data:``. Not an SSE parser (no CR framing,
    no multi-line data, no event types), but what many tools run."""
    partial = b""
    for read in reads:
        lines = (partial + read).split(b"\n") if partial else read.split(b"\n")
        partial = lines.pop()
        for line in lines:
            line = line.strip()
            if line.startswith(b"data:"):
                yield line[5:].lstrip().decode()
    if partial.strip().startswith(b"data:"):
        yield partial.strip()[5:].lstrip().decode()


USAGE_NEEDLE = b'"usage":{'
#: Gemini's usage key.
GEMINI_NEEDLE = b'"usageMetadata":{'
_decoder = json.JSONDecoder()


def _usage_object(line_from_brace: bytes) -> Any:
    return _decoder.raw_decode(line_from_brace.decode())[0]


def scan_last_usage(reads: Iterable[bytes], needle: bytes = USAGE_NEEDLE) -> dict[str, Any] | None:
    """The fastest pure-Python usage reader we know: no SSE framing at all.

    Searches the raw reads for the bytes ``"usage":{`` (a ``"`` inside a JSON string is
    always escaped, so this only matches a real key), keeps the bytes until the end of that
    line, and ``raw_decode``s just the usage object. Returns the last usage object of the
    stream (Chat: the usage chunk; Responses: ``response.completed``; Anthropic: the
    cumulative ``message_delta``; Gemini, with ``GEMINI_NEEDLE``: the last chunk's running
    ``usageMetadata``). Assumes LF line ends, as every captured stream has.
    """
    keep = len(needle) - 1  # bytes kept from a read in case the needle is cut by the next read

    def next_brace(read: bytes, start: int) -> int:
        """Index of the ``{`` of the next needle at or after ``start``, or -1."""
        i = read.find(needle, start)
        return i + keep if i >= 0 else -1

    last: dict[str, Any] | None = None
    carry = b""  # a possibly cut needle, or the start of an unfinished usage line
    collecting = False
    for read in reads:
        if collecting:
            end = read.find(b"\n")
            if end < 0:
                carry += read
                continue
            last = _usage_object(carry + read[:end])
            collecting = False
            pos = next_brace(read, end)
        elif carry:
            cut = (carry + read[:keep]).find(needle)
            pos = cut + keep - len(carry) if cut >= 0 else next_brace(read, 0)
        else:
            pos = next_brace(read, 0)
        while pos >= 0:
            end = read.find(b"\n", pos)
            if end < 0:
                carry, collecting = read[pos:], True
                break
            last = _usage_object(read[pos:end])
            pos = next_brace(read, end)
        if not collecting:  # the stream's last bytes, even when reads are tiny
            carry = read[-keep:] if len(read) >= keep else (carry + read)[-keep:]
    return last
