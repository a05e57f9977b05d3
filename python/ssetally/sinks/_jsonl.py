"""The JSONL sink: one usage record per line, appended to a local file."""

from __future__ import annotations

import json
import os
from typing import Any

from .._core import clean_line, compact_json
from ._base import FileSink
from ._sanitize import sanitize_record

__all__ = ["JsonlSink"]


# Line breaks to str.splitlines() that JSON leaves raw: escaped, so any reader sees one
# record per line (they can only occur inside strings, where the escape means the same).
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


# Built once: ``json.dumps`` with options builds a new encoder per call.
_ASCII = json.JSONEncoder(separators=(",", ":"), allow_nan=False)
_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def dumps(record: Any) -> str:
    """A sanitised record as compact strict JSON on one line (NaN refused: sanitising
    removed it), non-ASCII text written as is."""
    text = compact_json(record)  # the common record: plain types, written natively
    if text is not None:
        return text
    # The ASCII encoder is several times faster per character. Without a ``\u`` escape in
    # its output the record had no non-ASCII, DEL or control character, where the two
    # encoders differ, so the text is the same (and has no line break to escape).
    text = _ASCII.encode(record)
    if "\\u" not in text:
        return text
    text = _TEXT.encode(record)
    return text if text.isascii() else text.translate(_LINE_BREAKS)


class _Lined(dict[str, Any]):
    """A record that needed no sanitising, with its line, made natively in the same walk as
    that check (``clean_line``)."""

    __slots__ = ("line",)
    line: bytes


def _line(record: dict[str, Any]) -> bytes:
    if type(record) is _Lined:
        return record.line
    return (dumps(record) + "\n").encode("utf-8")


class JsonlSink(FileSink):
    """One JSON object per line, appended to ``path`` (flushed after every batch).

    Several processes may append to one file (the workers of ``ssetally proxy --workers``):
    the file is opened with ``O_APPEND`` and every batch of whole lines goes out in one
    ``write`` call, which Linux and the BSDs do not interleave with another process's on a
    local file system. Instances on other machines each write their own file (every record
    carries ``instance_id`` and a unique ``record_id``); merge them with ``cat``.
    """

    kind = "jsonl"

    def _open(self) -> None:
        self._make_folder()
        flags = os.O_WRONLY | os.O_APPEND | os.O_CREAT | getattr(os, "O_CLOEXEC", 0)
        self._fd = os.open(self.path, flags, 0o666)

    def _prepare(self, record: Any) -> dict[str, Any]:
        try:
            line = clean_line(record, self.limits)
        except Exception:  # noqa: BLE001 - a record the check cannot read is sanitised
            line = None
        if line is None:
            return sanitize_record(record, self.limits)
        lined = _Lined(record)
        lined.line = line
        return lined

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        # Encode the whole batch first, so a record that cannot be encoded writes nothing.
        data = memoryview(b"".join(map(_line, records)))
        while data:  # one call unless the disk fills up or a signal interrupts it
            data = data[os.write(self._fd, data) :]

    def position(self) -> int | None:
        return os.fstat(self._fd).st_size

    def written_since(self, position: int, record_ids: set[str]) -> set[str]:
        """The ``record_id`` of each line past ``position`` that is one of ``record_ids`` (a
        file has no key to deduplicate on: a replay looks before it writes)."""
        found: set[str] = set()
        with open(self.path, "rb") as f:
            f.seek(position)
            for line in f:
                try:
                    record_id = json.loads(line).get("record_id")
                except (ValueError, AttributeError):
                    continue  # a line cut by a crash, or another writer's
                if record_id in record_ids:
                    found.add(record_id)
        return found

    def _close_destination(self) -> None:
        os.close(self._fd)
