"""The metering proxy's metrics: Prometheus text format on ``/metrics`` (prometheus-client),
and the OpenTelemetry GenAI metric ``gen_ai.client.token.usage`` when OpenTelemetry is
importable (through the global MeterProvider, which does nothing until one is configured).

Each ``ProxyMetrics`` has a registry of its own, so several proxies can live in one process.
"""

from __future__ import annotations

import importlib
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["ProxyMetrics"]

logger = logging.getLogger("ssetally.proxy")

#: Stream durations (seconds): LLM streams run from well under a second to minutes.
DURATION_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)

_TOKEN_KINDS = (
    ("input", "input_tokens"),
    ("output", "output_tokens"),
    ("cached_input", "cached_input_tokens"),
    ("reasoning", "reasoning_tokens"),
)

#: gen_ai.operation.name per API (OpenTelemetry GenAI semantic conventions).
_OPERATION = {
    "chat.completions": "chat",
    "completions": "text_completion",
    "responses": "chat",
    "anthropic.messages": "chat",
    "gemini": "generate_content",
    "cohere": "chat",
}


def _import_prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError as exc:
        raise ImportError(
            "the metering proxy needs prometheus-client: pip install 'ssetally[proxy]'"
        ) from exc
    return prometheus_client


class _OtelTokens:
    """``gen_ai.client.token.usage`` on the global OpenTelemetry MeterProvider."""

    def __init__(
        self, histogram: Any, server_address: str | None, model_label: Callable[[str], str]
    ) -> None:
        self._histogram = histogram
        self._server_address = server_address
        self._model_label = model_label

    @classmethod
    def create(
        cls, server_address: str | None, model_label: Callable[[str], str]
    ) -> _OtelTokens | None:
        try:
            metrics = importlib.import_module("opentelemetry.metrics")
        except ImportError:
            return None
        meter = metrics.get_meter("ssetally.proxy")
        histogram = meter.create_histogram(
            "gen_ai.client.token.usage",
            unit="{token}",
            description="Measures number of input and output tokens used",
        )
        return cls(histogram, server_address, model_label)

    def record(self, record: Mapping[str, Any]) -> None:
        usage = record.get("usage") or {}
        attributes: dict[str, Any] = {
            "gen_ai.operation.name": _OPERATION.get(str(record.get("api")), "chat"),
            "gen_ai.request.model": self._model_label(
                str(record.get("requested_model") or record.get("model") or "")
            ),
            "gen_ai.response.model": self._model_label(str(record.get("model") or "")),
            "ssetally.usage.source": usage.get("source") or "none",
        }
        if self._server_address:
            attributes["server.address"] = self._server_address
        for kind, key in (("input", "input_tokens"), ("output", "output_tokens")):
            value = usage.get(key)
            if isinstance(value, int):
                self._histogram.record(value, {**attributes, "gen_ai.token.type": kind})


#: Distinct model names the metrics keep as label values; later ones are counted as
#: ``other`` (model names come from clients and upstreams: unbounded label values would grow
#: the number of series, and the proxy's memory, without limit).
MAX_MODEL_LABELS = 256
#: Longer model names are counted as ``other`` too.
MAX_MODEL_LABEL_LENGTH = 128
OTHER_MODEL = "other"


class _ModelLabels:
    """The label value a model name is counted under: itself while there are few of them."""

    def __init__(self, limit: int = MAX_MODEL_LABELS) -> None:
        self._limit = limit
        self._seen: set[str] = set()
        self._lock = threading.Lock()

    def __call__(self, model: str) -> str:
        if not model:
            return model
        with self._lock:
            if model in self._seen:
                return model
            if len(model) > MAX_MODEL_LABEL_LENGTH or len(self._seen) >= self._limit:
                return OTHER_MODEL
            self._seen.add(model)
            return model


class ProxyMetrics:
    """The counters and histograms of one proxy, updated once per finished request."""

    def __init__(self, *, otel: bool = True, server_address: str | None = None) -> None:
        prom = _import_prometheus()
        self._prom = prom
        self.registry = prom.CollectorRegistry(auto_describe=True)
        self.requests = prom.Counter(
            "ssetally_proxy_requests",
            "Proxied requests by outcome status and API.",
            ["status", "api"],
            registry=self.registry,
        )
        self.tokens = prom.Counter(
            "ssetally_proxy_tokens",
            "Tokens metered, by model, usage source and kind "
            "(input includes cached, output includes reasoning).",
            ["model", "source", "kind"],
            registry=self.registry,
        )
        self.stream_duration = prom.Histogram(
            "ssetally_proxy_stream_duration_seconds",
            "Seconds from receiving a streamed request to the end of its stream.",
            ["api"],
            buckets=DURATION_BUCKETS,
            registry=self.registry,
        )
        self.metering_failures = prom.Counter(
            "ssetally_proxy_metering_failures",
            "Metering faults; streams are passed on regardless (fail-open).",
            ["stage"],
            registry=self.registry,
        )
        self.client_bytes = prom.Counter(
            "ssetally_proxy_response_bytes",
            "Response body bytes relayed to clients.",
            registry=self.registry,
        )
        self.in_flight = prom.Gauge(
            "ssetally_proxy_requests_in_flight",
            "Requests being proxied now.",
            registry=self.registry,
            multiprocess_mode="livesum",  # summed over the live workers of --workers
        )
        self.records = prom.Counter(
            "ssetally_proxy_records",
            "Usage records handed to the sink, by result (queued, dropped).",
            ["result"],
            registry=self.registry,
        )
        self._model_label = _ModelLabels()
        self._otel = _OtelTokens.create(server_address, self._model_label) if otel else None

    @property
    def otel_enabled(self) -> bool:
        """True when the OpenTelemetry GenAI metric is being recorded."""
        return self._otel is not None

    def failure(self, stage: str) -> None:
        """Count a metering fault at ``stage``."""
        self.metering_failures.labels(stage).inc()

    def observe(self, record: Mapping[str, Any]) -> None:
        """Account one finished request's record."""
        api = str(record.get("api") or "unknown")
        self.requests.labels(str(record.get("status")), api).inc()
        sizes = record.get("bytes") or {}
        client_bytes = sizes.get("client")
        if isinstance(client_bytes, int) and client_bytes > 0:
            self.client_bytes.inc(client_bytes)
        usage = record.get("usage")
        if usage:
            model = self._model_label(
                str(record.get("model") or record.get("requested_model") or "unknown")
            )
            source = str(usage.get("source") or "stream")
            for kind, key in _TOKEN_KINDS:
                value = usage.get(key)
                if isinstance(value, int) and value > 0:
                    self.tokens.labels(model, source, kind).inc(value)
        duration = (record.get("timings") or {}).get("duration")
        if record.get("stream") and isinstance(duration, (int, float)):
            self.stream_duration.labels(api).observe(duration)
        if self._otel is not None:
            try:
                self._otel.record(record)
            except Exception:
                logger.exception("ssetally proxy: recording the OpenTelemetry metric failed")
                self.failure("otel")

    def render(self) -> tuple[bytes, str]:
        """The Prometheus exposition and its content type."""
        return self._prom.generate_latest(self.registry), self._prom.CONTENT_TYPE_LATEST
