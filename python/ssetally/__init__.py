"""ssetally: a Rust-accelerated Server-Sent Events parser that tallies LLM token usage."""

from ._api import EventSource, aconnect_sse, connect_sse
from ._core import (
    EventTooLargeError,
    LineDecoder,
    ServerSentEvent,
    SSEDecoder,
    __version__,
)
from ._exceptions import SSEError
from ._report import StreamReport, Usage
from ._tap import UsageTap

__all__ = [
    "EventSource",
    "EventTooLargeError",
    "LineDecoder",
    "SSEDecoder",
    "SSEError",
    "ServerSentEvent",
    "StreamReport",
    "Usage",
    "UsageTap",
    "__version__",
    "aconnect_sse",
    "connect_sse",
]
