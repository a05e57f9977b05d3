"""The immutable results of tallying a stream: ``Usage`` and ``StreamReport``."""

from __future__ import annotations

import itertools
from collections.abc import Mapping
from decimal import Decimal
from types import MappingProxyType
from typing import Any, NamedTuple

#: Where a usage record came from: read from the stream, fetched from the API afterwards,
#: or counted with a tokenizer because neither was possible.
USAGE_SOURCES = ("stream", "retrieval", "estimate")

#: How a stream ended.
STATUSES = ("completed", "incomplete", "failed", "cancelled", "truncated")


class Usage(NamedTuple):
    """Token usage normalised across providers.

    ``output_tokens`` always includes reasoning tokens (some providers report them apart;
    they are added back). ``input_tokens`` always includes cached and cache-written tokens.
    A field is None when the provider does not say. ``raw`` is the provider's own usage object,
    untouched, so nothing it reported is lost.
    """

    input_tokens: int | None = None
    output_tokens: int | None = None
    total_tokens: int | None = None
    cached_input_tokens: int | None = None
    cache_write_tokens: int | None = None
    reasoning_tokens: int | None = None
    source: str = "stream"
    raw: Mapping[str, Any] = MappingProxyType({})
    note: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of every field."""
        out = self._asdict()
        out["raw"] = dict(self.raw)
        return out

    def replace(self, **changes: Any) -> Usage:
        """A copy with some fields changed."""
        return self._replace(**changes)

    def __repr__(self) -> str:
        # The counts the provider gave and where they came from; ``raw`` is left to the field.
        shown = {k: v for k, v in zip(self._fields, self) if v is not None and k != "raw"}
        return _repr(self, shown)


class Attempt(NamedTuple):
    """One way of getting usage that was tried: its ``source`` (``stream``, ``retrieval``,
    ``estimate``), whether it gave usage, and why it ran or why it failed."""

    source: str
    ok: bool
    reason: str


class Timings(NamedTuple):
    """When the parts of one streamed request arrived, and the latencies derived from them.

    The fields are monotonic clock readings (``time.monotonic()`` seconds): ``request_sent``,
    ``first_byte``, ``first_content`` (the first event that carried output: never an empty role
    chunk, a ping or a usage-only chunk), ``last_content`` and ``end``; ``output_tokens`` is the
    usage record's count (never a chunk count). The properties give seconds since the request
    was sent: ``ttfb``, ``ttft``, ``duration``, and ``tpot`` as vLLM defines it.

    With ``timeline=True`` on the front-end, ``timeline`` holds one ``(seconds since the
    request was sent, tokens)`` pair per output-bearing event, for the first 100,000 events
    (``timeline_dropped`` counts the rest). Events of one read share its arrival time.
    ``timeline_source`` says where the tokens come from: ``usage`` (each event's own running
    count: vLLM ``continuous_usage_stats``, Gemini), ``apportioned`` (the stream's exact total
    shared by the tokenizer count of each event's text, so that they add up exactly: Anthropic
    ``message_delta``, a final usage chunk, a retrieval) or ``estimate`` (tokenizer counts; no
    exact total). ``itl_p50``, ``itl_p90``, ``itl_p99`` and ``itls()`` come from it: the
    tokens that arrived g seconds after the previous ones, k of them, count k gaps of g/k.

    Hidden reasoning tokens are generated before the first visible delta, so for reasoning
    models rates over the visible window are upper bounds, and apportioned tokens spread the
    hidden ones over the visible events.
    """

    request_sent: float
    first_byte: float | None = None
    first_content: float | None = None
    last_content: float | None = None
    end: float | None = None
    output_tokens: int | None = None
    timeline: tuple[tuple[float, int], ...] = ()
    timeline_dropped: int = 0
    timeline_source: str | None = None

    @property
    def ttfb(self) -> float | None:
        """Seconds from sending the request to the first byte of the answer's body."""
        return None if self.first_byte is None else self.first_byte - self.request_sent

    @property
    def ttft(self) -> float | None:
        """Seconds from sending the request to the first event that carried output."""
        return None if self.first_content is None else self.first_content - self.request_sent

    @property
    def duration(self) -> float | None:
        """Seconds from sending the request to the end of the stream (vLLM's E2EL)."""
        return None if self.end is None else self.end - self.request_sent

    @property
    def tpot(self) -> float | None:
        """Time per output token after the first, as vLLM defines it: (last content - first
        content) / (output tokens - 1)."""
        n = self.output_tokens
        if n is None or n < 2 or self.first_content is None or self.last_content is None:
            return None
        return (self.last_content - self.first_content) / (n - 1)

    @property
    def inter_token_latency(self) -> float | None:
        """The mean inter-token latency: ``tpot`` (the name records and older code use)."""
        return self.tpot

    @property
    def output_tokens_per_s(self) -> float | None:
        """Output tokens per second over the whole request (TTFT included)."""
        span = self.duration
        if self.output_tokens is None or not span:
            return None
        return self.output_tokens / span

    def _arrivals(self) -> list[tuple[float, int]]:
        """The timeline by read: events that arrived together (one read) count as one arrival
        of all their tokens; arrivals without tokens are left out."""
        out: list[tuple[float, int]] = []
        for at, tokens in self.timeline:
            if tokens <= 0:
                continue
            if out and out[-1][0] == at:
                out[-1] = (at, out[-1][1] + tokens)
            else:
                out.append((at, tokens))
        return out

    def _gaps(self) -> list[tuple[float, int]]:
        """``(gap per token, tokens)`` of each arrival after the first, sorted: k tokens that
        arrived g seconds after the previous ones count k gaps of g/k."""
        arrivals = self._arrivals()
        out = [
            (max(0.0, at - before) / tokens, tokens)
            for (before, _), (at, tokens) in itertools.pairwise(arrivals)
        ]
        out.sort()
        return out

    def itls(self) -> tuple[float, ...]:
        """Every per-token inter-token latency in seconds, in stream order, from
        ``timeline``: k tokens that arrived g seconds after the previous ones (in one read:
        one event or several) give k gaps of g/k. The tokens that arrived first are not gaps
        (they came with TTFT)."""
        arrivals = self._arrivals()
        out: list[float] = []
        for (before, _), (at, tokens) in itertools.pairwise(arrivals):
            out.extend([max(0.0, at - before) / tokens] * tokens)
        return tuple(out)

    def itl_percentile(self, q: float) -> float | None:
        """The ``q``-th percentile (0-100) of the per-token inter-token latencies, in
        seconds, interpolated linearly as ``numpy.percentile`` does; None without a
        timeline of at least two token-bearing events."""
        return _weighted_percentile(self._gaps(), q)

    @property
    def itl_p50(self) -> float | None:
        """Median per-token inter-token latency (seconds; needs ``timeline``)."""
        return self.itl_percentile(50)

    @property
    def itl_p90(self) -> float | None:
        """90th percentile per-token inter-token latency (seconds; needs ``timeline``)."""
        return self.itl_percentile(90)

    @property
    def itl_p99(self) -> float | None:
        """99th percentile per-token inter-token latency (seconds; needs ``timeline``)."""
        return self.itl_percentile(99)

    def to_dict(self) -> dict[str, Any]:
        """Clock readings, the timeline and the derived latencies as a JSON-ready dict."""
        out = self._asdict()
        gaps = self._gaps()
        out.update(
            timeline=[list(pair) for pair in self.timeline],
            ttfb=self.ttfb,
            ttft=self.ttft,
            duration=self.duration,
            tpot=self.tpot,
            inter_token_latency=self.inter_token_latency,
            output_tokens_per_s=self.output_tokens_per_s,
            itl_p50=_weighted_percentile(gaps, 50),
            itl_p90=_weighted_percentile(gaps, 90),
            itl_p99=_weighted_percentile(gaps, 99),
        )
        return out

    def __repr__(self) -> str:
        gaps = self._gaps()
        parts = [
            f"ttft={_seconds(self.ttft)}",
            f"ttfb={_seconds(self.ttfb)}",
            f"duration={_seconds(self.duration)}",
            f"output_tokens={self.output_tokens}",
            f"tpot={_seconds(self.tpot)}",
        ]
        if self.timeline:
            parts += [
                f"itl_p50={_seconds(_weighted_percentile(gaps, 50))}",
                f"itl_p99={_seconds(_weighted_percentile(gaps, 99))}",
                f"timeline=<{len(self.timeline)} events, {self.timeline_source}"
                + (f", {self.timeline_dropped} more dropped>" if self.timeline_dropped else ">"),
            ]
        parts.append(f"request_sent={self.request_sent!r} (monotonic)")
        return "Timings(" + ", ".join(parts) + ")"


def _seconds(value: float | None) -> str:
    return "None" if value is None else f"{value:.6f}s"


def _weighted_percentile(values: list[tuple[float, int]], q: float) -> float | None:
    """``numpy.percentile(samples, q)`` (linear) of the samples ``value`` repeated ``count``
    times, given sorted by value, without expanding them."""
    total = sum(count for _, count in values)
    if total == 0:
        return None
    rank = min(max(q, 0.0), 100.0) / 100.0 * (total - 1)
    low = int(rank)
    high = min(low + 1, total - 1)
    v_low = v_high = None
    seen = 0
    for value, count in values:
        seen += count
        if v_low is None and low < seen:
            v_low = value
        if high < seen:
            v_high = value
            break
    if v_low is None or v_high is None:  # not reached: counts add up to total
        return None
    return v_low + (v_high - v_low) * (rank - low)


class Cost(NamedTuple):
    """What a stream cost, priced by ``ssetally.cost_of`` (genai-prices).

    Amounts are exact ``Decimal`` values in ``currency``. ``cached_input`` (cache reads) and
    ``cache_write`` are parts of ``input``; ``total`` is ``input + output`` plus any per-request
    fee. ``source`` names the price list, provider and model; ``estimated`` is True when the
    token counts were estimated, not reported. ``to_dict()`` writes amounts as strings, so JSON
    keeps them exact.
    """

    currency: str
    input: Decimal
    output: Decimal
    cached_input: Decimal
    cache_write: Decimal
    total: Decimal
    source: str
    estimated: bool = False

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; amounts as decimal strings."""
        out = self._asdict()
        for key in ("input", "output", "cached_input", "cache_write", "total"):
            out[key] = str(out[key])
        return out


class ChoiceUsage(NamedTuple):
    """One choice of an ``n > 1`` stream: its share of the output tokens and output cost.

    Providers report one usage for all choices, so with ``apportioned`` True the shares are
    split by tokenizer counts of each choice's output; they add up exactly to the totals.
    ``cost`` (a ``Decimal``, or None when the stream has no cost) is output cost only: the
    prompt is billed once for all choices.
    """

    index: int  # type: ignore[assignment]  # the choice's index, as the API names it
    output_tokens: int
    cost: Decimal | None = None
    apportioned: bool = True

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``cost`` as a decimal string."""
        out = self._asdict()
        out["cost"] = None if self.cost is None else str(self.cost)
        return out


class StreamReport(NamedTuple):
    """What one streamed response cost and how it ended.

    ``status`` is one of ``completed``, ``incomplete`` (the model stopped at a limit or a
    filter), ``failed`` (an error event), ``cancelled`` or ``truncated`` (the stream ended with
    no terminal event). ``delta_chunks`` counts events that carried output text: it is not a
    token count.
    """

    usage: Usage | None = None
    api: str = "unknown"
    response_id: str | None = None
    model: str | None = None
    status: str = "truncated"
    finish_reason: str | None = None
    incomplete_reason: str | None = None
    error: Any = None
    events: int = 0
    delta_chunks: int = 0
    bytes: int = 0
    done: bool = False
    oversized_events: int = 0
    invalid_json_events: int = 0
    warnings: tuple[str, ...] = ()
    step_usages: tuple[Usage, ...] = ()
    attempts: tuple[Attempt, ...] = ()
    timings: Timings | None = None
    output: Mapping[str, Any] | None = None
    cost: Cost | None = None
    choices: tuple[ChoiceUsage, ...] = ()
    #: Why ``cost`` is None (no price for the model, no usage, genai-prices not installed).
    cost_reason: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict; ``usage`` is a dict too (or None)."""
        out = self._asdict()
        out["usage"] = None if self.usage is None else self.usage.to_dict()
        out["warnings"] = list(self.warnings)
        out["step_usages"] = [u.to_dict() for u in self.step_usages]
        out["attempts"] = [a._asdict() for a in self.attempts]
        out["timings"] = None if self.timings is None else self.timings.to_dict()
        out["output"] = None if self.output is None else dict(self.output)
        out["cost"] = None if self.cost is None else self.cost.to_dict()
        out["choices"] = [c.to_dict() for c in self.choices]
        return out

    def replace(self, **changes: Any) -> StreamReport:
        """A copy with some fields changed (``_replace``'s result, by field index: a report
        is replaced several times a stream)."""
        values = list(self)
        try:
            for name, value in changes.items():
                values[_REPORT_INDEX[name]] = value
        except KeyError:
            unexpected = [name for name in changes if name not in _REPORT_INDEX]
            raise ValueError(f"Got unexpected field names: {unexpected!r}") from None
        return tuple.__new__(type(self), values)

    def require_usage(self) -> Usage:
        """``usage``, never None: raises ``LookupError`` saying why when no usage could be had
        (every attempt and its reason)."""
        if self.usage is not None:
            return self.usage
        tried = "; ".join(f"{a.source}: {a.reason}" for a in self.attempts) or "nothing tried"
        raise LookupError(f"no usage for this stream (status {self.status}; {tried})")

    def require_timings(self) -> Timings:
        """``timings``, never None: raises ``LookupError`` for a report that has no clock
        readings (one from ``UsageTap`` or a capture: only a live stream is timed)."""
        if self.timings is None:
            raise LookupError("this report has no timings (only a live stream is timed)")
        return self.timings

    def __repr__(self) -> str:
        # What a user looks for first; the reassembled output (which can be megabytes) is
        # summarised, and fields left at their defaults are not repeated.
        shown: dict[str, Any] = {}
        for name, value in zip(self._fields, self):
            if name in ("status", "api") or value != self._field_defaults.get(name):
                shown[name] = _output_summary(value) if name == "output" else value
        return _repr(self, shown)


#: A string longer than this is cut in a repr.
_REPR_CHARS = 80


class _Shown(str):
    """Text shown as it is in a repr (no quotes)."""

    def __repr__(self) -> str:
        return str(self)


def _output_summary(output: Mapping[str, Any] | None) -> Any:
    if output is None:
        return None
    choices = output.get("choices") or []
    chars = sum(len(c.get("text") or "") for c in choices if isinstance(c, Mapping))
    return _Shown(f"<{len(choices)} choice(s), {chars} characters of text>")


def _short(value: Any) -> Any:
    if isinstance(value, str) and len(value) > _REPR_CHARS:
        return value[: _REPR_CHARS - 3] + "..."
    if isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
        return tuple(_short(v) for v in value)
    return value


def _repr(obj: tuple[Any, ...], shown: Mapping[str, Any]) -> str:
    body = ", ".join(f"{k}={_short(v)!r}" for k, v in shown.items())
    return f"{type(obj).__name__}({body})"


def _plain_annotations(*classes: type) -> None:
    """Show the fields' types as the source writes them (``'int | None'``), not as
    ``ForwardRef`` objects, in ``help()`` and ``inspect.signature``."""
    for cls in classes:
        for owner in (cls, cls.__new__):
            owner.__annotations__ = {
                k: getattr(v, "__forward_arg__", v) for k, v in owner.__annotations__.items()
            }


_plain_annotations(Usage, Attempt, Timings, Cost, ChoiceUsage, StreamReport)


#: The position of each field of a report.
_REPORT_INDEX = {name: i for i, name in enumerate(StreamReport._fields)}

#: Builds a NamedTuple from a ready tuple of all its fields without a call per field.
_new_tuple = tuple.__new__

#: Defaults of the trailing fields the native extension does not return (cost, choices,
#: cost_reason).
_NATIVE_FIELDS = 19
_TRAILING_DEFAULTS = (None, (), None)


def report_from_core(d: tuple[Any, ...], stream_attempt: bool = False) -> StreamReport:
    """Build a ``StreamReport`` from the tuple the native extension returns (every field, in
    order; usages as tuples); with ``stream_attempt``, its ``attempts`` start with the
    ``stream`` attempt: whether the stream itself carried usage."""
    usage, steps, attempts = d[0], d[15], d[16]
    if usage is not None:
        usage = _new_tuple(Usage, usage)
    if stream_attempt:
        if usage is not None:
            first = _STREAM_USAGE
        else:
            first = Attempt("stream", False, f"no usage in the stream (status {d[4]})")
        attempts = (first, *attempts)
    return _new_tuple(
        StreamReport,
        (
            usage,
            *d[1:15],
            tuple(_new_tuple(Usage, s) for s in steps) if steps else (),
            attempts,
            *d[17:],
            *(_TRAILING_DEFAULTS if len(d) == _NATIVE_FIELDS else ()),
        ),
    )


_STREAM_USAGE = Attempt("stream", True, "usage read from the stream")


def finished(
    report: StreamReport,
    warnings: tuple[str, ...],
    timings: Timings,
    cost: Cost | None,
    choices: tuple[ChoiceUsage, ...],
    cost_reason: str | None,
) -> StreamReport:
    """``report.replace(warnings=..., timings=..., cost=..., choices=..., cost_reason=...)``,
    the final step of every metered stream, as one tuple."""
    return _new_tuple(
        StreamReport,
        (
            *report[:14],
            warnings,
            report[15],
            report[16],
            timings,
            report[18],
            cost,
            choices,
            cost_reason,
        ),
    )
