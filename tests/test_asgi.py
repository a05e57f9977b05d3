"""``ssetally.asgi.UsageMiddleware`` around real FastAPI and Starlette apps served by uvicorn
on 127.0.0.1, relaying a ``ReplayServer`` with httpx."""

from __future__ import annotations

import re
import time
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
import ssetally
from fastapi import FastAPI
from ssetally._replay import ReplayServer
from ssetally.asgi import UsageMiddleware
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response, StreamingResponse
from starlette.routing import Route
from uvicorn_thread import UvicornThread

pytest.importorskip("uvicorn")

TIMEOUT = 10.0
AUTH = {"Authorization": "Bearer test-key-123456"}
CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
SAMPLE = Path(ssetally.__file__).parent / "samples" / "chat_stream.sse"
FAST = ssetally.RetrievalPolicy(deadline=5.0, first_delay=0.02, backoff=2.0, max_delay=0.5)


class ListSink:
    def __init__(self) -> None:
        self.records: list[dict[str, Any]] = []

    def write(self, record: Any) -> bool:
        self.records.append(dict(record))
        return True

    def wait(self, n: int = 1) -> list[dict[str, Any]]:
        deadline = time.monotonic() + TIMEOUT
        while len(self.records) < n and time.monotonic() < deadline:
            time.sleep(0.02)
        return self.records


def make_app(kind: str, upstream: str) -> Any:
    """An app serving LLM answers by relaying ``upstream`` (``http://host:port``)."""
    client = httpx.AsyncClient(timeout=TIMEOUT, trust_env=False)

    async def relay(request: Request) -> Response:
        body = await request.body()
        headers = {k: v for k, v in request.headers.items() if k.startswith("x-replay-")}
        headers["authorization"] = request.headers.get("authorization", "")
        headers["content-type"] = "application/json"
        sent = client.build_request("POST", upstream + request.url.path, content=body,
                                    headers=headers)  # fmt: skip
        resp = await client.send(sent, stream=True)
        content_type = resp.headers.get("content-type", "")
        if content_type.startswith("text/event-stream"):

            async def chunks() -> AsyncIterator[bytes]:
                try:
                    async for chunk in resp.aiter_raw():
                        yield chunk
                finally:
                    await resp.aclose()

            return StreamingResponse(chunks(), resp.status_code, media_type="text/event-stream")
        data = await resp.aread()
        await resp.aclose()
        return Response(data, resp.status_code, media_type=content_type)

    async def boom(request: Request) -> Response:
        async def chunks() -> AsyncIterator[bytes]:
            yield b'data: {"object":"chat.completion.chunk","choices":[{"delta":{"content":"x"}}]}\n\n'
            raise RuntimeError("boom")

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def health(request: Request) -> Response:
        return Response(b"ok")

    paths: list[tuple[str, Callable[..., Any], str]] = [
        ("/v1/chat/completions", relay, "POST"),
        ("/v1/responses", relay, "POST"),
        ("/v1/boom/chat/completions", boom, "POST"),
        ("/health", health, "GET"),
    ]
    if kind == "fastapi":
        app = FastAPI()
        for path, endpoint, method in paths:
            app.add_api_route(path, endpoint, methods=[method])
        return app
    return Starlette(routes=[Route(p, e, methods=[m]) for p, e, m in paths])


def served(app: Any) -> UvicornThread:
    """``app`` under uvicorn on 127.0.0.1, lifespan on."""
    return UvicornThread(app, lifespan="on", timeout=TIMEOUT)


@pytest.fixture(params=["fastapi", "starlette"])
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def post(url: str, body: dict[str, Any], headers: dict[str, str] | None = None) -> httpx.Response:
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
        return client.post(url, json=body, headers={**AUTH, **(headers or {})})


def base(server: ReplayServer) -> str:
    return server.url.removesuffix("/v1")


def test_stream_bytes_identical(kind: str) -> None:
    with ReplayServer(streams=[SAMPLE], cycle=True) as upstream:
        sink = ListSink()
        reports: list[tuple[ssetally.StreamReport, Any]] = []
        plain = make_app(kind, base(upstream))
        wrapped = UsageMiddleware(
            make_app(kind, base(upstream)), sink=sink,
            on_report=lambda r, s: reports.append((r, s)),
        )  # fmt: skip
        with served(plain) as a, served(wrapped) as b:
            want = post(a.url + "/v1/chat/completions", CHAT).content
            got = post(b.url + "/v1/chat/completions", CHAT).content
            health = httpx.get(b.url + "/health", timeout=TIMEOUT)
    assert got == want == SAMPLE.read_bytes()
    assert health.content == b"ok"
    records = sink.wait()
    assert len(records) == 1 and len(reports) == 1
    record = records[0]
    tap = ssetally.UsageTap()
    tap.feed(want)
    truth = tap.finish()
    assert truth.usage is not None
    assert record["usage"]["output_tokens"] == truth.usage.output_tokens
    assert record["usage_source"] == "stream" and record["stream"] is True
    assert record["bytes"]["client"] == len(want) and record["path"] == "/v1/chat/completions"
    assert record["key_fingerprint"] and "test-key" not in str(record)
    assert reports[0][1]["path"] == "/v1/chat/completions"


def normalise(data: bytes) -> bytes:
    data = re.sub(rb'"id":"[^"]*"', b'"id":""', data)
    data = re.sub(rb'"(created|created_at)":\d+', b'"created":0', data)
    return data.replace(b',"usage":null', b"")


def test_include_usage_is_added_and_stripped(kind: str) -> None:
    sink = ListSink()
    # Two fresh upstreams: each answers its first request, so both answers are the same.
    with ReplayServer() as first, ReplayServer() as upstream:
        plain = make_app(kind, base(first))
        wrapped = UsageMiddleware(make_app(kind, base(upstream)), sink=sink, include_usage=True)
        with served(plain) as a, served(wrapped) as b:
            want = post(a.url + "/v1/chat/completions", CHAT).content
            got = post(b.url + "/v1/chat/completions", CHAT).content
        truth = upstream.last_usage
        sent = upstream.requests[-1].body
    assert sent["stream_options"] == {"include_usage": True}
    assert b'"usage":{' not in got
    # The native stripper removes the "usage":null members too once it does: modulo them.
    assert normalise(got) == normalise(want)
    record = sink.wait()[0]
    assert record["injected_usage"] is True and record["stripped_usage_chunks"] == 1
    assert record["usage"]["input_tokens"] == truth["prompt_tokens"]  # type: ignore[index]


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model":"\\ud800m","stream":true,"messages":[{"role":"user","content":"hi"}]}',
        b'{"model":"m","temperature":NaN,"stream":true,"messages":[{"role":"user","content":"hi"}]}',
    ],
    ids=["lone-surrogate", "nan"],
)
def test_include_usage_skipped_when_the_body_cannot_be_sent_again(kind: str, raw: bytes) -> None:
    """A body that has no UTF-8 JSON form once parsed (a lone surrogate escape, a NaN) reaches
    the app as it came, and the record says that usage was not added (never a silent skip)."""
    sink = ListSink()
    with ReplayServer() as upstream:
        wrapped = UsageMiddleware(make_app(kind, base(upstream)), sink=sink, include_usage=True)
        with served(wrapped) as b, httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
            headers = {**AUTH, "content-type": "application/json"}
            answer = client.post(b.url + "/v1/chat/completions", content=raw, headers=headers)
        sent = upstream.requests[-1]
    assert answer.status_code == 200
    assert "stream_options" not in (sent.body or {})
    record = sink.wait()[0]
    assert record["injected_usage"] is False
    assert any("include_usage was not added" in w for w in record["warnings"]), record["warnings"]


def test_again(kind: str) -> None:
    sink = ListSink()
    with ReplayServer() as upstream:
        with served(UsageMiddleware(make_app(kind, base(upstream)), sink=sink)) as b:
            answer = post(b.url + "/v1/chat/completions", {**CHAT, "stream": False})
        truth = upstream.last_usage
    assert answer.json()["usage"] == truth
    record = sink.wait()[0]
    assert record["stream"] is False and record["status"] == "completed"
    assert record["usage"]["output_tokens"] == truth["completion_tokens"]  # type: ignore[index]


def test_app_raises_mid_stream(kind: str) -> None:
    sink = ListSink()
    app = UsageMiddleware(make_app(kind, "http://127.0.0.1:9"), sink=sink)
    with served(app) as b, pytest.raises(httpx.HTTPError):
        post(b.url + "/v1/boom/chat/completions", CHAT)
    record = sink.wait()[0]
    assert record["ended_by"] == "app raised RuntimeError"
    assert record["status"] == "truncated" and record["events"] == 1


def test_client_disconnect_gets_retrieval(kind: str) -> None:
    sink = ListSink()
    body = {"model": "gpt-4o-mini", "stream": True, "input": "Hello there"}
    with ReplayServer() as upstream:
        app = UsageMiddleware(
            make_app(kind, base(upstream)), sink=sink, retrieve=True,
            upstream_url=base(upstream), retrieval=FAST,
        )  # fmt: skip
        with served(app) as b:
            with httpx.Client(timeout=TIMEOUT, trust_env=False) as client:
                headers = {**AUTH, "x-replay-delay-ms": "100"}
                with client.stream("POST", b.url + "/v1/responses", json=body,
                                   headers=headers) as resp:  # fmt: skip
                    for _ in resp.iter_raw():
                        break
            record = sink.wait()[0]
        truth = upstream.last_usage
    assert record["ended_by"] == "client disconnected"
    assert record["usage_source"] == "retrieval"
    assert record["usage"]["output_tokens"] == truth["output_tokens"]  # type: ignore[index]


def test_retrieval_without_upstream_url_says_so(kind: str) -> None:
    sink = ListSink()
    body = {"model": "gpt-4o-mini", "stream": True, "input": "Hello there"}
    with ReplayServer() as upstream:
        app = UsageMiddleware(make_app(kind, base(upstream)), sink=sink, retrieve=True)
        with served(app) as b:
            with pytest.raises(httpx.HTTPError):  # the app relays the cut
                post(b.url + "/v1/responses", body, {"x-replay-cut-after-events": "4"})
            record = sink.wait()[0]
    assert any(
        a["source"] == "retrieval" and "upstream_url" in a["reason"] for a in record["attempts"]
    )


def test_metering_faults_never_touch_the_response(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_feed(self: Any, chunk: bytes) -> bytes:
        raise RuntimeError("tap is broken")

    class BrokenSink:
        def write(self, record: Any) -> bool:
            raise OSError("disk full")

    def broken_report(report: Any, scope: Any) -> None:
        raise ValueError("callback is broken")

    with ReplayServer(streams=[SAMPLE], cycle=True) as upstream:
        plain = make_app(kind, base(upstream))
        wrapped = UsageMiddleware(
            make_app(kind, base(upstream)), sink=BrokenSink(), on_report=broken_report
        )
        with served(plain) as a, served(wrapped) as b:
            want = post(a.url + "/v1/chat/completions", CHAT).content
            monkeypatch.setattr(ssetally.asgi.StreamMeter, "feed", broken_feed)
            got = post(b.url + "/v1/chat/completions", CHAT).content
            monkeypatch.undo()
            again = post(b.url + "/v1/chat/completions", CHAT).content
    assert got == want == again
    assert wrapped.faults >= 2  # the tap, then the sink (twice)
