"""The SQLite sink: usage records as rows of a local database (WAL mode), the main fields as
columns and the whole record as JSON."""

from __future__ import annotations

import os
import sqlite3
from typing import Any

from ._base import Sink
from ._columns import columns
from ._jsonl import dumps

__all__ = ["SQLITE_SCHEMA", "SqliteSink"]

#: The SQLite table: the main fields as columns, the whole record as JSON in ``record``.
SQLITE_SCHEMA = """
CREATE TABLE IF NOT EXISTS usage_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    time TEXT NOT NULL,
    request_id TEXT NOT NULL,
    instance_id TEXT,
    key_fingerprint TEXT,
    method TEXT,
    path TEXT,
    model TEXT,
    api TEXT,
    status TEXT,
    stream INTEGER,
    usage_source TEXT,
    input_tokens INTEGER,
    output_tokens INTEGER,
    total_tokens INTEGER,
    cached_input_tokens INTEGER,
    reasoning_tokens INTEGER,
    upstream_status INTEGER,
    duration_s REAL,
    ttft_s REAL,
    client_bytes INTEGER,
    record TEXT NOT NULL,
    record_id TEXT
);
CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time);
CREATE INDEX IF NOT EXISTS usage_records_key ON usage_records (key_fingerprint, time);
"""
# Databases created before record_id existed get the column on open.
_RECORD_ID_INDEX = (
    "CREATE UNIQUE INDEX IF NOT EXISTS usage_records_record_id ON usage_records (record_id)"
)

_COLUMNS = (
    "time",
    "request_id",
    "instance_id",
    "key_fingerprint",
    "method",
    "path",
    "model",
    "api",
    "status",
    "stream",
    "usage_source",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_input_tokens",
    "reasoning_tokens",
    "upstream_status",
    "duration_s",
    "ttft_s",
    "client_bytes",
    "record",
    "record_id",
)
# OR IGNORE: a record replayed (same record_id) is not stored twice.
_INSERT = (
    f"INSERT OR IGNORE INTO usage_records ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


def _row(record: dict[str, Any]) -> tuple[Any, ...]:
    c = columns(record)
    stream = c["stream"]
    return (
        c["time_text"] or "",
        c["request_id"] or "",
        c["instance_id"],
        c["key_fingerprint"],
        c["method"],
        c["path"],
        c["model"],
        c["api"],
        c["status"],
        None if stream is None else int(stream),
        c["usage_source"],
        c["input_tokens"],
        c["output_tokens"],
        c["total_tokens"],
        c["cached_input_tokens"],
        c["reasoning_tokens"],
        c["upstream_status"],
        c["duration_s"],
        c["ttft_s"],
        c["client_bytes"],
        dumps(record),
        c["record_id"],
    )


class SqliteSink(Sink):
    """Rows in the ``usage_records`` table of the SQLite database at ``path`` (WAL mode; one
    transaction per batch, written by the sink's own thread)."""

    kind = "sqlite"

    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        super().__init__(path, **options)

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # Create the schema now, so a bad path fails at start-up, not at the first record.
        db = sqlite3.connect(self.path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SQLITE_SCHEMA)
            names = {row[1] for row in db.execute("PRAGMA table_info(usage_records)")}
            if "record_id" not in names:
                db.execute("ALTER TABLE usage_records ADD COLUMN record_id TEXT")
            db.execute(_RECORD_ID_INDEX)
            db.commit()
        finally:
            db.close()
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, timeout=30.0, check_same_thread=False)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        return self._db

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        rows = [_row(r) for r in records]
        db = self._connection()
        with db:
            db.executemany(_INSERT, rows)

    def _close_destination(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
