"""Side-by-side gateway benchmark: the metering proxy against the direct path, nginx and
LiteLLM, per chunk, on one machine. Loopback only (127.0.0.1), bounded in time.

    python benches/gateway.py --quick      # a few minutes
    python benches/gateway.py              # the full run
    python benches/gateway.py --pg         # the PostgreSQL sink at C=500 (a local server)

A mock upstream (``gateway_upstream.py``: 64 chat chunks of ~335 B, 20 ms apart, each stamped
with its send time, then usage) serves every path; a closed-loop client (``gateway_client.py``)
runs C = 1, 16, 64, 200, 500 keep-alive connections through each path in turn, concurrency by
concurrency. Paths: direct, nginx (``proxy_buffering off``), ``ssetally proxy`` (default,
``--inject-usage``, ``--workers 2`` when the CLI has it, metering off when it has a switch), and
LiteLLM's proxy when installed (the ``litellm`` command beside this Python or on PATH; run up
to C=64 only, it is heavy). With two CPUs or more the path under test runs on the first CPU
and the mock and the client on the second. It prints the table and the targets with
PASS/FAIL and writes ``gateway.json`` and ``gateway.md`` into ``--out``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from gateway_client import Level
from gateway_harness import (
    HERE,
    WARM_CONNECTIONS,
    WARM_EVENTS,
    cpu_name,
    cpu_rounds,
    cpu_split,
    measure,
    start_upstream,
    stop,
)
from gateway_paths import METERING_OFF_FLAGS, GatewayPath, LiteLLM, Nginx, Ssetally, proxy_help
from gateway_report import (
    check_records,
    markdown,
    path_figures,
    percentile_ms,
    read_jsonl,
    table,
    targets,
)

LEVELS = (1, 16, 64, 200, 500)
#: Streams per connection at each concurrency (quick, full): C=1 needs more streams to have
#: a p99 worth the name; a level takes about (streams + 1) x events x delay.
STREAMS = {
    "quick": {1: 12, 16: 3, 64: 2, 200: 2, 500: 2},
    "full": {1: 40, 16: 10, 64: 6, 200: 5, 500: 5},
}
#: Streams per connection of each path in each CPU round.
CPU_ROUND_STREAMS = 3
#: Share of its CPU past which the load generator counts as saturated (a note says so).
LOAD_SATURATED = 0.9
ALL_PATHS = ("direct", "nginx", "proxy", "inject-usage", "workers-2", "no-metering", "litellm")


def make_paths(names: list[str], notes: dict[str, str]) -> list[GatewayPath]:
    """The paths asked for, in table order; ``notes`` gets why a path cannot run."""
    help_text = proxy_help() if any(n in names for n in ("workers-2", "no-metering")) else ""
    out: list[GatewayPath] = []
    for name in names:
        if name == "direct":
            out.append(GatewayPath("direct"))
        elif name == "nginx":
            out.append(Nginx())
        elif name == "proxy":
            out.append(Ssetally("proxy"))
        elif name == "inject-usage":
            out.append(Ssetally("inject-usage", ("--inject-usage",)))
        elif name == "workers-2":
            if "--workers" not in help_text:
                notes[name] = "the installed `ssetally proxy` has no --workers"
                continue
            out.append(Ssetally("workers-2", ("--workers", "2")))
        elif name == "no-metering":
            flag = next((f for f in METERING_OFF_FLAGS if f in help_text), None)
            if flag is None:
                notes[name] = (
                    "the proxy has no switch to turn metering off (looked for "
                    + ", ".join(METERING_OFF_FLAGS)
                    + " in `ssetally proxy --help`)"
                )
                continue
            unmetered = Ssetally("no-metering", (flag,))
            unmetered.records = False  # nothing to meter, nothing to check
            out.append(unmetered)
        elif name == "litellm":
            out.append(LiteLLM())
        else:
            raise ValueError(f"unknown path {name!r}: choose from {', '.join(ALL_PATHS)}")
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="fewer streams per level")
    parser.add_argument(
        "--concurrency", default=",".join(map(str, LEVELS)), help="levels, e.g. 1,16,64,200,500"
    )
    parser.add_argument("--paths", default=",".join(ALL_PATHS), help="paths, in table order")
    parser.add_argument("--streams", type=int, help="streams per connection at every level")
    parser.add_argument("--events", type=int, default=64, help="content chunks per stream")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="pause between chunks")
    parser.add_argument("--chunk-bytes", type=int, default=335, help="bytes per content event")
    parser.add_argument(
        "--cpu-rounds",
        type=int,
        help="paired rounds of the CPU comparison (default 5; --quick 3; 0: none)",
    )
    parser.add_argument(
        "--cpu-concurrency", type=int, default=200, help="concurrency of the CPU rounds"
    )
    parser.add_argument("--no-pin", action="store_true", help="do not pin processes to CPUs")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="bound of the run")
    parser.add_argument("--out", type=Path, default=HERE / "results", help="results directory")
    parser.add_argument("--name", default="gateway", help="file stem of the results")
    parser.add_argument("--pg", action="store_true", help="PostgreSQL sink mode, local server")
    parser.add_argument("--sink", help="PostgreSQL sink mode against this postgresql:// URL")
    parser.add_argument(
        "--pg-concurrency", type=int, default=500, help="concurrency of the PostgreSQL mode"
    )
    args = parser.parse_args(argv)
    try:
        levels = sorted({int(c) for c in args.concurrency.split(",") if c.strip()})
    except ValueError:
        parser.error("--concurrency takes comma-separated integers")
    if not levels or not all(1 <= c <= 2000 for c in levels):
        parser.error("--concurrency levels must be 1..2000")
    if not 1 <= args.events <= 10_000 or not 0 <= args.delay_ms <= 1000:
        parser.error("--events must be 1..10000 and --delay-ms 0..1000")
    if args.streams is not None and not 1 <= args.streams <= 1000:
        parser.error("--streams must be 1..1000")
    if not 1 <= args.cpu_concurrency <= 2000 or not 0 <= (args.cpu_rounds or 0) <= 50:
        parser.error("--cpu-concurrency must be 1..2000 and --cpu-rounds 0..50")
    if not 1 <= args.pg_concurrency <= 2000 or not 1 <= args.max_seconds <= 24 * 3600:
        parser.error("--pg-concurrency must be 1..2000 and --max-seconds 1..86400")
    if args.sink and not args.sink.startswith(("postgresql://", "postgres://")):
        parser.error("--sink takes a postgresql:// URL")
    raise_file_limit()
    # SIGTERM unwinds like Ctrl-C: every process started is stopped on the way out.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    if args.pg or args.sink:
        from gateway_pg import pg_main

        return pg_main(args)
    return bench(args, levels)


def raise_file_limit() -> None:
    """Soft limit of open files up to the hard one (C=500 is 1,000 sockets in a proxy);
    inherited by every process started after."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    want = 65536 if hard == resource.RLIM_INFINITY else min(hard, 65536)
    if soft < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, hard))
        except (ValueError, OSError):
            pass


def bench(args: argparse.Namespace, levels: list[int]) -> int:
    mode = "quick" if args.quick else "full"
    plan = {c: args.streams or STREAMS[mode].get(c, 2) for c in levels}
    path_cpus, harness_cpus, pinning = cpu_split(not args.no_pin)
    if harness_cpus:
        os.sched_setaffinity(0, harness_cpus)
    notes: dict[str, str] = {}
    names = [n.strip() for n in args.paths.split(",") if n.strip()]
    if "direct" not in names:
        names.insert(0, "direct")  # every added delay is measured against it
    paths = make_paths(names, notes)
    started: list[GatewayPath] = []
    by_level: dict[str, list[Level]] = {}
    warm: dict[str, Level] = {}
    extra: dict[str, list[Level]] = {}  # the CPU rounds' levels
    deadline = time.monotonic() + args.max_seconds
    upstream, up_port = start_upstream(args, harness_cpus)
    load = (upstream.pid,)
    t0 = time.monotonic()
    try:
        with tempfile.TemporaryDirectory(prefix="ssetally-gateway-") as tmp:
            try:
                for path in paths:
                    try:
                        ok = path.start(up_port, path_cpus, Path(tmp))
                    except (RuntimeError, OSError) as exc:
                        ok, path.note = False, f"did not start: {exc}"
                        path.stop()
                    if ok:
                        started.append(path)
                        by_level[path.name] = []
                    else:
                        notes[path.name] = path.note
                for path in started:  # connections, pools and code paths (not measured)
                    top = min(max(levels), path.max_concurrency or max(levels))
                    warm[path.name] = measure(
                        path, min(WARM_CONNECTIONS, top), 1, args, WARM_EVENTS, load
                    )
                for c in levels:
                    for path in started:
                        if time.monotonic() > deadline:
                            notes["time"] = f"stopped at --max-seconds {args.max_seconds:g}"
                            break
                        if path.max_concurrency is not None and c > path.max_concurrency:
                            notes[f"{path.name} levels"] = (
                                f"run up to C={path.max_concurrency} only (it is too heavy "
                                "for more on one core): higher levels skipped"
                            )
                            continue
                        level = measure(path, c, plan[c], args, None, load)
                        by_level[path.name].append(level)
                        p99 = percentile_ms(level.delays_ns, 99)
                        print(
                            f"  C={c:<4} {path.name:<13} {level.streams} streams, "
                            f"{level.chunks} chunks, {level.failed} failed, delay p99 "
                            + ("-" if p99 is None else f"{p99:.1f} ms"),
                            file=sys.stderr,
                            flush=True,
                        )
                rounds = (
                    args.cpu_rounds if args.cpu_rounds is not None else (3 if args.quick else 5)
                )
                paired: dict[str, list[float | None]] = {}
                if rounds > 0 and time.monotonic() < deadline:
                    paired, extra = cpu_rounds(
                        started, args.cpu_concurrency, CPU_ROUND_STREAMS, rounds, args, load
                    )
            finally:
                for path in started:
                    path.stop()  # the proxies flush their sinks
            results = _results(
                args, mode, levels, plan, pinning, notes, started, by_level, warm, extra
            )
            if paired:
                results["cpu_rounds"] = {
                    "concurrency": args.cpu_concurrency,
                    "streams_per_connection": CPU_ROUND_STREAMS,
                    "cpu_s_per_1000_chunks": paired,
                }
                results["targets"] = targets(results)
    finally:
        stop(upstream)
    results["seconds"] = round(time.monotonic() - t0, 1)
    return _write(args, results)


def _results(
    args: argparse.Namespace,
    mode: str,
    levels: list[int],
    plan: dict[int, int],
    pinning: str,
    notes: dict[str, str],
    started: list[GatewayPath],
    by_level: dict[str, list[Level]],
    warm: dict[str, Level],
    extra: dict[str, list[Level]],
) -> dict[str, Any]:
    direct = {lv.concurrency: lv for lv in by_level.get("direct", [])}
    figures: dict[str, Any] = {}
    for path in started:
        rounds = extra.get(path.name, [])
        fig = path_figures(by_level[path.name], direct, warm.get(path.name), rounds)
        if isinstance(path, Ssetally) and path.records and path.jsonl is not None:
            expected = {sid: args.events for lv in by_level[path.name] + rounds for sid in lv.ids}
            expected.update({sid: WARM_EVENTS for sid in warm[path.name].ids})
            fig["records"] = check_records(read_jsonl(path.jsonl), expected)
            fig["exit_code"] = path.exit_code
            if path.exit_code not in (0, None):
                notes[f"{path.name} exit"] = f"exit code {path.exit_code}: {path.log_tail()!r}"
        figures[path.name] = fig
        busy = [
            f"C={c} ({f['load_generator_cpu_share']:.0%})"
            for c, f in fig["levels"].items()
            if (f.get("load_generator_cpu_share") or 0) >= LOAD_SATURATED
        ]
        if busy:
            notes[f"{path.name} load"] = (
                "the client and the mock used most of their CPU at "
                + ", ".join(busy)
                + ": those levels measure the load generator too"
            )
    results: dict[str, Any] = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "mode": mode,
        "machine": {
            "cpu": cpu_name(),
            "cpus": os.cpu_count(),
            "python": platform.python_version(),
            "load_average": os.getloadavg()[0],
        },
        "events": args.events,
        "delay_ms": args.delay_ms,
        "chunk_bytes": args.chunk_bytes,
        "concurrency": levels,
        "streams_per_connection": ", ".join(f"{plan[c]} at C={c}" for c in levels),
        "pinning": pinning,
        "paths": figures,
        "notes": notes,
    }
    results["targets"] = targets(results)
    return results


def _write(args: argparse.Namespace, results: dict[str, Any]) -> int:
    print()
    print(table(results))
    print()
    for t in results["targets"]:
        print(f"{t['verdict']:>5}  {t['target']}: {t['value']}")
    for key, note in results["notes"].items():
        print(f"note   {key}: {note}")
    print(f"({results['seconds']} s)")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}.json").write_text(json.dumps(results, indent=2) + "\n", "utf-8")
    (args.out / f"{args.name}.md").write_text(markdown(results), "utf-8")
    print(f"wrote {args.out / (args.name + '.json')} and {args.out / (args.name + '.md')}")
    hard = [
        t
        for t in results["targets"]
        if t["target"].startswith(("byte fidelity", "exact usage", "no record"))
    ]
    return 1 if any(t["verdict"] == "FAIL" for t in hard) else 0


if __name__ == "__main__":
    sys.exit(main())
