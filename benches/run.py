"""ssetally benchmarks: one command, every parser side by side, checked against ground truth.

    python benches/run.py --quick          # 20 MB per corpus, 10 MB end-to-end: the short run
    python benches/run.py                  # 100 MB per corpus
    python benches/run.py --max-size-mb 1000   # adds the 1 GB stream (size sweep, big run)

Writes ``results.json``, ``results.md`` and ``throughput.png`` to ``--out`` (default: ``out``
next to this file) and prints the markdown report.
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
from collections.abc import Callable
from importlib import metadata
from pathlib import Path
from typing import Any

import adapters
import cases
import chart
import report
import rss
import sweeps
from corpus import KINDS, Workload, many_streams
from loopback import run_e2e
from timing import Timed, round_robin

MB = 1_000_000
PHASES = ("main", "sizes", "reads", "calls", "big", "e2e")
PACKAGES = (
    "ssetally",
    "httpx",
    "httpx-sse",
    "httpx2",
    "openai",
    "sseclient-py",
    "orjson",
    "matplotlib",
)


def _args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument(
        "--size-mb",
        type=float,
        help="bytes per corpus in the main table (default 100, or 20 with --quick)",
    )
    p.add_argument("--runs", type=int, default=5, help="round-robin repetitions (default 5)")
    p.add_argument(
        "--quick",
        action="store_true",
        help="smaller main corpora and end-to-end run; the size sweep still reaches --max-size-mb",
    )
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parent / "out")
    p.add_argument("--kinds", default=",".join(KINDS), help="corpora, comma separated")
    p.add_argument(
        "--max-size-mb",
        type=float,
        default=100.0,
        help="largest stream of the size sweep and of the big run (1000 = 1 GB)",
    )
    p.add_argument(
        "--read-sweep-mb", type=float, default=4.0, help="stream used for the read-size sweep"
    )
    p.add_argument(
        "--e2e-mb",
        type=float,
        help="bytes served over loopback per repetition (default 20, or 10 with --quick)",
    )
    p.add_argument("--skip", default="", help=f"phases to skip: {','.join(PHASES)}")
    p.add_argument(
        "--cases",
        default="",
        help="main-table cases only, comma separated keys "
        "(e.g. ssetally.usagetap,pyscan.usage,floor.newlines for the tap's "
        "targets alone); default: every installed case",
    )
    args = p.parse_args(argv)
    if args.size_mb is None:
        args.size_mb = 20.0 if args.quick else 100.0
    if args.e2e_mb is None:
        args.e2e_mb = 10.0 if args.quick else 20.0
    args.skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    args.cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    known = {c.key for c in cases.all_cases()}
    if set(args.cases) - known:
        p.error(
            f"unknown or not installed case(s) in --cases: "
            f"{', '.join(sorted(set(args.cases) - known))}"
        )
    if args.skip - set(PHASES):
        p.error(f"unknown phase(s) in --skip: {', '.join(sorted(args.skip - set(PHASES)))}")
    if args.runs < 1:
        p.error("--runs must be at least 1")
    return args


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def _build_id() -> dict[str, Any]:
    """Which ssetally build is measured: the extension file's hash and time, and the git
    state of the checkout it was imported from (when it is one)."""
    import ssetally._core as core

    path = Path(core.__file__ or "")
    out: dict[str, Any] = {"extension": path.name}
    try:
        out["extension_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()[:16]
        out["extension_mtime"] = datetime.datetime.fromtimestamp(
            path.stat().st_mtime, datetime.timezone.utc
        ).strftime("%Y-%m-%d %H:%M:%S UTC")
    except OSError:
        pass
    try:
        git = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=path.parent,
            capture_output=True,
            text=True,
            timeout=10,
            check=False,
        )
        if git.returncode == 0:
            out["git"] = git.stdout.strip()
    except (OSError, subprocess.TimeoutExpired):
        pass
    return out


def _meta() -> dict[str, Any]:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            cpu = next(
                (ln.split(":", 1)[1].strip() for ln in fh if ln.startswith("model name")), cpu
            )
    except OSError:
        pass
    versions = {}
    for dist in PACKAGES:
        try:
            versions[dist] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            versions[dist] = "not installed"
    return {
        "when": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d %H:%M UTC"),
        "python": platform.python_version(),
        "implementation": platform.python_implementation(),
        "platform": platform.platform(),
        "cpu": cpu,
        "cpus": os.cpu_count(),
        "packages": versions,
        "ssetally_build": _build_id(),
        "missing": dict(adapters.MISSING),
    }


def _bind(runner: cases.Runner, workload: Workload) -> Callable[[], cases.Tally]:
    return lambda: runner(workload.bodies())


def _row(case: cases.Case, t: Timed, workload: Workload) -> dict[str, Any]:
    ok = t.ok
    nbytes = workload.truth.nbytes
    return {
        "key": case.key,
        "label": case.label,
        "mode": case.mode,
        "seconds": t.seconds,
        "median_s": t.median() if ok else math.nan,
        "mb_s": nbytes / t.median() / MB if ok else math.nan,
        "mb_s_min": nbytes / max(t.seconds) / MB if ok else math.nan,
        "mb_s_max": nbytes / min(t.seconds) / MB if ok else math.nan,
        "kev_s": workload.truth.events / t.median() / 1e3 if ok else math.nan,
        "error": t.error,
    }


def main_phase(
    kinds: list[str], size: int, runs: int, only: list[str] | None = None
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    all_cases = [c for c in cases.all_cases() if not only or c.key in only]
    for kind in kinds:
        _log(f"main table: generating {size / MB:.0f} MB of {kind}")
        workload = many_streams(kind, size, "1-4k")
        timed = [Timed(c.key, _bind(c.make(kind), workload), workload.truth) for c in all_cases]
        round_robin(timed, runs, progress=f"main table ({kind})")
        out[kind] = {
            "kind": kind,
            "nbytes": workload.truth.nbytes,
            "events": workload.truth.events,
            "streams": workload.truth.streams,
            "reads": workload.reads,
            "rows": [_row(c, t, workload) for c, t in zip(all_cases, timed)],
        }
    return out


def big_phase(kind: str, size: int) -> dict[str, Any]:
    rows = []
    for case in cases.all_cases():
        _log(f"big run: {case.key} on {size / MB:.0f} MB (fresh process)")
        r = rss.measure(case.key, kind, size, "1-4k")
        rows.append(
            {
                "key": case.key,
                "label": case.label,
                "mode": case.mode,
                "seconds": r.seconds,
                "nbytes": r.nbytes,
                "mb_s": r.nbytes / r.seconds / MB if not math.isnan(r.seconds) else math.nan,
                "peak_extra_mb": r.extra_mb,
                "rss_before_kb": r.rss_before_kb,
                "peak_kb": r.peak_kb,
                "error": r.error,
            }
        )
    nbytes = next((r["nbytes"] for r in rows if not r["error"]), size)
    return {"kind": kind, "nbytes": nbytes, "rows": rows}


def _sizes(max_bytes: int) -> list[int]:
    sizes, s = [], 1_000
    while s < max_bytes:
        sizes.append(s)
        s *= 10
    return [*sizes, max_bytes]


def _clean(x: Any) -> Any:
    """NaN -> None, so results.json is strict JSON."""
    if isinstance(x, float) and math.isnan(x):
        return None
    if isinstance(x, dict):
        return {k: _clean(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_clean(v) for v in x]
    return x


def main(argv: list[str] | None = None) -> int:
    args = _args(argv)
    kinds = [k.strip() for k in args.kinds.split(",") if k.strip()]
    unknown = set(kinds) - set(KINDS)
    if unknown:
        sys.exit(f"unknown corpus kind(s): {', '.join(sorted(unknown))}")
    max_size = int(args.max_size_mb * MB)
    results: dict[str, Any] = {
        "meta": _meta(),
        "params": {
            "size_mb": args.size_mb,
            "runs": args.runs,
            "quick": args.quick,
            "kinds": kinds,
            "max_size_mb": args.max_size_mb,
            "read_sweep_mb": args.read_sweep_mb,
            "e2e_mb": args.e2e_mb,
            "chunking": "1-4k",
            "skipped": sorted(args.skip),
            "cases": args.cases or "all",
        },
    }
    if "main" not in args.skip:
        results["main"] = main_phase(kinds, int(args.size_mb * MB), args.runs, args.cases)
    if "sizes" not in args.skip:
        points = sweeps.size_sweep(_sizes(max_size), args.runs, max_reference_size=100 * MB)
        results["size_sweep"] = [p.as_dict() for p in points]
    if "reads" not in args.skip:
        points = sweeps.read_sweep(int(args.read_sweep_mb * MB), args.runs)
        results["read_sweep"] = [p.as_dict() for p in points]
    if "calls" not in args.skip:
        results["call_overhead_ns"] = sweeps.call_overhead().results
    if "big" not in args.skip:
        results["big_run"] = big_phase("chat", max_size)
    if "e2e" not in args.skip:
        # Loopback timings are far noisier than in-memory ones: three times the repetitions.
        e2e = run_e2e("chat", int(args.e2e_mb * MB), 3 * args.runs)
        results["e2e"] = {
            "kind": e2e.kind,
            "nbytes": e2e.nbytes,
            "streams": e2e.streams,
            "rows": e2e.rows(),
        }
    results["meta"]["missing"] = dict(adapters.MISSING)
    if _build_id().get("extension_sha256") != results["meta"]["ssetally_build"].get(
        "extension_sha256"
    ):
        results["meta"]["warning"] = (
            "the ssetally extension was rebuilt during this run: phases that start a fresh "
            "process (big run) measured the new build, the others the old one; run again"
        )
        _log("WARNING: " + results["meta"]["warning"])
    results["targets"] = report.targets(results)

    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "results.json").write_text(
        json.dumps(_clean(results), indent=1, ensure_ascii=False) + "\n"
    )
    text = report.markdown(results)
    (args.out / "results.md").write_text(text, encoding="utf-8")
    if not chart.write_chart(results, args.out / "throughput.png"):
        _log("matplotlib is not installed: no chart (pip install matplotlib)")
    print(text)
    _log(f"wrote {args.out / 'results.json'}, results.md, throughput.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
