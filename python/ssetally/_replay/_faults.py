"""Fault injection: ``Faults``, the ``x-replay-*`` headers and a request's options."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

_HEADER_PREFIX = "x-replay-"


@dataclass(frozen=True)
class Faults:
    """Server-wide fault defaults; the ``x-replay-*`` request headers override them.

    Event positions count the SSE events in the order they are sent, from 0.
    """

    #: Send this many events, then drop the connection without finishing the body.
    cut_after_events: int | None = None
    #: After this many events, send a mid-stream error event and end the stream.
    error_event: int | None = None
    #: The event at this position carries truncated JSON.
    malformed: int | None = None
    #: Write the body one byte at a time.
    trickle: bool = False
    #: Answer every request with this HTTP status (see ``x-replay-status``).
    status: int | None = None
    #: Status answers are an HTML page whatever the code.
    html: bool = False
    #: Seconds to wait before the status line.
    first_byte_delay: float = 0.0
    #: Send this many events and the first half of the next one, then drop the connection.
    cut_mid_event: int | None = None
    #: Read the request, then drop the connection without answering.
    drop_before_headers: bool = False
    #: Drops are TCP resets (RST) rather than orderly closes (FIN).
    reset: bool = False
    #: Seconds between bytes (implies ``trickle``).
    trickle_delay: float = 0.0


@dataclass(frozen=True)
class _Options:
    """The faults and pacing of one request: ``Faults`` and server settings, headers applied."""

    delay: float
    first_byte_delay: float
    cut_after_events: int | None
    error_event: int | None
    malformed: int | None
    trickle: bool
    status: int | None
    html: bool
    retry_after: float
    poll_in_progress: int
    cut_mid_event: int | None = None
    drop_before_headers: bool = False
    reset: bool = False
    trickle_delay: float = 0.0


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(_HEADER_PREFIX + name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"header {_HEADER_PREFIX}{name}: not a number: {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"header {_HEADER_PREFIX}{name}: must be >= 0, got {value!r}")
    return number


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    number = _header_number(headers, name)
    if number is None:
        return None
    if number != int(number):
        raise ValueError(f"header {_HEADER_PREFIX}{name}: must be an integer")
    return int(number)


def _header_flag(headers: Mapping[str, str], name: str) -> bool | None:
    value = headers.get(_HEADER_PREFIX + name)
    if value is None:
        return None
    return value.strip().lower() not in ("0", "false", "no", "off", "")


def _resolve_options(
    headers: Mapping[str, str],
    f: Faults,
    *,
    delay: float,
    retry_after: float,
    poll_in_progress: int,
) -> _Options:
    """The options of a request: its ``x-replay-*`` headers over the fault set ``f`` and the
    server's ``delay``, ``retry_after`` and ``poll_in_progress``; ValueError for a bad header."""
    delay_ms = _header_number(headers, "delay-ms")
    trickle_ms = _header_number(headers, "trickle-ms")
    first_ms = _header_number(headers, "first-byte-ms")
    retry_after_header = _header_number(headers, "retry-after")
    status = _header_int(headers, "status")
    if status is not None and not 100 <= status <= 599:
        raise ValueError(f"header {_HEADER_PREFIX}status: not an HTTP status: {status}")
    polls = _header_int(headers, "poll-in-progress")

    def pick(value: Any, default: Any) -> Any:
        return default if value is None else value

    return _Options(
        delay=delay if delay_ms is None else delay_ms / 1000,
        first_byte_delay=f.first_byte_delay if first_ms is None else first_ms / 1000,
        cut_after_events=pick(_header_int(headers, "cut-after-events"), f.cut_after_events),
        error_event=pick(_header_int(headers, "error-event"), f.error_event),
        malformed=pick(_header_int(headers, "malformed"), f.malformed),
        trickle=pick(_header_flag(headers, "trickle"), f.trickle),
        status=pick(status, f.status),
        html=pick(_header_flag(headers, "html"), f.html),
        retry_after=retry_after if retry_after_header is None else retry_after_header,
        poll_in_progress=poll_in_progress if polls is None else polls,
        cut_mid_event=pick(_header_int(headers, "cut-mid-event"), f.cut_mid_event),
        drop_before_headers=pick(_header_flag(headers, "drop"), f.drop_before_headers),
        reset=pick(_header_flag(headers, "reset"), f.reset),
        trickle_delay=f.trickle_delay if trickle_ms is None else trickle_ms / 1000,
    )
