"""The README's first Python example, run as written against the replay server.

Only the OpenAI base URL and the key are substituted, so the README cannot rot: if the example
stops working, or stops printing what it says, this test fails.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

from ssetally._replay import ReplayServer
from tiktoken_cache import subprocess_env

README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT = 60.0
OPENAI_BASE = "https://api.openai.com/v1"
PLACEHOLDER_KEY = "sk-..."


def first_python_example() -> str:
    readme = README.read_text(encoding="utf-8")
    match = re.search(r"^```python\n(.*?)^```", readme, re.MULTILINE | re.DOTALL)
    assert match, "README.md has no python example"
    return match.group(1)


def test_readme_first_example(tmp_path: Path) -> None:
    code = first_python_example()
    # The example must talk to the replay server only: both placeholders are required.
    assert OPENAI_BASE in code and PLACEHOLDER_KEY in code
    with ReplayServer() as server:
        script = tmp_path / "readme_example.py"
        script.write_text(
            code.replace(OPENAI_BASE, server.url).replace(PLACEHOLDER_KEY, "test"),
            encoding="utf-8",
        )
        assert "api.openai.com" not in script.read_text(encoding="utf-8")
        env = {k: v for k, v in subprocess_env().items() if "proxy" not in k.lower()}
        result = subprocess.run(
            [sys.executable, str(script)],
            check=False,
            capture_output=True,
            text=True,
            encoding="utf-8",
            env=env,
            cwd=tmp_path,
            timeout=TIMEOUT,
        )
        requests = server.requests
        served = server.served

    assert result.returncode == 0, result.stderr
    assert len(requests) == 1 and len(served) == 1
    sent, truth = requests[0], served[0]
    assert sent.path == "/v1/chat/completions"
    assert sent.header("authorization") == "Bearer test"
    assert sent.body["stream_options"] == {"include_usage": True}

    *data_lines, summary = result.stdout.splitlines()
    # Every event's data as it arrived, but the usage chunk the client asked for on its own.
    assert truth.usage_sent and len(data_lines) == truth.events_sent - 1
    assert data_lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in data_lines[:-1]]
    assert all(chunk["choices"] for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text == truth.texts[0]

    output_tokens, source, status, ttft = summary.split()
    assert int(output_tokens) == truth.output_tokens
    assert source == "stream"
    assert status == "completed"
    assert float(ttft) > 0
