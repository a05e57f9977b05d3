"""The mock upstream of the gateway benchmark: an OpenAI-compatible Chat Completions stream
server on an asyncio protocol (uvloop when installed), 127.0.0.1 only, bounded in time.

    python benches/gateway_upstream.py --events 64 --delay-ms 20     # prints "PORT <n>"

Every ``POST`` is answered with one stream (HTTP/1.1 keep-alive, chunked, one event per HTTP
chunk and TCP segment): ``--events`` content chunks of about ``--chunk-bytes`` bytes each, one
every ``--delay-ms`` (the first at once), then a finish chunk, the usage chunk when the request
asked for it (``"stream_options": {"include_usage": true}``), ``data: [DONE]`` and a closing
comment ``: sha256=<hex>``. Each content chunk carries its send stamp in its text,
``"content":"tok<i>@<CLOCK_MONOTONIC ns> "``, taken just before it is written (the same clock in
every process of the machine; in the text, so that a proxy that re-encodes chunks keeps it), so
a client computes the delivery delay of every chunk.

The hash is that of the body the *client* should receive: every byte before the comment,
without the usage chunk when the client's own request (header ``x-bench-usage: 0``) did not ask
for usage, since a proxy that injects the option must strip the added chunk. So byte fidelity
is checked per stream with no copy of the stream kept anywhere.

Stream ``n`` (counted from 1 in this process) has the id ``chatcmpl-bench-<pid>-<n>``, the
response header ``x-request-id: req-bench-<pid>-<n>`` and the usage
``prompt_tokens = usage_prompt(n)``, ``completion_tokens = events``: a client knows the exact
usage of every stream from its id, whether or not the usage chunk reached it.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import socket
import sys
import time
from typing import Any

HOST = "127.0.0.1"
#: Largest request head and body accepted (bytes): anything bigger closes the connection.
MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
#: Longest stream served (content chunks), whatever a request asks for.
MAX_EVENTS = 10_000


def usage_prompt(n: int) -> int:
    """The prompt tokens of stream ``n``: varies per stream, so a mixed-up record shows."""
    return 7 + n % 53


def stream_number(stream_id: bytes) -> int | None:
    """``n`` of ``chatcmpl-bench-<pid>-<n>``, None for any other id."""
    head, _, tail = stream_id.rpartition(b"-")
    if not head.startswith(b"chatcmpl-bench-") or not tail.isdigit():
        return None
    return int(tail)


class _Stream:
    """One answer being written on a connection."""

    __slots__ = ("client_usage", "digest", "events", "n", "prefix", "sent", "sid", "usage")

    def __init__(self, n: int, events: int, usage: bool, client_usage: bool) -> None:
        self.n = n
        self.sid = b"chatcmpl-bench-%d-%d" % (os.getpid(), n)
        self.events = events
        self.usage = usage
        self.client_usage = client_usage
        self.digest = hashlib.sha256()
        self.prefix = (
            b'{"id":"' + self.sid + b'","object":"chat.completion.chunk","created":1700000000,'
            b'"model":"bench-model","system_fingerprint":"fp_bench","choices":[{"index":0,'
            b'"delta":{"content":"'
        )
        self.sent = 0


class _Upstream(asyncio.Protocol):
    """One client connection: requests in, streams out, one at a time (HTTP/1.1)."""

    def __init__(self, server: _Server) -> None:
        self.server = server
        self.buf = bytearray()
        self.transport: Any = None
        self.busy = False

    def connection_made(self, transport: Any) -> None:
        self.transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    def connection_lost(self, exc: Exception | None) -> None:
        self.transport = None

    def data_received(self, data: bytes) -> None:
        self.buf += data
        if len(self.buf) > MAX_HEAD + MAX_BODY:
            self._close()
            return
        if not self.busy:
            self._maybe_request()

    def _close(self) -> None:
        if self.transport is not None:
            self.transport.close()

    def _maybe_request(self) -> None:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD:
                self._close()
            return
        length = 0
        events = self.server.events
        client_usage: bool | None = None
        for line in bytes(self.buf[:end]).split(b"\r\n")[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            try:
                if name == b"content-length":
                    length = int(value)
                elif name == b"x-bench-events":
                    events = max(1, min(MAX_EVENTS, int(value)))
                elif name == b"x-bench-usage":
                    client_usage = value.strip() == b"1"
            except ValueError:
                self._close()
                return
        if not 0 <= length <= MAX_BODY:
            self._close()
            return
        if len(self.buf) < end + 4 + length:
            return
        body = bytes(self.buf[end + 4 : end + 4 + length])
        del self.buf[: end + 4 + length]
        try:
            request = json.loads(body) if body else {}
            usage = bool((request.get("stream_options") or {}).get("include_usage"))
        except (ValueError, AttributeError):
            usage = False
        self.server.count += 1
        stream = _Stream(
            self.server.count, events, usage, usage if client_usage is None else client_usage
        )
        self.busy = True
        self.transport.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
            b"cache-control: no-cache\r\nx-request-id: req-bench-%d-%d\r\n"
            b"transfer-encoding: chunked\r\n\r\n" % (os.getpid(), self.server.count)
        )
        self._tick(stream, time.monotonic())

    def _send(self, stream: _Stream, data: bytes, counted: bool = True) -> None:
        if counted:
            stream.digest.update(data)
        self.transport.write(b"%x\r\n%s\r\n" % (len(data), data))

    def _tick(self, stream: _Stream, start: float) -> None:
        if self.transport is None:
            return
        server = self.server
        i = stream.sent
        if i < stream.events:
            self._send(
                stream,
                b"data: "
                + stream.prefix
                + b"tok%d@%d " % (i, time.monotonic_ns())
                + b'"},"logprobs":null,"finish_reason":null}],"obfuscation":"'
                + server.padding
                + b'"}\n\n',
            )
            stream.sent += 1
            server.loop.call_at(start + stream.sent * server.delay, self._tick, stream, start)
            return
        self._finish(stream)

    def _finish(self, stream: _Stream) -> None:
        sid = stream.sid
        head = b'data: {"id":"' + sid + b'","object":"chat.completion.chunk","created":1700000000,'
        head += b'"model":"bench-model","system_fingerprint":"fp_bench","choices":'
        self._send(
            stream,
            head + b'[{"index":0,"delta":{},"logprobs":null,"finish_reason":"stop"}]}\n\n',
        )
        if stream.usage:
            prompt = usage_prompt(stream.n)
            self._send(
                stream,
                head + b'[],"usage":{"prompt_tokens":%d,"completion_tokens":%d,'
                b'"total_tokens":%d}}\n\n' % (prompt, stream.events, prompt + stream.events),
                counted=stream.client_usage,
            )
        self._send(stream, b"data: [DONE]\n\n")
        trailer = b": sha256=" + stream.digest.hexdigest().encode() + b"\n\n"
        self.transport.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(trailer), trailer))
        self.busy = False
        if self.buf:
            self._maybe_request()


class _Server:
    def __init__(self, events: int, delay: float, chunk_bytes: int) -> None:
        self.events = events
        self.delay = delay
        self.count = 0
        self.loop = asyncio.get_running_loop()
        # A content event without padding is ~266 bytes; the rest is "obfuscation" text.
        self.padding = b"x" * max(0, chunk_bytes - 266)


async def _main(port: int, events: int, delay: float, chunk_bytes: int, seconds: float) -> None:
    state = _Server(events, delay, chunk_bytes)
    loop = asyncio.get_running_loop()
    server = await loop.create_server(lambda: _Upstream(state), HOST, port, backlog=4096)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    async with server:
        await asyncio.sleep(seconds)


def run(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed (a lighter harness), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--events", type=int, default=64, help="content chunks per stream")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="pause between chunks")
    parser.add_argument("--chunk-bytes", type=int, default=335, help="bytes per content event")
    parser.add_argument("--max-seconds", type=float, default=3600.0, help="lifetime")
    args = parser.parse_args(argv)
    if not 1 <= args.events <= MAX_EVENTS or not 0 <= args.delay_ms <= 10_000:
        parser.error(f"--events must be 1..{MAX_EVENTS} and --delay-ms 0..10000")
    try:
        run(
            _main(
                args.port,
                args.events,
                args.delay_ms / 1000,
                args.chunk_bytes,
                min(args.max_seconds, 24 * 3600.0),
            )
        )
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    sys.exit(main())
