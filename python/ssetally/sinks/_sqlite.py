"""The SQLite sink: usage records as rows of a local database (WAL mode), the main fields as
columns and the whole record as JSON."""

from __future__ import annotations

import sqlite3
from typing import Any

from ._base import FileSink
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

# The columns written, in the schema's order (all but the generated ``id``).
_COLUMNS = tuple(
    line.split()[0]
    for line in SQLITE_SCHEMA.split("(", 1)[1].split(");", 1)[0].splitlines()
    if line.strip() and not line.strip().startswith("id ")
)
# OR IGNORE: a record replayed (same record_id) is not stored twice.
_INSERT = (
    f"INSERT OR IGNORE INTO usage_records ({', '.join(_COLUMNS)}) "
    f"VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


def _row(record: dict[str, Any]) -> tuple[Any, ...]:
    c = columns(record)
    stream = c["stream"]
    c.update(
        time=c["time_text"] or "",
        request_id=c["request_id"] or "",
        stream=None if stream is None else int(stream),
        record=dumps(record),
    )
    return tuple(c[name] for name in _COLUMNS)


class SqliteSink(FileSink):
    """Rows in the ``usage_records`` table of the SQLite database at ``path`` (WAL mode; one
    transaction per batch, written by the sink's own thread)."""

    kind = "sqlite"

    def _open(self) -> None:
        self._make_folder()
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
