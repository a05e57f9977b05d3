"""The soak's normal traffic (``soak.py``): the fault mix drawn per request, the clients that
stream through the proxy while the proxy's RSS is sampled, and what each stream looked like
to its client."""

from __future__ import annotations

import asyncio
import hashlib
import json
import random
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass

import httpx
import soak_hostile as hostile  # the script's own directory
from soak_proxy import HOST, rss_mb
from ssetally import UsageTap
from ssetally._replay import ReplayServer

#: How long a stalled upstream waits (far beyond the proxy's read timeout).
STALL_MS = 30_000

Headers = Callable[[random.Random], dict[str, str]]

#: (kind, weight, request headers): the fault mix, drawn per request.
FAULTS: list[tuple[str, int, Headers]] = [
    ("clean", 36, lambda r: {}),
    ("close-between-events", 7, lambda r: {"x-replay-cut-after-events": str(r.randint(0, 12))}),
    (
        "reset-between-events",
        6,
        lambda r: {"x-replay-cut-after-events": str(r.randint(0, 12)), "x-replay-reset": "1"},
    ),
    ("close-mid-event", 6, lambda r: {"x-replay-cut-mid-event": str(r.randint(0, 12))}),
    (
        "reset-mid-event",
        5,
        lambda r: {"x-replay-cut-mid-event": str(r.randint(0, 12)), "x-replay-reset": "1"},
    ),
    ("close-before-headers", 2, lambda r: {"x-replay-drop": "1"}),
    ("reset-before-headers", 2, lambda r: {"x-replay-drop": "1", "x-replay-reset": "1"}),
    ("truncated-json", 5, lambda r: {"x-replay-malformed": str(r.randint(0, 8))}),
    ("error-event", 4, lambda r: {"x-replay-error-event": str(r.randint(1, 8))}),
    ("slow", 6, lambda r: {"x-replay-delay-ms": str(r.randint(5, 30))}),
    ("byte-by-byte", 3, lambda r: {"x-replay-trickle": "1"}),
    ("stall-mid-stream", 2, lambda r: {"x-replay-delay-ms": str(STALL_MS)}),
    ("stall-before-headers", 1, lambda r: {"x-replay-first-byte-ms": str(STALL_MS)}),
    ("html-200", 3, lambda r: {"x-replay-status": "200", "x-replay-html": "1"}),
    ("http-429", 1, lambda r: {"x-replay-status": "429"}),
    ("http-500", 1, lambda r: {"x-replay-status": "500"}),
]
#: Faults answered by a fixed page instead of a stream: compared with a direct fetch.
PAGE_FAULTS = ("html-200", "http-429", "http-500")
PAGE_STATUS = {"html-200": 200, "http-429": 429, "http-500": 500}
BODY = {
    "model": "gpt-4o-mini",
    "stream": True,
    "messages": [{"role": "user", "content": "soak"}],
}


@dataclass
class Stream:
    """One stream as a client saw it."""

    fault: str
    #: HTTP status, or None when no answer came.
    status: int | None = None
    #: The upstream's ``x-request-id`` relayed by the proxy (None for the proxy's own errors).
    request_id: str | None = None
    error: str | None = None
    received: int = 0
    sha256: str = ""
    #: The status of the received bytes (``UsageTap``), for event streams.
    tap_status: str | None = None
    event_stream: bool = False
    #: The hostile kind (``soak_hostile.MIX``), None for the normal traffic.
    hostile: str | None = None
    #: For a hostile request: the status answered and whether the connection was closed.
    refused: tuple[int | None, bool] | None = None
    #: The body received, kept for endless hostile answers (compared as a prefix).
    data: bytes | None = None


async def one_stream(
    client: httpx.AsyncClient,
    url: str,
    fault: str,
    headers: dict[str, str],
    kind: str | None = None,
) -> Stream:
    out = Stream(fault, hostile=kind)
    digest = hashlib.sha256()
    keep = kind is not None and hostile.ANSWERS[kind].endless is not None
    data = bytearray()
    body = json.dumps(BODY).encode() if kind is None else hostile.hostile_body(kind)
    if kind is not None:
        headers = {**headers, "x-soak-hostile": kind, "Content-Type": "application/json"}
    else:
        headers = {**headers, "Content-Type": "application/json"}
    try:
        async with client.stream("POST", url, content=body, headers=headers) as response:
            out.status = response.status_code
            out.request_id = response.headers.get("x-request-id")
            out.event_stream = "text/event-stream" in response.headers.get("content-type", "")
            tap = UsageTap() if out.event_stream and kind is None else None
            try:
                async for chunk in response.aiter_raw():
                    digest.update(chunk)
                    out.received += len(chunk)
                    if keep:
                        data += chunk
                    if tap is not None:
                        tap.feed(chunk)
            except httpx.HTTPError as exc:
                out.error = type(exc).__name__
            if tap is not None:
                out.tap_status = tap.finish().status
    except httpx.HTTPError as exc:
        out.error = type(exc).__name__
    out.sha256 = digest.hexdigest()
    out.data = bytes(data) if keep else None
    return out


async def run_clients(
    port: int,
    proxy_pid: int,
    seconds: float,
    concurrency: int,
    sample_every: float,
    warmup: float,
    seed: int,
    hostile_share: float = 0.0,
    slowloris: int = 0,
) -> tuple[list[Stream], list[tuple[float, float, int]], list[tuple[float, bool]]]:
    """Stream for ``warmup`` + ``seconds``; RSS samples (time, MB, streams done) are taken
    after the warm-up (lazy loading, such as the tokenizer of the first estimate, is done)."""
    url = f"http://{HOST}:{port}/v1/chat/completions"
    kinds = [k for k, _, _ in FAULTS]
    weights = [w for _, w, _ in FAULTS]
    makers = {k: make for k, _, make in FAULTS}
    streams: list[Stream] = []
    samples: list[tuple[float, float, int]] = []
    start = time.monotonic()
    deadline = start + warmup + seconds
    timeout = httpx.Timeout(30.0, read=20.0)
    # Pooled connections expire before the proxy's 5 s keep-alive timeout closes them (else a
    # request can race the close and never reach the proxy).
    limits = httpx.Limits(
        max_connections=concurrency, max_keepalive_connections=concurrency, keepalive_expiry=2.0
    )

    hostile_kinds = [k for k, _ in hostile.MIX]
    hostile_weights = [w for _, w in hostile.MIX]
    held: list[tuple[float, bool]] = []

    async def client_loop(index: int, client: httpx.AsyncClient) -> None:
        rng = random.Random(seed * 1_000_003 + index)
        while time.monotonic() < deadline:
            auth = {"Authorization": "Bearer sk-soak-0123456789"}
            if rng.random() < hostile_share:
                kind = rng.choices(hostile_kinds, hostile_weights)[0]
                if kind in hostile.REQUESTS:
                    got = await hostile.refused(port, kind)
                    streams.append(Stream(kind, status=got[0], hostile=kind, refused=got))
                else:
                    streams.append(await one_stream(client, url, kind, auth, kind))
                continue
            fault = rng.choices(kinds, weights)[0]
            streams.append(await one_stream(client, url, fault, {**auth, **makers[fault](rng)}))

    async def sampler() -> None:
        await asyncio.sleep(warmup)
        while True:
            value = rss_mb(proxy_pid)
            if value is not None:
                samples.append((time.monotonic() - start, value, len(streams)))
            await asyncio.sleep(sample_every)

    async with httpx.AsyncClient(timeout=timeout, limits=limits, trust_env=False) as client:
        sampling = asyncio.ensure_future(sampler())
        tasks = [asyncio.ensure_future(client_loop(i, client)) for i in range(concurrency)]
        tasks += [
            asyncio.ensure_future(hostile.slowloris(port, deadline, held)) for _ in range(slowloris)
        ]
        # Streams started before the deadline finish (each is bounded by the timeouts).
        _, pending = await asyncio.wait(tasks, timeout=warmup + seconds + 90)
        for task in pending:
            task.cancel()
        sampling.cancel()
        value = rss_mb(proxy_pid)
        if value is not None:
            samples.append((time.monotonic() - start, value, len(streams)))
    if pending:
        print(f"{len(pending)} clients did not finish in time", file=sys.stderr)
    return streams, samples, held


def reference_pages(upstream: ReplayServer) -> dict[str, tuple[int, str]]:
    """(length, SHA-256) of the fixed pages, fetched straight from the upstream."""
    out = {}
    rng = random.Random(0)
    makers = {k: make for k, _, make in FAULTS}
    with httpx.Client(timeout=10.0, trust_env=False) as client:
        for fault in PAGE_FAULTS:
            headers = {"Authorization": "Bearer sk-soak-0123456789", **makers[fault](rng)}
            body = client.post(upstream.url + "/chat/completions", json=BODY, headers=headers)
            out[fault] = (len(body.content), hashlib.sha256(body.content).hexdigest())
    return out
