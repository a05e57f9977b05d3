"""``connect_usage`` / ``aconnect_usage`` against the replay server.

Every test talks to a ``ReplayServer`` on 127.0.0.1 (a free port) with raw httpx and httpx2
clients, sync and async, each with a timeout, and checks the report against the server's own
truth (``served``, ``last_usage``, the stored Response objects, the requests it received) or
against tiktoken counts computed here, never against hard-coded numbers. The ``openai`` SDK
cross-checks that the streams are what the SDK itself parses.
"""

from __future__ import annotations

import asyncio
import copy
import functools
import json
import time
import types
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from typing import Any

import anyio
import httpx
import httpx2
import openai
import pytest
import tiktoken
from openai.types.chat import ChatCompletionMessageParam
from ssetally import (
    APIStatusError,
    AsyncUsageStream,
    RetrievalPolicy,
    ServerSentEvent,
    SSEError,
    StreamReport,
    Usage,
    aconnect_usage,
    connect_usage,
)
from ssetally._replay import ReplayServer

TIMEOUT = 10.0
AUTH = {"Authorization": "Bearer test"}
MODEL = "gpt-4o-mini"
QUESTION = "Tell me about streaming usage"
MESSAGES: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
#: A short retrieval policy: tests must not wait for the 30 s default deadline.
FAST = RetrievalPolicy(deadline=5.0, first_delay=0.02, backoff=2.0, max_delay=0.5)
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather at a place",
        "parameters": {
            "type": "object",
            "properties": {"city": {"type": "string"}, "days": {"type": "integer"}},
            "required": ["city", "days"],
        },
    },
}
TERMINAL_TYPES = ("response.completed", "response.incomplete", "response.failed")
ExceptionTypes = type[BaseException] | tuple[type[BaseException], ...]


# --------------------------------------------------------------------------- fixtures


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as s:
        yield s


@pytest.fixture(params=["httpx", "httpx2"])
def lib(request: pytest.FixtureRequest) -> types.ModuleType:
    """The HTTP library under test: ``httpx`` or ``httpx2`` (same API)."""
    return httpx if request.param == "httpx" else httpx2


def sync_client(lib: types.ModuleType, **kwargs: Any) -> Any:
    return lib.Client(timeout=TIMEOUT, trust_env=False, **kwargs)


def async_client(lib: types.ModuleType, **kwargs: Any) -> Any:
    return lib.AsyncClient(timeout=TIMEOUT, trust_env=False, **kwargs)


def sdk(server: ReplayServer) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url,
        api_key="test",
        timeout=TIMEOUT,
        max_retries=0,
        http_client=openai.DefaultHttpxClient(trust_env=False, timeout=TIMEOUT),
    )


# --------------------------------------------------------------------------- helpers


def chat_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "stream": True, "messages": copy.deepcopy(MESSAGES), **extra}


def responses_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "stream": True, "input": QUESTION, **extra}


def completions_body(**extra: Any) -> dict[str, Any]:
    return {"model": MODEL, "stream": True, "prompt": QUESTION, "max_tokens": 40, **extra}


@dataclass
class Run:
    events: list[ServerSentEvent]
    report: StreamReport
    error: BaseException | None
    #: Seconds spent leaving the ``with`` block (the fallbacks).
    exit_seconds: float

    @property
    def usage(self) -> Usage:
        assert self.report.usage is not None, self.report.attempts
        return self.report.usage


def run(
    client: Any,
    url: str,
    body: dict[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    catch: ExceptionTypes = (),
    retrieval: RetrievalPolicy = FAST,
    **kwargs: Any,
) -> Run:
    """Stream ``body`` with ``connect_usage``; an exception of type ``catch`` raised while
    iterating is caught inside the block (so the fallbacks still run) and returned."""
    events: list[ServerSentEvent] = []
    error: BaseException | None = None
    with connect_usage(
        client, "POST", url, json=body, headers={**AUTH, **(headers or {})},
        retrieval=retrieval, **kwargs,
    ) as stream:  # fmt: skip
        try:
            for event in stream:
                events.append(event)  # noqa: PERF402 - keeps what came before an error
        except catch as exc:
            error = exc
        start = time.monotonic()
    elapsed = time.monotonic() - start
    assert stream.report is not None
    return Run(events, stream.report, error, elapsed)


async def arun(
    client: Any,
    url: str,
    body: dict[str, Any],
    *,
    headers: Mapping[str, str] | None = None,
    catch: ExceptionTypes = (),
    retrieval: RetrievalPolicy = FAST,
    **kwargs: Any,
) -> Run:
    """Async twin of ``run``."""
    events: list[ServerSentEvent] = []
    error: BaseException | None = None
    async with aconnect_usage(
        client, "POST", url, json=body, headers={**AUTH, **(headers or {})},
        retrieval=retrieval, **kwargs,
    ) as stream:  # fmt: skip
        try:
            async for event in stream:
                events.append(event)
        except catch as exc:
            error = exc
        start = time.monotonic()
    elapsed = time.monotonic() - start
    assert stream.report is not None
    return Run(events, stream.report, error, elapsed)


@functools.cache
def encoding(name: str = "o200k_base") -> tiktoken.Encoding:
    # Loaded inside tests, once the session fixture has pointed tiktoken at its offline cache.
    return tiktoken.get_encoding(name)


def tokens(text: str) -> int:
    return len(encoding().encode_ordinary(text))


def cookbook_prompt_tokens(messages: list[Any]) -> int:
    """openai-cookbook ``num_tokens_from_messages`` for simple string messages."""
    total = 3
    for message in messages:
        total += 3 + sum(tokens(value) for value in message.values())
    return total


def payloads(events: list[ServerSentEvent]) -> list[Any]:
    return [event.json() for event in events if event.data != "[DONE]"]


def chat_texts(events: list[ServerSentEvent], key: str = "content") -> dict[int, str]:
    """The streamed text per choice index (``key="text"`` for legacy Completions)."""
    out: dict[int, str] = {}
    for obj in payloads(events):
        for choice in obj.get("choices") or []:
            piece = choice["delta"].get(key) if key == "content" else choice.get(key)
            out[choice["index"]] = out.get(choice["index"], "") + (piece or "")
    return out


def chat_tool_calls(events: list[ServerSentEvent]) -> list[tuple[str, str]]:
    """(name, arguments) of the streamed tool calls of choice 0."""
    calls: dict[int, list[str]] = {}
    for obj in payloads(events):
        for choice in obj.get("choices") or []:
            for call in choice["delta"].get("tool_calls") or []:
                entry = calls.setdefault(call["index"], ["", ""])
                function = call.get("function") or {}
                entry[0] += function.get("name") or ""
                entry[1] += function.get("arguments") or ""
    return [(name, arguments) for name, arguments in calls.values()]


def responses_text(events: list[ServerSentEvent]) -> str:
    return "".join(
        obj["delta"] for obj in payloads(events) if obj["type"] == "response.output_text.delta"
    )


def is_usage_chunk(event: ServerSentEvent) -> bool:
    if event.data == "[DONE]":
        return False
    obj = event.json()
    return obj.get("choices") == [] and bool(obj.get("usage"))


def normalized(events: list[ServerSentEvent]) -> list[Any]:
    """Events without what differs between two answers to the same request."""
    out: list[Any] = []
    for event in events:
        if event.data == "[DONE]":
            out.append("[DONE]")
            continue
        obj = event.json()
        for key in ("id", "created", "obfuscation"):
            obj.pop(key, None)
        out.append(obj)
    return out


def counts(raw: Mapping[str, Any]) -> tuple[Any, ...]:
    """(input, output, total, cached, reasoning) of a wire usage object, Chat or Responses."""
    if "prompt_tokens" in raw:
        return (
            raw["prompt_tokens"],
            raw["completion_tokens"],
            raw["total_tokens"],
            (raw.get("prompt_tokens_details") or {}).get("cached_tokens"),
            (raw.get("completion_tokens_details") or {}).get("reasoning_tokens"),
        )
    return (
        raw["input_tokens"],
        raw["output_tokens"],
        raw["total_tokens"],
        raw["input_tokens_details"]["cached_tokens"],
        raw["output_tokens_details"]["reasoning_tokens"],
    )


def usage_counts(usage: Usage) -> tuple[Any, ...]:
    return (
        usage.input_tokens,
        usage.output_tokens,
        usage.total_tokens,
        usage.cached_input_tokens,
        usage.reasoning_tokens,
    )


def assert_true_usage(usage: Usage, truth: Mapping[str, Any] | None, source: str) -> None:
    """``usage`` is the server's own usage object, normalised, from ``source``."""
    assert truth is not None
    assert usage.source == source
    assert dict(usage.raw) == truth
    assert usage_counts(usage) == counts(truth)


def gets(server: ReplayServer) -> list[str]:
    """Paths of the GET requests the server received."""
    return [r.path for r in server.requests if r.method == "GET"]


def attempt(report: StreamReport, source: str) -> tuple[bool, str]:
    found = [(a.ok, a.reason) for a in report.attempts if a.source == source]
    assert len(found) == 1, report.attempts
    return found[0]


# --------------------------------------------------------------------------- include_usage


def test_chat_injects_include_usage_and_hides_the_usage_chunk(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    body = chat_body()
    original = copy.deepcopy(body)
    with sync_client(lib) as client:
        injected = run(client, server.url + "/chat/completions", body)
        served = server.last
        plain = run(client, server.url + "/chat/completions", body, include_usage=False)
    assert body == original, "the caller's body must not be changed"
    sent = server.requests[0].body
    assert sent["stream_options"] == {"include_usage": True}
    assert {k: v for k, v in sent.items() if k != "stream_options"} == original
    assert "stream_options" not in server.requests[1].body

    # The server sent the usage chunk; the caller never saw it.
    assert served.usage_sent
    assert served.events_sent == len(injected.events) + 1
    assert not any(is_usage_chunk(e) for e in injected.events)
    assert injected.events[-1].data == "[DONE]"
    assert normalized(injected.events) == normalized(plain.events)

    assert_true_usage(injected.usage, served.usage, "stream")
    assert injected.report.status == "completed" and injected.report.done
    assert injected.report.api == "chat.completions" and injected.report.model == MODEL
    assert injected.report.response_id == served.id
    assert attempt(injected.report, "stream") == (True, "usage read from the stream")
    assert chat_texts(injected.events) == {0: served.texts[0]}
    assert injected.report.output is not None
    assert injected.report.output["choices"][0]["text"] == served.texts[0]
    # Without the injection there is nothing to read: the estimate says so.
    assert plain.usage.source == "estimate"


async def test_async_chat_injects_include_usage(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    body = chat_body(n=2)
    async with async_client(lib) as client:
        injected = await arun(client, server.url + "/chat/completions", body)
        served = server.last
        plain = await arun(client, server.url + "/chat/completions", body, include_usage=False)
    assert server.requests[0].body["stream_options"] == {"include_usage": True}
    assert "stream_options" not in server.requests[1].body
    assert served.events_sent == len(injected.events) + 1
    assert not any(is_usage_chunk(e) for e in injected.events)
    assert normalized(injected.events) == normalized(plain.events)
    assert_true_usage(injected.usage, served.usage, "stream")
    assert chat_texts(injected.events) == dict(enumerate(served.texts))


def test_existing_stream_options_are_kept(server: ReplayServer) -> None:
    body = chat_body(stream_options={"include_obfuscation": False})
    with sync_client(httpx) as client:
        r = run(client, server.url + "/chat/completions", body)
    sent = server.requests[-1].body["stream_options"]
    assert sent == {"include_obfuscation": False, "include_usage": True}
    assert body["stream_options"] == {"include_obfuscation": False}
    assert not any("obfuscation" in obj for obj in payloads(r.events))
    assert_true_usage(r.usage, server.last_usage, "stream")


@pytest.mark.parametrize("query", ["", "?api-version=2024-10-21"])
def test_injection_into_a_content_body_and_a_relative_url(
    lib: types.ModuleType, server: ReplayServer, query: str
) -> None:
    body = chat_body()
    with sync_client(lib, base_url=server.url) as client, connect_usage(
        client, "POST", "/chat/completions" + query, content=json.dumps(body).encode(),
        headers={**AUTH, "Content-Type": "application/json"},
    ) as stream:  # fmt: skip
        events = list(stream)
    assert server.requests[-1].query == query.lstrip("?")
    assert server.requests[-1].body["stream_options"] == {"include_usage": True}
    assert not any(is_usage_chunk(e) for e in events)
    assert stream.report is not None and stream.report.usage is not None
    assert_true_usage(stream.report.usage, server.last_usage, "stream")


def test_explicit_include_usage_false_is_left_alone(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    body = chat_body(stream_options={"include_usage": False})
    with sync_client(lib) as client:
        r = run(client, server.url + "/chat/completions", body)
    assert server.requests[-1].body == body
    assert not server.last.usage_sent
    assert r.usage.source == "estimate"
    assert r.usage.output_tokens == tokens(chat_texts(r.events)[0])
    assert attempt(r.report, "stream")[0] is False
    assert attempt(r.report, "estimate")[0] is True


def test_legacy_completions_injection(lib: types.ModuleType, server: ReplayServer) -> None:
    body = completions_body()
    with sync_client(lib) as client:
        injected = run(client, server.url + "/completions", body)
        served = server.last
        explicit = run(
            client,
            server.url + "/completions",
            {**body, "stream_options": {"include_usage": False}},
        )
    assert server.requests[0].body["stream_options"] == {"include_usage": True}
    assert served.endpoint == "completions" and served.usage_sent
    assert served.events_sent == len(injected.events) + 1
    assert not any(is_usage_chunk(e) for e in injected.events)
    assert_true_usage(injected.usage, served.usage, "stream")
    assert injected.report.api == "completions"
    assert chat_texts(injected.events, "text") == {0: served.texts[0]}

    assert server.requests[1].body["stream_options"] == {"include_usage": False}
    assert not server.last.usage_sent
    assert explicit.usage.source == "estimate"
    assert explicit.usage.output_tokens == tokens(chat_texts(explicit.events, "text")[0])
    assert explicit.usage.input_tokens == tokens(QUESTION) == server.last.input_tokens


@pytest.mark.parametrize("extra", [{}, {"stream_options": {"include_obfuscation": False}}])
def test_responses_never_gets_include_usage(
    lib: types.ModuleType, server: ReplayServer, extra: dict[str, Any]
) -> None:
    body = responses_body(**extra)
    with sync_client(lib) as client:
        r = run(client, server.url + "/responses", body)
    assert server.requests[-1].body == body
    assert_true_usage(r.usage, server.last_usage, "stream")
    assert r.report.status == "completed" and r.report.api == "responses"
    assert len(r.events) == server.last.events_sent
    assert responses_text(r.events) == server.last.texts[0]
    assert gets(server) == []


def test_sdk_parses_the_same_chat_stream(server: ReplayServer) -> None:
    with sync_client(httpx) as client:
        r = run(client, server.url + "/chat/completions", chat_body())
    with sdk(server) as oa:
        chunks = list(
            oa.chat.completions.create(
                model=MODEL, messages=MESSAGES, stream=True, stream_options={"include_usage": True}
            )
        )
    # The SDK gets every event but [DONE]; connect_usage every event but the usage chunk.
    assert len(chunks) == len(r.events)
    usage = chunks[-1].usage
    assert usage is not None and chunks[-1].choices == []
    assert usage.model_dump(exclude_none=True) == dict(r.usage.raw)
    sdk_text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert sdk_text == chat_texts(r.events)[0]


# --------------------------------------------------------------------------- retrieval (acceptance 1)


def cut_responses_body(**extra: Any) -> dict[str, Any]:
    return responses_body(max_output_tokens=25, **extra)


#: Events before the cut: created, in_progress, output_item.added, content_part.added, 2 deltas.
CUT = {"x-replay-cut-after-events": "6"}


def assert_cut_before_terminal(server: ReplayServer, events: list[ServerSentEvent]) -> None:
    assert server.last.cut and server.last.events_sent == len(events)
    types_seen = [obj["type"] for obj in payloads(events)]
    assert "response.output_text.delta" in types_seen
    assert not set(types_seen) & set(TERMINAL_TYPES)


def assert_retrieved(server: ReplayServer, r: Run) -> None:
    report = r.report
    assert report.response_id is not None
    stored = server.responses[report.response_id]
    assert stored["store"] is True
    assert_true_usage(r.usage, stored["usage"], "retrieval")
    assert report.status == stored["status"]
    assert report.incomplete_reason == stored["incomplete_details"]["reason"]
    assert attempt(report, "stream")[0] is False
    assert attempt(report, "retrieval") == (True, "ok")
    assert not [a for a in report.attempts if a.source == "estimate"]
    assert gets(server)[-1] == f"/v1/responses/{report.response_id}"
    get = [q for q in server.requests if q.method == "GET"][-1]
    assert get.header("authorization") == AUTH["Authorization"]


def test_truncated_responses_stream_usage_is_retrieved(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    with sync_client(lib) as client, pytest.raises(lib.TransportError), connect_usage(
        client, "POST", server.url + "/responses", json=cut_responses_body(),
        headers={**AUTH, **CUT}, retrieval=FAST,
    ) as stream:  # fmt: skip
        events = []
        for event in stream:
            events.append(event)  # noqa: PERF402 - keeps what came before an error
    assert stream.report is not None
    assert_cut_before_terminal(server, events)
    r = Run(events, stream.report, None, 0.0)
    assert_retrieved(server, r)
    assert "RemoteProtocolError" in attempt(r.report, "stream")[1]
    # The SDK reads the same stored object.
    with sdk(server) as oa:
        assert r.report.response_id is not None
        retrieved = oa.responses.retrieve(r.report.response_id)
    assert retrieved.usage is not None
    assert retrieved.usage.model_dump(exclude_none=True) == dict(r.usage.raw)
    assert retrieved.status == r.report.status


async def test_async_truncated_responses_stream_usage_is_retrieved(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    async with async_client(lib, base_url=server.url) as client:
        # A relative URL: the retrieval URL is built from the request that was sent.
        r = await arun(
            client, "/responses", cut_responses_body(), headers=CUT, catch=lib.TransportError
        )
    assert isinstance(r.error, lib.RemoteProtocolError)
    assert_cut_before_terminal(server, r.events)
    assert_retrieved(server, r)


def test_store_false_falls_through_to_an_estimate(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    body = cut_responses_body(store=False)
    with sync_client(lib) as client:
        r = run(client, server.url + "/responses", body, headers=CUT, catch=lib.TransportError)
    assert_cut_before_terminal(server, r.events)
    assert r.report.response_id is not None
    assert server.responses[r.report.response_id]["store"] is False
    assert gets(server) == []  # a GET could only 404
    ok, reason = attempt(r.report, "retrieval")
    assert not ok and "store=false" in reason
    assert attempt(r.report, "estimate")[0] is True
    assert r.report.status == "truncated"
    assert r.usage.source == "estimate"
    assert r.usage.output_tokens == tokens(responses_text(r.events))
    assert r.usage.input_tokens == server.last.input_tokens
    assert r.usage.reasoning_tokens is None


def test_polls_while_in_progress_with_backoff(lib: types.ModuleType, server: ReplayServer) -> None:
    polls = 3
    policy = RetrievalPolicy(deadline=5.0, first_delay=0.05, backoff=2.0, max_delay=1.0)
    headers = {**CUT, "x-replay-poll-in-progress": str(polls)}
    with sync_client(lib) as client:
        r = run(
            client, server.url + "/responses", cut_responses_body(), headers=headers,
            catch=lib.TransportError, retrieval=policy,
        )  # fmt: skip
    assert len(gets(server)) == polls + 1
    assert_retrieved(server, r)
    # Waited first_delay, then twice as long each time.
    assert r.exit_seconds >= sum(0.05 * 2**i for i in range(polls)) - 0.01


async def test_async_polls_while_in_progress(lib: types.ModuleType) -> None:
    with ReplayServer(poll_in_progress=2) as server:
        async with async_client(lib) as client:
            r = await arun(
                client, server.url + "/responses", cut_responses_body(), headers=CUT,
                catch=lib.TransportError,
            )  # fmt: skip
        assert len(gets(server)) == 3
        assert_retrieved(server, r)


def test_polling_gives_up_at_the_deadline(server: ReplayServer) -> None:
    policy = RetrievalPolicy(deadline=0.5, first_delay=0.05, backoff=2.0, max_delay=0.2)
    headers = {**CUT, "x-replay-poll-in-progress": "1000"}
    with sync_client(httpx) as client:
        r = run(
            client, server.url + "/responses", cut_responses_body(), headers=headers,
            catch=httpx.TransportError, retrieval=policy,
        )  # fmt: skip
    ok, reason = attempt(r.report, "retrieval")
    assert not ok and "deadline" in reason and "in_progress" in reason
    assert r.exit_seconds < policy.deadline + 1.0
    assert r.usage.source == "estimate"


@pytest.mark.parametrize("statuses", [(500, 502, 503), (503, 503, 503, 503)])
def test_repeated_server_errors_fall_through(
    lib: types.ModuleType, server: ReplayServer, statuses: tuple[int, ...]
) -> None:
    policy = RetrievalPolicy(deadline=5.0, first_delay=0.01, max_delay=0.05, max_server_errors=3)
    with sync_client(lib) as client, connect_usage(
        client, "POST", server.url + "/responses", json=cut_responses_body(),
        headers={**AUTH, **CUT}, retrieval=policy,
    ) as stream:  # fmt: skip
        with pytest.raises(lib.TransportError):
            for _ in stream:
                pass
        server.queue_statuses(*statuses)
    report = stream.report
    assert report is not None and report.usage is not None
    assert len(gets(server)) == policy.max_server_errors
    ok, reason = attempt(report, "retrieval")
    assert not ok
    assert f"{policy.max_server_errors} server errors" in reason
    assert f"last {statuses[policy.max_server_errors - 1]}" in reason
    assert report.usage.source == "estimate"


def test_a_server_error_then_success_is_retried(server: ReplayServer) -> None:
    with sync_client(httpx) as client, connect_usage(
        client, "POST", server.url + "/responses", json=cut_responses_body(),
        headers={**AUTH, **CUT}, retrieval=FAST,
    ) as stream:  # fmt: skip
        with pytest.raises(httpx.TransportError):
            for _ in stream:
                pass
        server.queue_statuses(500, 502)
    assert stream.report is not None
    assert len(gets(server)) == 3
    assert_retrieved(server, Run([], stream.report, None, 0.0))


def test_retry_after_is_honoured_within_the_deadline(lib: types.ModuleType) -> None:
    # Retry-After (1 s) is longer than the policy's backoff cap: the server's word wins.
    policy = RetrievalPolicy(deadline=5.0, first_delay=0.01, backoff=2.0, max_delay=0.2)
    with ReplayServer(retry_after=1.0) as server, sync_client(lib) as client:
        with connect_usage(
            client, "POST", server.url + "/responses", json=cut_responses_body(),
            headers={**AUTH, **CUT}, retrieval=policy,
        ) as stream:  # fmt: skip
            with pytest.raises(lib.TransportError):
                for _ in stream:
                    pass
            server.queue_statuses(429)
            start = time.monotonic()
        elapsed = time.monotonic() - start
        assert stream.report is not None
        assert len(gets(server)) == 2
        assert 0.98 <= elapsed < policy.deadline
        assert_retrieved(server, Run([], stream.report, None, 0.0))


async def test_async_retry_after_beyond_the_deadline_gives_up_at_once() -> None:
    policy = RetrievalPolicy(deadline=1.0, first_delay=0.01)
    with ReplayServer(retry_after=30.0) as server:
        async with async_client(httpx) as client:
            async with aconnect_usage(
                client, "POST", server.url + "/responses", json=cut_responses_body(),
                headers={**AUTH, **CUT}, retrieval=policy,
            ) as stream:  # fmt: skip
                with pytest.raises(httpx.TransportError):
                    async for _ in stream:
                        pass
                server.queue_statuses(429)
                start = time.monotonic()
            elapsed = time.monotonic() - start
        assert stream.report is not None and stream.report.usage is not None
        assert len(gets(server)) == 1
        ok, reason = attempt(stream.report, "retrieval")
        assert not ok and "429" in reason and "deadline" in reason
        assert elapsed < policy.deadline
        assert stream.report.usage.source == "estimate"


def test_retrieval_can_be_turned_off(server: ReplayServer) -> None:
    with sync_client(httpx) as client:
        r = run(
            client, server.url + "/responses", cut_responses_body(), headers=CUT,
            catch=httpx.TransportError, retrieve=False,
        )  # fmt: skip
    assert gets(server) == []
    assert [a.source for a in r.report.attempts] == ["stream", "estimate"]
    assert r.usage.source == "estimate"


def test_nothing_at_all_when_estimates_are_off(server: ReplayServer) -> None:
    with sync_client(httpx) as client:
        r = run(
            client, server.url + "/chat/completions", chat_body(), include_usage=False,
            estimate=False,
        )  # fmt: skip
    assert r.report.usage is None
    assert [a.source for a in r.report.attempts] == ["stream"]
    assert r.report.timings is not None and r.report.timings.output_tokens is None


# --------------------------------------------------------------------------- estimates (acceptance 2)


def assert_estimate(usage: Usage) -> None:
    assert usage.source == "estimate"
    assert usage.reasoning_tokens is None
    assert usage.cached_input_tokens is None
    assert usage.note is not None and "estimate" in usage.note
    assert usage.raw["encoding"] == encoding().name


def test_chat_without_usage_is_estimated(lib: types.ModuleType, server: ReplayServer) -> None:
    with sync_client(lib) as client:
        r = run(client, server.url + "/chat/completions", chat_body(), include_usage=False)
    assert not server.last.usage_sent
    usage = r.usage
    assert_estimate(usage)
    text = chat_texts(r.events)[0]
    assert text == server.last.texts[0]
    assert usage.output_tokens == tokens(text)
    assert usage.input_tokens == cookbook_prompt_tokens(MESSAGES) == server.last.input_tokens
    assert usage.total_tokens == usage.input_tokens + tokens(text)
    assert usage.raw["per_choice_completion_tokens"] == [tokens(text)]
    assert r.report.status == "completed" and r.report.finish_reason == "stop"
    assert attempt(r.report, "estimate")[0] is True
    assert r.report.timings is not None and r.report.timings.output_tokens == usage.output_tokens


async def test_async_server_that_ignores_include_usage(lib: types.ModuleType) -> None:
    with ReplayServer() as server:
        async with async_client(lib) as client:
            # A capture of a stream without usage, replayed whatever the request asks.
            raw = await client.post(
                server.url + "/chat/completions", json=chat_body(), headers=AUTH
            )
            server.add_streams(raw.content)
            r = await arun(client, server.url + "/chat/completions", chat_body())
        assert server.requests[-1].body["stream_options"] == {"include_usage": True}
        assert server.last.source == "<bytes>"
    assert_estimate(r.usage)
    text = chat_texts(r.events)[0]
    assert text and r.usage.output_tokens == tokens(text)
    assert r.usage.input_tokens == cookbook_prompt_tokens(MESSAGES)


def test_per_choice_estimates(lib: types.ModuleType, server: ReplayServer) -> None:
    with sync_client(lib) as client:
        r = run(client, server.url + "/chat/completions", chat_body(n=3), include_usage=False)
    texts = chat_texts(r.events)
    assert sorted(texts) == [0, 1, 2]
    assert [texts[i] for i in range(3)] == server.last.texts
    per_choice = [tokens(texts[i]) for i in range(3)]
    assert len(set(per_choice)) > 1, "the choices should differ for this test to mean much"
    assert_estimate(r.usage)
    assert r.usage.raw["per_choice_completion_tokens"] == per_choice
    assert r.usage.output_tokens == sum(per_choice)


def test_tool_calls_are_counted(lib: types.ModuleType, server: ReplayServer) -> None:
    body = chat_body(tools=[WEATHER_TOOL], tool_choice="required")
    with sync_client(lib) as client:
        r = run(client, server.url + "/chat/completions", body, include_usage=False)
    calls = chat_tool_calls(r.events)
    truth = server.last.tool_calls
    assert calls == [(c["name"], c["arguments"]) for c in truth] and len(calls) == 1
    name, arguments = calls[0]
    assert_estimate(r.usage)
    assert r.usage.output_tokens == tokens(name) + tokens(arguments)
    assert r.report.finish_reason == "tool_calls"
    assert r.usage.input_tokens is not None
    assert r.usage.input_tokens > cookbook_prompt_tokens(MESSAGES)  # the tool definitions


def test_hidden_reasoning_is_not_estimated(server: ReplayServer) -> None:
    with sync_client(httpx) as client:
        r = run(
            client, server.url + "/chat/completions", chat_body(model="o4-mini"),
            include_usage=False,
        )  # fmt: skip
    assert server.last.reasoning_tokens > 0
    assert_estimate(r.usage)
    assert r.usage.output_tokens == tokens(chat_texts(r.events)[0])
    truth = server.last.output_tokens
    assert truth is not None and r.usage.output_tokens < truth
    assert r.usage.note is not None and "reasoning" in r.usage.note


# --------------------------------------------------------------------------- robustness (acceptance 3)


def test_break_early_sync(lib: types.ModuleType, server: ReplayServer) -> None:
    headers = {**AUTH, "x-replay-delay-ms": "100"}
    start = time.monotonic()
    with sync_client(lib) as client:
        with connect_usage(
            client, "POST", server.url + "/chat/completions", json=chat_body(), headers=headers
        ) as stream:
            for event in stream:
                if event.json()["choices"][0]["delta"].get("content"):
                    break
        assert stream.response.is_closed
    # Reading it all takes events_planned * 0.1 s; the break came at the first content.
    assert time.monotonic() - start < server.last.events_planned * 0.1 / 2
    report = stream.report
    assert report is not None and report.usage is not None
    assert report.status == "cancelled"
    assert "closed early" in attempt(report, "stream")[1]
    assert report.usage.source == "estimate"
    assert not server.last.completed


async def test_break_early_async_responses_is_retrieved(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    headers = {**AUTH, "x-replay-delay-ms": "50"}
    async with async_client(lib) as client, aconnect_usage(
        client, "POST", server.url + "/responses", json=responses_body(), headers=headers,
        retrieval=FAST,
    ) as stream:  # fmt: skip
        async for event in stream:
            if event.event == "response.output_text.delta":
                break
    assert stream.report is not None
    assert not server.last.completed
    assert stream.report.response_id is not None
    stored = server.responses[stream.report.response_id]
    assert stream.report.usage is not None
    assert_true_usage(stream.report.usage, stored["usage"], "retrieval")
    assert stream.report.status == stored["status"] == "completed"


def test_exception_in_the_block_propagates_with_a_report(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    with sync_client(lib) as client, pytest.raises(RuntimeError, match="boom"), connect_usage(
        client, "POST", server.url + "/chat/completions", json=chat_body(),
        headers={**AUTH, "x-replay-delay-ms": "20"},
    ) as stream:  # fmt: skip
        for _ in stream:
            raise RuntimeError("boom")
    report = stream.report
    assert report is not None and report.usage is not None
    assert report.status == "cancelled"
    assert "closed early" in attempt(report, "stream")[1]
    assert report.usage.source == "estimate"
    assert report.timings is not None and report.timings.end is not None


async def test_async_exception_in_the_block_propagates_with_a_report(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    async with async_client(lib) as client:
        with pytest.raises(KeyError):
            async with aconnect_usage(
                client, "POST", server.url + "/responses", json=responses_body(),
                headers={**AUTH, "x-replay-delay-ms": "20"}, retrieval=FAST,
            ) as stream:  # fmt: skip
                async for _ in stream:
                    raise KeyError("boom")
    assert stream.report is not None and stream.report.usage is not None
    # An ordinary exception still gets the retrieval fallback.
    assert stream.report.usage.source == "retrieval"


SLOW = {"x-replay-delay-ms": "300", "x-replay-poll-in-progress": "1000"}
#: A retrieval that would hold a cancelled task for seconds if it were attempted.
PATIENT = RetrievalPolicy(deadline=8.0, first_delay=0.5, max_delay=0.5)


@pytest.mark.parametrize("path", ["/chat/completions", "/responses"])
@pytest.mark.parametrize("where", ["iterating", "in the block"])
async def test_task_cancel_mid_stream(
    lib: types.ModuleType, server: ReplayServer, path: str, where: str
) -> None:
    body = chat_body() if path == "/chat/completions" else responses_body()
    streams: list[AsyncUsageStream] = []
    got_event = asyncio.Event()

    async def consume() -> None:
        async with async_client(lib) as client, aconnect_usage(
            client, "POST", server.url + path, json=body, headers={**AUTH, **SLOW},
            retrieval=PATIENT,
        ) as stream:  # fmt: skip
            streams.append(stream)
            async for _ in stream:
                got_event.set()
                if where == "in the block":
                    await asyncio.sleep(60)

    task = asyncio.create_task(consume())
    await asyncio.wait_for(got_event.wait(), TIMEOUT)
    start = time.monotonic()
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, TIMEOUT)
    assert time.monotonic() - start < 4.0  # a retrieval would poll until PATIENT.deadline
    report = streams[0].report
    assert report is not None and report.usage is not None
    assert report.status == "cancelled"
    assert report.usage.source == "estimate"
    assert gets(server) == []
    if path == "/responses":
        ok, reason = attempt(report, "retrieval")
        assert not ok and "cancel" in reason.lower() and "skipped" in reason


async def test_anyio_cancel_scope_mid_stream(server: ReplayServer) -> None:
    # A cancel scope cancels every await until it exits: the report must not need one.
    streams: list[AsyncUsageStream] = []
    async with async_client(httpx) as client:
        with anyio.move_on_after(0.5) as scope:
            async with aconnect_usage(
                client, "POST", server.url + "/responses", json=responses_body(),
                headers={**AUTH, **SLOW}, retrieval=PATIENT,
            ) as stream:  # fmt: skip
                streams.append(stream)
                async for _ in stream:
                    await anyio.sleep(60)
    assert scope.cancelled_caught
    report = streams[0].report
    assert report is not None and report.usage is not None
    assert report.usage.source == "estimate"
    ok, reason = attempt(report, "retrieval")
    assert not ok and "skipped" in reason
    assert gets(server) == []


def test_network_error_mid_chat_stream(lib: types.ModuleType, server: ReplayServer) -> None:
    events: list[ServerSentEvent] = []
    with sync_client(lib) as client, pytest.raises(lib.RemoteProtocolError), connect_usage(
        client, "POST", server.url + "/chat/completions", json=chat_body(),
        headers={**AUTH, "x-replay-cut-after-events": "5"},
    ) as stream:  # fmt: skip
        for event in stream:
            events.append(event)  # noqa: PERF402 - keeps what came before an error
    assert server.last.cut and server.last.events_sent == len(events) == 5
    report = stream.report
    assert report is not None and report.usage is not None
    assert report.status == "truncated" and not report.done
    assert "RemoteProtocolError" in attempt(report, "stream")[1]
    assert_estimate(report.usage)
    assert report.usage.output_tokens == tokens(chat_texts(events)[0])
    assert gets(server) == []


def test_malformed_json_event_is_counted(lib: types.ModuleType, server: ReplayServer) -> None:
    with sync_client(lib) as client:
        r = run(
            client, server.url + "/chat/completions", chat_body(),
            headers={"x-replay-malformed": "3"},
        )  # fmt: skip
    assert r.report.invalid_json_events == 1
    bad = []
    for event in r.events[:-1]:  # all but [DONE]
        try:
            event.json()
        except ValueError:
            bad.append(event)
    assert len(bad) == 1 and bad[0] == r.events[3]
    assert_true_usage(r.usage, server.last_usage, "stream")


async def test_trickled_stream(lib: types.ModuleType, server: ReplayServer) -> None:
    body = chat_body(stream_options={"include_obfuscation": False})
    async with async_client(lib) as client:
        normal = await arun(client, server.url + "/chat/completions", body)
        trickled = await arun(
            client, server.url + "/chat/completions", body, headers={"x-replay-trickle": "1"}
        )
    assert_true_usage(trickled.usage, server.last_usage, "stream")
    assert normalized(trickled.events) == normalized(normal.events)
    assert trickled.report.events == normal.report.events
    assert trickled.report.bytes == normal.report.bytes
    assert trickled.report.delta_chunks == normal.report.delta_chunks
    assert chat_texts(trickled.events)[0] == server.last.texts[0]


def test_mid_stream_error_event_chat(lib: types.ModuleType, server: ReplayServer) -> None:
    with sync_client(lib) as client:
        r = run(
            client, server.url + "/chat/completions", chat_body(),
            headers={"x-replay-error-event": "4"},
        )  # fmt: skip
    errors = [obj["error"] for obj in payloads(r.events) if "error" in obj]
    assert len(errors) == 1
    assert r.report.status == "failed"
    assert r.report.error == errors[0]
    assert r.usage.source == "estimate"
    assert r.usage.output_tokens == tokens(chat_texts(r.events).get(0, ""))


async def test_mid_stream_error_event_responses(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    async with async_client(lib) as client:
        r = await arun(
            client, server.url + "/responses", responses_body(),
            headers={"x-replay-error-event": "6"},
        )  # fmt: skip
    errors = [obj["error"] for obj in payloads(r.events) if obj["type"] == "error"]
    assert len(errors) == 1
    assert r.events[-1].event == "response.failed"
    assert r.report.status == "failed"
    assert r.report.error == errors[0]
    assert gets(server) == []  # failed is terminal: nothing to retrieve
    assert r.usage.source == "estimate"
    assert r.usage.output_tokens == tokens(responses_text(r.events)) > 0


ERROR_CASES = [
    pytest.param({}, {"model": "error-400"}, id="400-model"),
    pytest.param({"x-replay-status": "404"}, {}, id="404"),
    pytest.param({"x-replay-status": "429", "x-replay-retry-after": "2"}, {}, id="429"),
    pytest.param({"x-replay-status": "500"}, {}, id="500"),
    pytest.param({"x-replay-status": "503"}, {}, id="503"),
]


@pytest.mark.parametrize(("headers", "changes"), ERROR_CASES)
def test_error_statuses_raise_api_status_error(
    lib: types.ModuleType,
    server: ReplayServer,
    headers: dict[str, str],
    changes: dict[str, Any],
) -> None:
    body = chat_body(**changes)
    with sync_client(lib) as client:
        expected = client.post(
            server.url + "/chat/completions", json=body, headers={**AUTH, **headers}
        )
        entered = False
        with pytest.raises(APIStatusError) as info, connect_usage(
            client, "POST", server.url + "/chat/completions", json=body,
            headers={**AUTH, **headers},
        ):  # fmt: skip
            entered = True
    assert not entered
    error = info.value
    assert expected.status_code >= 400
    assert error.status_code == expected.status_code == error.response.status_code
    assert error.body == expected.json()
    assert error.body["error"]["message"] in str(error)
    if "retry-after" in expected.headers:
        assert error.response.headers["retry-after"] == expected.headers["retry-after"]


async def test_async_error_statuses(lib: types.ModuleType, server: ReplayServer) -> None:
    async with async_client(lib) as client:
        expected = await client.post(server.url + "/responses", json=responses_body())
        with pytest.raises(APIStatusError) as info:
            # No credentials: the server's 401.
            async with aconnect_usage(
                client, "POST", server.url + "/responses", json=responses_body()
            ):
                pass
        assert info.value.status_code == expected.status_code == 401
        assert info.value.body == expected.json()
        with pytest.raises(SSEError, match="text/html"):
            async with aconnect_usage(
                client, "POST", server.url + "/responses", json=responses_body(),
                headers={**AUTH, "x-replay-status": "200", "x-replay-html": "1"},
            ):  # fmt: skip
                pass


def test_html_answers(lib: types.ModuleType, server: ReplayServer) -> None:
    with sync_client(lib) as client:
        with pytest.raises(SSEError, match="text/html"), connect_usage(
            client, "POST", server.url + "/chat/completions", json=chat_body(),
            headers={**AUTH, "x-replay-status": "200", "x-replay-html": "1"},
        ):  # fmt: skip
            pass
        # A proxy's HTML error page: the status wins, the body is the text.
        with pytest.raises(APIStatusError) as info, connect_usage(
            client, "POST", server.url + "/chat/completions", json=chat_body(),
            headers={**AUTH, "x-replay-status": "502", "x-replay-html": "1"},
        ):  # fmt: skip
            pass
    assert info.value.status_code == 502
    assert isinstance(info.value.body, str) and "<html>" in info.value.body


# --------------------------------------------------------------------------- timings


def assert_ordered_timings(report: StreamReport) -> None:
    t = report.timings
    assert t is not None
    assert t.first_byte is not None and t.first_content is not None
    assert t.last_content is not None and t.end is not None
    assert t.request_sent <= t.first_byte <= t.first_content <= t.last_content <= t.end
    assert t.ttft == t.first_content - t.request_sent
    assert t.duration == t.end - t.request_sent
    assert report.usage is not None
    n = report.usage.output_tokens
    assert n is not None and n >= 2 and t.output_tokens == n
    assert t.inter_token_latency == pytest.approx((t.last_content - t.first_content) / (n - 1))
    assert t.output_tokens_per_s == pytest.approx(n / (t.end - t.request_sent))
    as_dict = t.to_dict()
    assert as_dict["ttft"] == t.ttft and as_dict["output_tokens"] == n


def test_timings(lib: types.ModuleType, server: ReplayServer) -> None:
    headers = {"x-replay-first-byte-ms": "150", "x-replay-delay-ms": "20"}
    with sync_client(lib) as client:
        r = run(client, server.url + "/chat/completions", chat_body(), headers=headers)
    assert_true_usage(r.usage, server.last_usage, "stream")
    assert_ordered_timings(r.report)
    t = r.report.timings
    assert t is not None and t.first_byte is not None and t.ttft is not None
    assert t.first_byte - t.request_sent >= 0.15
    assert t.ttft >= 0.15
    # The content events were paced 20 ms apart by the server.
    assert t.last_content is not None and t.first_content is not None
    assert r.report.delta_chunks > 2
    assert t.last_content - t.first_content >= 0.5 * 0.02 * (r.report.delta_chunks - 1)


async def test_async_timings_use_the_estimate_when_there_is_no_usage(
    lib: types.ModuleType, server: ReplayServer
) -> None:
    async with async_client(lib) as client:
        r = await arun(
            client, server.url + "/responses", responses_body(store=False),
            headers={"x-replay-delay-ms": "10", "x-replay-cut-after-events": "12"},
            catch=lib.TransportError,
        )  # fmt: skip
    assert r.usage.source == "estimate"
    assert_ordered_timings(r.report)
    t = r.report.timings
    assert t is not None and t.ttft is not None and t.ttft > 0
