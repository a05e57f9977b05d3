"""The hostile share of the soak (``soak.py --hostile-share``): hostile upstream answers, hostile
client requests and slowloris connections, mixed with the normal traffic.

The proxy has one upstream, so the soak puts ``Upstream`` in front of the replay server: a
request carrying ``x-soak-hostile: KIND`` is answered by ``Upstream`` itself with that hostile
answer (``ANSWERS``); every other request is passed to the replay server unchanged and its
answer piped back. Each hostile answer gets its own ``x-request-id`` and is kept (``served``:
the bytes written, whether the body was written whole), so its record and the bytes the client
got are checked like the normal streams', and its record must say what happened (``TRUTHFUL``:
a warning, an ``ended_by`` or a refusal to estimate, per kind).

Hostile requests never reach the upstream: a path that climbs out of the prefix and a request
with both ``Content-Length`` and ``Transfer-Encoding`` (sent on raw sockets: an HTTP library
would tidy them up) must be refused with 400; slowloris connections send one header byte a
second and must be closed by the proxy within its header timeout.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from typing_extensions import Self

MiB = 1 << 20
HOST = "127.0.0.1"
#: Past the proxy's 16 MiB ``max_event_size``.
LONG_LINE = 17 * MiB
#: Past the metering decoders' 256 MiB budget.
BOMB_SIZE = 300 * MiB
#: Longest time an endless hostile answer goes on (the proxy cuts it well before).
ENDLESS_CAP = 60.0
MODEL = "gpt-4o-mini"


def _chunk(response_id: str, choices: list[Any], usage: Any = None) -> bytes:
    obj: dict[str, Any] = {
        "id": response_id,
        "object": "chat.completion.chunk",
        "created": 1,
        "model": MODEL,
        "choices": choices,
    }
    if usage is not None:
        obj["usage"] = usage
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _text(text: str, rid: str = "chatcmpl-soak-hostile") -> bytes:
    return _chunk(rid, [{"index": 0, "delta": {"content": text}, "finish_reason": None}])


def _stream(rid: str = "chatcmpl-soak-hostile", usage: bytes | None = None) -> bytes:
    finish = _chunk(rid, [{"index": 0, "delta": {}, "finish_reason": "stop"}])
    counts = usage or b'{"prompt_tokens":11,"completion_tokens":5,"total_tokens":16}'
    usage_chunk = (
        b'data: {"id":"' + rid.encode() + b'","object":"chat.completion.chunk","created":1,'
        b'"model":"gpt-4o-mini","choices":[],"usage":' + counts + b"}\n\n"
    )
    return _text("Hello", rid) + finish + usage_chunk + b"data: [DONE]\n\n"


def _compress(encoding: str, blocks: Iterator[bytes]) -> bytes:
    if encoding in ("gzip", "deflate"):
        wbits = 16 + zlib.MAX_WBITS if encoding == "gzip" else zlib.MAX_WBITS
        z = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return b"".join(z.compress(b) for b in blocks) + z.flush()
    if encoding == "br":
        import brotli  # type: ignore[import-untyped]

        c = brotli.Compressor(quality=5, lgwin=22)
        return bytes(b"".join(c.process(b) for b in blocks) + c.finish())
    import zstandard

    zc = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join(zc.compress(b) for b in blocks) + zc.flush()


def _bomb(encoding: str) -> bytes:
    spaces = b" " * MiB
    blocks = [_text("Hello"), b":", *([spaces] * (BOMB_SIZE // MiB)), b"\n\n", _stream()]
    return _compress(encoding, iter(blocks))


def _truncated_gzip() -> bytes:
    whole = _compress("gzip", iter([_text("word ") * 2000 + _stream()]))
    return whole[: len(whole) // 2]


@dataclass(frozen=True)
class Answer:
    """A hostile answer: status, content type, coding, the body (made once), and for an
    endless answer the piece written every 50 ms after it."""

    body: Callable[[], bytes]
    status: int = 200
    content_type: str = "text/event-stream"
    encoding: str | None = None
    endless: bytes | None = None


TWO_IDS = _stream("chatcmpl-first", b'{"prompt_tokens":5,"completion_tokens":7}') + _stream(
    "chatcmpl-second", b'{"prompt_tokens":3,"completion_tokens":4}'
)
NUMBERS = b'{"prompt_tokens":9223372036854775808,"completion_tokens":1e308,"total_tokens":-1}'

#: Hostile upstream answers by kind.
ANSWERS: dict[str, Answer] = {
    "long-line": Answer(lambda: b"data: " + b"x" * LONG_LINE + b"\n\n" + _stream()),
    **{f"bomb-{e}": Answer(lambda e=e: _bomb(e), encoding=e) for e in ("gzip", "deflate")},  # type: ignore[misc]
    "bomb-br": Answer(lambda: _bomb("br"), encoding="br"),
    "bomb-zstd": Answer(lambda: _bomb("zstd"), encoding="zstd"),
    "truncated-gzip": Answer(_truncated_gzip, encoding="gzip"),
    "undecodable-br": Answer(lambda: b"\xff\xfe not brotli " * 64, encoding="br"),
    "hostile-numbers": Answer(lambda: _stream(usage=NUMBERS)),
    "hostile-request": Answer(_stream),
    "two-response-ids": Answer(lambda: TWO_IDS),
    "endless-comments": Answer(lambda: _text("Hello"), endless=b": keep-alive\n\n"),
    "past-deadline": Answer(lambda: _text("Hello"), endless=_text("more ")),
    "sse-as-html": Answer(_stream, content_type="text/html"),
    "sse-error-500": Answer(lambda: _text("lots of words " * 20), status=500),
    "sse-error-429": Answer(lambda: _text("lots of words " * 20), status=429),
}
#: Hostile client requests, refused by the proxy itself.
REQUESTS = ("path-escape", "smuggling")
#: (kind, weight) of the hostile mix: upstream answers, then client requests.
MIX: list[tuple[str, int]] = [
    ("long-line", 1),
    ("bomb-gzip", 1),
    ("bomb-deflate", 1),
    ("bomb-br", 1),
    ("bomb-zstd", 1),
    ("truncated-gzip", 2),
    ("undecodable-br", 2),
    ("hostile-numbers", 3),
    ("hostile-request", 1),
    ("two-response-ids", 3),
    ("endless-comments", 1),
    ("past-deadline", 1),
    ("sse-as-html", 2),
    ("sse-error-500", 2),
    ("sse-error-429", 2),
    ("path-escape", 3),
    ("smuggling", 3),
]


def hostile_body(kind: str) -> bytes:
    """The request body of a hostile kind: hostile strings for ``hostile-request`` (lone
    surrogates as JSON escapes, a 4 MiB model name, a NUL)."""
    body: dict[str, Any] = {"model": MODEL, "stream": True, "messages": [{"role": "user"}]}
    if kind == "hostile-request":
        body["model"] = "\ud800" + "m" * (4 * MiB)
        body["user"] = "\udfff\x00"
    return json.dumps(body).encode("ascii")


def truthful(kind: str, record: dict[str, Any]) -> bool:
    """The record of a hostile answer says what happened."""
    warnings = " | ".join(record.get("warnings") or [])
    ended = str(record.get("ended_by"))
    if kind == "long-line":
        # Skipped and said; or, on a loaded machine, cut by the idle timeout while the line
        # (no event) was still arriving.
        cut = "no output for" in ended and record.get("status") == "truncated"
        return "max_event_size" in warnings or cut
    if kind.startswith("bomb-"):
        return "decompression limit" in warnings and record.get("usage_source") != "stream"
    if kind == "truncated-gzip":
        return record.get("usage_source") != "stream" and record.get("status") == "truncated"
    if kind == "undecodable-br":
        return "does not decode" in warnings and record.get("usage_source") != "stream"
    if kind in ("hostile-numbers", "hostile-request"):
        return bool(record.get("sanitized")) and record.get("status") == "completed"
    if kind == "two-response-ids":
        return "chatcmpl-first" in warnings and "chatcmpl-second" in warnings
    if kind == "endless-comments":
        return "no output for" in ended
    if kind == "past-deadline":
        return "deadline" in ended
    if kind == "sse-as-html":
        return "not metered" in warnings and record.get("usage") is None
    if kind.startswith("sse-error-"):
        return record.get("usage_source") != "estimate" and record.get("status") != "completed"
    raise ValueError(kind)


# --------------------------------------------------------------------------- the upstream


async def _cancel_all() -> None:
    """Cancel the loop's other tasks (idle pooled connections of the proxy) and wait for them."""
    tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


@dataclass
class HostileServed:
    kind: str
    #: Every byte written (kept whole: the largest is the 17 MiB line, hashed instead).
    written: bytes | None
    sha256: str
    length: int
    completed: bool


class Upstream:
    """An asyncio HTTP/1.1 server on 127.0.0.1 in a thread of its own: hostile answers for
    ``x-soak-hostile`` requests, every other request piped to ``replay_port`` (one request per
    connection: ``Connection: close`` both ways)."""

    def __init__(self, replay_port: int) -> None:
        self.replay_port = replay_port
        self.served: dict[str, HostileServed] = {}
        self.errors: list[str] = []
        self._bodies: dict[str, bytes] = {}
        self._lock = threading.Lock()
        self._count = 0
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._server: asyncio.AbstractServer | None = None
        self._thread = threading.Thread(target=self._run, name="soak-upstream", daemon=True)
        self.port = 0

    def body(self, kind: str) -> bytes:
        with self._lock:
            if kind not in self._bodies:
                self._bodies[kind] = ANSWERS[kind].body()
            return self._bodies[kind]

    def prepare(self) -> None:
        """Make every hostile body before the clock starts (bombs take a few seconds)."""
        for kind in ANSWERS:
            self.body(kind)

    @property
    def origin(self) -> str:
        return f"http://{HOST}:{self.port}"

    def __enter__(self) -> Self:
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("the soak upstream did not start")
        return self

    def __exit__(self, *exc: object) -> None:
        loop = self._loop
        if loop is not None:
            loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)

    def _run(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        self._server = loop.run_until_complete(asyncio.start_server(self._handle, HOST, 0))
        self.port = self._server.sockets[0].getsockname()[1]
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            self._server.close()
            loop.run_until_complete(_cancel_all())
            loop.close()

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            lines = head.split(b"\r\n")
            headers = {}
            for line in lines[1:]:
                if b":" in line:
                    name, _, value = line.partition(b":")
                    headers[name.strip().lower()] = value.strip()
            length = int(headers.get(b"content-length", b"0"))
            body = await asyncio.wait_for(reader.readexactly(length), 30)
            kind = headers.get(b"x-soak-hostile", b"").decode("latin-1")
            if kind:
                await self._hostile(kind, writer)
            else:
                await self._pipe(lines, body, reader, writer)
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError, ValueError) as exc:
            self.errors.append(type(exc).__name__)
        except asyncio.CancelledError:
            pass  # shutting down: an idle pooled connection of the proxy
        finally:
            writer.close()

    async def _pipe(
        self,
        lines: list[bytes],
        body: bytes,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
    ) -> None:
        """Relay to the replay server; when the proxy hangs up, hang up on the replay server at
        once (it notices during its pauses, so what it counts as sent is what was relayed)."""
        kept = [line for line in lines[1:] if line and not line.lower().startswith(b"connection:")]
        head = b"\r\n".join([lines[0], *kept, b"Connection: close", b"", b""])
        up_reader, up_writer = await asyncio.open_connection(HOST, self.replay_port)

        async def relay() -> None:
            up_writer.write(head + body)
            await up_writer.drain()
            answer_head = await up_reader.readuntil(b"\r\n\r\n")
            answer = answer_head.split(b"\r\n")
            kept = [h for h in answer[1:] if h and not h.lower().startswith(b"connection:")]
            writer.write(b"\r\n".join([answer[0], *kept, b"Connection: close", b"", b""]))
            while True:
                piece = await up_reader.read(65536)
                if not piece:
                    break
                writer.write(piece)
                await writer.drain()

        relaying = asyncio.ensure_future(relay())
        hangup = asyncio.ensure_future(self._client_gone(reader))
        try:
            await asyncio.wait([relaying, hangup], return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (relaying, hangup):
                task.cancel()
            await asyncio.gather(relaying, hangup, return_exceptions=True)
            up_writer.close()
            if relaying.done() and not relaying.cancelled() and relaying.exception():
                self.errors.append(type(relaying.exception()).__name__)

    @staticmethod
    async def _client_gone(reader: asyncio.StreamReader) -> None:
        """Returns when the proxy closed its end (one request per connection: anything more
        it sends is ignored)."""
        try:
            while await reader.read(1024):
                pass
        except OSError:
            pass

    async def _hostile(self, kind: str, writer: asyncio.StreamWriter) -> None:
        answer = ANSWERS[kind]
        with self._lock:
            self._count += 1
            rid = f"hostile-{self._count}"
        reason = {200: "OK", 429: "Too Many Requests", 500: "Internal Server Error"}
        head = [
            f"HTTP/1.1 {answer.status} {reason.get(answer.status, 'Error')}",
            f"Content-Type: {answer.content_type}",
            f"x-request-id: {rid}",
            "Connection: close",
        ]
        if answer.encoding:
            head.append(f"Content-Encoding: {answer.encoding}")
        data = self.body(kind)
        digest = hashlib.sha256()
        sent = bytearray() if answer.endless is not None else None
        length = 0
        completed = False
        try:
            writer.write(("\r\n".join(head) + "\r\n\r\n").encode())
            for i in range(0, len(data), 65536):
                piece = data[i : i + 65536]
                writer.write(piece)
                await writer.drain()
                digest.update(piece)
                length += len(piece)
            if answer.endless is not None and sent is not None:
                sent += data
                until = time.monotonic() + ENDLESS_CAP
                while time.monotonic() < until:
                    await asyncio.sleep(0.05)
                    writer.write(answer.endless)
                    await writer.drain()
                    sent += answer.endless
                    digest.update(answer.endless)
                    length += len(answer.endless)
            completed = answer.endless is None
        except OSError:
            pass
        finally:
            self.served[rid] = HostileServed(
                kind, None if sent is None else bytes(sent), digest.hexdigest(), length, completed
            )


# --------------------------------------------------------------------------- hostile requests


async def refused(port: int, kind: str) -> tuple[int | None, bool]:
    """Send a hostile request on a raw socket: (the status answered, the connection closed)."""
    if kind == "path-escape":
        request = (
            b"GET /v1/../../other HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Authorization: Bearer sk-soak-0123456789\r\n\r\n"
        )
    else:
        body = b'{"model":"gpt-4o-mini"}'
        smuggled = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n"
        request = (
            b"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Content-Type: application/json\r\nAuthorization: Bearer sk-soak-0123456789\r\n"
            b"Content-Length: " + str(len(body)).encode() + b"\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + hex(len(body))[2:].encode() + b"\r\n" + body + b"\r\n0\r\n\r\n" + smuggled
        )  # fmt: skip
    reader, writer = await asyncio.open_connection(HOST, port)
    try:
        writer.write(request)
        await writer.drain()
        received = b""
        closed = False
        try:
            while True:
                piece = await asyncio.wait_for(reader.read(65536), 10)
                if not piece:
                    closed = True
                    break
                received += piece
        except asyncio.TimeoutError:
            pass
        except OSError:
            closed = True
        status = None
        if received.startswith(b"HTTP/1."):
            status = int(received.split(b" ", 2)[1])
        # A smuggled second request must not be answered.
        if received.count(b"HTTP/1.") > 1:
            status = -1
        return status, closed
    finally:
        writer.close()


async def slowloris(port: int, until: float, results: list[tuple[float, bool]]) -> None:
    """Hold a connection open sending one header byte a second, reconnecting when the proxy
    closes it, until ``until``; ``results`` gets (seconds held, closed by the proxy) of each
    connection."""
    line = b"GET /v1/models HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: " + b"a" * 4096
    while time.monotonic() < until:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except OSError:
            await asyncio.sleep(1)
            continue
        start = time.monotonic()
        closed = False
        try:
            for byte in line:
                if time.monotonic() >= until:
                    break
                writer.write(bytes([byte]))
                await writer.drain()
                try:
                    piece = await asyncio.wait_for(reader.read(1024), 1.0)
                    if not piece or piece.startswith(b"HTTP/1."):
                        closed = True  # closed (or answered: 408) by the proxy
                        break
                except asyncio.TimeoutError:
                    pass
        except OSError:
            closed = True
        finally:
            results.append((time.monotonic() - start, closed))
            writer.close()
