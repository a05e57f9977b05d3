"""Content decoding for metering: the tap reads a compressed body through a bounded decoder.

The decoding is native (``ContentDecoder``): incremental, with at most ``max_output_per_feed``
bytes out of one chunk and ``max_total_output`` out of one body, so a decompression bomb stops
metering for that body (with a warning) instead of exhausting memory; the bytes themselves
still pass on unchanged.
"""

from __future__ import annotations

from .._core import ContentDecoder

#: Defaults of the metering decoders (one chunk's output, one body's output).
MAX_OUTPUT_PER_FEED = 8 * 1024 * 1024
MAX_TOTAL_OUTPUT = 256 * 1024 * 1024


def decoder_for(content_encoding: str) -> ContentDecoder | None:
    """A bounded decoder for a ``Content-Encoding`` header, None for identity.

    Raises ``ValueError`` for an encoding that cannot be read (the stream then passes through
    unmetered).
    """
    decoder = ContentDecoder(
        content_encoding,
        max_output_per_feed=MAX_OUTPUT_PER_FEED,
        max_total_output=MAX_TOTAL_OUTPUT,
    )
    return None if decoder.encoding == "identity" else decoder
