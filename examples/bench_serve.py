"""A serving benchmark with true-token timing: sweeps concurrency against an OpenAI-compatible
server and writes, per concurrency, a results JSON in the field names of vLLM's
``vllm bench serve`` (``ttfts``, ``itls``, ``output_lens``, ``mean_ttft_ms``,
``median_tpot_ms``, ``p99_itl_ms``, ``mean_e2el_ms``...), so its numbers can be compared.

Unlike chunk-counting benchmark loops, TTFT is the first event that carried output (never the
empty role chunk), and ITL is per token: k tokens that arrived g seconds after the previous
ones count k gaps of g/k, the tokens read from the stream's own usage where it reports
running counts, else apportioned from its exact total (``ssetally.Timings``).

With no ``--base-url`` it starts ``ssetally replay`` on a free port and stops it at the end:

    python examples/bench_serve.py                       # concurrency 1 and 4: 8 requests each
    python examples/bench_serve.py --base-url http://127.0.0.1:8000 --concurrency 1,8,32

Per request: ``ttfts`` (s), ``itls`` (per-token gaps, s), ``tpots`` (s), ``e2els`` (s),
``input_lens``, ``output_lens``, ``errors``; aggregates in ms for ttft, tpot, itl, e2el
(mean, median, std and ``--metric-percentiles``).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import datetime
from pathlib import Path
from typing import Any

import httpx
import ssetally

METRICS = ("ttft", "tpot", "itl", "e2el")


def start_replay(delay: float) -> tuple[subprocess.Popen[str], str]:
    """``ssetally replay`` on a free port; returns the process and its base URL."""
    cmd = [sys.executable, "-m", "ssetally", "replay", "--port", "0", "--quiet",
           "--delay", str(delay)]  # fmt: skip
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, text=True)
    assert proc.stderr is not None
    deadline = time.monotonic() + 30
    line = ""
    while "serving " not in line:
        line = proc.stderr.readline()
        if (not line and proc.poll() is not None) or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit(f"ssetally replay did not start: {line!r}")
    return proc, line.split("serving ", 1)[1].split()[0].rstrip(",").removesuffix("/v1")


async def one_request(
    client: httpx.AsyncClient, url: str, body: dict[str, Any]
) -> dict[str, Any]:
    """One streamed request: its timings and lengths, or its error."""
    try:
        async with ssetally.aconnect_usage(client, "POST", url, json=body, timeline=True) as s:
            async for _ in s:
                pass
    except Exception as exc:  # noqa: BLE001 - a failed request is a result too
        return {"error": f"{type(exc).__name__}: {exc}"}
    report = s.report
    timings = report.timings if report is not None else None
    if report is None or timings is None or report.usage is None:
        return {"error": "no report"}
    # ``incomplete`` is a stop at max_tokens: a normal end for a benchmark request.
    ended = report.status in ("completed", "incomplete")
    return {
        "error": "" if ended else f"status {report.status}",
        "ttft": timings.ttft,
        "itl": list(timings.itls()),
        "tpot": timings.tpot,
        "e2el": timings.duration,
        "input_len": report.usage.input_tokens or 0,
        "output_len": report.usage.output_tokens or 0,
        "timeline_source": timings.timeline_source,
    }


def summary(values: list[float], name: str, percentiles: list[float]) -> dict[str, float]:
    """vLLM's aggregate keys for one metric, in milliseconds."""
    ms = [v * 1000 for v in values] or [0.0]
    out = {
        f"mean_{name}_ms": statistics.fmean(ms),
        f"median_{name}_ms": statistics.median(ms),
        f"std_{name}_ms": statistics.pstdev(ms),
    }
    ordered = sorted(ms)
    for p in percentiles:
        rank = p / 100 * (len(ordered) - 1)
        low = int(rank)
        high = min(low + 1, len(ordered) - 1)
        word = str(int(p)) if int(p) == p else str(p)
        out[f"p{word}_{name}_ms"] = ordered[low] + (ordered[high] - ordered[low]) * (rank - low)
    return out


async def run_level(
    base_url: str, concurrency: int, args: argparse.Namespace
) -> dict[str, Any]:
    """``args.num_prompts`` requests, at most ``concurrency`` in flight."""
    url = f"{base_url}/v1/chat/completions"
    limit = asyncio.Semaphore(concurrency)
    headers = {"Authorization": f"Bearer {os.environ.get('OPENAI_API_KEY', 'test')}"}
    timeout = httpx.Timeout(args.timeout)
    limits = httpx.Limits(max_connections=concurrency)

    async with httpx.AsyncClient(headers=headers, timeout=timeout, limits=limits,
                                 trust_env=False) as client:  # fmt: skip

        async def bounded(i: int) -> dict[str, Any]:
            body = {"model": args.model, "stream": True, "max_tokens": args.max_tokens,
                    "messages": [{"role": "user", "content": f"Tell story number {i}"}]}  # fmt: skip
            async with limit:
                return await one_request(client, url, body)

        # Not counted: the first request loads the tokenizer (for apportioning tokens).
        await bounded(-1)
        started = time.perf_counter()
        results = await asyncio.gather(*(bounded(i) for i in range(args.num_prompts)))
        duration = time.perf_counter() - started

    ok = [r for r in results if not r["error"]]
    total_in = sum(r["input_len"] for r in ok)
    total_out = sum(r["output_len"] for r in ok)
    result: dict[str, Any] = {
        "date": datetime.now().strftime("%Y%m%d-%H%M%S"),
        "backend": "openai-chat",
        "model_id": args.model,
        "num_prompts": args.num_prompts,
        "max_concurrency": concurrency,
        "duration": duration,
        "completed": len(ok),
        "failed": len(results) - len(ok),
        "total_input_tokens": total_in,
        "total_output_tokens": total_out,
        "request_throughput": len(ok) / duration,
        "output_throughput": total_out / duration,
        "total_token_throughput": (total_in + total_out) / duration,
        "input_lens": [r.get("input_len", 0) for r in results],
        "output_lens": [r.get("output_len", 0) for r in results],
        "ttfts": [r.get("ttft") or 0.0 for r in results],
        "itls": [r.get("itl", []) for r in results],
        "tpots": [r.get("tpot") or 0.0 for r in results],
        "e2els": [r.get("e2el") or 0.0 for r in results],
        "errors": [r["error"] for r in results],
        "timeline_sources": [r.get("timeline_source") for r in results],
    }
    values = {
        "ttft": [r["ttft"] for r in ok if r["ttft"] is not None],
        "tpot": [r["tpot"] for r in ok if r["tpot"] is not None],
        "itl": [gap for r in ok for gap in r["itl"]],
        "e2el": [r["e2el"] for r in ok if r["e2el"] is not None],
    }
    for name in METRICS:
        result.update(summary(values[name], name, args.percentiles))
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--base-url", help="the server (default: start ssetally replay)")
    parser.add_argument("--concurrency", default="1,4", help="levels to sweep")
    parser.add_argument("--num-prompts", type=int, default=8, help="requests per level")
    parser.add_argument("--max-tokens", type=int, default=32)
    parser.add_argument("--model", default="gpt-4o-mini")
    parser.add_argument("--delay", type=float, default=0.005,
                        help="seconds between events of the replay server it starts")  # fmt: skip
    parser.add_argument("--metric-percentiles", default="50,90,99")
    parser.add_argument("--result-dir", default="bench_serve_results")
    parser.add_argument("--timeout", type=float, default=60.0, help="seconds per request")
    args = parser.parse_args()
    args.percentiles = [float(p) for p in args.metric_percentiles.split(",") if p]
    levels = [int(c) for c in args.concurrency.split(",") if c]
    if any(c < 1 for c in levels) or args.num_prompts < 1:
        parser.error("concurrency levels and --num-prompts must be positive")
    proc = None
    base_url = args.base_url
    if base_url is None:
        proc, base_url = start_replay(args.delay)
    out_dir = Path(args.result_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    try:
        print(f"{'concurrency':>11} {'req/s':>8} {'ttft p50 ms':>12} {'tpot p50 ms':>12} "
              f"{'itl p50 ms':>11} {'itl p99 ms':>11} {'e2el p50 ms':>12}  file")  # fmt: skip
        for level in levels:
            result = asyncio.run(run_level(base_url.rstrip("/"), level, args))
            path = out_dir / f"openai-chat-c{level}.json"
            path.write_text(json.dumps(result, indent=1), encoding="utf-8")
            p99 = result.get("p99_itl_ms", float("nan"))
            print(f"{level:>11} {result['request_throughput']:>8.2f} "
                  f"{result['median_ttft_ms']:>12.2f} {result['median_tpot_ms']:>12.3f} "
                  f"{result['median_itl_ms']:>11.3f} {p99:>11.3f} "
                  f"{result['median_e2el_ms']:>12.2f}  {path}")  # fmt: skip
            if result["failed"]:
                print(f"  {result['failed']} failed: {sorted(set(result['errors']) - {''})}")
    finally:
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
    return 0


if __name__ == "__main__":
    sys.exit(main())
