"""Peak memory of one parser on one long stream, measured in a fresh subprocess.

The child builds the workload, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``,
Linux), runs the case once, and prints JSON: the time, the RSS before, and the peak RSS.
"Peak extra" = peak - before is what the parser itself needed on top of the input reads.

Parent use: ``measure(key, kind, size, chunking)``. Child use (internal):
``python rss.py --child KEY KIND SIZE CHUNKING``.
"""

from __future__ import annotations

import json
import resource
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CHILD_TIMEOUT_SECONDS = 1800


def _status_kb(field: str) -> int | None:
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith(field + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _release_free_heap() -> None:
    """Gives freed heap pages back to the OS (glibc), so generation leftovers do not hide
    the parser's own allocations in the RSS figures."""
    try:
        import ctypes

        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w", encoding="ascii") as fh:
            fh.write("5")
    except OSError:
        return False
    return True


def _child(key: str, kind: str, size: int, chunking: str) -> dict[str, Any]:
    import gc

    from cases import case_by_key
    from corpus import long_stream

    workload = long_stream(kind, size, chunking)
    runner = case_by_key(key).make(kind)
    gc.collect()
    _release_free_heap()
    reset = _reset_peak()
    before = _status_kb("VmRSS")
    start = time.perf_counter()
    tally = runner(workload.bodies())
    seconds = time.perf_counter() - start
    peak = _status_kb("VmHWM") if reset else None
    if peak is None:  # no reset possible: the lifetime peak, generation included
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return {
        "key": key,
        "kind": kind,
        "nbytes": workload.truth.nbytes,
        "seconds": seconds,
        "rss_before_kb": before,
        "peak_kb": peak,
        "peak_reset": reset,
        "error": tally.mismatch(workload.truth),
    }


@dataclass(frozen=True)
class RssResult:
    key: str
    nbytes: int
    seconds: float
    rss_before_kb: int | None
    peak_kb: int | None
    peak_reset: bool
    error: str | None

    @property
    def extra_mb(self) -> float | None:
        if self.peak_kb is None or self.rss_before_kb is None or not self.peak_reset:
            return None
        return max(0, self.peak_kb - self.rss_before_kb) / 1024


def measure(key: str, kind: str, size: int, chunking: str) -> RssResult:
    """Runs one case in a fresh interpreter and returns its time and peak memory."""
    script = Path(__file__).resolve()
    try:
        proc = subprocess.run(
            [sys.executable, str(script), "--child", key, kind, str(size), chunking],
            capture_output=True,
            text=True,
            timeout=CHILD_TIMEOUT_SECONDS,
            check=False,
            cwd=script.parent,
        )
    except subprocess.TimeoutExpired:
        return RssResult(key, size, float("nan"), None, None, False, "timed out")
    if proc.returncode != 0:
        tail = proc.stderr.strip().splitlines()[-1:] or ["no output"]
        return RssResult(key, size, float("nan"), None, None, False, tail[0])
    data = json.loads(proc.stdout.strip().splitlines()[-1])
    return RssResult(
        data["key"],
        data["nbytes"],
        data["seconds"],
        data["rss_before_kb"],
        data["peak_kb"],
        data["peak_reset"],
        data["error"],
    )


if __name__ == "__main__":
    if len(sys.argv) != 6 or sys.argv[1] != "--child":
        sys.exit(__doc__)
    _, _, key_arg, kind_arg, size_arg, chunking_arg = sys.argv
    print(json.dumps(_child(key_arg, kind_arg, int(size_arg), chunking_arg)))
