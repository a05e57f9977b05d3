"""Per-stream metering shared by ``MeteringTransport`` and the metering proxy.

``StreamTally`` is the hot path: it feeds each chunk of a response to a ``UsageTap`` and stamps
the clock readings, creating no Python object per event and copying nothing (unless the body
is compressed: then the tap reads a decompressed copy, the caller still gets the raw bytes).
Everything else (fallbacks, the final report) happens once, when the stream has ended.
"""

from __future__ import annotations

import json
import time
import zlib
from collections.abc import Mapping
from typing import Any, Protocol

from ._meter import Meter
from ._report import Attempt, StreamReport
from ._retrieve import RetrievalResult
from ._tap import UsageTap

#: Request paths whose JSON body is worth reading (LLM endpoints).
_LLM_PATH_ENDINGS = (
    "/chat/completions",
    "/completions",
    "/responses",
    "/messages",
    "/generateContent",
    "/streamGenerateContent",
    "/chat",
    "/interactions",
)


class _Decompressor(Protocol):
    def decompress(self, data: bytes) -> bytes: ...


class _Deflate:
    """``deflate`` as servers send it: zlib-wrapped, or (wrongly but commonly) raw."""

    def __init__(self) -> None:
        self._obj: Any = None
        self._first = True

    def decompress(self, data: bytes) -> bytes:
        if self._first:
            self._first = False
            self._obj = zlib.decompressobj()
            try:
                return bytes(self._obj.decompress(data))
            except zlib.error:
                self._obj = zlib.decompressobj(-zlib.MAX_WBITS)
        return bytes(self._obj.decompress(data))


class _Brotli:
    def __init__(self, module: Any) -> None:
        self._obj = module.Decompressor()

    def decompress(self, data: bytes) -> bytes:
        process = getattr(self._obj, "process", None) or self._obj.decompress
        return bytes(process(data))


def decompressor_for(content_encoding: str) -> _Decompressor | None:
    """A decoder for a ``Content-Encoding`` header, None for identity.

    Raises ``ValueError`` for an encoding that cannot be read (the stream then passes through
    unmetered).
    """
    codings = [c.strip().lower() for c in content_encoding.split(",") if c.strip()]
    codings = [c for c in codings if c != "identity"]
    if not codings:
        return None
    if len(codings) > 1:
        raise ValueError(f"stacked content codings {content_encoding!r} are not metered")
    coding = codings[0]
    if coding in ("gzip", "x-gzip"):
        return zlib.decompressobj(16 + zlib.MAX_WBITS)
    if coding == "deflate":
        return _Deflate()
    if coding == "br":
        for name in ("brotli", "brotlicffi"):
            try:
                module = __import__(name)
            except ImportError:
                continue
            return _Brotli(module)
    raise ValueError(f"content-encoding {coding!r} cannot be metered (no decoder installed)")


def is_llm_path(path: str) -> bool:
    """True for a path that looks like an LLM endpoint (its JSON body is worth reading)."""
    path = path.split("?", 1)[0].rstrip("/")
    return path.endswith(_LLM_PATH_ENDINGS) or ":streamGenerateContent" in path


def parse_json_object(body: bytes | None) -> dict[str, Any] | None:
    """``body`` parsed as a JSON object, None if it is not one."""
    if not body:
        return None
    try:
        obj = json.loads(body)
    except ValueError:
        return None
    return obj if isinstance(obj, dict) else None


def requested_model(body: Mapping[str, Any] | None) -> str | None:
    """The ``model`` a request body asked for."""
    model = None if body is None else body.get("model")
    return model if isinstance(model, str) else None


class StreamTally:
    """Meters one response body: ``feed`` each raw chunk, then ``finish`` once.

    ``estimate=True`` makes the tap reassemble the output text (needed to count it).
    ``content_encoding`` is the response's ``Content-Encoding``: a compressed body is metered
    through a decompressor; one that cannot be decoded is not metered (``warnings`` says why).
    """

    __slots__ = ("_decoder", "_tap", "meter", "metering")

    def __init__(
        self, *, estimate: bool = False, content_encoding: str = "", request_sent: float = 0.0
    ) -> None:
        self.meter = Meter(None, hide_usage_chunk=False)
        self.meter.tap = self._tap = UsageTap(collect_output=estimate)
        if request_sent:
            self.meter.request_sent = request_sent
        #: False once metering is off for this stream (undecodable body, or a fault).
        self.metering = True
        self._decoder: _Decompressor | None = None
        try:
            self._decoder = decompressor_for(content_encoding)
        except ValueError as exc:
            self.metering = False
            self.meter.warnings.append(str(exc))

    def feed(self, chunk: bytes) -> None:
        """Tap one raw chunk of the body. Never raises: a fault turns metering off."""
        meter = self.meter
        now = time.monotonic()
        if meter.first_byte is None:
            meter.first_byte = now
        if not self.metering:
            return
        tap = self._tap
        before = tap.delta_chunks
        try:
            tap.feed(chunk if self._decoder is None else self._decoder.decompress(chunk))
        except Exception as exc:  # noqa: BLE001 - metering never breaks the stream
            self.metering = False
            meter.warnings.append(f"metering stopped: {type(exc).__name__}: {exc}")
            return
        if tap.delta_chunks != before:
            if meter.first_content is None:
                meter.first_content = now
            meter.last_content = now

    @property
    def compressed(self) -> bool:
        """True when the body is compressed (the tap reads a decompressed copy)."""
        return self._decoder is not None

    def finish(self, how: str) -> StreamReport:
        """End of the body (``eof``, ``closed early`` or an error): what the stream said."""
        self.meter.on_end(how)
        return self.meter.stream_report()

    def needs_fallback(self, report: StreamReport, *, retrieve: bool, estimate: bool) -> bool:
        """True when a retrieval or an estimate is to be run for this report (never for a
        body that was not metered: an estimate of unread output would count nothing)."""
        if not self.metering or report.usage is not None:
            return False
        return estimate or (retrieve and self.meter.needs_retrieval(report))

    def needs_retrieval(self, report: StreamReport) -> bool:
        """A Responses stream without its terminal event, whose usage may be stored."""
        return self.meter.needs_retrieval(report)

    def with_retrieval(self, report: StreamReport, result: RetrievalResult) -> StreamReport:
        """Merge a retrieval's outcome into the report."""
        return self.meter.with_retrieval(report, result)

    def with_estimate(self, report: StreamReport, request_body: bytes | None) -> StreamReport:
        """Count tokens with tiktoken when no usage could be had; never raises."""
        if report.usage is not None:
            return report
        self.meter.request_body = parse_json_object(request_body)
        return self.meter.with_estimate(report)

    def final(self, report: StreamReport) -> StreamReport:
        """The report with its timings: call last."""
        return self.meter.with_timings(report)


def skipped(report: StreamReport, source: str, reason: str) -> StreamReport:
    """The report with a failed attempt of ``source`` recorded."""
    return report.replace(attempts=(*report.attempts, Attempt(source, False, reason)))


def report_of_json_body(body: bytes) -> StreamReport | None:
    """The report of a non-streamed JSON answer (Chat, Completions, Responses, Messages...),
    read by the same native code as streams; None when the body holds no usage."""
    obj = parse_json_object(body)
    if obj is None or not isinstance(obj.get("usage") or obj.get("usageMetadata"), dict):
        return None
    if obj.get("object") == "response":
        event: Any = {"type": "response.completed", "response": obj}
        data = b"event: response.completed\ndata: " + json.dumps(event).encode() + b"\n\n"
    elif obj.get("type") == "message":
        # Anthropic Messages: message_start with the usage, the stop reason, message_stop.
        usage = obj["usage"]
        events = [
            ("message_start", {"type": "message_start", "message": obj}),
            (
                "message_delta",
                {
                    "type": "message_delta",
                    "delta": {"stop_reason": obj.get("stop_reason")},
                    "usage": {"output_tokens": usage.get("output_tokens")},
                },
            ),
            ("message_stop", {"type": "message_stop"}),
        ]
        data = b"".join(
            b"event: " + name.encode() + b"\ndata: " + json.dumps(e).encode() + b"\n\n"
            for name, e in events
        )
    else:
        data = b"data: " + body.strip() + b"\n\n"
    tap = UsageTap()
    tap.feed(data)
    report = tap.finish()
    if report.usage is None:
        return None
    attempt = Attempt("stream", True, "usage read from the JSON answer")
    return report.replace(attempts=(attempt,))
