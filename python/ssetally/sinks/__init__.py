"""Where the metering proxy writes its usage records: JSONL or SQLite files, a PostgreSQL table
shared by many proxies, or a CloudEvents collector.

Every sink takes records from any thread without blocking (``write`` only queues) and writes
them from one writer thread of its own, in batches. Before anything is written a record is
sanitised (``sanitize_record``: valid UTF-8, 64-bit integers, bounded strings and nesting; what
was changed is listed in its ``sanitized`` field) and given a ``record_id`` if it has none.
A batch that fails is retried record by record, so one bad record never takes others down.

The remote sinks (``PostgresSink``, ``CloudEventsSink``) keep records in a bounded on-disk
spool while the destination is away and replay them when it is back, with exponential backoff
and jitter; they deduplicate on ``record_id``, so replays never store a record twice.

Counters on every sink: ``written``, ``failed``, ``dropped``, ``spooled``, ``pending`` and
``spool_depth``; ``SinkCollector(sink)`` exposes them to Prometheus.
"""

from ._base import DEFAULT_BATCH_SIZE, DEFAULT_QUEUE_SIZE, Sink, redact_url
from ._cloudevents import DEFAULT_EVENT_TYPE, DEFAULT_TOKEN_ENV, CloudEventsSink
from ._collector import SinkCollector
from ._jsonl import JsonlSink
from ._open import open_sink
from ._postgres import DEFAULT_TABLE, PostgresSink
from ._sanitize import DEFAULT_LIMITS, Limits, sanitize_record
from ._spool import DEFAULT_SPOOL_BYTES, Spool
from ._sqlite import SQLITE_SCHEMA, SqliteSink

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_EVENT_TYPE",
    "DEFAULT_LIMITS",
    "DEFAULT_QUEUE_SIZE",
    "DEFAULT_SPOOL_BYTES",
    "DEFAULT_TABLE",
    "DEFAULT_TOKEN_ENV",
    "SQLITE_SCHEMA",
    "CloudEventsSink",
    "JsonlSink",
    "Limits",
    "PostgresSink",
    "Sink",
    "SinkCollector",
    "Spool",
    "SqliteSink",
    "open_sink",
    "redact_url",
    "sanitize_record",
]
