"""Round-robin timing: every repetition runs every case once, so ratios between cases come
from the same stretch of machine time. Each result is checked before its time counts."""

from __future__ import annotations

import gc
import math
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from cases import Tally
from corpus import Truth

#: A timed call runs its body this long at least (small workloads are repeated).
MIN_SAMPLE_SECONDS = 0.05


@dataclass
class Timed:
    """One case on one workload: ``run(number)`` does the work ``number`` times."""

    key: str
    run: Callable[[], Tally]
    truth: Truth
    number: int = 1
    seconds: list[float] = field(default_factory=list)  # per repetition, per single run
    cpu_seconds: list[float] = field(default_factory=list)  # this process's CPU time, idem
    error: str | None = None

    @property
    def ok(self) -> bool:
        return self.error is None and bool(self.seconds)

    def median(self) -> float:
        return statistics.median(self.seconds) if self.seconds else math.nan


def _once(case: Timed) -> tuple[float, float]:
    """Wall and CPU seconds of one run (averaged over ``case.number`` runs)."""
    gc.collect()
    cpu = time.process_time()
    start = time.perf_counter()
    for _ in range(case.number):
        tally = case.run()
    elapsed = time.perf_counter() - start
    cpu = time.process_time() - cpu
    wrong = tally.mismatch(case.truth)
    if wrong is not None:
        raise ValueError(wrong)
    return elapsed / case.number, cpu / case.number


def calibrate(cases: Sequence[Timed], min_seconds: float = MIN_SAMPLE_SECONDS) -> None:
    """Checks every case once and sets how many runs make one sample."""
    for case in cases:
        try:
            first, _ = _once(case)
        except Exception as exc:  # noqa: BLE001 (a broken parser is reported, not fatal)
            case.error = f"{type(exc).__name__}: {exc}"
            continue
        case.number = max(1, math.ceil(min_seconds / max(first, 1e-9)))


def round_robin(cases: Sequence[Timed], runs: int, progress: str | None = None) -> None:
    """``runs`` repetitions; in each, every still-correct case runs once."""
    calibrate(cases)
    for rep in range(runs):
        for case in cases:
            if case.error is not None:
                continue
            try:
                wall, cpu = _once(case)
            except Exception as exc:  # noqa: BLE001 (idem)
                case.error = f"{type(exc).__name__}: {exc}"
                continue
            case.seconds.append(wall)
            case.cpu_seconds.append(cpu)
        if progress:
            print(f"  {progress}: repetition {rep + 1}/{runs} done", file=sys.stderr, flush=True)


def ratio(slow: Timed, fast: Timed, cpu: bool = False) -> float:
    """Median over repetitions of ``slow`` time / ``fast`` time (same-run pairs); wall
    time, or this process's CPU time with ``cpu``."""
    pairs = [
        s / f
        for s, f in zip(
            slow.cpu_seconds if cpu else slow.seconds, fast.cpu_seconds if cpu else fast.seconds
        )
        if f > 0
    ]
    return statistics.median(pairs) if pairs else math.nan
