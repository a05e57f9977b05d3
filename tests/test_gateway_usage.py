"""Credentials and usage that could be silently wrong, through every front-end that meters:
the proxy (``ProxyServer``), ``MeteringTransport`` and ``connect_usage``.

Upstreams are small scripted servers on 127.0.0.1 (``Scripted`` from
``gateway_support``); every wait is bounded.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import socket
import stat
from pathlib import Path
from typing import Any

import httpx
import pytest
from gateway_support import (
    AUTH,
    CHAT,
    KEY,
    TIMEOUT,
    Scripted,
    proxied,
    records,
    sse_chat_chunk,
)
from ssetally import APIStatusError, MeteringTransport, RetrievalPolicy, StreamReport, connect_usage
from ssetally._gateway import key_fingerprint
from ssetally._replay import ReplayServer

pytest.importorskip("uvicorn")

POLICY = RetrievalPolicy(deadline=3.0, first_delay=0.01, backoff=2.0, max_delay=0.2)


def _attempt(report_or_record: Any, source: str) -> Any:
    attempts = (
        report_or_record["attempts"]
        if isinstance(report_or_record, dict)
        else [
            {"source": a.source, "ok": a.ok, "reason": a.reason} for a in report_or_record.attempts
        ]
    )
    found = [a for a in attempts if a["source"] == source]
    assert len(found) == 1, attempts
    return found[0]


def _sse(h: Any, status: int = 200, content_type: str = "text/event-stream") -> None:
    h.send_response(status)
    h.send_header("Content-Type", content_type)
    h.end_headers()


# --------------------------------------------------------------------------- 6. credentials


def _cut_responses(response_id: str, redirect_to: str | None = None) -> Any:
    """POST: a Responses stream cut after ``response.created`` and one delta; GET of the
    response: a redirect to ``redirect_to`` (or a 500)."""

    def handle(h: Any, stop: Any) -> None:
        if h.command == "GET":
            h.send_response(302 if redirect_to else 500)
            if redirect_to:
                h.send_header("Location", redirect_to + "/v1/responses/stolen")
            h.send_header("Content-Length", "0")
            h.end_headers()
            return
        _sse(h)
        created = {
            "type": "response.created",
            "sequence_number": 0,
            "response": {
                "id": response_id,
                "object": "response",
                "status": "in_progress",
                "model": "gpt-4o-mini",
                "usage": None,
            },
        }
        delta = {"type": "response.output_text.delta", "sequence_number": 1, "delta": "Hello"}
        for event in (created, delta):
            h.wfile.write(
                b"event: "
                + event["type"].encode()
                + b"\ndata: "
                + json.dumps(event).encode()
                + b"\n\n"
            )
        h.wfile.flush()
        # The connection closes here: no terminal event.

    return handle


def _read_responses(origin: str) -> StreamReport:
    body = {"model": "gpt-4o-mini", "stream": True, "input": "Hi", "store": True}
    client = httpx.Client(timeout=TIMEOUT, trust_env=False, follow_redirects=True)
    with (
        client,
        connect_usage(
            client,
            "POST",
            origin + "/v1/responses",
            json=body,
            headers=AUTH,
            retrieval=POLICY,
            estimate=False,
        ) as stream,
    ):
        for _ in stream:
            pass
    assert stream.report is not None
    return stream.report


class TestCredentials:
    def test_retrieval_redirect_is_not_followed(self) -> None:
        with (
            Scripted(lambda h, stop: None) as elsewhere,
            Scripted(_cut_responses("resp_abc123", elsewhere.origin)) as upstream,
        ):
            report = _read_responses(upstream.origin)
            got = list(upstream.requests)
            stolen = list(elsewhere.requests)
        assert got == [("POST", "/v1/responses"), ("GET", "/v1/responses/resp_abc123")]
        assert stolen == []
        retrieval = _attempt(report, "retrieval")
        assert not retrieval["ok"]
        assert "redirect" in retrieval["reason"] and "not followed" in retrieval["reason"]

    def test_proxy_retrieval_redirect_is_not_followed(self, tmp_path: Path) -> None:
        body = {"model": "gpt-4o-mini", "stream": True, "input": "Hi", "store": True}
        with (
            Scripted(lambda h, stop: None) as elsewhere,
            Scripted(_cut_responses("resp_abc123", elsewhere.origin)) as upstream,
            proxied(upstream.origin, tmp_path, retrieval=POLICY, estimate=False) as p,
        ):
            with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
                client.post(p.url + "/v1/responses", json=body, headers=AUTH).read()
            recs = records(p, tmp_path)
            stolen = list(elsewhere.requests)
        assert stolen == []
        assert "not followed" in _attempt(recs[0], "retrieval")["reason"]

    @pytest.mark.parametrize(
        "response_id", ["..", ".", "a/b", "resp_x/../../v1", "r" * 300, "resp x", "%2e%2e"]
    )
    def test_invalid_response_id_sends_no_get(self, response_id: str) -> None:
        with Scripted(_cut_responses(response_id)) as upstream:
            report = _read_responses(upstream.origin)
            got = list(upstream.requests)
        assert got == [("POST", "/v1/responses")]
        retrieval = _attempt(report, "retrieval")
        assert not retrieval["ok"] and "not a valid id" in retrieval["reason"]

    def test_upstream_password_never_reaches_a_log(
        self, tmp_path: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            closed_port = s.getsockname()[1]
        password = "s3cretpassw0rd"
        caplog.set_level(logging.DEBUG)
        upstream = f"http://user:{password}@127.0.0.1:{closed_port}"
        with proxied(upstream, tmp_path, connect_timeout=2.0) as proxy:
            r = httpx.post(
                proxy.url + "/v1/chat/completions",
                json=CHAT,
                headers=AUTH,
                timeout=TIMEOUT,
                trust_env=False,
            )
            recs = records(proxy, tmp_path)
        assert r.status_code == 502
        assert password not in r.text
        logged = [rec.getMessage() + str(rec.exc_info or "") for rec in caplog.records]
        assert any("upstream" in line for line in logged)  # the failure was logged
        for line in logged:
            assert password not in line
        assert password not in json.dumps(recs)

    @pytest.mark.parametrize("param", ["key", "api_key", "token"])
    def test_transport_log_line_has_no_query_key(
        self, param: str, caplog: pytest.LogCaptureFixture
    ) -> None:
        secret = "AIzaSECRETSECRET123"
        caplog.set_level(logging.INFO, logger="ssetally")
        with (
            ReplayServer(require_auth=False) as upstream,
            httpx.Client(transport=MeteringTransport(), timeout=TIMEOUT, trust_env=False) as client,
        ):
            url = f"{upstream.url}/chat/completions?{param}={secret}&other=1"
            with client.stream("POST", url, json=CHAT) as response:
                response.read()
        ours = [r.getMessage() for r in caplog.records if r.name.startswith("ssetally")]
        assert ours, "the transport logged no report"
        assert all(secret not in line for line in ours), ours
        assert any("other=1" in line for line in ours), ours


class TestFingerprints:
    def _fingerprint(self, tmp_path: Path, sink_dir: Path, **options: Any) -> str:
        sink_dir.mkdir(exist_ok=True)
        with ReplayServer() as upstream, proxied(upstream.origin, sink_dir, **options) as proxy:
            with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
                client.post(proxy.url + "/v1/chat/completions", json=CHAT, headers=AUTH).read()
            recs = records(proxy, sink_dir)
        fp = recs[-1]["key_fingerprint"]
        assert isinstance(fp, str) and len(fp) == 16
        return fp

    def test_default_salt_is_random_per_sink_and_kept(self, tmp_path: Path) -> None:
        one = tmp_path / "one"
        first = self._fingerprint(tmp_path, one)
        salt = one / "usage.jsonl.salt"
        assert salt.exists()
        assert stat.S_IMODE(os.stat(salt).st_mode) == 0o600
        assert first != hashlib.sha256(KEY.encode()).hexdigest()[:16]
        assert first != key_fingerprint(KEY, "")
        # A restart on the same sink: the same fingerprint.
        assert self._fingerprint(tmp_path, one) == first
        # Another sink: another salt.
        assert self._fingerprint(tmp_path, tmp_path / "two") != first

    def test_given_salt_is_used(self, tmp_path: Path) -> None:
        fp = self._fingerprint(tmp_path, tmp_path / "given", key_salt="pepper-0123456789")
        assert fp == key_fingerprint(KEY, "pepper-0123456789")
        assert not (tmp_path / "given" / "usage.jsonl.salt").exists()

    def test_short_salt_file_is_refused(self, tmp_path: Path) -> None:
        sink = tmp_path / "bad"
        sink.mkdir()
        (sink / "usage.jsonl.salt").write_text("short\n")
        with pytest.raises(ValueError, match="too short"):
            self._fingerprint(tmp_path, sink)


# --------------------------------------------------------------------------- 7. wrong usage


def _finish(response_id: str) -> bytes:
    chunk = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": {}, "finish_reason": "stop"}],
        "usage": None,
    }
    return b"data: " + json.dumps(chunk).encode() + b"\n\n"


def _two_responses(finish: bool) -> bytes:
    parts = []
    for rid, usage in (("chatcmpl-first", (5, 7)), ("chatcmpl-second", (3, 4))):
        parts.append(sse_chat_chunk(rid, "Hello"))
        if finish:
            parts.append(_finish(rid))
        counts = {"prompt_tokens": usage[0], "completion_tokens": usage[1]}
        parts.append(sse_chat_chunk(rid, None, {**counts, "total_tokens": sum(usage)}))
    return b"".join(parts) + b"data: [DONE]\n\n"


TWO_RESPONSES = _two_responses(finish=True)
#: The same without finish chunks: the first usage chunk alone ends the first response.
TWO_UNFINISHED = _two_responses(finish=False)
CHAT_USAGE = {**CHAT, "stream_options": {"include_usage": True}}


def _answer(data: bytes, status: int = 200, content_type: str = "text/event-stream") -> Any:
    def handle(h: Any, stop: Any) -> None:
        _sse(h, status, content_type)
        h.wfile.write(data)

    return handle


def _via_transport(origin: str, **options: Any) -> StreamReport:
    reports: list[StreamReport] = []
    transport = MeteringTransport(on_report=lambda r, req: reports.append(r), **options)
    with transport, httpx.Client(transport=transport, timeout=TIMEOUT, trust_env=False) as c:
        with c.stream("POST", origin + "/v1/chat/completions", json=CHAT_USAGE) as response:
            response.read()
        transport.close()
    assert len(reports) == 1
    return reports[0]


class TestSilentWrongUsage:
    def _two_warned(self, warnings: Any) -> None:
        text = " ".join(warnings)
        assert "chatcmpl-first" in text and "chatcmpl-second" in text, warnings

    def test_two_responses_in_one_stream(self, tmp_path: Path) -> None:
        self._check_two(tmp_path, TWO_RESPONSES)

    def test_two_responses_without_finish_chunks(self, tmp_path: Path) -> None:
        self._check_two(tmp_path, TWO_UNFINISHED)

    def _check_two(self, tmp_path: Path, data: bytes) -> None:
        with Scripted(_answer(data)) as upstream:
            with proxied(upstream.origin, tmp_path) as proxy:
                with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
                    r = client.post(proxy.url + "/v1/chat/completions", json=CHAT_USAGE)
                    assert r.content == data
                recs = records(proxy, tmp_path)
            via_transport = _via_transport(upstream.origin)
            with (
                httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
                connect_usage(
                    client, "POST", upstream.origin + "/v1/chat/completions", json=CHAT_USAGE
                ) as stream,
            ):
                for _ in stream:
                    pass
        self._two_warned(recs[0]["warnings"])
        assert [r["response_id"] for r in recs[0]["responses"]] == [
            "chatcmpl-first",
            "chatcmpl-second",
        ]
        assert recs[0]["responses"][0]["usage"]["output_tokens"] == 7
        self._two_warned(via_transport.warnings)
        assert stream.report is not None
        self._two_warned(stream.report.warnings)
        assert [r.response_id for r in stream.responses] == ["chatcmpl-first", "chatcmpl-second"]

    def test_sse_error_answer_is_not_estimated(self, tmp_path: Path) -> None:
        body = sse_chat_chunk("chatcmpl-err", "lots of words to count " * 20)
        with Scripted(_answer(body, 500)) as upstream:
            with proxied(upstream.origin, tmp_path, estimate=True) as proxy:
                r = httpx.post(
                    proxy.url + "/v1/chat/completions", json=CHAT, timeout=TIMEOUT, trust_env=False
                )
                assert r.status_code == 500
                recs = records(proxy, tmp_path)
            report = _via_transport(upstream.origin, estimate=True)
            with (
                httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
                pytest.raises(APIStatusError),
                connect_usage(client, "POST", upstream.origin + "/v1/chat/completions", json=CHAT),
            ):
                pass
        for attempt, source in (
            (_attempt(recs[0], "estimate"), recs[0]["usage_source"]),
            (_attempt(report, "estimate"), report.usage and report.usage.source),
        ):
            assert not attempt["ok"]
            assert "HTTP 500" in attempt["reason"]
            assert source != "estimate"

    def test_html_answer_on_an_llm_path_says_not_metered(self, tmp_path: Path) -> None:
        page = b"<html><body>Please log in</body></html>"
        with (
            Scripted(_answer(page, 200, "text/html")) as upstream,
            proxied(upstream.origin, tmp_path) as proxy,
        ):
            r = httpx.post(
                proxy.url + "/v1/chat/completions", json=CHAT, timeout=TIMEOUT, trust_env=False
            )
            recs = records(proxy, tmp_path)
        assert r.content == page
        assert any("not metered" in w and "text/html" in w for w in recs[0]["warnings"]), recs


# --------------------------------------------------------------------------- 8. crashes


def _deep_stream(depth: int) -> bytes:
    nested = b"[" * depth + b"]" * depth
    usage_chunk = (
        b'data: {"id":"chatcmpl-deep","object":"chat.completion.chunk","created":1,'
        b'"model":"gpt-4o-mini","choices":[],"usage":{"prompt_tokens":1,'
        b'"completion_tokens":2,"total_tokens":3,"x":' + nested + b"}}\n\n"
    )
    return sse_chat_chunk("chatcmpl-deep", "Hello") + usage_chunk + b"data: [DONE]\n\n"


def _read_deep(depth: int) -> tuple[list[str], StreamReport | None]:
    with (
        Scripted(_answer(_deep_stream(depth))) as upstream,
        httpx.Client(timeout=TIMEOUT, trust_env=False) as client,
        connect_usage(
            client,
            "POST",
            upstream.origin + "/v1/chat/completions",
            json=CHAT,
            include_usage=True,
        ) as stream,
    ):
        events = [e.data for e in stream]
    return events, stream.report


class TestCrashes:
    @pytest.mark.parametrize("depth", [1000, 100_000])
    def test_deeply_nested_usage_chunk_raises_nothing(self, depth: int) -> None:
        events, report = _read_deep(depth)
        assert report is not None
        assert events[-1] == "[DONE]"
        assert any("Hello" in e for e in events)
        # The usage is read whatever the nesting of a member beside the counts.
        assert report.usage is not None and report.usage.source == "stream"
        assert (report.usage.input_tokens, report.usage.output_tokens) == (1, 2)

    @pytest.mark.parametrize("depth", [1000, 100_000])
    def test_deeply_nested_injected_chunk_is_hidden(self, depth: int) -> None:
        events, _ = _read_deep(depth)
        assert not [e for e in events if '"choices":[]' in e]
