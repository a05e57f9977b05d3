"""The PostgreSQL sink mode of the gateway benchmark (``gateway.py --pg`` or ``--sink URL``).

The default ``ssetally proxy`` writes its records to PostgreSQL (``--pg``: a throwaway local
server, initialised and started the way the tests do it, ``tests/pg_server.py``; ``--sink``: the
server of that URL) while ``--pg-concurrency`` (default 500) closed-loop connections stream
through it. A sampler process counts this run's rows in the table every ``POLL_S`` and scrapes
the sink's spool figures from ``/metrics``. In steady state (every connection busy: from the
end of the first round of streams to the end of the round before the last) it compares the
records written per second (rows in the table) with the streams finished per second, and
reports the deepest spool. At the end every record is read back from the table (by this run's
instance id) and matched to the streams: none lost, none twice, usage exact.

PASS when records are written at least as fast as streams finish (within ``RATE_TOLERANCE``: a
record is written a batch after its stream ends, so the window's two ends see slightly
different lags), nothing was spooled in steady state (by the scrapes inside the window; when
the saturated proxy answered too few of them, nothing in the whole run), and every record is
there once with exact usage.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
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


def scrape(port: int, timeout: float = 5.0) -> dict[str, float]:
    """``written``, ``failed``, ``dropped``, ``spooled``, ``pending`` and ``spool_depth`` from
    the proxy's ``/metrics``."""
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=timeout) as answer:
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


def _count_rows(url: str, instance_id: str) -> Any:
    import psycopg
    from psycopg import sql

    table = parse_qs(urlsplit(url).query).get("table", ["ssetally_usage"])[0]
    conn = psycopg.connect(url.split("?", 1)[0], connect_timeout=10, autocommit=True)
    query = sql.SQL("SELECT count(*) FROM {} WHERE instance_id = %s").format(sql.Identifier(table))
    return lambda: conn.execute(query, (instance_id,)).fetchone()[0]


def _poll(read: Any, halt: Any, samples: list[Any], errors: list[int]) -> None:
    while not halt.is_set():
        try:
            samples.append((time.monotonic(), read()))
        except Exception:  # noqa: BLE001 - a busy proxy or server: counted, polled again
            errors.append(1)
        halt.wait(POLL_S)


def _sample(port: int, url: str, instance_id: str, halt: Any, out: Any) -> None:
    rows: list[tuple[float, int]] = []
    metrics: list[tuple[float, dict[str, float]]] = []
    errors: list[int] = []
    count = _count_rows(url, instance_id)
    threads = [
        threading.Thread(target=_poll, args=(count, halt, rows, errors), daemon=True),
        threading.Thread(
            target=_poll, args=(lambda: scrape(port, 2.0), halt, metrics, errors), daemon=True
        ),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    out.send((rows, metrics, len(errors)))


class Sampler:
    """From a process of its own (the closed-loop client keeps this one's interpreter busy),
    until ``stop``: the rows of this run in the table (``rows``: monotonic time, count), and
    the proxy's sink figures on ``/metrics`` (``metrics``; a proxy saturated at C=500 answers
    some scrapes late: those are counted in ``errors``)."""

    def __init__(self, port: int, url: str, instance_id: str) -> None:
        context = multiprocessing.get_context("spawn")
        self.rows: list[tuple[float, int]] = []
        self.metrics: list[tuple[float, dict[str, float]]] = []
        self.errors = 0
        self._halt = context.Event()
        self._answer, send = context.Pipe(duplex=False)
        self._process = context.Process(
            target=_sample, args=(port, url, instance_id, self._halt, send)
        )

    def start(self) -> None:
        self._process.start()

    def stop(self, timeout: float = 20.0) -> None:
        self._halt.set()
        if self._answer.poll(timeout):
            self.rows, self.metrics, self.errors = self._answer.recv()
        self._process.join(5)
        if self._process.is_alive():
            self._process.kill()


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
    sampler: Sampler, ended: list[float], window: tuple[float, float]
) -> dict[str, Any]:
    """Rates inside ``window`` (monotonic seconds): rows written per second from the table,
    streams finished per second from the client, the spool from ``/metrics``."""
    inside = [(t, n) for t, n in sampler.rows if window[0] <= t <= window[1]]
    if len(inside) < 2:
        return {"window_s": 0.0, "samples": len(inside)}
    (a, first), (b, last) = inside[0], inside[-1]
    span = b - a
    streams = sum(1 for t in ended if a < t <= b)
    scraped = [s for t, s in sampler.metrics if window[0] <= t <= window[1]]
    return {
        "window_s": round(span, 2),
        "samples": len(inside),
        "streams_per_s": round(streams / span, 1),
        "records_written_per_s": round((last - first) / span, 1),
        "metrics_samples": len(scraped),
        "max_spool_depth": max((s.get("spool_depth", 0.0) for s in scraped), default=None),
        "max_pending": max((s.get("pending", 0.0) for s in scraped), default=None),
        "spooled": scraped[-1].get("spooled", 0.0) - scraped[0].get("spooled", 0.0)
        if len(scraped) >= 2
        else None,
    }


def steady_window(
    ended: list[float], c: int, per_connection: int, start: float, duration: float
) -> tuple[float, float]:
    """From the end of the first round of streams (every connection busy since) to the end
    of the round before the last (connections start to finish theirs): measured on the
    stream ends, so a proxy slower than the nominal stream duration still gets its window."""
    ends = sorted(ended)
    if per_connection >= 3 and len(ends) >= c * per_connection:
        return ends[c - 1], ends[(per_connection - 1) * c - 1]
    return start + duration, max(ends, default=start)


def _final_scrape(port: int) -> dict[str, float]:
    """The sink's figures once the load is over (tried for up to 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            return scrape(port)
        except (OSError, ValueError):
            if time.monotonic() > deadline:
                return {}
            time.sleep(0.5)


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
                sampler = Sampler(proxy.port, url, proxy.instance_id)
                sampler.start()
                start = time.monotonic()
                level = measure(proxy, c, per_connection, args)
                time.sleep(2.0)  # the last batches
                sampler.stop()
                final = _final_scrape(proxy.port)
            finally:
                proxy.stop()
        window = steady_window(level.ended, c, per_connection, start, duration)
        steady = steady_state(sampler, level.ended, window)
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
    if steady.get("spooled") is not None:
        no_spool = steady.get("max_spool_depth") == 0 and steady.get("spooled") == 0
    else:  # too few scrapes answered in the window: nothing spooled in the whole run, then
        no_spool = final.get("spooled") == 0 and final.get("spool_depth") == 0
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
        "table_samples": len(sampler.rows),
        "metrics_samples": len(sampler.metrics),
        "sink_after_the_load": final,
        "window_from_start_s": [round(t - start, 2) for t in window],
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
            f"sink after the load: written {final.get('written')}, spooled {final.get('spooled')}, "
            f"failed {final.get('failed')}, dropped {final.get('dropped')}"
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
        "records_written_per_s_ge_stream_rate": (
            f"records written per second ({written}) >= the proxy's stream rate at C={c} "
            f"({rate} streams/s, {RATE_TOLERANCE:.0%} allowed for the batch lag)"
        ),
        "nothing_spooled_in_steady_state": (
            f"nothing spooled in steady state (spooled {steady.get('spooled')}, spool depth max "
            f"{steady.get('max_spool_depth')}; whole run: {final.get('spooled')})"
        ),
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
