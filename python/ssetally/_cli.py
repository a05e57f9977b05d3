"""The ``ssetally`` command: ``report`` on a captured stream, ``stream`` a live call,
``replay`` a local OpenAI-compatible server, ``proxy`` a metering gateway."""

from __future__ import annotations

import argparse
import json
import os
import sys
from importlib import resources
from typing import Any, TextIO

from ._meter import Meter
from ._report import StreamReport
from ._tap import APIS, UsageTap

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
    """Tally a captured stream, estimating with tiktoken when it carries no usage."""
    tap = UsageTap(api, collect_output=True)
    tap.feed(data)
    report = tap.finish().replace(output=tap.output())
    if report.usage is None and estimate:
        report = Meter(None, hide_usage_chunk=False).with_estimate(report)
    return report


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
    for name, value in rows:
        print(f"{name:>14}: {_fmt(value)}", file=out)
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


def _cmd_stream(args: argparse.Namespace) -> int:
    from ._live import run_stream

    return run_stream(args)


def _cmd_replay(args: argparse.Namespace) -> int:
    from ._replay import Faults, serve

    faults = Faults(
        cut_after_events=args.cut_after_events,
        error_event=args.error_event,
        malformed=args.malformed,
        trickle=args.trickle,
        status=args.status,
    )
    try:
        serve(
            host=args.host,
            port=args.port,
            files=args.files,
            delay=args.delay,
            faults=faults,
            cycle=args.cycle,
            poll_in_progress=args.poll_in_progress,
            require_auth=not args.no_auth,
            log=not args.quiet,
        )
    except FileNotFoundError as exc:
        print(f"ssetally: {exc}", file=sys.stderr)
        return 2
    return 0


def _cmd_proxy(args: argparse.Namespace) -> int:
    try:
        from ._proxy import ProxyConfig, serve_proxy
        from ._retrieve import RetrievalPolicy

        config = ProxyConfig(
            upstream=args.upstream,
            inject_usage=args.inject_usage,
            retrieve=not args.no_retrieve,
            estimate=not args.no_estimate,
            max_body_bytes=args.max_body_bytes,
            max_header_bytes=args.max_header_bytes,
            connect_timeout=args.connect_timeout,
            read_timeout=args.read_timeout,
            max_connections=args.max_connections,
            key_salt=args.key_salt,
            metrics_path=args.metrics_path,
            retrieval=RetrievalPolicy(deadline=args.retrieval_deadline),
            otel=not args.no_otel,
            upstream_client=args.upstream_client,
            **({"instance_id": args.instance_id} if args.instance_id else {}),
        )
        config.upstream_url()
        serve_proxy(
            config,
            host=args.host,
            port=args.port,
            sink=args.sink,
            log_level=args.log_level,
            http=args.http,
        )
    except (ImportError, ValueError, OSError) as exc:
        print(f"ssetally: {exc}", file=sys.stderr)
        return 2
    return 0


def _add_proxy_parser(sub: Any) -> None:
    proxy = sub.add_parser(
        "proxy",
        help="run a metering reverse proxy in front of an LLM API (needs ssetally[proxy])",
        description="Forward every request to --upstream, relay the answers byte for byte and "
        "write one usage record per request to the sink; Prometheus metrics on /metrics.",
    )
    proxy.add_argument(
        "--upstream", required=True, help="the API origin, e.g. https://api.openai.com"
    )
    proxy.add_argument("--host", default="127.0.0.1", help="address to listen on")
    proxy.add_argument("--port", type=int, default=8080)
    proxy.add_argument(
        "--sink",
        default="jsonl:ssetally-usage.jsonl",
        help="jsonl:PATH or sqlite:PATH (default: %(default)s)",
    )
    proxy.add_argument(
        "--inject-usage",
        action="store_true",
        help="ask Chat/Completions streams for usage and strip the added chunk",
    )
    proxy.add_argument("--no-retrieve", action="store_true", help="never GET /responses/{id}")
    proxy.add_argument("--no-estimate", action="store_true", help="never estimate usage")
    proxy.add_argument("--max-body-bytes", type=int, default=32 * 1024 * 1024)
    proxy.add_argument("--max-header-bytes", type=int, default=64 * 1024)
    proxy.add_argument("--connect-timeout", type=float, default=10.0)
    proxy.add_argument(
        "--read-timeout", type=float, default=600.0, help="longest silence of the upstream"
    )
    proxy.add_argument("--max-connections", type=int, default=1000, help="upstream pool size")
    proxy.add_argument(
        "--upstream-client",
        choices=("auto", "httpx2", "httpx"),
        default="auto",
        help="HTTP library of the upstream pool (auto: httpx2 when installed)",
    )
    proxy.add_argument("--retrieval-deadline", type=float, default=30.0)
    proxy.add_argument(
        "--instance-id", help="tag of this instance's records (default: HOST-PID-RANDOM)"
    )
    proxy.add_argument(
        "--key-salt",
        default=os.environ.get("SSETALLY_KEY_SALT", ""),
        help="salt of the API key fingerprints (default: $SSETALLY_KEY_SALT)",
    )
    proxy.add_argument("--metrics-path", default="/metrics")
    proxy.add_argument(
        "--http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="uvicorn's HTTP parser (auto: httptools when installed)",
    )
    proxy.add_argument(
        "--no-otel", action="store_true", help="do not record OpenTelemetry GenAI metrics"
    )
    proxy.add_argument(
        "--log-level", default="info", choices=("critical", "error", "warning", "info", "debug")
    )
    proxy.set_defaults(func=_cmd_proxy)


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of the ``ssetally`` command."""
    parser = argparse.ArgumentParser(
        prog="ssetally", description="Tally token usage of streaming LLM APIs."
    )
    sub = parser.add_subparsers(dest="command", required=True)

    report = sub.add_parser("report", help="report on a captured SSE stream")
    report.add_argument("file", nargs="?", help="capture file, - for stdin (default: sample)")
    report.add_argument("--json", action="store_true", help="print the report as JSON")
    report.add_argument("--api", default="auto", choices=APIS)
    report.add_argument("--no-estimate", action="store_true", help="never estimate usage")
    report.set_defaults(func=_cmd_report)

    stream = sub.add_parser("stream", help="stream a live call (OPENAI_API_KEY, OPENAI_BASE_URL)")
    stream.add_argument("prompt")
    stream.add_argument("--api", choices=("responses", "chat"), default="responses")
    stream.add_argument("--model", default=os.environ.get("OPENAI_MODEL", "gpt-4o-mini"))
    stream.add_argument("--max-output-tokens", type=int)
    stream.add_argument("--json", action="store_true", help="print the report as JSON")
    stream.set_defaults(func=_cmd_stream)

    replay = sub.add_parser("replay", help="serve a local OpenAI-compatible replay server")
    replay.add_argument("files", nargs="*", help="SSE captures to replay (default: generate)")
    replay.add_argument("--host", default="127.0.0.1")
    replay.add_argument("--port", type=int, default=8000)
    replay.add_argument("--delay", type=float, default=0.02, help="seconds between events")
    replay.add_argument("--cycle", action="store_true", help="replay the files round and round")
    replay.add_argument("--no-auth", action="store_true", help="do not require credentials")
    replay.add_argument("--quiet", action="store_true", help="do not log requests")
    replay.add_argument(
        "--poll-in-progress", type=int, default=0, help="GET reports in_progress N times first"
    )
    replay.add_argument("--cut-after-events", type=int, help="drop connections after N events")
    replay.add_argument("--error-event", type=int, help="send an error event after N events")
    replay.add_argument("--malformed", type=int, help="truncate the JSON of event N")
    replay.add_argument("--trickle", action="store_true", help="write one byte at a time")
    replay.add_argument("--status", type=int, help="answer every request with this status")
    replay.set_defaults(func=_cmd_replay)

    _add_proxy_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``ssetally`` console script."""
    args = build_parser().parse_args(argv)
    try:
        code: int = args.func(args)
    except BrokenPipeError:
        # The reader went away (e.g. `| head`): stop quietly, without a traceback at exit.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 1
    return code
