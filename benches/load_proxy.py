"""Load test of the metering proxy (``ssetally proxy``): N concurrent streaming clients through
the proxy versus straight to the upstream. Loopback only (127.0.0.1), bounded in count and time.

    python benches/load_proxy.py                      # 200 clients x 2 streams, 100 events each
    python benches/load_proxy.py --clients 50 --events 40 --delay-ms 10

Three processes: the upstream (a small asyncio OpenAI-compatible Chat stream server, started
from this file with ``--role upstream``), the proxy (``python -m ssetally proxy``, with a JSONL
sink) and the clients (this process: asyncio, raw HTTP/1.1 over keep-alive sockets).

Every stream is ``--events`` content chunks, one every ``--delay-ms`` (a model streaming at
that pace), then a finish chunk, a usage chunk and ``[DONE]``, each in its own HTTP chunk and
TCP segment. The upstream stamps each event with ``"t": time.monotonic_ns()`` taken just before
writing it (CLOCK_MONOTONIC is the same clock in every process of the machine), and ends the
body with a comment ``: sha256=<hash of every byte it sent before>``.

What is measured, per phase (direct, then through the proxy, same concurrency and streams):

* **delivery latency per chunk**: client receive time of an event minus the upstream's
  stamp in it. It contains the kernel, both event loops' scheduling and, through the proxy, the
  proxy's work.
* **added latency per chunk** at percentile p: p-th percentile of the delivery latency through
  the proxy minus the same percentile direct. (Streams through the proxy and direct are
  different streams, so the comparison is of distributions, not of paired chunks.)
* **streams/s**: streams finished divided by the phase's wall time (paced by the upstream).
* **records**: JSONL lines the proxy wrote (after a graceful stop) versus streams run through
  it, and how many carry exactly the usage the upstream sent.
* **bytes altered**: streams whose received body does not hash to the upstream's hash (must be
  0), and the bytes compared.
* **proxy CPU**: CPU seconds the proxy process used in its phase (from /proc), per stream and
  as a share of one core.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import json
import os
import random
import re
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

HOST = "127.0.0.1"
START_TIMEOUT = 30.0
_T = re.compile(rb'"t":(\d+)')
_HASH = re.compile(rb": sha256=([0-9a-f]{64})\n\n$")


def _run(coro: Any) -> Any:
    """Run a coroutine on uvloop when it is installed (a lighter harness), else asyncio."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def _proxy_stack() -> str:
    """What uvicorn will pick in the proxy process (it takes httptools/uvloop if present)."""
    from importlib.util import find_spec

    parser = "httptools" if find_spec("httptools") else "h11"
    loop = "uvloop" if find_spec("uvloop") else "asyncio"
    pool = "httpx2" if find_spec("httpx2") else "httpx"
    return f"uvicorn ({parser}, {loop}), upstream pool {pool}"


def _loop_name() -> str:
    try:
        import uvloop  # noqa: F401
    except ImportError:
        return "asyncio"
    return "uvloop"


# --------------------------------------------------------------------------- the upstream


async def _serve_stream(
    writer: asyncio.StreamWriter, stream_id: str, events: int, delay: float
) -> None:
    head = (
        b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream; charset=utf-8\r\n"
        b"cache-control: no-cache\r\nx-request-id: req_" + stream_id.encode() + b"\r\n"
        b"transfer-encoding: chunked\r\n\r\n"
    )
    writer.write(head)
    digest = hashlib.sha256()
    prefix = (
        b'{"id":"' + stream_id.encode() + b'","object":"chat.completion.chunk","created":0,'
        b'"model":"bench-model","choices":[{"index":0,"delta":{"content":"'
    )

    def send(payload: bytes) -> None:
        data = b"data: " + payload + b"\n\n"
        digest.update(data)
        writer.write(b"%x\r\n%s\r\n" % (len(data), data))

    for i in range(events):
        if i:
            await asyncio.sleep(delay)
        send(prefix + b"tok%d " % i + b'"},"finish_reason":null}],"t":%d}' % time.monotonic_ns())
        await writer.drain()
    send(
        b'{"id":"' + stream_id.encode() + b'","object":"chat.completion.chunk","created":0,'
        b'"model":"bench-model","choices":[{"index":0,"delta":{},"finish_reason":"stop"}],'
        b'"t":%d}' % time.monotonic_ns()
    )
    usage = b'{"prompt_tokens":12,"completion_tokens":%d,"total_tokens":%d}' % (
        events,
        events + 12,
    )
    send(
        b'{"id":"' + stream_id.encode() + b'","object":"chat.completion.chunk","created":0,'
        b'"model":"bench-model","choices":[],"usage":' + usage + b',"t":%d}' % time.monotonic_ns()
    )
    done = b"data: [DONE]\n\n"
    digest.update(done)
    writer.write(b"%x\r\n%s\r\n" % (len(done), done))
    trailer = b": sha256=" + digest.hexdigest().encode() + b"\n\n"
    writer.write(b"%x\r\n%s\r\n0\r\n\r\n" % (len(trailer), trailer))
    await writer.drain()


async def _upstream_main(events: int, delay: float, max_seconds: float) -> None:
    counter = 0

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        nonlocal counter
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                count = events
                for line in head.split(b"\r\n"):
                    name, _, value = line.partition(b":")
                    name = name.strip().lower()
                    if name == b"content-length":
                        length = int(value)
                    elif name == b"x-bench-events":
                        count = int(value)
                if length:
                    await reader.readexactly(length)
                counter += 1
                await _serve_stream(writer, f"chatcmpl-{os.getpid()}-{counter}", count, delay)
        except (asyncio.IncompleteReadError, ConnectionError):
            pass
        finally:
            writer.close()

    server = await asyncio.start_server(handle, HOST, 0, backlog=4096)
    port = server.sockets[0].getsockname()[1]
    print(f"PORT {port}", flush=True)
    async with server:
        await asyncio.sleep(max_seconds)


# --------------------------------------------------------------------------- the clients


@dataclass
class Phase:
    name: str
    latencies_ns: list[int] = field(default_factory=list)
    streams: int = 0
    failed: int = 0
    altered: int = 0
    bytes_compared: int = 0
    wall_s: float = 0.0
    proxy_cpu_s: float | None = None
    proxy_sys_s: float | None = None
    proxy_wait_s: float | None = None


def _request(port: int, i: int, events: int | None = None) -> bytes:
    body = json.dumps(
        {
            "model": "bench-model",
            "stream": True,
            "messages": [{"role": "user", "content": f"question {i}"}],
        }
    ).encode()
    extra = b"" if events is None else b"x-bench-events: %d\r\n" % events
    return (
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: 127.0.0.1:%d\r\n"
        b"authorization: Bearer sk-bench-key\r\ncontent-type: application/json\r\n"
        b"%scontent-length: %d\r\n\r\n%s" % (port, extra, len(body), body)
    )


async def _one_stream(
    reader: asyncio.StreamReader,
    writer: asyncio.StreamWriter,
    request: bytes,
    phase: Phase,
) -> None:
    writer.write(request)
    head = await reader.readuntil(b"\r\n\r\n")
    if not head.startswith(b"HTTP/1.1 200") or b"chunked" not in head.lower():
        raise RuntimeError(f"unexpected answer {head[:200]!r}")
    body = bytearray()
    pending = bytearray()
    latencies = phase.latencies_ns
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";", 1)[0], 16)
        if size == 0:
            await reader.readuntil(b"\r\n")
            break
        data = await reader.readexactly(size + 2)
        now = time.monotonic_ns()
        chunk = data[:-2]
        body += chunk
        pending += chunk
        while True:
            end = pending.find(b"\n\n")
            if end < 0:
                break
            match = _T.search(pending, 0, end)
            if match:
                latencies.append(now - int(match.group(1)))
            del pending[: end + 2]
    match = _HASH.search(body)
    phase.streams += 1
    phase.bytes_compared += len(body)
    if match is None:
        phase.altered += 1
        return
    sent = body[: match.start()]
    if hashlib.sha256(sent).hexdigest().encode() != match.group(1):
        phase.altered += 1


async def _client(
    port: int, index: int, streams: int, phase: Phase, stagger: float, events: int | None
) -> None:
    await asyncio.sleep(stagger)
    reader, writer = await asyncio.open_connection(HOST, port)
    sock = writer.get_extra_info("socket")
    if sock is not None:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    try:
        for k in range(streams):
            try:
                request = _request(port, index * 1000 + k, events)
                await _one_stream(reader, writer, request, phase)
            except (OSError, RuntimeError, asyncio.IncompleteReadError, ValueError) as exc:
                phase.failed += 1
                print(f"stream failed: {type(exc).__name__}: {exc}", file=sys.stderr)
                return
    finally:
        writer.close()


def _runqueue_wait(pid: int) -> float | None:
    """Seconds the process has spent runnable but waiting for a CPU (Linux schedstat)."""
    try:
        return int(Path(f"/proc/{pid}/schedstat").read_text().split()[1]) / 1e9
    except (OSError, IndexError, ValueError):
        return None


def _cpu_seconds(pid: int) -> tuple[float, float] | None:
    """User and system CPU seconds of a process (Linux /proc)."""
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / ticks, int(fields[12]) / ticks


async def _run_phase(
    name: str,
    port: int,
    clients: int,
    streams: int,
    timeout: float,
    cpu_pid: int | None,
    events: int | None = None,
) -> Phase:
    phase = Phase(name)
    rng = random.Random(1)
    cpu0 = None if cpu_pid is None else _cpu_seconds(cpu_pid)
    wait0 = None if cpu_pid is None else _runqueue_wait(cpu_pid)
    start = time.monotonic()
    tasks = [
        asyncio.ensure_future(_client(port, i, streams, phase, rng.uniform(0, 0.2), events))
        for i in range(clients)
    ]
    done, pending = await asyncio.wait(tasks, timeout=timeout)
    for task in pending:
        task.cancel()
    if pending:
        await asyncio.wait(pending, timeout=5)
        print(f"{name}: {len(pending)} clients did not finish in {timeout}s", file=sys.stderr)
    phase.wall_s = time.monotonic() - start
    if cpu_pid is not None and cpu0 is not None:
        cpu1 = _cpu_seconds(cpu_pid)
        if cpu1 is not None:
            phase.proxy_cpu_s = (cpu1[0] - cpu0[0]) + (cpu1[1] - cpu0[1])
            phase.proxy_sys_s = cpu1[1] - cpu0[1]
        wait1 = _runqueue_wait(cpu_pid)
        if wait0 is not None and wait1 is not None:
            phase.proxy_wait_s = wait1 - wait0
    for task in done:
        if task.exception() is not None:
            phase.failed += 1
            print(f"client failed: {task.exception()!r}", file=sys.stderr)
    return phase


# --------------------------------------------------------------------------- processes


def _start(args: list[str], wait_port: int | None = None) -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen(args, stdout=subprocess.PIPE, text=True)
    if wait_port is None:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line.startswith("PORT "):
            proc.kill()
            raise RuntimeError(f"the upstream did not start: {line!r}")
        return proc, int(line.split()[1])
    deadline = time.monotonic() + START_TIMEOUT
    while True:
        try:
            socket.create_connection((HOST, wait_port), timeout=1).close()
            return proc, wait_port
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("the proxy did not start") from None
            time.sleep(0.05)


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT, timeout: float = 30.0) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind((HOST, 0))
        return int(s.getsockname()[1])


def _percentile(values: list[int], p: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(p / 100 * (len(ordered) - 1))))
    return ordered[k] / 1e6


def _summary(phase: Phase) -> dict[str, Any]:
    lat = phase.latencies_ns
    return {
        "streams": phase.streams,
        "failed": phase.failed,
        "wall_s": round(phase.wall_s, 3),
        "streams_per_s": round(phase.streams / phase.wall_s, 1) if phase.wall_s else None,
        "chunks": len(lat),
        "chunks_per_s": round(len(lat) / phase.wall_s) if phase.wall_s else None,
        "latency_ms": {
            "p50": round(_percentile(lat, 50), 3),
            "p90": round(_percentile(lat, 90), 3),
            "p99": round(_percentile(lat, 99), 3),
            "max": round(max(lat) / 1e6, 3) if lat else None,
            "mean": round(statistics.fmean(lat) / 1e6, 3) if lat else None,
        },
        "altered_streams": phase.altered,
        "bytes_compared": phase.bytes_compared,
        "proxy_cpu_s": None if phase.proxy_cpu_s is None else round(phase.proxy_cpu_s, 2),
        "proxy_system_cpu_s": None if phase.proxy_sys_s is None else round(phase.proxy_sys_s, 2),
        "proxy_runqueue_wait_s": None
        if phase.proxy_wait_s is None
        else round(phase.proxy_wait_s, 2),
    }


def _check_records(path: Path, expected: dict[int, int]) -> dict[str, Any]:
    """Compare the sink with the streams run: ``expected`` maps a stream length (events) to
    the number of streams of that length that went through the proxy."""
    lines = path.read_text("utf-8").splitlines() if path.exists() else []
    records = [json.loads(line) for line in lines]
    exact = sum(
        1
        for r in records
        if r.get("usage")
        and r["usage"].get("output_tokens") in expected
        and r["usage"].get("input_tokens") == 12
        and r["usage"].get("total_tokens") == r["usage"]["output_tokens"] + 12
        and r["usage"].get("source") == "stream"
        and r.get("status") == "completed"
    )
    runs = sum(expected.values())
    return {
        "records": len(records),
        "streams_through_proxy": runs,
        "records_with_exact_usage": exact,
        "lost_records": runs - len(records),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--role", choices=("bench", "upstream"), default="bench")
    parser.add_argument("--clients", type=int, default=200, help="concurrent streams")
    parser.add_argument("--streams-per-client", type=int, default=2)
    parser.add_argument("--events", type=int, default=100, help="content chunks per stream")
    parser.add_argument("--delay-ms", type=float, default=20.0, help="pause between chunks")
    parser.add_argument("--phase-timeout", type=float, default=120.0)
    parser.add_argument(
        "--warmup-events", type=int, default=5, help="chunks per warm-up stream (untimed)"
    )
    parser.add_argument("--max-seconds", type=float, default=600.0, help="upstream lifetime")
    parser.add_argument("--inject-usage", action="store_true", help="run the proxy with it")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    if not 1 <= args.clients <= 1000 or not 1 <= args.streams_per_client <= 100:
        parser.error("--clients must be 1..1000 and --streams-per-client 1..100")

    if args.role == "upstream":
        try:
            _run(_upstream_main(args.events, args.delay_ms / 1000, args.max_seconds))
        except KeyboardInterrupt:
            pass
        return 0

    here = Path(__file__).resolve()
    upstream, up_port = _start(
        [
            sys.executable,
            str(here),
            "--role",
            "upstream",
            "--events",
            str(args.events),
            "--delay-ms",
            str(args.delay_ms),
            "--max-seconds",
            str(args.max_seconds),
        ],
    )
    results: dict[str, Any] = {
        "clients": args.clients,
        "streams_per_client": args.streams_per_client,
        "events_per_stream": args.events,
        "delay_ms": args.delay_ms,
        "cpus": os.cpu_count(),
        "event_loop": _loop_name(),
        "proxy_stack": _proxy_stack(),
        "load_average_at_start": os.getloadavg()[0],
    }
    try:
        with tempfile.TemporaryDirectory() as tmp:
            sink = Path(tmp) / "usage.jsonl"
            proxy_port = _free_port()
            command = [
                sys.executable, "-m", "ssetally", "proxy",
                "--upstream", f"http://{HOST}:{up_port}", "--port", str(proxy_port),
                "--sink", f"jsonl:{sink}", "--no-estimate", "--no-retrieve", "--no-otel",
                "--log-level", "warning", "--instance-id", "load-test",
            ]  # fmt: skip
            if args.inject_usage:
                command.append("--inject-usage")
            proxy, _ = _start(command, wait_port=proxy_port)
            timeout, per_client = args.phase_timeout, args.streams_per_client
            try:
                warm = args.warmup_events
                # Warm-up (not timed): connections, pools and code paths of both routes.
                _run(_run_phase("warm-up", up_port, args.clients, 1, timeout, None, warm))
                warm_via = _run(
                    _run_phase("warm-up", proxy_port, args.clients, 1, timeout, None, warm)
                )
                direct = _run(
                    _run_phase("direct", up_port, args.clients, per_client, timeout, None)
                )
                via = _run(
                    _run_phase("proxy", proxy_port, args.clients, per_client, timeout, proxy.pid)
                )
            finally:
                _stop(proxy)  # graceful: the sink is flushed
            results["direct"] = _summary(direct)
            results["proxy"] = _summary(via)
            results["records"] = _check_records(
                sink,
                {args.events: via.streams + via.failed, warm: warm_via.streams + warm_via.failed},
            )
    finally:
        _stop(upstream)

    d, p = results["direct"]["latency_ms"], results["proxy"]["latency_ms"]
    results["added_latency_ms"] = {k: round(p[k] - d[k], 3) for k in ("p50", "p90", "p99")}
    cpu = results["proxy"]["proxy_cpu_s"]
    if cpu is not None:
        results["proxy"]["cpu_share_of_one_core"] = round(cpu / results["proxy"]["wall_s"], 3)
        results["proxy"]["cpu_us_per_chunk"] = round(
            cpu / max(1, results["proxy"]["chunks"]) * 1e6, 1
        )
    _print(results)
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n", encoding="utf-8")
    ok = (
        results["records"]["lost_records"] == 0
        and results["proxy"]["altered_streams"] == 0
        and results["proxy"]["failed"] == 0
        and results["direct"]["failed"] == 0
    )
    return 0 if ok else 1


def _print(r: dict[str, Any]) -> None:
    print(
        f"load test: {r['clients']} concurrent clients x {r['streams_per_client']} streams, "
        f"{r['events_per_stream']} chunks every {r['delay_ms']} ms, {r['cpus']} CPUs, loopback, "
        f"{r['event_loop']} (load average {r['load_average_at_start']:.2f} at start)"
    )
    print(f"proxy: {r['proxy_stack']}")
    print(f"{'':24}{'direct':>12}{'proxy':>12}{'added':>12}")
    for key in ("p50", "p90", "p99"):
        print(
            f"{'chunk latency ' + key + ' (ms)':24}{r['direct']['latency_ms'][key]:>12.3f}"
            f"{r['proxy']['latency_ms'][key]:>12.3f}{r['added_latency_ms'][key]:>12.3f}"
        )
    print(
        f"{'chunk latency max (ms)':24}{r['direct']['latency_ms']['max']:>12.3f}"
        f"{r['proxy']['latency_ms']['max']:>12.3f}"
    )
    for key, label in (
        ("streams", "streams"),
        ("failed", "failed streams"),
        ("streams_per_s", "streams/s"),
        ("chunks", "chunks timed"),
        ("chunks_per_s", "chunks/s"),
        ("altered_streams", "altered streams"),
    ):
        print(f"{label:24}{r['direct'][key]!s:>12}{r['proxy'][key]!s:>12}")
    rec = r["records"]
    print(
        f"records: {rec['records']} written for {rec['streams_through_proxy']} streams "
        f"(lost {rec['lost_records']}), {rec['records_with_exact_usage']} with exact usage"
    )
    print(
        f"bytes compared through the proxy: {r['proxy']['bytes_compared']}, "
        f"altered streams: {r['proxy']['altered_streams']}"
    )
    if r["proxy"].get("proxy_cpu_s") is not None:
        print(
            f"proxy CPU: {r['proxy']['proxy_cpu_s']} s "
            f"({r['proxy']['cpu_share_of_one_core']:.0%} of one core, "
            f"{r['proxy']['cpu_us_per_chunk']} us per chunk, "
            f"{r['proxy']['proxy_system_cpu_s']} s of it in the kernel); it waited "
            f"{r['proxy']['proxy_runqueue_wait_s']} s for a CPU (run queue)"
        )
    print(json.dumps(r))


if __name__ == "__main__":
    sys.exit(main())
