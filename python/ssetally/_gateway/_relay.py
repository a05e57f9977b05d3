"""Relaying an answer's body to the client: coalesced sends, backpressure, disconnects."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, MutableMapping
from typing import Any, Callable

from ._record import Exchange

Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


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


async def watch_disconnect(receive: Receive, x: Exchange, task: asyncio.Task[Any] | None) -> None:
    """Cancel the relay when the client goes away (not when the relay has finished)."""
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            if x.outcome is None and task is not None:
                x.ended_by = "client disconnected"
                task.cancel()
            return
