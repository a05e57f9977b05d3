"""``UsageTap``: the per-byte metering engine, with no Python object per event."""

from __future__ import annotations

from typing import Any

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
    counted and flagged in the report. ``collect_output=True`` also reassembles the streamed
    text and tool calls (``output()``), which parses every event and costs more.

    One tap meters one stream at a time and is not for sharing between threads.
    """

    __slots__ = ("_core", "_reports")

    def __init__(
        self,
        api: str = "auto",
        *,
        max_event_size: int = _core.DEFAULT_MAX_EVENT_SIZE_BYTES,
        collect_output: bool = False,
    ) -> None:
        if api not in APIS:
            raise ValueError(f"unknown api {api!r}; expected one of {', '.join(APIS)}")
        self._core = _core.UsageTap(
            api, max_event_size=max_event_size, collect_output=collect_output
        )
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

    def snapshot(self) -> StreamReport:
        """The report of the response being read, without ending the stream."""
        return report_from_core(self._core.snapshot()[-1])

    @property
    def reports(self) -> tuple[StreamReport, ...]:
        """Every response the last finished stream held, in order (several responses can be
        concatenated in one byte stream)."""
        return self._reports

    def output(self) -> dict[str, Any] | None:
        """The reassembled output ``{"choices": [{"index", "text", "refusal", "reasoning",
        "tool_calls": [{"index", "id", "name", "arguments"}]}]}``, or None unless
        ``collect_output`` was set."""
        return self._core.output()

    @property
    def bytes_fed(self) -> int:
        """Bytes fed since the stream began."""
        return self._core.bytes_fed

    @property
    def delta_chunks(self) -> int:
        """Output-bearing events so far (not a token count)."""
        return self._core.delta_chunks

    @property
    def response_id(self) -> str | None:
        """The id of the (first) response in the stream, once seen."""
        return self._core.response_id

    @property
    def api(self) -> str:
        """The API detected so far, or ``"unknown"``."""
        return self._core.api
