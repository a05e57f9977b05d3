"""The replay server (``ssetally._replay``): wire formats, usage truth, faults and replays.

Every server binds 127.0.0.1 on a free port and is shut down by its ``with`` block; every
client has a timeout. Wire formats are checked on the raw bytes (httpx, or a raw socket where
the chunked framing itself matters) and through the real ``openai`` SDK.
"""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import pytest
from corpus import CORPUS_DIR, corpus_files, rebuild
from loopback_http import raw_exchange
from openai.types.chat import ChatCompletionMessageParam
from ssetally._replay import (
    Faults,
    ReplayServer,
    approx_tokens,
    frame_chunks,
    load_stream,
    serve,
    split_events,
)

TIMEOUT = 10.0
AUTH = {"Authorization": "Bearer test"}
QUESTION = "Tell me about streaming usage"
HELLO: list[ChatCompletionMessageParam] = [{"role": "user", "content": QUESTION}]
CHAT_BIN_SHORT = (
    CORPUS_DIR
    / "openai-chat"
    / ("4cc50a6135d254573a502310e6af1246f55edb6ad95fa24059f160996b68866d.bin")
)
CHAT_BIN_LONG = (
    CORPUS_DIR
    / "openai-chat"
    / ("e2aad469b71d1d4894ff833ea147020a9d875eb7ce644a0ff355581690a4cbfd.bin")
)
RESPONSES_PHASE = CORPUS_DIR / "openai-responses" / "openai-phase.1.chunks.txt"
WEATHER_TOOL: dict[str, Any] = {
    "type": "function",
    "function": {
        "name": "get_weather",
        "description": "Weather at a place",
        "parameters": {
            "type": "object",
            "properties": {
                "location": {"type": "string"},
                "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
                "days": {"type": "integer"},
                "verbose": {"type": "boolean"},
            },
            "required": ["location", "unit", "days"],
        },
    },
}

# (event name or None, data) per SSE event.
Event = tuple[str | None, str]


# --------------------------------------------------------------------------- helpers


def sse(body: bytes) -> list[Event]:
    """A minimal SSE reader for the LF-framed streams the server writes."""
    out: list[Event] = []
    for block in body.decode("utf-8").split("\n\n"):
        if not block.strip():
            continue
        name: str | None = None
        data: list[str] = []
        for line in block.split("\n"):
            if line.startswith("event: "):
                name = line[len("event: ") :]
            elif line.startswith("data: "):
                data.append(line[len("data: ") :])
        out.append((name, "\n".join(data)))
    return out


def payloads(body: bytes) -> list[Any]:
    """The JSON of every data event but ``[DONE]``."""
    return [json.loads(data) for _, data in sse(body) if data != "[DONE]"]


@pytest.fixture
def server() -> Iterator[ReplayServer]:
    with ReplayServer() as s:
        yield s


def http(server: ReplayServer, **kwargs: Any) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, timeout=TIMEOUT, headers=AUTH, trust_env=False, **kwargs
    )


def anonymous(server: ReplayServer) -> httpx.Client:
    """A client that sends no credentials."""
    return httpx.Client(base_url=server.url, timeout=TIMEOUT, trust_env=False)


@pytest.fixture
def client(server: ReplayServer) -> Iterator[httpx.Client]:
    with http(server) as c:
        yield c


def sdk(server: ReplayServer, max_retries: int = 0) -> openai.OpenAI:
    return openai.OpenAI(
        base_url=server.url,
        api_key="test",
        timeout=TIMEOUT,
        max_retries=max_retries,
        http_client=openai.DefaultHttpxClient(trust_env=False, timeout=TIMEOUT),
    )


def chat(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("model", "gpt-4o")
    body.setdefault("messages", HELLO)
    return client.post("/chat/completions", json=body)


def stream_until_error(
    client: httpx.Client, path: str, body: dict[str, Any], headers: dict[str, str]
) -> tuple[bytes, Exception | None]:
    """The body bytes received, and the transport error that ended the body, if any."""
    received = b""
    with client.stream("POST", path, json=body, headers=headers) as response:
        assert response.status_code == 200
        try:
            for piece in response.iter_bytes():
                received += piece
        except httpx.TransportError as exc:
            return received, exc
    return received, None


def raw_http(
    server: ReplayServer, path: str, body: dict[str, Any], version: str = "1.1", **headers: str
) -> bytes:
    """POST with a plain socket (``Connection: close``) and return every byte received."""
    payload = json.dumps(body).encode()
    lines = [
        f"POST {path} HTTP/{version}",
        f"Host: {server.host}:{server.port}",
        "Authorization: Bearer test",
        "Content-Type: application/json",
        f"Content-Length: {len(payload)}",
        "Connection: close",
        *(f"{k.replace('_', '-')}: {v}" for k, v in headers.items()),
    ]
    request = ("\r\n".join(lines) + "\r\n\r\n").encode() + payload
    return raw_exchange(server.port, request, TIMEOUT, server.host)


def dechunk(raw: bytes) -> tuple[list[bytes], bool]:
    """The chunks of a chunked HTTP/1.1 response, and whether the final 0-chunk came."""
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert b"transfer-encoding: chunked" in head.lower()
    chunks: list[bytes] = []
    while rest:
        size_line, sep, rest = rest.partition(b"\r\n")
        if not sep:
            break
        size = int(size_line, 16)
        if size == 0:
            return chunks, True
        chunks.append(rest[:size])
        assert rest[size : size + 2] == b"\r\n"
        rest = rest[size + 2 :]
    return chunks, False


# --------------------------------------------------------------------------- Chat Completions


def test_chat_stream_wire_format_with_usage(server: ReplayServer, client: httpx.Client) -> None:
    r = chat(client, stream=True, stream_options={"include_usage": True})
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.content)
    assert all(name is None for name, _ in events)
    assert events[-1][1] == "[DONE]"
    chunks = payloads(r.content)
    truth = server.last
    assert {c["id"] for c in chunks} == {truth.id}
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    first, finish, usage_chunk = chunks[0], chunks[-2], chunks[-1]
    assert first["choices"][0]["delta"] == {"role": "assistant", "content": "", "refusal": None}
    assert finish["choices"] == [
        {"index": 0, "delta": {}, "logprobs": None, "finish_reason": "stop"}
    ]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == truth.usage
    assert all(c["usage"] is None for c in chunks[:-1])
    deltas = [c["choices"][0]["delta"]["content"] for c in chunks[1:-2]]
    text = "".join(deltas)
    assert text == truth.texts[0] and truth.finish_reasons == ["stop"]
    # Multi-byte text and an emoji, sent as raw UTF-8; chunks are not tokens.
    assert any(ord(ch) > 0xFFFF for ch in text) and any(0x7F < ord(ch) < 0x10000 for ch in text)
    assert "—".encode() in r.content
    assert truth.usage is not None
    assert len(deltas) != truth.usage["completion_tokens"]
    assert truth.usage["completion_tokens"] == server.count_tokens(text)
    assert truth.usage_sent and truth.completed and truth.events_sent == len(events)


def test_a_lone_surrogate_in_the_request_is_echoed_as_its_escape(
    server: ReplayServer, client: httpx.Client
) -> None:
    """A model name the client sent as ``\\ud800`` (valid JSON, no UTF-8 form) comes back in
    the chunks as the same escape; the answer is a normal stream, not a dropped connection."""
    raw = b'{"model":"m\\ud800","stream":true,"messages":[{"role":"user","content":"hi"}]}'
    r = client.post("/chat/completions", content=raw, headers={"content-type": "application/json"})
    assert r.status_code == 200
    assert b'"model":"m\\ud800"' in r.content
    assert payloads(r.content)[0]["model"] == "m\ud800"


@pytest.mark.parametrize("options", [None, {}, {"include_usage": False}])
def test_chat_stream_without_include_usage(
    server: ReplayServer, client: httpx.Client, options: dict[str, Any] | None
) -> None:
    body: dict[str, Any] = {"stream": True}
    if options is not None:
        body["stream_options"] = options
    r = chat(client, **body)
    chunks = payloads(r.content)
    assert all(c["choices"] for c in chunks), "no usage-only chunk without include_usage"
    # As OpenAI: the "usage" member comes (null until the end) only with include_usage.
    assert all("usage" not in c for c in chunks)
    assert sse(r.content)[-1][1] == "[DONE]"
    # The truth is still known to the tests.
    assert server.last.usage_sent is False
    assert server.last.output_tokens == server.count_tokens(server.last.texts[0])


def test_chat_obfuscation_can_be_turned_off(client: httpx.Client) -> None:
    on = payloads(chat(client, stream=True).content)
    off = payloads(chat(client, stream=True, stream_options={"include_obfuscation": False}).content)
    assert all(isinstance(c["obfuscation"], str) for c in on)
    assert not any("obfuscation" in c for c in off)


def test_chat_n_choices_interleaved(server: ReplayServer, client: httpx.Client) -> None:
    r = chat(client, stream=True, n=3, stream_options={"include_usage": True})
    chunks = payloads(r.content)
    indexes = [c["choices"][0]["index"] for c in chunks if c["choices"]]
    assert set(indexes) == {0, 1, 2}
    assert indexes != sorted(indexes), "choices must interleave"
    truth = server.last
    assert len(set(truth.texts)) == 3
    for i in range(3):
        own = [c["choices"][0] for c in chunks if c["choices"] and c["choices"][0]["index"] == i]
        assert "".join(ch["delta"].get("content") or "" for ch in own) == truth.texts[i]
        assert [ch["finish_reason"] for ch in own if ch["finish_reason"]] == ["stop"]
    usage = chunks[-1]["usage"]
    assert usage == truth.usage
    assert usage["completion_tokens"] == sum(server.count_tokens(t) for t in truth.texts)


def test_chat_tool_call_streamed(server: ReplayServer, client: httpx.Client) -> None:
    r = chat(client, stream=True, tools=[WEATHER_TOOL], tool_choice="required")
    chunks = payloads(r.content)
    calls = [
        call
        for c in chunks
        if c["choices"]
        for call in c["choices"][0]["delta"].get("tool_calls", [])
    ]
    assert calls[0]["id"].startswith("call_") and calls[0]["function"]["name"] == "get_weather"
    assert chunks[0]["choices"][0]["delta"]["content"] is None
    assert len(calls) > 2 and all(call["index"] == 0 for call in calls)
    arguments = "".join(call["function"]["arguments"] for call in calls)
    args = json.loads(arguments)
    assert set(args) == {"location", "unit", "days"}
    assert args["unit"] == "celsius" and isinstance(args["days"], int)
    assert chunks[-1]["choices"][0]["finish_reason"] == "tool_calls"
    truth = server.last
    assert truth.tool_calls == [
        {"id": calls[0]["id"], "name": "get_weather", "arguments": arguments}
    ]
    assert truth.finish_reasons == ["tool_calls"]


@pytest.mark.parametrize(
    ("tool_choice", "prompt", "expect_tool"),
    [
        ("auto", "Tell me a story", False),
        ("auto", "Use get_weather for Paris", True),
        ("none", "Use get_weather for Paris", False),
        ({"type": "function", "function": {"name": "get_weather"}}, "hi", True),
    ],
)
def test_chat_tool_choice(
    server: ReplayServer, client: httpx.Client, tool_choice: Any, prompt: str, expect_tool: bool
) -> None:
    r = chat(
        client,
        messages=[{"role": "user", "content": prompt}],
        tools=[WEATHER_TOOL],
        tool_choice=tool_choice,
    )
    message = r.json()["choices"][0]["message"]
    assert bool(message.get("tool_calls")) is expect_tool
    assert (message["content"] is None) is expect_tool
    assert r.json()["choices"][0]["finish_reason"] == ("tool_calls" if expect_tool else "stop")


@pytest.mark.parametrize("limit_name", ["max_tokens", "max_completion_tokens"])
def test_chat_length_limit(server: ReplayServer, client: httpx.Client, limit_name: str) -> None:
    r = chat(client, stream=True, stream_options={"include_usage": True}, **{limit_name: 5})
    chunks = payloads(r.content)
    assert chunks[-2]["choices"][0]["finish_reason"] == "length"
    assert chunks[-1]["usage"]["completion_tokens"] == 5
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert 0 < server.count_tokens(text) <= 5
    assert server.last.texts == [text]


@pytest.mark.parametrize(("model", "reasoning"), [("gpt-4o", False), ("o3-mini", True),
                                                  ("gpt-5-nano", True), ("openchat-3.5", False)])  # fmt: skip
def test_reasoning_tokens_hidden_in_output(model: str, reasoning: bool) -> None:
    # A tokenizer counting characters makes every count checkable by hand.
    with ReplayServer(tokenizer=len) as server, http(server) as client:
        r = chat(client, model=model, stream=True, stream_options={"include_usage": True})
        usage = payloads(r.content)[-1]["usage"]
        text = server.last.texts[0]
        hidden = usage["completion_tokens_details"]["reasoning_tokens"]
        assert (hidden > 0) is reasoning and hidden % 64 == 0
        assert usage["completion_tokens"] == len(text) + hidden
        # cookbook: 3 priming + 3 per message + role + content
        assert usage["prompt_tokens"] == 3 + 3 + len("user") + len(QUESTION)
        assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_chat_non_stream(server: ReplayServer, client: httpx.Client) -> None:
    r = chat(client, n=2)
    assert r.headers["content-type"] == "application/json"
    body = r.json()
    assert body["object"] == "chat.completion" and body["id"] == server.last.id
    assert [c["message"]["content"] for c in body["choices"]] == server.last.texts
    assert body["usage"] == server.last.usage


def test_prompt_caching_on_repeat(server: ReplayServer, client: httpx.Client) -> None:
    long_prompt = [{"role": "user", "content": "alpha " * 1500}]
    first = chat(client, messages=long_prompt).json()["usage"]
    second = chat(client, messages=long_prompt).json()["usage"]
    assert first["prompt_tokens"] >= 1024
    assert first["prompt_tokens_details"]["cached_tokens"] == 0
    cached = second["prompt_tokens_details"]["cached_tokens"]
    assert cached == first["prompt_tokens"] // 128 * 128 and cached > 0


def test_answers_are_deterministic() -> None:
    texts = []
    for seed in ("a", "a", "b"):
        with ReplayServer(seed=seed) as server, http(server) as client:
            chat(client)
            texts.append(server.last.texts[0])
    assert texts[0] == texts[1] != texts[2]


# --------------------------------------------------------------------------- legacy Completions


def test_completions_stream(server: ReplayServer, client: httpx.Client) -> None:
    r = client.post(
        "/completions",
        json={"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "stream": True,
              "stream_options": {"include_usage": True}},
    )  # fmt: skip
    chunks = payloads(r.content)
    assert sse(r.content)[-1][1] == "[DONE]"
    assert {c["object"] for c in chunks} == {"text_completion"}
    text_chunks, usage_chunk = chunks[:-1], chunks[-1]
    assert usage_chunk["choices"] == [] and usage_chunk["usage"] == server.last.usage
    assert set(usage_chunk["usage"]) == {"prompt_tokens", "completion_tokens", "total_tokens"}
    assert all(c["usage"] is None for c in text_chunks)
    # The default max_tokens is 16, as upstream: the answer stops at the limit, on the last
    # text chunk.
    assert [c["choices"][0]["finish_reason"] for c in text_chunks][-1] == "length"
    assert all(c["choices"][0]["finish_reason"] is None for c in text_chunks[:-1])
    assert usage_chunk["usage"]["completion_tokens"] == 16
    assert "".join(c["choices"][0]["text"] for c in text_chunks) == server.last.texts[0]


def test_completions_without_usage_and_long_budget(
    server: ReplayServer, client: httpx.Client
) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "Say hi", "max_tokens": 500}
    r = client.post("/completions", json={**body, "stream": True})
    chunks = payloads(r.content)
    assert all(c["choices"] and "usage" not in c for c in chunks)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    plain = client.post("/completions", json=body).json()
    assert plain["object"] == "text_completion" and plain["usage"] == server.last.usage


# --------------------------------------------------------------------------- Responses

RESPONSES_ORDER = [
    "response.created",
    "response.in_progress",
    "response.output_item.added",
    "response.content_part.added",
    "response.output_text.delta",
    "response.output_text.done",
    "response.content_part.done",
    "response.output_item.done",
    "response.completed",
]


def responses(client: httpx.Client, **body: Any) -> httpx.Response:
    body.setdefault("model", "gpt-4.1")
    body.setdefault("input", QUESTION)
    return client.post("/responses", json=body)


def test_responses_stream_wire_format(server: ReplayServer, client: httpx.Client) -> None:
    r = responses(client, stream=True)
    assert r.headers["content-type"].startswith("text/event-stream")
    events = sse(r.content)
    objs = [json.loads(data) for _, data in events]
    assert [name for name, _ in events] == [o["type"] for o in objs], "event: line == type"
    assert [o["sequence_number"] for o in objs] == list(range(len(objs)))
    collapsed = [
        t for i, t in enumerate(o["type"] for o in objs) if i == 0 or objs[i - 1]["type"] != t
    ]
    assert collapsed == RESPONSES_ORDER
    assert "[DONE]" not in r.text
    created, completed = objs[0]["response"], objs[-1]["response"]
    assert created["status"] == "in_progress" and created["usage"] is None
    assert completed["status"] == "completed" and completed["id"] == created["id"]
    text = "".join(o["delta"] for o in objs if o["type"] == "response.output_text.delta")
    assert text == server.last.texts[0]
    assert next(o for o in objs if o["type"] == "response.output_text.done")["text"] == text
    usage = completed["usage"]
    assert usage == server.responses[completed["id"]]["usage"] == server.last.usage
    assert set(usage) == {"input_tokens", "input_tokens_details", "output_tokens",
                          "output_tokens_details", "total_tokens"}  # fmt: skip
    assert usage["input_tokens_details"] == {"cached_tokens": 0}
    assert usage["output_tokens_details"] == {"reasoning_tokens": 0}
    assert usage["output_tokens"] == server.count_tokens(text)


def test_responses_reasoning_model(server: ReplayServer, client: httpx.Client) -> None:
    objs = payloads(responses(client, model="gpt-5-mini", stream=True).content)
    usage = objs[-1]["response"]["usage"]
    hidden = usage["output_tokens_details"]["reasoning_tokens"]
    assert hidden > 0
    assert usage["output_tokens"] == server.count_tokens(server.last.texts[0]) + hidden
    assert objs[-1]["response"]["output"][0]["type"] == "reasoning"


def test_responses_open_responses_done_variant() -> None:
    with ReplayServer(responses_done=True) as server, http(server) as client:
        events = sse(responses(client, stream=True).content)
        assert events[-1] == (None, "[DONE]")
        assert json.loads(events[-2][1])["type"] == "response.completed"


def test_responses_max_output_tokens(server: ReplayServer, client: httpx.Client) -> None:
    objs = payloads(responses(client, stream=True, max_output_tokens=6).content)
    types = [o["type"] for o in objs]
    assert types[-1] == "response.incomplete" and "response.completed" not in types
    final = objs[-1]["response"]
    assert final["status"] == "incomplete"
    assert final["incomplete_details"] == {"reason": "max_output_tokens"}
    assert final["usage"]["output_tokens"] == 6 == server.last.output_tokens
    assert final["output"][0]["status"] == "incomplete"


def test_responses_tool_call(server: ReplayServer, client: httpx.Client) -> None:
    flat_tool = {"type": "function", **WEATHER_TOOL["function"]}
    objs = payloads(
        responses(client, stream=True, tools=[flat_tool], tool_choice="required").content
    )
    deltas = [o["delta"] for o in objs if o["type"] == "response.function_call_arguments.delta"]
    done = next(o for o in objs if o["type"] == "response.function_call_arguments.done")
    assert "".join(deltas) == done["arguments"] and done["name"] == "get_weather"
    assert set(json.loads(done["arguments"])) == {"location", "unit", "days"}
    item = objs[-1]["response"]["output"][0]
    assert item["type"] == "function_call" and item["arguments"] == done["arguments"]


@pytest.mark.parametrize("store", [True, False, None])
def test_responses_store_and_get(
    server: ReplayServer, client: httpx.Client, store: bool | None
) -> None:
    body: dict[str, Any] = {"stream": True}
    if store is not None:
        body["store"] = store
    final = payloads(responses(client, **body).content)[-1]["response"]
    got = client.get(f"/responses/{final['id']}")
    if store is False:
        assert got.status_code == 404
        error = got.json()["error"]
        assert set(error) == {"message", "type", "param", "code"}
        assert final["id"] in error["message"] and error["type"] == "invalid_request_error"
        assert server.responses[final["id"]]["store"] is False
    else:
        assert got.status_code == 200 and got.json() == final


def test_responses_get_unknown_and_without_auth(server: ReplayServer, client: httpx.Client) -> None:
    assert client.get("/responses/resp_nope").status_code == 404
    final = responses(client).json()
    with anonymous(server) as no_auth:
        assert no_auth.get(f"/responses/{final['id']}").status_code == 401


def test_responses_polling_in_progress_option() -> None:
    with ReplayServer(poll_in_progress=2) as server, http(server) as client:
        final = payloads(responses(client, stream=True).content)[-1]["response"]
        polls = [client.get(f"/responses/{final['id']}").json() for _ in range(3)]
        assert [p["status"] for p in polls] == ["in_progress", "in_progress", "completed"]
        assert polls[0]["usage"] is None and polls[0]["output"] == []
        assert polls[2]["usage"] == server.last.usage


def test_responses_polling_header(server: ReplayServer, client: httpx.Client) -> None:
    r = client.post(
        "/responses",
        json={"model": "gpt-4.1", "input": "hi"},
        headers={"x-replay-poll-in-progress": "1"},
    )
    rid = r.json()["id"]
    assert client.get(f"/responses/{rid}").json()["status"] == "in_progress"
    assert client.get(f"/responses/{rid}").json()["status"] == "completed"


def test_responses_non_stream(server: ReplayServer, client: httpx.Client) -> None:
    body = responses(client, instructions="Be brief").json()
    assert body["object"] == "response" and body["status"] == "completed"
    assert body["instructions"] == "Be brief"
    assert body["output"][0]["content"][0]["text"] == server.last.texts[0]
    assert body["usage"] == server.last.usage


# --------------------------------------------------------------------------- the openai SDK


def test_sdk_chat_stream(server: ReplayServer) -> None:
    with sdk(server) as client:
        stream = client.chat.completions.create(
            model="gpt-4o", messages=HELLO, stream=True, n=2,
            stream_options={"include_usage": True},
        )  # fmt: skip
        chunks = list(stream)
    sent = server.requests[-1]
    assert sent.method == "POST" and sent.path == "/v1/chat/completions"
    assert sent.header("Authorization") == "Bearer test"
    assert sent.body["stream_options"] == {"include_usage": True}
    assert len(chunks) == server.last.events_sent - 1  # every event but [DONE]
    assert chunks[-1].usage is not None and chunks[-1].choices == []
    assert chunks[-1].usage.model_dump(exclude_none=True) == server.last.usage
    text0 = "".join(
        c.choices[0].delta.content or "" for c in chunks if c.choices and c.choices[0].index == 0
    )
    assert text0 == server.last.texts[0]


def test_sdk_responses_stream_and_retrieve(server: ReplayServer) -> None:
    with sdk(server) as client:
        events = list(client.responses.create(model="o4-mini", input="Hi there", stream=True))
        assert len(events) == server.last.events_sent
        assert [e.sequence_number for e in events] == list(range(len(events)))
        final = events[-1]
        assert final.type == "response.completed"
        assert final.response.usage is not None
        assert final.response.usage.model_dump(exclude_none=True) == server.last.usage
        assert final.response.output_text == server.last.texts[0]
        again = client.responses.retrieve(final.response.id)
        assert again.usage == final.response.usage


def test_sdk_mid_stream_errors(server: ReplayServer) -> None:
    with sdk(server) as client:
        with pytest.raises(openai.APIError, match="server had an error"):
            for _ in client.chat.completions.create(
                model="gpt-4o", messages=HELLO, stream=True,
                extra_headers={"x-replay-error-event": "3"},
            ):  # fmt: skip
                pass
        with pytest.raises(openai.APIConnectionError):
            for _ in client.responses.create(
                model="gpt-4o", input="hi", stream=True,
                extra_headers={"x-replay-cut-after-events": "4"},
            ):  # fmt: skip
                pass
        with pytest.raises(ValueError):
            for _ in client.chat.completions.create(
                model="gpt-4o", messages=HELLO, stream=True,
                extra_headers={"x-replay-malformed": "2"},
            ):  # fmt: skip
                pass


def test_sdk_retries_on_queued_statuses() -> None:
    with ReplayServer(statuses=[429, 503], retry_after=0.01) as server:
        with sdk(server, max_retries=2) as client:
            answer = client.chat.completions.create(model="gpt-4o", messages=HELLO)
        assert answer.choices[0].message.content == server.last.texts[0]
        assert len(server.requests) == 3 and len(server.served) == 1


def test_sdk_parses_every_replayed_event() -> None:
    long_events = [e for e in sse(CHAT_BIN_LONG.read_bytes()) if e[1] != "[DONE]"]
    phase_lines = [line for line in RESPONSES_PHASE.read_text().splitlines() if line]
    with ReplayServer(streams=[CHAT_BIN_LONG, RESPONSES_PHASE]) as server, sdk(server) as client:
        chunks = list(client.chat.completions.create(model="gpt-4o", messages=HELLO, stream=True))
        assert len(chunks) == len(long_events) == 33
        assert chunks[-1].usage is not None and chunks[-1].usage.total_tokens > 0
        events = list(client.responses.create(model="gpt-4o", input="hi", stream=True))
        assert [e.type for e in events] == [json.loads(line)["type"] for line in phase_lines]
        # The capture's final Response object can be retrieved like a live one.
        final = events[-1].response  # type: ignore[union-attr]
        assert client.responses.retrieve(final.id).usage == final.usage
        assert server.last.usage == json.loads(phase_lines[-1])["response"]["usage"]


# --------------------------------------------------------------------------- auth and statuses


def test_missing_auth_is_401(server: ReplayServer) -> None:
    with anonymous(server) as client:
        for headers in ({}, {"Authorization": "Bearer"}, {"Authorization": "Basic abc"}):
            r = client.post(
                "/chat/completions", json={"model": "gpt-4o", "messages": HELLO}, headers=headers
            )
            assert r.status_code == 401
            assert set(r.json()["error"]) == {"message", "type", "param", "code"}
            assert "API key" in r.json()["error"]["message"]
    assert len(server.requests) == 3 and server.served == []


def test_auth_can_be_disabled() -> None:
    with ReplayServer(require_auth=False) as server, anonymous(server) as client:
        assert chat(client).status_code == 200


def test_error_model_400(server: ReplayServer, client: httpx.Client) -> None:
    r = chat(client, model="error-400", stream=True)
    assert r.status_code == 400 and r.headers["content-type"] == "application/json"
    assert set(r.json()["error"]) == {"message", "type", "param", "code"}
    assert r.json()["error"]["type"] == "invalid_request_error"


@pytest.mark.parametrize(
    ("status", "kind", "retry_after"),
    [(429, "requests", True), (500, "server_error", False), (503, "server_error", True)],
)
@pytest.mark.parametrize("how", ["header", "model"])
def test_error_statuses(
    server: ReplayServer,
    client: httpx.Client,
    status: int,
    kind: str,
    retry_after: bool,
    how: str,
) -> None:
    if how == "header":
        r = client.post(
            "/chat/completions",
            json={"model": "gpt-4o", "messages": HELLO, "stream": True},
            headers={"x-replay-status": str(status), "x-replay-retry-after": "2.5"},
        )
    else:
        r = chat(client, model=f"error-{status}")
    assert r.status_code == status
    assert r.json()["error"]["type"] == kind
    assert ("retry-after" in r.headers) is retry_after
    if retry_after and how == "header":
        assert r.headers["retry-after"] == "3" and r.headers["retry-after-ms"] == "2500"


def test_html_answers(client: httpx.Client) -> None:
    r = client.post(
        "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, "stream": True},
        headers={"x-replay-status": "200"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert r.text.startswith("<html>")
    bad_gateway = client.post(
        "/responses",
        json={"model": "gpt-4o", "input": "hi"},
        headers={"x-replay-status": "502", "x-replay-html": "1"},
    )
    assert bad_gateway.status_code == 502 and "502 Bad Gateway" in bad_gateway.text


def test_server_wide_status_and_queue() -> None:
    with ReplayServer(faults=Faults(status=500)) as server, http(server) as client:
        assert chat(client).status_code == 500
        assert server.served == []
    with ReplayServer() as server, http(server) as client:
        server.queue_statuses(429)
        assert chat(client).status_code == 429
        assert chat(client).status_code == 200


def test_bad_requests(server: ReplayServer, client: httpx.Client) -> None:
    assert client.post("/nowhere", json={}).status_code == 404
    assert "Invalid URL" in client.post("/nowhere", json={}).json()["error"]["message"]
    bad_json = client.post("/chat/completions", content=b"{not json")
    assert bad_json.status_code == 400 and "JSON" in bad_json.json()["error"]["message"]
    assert client.post("/chat/completions", json={"messages": HELLO}).status_code == 400
    assert chat(client, messages=[]).json()["error"]["param"] == "messages"
    assert chat(client, n=0).status_code == 400
    bad_header = client.post(
        "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO},
        headers={"x-replay-cut-after-events": "soon"},
    )
    assert bad_header.status_code == 400 and "cut-after-events" in bad_header.text


# --------------------------------------------------------------------------- faults


def test_cut_after_events_chat(server: ReplayServer, client: httpx.Client) -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    received, error = stream_until_error(
        client, "/chat/completions", body, {"x-replay-cut-after-events": "3"}
    )
    assert isinstance(error, httpx.RemoteProtocolError)
    assert len(sse(received)) == 3 and b"[DONE]" not in received
    assert server.last.cut and server.last.events_sent == 3 and not server.last.completed
    # The chunked body ends without its terminating 0-chunk.
    chunks, terminated = dechunk(raw_http(server, "/v1/chat/completions", body,
                                          x_replay_cut_after_events="2"))  # fmt: skip
    assert not terminated and len(chunks) == 2


def test_cut_responses_stream_still_retrievable(server: ReplayServer, client: httpx.Client) -> None:
    body = {"model": "gpt-4.1", "input": "hello", "stream": True}
    received, error = stream_until_error(
        client, "/responses", body, {"x-replay-cut-after-events": "5"}
    )
    assert error is not None
    objs = payloads(received)
    assert len(objs) == 5 and not any(o["type"] == "response.completed" for o in objs)
    got = client.get(f"/responses/{objs[0]['response']['id']}").json()
    assert got["status"] == "completed" and got["usage"] == server.last.usage


def test_error_event_chat(server: ReplayServer, client: httpx.Client) -> None:
    r = client.post(
        "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, "stream": True},
        headers={"x-replay-error-event": "4"},
    )
    events = sse(r.content)
    assert len(events) == 6 and events[-1][1] == "[DONE]"
    error = json.loads(events[4][1])
    assert set(error) == {"error"}
    assert set(error["error"]) == {"message", "type", "param", "code"}
    assert all("choices" in json.loads(data) for _, data in events[:4])


def test_error_event_responses(server: ReplayServer, client: httpx.Client) -> None:
    r = client.post(
        "/responses",
        json={"model": "gpt-4.1", "input": "hi", "stream": True},
        headers={"x-replay-error-event": "2"},
    )
    events = sse(r.content)
    assert [name for name, _ in events] == [
        "response.created", "response.in_progress", "error", "response.failed"
    ]  # fmt: skip
    error = json.loads(events[2][1])
    assert error["sequence_number"] == 2
    assert set(error["error"]) == {"type", "code", "message", "param"}, "nested, as observed"
    failed = json.loads(events[3][1])["response"]
    assert failed["status"] == "failed" and failed["usage"] is None
    assert client.get(f"/responses/{failed['id']}").json()["status"] == "failed"


def test_malformed_event(server: ReplayServer, client: httpx.Client) -> None:
    r = client.post(
        "/chat/completions",
        json={"model": "gpt-4o", "messages": HELLO, "stream": True},
        headers={"x-replay-malformed": "1"},
    )
    events = sse(r.content)
    json.loads(events[0][1])
    with pytest.raises(ValueError):
        json.loads(events[1][1])
    for _, data in events[2:-1]:
        json.loads(data)
    assert events[-1][1] == "[DONE]"


def test_trickle_writes_one_byte_per_chunk(server: ReplayServer) -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 3, "stream": True}
    chunks, terminated = dechunk(raw_http(server, "/v1/completions", body, x_replay_trickle="1"))
    assert terminated and len(chunks) > 100
    assert {len(c) for c in chunks} == {1}
    assert sse(b"".join(chunks))[-1][1] == "[DONE]"


def test_http_1_0_client_gets_an_unchunked_stream(server: ReplayServer) -> None:
    body = {"model": "gpt-4o", "messages": HELLO, "stream": True}
    raw = raw_http(server, "/v1/chat/completions", body, version="1.0")
    head, _, stream = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower()
    assert sse(stream)[-1][1] == "[DONE]" and server.last.completed


def test_chunked_request_body(server: ReplayServer, client: httpx.Client) -> None:
    parts = [b'{"model": "gpt-4o",', b' "messages": [{"role": "user", "content": "hi"}]}']
    r = client.post(
        "/chat/completions", content=iter(parts), headers={"Content-Type": "application/json"}
    )
    assert r.status_code == 200
    sent = server.requests[-1]
    assert sent.header("transfer-encoding") == "chunked"
    assert sent.body == {"model": "gpt-4o", "messages": [{"role": "user", "content": "hi"}]}


def test_delays() -> None:
    body = {"model": "gpt-3.5-turbo-instruct", "prompt": "hi", "max_tokens": 4, "stream": True}
    with ReplayServer() as server, http(server) as client:
        start = time.monotonic()
        r = client.post("/completions", json=body, headers={"x-replay-delay-ms": "100"})
        events = len(sse(r.content))
        assert events >= 3
        assert time.monotonic() - start >= 0.1 * (events - 1) * 0.9
        start = time.monotonic()
        client.post("/completions", json=body, headers={"x-replay-first-byte-ms": "300"})
        assert time.monotonic() - start >= 0.27
        with pytest.raises(httpx.ReadTimeout):
            client.post(
                "/completions", json=body, headers={"x-replay-first-byte-ms": "2000"},
                timeout=httpx.Timeout(TIMEOUT, read=0.2),
            )  # fmt: skip


def test_server_wide_fault_defaults() -> None:
    with ReplayServer(faults=Faults(cut_after_events=2)) as server, http(server) as client:
        received, error = stream_until_error(
            client, "/chat/completions",
            {"model": "gpt-4o", "messages": HELLO, "stream": True}, {},
        )  # fmt: skip
        assert error is not None and len(sse(received)) == 2
        # A header overrides the default (past the end: no cut).
        received, error = stream_until_error(
            client, "/chat/completions",
            {"model": "gpt-4o", "messages": HELLO, "stream": True},
            {"x-replay-cut-after-events": "100000"},
        )  # fmt: skip
        assert error is None and sse(received)[-1][1] == "[DONE]"


# --------------------------------------------------------------------------- replaying files


def test_replay_raw_capture_byte_for_byte() -> None:
    expected = CHAT_BIN_SHORT.read_bytes()
    with ReplayServer(streams=[CHAT_BIN_SHORT]) as server, http(server) as client:
        r = chat(client, stream=True)
        assert r.headers["content-type"] == "text/event-stream"
        assert r.content == expected
        assert server.last.source == str(CHAT_BIN_SHORT) and server.last.completed
        # Queue empty: generated answers again.
        assert payloads(chat(client, stream=True).content)[0]["id"] == server.last.id


def test_replay_chunks_file_framed_like_the_corpus_helpers() -> None:
    path = CORPUS_DIR / "anthropic" / "anthropic-text.chunks.txt"
    expected = rebuild(next(f for f in corpus_files() if f.path == path))
    with ReplayServer(streams=[path, b"data: raw\n\n"], cycle=True) as server, http(server) as c:
        # Any POST path is answered from the queue.
        assert c.post("/messages", json={"model": "claude"}).content == expected
        assert c.post("/anything", json={}).content == b"data: raw\n\n"
        assert c.post("/messages", json={}).content == expected, "cycle"
        assert server.last.model is None and server.last.source is not None


def test_replay_with_faults_and_pacing() -> None:
    expected = split_events(CHAT_BIN_SHORT.read_bytes())
    with ReplayServer(streams=[CHAT_BIN_SHORT] * 2, delay=0.05) as server, http(server) as c:
        start = time.monotonic()
        received, error = stream_until_error(
            c, "/chat/completions", {}, {"x-replay-cut-after-events": "2"}
        )
        assert error is not None and received == b"".join(expected[:2])
        assert time.monotonic() - start >= 0.045
        r = c.post("/chat/completions", json={}, headers={"x-replay-error-event": "1"})
        assert sse(r.content)[1][1].startswith('{"error":')
        assert server.last.events_sent == 2


@pytest.mark.parametrize("f", [f for f in corpus_files() if not f.is_raw], ids=lambda f: f.name)
def test_frame_chunks_matches_corpus_rebuild(f: Any) -> None:
    assert load_stream(f.path) == rebuild(f)


def test_frame_chunks_rules() -> None:
    chat_line = b'{"object":"chat.completion.chunk","choices":[]}'
    assert frame_chunks(chat_line + b"\n") == b"data: " + chat_line + b"\n\ndata: [DONE]\n\n"
    typed = b'{"type":"response.completed","response":{}}'
    assert frame_chunks(typed) == b"event: response.completed\ndata: " + typed + b"\n\n"
    assert frame_chunks(typed, done=True).endswith(b"\n\ndata: [DONE]\n\n")
    gemini = '{"candidates":[{"content":{"parts":[{"text":"é"}]}}]}'
    assert frame_chunks(gemini) == b"data: " + gemini.encode() + b"\n\n"


@pytest.mark.parametrize(
    ("data", "pieces"),
    [
        (b"data: a\n\ndata: b\n\n", [b"data: a\n\n", b"data: b\n\n"]),
        (b"data: a\r\n\r\ndata: b\r\rtail", [b"data: a\r\n\r\n", b"data: b\r\r", b"tail"]),
        (b"event: x\ndata: 1\n\n\n", [b"event: x\ndata: 1\n\n", b"\n"]),
        (b"", []),
    ],
)
def test_split_events(data: bytes, pieces: list[bytes]) -> None:
    assert split_events(data) == pieces
    assert b"".join(split_events(data)) == data


def test_approx_tokens() -> None:
    assert approx_tokens("") == 0
    assert approx_tokens("hello world") == 2
    assert approx_tokens("🚀") == 2 and approx_tokens("日本語") == 3
    with ReplayServer(tokenizer="approx") as server:
        assert server.count_tokens("naïve café") == approx_tokens("naïve café")
        assert server.tokenizer_name == "approx"


# --------------------------------------------------------------------------- lifecycle


def test_shutdown_releases_port_and_open_streams() -> None:
    server = ReplayServer(delay=30).start()
    url = server.url
    outcome: list[object] = []

    def slow_reader() -> None:
        try:
            with http(server) as client:
                outcome.append(chat(client, stream=True).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    reader = threading.Thread(target=slow_reader, daemon=True)
    reader.start()
    deadline = time.monotonic() + TIMEOUT
    while not server.served and time.monotonic() < deadline:
        time.sleep(0.01)
    assert server.served, "the request never arrived"
    start = time.monotonic()
    server.shutdown()
    server.shutdown()  # idempotent
    assert time.monotonic() - start < 3
    reader.join(TIMEOUT)
    assert not reader.is_alive() and outcome
    assert isinstance(outcome[0], httpx.RemoteProtocolError)
    with pytest.raises(httpx.ConnectError):
        httpx.get(url + "/models", timeout=TIMEOUT, trust_env=False)


def test_serve_entry_point() -> None:
    started: list[ReplayServer] = []
    ready = threading.Event()

    def on_ready(server: ReplayServer) -> None:
        started.append(server)
        ready.set()

    def run() -> None:
        serve("127.0.0.1", 0, [CHAT_BIN_SHORT], delay=0, log=False, ready=on_ready)

    runner = threading.Thread(target=run, daemon=True)
    runner.start()
    assert ready.wait(TIMEOUT)
    server = started[0]
    try:
        with http(server) as client:
            assert chat(client, stream=True).content == CHAT_BIN_SHORT.read_bytes()
    finally:
        server.shutdown()
    runner.join(TIMEOUT)
    assert not runner.is_alive()


def test_url_and_recorded_requests(server: ReplayServer, client: httpx.Client) -> None:
    assert server.url == f"http://127.0.0.1:{server.port}/v1" and server.port > 0
    client.post("/chat/completions?trace=1", json={"model": "gpt-4o", "messages": HELLO},
                headers={"X-Custom": "yes"})  # fmt: skip
    client.get("/responses/resp_x")
    post, get = server.requests
    assert (post.method, post.path, post.query) == ("POST", "/v1/chat/completions", "trace=1")
    assert post.headers["x-custom"] == "yes" and post.header("X-CUSTOM") == "yes"
    assert post.body == {"model": "gpt-4o", "messages": HELLO}
    assert json.loads(post.raw_body) == post.body
    assert (get.method, get.path, get.body) == ("GET", "/v1/responses/resp_x", None)
