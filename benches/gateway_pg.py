"""The PostgreSQL sink mode of the gateway benchmark (``gateway.py --pg`` or ``--sink URL``).

The default ``ssetally proxy`` writes its records to PostgreSQL (``--pg``: a throwaway local
server, initialised and started the way the tests do it, ``tests/pg_server.py``; ``--sink``: the
server of that URL) while ``--pg-concurrency`` (default 500) closed-loop connections stream
through it. ``/metrics`` is polled every ``POLL_S`` for the sink's written, pending and
spool-depth figures. In steady state (the load at full concurrency: from one stream duration
after the start to one stream duration before the first connection ends) it compares the records
written per second with the streams finished per second, and reports the deepest spool. At the
end every record is read back from the table (by this run's instance id) and matched to the
streams: none lost, none twice, usage exact.

PASS when records are written at least as fast as streams finish (within ``RATE_TOLERANCE``: a
record is written a batch after its stream ends, so the window's two ends see slightly
different lags), nothing was spooled in steady state, and every record is there once with exact
usage.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import threading
import time
import urllib.request
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from gateway_harness import HERE, WARM_EVENTS, cpu_split, measure, start_upstream, stop
from gateway_paths import Ssetally
from gateway_report import check_records, level_figures

POLL_S = 0.25
RATE_TOLERANCE = 0.05
#: Shortest steady-state window that says anything (seconds); a shorter one fails the rate.
MIN_WINDOW_S = 2.0
#: Streams per connection (quick, full): the steady-state window is a few stream durations.
STREAMS = {"quick": 5, "full": 15}
_METRIC = re.compile(
    r'^(ssetally_sink_records_total\{[^}]*outcome="(\w+)"[^}]*\}|ssetally_sink_pending\{[^}]*\}|'
    r"ssetally_sink_spool_depth\{[^}]*\})\s+([0-9.eE+-]+)$",
    re.MULTILINE,
)


def scrape(port: int) -> dict[str, float]:
    """``written``, ``failed``, ``dropped``, ``spooled``, ``pending`` and ``spool_depth`` from
    the proxy's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read(4 * 1024 * 1024).decode("utf-8", "replace")
    out: dict[str, float] = {}
    for match in _METRIC.finditer(text):
        name, outcome, value = match.group(1), match.group(2), float(match.group(3))
        if outcome:
            out[outcome] = out.get(outcome, 0.0) + value
        elif name.startswith("ssetally_sink_pending"):
            out["pending"] = out.get("pending", 0.0) + value
        else:
            out["spool_depth"] = out.get("spool_depth", 0.0) + value
    return out


class Sampler(threading.Thread):
    """Polls ``/metrics`` until stopped: ``samples`` is a list of (monotonic time, figures)."""

    def __init__(self, port: int) -> None:
        super().__init__(daemon=True)
        self.port = port
        self.samples: list[tuple[float, dict[str, float]]] = []
        self.errors = 0
        self.halt = threading.Event()

    def run(self) -> None:
        while not self.halt.is_set():
            try:
                self.samples.append((time.monotonic(), scrape(self.port)))
            except (OSError, ValueError):
                self.errors += 1
            self.halt.wait(POLL_S)


def _records(url: str, instance_id: str) -> list[dict[str, Any]]:
    import psycopg
    from psycopg import sql

    table = parse_qs(urlsplit(url).query).get("table", ["ssetally_usage"])[0]
    clean = url.split("?", 1)[0]
    with psycopg.connect(clean, connect_timeout=10) as conn:
        rows = conn.execute(
            sql.SQL("SELECT record FROM {} WHERE instance_id = %s").format(sql.Identifier(table)),
            (instance_id,),
        ).fetchall()
    return [r[0] if isinstance(r[0], dict) else json.loads(r[0]) for r in rows]


def steady_state(
    samples: list[tuple[float, dict[str, float]]], ended: list[float], window: tuple[float, float]
) -> dict[str, Any]:
    """Rates over the samples inside ``window`` (monotonic seconds)."""
    inside = [(t, s) for t, s in samples if window[0] <= t <= window[1]]
    if len(inside) < 2:
        return {"window_s": 0.0, "samples": len(inside)}
    (a, first), (b, last) = inside[0], inside[-1]
    span = b - a
    streams = sum(1 for t in ended if a < t <= b)
    written = last.get("written", 0.0) - first.get("written", 0.0)
    return {
        "window_s": round(span, 2),
        "samples": len(inside),
        "streams_per_s": round(streams / span, 1),
        "records_written_per_s": round(written / span, 1),
        "max_spool_depth": max(s.get("spool_depth", 0.0) for _, s in inside),
        "max_pending": max(s.get("pending", 0.0) for _, s in inside),
        "spooled": last.get("spooled", 0.0) - first.get("spooled", 0.0),
    }


def pg_main(args: argparse.Namespace) -> int:
    mode = "quick" if args.quick else "full"
    server = None
    if args.sink:
        url = args.sink
    else:
        sys.path.insert(0, str(HERE.parent / "tests"))
        from pg_server import PgServer, find_binaries

        bindir = find_binaries()
        if bindir is None:
            print("PostgreSQL is not installed (initdb, pg_ctl): nothing measured", file=sys.stderr)
            return 2
        server = PgServer(bindir)
        server.start()
        url = server.url
    path_cpus, harness_cpus, pinning = cpu_split(not args.no_pin)
    if harness_cpus:
        import os

        os.sched_setaffinity(0, harness_cpus)
    c = args.pg_concurrency
    per_connection = args.streams or STREAMS[mode]
    duration = args.events * args.delay_ms / 1000
    upstream, up_port = start_upstream(args, harness_cpus)
    proxy = Ssetally("proxy-pg", sink=url)
    try:
        with tempfile.TemporaryDirectory(prefix="ssetally-gateway-pg-") as tmp:
            proxy.start(up_port, path_cpus, Path(tmp))
            try:
                warm = measure(proxy, min(16, c), 1, args, WARM_EVENTS)
                sampler = Sampler(proxy.port)
                sampler.start()
                start = time.monotonic()
                level = measure(proxy, c, per_connection, args)
                time.sleep(2.0)  # the last batches
                sampler.halt.set()
                sampler.join(10)
            finally:
                proxy.stop()
        first_end = min(level.ended) if level.ended else start
        window = (start + 2 * duration, first_end + (per_connection - 1) * duration)
        if window[1] - window[0] < 2 * duration:
            window = (start + duration, max(level.ended, default=start))
        steady = steady_state(sampler.samples, level.ended, window)
        expected = {sid: args.events for sid in level.ids}
        expected.update({sid: WARM_EVENTS for sid in warm.ids})
        records = check_records(_records(url, proxy.instance_id), expected)
    finally:
        stop(upstream)
        if server is not None:
            server.cleanup()
    rate, written = steady.get("streams_per_s"), steady.get("records_written_per_s")
    long_enough = steady["window_s"] >= MIN_WINDOW_S
    keeps_up = (
        long_enough
        and rate is not None
        and written is not None
        and written >= rate * (1 - RATE_TOLERANCE)
    )
    no_spool = steady.get("max_spool_depth") == 0 and steady.get("spooled") == 0
    exact = (
        records["lost"] == 0
        and records["duplicated"] == 0
        and records["exact_usage"] == records["streams"]
        and not level.failed
        and not warm.failed
    )
    result = {
        "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
        "concurrency": c,
        "streams_per_connection": per_connection,
        "pinning": pinning,
        "level": level_figures(level, None),
        "steady_state": steady,
        "records": records,
        "metrics_scrape_errors": sampler.errors,
        "verdicts": {
            "records_written_per_s_ge_stream_rate": keeps_up,
            "nothing_spooled_in_steady_state": no_spool,
            "every_record_once_with_exact_usage": exact,
        },
    }
    lines = [
        (
            f"PostgreSQL sink at C={c}: {level.streams} streams ({level.failed} failed) in "
            f"{level.wall_s:.1f} s; steady state {steady.get('window_s')} s: "
            f"{rate} streams/s, {written} records written/s, "
            f"spool depth max {steady.get('max_spool_depth')}, pending max {steady.get('max_pending')}"
        ),
        (
            f"records: {records['records']} for {records['streams']} streams, lost "
            f"{records['lost']}, duplicated {records['duplicated']}, exact usage "
            f"{records['exact_usage']}"
        ),
    ]
    if not long_enough:
        lines.append(
            f"(steady state shorter than {MIN_WINDOW_S:g} s: more --streams per connection)"
        )
    labels = {
        "records_written_per_s_ge_stream_rate": "records written per second >= streams per second",
        "nothing_spooled_in_steady_state": "nothing spooled in steady state",
        "every_record_once_with_exact_usage": "every stream's record there once, usage exact",
    }
    lines += [f"{'PASS' if ok else 'FAIL':>5}  {labels[k]}" for k, ok in result["verdicts"].items()]
    print("\n".join(lines))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.name}-pg.json").write_text(json.dumps(result, indent=2) + "\n", "utf-8")
    head = f"# Gateway benchmark, PostgreSQL sink\n\n{result['date']} · {pinning}\n\n"
    body = "\n".join(f"    {line}" for line in lines)
    (args.out / f"{args.name}-pg.md").write_text(head + body + "\n", "utf-8")
    print(f"wrote {args.out / (args.name + '-pg.json')} and {args.out / (args.name + '-pg.md')}")
    return 0 if keeps_up and no_spool and exact and not level.failed else 1
