"""The OpenTelemetry span of a proxied LLM request that failed before any stream was metered
(the upstream unreachable, an HTTP error answer in JSON): metered streams record their own
span in the metering pipeline (``StreamMeter.complete``), failed or not."""

from __future__ import annotations

from typing import Any

from .._metering import is_llm_path
from .._report import StreamReport
from .._telemetry import shared_telemetry
from ._record import Exchange


def trace_failed_request(x: Exchange, report: StreamReport | None, upstream: Any) -> None:
    """Record ``x``'s span and metrics when it is an LLM request that failed upstream without
    a metered stream; ``upstream`` is the upstream's ``httpx.URL``. Never raises
    (``Telemetry.record_stream`` does not)."""
    if x.event_stream or not is_llm_path(x.path):
        return
    if x.outcome == "upstream_error":
        # ``ended_by`` is "ExceptionName: message"; the span keeps the class name only.
        error = (x.ended_by or "upstream_error").split(":", 1)[0]
    elif x.upstream_status is not None and x.upstream_status >= 400:
        error = str(x.upstream_status)
    else:
        return
    shared_telemetry().record_stream(
        (report or StreamReport()).replace(status="failed"),
        request_model=x.requested_model,
        server_address=upstream.host,
        server_port=upstream.port or {"https": 443, "http": 80}.get(upstream.scheme),
        error_type=error,
    )
