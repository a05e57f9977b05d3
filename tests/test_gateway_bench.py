"""The gateway benchmark (benches/gateway.py) in a tiny mode: its fidelity and usage checks are
computed and pass through the real proxy, and each check fails when it should. No timing is
asserted here: speed targets live in the benchmark itself."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("uvicorn")
pytest.importorskip("prometheus_client")

BENCHES = Path(__file__).resolve().parent.parent / "benches"
sys.path.insert(0, str(BENCHES))

from gateway_client import Level, run_level
from gateway_report import check_records, cpu_ratio, targets
from gateway_upstream import usage_prompt


def test_tiny_run_checks_fidelity_and_usage(tmp_path: Path) -> None:
    command = [
        sys.executable, str(BENCHES / "gateway.py"), "--concurrency", "1,4", "--streams", "2",
        "--events", "6", "--delay-ms", "5", "--paths", "direct,nginx,proxy", "--no-pin",
        "--out", str(tmp_path), "--name", "smoke", "--max-seconds", "120",
        "--cpu-rounds", "2", "--cpu-concurrency", "2",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)}
    done = subprocess.run(
        command, capture_output=True, text=True, timeout=180, env=env, check=False
    )
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    results = json.loads((tmp_path / "smoke.json").read_text())
    assert (tmp_path / "smoke.md").read_text().startswith("# Gateway benchmark")
    paths = results["paths"]
    assert {"direct", "proxy"} <= set(paths)
    rounds = results["cpu_rounds"]["cpu_s_per_1000_chunks"]
    assert set(rounds) == {"nginx", "proxy"} & set(paths)
    for name, path in paths.items():
        # 1 + 4 connections x 2 streams, the warm-up (4 connections x 1 stream), and for the
        # paths compared by CPU 2 rounds of 2 connections x 3 streams.
        paired = 2 * 2 * 3 if name in rounds else 0
        assert path["streams"] == path["attempted"] == 2 + 8 + 4 + paired, name
        assert path["failed"] == 0 and path["altered"] == 0, name
        assert path["levels"][str(4)]["chunks"] == 8 * 6, name
    proxy = paths["proxy"]
    assert proxy["records"] == {
        "records": 26,
        "streams": 26,
        "lost": 0,
        "duplicated": 0,
        "unmatched": 0,
        "exact_usage": 26,
    }
    # CPU time comes in clock ticks: so few chunks may take none.
    assert len(rounds["proxy"]) == 2 and all(0 <= v < 100 for v in rounds["proxy"])
    assert proxy["levels"]["1"]["added_p99_ms"] is not None
    assert proxy["levels"]["1"]["cpu_s_per_1000_chunks"] is not None
    verdicts = {t["target"]: t["verdict"] for t in results["targets"]}
    assert verdicts["byte fidelity on 100% of streams (every path but LiteLLM)"] == "PASS"
    assert verdicts["exact usage on 100% of streams (the proxy's records)"] == "PASS"
    # Levels that did not run are not judged.
    assert verdicts["proxy added p99 per chunk <= 10 ms at C=200"] == "n/a"
    if "nginx" not in paths:
        assert "nginx" in results["notes"]


def test_cpu_targets_take_the_median_of_paired_rounds() -> None:
    """A ratio of two paths is taken within each round (measured one after the other), and
    the median of those ratios judged; a round that failed (None) is left out; without rounds
    the totals over all levels are compared."""
    failed = None
    results: dict[str, Any] = {
        "paths": {
            "proxy": {"cpu_s_per_1000_chunks": 0.03},
            "nginx": {"cpu_s_per_1000_chunks": 0.01},
            "no-metering": {"cpu_s_per_1000_chunks": 0.02},
            "inject-usage": {"cpu_s_per_1000_chunks": 0.04},
        },
        "cpu_rounds": {
            "concurrency": 200,
            "streams_per_connection": 3,
            "cpu_s_per_1000_chunks": {
                # A slow moment in round 2 weighs on every path alike.
                "proxy": [0.020, 0.040, 0.021, 0.019, failed],
                "nginx": [0.010, 0.021, 0.011, 0.010, 0.010],
                "no-metering": [0.019, 0.037, 0.019, 0.018, 0.010],
                "inject-usage": [0.023, 0.045, 0.022, 0.021, 0.020],
            },
        },
    }
    ratio = cpu_ratio(results, "proxy", "nginx")
    assert ratio is not None and ratio[0] == pytest.approx(1.907, abs=0.001)
    assert "median of 4 paired rounds at C=200" in ratio[1]
    verdicts = {t["target"]: (t["verdict"], t["value"]) for t in targets(results)}
    assert verdicts["proxy CPU per 1,000 chunks <= 2x nginx"][0] == "PASS"
    assert verdicts["(moonshot) proxy CPU <= 1.2x nginx"][0] == "FAIL"
    off = verdicts["metering off: CPU per 1,000 chunks within 10% of metering on"]
    assert off[0] == "PASS" and off[1].startswith("0.94x"), off
    inject = verdicts["--inject-usage: CPU per 1,000 chunks within 10% of the plain proxy"]
    assert inject[0] == "FAIL" and inject[1].startswith("1.12x"), inject
    # Without rounds: the totals over all levels (3x, off 0.67x, inject 1.33x).
    del results["cpu_rounds"]
    assert cpu_ratio(results, "proxy", "nginx") == (
        pytest.approx(3.0),
        "0.030 vs 0.010 s, all levels",
    )
    assert cpu_ratio(results, "no-metering", "proxy")[0] == pytest.approx(2 / 3)


def _record(sid: str, n: int, output: int, **extra: Any) -> dict[str, Any]:
    usage = {
        "input_tokens": usage_prompt(n),
        "output_tokens": output,
        "total_tokens": usage_prompt(n) + output,
        "source": "stream",
    }
    return {"response_id": sid, "status": "completed", "usage": usage, **extra}


def test_check_records_finds_lost_duplicated_and_wrong_usage() -> None:
    ids = [f"chatcmpl-bench-42-{n}" for n in range(1, 6)]
    streams = dict.fromkeys(ids, 64)
    records = [_record(sid, n, 64) for n, sid in enumerate(ids, 1)]
    assert check_records(records, streams)["exact_usage"] == 5
    bad = [
        records[0],
        records[0],  # duplicated
        _record(ids[1], 2, 63),  # one output token short
        {**records[2], "usage": {**records[2]["usage"], "input_tokens": 1}},
        {**records[3], "status": "incomplete"},
        # ids[4]: lost
        _record("chatcmpl-other-1", 1, 64),
    ]
    assert check_records(bad, streams) == {
        "records": 6,
        "streams": 5,
        "lost": 1,
        "duplicated": 1,
        "unmatched": 1,
        "exact_usage": 1,
    }


async def _serve_once(body: bytes, claimed: bytes) -> tuple[asyncio.AbstractServer, int]:
    """A server answering every request with ``body`` and a ``: sha256=`` comment."""
    trailer = b": sha256=" + hashlib.sha256(claimed).hexdigest().encode() + b"\n\n"

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        await reader.readexactly(length)
        writer.write(b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n")
        for part in (body[:100], body[100:], trailer):
            writer.write(b"%x\r\n%s\r\n" % (len(part), part))
        writer.write(b"0\r\n\r\n")
        await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    return server, server.sockets[0].getsockname()[1]


@pytest.mark.parametrize("tamper", [False, True])
async def test_client_flags_altered_bytes(tamper: bool) -> None:
    body = b"".join(
        b'data: {"id":"chatcmpl-bench-1-%d","choices":[{"delta":{"content":"tok%d@%d "}}]}\n\n'
        % (1, i, 10**12 + i)
        for i in range(3)
    )
    claimed = body.replace(b"tok1", b"tak1") if tamper else body
    server, port = await _serve_once(body, claimed)
    try:
        level = await run_level(Level("t", 1), port, 1, stagger=0, stream_timeout=10)
    finally:
        server.close()
    assert level.streams == 1 and level.failed == 0
    assert level.chunks == 3 and level.ids == ["chatcmpl-bench-1-1"]
    assert level.altered == (1 if tamper else 0)


def test_the_metering_switch_and_litellm_are_found(monkeypatch: Any, tmp_path: Path) -> None:
    import gateway
    import gateway_paths

    notes: dict[str, str] = {}
    monkeypatch.setenv("PYTHONPATH", os.pathsep.join(sys.path))
    (unmetered,) = gateway.make_paths(["no-metering"], notes)
    assert notes == {}
    assert isinstance(unmetered, gateway_paths.Ssetally)
    assert unmetered.flags == ("--no-metering",) and unmetered.records is False
    (litellm,) = gateway.make_paths(["litellm"], notes)
    assert litellm.max_concurrency == 64
    # A litellm command beside this Python (a virtual environment's bin) is the one run.
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "python").touch()
    script = fake / "litellm"
    script.write_text("#!/bin/sh\n")
    script.chmod(0o755)
    monkeypatch.setattr(sys, "executable", str(fake / "python"))
    assert gateway_paths.litellm_command() == [str(script)]
