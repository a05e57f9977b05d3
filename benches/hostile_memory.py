"""Memory under hostile input: RSS growth of each native decoder against its limit.

Run: ``python benches/hostile_memory.py`` (about a minute; needs the ``brotli`` and
``zstandard`` packages for those bombs, which are skipped without them).

Each case runs in a fresh subprocess, so RSS deltas are independent. A case builds its input
first, then measures the peak RSS (VmHWM, reset through /proc/self/clear_refs where the kernel
allows, else sampled after every feed) while feeding it:

* a 200 MiB unterminated line, in one chunk and in 1 MiB chunks, into ``SSEDecoder``,
  ``UsageTap``, ``LineDecoder`` and ``UsageChunkStripper`` (with ``max_event_size`` 1 MiB
  where the class takes it);
* 1 GiB of zeros compressed with every supported coding into ``ContentDecoder`` (default
  limits: 8 MiB per feed, 256 MiB total), in one chunk and in 64 KiB chunks.

A case passes when growth <= 2 x limit + 16 MiB, the limit being what the class may hold at
once (its event/line size, or the decoder's per-feed output).
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
import zlib
from collections.abc import Callable, Iterator

MiB = 1 << 20
LINE = 200 * MiB
BOMB = 1024 * MiB
EVENT_LIMIT = 1 * MiB
CONSTANT = 16 * MiB


def _status(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    return 0


def _reset_peak() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
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


def run_case(case: str) -> dict[str, object]:
    kind, target, how = case.split(":")
    if kind == "line":
        feed, limit = _line_target(target)
        prefix = b"data: " if target != "LineDecoder" else b""
        if how == "one":
            chunks: list[bytes] = [prefix + b"x" * LINE]
        else:
            block = b"x" * MiB
            chunks = [prefix + block] + [block] * (LINE // MiB - 1)
    else:
        from ssetally._core import ContentDecoder

        header, encoder = BOMBS[target]
        zeros = bytes(MiB)
        body = encoder(zeros for _ in range(BOMB // MiB))
        dec = ContentDecoder(header)
        feed, limit = _swallow(dec.feed), dec.max_output_per_feed
        step = len(body) if how == "one" else 64 << 10
        chunks = [body[i : i + step] for i in range(0, len(body), step)]
    base = _status("VmRSS")
    exact = _reset_peak()
    sampled = base
    start = time.perf_counter()
    for chunk in chunks:
        feed(chunk)
        sampled = max(sampled, _status("VmRSS"))
    elapsed = time.perf_counter() - start
    peak = _status("VmHWM") if exact else sampled
    return {"growth": max(0, peak - base), "limit": limit, "seconds": elapsed, "exact": exact}


CASES = [
    f"line:{cls}:{how}"
    for cls in ("SSEDecoder", "UsageTap", "LineDecoder", "UsageChunkStripper")
    for how in ("one", "1MiB")
] + [f"bomb:{name}:{how}" for name in BOMBS for how in ("one", "64KiB")]


def main() -> int:
    if len(sys.argv) == 3 and sys.argv[1] == "--case":
        print(json.dumps(run_case(sys.argv[2])))
        return 0
    print(f"{'case':<34} {'growth MiB':>10} {'limit MiB':>9} {'seconds':>8}  result")
    failed = 0
    for case in CASES:
        proc = subprocess.run(
            [sys.executable, __file__, "--case", case],
            check=False,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if proc.returncode != 0:
            last = (proc.stderr.strip().splitlines() or ["?"])[-1]
            print(f"{case:<34} {'-':>10} {'-':>9} {'-':>8}  SKIP ({last[:60]})")
            continue
        r = json.loads(proc.stdout)
        ok = r["growth"] <= 2 * r["limit"] + CONSTANT
        failed += not ok
        print(
            f"{case:<34} {r['growth'] / MiB:>10.1f} {r['limit'] / MiB:>9.1f} "
            f"{r['seconds']:>8.2f}  {'PASS' if ok else 'FAIL'}{'' if r['exact'] else ' (sampled)'}"
        )
    print(f"\nPASS when growth <= 2 x limit + {CONSTANT // MiB} MiB; {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
