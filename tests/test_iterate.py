"""``meter`` / ``ameter`` over real HTTP libraries against the replay server (127.0.0.1)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Iterator
from typing import Any

import aiohttp
import pytest
import requests
import ssetally
from ssetally._replay import ReplayServer

TIMEOUT = 10.0
AUTH = {"Authorization": "Bearer test-key-123456"}
CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as s:
        yield s


def test_requests_iter_content_identity_and_usage(server: ReplayServer) -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}}
    got: list[ssetally.StreamReport] = []
    seen: list[bytes] = []
    with requests.post(
        f"{server.url}/chat/completions", json=body, headers=AUTH, stream=True, timeout=TIMEOUT
    ) as resp:
        source = list(resp.iter_content(None))
    with ssetally.meter(iter(source), request=body, on_report=got.append) as m:
        seen.extend(m)
    assert len(seen) == len(source) and all(a is b for a, b in zip(seen, source))
    assert m.report is not None and got == [m.report]
    assert m.report.usage is not None and dict(m.report.usage.raw) == server.last_usage
    assert m.report.status == "completed"


def test_requests_streaming_live(server: ReplayServer) -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}}
    with (
        requests.post(
            f"{server.url}/chat/completions", json=body, headers=AUTH, stream=True, timeout=TIMEOUT
        ) as resp,
        ssetally.meter(resp.iter_content(None)) as m,
    ):
        data = b"".join(m)
    assert data.endswith(b"data: [DONE]\n\n")
    assert m.report is not None and m.report.usage is not None
    assert m.report.usage.output_tokens == server.last_usage["completion_tokens"]  # type: ignore[index]


def test_break_gives_report_once() -> None:
    chunks = [b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'] * 5
    got: list[ssetally.StreamReport] = []
    with ssetally.meter(chunks, on_report=got.append) as m:
        for _ in m:
            break
    assert m.report is not None and m.report.status == "truncated"
    assert len(got) == 1


def test_generator_close_without_with() -> None:
    got: list[ssetally.StreamReport] = []
    it = iter(ssetally.meter([b"data: {}\n\n", b"data: {}\n\n"], on_report=got.append))
    next(it)
    it.close()  # type: ignore[attr-defined]
    assert len(got) == 1


def test_source_raises() -> None:
    def source() -> Iterator[bytes]:
        yield b'data: {"choices":[]}\n\n'
        raise ConnectionError("cut")

    m = ssetally.meter(source())
    with pytest.raises(ConnectionError):
        for _ in m:
            pass
    assert m.report is not None
    assert "ConnectionError" in m.report.attempts[0].reason


def test_on_report_fault_is_logged_not_raised() -> None:
    def boom(report: ssetally.StreamReport) -> None:
        raise ValueError("no")

    m = ssetally.meter([b"data: [DONE]\n\n"], on_report=boom)
    assert list(m) == [b"data: [DONE]\n\n"]
    assert m.report is not None


def test_include_usage_strips_the_added_chunk(server: ReplayServer) -> None:
    def fetch(body: dict[str, Any]) -> list[bytes]:
        with requests.post(
            f"{server.url}/chat/completions", json=body, headers=AUTH, stream=True,
            timeout=TIMEOUT,
        ) as resp:  # fmt: skip
            return list(resp.iter_content(None))

    injected = {**CHAT, "stream_options": {"include_usage": True}}
    with ssetally.meter(fetch(injected), include_usage=True) as m:
        stripped = b"".join(m)
    assert m.report is not None and m.report.usage is not None
    assert m.meter.stripped == 1
    assert b'"usage":{' not in stripped and b"[DONE]" in stripped


async def test_ameter_aiohttp_iter_any(server: ReplayServer) -> None:
    body = {**CHAT, "stream_options": {"include_usage": True}}
    timeout = aiohttp.ClientTimeout(total=TIMEOUT)
    async with (
        aiohttp.ClientSession(timeout=timeout) as session,
        session.post(f"{server.url}/chat/completions", json=body, headers=AUTH) as resp,
        ssetally.ameter(resp.content.iter_any(), request=body) as m,
    ):
        async for _chunk in m:
            pass
    assert m.report is not None and m.report.usage is not None
    assert dict(m.report.usage.raw) == server.last_usage


async def test_ameter_identity_and_early_break() -> None:
    chunks = [b"data: {}\n\n" for _ in range(4)]

    async def source() -> AsyncIterator[bytes]:
        for c in chunks:
            yield c

    seen = []
    async with ssetally.ameter(source()) as m:
        async for chunk in m:
            seen.append(chunk)
            if len(seen) == 2:
                break
    assert all(a is b for a, b in zip(seen, chunks))
    assert m.report is not None and m.report.status == "truncated"


async def test_ameter_cancelled_gives_report(server: ReplayServer) -> None:
    got: list[ssetally.StreamReport] = []
    started = asyncio.Event()

    async def consume() -> None:
        timeout = aiohttp.ClientTimeout(total=TIMEOUT)
        async with (
            aiohttp.ClientSession(timeout=timeout) as session,
            session.post(
                f"{server.url}/chat/completions",
                json=CHAT,
                headers={**AUTH, "x-replay-delay-ms": "200"},
            ) as resp,
            ssetally.ameter(resp.content.iter_any(), on_report=got.append) as m,
        ):
            async for _ in m:
                started.set()

    task = asyncio.ensure_future(consume())
    await asyncio.wait_for(started.wait(), TIMEOUT)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)
    assert len(got) == 1 and got[0].status == "truncated"
    assert "CancelledError" in got[0].attempts[0].reason


async def test_a_chunk_the_tap_rejects_stops_metering_not_the_stream() -> None:
    ok = b'data: {"choices":[{"delta":{"content":"a"}}]}\n\n'
    chunks: list[Any] = [ok, "not bytes", ok]

    async def source() -> AsyncIterator[Any]:
        for c in chunks:
            yield c

    with ssetally.meter(chunks) as m:
        seen = list(m)
    async with ssetally.ameter(source(), timeline=True) as am:
        aseen = [c async for c in am]
    for got, report, meter in ((seen, m.report, m.meter), (aseen, am.report, am.meter)):
        assert len(got) == 3 and all(a is b for a, b in zip(got, chunks))
        assert report is not None and meter.faults == ["tap"]
        assert any("TypeError" in w for w in report.warnings)
        t = report.require_timings()
        assert t.first_byte is not None and t.first_content is not None
        assert t.first_byte <= t.first_content == t.last_content  # only the first was read
    assert len(am.report.require_timings().timeline) == 1  # type: ignore[union-attr]
