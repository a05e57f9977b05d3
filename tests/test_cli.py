"""The ``ssetally`` command, run in subprocesses: ``report``, ``stream`` and ``replay``.

Every subprocess has a timeout and talks to 127.0.0.1 only. Expected numbers come from the
inputs themselves (the bundled sample's usage chunk, ``corpus_expected.json``, the replay
server's truth, tiktoken counts computed here).
"""

from __future__ import annotations

import json
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from importlib import resources
from pathlib import Path
from typing import Any

import httpx
import pytest
import tiktoken
from corpus import CORPUS_DIR, corpus_files, rebuild
from ssetally import connect_usage
from ssetally._replay import Faults, ReplayServer
from tiktoken_cache import ENV_VAR, subprocess_env

TIMEOUT = 60.0
EXPECTED = json.loads((CORPUS_DIR.parent / "corpus_expected.json").read_text())["files"]
CHAT_CAPTURE = "openai-chat/e2aad469b71d1d4894ff833ea147020a9d875eb7ce644a0ff355581690a4cbfd.bin"
#: Nothing listens on the discard port: any attempt to reach the network fails at once.
DEAD_PROXY = "http://127.0.0.1:9"
_PROXY_VARS = ("http_proxy", "https_proxy", "all_proxy", "no_proxy")
CHAT_BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "Hi"}],
}


def child_env(base: Mapping[str, str] | None = None, **extra: str) -> dict[str, str]:
    """The environment of a child: tiktoken's offline cache, no proxies but for loopback."""
    env = {k: v for k, v in subprocess_env(base).items() if k.lower() not in _PROXY_VARS}
    env["NO_PROXY"] = "127.0.0.1,localhost"
    env.update(extra)
    return env


def offline_env(tmp_path: Path) -> dict[str, str]:
    """No tiktoken vocabulary on disk and every HTTP(S) request sent to a dead proxy."""
    empty = tmp_path / "empty-tiktoken-cache"
    empty.mkdir()
    env = child_env()
    env.pop("NO_PROXY")
    env.update({ENV_VAR: str(empty), "HTTP_PROXY": DEAD_PROXY, "HTTPS_PROXY": DEAD_PROXY})
    return env


def ssetally(
    *args: str, env: Mapping[str, str], cwd: Path, stdin: bytes | None = None
) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "ssetally", *args],
        check=False,
        input=stdin,
        capture_output=True,
        env=dict(env),
        cwd=cwd,
        timeout=TIMEOUT,
    )
    return subprocess.CompletedProcess(
        result.args,
        result.returncode,
        result.stdout.decode("utf-8"),
        result.stderr.decode("utf-8"),
    )


def fields(output: str) -> dict[str, str]:
    """The ``name: value`` rows of a printed report (after its last ``--- title ---`` line)."""
    lines = output.splitlines()
    start = max(i for i, line in enumerate(lines) if line.startswith("--- ")) + 1
    out: dict[str, str] = {}
    for line in lines[start:]:
        if line.startswith(("note:", "warning:")):
            continue
        name, sep, value = line.partition(": ")
        if sep:
            out[name.strip()] = value
    return out


def notes(output: str) -> list[str]:
    return [line for line in output.splitlines() if line.startswith("note: ")]


def tokens(text: str) -> int:
    return len(tiktoken.get_encoding("o200k_base").encode_ordinary(text))


def sample_truth() -> tuple[dict[str, Any], str]:
    """The usage chunk and the streamed text of the bundled sample."""
    data = resources.files("ssetally").joinpath("samples", "chat_stream.sse").read_bytes()
    usage: dict[str, Any] | None = None
    text = ""
    for block in data.decode("utf-8").split("\n\n"):
        if not block.startswith("data: ") or block == "data: [DONE]":
            continue
        obj = json.loads(block[len("data: ") :])
        usage = obj.get("usage") or usage
        for choice in obj.get("choices") or []:
            text += choice["delta"].get("content") or ""
    assert usage is not None
    return usage, text


# --------------------------------------------------------------------------- report


def test_report_on_the_bundled_sample_offline(tmp_path: Path) -> None:
    usage, text = sample_truth()
    result = ssetally("report", env=offline_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert text.strip() and text.strip() in result.stdout
    row = fields(result.stdout)
    assert row["source"] == "bundled sample chat_stream.sse"
    assert row["api"] == "chat.completions"
    assert row["status"] == "completed"
    assert row["usage source"] == "stream"
    assert row["input tokens"] == str(usage["prompt_tokens"])
    assert row["output tokens"] == str(usage["completion_tokens"])
    assert row["total tokens"] == str(usage["total_tokens"])
    assert any("chunks are not tokens" in note for note in notes(result.stdout))


def test_report_json_on_the_bundled_sample_offline(tmp_path: Path) -> None:
    usage, text = sample_truth()
    result = ssetally("report", "--json", env=offline_env(tmp_path), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["usage"]["input_tokens"] == usage["prompt_tokens"]
    assert report["usage"]["output_tokens"] == usage["completion_tokens"]
    assert report["usage"]["total_tokens"] == usage["total_tokens"]
    assert report["usage"]["source"] == "stream"
    assert report["usage"]["raw"] == usage
    assert report["status"] == "completed" and report["done"] is True
    assert report["output"]["choices"][0]["text"] == text
    assert report["delta_chunks"] != report["usage"]["output_tokens"]


def corpus_capture(name: str, tmp_path: Path) -> Path:
    """A corpus stream as a file of wire bytes (``*.chunks.txt`` files are framed first)."""
    (f,) = [f for f in corpus_files() if f.name == name]
    if f.is_raw:
        return f.path
    path = tmp_path / (Path(name).name + ".sse")
    path.write_bytes(rebuild(f))
    return path


@pytest.mark.parametrize(
    "name",
    [
        CHAT_CAPTURE,
        "openai-responses/openai-phase.1.chunks.txt",
        "anthropic/anthropic-text.chunks.txt",
    ],
)
def test_report_on_a_corpus_capture(tmp_path: Path, name: str) -> None:
    expected = EXPECTED[name]["reports"][-1]
    path = corpus_capture(name, tmp_path)
    result = ssetally("report", str(path), "--json", env=child_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    for key in ("api", "status", "response_id", "model", "finish_reason", "delta_chunks"):
        assert report[key] == expected[key], key
    assert {k: report["usage"][k] for k in expected["usage"]} == expected["usage"]
    assert report["usage"]["source"] == "stream"

    text = ssetally("report", str(path), env=child_env(), cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    row = fields(text.stdout)
    assert row["source"] == str(path)
    assert row["output tokens"] == str(expected["usage"]["output_tokens"])
    assert row["input tokens"] == str(expected["usage"]["input_tokens"])


def test_report_from_stdin(tmp_path: Path) -> None:
    expected = EXPECTED[CHAT_CAPTURE]["reports"][-1]
    data = (CORPUS_DIR / CHAT_CAPTURE).read_bytes()
    result = ssetally("report", "-", "--json", env=child_env(), cwd=tmp_path, stdin=data)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert report["bytes"] == len(data)
    assert {k: report["usage"][k] for k in expected["usage"]} == expected["usage"]
    text = ssetally("report", "-", env=child_env(), cwd=tmp_path, stdin=data)
    assert fields(text.stdout)["source"] == "standard input"


def test_report_on_a_missing_file(tmp_path: Path) -> None:
    missing = tmp_path / "no-such-capture.sse"
    result = ssetally("report", str(missing), env=child_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert result.stdout == ""
    assert "cannot read" in result.stderr and missing.name in result.stderr
    assert "Traceback" not in result.stderr


def test_report_estimates_a_stream_without_usage(tmp_path: Path) -> None:
    with ReplayServer() as server, httpx.Client(timeout=10.0, trust_env=False) as client:
        answer = client.post(
            server.url + "/chat/completions",
            json=CHAT_BODY,
            headers={"Authorization": "Bearer test"},
        )  # fmt: skip
        assert answer.status_code == 200 and not server.last.usage_sent
        truth = server.last
    capture = tmp_path / "no-usage.sse"
    capture.write_bytes(answer.content)
    expected_output = tokens(truth.texts[0])

    result = ssetally("report", str(capture), "--json", env=child_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    usage = json.loads(result.stdout)["usage"]
    assert usage["source"] == "estimate"
    assert usage["output_tokens"] == expected_output
    assert usage["input_tokens"] is None  # no request body in a capture
    assert usage["reasoning_tokens"] is None
    assert "estimate" in usage["note"]

    text = ssetally("report", str(capture), env=child_env(), cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    row = fields(text.stdout)
    assert row["usage source"] == "estimate"
    assert row["output tokens"] == str(expected_output)
    assert any("estimated locally with tiktoken" in note for note in notes(text.stdout))

    off = ssetally("report", str(capture), "--json", "--no-estimate", env=child_env(), cwd=tmp_path)
    assert off.returncode == 0, off.stderr
    assert json.loads(off.stdout)["usage"] is None


# --------------------------------------------------------------------------- stream


def stream_env(server: ReplayServer) -> dict[str, str]:
    return child_env(OPENAI_BASE_URL=server.url, OPENAI_API_KEY="x")


def test_stream_chat(tmp_path: Path) -> None:
    prompt = "Say something about tallies"
    with ReplayServer() as server:
        result = ssetally(
            "stream", "--api", "chat", "--model", "gpt-4o-mini", prompt,
            env=stream_env(server), cwd=tmp_path,
        )  # fmt: skip
        truth = server.last
        sent = server.requests[-1]
        url = server.url
    assert result.returncode == 0, result.stderr
    assert sent.path == "/v1/chat/completions"
    assert sent.header("authorization") == "Bearer x"
    assert sent.body["messages"] == [{"role": "user", "content": prompt}]
    assert sent.body["stream_options"] == {"include_usage": True}
    assert result.stdout.splitlines()[:2] == ["--- Assembled Output ---", truth.texts[0]]
    assert result.stdout.count(truth.texts[0]) == 1  # printed as it arrived, not again
    row = fields(result.stdout)
    assert row["usage source"] == "stream"
    assert row["status"] == "completed"
    assert row["output tokens"] == str(truth.output_tokens)
    assert row["input tokens"] == str(truth.input_tokens)
    assert row["source"] == url + "/chat/completions"


def test_stream_json(tmp_path: Path) -> None:
    with ReplayServer() as server:
        result = ssetally("stream", "--json", "Hello", env=stream_env(server), cwd=tmp_path)
        truth = server.last
    assert result.returncode == 0, result.stderr
    # stdout is the JSON report alone; the text went to stderr as it arrived.
    report = json.loads(result.stdout)
    assert truth.texts[0] in result.stderr.splitlines()
    assert report["api"] == "responses"
    assert report["usage"]["source"] == "stream"
    assert report["usage"]["raw"] == truth.usage
    assert report["timings"]["output_tokens"] == truth.output_tokens


def test_stream_cut_responses_falls_back_to_retrieval(tmp_path: Path) -> None:
    # Six events: the stream ends before response.incomplete, with no usage in it.
    with ReplayServer(faults=Faults(cut_after_events=6)) as server:
        result = ssetally(
            "stream", "--max-output-tokens", "25", "Hello world",
            env=stream_env(server), cwd=tmp_path,
        )  # fmt: skip
        post, get = server.requests
        truth = server.last
        stored = server.responses[truth.id]
    assert post.body["max_output_tokens"] == 25 and post.body["store"] is True
    assert truth.cut and stored["status"] == "incomplete"
    assert get.method == "GET" and get.path == f"/v1/responses/{truth.id}"
    assert result.returncode == 1
    assert "RemoteProtocolError" in result.stderr
    title, printed = result.stdout.strip().split("\n")
    assert title == "--- Assembled Output ---"
    assert printed and truth.texts[0].startswith(printed)
    # The report went to stderr, without repeating the text.
    assert "Assembled Output" not in result.stderr and printed not in result.stderr
    row = fields(result.stderr)
    assert row["usage source"] == "retrieval"
    assert row["status"] == "incomplete"
    assert row["finish reason"] == "max_output_tokens"
    assert row["output tokens"] == str(stored["usage"]["output_tokens"])
    assert row["input tokens"] == str(stored["usage"]["input_tokens"])


def test_stream_needs_a_key(tmp_path: Path) -> None:
    env = child_env()
    env.pop("OPENAI_API_KEY", None)
    result = ssetally("stream", "Hello", env=env, cwd=tmp_path)
    assert result.returncode == 2
    assert "OPENAI_API_KEY" in result.stderr


def test_stream_api_error(tmp_path: Path) -> None:
    with ReplayServer() as server:
        result = ssetally(
            "stream", "--model", "error-429", "Hello", env=stream_env(server), cwd=tmp_path
        )
    assert result.returncode == 1
    assert "HTTP 429" in result.stderr and "Rate limit" in result.stderr


# --------------------------------------------------------------------------- replay


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def wait_until_serving(proc: subprocess.Popen[bytes], origin: str) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"ssetally replay exited with {proc.returncode}")
        try:
            httpx.get(origin + "/v1/models", timeout=1.0, trust_env=False)
            return
        except httpx.TransportError:
            time.sleep(0.05)
    raise TimeoutError("ssetally replay did not start serving")


@pytest.mark.parametrize("with_file", [False, True], ids=["generated", "capture"])
def test_replay_command_serves(tmp_path: Path, with_file: bool) -> None:
    capture = CORPUS_DIR / CHAT_CAPTURE
    files = [str(capture)] if with_file else []
    log = tmp_path / "replay.log"
    for _ in range(3):  # another process may take the free port before the child binds it
        port = free_port()
        origin = f"http://127.0.0.1:{port}"
        with log.open("wb") as log_file:
            proc = subprocess.Popen(
                [sys.executable, "-m", "ssetally", "replay", "--port", str(port), "--quiet",
                 "--delay", "0", *files],
                env=child_env(), cwd=tmp_path, stdout=log_file, stderr=subprocess.STDOUT,
            )  # fmt: skip
        try:
            try:
                wait_until_serving(proc, origin)
            except RuntimeError:
                continue
            with httpx.Client(timeout=10.0, trust_env=False) as client, connect_usage(
                client, "POST", origin + "/v1/chat/completions", json=CHAT_BODY,
                headers={"Authorization": "Bearer test"},
            ) as stream:  # fmt: skip
                events = list(stream)
            proc.send_signal(signal.SIGINT)
            assert proc.wait(timeout=TIMEOUT) == 0
            break
        finally:
            if proc.poll() is None:
                proc.kill()
                proc.wait(timeout=TIMEOUT)
    else:
        pytest.fail("ssetally replay never started")
    assert f"serving {origin}/v1" in log.read_text()
    report = stream.report
    assert report is not None and report.usage is not None
    assert report.usage.source == "stream" and report.status == "completed"
    assert events[-1].data == "[DONE]"
    if with_file:
        expected = EXPECTED[CHAT_CAPTURE]["reports"][-1]
        assert report.response_id == expected["response_id"]
        assert report.usage.output_tokens == expected["usage"]["output_tokens"]
    else:
        assert report.model == "gpt-4o-mini"
        # The generated answer carries the usage the request asked for, hidden from the caller.
        assert not any(e.data != "[DONE]" and e.json()["choices"] == [] for e in events)
