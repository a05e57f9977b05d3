"""Turns the collected results into target verdicts and a markdown report.

``results`` is the plain dict ``run.py`` writes to ``results.json``; everything here reads
that dict only, so a report can be rebuilt from a saved ``results.json``.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Iterable, Sequence
from typing import Any

EVENT_REF = "ssetally.decoder"
USAGE_REF = "ssetally.usagetap"
USAGE_REF_FALLBACK = "ssetally.decoder+orjson"

PASS, FAIL, NOT_RUN = "PASS", "FAIL", "NOT RUN"


def _missing(x: float | None) -> bool:
    return x is None or math.isnan(x)


def _fmt(x: float | None, digits: int = 1) -> str:
    if x is None or math.isnan(x):
        return "—"
    return f"{x:,.{digits}f}"


def _ratio(x: float | None) -> str:
    return "—" if x is None or math.isnan(x) else f"{x:.2f}x"


def _row(main_kind: dict[str, Any], key: str) -> dict[str, Any] | None:
    return next((r for r in main_kind["rows"] if r["key"] == key), None)


def _same_run_ratio(slow: dict[str, Any], fast: dict[str, Any]) -> float:
    """Median of per-repetition ``slow / fast`` times."""
    pairs = [s / f for s, f in zip(slow["seconds"], fast["seconds"]) if f > 0]
    if not pairs or slow.get("error") or fast.get("error"):
        return math.nan
    return float(statistics.median(pairs))


def usage_ref(main_kind: dict[str, Any]) -> str:
    row = _row(main_kind, USAGE_REF)
    return USAGE_REF if row is not None and not row.get("error") else USAGE_REF_FALLBACK


# --------------------------------------------------------------------------- targets


def _target(
    name: str,
    kind: str,
    value: float,
    threshold: float,
    note: str = "",
    higher_is_better: bool = True,
) -> dict[str, Any]:
    if math.isnan(value):
        status = NOT_RUN
    elif higher_is_better:
        status = PASS if value >= threshold else FAIL
    else:
        status = PASS if value <= threshold else FAIL
    return {
        "target": name,
        "corpus": kind,
        "value": value,
        "threshold": threshold,
        "status": status,
        "note": note,
    }


def _speedup(main: dict[str, Any], kind: str, fast: str, slow: str) -> float:
    if kind not in main:
        return math.nan
    f, s = _row(main[kind], fast), _row(main[kind], slow)
    return math.nan if f is None or s is None else _same_run_ratio(s, f)


def _sweep(points: Sequence[dict[str, Any]], key: str) -> list[dict[str, Any]]:
    return sorted(
        (p for p in points if p["key"] == key and not p.get("error")), key=lambda p: p["x"]
    )


def flatness(points: Sequence[dict[str, Any]], key: str, min_read: int = 1) -> float:
    """max / min of time per event over reads of at least ``min_read`` bytes."""
    vals = [p["ns_per_event"] for p in _sweep(points, key) if p["x"] >= min_read]
    return max(vals) / min(vals) if len(vals) >= 2 else math.nan


def noop_floor(points: Sequence[dict[str, Any]], key: str, calls: dict[str, float]) -> float:
    """What 1-byte reads cost per event before any parsing (one no-op Python method call per
    byte), over the parser's best time per event at any read size."""
    noop = calls.get("Python no-op method call (reference)")
    sweep = _sweep(points, key)
    if noop is None or not sweep:
        return math.nan
    bytes_per_event = sweep[0]["nbytes"] / sweep[0]["events"]
    return noop * bytes_per_event / min(p["ns_per_event"] for p in sweep)


def loglog_slope(points: Sequence[dict[str, Any]], key: str, min_bytes: int) -> float:
    """Least-squares slope of log(time) against log(bytes): 1.0 is linear."""
    pts = [
        (math.log(p["nbytes"]), math.log(p["median_s"]))
        for p in _sweep(points, key)
        if p["x"] >= min_bytes
    ]
    if len(pts) < 2:
        return math.nan
    mx = sum(x for x, _ in pts) / len(pts)
    my = sum(y for _, y in pts) / len(pts)
    den = sum((x - mx) ** 2 for x, _ in pts)
    return sum((x - mx) * (y - my) for x, y in pts) / den if den else math.nan


def per_byte_drift(points: Sequence[dict[str, Any]], key: str, from_size: int) -> float:
    """Cost per byte on the largest stream / on the first stream sized at least ``from_size``
    (the nominal size asked of the generator)."""
    pts = [p for p in _sweep(points, key) if p["x"] >= from_size]
    return pts[-1]["ns_per_byte"] / pts[0]["ns_per_byte"] if len(pts) >= 2 else math.nan


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    main = results.get("main", {})
    out: list[dict[str, Any]] = []
    for kind in main:
        out.append(
            _target(
                "event: ssetally EventSource ≥10x httpx-sse EventSource",
                kind,
                _speedup(main, kind, "ssetally.eventsource", "httpx-sse.eventsource"),
                10.0,
                "both over the same in-memory httpx.Response",
            )
        )
        out.append(
            _target(
                "event: ssetally SSEDecoder ≥10x httpx-sse decoders",
                kind,
                _speedup(main, kind, "ssetally.decoder", "httpx-sse.decoders"),
                10.0,
                "bare decoders, no httpx.Response",
            )
        )
        out.append(
            _target(
                "event: ssetally SSEDecoder ≥5x openai 3.x SSEDecoder",
                kind,
                _speedup(main, kind, "ssetally.decoder", "openai3.decoder"),
                5.0,
            )
        )
    tap_ran = any(r["key"] == USAGE_REF for data in main.values() for r in data["rows"])
    why = "" if tap_ran else "UsageTap not importable in this build"
    for kind in main:
        must = kind in ("chat", "chat-noobf", "responses", "responses-tools")
        tag = "" if must else " (informational)"
        out.append(
            _target(
                f"usage: UsageTap ≥30x httpx-sse EventSource + json.loads{tag}",
                kind,
                _speedup(main, kind, USAGE_REF, "httpx-sse.eventsource+json"),
                30.0,
                why,
            )
        )
        out.append(
            _target(
                "usage: UsageTap ≥1.5x pure-Python usage scan",
                kind,
                _speedup(main, kind, USAGE_REF, "pyscan.usage"),
                1.5,
                why,
            )
        )
        # The floor of any per-read call: UsageTap's time over bytes.count's.
        out.append(
            _target(
                'usage: UsageTap within 1.5x of bytes.count(b"\\n") per read',
                kind,
                _speedup(main, kind, "floor.newlines", USAGE_REF),
                1.5,
                why,
                higher_is_better=False,
            )
        )
    reads = results.get("read_sweep", [])
    for key, label in ((EVENT_REF, "SSEDecoder"), (USAGE_REF, "UsageTap")):
        out.append(
            _target(
                f"read size: {label} time/event flat 1 B…1 MiB within 3x",
                "chat",
                flatness(reads, key),
                3.0,
                "1-byte reads are bound by the per-call cost (see call table)",
                higher_is_better=False,
            )
        )
        for floor in (16, 256):
            out.append(
                _target(
                    f"read size: {label} time/event flat {floor} B…1 MiB within 3x (informational)",
                    "chat",
                    flatness(reads, key, floor),
                    3.0,
                    higher_is_better=False,
                )
            )
        out.append(
            _target(
                f"read size: floor for any parser called per read: a no-op Python"
                f" call per byte ÷ {label}'s best time/event (informational)",
                "chat",
                noop_floor(reads, key, results.get("call_overhead_ns", {})),
                3.0,
                "above 3 the 1-byte target cannot hold: the interpreter's own call"
                " costs more than that, before any parsing",
                higher_is_better=False,
            )
        )
    sizes = results.get("size_sweep", [])
    for key, label in ((EVENT_REF, "SSEDecoder"), (USAGE_REF, "UsageTap")):
        drift = per_byte_drift(sizes, key, 1_000_000)
        slope = loglog_slope(sizes, key, 1_000_000)
        out.append(
            _target(
                f"size: {label} cost linear (ns/byte largest ÷ 1 MB within 1.5x)",
                "chat",
                drift,
                1.5,
                f"log-log slope from 1 MB up: {slope:.3f}",
                higher_is_better=False,
            )
        )
    return out


# --------------------------------------------------------------------------- markdown


def _table(header: Sequence[str], rows: Iterable[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


def main_tables(results: dict[str, Any]) -> str:
    main = results.get("main", {})
    big = {r["key"]: r for r in results.get("big_run", {}).get("rows", [])}
    big_kind = results.get("big_run", {}).get("kind")
    parts: list[str] = []
    for kind, data in main.items():
        uref = usage_ref(data)
        refs = {"event": _row(data, EVENT_REF), "usage": _row(data, uref)}
        rows = []
        for r in data["rows"]:
            ref = refs[r["mode"]]
            ratio = math.nan if ref is None else _same_run_ratio(r, ref)
            rss = big.get(r["key"], {}).get("peak_extra_mb") if kind == big_kind else None
            rows.append(
                [
                    r["label"],
                    r["mode"],
                    f"{_fmt(r['mb_s'])} ({_fmt(r['mb_s_min'])}–{_fmt(r['mb_s_max'])})",
                    _fmt(r["kev_s"]),
                    _ratio(ratio),
                    "—" if rss is None else _fmt(rss),
                    r["error"] or "ok",
                ]
            )
        parts.append(
            f"### Corpus `{kind}`: {data['nbytes'] / 1e6:.1f} MB, {data['streams']} streams, "
            f"{data['events']:,} events, {data['reads']:,} reads (1–4 KiB)\n\n"
            f'"ssetally ×" = how many times faster the ssetally reference is (median of '
            f"same-repetition ratios); reference: `{EVENT_REF}` in event mode, `{uref}` in "
            f"usage mode.\n\n"
            + _table(
                [
                    "parser",
                    "mode",
                    "MB/s median (min–max)",
                    "k events/s",
                    "ssetally ×",
                    f"peak RSS Δ MB ({big_kind} big run)",
                    "check",
                ],
                rows,
            )
        )
    return "\n\n".join(parts)


def target_table(rows: Sequence[dict[str, Any]]) -> str:
    return _table(
        ["target", "corpus", "measured", "threshold", "status", "note"],
        (
            [
                t["target"],
                t["corpus"],
                _fmt(t["value"], 2),
                _fmt(t["threshold"], 1),
                f"**{t['status']}**",
                t["note"],
            ]
            for t in rows
        ),
    )


def sweep_tables(results: dict[str, Any]) -> str:
    out: list[str] = []
    sizes = results.get("size_sweep", [])
    if sizes:
        keys = list(dict.fromkeys(p["key"] for p in sizes))
        xs = sorted({p["x"] for p in sizes})
        rows = []
        for x in xs:
            cells = [_fmt(next((p["nbytes"] for p in sizes if p["x"] == x), math.nan) / 1e6, 3)]
            for k in keys:
                p = next((p for p in sizes if p["x"] == x and p["key"] == k), None)
                cells.append(
                    "—"
                    if p is None or p.get("error")
                    else f"{_fmt(p['median_s'] * 1e6, 0)} µs · {_fmt(p['ns_per_byte'], 3)}"
                )
            rows.append(cells)
        out.append(
            "### Cost against stream size (one chat stream, 1–4 KiB reads)\n\n"
            "Each cell: time for the whole stream · ns per byte.\n\n"
            + _table(["stream MB", *keys], rows)
        )
    reads = results.get("read_sweep", [])
    if reads:
        keys = list(dict.fromkeys(p["key"] for p in reads))
        xs = sorted({p["x"] for p in reads})
        rows = []
        for x in xs:
            cells = [f"{x:,} B"]
            for k in keys:
                p = next((p for p in reads if p["x"] == x and p["key"] == k), None)
                cells.append(
                    "—"
                    if p is None or p.get("error")
                    else f"{_fmt(p['ns_per_event'] / 1e3, 3)} µs · {_fmt(p['ns_per_read'], 0)} ns"
                )
            rows.append(cells)
        out.append(
            "### Time per event against read size (one chat stream)\n\n"
            "Each cell: µs per event · ns per read (feed call).\n\n"
            + _table(["read size", *keys], rows)
        )
    calls = results.get("call_overhead_ns", {})
    if calls:
        out.append(
            "### Fixed cost of one call (timeit, best of 5)\n\n"
            + _table(["call", "ns per call"], ([k, _fmt(v, 0)] for k, v in calls.items()))
        )
    return "\n\n".join(out)


def big_table(results: dict[str, Any]) -> str:
    big = results.get("big_run")
    if not big:
        return ""
    rows = [
        [r["label"], r["mode"], _fmt(r["mb_s"]), _fmt(r["peak_extra_mb"]), r["error"] or "ok"]
        for r in big["rows"]
    ]
    return (
        f"### Big run: one `{big['kind']}` stream of {big['nbytes'] / 1e6:,.0f} MB, "
        f"a fresh process per parser\n\n"
        "Peak RSS Δ = peak resident memory while parsing minus resident memory just "
        "before (the input reads already loaded); single run.\n\n"
        + _table(["parser", "mode", "MB/s", "peak RSS Δ MB", "check"], rows)
    )


def e2e_table(results: dict[str, Any]) -> str:
    e2e = results.get("e2e")
    if not e2e:
        return ""

    def pct(x: float | None) -> str:
        return "—" if _missing(x) else f"{x:+.1f} %"

    rows = [
        [
            r["variant"],
            _fmt(r["mb_s"]),
            _fmt(r["us_per_stream"], 0),
            _fmt(r["cpu_us_per_stream"], 0),
            pct(r["cpu_overhead_pct"]),
            pct(r["overhead_pct"]),
            r["error"] or "ok",
        ]
        for r in e2e["rows"]
    ]
    reps = len(e2e["rows"][0]["seconds"]) if e2e["rows"] else 0
    return (
        f"### End to end over loopback HTTP (`{e2e['kind']}`, {e2e['streams']} streams, "
        f"{e2e['nbytes'] / 1e6:.1f} MB, {reps} repetitions, server in its own process)\n\n"
        "Overhead = median of same-repetition ratios to the unmetered read, minus 1, on the "
        "client's CPU time (the robust figure: the server runs in another process) and on "
        "wall time. CPU-bound worst case: a real stream arrives at token speed, so the "
        "same CPU is a far smaller share of its wall time.\n\n"
        + _table(
            [
                "client",
                "MB/s",
                "wall µs/stream",
                "client CPU µs/stream",
                "CPU overhead",
                "wall overhead",
                "check",
            ],
            rows,
        )
    )


def markdown(results: dict[str, Any]) -> str:
    meta = results["meta"]
    head = (
        "# ssetally benchmark results\n\n"
        f"{meta['when']} · Python {meta['python']} · {meta['cpu']} ({meta['cpus']} CPUs) · "
        f"runs={results['params']['runs']} round-robin, medians · "
        f"packages: {', '.join(f'{k} {v}' for k, v in meta['packages'].items())}\n"
    )
    build = meta.get("ssetally_build", {})
    if build:
        head += (
            f"\nssetally build: {build.get('git', 'no git')} · extension "
            f"{build.get('extension_sha256', '?')} built {build.get('extension_mtime', '?')}\n"
        )
    if meta.get("warning"):
        head += f"\n**Warning: {meta['warning']}.**\n"
    if meta.get("missing"):
        head += (
            "\nNot measured: " + "; ".join(f"{k} ({v})" for k, v in meta["missing"].items()) + "\n"
        )
    sections = [
        head,
        "## Targets\n\n" + target_table(results.get("targets", [])),
        "## Parsers on 1–4 KiB reads\n\n" + main_tables(results),
        "## Scaling\n\n" + sweep_tables(results),
        big_table(results),
        e2e_table(results),
    ]
    return "\n\n".join(s for s in sections if s) + "\n"
