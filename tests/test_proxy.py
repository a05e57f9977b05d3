"""The metering reverse proxy (``ssetally proxy``): uvicorn on 127.0.0.1 (port 0, from a
background thread) in front of a ``ReplayServer``.

Checked: corpus streams arrive byte for byte, one record per request in JSONL and SQLite,
``/metrics`` agrees with the records, the real OpenAI SDK through the proxy, injected-usage
stripping, client disconnects, upstream failures, 20 concurrent streams, refusal of absolute
request targets, body and header limits, and fail-open metering.
"""

from __future__ import annotations

import asyncio
import json
import re
import socket
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
from corpus import corpus_files, rebuild
from loopback_http import raw_exchange
from openai.types.chat import ChatCompletionMessageParam
from proxy_process import proxy_process
from ssetally import UsageTap
from ssetally._gateway import ProxyConfig, ProxyServer, key_fingerprint
from ssetally._replay import ReplayServer
from ssetally.sinks import open_sink

pytest.importorskip("uvicorn")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

TIMEOUT = 10.0
KEY = "sk-test-secret-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about usage"}]
#: HTTP libraries of the proxy's upstream pool.
CLIENT_LIBS = ["httpx2", "httpx"]


# --------------------------------------------------------------------------- helpers


@contextmanager
def proxied(
    upstream: ReplayServer | str, sink: str, http: str = "auto", **options: Any
) -> Iterator[ProxyServer]:
    origin = upstream if isinstance(upstream, str) else upstream.origin
    config = ProxyConfig(upstream=origin, otel=False, **options)
    with ProxyServer(config, sink, http=http) as proxy:
        yield proxy


def jsonl_records(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def sqlite_records(path: Path) -> list[dict[str, Any]]:
    with sqlite3.connect(path) as db:
        db.row_factory = sqlite3.Row
        rows = db.execute("SELECT * FROM usage_records ORDER BY id").fetchall()
    return [dict(r) for r in rows]


def wait_records(proxy: ProxyServer, path: Path, n: int) -> list[dict[str, Any]]:
    """The JSONL records once there are ``n`` of them (bounded wait)."""
    deadline = time.monotonic() + TIMEOUT
    while True:
        assert proxy.flush(TIMEOUT)
        records = jsonl_records(path)
        if len(records) >= n or time.monotonic() > deadline:
            assert len(records) == n, records
            return records
        time.sleep(0.02)


def sdk(proxy: ProxyServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=proxy.url + "/v1",
        api_key=KEY,
        max_retries=0,
        timeout=TIMEOUT,
        http_client=httpx.Client(timeout=TIMEOUT, trust_env=False),
    )


def http(base: str) -> httpx.Client:
    return httpx.Client(base_url=base, timeout=TIMEOUT, headers=AUTH, trust_env=False)


def post_stream(client: httpx.Client, path: str, body: dict[str, Any], **headers: str) -> bytes:
    with client.stream("POST", path, json=body, headers=headers) as response:
        assert response.status_code == 200, response.read()
        return b"".join(response.iter_raw())


def metric_samples(proxy: ProxyServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(proxy.url + "/metrics", timeout=TIMEOUT, trust_env=False).text
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in prometheus_parser.text_string_to_metric_families(text):
        for sample in family.samples:
            out[(sample.name, tuple(sorted(sample.labels.items())))] = sample.value
    return out


def metric_sum(samples: dict[Any, float], name: str, **labels: str) -> float:
    return sum(
        v
        for (n, ls), v in samples.items()
        if n == name and all(dict(ls).get(k) == want for k, want in labels.items())
    )


def normalized(data: bytes) -> bytes:
    return re.sub(rb'"created":\d+', b'"created":0', data)


def tap_report(data: bytes) -> Any:
    tap = UsageTap()
    tap.feed(data)
    return tap.finish()


# --------------------------------------------------------------------------- byte identity


def test_every_corpus_stream_is_relayed_byte_for_byte(tmp_path: Path) -> None:
    streams = [
        (f, rebuild(f, crlf=crlf, keepalive=keepalive))
        for f in corpus_files()
        for crlf, keepalive in ((False, False), (True, True))
    ]
    sink = tmp_path / "usage.jsonl"
    upstream = ReplayServer(streams=[data for _, data in streams])
    with (
        upstream,
        proxied(upstream, f"jsonl:{sink}", estimate=False) as proxy,
        http(proxy.url) as c,
    ):
        received = [
            post_stream(c, "/v1/chat/completions", {"model": "m", "stream": True}) for _ in streams
        ]
        records = wait_records(proxy, sink, len(streams))
    for (f, data), got, record in zip(streams, received, records):
        assert got == data, f.name
        expected = tap_report(data)
        assert record["stream"] is True and record["api"] == expected.api, f.name
        assert record["status"] == expected.status, f.name
        assert record["bytes"]["client"] == record["bytes"]["upstream"] == len(data)
        if expected.usage is None:
            assert record["usage"] is None, f.name
        else:
            assert record["usage"]["input_tokens"] == expected.usage.input_tokens, f.name
            assert record["usage"]["output_tokens"] == expected.usage.output_tokens, f.name
            assert record["usage_source"] == "stream"
    assert sum(r["usage"] is not None for r in records) > len(records) // 2


# --------------------------------------------------------------------------- records and SDK


@pytest.mark.parametrize("kind", ["jsonl", "sqlite"])
@pytest.mark.parametrize("lib", CLIENT_LIBS)
def test_sdk_through_proxy_one_record_per_request(tmp_path: Path, kind: str, lib: str) -> None:
    path = tmp_path / f"usage.{kind}"
    upstream = ReplayServer()
    with upstream, proxied(upstream, f"{kind}:{path}", upstream_client=lib) as proxy:
        truths = []
        with sdk(proxy) as client:
            chunks = list(
                client.chat.completions.create(
                    model="gpt-4o",
                    messages=HELLO,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
            assert chunks[-1].usage is not None
            truths.append(upstream.last.usage)
            events = list(client.responses.create(model="o4-mini", input="Hi", stream=True))
            assert events[-1].type == "response.completed"
            truths.append(upstream.last.usage)
            answer = client.chat.completions.create(model="gpt-4o-mini", messages=HELLO)
            assert answer.usage is not None
            truths.append(upstream.last.usage)
        assert proxy.flush(TIMEOUT)
        samples = metric_samples(proxy)
        records = jsonl_records(path) if kind == "jsonl" else sqlite_records(path)
    if kind == "sqlite":
        assert all(r["request_id"] and r["record"] for r in records)
        assert [r["input_tokens"] for r in records] == [
            truths[0]["prompt_tokens"],
            truths[1]["input_tokens"],
            truths[2]["prompt_tokens"],
        ]
        records = [json.loads(r["record"]) for r in records]
    assert len(records) == 3
    assert [r["api"] for r in records] == ["chat.completions", "responses", "chat.completions"]
    assert [r["stream"] for r in records] == [True, True, False]
    assert [r["status"] for r in records] == ["completed"] * 3
    assert [r["model"] for r in records] == ["gpt-4o", "o4-mini", "gpt-4o-mini"]
    assert records[0]["usage"]["total_tokens"] == truths[0]["total_tokens"]
    assert records[1]["usage"]["output_tokens"] == truths[1]["output_tokens"]
    assert records[1]["usage"]["reasoning_tokens"] > 0
    assert records[2]["usage"]["input_tokens"] == truths[2]["prompt_tokens"]
    for r in records:
        assert (
            r["key_fingerprint"] == key_fingerprint(KEY, proxy.app.key_salt) != key_fingerprint(KEY)
        )
        assert r["upstream_status"] == r["http_status"] == 200
        assert r["instance_id"] and r["time"].endswith("Z")
        assert r["timings"]["duration"] > 0 and r["bytes"]["client"] > 0
        assert r["upstream_request_id"].startswith("req_")
    assert len({r["request_id"] for r in records}) == 3
    stored = path.read_bytes()
    assert KEY.encode() not in stored and b"Bearer" not in stored

    # /metrics agrees with the records.
    for kind_label, field in (("input", "input_tokens"), ("output", "output_tokens")):
        assert metric_sum(samples, "ssetally_proxy_tokens_total", kind=kind_label) == sum(
            r["usage"][field] for r in records
        )
    assert (
        metric_sum(samples, "ssetally_proxy_tokens_total", model="o4-mini", kind="reasoning")
        == (records[1]["usage"]["reasoning_tokens"])
    )
    assert metric_sum(samples, "ssetally_proxy_requests_total", status="completed") == 3
    assert metric_sum(samples, "ssetally_proxy_stream_duration_seconds_count") == 2
    assert metric_sum(samples, "ssetally_proxy_metering_failures_total") == 0


async def test_async_sdk_through_proxy(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    with ReplayServer() as upstream, proxied(upstream, f"jsonl:{sink}") as proxy:
        async with openai.AsyncOpenAI(
            base_url=proxy.url + "/v1", api_key=KEY, max_retries=0, timeout=TIMEOUT
        ) as client:
            streams = [
                await client.chat.completions.create(
                    model="gpt-4o",
                    messages=[{"role": "user", "content": f"q{i}"}],
                    stream=True,
                    stream_options={"include_usage": True},
                )
                for i in range(5)
            ]

            async def drain(stream: Any) -> list[Any]:
                return [c async for c in stream]

            results = await asyncio.gather(*(drain(s) for s in streams))
        truth = {s.id: s.usage for s in upstream.served}
        records = await asyncio.to_thread(wait_records, proxy, sink, 5)
    assert all(chunks[-1].usage is not None for chunks in results)
    assert {r["response_id"]: r["usage"]["total_tokens"] for r in records} == {
        k: v["total_tokens"] for k, v in truth.items()
    }


# --------------------------------------------------------------------------- injection


def test_injected_usage_is_stripped_byte_exactly(tmp_path: Path) -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "stream": True}

    def run(inject: bool | None) -> tuple[bytes, Any, list[dict[str, Any]]]:
        sink = tmp_path / f"usage-{inject}.jsonl"
        with ReplayServer() as upstream:
            if inject is None:  # straight to the upstream
                with http(upstream.origin) as c:
                    data = post_stream(c, "/v1/chat/completions", body)
                return data, upstream.last.usage, []
            with proxied(upstream, f"jsonl:{sink}", inject_usage=inject) as proxy:
                with http(proxy.url) as c:
                    data = post_stream(c, "/v1/chat/completions", body)
                records = wait_records(proxy, sink, 1)
            sent = upstream.requests[-1]
            assert sent.body.get("stream_options") == ({"include_usage": True} if inject else None)
            return data, upstream.last.usage, records

    direct, _, _ = run(None)
    plain, _, plain_records = run(False)
    injected, truth, records = run(True)
    assert b'"choices":[]' not in injected
    assert normalized(injected) == normalized(plain) == normalized(direct)
    assert plain_records[0]["usage"]["source"] == "estimate"
    record = records[0]
    assert record["injected_usage"] is True and record["stripped_usage_chunks"] == 1
    assert record["usage"]["source"] == "stream"
    assert record["usage"]["input_tokens"] == truth["prompt_tokens"]
    assert record["usage"]["output_tokens"] == truth["completion_tokens"]
    assert record["bytes"]["client"] == len(injected) < record["bytes"]["upstream"]


def test_injection_with_the_sdk(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    with ReplayServer() as upstream:
        with proxied(upstream, f"jsonl:{sink}", inject_usage=True) as proxy, sdk(proxy) as client:
            chunks = list(
                client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
            )
            completions = list(
                client.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", stream=True)
            )
            records = wait_records(proxy, sink, 2)
        truths = [s.usage for s in upstream.served]
    assert all(c.choices for c in chunks) and all(c.choices for c in completions)
    assert [r["usage"]["total_tokens"] for r in records] == [t["total_tokens"] for t in truths]


# --------------------------------------------------------------------------- disconnects


@pytest.mark.parametrize("lib", CLIENT_LIBS)
def test_client_disconnect_mid_stream_still_records(tmp_path: Path, lib: str) -> None:
    sink = tmp_path / "usage.jsonl"
    upstream = ReplayServer(delay=0.05)
    options: dict[str, Any] = {"estimate": True, "upstream_client": lib}
    with upstream, proxied(upstream, f"jsonl:{sink}", **options) as proxy, http(proxy.url) as c:
        body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
        with c.stream("POST", "/v1/chat/completions", json=body) as response:
            first = next(response.iter_raw())
            assert first.startswith(b"data: ")
        records = wait_records(proxy, sink, 1)
        served = upstream.last
        deadline = time.monotonic() + TIMEOUT
        while not served.client_disconnected and time.monotonic() < deadline:
            time.sleep(0.02)
    record = records[0]
    assert record["ended_by"] == "client disconnected"
    assert record["status"] == "cancelled"  # the client stopped reading
    assert record["usage"]["source"] == "estimate"  # the background fallback ran
    assert 0 < record["bytes"]["client"] == record["bytes"]["upstream"]
    # The proxy closed the upstream stream: the server stopped before its last event.
    assert served.client_disconnected and served.events_sent < served.events_planned


def test_client_disconnect_on_responses_retrieves_usage(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    upstream = ReplayServer(delay=0.05)
    with upstream:
        with proxied(upstream, f"jsonl:{sink}") as proxy, http(proxy.url) as c:
            body = {"model": "gpt-4o", "input": "Hi", "stream": True}
            with c.stream("POST", "/v1/responses", json=body) as response:
                next(response.iter_raw())
            records = wait_records(proxy, sink, 1)
        truth = upstream.last.usage
        gets = [r for r in upstream.requests if r.method == "GET"]
    record = records[0]
    assert record["ended_by"] == "client disconnected"
    assert record["usage"]["source"] == "retrieval" and record["status"] == "completed"
    assert record["usage"]["total_tokens"] == truth["total_tokens"]
    assert gets and gets[0].header("authorization") == f"Bearer {KEY}"


# --------------------------------------------------------------------------- upstream failures


def test_upstream_5xx_is_relayed(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
    with ReplayServer() as upstream:
        with http(upstream.origin) as c:
            direct = c.post("/v1/chat/completions", json=body, headers={"x-replay-status": "503"})
        with proxied(upstream, f"jsonl:{sink}") as proxy, http(proxy.url) as c:
            via = c.post("/v1/chat/completions", json=body, headers={"x-replay-status": "503"})
            records = wait_records(proxy, sink, 1)
    assert via.status_code == direct.status_code == 503
    assert via.content == direct.content
    assert via.headers["retry-after"] == direct.headers["retry-after"]
    assert records[0]["status"] == "http_error" and records[0]["upstream_status"] == 503
    assert records[0]["usage"] is None


@pytest.mark.parametrize("lib", CLIENT_LIBS)
def test_upstream_connection_reset_is_passed_on(tmp_path: Path, lib: str) -> None:
    sink = tmp_path / "usage.jsonl"
    body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
    cut = {"x-replay-cut-after-events": "3"}

    def read_cut(c: httpx.Client) -> bytes:
        received = b""
        path = "/v1/chat/completions"
        with pytest.raises(httpx.RemoteProtocolError):  # noqa: SIM117 - fine-grained on purpose
            with c.stream("POST", path, json=body, headers=cut) as response:
                for piece in response.iter_raw():
                    received += piece
        return received

    with ReplayServer() as upstream, http(upstream.origin) as c:  # fresh server: same ids
        direct = read_cut(c)
    upstream = ReplayServer()
    with (
        upstream,
        proxied(upstream, f"jsonl:{sink}", estimate=False, upstream_client=lib) as proxy,
        http(proxy.url) as c,
    ):
        via = read_cut(c)
        records = wait_records(proxy, sink, 1)
        samples = metric_samples(proxy)
    assert normalized(via) == normalized(direct) and via.count(b"data: ") == 3
    record = records[0]
    assert record["status"] == "truncated"
    assert record["ended_by"].startswith("upstream failed mid-body")
    assert record["bytes"]["client"] == len(via)
    assert metric_sum(samples, "ssetally_proxy_requests_total", status="truncated") == 1


def test_unreachable_upstream_gives_502_and_a_record(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    sink = tmp_path / "usage.jsonl"
    with proxied(f"http://127.0.0.1:{port}", f"jsonl:{sink}", connect_timeout=2) as proxy:
        with http(proxy.url) as c:
            response = c.post("/v1/chat/completions", json={"model": "m", "stream": True})
        records = wait_records(proxy, sink, 1)
    assert response.status_code == 502
    assert records[0]["status"] == "upstream_error" and records[0]["http_status"] == 502


# --------------------------------------------------------------------------- concurrency


def test_sqlite_records_complete_after_20_concurrent_streams(tmp_path: Path) -> None:
    path = tmp_path / "usage.db"
    errors: list[BaseException] = []
    with ReplayServer(delay=0.01) as upstream, proxied(upstream, f"sqlite:{path}") as proxy:

        def one(i: int) -> None:
            try:
                with http(proxy.url) as c:
                    body = {
                        "model": "gpt-4o",
                        "stream": True,
                        "messages": [{"role": "user", "content": f"question {i}"}],
                        "stream_options": {"include_usage": True},
                    }
                    post_stream(c, "/v1/chat/completions", body)
            except BaseException as exc:  # noqa: BLE001 - reported below
                errors.append(exc)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(20)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(TIMEOUT * 3)
        assert not errors, errors
        assert proxy.flush(TIMEOUT)
        rows = sqlite_records(path)
        truth = {s.id: s.usage for s in upstream.served}
        with sqlite3.connect(path) as db:
            assert db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
    assert len(rows) == 20
    by_id = {json.loads(r["record"])["response_id"]: r for r in rows}
    assert set(by_id) == set(truth)
    for response_id, usage in truth.items():
        assert by_id[response_id]["total_tokens"] == usage["total_tokens"]
        assert by_id[response_id]["status"] == "completed"


# --------------------------------------------------------------------------- safety and limits


def test_absolute_form_targets_are_refused(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    upstream = ReplayServer()
    with upstream, proxied(upstream, f"jsonl:{sink}", http="h11") as proxy:
        answers = [
            raw_exchange(
                proxy.port,
                b"GET http://example.com/v1/models HTTP/1.1\r\nHost: example.com\r\n"
                b"Connection: close\r\n\r\n",
            ),
            raw_exchange(
                proxy.port,
                b"CONNECT example.com:443 HTTP/1.1\r\nHost: example.com:443\r\n"
                b"Connection: close\r\n\r\n",
            ),
        ]
        # A Host header naming another host changes nothing: the upstream is fixed.
        routed = raw_exchange(
            proxy.port,
            b"GET /v1/responses/none HTTP/1.1\r\nHost: example.com\r\n"
            b"Authorization: Bearer k\r\nConnection: close\r\n\r\n",
        )
        records = wait_records(proxy, sink, 3)
        seen = upstream.requests
        upstream_port = upstream.port
    for answer in answers:
        assert answer.startswith(b"HTTP/1.1 400"), answer[:200]
    assert routed.startswith(b"HTTP/1.1 404")
    assert len(seen) == 1 and seen[0].path == "/v1/responses/none"
    assert seen[0].header("host") == f"127.0.0.1:{upstream_port}"
    assert [r["status"] for r in records] == ["rejected", "rejected", "http_error"]


def test_absolute_form_with_httptools_still_goes_to_the_fixed_upstream(tmp_path: Path) -> None:
    """httptools reduces an absolute-form target to its path: never routed elsewhere."""
    pytest.importorskip("httptools")
    sink = tmp_path / "usage.jsonl"
    upstream = ReplayServer()
    with upstream, proxied(upstream, f"jsonl:{sink}", http="httptools") as proxy:
        answer = raw_exchange(
            proxy.port,
            b"GET http://example.com/v1/responses/none HTTP/1.1\r\nHost: example.com\r\n"
            b"Authorization: Bearer k\r\nConnection: close\r\n\r\n",
        )
        wait_records(proxy, sink, 1)
        seen = upstream.requests
        upstream_port = upstream.port
    assert answer.startswith((b"HTTP/1.1 400", b"HTTP/1.1 404"))
    assert all(r.header("host") == f"127.0.0.1:{upstream_port}" for r in seen)
    assert all(r.path == "/v1/responses/none" for r in seen)


def test_body_limit_gives_413(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    big = {"model": "gpt-4o", "messages": [{"role": "user", "content": "x" * 5000}]}
    with ReplayServer() as upstream:
        with proxied(upstream, f"jsonl:{sink}", max_body_bytes=1000) as proxy, http(proxy.url) as c:
            declared = c.post("/v1/chat/completions", json=big)

            def chunks() -> Iterator[bytes]:  # no Content-Length: chunked upload
                data = json.dumps(big).encode()
                for i in range(0, len(data), 500):
                    yield data[i : i + 500]

            streamed = c.post(
                "/v1/chat/completions",
                content=chunks(),
                headers={"content-type": "application/json"},
            )
            small = c.post("/v1/chat/completions", json={"model": "gpt-4o", "messages": HELLO})
            records = wait_records(proxy, sink, 3)
        seen = upstream.requests
    assert declared.status_code == streamed.status_code == 413
    assert small.status_code == 200
    assert len(seen) == 1
    assert [r["status"] for r in records] == ["rejected", "rejected", "completed"]
    assert records[2]["usage"]["total_tokens"] == upstream.last.total_tokens


def test_header_limit_gives_431(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    with ReplayServer() as upstream:
        with (
            proxied(upstream, f"jsonl:{sink}", max_header_bytes=2048) as proxy,
            http(proxy.url) as c,
        ):
            response = c.post(
                "/v1/chat/completions",
                json={"model": "gpt-4o", "messages": HELLO},
                headers={"x-padding": "p" * 4096},
            )
            records = wait_records(proxy, sink, 1)
        assert upstream.requests == []
    assert response.status_code == 431 and records[0]["status"] == "rejected"


def test_forwarded_headers(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    with ReplayServer() as upstream, proxied(upstream, f"jsonl:{sink}") as proxy:
        with http(proxy.url) as c:
            response = c.post(
                "/v1/chat/completions?trace=1",
                json={"model": "gpt-4o", "messages": HELLO},
                headers={
                    "x-custom": "kept",
                    "connection": "keep-alive, x-hop",
                    "x-hop": "dropped",
                    "proxy-authorization": "Basic c2VjcmV0",
                    "te": "trailers",
                },
            )
        wait_records(proxy, sink, 1)
        sent = upstream.requests[-1]
    assert response.status_code == 200
    assert response.headers["x-request-id"].startswith("req_")
    assert sent.query == "trace=1" and sent.path == "/v1/chat/completions"
    assert sent.header("authorization") == f"Bearer {KEY}"
    assert sent.header("x-custom") == "kept"
    for name in ("x-hop", "proxy-authorization", "te"):
        assert sent.header(name) is None, name


def test_upstream_path_prefix(tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    with ReplayServer() as upstream, proxied(upstream.url, f"jsonl:{sink}") as proxy:
        with http(proxy.url) as c:
            response = c.post("/chat/completions", json={"model": "gpt-4o", "messages": HELLO})
        wait_records(proxy, sink, 1)
        assert upstream.requests[-1].path == "/v1/chat/completions"
    assert response.status_code == 200


def test_metering_fault_fails_open(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from ssetally._metering import StreamMeter

    def broken(self: Any) -> Any:
        raise RuntimeError("metering bug")

    monkeypatch.setattr(StreamMeter, "report", broken)
    sink = tmp_path / "usage.jsonl"
    data = rebuild(next(f for f in corpus_files() if f.family == "responses"))
    with ReplayServer(streams=[data]) as upstream, proxied(upstream, f"jsonl:{sink}") as proxy:
        with http(proxy.url) as c:
            got = post_stream(c, "/v1/responses", {"model": "m", "stream": True})
        records = wait_records(proxy, sink, 1)
        samples = metric_samples(proxy)
    assert got == data
    assert records[0]["usage"] is None and "report" in records[0]["metering_faults"]
    assert metric_sum(samples, "ssetally_proxy_metering_failures_total", stage="report") == 1


def test_sinks_open_and_flush(tmp_path: Path) -> None:
    for spec, kind in (
        (f"jsonl:{tmp_path / 'a.jsonl'}", "jsonl"),
        (f"sqlite:{tmp_path / 'a.db'}", "sqlite"),
        (str(tmp_path / "b.sqlite3"), "sqlite"),
        (str(tmp_path / "sub" / "b.log"), "jsonl"),
    ):
        sink = open_sink(spec)
        assert sink.kind == kind
        for i in range(1000):
            assert sink.write({"time": "t", "request_id": str(i), "usage": {"total_tokens": i}})
        assert sink.flush(TIMEOUT) and sink.written == 1000 and sink.pending == 0
        sink.close()
        assert not sink.write({"time": "t", "request_id": "late"})
        assert sink.dropped == 1


def test_key_fingerprint() -> None:
    assert key_fingerprint("Bearer abc") == key_fingerprint("abc") != key_fingerprint("abd")
    assert key_fingerprint("abc", "salt") != key_fingerprint("abc")
    assert len(key_fingerprint("abc") or "") == 16
    assert key_fingerprint(None) is None and key_fingerprint("Bearer ") is None
    assert key_fingerprint("bearer  abc ") == key_fingerprint("abc")


# --------------------------------------------------------------------------- the command


def test_cli_proxy_runs_and_flushes_on_sigint(tmp_path: Path) -> None:
    sink = tmp_path / "cli.jsonl"
    with ReplayServer() as upstream:
        args = ["--upstream", upstream.origin, "--sink", f"jsonl:{sink}", "--inject-usage"]
        args += ["--log-level", "warning", "--instance-id", "cli-test"]
        with proxy_process(*args) as (proc, port), http(f"http://127.0.0.1:{port}") as c:
            data = post_stream(
                c,
                "/v1/chat/completions",
                {"model": "gpt-4o", "messages": HELLO, "stream": True},
            )
        truth = upstream.last.usage
    assert b'"choices":[]' not in data
    assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    records = jsonl_records(sink)
    assert len(records) == 1 and records[0]["instance_id"] == "cli-test"
    assert records[0]["usage"]["total_tokens"] == truth["total_tokens"]


def test_cli_rejects_a_bad_upstream(capsys: pytest.CaptureFixture[str]) -> None:
    from ssetally._cli import main

    assert main(["proxy", "--upstream", "ftp://example.com"]) == 2
    assert "http(s) URL" in capsys.readouterr().err


def test_model_label_values_are_bounded() -> None:
    """Model names come from clients and upstreams: past ``MAX_MODEL_LABELS`` distinct names
    (or for absurdly long ones) tokens are counted under ``other``, so a stream of made-up
    model names cannot grow the metrics without limit. Totals are never lost."""
    from ssetally._gateway._metrics import MAX_MODEL_LABELS, ProxyMetrics

    metrics = ProxyMetrics()
    names = [f"model-{i}" for i in range(MAX_MODEL_LABELS + 50)] + ["x" * 10_000, "model-0"]
    for name in names:
        metrics.observe(
            {
                "api": "chat.completions",
                "status": "completed",
                "model": name,
                "usage": {"input_tokens": 2, "output_tokens": 1, "source": "stream"},
            }
        )
    text = metrics.render()[0].decode()
    samples = {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_parser.text_string_to_metric_families(text)
        for sample in family.samples
    }
    models = {
        dict(labels)["model"] for name, labels in samples if name == "ssetally_proxy_tokens_total"
    }
    assert len(models) == MAX_MODEL_LABELS + 1 and "other" in models
    assert metric_sum(samples, "ssetally_proxy_tokens_total", model="other", kind="input") == 102
    assert metric_sum(samples, "ssetally_proxy_tokens_total", model="model-0", kind="input") == 4
    assert metric_sum(samples, "ssetally_proxy_tokens_total", kind="output") == len(names)
