"""``UsageTap``: the per-byte metering engine, with no Python object per event."""

from __future__ import annotations

from . import _core
from ._report import StreamReport, report_from_core

#: Values ``UsageTap(api=...)`` accepts.
APIS = (
    "auto",
    "chat.completions",
    "completions",
    "responses",
    "assistants",
    "anthropic.messages",
    "gemini",
    "gemini.interactions",
    "cohere",
)


class UsageTap:
    """Feed it the raw bytes of an LLM stream, in chunks of any size; ``finish()`` says what
    the stream cost and how it ended.

    ``feed`` frames events and extracts usage in native code and creates no Python object per
    event. ``api="auto"`` detects the API from the first event. Bad input never raises: it is
    counted and flagged in the report.
    """

    __slots__ = ("_core", "_reports")

    def __init__(self, api: str = "auto", *, max_event_size: int | None = None) -> None:
        if api not in APIS:
            raise ValueError(f"unknown api {api!r}; expected one of {', '.join(APIS)}")
        kwargs = {} if max_event_size is None else {"max_event_size": max_event_size}
        self._core = _core.UsageTap(api, **kwargs)
        self._reports: tuple[StreamReport, ...] = ()

    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Tap one chunk of the stream (``bytes`` is read without a copy)."""
        self._core.feed(data)

    def finish(self) -> StreamReport:
        """End of stream: the report of the last response in it (see ``reports``).

        The tap is reset and can meter another stream.
        """
        self._reports = tuple(report_from_core(r) for r in self._core.finish())
        return self._reports[-1]

    @property
    def reports(self) -> tuple[StreamReport, ...]:
        """Every response the last finished stream held, in order (several responses can be
        concatenated in one byte stream)."""
        return self._reports

    @property
    def bytes_fed(self) -> int:
        """Bytes fed since the stream began."""
        return self._core.bytes_fed
