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

__all__ = [
    "EventSource",
    "EventTooLargeError",
    "LineDecoder",
    "SSEDecoder",
    "SSEError",
    "ServerSentEvent",
    "__version__",
    "aconnect_sse",
    "connect_sse",
]
