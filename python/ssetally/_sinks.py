"""Where the metering proxy writes its usage records: a JSONL file or a SQLite database.

Both sinks take records from any thread without blocking (``write`` only queues) and write them
from a single writer thread of their own, in batches. Several proxy instances behind a load
balancer each write their own sink (every record carries ``instance_id``); merge them
afterwards (``cat *.jsonl``, or SQLite ``ATTACH`` + ``INSERT ... SELECT``).
"""

from __future__ import annotations

import json
import logging
import os
import queue
import sqlite3
import threading
from collections.abc import Mapping
from typing import Any

__all__ = ["JsonlSink", "Sink", "SqliteSink", "open_sink"]

logger = logging.getLogger("ssetally.proxy")

#: Records waiting beyond this are dropped (and counted) rather than growing memory.
DEFAULT_QUEUE_SIZE = 100_000
_BATCH = 512
_STOP = object()


class Sink:
    """Base of the sinks: a bounded queue drained by one writer thread.

    ``write`` never blocks and never raises: a full queue or a failed write is counted in
    ``dropped`` / ``failed`` and logged. ``flush`` waits until every queued record is written;
    ``close`` flushes and stops the writer.
    """

    #: ``jsonl`` or ``sqlite``.
    kind = "abstract"

    def __init__(self, path: str, queue_size: int = DEFAULT_QUEUE_SIZE) -> None:
        self.path = path
        self._queue: queue.Queue[Any] = queue.Queue(queue_size)
        self._cond = threading.Condition()
        self._submitted = 0
        self._settled = 0
        #: Records written.
        self.written = 0
        #: Records lost because the queue was full.
        self.dropped = 0
        #: Records lost because writing failed.
        self.failed = 0
        self._closed = False
        self._open()
        self._thread = threading.Thread(
            target=self._run, name=f"ssetally-sink-{self.kind}", daemon=True
        )
        self._thread.start()

    # -- for subclasses

    def _open(self) -> None:
        """Prepare the destination (called in the constructor, so errors surface early)."""

    def _write_batch(self, records: list[Mapping[str, Any]]) -> None:
        raise NotImplementedError

    def _close_destination(self) -> None:
        """Release the destination (writer thread, after the last batch)."""

    # -- public

    def write(self, record: Mapping[str, Any]) -> bool:
        """Queue a record; False when it was dropped (queue full or sink closed)."""
        with self._cond:
            if self._closed:
                self.dropped += 1
                return False
            self._submitted += 1
        try:
            self._queue.put_nowait(record)
        except queue.Full:
            with self._cond:
                self._submitted -= 1
                self.dropped += 1
            logger.error("ssetally proxy: %s sink queue full, a record was dropped", self.kind)
            return False
        return True

    def flush(self, timeout: float | None = None) -> bool:
        """Wait until every queued record is written (or failed); False on timeout."""
        with self._cond:
            return self._cond.wait_for(lambda: self._settled >= self._submitted, timeout)

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, then stop the writer thread. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
        self._queue.put(_STOP)
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        """Records queued and not yet written."""
        with self._cond:
            return self._submitted - self._settled

    # -- writer thread

    def _run(self) -> None:
        stop = False
        while not stop:
            batch = [self._queue.get()]
            while len(batch) < _BATCH:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in batch):
                stop = True
                batch = [item for item in batch if item is not _STOP]
            if batch:
                try:
                    self._write_batch(batch)
                    ok = True
                except Exception:
                    logger.exception("ssetally proxy: writing %d records failed", len(batch))
                    ok = False
                with self._cond:
                    if ok:
                        self.written += len(batch)
                    else:
                        self.failed += len(batch)
                    self._settled += len(batch)
                    self._cond.notify_all()
        try:
            self._close_destination()
        except Exception:
            logger.exception("ssetally proxy: closing the %s sink failed", self.kind)


class JsonlSink(Sink):
    """One JSON object per line, appended to ``path`` (flushed after every batch)."""

    kind = "jsonl"

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 - the writer owns it

    def _write_batch(self, records: list[Mapping[str, Any]]) -> None:
        lines = "".join(
            json.dumps(r, ensure_ascii=False, separators=(",", ":"), default=str) + "\n"
            for r in records
        )
        self._file.write(lines)
        self._file.flush()

    def _close_destination(self) -> None:
        self._file.close()


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
    record TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS usage_records_time ON usage_records (time);
CREATE INDEX IF NOT EXISTS usage_records_key ON usage_records (key_fingerprint, time);
"""

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
)
_INSERT = (
    f"INSERT INTO usage_records ({', '.join(_COLUMNS)}) VALUES ({', '.join('?' for _ in _COLUMNS)})"
)


def _row(record: Mapping[str, Any]) -> tuple[Any, ...]:
    usage = record.get("usage") or {}
    timings = record.get("timings") or {}
    sizes = record.get("bytes") or {}
    stream = record.get("stream")
    return (
        record.get("time"),
        record.get("request_id"),
        record.get("instance_id"),
        record.get("key_fingerprint"),
        record.get("method"),
        record.get("path"),
        record.get("model"),
        record.get("api"),
        record.get("status"),
        None if stream is None else int(bool(stream)),
        usage.get("source"),
        usage.get("input_tokens"),
        usage.get("output_tokens"),
        usage.get("total_tokens"),
        usage.get("cached_input_tokens"),
        usage.get("reasoning_tokens"),
        record.get("upstream_status"),
        timings.get("duration"),
        timings.get("ttft"),
        sizes.get("client"),
        json.dumps(record, ensure_ascii=False, separators=(",", ":"), default=str),
    )


class SqliteSink(Sink):
    """Rows in the ``usage_records`` table of the SQLite database at ``path`` (WAL mode; one
    transaction per batch, written by the sink's own thread)."""

    kind = "sqlite"

    def _open(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)
        # Create the schema now, so a bad path fails at start-up, not at the first record.
        db = sqlite3.connect(self.path)
        try:
            db.execute("PRAGMA journal_mode=WAL")
            db.executescript(SQLITE_SCHEMA)
            db.commit()
        finally:
            db.close()
        self._db: sqlite3.Connection | None = None

    def _connection(self) -> sqlite3.Connection:
        if self._db is None:
            self._db = sqlite3.connect(self.path, timeout=30.0)
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=NORMAL")
        return self._db

    def _write_batch(self, records: list[Mapping[str, Any]]) -> None:
        db = self._connection()
        with db:
            db.executemany(_INSERT, [_row(r) for r in records])

    def _close_destination(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None


def open_sink(spec: str) -> Sink:
    """A sink from ``jsonl:PATH`` or ``sqlite:PATH``; a bare path is JSONL unless it ends in
    ``.db``, ``.sqlite`` or ``.sqlite3``."""
    kind, sep, path = spec.partition(":")
    if not sep or kind not in ("jsonl", "sqlite") or not path:
        kind, path = "jsonl", spec
        if spec.endswith((".db", ".sqlite", ".sqlite3")):
            kind = "sqlite"
    if not path:
        raise ValueError("the sink needs a path: jsonl:PATH or sqlite:PATH")
    return SqliteSink(path) if kind == "sqlite" else JsonlSink(path)
