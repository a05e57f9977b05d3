"""``ssetally proxy``: run the metering reverse proxy."""

from __future__ import annotations

import argparse
import os
import sys
from typing import Any


def _cmd_proxy(args: argparse.Namespace) -> int:
    try:
        from .._gateway import ProxyConfig, serve_proxy
        from .._metering import RetrievalPolicy

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
            workers=args.workers if args.workers is not None else default_workers(),
        )
    except (ImportError, ValueError, OSError) as exc:
        print(f"ssetally: {exc}", file=sys.stderr)
        return 2
    return 0


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def add_parser(sub: Any) -> None:
    """The ``proxy`` subcommand."""
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
        choices=("auto", "httptools", "httpx2", "httpx"),
        default="auto",
        help="client reading the upstream's answers (auto: the lean httptools client when "
        "installed, else httpx2, else httpx)",
    )
    proxy.add_argument(
        "--workers",
        type=int,
        default=None,
        help="processes serving the one port (default: the number of cores)",
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
