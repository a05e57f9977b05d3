"""``ssetally proxy --workers``: worker processes on one port (``_gateway._supervisor``), in
front of a real upstream on 127.0.0.1. Checked: every record present exactly once in one
JSONL file and one SQLite database written by two workers, ``/metrics`` summed over the
workers, a killed worker restarted and its in-flight stream recorded as cut, the journal's
bounds, and the CLI's start-up line.
"""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import pytest
from http_upstream import Upstream, chat_stream, records
from ssetally._gateway import ProxyConfig
from ssetally._gateway._journal import SLOT, Journal, read_journal
from ssetally._gateway._supervisor import Supervisor

pytest.importorskip("uvicorn")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

TIMEOUT = 20.0
BODY = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "hi"}]}


@contextmanager
def supervised(origin: str, sink: str, workers: int = 2) -> Iterator[Supervisor]:
    config = ProxyConfig(upstream=origin, otel=False, estimate=False, shutdown_timeout=5.0)
    with Supervisor(config, workers=workers, port=0, sink=sink, log_level="warning") as sup:
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


def metric_total(url: str, name: str) -> float:
    text = httpx.get(url + "/metrics", timeout=TIMEOUT, trust_env=False).text
    total = 0.0
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == name:
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
        many_streams(sup, 20)
        wait_for(lambda: len(records(sink)) >= 21, "records after the restart")
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
