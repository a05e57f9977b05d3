"""The PostgreSQL sink against a real server (``pg_server``, on 127.0.0.1): schema, batches,
two processes sharing one table, a crash of the server mid-load (spool replay: every record
exactly once), hostile records, and the password never in a message.

Without PostgreSQL binaries the tests skip locally and fail when ``CI`` is set.
"""

from __future__ import annotations

import logging
import os
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pg_server import PASSWORD, PgServer, running_server
from ssetally.sinks import PostgresSink, open_sink

psycopg = pytest.importorskip("psycopg") if not os.environ.get("CI") else __import__("psycopg")

TIMEOUT = 30.0
FAST = {"backoff_base": 0.05, "backoff_max": 0.5, "connect_timeout": 2}


@pytest.fixture(scope="session")
def pg() -> Iterator[PgServer]:
    with running_server() as server:
        yield server


def table() -> str:
    return f"usage_{uuid.uuid4().hex[:10]}"


def rows(pg: PgServer, name: str, what: str = "record_id") -> list[Any]:
    with psycopg.connect(pg.url) as conn:
        return [r[0] for r in conn.execute(f"SELECT {what} FROM {name} ORDER BY record_id")]


def record(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "time": "2026-05-01T10:00:00.123Z",
        "request_id": f"req-{i}",
        "record_id": f"rec-{i:06d}",
        "instance_id": "test",
        "key_fingerprint": "fp",
        "model": "gpt-test",
        "status": "ok",
        "stream": True,
        "usage": {"input_tokens": i, "output_tokens": 2 * i, "total_tokens": 3 * i},
        "timings": {"duration": 0.5},
        **extra,
    }


def test_schema_batches_and_dedup(pg: PgServer, tmp_path: Path) -> None:
    name = table()
    sink = open_sink(f"{pg.url}?table={name}", spool_dir=str(tmp_path), **FAST)
    assert isinstance(sink, PostgresSink) and sink.kind == "postgresql"
    for i in range(1000):
        sink.write(record(i))
    sink.write(record(5))  # the same record_id again: stored once
    assert sink.flush(TIMEOUT)
    sink.close()
    assert sink.written == 1001 and sink.failed == sink.dropped == sink.spooled == 0
    assert len(rows(pg, name)) == 1000
    with psycopg.connect(pg.url) as conn:
        row = conn.execute(
            f"SELECT model, input_tokens, total_tokens, time, stream, duration_s, "
            f"record->>'request_id' FROM {name} WHERE record_id = 'rec-000007'"
        ).fetchone()
        version = conn.execute(
            "SELECT version FROM ssetally_schema WHERE table_name = %s", (name,)
        ).fetchone()
        indexes = {
            r[0]
            for r in conn.execute("SELECT indexname FROM pg_indexes WHERE tablename = %s", (name,))
        }
    assert row is not None and row[:3] == ("gpt-test", 7, 21)
    assert row[3].isoformat() == "2026-05-01T10:00:00.123000+00:00" and row[4] is True
    assert row[5] == 0.5 and row[6] == "req-7"
    assert version == (1,)
    assert {f"{name}_time", f"{name}_model", f"{name}_key", f"{name}_status"} <= indexes


_WRITER = """
import sys
from ssetally.sinks import PostgresSink
url, table, prefix, n, spool = sys.argv[1:]
sink = PostgresSink(url, table=table, spool_dir=spool, backoff_base=0.05, backoff_max=0.5)
for i in range(int(n)):
    sink.write({"time": "2026-05-01T10:00:00Z", "request_id": f"{prefix}-{i}",
                "record_id": f"{prefix}-{i}", "model": prefix})
assert sink.flush(60, spool=True), sink.stats()
sink.close()
assert sink.written == int(n) and sink.failed == 0, sink.stats()
"""


def test_two_processes_share_one_table(pg: PgServer, tmp_path: Path) -> None:
    name = table()  # both create it at once: the schema lock serialises them
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, pg.url, name, prefix, "3000", str(tmp_path / prefix)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for prefix in ("a", "b")
    ]
    for proc in procs:
        _out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err.decode()
    ids = rows(pg, name)
    assert len(ids) == 6000
    assert ids == sorted([f"a-{i}" for i in range(3000)] + [f"b-{i}" for i in range(3000)])


def test_crash_mid_load_every_record_once(pg: PgServer, tmp_path: Path) -> None:
    name = table()
    sink = PostgresSink(pg.url, table=name, spool_dir=str(tmp_path), batch_size=50, **FAST)
    total = 3000
    progress = threading.Event()

    def produce() -> None:
        for i in range(total):
            sink.write(record(i))
            if i == 1000:
                progress.set()
            if i % 50 == 0:
                time.sleep(0.005)

    producer = threading.Thread(target=produce)
    producer.start()
    try:
        assert progress.wait(TIMEOUT)
        pg.stop("immediate")
        time.sleep(1.0)
    finally:
        pg.start()
    producer.join(TIMEOUT)
    assert sink.flush(TIMEOUT, spool=True), sink.stats()
    sink.close()
    stats = sink.stats()
    assert stats["spooled"] > 0, stats
    assert stats["written"] == total and stats["failed"] == stats["dropped"] == 0, stats
    assert stats["spool_depth"] == 0
    assert rows(pg, name) == [f"rec-{i:06d}" for i in range(total)]


def test_spool_survives_a_restart_of_the_sink(pg: PgServer, tmp_path: Path) -> None:
    name = table()
    dead = f"postgresql://ssetally:{PASSWORD}@127.0.0.1:9/postgres"  # nothing listens
    sink = PostgresSink(dead, table=name, spool_dir=str(tmp_path), **FAST)
    for i in range(100):
        sink.write(record(i))
    assert sink.flush(TIMEOUT)
    sink.close(timeout=2)
    assert sink.spooled == 100 and sink.written == 0
    again = PostgresSink(pg.url, table=name, spool_dir=str(tmp_path), **FAST)
    assert again.flush(TIMEOUT, spool=True)
    again.close()
    assert again.written == 100 and len(rows(pg, name)) == 100


def test_hostile_record_stored_and_flagged(pg: PgServer, tmp_path: Path) -> None:
    name = table()
    sink = PostgresSink(pg.url, table=name, spool_dir=str(tmp_path), **FAST)
    hostile = record(
        1,
        model="\ud800evil\x00",
        requested_model="m" * (4 * 1024 * 1024),
        usage={"input_tokens": 2**63, "output_tokens": float("nan"), "total_tokens": 2**62},
        http_status=2**40,
        time="not a time \udfff",
        **{"\ud800": {"\x00": [float("inf")]}},
    )
    sink.write(hostile)
    sink.write(record(2))
    assert sink.flush(TIMEOUT)
    sink.close()
    assert sink.written == 2 and sink.failed == 0
    with psycopg.connect(pg.url) as conn:
        row = conn.execute(
            f"SELECT model, input_tokens, total_tokens, http_status, time, "
            f"length(requested_model), record->'sanitized' FROM {name} "
            "WHERE record_id = 'rec-000001'"
        ).fetchone()
    assert row is not None
    assert row[:5] == ("\ufffdevil\ufffd", None, 2**62, 2**40, None) and row[5] == 1024
    notes = "\n".join(row[6])
    assert "usage.input_tokens" in notes and "requested_model: truncated" in notes


def test_password_never_logged(
    pg: PgServer, tmp_path: Path, caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    caplog.set_level(logging.DEBUG)
    wrong = "wr0ng-pa55-zq"
    url = f"postgresql://ssetally:{wrong}@127.0.0.1:{pg.port}/postgres"
    sink = PostgresSink(url, table=table(), spool_dir=str(tmp_path / "a"), **FAST)
    sink.write(record(1))
    assert sink.flush(TIMEOUT)
    time.sleep(0.3)  # a few reconnect attempts
    shown = repr(sink) + str(sink.target)
    sink.close(timeout=2)
    assert sink.spooled == 1 and "***" in shown
    # The password only in PGPASSWORD, a server that is not there.
    monkeypatch.setenv("PGPASSWORD", PASSWORD)
    other = PostgresSink(
        "postgresql://ssetally@127.0.0.1:9/postgres", spool_dir=str(tmp_path / "b"), **FAST
    )
    other.write(record(2))
    assert other.flush(TIMEOUT)
    other.close(timeout=1)
    assert "authentication failed" in caplog.text or "password" in caplog.text
    for secret in (wrong, PASSWORD):
        assert secret not in caplog.text and secret not in shown
