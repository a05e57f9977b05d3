"""Setting up the OpenTelemetry SDK with OTLP/HTTP exporters (``ssetally proxy --otel``), and
whether an SDK is set up."""

from __future__ import annotations

import functools
import os
import sys
import uuid
from typing import Any, NamedTuple


class TelemetryError(Exception):
    """The OpenTelemetry SDK or its OTLP exporter is not installed."""


class SdkHandle(NamedTuple):
    """The providers ``configure_sdk`` made (None for a signal switched off)."""

    tracer_provider: Any
    meter_provider: Any

    def shutdown(self) -> None:
        """Flush and stop both providers."""
        for provider in (self.tracer_provider, self.meter_provider):
            if provider is not None:
                provider.shutdown()


def _env_off(name: str) -> bool:
    return os.environ.get(name, "").strip().lower() == "none"


def configure_sdk(*, service_name: str = "ssetally", set_global: bool = True) -> SdkHandle:
    """Set up the OpenTelemetry SDK with OTLP/HTTP exporters for traces and metrics, from the
    standard environment variables (``OTEL_EXPORTER_OTLP_ENDPOINT``, ``..._HEADERS``,
    ``OTEL_SERVICE_NAME``, ``OTEL_RESOURCE_ATTRIBUTES``, ``OTEL_TRACES_SAMPLER``,
    ``OTEL_METRIC_EXPORT_INTERVAL``...; ``OTEL_TRACES_EXPORTER=none`` or
    ``OTEL_METRICS_EXPORTER=none`` leave a signal out, ``OTEL_SDK_DISABLED=true`` both).

    ``service_name`` is used when the environment names none; ``service.instance.id`` (a
    new UUID, with ``process.pid``) tells the processes of one service apart. The providers become the
    global ones unless ``set_global`` is False. Raises ``TelemetryError`` when the SDK or the
    exporter is not installed.
    """
    try:
        from opentelemetry import metrics, trace
        from opentelemetry.exporter.otlp.proto.http.metric_exporter import OTLPMetricExporter
        from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise TelemetryError(
            f"OpenTelemetry export needs the SDK and the OTLP/HTTP exporter ({exc}): "
            "pip install 'ssetally[otel]'"
        ) from exc
    if os.environ.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return SdkHandle(None, None)
    resource = Resource.create()
    if str(resource.attributes.get("service.name", "")).startswith("unknown_service"):
        resource = resource.merge(Resource({"service.name": service_name}))
    if "service.instance.id" not in resource.attributes:
        # One per process: the workers of ``ssetally proxy --workers`` each export cumulative
        # metrics, which a backend would mix up under one identity.
        resource = resource.merge(
            Resource({"service.instance.id": uuid.uuid4().hex, "process.pid": os.getpid()})
        )
    tracer_provider = None
    if not _env_off("OTEL_TRACES_EXPORTER"):
        tracer_provider = TracerProvider(resource=resource)
        tracer_provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))
    meter_provider = None
    if not _env_off("OTEL_METRICS_EXPORTER"):
        reader = PeriodicExportingMetricReader(OTLPMetricExporter())
        meter_provider = MeterProvider(resource=resource, metric_readers=[reader])
    if set_global:
        if tracer_provider is not None:
            trace.set_tracer_provider(tracer_provider)
        if meter_provider is not None:
            metrics.set_meter_provider(meter_provider)
    return SdkHandle(tracer_provider, meter_provider)


#: The provider classes the OpenTelemetry API installs before any SDK is set up.
_API_DEFAULTS = frozenset(
    {"ProxyTracerProvider", "NoOpTracerProvider", "_ProxyMeterProvider", "NoOpMeterProvider"}
)
_sdk_seen = False


def sdk_configured(trace: Any, metrics: Any) -> bool:
    """True once an SDK provider was made global (the API's defaults are proxies of no-ops);
    the API sets a global provider once and for all, so a True answer is kept. While neither
    API module holds a provider and the environment named none at start, nothing is asked
    (the API's getters read the environment at every call). The modules are given: an
    import statement per stream runs importlib's Python code."""
    global _sdk_seen
    if not _sdk_seen:
        internal = sys.modules.get("opentelemetry.metrics._internal")
        if (
            getattr(trace, "_TRACER_PROVIDER", 0) is None
            and getattr(internal, "_METER_PROVIDER", 0) is None
            and not _providers_in_environment()
        ):
            return False
        tracer = type(trace.get_tracer_provider()).__name__
        meter = type(metrics.get_meter_provider()).__name__
        _sdk_seen = tracer not in _API_DEFAULTS or meter not in _API_DEFAULTS
    return _sdk_seen


@functools.cache  # read once: the API's getters load such a provider at their first call
def _providers_in_environment() -> bool:
    names = ("OTEL_PYTHON_TRACER_PROVIDER", "OTEL_PYTHON_METER_PROVIDER")
    return any(name in os.environ for name in names)
