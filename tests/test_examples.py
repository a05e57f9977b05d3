"""Each script in ``examples/`` runs as written against a ReplayServer and prints the usage the
server reported."""

from __future__ import annotations

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
