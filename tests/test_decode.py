"""ContentDecoder against the reference encoders (zlib, gzip, brotli, zstandard): round trips
over any data and chunking, stacked codings, corrupt input, and bombs of every coding, whose
memory and time per feed stay bounded by the limits."""

from __future__ import annotations

import functools
import gzip
import itertools
import time
import zlib
from collections.abc import Callable, Iterator

import brotli
import pytest
import zstandard
from hypothesis import given, settings
from hypothesis import strategies as st
from peak_memory import peak_reset, peak_rss
from ssetally._core import ContentDecoder, DecompressionBombError, DecompressionError

MiB = 1 << 20
PER_FEED = 8 * MiB
TOTAL = 256 * MiB


def _zlib_stream(wbits: int) -> Callable[[Iterator[bytes]], bytes]:
    def encode(blocks: Iterator[bytes]) -> bytes:
        c = zlib.compressobj(6, zlib.DEFLATED, wbits)
        return b"".join(c.compress(b) for b in blocks) + c.flush()

    return encode


def _brotli(blocks: Iterator[bytes]) -> bytes:
    c = brotli.Compressor(quality=5, lgwin=22)
    return bytes(b"".join(c.process(b) for b in blocks) + c.finish())


def _zstd(blocks: Iterator[bytes]) -> bytes:
    c = zstandard.ZstdCompressor(level=3, write_checksum=True).compressobj()
    return b"".join(c.compress(b) for b in blocks) + c.flush()


#: Encoders by name, with the Content-Encoding header each is sent as.
ENCODERS: dict[str, tuple[str, Callable[[Iterator[bytes]], bytes]]] = {
    "gzip": ("gzip", _zlib_stream(16 + zlib.MAX_WBITS)),
    "zlib": ("deflate", _zlib_stream(zlib.MAX_WBITS)),
    "raw": ("deflate", _zlib_stream(-zlib.MAX_WBITS)),
    "br": ("br", _brotli),
    "zstd": ("zstd", _zstd),
}


def encode(name: str, data: bytes) -> bytes:
    return ENCODERS[name][1](iter([data]))


def decode(header: str, body: bytes, cuts: list[int] | None = None) -> bytes:
    d = ContentDecoder(header)
    edges = sorted({0, len(body), *(c % (len(body) + 1) for c in cuts or [])})
    out = b"".join(d.feed(body[a:b]) for a, b in itertools.pairwise(edges))
    d.finish()
    assert d.total_output == len(out)
    return out


@functools.cache
def bomb(name: str, size: int = 512 * MiB) -> bytes:
    """``size`` zero bytes compressed, built from a repeated 1 MiB block."""
    block = bytes(MiB)
    return ENCODERS[name][1](block for _ in range(size // MiB))


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


@settings(max_examples=40, deadline=None)
@given(
    name=st.sampled_from(sorted(ENCODERS)),
    data=st.binary(max_size=5000) | st.text(max_size=3000).map(str.encode),
    cuts=st.lists(st.integers(min_value=0), max_size=20),
)
def test_round_trips_any_data_and_chunking(name: str, data: bytes, cuts: list[int]) -> None:
    assert decode(ENCODERS[name][0], encode(name, data), cuts) == data


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_one_byte_feeds(name: str) -> None:
    data = b'data: {"choices": []}\n\n' * 500 + bytes(range(256)) * 20
    body = encode(name, data)
    d = ContentDecoder(ENCODERS[name][0])
    out = b"".join(d.feed(body[i : i + 1]) for i in range(len(body)))
    d.finish()
    assert out == data


def test_buffer_types_and_python_gzip() -> None:
    data = b"hello " * 1000
    body = gzip.compress(data) + gzip.compress(b"second member")
    d = ContentDecoder("X-GZIP")
    half = len(body) // 2
    out = d.feed(bytearray(body[:half])) + d.feed(memoryview(body)[half:])
    d.finish()
    assert out == data + b"second member"
    assert d.encoding == "x-gzip"


def test_stacked_codings_and_normalization() -> None:
    data = b"stacked " * 2000
    body = encode("zstd", encode("br", gzip.compress(data)))
    assert decode(" gzip , BR,identity, Zstd", body, [1, 2, 3, 500]) == data
    assert ContentDecoder("gzip, identity, br").encoding == "gzip, br"
    assert ContentDecoder("").encoding == "identity"
    assert ContentDecoder("identity").feed(b"raw") == b"raw"


@pytest.mark.parametrize("value", ["compress", "gzip, lzma", "br;q=1"])
def test_unsupported_coding_raises_value_error(value: str) -> None:
    with pytest.raises(ValueError) as info:
        ContentDecoder(value)
    assert not isinstance(info.value, DecompressionError)


def test_bad_limits() -> None:
    with pytest.raises(ValueError):
        ContentDecoder("gzip", max_output_per_feed=0)
    d = ContentDecoder("br", max_output_per_feed=5, max_total_output=7)
    assert (d.max_output_per_feed, d.max_total_output) == (5, 7)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_truncated_and_corrupt(name: str) -> None:
    header = ENCODERS[name][0]
    body = encode(name, bytes(range(256)) * 400)
    d = ContentDecoder(header)
    d.feed(body[: len(body) // 2])
    with pytest.raises(DecompressionError, match="truncated"):
        d.finish()
    with pytest.raises(DecompressionError):
        d.feed(b"more")
    d = ContentDecoder(header)
    with pytest.raises(DecompressionError):
        d.feed(body + b"trailing garbage")
        d.finish()
    with pytest.raises(DecompressionError):
        d.feed(b"")
    ContentDecoder(header).finish()  # an empty body is complete


def test_corrupt_headers() -> None:
    for header, body in [("gzip", b"\x1f\x8b\x09junk"), ("br", b"\xff" * 64), ("zstd", b"x" * 9)]:
        with pytest.raises(DecompressionError):
            decode(header, body)


def test_zstd_window_over_8_mib_is_refused() -> None:
    params = zstandard.ZstdCompressionParameters.from_level(3, window_log=24)
    body = zstandard.ZstdCompressor(compression_params=params).compressobj()
    data = body.compress(b"x" * 1000) + body.flush()
    with pytest.raises(DecompressionError):
        decode("zstd", data)


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_bomb_in_one_feed_hits_the_per_feed_limit_quickly(name: str) -> None:
    body = bomb(name)
    d = ContentDecoder(ENCODERS[name][0])
    before = rss()
    start = time.perf_counter()
    with pytest.raises(DecompressionBombError, match="max_output_per_feed"):
        d.feed(body)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, elapsed  # ~10-30 ms unloaded
    assert d.total_output == PER_FEED
    assert rss() - before < 2 * PER_FEED + 32 * MiB
    with pytest.raises(DecompressionError):
        d.feed(b"")


@pytest.mark.parametrize("name", sorted(ENCODERS))
def test_bomb_in_chunks_hits_the_total_limit_in_bounded_memory(name: str) -> None:
    body = bomb(name)
    # brotli and zstd squeeze megabytes into a few bytes: small chunks for them.
    chunk = 4096 if name in ("gzip", "zlib", "raw") else 1
    d = ContentDecoder(ENCODERS[name][0])
    before = peak = rss()
    largest = 0
    with pytest.raises(DecompressionBombError) as info:
        for i in range(0, len(body), chunk):
            largest = max(largest, len(d.feed(body[i : i + chunk])))
            peak = max(peak, rss())
    assert largest <= PER_FEED
    assert peak - before < 2 * PER_FEED + 32 * MiB, (peak - before) / MiB
    if "max_total_output" in str(info.value):
        assert d.total_output == TOTAL
    else:  # one byte of a brotli/zstd bomb may already pass the per-feed limit
        assert name in ("br", "zstd")


def test_small_limits_are_exact() -> None:
    d = ContentDecoder("gzip", max_output_per_feed=5000, max_total_output=2500)
    body = gzip.compress(bytes(10_000))
    got = b""
    with pytest.raises(DecompressionBombError, match="max_total_output=2500"):
        for i in range(0, len(body), 1):
            got += d.feed(body[i : i + 1])
    assert d.total_output == 2500
    assert got == bytes(len(got))


#: The property's limits: small, so that decoding past them would show in the resident set.
PROPERTY_PER_FEED = 256 * 1024
PROPERTY_TOTAL = 32 * MiB


@pytest.mark.skipif(not peak_reset(), reason="the kernel does not let VmHWM be reset")
@settings(max_examples=15, deadline=None)
@given(
    name=st.sampled_from(sorted(ENCODERS)),
    sizes=st.lists(st.integers(min_value=1, max_value=256 * 1024), min_size=1, max_size=6),
)
def test_peak_memory_of_a_bomb_is_bounded_for_any_chunking(name: str, sizes: list[int]) -> None:
    """Property: a 512 MiB bomb cut into chunks cycling through ``sizes`` never yields more
    than the per-feed limit from one feed nor more than the total, and the peak resident set
    grows by no more than twice the per-feed output plus the decoder's window (brotli 4 MiB,
    zstd up to 8 MiB) and slack: the bomb is never decoded past its budget."""
    body = bomb(name)
    d = ContentDecoder(
        ENCODERS[name][0], max_output_per_feed=PROPERTY_PER_FEED, max_total_output=PROPERTY_TOTAL
    )
    peak_reset()
    before = peak_rss()
    largest = at = i = 0
    with pytest.raises(DecompressionBombError):
        while at < len(body):
            step = sizes[i % len(sizes)]
            largest = max(largest, len(d.feed(body[at : at + step])))
            at += step
            i += 1
    grown = peak_rss() - before
    assert largest <= PROPERTY_PER_FEED
    assert d.total_output <= PROPERTY_TOTAL
    assert grown <= 2 * PROPERTY_PER_FEED + 2 * max(sizes) + 16 * MiB, grown / MiB
