"""The JSONL sink: one usage record per line, appended to a local file."""

from __future__ import annotations

import json
from typing import Any

from ._base import FileSink

__all__ = ["JsonlSink"]


# Line breaks to str.splitlines() that JSON leaves raw: escaped, so any reader sees one
# record per line (they can only occur inside strings, where the escape means the same).
_LINE_BREAKS = str.maketrans({"\x85": "\\u0085", "\u2028": "\\u2028", "\u2029": "\\u2029"})


def dumps(record: Any) -> str:
    """A sanitised record as compact strict JSON on one line (NaN refused: sanitising
    removed it)."""
    text = json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    return text.translate(_LINE_BREAKS)


class JsonlSink(FileSink):
    """One JSON object per line, appended to ``path`` (flushed after every batch).

    Several proxy instances each write their own file (every record carries ``instance_id``
    and a unique ``record_id``); merge them with ``cat``.
    """

    kind = "jsonl"

    def _open(self) -> None:
        self._make_folder()
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - the writer owns it

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        # Encode the whole batch first, so a record that cannot be encoded writes nothing.
        lines = "".join(dumps(r) + "\n" for r in records)
        self._file.write(lines)
        self._file.flush()

    def _close_destination(self) -> None:
        self._file.close()
