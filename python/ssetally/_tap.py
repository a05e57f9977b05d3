"""``UsageTap``: the per-byte metering engine, with no Python object per event."""

from __future__ import annotations

from typing import Any, Literal

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


class UsageTap(_core.UsageTap):
    """Feed it the raw bytes of an LLM stream, in chunks of any size; ``finish()`` says what
    the stream cost and how it ended.

    ``UsageTap(api="auto", *, max_event_size=16 MiB, collect_output=False, timeline=False,
    clock=False)``.
    ``feed(data)``
    frames events and extracts usage in native code and creates no Python object per event
    (``bytes`` is read without a copy). ``api="auto"`` detects the API from the first event;
    an unknown name raises ``ValueError``. Bad input never raises: it is counted and flagged in
    the report. ``collect_output=True`` also reassembles the streamed text and tool calls
    (``output()``), which parses every event and costs more; ``collect_output="lazy"`` does
    so only where an estimate needs it, when some response of the stream gave no usage: it
    holds the stream's reads (``MAX_HELD_BYTES``, 256 KiB, in at most ``MAX_HELD_READS``
    reads; past them it collects as it comes) and reads them again at ``finish()``, so that
    ``output()`` is None until the end, and after it when every response gave its usage. ``timeline=True`` logs each
    output-bearing event (its text, the running usage after it) for ``Timings.timeline``:
    call ``stamp(time.monotonic())`` after each ``feed`` to give its events their arrival
    time, and read the log with ``timeline_raw()``; off by default, when it costs nothing.
    ``clock=True`` has ``feed`` read ``time.monotonic()`` itself (natively) at the stream's
    first chunk and at each chunk that completed an output-bearing event: ``first_read_at``,
    ``first_output_at`` and ``last_output_at``, and the timeline's stamps (no ``stamp`` calls).

    One tap meters one stream at a time and is not for sharing between threads. Besides the
    methods below it has ``bytes_fed``, ``delta_chunks`` (output-bearing events so far: not a
    token count), ``response_id`` and ``api`` (detected so far, or ``"unknown"``).
    """

    __slots__ = ("_reports",)

    def __init__(
        self,
        api: str = "auto",
        *,
        max_event_size: int = _core.DEFAULT_MAX_EVENT_SIZE_BYTES,
        collect_output: bool | Literal["lazy"] = False,
        timeline: bool = False,
        clock: bool = False,
    ) -> None:
        self._reports: tuple[StreamReport, ...] = ()

    def finish(self) -> StreamReport:
        """End of stream: the report of the last response in it (see ``reports``). Each
        report's ``attempts`` starts with the ``stream`` attempt: whether the stream carried
        usage.

        The tap is reset and can meter another stream; ``output()`` stays readable until the
        next stream's bytes arrive.
        """
        self._reports = tuple(report_from_core(r, True) for r in self.finish_raw())
        return self._reports[-1]

    def snapshot(self) -> StreamReport:
        """The report of the response being read, without ending the stream."""
        return report_from_core(self.snapshot_raw()[-1], True)

    @property
    def reports(self) -> tuple[StreamReport, ...]:
        """Every response the last finished stream held, in order (several responses can be
        concatenated in one byte stream)."""
        return self._reports

    def output(self) -> dict[str, Any] | None:
        """The reassembled output of the last response ``{"response_id", "choices":
        [{"index", "text", "refusal", "reasoning", "finish_reason", "output_tokens",
        "tool_calls": [{"index", "id", "name", "arguments"}]}]}``, or None unless
        ``collect_output`` was set. ``outputs()`` gives one per response, in the order of
        ``reports``."""
        return super().output()
