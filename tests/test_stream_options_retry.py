"""A server that rejects the injected ``stream_options`` (HTTP 400 naming it, in OpenAI's error
format) gets the caller's own request once more, and that answer is metered as usual:
``connect_usage``, ``aconnect_usage``, ``MeteringTransport`` and ``AsyncMeteringTransport``.

The server is a FastAPI app under uvicorn on 127.0.0.1 that answers like an OpenAI-compatible
deployment without ``stream_options`` support (Azure's classic answer to it); its streams carry
no usage, so the report is the tiktoken estimate of the text it sent.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import openai
import pytest
import tiktoken
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, StreamingResponse
from ssetally import (
    APIStatusError,
    AsyncMeteringTransport,
    MeteringTransport,
    StreamReport,
    aconnect_usage,
    connect_usage,
)
from uvicorn_thread import UvicornThread

TIMEOUT = 30.0
WORDS = ["Tallies ", "count ", "every ", "token ", "twice."]
TEXT = "".join(WORDS)
BODY: dict[str, Any] = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "Hi"}],
}
#: What an Azure OpenAI deployment of an older API version answers to ``stream_options``.
REJECTION = {
    "error": {
        "message": "Unrecognized request argument supplied: stream_options",
        "type": "invalid_request_error",
        "param": None,
        "code": None,
    }
}
#: Another 400, which must be passed on as it is.
OTHER_ERROR = {
    "error": {
        "message": "The model `nope` does not exist or you do not have access to it.",
        "type": "invalid_request_error",
        "param": None,
        "code": "model_not_found",
    }
}


def chunk(delta: dict[str, Any], finish: str | None = None) -> bytes:
    obj = {
        "id": "chatcmpl-retry",
        "object": "chat.completion.chunk",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
    }
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


async def sse() -> AsyncIterator[bytes]:
    yield chunk({"role": "assistant", "content": ""})
    for word in WORDS:
        yield chunk({"content": word})
    yield chunk({}, "stop")
    yield b"data: [DONE]\n\n"


def make_app(bodies: list[dict[str, Any]], rejects: bool) -> FastAPI:
    app = FastAPI()

    @app.post("/v1/chat/completions")
    async def completions(request: Request) -> Any:
        body = await request.json()
        bodies.append(body)
        if body.get("model") == "nope":
            return JSONResponse(OTHER_ERROR, status_code=400)
        if rejects and "stream_options" in body:
            return JSONResponse(REJECTION, status_code=400)
        return StreamingResponse(sse(), media_type="text/event-stream")

    return app


class Serve(UvicornThread):
    """The app under uvicorn in a thread; ``bodies`` are the JSON bodies it received."""

    def __init__(self, rejects: bool = True) -> None:
        self.bodies: list[dict[str, Any]] = []
        super().__init__(make_app(self.bodies, rejects), timeout=TIMEOUT)

    @property
    def url(self) -> str:
        return super().url + "/v1"


@pytest.fixture
def server() -> Iterator[Serve]:
    with Serve() as s:
        yield s


def expected_tokens() -> int:
    return len(tiktoken.get_encoding("o200k_base").encode_ordinary(TEXT))


def check_retried(report: StreamReport | None, server: Serve) -> None:
    """Two requests: the injected one, then the caller's body unchanged; an estimate."""
    assert [("stream_options" in b) for b in server.bodies] == [True, False]
    assert server.bodies[1] == BODY
    assert report is not None
    assert report.status == "completed"
    assert report.usage is not None and report.usage.source == "estimate"
    assert report.usage.output_tokens == expected_tokens()
    assert [a.source for a in report.attempts] == ["stream", "estimate"]
    assert any("rejected stream_options" in w for w in report.warnings), report.warnings


def texts(events: list[Any]) -> str:
    out = ""
    for event in events:
        if event.data != "[DONE]":
            out += event.json()["choices"][0]["delta"].get("content") or ""
    return out


def test_connect_usage_retries_without_stream_options(server: Serve) -> None:
    url = server.url + "/chat/completions"
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as client, connect_usage(
        client, "POST", url, json=BODY
    ) as s:  # fmt: skip
        events = list(s)
    assert texts(events) == TEXT and events[-1].data == "[DONE]"
    check_retried(s.report, server)


async def test_aconnect_usage_retries_without_stream_options(server: Serve) -> None:
    url = server.url + "/chat/completions"
    async with httpx.AsyncClient(timeout=TIMEOUT, trust_env=False) as client, aconnect_usage(
        client, "POST", url, json=BODY
    ) as s:  # fmt: skip
        events = [e async for e in s]
    assert texts(events) == TEXT
    check_retried(s.report, server)


def test_another_400_is_raised_without_a_retry(server: Serve) -> None:
    body = {**BODY, "model": "nope"}
    url = server.url + "/chat/completions"
    with httpx.Client(timeout=TIMEOUT, trust_env=False) as client, pytest.raises(
        APIStatusError
    ) as info, connect_usage(client, "POST", url, json=body):  # fmt: skip
        pass
    assert info.value.status_code == 400 and "does not exist" in str(info.value)
    assert len(server.bodies) == 1


def test_a_server_that_accepts_stream_options_is_asked_once() -> None:
    with Serve(rejects=False) as server, httpx.Client(trust_env=False) as client, connect_usage(
        client, "POST", server.url + "/chat/completions", json=BODY
    ) as s:  # fmt: skip
        list(s)
    assert len(server.bodies) == 1 and "stream_options" in server.bodies[0]
    assert s.report is not None
    assert not any("rejected" in w for w in s.report.warnings)


def test_metering_transport_retries_without_stream_options(server: Serve) -> None:
    reports: list[StreamReport] = []
    transport = MeteringTransport(
        on_report=lambda r, _: reports.append(r), include_usage=True, estimate=True
    )
    with httpx.Client(transport=transport, timeout=TIMEOUT) as http:
        sdk = openai.OpenAI(base_url=server.url, api_key="test", http_client=http, max_retries=0)
        stream = sdk.chat.completions.create(
            stream=True, model=BODY["model"], messages=BODY["messages"]
        )
        text = "".join(c.choices[0].delta.content or "" for c in stream if c.choices)
        assert transport.wait(TIMEOUT)
    assert text == TEXT
    assert len(reports) == 1
    check_retried(reports[0], server)


def test_metering_transport_passes_another_400_on(server: Serve) -> None:
    transport = MeteringTransport(include_usage=True)
    with httpx.Client(transport=transport, timeout=TIMEOUT) as http:
        sdk = openai.OpenAI(base_url=server.url, api_key="test", http_client=http, max_retries=0)
        with pytest.raises(openai.BadRequestError) as info:
            sdk.chat.completions.create(stream=True, model="nope", messages=BODY["messages"])
    assert "does not exist" in str(info.value)
    assert len(server.bodies) == 1


async def test_async_metering_transport_retries_without_stream_options(server: Serve) -> None:
    reports: list[StreamReport] = []
    transport = AsyncMeteringTransport(
        on_report=lambda r, _: reports.append(r), include_usage=True, estimate=True
    )
    async with httpx.AsyncClient(transport=transport, timeout=TIMEOUT) as http:
        sdk = openai.AsyncOpenAI(
            base_url=server.url, api_key="test", http_client=http, max_retries=0
        )
        stream = await sdk.chat.completions.create(
            stream=True, model=BODY["model"], messages=BODY["messages"]
        )
        text = "".join([c.choices[0].delta.content or "" async for c in stream if c.choices])
        assert await asyncio.wait_for(transport.wait(TIMEOUT), TIMEOUT)
    assert text == TEXT
    assert len(reports) == 1
    check_retried(reports[0], server)
