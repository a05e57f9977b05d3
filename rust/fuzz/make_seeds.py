"""Regenerates the checked-in fuzz seeds (``corpus/<target>/seed-*``) from the recorded
corpus in ``tests/data/corpus`` plus a few hand-written edge cases.

Run from anywhere: ``python rust/fuzz/make_seeds.py``. Every seed is
``[ctrl, s0, s1, s2, s3] + body`` (see ``src/props.rs``): ``ctrl`` picks options/mode and
``s0..s3`` seed the chunking. Stream seeds are small windows of the wire bytes
(``tests/corpus.py`` frames each file as the corpus MANIFEST says): the first events and
the last ones, where usage sits, so that each seed stays a few KB.
"""

from __future__ import annotations

import json
import struct
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from corpus import CorpusFile, corpus_files, json_lines, rebuild

#: Largest seed body; libFuzzer grows -max_len to the largest seed.
MAX_BODY = 3000

# ctrl bits, per target (mirrors src/props.rs).
FRAMING_CTRLS = (0x00, 0x08, 0x05, 0x06)
USAGE_STREAM = 0x00  # mode 0, hint auto
USAGE_COLLECT = 0x40
USAGE_SMALL_LIMIT = 0x80
USAGE_CHAT_JSON = 0x02 | 0x04  # mode 2, primed
USAGE_RESPONSES_JSON = 0x03 | 0x08  # mode 3, named response.completed
# strip: the default limit, then 300 and 1000 bytes (chunks of the 2026 capture are ~330).
STRIP_CTRLS = (0x00, 0x06, 0x07)


def seed(ctrl: int, chunk_seed: int, body: bytes) -> bytes:
    return bytes([ctrl]) + struct.pack("<I", chunk_seed) + body


def window(data: bytes, head: int = 2, tail: int = 3) -> bytes:
    """The first ``head`` and last ``tail`` events (blank-line separated), capped in size."""
    events = data.split(b"\n\n")
    rest = events.pop()  # after the last blank line: b"" or a partial event
    events = [e + b"\n\n" for e in events]
    if rest:
        events.append(rest)
    picked = events if len(events) <= head + tail else events[:head] + events[-tail:]
    while sum(map(len, picked)) > MAX_BODY and len(picked) > 1:
        picked.pop(len(picked) // 2)
    return b"".join(picked)[:MAX_BODY]


HANDWRITTEN: list[tuple[str, int, bytes]] = [
    ("bom-crlf", 0x00, b"\xef\xbb\xbfdata: a\r\n\r\n\xef\xbb\xbfdata: b\r\rid: 7\rdata: c\n\n"),
    ("partial-bom", 0x00, b"\xef\xbbdata: x\n\n"),
    ("fields", 0x08, b"retry: 10\n\nretry: 1x\nid: a\x00b\nid: 9\nevent: e\ndata\ndata:z\n\n: c\n"),
    (
        "limits",
        0x04,
        b"data: a\n: 0123456789abcdefghij\n\ndata: 0123456\nevent: xy\n\ndata: ok\n\n",
    ),
    (
        "strip-crlf",
        0x00,
        (
            b'data: {"choices":[{"delta":{"content":"hi"}}],"usage":null}\r\n\r\n'
            b'data: {"choices":[],"usage":{"total_tokens":3}}\r\n\r\ndata: [DONE]\r\n\r\n'
        ),
    ),
    ("strip-cr", 0x00, b'data: {"choices":[],"usage":{}}\r\rdata: x\r\r'),
    (
        "strip-lookalikes",
        0x00,
        (
            b'data: {"choices":[],"prompt_filter_results":[]}\n\n'
            b'data: {"choices":[{}],"usage":{"t":1}}\n\ndata: {"choices":[],"usage":null}\n\n'
            b'data: {"choices":[],\ndata: "usage":{"a":1}}\n\ndata: {"choices":[],"usage":{}} x\n\n'
        ),
    ),
]


CHAT_CHUNK = (
    '{"id":"ID","object":"chat.completion.chunk","model":"m",'
    '"choices":[{"index":0,"delta":{"content":"x"},"finish_reason":FINISH}],"usage":null}'
)

#: (name, ctrl, body) of hand-written strip seeds (with the framing ones named strip-*).
STRIP_HANDWRITTEN: list[tuple[str, int, bytes]] = [
    (
        "null-members",
        0x00,
        (
            b'data: {"usage":null,"choices":[{}]}\n\ndata: {"choices": [{}], "usage": null}\r\n\r\n'
            b'data: { "id" : 1 , "usage" : null , "choices":[]}\r\rdata: {"type":"x","usage":null}\n\n'
            b'data: {"choices":[{}],"usage":null,"usage":null}\n\ndata: {"choices":[{}],"usage":null} x\n\n'
            b'data: {"choices":[{}],\ndata: "usage":null}\n\n'
        ),
    ),
    (
        "oversized",
        0x04,
        (
            b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}\n\n'
            b'data: {"choices":[{}],"usage":null}\n\n' + b"x" * 100 + b"\r\n\r\n"
            b'data: {"choices":[],"usage":{}}\n\nendless ' + b"y" * 80
        ),
    ),
]

#: (name, ctrl, body) of hand-written usage seeds.
USAGE_HANDWRITTEN: list[tuple[str, int, bytes]] = [
    # Two responses with an oversized event between them (ctrl 0x80: 256-byte limit).
    (
        "oversized-between-responses",
        0x80,
        (
            "data: " + CHAT_CHUNK.replace("ID", "c1").replace("FINISH", '"stop"') + "\n\n"
            "data: [DONE]\n\ndata: " + "x" * 300 + "\n\n"
            "data: " + CHAT_CHUNK.replace("ID", "c2").replace("FINISH", "null") + "\n\n"
        ).encode(),
    ),
]


def write(target: str, name: str, data: bytes, written: dict[str, int]) -> None:
    folder = HERE / "corpus" / target
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"seed-{name}").write_bytes(data)
    written[target] = written.get(target, 0) + len(data)


def short(f: CorpusFile) -> str:
    return f.name.replace("/", "_").removesuffix(".chunks.txt").replace(".", "_")[:60]


def main() -> None:
    for old in (HERE / "corpus").glob("*/seed-*"):
        old.unlink()
    written: dict[str, int] = {}
    files = corpus_files()
    for i, f in enumerate(files):
        name = short(f)
        done = f.family == "chat"
        base = window(rebuild(f, done=done))
        # framing: one option set per file, in turn; CRLF for every other file.
        framed = window(rebuild(f, done=done, crlf=i % 2 == 1, keepalive=i % 3 == 0))
        ctrl = FRAMING_CTRLS[i % len(FRAMING_CTRLS)]
        write("framing", name, seed(ctrl, i * 7, framed), written)
        # usage: the stream with the auto hint; every third file also collecting output
        # or with a small event limit.
        ctrl = USAGE_STREAM | (USAGE_COLLECT if i % 3 == 1 else 0)
        ctrl |= USAGE_SMALL_LIMIT if i % 3 == 2 else 0
        write("usage", name, seed(ctrl, i, base), written)
        # strip: the Chat Completions streams (the ones a stripper sees), LF or CRLF.
        if f.family == "chat" or f.name.startswith("openai-chat/"):
            ctrl = STRIP_CTRLS[i % len(STRIP_CTRLS)]
            framed = window(rebuild(f, crlf=i % 2 == 0, keepalive=i % 3 == 1), head=3, tail=3)
            write("strip", name, seed(ctrl, i * 3, framed), written)
        if not f.is_raw:
            lines = json_lines(f)
            if i % 2 == 0:
                events = b"\n".join(lines[:2] + lines[-2:])[:MAX_BODY]
                write("reassemble", name, seed(0, i, events), written)
            # usage JSON modes: the events that carry usage.
            for line in lines:
                if len(line) > MAX_BODY:
                    continue
                obj = json.loads(line)
                if f.family == "chat" and obj.get("usage"):
                    write("usage", f"{name}-json", seed(USAGE_CHAT_JSON, i, line), written)
                    break
                if obj.get("type") in ("response.completed", "response.incomplete"):
                    body = line
                    write("usage", f"{name}-json", seed(USAGE_RESPONSES_JSON, i, body), written)
                    break
    for name, ctrl, body in HANDWRITTEN:
        write("framing", name, seed(ctrl, len(name), body), written)
        if name.startswith("strip-"):
            write("strip", name, seed(ctrl, len(name), body), written)
    for name, ctrl, body in STRIP_HANDWRITTEN:
        write("strip", name, seed(ctrl, len(name), body), written)
    for name, ctrl, body in USAGE_HANDWRITTEN:
        write("usage", name, seed(ctrl, len(name), body), written)
    for target, size in sorted(written.items()):
        count = len(list((HERE / "corpus" / target).glob("seed-*")))
        print(f"{target}: {count} seeds, {size} bytes")


if __name__ == "__main__":
    main()
