"""The ``ssetally`` command's reports and help: input that is not an event stream, captures of
several responses, the layout of the text report (assembled output first, then the figures and
timings), ``stream --json`` and ``--help`` of every command, a taken port, a dead server.

Every subprocess has a timeout and talks to 127.0.0.1 only; expected figures come from the
inputs (``corpus_expected.json``, the replay server's truth, the file sizes).
"""

from __future__ import annotations

import argparse
import io
import json
import socket
from importlib import resources
from pathlib import Path

import httpx
import pytest
from ssetally import Attempt, StreamReport, Usage, UsageTap
from ssetally._cli import build_parser
from ssetally._cli._proxy import proxy_config
from ssetally._cli._report import SAMPLE
from ssetally._cli._text import print_report
from ssetally._gateway import ProxyConfig
from ssetally._metering import RetrievalPolicy
from ssetally._replay import Faults, ReplayServer
from test_cli import (
    CHAT_BODY,
    EXPECTED,
    child_env,
    corpus_capture,
    fields,
    free_port,
    sample_truth,
    ssetally,
    stream_env,
)

MULTI = "openai-responses/openai-reasoning-encrypted-content.1.chunks.txt"
USAGE_KEYS = ("input_tokens", "output_tokens", "total_tokens")
#: The exit status of ``report`` on input that is not an LLM event stream.
NOT_A_STREAM = 3


def blocks(output: str) -> dict[str, dict[str, str]]:
    """Each ``--- title ---`` section of a text report and its ``name: value`` rows."""
    out: dict[str, dict[str, str]] = {}
    rows: dict[str, str] = {}
    for line in output.splitlines():
        if line.startswith("--- ") and line.endswith(" ---"):
            rows = out.setdefault(line[4:-4], {})
        elif not line.startswith(("note:", "warning:")):
            name, sep, value = line.partition(": ")
            if sep:
                rows[name.strip()] = value
    return out


# --------------------------------------------------------------------------- not a stream


@pytest.mark.parametrize(
    "content",
    [b"", b"hello, this is not a stream\nat all\n", bytes(range(256)) * 8, b"\x00\xff" * 100],
    ids=["empty", "garbage", "binary", "nul"],
)
@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_report_refuses_input_that_is_not_an_event_stream(
    tmp_path: Path, content: bytes, as_json: bool
) -> None:
    path = tmp_path / "capture.sse"
    path.write_bytes(content)
    args = ["report", str(path)] + (["--json"] if as_json else [])
    result = ssetally(*args, env=child_env(), cwd=tmp_path)
    assert result.returncode == NOT_A_STREAM, result.stdout
    assert result.stdout == ""
    assert "not an event stream" in result.stderr and str(path) in result.stderr
    assert f"{len(content)} bytes" in result.stderr
    assert "Traceback" not in result.stderr and "estimate" not in result.stderr


def test_report_refuses_events_of_no_known_api(tmp_path: Path) -> None:
    path = tmp_path / "ticker.sse"
    path.write_bytes(b"event: tick\ndata: 1\n\nevent: tick\ndata: 2\n\n")
    result = ssetally("report", str(path), env=child_env(), cwd=tmp_path)
    assert result.returncode == NOT_A_STREAM
    assert "2 events" in result.stderr and "not an LLM event stream" in result.stderr
    assert result.stdout == ""


# --------------------------------------------------------------------------- several responses


def test_report_on_a_capture_of_several_responses(tmp_path: Path) -> None:
    expected = EXPECTED[MULTI]["reports"]
    assert len(expected) > 1
    path = corpus_capture(MULTI, tmp_path)

    result = ssetally("report", str(path), "--json", env=child_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert [r["response_id"] for r in report["responses"]] == [e["response_id"] for e in expected]
    for got, want in zip(report["responses"], expected):
        assert {k: got["usage"][k] for k in want["usage"]} == want["usage"]
        assert got["attempts"][0]["source"] == "stream" and got["attempts"][0]["ok"] is True
    total = report["total"]
    assert total["responses"] == total["with_usage"] == len(expected)
    for key in USAGE_KEYS:
        assert total[key] == sum(e["usage"][key] for e in expected), key
    assert report["response_id"] == expected[-1]["response_id"]

    text = ssetally("report", str(path), env=child_env(), cwd=tmp_path)
    assert text.returncode == 0, text.stderr
    sections = blocks(text.stdout)
    n = len(expected)
    assert sections[f"Streaming & Tokenization Report: {n} responses"]["source"] == str(path)
    assert sections[f"Streaming & Tokenization Report: {n} responses"]["bytes"] == str(
        path.stat().st_size
    )
    for i, want in enumerate(expected, 1):
        rows = sections[f"response {i} of {n}"]
        assert rows["response id"] == want["response_id"]
        assert rows["output tokens"] == str(want["usage"]["output_tokens"])
        assert rows["input tokens"] == str(want["usage"]["input_tokens"])
    rows = sections[f"Total of {n} responses"]
    assert rows["with usage"] == f"{n} of {n}"
    for key, label in zip(USAGE_KEYS, ("input tokens", "output tokens", "total tokens")):
        assert rows[label] == str(sum(e["usage"][key] for e in expected))


def test_report_on_two_replayed_answers_in_one_file(tmp_path: Path) -> None:
    bodies = []
    texts = []
    with ReplayServer() as server, httpx.Client(timeout=10.0, trust_env=False) as client:
        for prompt in ("first", "second"):
            body = {**CHAT_BODY, "messages": [{"role": "user", "content": prompt}]}
            body["stream_options"] = {"include_usage": True}
            answer = client.post(
                server.url + "/chat/completions", json=body,
                headers={"Authorization": "Bearer test"},
            )  # fmt: skip
            bodies.append(answer.content)
            texts.append(server.last)
    path = tmp_path / "two.sse"
    path.write_bytes(b"".join(bodies))
    result = ssetally("report", str(path), env=child_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    sections = blocks(result.stdout)
    total = sections["Total of 2 responses"]
    assert total["output tokens"] == str(sum(t.output_tokens for t in texts))
    assert total["input tokens"] == str(sum(t.input_tokens for t in texts))
    for i, truth in enumerate(texts, 1):
        assert sections[f"response {i} of 2"]["response id"] == truth.id
        assert truth.texts[0] in result.stdout
    assert result.stdout.startswith("--- Assembled Output")


def test_text_report_prints_each_responses_own_output() -> None:
    # When the tap gives each response its own output, each is printed under its own title.
    outputs = [
        {"choices": [{"index": 0, "text": t, "refusal": None, "tool_calls": []}]}
        for t in ("alpha text", "beta text")
    ]
    responses = [
        StreamReport(
            usage=Usage(input_tokens=3, output_tokens=n, total_tokens=3 + n),
            api="chat.completions",
            response_id=rid,
            status="completed",
            output=o,
        )
        for rid, n, o in (("r1", 5, outputs[0]), ("r2", 7, outputs[1]))
    ]
    out = io.StringIO()
    print_report(responses[-1], "capture", out, responses=responses)
    printed = out.getvalue()
    assert "--- Assembled Output (response 1: r1) ---\nalpha text\n" in printed
    assert "--- Assembled Output (response 2: r2) ---\nbeta text\n" in printed
    assert blocks(printed)["Total of 2 responses"]["output tokens"] == "12"
    quiet = io.StringIO()
    print_report(responses[-1], "capture", quiet, responses=responses, text=False)
    assert "alpha text" not in quiet.getvalue() and "Assembled Output" not in quiet.getvalue()


# --------------------------------------------------------------------------- layout


def test_text_report_layout_on_the_sample(tmp_path: Path) -> None:
    _, text = sample_truth()
    result = ssetally("report", env=child_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    assert lines[0] == "--- Assembled Output ---"
    report_at = lines.index("--- Streaming & Tokenization Report ---")
    assert "\n".join(lines[1:report_at]).strip() == text.strip()
    row = fields(result.stdout)
    size = len(resources.files("ssetally").joinpath("samples", SAMPLE).read_bytes())
    assert row["bytes"] == str(size)
    assert row["error"] == "-"
    assert "timings" in row  # a capture has no clock readings, and says so

    bare = ssetally("report", "--no-text", env=child_env(), cwd=tmp_path)
    assert bare.returncode == 0, bare.stderr
    assert bare.stdout.splitlines()[0] == "--- Streaming & Tokenization Report ---"
    assert text.strip()[:40] not in bare.stdout
    assert fields(bare.stdout) == row


def test_text_report_shows_the_error_of_a_failed_stream(tmp_path: Path) -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "input": "Hi"}
    with ReplayServer(faults=Faults(error_event=3)) as server, httpx.Client(
        timeout=10.0, trust_env=False
    ) as client:  # fmt: skip
        answer = client.post(
            server.url + "/responses", json=body, headers={"Authorization": "Bearer test"}
        )
    path = tmp_path / "failed.sse"
    path.write_bytes(answer.content)
    as_json = ssetally("report", str(path), "--json", env=child_env(), cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["status"] == "failed" and report["error"]
    result = ssetally("report", str(path), env=child_env(), cwd=tmp_path)
    row = fields(result.stdout)
    assert row["status"] == "failed"
    error = report["error"]
    message = error.get("message") if isinstance(error, dict) else str(error)
    assert message and message in row["error"]


def test_usage_tap_reports_list_the_stream_attempt(tmp_path: Path) -> None:
    tap = UsageTap()
    tap.feed(b'data: {"id":"c","object":"chat.completion.chunk","choices":[]}\n\n')
    (attempt,) = tap.snapshot().attempts
    assert attempt.source == "stream" and attempt.ok is False
    tap.feed(b'data: {"id":"c","choices":[],"usage":{"prompt_tokens":2,"completion_tokens":3,')
    tap.feed(b'"total_tokens":5}}\n\ndata: [DONE]\n\n')
    report = tap.finish()
    assert report.attempts == (Attempt("stream", True, "usage read from the stream"),)
    assert all(r.attempts[0].source == "stream" for r in tap.reports)

    result = ssetally("report", "--json", env=child_env(), cwd=tmp_path)
    attempts = json.loads(result.stdout)["attempts"]
    assert attempts == [{"source": "stream", "ok": True, "reason": "usage read from the stream"}]


# --------------------------------------------------------------------------- stream


def test_stream_json_stdout_is_json_and_text_report_has_timings(tmp_path: Path) -> None:
    with ReplayServer(delay=0.01) as server:
        as_json = ssetally("stream", "--json", "Hello", env=stream_env(server), cwd=tmp_path)
        truth = server.last
        text = ssetally("stream", "--api", "chat", "Hello", env=stream_env(server), cwd=tmp_path)
    assert as_json.returncode == 0, as_json.stderr
    report = json.loads(as_json.stdout)  # nothing but the JSON on stdout
    assert report["usage"]["output_tokens"] == truth.output_tokens
    assert report["attempts"][0]["source"] == "stream"
    assert text.returncode == 0, text.stderr
    row = fields(text.stdout)
    for name in ("ttft", "inter-token", "tokens/s", "duration"):
        assert row[name] != "-", name
    assert float(row["ttft"].removesuffix(" s")) > 0
    assert float(row["tokens/s"]) > 0


def test_stream_connection_error_names_the_url(tmp_path: Path) -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"  # nothing listens there
    env = child_env(OPENAI_BASE_URL=url, OPENAI_API_KEY="sk-secret-test-key")
    result = ssetally("stream", "--api", "chat", "Hello", env=env, cwd=tmp_path)
    assert result.returncode == 1
    assert f"{url}/chat/completions" in result.stderr
    assert "ConnectError" in result.stderr
    assert "Traceback" not in result.stderr and "sk-secret" not in result.stderr


# --------------------------------------------------------------------------- help


def subcommands() -> dict[str, argparse.ArgumentParser]:
    (sub,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(sub.choices)


@pytest.mark.parametrize("command", ["report", "stream", "replay"])
def test_help_documents_every_option_and_its_default(tmp_path: Path, command: str) -> None:
    result = ssetally(command, "--help", env=child_env(), cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    parser = subcommands()[command]
    help_text = " ".join(result.stdout.split())
    for action in parser._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{command}: {action.dest} has no help"
        shown = any(s in help_text for s in action.option_strings) or action.dest in help_text
        assert shown, action.dest
        default = action.default
        if action.option_strings and default not in (None, False):
            assert f"(default: {default})" in help_text, (command, action.dest)


UPSTREAM = "http://127.0.0.1:9"


def proxy_config_of(*options: str) -> ProxyConfig:
    return proxy_config(build_parser().parse_args(["proxy", "--upstream", UPSTREAM, *options]))


def test_proxy_options_default_to_the_config_defaults(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("SSETALLY_KEY_SALT", raising=False)
    config = proxy_config_of()
    assert config == ProxyConfig(upstream=UPSTREAM, instance_id=config.instance_id)


def test_proxy_options_set_the_config() -> None:
    config = proxy_config_of(
        *("--no-retrieve", "--no-estimate", "--no-cost", "--no-otel", "--inject-usage"),
        *("--max-body-bytes", "5", "--read-timeout", "2.5", "--upstream-client", "httpx"),
        *("--idle-timeout", "0", "--stream-deadline", "7", "--retrieval-deadline", "3"),
        *("--instance-id", "i-1", "--key-salt", "salt", "--subject-header", "X-User"),
    )
    assert (config.retrieve, config.estimate, config.cost, config.otel) == (False,) * 4
    assert config.inject_usage and config.metering
    assert (config.max_body_bytes, config.read_timeout, config.upstream_client) == (5, 2.5, "httpx")
    assert (config.idle_timeout, config.stream_deadline) == (None, 7.0)  # 0: no limit
    assert config.retrieval == RetrievalPolicy(deadline=3.0)
    assert (config.instance_id, config.key_salt, config.subject_header) == ("i-1", "salt", "X-User")
    assert not proxy_config_of("--no-metering").metering
    # --otel sets up the SDK; the config's otel (record spans at all) stays on.
    assert proxy_config_of("--otel").otel


def test_no_arguments_prints_the_help(tmp_path: Path) -> None:
    result = ssetally(env=child_env(), cwd=tmp_path)
    assert result.returncode == 2
    for command in ("report", "stream", "replay", "proxy"):
        assert command in result.stdout
    assert "usage: ssetally" in result.stdout and "--help" in result.stdout


def test_replay_on_a_taken_port_says_so(tmp_path: Path) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = ssetally("replay", "--port", str(port), env=child_env(), cwd=tmp_path)
    assert result.returncode == 2
    assert f"port {port} is taken" in result.stderr
    assert "Traceback" not in result.stderr
