"""The soak's verdict (``soak.py``): streams matched to their records and to the bytes the
upstream wrote, hostile answers and requests checked, RSS growth, and the printed summary."""

from __future__ import annotations

import hashlib
import os
import statistics
from collections import Counter
from typing import Any

import soak_hostile as hostile  # the script's own directory
from soak_traffic import PAGE_FAULTS, PAGE_STATUS, Stream
from ssetally._replay import Served


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


def log_kind(line: str) -> str:
    """A proxy log line without what differs between requests."""
    if "failed:" in line:
        line = line.split("failed:", 1)[1]
    return line.split(":", 1)[0].strip()[:60] or "(blank)"


def outcome(s: Stream) -> str:
    if s.status is None:
        return f"no answer: {s.error}"
    what = f"http {s.status}" + ("" if s.event_stream or s.status != 200 else " (not a stream)")
    return f"{what}, cut: {s.error}" if s.error else what


def print_result(r: dict[str, Any], samples: list[tuple[float, float, int]]) -> None:
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
