"""``read_body``, the proxy's request-body reader: the parts within its timeout (its own
timer, as ``asyncio.timeout`` would), ``TimeoutError`` past it, a cancellation from
elsewhere passed on as a cancellation, the budget and the size limit."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from ssetally._gateway._guard import Refused, read_body


def receiver(*messages: dict[str, Any], then_wait: bool = False) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if then_wait:
            await asyncio.Event().wait()  # a client that never sends the rest
        return {"type": "http.disconnect"}

    return receive


def body(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


async def test_the_parts_within_the_timeout() -> None:
    got = await read_body(receiver(body(b"ab", True), body(b"c")), 3, 100, 5.0, lambda n: True)
    assert got == [b"ab", b"c"]
    await asyncio.sleep(0)  # no cancellation is left pending on the task
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]


async def test_past_the_timeout_a_timeout_error() -> None:
    receive = receiver(body(b"ab", True), then_wait=True)
    with pytest.raises(asyncio.TimeoutError):
        await read_body(receive, 10, 100, 0.05, lambda n: True)
    assert asyncio.current_task().cancelling() == 0  # type: ignore[union-attr]
    await asyncio.sleep(0.1)  # and the task goes on, not cancelled later


async def test_a_cancellation_from_elsewhere_stays_a_cancellation() -> None:
    async def reader() -> Any:
        return await read_body(receiver(then_wait=True), 0, 100, 5.0, lambda n: True)

    task = asyncio.ensure_future(reader())
    await asyncio.sleep(0.01)
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


@pytest.mark.parametrize(("size", "status"), [(101, 413), (50, 503)])
async def test_the_limit_and_the_budget(size: int, status: int) -> None:
    with pytest.raises(Refused) as refused:
        await read_body(receiver(body(b"x" * size)), 0, 100, 5.0, lambda n: n < 40)
    assert refused.value.status == status


async def test_a_client_gone_is_none() -> None:
    assert await read_body(receiver(), 0, 100, 5.0, lambda n: True) is None
