"""Figures, targets and the side-by-side table of the gateway benchmark.

``summarise`` turns the client's ``Level``s into per-path, per-concurrency figures (added delay
per chunk = the path's percentile minus the direct path's same percentile at the same
concurrency); ``check_records`` matches a proxy's records to the streams run through it;
``targets`` evaluates the targets of the data-plane issue; ``markdown`` renders the table.
"""

from __future__ import annotations

import json
import math
import statistics
from collections import Counter
from collections.abc import Iterable, Mapping
from typing import Any

from gateway_client import Level
from gateway_upstream import stream_number, usage_prompt

#: Added p99 per chunk past which a load counts as too much (the table's last column), ms.
P99_CEILING_MS = 50.0


def percentile_ms(values: list[int], p: float) -> float | None:
    """Nearest-rank percentile of nanosecond values, in ms; None when there are none."""
    if not values:
        return None
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k] / 1e6


def _round(value: float | None, digits: int = 3) -> float | None:
    return None if value is None else round(value, digits)


def _minus(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def level_figures(level: Level, direct: Level | None) -> dict[str, Any]:
    """One path at one concurrency."""
    fig: dict[str, Any] = {
        "streams": level.streams,
        "failed": level.failed,
        "chunks": level.chunks,
        "wall_s": round(level.wall_s, 3),
        "chunks_per_s": round(level.chunks / level.wall_s) if level.wall_s else None,
        "streams_per_s": round(level.streams / level.wall_s, 1) if level.wall_s else None,
        "bytes": level.bytes,
        "altered": level.altered,
        "unhashed": level.unhashed,
        "errors": dict(level.errors),
    }
    for p in (50, 90, 99):
        fig[f"delay_p{p}_ms"] = _round(percentile_ms(level.delays_ns, p))
    fig["delay_max_ms"] = _round(max(level.delays_ns) / 1e6) if level.delays_ns else None
    fig["ttft_p50_ms"] = _round(percentile_ms(level.ttft_ns, 50))
    fig["ttft_p99_ms"] = _round(percentile_ms(level.ttft_ns, 99))
    if direct is not None:
        for p in (50, 90, 99):
            fig[f"added_p{p}_ms"] = _round(
                _minus(percentile_ms(level.delays_ns, p), percentile_ms(direct.delays_ns, p))
            )
        fig["added_ttft_p50_ms"] = _round(
            _minus(percentile_ms(level.ttft_ns, 50), percentile_ms(direct.ttft_ns, 50))
        )
    if level.load_cpu_s is not None and level.wall_s:
        # Near 1.0 the client and the mock saturate their CPU: the level measures them too.
        fig["load_generator_cpu_share"] = round(level.load_cpu_s / level.wall_s, 3)
    if level.cpu_s is not None:
        fig["cpu_s"] = round(level.cpu_s, 3)
        fig["cpu_s_per_1000_chunks"] = (
            round(level.cpu_s / level.chunks * 1000, 4) if level.chunks else None
        )
        fig["cpu_share_of_one_core"] = (
            round(level.cpu_s / level.wall_s, 3) if level.wall_s else None
        )
    return fig


def path_figures(
    levels: list[Level],
    direct: dict[int, Level],
    warm: Level | None = None,
    rounds: Iterable[Level] = (),
) -> dict[str, Any]:
    """Every concurrency of one path, and its totals (streams, failures and fidelity count the
    warm-up streams and those of the CPU rounds too: they went through the path like the
    others)."""
    per_c = {lv.concurrency: level_figures(lv, direct.get(lv.concurrency)) for lv in levels}
    chunks = sum(lv.chunks for lv in levels)
    cpu = [lv.cpu_s for lv in levels if lv.cpu_s is not None]
    every = levels + ([warm] if warm is not None else []) + list(rounds)
    out: dict[str, Any] = {
        "levels": per_c,
        "streams": sum(lv.streams for lv in every),
        "failed": sum(lv.failed for lv in every),
        "attempted": sum(lv.streams + lv.failed for lv in every),
        "altered": sum(lv.altered + lv.unhashed for lv in every),
        "chunks": chunks,
    }
    if cpu and chunks:
        out["cpu_s_per_1000_chunks"] = round(sum(cpu) / chunks * 1000, 4)
        ranges = [
            f["cpu_s_per_1000_chunks"] for f in per_c.values() if f.get("cpu_s_per_1000_chunks")
        ]
        out["cpu_s_per_1000_chunks_range"] = [min(ranges), max(ranges)] if ranges else None
    passing = [
        f["chunks_per_s"]
        for f in per_c.values()
        if f.get("added_p99_ms") is not None
        and f["added_p99_ms"] <= P99_CEILING_MS
        and f.get("chunks_per_s")
        and not f["failed"]
    ]
    out["chunks_per_s_below_ceiling"] = max(passing) if passing else None
    top = max(per_c) if per_c else None
    out["ceiling_not_reached"] = bool(
        top is not None
        and per_c[top].get("added_p99_ms") is not None
        and per_c[top]["added_p99_ms"] <= P99_CEILING_MS
    )
    return out


def check_records(
    records: Iterable[Mapping[str, Any]], streams: Mapping[str, int]
) -> dict[str, Any]:
    """Match records to streams. ``streams`` maps each stream id the client saw through the
    path to its content chunk count; a record belongs to a stream by its ``response_id``. Exact
    usage: input, output and total tokens as the mock sent them, from the stream itself."""
    by_id: Counter[str] = Counter()
    exact = 0
    total = 0
    for record in records:
        total += 1
        sid = str(record.get("response_id") or "")
        by_id[sid] += 1
        if sid not in streams or by_id[sid] > 1:
            continue
        n = stream_number(sid.encode())
        usage = record.get("usage") or {}
        if (
            n is not None
            and usage.get("input_tokens") == usage_prompt(n)
            and usage.get("output_tokens") == streams[sid]
            and usage.get("total_tokens") == usage_prompt(n) + streams[sid]
            and usage.get("source") == "stream"
            and record.get("status") == "completed"
        ):
            exact += 1
    return {
        "records": total,
        "streams": len(streams),
        "lost": sum(1 for sid in streams if not by_id[sid]),
        "duplicated": sum(1 for sid in streams if by_id[sid] > 1),
        "unmatched": sum(c for sid, c in by_id.items() if sid not in streams),
        "exact_usage": exact,
    }


def read_jsonl(path: Any) -> list[dict[str, Any]]:
    """The records of a JSONL sink (a torn last line is counted as unreadable, not fatal)."""
    out: list[dict[str, Any]] = []
    try:
        text = path.read_text("utf-8")
    except OSError:
        return out
    for line in text.splitlines():
        try:
            out.append(json.loads(line))
        except ValueError:
            out.append({"response_id": None, "unreadable": True})
    return out


# --------------------------------------------------------------------------- targets


def _verdict(ok: bool | None) -> str:
    return "n/a" if ok is None else ("PASS" if ok else "FAIL")


def _at(paths: Mapping[str, Any], path: str, c: int, key: str) -> float | None:
    value = ((paths.get(path) or {}).get("levels") or {}).get(c, {}).get(key)
    return None if value is None else float(value)


def cpu_ratio(results: Mapping[str, Any], a: str, b: str) -> tuple[float, str] | None:
    """CPU per chunk of path ``a`` over path ``b``, and how it was taken: the median of the
    ratios within the paired CPU rounds when there are some (two paths measured one after the
    other, so that a slow moment of a shared machine weighs on both), else the ratio of their
    totals over all levels."""
    rounds = (results.get("cpu_rounds") or {}).get("cpu_s_per_1000_chunks") or {}
    pairs = [
        x / y
        for x, y in zip(rounds.get(a) or (), rounds.get(b) or ())
        if x is not None and y is not None and math.isfinite(x) and math.isfinite(y) and y > 0
    ]
    if pairs:
        c = results["cpu_rounds"]["concurrency"]
        spread = f"{min(pairs):.2f}-{max(pairs):.2f}"
        how = f"median of {len(pairs)} paired rounds at C={c}, each {spread}x"
        return statistics.median(pairs), how
    ca = ((results.get("paths") or {}).get(a) or {}).get("cpu_s_per_1000_chunks")
    cb = ((results.get("paths") or {}).get(b) or {}).get("cpu_s_per_1000_chunks")
    if ca and cb:
        return ca / cb, f"{ca:.3f} vs {cb:.3f} s, all levels"
    return None


def targets(results: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The issue's targets, each ``{"target", "value", "verdict"}``."""
    paths = results["paths"]
    rows: list[dict[str, Any]] = []

    def add(target: str, value: str, ok: bool | None) -> None:
        rows.append({"target": target, "value": value, "verdict": _verdict(ok)})

    proxy = paths.get("proxy") or {}
    nginx = paths.get("nginx") or {}
    pc, nc = proxy.get("cpu_s_per_1000_chunks"), nginx.get("cpu_s_per_1000_chunks")
    ratio = cpu_ratio(results, "proxy", "nginx")
    if ratio is not None:
        value = f"{ratio[0]:.2f}x ({ratio[1]}"
        if pc and nc:
            value += f"; all levels: {pc / nc:.2f}x, {pc:.3f} vs {nc:.3f} s"
        add("proxy CPU per 1,000 chunks <= 2x nginx", value + ")", ratio[0] <= 2)
        add("(moonshot) proxy CPU <= 1.2x nginx", f"{ratio[0]:.2f}x", ratio[0] <= 1.2)
    else:
        add("proxy CPU per 1,000 chunks <= 2x nginx", "nginx or the proxy did not run", None)
    for c, limit in ((200, 10.0), (500, 50.0)):
        value = _at(paths, "proxy", c, "added_p99_ms")
        add(
            f"proxy added p99 per chunk <= {limit:g} ms at C={c}",
            "not run" if value is None else f"{value:.1f} ms",
            None if value is None else value <= limit,
        )
    ttft = _at(paths, "proxy", 1, "added_ttft_p50_ms")
    add(
        "proxy added TTFT p50 <= 2 ms at C=1",
        "not run" if ttft is None else f"{ttft:.2f} ms",
        None if ttft is None else ttft <= 2.0,
    )
    for other, label in (("inject-usage", "--inject-usage"), ("no-metering", "metering off")):
        ratio = cpu_ratio(results, other, "proxy")
        if ratio is not None:
            # --inject-usage may cost 10% more than the plain proxy; the proxy metering may
            # cost 10% more than the proxy not metering (off / on >= 1 / 1.10).
            ok = ratio[0] <= 1.10 if other == "inject-usage" else ratio[0] * 1.10 >= 1
            add(
                f"{label}: CPU per 1,000 chunks within 10% of "
                + ("the plain proxy" if other == "inject-usage" else "metering on"),
                f"{ratio[0]:.2f}x the plain proxy ({ratio[1]})",
                ok,
            )
        else:
            note = (results.get("notes") or {}).get(other) or "did not run"
            add(f"{label}: within 10% of the plain proxy", f"not measurable: {note}", None)
    checked = [name for name, p in paths.items() if name != "litellm" and p.get("attempted")]
    attempted = sum(paths[n]["attempted"] for n in checked)
    good = sum(paths[n]["streams"] - paths[n]["altered"] for n in checked)
    add(
        "byte fidelity on 100% of streams (every path but LiteLLM)",
        f"{good}/{attempted} streams complete and identical",
        good == attempted and attempted > 0,
    )
    # A stream that failed has no exact usage either: the target counts every stream run.
    metered = [n for n in checked if paths[n].get("records")]
    exact = sum(paths[n]["records"]["exact_usage"] for n in metered)
    want = sum(paths[n]["attempted"] for n in metered)
    add(
        "exact usage on 100% of streams (the proxy's records)",
        f"{exact}/{want}" if metered else "no proxy ran",
        (exact == want and want > 0) if metered else None,
    )
    workers = (paths.get("workers-2") or {}).get("records")
    if workers:
        add(
            "no record lost or duplicated with --workers 2",
            f"lost {workers['lost']}, duplicated {workers['duplicated']} "
            f"of {workers['streams']} streams",
            workers["lost"] == 0 and workers["duplicated"] == 0 and workers["streams"] > 0,
        )
    else:
        note = (results.get("notes") or {}).get("workers-2") or "did not run"
        add("no record lost or duplicated with --workers 2", f"not measurable: {note}", None)
    return rows


# --------------------------------------------------------------------------- rendering


def _ms(value: Any) -> str:
    return "-" if value is None else f"{value:.1f}"


def table(results: Mapping[str, Any]) -> str:
    """The side-by-side table, markdown."""
    cs = results["concurrency"]
    head = (
        "| path | CPU s per 1,000 chunks | "
        + " | ".join(f"added p99 per chunk, C={c} (ms)" for c in cs)
        + " | TTFT p50, C=1 (ms) | chunks/s before added p99 passes 50 ms "
        "| fidelity | exact usage |"
    )
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for name, p in results["paths"].items():
        levels = p["levels"]
        cpu = p.get("cpu_s_per_1000_chunks_range")
        cpu_cell = (
            "-"
            if not cpu
            else (f"{cpu[0]:.3f}" if cpu[0] == cpu[1] else f"{cpu[0]:.3f}-{cpu[1]:.3f}")
        )
        if name == "direct":
            delays = [f"({_ms(levels.get(c, {}).get('delay_p99_ms'))} absolute)" for c in cs]
        else:
            delays = [_ms(levels.get(c, {}).get("added_p99_ms")) for c in cs]
        ttft = levels.get(1, {}).get("ttft_p50_ms")
        ttft_cell = _ms(ttft)
        added = levels.get(1, {}).get("added_ttft_p50_ms")
        if added is not None and name != "direct":
            ttft_cell += f" ({added:+.2f})"
        rate = p.get("chunks_per_s_below_ceiling")
        rate_cell = (
            "-" if rate is None else (("> " if p.get("ceiling_not_reached") else "") + f"{rate:,}")
        )
        if name == "direct":
            rate_cell = f"{max((f.get('chunks_per_s') or 0) for f in levels.values()):,} (the load)"
        fidelity = f"{p['streams'] - p['altered']}/{p['attempted']}"
        rec = p.get("records")
        usage = "-" if not rec else f"{rec['exact_usage']}/{p['attempted']}"
        lines.append(
            f"| {name} | {cpu_cell} | "
            + " | ".join(delays)
            + f" | {ttft_cell} | {rate_cell} | {fidelity} | {usage} |"
        )
    return "\n".join(lines)


def markdown(results: Mapping[str, Any]) -> str:
    """The whole report: set-up, table, targets, notes."""
    m = results["machine"]
    out = [
        "# Gateway benchmark",
        "",
        (
            f"{results['date']} · {m['cpu']} ({m['cpus']} CPUs) · Python {m['python']} · "
            f"load average {m['load_average']:.2f} at start · {results['mode']} mode"
        ),
        "",
        f"Mock upstream: {results['events']} chat chunks of ~{results['chunk_bytes']} B, "
        f"{results['delay_ms']:g} ms apart, with usage; closed-loop client at C = "
        + ", ".join(str(c) for c in results["concurrency"])
        + f" (streams per connection: {results['streams_per_connection']}). "
        + results["pinning"]
        + _rounds_sentence(results),
        "",
        table(results),
        "",
        "| target | measured | verdict |",
        "|---|---|---|",
    ]
    out += [f"| {t['target']} | {t['value']} | {t['verdict']} |" for t in results["targets"]]
    notes = results.get("notes") or {}
    if notes:
        out += ["", "Notes:", ""] + [f"* {k}: {v}" for k, v in notes.items()]
    return "\n".join(out) + "\n"


def _rounds_sentence(results: Mapping[str, Any]) -> str:
    rounds = results.get("cpu_rounds")
    if not rounds:
        return ""
    n = max((len(v) for v in rounds["cpu_s_per_1000_chunks"].values()), default=0)
    names = ", ".join(rounds["cpu_s_per_1000_chunks"])
    return (
        f" The CPU targets compare {names} in {n} paired rounds at C={rounds['concurrency']} "
        f"({rounds['streams_per_connection']} streams per connection; the paths one after the "
        "other, their order turning): the median of the ratios within a round."
    )
