"""``ssetally.aiohttp``: a real aiohttp client against an aiohttp.web server and the replay
server, all on 127.0.0.1."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import aiohttp
import pytest
import ssetally
from aiohttp import web
from ssetally import RetrievalPolicy
from ssetally._replay import ReplayServer
from ssetally.aiohttp import aconnect_sse, aconnect_usage

TIMEOUT = aiohttp.ClientTimeout(total=10)
AUTH = {"Authorization": "Bearer test-key-123456"}
CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
FAST = RetrievalPolicy(deadline=5.0, first_delay=0.02, backoff=2.0, max_delay=0.5)


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as s:
        yield s


@pytest.fixture
async def web_url() -> AsyncIterator[str]:
    async def sse(request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        for part in (b"\xef\xbb\xbfevent: a\ndata: 1\n\n", b"id: 7\ndata: 2\r\n", b"\r\n"):
            await resp.write(part)
        await resp.write_eof()
        return resp

    async def html(request: web.Request) -> web.Response:
        return web.Response(text="<p>no</p>", content_type="text/html")

    app = web.Application()
    app.router.add_get("/sse", sse)
    app.router.add_get("/html", html)
    async with serving(app) as url:
        yield url


@asynccontextmanager
async def serving(app: web.Application) -> AsyncIterator[str]:
    """``app`` on 127.0.0.1, a free port; yields its base URL."""
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        await runner.cleanup()


async def test_aconnect_sse_events(web_url: str) -> None:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        aconnect_sse(session, "GET", f"{web_url}/sse") as source,
    ):
        events = [e async for e in source.aiter_sse()]
    assert [(e.event, e.data, e.id) for e in events] == [("a", "1", ""), ("message", "2", "7")]


async def test_aconnect_sse_wrong_content_type(web_url: str) -> None:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        aconnect_sse(session, "GET", f"{web_url}/html") as source,
    ):
        with pytest.raises(ssetally.SSEError):
            async for _ in source.aiter_sse():
                pass


async def test_usage_injected_and_hidden(server: ReplayServer) -> None:
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        aconnect_usage(
            session, "POST", f"{server.url}/chat/completions", json=CHAT, headers=AUTH
        ) as stream,
    ):
        events = [e async for e in stream]
    assert stream.report is not None and stream.report.usage is not None
    assert dict(stream.report.usage.raw) == server.last_usage
    assert stream.report.usage.source == "stream"
    assert not any('"usage":{' in e.data for e in events)
    assert server.requests[-1].body["stream_options"] == {"include_usage": True}


async def test_cut_responses_stream_is_retrieved(server: ReplayServer) -> None:
    body = {"model": "gpt-4o-mini", "stream": True, "input": "Hello there"}
    headers = {**AUTH, "x-replay-cut-after-events": "5"}
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        aconnect_usage(
            session, "POST", f"{server.url}/responses", json=body, headers=headers, retrieval=FAST
        ) as stream,
    ):
        with pytest.raises(aiohttp.ClientError):
            async for _ in stream:
                pass
    report = stream.report
    assert report is not None and report.usage is not None
    assert report.usage.source == "retrieval"
    assert any(r.method == "GET" for r in server.requests)


async def test_early_break_has_report(server: ReplayServer) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session, aconnect_usage(
        session, "POST", f"{server.url}/chat/completions", json=CHAT,
        headers={**AUTH, "x-replay-delay-ms": "30"}, estimate=False,
    ) as stream:  # fmt: skip
        async for _ in stream:
            break
    assert stream.report is not None and stream.report.status == "cancelled"


async def test_error_status_raises(server: ReplayServer) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT) as session:
        with pytest.raises(ssetally.APIStatusError) as info:
            async with aconnect_usage(
                session, "POST", f"{server.url}/chat/completions",
                json={**CHAT, "model": "error-429"}, headers=AUTH,
            ):  # fmt: skip
                pass
    assert info.value.status_code == 429
    assert "test-key-123456" not in str(info.value.body)


def _gzip(data_blocks: list[bytes]) -> bytes:
    import zlib

    z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS)
    return b"".join(z.compress(b) for b in data_blocks) + z.flush()


@pytest.fixture
async def bomb_url() -> AsyncIterator[str]:
    """An error answer whose gzip body decodes to 64 MiB, and one that rejects the injected
    ``stream_options`` before the stream is served."""
    bomb = _gzip([b'{"error":{"message":"', *[b" " * (1 << 20)] * 64, b'"}}'])
    stream = (
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],"usage":'
        b'{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\ndata: [DONE]\n\n'
    )

    async def error(request: web.Request) -> web.Response:
        headers = {"Content-Encoding": "gzip", "Content-Type": "application/json"}
        return web.Response(status=502, body=bomb, headers=headers)

    async def picky(request: web.Request) -> web.Response:
        body = await request.json()
        if "stream_options" in body:
            message = {"error": {"message": "Unrecognized request argument: stream_options"}}
            return web.json_response(message, status=400)
        return web.Response(body=stream, content_type="text/event-stream")

    app = web.Application()
    app.router.add_post("/error", error)
    app.router.add_post("/v1/chat/completions", picky)
    async with serving(app) as url:
        yield url


@pytest.mark.parametrize("auto_decompress", [True, False])
async def test_error_bomb_is_cut_and_flagged(bomb_url: str, auto_decompress: bool) -> None:
    async with aiohttp.ClientSession(timeout=TIMEOUT, auto_decompress=auto_decompress) as s:
        with pytest.raises(ssetally.APIStatusError) as info:
            async with aconnect_usage(s, "POST", f"{bomb_url}/error", json=CHAT):
                pass
    error = info.value
    assert error.status_code == 502 and error.truncated is not None
    assert isinstance(error.body, str) and error.body.startswith('{"error"')
    assert len(error.body) <= 64 * 1024


async def test_rejected_injection_is_sent_again(bomb_url: str) -> None:
    """The aiohttp front-end shares ``aconnect_usage``'s engine: a 400 naming the injected
    ``stream_options`` gets the caller's request once more, unchanged."""
    async with (
        aiohttp.ClientSession(timeout=TIMEOUT) as session,
        aconnect_usage(session, "POST", f"{bomb_url}/v1/chat/completions", json=CHAT) as stream,
    ):
        events = [e async for e in stream]
    report = stream.require_report()
    assert report.usage is not None and report.usage.total_tokens == 4
    assert any("rejected stream_options" in w for w in report.warnings), report.warnings
    assert events  # the caller's own request: its answer is shown whole


def test_aconnect_usage_takes_the_same_options() -> None:
    import inspect

    assert inspect.signature(aconnect_usage) == inspect.signature(ssetally.aconnect_usage)
    assert "idle_timeout" in inspect.signature(aconnect_usage).parameters
