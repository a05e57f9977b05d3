"""Soak test of the metering proxy under mixed upstream faults. Loopback only, bounded in time.

    python benches/soak.py                        # 60 s, 32 concurrent clients
    python benches/soak.py --seconds 10           # a quick run
    python benches/soak.py --seconds 300 --concurrency 64 --max-rss-growth-mb 24
    python benches/soak.py --hostile-share 0      # normal traffic only

The upstream is a ``ReplayServer`` (in this process) cycling through the recorded streams of
the bundled corpus (``tests/data/corpus``: OpenAI Chat, Completions and Responses, Anthropic,
Gemini, Cohere, Mistral, ...), each request drawing a fault from a fixed mix: clean streams,
connection drops (orderly close or reset) before the headers, between events and in the middle
of an event, truncated JSON, mid-stream error events, slow and byte-by-byte streams, a server
that stops sending (before or after its headers), HTML pages with status 200, 429 and 500
answers. The metering proxy runs in its own process (``serve_proxy``, as ``ssetally proxy``
runs it, with settings the command line has no flag for; JSONL sink in a temporary directory)
so that its RSS is its own; ``--concurrency`` asyncio clients stream
through it until ``--seconds`` have passed, then the proxy is stopped gracefully (its sink is
flushed) and everything is checked:

* **records lost**: streams through the proxy without a record (each stream that reached the
  upstream is matched to its record by the upstream's ``x-request-id``; the total number of
  records must equal the number of streams);
* **bytes altered**: streams whose received body differs from the bytes the upstream wrote
  (the replay server keeps the length and SHA-256 of every body it writes; error pages are
  compared with the same page fetched straight from the upstream);
* **wrong status**: records whose status disagrees with the status of the bytes the client
  received (read again here with ``UsageTap``), retrieved usage excepted: a Responses stream
  cut before its end may be ``completed`` by the response stored upstream;
* the proxy's RSS, sampled every ``--sample-every`` seconds, and its growth from the median of
  the first quarter of the samples to the median of the last quarter.

With ``--hostile-share`` (default 0.2) that share of the requests is hostile (``soak_hostile``):
upstream answers with a line past ``max_event_size``, decompression bombs in every supported
coding, truncated and undecodable compressed bodies, numbers no counter holds, hostile request
strings, two response ids, endless comments and streams past the deadline, event streams
labelled ``text/html`` or with error statuses; and client requests that try to leave the
upstream prefix or smuggle a request (CL+TE), while ``--slowloris`` connections send one header
byte a second. Every hostile answer must get a record that says what happened (and its bytes
pass unchanged), every hostile request a 400 and a closed connection, every slowloris
connection be closed within the header timeout; the normal streams are checked as above.

Exit status 1 when a record is lost, a byte altered, a status wrong, a hostile answer's record
untruthful, a hostile request not refused, a slowloris connection held past the header
timeout, or the RSS grows by more than ``--max-rss-growth-mb`` over the second half of the run
or, from the first quarter, by more than that plus ``--hostile-rss-allowance-mb`` (hostile
streams held at their limits raise the high-water mark of the heap, which malloc keeps).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

from ssetally._replay import ReplayServer, load_stream

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak_hostile as hostile  # the script's own directory
from soak_check import check, log_kind, outcome, print_result, quartile_growth
from soak_proxy import ROOT, proxy_env, start_proxy, stop_proxy
from soak_traffic import reference_pages, run_clients

CORPUS = ROOT / "tests" / "data" / "corpus"
#: Longest capture replayed (bytes): keeps byte-by-byte streams short.
MAX_CAPTURE = 24 * 1024


def captures() -> list[Path]:
    """The corpus streams replayed: every capture up to ``MAX_CAPTURE`` bytes."""
    files = [p for p in sorted(CORPUS.rglob("*")) if p.is_file() and p.name != "MANIFEST.md"]
    return [p for p in files if len(load_stream(p)) <= MAX_CAPTURE]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=60.0, help="how long clients stream")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent clients")
    parser.add_argument("--sample-every", type=float, default=2.0, help="RSS period (s)")
    parser.add_argument(
        "--warmup", type=float, default=3.0, help="seconds of streaming before RSS sampling"
    )
    parser.add_argument(
        "--max-rss-growth-mb",
        type=float,
        default=16.0,
        help="fail when the proxy's RSS grows more (last-quarter vs first-quarter median)",
    )
    parser.add_argument(
        "--hostile-rss-allowance-mb",
        type=float,
        default=128.0,
        help="with a hostile share, RSS may grow this much more from the first quarter: the "
        "high-water mark of hostile streams held at their limits (4 x 2 x 16 MiB)",
    )
    parser.add_argument("--read-timeout", type=float, default=2.0, help="the proxy's")
    parser.add_argument(
        "--hostile-share", type=float, default=0.2, help="share of hostile requests (0..1)"
    )
    parser.add_argument(
        "--slowloris", type=int, default=8, help="slowloris connections held open meanwhile"
    )
    parser.add_argument("--idle-timeout", type=float, default=3.0, help="the proxy's")
    parser.add_argument("--stream-deadline", type=float, default=8.0, help="the proxy's")
    parser.add_argument("--header-timeout", type=float, default=5.0, help="the proxy's")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.seconds <= 3600 or not 1 <= args.concurrency <= 512:
        parser.error("--seconds must be 1..3600 and --concurrency 1..512")
    if not 0.1 <= args.sample_every <= args.seconds:
        parser.error("--sample-every must be 0.1..--seconds")
    if not 0 <= args.hostile_share <= 1 or not 0 <= args.slowloris <= 256:
        parser.error("--hostile-share must be 0..1 and --slowloris 0..256")
    options = {
        "read_timeout": args.read_timeout,
        "idle_timeout": args.idle_timeout,
        "stream_deadline": args.stream_deadline,
        "header_timeout": args.header_timeout,
    }

    files = captures()
    with tempfile.TemporaryDirectory() as tmp, ReplayServer(
        streams=files, cycle=True, retry_after=1.0
    ) as upstream, hostile.Upstream(upstream.port) as front:  # fmt: skip
        sink = Path(tmp) / "usage.jsonl"
        pages = reference_pages(upstream)
        if args.hostile_share > 0:
            front.prepare()
        env = proxy_env(Path(tmp))
        log_path = Path(tmp) / "proxy.log"
        with log_path.open("wb") as log:
            proxy, port = start_proxy(front.origin, sink, options, env, log)
            try:
                streams, samples, held = asyncio.run(
                    run_clients(
                        port,
                        proxy.pid,
                        args.seconds,
                        args.concurrency,
                        args.sample_every,
                        args.warmup,
                        args.seed,
                        args.hostile_share,
                        args.slowloris if args.hostile_share > 0 else 0,
                    )
                )
            finally:
                code = stop_proxy(proxy)
        log_lines = log_path.read_text("utf-8", "replace").splitlines()
        lines = sink.read_text("utf-8").splitlines() if sink.exists() else []
        records = [json.loads(line) for line in lines]
        served = upstream.served
    bodies = {kind: front.body(kind) for kind in hostile.ANSWERS} if args.hostile_share else {}
    result = check(streams, records, served, pages, front.served, held, args.header_timeout, bodies)
    growth = quartile_growth(samples)
    # Hostile streams hold up to their limits (2 x max_event_size each) while they run; that
    # high-water mark stays in RSS (freed heap is kept by malloc), so with a hostile share a
    # leak shows as growth over the second half of the run, once the mark is reached.
    late_growth = quartile_growth(samples, first=2)
    allowance = args.hostile_rss_allowance_mb if args.hostile_share > 0 else 0.0
    result.update(
        seconds=args.seconds,
        concurrency=args.concurrency,
        captures=len(files),
        apis=sorted(Counter(r.get("api") for r in records if r.get("api")).items()),
        faults=sorted(Counter(s.fault for s in streams).items()),
        client_outcomes=sorted(Counter(outcome(s) for s in streams).items()),
        record_statuses=sorted(Counter(str(r.get("status")) for r in records).items()),
        usage_sources=sorted(Counter(str(r.get("usage_source")) for r in records).items()),
        rss_samples=[(round(t, 1), round(v, 1), n) for t, v, n in samples],
        rss_growth_mb=round(growth, 1),
        rss_late_growth_mb=round(late_growth, 1),
        max_rss_growth_mb=args.max_rss_growth_mb,
        hostile_rss_allowance_mb=allowance,
        proxy_exit=code,
        warmup=args.warmup,
        hostile_share=args.hostile_share,
        upstream_errors=sorted(Counter(front.errors).items()),
        proxy_log=sorted(Counter(log_kind(line) for line in log_lines).items()),
    )
    print_result(result, samples)
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n", encoding="utf-8")
    failed = (
        result["lost"]
        or result["altered"]
        or result["wrong_status"]
        or result["extra_records"]
        or result["hostile_untruthful"]
        or result["hostile_not_refused"]
        or result["slowloris_held_too_long"]
        or growth > args.max_rss_growth_mb + allowance
        or late_growth > args.max_rss_growth_mb
        or code != 0
    )
    print("FAIL" if failed else "PASS")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
