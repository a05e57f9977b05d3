"""Running a finished stream's fallbacks: the pipeline's only I/O, as sync and async twins."""

from __future__ import annotations

from typing import Any

import anyio.to_thread

from .._report import StreamReport
from ._fallback import Plan
from ._meter import StreamMeter
from ._retrieval import RetrievalPolicy, aretrieve, retrieve


def run_fallbacks(
    meter: StreamMeter, report: StreamReport, plan: Plan, client: Any, policy: RetrievalPolicy
) -> StreamReport:
    """The final report of ``meter``: the planned retrieval through ``client`` (anything with
    a sync ``get``), then ``meter.complete``. Never raises."""
    retrieved = None if plan.retrieval is None else retrieve(client, *plan.retrieval, policy)
    return meter.complete(report, plan, retrieved)


async def arun_fallbacks(
    meter: StreamMeter,
    report: StreamReport,
    plan: Plan,
    client: Any,
    policy: RetrievalPolicy,
    *,
    offload: bool = True,
) -> StreamReport:
    """Async twin of ``run_fallbacks``. With ``offload`` the estimate (CPU work) runs in a
    worker thread; without, inline, so that no await stands between a cancelled caller (whose
    every await would raise again) and its report."""
    retrieved = None
    if plan.retrieval is not None:
        retrieved = await aretrieve(client, *plan.retrieval, policy)
    if plan.estimate and offload:
        return await anyio.to_thread.run_sync(meter.complete, report, plan, retrieved)
    return meter.complete(report, plan, retrieved)
