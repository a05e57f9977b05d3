"""The typed columns the database sinks index, taken from a sanitised record.

Each value has the column's type or is None, whatever the record holds, so a record never fails
a typed column; the full record is stored alongside as JSON.
"""

from __future__ import annotations

from datetime import datetime, timezone
from typing import Any

__all__ = ["TOKEN_FIELDS", "columns", "parse_time"]

#: Token kinds: (short name, field of the record's ``usage``).
TOKEN_FIELDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cached_input", "cached_input_tokens"),
    ("cache_write", "cache_write_tokens"),
    ("reasoning", "reasoning_tokens"),
    ("total", "total_tokens"),
)

_TEXT = (
    "record_id",
    "request_id",
    "instance_id",
    "key_fingerprint",
    "method",
    "path",
    "model",
    "requested_model",
    "provider",
    "api",
    "status",
    "subject",
)


def _text(value: Any) -> str | None:
    if isinstance(value, str):
        return value
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return str(value)
    return None


def _int(value: Any) -> int | None:
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _float(value: Any) -> float | None:
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return float(value)
    return None


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def parse_time(value: Any) -> datetime | None:
    """An ISO 8601 time (``Z`` allowed) as an aware datetime; None when it is not one."""
    if not isinstance(value, str) or not 10 <= len(value) <= 40:
        return None
    text = value[:-1] + "+00:00" if value.endswith(("Z", "z")) else value
    try:
        parsed = datetime.fromisoformat(text)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else parsed.replace(tzinfo=timezone.utc)


def columns(record: dict[str, Any]) -> dict[str, Any]:
    """The indexed fields of a record, each of its column's type or None."""
    out: dict[str, Any] = {name: _text(record.get(name)) for name in _TEXT}
    usage = _dict(record.get("usage"))
    timings = _dict(record.get("timings"))
    sizes = _dict(record.get("bytes"))
    stream = record.get("stream")
    out["time_text"] = _text(record.get("time"))
    out["time"] = parse_time(record.get("time"))
    out["stream"] = stream if isinstance(stream, bool) else None
    out["http_status"] = _int(record.get("http_status"))
    out["upstream_status"] = _int(record.get("upstream_status"))
    out["usage_source"] = _text(record.get("usage_source")) or _text(usage.get("source"))
    for _, field in TOKEN_FIELDS:
        out[field] = _int(usage.get(field))
    out["duration_s"] = _float(timings.get("duration"))
    out["ttft_s"] = _float(timings.get("ttft"))
    out["client_bytes"] = _int(sizes.get("client"))
    return out
