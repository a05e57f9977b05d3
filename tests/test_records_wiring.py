"""Cost and OpenTelemetry wired into the one metering pipeline, seen through every front-end.

``connect_usage``, ``MeteringTransport`` and the proxy run against ``ReplayServer`` (and small
local upstreams speaking real HTTP) on 127.0.0.1; spans and metrics are read back through the
OpenTelemetry SDK's in-memory exporters, prices are checked against genai-prices' own lookup
(``price_report`` on the same usage), never against written-down dollars.
"""

from __future__ import annotations

import gzip
import json
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from decimal import Decimal
from http.server import BaseHTTPRequestHandler, HTTPServer, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from otlp_receiver import OtlpReceiver
from proxy_process import proxy_process
from ssetally import MeteringTransport, StreamReport, connect_usage
from ssetally import _telemetry as telemetry_module
from ssetally._cost import price_report
from ssetally._gateway import ProxyConfig, ProxyServer
from ssetally._gateway._record import MAX_SUBJECT_LENGTH, subject_of
from ssetally._replay import ReplayServer
from ssetally._telemetry import Telemetry
from ssetally.sinks import CloudEventsSink, JsonlSink
from uvicorn_thread import UvicornThread

pytest.importorskip("genai_prices")
pytest.importorskip("opentelemetry.sdk")
pytest.importorskip("uvicorn")
prometheus_parser = pytest.importorskip("prometheus_client.parser")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import StatusCode

TIMEOUT = 10.0
KEY = "sk-test-secret-key-0123456789"
AUTH = {"Authorization": f"Bearer {KEY}"}
MODEL = "gpt-4o-mini"
CHAT = {
    "model": MODEL,
    "messages": [{"role": "user", "content": "Tell me about usage"}],
    "stream": True,
}


class Otel:
    """In-memory span and metric exporters behind the process's shared ``Telemetry``."""

    def __init__(self) -> None:
        self.exporter = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.exporter))
        self.reader = InMemoryMetricReader()
        self.telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=MeterProvider(metric_readers=[self.reader]),
        )

    def spans(self, n: int) -> list[ReadableSpan]:
        """The finished spans once there are ``n`` (bounded wait: some end on a worker)."""
        deadline = time.monotonic() + TIMEOUT
        while len(self.exporter.get_finished_spans()) < n and time.monotonic() < deadline:
            time.sleep(0.01)
        spans = list(self.exporter.get_finished_spans())
        assert len(spans) == n, [s.name for s in spans]
        return spans

    def metric_names(self) -> set[str]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            m.name for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }


@pytest.fixture
def otel(monkeypatch: pytest.MonkeyPatch) -> Otel:
    """Every stream's span goes to fresh in-memory exporters (no global provider is set)."""
    o = Otel()
    monkeypatch.setattr(telemetry_module, "_default", o.telemetry)
    return o


def http_client(**kwargs: Any) -> httpx.Client:
    return httpx.Client(timeout=TIMEOUT, trust_env=False, headers=AUTH, **kwargs)


def repriced(report: StreamReport) -> StreamReport:
    """The same report priced again by ``price_report`` itself (the expected amounts)."""
    again, reason = price_report(report.replace(cost=None, choices=()), requested_model=MODEL)
    assert reason is None, reason
    return again


def assert_span_matches(span: ReadableSpan, report: StreamReport, port: int) -> None:
    attributes = dict(span.attributes or {})
    usage = report.usage
    assert usage is not None and report.cost is not None
    assert span.name == f"chat {MODEL}"
    assert attributes["gen_ai.request.model"] == MODEL
    assert attributes["gen_ai.response.model"] == report.model
    assert attributes["gen_ai.usage.input_tokens"] == usage.input_tokens
    assert attributes["gen_ai.usage.output_tokens"] == usage.output_tokens
    assert attributes["ssetally.usage.source"] == usage.source
    assert attributes["ssetally.cost.total"] == pytest.approx(float(report.cost.total))
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["server.port"] == port


# -- connect_usage ---------------------------------------------------------------------------


def test_connect_usage_prices_each_choice_and_records_one_span(otel: Otel) -> None:
    with ReplayServer() as server, http_client() as client:
        body = {**CHAT, "n": 2}
        with connect_usage(client, "POST", server.url + "/chat/completions", json=body) as s:
            for _ in s:
                pass
        port = int(server.origin.rsplit(":", 1)[1])
    report = s.report
    assert report is not None and report.usage is not None and report.cost is not None
    assert report.cost_reason is None
    expected = repriced(report)
    assert report.cost == expected.cost and report.cost.total > 0
    assert report.choices == expected.choices and len(report.choices) == 2
    assert sum(c.output_tokens for c in report.choices) == report.usage.output_tokens
    assert sum(c.cost or Decimal(0) for c in report.choices) == report.cost.output
    (span,) = otel.spans(1)
    assert_span_matches(span, report, port)
    assert span.status.status_code != StatusCode.ERROR
    assert "gen_ai.client.token.usage" in otel.metric_names()
    assert report.to_dict()["cost"]["total"] == str(report.cost.total)


def test_unpriced_model_and_missing_package_give_a_reason(
    otel: Otel, monkeypatch: pytest.MonkeyPatch
) -> None:
    with ReplayServer() as server, http_client() as client:
        url = server.url + "/chat/completions"
        with connect_usage(client, "POST", url, json={**CHAT, "model": "nope-model-1"}) as s:
            for _ in s:
                pass
        assert s.report is not None and s.report.usage is not None
        assert s.report.cost is None and "no price" in (s.report.cost_reason or "")
        monkeypatch.setitem(sys.modules, "genai_prices", None)
        with connect_usage(client, "POST", url, json=CHAT) as s:
            for _ in s:
                pass
    assert s.report is not None and s.report.usage is not None
    assert s.report.cost is None and "ssetally[cost]" in (s.report.cost_reason or "")
    otel.spans(2)  # both streams recorded, priced or not


# -- MeteringTransport -----------------------------------------------------------------------


def test_transport_prices_and_records_completed_and_cut_streams(otel: Otel) -> None:
    reports: list[StreamReport] = []
    with ReplayServer() as server:
        port = int(server.origin.rsplit(":", 1)[1])
        transport = MeteringTransport(on_report=lambda report, request: reports.append(report))
        with http_client(transport=transport) as client:
            url = server.url + "/chat/completions"
            body = {**CHAT, "stream_options": {"include_usage": True}}
            with client.stream("POST", url, json=body) as response:
                response.read()
            with (
                client.stream(
                    "POST", url, json=body, headers={"x-replay-cut-after-events": "3"}
                ) as response,
                pytest.raises(httpx.HTTPError),
            ):
                response.read()
    ok, cut = otel.spans(2)
    assert len(reports) == 2
    assert reports[0].cost == repriced(reports[0]).cost
    assert_span_matches(ok, reports[0], port)
    # The cut stream has no usage (no estimate asked for): a span with its error, no cost.
    assert reports[1].usage is None and reports[1].cost is None
    assert reports[1].cost_reason == "no usage to price"
    assert dict(cut.attributes or {})["error.type"] == "truncated"
    assert cut.status.status_code == StatusCode.ERROR


# -- the proxy -------------------------------------------------------------------------------


def metric_samples(proxy: ProxyServer) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    text = httpx.get(proxy.url + "/metrics", timeout=TIMEOUT, trust_env=False).text
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in prometheus_parser.text_string_to_metric_families(text)
        for sample in family.samples
    }


def records_of(path: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in path.read_text("utf-8").splitlines()]


def post(proxy: ProxyServer, body: dict[str, Any], **headers: str) -> bytes:
    with (
        http_client() as client,
        client.stream(
            "POST", proxy.url + "/v1/chat/completions", json=body, headers=headers
        ) as response,
    ):
        assert response.status_code == 200
        try:
            return b"".join(response.iter_raw())
        except httpx.HTTPError:
            return b""  # a cut stream


def test_proxy_records_cost_metrics_and_spans(otel: Otel, tmp_path: Path) -> None:
    sink = tmp_path / "usage.jsonl"
    with ReplayServer() as upstream:
        port = int(upstream.origin.rsplit(":", 1)[1])
        config = ProxyConfig(upstream=upstream.origin, estimate=False)
        with ProxyServer(config, f"jsonl:{sink}") as proxy:
            body = {**CHAT, "n": 2, "stream_options": {"include_usage": True}}
            post(proxy, body)
            post(proxy, body, **{"x-replay-cut-after-events": "2"})
            assert proxy.flush(TIMEOUT)
            samples = metric_samples(proxy)
    ok, cut = records_of(sink)
    assert ok["status"] == "completed" and ok["cost"] is not None and ok["cost_reason"] is None
    usage = ok["usage"]
    from ssetally import Usage

    expected = repriced(
        StreamReport(
            usage=Usage(usage["input_tokens"], usage["output_tokens"], source="stream"),
            api="chat.completions",
            model=ok["model"],
        )
    )
    assert expected.cost is not None
    assert Decimal(ok["cost"]["total"]) == expected.cost.total
    assert [c["index"] for c in ok["choices"]] == [0, 1]
    assert sum(Decimal(c["cost"]) for c in ok["choices"]) == Decimal(ok["cost"]["output"])
    assert cut["cost"] is None and cut["cost_reason"] == "no usage to price"
    cost = samples[("ssetally_proxy_cost_total", (("currency", "USD"), ("model", ok["model"])))]
    assert cost == pytest.approx(float(expected.cost.total))
    span_ok, span_cut = otel.spans(2)
    assert dict(span_ok.attributes or {})["server.address"] == "127.0.0.1"
    assert dict(span_ok.attributes or {})["server.port"] == port
    assert dict(span_ok.attributes or {})["gen_ai.usage.output_tokens"] == usage["output_tokens"]
    assert span_cut.status.status_code == StatusCode.ERROR


def test_proxy_without_otel_or_cost_records_neither(otel: Otel, tmp_path: Path) -> None:
    sink = tmp_path / "u.jsonl"
    with ReplayServer() as upstream:
        config = ProxyConfig(upstream=upstream.origin, otel=False, cost=False)
        with ProxyServer(config, f"jsonl:{sink}") as proxy:
            post(proxy, {**CHAT, "stream_options": {"include_usage": True}})
            assert proxy.flush(TIMEOUT)
            samples = metric_samples(proxy)
    assert otel.exporter.get_finished_spans() == ()
    (record,) = records_of(sink)
    assert record["usage"] is not None
    assert record["cost"] is None and record["cost_reason"] == "pricing is off"
    assert not [k for k in samples if k[0] == "ssetally_proxy_cost_total"]


# -- subject ---------------------------------------------------------------------------------


def test_subject_is_sanitised_and_capped() -> None:
    def headers(value: bytes) -> list[tuple[bytes, bytes]]:
        return [(b"x-customer", value)]

    assert subject_of(headers(b"acme"), "X-Customer") == "acme"
    assert subject_of(headers(b"  acme\x00\x1b[31m  corp\t\tEU  "), "x-customer") == (
        "acme[31m corp EU"
    )
    assert subject_of(headers("Zoë".encode()), "x-customer") == "Zoë"
    assert subject_of(headers(b"\xff\xfeok"), "x-customer") == "\ufffd\ufffdok"
    assert subject_of(headers(b"a" * 100_000), "x-customer") == "a" * MAX_SUBJECT_LENGTH
    assert subject_of(headers(b"\x00\x01 "), "x-customer") is None
    assert subject_of(headers(b"acme"), "x-other") is None
    assert subject_of(headers(b"acme"), None) is None
    assert subject_of(headers(f"team {KEY}".encode()), "x-customer", (KEY,)) == "team [REDACTED]"


@pytest.mark.parametrize("name", ["Authorization", "x-api-key", "Cookie", "bad header", ""])
def test_subject_header_refuses_credentials_and_non_names(name: str) -> None:
    with pytest.raises(ValueError):
        ProxyConfig(upstream="http://127.0.0.1:1", subject_header=name)


class _Collector(BaseHTTPRequestHandler):
    events: list[dict[str, Any]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.events.extend(json.loads(body))
        self.send_response(202)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def collector() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    events: list[dict[str, Any]] = []
    server = HTTPServer(("127.0.0.1", 0), type("C", (_Collector,), {"events": events}))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"cloudevents+http://127.0.0.1:{server.server_address[1]}/events", events
    finally:
        server.shutdown()
        server.server_close()


def test_cloudevents_subject_from_the_subject_header(
    collector: tuple[str, list[dict[str, Any]]], tmp_path: Path
) -> None:
    url, events = collector
    sink = CloudEventsSink(url, spool_dir=str(tmp_path / "spool"))
    with ReplayServer() as upstream:
        config = ProxyConfig(upstream=upstream.origin, otel=False, subject_header="X-Customer")
        with ProxyServer(config, sink) as proxy:
            post(proxy, CHAT, **{"X-Customer": "acme \t corp " + "z" * 400})
            post(proxy, CHAT)
            assert proxy.flush(TIMEOUT)
    by_subject = sorted(events, key=lambda e: len(e.get("subject", "")))
    assert len(events) == 2
    fingerprint, named = by_subject
    assert named["subject"] == ("acme corp " + "z" * 400)[:MAX_SUBJECT_LENGTH]
    assert fingerprint["subject"] == fingerprint["data"]["key_fingerprint"] != named["subject"]
    assert named["data"]["cost"]["currency"] == "USD"


# -- failures counted on /metrics (decode mid-stream, a sink that cannot write) -------------


def _gzip_upstream(truncate: bool) -> ThreadingHTTPServer:
    """An upstream whose gzip event stream is corrupt mid-body (or ends mid-member)."""
    good = gzip.compress(b'data: {"id":"c","choices":[{"index":0,"delta":{"content":"hi"}}]}\n\n')

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            body = good[: len(good) // 2] if truncate else good[:20] + b"\x00garbage!" * 8
            self.send_response(200)
            self.send_header("content-type", "text/event-stream")
            self.send_header("content-encoding", "gzip")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


@pytest.mark.parametrize("truncate", [False, True], ids=["corrupt", "ends-early"])
def test_decompression_failure_counts_as_a_metering_failure(truncate: bool, tmp_path: Path) -> None:
    upstream = _gzip_upstream(truncate)
    sink = tmp_path / "u.jsonl"
    try:
        origin = f"http://127.0.0.1:{upstream.server_address[1]}"
        config = ProxyConfig(upstream=origin, otel=False, estimate=False, retrieve=False)
        with ProxyServer(config, f"jsonl:{sink}") as proxy:
            for _ in range(3):
                with http_client() as client:
                    url = proxy.url + "/v1/chat/completions"
                    with client.stream("POST", url, json=CHAT) as answer:
                        assert answer.status_code == 200
                        b"".join(answer.iter_raw())  # as sent: the client decodes nothing
            assert proxy.flush(TIMEOUT)
            samples = metric_samples(proxy)
    finally:
        upstream.shutdown()
        upstream.server_close()
    assert samples[("ssetally_proxy_metering_failures_total", (("stage", "decode"),))] == 3
    for record in records_of(sink):
        assert "decode" in record["metering_faults"]


@pytest.mark.skipif(not os.path.exists("/dev/full"), reason="needs /dev/full")
def test_a_sink_that_cannot_write_counts_failures_and_logs_once(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.WARNING)
    with ReplayServer() as upstream:
        config = ProxyConfig(upstream=upstream.origin, otel=False)
        with ProxyServer(config, JsonlSink("/dev/full", batch_size=1)) as proxy:
            for _ in range(5):
                post(proxy, CHAT)
            assert proxy.flush(TIMEOUT)
            samples = metric_samples(proxy)
            again = metric_samples(proxy)  # a second scrape counts nothing twice
    sink_failures = ("ssetally_proxy_metering_failures_total", (("stage", "sink"),))
    assert samples[sink_failures] == 5 and again[sink_failures] == 5
    assert samples[("ssetally_proxy_records_total", (("result", "queued"),))] == 5
    refused = [r for r in caplog.records if "refused" in r.getMessage()]
    faults = [r for r in caplog.records if "stage sink" in r.getMessage()]
    assert len(refused) == 1 and len(faults) == 1, [r.getMessage() for r in caplog.records]


# -- the command -----------------------------------------------------------------------------


def test_proxy_help_lists_the_sinks_and_every_default(capsys: pytest.CaptureFixture[str]) -> None:
    from ssetally._cli import build_parser, main

    with pytest.raises(SystemExit):
        main(["proxy", "--help"])
    text = capsys.readouterr().out
    for needle in (
        "jsonl:PATH",
        "sqlite:PATH",
        "postgresql://USER@HOST:PORT/DB",
        "PGPASSWORD",
        "cloudevents+https://HOST/PATH",
        "--subject-header",
        "--spool-max-bytes",
        "--cloudevents-token-env",
        "--otel",
        "OTEL_SEMCONV_STABILITY_OPT_IN",
        "pip install 'ssetally[proxy]'",
        "(default: 8080)",
        "(default: jsonl:ssetally-usage.jsonl)",
        "(default: SSETALLY_CLOUDEVENTS_TOKEN)",
    ):
        assert needle in text, needle
    parser = build_parser()
    proxy = next(
        p for a in parser._actions if a.choices for n, p in a.choices.items() if n == "proxy"
    )
    for action in proxy._actions:
        assert action.help, action.option_strings


def test_proxy_without_its_extra_says_what_to_install(tmp_path: Path) -> None:
    code = (
        "import sys; sys.modules['uvicorn'] = None\n"
        "from ssetally._cli import main\n"
        "sys.exit(main(['proxy', '--upstream', 'http://127.0.0.1:9']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=tmp_path,
        check=False,
    )
    assert result.returncode == 2
    assert "pip install 'ssetally[proxy]'" in result.stderr
    assert "pip install '.[proxy]'" in result.stderr
    assert "Traceback" not in result.stderr
    assert not list(tmp_path.iterdir())  # nothing opened before the check


def test_cli_proxy_otel_exports_spans_over_otlp_http(tmp_path: Path) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    with OtlpReceiver() as receiver:
        env = {
            **os.environ,
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.origin,
            "OTEL_SERVICE_NAME": "proxy-under-test",
            "OTEL_METRIC_EXPORT_INTERVAL": "600000",
        }
        with (
            ReplayServer() as upstream,
            proxy_process(
                "--upstream",
                upstream.origin,
                "--sink",
                f"jsonl:{tmp_path / 'u.jsonl'}",
                "--otel",
                "--workers",
                "1",
                "--log-level",
                "warning",
                env=env,
                timeout=30,
            ) as (proc, port),
            http_client() as client,
        ):
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            body = {**CHAT, "stream_options": {"include_usage": True}}
            with client.stream("POST", url, json=body) as response:
                response.read()
        assert proc.returncode == 0, proc.stderr.read() if proc.stderr else ""
    bodies = receiver.bodies
    traces = [ExportTraceServiceRequest.FromString(b) for b in bodies.get("/v1/traces", [])]
    spans = [
        (rs, span)
        for request in traces
        for rs in request.resource_spans
        for ss in rs.scope_spans
        for span in ss.spans
    ]
    assert len(spans) == 1, spans
    resource, span = spans[0]
    assert span.name == f"chat {MODEL}"
    names = {kv.key: kv.value for kv in resource.resource.attributes}
    assert names["service.name"].string_value == "proxy-under-test"
    attributes = {kv.key: kv.value for kv in span.attributes}
    assert attributes["gen_ai.usage.output_tokens"].int_value > 0
    assert attributes["ssetally.cost.total"].double_value > 0
    assert "/v1/metrics" in bodies  # flushed at shutdown


def test_report_command_shows_cost(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from ssetally._cli import main

    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": MODEL}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": "Hello"}, "finish_reason": None}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": {"prompt_tokens": 9, "completion_tokens": 1}},
    ]
    capture = tmp_path / "s.sse"
    capture.write_bytes(
        b"".join(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events) + b"data: [DONE]\n\n"
    )
    assert main(["report", str(capture)]) == 0
    out = capsys.readouterr().out
    from ssetally import Usage

    expected = repriced(StreamReport(usage=Usage(9, 1), api="chat.completions", model=MODEL))
    assert expected.cost is not None
    assert f"cost: {expected.cost.total} USD" in out


# -- failures before any stream, the ASGI middleware, meter() --------------------------------


def test_proxy_records_a_span_for_requests_that_failed_upstream(otel: Otel, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed = s.getsockname()[1]  # nothing listens here once the socket is closed
    config = ProxyConfig(upstream=f"http://127.0.0.1:{closed}", connect_timeout=2.0)
    with ProxyServer(config, f"jsonl:{tmp_path / 'a.jsonl'}") as proxy, http_client() as client:
        answer = client.post(proxy.url + "/v1/chat/completions", json=CHAT)
        assert answer.status_code == 502
        assert proxy.flush(TIMEOUT)
    with ReplayServer(statuses=[429]) as upstream:
        config = ProxyConfig(upstream=upstream.origin)
        with ProxyServer(config, f"jsonl:{tmp_path / 'b.jsonl'}") as proxy:
            with http_client() as client:
                answer = client.post(proxy.url + "/v1/chat/completions", json=CHAT)
                assert answer.status_code == 429
            assert proxy.flush(TIMEOUT)
    unreachable, refused = otel.spans(2)
    for span in (unreachable, refused):
        assert span.status.status_code == StatusCode.ERROR
        assert dict(span.attributes or {})["gen_ai.request.model"] == MODEL
    assert dict(unreachable.attributes or {})["error.type"] == "ConnectError"
    assert dict(refused.attributes or {})["error.type"] == "429"


def _canned_chat_app() -> Any:
    """A hand-written ASGI app streaming one Chat answer with usage."""
    chunk = {"id": "c9", "object": "chat.completion.chunk", "model": MODEL}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": "Hi there"}}]},
        {**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": {"prompt_tokens": 12, "completion_tokens": 3}},
    ]
    body = [b"data: " + json.dumps(e).encode() + b"\n\n" for e in events] + [b"data: [DONE]\n\n"]

    async def app(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        while (await receive()).get("more_body"):
            pass
        headers = [(b"content-type", b"text/event-stream")]
        await send({"type": "http.response.start", "status": 200, "headers": headers})
        for part in body:
            await send({"type": "http.response.body", "body": part, "more_body": True})
        await send({"type": "http.response.body", "body": b""})

    return app


def test_asgi_middleware_records_cost_and_a_span(otel: Otel) -> None:
    from ssetally.asgi import UsageMiddleware

    records: list[dict[str, Any]] = []
    reports: list[StreamReport] = []

    class Sink:
        def write(self, record: Any) -> bool:
            records.append(dict(record))
            return True

    app = UsageMiddleware(
        _canned_chat_app(), sink=Sink(), on_report=lambda report, scope: reports.append(report)
    )
    with UvicornThread(app, lifespan="off", timeout=TIMEOUT) as server:
        with http_client() as client:
            assert client.post(server.url + "/v1/chat/completions", json=CHAT).status_code == 200
        deadline = time.monotonic() + TIMEOUT
        while not records and time.monotonic() < deadline:
            time.sleep(0.01)
    (report,) = reports
    assert report.cost is not None and report.cost == repriced(report).cost
    (record,) = records
    assert Decimal(record["cost"]["total"]) == report.cost.total
    (span,) = otel.spans(1)
    assert dict(span.attributes or {})["gen_ai.usage.input_tokens"] == 12


def test_meter_reports_carry_cost_and_record_a_span(otel: Otel) -> None:
    from ssetally import meter

    chunk = {"id": "c1", "object": "chat.completion.chunk", "model": MODEL}
    events = [
        {**chunk, "choices": [{"index": 0, "delta": {"content": "Hi"}, "finish_reason": "stop"}]},
        {**chunk, "choices": [], "usage": {"prompt_tokens": 5, "completion_tokens": 1}},
    ]
    metered = meter(b"data: " + json.dumps(e).encode() + b"\n\n" for e in events)
    for _ in metered:
        pass
    report = metered.report
    assert report is not None and report.cost is not None
    assert report.cost == repriced(report).cost
    otel.spans(1)
