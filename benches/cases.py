"""The measured cases: a parser adapter plus what the caller does with each event.

* **event** mode: every event is created and its ``.data`` read (count and total length).
* **usage** mode: the output tokens of every stream, the way a user of that parser gets
  them (``json.loads`` or ``orjson.loads`` of every event's data and a lookup of the usage,
  ``ssetally.UsageTap``, or the pure-Python byte scan).

A runner takes the workload's bodies and returns a :class:`Tally`, which the harness
checks against the corpus truth before the time counts.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from importlib import metadata
from typing import Any, NamedTuple

import adapters
from corpus import Truth
from pure_python import GEMINI_NEEDLE, USAGE_NEEDLE, scan_last_usage


class Tally(NamedTuple):
    """What a runner found; ``None`` means "not measured by this runner"."""

    events: int | None = None
    data_chars: int | None = None
    output_tokens: int | None = None
    bad_streams: int = 0  # streams a usage runner could not account for

    def mismatch(self, truth: Truth) -> str | None:
        """Why this tally is wrong for ``truth``, or ``None`` when it is right."""
        problems = [
            f"{name}={got} (expected {want})"
            for name, got, want in (
                ("events", self.events, truth.events),
                ("data_chars", self.data_chars, truth.data_chars),
                ("output_tokens", self.output_tokens, truth.output_tokens),
            )
            if got is not None and got != want
        ]
        if self.bad_streams:
            problems.append(f"{self.bad_streams} stream(s) without a completed usage report")
        return "; ".join(problems) or None


Bodies = Iterable[Iterable[bytes]]
Runner = Callable[[Bodies], Tally]
Extract = Callable[[Any], int]
Loads = Callable[[str], Any]


def _chat_tokens(obj: Any) -> int:
    usage = obj.get("usage")
    return int(usage["completion_tokens"]) if usage else 0


def _responses_tokens(obj: Any) -> int:
    if obj.get("type") == "response.completed":
        return int(obj["response"]["usage"]["output_tokens"])
    return 0


def _anthropic_tokens(obj: Any) -> int:
    # The corpus has one (cumulative) message_delta per stream; real streams may repeat it,
    # and then only the last one counts.
    if obj.get("type") == "message_delta":
        return int(obj["usage"]["output_tokens"])
    return 0


def _gemini_tokens(obj: Any) -> int:
    # Every chunk carries the running usage: the one with the finish reason has the total.
    if any("finishReason" in c for c in obj.get("candidates", ())):
        usage = obj["usageMetadata"]
        return int(usage["candidatesTokenCount"]) + int(usage.get("thoughtsTokenCount", 0))
    return 0


def extractor(kind: str) -> Extract:
    if kind.startswith("chat"):
        return _chat_tokens
    if kind.startswith("responses"):
        return _responses_tokens
    if kind == "gemini":
        return _gemini_tokens
    return _anthropic_tokens


def _usage_key(kind: str) -> str:
    if kind == "gemini":
        return "candidatesTokenCount"
    return "completion_tokens" if kind.startswith("chat") else "output_tokens"


# --------------------------------------------------------------------------- consumers


def event_runner(adapter: adapters.Adapter, payloads: bool = False) -> Runner:
    if payloads:

        def run_payloads(bodies: Bodies) -> Tally:
            events = chars = 0
            for body in bodies:
                for data in adapter(body):
                    events += 1
                    chars += len(data)
            return Tally(events, chars)

        return run_payloads

    def run(bodies: Bodies) -> Tally:
        events = chars = 0
        for body in bodies:
            for event in adapter(body):
                events += 1
                chars += len(event.data)
        return Tally(events, chars)

    return run


def json_runner(
    adapter: adapters.Adapter, loads: Loads, extract: Extract, payloads: bool = False
) -> Runner:
    if payloads:

        def run_payloads(bodies: Bodies) -> Tally:
            events = tokens = 0
            for body in bodies:
                for data in adapter(body):
                    events += 1
                    if data != "[DONE]":
                        tokens += extract(loads(data))
            return Tally(events, None, tokens)

        return run_payloads

    def run(bodies: Bodies) -> Tally:
        events = tokens = 0
        for body in bodies:
            for event in adapter(body):
                events += 1
                data = event.data
                if data != "[DONE]":
                    tokens += extract(loads(data))
        return Tally(events, None, tokens)

    return run


def usage_tap_runner(tap_class: Any) -> Runner:
    def run(bodies: Bodies) -> Tally:
        events = tokens = bad = 0
        for body in bodies:
            tap = tap_class("auto")
            for read in body:
                tap.feed(read)
            report = tap.finish()
            usage = report.usage
            if (
                report.status != "completed"
                or usage is None
                or usage.output_tokens is None
                or len(tap.reports) != 1
            ):
                bad += 1
                continue
            tokens += usage.output_tokens
            events += report.events
        return Tally(events, None, tokens, bad)

    return run


def scan_runner(kind: str) -> Runner:
    key = _usage_key(kind)
    needle = GEMINI_NEEDLE if kind == "gemini" else USAGE_NEEDLE

    def run(bodies: Bodies) -> Tally:
        tokens = bad = 0
        for body in bodies:
            usage = scan_last_usage(body, needle)
            if usage is None:
                bad += 1
            else:
                tokens += usage[key]
        return Tally(None, None, tokens, bad)

    return run


def newline_runner(kind: str) -> Runner:
    """The floor of any per-read call: one ``bytes.count(b"\\n")`` per read, nothing kept.
    Its line count is checked against the stream's bytes (every stream ends with a blank
    line), so it cannot be skipped."""

    def run(bodies: Bodies) -> Tally:
        bad = 0
        for body in bodies:
            lines = 0
            for read in body:
                lines += read.count(b"\n")
            bad += lines < 2
        return Tally(None, None, None, bad)

    return run


# --------------------------------------------------------------------------- registry


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "?"


@dataclass(frozen=True)
class Case:
    key: str
    label: str
    mode: str  # "event" or "usage"
    make: Callable[[str], Runner]  # corpus kind -> runner


def _labels() -> dict[str, str]:
    return {
        "ssetally.decoder": f"ssetally {_version('ssetally')} SSEDecoder.feed",
        "ssetally.eventsource": "ssetally EventSource(httpx.Response)",
        "httpx-sse.eventsource": f"httpx-sse {_version('httpx-sse')} EventSource(httpx.Response)",
        "httpx-sse.decoders": "httpx-sse decoders (no Response)",
        "httpx2.eventsource": f"httpx2 {_version('httpx2')} EventSource(httpx2.Response)",
        "openai3.decoder": f"openai {_version('openai')} SSEDecoder.iter_bytes",
        "openai2.reimpl": "openai 2.x framing (re-implemented)",
        "sseclient": f"sseclient-py {_version('sseclient-py')} SSEClient.events",
        "naive.lines": "naive line loop (sglang/llmperf style)",
    }


#: Usage-mode pairings of a framing adapter with a JSON decoder.
_JSON_PAIRS = (
    ("ssetally.decoder", "json"),
    ("ssetally.decoder", "orjson"),
    ("httpx-sse.eventsource", "json"),
    ("httpx-sse.decoders", "json"),
    ("httpx2.eventsource", "json"),
    ("openai3.decoder", "json"),
    ("openai2.reimpl", "json"),
    ("sseclient", "json"),
    ("naive.lines", "json"),
    ("naive.lines", "orjson"),
)


def _loads(name: str) -> Loads | None:
    if name == "json":
        return json.loads
    try:
        import orjson
    except ImportError:
        adapters.MISSING["orjson"] = "not installed"
        return None
    return orjson.loads


def all_cases() -> list[Case]:
    """Every case whose libraries are installed, event mode first."""
    labels = _labels()
    out: list[Case] = []
    for key, label in labels.items():
        adapter = adapters.ADAPTERS.get(key)
        if adapter is not None:
            out.append(Case(key, label, "event", _event_maker(adapter, key == "naive.lines")))
    tap = adapters.usage_tap_class()
    if tap is not None:
        out.append(
            Case(
                "ssetally.usagetap",
                "ssetally UsageTap (api=auto)",
                "usage",
                lambda kind: usage_tap_runner(tap),
            )
        )
    for key, decoder in _JSON_PAIRS:
        adapter = adapters.ADAPTERS.get(key)
        loads = _loads(decoder)
        if adapter is not None and loads is not None:
            label = f"{labels[key]} + {decoder}.loads"
            out.append(
                Case(
                    f"{key}+{decoder}",
                    label,
                    "usage",
                    _json_maker(adapter, loads, key == "naive.lines"),
                )
            )
    out.append(
        Case("pyscan.usage", "pure-Python usage scan (find + raw_decode)", "usage", scan_runner)
    )
    out.append(
        Case(
            "floor.newlines",
            'floor: bytes.count(b"\\n") per read (no usage)',
            "usage",
            newline_runner,
        )
    )
    return out


def _event_maker(adapter: adapters.Adapter, payloads: bool) -> Callable[[str], Runner]:
    return lambda kind: event_runner(adapter, payloads)


def _json_maker(adapter: adapters.Adapter, loads: Loads, payloads: bool) -> Callable[[str], Runner]:
    return lambda kind: json_runner(adapter, loads, extractor(kind), payloads)


def case_by_key(key: str) -> Case:
    for case in all_cases():
        if case.key == key:
            return case
    raise KeyError(f"no installed case {key!r}")
