"""ssetally: a Rust-accelerated Server-Sent Events parser that tallies LLM token usage."""

from ._api import EventSource, aconnect_sse, connect_sse
from ._client import (
    APIStatusError,
    AsyncUsageStream,
    UsageStream,
    aconnect_usage,
    connect_usage,
)
from ._core import (
    EventTooLargeError,
    LineDecoder,
    ServerSentEvent,
    SSEDecoder,
    __version__,
)
from ._cost import cost_of, price_report
from ._exceptions import SSEError, StreamTimeoutError
from ._iterate import AsyncMeteredStream, MeteredStream, ameter, meter
from ._metering import RetrievalPolicy
from ._report import Attempt, ChoiceUsage, Cost, StreamReport, Timings, Usage
from ._tap import UsageTap
from ._transport import AsyncMeteringTransport, MeteringTransport

__all__ = [
    "APIStatusError",
    "AsyncMeteredStream",
    "AsyncMeteringTransport",
    "AsyncUsageStream",
    "Attempt",
    "ChoiceUsage",
    "Cost",
    "EventSource",
    "EventTooLargeError",
    "LineDecoder",
    "MeteredStream",
    "MeteringTransport",
    "RetrievalPolicy",
    "SSEDecoder",
    "SSEError",
    "ServerSentEvent",
    "StreamReport",
    "StreamTimeoutError",
    "Timings",
    "Usage",
    "UsageStream",
    "UsageTap",
    "__version__",
    "aconnect_sse",
    "aconnect_usage",
    "ameter",
    "connect_sse",
    "connect_usage",
    "cost_of",
    "meter",
    "price_report",
]
