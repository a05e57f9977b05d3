"""OpenTelemetry spans and metrics of metered streams, read back through the SDK's in-memory
exporters, and once through the real OTLP/HTTP exporter to a receiver on 127.0.0.1."""

from __future__ import annotations

import sys
import time
from collections.abc import Iterator
from decimal import Decimal
from typing import Any

import pytest
from otlp_receiver import OtlpReceiver
from ssetally import StreamReport, Timings, Usage
from ssetally._report import Cost
from ssetally._telemetry import (
    DURATION_BUCKETS,
    TOKEN_BUCKETS,
    SemconvMode,
    Telemetry,
    TelemetryError,
    configure_sdk,
    operation_name,
    provider_name,
    semconv_mode,
)

pytest.importorskip("opentelemetry.sdk")

from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import (
    InMemorySpanExporter,
)
from opentelemetry.trace import SpanKind, StatusCode

LEGACY = {
    "gen_ai.client.token.usage",
    "gen_ai.client.operation.duration",
    "gen_ai.client.operation.time_to_first_chunk",
    "gen_ai.client.operation.time_per_output_chunk",
}
LATEST = {
    "gen_ai.client.inference.usage.input_tokens",
    "gen_ai.client.inference.usage.output_tokens",
    "gen_ai.client.inference.usage.cache_read.input_tokens",
    "gen_ai.client.inference.usage.cache_write.input_tokens",
    "gen_ai.client.inference.usage.reasoning.output_tokens",
    "gen_ai.client.inference.operation.input_tokens",
    "gen_ai.client.inference.operation.output_tokens",
    "gen_ai.client.operation.duration",
    "gen_ai.client.operation.time_to_first_chunk",
    "gen_ai.client.operation.time_per_output_chunk",
}


class Otel:
    def __init__(self, opt_in: str | None, **kwargs: Any) -> None:
        self.spans = InMemorySpanExporter()
        tracer_provider = TracerProvider()
        tracer_provider.add_span_processor(SimpleSpanProcessor(self.spans))
        self.reader = InMemoryMetricReader()
        meter_provider = MeterProvider(metric_readers=[self.reader])
        self.telemetry = Telemetry(
            tracer_provider=tracer_provider,
            meter_provider=meter_provider,
            opt_in=opt_in,
            **kwargs,
        )

    def metrics(self) -> dict[str, Any]:
        data = self.reader.get_metrics_data()
        assert data is not None
        return {
            m.name: m for rm in data.resource_metrics for sm in rm.scope_metrics for m in sm.metrics
        }


def _report(**changes: Any) -> StreamReport:
    t0 = time.monotonic() - 2.0
    report = StreamReport(
        usage=Usage(1200, 300, 1500, 1024, 64, 100, source="stream"),
        api="chat.completions",
        response_id="chatcmpl-123",
        model="gpt-4o-2024-08-06",
        status="completed",
        finish_reason="stop",
        events=12,
        delta_chunks=11,
        done=True,
        timings=Timings(t0, t0 + 0.25, t0 + 0.5, t0 + 1.5, t0 + 1.75, 300),
        cost=Cost(
            "USD",
            Decimal("0.0017"),
            Decimal("0.003"),
            Decimal("0.00128"),
            Decimal(0),
            Decimal("0.0047"),
            "genai-prices 0.2.3: openai/gpt-4o",
        ),
    )
    return report.replace(**changes)


def _record(otel: Otel, report: StreamReport, **kwargs: Any) -> None:
    kwargs.setdefault("request_model", "gpt-4o")
    kwargs.setdefault("server_address", "api.openai.com")
    kwargs.setdefault("server_port", 443)
    otel.telemetry.record_stream(report, **kwargs)


COMMON = {
    "gen_ai.operation.name": "chat",
    "gen_ai.provider.name": "openai",
    "gen_ai.request.model": "gpt-4o",
    "gen_ai.response.model": "gpt-4o-2024-08-06",
    "server.address": "api.openai.com",
    "server.port": 443,
}


def test_span_has_every_attribute() -> None:
    otel = Otel(None)
    start, end = 1_700_000_000_000_000_000, 1_700_000_001_750_000_000
    _record(otel, _report(), start_time_ns=start, end_time_ns=end)
    (span,) = otel.spans.get_finished_spans()
    assert span.name == "chat gpt-4o"
    assert span.kind is SpanKind.CLIENT
    assert (span.start_time, span.end_time) == (start, end)
    assert span.status.status_code is StatusCode.UNSET
    assert dict(span.attributes or {}) == {
        **COMMON,
        "gen_ai.request.stream": True,
        "gen_ai.response.id": "chatcmpl-123",
        "gen_ai.response.finish_reasons": ("stop",),
        "gen_ai.usage.input_tokens": 1200,
        "gen_ai.usage.output_tokens": 300,
        "gen_ai.usage.cache_read.input_tokens": 1024,
        "gen_ai.usage.cache_creation.input_tokens": 64,
        "gen_ai.usage.reasoning.output_tokens": 100,
        "gen_ai.response.time_to_first_chunk": pytest.approx(0.25),
        "ssetally.usage.source": "stream",
        "ssetally.stream.status": "completed",
        "ssetally.cost.total": 0.0047,
        "ssetally.cost.input": 0.0017,
        "ssetally.cost.output": 0.003,
        "ssetally.cost.currency": "USD",
        "ssetally.cost.source": "genai-prices 0.2.3: openai/gpt-4o",
        "ssetally.cost.estimated": False,
    }


def test_span_times_come_from_the_report_timings() -> None:
    otel = Otel(None)
    before = time.time_ns()
    _record(otel, _report())
    (span,) = otel.spans.get_finished_spans()
    assert span.start_time is not None and span.end_time is not None
    assert span.end_time - span.start_time == pytest.approx(1.75e9, abs=5e6)
    # The request was sent two seconds before the report was made.
    assert before - span.start_time == pytest.approx(2e9, abs=0.5e9)


def test_failed_stream_records_an_error_span_and_metrics() -> None:
    otel = Otel("gen_ai_latest_experimental/dup")
    report = _report(
        usage=None,
        status="failed",
        finish_reason=None,
        error={"type": "error", "error": {"type": "overloaded_error", "message": "busy"}},
        cost=None,
        delta_chunks=0,
        timings=None,
    )
    _record(otel, report, request_model="claude-3-5-haiku", server_address="api.anthropic.com")
    (span,) = otel.spans.get_finished_spans()
    assert span.status.status_code is StatusCode.ERROR
    attributes = dict(span.attributes or {})
    assert attributes["error.type"] == "overloaded_error"
    assert attributes["gen_ai.provider.name"] == "anthropic"
    assert attributes["ssetally.usage.source"] == "none"
    assert not any(key.startswith("gen_ai.usage.") for key in attributes)
    assert not any("busy" in str(value) for value in attributes.values())
    metrics = otel.metrics()
    # No counts: the older conventions record none, the current ones zeros.
    assert "gen_ai.client.token.usage" not in metrics
    for name in LATEST - LEGACY:
        (point,) = metrics[name].data.data_points
        value = point.value if hasattr(point, "value") else point.sum
        assert value == 0
    (point,) = metrics["gen_ai.client.inference.usage.input_tokens"].data.data_points
    assert point.attributes["gen_ai.token.modality"] == "unknown"
    (point,) = metrics["gen_ai.client.inference.operation.input_tokens"].data.data_points
    assert point.attributes["error.type"] == "overloaded_error"


def test_caller_error_type_and_truncated_streams() -> None:
    otel = Otel(None)
    _record(otel, _report(status="truncated"))
    _record(otel, _report(), error_type="429")
    first, second = otel.spans.get_finished_spans()
    assert first.attributes is not None and first.attributes["error.type"] == "truncated"
    assert second.attributes is not None and second.attributes["error.type"] == "429"
    assert second.status.status_code is StatusCode.ERROR
    points = otel.metrics()["gen_ai.client.operation.duration"].data.data_points
    assert {p.attributes["error.type"] for p in points} == {"truncated", "429"}


@pytest.mark.parametrize(
    ("opt_in", "expected"),
    [
        (None, LEGACY),
        ("", LEGACY),
        ("http", LEGACY),
        ("gen_ai_latest_experimental", LATEST),
        ("database, GEN_AI_LATEST_EXPERIMENTAL", LATEST),
        ("gen_ai_latest_experimental/dup", LEGACY | LATEST),
        ("http/dup,gen_ai_latest_experimental/dup", LEGACY | LATEST),
    ],
)
def test_metric_names_follow_the_opt_in(opt_in: str | None, expected: set[str]) -> None:
    otel = Otel(opt_in)
    _record(otel, _report())
    metrics = otel.metrics()
    assert set(metrics) == expected
    for name, metric in metrics.items():
        assert metric.unit == ("s" if "operation." in name and "tokens" not in name else "{token}")
        for point in metric.data.data_points:
            attributes = dict(point.attributes)
            extra = {
                k: v for k, v in attributes.items() if k not in COMMON
            }  # what each metric adds to the common attributes
            assert {k: attributes[k] for k in COMMON} == COMMON
            if name == "gen_ai.client.token.usage":
                assert set(extra) == {"gen_ai.token.type"}
            elif name.startswith("gen_ai.client.inference.usage."):
                assert extra == {"gen_ai.token.modality": "unknown"}
            else:
                assert extra == {}
            if hasattr(point, "explicit_bounds"):
                bounds = TOKEN_BUCKETS if metric.unit == "{token}" else DURATION_BUCKETS
                assert tuple(point.explicit_bounds) == tuple(float(b) for b in bounds)


def test_metric_values() -> None:
    otel = Otel("gen_ai_latest_experimental/dup")
    _record(otel, _report())
    metrics = otel.metrics()
    by_type = {
        p.attributes["gen_ai.token.type"]: p.sum
        for p in metrics["gen_ai.client.token.usage"].data.data_points
    }
    assert by_type == {"input": 1200, "output": 300}
    counters = {
        name.removeprefix("gen_ai.client.inference.usage."): m.data.data_points[0].value
        for name, m in metrics.items()
        if name.startswith("gen_ai.client.inference.usage.")
    }
    assert counters == {
        "input_tokens": 1200,
        "output_tokens": 300,
        "cache_read.input_tokens": 1024,
        "cache_write.input_tokens": 64,
        "reasoning.output_tokens": 100,
    }
    assert metrics["gen_ai.client.inference.usage.input_tokens"].data.is_monotonic
    (op_in,) = metrics["gen_ai.client.inference.operation.input_tokens"].data.data_points
    assert (op_in.count, op_in.sum) == (1, 1200)
    (duration,) = metrics["gen_ai.client.operation.duration"].data.data_points
    assert duration.sum == pytest.approx(1.75)
    (ttfc,) = metrics["gen_ai.client.operation.time_to_first_chunk"].data.data_points
    assert ttfc.sum == pytest.approx(0.25)
    (tpoc,) = metrics["gen_ai.client.operation.time_per_output_chunk"].data.data_points
    assert (tpoc.count, tpoc.sum) == (1, pytest.approx(1.0 / 10))


def test_given_chunk_intervals_are_recorded_each() -> None:
    otel = Otel(None)
    _record(otel, _report(), chunk_intervals=[0.1, 0.2, 0.3, -1.0])
    (tpoc,) = otel.metrics()["gen_ai.client.operation.time_per_output_chunk"].data.data_points
    assert (tpoc.count, tpoc.sum) == (3, pytest.approx(0.6))


def test_env_var_picks_the_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SEMCONV_STABILITY_OPT_IN", "gen_ai_latest_experimental")
    assert semconv_mode() == SemconvMode(legacy=False, latest=True)
    assert Otel(None).telemetry.mode == SemconvMode(legacy=False, latest=True)
    monkeypatch.delenv("OTEL_SEMCONV_STABILITY_OPT_IN")
    assert semconv_mode() == SemconvMode(legacy=True, latest=False)


def test_untrusted_values_are_capped_and_credentials_dropped() -> None:
    otel = Otel("gen_ai_latest_experimental", max_model_values=2)
    long_model = "m" * 10_000
    _record(
        otel,
        _report(model=long_model, response_id="r" * 5000),
        request_model="gpt-4o",
        server_address="https://user:s3cret@API.OpenAI.com:8443/v1/chat/completions",
        server_port=8443,
    )
    _record(otel, _report(model="model-b"), request_model="model-c")
    _record(otel, _report(model="model-d"), request_model="model-e")
    first, _, third = otel.spans.get_finished_spans()
    attributes = dict(first.attributes or {})
    assert attributes["server.address"] == "api.openai.com"
    assert attributes["gen_ai.provider.name"] == "openai"
    assert all(len(v) <= 256 for v in attributes.values() if isinstance(v, str))
    assert not any("s3cret" in str(v) for span in (first, third) for v in span.attributes.values())  # type: ignore[union-attr]
    assert third.attributes is not None and third.attributes["gen_ai.response.model"] == "model-d"
    points = otel.metrics()["gen_ai.client.operation.duration"].data.data_points
    seen = {
        (p.attributes["gen_ai.request.model"], p.attributes["gen_ai.response.model"])
        for p in points
    }
    # A too-long name and names past the limit are counted as "other".
    assert seen == {("gpt-4o", "other"), ("model-c", "other"), ("other", "other")}


def test_recording_never_raises() -> None:
    otel = Otel(None)
    otel.telemetry.record_stream(_report(timings="not timings"))  # type: ignore[arg-type]
    otel.telemetry.record_stream(_report(usage=Usage("many", None)))  # type: ignore[arg-type]


def test_without_opentelemetry(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setitem(sys.modules, "opentelemetry", None)
    telemetry = Telemetry()
    assert not telemetry.enabled
    telemetry.record_stream(_report())
    with pytest.raises(TelemetryError, match="ssetally\\[otel\\]"):
        configure_sdk()


def test_operation_and_provider_names() -> None:
    assert operation_name("chat.completions") == "chat"
    assert operation_name("completions") == "text_completion"
    assert operation_name("gemini") == "generate_content"
    assert operation_name("assistants") == "invoke_agent"
    assert operation_name(None) == "chat"
    assert provider_name("anthropic.messages") == "anthropic"
    assert provider_name("gemini") == "gcp.gen_ai"
    assert provider_name("gemini", "generativelanguage.googleapis.com") == "gcp.gemini"
    assert provider_name("gemini", "us-central1-aiplatform.googleapis.com") == "gcp.vertex_ai"
    assert provider_name("chat.completions", "myres.openai.azure.com") == "azure.ai.openai"
    assert provider_name("chat.completions", "api.groq.com") == "groq"
    assert provider_name("anthropic.messages", "bedrock-runtime.us-east-1.amazonaws.com") == (
        "aws.bedrock"
    )
    assert provider_name("chat.completions", "localhost:8080") == "openai"


def test_configure_sdk_signals_off(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_TRACES_EXPORTER", "none")
    handle = configure_sdk(set_global=False)
    assert handle.tracer_provider is None and handle.meter_provider is not None
    handle.shutdown()
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    assert configure_sdk(set_global=False) == (None, None)


# -- through the real OTLP/HTTP exporter ---------------------------------------------------


@pytest.fixture
def receiver() -> Iterator[tuple[str, dict[str, list[bytes]]]]:
    with OtlpReceiver() as server:
        yield server.origin, server.bodies


def _attributes(pairs: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for kv in pairs:
        value = kv.value
        kind = value.WhichOneof("value")
        if kind == "array_value":
            out[kv.key] = [v.string_value for v in value.array_value.values]
        else:
            out[kv.key] = getattr(value, kind)
    return out


def test_otlp_http_export(
    receiver: tuple[str, dict[str, list[bytes]]], monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("opentelemetry.exporter.otlp.proto.http")
    from opentelemetry.proto.collector.metrics.v1.metrics_service_pb2 import (
        ExportMetricsServiceRequest,
    )
    from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import (
        ExportTraceServiceRequest,
    )

    endpoint, bodies = receiver
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint)
    monkeypatch.setenv("OTEL_METRIC_EXPORT_INTERVAL", "600000")
    monkeypatch.delenv("OTEL_SERVICE_NAME", raising=False)
    monkeypatch.delenv("OTEL_RESOURCE_ATTRIBUTES", raising=False)
    handle = configure_sdk(service_name="ssetally-test", set_global=False)
    telemetry = Telemetry(
        tracer_provider=handle.tracer_provider,
        meter_provider=handle.meter_provider,
        opt_in="gen_ai_latest_experimental",
    )
    telemetry.record_stream(
        _report(), request_model="gpt-4o", server_address="api.openai.com", server_port=443
    )
    handle.shutdown()  # flushes the span batch and the last metric collection

    traces = ExportTraceServiceRequest.FromString(b"".join(bodies["/v1/traces"]))
    (resource_spans,) = traces.resource_spans
    resource = _attributes(resource_spans.resource.attributes)
    assert resource["service.name"] == "ssetally-test"
    (span,) = resource_spans.scope_spans[0].spans
    assert span.name == "chat gpt-4o"
    assert span.kind == span.SPAN_KIND_CLIENT
    attributes = _attributes(span.attributes)
    assert attributes["gen_ai.usage.input_tokens"] == 1200
    assert attributes["gen_ai.usage.cache_read.input_tokens"] == 1024
    assert attributes["gen_ai.response.finish_reasons"] == ["stop"]
    assert attributes["ssetally.cost.total"] == pytest.approx(0.0047)
    assert resource_spans.scope_spans[0].scope.name == "ssetally"

    exported = [ExportMetricsServiceRequest.FromString(b) for b in bodies["/v1/metrics"]]
    metrics = {
        m.name: m
        for request in exported
        for rm in request.resource_metrics
        for sm in rm.scope_metrics
        for m in sm.metrics
    }
    assert set(metrics) == LATEST
    usage = metrics["gen_ai.client.inference.usage.output_tokens"]
    (point,) = usage.sum.data_points
    assert point.as_int == 300
    assert _attributes(point.attributes)["gen_ai.token.modality"] == "unknown"
    (duration,) = metrics["gen_ai.client.operation.duration"].histogram.data_points
    assert list(duration.explicit_bounds) == list(DURATION_BUCKETS)
