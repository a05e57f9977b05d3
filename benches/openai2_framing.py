"""RE-IMPLEMENTATION (not the SDK's code) of the SSE framing of openai-python <= 2.24.

openai 2.x is not installed next to openai 3.x, so this module re-implements its documented
algorithm for comparison, written from its description only:

1. For each network read, split it with ``bytes.splitlines(keepends=True)`` and append each
   piece to a growing ``bytes`` block; when the block ends with ``\\r\\r``, ``\\n\\n`` or
   ``\\r\\n\\r\\n`` it is complete and is handed on (any leftover is handed on at EOF).
2. Split each block with ``splitlines()``, decode each line as strict UTF-8, and interpret it
   with the usual per-line field rules (``event``, ``data``, ``id``, ``retry``; a blank line
   dispatches; an unset event type or ID is ``None``).

Label it "openai 2.x framing (re-implemented)" wherever it is reported.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

_BLOCK_ENDS = (b"\r\r", b"\n\n", b"\r\n\r\n")


class Openai2Event:
    """One event as openai 2.x hands it over (``event``/``id`` may be ``None``)."""

    __slots__ = ("data", "event", "id", "retry")

    def __init__(self, event: str | None, data: str, id: str | None, retry: int | None) -> None:
        self.event = event
        self.data = data
        self.id = id
        self.retry = retry


def _blocks(reads: Iterable[bytes]) -> Iterator[bytes]:
    """Step 1: whole blocks (events with their blank line) out of reads cut anywhere."""
    block = b""
    for read in reads:
        for piece in read.splitlines(keepends=True):
            block += piece
            if block.endswith(_BLOCK_ENDS):
                yield block
                block = b""
    if block:
        yield block


class _FieldInterpreter:
    """Step 2: the per-line field rules."""

    __slots__ = ("data", "event", "last_id", "retry")

    def __init__(self) -> None:
        self.event: str | None = None
        self.data: list[str] = []
        self.last_id: str | None = None
        self.retry: int | None = None

    def line(self, line: str) -> Openai2Event | None:
        if not line:
            if self.event is None and not self.data and self.last_id is None and self.retry is None:
                return None
            out = Openai2Event(self.event, "\n".join(self.data), self.last_id, self.retry)
            self.event, self.data, self.retry = None, [], None
            return out
        if line.startswith(":"):
            return None
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "data":
            self.data.append(value)
        elif name == "event":
            self.event = value
        elif name == "id":
            if "\0" not in value:
                self.last_id = value
        elif name == "retry":
            try:
                self.retry = int(value)
            except ValueError:
                pass
        return None


def openai2_events(reads: Iterable[bytes]) -> Iterator[Openai2Event]:
    """Events of one stream, framed the openai 2.x way."""
    fields = _FieldInterpreter()
    for block in _blocks(reads):
        for raw in block.splitlines():
            event = fields.line(raw.decode("utf-8"))
            if event is not None:
                yield event
