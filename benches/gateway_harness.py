"""Shared by the gateway benchmark's modes: the CPU split, the mock upstream's process, and
measuring one path at one concurrency with the path's CPU time."""

from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

from gateway_client import Level, run_level
from gateway_paths import GatewayPath, pinned, process_cpu_seconds
from gateway_upstream import run

HERE = Path(__file__).resolve().parent
#: Chunks per warm-up stream and warm-up connections per path (not measured).
WARM_EVENTS = 4
WARM_CONNECTIONS = 16


def cpu_name() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown CPU"


def cpu_split(enabled: bool) -> tuple[set[int] | None, set[int] | None, str]:
    """(CPUs of the path under test, CPUs of the mock and client, a sentence saying so)."""
    cpus = sorted(os.sched_getaffinity(0))
    if not enabled:
        return None, None, "No CPU pinning (--no-pin)."
    if len(cpus) < 2:
        return None, None, "One CPU only: nothing pinned (every process shares it)."
    sentence = (
        f"The path under test is pinned to CPU {cpus[0]}, the mock upstream and the client "
        f"to CPU {cpus[1]} (a proxy's --workers share its one CPU)."
    )
    return {cpus[0]}, {cpus[1]}, sentence


def start_upstream(args: argparse.Namespace, cpus: set[int] | None) -> tuple[Any, int]:
    command = [
        sys.executable, str(HERE / "gateway_upstream.py"), "--events", str(args.events),
        "--delay-ms", str(args.delay_ms), "--chunk-bytes", str(args.chunk_bytes),
        "--max-seconds", str(args.max_seconds + 60),
    ]  # fmt: skip
    proc = subprocess.Popen(pinned(command, cpus), stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"the mock upstream did not start: {line!r}")
    return proc, int(line.split()[1])


def stop(proc: Any) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def measure(
    path: GatewayPath,
    c: int,
    streams: int,
    args: argparse.Namespace,
    events: int | None = None,
    load_pids: tuple[int, ...] = (),
) -> Level:
    """One path at one concurrency, with the path's CPU time over the level, and that of the
    load generator (this process and ``load_pids``: the mock upstream)."""
    level = Level(path.name, c)
    pids = (os.getpid(), *load_pids)
    load_before = sum(process_cpu_seconds(p) for p in pids)
    before = path.cpu_seconds()
    timeout = args.events * args.delay_ms / 1000 * 3 + 60
    level_timeout = min(args.max_seconds, timeout * streams + 120)
    run(
        run_level(
            level,
            path.port,
            streams,
            usage=path.name != "inject-usage",  # the proxy asks for usage on the client's behalf
            stagger=max(args.events * args.delay_ms / 1000, 0.01),
            stream_timeout=timeout,
            level_timeout=level_timeout,
            events=events,
        )
    )
    after = path.cpu_seconds()
    if before is not None and after is not None:
        level.cpu_s = after - before
    level.load_cpu_s = sum(process_cpu_seconds(p) for p in pids) - load_before
    return level


#: Paths whose CPU the targets compare, measured again in paired rounds.
CPU_PATHS = ("nginx", "proxy", "inject-usage", "no-metering")


def cpu_rounds(
    paths: list[GatewayPath],
    c: int,
    streams: int,
    rounds: int,
    args: argparse.Namespace,
    load_pids: tuple[int, ...] = (),
) -> tuple[dict[str, list[float | None]], dict[str, list[Level]]]:
    """CPU seconds per 1,000 chunks of each of ``CPU_PATHS`` at concurrency ``c``, in
    ``rounds`` rounds that each measure every path once, one after the other (the order turns
    from round to round): a ratio of two paths is taken within a round, so that a slow moment
    of a shared machine weighs on both sides of it. Also the levels run (their streams are
    checked like the others)."""
    compared = [p for p in paths if p.name in CPU_PATHS]
    out: dict[str, list[float | None]] = {p.name: [] for p in compared}
    levels: dict[str, list[Level]] = {p.name: [] for p in compared}
    for r in range(rounds):
        turn = r % len(compared) if compared else 0
        for path in compared[turn:] + compared[:turn]:
            level = measure(path, c, streams, args, None, load_pids)
            levels[path.name].append(level)
            if level.cpu_s is not None and level.chunks and not level.failed:
                out[path.name].append(level.cpu_s / level.chunks * 1000)
            else:
                out[path.name].append(None)  # no CPU time, or failed streams: left out
    return out, levels
