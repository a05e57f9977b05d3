"""Type stubs of the native extension ``ssetally._core``.

Read-only attributes of the native objects are declared ``Final``: Python code cannot assign
them, while the object itself updates them as it is fed.
"""

from collections.abc import Callable, Sequence
from typing import Any, Final, Literal, final

from typing_extensions import Self, disjoint_base

__all__ = [
    "DEFAULT_MAX_EVENT_SIZE_BYTES",
    "MAX_HELD_BYTES",
    "MAX_HELD_READS",
    "BodyRelay",
    "ContentDecoder",
    "DecompressionBombError",
    "DecompressionError",
    "EventTooLargeError",
    "LineDecoder",
    "SSEDecoder",
    "ServerSentEvent",
    "Tally",
    "UpstreamBody",
    "UsageChunkStripper",
    "UsageTap",
    "__version__",
    "clean_line",
    "compact_json",
    "head_end",
    "json_object",
    "mentions",
    "record_is_clean",
]
__version__: str
DEFAULT_MAX_EVENT_SIZE_BYTES: int
#: Raw bytes, and reads, a ``UsageTap(collect_output="lazy")`` holds of a stream.
MAX_HELD_BYTES: int
MAX_HELD_READS: int

class EventTooLargeError(ValueError):
    """An event exceeded the decoder's ``max_event_size`` and was discarded.

    ``events`` holds the events the same ``feed`` call decoded successfully (``lines`` the
    lines, when ``LineDecoder`` raised it for a line over its ``max_line_size``).
    """

    events: list[ServerSentEvent]
    lines: list[str]

@final
class ServerSentEvent:
    """One Server-Sent Event: immutable, comparable, hashable."""

    def __new__(
        cls,
        event: str | None = None,
        data: str | None = None,
        id: str | None = None,
        retry: int | None = None,
    ) -> ServerSentEvent: ...
    event: Final[str]
    """The event type; ``"message"`` when the stream named none."""
    data: Final[str]
    """The data lines of the event, joined with LF."""
    id: Final[str]
    """The last event ID at dispatch (it persists across events)."""
    retry: Final[int | None]
    """The reconnection time in milliseconds set in this event's block."""
    def json(self) -> Any:
        """The data parsed as JSON."""
    def __eq__(self, other: object, /) -> bool: ...
    def __hash__(self) -> int: ...

@final
class SSEDecoder:
    """Incremental WHATWG Server-Sent Events decoder over byte chunks cut anywhere."""

    def __new__(
        cls, *, max_event_size: int = 16777216, retry_only_events: bool = False
    ) -> SSEDecoder: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[ServerSentEvent]:
        """Decode a chunk; returns the events it completed.

        Raises ``EventTooLargeError`` (carrying the chunk's other events) when an event
        exceeded ``max_event_size``; decoding goes on after it. No more than
        ``max_event_size`` bytes of an event are ever buffered, however the stream is cut,
        and a discarded event's memory is released. Raises ``MemoryError`` when memory to
        buffer an event could not be allocated (that event is discarded, decoding goes on).
        """
    def finish(self) -> bool:
        """End of stream: drop an unterminated event and reset. True when one was dropped."""
    last_event_id: Final[str]
    """The last event ID seen, for a ``Last-Event-ID`` reconnect header."""
    max_event_size: Final[int]

@final
class LineDecoder:
    """Splits bytes into lines at CR, LF or CRLF (the SSE line rule)."""

    def __new__(cls, *, max_line_size: int = 16777216) -> LineDecoder: ...
    def feed(self, data: bytes | bytearray | memoryview) -> list[str]:
        """The lines ``data`` completes, without their terminators. A line longer than
        ``max_line_size`` (16 MiB by default) is discarded and raises ``EventTooLargeError``,
        whose ``lines`` attribute holds the other lines of the call; no more than
        ``max_line_size`` bytes of a line are ever buffered. ``MemoryError`` when memory to
        buffer a line could not be allocated (the line is discarded)."""
    max_line_size: Final[int]
    def finish(self) -> list[str]:
        """End of input: the unterminated last line, if any."""

@disjoint_base
class UsageTap:
    """Native usage extractor: frames the stream and reads usage with no Python object per
    event. The public ``ssetally.UsageTap`` wraps it with typed reports."""

    def __new__(
        cls,
        api: str = "auto",
        *,
        max_event_size: int = 16777216,
        collect_output: bool | Literal["lazy"] | None = False,
        timeline: bool = False,
        clock: bool = False,
    ) -> Self:
        """``collect_output``: True reassembles the output as it comes; ``"lazy"`` only where
        it is needed for an estimate: the stream's raw reads are held (up to
        ``MAX_HELD_BYTES`` bytes in ``MAX_HELD_READS`` reads, past which it collects as it
        comes) and read again at ``finish_raw`` when some response gave no usage, with the
        reports and output of ``True``; the output is None until then, and after it when
        every response gave its usage (with a timeline, it is ``True``). Anything else
        raises ``ValueError``."""
    def feed(self, data: bytes | bytearray | memoryview) -> None:
        """Tap one chunk of the stream. Never raises on any bytes. An event over
        ``max_event_size`` is discarded (never buffered beyond the limit) and counted in
        the report's ``oversized_events``; so is one that memory could not be allocated for
        (with a warning). With ``clock`` it notes the times of ``first_read_at``,
        ``first_output_at`` and ``last_output_at`` and stamps the timeline."""
    first_read_at: Final[float | None]
    """``time.monotonic()`` at the stream's first ``feed`` (``clock`` only)."""
    first_output_at: Final[float | None]
    """``time.monotonic()`` at the first ``feed`` that completed an output event."""
    last_output_at: Final[float | None]
    """``time.monotonic()`` at the last ``feed`` that completed an output event."""
    def finish_raw(self) -> list[tuple[Any, ...]]:
        """End of stream: a report per response (at least one), as tuples of every field of
        ``StreamReport`` in order (usages as tuples of every field of ``Usage``); resets the
        tap."""
    def snapshot_raw(self) -> list[tuple[Any, ...]]:
        """The reports so far, without ending the stream."""
    def output(self) -> dict[str, Any] | None:
        """The reassembled output of the current response (after ``finish_raw``, the last
        one), or None unless ``collect_output`` was set: ``{"response_id": str | None,
        "choices": [{"index", "text", "refusal", "reasoning", "finish_reason" (str | None),
        "output_tokens" (int | None: the choice's own count where the provider reports
        one, Gemini ``tokenCount``), "tool_calls": [{"index", "id", "name", "arguments"}]}]}``."""
    def outputs(self) -> list[dict[str, Any]]:
        """The reassembled output of every response of the stream, in order, one per report
        of ``finish_raw`` (a capture of several concatenated responses gives several), each
        shaped like ``output()`` and keyed by its ``response_id``; ``[]`` unless
        ``collect_output`` was set. Readable after ``finish_raw`` until the next stream's
        bytes arrive."""
    def clear_output(self) -> None:
        """Clear the reassembled output."""
    def stamp(self, at: float) -> None:
        """Give the output events of the reads fed since the last call the clock reading
        ``at`` (no-op unless ``timeline`` was set)."""
    def timeline_raw(
        self,
    ) -> tuple[list[float], list[int], list[int | None], str, int, int, int] | None:
        """The per-event timing log, or None unless ``timeline`` was set: per output event
        its clock reading (NaN until stamped), the characters of output text up to and
        including it and the running output token count right after it (None when no usage
        came); then the text (at most 16 MiB of it), its length in characters, and how many
        events past the first 100,000 were only counted, with their characters."""
    store: Final[bool | None]
    """The ``store`` flag the response echoed in ``response.created`` (Responses API),
    for the stream being read or else the last one finished; None when it did not say.
    ``False`` means the response cannot be read back afterwards."""
    bytes_fed: Final[int]
    delta_chunks: Final[int]
    response_id: Final[str | None]
    api: Final[str]

@final
class BodyRelay:
    """Relays one answer's body chunks to a client transport: each chunk is metered, framed
    as one HTTP/1.1 chunk and written in one native call. ``write`` and ``is_closing`` are
    the transport's methods, ``flow`` has ``write_paused`` (past the transport's high-water
    mark). ``feed``, when given, meters each chunk and returns what to pass on (None: the
    chunk itself); should it raise an ``Exception``, ``failed`` is told it, the chunk passes
    on and nothing more is fed. ``native`` (with ``feed``) does what ``feed`` does with no
    Python call per chunk: a tap (``tap.feed(chunk)``) or a stripper and the tap it feeds
    (``stripper.feed(chunk, tap)``)."""

    def __new__(
        cls,
        write: Callable[[bytes], object],
        is_closing: Callable[[], bool],
        flow: Any,
        feed: Callable[[bytes], bytes | None] | None = None,
        failed: Callable[[BaseException], object] | None = None,
        native: UsageTap | tuple[UsageChunkStripper, UsageTap] | None = None,
    ) -> BodyRelay: ...
    def __call__(self, body: bytes) -> bool:
        """Relay ``body``; True when the transport is past its high-water mark. A transport
        that fails or is closing is not written to (the client's disconnect ends the
        relay)."""
    @property
    def metering(self) -> bool:
        """Whether chunks are still metered (``feed`` given and never failed)."""
    upstream_bytes: Final[int]
    """Body bytes received from the upstream."""
    client_bytes: Final[int]
    """Body bytes written to the client, without the chunk framing."""

def head_end(data: bytes) -> int:
    """Where the header section in ``data`` ends (the index past its blank line: CRLF CRLF,
    or a bare LF in either place), or -1 when it does not yet."""

@final
class UpstreamBody:
    """An upstream answer's body, read as the connection's asyncio protocol: each read is
    transfer-decoded natively (chunked, ``Content-Length`` or to the close) and its body
    bytes go to the diverted ``BodyRelay``, or to ``owner.on_body(chunk)`` while none is.
    ``owner`` (the connection) is also given ``body_congested()`` (the relay's client is past
    its high-water mark), ``body_done(stray)`` once the body ended (``stray``: bytes followed
    it in the same read), ``body_failed(message)`` when it cannot be read, and the
    transport's ``eof_received``, ``connection_lost``, ``pause_writing`` and
    ``resume_writing``. ``bodyless`` for an answer to HEAD, a 204 or a 304; a chunked body's
    trailer section holds at most ``max_trailer_bytes``, a chunk-size line 4,096 bytes.
    Raises ``ValueError`` for a ``Content-Length`` that is not one number."""

    def __new__(
        cls,
        owner: Any,
        transfer_encoding: bytes | None,
        content_length: bytes | None,
        bodyless: bool,
        max_trailer_bytes: int,
    ) -> UpstreamBody: ...
    def divert(self, relay: BodyRelay | None) -> None:
        """Hand every body byte read from now on to ``relay`` (None: to ``owner.on_body``)."""
    @property
    def done(self) -> bool:
        """The body has ended."""
    framing: Final[str]
    """How the body is delimited: ``chunked``, ``length`` or ``close``."""
    def idle_seconds(self) -> float:
        """Seconds since the last read."""
    def data_received(self, data: bytes) -> None:
        """One read of the connection."""
    def eof_received(self) -> bool | None:
        """The upstream closed its side."""
    def connection_lost(self, exc: BaseException | None) -> None: ...
    def pause_writing(self) -> None: ...
    def resume_writing(self) -> None: ...

@final
class UsageChunkStripper:
    """Removes what ``stream_options.include_usage``, requested on the caller's behalf, adds
    to a Chat Completions stream: the usage-only chunk (``"choices": []`` with a ``usage``
    object), and the ``"usage": null`` member of every other chunk (a top-level ``null``
    usage of a chunk with a ``choices`` array, with its separating comma, wherever it
    stands). Every other byte is forwarded unchanged, held back only until its event block
    ends; a chunk whose JSON does not parse is forwarded as it is.

    At most ``max_event_size`` bytes of a block (16 MiB by default,
    ``DEFAULT_MAX_EVENT_SIZE_BYTES``) are held: a longer block is forwarded unchanged as it
    arrives, unstripped, and counted in ``oversized``.
    """

    def __new__(cls, *, max_event_size: int = 16777216) -> UsageChunkStripper: ...
    def feed(self, data: bytes | bytearray | memoryview, tap: UsageTap | None = None) -> bytes:
        """The bytes that can be forwarded now; with ``tap``, the tap is fed ``data`` first, as
        it came. Raises ``MemoryError`` (with nothing consumed) when memory for the output
        could not be allocated."""
    def finish(self) -> bytes:
        """End of stream: whatever is still held back, unchanged."""
    stripped: Final[int]
    """How many usage-only chunks were removed."""
    nulls_removed: Final[int]
    """How many ``"usage": null`` members were removed."""
    oversized: Final[int]
    """How many blocks were forwarded unstripped because they were longer than
    ``max_event_size``."""
    max_event_size: Final[int]

class DecompressionError(ValueError):
    """A compressed body is corrupt or truncated (raised by ``ContentDecoder``)."""

class DecompressionBombError(DecompressionError):
    """A compressed body decompressed past a ``ContentDecoder`` limit."""

@final
class ContentDecoder:
    """Bounded incremental decoder of a ``Content-Encoding`` value: ``gzip``/``x-gzip``,
    ``deflate`` (zlib-wrapped or raw), ``br``, ``zstd``, ``identity``, or several stacked
    (``"gzip, br"`` is decoded br first). Case and whitespace are ignored.

    One ``feed`` never returns more than ``max_output_per_feed`` bytes (8 MiB by default) and
    the body never more than ``max_total_output`` (256 MiB); past either it raises
    ``DecompressionBombError``. zstd frames with a window over 8 MiB and large-window brotli
    are refused. After an error the decoder is finished: later calls raise
    ``DecompressionError``. ``identity`` passes bytes through and is not limited. Raises
    ``ValueError`` for an unsupported coding.
    """

    def __new__(
        cls,
        content_encoding: str,
        *,
        max_output_per_feed: int = 8388608,
        max_total_output: int = 268435456,
    ) -> ContentDecoder: ...
    def feed(self, data: bytes | bytearray | memoryview) -> bytes:
        """The decoded bytes this chunk completes (any chunking of the body works).

        Raises ``DecompressionBombError`` past a limit, ``DecompressionError`` on corrupt
        input, ``MemoryError`` when the output cannot be allocated.
        """
    def finish(self) -> None:
        """End of the body: raises ``DecompressionError`` if it was truncated."""
    total_output: Final[int]
    """Decoded bytes produced so far."""
    encoding: Final[str]
    """The codings in header order, normalized (``"identity"`` when none)."""
    max_output_per_feed: Final[int]
    max_total_output: Final[int]

def record_is_clean(record: object, limits: Any) -> bool:
    """Whether ``ssetally.sinks.sanitize_record`` would change nothing in ``record`` under
    ``limits`` (an ``ssetally.sinks.Limits``): an exact dict of plain JSON values (exact dict,
    list, str, int, float, bool, None), keys non-empty strings of at most ``key`` characters,
    strings of at most ``string`` characters (``long_string`` at and below ``long_fields``)
    without NUL or lone surrogates, 64-bit integers, finite floats, containers of at most
    ``items`` entries nested fewer than ``depth`` deep, at most ``nodes`` values and fewer
    than ``budget`` characters in all."""

def clean_line(record: object, limits: Any) -> bytes | None:
    """The JSONL line of a record ``record_is_clean`` accepts (its ``compact_json`` text and a
    line feed, UTF-8), made in the same walk as that check; None for a record it refuses."""

def json_object(data: object) -> dict[str, Any] | None:
    """The JSON object in ``data`` (UTF-8 ``bytes`` or ``str``, read without a copy) as
    ``json.loads`` gives it; None when it is not one, or holds what is left to ``json.loads``
    (lone surrogates, integers past 64 bits, nesting past 64 levels, other encodings)."""

def compact_json(value: object) -> str | None:
    """The compact JSON text of ``value`` (a usage record, a request body) exactly as
    ``json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)`` writes
    it, with U+0085, U+2028 and U+2029 escaped (``\\uXXXX``); None for anything but exact
    dict (str keys), list, str (no lone surrogates), int within signed 64 bits, finite float,
    bool and None, nested at most 64 deep, which the caller's encoder handles."""

def mentions(value: object, secrets: Sequence[str]) -> bool | None:
    """Whether any of ``secrets`` occurs in ``value``: in an exact ``str``, in the keys and
    values of an exact ``dict``, in the items of a ``list`` or ``tuple`` (named tuples too),
    at any depth up to 64; ``int``, ``float``, ``bool`` and ``None`` hold none. None when
    ``value`` holds anything else (a ``str`` subclass, another mapping, a lone surrogate),
    which the caller then reads itself."""

@final
class Tally:
    """The proxy's metric counts of finished requests, added up per series natively.

    ``Tally(max_models, max_model_length)``: model names past the first ``max_models``
    distinct ones, or longer than ``max_model_length`` characters, count as ``other``."""

    def __new__(cls, max_models: int, max_model_length: int) -> Tally: ...
    def observe(self, record: dict[str, Any], queued: bool | None = None) -> int:
        """Count one finished request's record (requests by status and API, tokens by model,
        source and kind, client bytes, the stream's duration) and, with ``queued``, a record
        handed to the sink; its cost is left to the caller. Returns the counts held so far."""
    def record(self, queued: bool) -> int:
        """Count one record handed to the sink (queued, else dropped); the counts held."""
    def model_label(self, model: str) -> str:
        """The label value ``model`` is counted under: itself, or ``other`` past the bounds."""
    def take(
        self,
    ) -> tuple[
        list[tuple[tuple[str, str], int]],
        list[tuple[tuple[str, str, str], int]],
        list[tuple[str, float]],
        int,
        tuple[int, int],
    ]:
        """What was counted since the last call, nothing held after it: ``(requests, tokens,
        durations, client_bytes, (queued, dropped))``."""
