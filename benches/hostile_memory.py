"""Memory under hostile input: RSS growth of each native decoder against its limit.

Run: ``python benches/hostile_memory.py`` (a few minutes; needs the ``brotli`` and
``zstandard`` packages for those bombs, which are skipped without them; ``--only PREFIX``
runs the cases whose name starts with it).

Each case runs in a fresh subprocess, so RSS deltas are independent. A case builds its input
first, then measures the peak RSS (VmHWM, reset through /proc/PID/clear_refs where the kernel
allows, else sampled every MiB fed) while feeding it:

* a 200 MiB unterminated line, in one chunk, in 1 MiB chunks and in 1 KiB chunks of
  ``bytes``, in one ``memoryview``, and in one and in 1 MiB chunks of ``bytearray``, into
  ``SSEDecoder``, ``UsageTap``, ``LineDecoder`` and ``UsageChunkStripper`` (with
  ``max_event_size`` 1 MiB where the class takes it);
* 1 GiB of zeros compressed with every supported coding into ``ContentDecoder`` (default
  limits: 8 MiB per feed, 256 MiB total), in one chunk, in 64 KiB and in 256-byte chunks;
* end to end, with the metering's own defaults (16 MiB ``max_event_size``, 8 MiB per feed):
  ``MeteringTransport(include_usage=True)`` reading a Chat stream whose first line is 200 MiB
  long, and bombs of every coding, from a local server (the client process is measured); and
  the same through ``ssetally proxy --inject-usage`` in its own process (the proxy is
  measured).

A case passes when growth <= 2 x limit + 16 MiB, the limit being what the class may hold at
once (its event/line size, or the decoder's per-feed output; end to end, ``max_event_size``
for the line, the per-feed output plus an event for a compressed body, far below the 256 MiB
decompression budget). The stripper given one whole ``bytearray`` may also grow by the size
of what it returns (``bytes``: a copy of the forwarded bytearray, made once).
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

MiB = 1 << 20
LINE = 200 * MiB
BOMB = 1024 * MiB
EVENT_LIMIT = 1 * MiB
CONSTANT = 16 * MiB


#: The metering pipeline's defaults (``DEFAULT_MAX_EVENT_SIZE_BYTES``, ``MAX_OUTPUT_PER_FEED``).
PIPELINE_EVENT = 16 * MiB
PIPELINE_FEED = 8 * MiB


def _status(field: str, pid: str = "self") -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak(pid: str = "self") -> bool:
    try:
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _zlib(wbits: int) -> Callable[[Iterator[bytes]], bytes]:
    def encode(blocks: Iterator[bytes]) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return b"".join(c.compress(b) for b in blocks) + c.flush()

    return encode


def _brotli(blocks: Iterator[bytes]) -> bytes:
    import brotli  # type: ignore[import-untyped]

    c = brotli.Compressor(quality=5, lgwin=22)
    return bytes(b"".join(c.process(b) for b in blocks) + c.finish())


def _zstd(blocks: Iterator[bytes]) -> bytes:
    import zstandard

    c = zstandard.ZstdCompressor(level=3).compressobj()
    return b"".join(c.compress(b) for b in blocks) + c.flush()


BOMBS = {
    "gzip": ("gzip", _zlib(16 + zlib.MAX_WBITS)),
    "deflate-zlib": ("deflate", _zlib(zlib.MAX_WBITS)),
    "deflate-raw": ("deflate", _zlib(-zlib.MAX_WBITS)),
    "br": ("br", _brotli),
    "zstd": ("zstd", _zstd),
}


def _line_target(cls_name: str) -> tuple[Callable[[bytes], object], int]:
    from ssetally import _core

    cls = getattr(_core, cls_name)
    if cls_name == "LineDecoder":
        obj = cls(max_line_size=EVENT_LIMIT)
    elif cls_name == "UsageChunkStripper":
        try:
            obj = cls(max_event_size=EVENT_LIMIT)
        except TypeError:  # no limit on this version: judged against the default
            obj = cls()
            return _swallow(obj.feed), _core.DEFAULT_MAX_EVENT_SIZE_BYTES
    else:
        obj = cls(max_event_size=EVENT_LIMIT)
    return _swallow(obj.feed), EVENT_LIMIT


def _swallow(feed: Callable[[bytes], object]) -> Callable[[bytes], object]:
    def call(chunk: bytes) -> object:
        try:
            return feed(chunk)
        except ValueError:  # EventTooLargeError, DecompressionBombError
            return None

    return call


STEPS = {"one": 0, "1MiB": MiB, "1KiB": 1 << 10, "64KiB": 64 << 10, "256B": 256}


def _bomb_body(name: str) -> bytes:
    """The bomb of coding ``name``, made once per run (``$HOSTILE_BOMBS`` is its directory)."""
    path = Path(os.environ["HOSTILE_BOMBS"]) / name
    if not path.exists():
        _header, encoder = BOMBS[name]
        zeros = bytes(MiB)
        path.write_bytes(encoder(zeros for _ in range(BOMB // MiB)))
    return path.read_bytes()


def _measured(
    chunks: Iterator[Any], feed: Callable[[Any], object], pid: str = "self"
) -> tuple[int, float, bool]:
    """Feed every chunk; (peak RSS growth of ``pid``, seconds, whether the peak is exact)."""
    base = _status("VmRSS", pid)
    exact = _reset_peak(pid)
    sampled = base
    fed = next_sample = 0
    start = time.perf_counter()
    for chunk in chunks:
        feed(chunk)
        fed += len(chunk)
        if fed >= next_sample:  # sampling is a read of /proc: once a MiB
            sampled = max(sampled, _status("VmRSS", pid))
            next_sample = fed + MiB
    elapsed = time.perf_counter() - start
    peak = _status("VmHWM", pid) if exact else max(sampled, _status("VmRSS", pid))
    return max(0, peak - base), elapsed, exact


def _slices(data: bytes, step: int, container: str = "") -> Iterator[Any]:
    """``data`` in ``step``-byte chunks (0: whole), as ``bytes`` (what HTTP libraries yield)
    or, with ``container``, as ``memoryview`` slices or ``bytearray`` chunks (a whole
    ``bytearray`` is made before the measure starts)."""
    step = step or len(data)
    if container == "memoryview":
        whole = memoryview(data)
        return (whole[i : i + step] for i in range(0, len(data), step))
    if container == "bytearray":
        if step >= len(data):
            return iter([bytearray(data)])
        return (bytearray(data[i : i + step]) for i in range(0, len(data), step))
    if step >= len(data):
        return iter([data])
    return (data[i : i + step] for i in range(0, len(data), step))


def run_case(case: str) -> dict[str, object]:
    kind, target, how = case.split(":")
    if kind in ("transport", "proxy"):
        return run_end_to_end(kind, target)
    if kind == "line":
        feed, limit = _line_target(target)
        prefix = b"data: " if target != "LineDecoder" else b""
        data = prefix + b"x" * LINE
    else:
        from ssetally._core import ContentDecoder

        data = _bomb_body(target)
        dec = ContentDecoder(BOMBS[target][0])
        feed, limit = _swallow(dec.feed), dec.max_output_per_feed
    step, _, container = how.partition("-")
    chunks = _slices(data, STEPS[step], container)
    if step == "one":
        chunks = iter(list(chunks))  # the one chunk exists before the measure
    growth, elapsed, exact = _measured(chunks, feed)
    result = {"growth": growth, "limit": limit, "seconds": elapsed, "exact": exact}
    if target == "UsageChunkStripper" and step == "one" and container == "bytearray":
        # It returns ``bytes``: what it forwards of a bytearray is copied once, inherently.
        result["output"] = len(data)
    return result


# --------------------------------------------------------------------------- end to end

CHAT = {"model": "gpt-4o-mini", "stream": True, "messages": [{"role": "user", "content": "Hi"}]}
TAIL = (
    b'data: {"id":"c","object":"chat.completion.chunk","created":1,"model":"m","choices":[],'
    b'"usage":{"prompt_tokens":1,"completion_tokens":2,"total_tokens":3}}\n\ndata: [DONE]\n\n'
)


class _Upstream:
    """A local server answering every POST with the hostile body: the 200 MiB line (written
    from one 1 MiB block, never held whole) or a bomb read from its file."""

    def __init__(self, target: str) -> None:
        body = None if target == "line" else _bomb_body(target.removeprefix("bomb-"))
        encoding = None if body is None else BOMBS[target.removeprefix("bomb-")][0]

        class H(http.server.BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                self.rfile.read(int(self.headers.get("content-length") or 0))
                self.send_response(200)
                self.send_header("Content-Type", "text/event-stream")
                if encoding:
                    self.send_header("Content-Encoding", encoding)
                self.end_headers()
                try:
                    if body is not None:
                        self.wfile.write(body)
                        return
                    block = b"x" * MiB
                    self.wfile.write(b"data: ")
                    for _ in range(LINE // MiB):
                        self.wfile.write(block)
                    self.wfile.write(b"\n\n" + TAIL)
                except OSError:
                    pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), H)
        self.server.daemon_threads = True
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.origin = f"http://127.0.0.1:{self.server.server_address[1]}"


def _limit_of(target: str) -> int:
    """The limit a case is judged by: ``max_event_size`` for the line (the stripper and the
    tap each hold at most that); for a bomb, one feed's output and the event the tap holds."""
    return PIPELINE_EVENT if target == "line" else PIPELINE_FEED + PIPELINE_EVENT


def _read_all(url: str, client: Any) -> int:
    got = 0
    with client.stream("POST", url, json=CHAT) as response:
        for piece in response.iter_raw():
            got += len(piece)
    return got


PROXY = """
import json, sys
from ssetally._gateway import ProxyConfig, serve_proxy
o = json.loads(sys.argv[1])
# No estimate: its tokenizer, loaded on first use, is not a buffer of the pipeline.
serve_proxy(ProxyConfig(upstream=o["upstream"], inject_usage=True, estimate=False, otel=False),
            host="127.0.0.1", port=o["port"], sink=o["sink"], log_level="error", http="h11")
"""


def run_end_to_end(kind: str, target: str) -> dict[str, object]:
    import httpx
    from ssetally import MeteringTransport

    upstream = _Upstream(target)
    reports: list[Any] = []
    if kind == "transport":
        transport = MeteringTransport(include_usage=True, on_report=lambda r, q: reports.append(r))
        with httpx.Client(transport=transport, timeout=120, trust_env=False) as client:
            url = upstream.origin + "/v1/chat/completions"
            client.get(upstream.origin)  # warm-up: the client's connection (501)
            got: list[int] = []
            growth, elapsed, exact = _measured(
                iter([memoryview(b"")]), lambda _: got.append(_read_all(url, client))
            )
            transport.close()
        note = reports[-1].warnings[:1] if reports else ["no report"]
        return {"growth": growth, "limit": _limit_of(target), "seconds": elapsed,
                "exact": exact, "bytes": got[0], "note": note}  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp, socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
        s.close()
        spec = {"upstream": upstream.origin, "port": port, "sink": f"jsonl:{tmp}/usage.jsonl"}
        proc = subprocess.Popen([sys.executable, "-c", PROXY, json.dumps(spec)])
        try:
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            with httpx.Client(timeout=120, trust_env=False) as client:
                for _ in range(200):
                    try:
                        client.get(f"http://127.0.0.1:{port}/metrics")
                        break
                    except httpx.HTTPError:
                        time.sleep(0.1)
                got = []
                growth, elapsed, exact = _measured(
                    iter([memoryview(b"")]),
                    lambda _: got.append(_read_all(url, client)),
                    str(proc.pid),
                )
        finally:
            proc.terminate()
            proc.wait(30)
        lines = (
            Path(tmp, "usage.jsonl").read_text().splitlines()
            if Path(tmp, "usage.jsonl").exists()
            else []
        )
        note = json.loads(lines[-1]).get("warnings", [])[:1] if lines else ["no record"]
    return {"growth": growth, "limit": _limit_of(target), "seconds": elapsed, "exact": exact,
            "bytes": got[0], "note": note}  # fmt: skip


CASES = (
    [
        f"line:{cls}:{how}"
        for cls in ("SSEDecoder", "UsageTap", "LineDecoder", "UsageChunkStripper")
        for how in ("one", "1MiB", "1KiB", "one-memoryview", "one-bytearray", "1MiB-bytearray")
    ]
    + [f"bomb:{name}:{how}" for name in BOMBS for how in ("one", "64KiB", "256B")]
    + [
        f"{kind}:{target}:-"
        for kind in ("transport", "proxy")
        for target in ("line", *(f"bomb-{name}" for name in BOMBS))
    ]
)


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        print(json.dumps(run_case(sys.argv[2])))
        return 0
    only = sys.argv[2] if len(sys.argv) == 3 and sys.argv[1] == "--only" else ""
    print(f"{'case':<34} {'growth MiB':>10} {'limit MiB':>9} {'seconds':>8}  result")
    failed = 0
    bombs = tempfile.TemporaryDirectory()
    env = {**os.environ, "HOSTILE_BOMBS": bombs.name}
    for case in [c for c in CASES if c.startswith(only)]:
        proc = subprocess.run(
            [sys.executable, __file__, "--case", case],
            check=False,
            capture_output=True,
            text=True,
            timeout=600,
            env=env,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{case:<34} {'-':>10} {'-':>9} {'-':>8}  SKIP ({last[:60]})")
            continue
        r = json.loads(proc.stdout)
        output = r.get("output", 0)
        ok = r["growth"] <= 2 * r["limit"] + CONSTANT + output
        failed += not ok
        note = f"  {r['bytes']} bytes relayed; {'; '.join(r['note'])[:70]}" if "bytes" in r else ""
        if output:
            note = f"  (+ {output / MiB:.0f} MiB allowed: the bytes returned)"
        print(
            f"{case:<34} {r['growth'] / MiB:>10.1f} {r['limit'] / MiB:>9.1f} "
            f"{r['seconds']:>8.2f}  {'PASS' if ok else 'FAIL'}{'' if r['exact'] else ' (sampled)'}"
            f"{note}"
        )
    print(f"\nPASS when growth <= 2 x limit + {CONSTANT // MiB} MiB; {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
