"""``StreamMeter``: the one per-stream metering pipeline, I/O-free, under every front-end.

Bytes in (any chunking, optionally compressed) go to the native tap, and through the native
stripper when usage was injected; the clock readings are stamped as they arrive. When the
stream has ended, ``report()`` says what the stream itself said, ``plan()`` which fallbacks
are due, and ``complete()`` merges what they gave into the final, redacted, timed and priced
report, and records the stream's OpenTelemetry span and metrics (once per stream).
The front-ends (``connect_usage``, ``MeteringTransport``, the proxy, the ASGI middleware,
``meter``) only do the I/O around it.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from functools import lru_cache
from typing import Any, Literal
from urllib.parse import urlsplit

from .._core import ContentDecoder, DecompressionBombError, UsageChunkStripper
from .._cost import price_parts
from .._report import Attempt, ChoiceUsage, Cost, StreamReport, Timings, finished
from .._tap import UsageTap
from .._telemetry import Telemetry, shared_telemetry
from ._decode import decoder_for
from ._fallback import NOTHING, Plan, apply_fallbacks, needs_retrieval
from ._redact import redact, redact_report
from ._request import requested_model
from ._retrieval import RetrievalResult, retrieval_request, valid_response_id
from ._timeline import TimelineFields, build_timeline


class StreamMeter:
    """Meters one streamed response: ``feed`` every raw chunk, ``end`` once, then ``report``,
    ``plan`` and ``complete``.

    :param request_body: the request's JSON body as sent (for the estimate).
    :param injected: usage was asked for on the caller's behalf: the usage chunk (and the
        ``"usage":null`` members it brings) are removed from what ``feed`` returns.
    :param content_encoding: the response's ``Content-Encoding``; the tap reads a decompressed
        copy, and a body that cannot be decoded is not metered (``warnings`` says why).
    :param collect_output: reassemble the output text (needed for an estimate; always on
        for a request of ``n > 1`` choices, whose shares are apportioned by their text).
    :param keep_output: with ``collect_output``, the report carries the output even when
        the stream gave its usage (off: the output is only read when an estimate needs it,
        from the stream's reads held by the tap: ``UsageTap(collect_output="lazy")``).
    :param request_sent: the monotonic clock reading when the request was sent (default: now).
    :param secrets: the request's credentials, redacted from the final report.
    :param api: the API the stream speaks (``UsageTap``'s ``api``; ``auto`` detects it).
    :param price: price the final report (``cost``, ``choices``); without, ``cost_reason``
        says pricing was off.
    :param telemetry: where ``complete()`` records the stream's span and metrics: True for
        the process's shared ``Telemetry`` (the global OpenTelemetry providers), False for
        nowhere, or a ``Telemetry`` of its own.
    :param timeline: also log each output-bearing event's arrival and tokens
        (``Timings.timeline``); off by default (then no ``stamp`` per event).
    :param clock: the monotonic clock to read (``time.monotonic``, which the native tap then
        reads itself; tests give their own).
    """

    __slots__ = (
        "_clock",
        "_decoder",
        "_first_byte",
        "_first_content",
        "_keep_output",
        "_last_content",
        "_native",
        "_pass_decoded",
        "_price",
        "_recorded",
        "_stamps",
        "_stripper",
        "_tap",
        "end_time",
        "ended_by",
        "faults",
        "http_status",
        "metering",
        "request_body",
        "request_sent",
        "responses",
        "secrets",
        "server",
        "stopped_by_client",
        "telemetry",
        "undecodable",
        "warnings",
    )

    def __init__(
        self,
        *,
        request_body: Mapping[str, Any] | None = None,
        injected: bool = False,
        content_encoding: str = "",
        collect_output: bool = False,
        keep_output: bool = True,
        request_sent: float | None = None,
        secrets: tuple[str, ...] = (),
        api: str = "auto",
        pass_decoded: bool = False,
        telemetry: Telemetry | bool = True,
        price: bool = True,
        timeline: bool = False,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._clock = clock
        self.request_body = request_body
        self._price = price
        self.telemetry = telemetry
        #: Host and port the request went to, as ``plan()`` read them from its ``request``.
        self.server: tuple[str | None, int | None] = (None, None)
        #: The answer's HTTP status, as given to ``plan()``.
        self.http_status: int | None = None
        self._recorded = False
        self.secrets = secrets
        self.request_sent = clock() if request_sent is None else request_sent
        # The clock readings, kept here with a clock of the caller's own; with the default
        # clock the native tap takes the readings of output events (no Python per chunk).
        self._native = clock is time.monotonic
        self._first_byte: float | None = None
        self._first_content: float | None = None
        self._last_content: float | None = None
        self.end_time: float | None = None
        self.ended_by: str | None = None
        #: The caller stopped reading before the body ended.
        self.stopped_by_client = False
        self.warnings: list[str] = []
        #: Pipeline stages that failed (``decode``, ``tap``, ``strip``): counted by gateways.
        self.faults: list[str] = []
        #: Every response the stream held, once ``report()`` ran (usually one).
        self.responses: tuple[StreamReport, ...] = ()
        #: False once the tap stopped reading this body (undecodable, or a fault).
        self.metering = True
        #: Why the body stopped decoding (bomb, corrupt), when ``pass_decoded`` is on.
        self.undecodable: str | None = None
        self._pass_decoded = pass_decoded
        # Per-choice shares of an n > 1 stream are apportioned by each choice's text.
        several = request_body is not None and _count(request_body.get("n")) > 1
        self._keep_output = keep_output or several
        collect: bool | Literal["lazy"] = collect_output or several
        if collect and not self._keep_output:
            collect = "lazy"  # read only if the stream gives no usage
        self._tap = UsageTap(api, collect_output=collect, timeline=timeline, clock=self._native)
        #: Each read that carried output gives the tap its clock reading (``timeline``), unless
        #: the tap reads the clock itself.
        self._stamps = timeline and not self._native
        self._decoder: ContentDecoder | None = None
        try:
            self._decoder = decoder_for(content_encoding)
        except ValueError as exc:
            self._stop("decode", str(exc))
        # Compressed bytes cannot be stripped; injecting front-ends ask for identity.
        strip = injected and (self._decoder is None or pass_decoded) and self.metering
        self._stripper: UsageChunkStripper | None = UsageChunkStripper() if strip else None

    def _undecodable(self, why: str) -> None:
        self._stop("decode", why)
        if self._pass_decoded:
            self.undecodable = why

    def _stop(self, stage: str, why: str) -> None:
        self.metering = False
        self.faults.append(stage)
        self.warnings.append(why)

    @property
    def first_byte(self) -> float | None:
        """The clock reading at the first raw chunk."""
        if self._first_byte is None and self._native:
            return self._tap.first_read_at
        return self._first_byte

    @property
    def first_content(self) -> float | None:
        """The clock reading at the first chunk that completed an output-bearing event."""
        return self._tap.first_output_at if self._native else self._first_content

    @property
    def last_content(self) -> float | None:
        """The clock reading at the last chunk that completed an output-bearing event."""
        return self._tap.last_output_at if self._native else self._last_content

    @property
    def compressed(self) -> bool:
        """True when the body is compressed (the tap reads a decompressed copy)."""
        return self._decoder is not None

    @property
    def stripping(self) -> bool:
        """True while injected usage is being removed from the bytes ``feed`` returns."""
        return self._stripper is not None

    @property
    def stripped(self) -> int:
        """Usage chunks removed so far."""
        return 0 if self._stripper is None else self._stripper.stripped

    def feed(self, chunk: bytes) -> bytes:
        """Meter one raw chunk; returns the bytes to pass on (``chunk`` itself unless usage
        was injected). Never raises: a fault stops metering or stripping, never the stream."""
        if self._first_byte is None:
            self._first_byte = self._clock()
        data = chunk
        if self.metering:
            tap = self._tap
            before = tap.delta_chunks
            try:
                if self._decoder is not None:
                    data = self._decoder.feed(chunk)
                tap.feed(data)
            except DecompressionBombError as exc:
                self._undecodable(f"metering stopped: decompression limit passed: {exc}")
                data = b""
            except ValueError as exc:  # DecompressionError: not what it says it is
                self._undecodable(f"metering stopped: the body does not decode: {exc}")
                data = b""
            except Exception as exc:  # noqa: BLE001 - metering never breaks the stream
                self.tap_failed(exc)
            else:
                if not self._native and tap.delta_chunks != before:
                    now = self._clock()
                    if self._first_content is None:
                        self._first_content = now
                    self._last_content = now
                    if self._stamps:
                        tap.stamp(now)
        elif self._pass_decoded and self._decoder is not None:
            data = self._decode_only(chunk)
        if self._pass_decoded:
            chunk = data
        stripper = self._stripper
        if stripper is None:
            return chunk
        try:
            return stripper.feed(chunk)
        except Exception as exc:  # noqa: BLE001 - what it held is lost; pass bytes on as they are
            self._stripper = None
            self.faults.append("strip")
            self.warnings.append(f"usage stripping stopped: {type(exc).__name__}: {exc}")
            return chunk

    def _decode_only(self, chunk: bytes) -> bytes:
        """The decoded bytes of a body no longer metered (a tap fault) but read decoded: raw
        compressed bytes never follow decoded ones; nothing passes once it stops decoding."""
        if self.undecodable is not None or self._decoder is None:
            return b""
        try:
            return self._decoder.feed(chunk)
        except Exception as exc:  # noqa: BLE001 - a bomb, corrupt input, no memory
            self.undecodable = f"the body stopped decoding: {type(exc).__name__}: {exc}"
            self.warnings.append(self.undecodable)
            return b""

    def direct(self) -> Callable[[Any], None] | None:
        """For a front-end's own per-chunk loop, when a raw chunk needs nothing but the
        native tap (identity body, no stripping, metering on, the default clock): the tap's
        ``feed``, else None (call ``feed`` above instead).

        The loop calls it with each chunk and passes the chunk itself on (the tap reads the
        clock); if it raises, ``tap_failed(exc)`` and no more feeds."""
        return self._tap.feed if self._one_call() and self._stripper is None else None

    def _one_call(self) -> bool:
        """Whether one native call per chunk does all that ``feed`` does: metering on, an
        identity body, the default clock (which the tap reads itself)."""
        return self.metering and self._native and self._decoder is None

    def relay_feed(self) -> Callable[[bytes], bytes | None]:
        """What a relay calls per raw chunk: ``feed``, or when one native call does all that
        ``feed`` does (an identity body, metering on, the default clock) the tap's ``feed``
        (returns None: the chunk itself passes on) or, with usage injected, the stripper's
        ``feed`` given the tap (returns what passes on). If it raises, ``relay_failed``."""
        if not self._one_call():
            return self.feed
        if self._stripper is None:
            return self._tap.feed
        feed, tap = self._stripper.feed, self._tap
        # Positional: a keyword argument would cost a dict per chunk.
        return lambda data: feed(data, tap)

    def relay_native(self) -> UsageTap | tuple[UsageChunkStripper, UsageTap] | None:
        """What ``relay_feed``'s one native call is, for a native relay that makes it itself
        (no Python call per chunk): the tap (its ``feed``) or, with usage injected, the
        stripper and the tap it feeds (``stripper.feed(chunk, tap)``); None when ``relay_feed``
        is ``feed``."""
        if not self._one_call():
            return None
        return self._tap if self._stripper is None else (self._stripper, self._tap)

    def relay_failed(self, exc: BaseException) -> None:
        """``relay_feed``'s call raised: metering stops, and stripping with it (what the
        stripper held is lost); the relay passes the chunks on as they come."""
        self.tap_failed(exc)
        if self._stripper is not None:
            self._stripper = None
            self.faults.append("strip")
            self.warnings.append(f"usage stripping stopped: {type(exc).__name__}: {exc}")

    def tap_failed(self, exc: BaseException) -> None:
        """The tap raised on a chunk (not bytes, say): metering stops, the stream goes on."""
        self._stop("tap", f"metering stopped: {type(exc).__name__}: {exc}")

    def held(self) -> bytes:
        """At the end of the body: the bytes the stripper still holds back, unchanged."""
        stripper = self._stripper
        if stripper is None:
            return b""
        try:
            return stripper.finish()
        except Exception as exc:  # noqa: BLE001 - fail open
            self.faults.append("strip")
            self.warnings.append(f"usage stripping failed: {type(exc).__name__}: {exc}")
            return b""

    def warn(self, text: str) -> None:
        """Add a warning to the report (e.g. from the front-end's own event decoder)."""
        self.warnings.append(text)

    def end(self, how: str, *, by_client: bool = False) -> None:
        """The body ended: ``eof``, ``closed early`` or an error description; ``by_client``
        when the caller stopped reading (break, close, cancel, disconnect): a stream left
        without its end is then ``cancelled``, not ``truncated``. Only the first call counts."""
        if self.end_time is None:
            self.end_time = self._clock()
            self.ended_by = how
            self.stopped_by_client = by_client
            if how == "eof" and self._decoder is not None and self.metering:
                try:
                    self._decoder.finish()
                except ValueError as exc:
                    self.faults.append("decode")
                    self.warnings.append(f"the compressed body ended early: {exc}")

    def report(self) -> StreamReport:
        """What the stream itself said (no fallbacks yet). Ends the stream if it was not."""
        self.end("closed early", by_client=True)
        report = self._tap.finish()
        if self.stopped_by_client and report.status == "truncated":
            report = report.replace(status="cancelled")
        self.responses = responses = self._tap.reports
        if len(responses) > 1:
            report = _combined(report, responses)
        usage = report.usage
        if (
            usage is not None
            and len(responses) == 1
            and not self._keep_output
            and not self.warnings
        ):
            return report  # the tap's own stream attempt, and nothing to add to it
        if usage is not None:
            reason = "usage read from the stream"
        else:
            who = "the client stopped reading: " if self.stopped_by_client else ""
            reason = f"no usage in the stream (status {report.status}, ended: {who}{self.ended_by})"
        keep = self._keep_output or usage is None
        return report.replace(
            attempts=(Attempt("stream", usage is not None, reason),),
            output=self._tap.output() if keep else None,
            warnings=report.warnings + tuple(self.warnings),
        )

    def plan(
        self,
        report: StreamReport,
        *,
        retrieve: bool,
        estimate: bool,
        request: Any = None,
        interrupted: str | None = None,
        http_status: int | None = None,
    ) -> Plan:
        """The fallbacks ``report`` needs. ``request`` (anything with ``url`` and ``headers``)
        is what the retrieval reads back; ``interrupted`` names a cancellation, during which
        nothing may wait on the network; an ``http_status`` of 400 or more gets no fallback
        (an error answer is not estimated as if it were output). A body the tap could not read gets none: an estimate
        of unread output would count nothing."""
        self.http_status = http_status
        if request is not None:
            self.server = _server_of(request)
        if not self.metering or report.usage is not None:
            return NOTHING
        if http_status is not None and http_status >= 400:
            # An error answer generated no output to estimate, whatever its content type.
            reason = f"the answer is an HTTP {http_status} error; no usage to estimate"
            return Plan(skipped=(Attempt("estimate", False, reason),))
        target = None
        skipped: tuple[Attempt, ...] = ()
        if retrieve and needs_retrieval(report, self.stopped_by_client):
            body = self.request_body
            if body is not None and body.get("store") is False:
                reason = "the request set store=false: nothing to read back; retrieval skipped"
                skipped = (Attempt("retrieval", False, reason),)
            elif self._tap.store is False:
                reason = (
                    "the response said store=false (response.created): nothing to read back; "
                    "retrieval skipped"
                )
                skipped = (Attempt("retrieval", False, reason),)
            elif interrupted is not None:
                reason = f"interrupted ({interrupted}); retrieval skipped"
                skipped = (Attempt("retrieval", False, reason),)
            elif not valid_response_id(report.response_id):
                reason = "the stream's response id is not a valid id; retrieval skipped"
                skipped = (Attempt("retrieval", False, reason),)
            elif request is not None:
                target = retrieval_request(request, report.response_id or "")
        return Plan(target, estimate, skipped)

    def complete(
        self, report: StreamReport, plan: Plan, retrieved: RetrievalResult | None = None
    ) -> StreamReport:
        """The final report: the fallbacks' results merged, credentials redacted, timings
        attached, priced (``cost``, ``choices``, ``cost_reason``), and recorded to
        OpenTelemetry the first time. Never raises. (Runs the estimate when planned, and the
        pricing: CPU work, off the loop where the front-end can.)"""
        if plan is not NOTHING or retrieved is not None:
            report = apply_fallbacks(report, plan, retrieved, self.request_body)
        report = redact_report(report, self.secrets)
        timeline, problem = self._timeline(report)
        warnings = report.warnings if problem is None else (*report.warnings, problem)
        usage = report.usage
        timings = _new_tuple(
            Timings,
            (
                self.request_sent,
                self.first_byte,
                self.first_content,
                self.last_content,
                self.end_time,
                None if usage is None else usage.output_tokens,
                *timeline,
            ),
        )
        report = finished(report, warnings, timings, *self._priced(report))
        if not self._recorded:
            self._recorded = True
            self._record(report)
        return report

    def _priced(
        self, report: StreamReport
    ) -> tuple[Cost | None, tuple[ChoiceUsage, ...], str | None]:
        """``(cost, choices, cost_reason)`` of the final report. Never raises."""
        if not self._price:
            return None, (), "pricing is off"
        # The request's wall-clock time picks the price in force then.
        when = time.time() - (time.monotonic() - self.request_sent)
        try:
            asked = requested_model(self.request_body)
            cost, choices, reason = price_parts(report, asked, when)
        except Exception as exc:  # noqa: BLE001 - pricing never breaks metering
            return None, (), f"pricing failed: {type(exc).__name__}"
        # The reason quotes model names, which come from the network.
        return cost, choices, None if reason is None else redact(reason, self.secrets)

    def _record(self, report: StreamReport) -> None:
        telemetry = self.telemetry
        if telemetry is False:
            return
        if telemetry is True:
            telemetry = shared_telemetry()
        if not telemetry.recording:
            return
        status = self.http_status
        host, port = self.server
        telemetry.record_stream(
            report,
            request_model=requested_model(self.request_body),
            server_address=host,
            server_port=port,
            error_type=str(status) if status is not None and status >= 400 else None,
        )

    def _timeline(self, report: StreamReport) -> tuple[TimelineFields, str | None]:
        """The timeline fields of the final ``report`` (empty unless asked for), and why
        there is none when building it failed."""
        timeline = _NO_TIMELINE
        raw = self._tap.timeline_raw()
        if raw is not None:
            model = report.model
            if model is None and self.request_body is not None:
                model = _str_or_none(self.request_body.get("model"))
            try:
                timeline = build_timeline(
                    raw,
                    request_sent=self.request_sent,
                    end=self.end_time,
                    usage=report.usage,
                    model=model,
                    responses=max(1, len(self.responses)),
                )
            except Exception as exc:  # noqa: BLE001 - the report comes, without a timeline
                return timeline, f"no timeline: {type(exc).__name__}: {exc}"
        return timeline, None


#: The timeline fields of a stream read without a timeline.
_NO_TIMELINE = TimelineFields()
#: Builds a NamedTuple from a ready tuple of all its fields without a call per field.
_new_tuple = tuple.__new__


def _count(value: Any) -> int:
    return value if isinstance(value, int) and not isinstance(value, bool) else 0


def _server_of(request: Any) -> tuple[str | None, int | None]:
    """Host and port of a request's ``url`` (an httpx URL or a string). Never raises."""
    try:
        url = request.url
        if isinstance(url, str):
            return _server_of_text(url)
        host, port, scheme = url.host, url.port, url.scheme
    except Exception:  # noqa: BLE001 - a request without a usable url has no server
        return None, None
    return _server(host, port, scheme)


@lru_cache(maxsize=256)
def _server_of_text(url: str) -> tuple[str | None, int | None]:
    """``_server_of`` a URL string (a gateway sends to the same few, again and again)."""
    try:
        parts = urlsplit(url)
        return _server(parts.hostname, parts.port, parts.scheme)
    except ValueError:  # a port out of range, say
        return None, None


def _server(host: Any, port: Any, scheme: str) -> tuple[str | None, int | None]:
    if port is None:
        port = {"https": 443, "http": 80}.get(scheme)
    return (host if isinstance(host, str) and host else None), (
        port if isinstance(port, int) else None
    )


def _str_or_none(value: Any) -> str | None:
    return value if isinstance(value, str) else None


def _combined(last: StreamReport, responses: tuple[StreamReport, ...]) -> StreamReport:
    """The report of a stream that held several responses: the last one's (as ``UsageTap``
    reports it), with a warning that names every response and what it used."""
    parts = "; ".join(
        f"{r.response_id}: {r.status}, "
        + (
            "no usage"
            if r.usage is None
            else f"{r.usage.input_tokens} in / {r.usage.output_tokens} out"
        )
        for r in responses
    )
    warning = f"the stream held {len(responses)} responses ({parts}); the report is the last one's"
    return last.replace(warnings=(*last.warnings, warning[:2000]))
