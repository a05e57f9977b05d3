"""OpenTelemetry for metered streams: one GenAI client span and the GenAI client metrics per
stream, by the OpenTelemetry GenAI semantic conventions, plus ``configure_sdk`` for OTLP/HTTP.

OpenTelemetry is imported lazily and is no dependency: without ``opentelemetry-api`` every
call here does nothing. ``Telemetry`` creates its tracer, meter and instruments once, so
recording a stream is cheap. Which metric names are emitted follows
``OTEL_SEMCONV_STABILITY_OPT_IN``, as OpenTelemetry's own instrumentations read it:

* unset (default): the names of the v1.41-era conventions, ``gen_ai.client.token.usage``
  (histogram keyed by ``gen_ai.token.type``);
* ``gen_ai_latest_experimental``: the current development names only, the
  ``gen_ai.client.inference.usage.*`` counters (input, output, cache read, cache write,
  reasoning; keyed by ``gen_ai.token.modality``) and the
  ``gen_ai.client.inference.operation.{input,output}_tokens`` histograms;
* ``gen_ai_latest_experimental/dup``: both.

``gen_ai.client.operation.duration``, ``...time_to_first_chunk`` and
``...time_per_output_chunk`` have the same names in both and are recorded once.

Values come from the network (model names, ids, error types): strings are capped, metric
attributes take a bounded number of distinct model names, and no header or credential is
ever read, so none can reach a span.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any, NamedTuple

from ._report import StreamReport
from ._telemetry_sdk import SdkHandle, TelemetryError, configure_sdk, sdk_configured

__all__ = [
    "DURATION_BUCKETS",
    "ENV_OPT_IN",
    "TOKEN_BUCKETS",
    "SdkHandle",
    "SemconvMode",
    "Telemetry",
    "TelemetryError",
    "configure_sdk",
    "operation_name",
    "provider_name",
    "record_stream",
    "semconv_mode",
    "shared_telemetry",
]

logger = logging.getLogger("ssetally.telemetry")

ENV_OPT_IN = "OTEL_SEMCONV_STABILITY_OPT_IN"
_LATEST = "gen_ai_latest_experimental"

#: The explicit bucket boundaries the conventions recommend for seconds...
DURATION_BUCKETS = (
    0.01, 0.02, 0.04, 0.08, 0.16, 0.32, 0.64, 1.28, 2.56, 5.12, 10.24, 20.48, 40.96, 81.92,
)  # fmt: skip
#: ...and for token counts.
TOKEN_BUCKETS = (
    1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576, 4194304, 16777216, 67108864,
)  # fmt: skip

#: Longest string attribute value; longer ones are cut (values come from the network).
MAX_ATTRIBUTE_LENGTH = 256
#: Distinct model names metric attributes take; later ones are recorded as ``other``, so a
#: stream of made-up names cannot grow the number of series without limit.
MAX_MODEL_VALUES = 256
OTHER = "other"

#: The current conventions' usage counters: the ``Usage`` field each counts, name, brief.
_USAGE_COUNTERS = (
    (
        "input_tokens",
        "gen_ai.client.inference.usage.input_tokens",
        "The number of input (prompt) tokens used, including cached tokens.",
    ),
    (
        "output_tokens",
        "gen_ai.client.inference.usage.output_tokens",
        "The number of output (completion) tokens used, including reasoning tokens.",
    ),
    (
        "cached_input_tokens",
        "gen_ai.client.inference.usage.cache_read.input_tokens",
        "The number of input tokens served from a provider-managed cache.",
    ),
    (
        "cache_write_tokens",
        "gen_ai.client.inference.usage.cache_write.input_tokens",
        "The number of input tokens written to a provider-managed cache.",
    ),
    (
        "reasoning_tokens",
        "gen_ai.client.inference.usage.reasoning.output_tokens",
        "The number of output tokens used for reasoning.",
    ),
)

#: ``gen_ai.operation.name`` per API.
_OPERATION = {
    "chat.completions": "chat",
    "completions": "text_completion",
    "responses": "chat",
    "assistants": "invoke_agent",  # an Assistants run is a remote agent invocation
    "anthropic.messages": "chat",
    "gemini": "generate_content",
    "gemini.interactions": "generate_content",
    "cohere": "chat",
}

#: ``gen_ai.provider.name`` by server host (exact, then by suffix), then by API.
_PROVIDER_HOSTS = {
    "api.openai.com": "openai",
    "api.anthropic.com": "anthropic",
    "generativelanguage.googleapis.com": "gcp.gemini",
    "aiplatform.googleapis.com": "gcp.vertex_ai",
    "api.deepseek.com": "deepseek",
    "api.groq.com": "groq",
    "api.mistral.ai": "mistral_ai",
    "api.x.ai": "x_ai",
    "api.perplexity.ai": "perplexity",
    "api.cohere.com": "cohere",
    "api.cohere.ai": "cohere",
    "api.moonshot.ai": "moonshot_ai",
    "api.moonshot.cn": "moonshot_ai",
}
_PROVIDER_SUFFIXES = (
    (".openai.azure.com", "azure.ai.openai"),
    (".services.ai.azure.com", "azure.ai.inference"),
    ("-aiplatform.googleapis.com", "gcp.vertex_ai"),
)
_API_PROVIDER = {
    "anthropic.messages": "anthropic",
    "gemini": "gcp.gen_ai",
    "gemini.interactions": "gcp.gen_ai",
    "cohere": "cohere",
}

#: How a stream's status maps to ``error.type`` when the caller gives none.
_STATUS_ERRORS = {"truncated": "truncated", "cancelled": "cancelled"}


class SemconvMode(NamedTuple):
    """Which metric names to emit: the v1.41-era ones (``legacy``), the current development
    ones (``latest``), or both."""

    legacy: bool
    latest: bool


def semconv_mode(value: str | None = None) -> SemconvMode:
    """The mode ``OTEL_SEMCONV_STABILITY_OPT_IN`` (or ``value``) asks for: a comma-separated
    list, case-insensitive, in which ``gen_ai_latest_experimental`` means the latest names
    only and ``gen_ai_latest_experimental/dup`` both."""
    raw = os.environ.get(ENV_OPT_IN, "") if value is None else value
    options = {part.strip().lower() for part in raw.split(",")}
    if f"{_LATEST}/dup" in options:
        return SemconvMode(legacy=True, latest=True)
    if _LATEST in options:
        return SemconvMode(legacy=False, latest=True)
    return SemconvMode(legacy=True, latest=False)


def _cap(value: Any, limit: int = MAX_ATTRIBUTE_LENGTH) -> str:
    text = value if isinstance(value, str) else str(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _host(server_address: str | None) -> str | None:
    """A bare host: no scheme, credentials, port or path, in case a URL was passed."""
    if not server_address:
        return None
    host = server_address.strip()
    host = host.split("://", 1)[-1].split("/", 1)[0].rsplit("@", 1)[-1]
    if host.startswith("["):  # [::1]:8080
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    return _cap(host.lower()) or None


def operation_name(api: str | None) -> str:
    """``gen_ai.operation.name`` for an API (``chat`` when unknown)."""
    return _OPERATION.get(api or "", "chat")


def provider_name(api: str | None, server_address: str | None = None) -> str:
    """``gen_ai.provider.name``: from the server's host when it is a known provider's, else
    from the API (the OpenAI-shaped APIs count as ``openai``)."""
    host = _host(server_address)
    if host:
        if host in _PROVIDER_HOSTS:
            return _PROVIDER_HOSTS[host]
        if host.startswith("bedrock-runtime.") and host.endswith(".amazonaws.com"):
            return "aws.bedrock"
        for suffix, name in _PROVIDER_SUFFIXES:
            if host.endswith(suffix):
                return name
    return _API_PROVIDER.get(api or "", "openai")


def _error_type(report: StreamReport) -> str | None:
    """A low-cardinality error class for a stream that did not complete."""
    if report.status == "failed":
        error = report.error
        if isinstance(error, Mapping):
            inner = error.get("error")
            for source in (inner, error) if isinstance(inner, Mapping) else (error,):
                for key in ("type", "code", "status"):
                    value = source.get(key)
                    if isinstance(value, (str, int)) and not isinstance(value, bool) and value:
                        return _cap(value, 64)
        return "_OTHER"
    return _STATUS_ERRORS.get(report.status)


class _Limited:
    """A metric attribute value: itself while few distinct ones were seen, else ``other``."""

    def __init__(self, limit: int) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, value: str) -> str:
        if value in self._seen:
            return value
        with self._lock:
            if len(self._seen) >= self._limit or len(value) > MAX_ATTRIBUTE_LENGTH:
                return OTHER
            self._seen.add(value)
            return value


def _histogram(meter: Any, name: str, unit: str, description: str, buckets: Sequence[float]) -> Any:
    try:
        return meter.create_histogram(
            name, unit=unit, description=description, explicit_bucket_boundaries_advisory=buckets
        )
    except TypeError:  # an API older than 1.23 has no bucket advisory
        return meter.create_histogram(name, unit=unit, description=description)


class Telemetry:
    """The tracer, meter and instruments for metered streams, created once.

    ``tracer_provider`` / ``meter_provider`` default to the global ones (which do nothing
    until an SDK is configured). ``opt_in`` overrides ``OTEL_SEMCONV_STABILITY_OPT_IN``.
    ``enabled`` is False when ``opentelemetry-api`` is not installed; then ``record_stream``
    does nothing. On the global providers nothing is recorded
    while no SDK is configured (the API's own providers would drop it anyway).
    """

    def __init__(
        self,
        *,
        tracer_provider: Any = None,
        meter_provider: Any = None,
        opt_in: str | None = None,
        max_model_values: int = MAX_MODEL_VALUES,
    ) -> None:
        self.mode = semconv_mode(opt_in)
        self._model_value = _Limited(max_model_values)
        self._warned = False
        self._global = tracer_provider is None and meter_provider is None
        self.enabled = False
        try:
            from opentelemetry import metrics, trace
        except ImportError:
            return
        self.enabled = True
        from ._core import __version__

        self._trace = trace
        self._metrics = metrics
        self._tracer = trace.get_tracer("ssetally", __version__, tracer_provider=tracer_provider)
        meter = metrics.get_meter("ssetally", __version__, meter_provider=meter_provider)
        self._duration = _histogram(
            meter,
            "gen_ai.client.operation.duration",
            "s",
            "GenAI operation duration.",
            DURATION_BUCKETS,
        )
        self._ttfc = _histogram(
            meter,
            "gen_ai.client.operation.time_to_first_chunk",
            "s",
            "Time to receive the first chunk, measured from when the client issues the "
            "generation request to when the first chunk is received in the response stream.",
            DURATION_BUCKETS,
        )
        self._tpoc = _histogram(
            meter,
            "gen_ai.client.operation.time_per_output_chunk",
            "s",
            "Time per output chunk, recorded for each chunk received after the first one.",
            DURATION_BUCKETS,
        )
        if self.mode.legacy:
            self._token_usage = _histogram(
                meter,
                "gen_ai.client.token.usage",
                "{token}",
                "Number of input and output tokens used.",
                TOKEN_BUCKETS,
            )
        if self.mode.latest:
            self._usage_counters = tuple(
                (field, meter.create_counter(name, unit="{token}", description=text))
                for field, name, text in _USAGE_COUNTERS
            )
            self._op_input = _histogram(
                meter,
                "gen_ai.client.inference.operation.input_tokens",
                "{token}",
                "The number of input (prompt) tokens used per inference operation.",
                TOKEN_BUCKETS,
            )
            self._op_output = _histogram(
                meter,
                "gen_ai.client.inference.operation.output_tokens",
                "{token}",
                "The number of output (completion) tokens used per inference operation.",
                TOKEN_BUCKETS,
            )

    @property
    def recording(self) -> bool:
        """Whether ``record_stream`` records now (callers then skip building its arguments)."""
        return self.enabled and (not self._global or sdk_configured(self._trace, self._metrics))

    def record_stream(
        self,
        report: StreamReport,
        *,
        operation: str | None = None,
        provider: str | None = None,
        request_model: str | None = None,
        server_address: str | None = None,
        server_port: int | None = None,
        error_type: str | None = None,
        start_time_ns: int | None = None,
        end_time_ns: int | None = None,
        chunk_intervals: Sequence[float] | None = None,
    ) -> None:
        """Record one finished stream: a CLIENT span from ``start_time_ns`` (wall-clock ns
        when the request was sent) to ``end_time_ns``, and the metrics. Never raises.

        ``operation`` / ``provider`` default to ``operation_name(report.api)`` /
        ``provider_name(report.api, server_address)``. ``error_type`` (an HTTP status, an
        exception class...) overrides the one read from the report: the provider's error
        type for a ``failed`` stream, else ``truncated`` / ``cancelled``; a stream with an
        error type gets span status ERROR. Without the timestamps they are worked out from
        ``report.timings`` (monotonic readings) and the clock now. ``chunk_intervals`` are
        seconds between output chunks; without them the report's mean chunk interval is
        recorded once.
        """
        if not self.recording:
            return
        try:
            self._record(
                report,
                operation,
                provider,
                request_model,
                server_address,
                server_port,
                error_type,
                start_time_ns,
                end_time_ns,
                chunk_intervals,
            )
        except Exception:  # telemetry must never break metering
            if not self._warned:
                self._warned = True
                logger.warning("could not record a stream's telemetry", exc_info=True)

    def _record(
        self,
        report: StreamReport,
        operation: str | None,
        provider: str | None,
        request_model: str | None,
        server_address: str | None,
        server_port: int | None,
        error_type: str | None,
        start_time_ns: int | None,
        end_time_ns: int | None,
        chunk_intervals: Sequence[float] | None,
    ) -> None:
        operation = _cap(operation or operation_name(report.api), 64)
        provider = _cap(provider or provider_name(report.api, server_address), 64)
        host = _host(server_address)
        requested = _cap(request_model) if request_model else None
        response_model = _cap(report.model) if report.model else None
        error = _cap(error_type, 64) if error_type else _error_type(report)
        start_ns, end_ns, duration = _span_times(report, start_time_ns, end_time_ns)
        ttfc = _time_to_first_chunk(report)
        usage = report.usage

        attributes: dict[str, Any] = {
            "gen_ai.operation.name": operation,
            "gen_ai.provider.name": provider,
        }
        if requested:
            attributes["gen_ai.request.model"] = requested
        if response_model:
            attributes["gen_ai.response.model"] = response_model
        if host:
            attributes["server.address"] = host
            if isinstance(server_port, int) and 0 < server_port < 65536:
                attributes["server.port"] = server_port
        # Metric attributes see the uncut names: a cut one would be a misleading series.
        metric_attributes = dict(attributes)
        for key, raw in (
            ("gen_ai.request.model", request_model),
            ("gen_ai.response.model", report.model),
        ):
            if key in metric_attributes and isinstance(raw, str):
                metric_attributes[key] = self._model_value(raw)

        span_attributes = dict(attributes)
        span_attributes["gen_ai.request.stream"] = True
        if report.response_id:
            span_attributes["gen_ai.response.id"] = _cap(report.response_id)
        if report.finish_reason:
            span_attributes["gen_ai.response.finish_reasons"] = [_cap(report.finish_reason, 64)]
        if usage is not None:
            for key, value in (
                ("gen_ai.usage.input_tokens", usage.input_tokens),
                ("gen_ai.usage.output_tokens", usage.output_tokens),
                ("gen_ai.usage.cache_read.input_tokens", usage.cached_input_tokens),
                ("gen_ai.usage.cache_creation.input_tokens", usage.cache_write_tokens),
                ("gen_ai.usage.reasoning.output_tokens", usage.reasoning_tokens),
            ):
                if _is_count(value):
                    span_attributes[key] = value
            span_attributes["ssetally.usage.source"] = _cap(usage.source, 32)
        else:
            span_attributes["ssetally.usage.source"] = "none"
        span_attributes["ssetally.stream.status"] = _cap(report.status, 32)
        if ttfc is not None:
            span_attributes["gen_ai.response.time_to_first_chunk"] = ttfc
        cost = report.cost
        if cost is not None:
            span_attributes.update(
                {
                    "ssetally.cost.total": float(cost.total),
                    "ssetally.cost.input": float(cost.input),
                    "ssetally.cost.output": float(cost.output),
                    "ssetally.cost.currency": _cap(cost.currency, 8),
                    "ssetally.cost.source": _cap(cost.source),
                    "ssetally.cost.estimated": cost.estimated,
                }
            )
        if error:
            span_attributes["error.type"] = error

        name = f"{operation} {requested}" if requested else operation
        trace = self._trace
        span = self._tracer.start_span(
            name, kind=trace.SpanKind.CLIENT, attributes=span_attributes, start_time=start_ns
        )
        if error:
            span.set_status(trace.Status(trace.StatusCode.ERROR, error))
        span.end(end_time=end_ns)

        self._record_metrics(report, metric_attributes, error, duration, ttfc, chunk_intervals)

    def _record_metrics(
        self,
        report: StreamReport,
        attributes: dict[str, Any],
        error: str | None,
        duration: float | None,
        ttfc: float | None,
        chunk_intervals: Sequence[float] | None,
    ) -> None:
        with_error = {**attributes, "error.type": error} if error else attributes
        if duration is not None:
            self._duration.record(duration, with_error)
        if ttfc is not None:
            self._ttfc.record(ttfc, attributes)
        for interval in _chunk_intervals(report, chunk_intervals):
            self._tpoc.record(interval, attributes)
        usage = report.usage
        if self.mode.legacy and usage is not None:
            # The older conventions: report no count rather than a made-up zero.
            for kind, value in (("input", usage.input_tokens), ("output", usage.output_tokens)):
                if _is_count(value):
                    self._token_usage.record(value, {**attributes, "gen_ai.token.type": kind})
        if self.mode.latest:
            # The current ones: every operation counts, failed ones and missing counts as 0.
            modality = {**attributes, "gen_ai.token.modality": "unknown"}
            for field, counter in self._usage_counters:
                counter.add(_or_zero(usage, field), modality)
            for field, histogram in (
                ("input_tokens", self._op_input),
                ("output_tokens", self._op_output),
            ):
                histogram.record(_or_zero(usage, field), with_error)


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _or_zero(usage: Any, field: str) -> int:
    value: Any = getattr(usage, field, None)
    return int(value) if _is_count(value) else 0


def _span_times(
    report: StreamReport, start_ns: int | None, end_ns: int | None
) -> tuple[int, int, float | None]:
    """Wall-clock start and end (ns) and the duration (s). The report's clock readings are
    monotonic, so they are placed on the wall clock by their distance from now."""
    now_ns = time.time_ns()
    timings = report.timings
    if timings is not None:
        now_mono = time.monotonic()
        if start_ns is None:
            start_ns = now_ns - int((now_mono - timings.request_sent) * 1e9)
        if end_ns is None and timings.end is not None:
            end_ns = now_ns - int((now_mono - timings.end) * 1e9)
    if end_ns is None:
        end_ns = now_ns
    if start_ns is None:
        start_ns = end_ns
    end_ns = max(end_ns, start_ns)
    if timings is not None and timings.duration is not None:
        duration: float | None = max(timings.duration, 0.0)
    elif start_ns != end_ns:
        duration = (end_ns - start_ns) / 1e9
    else:
        duration = None
    return start_ns, end_ns, duration


def _time_to_first_chunk(report: StreamReport) -> float | None:
    """Seconds from sending the request to the first chunk of the response stream."""
    timings = report.timings
    if timings is None:
        return None
    first = timings.first_byte if timings.first_byte is not None else timings.first_content
    return None if first is None else max(first - timings.request_sent, 0.0)


def _chunk_intervals(report: StreamReport, given: Sequence[float] | None) -> Sequence[float]:
    if given is not None:
        return [x for x in given if isinstance(x, (int, float)) and x >= 0]
    timings = report.timings
    chunks = report.delta_chunks
    if timings is None or chunks < 2 or timings.first_content is None:
        return ()
    if timings.last_content is None:
        return ()
    return (max(timings.last_content - timings.first_content, 0.0) / (chunks - 1),)


_default: Telemetry | None = None
_default_lock = threading.Lock()


def shared_telemetry() -> Telemetry:
    """The process's ``Telemetry`` of the global providers, created on first use."""
    global _default
    if _default is None:
        with _default_lock:
            if _default is None:
                _default = Telemetry()
    return _default


def record_stream(report: StreamReport, **kwargs: Any) -> None:
    """``Telemetry.record_stream`` on the shared ``Telemetry`` of the global providers."""
    shared_telemetry().record_stream(report, **kwargs)
