"""Scaling checks: cost against stream size, cost per event against read size, and the
fixed cost of one ``feed`` call."""

from __future__ import annotations

import math
import statistics
import timeit
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ssetally
from adapters import usage_tap_class
from cases import Case, Runner, Tally, all_cases
from corpus import Workload, long_stream
from timing import Timed, round_robin

#: Size sweep: ssetally against the pure-Python references.
SIZE_KEYS = ("ssetally.decoder", "ssetally.usagetap", "httpx-sse.decoders", "pyscan.usage")
#: Read-size sweep; the references are skipped below REFERENCE_MIN_READ bytes per read
#: (one interpreted call per byte would take minutes and says nothing new).
READ_KEYS = ("ssetally.decoder", "ssetally.usagetap", "httpx-sse.decoders", "pyscan.usage")
REFERENCE_MIN_READ = 16
READ_SIZES = (1, 4, 16, 64, 256, 1024, 4096, 16384, 65536, 262144, 1048576)


def _cases(keys: Sequence[str]) -> list[Case]:
    by_key = {c.key: c for c in all_cases()}
    return [by_key[k] for k in keys if k in by_key]


@dataclass
class SweepPoint:
    key: str
    x: int  # stream bytes (size sweep) or read size (read sweep)
    nbytes: int
    events: int
    reads: int
    seconds: list[float]
    error: str | None

    def median(self) -> float:
        return statistics.median(self.seconds)

    def as_dict(self) -> dict[str, Any]:
        ok = self.error is None and bool(self.seconds)
        t = self.median() if ok else math.nan
        return {
            "key": self.key,
            "x": self.x,
            "nbytes": self.nbytes,
            "events": self.events,
            "reads": self.reads,
            "seconds": self.seconds,
            "median_s": t,
            "error": self.error,
            "ns_per_byte": t / self.nbytes * 1e9 if ok else math.nan,
            "ns_per_event": t / self.events * 1e9 if ok else math.nan,
            "ns_per_read": t / self.reads * 1e9 if ok else math.nan,
            "mb_s": self.nbytes / t / 1e6 if ok else math.nan,
        }


def size_sweep(
    sizes: Sequence[int],
    runs: int,
    kind: str = "chat",
    chunking: str = "1-4k",
    max_reference_size: int = 10**12,
) -> list[SweepPoint]:
    """One stream per size; every case parses it in one go. All (size, case) pairs share
    one round robin, so a noisy stretch of machine time spreads over every point."""
    points: list[tuple[int, Workload, Timed]] = []
    for size in sizes:
        workload = long_stream(kind, size, chunking)
        points += [
            (size, workload, Timed(c.key, _bind(c.make(kind), workload), workload.truth))
            for c in _cases(SIZE_KEYS)
            if c.key.startswith("ssetally") or size <= max_reference_size
        ]
    round_robin([t for _, _, t in points], runs, progress="size sweep")
    return [_point(x, w, t) for x, w, t in points]


def read_sweep(
    stream_bytes: int, runs: int, kind: str = "chat", read_sizes: Sequence[int] = READ_SIZES
) -> list[SweepPoint]:
    """The same stream cut into reads of each size, all in one round robin."""
    points: list[tuple[int, Workload, Timed]] = []
    for read in read_sizes:
        workload = long_stream(kind, stream_bytes, str(read))
        points += [
            (read, workload, Timed(c.key, _bind(c.make(kind), workload), workload.truth))
            for c in _cases(READ_KEYS)
            if c.key.startswith("ssetally") or read >= REFERENCE_MIN_READ
        ]
    round_robin([t for _, _, t in points], runs, progress="read sweep")
    return [_point(x, w, t) for x, w, t in points]


def _point(x: int, workload: Workload, t: Timed) -> SweepPoint:
    return SweepPoint(
        t.key, x, workload.truth.nbytes, workload.truth.events, workload.reads, t.seconds, t.error
    )


def _bind(runner: Runner, workload: Workload) -> Callable[[], Tally]:
    return lambda: runner(workload.bodies())


@dataclass
class CallCost:
    """Nanoseconds per ``feed`` call, measured with ``timeit`` (best of 5)."""

    results: dict[str, float] = field(default_factory=dict)


def call_overhead(number: int = 200_000) -> CallCost:
    """The fixed price of crossing into the extension, apart from any parsing."""
    cost = CallCost()
    decoder = ssetally.SSEDecoder()
    decoder.feed(b'data: {"partial":')  # inside an event, as a 1-byte reader mostly is
    names: dict[str, Any] = {"decoder": decoder, "noop": _Noop()}
    stmts = {
        "SSEDecoder.feed(b'')": "decoder.feed(b'')",
        "SSEDecoder.feed(b'x') (inside a line)": "decoder.feed(b'x')",
        "Python no-op method call (reference)": "noop.feed(b'x')",
    }
    tap_class = usage_tap_class()
    if tap_class is not None:
        tap = tap_class("auto")
        tap.feed(b'data: {"partial":')
        names["tap"] = tap
        stmts["UsageTap.feed(b'x') (inside a line)"] = "tap.feed(b'x')"
        core = getattr(tap, "_core", None)
        if core is not None:
            names["core"] = core
            stmts["UsageTap._core.feed(b'x') (no Python wrapper)"] = "core.feed(b'x')"
    for name, stmt in stmts.items():
        best = min(timeit.repeat(stmt, globals=names, number=number, repeat=5))
        cost.results[name] = best / number * 1e9
    return cost


class _Noop:
    def feed(self, data: bytes) -> None:
        return None
