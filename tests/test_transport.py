"""``MeteringTransport`` / ``AsyncMeteringTransport`` under the real OpenAI SDK.

The upstream is a ``ReplayServer`` on 127.0.0.1. Every SDK test runs with an ``httpx2``
client (what openai 3.x is built on) and an ``httpx`` client (still accepted by openai 3.x),
and checks that ``on_report`` was called exactly once, with the server's true usage.
What the SDK receives is recorded below the SDK (a recording transport around the metering
one) and compared byte for byte with a run without the metering transport.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import re
import threading
from collections.abc import AsyncIterator, Iterator
from types import ModuleType
from typing import Any

import httpx
import httpx2
import openai
import pytest
from openai.types.chat import ChatCompletionMessageParam
from ssetally import AsyncMeteringTransport, MeteringTransport, RetrievalPolicy, StreamReport
from ssetally._replay import ReplayServer

TIMEOUT = 10.0
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": "Tell me about usage"}]
LIBS = [pytest.param(httpx2, id="httpx2"), pytest.param(httpx, id="httpx")]
FAST_RETRIEVAL = RetrievalPolicy(deadline=5.0, first_delay=0.01, max_delay=0.05)


class Reports:
    """An ``on_report`` that keeps every call (thread-safe) and can wait for them."""

    def __init__(self) -> None:
        self.calls: list[tuple[StreamReport, Any]] = []
        self.threads: list[str] = []
        self._cond = threading.Condition()

    def __call__(self, report: StreamReport, request: Any) -> None:
        with self._cond:
            self.calls.append((report, request))
            self.threads.append(threading.current_thread().name)
            self._cond.notify_all()

    def wait_for(self, n: int, timeout: float = TIMEOUT) -> list[StreamReport]:
        with self._cond:
            assert self._cond.wait_for(lambda: len(self.calls) >= n, timeout), self.calls
        return self.reports

    @property
    def reports(self) -> list[StreamReport]:
        return [r for r, _ in self.calls]

    def only(self) -> StreamReport:
        reports = self.wait_for(1)
        assert len(reports) == 1, reports
        return reports[0]


def recording(lib: ModuleType, inner: Any, sink: list[bytes]) -> Any:
    """A transport that records every body byte the client above it receives."""

    class Stream(lib.SyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, wrapped: Any) -> None:
            self.wrapped = wrapped

        def __iter__(self) -> Iterator[bytes]:
            for chunk in self.wrapped:
                sink.append(chunk)
                yield chunk

        def close(self) -> None:
            self.wrapped.close()

    class Recorder(lib.BaseTransport):  # type: ignore[name-defined,misc]
        def handle_request(self, request: Any) -> Any:
            response = inner.handle_request(request)
            response.stream = Stream(response.stream)
            return response

        def close(self) -> None:
            inner.close()

    return Recorder()


def arecording(lib: ModuleType, inner: Any, sink: list[bytes]) -> Any:
    """Async twin of ``recording``."""

    class Stream(lib.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __init__(self, wrapped: Any) -> None:
            self.wrapped = wrapped

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self.wrapped:
                sink.append(chunk)
                yield chunk

        async def aclose(self) -> None:
            await self.wrapped.aclose()

    class Recorder(lib.AsyncBaseTransport):  # type: ignore[name-defined,misc]
        async def handle_async_request(self, request: Any) -> Any:
            response = await inner.handle_async_request(request)
            response.stream = Stream(response.stream)
            return response

        async def aclose(self) -> None:
            await inner.aclose()

    return Recorder()


def sdk(server: ReplayServer, lib: ModuleType, transport: Any) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url,
        api_key="test",
        max_retries=0,
        timeout=TIMEOUT,
        http_client=lib.Client(transport=transport, timeout=TIMEOUT),
    )


def asdk(server: ReplayServer, lib: ModuleType, transport: Any) -> openai.AsyncOpenAI:
    return openai.AsyncOpenAI(
        base_url=server.url,
        api_key="test",
        max_retries=0,
        timeout=TIMEOUT,
        http_client=lib.AsyncClient(transport=transport, timeout=TIMEOUT),
    )


def normalized(data: bytes) -> bytes:
    """Body bytes with the wall-clock ``created`` stamps zeroed (they differ between runs)."""
    return re.sub(rb'"created":\d+', b'"created":0', data)


def wire_usage(usage: Any) -> dict[str, Any]:
    return {k: v for k, v in usage.model_dump(exclude_none=True).items()}


def chat_stream_bytes(lib: ModuleType, metered: Reports | None) -> tuple[bytes, list[Any], Any]:
    """Body bytes the SDK received for one chat stream from a fresh server, its chunks, and
    the server's true usage. ``metered``: under a MeteringTransport with include_usage."""
    received: list[bytes] = []
    with ReplayServer() as server:
        inner = lib.HTTPTransport()
        if metered is not None:
            inner = MeteringTransport(inner, metered, include_usage=True)
        with sdk(server, lib, recording(lib, inner, received)) as client:
            chunks = list(
                client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
            )
        truth = server.last.usage
        assert server.requests[-1].body.get("stream_options") == (
            None if metered is None else {"include_usage": True}
        )
    return b"".join(received), chunks, truth


# --------------------------------------------------------------------------- sync SDK


@pytest.mark.parametrize("lib", LIBS)
def test_chat_injection_exact_usage_and_identical_bytes(lib: ModuleType) -> None:
    plain_bytes, plain_chunks, _ = chat_stream_bytes(lib, None)
    reports = Reports()
    metered_bytes, metered_chunks, truth = chat_stream_bytes(lib, reports)

    report = reports.only()
    assert report.usage is not None and report.usage.source == "stream"
    assert report.usage.raw == truth
    assert report.usage.input_tokens == truth["prompt_tokens"]
    assert report.usage.output_tokens == truth["completion_tokens"]
    assert report.status == "completed" and report.api == "chat.completions"
    assert report.timings is not None and report.timings.duration is not None
    # The SDK saw exactly the bytes of a run without the transport: no usage-only chunk.
    assert b'"choices":[]' not in metered_bytes
    assert normalized(metered_bytes) == normalized(plain_bytes)
    assert all(c.choices for c in metered_chunks)
    assert [c.model_dump(exclude={"created"}) for c in metered_chunks] == [
        c.model_dump(exclude={"created"}) for c in plain_chunks
    ]


@pytest.mark.parametrize("lib", LIBS)
def test_chat_without_injection_passes_bytes_and_reports_no_usage(lib: ModuleType) -> None:
    reports = Reports()
    with ReplayServer() as server:
        transport = MeteringTransport(lib.HTTPTransport(), reports)
        with sdk(server, lib, transport) as client:
            chunks = list(
                client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
            )
        assert "stream_options" not in server.requests[-1].body
    report = reports.only()
    assert report.usage is None and report.status == "completed"
    assert report.attempts[0].source == "stream" and not report.attempts[0].ok
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == server.last.texts[0]


@pytest.mark.parametrize("lib", LIBS)
def test_caller_asked_for_usage_itself(lib: ModuleType) -> None:
    reports = Reports()
    with ReplayServer() as server:
        transport = MeteringTransport(on_report=reports, include_usage=True)
        with sdk(server, lib, transport) as client:
            chunks = list(
                client.chat.completions.create(
                    model="gpt-4o",
                    messages=HELLO,
                    stream=True,
                    stream_options={"include_usage": True},
                )
            )
    # Not injected, so not stripped: the caller gets the usage chunk it asked for.
    assert chunks[-1].choices == [] and chunks[-1].usage is not None
    assert wire_usage(chunks[-1].usage) == server.last.usage
    assert reports.only().usage is not None


@pytest.mark.parametrize("lib", LIBS)
def test_responses_exact_usage(lib: ModuleType) -> None:
    reports = Reports()
    with ReplayServer() as server:
        with sdk(server, lib, MeteringTransport(on_report=reports)) as client:
            events = list(client.responses.create(model="o4-mini", input="Hi", stream=True))
        truth = server.last.usage
    report = reports.only()
    assert events[-1].type == "response.completed"
    assert report.api == "responses" and report.status == "completed"
    assert report.usage is not None and report.usage.raw == truth
    assert report.usage.reasoning_tokens == truth["output_tokens_details"]["reasoning_tokens"]
    assert report.response_id == events[-1].response.id


@pytest.mark.parametrize("lib", LIBS)
def test_completions_injection(lib: ModuleType) -> None:
    reports = Reports()
    with ReplayServer() as server:
        with sdk(server, lib, MeteringTransport(on_report=reports, include_usage=True)) as c:
            chunks = list(
                c.completions.create(model="gpt-3.5-turbo-instruct", prompt="Hi", stream=True)
            )
        truth = server.last.usage
    assert all(chunk.choices for chunk in chunks)
    report = reports.only()
    assert report.usage is not None and report.usage.raw == truth


@pytest.mark.parametrize("lib", LIBS)
@pytest.mark.parametrize("how", ["close", "with-block", "break-and-drop"])
def test_early_close_reports_once(lib: ModuleType, how: str) -> None:
    reports = Reports()
    with ReplayServer(delay=0.02) as server:
        with sdk(server, lib, MeteringTransport(on_report=reports, include_usage=True)) as client:
            if how == "close":
                stream = client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
                next(iter(stream))
                stream.close()
            elif how == "with-block":
                with client.chat.completions.create(
                    model="gpt-4o", messages=HELLO, stream=True
                ) as stream:
                    for _ in stream:
                        break
            else:
                stream = client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
                for _ in stream:
                    break
                del stream
                gc.collect()
            report = reports.only()
        assert server.last.events_planned > 3
    assert report.status == "cancelled" and report.usage is None
    assert "closed early" in report.attempts[0].reason
    assert 0 < report.events < server.last.events_planned
    assert len(reports.calls) == 1  # closing the client reported nothing more


@pytest.mark.parametrize("lib", LIBS)
def test_error_event_mid_stream(lib: ModuleType) -> None:
    reports = Reports()
    transport = MeteringTransport(on_report=reports, include_usage=True)
    with ReplayServer() as server, sdk(server, lib, transport) as client:
        with pytest.raises(openai.APIError, match="server had an error"):
            for _ in client.chat.completions.create(
                model="gpt-4o",
                messages=HELLO,
                stream=True,
                extra_headers={"x-replay-error-event": "3"},
            ):
                pass
        gc.collect()
        report = reports.only()
    assert report.status == "failed" and report.error is not None
    assert report.usage is None


@pytest.mark.parametrize("lib", LIBS)
def test_connection_cut_mid_stream(lib: ModuleType) -> None:
    reports = Reports()
    transport = MeteringTransport(on_report=reports, include_usage=True)
    with ReplayServer() as server, sdk(server, lib, transport) as client:
        with pytest.raises(openai.APIConnectionError):
            for _ in client.chat.completions.create(
                model="gpt-4o",
                messages=HELLO,
                stream=True,
                extra_headers={"x-replay-cut-after-events": "4"},
            ):
                pass
        gc.collect()
        report = reports.only()
    assert report.status == "truncated" and report.usage is None
    assert "RemoteProtocolError" in report.attempts[0].reason
    assert report.events == 4


@pytest.mark.parametrize("lib", LIBS)
def test_cut_responses_stream_retrieved_in_background(lib: ModuleType) -> None:
    reports = Reports()
    with ReplayServer() as server:
        transport = MeteringTransport(on_report=reports, retrieve=True, retrieval=FAST_RETRIEVAL)
        with sdk(server, lib, transport) as client:
            with pytest.raises(openai.APIConnectionError):
                for _ in client.responses.create(
                    model="gpt-4o",
                    input="hi",
                    stream=True,
                    extra_headers={"x-replay-cut-after-events": "4"},
                ):
                    pass
            report = reports.only()
            truth = server.last.usage
        gets = [r for r in server.requests if r.method == "GET"]
    assert report.usage is not None and report.usage.source == "retrieval"
    assert report.usage.raw == truth and report.status == "completed"
    assert [a.source for a in report.attempts] == ["stream", "retrieval"]
    assert len(gets) == 1 and gets[0].header("authorization") == "Bearer test"
    assert reports.threads[0].startswith("ssetally-report")


@pytest.mark.parametrize("lib", LIBS)
def test_estimate_when_no_usage(lib: ModuleType) -> None:
    reports = Reports()
    transport = MeteringTransport(on_report=reports, estimate=True)
    with ReplayServer() as server, sdk(server, lib, transport) as client:
        list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
        report = reports.only()
        truth = server.last
    assert report.usage is not None and report.usage.source == "estimate"
    assert report.usage.output_tokens == truth.output_tokens
    assert report.usage.input_tokens is not None and report.usage.input_tokens > 0


@pytest.mark.parametrize("lib", LIBS)
def test_non_streaming_passes_untouched(lib: ModuleType) -> None:
    reports = Reports()
    with ReplayServer() as server:
        with sdk(server, lib, MeteringTransport(on_report=reports, include_usage=True)) as client:
            answer = client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert "stream_options" not in server.requests[-1].body
    assert answer.usage is not None and wire_usage(answer.usage) == server.last.usage
    assert reports.calls == []


@pytest.mark.parametrize("lib", LIBS)
def test_on_report_exception_is_logged_not_raised(
    lib: ModuleType, caplog: pytest.LogCaptureFixture
) -> None:
    calls: list[StreamReport] = []

    def broken(report: StreamReport, request: Any) -> None:
        calls.append(report)
        raise RuntimeError("boom")

    transport = MeteringTransport(on_report=broken, include_usage=True)
    with (
        ReplayServer() as server,
        sdk(server, lib, transport) as client,
        caplog.at_level(logging.ERROR, logger="ssetally"),
    ):
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
    assert len(calls) == 1 and chunks and chunks[-1].choices
    assert "on_report raised" in caplog.text and "boom" in caplog.text


# --------------------------------------------------------------------------- transport level


@pytest.mark.parametrize("lib", LIBS)
def test_chunks_are_the_same_objects(lib: ModuleType) -> None:
    """No copy: the caller gets the very bytes objects the inner transport produced."""
    body = (
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,'
        b'"delta":{"content":"hi"},"finish_reason":"stop"}]}\n\n'
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
        b"data: [DONE]\n\n"
    )
    pieces = [bytes(body[i : i + 7]) for i in range(0, len(body), 7)]

    class Source(lib.SyncByteStream):  # type: ignore[name-defined,misc]
        closed = False

        def __iter__(self) -> Iterator[bytes]:
            yield from pieces

        def close(self) -> None:
            Source.closed = True

    def handler(request: Any) -> Any:
        return lib.Response(200, headers={"content-type": "text/event-stream"}, stream=Source())

    reports = Reports()
    transport = MeteringTransport(lib.MockTransport(handler), reports)
    url = "http://upstream.test/v1/chat/completions"
    with lib.Client(transport=transport) as client, client.stream("POST", url) as response:
        got = list(response.iter_raw())
    assert len(got) == len(pieces)
    assert all(a is b for a, b in zip(got, pieces))
    assert Source.closed
    report = reports.only()
    assert report.usage is not None and report.usage.total_tokens == 4
    assert report.bytes == len(body)


@pytest.mark.parametrize("lib", LIBS)
def test_gzip_body_is_metered_and_passed_compressed(lib: ModuleType) -> None:
    import gzip

    body = (
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\ndata: [DONE]\n\n'
    )
    packed = gzip.compress(body)

    class Source(lib.SyncByteStream):  # type: ignore[name-defined,misc]
        def __iter__(self) -> Iterator[bytes]:
            for i in range(0, len(packed), 5):
                yield packed[i : i + 5]

    def handler(request: Any) -> Any:
        headers = {"content-type": "text/event-stream", "content-encoding": "gzip"}
        return lib.Response(200, headers=headers, stream=Source())

    reports = Reports()
    with lib.Client(transport=MeteringTransport(lib.MockTransport(handler), reports)) as client:
        response = client.post("http://upstream.test/v1/chat/completions")
    assert response.content == body  # decoded by the client, as without the transport
    report = reports.only()
    assert report.usage is not None and report.usage.total_tokens == 4
    assert report.bytes == len(body)


@pytest.mark.parametrize("lib", LIBS)
def test_undecodable_body_is_not_estimated(lib: ModuleType) -> None:
    """A body the transport cannot decode is not metered, so no fallback runs on it: an
    estimate of output it never read would report zero tokens as if counted."""

    def handler(request: Any) -> Any:
        headers = {"content-type": "text/event-stream", "content-encoding": "x-unknown"}
        return lib.Response(200, headers=headers, stream=lib.ByteStream(b"\x28\xb5\x2f\xfd"))

    reports = Reports()
    transport = MeteringTransport(lib.MockTransport(handler), reports, estimate=True)
    with (
        lib.Client(transport=transport) as client,
        client.stream(
            "POST", "http://upstream.test/v1/chat/completions", json={"model": "gpt-4o"}
        ) as response,
    ):
        for _ in response.iter_raw():
            pass
    transport.close()
    report = reports.only()
    assert report.usage is None
    assert [a.source for a in report.attempts] == ["stream"]
    assert any("x-unknown" in w for w in report.warnings)


@pytest.mark.parametrize("lib", LIBS)
def test_response_read_by_the_inner_transport_is_metered(lib: ModuleType) -> None:
    body = (
        b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
        b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\ndata: [DONE]\n\n'
    )

    def handler(request: Any) -> Any:
        return lib.Response(200, headers={"content-type": "text/event-stream"}, content=body)

    reports = Reports()
    with lib.Client(transport=MeteringTransport(lib.MockTransport(handler), reports)) as client:
        response = client.post("http://upstream.test/v1/chat/completions")
    assert response.content == body
    report = reports.only()
    assert report.usage is not None and report.usage.total_tokens == 4


def test_default_inner_follows_the_client_library() -> None:
    reports = Reports()
    transport = MeteringTransport(on_report=reports)
    with ReplayServer() as server:
        for lib in (httpx, httpx2):
            client = lib.Client(transport=transport, timeout=TIMEOUT)
            with client.stream(
                "POST",
                server.url + "/responses",
                headers={"Authorization": "Bearer t"},
                json={"model": "gpt-4o", "input": "hi", "stream": True},
            ) as response:
                response.read()
        reports.wait_for(2)
        kinds = sorted(type(t).__module__.split(".")[0] for t in transport._transports())
        transport.close()
    assert kinds == ["httpx", "httpx2"]
    assert [r.status for r in reports.reports] == ["completed", "completed"]


# --------------------------------------------------------------------------- async SDK


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as s:
        yield s


@pytest.mark.parametrize("lib", LIBS)
async def test_async_chat_injection_identical_bytes(lib: ModuleType) -> None:
    async def run(meter: Reports | None) -> tuple[bytes, Any]:
        received: list[bytes] = []
        with ReplayServer() as server:
            inner: Any = lib.AsyncHTTPTransport()
            if meter is not None:
                inner = AsyncMeteringTransport(inner, meter, include_usage=True)
            async with asdk(server, lib, arecording(lib, inner, received)) as client:
                stream = await client.chat.completions.create(
                    model="gpt-4o", messages=HELLO, stream=True
                )
                chunks = [c async for c in stream]
            assert all(c.choices for c in chunks)
            return b"".join(received), server.last.usage

    plain, _ = await run(None)
    reports = Reports()
    metered, truth = await run(reports)
    assert normalized(metered) == normalized(plain)
    report = reports.only()
    assert report.usage is not None and report.usage.raw == truth


@pytest.mark.parametrize("lib", LIBS)
async def test_async_responses_and_async_on_report(lib: ModuleType, server: ReplayServer) -> None:
    seen: list[StreamReport] = []

    async def on_report(report: StreamReport, request: Any) -> None:
        await asyncio.sleep(0)
        seen.append(report)

    transport = AsyncMeteringTransport(on_report=on_report)
    async with asdk(server, lib, transport) as client:
        stream = await client.responses.create(model="gpt-4o", input="Hi", stream=True)
        events = [e async for e in stream]
    # aclose() waited for the awaitable on_report.
    assert len(seen) == 1 and events[-1].type == "response.completed"
    assert seen[0].usage is not None and seen[0].usage.raw == server.last.usage


@pytest.mark.parametrize("lib", LIBS)
async def test_async_early_close(lib: ModuleType) -> None:
    reports = Reports()
    with ReplayServer(delay=0.02) as server:
        transport = AsyncMeteringTransport(on_report=reports, include_usage=True)
        async with asdk(server, lib, transport) as client:
            stream = await client.chat.completions.create(
                model="gpt-4o", messages=HELLO, stream=True
            )
            async for _ in stream:
                break
            await stream.close()
            report = reports.only()
    assert report.status == "cancelled" and "closed early" in report.attempts[0].reason
    assert len(reports.calls) == 1


@pytest.mark.parametrize("lib", LIBS)
async def test_async_cancelled_task_reports(lib: ModuleType) -> None:
    reports = Reports()
    with ReplayServer(delay=0.05) as server:
        transport = AsyncMeteringTransport(on_report=reports)
        async with asdk(server, lib, transport) as client:
            reading = asyncio.Event()

            async def consume() -> None:
                stream = await client.chat.completions.create(
                    model="gpt-4o", messages=HELLO, stream=True
                )
                async for _ in stream:
                    reading.set()

            task = asyncio.create_task(consume())
            # Cancelled mid-stream, whatever the first request costs the server.
            await asyncio.wait_for(reading.wait(), TIMEOUT)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            report = reports.only()
    assert report.status == "cancelled" and report.usage is None
    assert "CancelledError" in report.attempts[0].reason


@pytest.mark.parametrize("lib", LIBS)
async def test_async_errors_mid_stream(lib: ModuleType, server: ReplayServer) -> None:
    reports = Reports()
    transport = AsyncMeteringTransport(on_report=reports, include_usage=True)
    async with asdk(server, lib, transport) as client:
        with pytest.raises(openai.APIError, match="server had an error"):
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=HELLO,
                stream=True,
                extra_headers={"x-replay-error-event": "3"},
            )
            async for _ in stream:
                pass
        await stream.close()
        with pytest.raises(openai.APIConnectionError):
            stream = await client.chat.completions.create(
                model="gpt-4o",
                messages=HELLO,
                stream=True,
                extra_headers={"x-replay-cut-after-events": "4"},
            )
            async for _ in stream:
                pass
        await stream.close()
        reports.wait_for(2)
    assert [r.status for r in reports.reports] == ["failed", "truncated"]
    assert len(reports.calls) == 2


@pytest.mark.parametrize("lib", LIBS)
async def test_async_retrieval_and_estimate_run_as_tasks(
    lib: ModuleType, server: ReplayServer
) -> None:
    reports = Reports()
    transport = AsyncMeteringTransport(
        on_report=reports, retrieve=True, estimate=True, retrieval=FAST_RETRIEVAL
    )
    async with asdk(server, lib, transport) as client:
        with pytest.raises(openai.APIConnectionError):
            stream = await client.responses.create(
                model="gpt-4o",
                input="hi",
                stream=True,
                extra_headers={"x-replay-cut-after-events": "3"},
            )
            async for _ in stream:
                pass
        responses_truth = server.last.usage
        chat = await client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True)
        async for _ in chat:
            pass
        chat_truth = server.last
        assert await transport.wait(TIMEOUT)
    by_api = {r.api: r for r in reports.wait_for(2)}
    assert len(reports.calls) == 2
    retrieved = by_api["responses"].usage
    assert retrieved is not None and retrieved.source == "retrieval"
    assert retrieved.raw == responses_truth
    estimated = by_api["chat.completions"].usage
    assert estimated is not None and estimated.source == "estimate"
    assert estimated.output_tokens == chat_truth.output_tokens


@pytest.mark.parametrize("lib", LIBS)
def test_body_that_cannot_be_rewritten_is_sent_unchanged(lib: ModuleType) -> None:
    """Fail-open: a lone surrogate cannot be re-encoded, so no injection, no error."""
    body = b'{"model":"gpt-4o","stream":true,"messages":[{"role":"user","content":"\\ud800"}]}'
    seen: list[bytes] = []

    def handler(request: Any) -> Any:
        seen.append(request.read())
        return lib.Response(
            200, headers={"content-type": "text/event-stream"}, content=b"data: [DONE]\n\n"
        )

    reports = Reports()
    transport = MeteringTransport(lib.MockTransport(handler), reports, include_usage=True)
    with lib.Client(transport=transport) as client:
        response = client.post("http://upstream.test/v1/chat/completions", content=body)
    assert response.status_code == 200 and seen == [body]
    report = reports.only()
    assert report.status == "truncated"
    assert any("include_usage was not added" in w for w in report.warnings), report.warnings


USAGE_ONLY = (
    b'data: {"id":"c1","object":"chat.completion.chunk","choices":[],'
    b'"usage":{"prompt_tokens":3,"completion_tokens":1,"total_tokens":4}}\n\n'
)
TEXT = b'data: {"id":"c1","object":"chat.completion.chunk","choices":[{"index":0,"delta":{"content":"Hi"}}]}\n\n'
DONE = b"data: [DONE]\n\n"
CHAT_BODY = {"model": "gpt-4o", "stream": True, "messages": []}
ENCODINGS = ["gzip", "deflate", "br", "zstd"]


def compress(encoding: str, data: bytes) -> bytes:
    import zlib

    if encoding in ("gzip", "deflate"):
        z = zlib.compressobj(6, zlib.DEFLATED, 16 + zlib.MAX_WBITS if encoding == "gzip" else 15)
        return z.compress(data) + z.flush()
    if encoding == "br":
        return bytes(pytest.importorskip("brotli").compress(data))
    return bytes(pytest.importorskip("zstandard").ZstdCompressor().compress(data))


def compressing(
    lib: ModuleType, encoding: str, body: bytes, seen: list[Any], piece: int = 7
) -> Any:
    """A mock upstream that ignores ``Accept-Encoding: identity`` and compresses anyway,
    streamed in ``piece``-byte writes."""
    packed = compress(encoding, body)

    class Source(lib.SyncByteStream, lib.AsyncByteStream):  # type: ignore[name-defined,misc]
        def __iter__(self) -> Iterator[bytes]:
            for i in range(0, len(packed), piece):
                yield packed[i : i + piece]

        async def __aiter__(self) -> AsyncIterator[bytes]:
            for i in range(0, len(packed), piece):
                yield packed[i : i + piece]

    def handler(request: Any) -> Any:
        seen.append(request)
        headers = {"content-type": "text/event-stream", "content-encoding": encoding}
        return lib.Response(200, headers=headers, stream=Source())

    return lib.MockTransport(handler)


@pytest.mark.parametrize("encoding", ENCODINGS)
@pytest.mark.parametrize("lib", LIBS)
def test_compressed_answer_to_injected_request_is_decoded_and_stripped(
    lib: ModuleType, encoding: str
) -> None:
    """The upstream compressed although identity was asked: the caller gets the decoded
    stream without the usage chunk it did not ask for, and the report says so."""
    seen: list[Any] = []
    reports = Reports()
    inner = compressing(lib, encoding, TEXT + USAGE_ONLY + DONE, seen)
    transport = MeteringTransport(inner, reports, include_usage=True)
    with lib.Client(transport=transport) as client:
        response = client.post("http://upstream.test/v1/chat/completions", json=CHAT_BODY)
    assert seen[0].headers["accept-encoding"] == "identity"
    assert b"include_usage" in seen[0].content
    assert response.content == TEXT + DONE
    assert "content-encoding" not in response.headers
    report = reports.only()
    assert report.usage is not None and report.usage.total_tokens == 4
    assert any("although identity was asked" in w for w in report.warnings), report.warnings


@pytest.mark.parametrize("encoding", ENCODINGS)
async def test_async_compressed_answer_to_injected_request_is_decoded_and_stripped(
    encoding: str,
) -> None:
    seen: list[Any] = []
    reports = Reports()
    inner = compressing(httpx, encoding, TEXT + USAGE_ONLY + DONE, seen)
    transport = AsyncMeteringTransport(inner, reports, include_usage=True)
    async with httpx.AsyncClient(transport=transport) as client:
        response = await client.post("http://upstream.test/v1/chat/completions", json=CHAT_BODY)
    assert response.content == TEXT + DONE
    report = reports.only()
    assert report.usage is not None and report.usage.total_tokens == 4


@pytest.mark.parametrize("encoding", ["gzip", "br", "zstd"])
@pytest.mark.parametrize("lib", LIBS)
def test_compressed_bomb_to_injected_request_raises_decoding_error(
    lib: ModuleType, encoding: str
) -> None:
    """Decoded for the caller, a bomb stops with the library's own ``DecodingError`` after a
    bounded amount of output, never raw compressed bytes after decoded ones."""
    bomb = TEXT + b":" + b" " * (32 * 1024 * 1024) + b"\n\n" + USAGE_ONLY + DONE
    reports = Reports()
    # One write expands past the 8 MiB a chunk may decode to.
    inner = compressing(lib, encoding, bomb, [], piece=1 << 20)
    transport = MeteringTransport(inner, reports, include_usage=True)
    received = bytearray()
    with (
        lib.Client(transport=transport) as client,
        client.stream(
            "POST", "http://upstream.test/v1/chat/completions", json=CHAT_BODY
        ) as response,
        pytest.raises(lib.DecodingError),
    ):
        for chunk in response.iter_raw():
            received += chunk
    # A prefix of the decoded body (here nothing: the first write is the bomb), never raw
    # compressed bytes after decoded ones.
    assert len(received) <= 8 * 1024 * 1024
    assert (TEXT + b":" + b" " * len(received)).startswith(received)
    report = reports.only()
    assert any("decompression limit" in w for w in report.warnings), report.warnings


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_rejection_check_never_decodes_a_bomb(encoding: str) -> None:
    """A short 400 answer to an injected request is read to see whether it rejected
    ``stream_options``: a compressed bomb is decoded with the 64 KiB bound, not whole."""
    from ssetally._metering import _rejected

    body = b'{"error":{"message":"stream_options ' + b" " * (16 * 1024 * 1024) + b'"}}'
    raw = compress(encoding, body)
    assert len(raw) <= _rejected.MAX_ERROR_BYTES
    response = httpx.Response(400, headers={"content-encoding": encoding}, content=raw)
    assert _rejected.rejection(response, raw) is None  # cut: not taken for a rejection
    small = b'{"error":{"message":"Unrecognized request argument supplied: stream_options"}}'
    response = httpx.Response(400, headers={"content-encoding": encoding})
    assert _rejected.rejection(response, compress(encoding, small)) is not None


@pytest.mark.parametrize("encoding", ENCODINGS)
def test_retrieval_through_the_transport_reads_a_bounded_body(encoding: str) -> None:
    """The retrieval ``GET`` of a cut Responses stream reads its answer raw, with a bound: a
    compressed bomb is reported, never decoded whole."""
    from ssetally._getters import TransportGetter
    from ssetally._metering import retrieve

    def handler(request: Any) -> Any:
        body = b'{"id":"resp_1","status":"completed","x":"' + b" " * (20 * 1024 * 1024) + b'"}'
        headers = {"content-type": "application/json", "content-encoding": encoding}
        return httpx.Response(200, headers=headers, content=compress(encoding, body))

    getter = TransportGetter(httpx.MockTransport(handler), httpx)
    result = retrieve(getter, "http://upstream.test/v1/responses/resp_1", {}, FAST_RETRIEVAL)
    assert result.report is None and "not read whole" in result.reason, result.reason
