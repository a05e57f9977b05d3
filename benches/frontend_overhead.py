"""What the front-ends add per chunk, side by side in one run (PASS/FAIL against the targets).

    python benches/frontend_overhead.py            # about 2 minutes
    python benches/frontend_overhead.py --rounds 9 # steadier medians

(a) ``UsageMiddleware`` on a FastAPI streaming relay (uvicorn, relaying an upstream with
    httpx): the same app with and without the middleware, in two server processes pinned to
    one core, under the same load, alternating; CPU per relayed chunk from each server's own
    ``getrusage``. Target: the middleware adds at most 5% to the app's own cost per chunk.
(b) ``ameter`` over an aiohttp stream: the same stream read from an aiohttp ``StreamReader``
    with ``iter_any()``, with and without ``ameter``, alternating; this process's CPU per
    chunk. The reader is fed one event per loop turn, as aiohttp's protocol feeds it one
    socket read at a time (no network in between, so the difference is not lost in the
    noise of socket wake-ups). Target: at most 2 us per chunk, per-stream work included
    (the median of the paired differences; their minimum is printed too).
(c) ``ameter`` alone over an in-memory async iterator of a recorded Chat Completions stream
    (~330-byte chunks, ``tests/data/corpus``): a long and a usage-only stream, with and
    without ``ameter``, so that the per-chunk cost (the slope) and the per-stream work come
    apart; informational.

The upstream of (a) is a small asyncio server in its own process writing one SSE event per
chunk (Chat Completions chunks with ``include_usage``), paced like token output so that each
read carries about one event, as at real token speed. Everything binds 127.0.0.1. Medians of
``--rounds`` alternating rounds; the machine matters, so read the ratios.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import resource
import socket
import statistics
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

HERE = os.path.abspath(__file__)
MIDDLEWARE_TARGET = 0.05  # at most 5% more CPU per chunk
AMETER_TARGET_US = 2.0  # at most 2 us more CPU per chunk


# ---------------------------------------------------------------------------- the upstream


def _event(i: int) -> bytes:
    chunk = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
             "model": "gpt-4o-mini", "system_fingerprint": "fp_1",
             "choices": [{"index": 0, "delta": {"content": f" word{i % 97}"}, "logprobs": None,
                          "finish_reason": None}], "usage": None}  # fmt: skip
    return b"data: " + json.dumps(chunk, separators=(",", ":")).encode() + b"\n\n"


def _stream(events: int) -> list[bytes]:
    done = {"id": "chatcmpl-bench", "object": "chat.completion.chunk", "created": 1,
            "model": "gpt-4o-mini", "choices": [],
            "usage": {"prompt_tokens": 9, "completion_tokens": events,
                      "total_tokens": 9 + events}}  # fmt: skip
    tail = b"data: " + json.dumps(done).encode() + b"\n\ndata: [DONE]\n\n"
    return [_event(i) for i in range(events)] + [tail]


async def _upstream(port: int, events: int, pace: float) -> None:
    body = [b"%x\r\n%s\r\n" % (len(e), e) for e in _stream(events)]

    async def answer(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            if length:
                await asyncio.wait_for(reader.readexactly(length), 30)
            writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\n"
                         b"transfer-encoding: chunked\r\nconnection: close\r\n\r\n")  # fmt: skip
            for piece in body:
                writer.write(piece)
                await writer.drain()
                await asyncio.sleep(pace)
            writer.write(b"0\r\n\r\n")
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(answer, "127.0.0.1", port, backlog=256)
    async with server:
        await server.serve_forever()


# --------------------------------------------------------------------- (a) the relay app


def _serve_app(kind: str, port: int, upstream: str) -> None:
    import httpx
    import uvicorn
    from fastapi import FastAPI
    from fastapi.responses import JSONResponse, StreamingResponse
    from ssetally.asgi import UsageMiddleware

    app = FastAPI()
    state = {"chunks": 0}
    client = httpx.AsyncClient(timeout=60, limits=httpx.Limits(max_connections=512))

    # Plain Starlette-style routes: the endpoint gets the request as it is.
    async def relay(request: Any) -> StreamingResponse:
        body = await request.body()
        sent = client.build_request("POST", upstream + "/v1/chat/completions", content=body,
                                    headers={"content-type": "application/json"})  # fmt: skip
        resp = await client.send(sent, stream=True)

        async def chunks() -> Any:
            try:
                async for chunk in resp.aiter_raw():
                    state["chunks"] += 1
                    yield chunk
            finally:
                await resp.aclose()

        return StreamingResponse(chunks(), media_type="text/event-stream")

    async def stats(request: Any) -> JSONResponse:
        ru = resource.getrusage(resource.RUSAGE_SELF)
        return JSONResponse({"chunks": state["chunks"], "cpu": ru.ru_utime + ru.ru_stime})

    app.add_route("/v1/chat/completions", relay, methods=["POST"])
    app.add_route("/stats", stats, methods=["GET"])

    served = UsageMiddleware(app) if kind == "metered" else app
    uvicorn.run(served, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _pin(cpu: int | None) -> list[str]:
    """A ``taskset`` prefix for ``cpu`` where it exists and the CPU is ours."""
    if cpu is None or not hasattr(os, "sched_getaffinity") or cpu not in os.sched_getaffinity(0):
        return []
    for path in ("/usr/bin/taskset", "/bin/taskset"):
        if os.path.exists(path):
            return [path, "-c", str(cpu)]
    return []


@contextmanager
def _process(args: list[str], port: int, cpu: int | None) -> Iterator[subprocess.Popen[bytes]]:
    proc = subprocess.Popen([*_pin(cpu), sys.executable, HERE, *args])
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise SystemExit(f"{args[0]} did not start") from None
                time.sleep(0.1)
        yield proc
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


async def _load(url: str, streams: int, concurrency: int) -> int:
    """``streams`` streamed requests through ``url``, ``concurrency`` at a time; bytes read."""
    import aiohttp

    limit = asyncio.Semaphore(concurrency)
    body = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "x"}]}
    total = 0
    timeout = aiohttp.ClientTimeout(total=120)
    async with aiohttp.ClientSession(timeout=timeout) as session:

        async def one() -> None:
            nonlocal total
            async with limit, session.post(url + "/v1/chat/completions", json=body) as resp:
                async for chunk in resp.content.iter_any():
                    total += len(chunk)

        await asyncio.gather(*(one() for _ in range(streams)))
    return total


def _stats(url: str) -> tuple[float, float]:
    import httpx

    data = httpx.get(url + "/stats", timeout=30).json()
    return float(data["chunks"]), float(data["cpu"])


def middleware_overhead(args: argparse.Namespace) -> tuple[float, float, float, bool]:
    """Median CPU per chunk (us) without and with the middleware, the ratio, PASS."""
    up_port, plain_port, metered_port = _free_port(), _free_port(), _free_port()
    upstream = f"http://127.0.0.1:{up_port}"
    server_cpu = 0 if args.pin else None
    other_cpu = 1 if args.pin else None
    mine = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    if other_cpu is not None and mine is not None and other_cpu in mine:
        os.sched_setaffinity(0, {other_cpu})  # the load generator, beside the upstream
    up_args = ["--upstream-serve", str(up_port), "--events", str(args.events),
               "--pace", str(args.pace)]  # fmt: skip
    app = ["--serve-app"]
    with _process(up_args, up_port, other_cpu), \
            _process([*app, "plain", "--port", str(plain_port), "--upstream", upstream],
                     plain_port, server_cpu), \
            _process([*app, "metered", "--port", str(metered_port), "--upstream", upstream],
                     metered_port, server_cpu):  # fmt: skip
        urls = {"plain": f"http://127.0.0.1:{plain_port}",
                "metered": f"http://127.0.0.1:{metered_port}"}  # fmt: skip
        for url in urls.values():  # warm-up: imports, connections, first reports
            asyncio.run(_load(url, args.concurrency, args.concurrency))
        per_chunk: dict[str, list[float]] = {"plain": [], "metered": []}
        for r in range(args.rounds):
            order = ["plain", "metered"] if r % 2 == 0 else ["metered", "plain"]
            for kind in order:
                chunks0, cpu0 = _stats(urls[kind])
                asyncio.run(_load(urls[kind], args.streams, args.concurrency))
                chunks1, cpu1 = _stats(urls[kind])
                per_chunk[kind].append((cpu1 - cpu0) / max(1.0, chunks1 - chunks0) * 1e6)
    if mine is not None:
        os.sched_setaffinity(0, mine)
    plain = statistics.median(per_chunk["plain"])
    metered = statistics.median(per_chunk["metered"])
    ratios = [m / p - 1 for p, m in zip(per_chunk["plain"], per_chunk["metered"])]
    added = statistics.median(ratios)
    return plain, metered, added, added <= MIDDLEWARE_TARGET


# -------------------------------------------------------------- (b) ameter over aiohttp


async def _read(metered: bool, streams: int, events: int) -> tuple[float, int]:
    """CPU seconds of this process and chunks read, for ``streams`` streams read with
    aiohttp's ``iter_any()``; each stream's chunks are fed to its ``StreamReader`` one per
    loop turn, as aiohttp's protocol feeds it one per socket read."""
    import aiohttp
    import ssetally
    from aiohttp.base_protocol import BaseProtocol

    loop = asyncio.get_running_loop()
    pieces = _stream(events)
    body = {"model": "gpt-4o-mini", "stream": True}
    chunks = 0

    async def produce(reader: aiohttp.StreamReader) -> None:
        for piece in pieces:
            reader.feed_data(piece)
            await asyncio.sleep(0)
        reader.feed_eof()

    cpu = 0.0
    for _ in range(streams):
        protocol = BaseProtocol(loop)
        protocol.transport = asyncio.Transport()  # "connected"; never paused at this size
        reader = aiohttp.StreamReader(protocol, 2**16, loop=loop)
        producer = asyncio.create_task(produce(reader))
        start = time.process_time()
        if metered:
            async with ssetally.ameter(reader.iter_any(), request=body) as m:
                async for _chunk in m:
                    chunks += 1
            assert m.report is not None and m.report.usage is not None
        else:
            async for _chunk in reader.iter_any():
                chunks += 1
        cpu += time.process_time() - start
        await producer
    return cpu, chunks


def ameter_overhead(args: argparse.Namespace) -> tuple[float, float, float, float, bool]:
    """Median CPU per chunk (us) without and with ``ameter``, the minimum and median of the
    paired differences, PASS (on the median)."""
    asyncio.run(_read(True, 2, args.events))  # warm-up
    per_chunk: dict[bool, list[float]] = {False: [], True: []}
    for r in range(args.rounds):
        for metered in (False, True) if r % 2 == 0 else (True, False):
            cpu, chunks = asyncio.run(_read(metered, args.ameter_streams, args.events))
            per_chunk[metered].append(cpu / max(1, chunks) * 1e6)
    plain = statistics.median(per_chunk[False])
    metered = statistics.median(per_chunk[True])
    added = [m - p for p, m in zip(per_chunk[False], per_chunk[True])]
    median = statistics.median(added)
    return plain, metered, min(added), median, median <= AMETER_TARGET_US


# ------------------------------------------------- (c) the wrapper alone, in memory


CORPUS = os.path.join(os.path.dirname(os.path.dirname(HERE)), "tests", "data", "corpus",
                      "openai-chat", "openai-text.chunks.txt")  # fmt: skip


def _corpus_stream(content: int) -> list[bytes]:
    """One SSE event per chunk from a recorded Chat Completions stream (about 330 bytes
    each): the first ``content`` chunks, then the usage chunk and ``[DONE]``."""
    with open(CORPUS, "rb") as f:
        lines = f.read().splitlines()
    events = [b"data: " + line + b"\n\n" for line in lines[:-1]]
    return events[:content] + [b"data: " + lines[-1] + b"\n\ndata: [DONE]\n\n"]


class _Chunks:
    """An in-memory async iterator shaped like aiohttp's (a coroutine per ``__anext__``)."""

    __slots__ = ("_it",)

    def __init__(self, chunks: list[bytes]) -> None:
        self._it = iter(chunks)

    def __aiter__(self) -> _Chunks:
        return self

    async def __anext__(self) -> bytes:
        for chunk in self._it:
            return chunk
        raise StopAsyncIteration


async def _wrapper_round(chunks: list[bytes], streams: int, metered: bool) -> float:
    """CPU seconds per stream of ``streams`` streams of ``chunks``, bare or through
    ``ameter`` (``async with``, per-stream work included)."""
    import ssetally

    body = {"model": "gpt-4.1-nano", "stream": True}
    start = time.process_time()
    for _ in range(streams):
        if metered:
            async with ssetally.ameter(_Chunks(chunks), request=body) as m:
                async for _chunk in m:
                    pass
        else:
            async for _chunk in _Chunks(chunks):
                pass
    return (time.process_time() - start) / streams


def wrapper_overhead(args: argparse.Namespace) -> tuple[float, float, float, float, float]:
    """``ameter`` minus a bare ``async for`` over in-memory corpus chunks: the per-chunk
    slope (ns; between a long and a usage-only stream, so per-stream work cancels), its
    minimum and median over rounds, the per-stream work (us, median) and the whole-stream
    difference per chunk at ``--events`` chunks (ns, median)."""
    long, short = _corpus_stream(10**6), _corpus_stream(0)
    span = len(long) - len(short)

    async def rounds() -> tuple[list[float], list[float]]:
        slopes, fixed = [], []
        await _wrapper_round(long, 3, True)  # warm-up: imports, the first report
        for _ in range(args.wrapper_rounds):
            t = {(m, n): await _wrapper_round(c, k, m)
                 for m in (False, True) for n, c, k in (("long", long, 10), ("short", short, 50))}  # fmt: skip
            slope = (t[True, "long"] - t[True, "short"]) - (t[False, "long"] - t[False, "short"])
            slopes.append(slope / span * 1e9)
            fixed.append(
                (t[True, "short"] - t[False, "short"]) * 1e6 - slopes[-1] * len(short) / 1e3
            )
        return slopes, fixed

    slopes, fixed = asyncio.run(rounds())
    per_stream = statistics.median(fixed)
    per_chunk = statistics.median(slopes)
    whole = per_chunk + per_stream * 1e3 / (args.events + 1)
    return min(slopes), per_chunk, per_stream, whole, float(len(long))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)  # fmt: skip
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds per variant")
    parser.add_argument("--streams", type=int, default=48, help="streams per round")
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--events", type=int, default=200, help="events per stream")
    parser.add_argument("--ameter-streams", type=int, default=200,
                        help="streams per round of (b)")  # fmt: skip
    parser.add_argument("--wrapper-rounds", type=int, default=40, help="rounds of (c)")
    parser.add_argument("--pace", type=float, default=0.002, help="seconds between events")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin the server to CPU 0 and the rest to CPU 1")  # fmt: skip
    parser.add_argument("--skip", default="", help="middleware,ameter,wrapper")
    parser.add_argument("--upstream-serve", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--serve-app", choices=["plain", "metered"], help=argparse.SUPPRESS)
    parser.add_argument("--port", type=int, help=argparse.SUPPRESS)
    parser.add_argument("--upstream", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.upstream_serve:
        asyncio.run(_upstream(args.upstream_serve, args.events, args.pace))
        return 0
    if args.serve_app:
        _serve_app(args.serve_app, args.port, args.upstream)
        return 0
    args.pin = args.pin and (os.cpu_count() or 1) >= 2
    skip = set(args.skip.split(","))
    failed = False
    print(f"streams of {args.events} events, one every {args.pace * 1000:g} ms; "
          f"{args.streams} streams x {args.rounds} rounds per variant, "
          f"{args.concurrency} at a time; pinned: {args.pin}")  # fmt: skip
    if "middleware" not in skip:
        plain, metered, added, ok = middleware_overhead(args)
        failed |= not ok
        print(f"(a) UsageMiddleware on a FastAPI relay: {plain:.1f} us CPU per chunk without, "
              f"{metered:.1f} us with: +{added * 100:.1f}% "
              f"(target <= {MIDDLEWARE_TARGET * 100:g}%) {'PASS' if ok else 'FAIL'}")  # fmt: skip
    if "ameter" not in skip:
        plain, metered, least, added, ok = ameter_overhead(args)
        failed |= not ok
        print(f"(b) ameter over aiohttp iter_any(): {plain:.2f} us CPU per chunk without, "
              f"{metered:.2f} us with: +{added:.2f} us (min +{least:.2f}) "
              f"(target <= {AMETER_TARGET_US:g} us) {'PASS' if ok else 'FAIL'}")  # fmt: skip
    if "wrapper" not in skip:
        least, per_chunk, per_stream, whole, n = wrapper_overhead(args)
        print(f"(c) ameter alone, in memory ({n:.0f}-chunk corpus stream): +{per_chunk:.0f} ns "
              f"per chunk (min +{least:.0f}), +{per_stream:.0f} us per stream; at "
              f"{args.events} events +{whole / 1000:.2f} us per chunk")  # fmt: skip
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
