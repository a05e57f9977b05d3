"""The bookkeeping shared by the sync and async client streams: tapping bytes, timing them,
and deciding which fallbacks a finished stream needs. No I/O happens here."""

from __future__ import annotations

import time
from collections.abc import Mapping
from typing import Any

from ._core import EventTooLargeError, ServerSentEvent, SSEDecoder
from ._estimate import EstimateError, estimate_usage
from ._report import Attempt, StreamReport, Timings, Usage
from ._retrieve import RetrievalResult, redact
from ._tap import UsageTap

_TERMINAL = ("completed", "incomplete", "failed", "cancelled")


class Meter:
    """Taps one streamed response: events for the caller, usage and timings for the report."""

    def __init__(self, request_body: Mapping[str, Any] | None, hide_usage_chunk: bool) -> None:
        self.request_body = request_body
        self.hide_usage_chunk = hide_usage_chunk
        self.tap = UsageTap(collect_output=True)
        self.decoder = SSEDecoder()
        self.request_sent = time.monotonic()
        self.first_byte: float | None = None
        self.first_content: float | None = None
        self.last_content: float | None = None
        self.end: float | None = None
        self.ended_by: str | None = None
        self.warnings: list[str] = []
        #: The request's credential values (``request_secrets``), kept out of the report.
        self.secrets: tuple[str, ...] = ()

    def on_chunk(self, chunk: bytes) -> list[ServerSentEvent]:
        """Tap a chunk; returns the events it completed that the caller should see."""
        now = time.monotonic()
        if self.first_byte is None:
            self.first_byte = now
        before = self.tap.delta_chunks
        self.tap.feed(chunk)
        if self.tap.delta_chunks > before:
            self.first_content = self.first_content or now
            self.last_content = now
        try:
            events = self.decoder.feed(chunk)
        except EventTooLargeError as exc:
            self.warnings.append(str(exc))
            events = exc.events
        if self.hide_usage_chunk:
            events = [e for e in events if not _is_injected_usage_chunk(e)]
        return events

    def on_end(self, how: str) -> None:
        """The body ended: ``eof``, ``closed early`` or an error description."""
        if self.end is None:
            self.end = time.monotonic()
            self.ended_by = how
            self.decoder.finish()

    def stream_report(self) -> StreamReport:
        """The report of what the stream itself said (no fallbacks yet)."""
        self.on_end("closed early")
        report = self.tap.finish()
        if report.usage is not None:
            reason = "usage read from the stream"
        else:
            reason = f"no usage in the stream (status {report.status}, ended: {self.ended_by})"
        return report.replace(
            attempts=(Attempt("stream", report.usage is not None, reason),),
            output=self.tap.output(),
            warnings=report.warnings + tuple(self.warnings),
        )

    def needs_retrieval(self, report: StreamReport) -> bool:
        """A Responses stream without a terminal event may have its usage stored."""
        return (
            report.usage is None
            and report.api == "responses"
            and report.response_id is not None
            and report.status not in _TERMINAL
        )

    def with_retrieval(self, report: StreamReport, result: RetrievalResult) -> StreamReport:
        """Merge a retrieval's outcome into the report."""
        got = result.report
        ok = got is not None and got.usage is not None
        attempts = (*report.attempts, Attempt("retrieval", ok, result.reason))
        if not ok or got is None or got.usage is None:
            return report.replace(attempts=attempts)
        return report.replace(
            usage=got.usage.replace(source="retrieval"),
            status=got.status,
            incomplete_reason=got.incomplete_reason,
            error=report.error if got.error is None else got.error,
            model=report.model or got.model,
            attempts=attempts,
        )

    def with_estimate(self, report: StreamReport) -> StreamReport:
        """Count tokens with tiktoken when no usage could be had; never raises."""
        if report.usage is not None:
            return report
        model = report.model or _requested_model(self.request_body)
        try:
            usage = estimate_usage(self.request_body, report.output or {"choices": []}, model)
            attempt = Attempt("estimate", True, "no usage from the stream or retrieval")
            return report.replace(usage=usage, attempts=(*report.attempts, attempt))
        except EstimateError as exc:
            attempt = Attempt("estimate", False, exc.reason)
        except Exception as exc:  # noqa: BLE001 - a fallback reports, it never raises
            attempt = Attempt("estimate", False, f"{type(exc).__name__}: {exc}")
        return report.replace(attempts=(*report.attempts, attempt))

    def redacted(self, report: StreamReport) -> StreamReport:
        """``redact_report`` with this request's credentials."""
        return redact_report(report, self.secrets)

    def with_timings(self, report: StreamReport) -> StreamReport:
        """Attach the clock readings, with the true output token count."""
        timings = Timings(
            request_sent=self.request_sent,
            first_byte=self.first_byte,
            first_content=self.first_content,
            last_content=self.last_content,
            end=self.end,
            output_tokens=None if report.usage is None else report.usage.output_tokens,
        )
        return report.replace(timings=timings)


def _requested_model(body: Mapping[str, Any] | None) -> str | None:
    model = None if body is None else body.get("model")
    return model if isinstance(model, str) else None


def _is_injected_usage_chunk(event: ServerSentEvent) -> bool:
    """The chunk `include_usage` adds: no choices, only usage. Cheap test first: with
    ``include_usage`` every chunk names ``"usage"`` (null), but only this one has an empty
    ``choices`` list."""
    data = event.data
    if '"usage"' not in data or ('"choices":[]' not in data and '"choices": []' not in data):
        return False
    try:
        obj = event.json()
    except ValueError:
        return False
    return isinstance(obj, dict) and obj.get("choices") == [] and bool(obj.get("usage"))


def redact_report(report: StreamReport, secrets: tuple[str, ...]) -> StreamReport:
    """The report with the request's credentials (``request_secrets``) replaced wherever the
    server, a proxy or an error message could have echoed them: error, warnings, attempt
    reasons, the provider's strings, usage objects and notes, and the reassembled output."""
    if not secrets:
        return report

    def text(value: str | None) -> str | None:
        return None if value is None else redact(value, secrets)

    def usage(u: Usage | None) -> Usage | None:
        if u is None:
            return None
        return u.replace(raw=redact(dict(u.raw), secrets), note=text(u.note))

    return report.replace(
        usage=usage(report.usage),
        response_id=text(report.response_id),
        model=text(report.model),
        finish_reason=text(report.finish_reason),
        incomplete_reason=text(report.incomplete_reason),
        error=redact(report.error, secrets),
        warnings=tuple(redact(w, secrets) for w in report.warnings),
        step_usages=tuple(usage(u) for u in report.step_usages),
        attempts=tuple(Attempt(a.source, a.ok, redact(a.reason, secrets)) for a in report.attempts),
        output=None if report.output is None else redact(report.output, secrets),
    )
