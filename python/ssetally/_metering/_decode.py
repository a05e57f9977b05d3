"""Content decoding for metering: the tap reads a compressed body through a decompressor."""

from __future__ import annotations

import zlib
from typing import Any, Protocol


class Decompressor(Protocol):
    """What the meter needs of a decoder: bytes in, the bytes they decode to out."""

    def decompress(self, data: bytes) -> bytes: ...


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped, or (wrongly but commonly) raw."""

    def __init__(self) -> None:
        self._obj: Any = None
        self._first = True

    def decompress(self, data: bytes) -> bytes:
        if self._first:
            self._first = False
            self._obj = zlib.decompressobj()
            try:
                return bytes(self._obj.decompress(data))
            except zlib.error:
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
        return bytes(self._obj.decompress(data))


class _Brotli:
    def __init__(self, module: Any) -> None:
        self._obj = module.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        process = getattr(self._obj, "process", None) or self._obj.decompress
        return bytes(process(data))


def decompressor_for(content_encoding: str) -> Decompressor | None:
    """A decoder for a ``Content-Encoding`` header, None for identity.

    Raises ``ValueError`` for an encoding that cannot be read (the stream then passes through
    unmetered).
    """
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise ValueError(f"stacked content codings {content_encoding!r} are not metered")
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _Deflate()
    if coding == "br":
        for name in ("brotli", "brotlicffi"):
            try:
                module = __import__(name)
            except ImportError:
                continue
            return _Brotli(module)
    raise ValueError(f"content-encoding {coding!r} cannot be metered (no decoder installed)")
