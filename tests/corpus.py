"""The recorded LLM streaming corpus in ``tests/data/corpus/`` and its wire-faithful SSE bytes.

``tests/data/corpus/MANIFEST.md`` describes the files and their licences. Two kinds of file:

* ``*.chunks.txt`` hold one JSON payload per line (the SSE framing was stripped when
  they were recorded). ``rebuild`` frames them again the way each provider family
  sends them on the wire, following MANIFEST.md "How to rebuild wire-faithful SSE
  bytes": for each non-empty line,

  - Chat Completions / legacy Completions (OpenAI, Azure chat, Groq, DeepSeek, Mistral,
    xAI chat, Perplexity, Moonshot, Alibaba, Cerebras): ``data: <line>`` + blank line,
    and ``data: [DONE]`` + blank line after the last line;
  - OpenAI-style Responses (openai-responses, azure text/tool-call, xai-text-streaming,
    lmstudio): ``event: <type>`` + ``data: <line>`` + blank line, no ``[DONE]``; the
    Open Responses variant (``done=True``) appends ``data: [DONE]`` + blank line;
  - Anthropic Messages and Cohere v2: ``event: <type>`` + ``data: <line>`` + blank line;
  - Gemini (``streamGenerateContent?alt=sse``) and Gemini Interactions:
    ``data: <line>`` + blank line.

* Raw SSE byte captures (``*.bin``, ``*.sse``, ``anthropic/basic_response.txt``) are used
  as they are. Two of them stop right after their last ``data:`` line without the blank
  line that would dispatch it, so a WHATWG decoder drops that last event
  (``RAW_EVENT_COUNTS`` holds the hand-counted number of dispatched events).

Variants: ``crlf=True`` turns every line ending into CRLF, ``keepalive=True`` puts a
``: keep-alive`` comment block between consecutive events.
"""

from __future__ import annotations

import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

CORPUS_DIR = Path(__file__).parent / "data" / "corpus"

Family = Literal["chat", "responses", "anthropic", "cohere", "gemini", "raw"]

#: Families whose events carry an ``event: <type>`` line.
EVENT_LINE_FAMILIES: frozenset[Family] = frozenset({"responses", "anthropic", "cohere"})

KEEPALIVE = b": keep-alive\n\n"
DONE = b"data: [DONE]\n\n"

_FOLDER_FAMILY: dict[str, Family] = {
    "alibaba": "chat",
    "anthropic": "anthropic",
    "cerebras": "chat",
    "cohere": "cohere",
    "deepseek": "chat",
    "google": "gemini",
    "google-interactions": "gemini",
    "groq": "chat",
    "lmstudio": "responses",
    "mistral": "chat",
    "moonshotai": "chat",
    "openai-chat": "chat",
    "openai-completions": "chat",
    "openai-responses": "responses",
    "perplexity": "chat",
}

# Folders that mix families: decided per file.
_FILE_FAMILY: dict[str, Family] = {
    "azure/azure-deepseek-reasoning.1.chunks.txt": "chat",
    "azure/azure-model-router.1.chunks.txt": "chat",
    "azure/azure-text.1.chunks.txt": "responses",
    "azure/azure-tool-call.1.chunks.txt": "responses",
    "xai/xai-text.chunks.txt": "chat",
    "xai/xai-text-streaming.1.chunks.txt": "responses",
}

#: Events a WHATWG decoder dispatches for each raw capture (hand-counted).
RAW_EVENT_COUNTS: dict[str, int] = {
    # 9 event/data blocks; the last (message_stop) has no newline at all -> dropped.
    "anthropic/basic_response.txt": 8,
    # 9 data lines; the last (`data: [DONE]`) ends with a single LF -> dropped.
    "openai-compatible/anthropic-fallback-tool-call.sse": 8,
    # 4 JSON chunks + [DONE], each followed by a blank line.
    "openai-chat/4cc50a6135d254573a502310e6af1246f55edb6ad95fa24059f160996b68866d.bin": 5,
    # 33 JSON chunks + [DONE], each followed by a blank line.
    "openai-chat/e2aad469b71d1d4894ff833ea147020a9d875eb7ce644a0ff355581690a4cbfd.bin": 34,
}

#: Raw captures whose stream ends inside an event (``finish()`` must report it).
RAW_TRUNCATED: frozenset[str] = frozenset(
    {"anthropic/basic_response.txt", "openai-compatible/anthropic-fallback-tool-call.sse"}
)


@dataclass(frozen=True)
class CorpusFile:
    path: Path
    family: Family

    @property
    def name(self) -> str:
        """Path relative to the corpus folder, with forward slashes."""
        return self.path.relative_to(CORPUS_DIR).as_posix()

    @property
    def is_raw(self) -> bool:
        return self.family == "raw"

    @property
    def has_event_lines(self) -> bool:
        return self.family in EVENT_LINE_FAMILIES

    @property
    def done_variants(self) -> tuple[bool, ...]:
        """Whether ``[DONE]`` is appended, per variant to test."""
        if self.family == "chat":
            return (True,)
        if self.family == "responses":
            return (False, True)
        return (False,)


@dataclass(frozen=True)
class Variant:
    crlf: bool = False
    keepalive: bool = False
    done: bool = False

    @property
    def label(self) -> str:
        parts = [p for p, on in (("crlf", self.crlf), ("keepalive", self.keepalive)) if on]
        if self.done:
            parts.append("done")
        return "+".join(parts) or "lf"


def _family(name: str) -> Family:
    if not name.endswith(".chunks.txt"):
        return "raw"
    if name in _FILE_FAMILY:
        return _FILE_FAMILY[name]
    return _FOLDER_FAMILY[name.split("/", 1)[0]]


def corpus_files() -> list[CorpusFile]:
    """Every stream in the corpus folder (MANIFEST.md excluded), sorted by name."""
    files = [p for p in CORPUS_DIR.rglob("*") if p.is_file() and p.name != "MANIFEST.md"]
    out = [CorpusFile(p, _family(p.relative_to(CORPUS_DIR).as_posix())) for p in files]
    return sorted(out, key=lambda f: f.name)


def variants(f: CorpusFile) -> list[Variant]:
    return [
        Variant(crlf=crlf, keepalive=keepalive, done=done)
        for done in f.done_variants
        for crlf in (False, True)
        for keepalive in (False, True)
    ]


def json_lines(f: CorpusFile) -> list[bytes]:
    """The non-empty lines of a ``*.chunks.txt`` file (one JSON payload each)."""
    if f.is_raw:
        raise ValueError(f"{f.name} is a raw SSE capture")
    return [line for line in f.path.read_bytes().split(b"\n") if line]


def event_type(line: bytes) -> str:
    """The ``type`` of a JSON payload (the name its ``event:`` line carries)."""
    value = json.loads(line)["type"]
    if not isinstance(value, str):
        raise TypeError(f"type is not a string: {value!r}")
    return value


def _frame(f: CorpusFile, line: bytes) -> bytes:
    if f.has_event_lines:
        return b"event: " + event_type(line).encode("utf-8") + b"\n" + b"data: " + line + b"\n\n"
    return b"data: " + line + b"\n\n"


def rebuild(
    f: CorpusFile, *, crlf: bool = False, keepalive: bool = False, done: bool = False
) -> bytes:
    """Wire-faithful SSE bytes of ``f`` (raw captures: their bytes, with the variants)."""
    if f.is_raw:
        if done:
            raise ValueError("the [DONE] variant applies to Responses streams only")
        raw = f.path.read_bytes()
        if b"\r" in raw:
            raise ValueError(f"{f.name}: expected an LF-only capture")
        if keepalive:
            if b"\n\n\n" in raw:
                raise ValueError(f"{f.name}: expected single blank lines between events")
            blocks = raw.split(b"\n\n")
            tail = blocks.pop()  # b"" if the capture ends with a blank line, else a partial event
            raw = (b"\n\n" + KEEPALIVE).join(blocks) + b"\n\n"
            if tail:
                raw += KEEPALIVE + tail
        return raw.replace(b"\n", b"\r\n") if crlf else raw
    if done and f.family not in ("chat", "responses"):
        raise ValueError(f"{f.name}: no [DONE] variant for family {f.family}")
    events = [_frame(f, line) for line in json_lines(f)]
    if f.family == "chat" or done:
        events.append(DONE)
    out = (KEEPALIVE if keepalive else b"").join(events)
    return out.replace(b"\n", b"\r\n") if crlf else out


def rebuild_variant(f: CorpusFile, variant: Variant) -> bytes:
    return rebuild(f, crlf=variant.crlf, keepalive=variant.keepalive, done=variant.done)


def expected_event_count(f: CorpusFile, *, done: bool = False) -> int:
    """Events a WHATWG decoder dispatches for ``rebuild(f, ...)`` (any crlf/keepalive)."""
    if f.is_raw:
        return RAW_EVENT_COUNTS[f.name]
    n = len(json_lines(f))
    return n + 1 if (f.family == "chat" or done) else n


def expected_events(f: CorpusFile, *, done: bool = False) -> list[tuple[str, str]]:
    """(event, data) of every event of a rebuilt ``*.chunks.txt`` stream, in order."""
    out = [
        (event_type(line) if f.has_event_lines else "message", line.decode("utf-8"))
        for line in json_lines(f)
    ]
    if f.family == "chat" or done:
        out.append(("message", "[DONE]"))
    return out


def boundary_chunking(data: bytes) -> list[bytes]:
    """Cut right after every CR and after the first byte of every multi-byte character."""
    cuts = [
        i + 1
        for i, b in enumerate(data)
        if b == 0x0D or b >= 0xC0  # CR, or the lead byte of a UTF-8 sequence
    ]
    bounds = [0, *cuts, len(data)]
    return [data[a:b] for a, b in itertools.pairwise(bounds) if b > a]


def random_chunking(data: bytes, rng: random.Random) -> list[bytes]:
    """Pieces of 1 byte to 4 KiB (log-uniform), with occasional runs of 1-byte pieces."""
    pieces: list[bytes] = []
    pos = 0
    while pos < len(data):
        if rng.random() < 0.15:
            for _ in range(rng.randint(1, 48)):
                if pos >= len(data):
                    break
                pieces.append(data[pos : pos + 1])
                pos += 1
            continue
        size = min(4096, max(1, int(2 ** rng.uniform(0, 12))))
        pieces.append(data[pos : pos + size])
        pos += size
    return pieces


def chunkings(data: bytes, seed: int, count: int = 3) -> Iterator[list[bytes]]:
    """Deterministic chunkings of ``data``: the boundary cut, then ``count`` random ones.

    Every chunking joins back to ``data``; the same ``seed`` gives the same pieces.
    """
    yield boundary_chunking(data)
    for k in range(count):
        yield random_chunking(data, random.Random(seed * 1_000_003 + k))
