"""``throughput.png``: throughput by parser, cost against stream size (log-log), and time per
event against read size (log-log), from the results dict."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any


def write_chart(results: dict[str, Any], path: Path, kind: str = "chat") -> bool:
    """Draws the chart; returns False (and draws nothing) when matplotlib is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return False

    fig, axes = plt.subplots(1, 3, figsize=(19, 7), gridspec_kw={"width_ratios": [1.5, 1, 1]})
    bars, sizes, reads = axes

    main = results.get("main", {})
    data = main.get(kind) or next(iter(main.values()), None)
    if data is not None:
        rows = [r for r in data["rows"] if not r.get("error") and not math.isnan(r["mb_s"])]
        rows.sort(key=lambda r: (r["mode"] != "event", r["mb_s"]))
        labels = [r["label"] for r in rows]
        values = [r["mb_s"] for r in rows]
        colors = [
            "tab:orange"
            if r["key"].startswith("ssetally")
            else ("tab:blue" if r["mode"] == "event" else "tab:green")
            for r in rows
        ]
        bars.barh(range(len(rows)), values, color=colors)
        bars.set_yticks(range(len(rows)), labels, fontsize=7)
        bars.set_xscale("log")
        bars.set_xlabel("MB/s (log), median")
        bars.set_title(
            f"Throughput, corpus {data.get('kind', kind)}, 1–4 KiB reads\n"
            "blue: events (.data read) · green: usage · orange: ssetally",
            fontsize=9,
        )
        for i, v in enumerate(values):
            bars.text(v, i, f" {v:,.0f}", va="center", fontsize=6)

    keys = dict.fromkeys(
        p["key"] for p in [*results.get("size_sweep", []), *results.get("read_sweep", [])]
    )
    color = {key: f"C{i}" for i, key in enumerate(keys)}
    for ax, points, xkey, ykey, scale, title, xlabel, ylabel in (
        (
            sizes,
            results.get("size_sweep", []),
            "nbytes",
            "median_s",
            1e3,
            "Cost against stream size (one chat stream)",
            "stream bytes",
            "ms per stream",
        ),
        (
            reads,
            results.get("read_sweep", []),
            "x",
            "ns_per_event",
            1e-3,
            "Time per event against read size",
            "bytes per read (feed call)",
            "µs per event",
        ),
    ):
        for key in dict.fromkeys(p["key"] for p in points):
            pts = sorted(
                (p for p in points if p["key"] == key and not p.get("error")), key=lambda p: p[xkey]
            )
            ax.plot(
                [p[xkey] for p in pts],
                [p[ykey] * scale for p in pts],
                marker="o",
                label=key,
                color=color[key],
                linewidth=2.5 if key.startswith("ssetally") else 1.2,
            )
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_title(title, fontsize=9)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, which="both", alpha=0.3)
        ax.legend(fontsize=7)

    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return True
