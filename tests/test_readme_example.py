"""Every Python snippet of README.md, run as written against ``ssetally replay`` and
type-checked with ``mypy --strict``, so the README cannot rot.

The convention a README snippet follows (new sections are picked up automatically):

* A fenced block opened with ```` ```python ```` is a complete program: it is written to a
  file as it stands, run with this interpreter in a fresh temporary directory, and must exit 0
  within ``TIMEOUT``; all the snippets together must pass ``mypy --strict``.
* A snippet that calls an API reads ``OPENAI_BASE_URL`` (written with its default,
  ``https://api.openai.com/v1``) and ``OPENAI_API_KEY`` from the environment, or lets the
  openai SDK read them. The test points them at an ``ssetally replay`` server started on a free
  port (``OPENAI_API_KEY=test``); nothing reaches the network.
* A fragment that cannot run on its own is fenced ```` ```python no-run ````: it is neither run
  nor type-checked. Use it sparingly; every extra the tests install is available, so a snippet
  that needs one can still run.

The first snippet (the Example) is also checked line by line against what the server sent.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

import httpx
import pytest
import ssetally
from ssetally import StreamReport, Usage
from tiktoken_cache import subprocess_env

README = Path(__file__).resolve().parent.parent / "README.md"
TIMEOUT = 60.0
FENCE = re.compile(r"^```python([^\n]*)\n(.*?)^```", re.MULTILINE | re.DOTALL)
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")


class Snippet(NamedTuple):
    line: int
    code: str

    @property
    def name(self) -> str:
        return f"readme_line_{self.line}"


def snippets() -> list[Snippet]:
    """Every runnable ```python block of the README, with the line it starts on."""
    readme = README.read_text(encoding="utf-8")
    out = []
    for match in FENCE.finditer(readme):
        if "no-run" in match.group(1).split():
            continue
        out.append(Snippet(readme.count("\n", 0, match.start()) + 1, match.group(2)))
    return out


SNIPPETS = snippets()


class Replay(NamedTuple):
    base_url: str
    log: Path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def child_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in subprocess_env().items() if k.lower() not in _PROXY_VARS}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


@pytest.fixture(scope="module")
def replay(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Replay]:
    """``ssetally replay`` on a free port (tried again if another process takes the port)."""
    tmp = tmp_path_factory.mktemp("replay")
    log = tmp / "replay.log"
    for _ in range(3):
        port = free_port()
        base = f"http://127.0.0.1:{port}/v1"
        with log.open("wb") as out:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ssetally", "replay", "--port", str(port), "--delay", "0"],
                env=child_env(), cwd=tmp, stdout=out, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            deadline = time.monotonic() + TIMEOUT
            while proc.poll() is None and time.monotonic() < deadline:
                try:
                    httpx.get(base + "/models", timeout=1.0, trust_env=False)
                    break
                except httpx.TransportError:
                    time.sleep(0.05)
            if proc.poll() is None:
                yield Replay(base, log)
                return
        finally:
            if proc.poll() is None:
                proc.terminate()
                proc.wait(timeout=TIMEOUT)
    pytest.fail(f"ssetally replay did not start: {log.read_text()}")


def run(snippet: Snippet, replay: Replay, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    script = tmp_path / f"{snippet.name}.py"
    script.write_text(snippet.code, encoding="utf-8")
    return subprocess.run(
        [sys.executable, str(script)],
        check=False,
        capture_output=True,
        text=True,
        encoding="utf-8",
        env=child_env(OPENAI_BASE_URL=replay.base_url, OPENAI_API_KEY="test"),
        cwd=tmp_path,
        timeout=TIMEOUT,
    )


def test_the_readme_has_snippets() -> None:
    assert len(SNIPPETS) >= 2
    assert "connect_usage" in SNIPPETS[0].code


@pytest.mark.parametrize("snippet", SNIPPETS, ids=[s.name for s in SNIPPETS])
def test_readme_snippet_runs(snippet: Snippet, replay: Replay, tmp_path: Path) -> None:
    result = run(snippet, replay, tmp_path)
    assert result.returncode == 0, f"README line {snippet.line}:\n{result.stderr}"
    assert "api.openai.com" not in result.stderr


def test_readme_snippets_type_check(tmp_path: Path) -> None:
    for snippet in SNIPPETS:
        (tmp_path / f"{snippet.name}.py").write_text(snippet.code, encoding="utf-8")
    package_root = str(Path(ssetally.__file__).resolve().parent.parent)
    env = {**os.environ, "MYPYPATH": package_root}
    result = subprocess.run(
        [sys.executable, "-m", "mypy", "--strict", "--no-incremental",
         *[f"{s.name}.py" for s in SNIPPETS]],
        check=False, capture_output=True, text=True, env=env, cwd=tmp_path, timeout=300,
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr


def test_readme_example_prints_what_the_server_sent(replay: Replay, tmp_path: Path) -> None:
    result = run(SNIPPETS[0], replay, tmp_path)
    assert result.returncode == 0, result.stderr
    *data_lines, summary = result.stdout.splitlines()
    # Every event's data as it arrived, but the usage chunk the client asked for on its own.
    assert data_lines[-1] == "[DONE]"
    chunks = [json.loads(line) for line in data_lines[:-1]]
    assert chunks and all(chunk["choices"] for chunk in chunks)
    text = "".join(chunk["choices"][0]["delta"].get("content") or "" for chunk in chunks)
    assert text
    output_tokens, source, status, ttft = summary.split()
    assert int(output_tokens) > 0
    assert source == "stream"
    assert status == "completed"
    assert float(ttft) > 0


def section(title: str) -> str:
    readme = README.read_text(encoding="utf-8")
    start = readme.index(f"## {title}\n")
    end = readme.find("\n## ", start + 1)
    return readme[start:end]


@pytest.mark.parametrize("cls", [StreamReport, Usage], ids=lambda c: c.__name__)
def test_the_report_section_lists_every_field(cls: type) -> None:
    text = section("The report")
    missing = [f for f in cls._fields if f"`{f}`" not in text]  # type: ignore[attr-defined]
    assert not missing, f"README 'The report' does not describe {cls.__name__}: {missing}"


def test_the_proxy_extra_is_named_as_a_clone_installs_it() -> None:
    readme = README.read_text(encoding="utf-8")
    assert "ssetally[proxy]" not in readme.replace("`ssetally[proxy]`", "")
    assert "pip install '.[proxy]'" in section("Set up")
