"""The fallbacks of a stream that reported no usage: what to try, and merging what they gave.

The plan is decided once per stream (``StreamMeter.plan``); the steps run in one order (merge the
retrieval, then estimate, then note what was skipped) in ``apply_fallbacks``, which never
raises. Only the retrieval does I/O, and the front-ends run it (``retrieve``/``aretrieve``).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from .._report import Attempt, StreamReport
from ._estimate import EstimateError, estimate_usage
from ._request import requested_model
from ._retrieval import RetrievalResult

_TERMINAL = ("completed", "incomplete", "failed", "cancelled")


class Plan(NamedTuple):
    """What a finished stream still needs: the retrieval ``GET`` (URL and headers) or None,
    whether to estimate, and the attempts decided against already (with their reasons)."""

    retrieval: tuple[str, dict[str, str]] | None = None
    estimate: bool = False
    skipped: tuple[Attempt, ...] = ()

    @property
    def due(self) -> bool:
        """True when a fallback has to run (the report then waits for it)."""
        return self.retrieval is not None or self.estimate


#: The plan of a stream that needs nothing more.
NOTHING = Plan()


def needs_retrieval(report: StreamReport, stopped_by_client: bool = False) -> bool:
    """A Responses stream without a terminal event may have its usage stored (a stream the
    client stopped reading is ``cancelled`` without having seen one)."""
    unfinished = report.status not in _TERMINAL or (
        stopped_by_client and report.status == "cancelled"
    )
    return (
        report.usage is None
        and report.api == "responses"
        and report.response_id is not None
        and unfinished
    )


def skipped(report: StreamReport, source: str, reason: str) -> StreamReport:
    """The report with a failed attempt of ``source`` recorded."""
    return report.replace(attempts=(*report.attempts, Attempt(source, False, reason)))


def with_retrieval(report: StreamReport, result: RetrievalResult) -> StreamReport:
    """Merge a retrieval's outcome into the report."""
    got = result.report
    attempts = (*report.attempts, Attempt("retrieval", _has_usage(got), result.reason))
    if got is None or got.usage is None:
        return report.replace(attempts=attempts)
    return report.replace(
        usage=got.usage.replace(source="retrieval"),
        status=got.status,
        incomplete_reason=got.incomplete_reason,
        error=report.error if got.error is None else got.error,
        model=report.model or got.model,
        attempts=attempts,
    )


def _has_usage(report: StreamReport | None) -> bool:
    return report is not None and report.usage is not None


def with_estimate(report: StreamReport, request_body: Mapping[str, Any] | None) -> StreamReport:
    """Count tokens with tiktoken when no usage could be had; never raises."""
    if report.usage is not None:
        return report
    model = report.model or requested_model(request_body)
    try:
        usage = estimate_usage(request_body, report.output or {"choices": []}, model)
        attempt = Attempt("estimate", True, "no usage from the stream or retrieval")
        return report.replace(usage=usage, attempts=(*report.attempts, attempt))
    except EstimateError as exc:
        attempt = Attempt("estimate", False, exc.reason)
    except Exception as exc:  # noqa: BLE001 - a fallback reports, it never raises
        attempt = Attempt("estimate", False, f"{type(exc).__name__}: {exc}")
    return report.replace(attempts=(*report.attempts, attempt))


def apply_fallbacks(
    report: StreamReport,
    plan: Plan,
    retrieved: RetrievalResult | None,
    request_body: Mapping[str, Any] | None,
) -> StreamReport:
    """Retrieval merged, then the estimate, then the skipped attempts: never raises."""
    try:
        if retrieved is not None:
            report = with_retrieval(report, retrieved)
        if plan.skipped:
            report = report.replace(attempts=(*report.attempts, *plan.skipped))
        if plan.estimate:
            report = with_estimate(report, request_body)
    except Exception as exc:  # noqa: BLE001 - a fallback reports, it never raises
        report = skipped(report, "fallback", f"{type(exc).__name__}: {exc}")
    return report
