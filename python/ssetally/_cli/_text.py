"""The human-readable report the ``report`` and ``stream`` commands print: the assembled
output first, then the figures of each response, their timings, and the sum of a capture that
held several responses."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any, TextIO

from .._report import StreamReport, Usage

#: Section titles, so a reader (or a script) can find where each part starts.
OUTPUT_TITLE = "Assembled Output"
REPORT_TITLE = "Streaming & Tokenization Report"
TOTAL_TITLE = "Total"

#: The usage fields a sum adds up.
SUMMED = (
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "cached_input_tokens",
    "cache_write_tokens",
    "reasoning_tokens",
)

#: An error object longer than this is cut when printed (the JSON report has all of it).
_ERROR_CHARS = 500


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def _seconds(value: float | None) -> str | None:
    return None if value is None else f"{value:.3f} s"


def _rate(value: float | None) -> str | None:
    return None if value is None else f"{value:.1f}"


def title(text: str) -> str:
    """A section title line."""
    return f"--- {text} ---"


def total_usage(responses: Sequence[StreamReport]) -> dict[str, Any]:
    """The sum of every response's usage: each field adds the responses that report it (None
    when none does); ``responses`` and ``with_usage`` say how many were summed."""
    usages = [r.usage for r in responses if r.usage is not None]
    out: dict[str, Any] = {"responses": len(responses), "with_usage": len(usages)}
    for name in SUMMED:
        values = [getattr(u, name) for u in usages if getattr(u, name) is not None]
        out[name] = sum(values) if values else None
    out["sources"] = sorted({u.source for u in usages})
    return out


def _print_output(output: Mapping[str, Any] | None, label: str, out: TextIO) -> None:
    choices = (output or {}).get("choices") or []
    for choice in choices:
        head = label if len(choices) == 1 else f"{label}, choice {choice['index']}"
        print(title(f"{OUTPUT_TITLE} ({head})" if head else OUTPUT_TITLE), file=out)
        print(choice.get("text") or choice.get("refusal") or "", file=out)
        for call in choice.get("tool_calls") or []:
            print(f"[tool call {call['name']}({call['arguments']})]", file=out)
    if not choices:
        print(title(f"{OUTPUT_TITLE} ({label})" if label else OUTPUT_TITLE), file=out)
        print("(no output)", file=out)


def _error_text(error: Any) -> str | None:
    if error is None:
        return None
    text = error if isinstance(error, str) else json.dumps(error, ensure_ascii=False)
    return text if len(text) <= _ERROR_CHARS else text[: _ERROR_CHARS - 3] + "..."


def _usage_rows(usage: Usage | None) -> list[tuple[str, Any]]:
    return [
        ("input tokens", usage and usage.input_tokens),
        ("  cached", usage and usage.cached_input_tokens),
        ("output tokens", usage and usage.output_tokens),
        ("  reasoning", usage and usage.reasoning_tokens),
        ("total tokens", usage and usage.total_tokens),
        ("usage source", usage.source if usage else "none"),
    ]


def _timing_rows(report: StreamReport) -> list[tuple[str, Any]]:
    t = report.timings
    if t is None:
        return [("timings", "none (a capture has no clock readings)")]
    return [
        ("ttft", _seconds(t.ttft)),
        ("inter-token", _seconds(t.inter_token_latency)),
        ("tokens/s", _rate(t.output_tokens_per_s)),
        ("duration", _seconds(t.duration)),
    ]


def _rows(report: StreamReport, source: str | None, one: bool = True) -> list[tuple[str, Any]]:
    """The figures of a report; ``one`` is False for one response of several (the capture's
    source, byte count and timings are then printed once for all)."""
    rows: list[tuple[str, Any]] = [("source", source)] if one else []
    rows += [
        ("api", report.api),
        ("model", report.model),
        ("response id", report.response_id),
        ("status", report.status),
        ("finish reason", report.finish_reason or report.incomplete_reason),
        ("error", _error_text(report.error)),
        ("events", report.events),
        ("delta chunks", report.delta_chunks),
    ]
    if one:
        rows.append(("bytes", report.bytes))
    cost = report.cost
    rows += _usage_rows(report.usage)
    rows.append(("cost", f"{cost.total} {cost.currency}" if cost else None))
    for choice in report.choices:
        share = f"{_fmt(choice.cost)}{' (apportioned)' if choice.apportioned else ''}"
        rows.append((f"  choice {choice.index}", f"{choice.output_tokens} output tokens, {share}"))
    return rows + (_timing_rows(report) if one else [])


def _print_rows(rows: list[tuple[str, Any]], out: TextIO) -> None:
    for name, value in rows:
        print(f"{name:>14}: {_fmt(value)}", file=out)


def _print_notes(report: StreamReport, out: TextIO) -> None:
    usage = report.usage
    tokens = None if usage is None else usage.output_tokens
    if tokens is not None and tokens != report.delta_chunks:
        print(
            f"note: {report.delta_chunks} delta chunks carried {tokens} "
            "output tokens; chunks are not tokens.",
            file=out,
        )
    if usage is not None and usage.note:
        print(f"note: {usage.note}", file=out)
    for attempt in report.attempts:
        if not attempt.ok:
            print(f"note: {attempt.source} failed: {attempt.reason}", file=out)
    if report.cost is None and report.cost_reason:
        print(f"note: no cost: {report.cost_reason}", file=out)
    for warning in report.warnings:
        print(f"warning: {warning}", file=out)


def print_report(
    report: StreamReport,
    source: str,
    out: TextIO,
    *,
    responses: Sequence[StreamReport] = (),
    text: bool = True,
) -> None:
    """Print ``report`` for people: the assembled output (unless ``text`` is False), then
    the report's figures and timings. With several ``responses`` (a capture holding more than
    one), each is printed in turn, its own output when it has one, then their sum."""
    many = len(responses) > 1
    if text:
        outputs = [r.output for r in responses] if many else []
        if many and all(o is not None for o in outputs):
            for i, (r, output) in enumerate(zip(responses, outputs), 1):
                _print_output(output, f"response {i}: {r.response_id or '-'}", out)
        else:
            _print_output(report.output, "all responses" if many else "", out)
    if not many:
        print(title(REPORT_TITLE), file=out)
        _print_rows(_rows(report, source), out)
        _print_notes(report, out)
        return
    print(title(f"{REPORT_TITLE}: {len(responses)} responses"), file=out)
    size = max(report.bytes, sum(r.bytes for r in responses))
    _print_rows([("source", source), ("bytes", size)], out)
    for i, response in enumerate(responses, 1):
        print(title(f"response {i} of {len(responses)}"), file=out)
        _print_rows(_rows(response, None, one=False), out)
        _print_notes(response, out)
    total = total_usage(responses)
    print(title(f"{TOTAL_TITLE} of {len(responses)} responses"), file=out)
    _print_rows(
        [
            ("with usage", f"{total['with_usage']} of {total['responses']}"),
            ("input tokens", total["input_tokens"]),
            ("  cached", total["cached_input_tokens"]),
            ("output tokens", total["output_tokens"]),
            ("  reasoning", total["reasoning_tokens"]),
            ("total tokens", total["total_tokens"]),
            ("usage source", ", ".join(total["sources"]) or "none"),
            *_timing_rows(report),
        ],
        out,
    )
