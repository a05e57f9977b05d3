"""The proxy's own answers: the ASGI lifespan, and ``/metrics``: this process's registry, or
the sum over the workers of ``ssetally proxy --workers`` (prometheus-client's multiprocess
mode: each worker's values live in memory-mapped files under ``PROMETHEUS_MULTIPROC_DIR``;
the worker that answers sums them all, including those of workers that have exited)."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable, MutableMapping
from typing import Any

from ._metrics import ProxyMetrics

__all__ = ["MULTIPROC_ENV", "render_metrics", "run_lifespan", "serve_metrics"]

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]
Receive = Callable[[], Awaitable[Message]]

#: The environment variable naming the directory of the workers' metric files.
MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def render_metrics(metrics: ProxyMetrics) -> tuple[bytes, str]:
    """The exposition (summed over the workers when they share a metrics directory)."""
    directory = os.environ.get(MULTIPROC_ENV)
    if not directory:
        return metrics.render()
    metrics.flush()  # this worker's sink failures since the last look
    import prometheus_client
    from prometheus_client import multiprocess

    registry = prometheus_client.CollectorRegistry()
    multiprocess.MultiProcessCollector(registry, path=directory)  # type: ignore[no-untyped-call]
    return prometheus_client.generate_latest(registry), prometheus_client.CONTENT_TYPE_LATEST


async def serve_metrics(metrics: ProxyMetrics, send: Send) -> None:
    """Answer a ``GET /metrics``."""
    body, content_type = render_metrics(metrics)
    await send(
        {
            "type": "http.response.start",
            "status": 200,
            "headers": [
                (b"content-type", content_type.encode("latin-1")),
                (b"content-length", str(len(body)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": body})


async def run_lifespan(
    startup: Callable[[], Awaitable[None]],
    shutdown: Callable[[], Awaitable[None]],
    receive: Receive,
    send: Send,
) -> None:
    """Answer the ASGI lifespan messages: ``startup`` at start, ``shutdown`` at the end."""
    while True:
        message = await receive()
        if message["type"] == "lifespan.startup":
            try:
                await startup()
            except Exception as exc:  # noqa: BLE001 - reported to the server
                await send({"type": "lifespan.startup.failed", "message": str(exc)})
                return
            await send({"type": "lifespan.startup.complete"})
        elif message["type"] == "lifespan.shutdown":
            try:
                await shutdown()
            finally:
                await send({"type": "lifespan.shutdown.complete"})
            return
