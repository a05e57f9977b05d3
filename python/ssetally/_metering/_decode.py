"""Bounded content decoding: the tap's view of a compressed stream, and whole bodies read
with a byte cap (error answers, the retrieval GET).

The decoding is native (``ContentDecoder``): incremental, with at most ``max_output_per_feed``
bytes out of one chunk and ``max_total_output`` out of one body, so a decompression bomb stops
metering for that body (with a warning) instead of exhausting memory; the bytes themselves
still pass on unchanged.

A whole body that ssetally reads itself is read raw (never with the HTTP library's own,
unbounded decoding) and decoded by a ``BodyReader``: at most ``limit`` decoded bytes are kept,
and reading and decoding stop past it, the body then flagged ``truncated``.
"""

from __future__ import annotations

from collections.abc import AsyncIterable, Iterable
from typing import Any, NamedTuple

from .._core import ContentDecoder, DecompressionBombError

#: Defaults of the metering decoders (one chunk's output, one body's output).
MAX_OUTPUT_PER_FEED = 8 * 1024 * 1024
MAX_TOTAL_OUTPUT = 256 * 1024 * 1024

#: What an error answer's body keeps (decoded) for ``APIStatusError``: reading stops past it.
MAX_ERROR_BODY = 64 * 1024
#: What a whole JSON answer read by ssetally (the retrieval ``GET``) may decode to.
MAX_JSON_BODY = 16 * 1024 * 1024

#: Compressed bytes given to the decoder at a time for a small cap (an error body): one byte,
#: so that the head of a bomb is kept, not lost with the step that passes the decoder's limit
#: (a few bytes of brotli can hold megabytes). Larger caps step by ``limit // 512``.
_SMALL = MAX_ERROR_BODY


def decoder_for(content_encoding: str) -> ContentDecoder | None:
    """A bounded decoder for a ``Content-Encoding`` header, None for identity.

    Raises ``ValueError`` for an encoding that cannot be read (the stream then passes through
    unmetered).
    """
    if not content_encoding:  # no header: identity, without making a decoder to say so
        return None
    decoder = ContentDecoder(
        content_encoding,
        max_output_per_feed=MAX_OUTPUT_PER_FEED,
        max_total_output=MAX_TOTAL_OUTPUT,
    )
    return None if decoder.encoding == "identity" else decoder


class Body(NamedTuple):
    """A whole body as read: its decoded ``content`` (at most the reader's limit) and, when it
    is not the whole body, why (``truncated``)."""

    content: bytes
    truncated: str | None = None


class BodyReader:
    """Decodes a body fed as raw chunks, keeping at most ``limit`` decoded bytes.

    ``feed`` returns False once nothing more is wanted (the limit was reached, the body is a
    bomb or does not decode): the caller then stops reading and closes the answer. Memory is
    bounded by ``limit`` plus one step's output (``MAX_OUTPUT_PER_FEED``) whatever the encoding
    and the chunking.
    """

    def __init__(self, content_encoding: str, limit: int) -> None:
        self.limit = limit
        self._parts: list[bytes] = []
        self._size = 0
        self._truncated: str | None = None
        self._decoder: ContentDecoder | None = None
        self._note: str | None = None
        try:
            # One step decodes at most MAX_OUTPUT_PER_FEED; reading stops once ``limit`` is kept.
            decoder = ContentDecoder(
                content_encoding,
                max_output_per_feed=MAX_OUTPUT_PER_FEED,
                max_total_output=limit + MAX_OUTPUT_PER_FEED,
            )
        except ValueError as exc:  # an unsupported coding: kept as it came (still capped)
            self._note = f"not decoded: {exc}"
        else:
            if decoder.encoding != "identity":
                self._decoder = decoder
        self._slice = 1 if limit <= _SMALL else max(64, limit // 512)

    def feed(self, chunk: bytes) -> bool:
        """Add one raw chunk; False when reading should stop."""
        if self._truncated is not None:
            return False
        decoder = self._decoder
        if decoder is None:
            return self._keep(chunk)
        step = self._slice
        view = memoryview(chunk)
        for start in range(0, len(chunk), step):
            try:
                data = decoder.feed(view[start : start + step])
            except DecompressionBombError:
                self._truncated = f"decoding stopped past {self.limit} bytes"
                return False
            except ValueError as exc:  # DecompressionError: corrupt
                self._truncated = f"the body does not decode: {exc}"
                return False
            if not self._keep(data):
                return False
        return True

    def _keep(self, data: bytes) -> bool:
        room = self.limit - self._size
        if len(data) > room:
            data = data[:room]
            self._truncated = f"cut at {self.limit} bytes"
        if data:
            self._parts.append(data)
            self._size += len(data)
        return self._truncated is None

    def result(self) -> Body:
        """The body read so far (call once the answer ended or ``feed`` said stop)."""
        truncated = self._truncated
        if truncated is None and self._decoder is not None:
            try:
                self._decoder.finish()
            except ValueError as exc:
                truncated = f"the body ended early: {exc}"
        if truncated is None:
            truncated = self._note
        return Body(b"".join(self._parts), truncated)


def capped(content: bytes, limit: int) -> Body:
    """A body already read and decoded (by a mock, or a transport below): cut to ``limit``."""
    if len(content) <= limit:
        return Body(content)
    return Body(content[:limit], f"cut at {limit} bytes")


def read_response(response: Any, limit: int) -> Body:
    """The body of an httpx/httpx2 streaming response, read raw and decoded with a bound
    (one read already, by a mock or a transport below, is only cut)."""
    if getattr(response, "is_stream_consumed", False):
        return capped(response.content, limit)
    coding = response.headers.get("content-encoding", "")
    return read_body(response.iter_raw(), coding, limit)


async def aread_response(response: Any, limit: int) -> Body:
    """Async twin of ``read_response``."""
    if getattr(response, "is_stream_consumed", False):
        return capped(response.content, limit)
    coding = response.headers.get("content-encoding", "")
    return await aread_body(response.aiter_raw(), coding, limit)


def read_body(chunks: Iterable[bytes], content_encoding: str, limit: int) -> Body:
    """A whole body from its raw chunks, decoded and capped (see ``BodyReader``); stops reading
    past the cap."""
    reader = BodyReader(content_encoding, limit)
    for chunk in chunks:
        if not reader.feed(chunk):
            break
    return reader.result()


async def aread_body(chunks: AsyncIterable[bytes], content_encoding: str, limit: int) -> Body:
    """Async twin of ``read_body``."""
    reader = BodyReader(content_encoding, limit)
    async for chunk in chunks:
        if not reader.feed(chunk):
            break
    return reader.result()
