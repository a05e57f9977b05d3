"""End to end: streams served over loopback HTTP, read with httpx, with and without metering.

The server (``loopback_server.py``) runs in its own process on the other core, so the
numbers are the client's CPU cost. That is the worst case for metering: real LLM streams
arrive at token speed, the client mostly waits, and the same CPU cost is a far smaller share
of the wall time.
"""

from __future__ import annotations

import json
import statistics
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import ssetally
from adapters import usage_tap_class
from cases import Tally, extractor
from corpus import many_streams
from pure_python import scan_last_usage
from timing import Timed, ratio, round_robin

SERVER_START_TIMEOUT = 60.0
CLIENT_TIMEOUT = 30.0

PerStream = Callable[[httpx.Response], Tally]


def _first_line(proc: subprocess.Popen[str], out: list[str]) -> None:
    if proc.stdout is not None:
        out.append(proc.stdout.readline())


@contextmanager
def local_server(kind: str, size: int, max_seconds: float) -> Iterator[str]:
    """Starts the server process and yields its base URL; always stops it."""
    script = Path(__file__).resolve().parent / "loopback_server.py"
    proc = subprocess.Popen(
        [
            sys.executable,
            str(script),
            "--kind",
            kind,
            "--size",
            str(size),
            "--max-seconds",
            str(max_seconds),
        ],
        stdout=subprocess.PIPE,
        text=True,
        cwd=script.parent,
    )
    try:
        port: list[str] = []
        reader = threading.Thread(target=_first_line, args=(proc, port), daemon=True)
        reader.start()
        reader.join(SERVER_START_TIMEOUT)
        if not port or not port[0].startswith("PORT "):
            raise RuntimeError("the loopback server did not start")
        yield f"http://127.0.0.1:{int(port[0].split()[1])}"
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(10)


def _plain(response: httpx.Response) -> Tally:
    for _ in response.iter_bytes():
        pass
    return Tally()


def _variants(kind: str) -> dict[str, PerStream]:
    extract = extractor(kind)
    key = "completion_tokens" if kind.startswith("chat") else "output_tokens"

    def events(response: httpx.Response) -> Tally:
        n = chars = 0
        for event in ssetally.EventSource(response).iter_sse():
            n += 1
            chars += len(event.data)
        return Tally(n, chars)

    def scan(response: httpx.Response) -> Tally:
        usage = scan_last_usage(response.iter_bytes())
        return Tally(None, None, usage[key]) if usage else Tally(bad_streams=1)

    out: dict[str, PerStream] = {"httpx iter_bytes, no metering": _plain}
    tap_class = usage_tap_class()
    if tap_class is not None:

        def tap(response: httpx.Response) -> Tally:
            meter = tap_class("auto")
            for read in response.iter_bytes():
                meter.feed(read)
            report = meter.finish()
            if report.usage is None or report.status != "completed":
                return Tally(bad_streams=1)
            return Tally(None, None, report.usage.output_tokens)

        out["+ ssetally UsageTap fed from iter_bytes"] = tap
    out["+ ssetally EventSource events (.data read)"] = events
    out["+ pure-Python usage scan"] = scan
    try:
        import httpx_sse

        def httpx_sse_json(response: httpx.Response) -> Tally:
            n = tokens = 0
            for event in httpx_sse.EventSource(response).iter_sse():
                n += 1
                if event.data != "[DONE]":
                    tokens += extract(json.loads(event.data))
            return Tally(n, None, tokens)

        out["+ httpx-sse EventSource + json.loads"] = httpx_sse_json
    except ImportError:
        pass
    return out


def _summed(parts: list[Tally]) -> Tally:
    def total(values: list[int | None]) -> int | None:
        return None if any(v is None for v in values) else sum(v or 0 for v in values)

    return Tally(
        total([p.events for p in parts]),
        total([p.data_chars for p in parts]),
        total([p.output_tokens for p in parts]),
        sum(p.bad_streams for p in parts),
    )


@dataclass
class E2EResult:
    kind: str
    nbytes: int
    streams: int
    timed: list[Timed]
    baseline_key: str

    def rows(self) -> list[dict[str, Any]]:
        base = next(t for t in self.timed if t.key == self.baseline_key)
        out = []
        for t in self.timed:
            ok = t.ok and base.ok
            cpu = statistics.median(t.cpu_seconds) if t.cpu_seconds else float("nan")
            out.append(
                {
                    "variant": t.key,
                    "mb_s": self.nbytes / t.median() / 1e6 if t.ok else float("nan"),
                    "us_per_stream": t.median() / self.streams * 1e6 if t.ok else float("nan"),
                    "cpu_us_per_stream": cpu / self.streams * 1e6 if t.ok else float("nan"),
                    "overhead_pct": (ratio(t, base) - 1) * 100 if ok else float("nan"),
                    "cpu_overhead_pct": (ratio(t, base, cpu=True) - 1) * 100
                    if ok
                    else float("nan"),
                    "seconds": t.seconds,
                    "cpu_seconds": t.cpu_seconds,
                    "error": t.error,
                }
            )
        return out


def run_e2e(kind: str, size: int, runs: int, max_seconds: float = 900.0) -> E2EResult:
    workload = many_streams(kind, size, "1-4k")
    count = len(workload.pool) * workload.repeat
    truth = workload.truth
    with (
        local_server(kind, size, max_seconds) as base_url,
        httpx.Client(base_url=base_url, timeout=CLIENT_TIMEOUT, trust_env=False) as client,
    ):

        def make(per_stream: PerStream) -> Callable[[], Tally]:
            def run() -> Tally:
                parts = []
                nbytes = 0
                for i in range(count):
                    with client.stream("GET", f"/stream/{i}") as response:
                        parts.append(per_stream(response))
                        nbytes += response.num_bytes_downloaded
                if nbytes != truth.nbytes:
                    raise ValueError(f"read {nbytes} bytes, expected {truth.nbytes}")
                return _summed(parts)

            return run

        timed = [Timed(name, make(fn), truth) for name, fn in _variants(kind).items()]
        round_robin(timed, runs, progress=f"end to end ({kind})")
    return E2EResult(kind, truth.nbytes, count, timed, "httpx iter_bytes, no metering")
