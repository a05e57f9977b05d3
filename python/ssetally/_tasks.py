"""The background tasks of an async front-end (its fallbacks, awaitable callbacks): started
on the running loop, kept alive until done, waited for, drained or cancelled at close."""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any


class TaskSet:
    """Tasks of one front-end. The loop keeps only weak references to its tasks: this set
    holds each one until it is done."""

    def __init__(self) -> None:
        self._tasks: set[asyncio.Task[None]] = set()

    def pending(self) -> list[asyncio.Task[None]]:
        """The tasks not done yet."""
        return [t for t in self._tasks if not t.done()]

    def start(self, coro: Coroutine[Any, Any, None]) -> bool:
        """Run ``coro`` as a task on the running loop; False (and ``coro`` closed, never to
        run) when there is none."""
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            coro.close()
            return False
        task = loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)
        return True

    async def wait(self, timeout: float | None = None) -> bool:
        """Wait (at most ``timeout`` seconds) for the tasks; True when none is left."""
        pending = self.pending()
        if not pending:
            return True
        _, still = await asyncio.wait(pending, timeout=timeout)
        return not still

    async def drain(self) -> None:
        """Wait for every task, those started meanwhile too; their errors stay theirs."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel(self, timeout: float) -> None:
        """Cancel the tasks not done and give them ``timeout`` seconds to unwind."""
        pending = self.pending()
        for task in pending:
            task.cancel()
        if pending:
            await asyncio.wait(pending, timeout=timeout)
