"""``ssetally proxy --workers``: worker processes on one port (``_gateway._supervisor``), in
front of a real upstream on 127.0.0.1. Checked: every record present exactly once in one
JSONL file and one SQLite database written by two workers, ``/metrics`` summed over the
workers (the sink's counters too), a killed worker restarted and its in-flight stream
recorded as cut and counted, the records a worker had queued for a paused PostgreSQL server
when it was killed written once by its successor, a replay that never writes a JSONL line
twice, the journal's bounds, OpenTelemetry from both workers, and the CLI's start-up line.
"""

from __future__ import annotations

import glob
import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_upstream import Upstream, chat_stream, records
from otlp_receiver import OtlpReceiver
from ssetally._gateway import ProxyConfig
from ssetally._gateway._durable import Leftovers, RecordLog, replay
from ssetally._gateway._journal import SLOT, Journal, read_journal
from ssetally._gateway._supervisor import Supervisor
from ssetally.sinks import JsonlSink

pytest.importorskip("uvicorn")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

TIMEOUT = 20.0
BODY = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def supervised(
    origin: str, sink: str, workers: int = 2, otel: bool = False, **sink_options: Any
) -> Iterator[Supervisor]:
    config = ProxyConfig(upstream=origin, otel=otel, estimate=False, shutdown_timeout=5.0)
    with Supervisor(
        config,
        workers=workers,
        port=0,
        sink=sink,
        log_level="warning",
        sink_options=sink_options,
        otel=otel,
    ) as sup:
        wait_ready(sup)
        yield sup


def wait_ready(sup: Supervisor) -> None:
    wait_ready_url(sup.url)


def wait_ready_url(url: str) -> None:
    """Until a worker answers /metrics (workers take a moment to import and start)."""
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(url + "/metrics", timeout=5, trust_env=False).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        assert time.monotonic() < deadline, "no worker started"
        time.sleep(0.1)


def one_stream(url: str, n: int) -> tuple[int, bytes]:
    headers = {"x-chunks": "8", "x-delay-ms": "5", "x-n": str(n)}
    with (
        httpx.Client(timeout=TIMEOUT, trust_env=False) as c,
        c.stream("POST", url + "/v1/chat/completions", json=BODY, headers=headers) as r,
    ):
        return r.status_code, b"".join(r.iter_raw())


def many_streams(sup: Supervisor, n: int) -> None:
    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(lambda i: one_stream(sup.url, i), range(n)))
    assert all(r == (200, chat_stream(8)) for r in results)


def metric_total(url: str, name: str, **labels: str) -> float:
    text = httpx.get(url + "/metrics", timeout=TIMEOUT, trust_env=False).text
    total = 0.0
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name and labels.items() <= sample.labels.items():
                total += sample.value
    return total


def wait_for(check: Any, what: str, timeout: float = TIMEOUT) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_two_workers_write_every_jsonl_record_once(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    n = 120
    with Upstream() as up, supervised(up.origin, f"jsonl:{sink}") as sup:
        assert len(sup.pids) == 2
        many_streams(sup, n)
        wait_for(lambda: len(records(sink)) >= n, "records")
        # /metrics is the sum over the workers, whichever worker answers.
        for _ in range(6):
            assert metric_total(sup.url, "ssetally_proxy_requests_total") == n
            assert metric_total(sup.url, "ssetally_proxy_requests_in_flight") == 0
        # The sinks' counters too: the workers' records written, none pending.
        written = {"outcome": "written", "sink": "jsonl"}
        wait_for(
            lambda: metric_total(sup.url, "ssetally_sink_records_total", **written) == n, "written"
        )
        assert metric_total(sup.url, "ssetally_sink_records_total", outcome="failed") == 0
        assert metric_total(sup.url, "ssetally_sink_pending") == 0
        assert metric_total(sup.url, "ssetally_sink_spool_depth") == 0
    lines = sink.read_text("utf-8").splitlines()
    recs = records(sink)  # every line parses: no two appends interleaved
    assert len(lines) == n
    assert len({r["request_id"] for r in recs}) == n
    assert all(r["status"] == "completed" for r in recs)
    assert sum(r["usage"]["output_tokens"] for r in recs) == 7 * n
    assert {r["instance_id"] for r in recs} == {sup.config.instance_id}
    assert sum(up.requests) == n


def test_two_workers_write_every_sqlite_row_once(tmp_path: Path) -> None:
    db = tmp_path / "usage.db"
    n = 60
    with Upstream() as up, supervised(up.origin, f"sqlite:{db}") as sup:
        many_streams(sup, n)

        def count() -> int:
            with sqlite3.connect(db, timeout=10) as c:
                return int(c.execute("SELECT count(*) FROM usage_records").fetchone()[0])

        wait_for(lambda: count() >= n, "rows")
    with sqlite3.connect(db) as c:
        ids = [r[0] for r in c.execute("SELECT request_id FROM usage_records")]
    assert len(ids) == n and len(set(ids)) == n


def test_a_killed_worker_is_restarted_and_its_stream_recorded_as_cut(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    with Upstream() as up, supervised(up.origin, f"jsonl:{sink}") as sup:
        outcome: dict[str, Any] = {}

        def slow() -> None:
            headers = {"x-chunks": "200", "x-delay-ms": "50"}
            try:
                with (
                    httpx.Client(timeout=TIMEOUT, trust_env=False) as c,
                    c.stream(
                        "POST", sup.url + "/v1/chat/completions", json=BODY, headers=headers
                    ) as r,
                ):
                    outcome["status"] = r.status_code
                    outcome["bytes"] = sum(len(b) for b in r.iter_raw())
            except httpx.HTTPError as exc:
                outcome["error"] = exc

        thread = threading.Thread(target=slow)
        thread.start()
        workers = sup._workers

        def holder() -> Any:  # the worker relaying the stream, once its headers are in
            for w in workers:
                if any(e["upstream_status"] == 200 for e in read_journal(w.journal)):
                    return w
            return None

        victim = wait_for(holder, "the stream in a journal")
        entry = read_journal(victim.journal)[0]
        assert entry["upstream_status"] == 200 and entry["stream"] is True
        old_pid = victim.process.pid
        os.kill(old_pid, signal.SIGKILL)
        thread.join(TIMEOUT)
        assert "error" in outcome, outcome  # the client saw the cut
        cut = wait_for(lambda: records(sink), "the cut record")
        assert len(cut) == 1
        rec = cut[0]
        assert rec["request_id"] == entry["request_id"]
        assert rec["status"] == "truncated"
        assert rec["ended_by"] == f"cut: the proxy worker (pid {old_pid}) was killed by SIGKILL"
        assert rec["upstream_status"] == 200 and rec["stream"] is True
        assert rec["requested_model"] == "gpt-4o-mini"
        # Restarted: two workers again, the new one serving.
        wait_for(lambda: len(sup.pids) == 2 and old_pid not in sup.pids, "the restart")
        assert sup.restarts == 1 and sup.cut_records == 1
        # Counted by the successor: the dead worker never saw the stream end.
        truncated = {"status": "truncated"}
        wait_for(
            lambda: metric_total(sup.url, "ssetally_proxy_requests_total", **truncated) == 1,
            "the cut record in /metrics",
        )
        many_streams(sup, 20)
        wait_for(lambda: len(records(sink)) >= 21, "records after the restart")
        assert metric_total(sup.url, "ssetally_proxy_requests_total") == 21
        assert metric_total(sup.url, "ssetally_proxy_requests_total", status="completed") == 20
        wait_for(
            lambda: metric_total(sup.url, "ssetally_sink_records_total", outcome="written") == 21,
            "the sink's counters summed over the workers, the dead one's included",
        )
    recs = records(sink)
    assert len(recs) == 21 and len({r["request_id"] for r in recs}) == 21


def test_the_journal_is_bounded_and_skips_what_it_cannot_read(tmp_path: Path) -> None:
    path = str(tmp_path / "journal")
    journal = Journal(path, 2)
    assert os.path.getsize(path) == 2 * SLOT
    journal.begin("a", {"request_id": "a", "path": "/v1/x"})
    journal.begin("b", {"request_id": "b", "path": "p" * 5000})  # cut to its essentials
    journal.begin("c", {"request_id": "c"})  # no slot left: counted, not written
    assert journal.overflow == 1 and journal.in_flight == 2
    assert os.path.getsize(path) == 2 * SLOT
    assert sorted(e["request_id"] for e in read_journal(path)) == ["a", "b"]
    journal.end("a")
    assert [e["request_id"] for e in read_journal(path)] == ["b"]
    journal.begin("c", {"request_id": "c"})
    journal.close()
    with open(path, "r+b") as f:  # a corrupt slot is skipped
        f.write(b"\xff\xff\xff\xff")
    assert [e["request_id"] for e in read_journal(path)] == ["b"]


def test_the_cli_says_what_it_runs_and_stops_its_workers(tmp_path: Path) -> None:
    with Upstream() as up:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ssetally", "proxy", "--upstream", up.origin, "--port", "0"]
            + ["--workers", "2", "--sink", f"jsonl:{tmp_path / 'u.jsonl'}", "--no-otel"],
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            assert proc.stderr is not None
            line = proc.stderr.readline()
            assert line.startswith("ssetally proxy: event loop "), line
            assert "HTTP parser httptools, upstream client httptools, 2 workers, on " in line
            url = line.rsplit(" on ", 1)[1].strip()
            wait_ready_url(url)
            assert one_stream(url, 0) == (200, chat_stream(8))
        finally:
            proc.send_signal(signal.SIGINT)
            assert proc.wait(TIMEOUT) == 0
        assert len(records(tmp_path / "u.jsonl")) == 1


# -- records queued in a killed worker's sink ------------------------------------------------


def test_a_replay_writes_what_the_sink_had_not_settled_once(tmp_path: Path) -> None:
    base = str(tmp_path / "journal-0")
    out = tmp_path / "usage.jsonl"
    sink = JsonlSink(str(out))
    log = RecordLog(base, sink.position, segment_bytes=2000)
    recs = [{"record_id": f"r{i}", "request_id": f"r{i}", "pad": "x" * 300} for i in range(12)]
    for rec in recs:
        log.add(rec)
    segments = sorted(glob.glob(base + ".*.log"))
    assert len(segments) == 2  # 2000 bytes a segment: six records each
    log.settled(recs[:6])  # the first segment all settled: deleted
    assert sorted(glob.glob(base + ".*.log")) == segments[1:]
    log.settled(recs[6:8])
    # r8 reached the file, but its worker was killed before the sink said so.
    sink.write(recs[8])
    assert sink.flush(TIMEOUT)
    journal = Journal(base, 4)
    journal.begin("r9", {"request_id": "r9"})  # its record was logged: not a cut request
    journal.begin("cut-1", {"request_id": "cut-1", "upstream_status": 200, "stream": True})
    journal.close()  # killed here: the log is neither settled nor closed

    left = Leftovers.read(base)
    assert [r["record_id"] for r in left.records] == ["r8", "r9", "r10", "r11"]
    assert [e["request_id"] for e in left.entries] == ["cut-1"]
    successor = JsonlSink(str(out))
    cut = replay(left, successor, "cut: the proxy worker (pid 1) was killed by SIGKILL", "i-1")
    successor.close()
    left.remove()
    ids = [r["record_id"] for r in records(out)]
    assert sorted(ids) == ["cut-1", "r10", "r11", "r8", "r9"]  # r8 once
    assert [r["status"] for r in cut] == ["truncated"]
    assert cut[0]["ended_by"] == "cut: the proxy worker (pid 1) was killed by SIGKILL"
    assert cut[0]["stream"] is True and cut[0]["instance_id"] == "i-1"
    assert not glob.glob(base + ".*.log")
    sink.close()
    log.close()


def test_a_closed_log_with_everything_settled_leaves_nothing(tmp_path: Path) -> None:
    base = str(tmp_path / "journal-0")
    log = RecordLog(base)
    recs = [{"record_id": f"r{i}"} for i in range(3)]
    for rec in recs:
        log.add(rec)
    log.add(recs[0])  # queued twice: kept once
    assert log.pending == 3
    log.settled(recs)
    assert log.pending == 0
    log.close()
    assert not glob.glob(base + ".*.log")
    assert not Leftovers.read(base)


@pytest.fixture(scope="module")
def pg() -> Iterator[Any]:
    pytest.importorskip("psycopg")
    from pg_server import running_server

    with running_server() as server:
        yield server


def test_a_worker_killed_with_records_queued_for_a_paused_database_loses_none(
    pg: Any, tmp_path: Path
) -> None:
    import psycopg

    table = f"workers_{uuid.uuid4().hex[:8]}"
    url = f"{pg.url}?table={table}"
    n = 40

    def rows() -> list[tuple[Any, ...]]:
        with psycopg.connect(pg.url, connect_timeout=5) as conn:
            query = f"SELECT request_id, record_id, output_tokens FROM {table}"
            return conn.execute(query).fetchall()

    with (
        Upstream() as up,
        supervised(up.origin, url, spool_dir=str(tmp_path / "spool"), backoff_max=0.5) as sup,
    ):
        many_streams(sup, 4)  # the table exists, both sinks connected
        wait_for(lambda: len(rows()) == 4, "the first rows")
        pg.pause()
        try:
            many_streams(sup, n)  # relayed and recorded while the database answers nothing

            def queued() -> dict[int, int]:
                found = {}
                for w in sup._workers:
                    found[w.process.pid] = len(Leftovers.read(w.journal).records)
                return found

            wait_for(lambda: sum(queued().values()) == n, "every record queued, none written")
            victim = max(queued().items(), key=lambda item: item[1])[0]
            assert queued()[victim] > 0
            os.kill(victim, signal.SIGKILL)
            wait_for(lambda: len(sup.pids) == 2 and victim not in sup.pids, "the restart")
        finally:
            pg.resume()
        wait_for(lambda: len(rows()) >= n + 4, "every row", timeout=60)
        assert metric_total(sup.url, "ssetally_proxy_requests_total") == n + 4
        assert metric_total(sup.url, "ssetally_proxy_requests_total", status="truncated") == 0
        written = {"outcome": "written", "sink": "postgresql"}
        wait_for(
            lambda: metric_total(sup.url, "ssetally_sink_records_total", **written) == n + 4,
            "the sinks' written counters summed over the workers, the dead one's included",
        )
        assert metric_total(sup.url, "ssetally_sink_records_total", outcome="failed") == 0
        wait_for(lambda: metric_total(sup.url, "ssetally_sink_pending") == 0, "none pending")
        assert metric_total(sup.url, "ssetally_sink_spool_depth") == 0
    found = rows()
    assert len(found) == n + 4
    assert len({r[0] for r in found}) == n + 4  # every stream's record, once
    assert all(r[0] == r[1] for r in found)
    assert sum(r[2] for r in found) == 7 * (n + 4)
    assert sup.cut_records == 0


def test_what_workers_killed_at_stop_left_is_kept_by_the_supervisor(
    pg: Any, tmp_path: Path
) -> None:
    import psycopg
    from ssetally.sinks import PostgresSink

    table = f"stop_{uuid.uuid4().hex[:8]}"
    url = f"{pg.url}?table={table}"
    spool = str(tmp_path / "spool")
    n = 20

    def count() -> int:
        with psycopg.connect(pg.url, connect_timeout=5) as conn:
            return int(conn.execute(f"SELECT count(*) FROM {table}").fetchone()[0])

    with Upstream() as up:
        config = ProxyConfig(upstream=up.origin, otel=False, estimate=False, shutdown_timeout=1.0)
        options = {"spool_dir": spool, "connect_timeout": 2, "backoff_max": 0.5}
        sup = Supervisor(
            config, workers=2, port=0, sink=url, log_level="warning", sink_options=options
        )
        sup.start()
        try:
            wait_ready(sup)
            many_streams(sup, 4)
            wait_for(lambda: count() == 4, "the first rows")
            pg.pause()
            try:
                many_streams(sup, n)
                wait_for(
                    lambda: sum(len(Leftovers.read(w.journal).records) for w in sup._workers) == n,
                    "every record queued",
                )
                # The workers cannot flush to a database that answers nothing: killed past
                # the grace period, their records go to the supervisor's sink, which spools.
                sup.stop(timeout=2.0)
            finally:
                pg.resume()
        finally:
            sup.stop()
    # An INSERT a worker had sent before the database paused may still commit when it
    # resumes (the server reads it from its socket then): between none and all of them.
    assert 4 <= count() <= n + 4
    later = PostgresSink(url, spool_dir=spool)  # a proxy started again on that spool
    try:
        assert later.flush(60, spool=True)
    finally:
        later.close()
    assert count() == n + 4


# -- OpenTelemetry from every worker ---------------------------------------------------------


def _instance(resource: Any) -> str:
    names = {kv.key: kv.value for kv in resource.attributes}
    assert names["service.name"].string_value == "proxy-under-test"
    return str(names["service.instance.id"].string_value)


def test_otel_with_two_workers_exports_spans_and_metrics_from_both(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    sink = tmp_path / "usage.jsonl"
    served = 0
    with OtlpReceiver() as receiver:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", receiver.origin)
        monkeypatch.setenv("OTEL_SERVICE_NAME", "proxy-under-test")
        monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")  # exported at shutdown
        with Upstream() as up, supervised(up.origin, f"jsonl:{sink}", otel=True) as sup:

            def both_served() -> bool:
                # Each worker's record log names the records it wrote.
                writers = {
                    w.journal
                    for w in sup._workers
                    for path in glob.glob(w.journal + ".*.log")
                    if b"\nR" in b"\n" + Path(path).read_bytes()
                }
                return len(writers) == 2

            while not both_served():
                assert served < 400, "every stream went to one worker"
                many_streams(sup, 16)
                served += 16
                wait_for(lambda n=served: len(records(sink)) == n, "records")
    bodies = receiver.bodies
    traces = [ExportTraceServiceRequest.FromString(b) for b in bodies.get("/v1/traces", [])]
    spans = [
        (_instance(rs.resource), span)
        for request in traces
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert len(spans) == served
    assert len({instance for instance, _ in spans}) == 2
    assert all(span.name == "chat gpt-4o-mini" for _, span in spans)
    metrics = [ExportMetricsServiceRequest.FromString(b) for b in bodies.get("/v1/metrics", [])]
    exporters: dict[str, set[str]] = {}
    for request in metrics:
        for rm in request.resource_metrics:
            names = exporters.setdefault(_instance(rm.resource), set())
            names.update(m.name for sm in rm.scope_metrics for m in sm.metrics)
    assert len(exporters) == 2
    assert all("gen_ai.client.token.usage" in names for names in exporters.values())
    assert set(exporters) == {instance for instance, _ in spans}


def test_a_serving_process_is_readied_before_its_first_request() -> None:
    # In a process of its own: gc.freeze() would hold this test process's garbage.
    code = (
        "import gc, sys\n"
        "from ssetally._gateway import ProxyConfig\n"
        "from ssetally._gateway._worker import settle\n"
        "before = gc.get_freeze_count()\n"
        "assert 'genai_prices' not in sys.modules\n"
        "settle(ProxyConfig(upstream='http://127.0.0.1:9'))\n"
        "print(before, gc.get_freeze_count(), 'genai_prices.data_snapshot' in sys.modules)\n"
        "settle(ProxyConfig(upstream='http://127.0.0.1:9', cost=False))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    before, frozen, priced = out.stdout.split()
    assert before == "0" and int(frozen) > 10_000  # the start-up objects, prices among them
    assert priced == "True"
