"""``ssetally report``: the usage report of a captured stream (a file, stdin or the sample)."""

from __future__ import annotations

import argparse
import json
import sys
from importlib import resources
from typing import Any, NamedTuple

from .._cost import price_report
from .._metering._fallback import with_estimate
from .._report import StreamReport
from .._tap import APIS, UsageTap
from ._args import add_json, subcommand
from ._commands import EXIT_NOT_A_STREAM, EXIT_UNREADABLE
from ._text import print_report, total_usage

SAMPLE = "chat_stream.sse"


class Capture(NamedTuple):
    """A tallied capture: ``report`` (the last response's, as ``UsageTap.finish`` gives it,
    with the output of the whole capture) and every response it held, in order."""

    report: StreamReport
    responses: tuple[StreamReport, ...]


def _read_input(source: str | None) -> tuple[bytes, str]:
    if source is None:
        sample = resources.files("ssetally").joinpath("samples", SAMPLE)
        return sample.read_bytes(), f"bundled sample {SAMPLE}"
    if source == "-":
        return sys.stdin.buffer.read(), "standard input"
    with open(source, "rb") as f:
        return f.read(), source


def tally_capture(data: bytes, api: str = "auto", estimate: bool = True) -> Capture:
    """Tally a captured stream, estimating with tiktoken a response that carries no usage
    (for a capture of several responses, only those whose own output is known)."""
    tap = UsageTap(api, collect_output=True)
    tap.feed(data)
    report = tap.finish()
    outputs = tap.outputs()
    if len(tap.reports) > 1 and len(outputs) == len(tap.reports):
        # Each response's own output; the capture's report keeps them all.
        responses = tuple(r.replace(output=o) for r, o in zip(tap.reports, outputs))
        report = report.replace(output=_merged(outputs))
    else:
        report = report.replace(output=tap.output())
        responses = tap.reports if len(tap.reports) > 1 else (report,)
    capture = Capture(report, responses)
    return with_estimates(capture) if estimate else capture


def _merged(outputs: list[dict[str, Any]]) -> dict[str, Any]:
    """The outputs of several responses as one (their choices in order)."""
    return {"response_id": None, "choices": [c for o in outputs for c in o.get("choices", [])]}


def with_estimates(capture: Capture) -> Capture:
    """The capture with an estimate for each response that carries no usage and whose output
    is known (a capture of one response: its output is the whole capture's)."""
    report, responses = capture
    if len(responses) == 1:
        report = _priced(with_estimate(report, None))
        return Capture(report, (report,))
    responses = tuple(_priced(r if r.output is None else with_estimate(r, None)) for r in responses)
    last = responses[-1]
    return Capture(
        report.replace(
            usage=last.usage, attempts=last.attempts, cost=last.cost, cost_reason=last.cost_reason
        ),
        responses,
    )


def _priced(report: StreamReport) -> StreamReport:
    """``report`` with its cost (``cost_reason`` says why there is none)."""
    report, reason = price_report(report)
    return report.replace(cost_reason=reason)


def report_bytes(data: bytes, api: str = "auto", estimate: bool = True) -> StreamReport:
    """Tally a captured stream, estimating with tiktoken when it carries no usage."""
    return tally_capture(data, api, estimate).report


def not_a_stream(capture: Capture) -> str | None:
    """Why a capture is not an LLM event stream (nothing to report on), or None."""
    report = capture.report
    if report.events == 0:
        return f"no Server-Sent Events in {report.bytes} bytes: it is not an event stream"
    if report.api == "unknown":
        return (
            f"{report.events} events, none of a known LLM API: it is not an LLM event stream "
            "(--api names the API when detection fails)"
        )
    return None


def report_json(capture: Capture) -> dict[str, Any]:
    """The ``--json`` report: the last response's report, every response, and their sum."""
    out = capture.report.to_dict()
    out["responses"] = [r.to_dict() for r in capture.responses]
    out["total"] = total_usage(capture.responses)
    return out


def _cmd_report(args: argparse.Namespace) -> int:
    try:
        data, source = _read_input(args.file)
    except OSError as exc:
        print(f"ssetally: cannot read {args.file}: {exc.strerror}", file=sys.stderr)
        return EXIT_UNREADABLE
    capture = tally_capture(data, args.api, estimate=False)
    why = not_a_stream(capture)
    if why is not None:
        print(f"ssetally: {source}: {why}", file=sys.stderr)
        return EXIT_NOT_A_STREAM
    if not args.no_estimate:
        capture = with_estimates(capture)
    if args.json:
        json.dump(report_json(capture), sys.stdout, indent=2, ensure_ascii=False)
        print()
    else:
        print_report(
            capture.report, source, sys.stdout, responses=capture.responses, text=not args.no_text
        )
    return 0


def add_parser(sub: Any) -> None:
    """The ``report`` subcommand."""
    report = subcommand(sub, "report", _cmd_report)
    report.add_argument(
        "file", nargs="?", help="capture file, - for stdin; without it, the bundled sample"
    )
    add_json(report, "(with responses, total)")
    report.add_argument(
        "--api", default="auto", choices=APIS, help="the API of the stream (auto: detect it)"
    )
    report.add_argument(
        "--no-estimate",
        action="store_true",
        help="never estimate usage with tiktoken when the stream carries none",
    )
    report.add_argument(
        "--no-text", action="store_true", help="leave the assembled output out of the text report"
    )
