"""Peak memory of ``UsageTap`` against stream size, up to 1 GB: the RSS must stay flat.

    python benches/memory.py                 # 10 MB, 100 MB and 1 GB per kind, ~1 minute
    python benches/memory.py --max-mb 100    # quicker
    python benches/memory.py --check         # exit 1 if the peak grows with the stream

Each (kind, size) runs in a fresh interpreter: it builds about 1 MB of wire bytes once, then
feeds that block over and over in ``--chunk``-sized reads (so the input itself costs
nothing), ends the stream, and prints the peak RSS above the RSS before the first byte
(``getrusage``; POSIX only). Kinds:

* ``chat``, ``chat-collect`` (``collect_output=True``: the reassembled text grows with the
  stream by design, so only its native bookkeeping should stay flat), ``responses``,
  ``anthropic``: one long ordinary stream with its usage at the end (checked);
* ``hostile-responses`` (thousands of tiny responses, capped at 1024 reports),
  ``hostile-choices`` (ever-new choice indexes, capped at 128 choices), ``hostile-steps``
  (endless Assistants run steps, capped at 1024 step usages): streams built to make the
  tap's memory grow faster than its input.

Not part of the test suite (``tests/test_hardening.py`` checks the same bounds at a few MB).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from typing import Any

KINDS = (
    "chat",
    "chat-collect",
    "responses",
    "anthropic",
    "hostile-responses",
    "hostile-choices",
    "hostile-steps",
)
CHILD_TIMEOUT_SECONDS = 600

_CHILD = r'''
import json, resource, sys, time
from ssetally import UsageTap

kind, size, chunk = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])

def peak():
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r if sys.platform == "darwin" else r * 1024

def chat(i):
    return (b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","created":1,'
            b'"model":"gpt-4o-mini","choices":[{"index":0,"delta":{"content":" w%d \xc3\xa9"},'
            b'"finish_reason":null}],"usage":null}\n\n' % (i % 1000))

def responses(i):
    return (b'event: response.output_text.delta\ndata: {"type":"response.output_text.delta",'
            b'"sequence_number":%d,"item_id":"msg_1","output_index":0,"content_index":0,'
            b'"delta":" w%d"}\n\n' % (i, i % 1000))

def anthropic(i):
    return (b'event: content_block_delta\ndata: {"type":"content_block_delta","index":0,'
            b'"delta":{"type":"text_delta","text":" w%d"}}\n\n' % (i % 1000))

HEAD = {
    "chat": b"",
    "chat-collect": b"",
    "responses": b'event: response.created\ndata: {"type":"response.created","response":'
                 b'{"id":"resp_1","model":"gpt-4o-mini","usage":null}}\n\n',
    "anthropic": b'event: message_start\ndata: {"type":"message_start","message":{"id":"msg_1",'
                 b'"model":"claude","usage":{"input_tokens":7,"output_tokens":1}}}\n\n',
}
TAIL = {
    "chat": b'data: {"id":"chatcmpl-1","object":"chat.completion.chunk","model":"gpt-4o-mini",'
            b'"choices":[],"usage":{"prompt_tokens":7,"completion_tokens":5,"total_tokens":12}}'
            b'\n\ndata: [DONE]\n\n',
    "responses": b'event: response.completed\ndata: {"type":"response.completed","response":'
                 b'{"id":"resp_1","status":"completed","usage":{"input_tokens":7,'
                 b'"output_tokens":5,"total_tokens":12}}}\n\n',
    "anthropic": b'event: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":'
                 b'"end_turn"},"usage":{"output_tokens":5}}\n\nevent: message_stop\n'
                 b'data: {"type":"message_stop"}\n\n',
}
TAIL["chat-collect"] = TAIL["chat"]

def block(k):
    """About 1 MB of the stream body (k varies it where it must change)."""
    if kind in ("chat", "chat-collect"):
        return b"".join(chat(i) for i in range(6000))
    if kind == "responses":
        return b"".join(responses(i) for i in range(6000))
    if kind == "anthropic":
        return b"".join(anthropic(i) for i in range(9000))
    if kind == "hostile-responses":
        return b"".join(
            b'data: {"id":"a%d","object":"chat.completion.chunk","model":"m","choices":[{"index":0,'
            b'"delta":{},"finish_reason":"stop"}],"usage":{"prompt_tokens":1,"completion_tokens":1,'
            b'"total_tokens":2}}\n\n' % i for i in range(5000))
    if kind == "hostile-steps":
        return b"".join(
            b'event: thread.run.step.completed\ndata: {"id":"step_%d","object":"thread.run.step",'
            b'"status":"completed","usage":{"prompt_tokens":1,"completion_tokens":1,'
            b'"total_tokens":2}}\n\n' % i for i in range(5000))
    items = b",".join(b'{"index":%d}' % (k * 70000 + i) for i in range(70000))
    return b'data: {"id":"a","object":"chat.completion.chunk","model":"m","choices":[' + items + b']}\n\n'

tap = UsageTap(collect_output=kind in ("chat-collect", "hostile-choices"))
fixed = block(0)
pieces = [fixed[i:i + chunk] for i in range(0, len(fixed), chunk)]
tap.feed(HEAD.get(kind, b""))
before = peak()
start = time.perf_counter()
fed, k = 0, 0
while fed < size:
    if kind == "hostile-choices":
        data = block(k)
        for i in range(0, len(data), chunk):
            tap.feed(data[i:i + chunk])
        fed += len(data)
    else:
        for piece in pieces:
            tap.feed(piece)
        fed += len(fixed)
    k += 1
tap.feed(TAIL.get(kind, b""))
report = tap.finish()
seconds = time.perf_counter() - start
output = tap.output()
usage = report.usage
print(json.dumps({
    "kind": kind, "fed": fed, "seconds": seconds, "extra": peak() - before,
    "reports": len(tap.reports),
    "usage_ok": None if kind.startswith("hostile") else (usage is not None and usage.total_tokens == 12),
    "choices": None if output is None else len(output["choices"]),
}))
'''


def measure(kind: str, size_mb: int, chunk: int) -> dict[str, Any]:
    out = subprocess.run(
        [sys.executable, "-c", _CHILD, kind, str(size_mb * 1_000_000), str(chunk)],
        capture_output=True,
        text=True,
        timeout=CHILD_TIMEOUT_SECONDS,
        check=False,
    )
    if out.returncode != 0:
        raise RuntimeError(f"{kind} {size_mb} MB failed:\n{out.stderr[-2000:]}")
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert isinstance(result, dict)
    return result


def sizes_up_to(max_mb: int) -> list[int]:
    sizes = [s for s in (10, 100, 1000) if s <= max_mb]
    return sizes or [max_mb]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--max-mb", type=int, default=1000, help="largest stream (MB)")
    parser.add_argument("--kinds", default=",".join(KINDS), help="comma-separated kinds")
    parser.add_argument("--chunk", type=int, default=64 * 1024, help="bytes per feed()")
    parser.add_argument(
        "--check", action="store_true", help="exit 1 unless the peak stays flat (16 MiB)"
    )
    args = parser.parse_args(argv)
    kinds = [k for k in args.kinds.split(",") if k]
    unknown = sorted(set(kinds) - set(KINDS))
    if unknown:
        parser.error(f"unknown kinds: {', '.join(unknown)}")
    flat = True
    print("| kind | stream MB | seconds | MB/s | peak extra MiB | reports | check |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | --- |")
    started = time.perf_counter()
    for kind in kinds:
        extras: list[int] = []
        for size in sizes_up_to(args.max_mb):
            r = measure(kind, size, args.chunk)
            extras.append(r["extra"])
            ok = r["usage_ok"] is not False
            if kind == "hostile-responses":
                ok = r["reports"] <= 1024
            if kind == "hostile-choices":
                ok = r["choices"] is not None and r["choices"] <= 128
            flat &= ok
            print(
                f"| {kind} | {r['fed'] / 1e6:.0f} | {r['seconds']:.2f} "
                f"| {r['fed'] / 1e6 / max(r['seconds'], 1e-9):.0f} "
                f"| {r['extra'] / 2**20:.1f} | {r['reports']} | {'ok' if ok else 'WRONG'} |",
                flush=True,
            )
        # chat-collect keeps the streamed text by design: it grows with the stream.
        if kind != "chat-collect" and max(extras) - min(extras) > 16 * 2**20:
            flat = False
            print(f"  {kind}: peak grew by {(max(extras) - min(extras)) / 2**20:.1f} MiB")
    print(f"\n{time.perf_counter() - started:.0f} s in all; RSS flat: {'yes' if flat else 'NO'}")
    return 0 if flat or not args.check else 1


if __name__ == "__main__":
    sys.exit(main())
