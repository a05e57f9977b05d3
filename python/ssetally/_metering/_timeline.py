"""``Timings.timeline`` from the native tap's per-event log: the tokens of each event.

The tap logs, per output-bearing event, the clock reading of its read, its output text and the
stream's running output token count when the stream reports one. Running counts are anchors:
the events between two anchors share the difference. An event alone between anchors gets it
exactly (vLLM ``continuous_usage_stats``, Gemini); several share it by the tokenizer count of
their text, scaled with largest remainders so that the integers add up exactly, and so do the
events after the last anchor with what remains of the stream's total.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any, NamedTuple

from .._report import Usage

#: ``timeline_source`` values: each event's own running count; the exact total shared by the
#: tokenizer counts of the events' text; tokenizer counts (no exact total).
TIMELINE_SOURCES = ("usage", "apportioned", "estimate")

#: Characters per token assumed where nothing could be counted (no tokenizer installed).
_CHARS_PER_TOKEN = 4


class TimelineFields(NamedTuple):
    """The timeline fields of ``Timings``."""

    timeline: tuple[tuple[float, int], ...] = ()
    timeline_dropped: int = 0
    timeline_source: str | None = None


def apportion(budget: int, weights: Sequence[int]) -> list[int]:
    """``budget`` split in proportion to ``weights`` (equally when they are all zero), as
    integers that add up to ``budget`` exactly: largest remainders, ties to the earlier one."""
    n = len(weights)
    if n == 0:
        return []
    budget = max(0, budget)
    total = sum(weights)
    if total <= 0:
        weights, total = [1] * n, n
    shares = [budget * w // total for w in weights]
    left = budget - sum(shares)
    if left:
        order = sorted(range(n), key=lambda i: (-(budget * weights[i] % total), i))
        for i in order[:left]:
            shares[i] += 1
    return shares


#: Encodings loaded for timelines, by name: loading can try a download first (tiktoken),
#: which must not happen again for every stream.
_encodings: dict[str, Any] = {}

#: Event texts up to this length have their count remembered within a stream (short deltas
#: such as " the" recur often).
_MEMO_CHARS = 32


class _Weigher:
    """Tokenizer counts of event texts, with character counts when no tokenizer loads."""

    def __init__(self, model: str | None) -> None:
        self._count: Any = None
        self._memo: dict[str, int] = {}
        try:
            from ._estimate import _Counter, encoding_name_for, load_encoding

            name = encoding_name_for(model)[0]
            encoding = _encodings.get(name)
            if encoding is None:
                encoding = _encodings[name] = load_encoding(name)
            self._count = _Counter(encoding, None).text
        except Exception:  # noqa: BLE001 - no tokenizer: weigh by characters
            self._count = None

    def __call__(self, text: str, missing_chars: int) -> int:
        """Tokens of ``text``, plus an estimate for ``missing_chars`` characters not kept."""
        count = self._count
        if count is None:
            tokens = len(text) // _CHARS_PER_TOKEN
        elif len(text) <= _MEMO_CHARS:
            memo = self._memo
            tokens = memo.get(text, -1)
            if tokens < 0:
                tokens = memo[text] = count(text)
        else:
            tokens = count(text)
        if missing_chars > 0:
            tokens += math.ceil(missing_chars / _CHARS_PER_TOKEN)
        return tokens


def _anchors(running: Sequence[int | None], total: int | None) -> list[tuple[int, int]]:
    """The usable running counts: never going back, never past the total."""
    out: list[tuple[int, int]] = []
    last = 0
    for i, count in enumerate(running):
        if count is None or count < last or (total is not None and count > total):
            continue
        out.append((i, count))
        last = count
    return out


def build_timeline(
    raw: tuple[Any, ...],
    *,
    request_sent: float,
    end: float | None,
    usage: Usage | None,
    model: str | None,
    responses: int = 1,
) -> TimelineFields:
    """The timeline of a finished stream from ``UsageTap.timeline_raw()``.

    ``usage`` is the final usage (its ``output_tokens`` is the total the events add up to,
    unless it is an estimate); a stream of several responses is only estimated (their running
    counts start again at each response).
    """
    at, ends, running, text, kept_chars, dropped, dropped_chars = raw
    n = len(at)
    if n == 0:
        return TimelineFields(timeline_dropped=dropped)
    total = None if usage is None else usage.output_tokens
    exact_total = total is not None and usage is not None and usage.source != "estimate"
    if responses > 1:
        exact_total = False
    if not exact_total:
        running = [None] * n
    weigher: _Weigher | None = None

    def weights(indexes: range) -> list[int]:
        nonlocal weigher
        if weigher is None:
            weigher = _Weigher(model)
        out = []
        for i in indexes:
            start = ends[i - 1] if i else 0
            stop = ends[i]
            kept_stop = min(stop, kept_chars)
            piece = text[start:kept_stop] if start < kept_stop else ""
            out.append(weigher(piece, stop - max(start, kept_stop)))
        return out

    tokens = [0] * n
    exact = True
    start = 0
    previous = 0
    for i, count in _anchors(running, total if exact_total else None):
        segment = range(start, i + 1)
        budget = count - previous
        if len(segment) == 1:
            tokens[i] = budget
        else:
            exact = False
            tokens[start : i + 1] = apportion(budget, weights(segment))
        start, previous = i + 1, count
    tail = range(start, n)
    if exact_total and total is not None:
        rest = total - previous
        if tail or dropped:
            exact = exact and not tail
            tail_weights = weights(tail)
            if dropped:
                # The dropped events take their share of what remains (not shown).
                tail_chars = ends[-1] - (ends[start - 1] if start else 0)
                tail_tokens = sum(tail_weights)
                per_char = tail_tokens / tail_chars if tail_chars and tail_tokens else 0.25
                tail_weights.append(round(dropped_chars * per_char))
            tokens[start:] = apportion(rest, tail_weights)[: len(tail)]
        elif rest > 0:
            # More than the last running count (e.g. a retrieved total): the last event.
            exact = False
            tokens[-1] += rest
    elif tail:
        tokens[start:] = weights(tail)
    if not exact_total:
        source = "estimate"
    elif exact:
        source = "usage"
    else:
        source = "apportioned"
    fallback = end if end is not None else request_sent
    timeline = tuple(
        ((fallback if math.isnan(t) else t) - request_sent, k) for t, k in zip(at, tokens)
    )
    return TimelineFields(timeline, dropped, source)
