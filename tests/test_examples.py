"""Each script in ``examples/`` runs as written against a ReplayServer and prints the usage the
server reported."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from ssetally._replay import ReplayServer

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


@pytest.mark.parametrize("name", ["aiohttp_usage.py", "ameter_aiohttp.py", "fastapi_middleware.py"])
def test_example_runs(name: str) -> None:
    with ReplayServer() as server:
        env = {**os.environ, "SSETALLY_BASE_URL": server.url.removesuffix("/v1")}
        run = subprocess.run(
            [sys.executable, str(EXAMPLES / name)],
            env=env, capture_output=True, check=False, text=True, timeout=120,
        )  # fmt: skip
        truth = server.last_usage
    assert run.returncode == 0, run.stderr[-2000:]
    assert truth is not None
    found = re.search(r"input=(\d+) output=(\d+)", run.stdout)
    assert found, run.stdout
    assert int(found[1]) == truth["prompt_tokens"]
    assert int(found[2]) == truth["completion_tokens"]


@pytest.mark.parametrize("own_server", [False, True])
def test_bench_serve_writes_vllm_results(tmp_path: Path, own_server: bool) -> None:
    """``bench_serve.py`` against a ReplayServer (``--base-url``), or the ``ssetally replay`` it
    starts itself: vLLM's result fields, consistent with each other."""
    args = [sys.executable, str(EXAMPLES / "bench_serve.py"), "--result-dir", str(tmp_path),
            "--concurrency", "1,3", "--num-prompts", "3"]  # fmt: skip
    with ReplayServer(delay=0.005) as server:
        if not own_server:
            args += ["--base-url", server.url.removesuffix("/v1")]
        run = subprocess.run(args, capture_output=True, check=False, text=True, timeout=180)
        served = len(server.served)
    assert run.returncode == 0, run.stderr[-2000:]
    assert served == (0 if own_server else 2 * 4)  # 3 requests and a warm-up per level
    for level in (1, 3):
        result = json.loads((tmp_path / f"openai-chat-c{level}.json").read_text())
        assert result["max_concurrency"] == level and result["completed"] == 3
        assert result["failed"] == 0 and result["errors"] == ["", "", ""]
        for key in ("ttfts", "itls", "tpots", "e2els", "output_lens", "input_lens"):
            assert len(result[key]) == 3, key
        for ttft, e2el, itls, n in zip(result["ttfts"], result["e2els"], result["itls"],
                                       result["output_lens"]):  # fmt: skip
            assert 0 < ttft < e2el and n > 1
            # Per-token gaps: one per token after the first arrival, within the stream.
            assert 0 < len(itls) < n and sum(itls) <= e2el - ttft + 1e-6
        assert set(result["timeline_sources"]) == {"apportioned"}
        for metric in ("ttft", "tpot", "itl", "e2el"):
            for stat in ("mean", "median", "std", "p99"):
                assert isinstance(result[f"{stat}_{metric}_ms"], float), (stat, metric)
        assert result["median_ttft_ms"] <= result["p99_ttft_ms"]
        assert result["total_output_tokens"] == sum(result["output_lens"])
