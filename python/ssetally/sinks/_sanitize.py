"""Sanitising of usage records: whatever a client or an upstream put in, the result encodes as
strict UTF-8 JSON, fits a signed 64-bit integer column and stays small.

A request can carry ``"model": "\\ud800"`` (a valid JSON escape that becomes a lone surrogate in
Python), an upstream can report ``prompt_tokens: 2**63`` or a name of megabytes. Each of these
once failed a whole batch; now every record is sanitised before any sink writes it, and what was
changed is listed (by field path) in the record's ``sanitized`` field.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from .._core import record_is_clean

__all__ = ["DEFAULT_LIMITS", "Limits", "sanitize_record"]

_INT64_MIN = -(2**63)
_INT64_MAX = 2**63 - 1
# Lone surrogates (unencodable in UTF-8) and NUL (PostgreSQL text and jsonb refuse it).
_BAD_CHARS = re.compile("[\ud800-\udfff\x00]")


@dataclass(frozen=True)
class Limits:
    """Bounds applied to every record; cut values are noted in ``sanitized``."""

    #: Characters kept of a string (names, ids, paths ...).
    string: int = 1024
    #: Characters kept of an error text: fields named in ``long_fields``.
    long_string: int = 8192
    #: Field names whose strings (and strings nested below them) may be ``long_string`` long.
    long_fields: frozenset[str] = frozenset(
        {"error", "errors", "warnings", "notes", "metering_faults", "reason", "attempts"}
    )
    #: Characters kept of a dictionary key.
    key: int = 256
    #: Items kept of a list and entries kept of a dictionary.
    items: int = 256
    #: Nesting depth kept (the record itself is depth 1); deeper values become None.
    depth: int = 12
    #: Characters of all strings and keys of one record together; past it strings are emptied.
    budget: int = 256 * 1024
    #: Values (at any depth) of one record together; past it containers are cut.
    nodes: int = 10_000
    #: Paths listed in ``sanitized`` (then a count of the rest).
    notes: int = 32


DEFAULT_LIMITS = Limits()


class _Walk:
    def __init__(self, limits: Limits) -> None:
        self.limits = limits
        self.budget = limits.budget
        self.nodes = limits.nodes
        self.notes: list[str] = []
        self.more = 0

    def note(self, path: str, what: str) -> None:
        if len(self.notes) < self.limits.notes:
            path = path if len(path) <= 200 else path[:100] + "..." + path[-97:]
            self.notes.append(f"{path or '$'}: {what}")
        else:
            self.more += 1

    def text(self, value: str, path: str, cap: int) -> str:
        if _BAD_CHARS.search(value) is not None:
            # Pair surrogates that form a pair, replace the rest (and NUL) with U+FFFD.
            value = value.encode("utf-16-le", "surrogatepass").decode("utf-16-le", "replace")
            value = _BAD_CHARS.sub("\ufffd", value)
            self.note(path, "invalid characters replaced")
        cap = min(cap, max(self.budget, 0))
        if len(value) > cap:
            self.note(path, f"truncated from {len(value)} to {cap} chars")
            value = value[:cap]
        self.budget -= len(value)
        return value

    def value(self, value: Any, path: str, depth: int, long: bool) -> Any:
        if value is None or isinstance(value, bool):
            return value
        if isinstance(value, int):
            if _INT64_MIN <= value <= _INT64_MAX:
                return int(value)
            self.note(path, "integer out of 64-bit range")
            return None
        if isinstance(value, float):
            if math.isfinite(value):
                return value
            self.note(path, f"non-finite number {value!r}")
            return None
        if isinstance(value, str):
            limits = self.limits
            return self.text(value, path, limits.long_string if long else limits.string)
        if isinstance(value, (Mapping, list, tuple)):
            if depth >= self.limits.depth:
                self.note(path, "nested too deep")
                return None
            if isinstance(value, Mapping):
                return self.mapping(value, path, depth + 1, long)
            return self.sequence(value, path, depth + 1, long)
        if isinstance(value, (bytes, bytearray)):
            self.note(path, "bytes decoded")
            return self.value(bytes(value).decode("utf-8", "replace"), path, depth, long)
        # Anything else (a datetime, an enum ...) is written as its text.
        self.note(path, f"{type(value).__name__} written as text")
        try:
            text = str(value)
        except Exception:  # noqa: BLE001 - a hostile __str__ must not fail the record
            text = f"<{type(value).__name__}>"
        return self.value(text, path, depth, long)

    def sequence(
        self, items: list[Any] | tuple[Any, ...], path: str, depth: int, long: bool
    ) -> Any:
        out: list[Any] = []
        for i, value in enumerate(items):
            if not self.room(len(items) - i, len(items), path):
                break
            out.append(self.value(value, f"{path}[{i}]", depth, long))
        return out

    def mapping(
        self, items: Mapping[Any, Any], path: str, depth: int, long: bool
    ) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for i, (key, value) in enumerate(items.items()):
            if not self.room(len(items) - i, len(items), path):
                break
            name = self.key(key, path)
            while name in out:  # two keys that sanitised alike: keep both
                name += "~"
            sub = f"{path}.{name}" if path else name
            out[name] = self.value(value, sub, depth, long or name in self.limits.long_fields)
        return out

    def room(self, left: int, total: int, path: str) -> bool:
        """Whether one more item fits (per container and per record); notes the cut once."""
        self.nodes -= 1
        if total - left < self.limits.items and self.nodes >= 0 and self.budget > 0:
            return True
        self.note(path, f"{left} of {total} items cut")
        return False

    def key(self, key: Any, path: str) -> str:
        if isinstance(key, bool):
            key = "true" if key else "false"
        elif key is None:
            key = "null"
        elif not isinstance(key, str):
            try:
                key = str(key)
            except Exception:  # noqa: BLE001 - a hostile __str__ must not fail the record
                key = f"<{type(key).__name__}>"
        where = f"{path}.<key>" if path else "<key>"
        text = self.text(key, where, self.limits.key)
        if not text:  # an empty key (or one the budget emptied) is not a usable column name
            self.note(where, "empty key replaced")
            return "\ufffd"
        return text


def _is_clean(record: Mapping[str, Any], limits: Limits) -> bool:
    """Whether ``sanitize_record`` would change nothing in ``record``: plain JSON types only,
    every bound kept with room to spare (the common record, checked natively, without
    building the field paths that a change would be noted under)."""
    try:
        return record_is_clean(record, limits)
    except Exception:  # noqa: BLE001 - a record the check cannot read gets the full walk
        return False


def sanitize_record(record: Mapping[str, Any], limits: Limits = DEFAULT_LIMITS) -> dict[str, Any]:
    """A copy of ``record`` that strict JSON, UTF-8 text and 64-bit integer columns accept.

    Lone surrogates and NUL become U+FFFD (in keys too), strings are cut to ``limits.string``
    characters (``limits.long_string`` below error fields), integers outside the signed 64-bit
    range and NaN or infinite floats become None, containers are cut to ``limits.items`` and
    ``limits.depth``. What changed is appended to the record's ``sanitized`` list (field paths
    with what was done). Never raises.
    """
    if _is_clean(record, limits):  # plain types only: nothing of the record's own code runs
        return dict(record)
    walk = _Walk(limits)
    try:
        out: dict[str, Any] = walk.mapping(record, "", 1, False)
    except Exception as exc:  # noqa: BLE001 - a record must never take the writer down
        walk.note("", f"unreadable record ({type(exc).__name__})")
        out = {}
        for field in ("record_id", "time", "request_id", "instance_id"):
            try:
                out[field] = walk.value(record.get(field), field, 2, False)
            except Exception:  # noqa: BLE001
                out[field] = None
    if walk.notes:
        notes = walk.notes + ([f"and {walk.more} more"] if walk.more else [])
        previous = out.get("sanitized")
        out["sanitized"] = (previous if isinstance(previous, list) else []) + notes
    return out
