"""The CloudEvents sink against a local collector (a threaded ``http.server`` on 127.0.0.1)
that answers 429 and 500 now and then, stores some batches it then fails (duplicates), and goes
away for a while: every event arrives at least once, and deduplicated by id the collector holds
exactly the records written. Also the event fields and headers, the bearer token, no retry on
other 4xx, redirects not followed, and ``Retry-After``.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterator
from email.utils import formatdate
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from ssetally.sinks import CloudEventsSink, open_sink
from ssetally.sinks._cloudevents import parse_retry_after

TIMEOUT = 30.0
TOKEN = "ce-token-7d1e0c"
FAST = {"backoff_base": 0.05, "backoff_max": 0.3, "trust_env": False, "timeout": 5.0}

# What the collector does with request n (1-based): an answer, or "store+500" (keeps the
# events, then fails: the sink sends them again).
Plan = Callable[[int], tuple[str, int, dict[str, str]]]


class Collector:
    def __init__(self, plan: Plan, port: int = 0) -> None:
        self.plan = plan
        self.requests: list[dict[str, Any]] = []
        self.events: list[dict[str, Any]] = []
        self.lock = threading.Lock()
        self.port = port
        self.server: ThreadingHTTPServer | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"cloudevents+http://127.0.0.1:{self.port}/v1/usage"

    def start(self) -> None:
        collector = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with collector.lock:
                    n = len(collector.requests) + 1
                    action, status, headers = collector.plan(n)
                    collector.requests.append(
                        {"at": time.monotonic(), "headers": dict(self.headers), "status": status}
                    )
                    if action == "store":
                        collector.events.extend(json.loads(body))
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        assert self.server is not None
        self.server.shutdown()
        self.server.server_close()
        self.server = None


@pytest.fixture
def collector_factory() -> Iterator[Callable[[Plan], Collector]]:
    made: list[Collector] = []

    def make(plan: Plan) -> Collector:
        made.append(Collector(plan))
        return made[-1]

    yield make
    for c in made:
        if c.server is not None:
            c.stop()


def record(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "time": "2026-05-01T10:00:00.123Z",
        "request_id": f"req-{i}",
        "record_id": f"rec-{i:05d}",
        "instance_id": "inst-1",
        "key_fingerprint": "fp0123",
        "model": "gpt-test",
        "api": "chat.completions",
        "status": "ok",
        "usage_source": "stream",
        "usage": {
            "input_tokens": i,
            "output_tokens": 1,
            "cached_input_tokens": 0,
            "cache_write_tokens": None,
            "reasoning_tokens": 2,
            "total_tokens": i + 1,
        },
        **extra,
    }


def flaky(n: int) -> tuple[str, int, dict[str, str]]:
    if n % 7 == 2:
        return "refuse", 429, {"Retry-After": "1" if n < 10 else "0"}
    if n % 7 == 4:
        return "refuse", 503, {}
    if n % 7 == 5:
        return "store", 500, {}  # stored and failed: a duplicate delivery follows
    return "store", 200, {}


def test_flaky_collector_and_outage_every_event_once_by_id(
    collector_factory: Callable[[Plan], Collector],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.setenv("SSETALLY_CLOUDEVENTS_TOKEN", TOKEN)
    collector = collector_factory(flaky)
    sink = open_sink(collector.url, spool_dir=str(tmp_path), batch_size=40, **FAST)
    total = 800
    for i in range(total):
        sink.write(record(i))
        if i % 40 == 0:
            time.sleep(0.01)
        if i == 300:
            collector.stop()  # the collector goes away ...
        if i == 500:
            time.sleep(0.5)
            collector.start()  # ... and comes back on the same port
    assert sink.flush(TIMEOUT, spool=True), sink.stats()
    sink.close()
    stats = sink.stats()
    ids = [e["id"] for e in collector.events]
    assert set(ids) == {f"rec-{i:05d}" for i in range(total)}
    assert len(ids) > total  # some were delivered twice: the collector deduplicates
    assert stats["written"] == total and stats["failed"] == stats["dropped"] == 0, stats
    assert stats["spooled"] > 0 and stats["spool_depth"] == 0
    statuses = [r["status"] for r in collector.requests]
    assert 429 in statuses and 503 in statuses and 500 in statuses
    for r in collector.requests:
        assert r["headers"]["Content-Type"] == "application/cloudevents-batch+json"
        assert r["headers"]["Authorization"] == f"Bearer {TOKEN}"
    # Retry-After: 1 was honoured after the first 429.
    first = next(i for i, r in enumerate(collector.requests) if r["status"] == 429)
    waited = collector.requests[first + 1]["at"] - collector.requests[first]["at"]
    assert waited >= 0.9
    assert TOKEN not in caplog.text


def test_event_fields(collector_factory: Callable[[Plan], Collector], tmp_path: Path) -> None:
    collector = collector_factory(lambda n: ("store", 202, {}))
    sink = CloudEventsSink(
        collector.url, spool_dir=str(tmp_path), event_type="com.example.usage", **FAST
    )
    sink.write(record(1, subject="team-a", cost={"usd": 0.25}))
    sink.write(record(2, instance_id="east 1"))
    sink.write({"request_id": "bare", "time": "garbage", "model": "\ud800"})
    assert sink.flush(TIMEOUT)
    sink.close()
    assert sink.written == 3
    first, second, bare = collector.events
    assert first == {
        "specversion": "1.0",
        "id": "rec-00001",
        "source": "ssetally-proxy/inst-1",
        "type": "com.example.usage",
        "datacontenttype": "application/json",
        "subject": "team-a",
        "time": "2026-05-01T10:00:00.123000Z",
        "data": {
            "request_id": "req-1",
            "instance_id": "inst-1",
            "key_fingerprint": "fp0123",
            "model": "gpt-test",
            "requested_model": None,
            "provider": None,
            "api": "chat.completions",
            "stream": None,
            "status": "ok",
            "http_status": None,
            "tokens": {
                "input": 1,
                "output": 1,
                "cached_input": 0,
                "cache_write": None,
                "reasoning": 2,
                "total": 2,
            },
            "usage_source": "stream",
            "duration_s": None,
            "cost": {"usd": 0.25},
        },
    }
    assert second["subject"] == "fp0123" and second["source"] == "ssetally-proxy/east%201"
    assert "cost" not in second["data"] and "Authorization" not in collector.requests[0]["headers"]
    assert len(bare["id"]) == 32 and "time" not in bare and "subject" not in bare
    assert bare["data"]["model"] == "\ufffd" and bare["data"]["sanitized"]


def test_no_retry_on_4xx_and_no_redirects(
    collector_factory: Callable[[Plan], Collector],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.ERROR, "ssetally.sinks")
    forbidden = collector_factory(lambda n: ("refuse", 403, {}))
    sink = CloudEventsSink(forbidden.url, spool_dir=str(tmp_path / "a"), **FAST)
    for i in range(10):
        sink.write(record(i))
    assert sink.flush(TIMEOUT)
    sink.close()
    assert sink.failed == 10 and sink.written == sink.spooled == 0
    assert len(forbidden.requests) <= 10 and "HTTP 403" in caplog.text
    # 400 may be one event's fault: they are sent one by one, the good ones pass.
    picky = collector_factory(lambda n: ("refuse", 400, {}) if n in (1, 3) else ("store", 200, {}))
    sink = CloudEventsSink(picky.url, spool_dir=str(tmp_path / "b"), **FAST)
    with sink._cond:  # one batch of three
        for i in range(3):
            sink._queue.put(record(i))
            sink._submitted += 1
    assert sink.flush(TIMEOUT)
    sink.close()
    assert sink.written == 2 and sink.failed == 1
    target = collector_factory(lambda n: ("store", 200, {}))
    moved = collector_factory(
        lambda n: ("refuse", 307, {"Location": target.url.removeprefix("cloudevents+")})
    )
    sink = CloudEventsSink(moved.url, spool_dir=str(tmp_path / "c"), **FAST)
    sink.write(record(1))
    assert sink.flush(TIMEOUT)
    sink.close()
    assert sink.failed == 1 and not target.requests and "not followed" in caplog.text


def test_parse_retry_after() -> None:
    assert parse_retry_after("120") == 120.0
    assert parse_retry_after(None) is None and parse_retry_after("soon") is None
    now = time.time()
    later = parse_retry_after(formatdate(now + 30, usegmt=True), now=now)
    assert later is not None and 28 <= later <= 31
    assert parse_retry_after(formatdate(now - 30, usegmt=True), now=now) == 0.0


def test_retry_after_is_capped(
    collector_factory: Callable[[Plan], Collector], tmp_path: Path
) -> None:
    collector = collector_factory(
        lambda n: ("refuse", 429, {"Retry-After": "3600"}) if n == 1 else ("store", 200, {})
    )
    sink = CloudEventsSink(collector.url, spool_dir=str(tmp_path), retry_after_max=0.5, **FAST)
    sink.write(record(1))
    assert sink.flush(TIMEOUT, spool=True)
    sink.close()
    assert sink.written == 1 and len(collector.requests) == 2
