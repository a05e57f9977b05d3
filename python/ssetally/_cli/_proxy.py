"""``ssetally proxy``: run the metering reverse proxy."""

from __future__ import annotations

import argparse
import dataclasses
import os
import sys
from typing import TYPE_CHECKING, Any

from ._args import add_listen, subcommand

if TYPE_CHECKING:
    from .._gateway import ProxyConfig

#: Top-level modules of the ``proxy`` extra: without them the command says what to install.
_PROXY_MODULES = frozenset({"uvicorn", "prometheus_client", "httptools", "uvloop", "httpx2"})
_INSTALL_PROXY = (
    "ssetally proxy needs the proxy extra ({missing}): pip install 'ssetally[proxy]' "
    "(from a clone of the repository: pip install '.[proxy]')"
)


def _missing_extra(exc: BaseException) -> str | None:
    """The proxy-extra module an ImportError (or its cause) is about, if it is one."""
    seen: BaseException | None = exc
    while seen is not None:
        name = getattr(seen, "name", None)
        if isinstance(seen, ModuleNotFoundError) and name:
            top = str(name).split(".", 1)[0]
            if top in _PROXY_MODULES:
                return top
        seen = seen.__cause__
    return None


def _sink_options(args: argparse.Namespace) -> dict[str, Any]:
    """Constructor options of the sink ``--sink`` names (the remote sinks take more)."""
    scheme = args.sink.partition("://")[0].lower() if "://" in args.sink else ""
    options: dict[str, Any] = {}
    if scheme in ("postgresql", "postgres", "cloudevents+https", "cloudevents+http"):
        options["spool_max_bytes"] = args.spool_max_bytes
        if args.spool_dir:
            options["spool_dir"] = args.spool_dir
    if scheme.startswith("cloudevents+"):
        options["event_type"] = args.cloudevents_type
        options["token_env"] = args.cloudevents_token_env
        if args.cloudevents_source:
            options["source"] = args.cloudevents_source
    return options


def proxy_config(args: argparse.Namespace) -> ProxyConfig:
    """The ``ProxyConfig`` the options say: each ``ProxyConfig`` field is set by the option of
    its name (``--max-body-bytes``: ``max_body_bytes``) or cleared by its ``--no-`` option
    (``--no-retrieve``: ``retrieve``; ``--otel``, which sets up the SDK, is not the ``otel``
    field); the fields without an option keep their defaults."""
    from .._gateway import ProxyConfig
    from .._metering import RetrievalPolicy

    given = vars(args)
    fields: dict[str, Any] = {}
    for name in (f.name for f in dataclasses.fields(ProxyConfig)):
        if f"no_{name}" in given:
            fields[name] = not given[f"no_{name}"]
        elif name in given:
            fields[name] = given[name]
    # What the options spell otherwise: 0 is no limit, no --instance-id the config's default.
    fields["idle_timeout"] = args.idle_timeout or None
    fields["stream_deadline"] = args.stream_deadline or None
    fields["retrieval"] = RetrievalPolicy(deadline=args.retrieval_deadline)
    if not args.instance_id:
        del fields["instance_id"]
    return ProxyConfig(**fields)


def _cmd_proxy(args: argparse.Namespace) -> int:
    from .._telemetry_sdk import TelemetryError, configure_sdk

    handle = None
    try:
        # The proxy extra, checked before anything is opened.
        import prometheus_client  # noqa: F401
        import uvicorn  # noqa: F401

        from .._gateway import serve_proxy
        from ..sinks import open_sink

        config = proxy_config(args)
        config.upstream_url()
        workers = args.workers if args.workers is not None else default_workers()
        if args.otel and workers == 1:  # with workers, each sets up its own
            handle = configure_sdk(service_name="ssetally-proxy")
        options = _sink_options(args)
        if args.sink.startswith("cloudevents+"):
            options["instance_id"] = config.instance_id
        # One process opens the sink now, so a bad sink fails here; workers open their own.
        sink = open_sink(args.sink, **options)
        if workers > 1:
            sink.close()
        serve_proxy(
            config,
            host=args.host,
            port=args.port,
            sink=args.sink if workers > 1 else sink,
            sink_options=options,
            log_level=args.log_level,
            http=args.http,
            workers=workers,
            otel=args.otel,
        )
    except ImportError as exc:
        missing = _missing_extra(exc)
        text = _INSTALL_PROXY.format(missing=f"no module {missing}") if missing else str(exc)
        print(f"ssetally: {text}", file=sys.stderr)
        return 2
    except (ValueError, OSError, TelemetryError) as exc:
        print(f"ssetally: {exc}", file=sys.stderr)
        return 2
    finally:
        if handle is not None:
            handle.shutdown()  # the last spans and metrics are exported
    return 0


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def add_parser(sub: Any) -> None:
    """The ``proxy`` subcommand."""
    from ..sinks import DEFAULT_EVENT_TYPE, DEFAULT_SPOOL_BYTES, DEFAULT_TOKEN_ENV

    proxy = subcommand(sub, "proxy", _cmd_proxy)
    proxy.add_argument(
        "--upstream", required=True, help="the API origin, e.g. https://api.openai.com (required)"
    )
    add_listen(proxy, 8080)
    proxy.add_argument(
        "--sink",
        default="jsonl:ssetally-usage.jsonl",
        help="where the records go: jsonl:PATH, sqlite:PATH, postgresql://... or "
        "cloudevents+https://... (see below)",
    )
    proxy.add_argument(
        "--inject-usage",
        action="store_true",
        help="ask Chat/Completions streams for usage and strip the added chunk",
    )
    proxy.add_argument(
        "--no-metering",
        action="store_true",
        help="pure pass-through: no metering and no records (to measure what metering "
        "costs); the bounds, timeouts and request checks still hold",
    )
    proxy.add_argument("--no-retrieve", action="store_true", help="never GET /responses/{id}")
    proxy.add_argument("--no-estimate", action="store_true", help="never estimate usage")
    proxy.add_argument(
        "--max-body-bytes",
        type=int,
        default=32 * 1024 * 1024,
        help="larger request bodies get 413",
    )
    proxy.add_argument(
        "--max-header-bytes",
        type=int,
        default=64 * 1024,
        help="larger request header sections get 431",
    )
    proxy.add_argument(
        "--connect-timeout",
        type=float,
        default=10.0,
        help="seconds to connect to the upstream (502/504 past it)",
    )
    proxy.add_argument(
        "--read-timeout",
        type=float,
        default=600.0,
        help="longest silence of the upstream, in seconds",
    )
    proxy.add_argument("--max-connections", type=int, default=1000, help="upstream pool size")
    proxy.add_argument(
        "--header-timeout",
        type=float,
        default=10.0,
        help="seconds a client has to send a request's header section, from its first byte "
        "(the connection is closed past it)",
    )
    proxy.add_argument(
        "--body-timeout",
        type=float,
        default=60.0,
        help="seconds a client has to send the whole request body (408 past it)",
    )
    proxy.add_argument(
        "--keep-alive-timeout",
        type=float,
        default=5.0,
        help="seconds an idle client connection is kept open between requests",
    )
    proxy.add_argument(
        "--idle-timeout",
        type=float,
        default=900.0,
        help="seconds a stream may go without an output-bearing event (comments and pings do "
        "not count) before the proxy cuts it; 0: no limit",
    )
    proxy.add_argument(
        "--stream-deadline",
        type=float,
        default=3600.0,
        help="seconds one answer may stream before the proxy cuts it; 0: no limit",
    )
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
    proxy.add_argument(
        "--retrieval-deadline",
        type=float,
        default=30.0,
        help="seconds the GET /responses/{id} of a cut stream may take, retries included",
    )
    proxy.add_argument(
        "--instance-id", help="tag of this instance's records (default: HOST-PID-RANDOM)"
    )
    proxy.add_argument(
        "--key-salt",
        default=os.environ.get("SSETALLY_KEY_SALT", ""),
        help="salt of the API key fingerprints (default: $SSETALLY_KEY_SALT, else none)",
    )
    proxy.add_argument(
        "--metrics-path", default="/metrics", help="path of the Prometheus metrics (not forwarded)"
    )
    proxy.add_argument(
        "--subject-header",
        metavar="NAME",
        help="request header naming whom a request is billed to: each record's subject (the "
        "CloudEvents subject); sanitised, cut to 256 characters (default: none; the "
        "CloudEvents subject is then the API key fingerprint)",
    )
    proxy.add_argument(
        "--no-cost",
        action="store_true",
        help="do not price streams (records and /metrics then have no cost; saves about "
        "0.3 ms of CPU a stream)",
    )
    remote = proxy.add_argument_group("remote sinks (postgresql://, cloudevents+https://)")
    remote.add_argument(
        "--spool-dir",
        help="directory of the on-disk spool (default: one per destination in the user's "
        "cache directory)",
    )
    remote.add_argument(
        "--spool-max-bytes",
        type=int,
        default=DEFAULT_SPOOL_BYTES,
        help="bound of the spool; records past it are dropped and counted",
    )
    remote.add_argument(
        "--cloudevents-type", default=DEFAULT_EVENT_TYPE, help="the events' type attribute"
    )
    remote.add_argument(
        "--cloudevents-source",
        help="the events' source attribute (default: ssetally-proxy/INSTANCE_ID)",
    )
    remote.add_argument(
        "--cloudevents-token-env",
        default=DEFAULT_TOKEN_ENV,
        help="environment variable holding the collector's bearer token",
    )
    otel = proxy.add_mutually_exclusive_group()
    otel.add_argument(
        "--otel",
        action="store_true",
        help="export spans and metrics with OTLP/HTTP, set up from the OTEL_* environment "
        "variables (needs ssetally[otel])",
    )
    otel.add_argument(
        "--no-otel",
        action="store_true",
        help="record no OpenTelemetry spans or metrics, even when a provider is configured",
    )
    proxy.add_argument(
        "--http",
        choices=("auto", "h11", "httptools"),
        default="auto",
        help="uvicorn's HTTP parser (auto: httptools when installed)",
    )
    proxy.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="log level of the proxy and uvicorn",
    )
