"""One proxied request (``Exchange``) and the usage record written for it."""

from __future__ import annotations

import json
import os
import time
import unicodedata
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from .._metering import redact
from .._report import Attempt, StreamReport, Usage

#: Longest subject kept: it comes from a request header.
MAX_SUBJECT_LENGTH = 256


def now_iso() -> str:
    """The time now in UTC, ISO 8601 to the millisecond (``2026-01-02T03:04:05.678Z``); the
    text up to the second is made once a second."""
    global _second
    now = time.time()
    whole = int(now)
    if whole != _second[0]:
        text = datetime.fromtimestamp(whole, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S")
        _second = (whole, text)
    return f"{_second[1]}.{int((now - whole) * 1000):03d}Z"


#: The last second ``now_iso`` wrote, and its text.
_second: tuple[int, str] = (-1, "")


def new_request_id() -> str:
    """A request's id: 128 random bits in hex (unique across workers and instances)."""
    return os.urandom(16).hex()


@dataclass
class Exchange:
    """Everything known about one proxied request, for its record."""

    request_id: str
    time: str
    start: float
    method: str
    path: str
    key_fingerprint: str | None = None
    #: The request's credential values, kept only to redact them from the record.
    secrets: tuple[str, ...] = ()
    requested_model: str | None = None
    request_bytes: int = 0
    injected: bool = False
    http_status: int | None = None
    upstream_status: int | None = None
    upstream_request_id: str | None = None
    headers_at: float | None = None
    event_stream: bool = False
    upstream_content_encoding: str = ""
    upstream_bytes: int = 0
    client_bytes: int = 0
    stripped: int = 0
    ended_by: str | None = None
    outcome: str | None = None
    notes: list[str] = field(default_factory=list)
    recorded: bool = False
    #: Notes for the record that no report carries (e.g. why an answer was not metered).
    warnings: list[str] = field(default_factory=list)
    #: Why the proxy cut the stream (idle or deadline), None while it was not.
    timed_out: str | None = None
    #: Request body bytes taken from the proxy's shared body budget.
    budget: int = 0
    #: The record is left to the background fallbacks (retrieval, estimate).
    deferred: bool = False
    #: Whom the request is billed to: the ``--subject-header`` value, sanitised.
    subject: str | None = None


def subject_of(
    headers: Iterable[tuple[bytes, bytes]], name: str | None, secrets: tuple[str, ...] = ()
) -> str | None:
    """The record's subject: the first ``name`` request header, as UTF-8 (undecodable bytes
    replaced), control and format characters removed, runs of white space made one space,
    credentials redacted, cut to ``MAX_SUBJECT_LENGTH``; None when absent or empty."""
    if not name:
        return None
    wanted = name.lower().encode("latin-1")
    raw = next((v for k, v in headers if k.lower() == wanted), None)
    if raw is None:
        return None
    text = raw[: MAX_SUBJECT_LENGTH * 4].decode("utf-8", errors="replace")
    kept = "".join(
        " " if c.isspace() else c for c in text if c.isspace() or unicodedata.category(c)[0] != "C"
    )
    subject = redact(" ".join(kept.split()), secrets)[:MAX_SUBJECT_LENGTH]
    return subject or None


def _short(value: Any, limit: int = 2000) -> Any:
    if value is None or isinstance(value, (int, float, bool)):
        return value
    text = value if isinstance(value, str) else json.dumps(value, default=str)
    if len(text) <= limit:
        return value
    return text[: limit - 3] + "..."


def _usage_dict(usage: Usage) -> dict[str, Any]:
    return {
        "input_tokens": usage.input_tokens,
        "output_tokens": usage.output_tokens,
        "total_tokens": usage.total_tokens,
        "cached_input_tokens": usage.cached_input_tokens,
        "cache_write_tokens": usage.cache_write_tokens,
        "reasoning_tokens": usage.reasoning_tokens,
        "source": usage.source,
    }


def _attempts(attempts: tuple[Attempt, ...]) -> list[dict[str, Any]]:
    if len(attempts) == 1:  # the common case: the stream's own
        a = attempts[0]
        return [{"source": a.source, "ok": a.ok, "reason": a.reason}]
    return [{"source": a.source, "ok": a.ok, "reason": a.reason} for a in attempts]


def _status(x: Exchange, report: StreamReport | None) -> str:
    """The record's status: the stream's own status for a relayed answer, else what
    happened (``rejected``, ``upstream_error``, ``http_error``, ``client_disconnected``)."""
    if x.outcome in ("rejected", "upstream_error", "client_disconnected"):
        return x.outcome
    if x.upstream_status is not None and x.upstream_status >= 400:
        return "http_error"
    if report is not None and (x.event_stream or report.usage is not None):
        return report.status
    if x.ended_by == "eof":
        return "completed"
    return "truncated"


def build_record(
    x: Exchange,
    report: StreamReport | None,
    instance_id: str,
    responses: tuple[StreamReport, ...] = (),
) -> dict[str, Any]:
    """The JSON-ready usage record of one proxied request; ``responses`` lists each response
    of a stream that held several (the record's usage is the last one's)."""
    status = _status(x, report)
    usage = None if report is None else report.usage
    timings = None if report is None else report.timings
    end = time.monotonic() if timings is None or timings.end is None else timings.end
    ttfb = None
    if timings is not None and timings.first_byte is not None:
        ttfb = timings.first_byte - x.start
    warnings = (x.warnings + ([] if report is None else list(report.warnings)))[:10]
    return {
        "time": x.time,
        "request_id": x.request_id,
        # Unique per request: sinks deduplicate retried writes on it.
        "record_id": x.request_id,
        "instance_id": instance_id,
        "key_fingerprint": x.key_fingerprint,
        "subject": x.subject,
        "method": x.method,
        "path": x.path,
        "requested_model": x.requested_model,
        "model": (report.model if report is not None else None) or x.requested_model,
        "api": None if report is None else report.api,
        "stream": x.event_stream,
        "status": status,
        "http_status": x.http_status,
        "upstream_status": x.upstream_status,
        "upstream_request_id": x.upstream_request_id,
        "response_id": None if report is None else report.response_id,
        "finish_reason": None
        if report is None
        else report.finish_reason or report.incomplete_reason,
        "usage": None if usage is None else _usage_dict(usage),
        "usage_source": None if usage is None else usage.source,
        # Amounts as decimal strings: JSON keeps them exact.
        "cost": None if report is None or report.cost is None else report.cost.to_dict(),
        "cost_reason": None if report is None else report.cost_reason,
        "choices": [c.to_dict() for c in report.choices] if report and report.choices else [],
        "attempts": _attempts(report.attempts) if report is not None else [],
        "injected_usage": x.injected,
        "stripped_usage_chunks": x.stripped,
        "ended_by": x.ended_by,
        "timings": {
            "upstream_headers": None if x.headers_at is None else x.headers_at - x.start,
            "ttfb": ttfb,
            "ttft": None if timings is None else timings.ttft,
            "duration": end - x.start,
            "inter_token_latency": None if timings is None else timings.tpot,
            "output_tokens_per_s": None if timings is None else timings.output_tokens_per_s,
        },
        "bytes": {
            "request": x.request_bytes,
            "upstream": x.upstream_bytes,
            "client": x.client_bytes,
        },
        "events": None if report is None else report.events,
        "error": None if report is None else _short(report.error),
        "warnings": warnings,
        "metering_faults": x.notes,
        "responses": [
            {
                "response_id": r.response_id,
                "status": r.status,
                "usage": None if r.usage is None else _usage_dict(r.usage),
            }
            for r in responses
        ]
        if len(responses) > 1
        else [],
    }
