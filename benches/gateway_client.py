"""The closed-loop client of the gateway benchmark: ``concurrency`` keep-alive HTTP/1.1
connections on asyncio protocols (no HTTP library: the client must not be the bottleneck), each
sending its next request as soon as its previous stream ended.

Per stream it keeps: the stream id (from the first event), the time to first content chunk from
the request's write, the delay of every content chunk (arrival minus the send stamp the mock
upstream wrote into it, ``tok<i>@<ns>``), and whether the body hashes to the ``: sha256=``
comment that ends it (byte fidelity: the body the upstream meant for this request).
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import re
import socket
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

HOST = "127.0.0.1"
_STAMP = re.compile(rb"@(\d{6,20}) ")
_ID = re.compile(rb'"id":"([A-Za-z0-9_.:-]{1,128})"')
_HASH = re.compile(rb": sha256=([0-9a-f]{64})\n\n$")
#: Longest answer head and body accepted (bytes): a longer one fails the stream.
MAX_HEAD = 64 * 1024
MAX_BODY = 16 * 1024 * 1024


@dataclass
class Level:
    """What the client measured on one path at one concurrency."""

    path: str
    concurrency: int
    delays_ns: list[int] = field(default_factory=list)
    ttft_ns: list[int] = field(default_factory=list)
    ids: list[str] = field(default_factory=list)
    streams: int = 0
    failed: int = 0
    altered: int = 0
    unhashed: int = 0
    bytes: int = 0
    wall_s: float = 0.0
    cpu_s: float | None = None
    #: CPU seconds of the load generator (client and mock upstream) over the level.
    load_cpu_s: float | None = None
    errors: Counter[str] = field(default_factory=Counter)
    #: time.monotonic() at the end of each stream.
    ended: list[float] = field(default_factory=list)

    @property
    def chunks(self) -> int:
        return len(self.delays_ns)


def request_bytes(port: int, n: int, usage: bool, events: int | None = None) -> bytes:
    """A streaming Chat Completions request; ``usage`` asks for the usage chunk."""
    body: dict[str, Any] = {
        "model": "bench-model",
        "stream": True,
        "messages": [{"role": "user", "content": f"question {n}"}],
    }
    if usage:
        body["stream_options"] = {"include_usage": True}
    raw = json.dumps(body, separators=(",", ":")).encode()
    extra = b"" if events is None else b"x-bench-events: %d\r\n" % events
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"authorization: Bearer sk-bench-%d\r\ncontent-type: application/json\r\n"
        b"x-bench-usage: %d\r\n%scontent-length: %d\r\n\r\n%s"
        % (port, n % 7, int(usage), extra, len(raw), raw)
    )


class StreamFailed(Exception):
    """The answer was not a complete 200 stream."""


class _Conn(asyncio.Protocol):
    """One connection; ``send`` writes a request and returns a future set when its answer
    ended (or failed)."""

    def __init__(self, level: Level) -> None:
        self.level = level
        self.transport: Any = None
        self.done: asyncio.Future[None] | None = None
        self.closed = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        self._fail("connection closed")

    def send(self, request: bytes) -> asyncio.Future[None]:
        self.raw = bytearray()
        self.body = bytearray()
        self.head = True
        self.chunked = True
        self.left = 0  # body bytes still due in this HTTP chunk (or the content-length body)
        self.crlf = 0  # bytes of a chunk's closing CRLF still to skip
        self.scan = 0
        self.sid: str | None = None
        self.delays: list[int] = []
        self.first: int | None = None
        self.done = asyncio.get_running_loop().create_future()
        self.sent_at = time.monotonic_ns()
        self.transport.write(request)
        return self.done

    def _fail(self, why: str) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(StreamFailed(why))

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.done is None or self.done.done():
            return
        self.raw += data
        try:
            if self.head and not self._head():
                return
            finished = self._body()
        except (ValueError, StreamFailed) as exc:
            self._fail(f"{type(exc).__name__}: {exc}")
            self.transport.close()
            return
        self._events(now)
        if finished:
            self._end()

    def _head(self) -> bool:
        end = self.raw.find(b"\r\n\r\n")
        if end < 0:
            if len(self.raw) > MAX_HEAD:
                raise StreamFailed("answer head too long")
            return False
        lines = bytes(self.raw[:end]).split(b"\r\n")
        if not lines[0].startswith(b"HTTP/1.1 200"):
            raise StreamFailed(f"status {lines[0][:80]!r}")
        self.chunked = False
        length = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"transfer-encoding" and b"chunked" in value.lower():
                self.chunked = True
            elif name == b"content-length":
                length = int(value)
        if not self.chunked:
            if length is None:
                raise StreamFailed("neither chunked nor content-length")
            self.left = length
        del self.raw[: end + 4]
        self.head = False
        return True

    def _body(self) -> bool:
        """Move framed bytes from ``raw`` to ``body``; True at the end of the answer."""
        raw = self.raw
        pos = 0
        finished = False
        while True:
            if self.crlf:
                take = min(self.crlf, len(raw) - pos)
                pos += take
                self.crlf -= take
                if self.crlf:
                    break
            if self.left:
                take = min(self.left, len(raw) - pos)
                if not take:
                    break
                self.body += raw[pos : pos + take]
                pos += take
                self.left -= take
                if self.left:
                    break
                if not self.chunked:
                    finished = True
                    break
                self.crlf = 2
                continue
            if not self.chunked:
                finished = True
                break
            eol = raw.find(b"\r\n", pos)
            if eol < 0:
                if len(raw) - pos > 1024:
                    raise StreamFailed("chunk size line too long")
                break
            size = int(bytes(raw[pos:eol]).split(b";", 1)[0], 16)
            if size == 0:
                if len(raw) < eol + 4:
                    break  # the closing CRLF has not arrived yet (no trailers expected)
                pos = eol + 4
                finished = True
                break
            pos = eol + 2
            self.left = size
        del raw[:pos]
        if len(self.body) > MAX_BODY:
            raise StreamFailed("answer too long")
        return finished

    def _events(self, now: int) -> None:
        body = self.body
        while True:
            end = body.find(b"\n\n", self.scan)
            if end < 0:
                return
            if self.sid is None:
                match = _ID.search(body, self.scan, end)
                if match:
                    self.sid = match.group(1).decode()
            stamp = _STAMP.search(body, self.scan, end)
            if stamp:
                if self.first is None:
                    self.first = now
                self.delays.append(now - int(stamp.group(1)))
            self.scan = end + 2

    def _end(self) -> None:
        level = self.level
        body = bytes(self.body)
        level.streams += 1
        level.ended.append(time.monotonic())
        level.bytes += len(body)
        level.delays_ns.extend(self.delays)
        if self.first is not None:
            level.ttft_ns.append(self.first - self.sent_at)
        if self.sid is not None:
            level.ids.append(self.sid)
        match = _HASH.search(body)
        if match is None:
            level.unhashed += 1
        elif hashlib.sha256(body[: match.start()]).hexdigest().encode() != match.group(1):
            level.altered += 1
        assert self.done is not None
        self.done.set_result(None)


async def _connection(
    level: Level,
    port: int,
    streams: int,
    first: int,
    usage: bool,
    stagger: float,
    stream_timeout: float,
    events: int | None,
) -> None:
    loop = asyncio.get_running_loop()
    await asyncio.sleep(stagger)
    conn: _Conn | None = None
    try:
        for k in range(streams):
            try:
                if conn is None or conn.closed:
                    _, conn = await asyncio.wait_for(
                        loop.create_connection(lambda: _Conn(level), HOST, port), stream_timeout
                    )
                assert conn is not None
                await asyncio.wait_for(
                    conn.send(request_bytes(port, first + k, usage, events)), stream_timeout
                )
            except (StreamFailed, asyncio.TimeoutError, OSError) as exc:
                level.failed += 1
                level.errors[type(exc).__name__ + (f": {exc}"[:80] if str(exc) else "")] += 1
                if conn is not None:
                    conn.transport.close()
                conn = None
    finally:
        if conn is not None and conn.transport is not None:
            conn.transport.close()


async def run_level(
    level: Level,
    port: int,
    streams_per_connection: int,
    *,
    usage: bool = True,
    stagger: float = 0.02,
    stream_timeout: float = 60.0,
    level_timeout: float = 600.0,
    events: int | None = None,
) -> Level:
    """Run ``level.concurrency`` connections of ``streams_per_connection`` streams each."""
    rng = random.Random(level.concurrency)
    start = time.monotonic()
    tasks = [
        asyncio.ensure_future(
            _connection(
                level,
                port,
                streams_per_connection,
                i * streams_per_connection,
                usage,
                rng.uniform(0, stagger),
                stream_timeout,
                events,
            )
        )
        for i in range(level.concurrency)
    ]
    done, pending = await asyncio.wait(tasks, timeout=level_timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
        level.errors[f"{len(pending)} connections past the level timeout"] += 1
    for task in done:
        exc = task.exception()
        if exc is not None:
            level.failed += 1
            level.errors[f"connection: {type(exc).__name__}: {exc}"[:120]] += 1
    level.wall_s = time.monotonic() - start
    return level
