"""``ssetally report``: the usage report of a captured stream (a file, stdin or the sample)."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from typing import Any, TextIO

from .._cost import price_report
from .._metering._fallback import with_estimate
from .._report import StreamReport
from .._tap import APIS, UsageTap

SAMPLE = "chat_stream.sse"


def _read_input(source: str | None) -> tuple[bytes, str]:
    if source is None:
        sample = resources.files("ssetally").joinpath("samples", SAMPLE)
        return sample.read_bytes(), f"bundled sample {SAMPLE}"
    if source == "-":
        return sys.stdin.buffer.read(), "standard input"
    with open(source, "rb") as f:
        return f.read(), source


def report_bytes(data: bytes, api: str = "auto", estimate: bool = True) -> StreamReport:
    """Tally a captured stream, estimating with tiktoken when it carries no usage, and price
    it (``cost``, ``choices``; ``cost_reason`` says why there is no cost)."""
    tap = UsageTap(api, collect_output=True)
    tap.feed(data)
    report = tap.finish().replace(output=tap.output())
    if report.usage is None and estimate:
        report = with_estimate(report, None)
    report, reason = price_report(report)
    return report.replace(cost_reason=reason)


def _fmt(value: Any) -> str:
    return "-" if value is None else str(value)


def print_report(report: StreamReport, source: str, out: TextIO) -> None:
    """The human-readable summary of a report."""
    choices = (report.output or {}).get("choices", [])
    for choice in choices:
        label = f"choice {choice['index']}" if len(choices) > 1 else "text"
        print(f"--- {label} ---", file=out)
        print(choice["text"] or choice["refusal"], file=out)
        for call in choice["tool_calls"]:
            print(f"[tool call {call['name']}({call['arguments']})]", file=out)
    print("---", file=out)
    usage = report.usage
    rows = [
        ("source", source),
        ("api", report.api),
        ("model", report.model),
        ("response id", report.response_id),
        ("status", report.status),
        ("finish reason", report.finish_reason or report.incomplete_reason),
        ("events", report.events),
        ("delta chunks", report.delta_chunks),
        ("input tokens", usage and usage.input_tokens),
        ("  cached", usage and usage.cached_input_tokens),
        ("output tokens", usage and usage.output_tokens),
        ("  reasoning", usage and usage.reasoning_tokens),
        ("total tokens", usage and usage.total_tokens),
        ("usage source", usage.source if usage else "none"),
    ]
    cost = report.cost
    rows.append(("cost", f"{cost.total} {cost.currency}" if cost else None))
    for name, value in rows:
        print(f"{name:>14}: {_fmt(value)}", file=out)
    for choice in report.choices:
        print(
            f"{'  choice ' + str(choice.index):>14}: {choice.output_tokens} output tokens, "
            f"{_fmt(choice.cost)}{' (apportioned)' if choice.apportioned else ''}",
            file=out,
        )
    if cost is None and report.cost_reason:
        print(f"note: no cost: {report.cost_reason}", file=out)
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
    for warning in report.warnings:
        print(f"warning: {warning}", file=out)


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        data, source = _read_input(args.file)
    except OSError as exc:
        print(f"ssetally: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return 2
    report = report_bytes(data, args.api, estimate=not args.no_estimate)
    if args.json:
        json.dump(report.to_dict(), sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print_report(report, source, sys.stdout)
    return 0


def add_parser(sub: Any) -> None:
    """The ``report`` subcommand."""
    report = sub.add_parser("report", help="report on a captured SSE stream")
    report.add_argument("file", nargs="?", help="capture file, - for stdin (default: sample)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--api", default="auto", choices=APIS)
    report.add_argument("--no-estimate", action="store_true", help="never estimate usage")
    report.set_defaults(func=_cmd_report)
