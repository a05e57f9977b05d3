"""The sinks' common layer (``ssetally.sinks``): sanitising, isolation of a bad record, the
counters, the on-disk spool, ``open_sink`` and the Prometheus collector; JSONL and SQLite
end to end, with a property test over hostile records.
"""

from __future__ import annotations

import json
import logging
import os
import sqlite3
import sys
import tempfile
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ssetally.sinks import (
    DEFAULT_LIMITS,
    CloudEventsSink,
    JsonlSink,
    Limits,
    Sink,
    SinkCollector,
    Spool,
    SqliteSink,
    open_sink,
    sanitize_record,
)

TIMEOUT = 10.0


def jsonl(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def sqlite_rows(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = [dict(r) for r in db.execute("SELECT * FROM usage_records ORDER BY id")]
    for row in rows:
        row["record"] = json.loads(row["record"])
    return rows


# --------------------------------------------------------------------------- sanitising


def test_sanitize_regressions() -> None:
    record = {
        "model": "\ud800",
        "requested_model": "m" * (4 * 1024 * 1024),
        "usage": {"input_tokens": 2**63, "output_tokens": -(2**63), "total_tokens": float("nan")},
        "timings": {"duration": float("inf")},
        "\udc00key": "a\x00b",
        "pair": "\ud83d\ude00",
        "error": "e" * 20_000,
        "deep": [[[[[[[[[[[[[[[1]]]]]]]]]]]]]]],
        "many": list(range(1000)),
        7: b"\xff\xfe",
        "stream": True,
    }
    out = sanitize_record(record)
    encoded = json.dumps(out, ensure_ascii=False, allow_nan=False).encode("utf-8")
    assert len(encoded) < 64 * 1024
    assert out["model"] == "\ufffd" and out["\ufffdkey"] == "a\ufffdb"
    assert out["pair"] == "\U0001f600"  # a real pair is kept as the character it spells
    assert len(out["requested_model"]) == 1024 and len(out["error"]) == 8192
    assert out["usage"] == {"input_tokens": None, "output_tokens": -(2**63), "total_tokens": None}
    assert out["timings"] == {"duration": None}
    assert out["7"] == "\ufffd\ufffd" and out["stream"] is True and len(out["many"]) == 256
    notes = "\n".join(out["sanitized"])
    for path in (
        "model:",
        "requested_model: truncated from 4194304",
        "usage.input_tokens:",
        "usage.total_tokens:",
        "timings.duration:",
        "<key>:",
        "error: truncated",
        "nested too deep",
        "many: 744 of 1000 items cut",
    ):
        assert path in notes
    assert "usage.output_tokens" not in notes  # -2**63 fits
    assert record["model"] == "\ud800"  # the caller's record is not changed


def test_an_empty_key_is_replaced_and_noted() -> None:
    """An empty key becomes U+FFFD, and the record says so (nested keys too)."""
    out = sanitize_record({"": 1, "usage": {"": 2, "input_tokens": 3}})
    assert out["\ufffd"] == 1 and out["usage"] == {"\ufffd": 2, "input_tokens": 3}
    assert "<key>: empty key replaced" in out["sanitized"]
    assert "usage.<key>: empty key replaced" in out["sanitized"]


def test_sanitize_budget_and_clean_records() -> None:
    clean = {"time": "t", "usage": {"input_tokens": 3}, "warnings": ["w"], "x": None}
    assert sanitize_record(clean) == clean
    wide = {f"k{i}": "v" * 1000 for i in range(1000)}
    out = sanitize_record(wide, Limits(items=2000, budget=10_000))
    assert sum(len(v) for k, v in out.items() if k != "sanitized") <= 10_000
    assert any("items cut" in n for n in out["sanitized"])
    assert len(out["sanitized"]) <= 33


class _Weird:
    def __str__(self) -> str:
        raise RuntimeError("no text")


def test_sanitize_never_raises() -> None:
    out = sanitize_record({"a": _Weird(), "b": {1.5: object()}, "c": (1, 2)})
    assert out["a"] == "<_Weird>" and out["c"] == [1, 2] and "1.5" in out["b"]


# --------------------------------------------------------------------------- JSONL / SQLite

_numbers = st.one_of(
    st.integers(min_value=-(2**70), max_value=2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
    st.none(),
)
_texts = st.one_of(
    st.text(st.characters(codec=None, categories=None), max_size=40),
    st.sampled_from(["\ud800", "\udfff\ud800", "\x00", "a\x00\ud83d", "\ud83d\ude00"]),
    st.sampled_from([2000, 9000, 300_000]).map(lambda n: "x" * n),
)
_values = st.recursive(
    st.one_of(_numbers, _texts),
    lambda inner: st.one_of(
        st.lists(inner, max_size=5), st.dictionaries(_texts, inner, max_size=5)
    ),
    max_leaves=20,
)
_records = st.fixed_dictionaries(
    {
        "time": st.one_of(_texts, st.just("2026-05-01T10:00:00.000Z")),
        "request_id": _texts,
        "model": _texts,
        "key_fingerprint": _texts,
        "status": _texts,
        "stream": st.one_of(st.booleans(), _numbers),
        "usage": st.one_of(
            st.none(),
            st.fixed_dictionaries(
                {
                    "input_tokens": _numbers,
                    "output_tokens": _numbers,
                    "total_tokens": _numbers,
                    "source": _texts,
                }
            ),
        ),
        "timings": st.dictionaries(st.sampled_from(["duration", "ttft"]), _numbers),
        "bytes": st.dictionaries(st.just("client"), st.one_of(_numbers, _texts)),
    },
    optional={"extra": _values, "upstream_status": _numbers, "cost": _values},
).flatmap(lambda r: st.dictionaries(_texts, _values, max_size=3).map(lambda x: {**x, **r}))


def _walked(record: Any, limits: Limits = DEFAULT_LIMITS) -> Any:
    """``sanitize_record`` without its fast path for records that need no change."""
    from unittest import mock

    from ssetally.sinks import _sanitize

    with mock.patch.object(_sanitize, "_is_clean", lambda *_: False):
        return sanitize_record(record, limits)


@settings(max_examples=200, deadline=None, suppress_health_check=list(HealthCheck))
@given(record=st.one_of(_records, st.dictionaries(_texts, _values, max_size=6)))
def test_property_the_fast_path_sanitises_as_the_walk_does(record: dict[str, Any]) -> None:
    assert json.dumps(sanitize_record(record), default=str) == json.dumps(
        _walked(record), default=str
    )
    tight = Limits(string=8, key=4, items=3, depth=3, budget=40, nodes=12)
    assert json.dumps(sanitize_record(record, tight), default=str) == json.dumps(
        _walked(record, tight), default=str
    )


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(record=st.one_of(_records, st.dictionaries(_texts, _values, max_size=6)))
def test_property_a_clean_line_is_the_checked_record_s_json(record: dict[str, Any]) -> None:
    """``clean_line`` (the JSONL sink's one walk) accepts exactly what ``record_is_clean``
    does, and writes what ``compact_json`` writes, under the default and tight limits."""
    from ssetally._core import clean_line, compact_json, record_is_clean

    for limits in (DEFAULT_LIMITS, Limits(string=8, key=4, items=3, depth=3, budget=40, nodes=12)):
        line = clean_line(record, limits)
        assert (line is not None) == record_is_clean(record, limits)
        if line is not None:
            assert line == (compact_json(record) or "").encode("utf-8") + b"\n"
            assert json.loads(line) == json.loads(json.dumps(record))
            assert line.count(b"\n") == 1


def _nested(depth: int) -> dict[str, Any]:
    value: dict[str, Any] = {}
    for _ in range(depth):
        value = {"n": value}
    return value


def test_a_proxy_record_takes_the_fast_path_unchanged() -> None:
    from ssetally._gateway._record import Exchange, build_record
    from ssetally.sinks import _sanitize

    x = Exchange("r1", "2026-05-01T10:00:00.000Z", 0.0, "POST", "/v1/chat/completions")
    x.notes.append("é ✓ \U0001f600")
    record = build_record(x, None, "i-1")
    assert _sanitize._is_clean(record, Limits())
    assert sanitize_record(record) == record == _walked(record)
    for hostile in ("\ud800", "a\x00b", "x" * 1025):
        changed = {**record, "path": hostile}
        assert not _sanitize._is_clean(changed, Limits())
        assert sanitize_record(changed)["sanitized"]
    assert not _sanitize._is_clean({**record, "usage": {"input_tokens": 2**63}}, Limits())
    assert not _sanitize._is_clean({**record, "events": float("nan")}, Limits())

    class Text(str):
        pass

    for hostile_value in (
        {"\ud800": 1},
        {"a\x00": 1},
        {"": 1},
        {"k" * 257: 1},
        (1, 2),
        Text("x"),
        b"x",
        _nested(12),
        list(range(257)),
        -(2**63) - 1,
        float("inf"),
    ):
        changed = {**record, "extra": hostile_value}
        assert not _sanitize._is_clean(changed, Limits()), hostile_value
        assert _walked(changed) == sanitize_record(changed)
    # Error fields may be long, and what is nested below them; others may not.
    long = "e" * 5000
    assert _sanitize._is_clean({**record, "warnings": [long]}, Limits())
    assert _sanitize._is_clean({**record, "attempts": [{"why": long}]}, Limits())
    assert not _sanitize._is_clean({**record, "model": long}, Limits())
    for fine in (True, None, 2**63 - 1, -1.5, [], {}):
        assert _sanitize._is_clean({**record, "extra": fine}, Limits()), fine
    assert not _sanitize._is_clean({**record, "extra": "x" * 300}, Limits(budget=300))
    assert not _sanitize._is_clean({**record, "extra": list(range(200))}, Limits(nodes=100))


@settings(max_examples=50, deadline=None, suppress_health_check=list(HealthCheck))
@given(records=st.lists(_records, min_size=1, max_size=12))
def test_property_every_record_readable_back(records: list[dict[str, Any]]) -> None:
    with tempfile.TemporaryDirectory() as d:
        sinks: list[Sink] = [JsonlSink(f"{d}/a.jsonl"), SqliteSink(f"{d}/a.db")]
        for sink in sinks:
            for record in records:
                assert sink.write(record)
            assert sink.flush(TIMEOUT)
            sink.close()
            assert sink.stats()["written"] == len(records), sink.stats()
            assert sink.failed == sink.dropped == 0
        lines = jsonl(Path(d) / "a.jsonl")
        rows = sqlite_rows(Path(d) / "a.db")
    assert len(lines) == len(rows) == len(records)
    assert len({r["record_id"] for r in lines}) == len(records)
    assert len({r["record_id"] for r in rows}) == len(records)
    # Each sink gave the records ids of its own; the rest is the same sanitised record.
    for row, line in zip(rows, lines):
        assert row["record_id"] == row["record"].pop("record_id")
        line_id = line.pop("record_id")
        assert row["record"] == line
        line["record_id"] = line_id
    for record, line in zip(records, lines):
        assert len(json.dumps(line, ensure_ascii=False)) < 400_000
        if not line.get("sanitized"):
            assert {k: v for k, v in line.items() if k != "record_id"} == record


def test_record_id_added_unless_present(tmp_path: Path) -> None:
    sink = JsonlSink(str(tmp_path / "a.jsonl"))
    mine = {"request_id": "r"}
    sink.write(mine)
    sink.write({"request_id": "s", "record_id": "given"})
    sink.close()
    lines = jsonl(tmp_path / "a.jsonl")
    assert "record_id" not in mine and len(lines[0]["record_id"]) == 32
    assert lines[1]["record_id"] == "given"


class _Picky(Sink):
    """Refuses any batch holding a record with ``bad`` set; remembers what it wrote."""

    kind = "picky"

    def _open(self) -> None:
        self.rows: list[dict[str, Any]] = []
        self.calls = 0

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        self.calls += 1
        if any(r.get("bad") for r in records):
            raise ValueError("bad record")
        self.rows.extend(records)


def test_one_bad_record_never_takes_others_down(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.ERROR, "ssetally.sinks")
    sink = _Picky("picky", batch_size=100)
    # Fill the queue before the writer wakes so the records share one batch.
    with sink._cond:
        for i in range(50):
            sink._queue.put({"n": i, "bad": i == 17, "record_id": f"id-{i}"})
            sink._submitted += 1
    assert sink.flush(TIMEOUT)
    sink.close()
    assert sorted(r["n"] for r in sink.rows) == [i for i in range(50) if i != 17]
    assert sink.written == 49 and sink.failed == 1 and sink.pending == 0
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    assert len(refused) == 1 and "id-17" in refused[0].getMessage()


class _Stuck(_Picky):
    """Holds its first batch until ``release`` is set."""

    kind = "stuck"

    def _open(self) -> None:
        super()._open()
        self.taken = threading.Event()
        self.release = threading.Event()

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        self.taken.set()
        assert self.release.wait(TIMEOUT)
        super()._write_batch(records)


def test_a_full_queue_drops_past_its_bound_and_keeps_the_rest() -> None:
    sink = _Stuck("stuck", queue_size=3, linger=0)
    assert sink.write({"n": 0})
    assert sink.taken.wait(TIMEOUT)  # the writer holds record 0: the queue is empty
    assert [sink.write({"n": i}) for i in range(1, 6)] == [True, True, True, False, False]
    assert sink.dropped == 2 and sink.pending == 4
    sink.release.set()
    assert sink.flush(TIMEOUT)
    assert sink.write({"n": 6})  # room again once the writer took the queue
    sink.close()
    assert [r["n"] for r in sink.rows] == [0, 1, 2, 3, 6] and sink.dropped == 2


def test_write_never_raises_and_counts() -> None:
    sink = _Picky("picky", queue_size=1)
    assert not sink.write(None)  # type: ignore[arg-type]
    assert sink.failed == 1
    sink.close()
    assert not sink.write({"a": 1}) and sink.dropped == 1


def test_sqlite_adds_record_id_to_an_old_table(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE usage_records (id INTEGER PRIMARY KEY AUTOINCREMENT, time TEXT NOT NULL,"
            " request_id TEXT NOT NULL, instance_id TEXT, key_fingerprint TEXT, method TEXT,"
            " path TEXT, model TEXT, api TEXT, status TEXT, stream INTEGER, usage_source TEXT,"
            " input_tokens INTEGER, output_tokens INTEGER, total_tokens INTEGER,"
            " cached_input_tokens INTEGER, reasoning_tokens INTEGER, upstream_status INTEGER,"
            " duration_s REAL, ttft_s REAL, client_bytes INTEGER, record TEXT NOT NULL)"
        )
    sink = SqliteSink(str(path))
    for _ in range(2):  # the same record twice (a replay) is stored once
        sink.write({"time": "t", "request_id": "r", "record_id": "same"})
    sink.close()
    rows = sqlite_rows(path)
    assert [r["record_id"] for r in rows] == ["same"] and sink.written == 2


# --------------------------------------------------------------------------- spool


def test_spool_fifo_commit_and_restart(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), segment_bytes=30)
    for start in range(0, 20, 4):  # a segment is rotated between appends (batches)
        assert spool.append([{"n": i} for i in range(start, start + 4)]) == 4
    assert spool.depth == 20 and len(os.listdir(spool.directory)) > 2
    batch = spool.peek(5)  # from one segment only
    assert [r["n"] for r in batch] == [0, 1, 2, 3]
    spool.commit(3)
    assert spool.depth == 17
    spool.close()
    again = Spool(str(tmp_path), segment_bytes=30)
    assert again.directory == spool.directory and again.depth == 17
    got = []
    while again.depth:
        batch = again.peek(4)
        got += [r["n"] for r in batch]
        again.commit(len(batch))
    assert got == list(range(3, 20)) and again.size == 0
    again.close()


def test_spool_cap_and_torn_tail(tmp_path: Path) -> None:
    spool = Spool(str(tmp_path), max_bytes=1000)
    assert spool.append([{"pad": "x" * 90}] * 20) == 9
    spool.close()
    segment = next(p for p in Path(spool.directory).iterdir() if p.suffix == ".jsonl")
    with segment.open("ab") as f:
        f.write(b'{"torn":')  # a crash in the middle of a write
    again = Spool(str(tmp_path), max_bytes=10_000)
    again.append([{"after": 1}])  # never appended to the torn segment
    records = []
    while again.depth:
        batch = again.peek(100)
        records += batch
        again.commit(len(batch))
    assert len(records) == 10 and records[-1] == {"after": 1} and again.corrupt == 1
    again.close()


def test_spool_slots_and_adoption(tmp_path: Path) -> None:
    first = Spool(str(tmp_path))
    second = Spool(str(tmp_path))  # the first slot is held: a second one
    assert first.directory != second.directory
    second.append([{"from": "second"}])
    second.close()  # as if its process died
    third = Spool(str(tmp_path))  # takes the free slot; adopts nothing it holds itself
    assert third.depth == 1
    third.close()
    first.close()
    fourth = Spool(str(tmp_path))  # slot 0 again, adopting slot 1's segment
    assert fourth.depth == 1 and fourth.peek(1) == [{"from": "second"}]
    fourth.close()


def test_spool_full_is_counted_dropped_and_logged(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, "ssetally.sinks")
    # Nothing listens on this port: every record goes to the spool until it is full.
    sink = CloudEventsSink(
        "cloudevents+http://127.0.0.1:9/usage",
        spool_dir=str(tmp_path / "spool"),
        spool_max_bytes=4000,
        trust_env=False,
    )
    for i in range(100):
        sink.write({"time": "t", "request_id": str(i), "model": "m"})
    assert sink.flush(TIMEOUT)
    stats = sink.stats()
    sink.close(timeout=1)
    assert stats["spooled"] + stats["dropped"] == 100 and stats["dropped"] > 0
    assert stats["spool_depth"] == stats["spooled"] and stats["written"] == 0
    assert any("is full" in r.getMessage() for r in caplog.records)


# --------------------------------------------------------------------------- open_sink


def test_open_sink_specs(tmp_path: Path) -> None:
    for spec, cls in (
        (f"jsonl:{tmp_path / 'a.jsonl'}", JsonlSink),
        (f"sqlite:{tmp_path / 'a.db'}", SqliteSink),
        (str(tmp_path / "b.sqlite3"), SqliteSink),
        (str(tmp_path / "sub" / "b.log"), JsonlSink),
        ("cloudevents+https://collector.invalid/v1/usage", CloudEventsSink),
    ):
        sink = (
            open_sink(spec, batch_size=10, spool_dir=str(tmp_path / "s"))
            if "://" in spec
            else open_sink(spec)
        )
        assert type(sink) is cls
        sink.close(timeout=1)
    with pytest.raises(ValueError, match="unknown sink"):
        open_sink("kafka://broker/topic")
    with pytest.raises(ValueError):
        open_sink("cloudevents+ftp://x/y")


def test_postgres_without_psycopg(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "psycopg", None)
    with pytest.raises(ImportError, match=r"pip install 'ssetally\[postgres\]'"):
        open_sink("postgresql://u:p@127.0.0.1:1/db")


def test_collector(tmp_path: Path) -> None:
    prometheus_client = pytest.importorskip("prometheus_client")
    sink = JsonlSink(str(tmp_path / "a.jsonl"))
    for i in range(3):
        sink.write({"n": i})
    sink.flush(TIMEOUT)
    registry = prometheus_client.CollectorRegistry()
    registry.register(SinkCollector(sink))
    text = prometheus_client.generate_latest(registry).decode()
    sink.close()
    assert 'ssetally_sink_records_total{outcome="written",sink="jsonl"} 3.0' in text
    assert 'ssetally_sink_records_total{outcome="dropped",sink="jsonl"} 0.0' in text
    assert 'ssetally_sink_pending{sink="jsonl"} 0.0' in text
    assert 'ssetally_sink_spool_depth{sink="jsonl"} 0.0' in text
