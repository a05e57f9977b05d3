"""Relaying an answer's body to the client: straight from the upstream protocol into
uvicorn's transport, or by coalesced sends; backpressure, disconnects, the idle timer and
deadline of a stream."""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any, NamedTuple

from .._core import BodyRelay, UsageChunkStripper
from .._metering import JsonCapture, StreamMeter
from .._tap import UsageTap
from ._guard import CLIENT_LOST, on_client_lost
from ._record import Exchange
from ._upstream import UpstreamResponse

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


class Metering(NamedTuple):
    """What the relay gives each chunk: ``feed`` returns the bytes to pass on (None: the
    chunk itself, as the native tap does); should it raise, ``failed(exc)`` is told, the
    chunk passes on and nothing more is fed. ``native``: what ``feed`` does, for the native
    relay to call itself (``StreamMeter.relay_native``)."""

    feed: Callable[[bytes], bytes | None]
    failed: Callable[[BaseException], None]
    native: UsageTap | tuple[UsageChunkStripper, UsageTap] | None = None


def _no_fault(exc: BaseException) -> None:
    return None


def metering_of(meter: StreamMeter | JsonCapture | None) -> Metering | None:
    """What the relay gives each chunk for ``meter``: one native call where it can
    (``StreamMeter.relay_feed``), else the meter's ``feed``; a JSON answer's capture; None for
    an answer not metered."""
    if isinstance(meter, StreamMeter):
        return Metering(meter.relay_feed(), meter.relay_failed, meter.relay_native())
    if meter is not None:
        return Metering(meter.passing, _no_fault)
    return None


def _meter(metering: Metering | None, chunk: bytes) -> tuple[bytes, Metering | None]:
    """``chunk`` through ``metering``: what to pass on, and the metering still running."""
    if metering is None:
        return chunk, None
    try:
        out = metering.feed(chunk)
    except Exception as exc:  # noqa: BLE001 - metering never breaks the stream
        metering.failed(exc)
        return chunk, None
    return (chunk if out is None else out), metering


class Sender:
    """Relays body chunks to the client from a task of its own, so that chunks the upstream
    delivered together (already read while the previous send was under way) leave in one
    write: no chunk waits for a later one, and a loaded proxy makes fewer system calls."""

    #: Bytes waiting for the client beyond which the upstream is not read (backpressure).
    HIGH_WATER = 1024 * 1024

    def __init__(self, send: Send) -> None:
        self._send = send
        self._parts: list[bytes] = []
        self._size = 0
        self._wake = asyncio.Event()
        self._room = asyncio.Event()
        self._room.set()
        self._done = False
        self._task = asyncio.ensure_future(self._run())

    def put(self, data: bytes) -> bool:
        """Queue ``data``; True when the caller should ``await room()`` before more."""
        self._parts.append(data)
        self._size += len(data)
        self._wake.set()
        if self._size < self.HIGH_WATER:
            return False
        self._room.clear()
        return True

    async def room(self) -> None:
        """Wait until the queued bytes went below the high-water mark."""
        await self._room.wait()

    async def _run(self) -> None:
        send = self._send
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._parts:
                parts, self._parts, self._size = self._parts, [], 0
                self._room.set()
                body = parts[0] if len(parts) == 1 else b"".join(parts)
                await send({"type": "http.response.body", "body": body, "more_body": True})
            if self._done and not self._parts:
                return

    async def drain(self) -> None:
        """Send what is queued and stop the task."""
        self._done = True
        self._wake.set()
        await self._task

    def cancel(self) -> None:
        """Drop what is queued (the client is gone)."""
        self._task.cancel()


def client_gone(x: Exchange, task: asyncio.Task[Any] | None) -> None:
    """The client went away: cancel the relay (not when the relay has finished)."""
    if x.outcome is None and task is not None:
        x.ended_by = "client disconnected"
        task.cancel()


class Watch(NamedTuple):
    """How the relay learns that its client went away: a task reading ``receive()``, or
    the callback the proxy's own protocol calls on ``cycle`` (``on_client_lost``)."""

    task: asyncio.Future[Any] | None
    cycle: Any

    def cancel(self) -> None:
        """The relay ended: no more watching."""
        if self.task is not None:
            self.task.cancel()
        else:
            setattr(self.cycle, CLIENT_LOST, None)


def watch_client(
    x: Exchange, task: asyncio.Task[Any] | None, cycle: Any, receive: Receive
) -> Watch:
    """Have ``client_gone`` called when the client goes away: by the protocol's callback for
    a ``direct_cycle`` of the proxy's own server (no task per stream), else by a task."""
    if cycle is not None and on_client_lost(cycle, lambda: client_gone(x, task)):
        return Watch(None, cycle)
    return Watch(asyncio.ensure_future(watch_disconnect(receive, x, task)), None)


async def watch_disconnect(receive: Receive, x: Exchange, task: asyncio.Task[Any] | None) -> None:
    """``client_gone`` once ``receive()`` says the client went away (where the server's
    protocol cannot call back, ``on_client_lost``)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            client_gone(x, task)
            return


class Watchdog:
    """Cuts a stream that goes ``idle`` seconds without an output-bearing event (comments and
    pings do not count: they can keep a connection alive forever) or streams past
    ``deadline`` seconds. One timer per stream, re-armed only when it fires."""

    __slots__ = ("_deadline", "_handle", "_idle", "_meter", "_start", "_task", "_x")

    def __init__(
        self,
        x: Exchange,
        meter: object,
        task: asyncio.Task[Any] | None,
        idle: float | None,
        deadline: float | None,
    ) -> None:
        self._x = x
        self._meter = meter if isinstance(meter, StreamMeter) else None
        self._task = task
        self._idle = idle if self._meter is not None else None
        self._deadline = deadline
        self._start = time.monotonic()
        self._handle: asyncio.TimerHandle | None = None
        if task is not None and (self._idle is not None or deadline is not None):
            self._schedule(self._start)

    def _schedule(self, last: float) -> None:
        times = []
        if self._idle is not None:
            times.append(last + self._idle)
        if self._deadline is not None:
            times.append(self._start + self._deadline)
        delay = max(0.0, min(times) - time.monotonic())
        self._handle = asyncio.get_running_loop().call_later(delay, self._check)

    def _check(self) -> None:
        now = time.monotonic()
        meter = self._meter
        last = self._start
        if meter is not None and meter.last_content is not None:
            last = max(last, meter.last_content)
        if self._deadline is not None and now >= self._start + self._deadline:
            self._cut(f"cut by the proxy: the stream deadline of {self._deadline:g}s passed")
        elif self._idle is not None and now >= last + self._idle:
            self._cut(f"cut by the proxy: no output for {self._idle:g}s")
        else:
            self._schedule(last)

    def _cut(self, why: str) -> None:
        self._x.timed_out = why
        if self._task is not None:
            self._task.cancel()

    def cancel(self) -> None:
        """The stream ended: no more checks."""
        if self._handle is not None:
            self._handle.cancel()


async def pump_lean(
    x: Exchange, metering: Metering | None, response: UpstreamResponse, send: Send
) -> None:
    """Relay an answer read by the lean client; ``feed`` (the meter) reads the very bytes
    that are forwarded. Each send takes every byte received since the previous one: writes
    are coalesced only while the client is slower than the upstream (its send waits on the
    transport's buffer), and the upstream is not read past a bound meanwhile."""
    read = response.read
    while True:
        chunk = await read()
        if not chunk:
            break
        x.upstream_bytes += len(chunk)
        out, metering = _meter(metering, chunk)
        if out:
            x.client_bytes += len(out)
            await send({"type": "http.response.body", "body": out, "more_body": True})
    x.ended_by = "eof"


#: The module of the ASGI server whose connection ``pump_direct`` can write to itself.
_HTTPTOOLS_CYCLE = "uvicorn.protocols.http.httptools_impl"


def direct_cycle(send: Send) -> Any:
    """uvicorn's httptools request cycle behind ``send`` when the answer can be written
    straight to the client's transport: a chunked answer already started, not to HEAD; None
    otherwise (another server, h11, a Content-Length answer), and ``send`` does it all."""
    cycle = getattr(send, "__self__", None)
    if cycle is None or type(cycle).__module__ != _HTTPTOOLS_CYCLE:
        return None
    if getattr(send, "__func__", None) is not getattr(type(cycle), "send", None):
        return None
    try:
        if (
            cycle.chunked_encoding is not True
            or cycle.response_complete
            or not cycle.response_started
            or cycle.scope["method"] == "HEAD"
            or cycle.transport is None
            or cycle.flow is None
        ):
            return None
    except (AttributeError, KeyError, TypeError):  # another uvicorn: let it send
        return None
    return cycle


async def pump_direct(
    x: Exchange, metering: Metering | None, response: UpstreamResponse, cycle: Any
) -> None:
    """Relay a lean-client answer from the upstream connection's ``data_received`` straight
    into the client's transport (chunked framing written here, the final chunk and keep-alive
    left to uvicorn): per chunk one parser callback, the meter's ``feed`` and one write, no
    task wake-up and no ASGI message. The task only waits for the end, a failure, or a
    congested client (the upstream is not read while uvicorn's flow control is paused).
    The per-chunk work is one native call (``BodyRelay``)."""
    conn = response.connection
    transport = cycle.transport
    relay = BodyRelay(transport.write, transport.is_closing, cycle.flow, *(metering or ()))
    first = conn.divert(relay)
    try:
        if first:
            relay(first)
        while True:
            await conn.settle()
            if conn.paused:
                if cycle.flow.write_paused and not cycle.disconnected:
                    await cycle.flow.drain()
                conn.resume()
                continue
            if conn.error is not None:
                raise conn.error
            break
    finally:
        conn.divert(None)
        x.upstream_bytes += relay.upstream_bytes
        x.client_bytes += relay.client_bytes
    x.ended_by = "eof"


async def pump_stack(x: Exchange, metering: Metering | None, response: Any, send: Send) -> None:
    """Relay an httpx/httpx2 streamed answer, through a ``Sender``."""
    sender = Sender(send)
    try:
        async for chunk in response.aiter_raw():
            x.upstream_bytes += len(chunk)
            out, metering = _meter(metering, chunk)
            if out:
                x.client_bytes += len(out)
                if sender.put(out):
                    await sender.room()
    except asyncio.CancelledError:
        sender.cancel()
        raise
    except BaseException:
        await sender.drain()  # the client gets every byte the upstream sent, then the cut
        raise
    await sender.drain()
    x.ended_by = "eof"


class UpstreamAborted(Exception):
    """Raised to make the ASGI server drop the client connection, as the upstream did."""


class _QuietAbort(logging.Filter):
    """Keeps uvicorn from logging a traceback for a deliberate abort."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        return not isinstance(exc, UpstreamAborted)


quiet_abort = _QuietAbort()
