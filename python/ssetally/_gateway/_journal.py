"""The in-flight journal of a proxy worker: which requests it is relaying now, so that the
record of each one is written when the worker dies.

A file of fixed size (``slots`` x ``SLOT`` bytes) mapped into the worker's memory: a request
takes a slot when it is sent upstream (a few fields of its record as JSON) and frees it once
its record was handed to the sink. Writing is a memory copy, no system call; the file never
grows, and it is read only after the worker exited (the kernel keeps what the worker wrote in
a shared mapping even when it was killed).

A slot is ``length (4 bytes, little-endian) + JSON``; length 0 is a free slot. The JSON is
written before its length, so a worker killed mid-write leaves a free slot, never a torn
entry. The records the worker queued for its sink are kept elsewhere until written
(``_durable``).
"""

from __future__ import annotations

import json
import logging
import mmap
import os
import struct
from typing import Any

from .._core import compact_json
from ._record import Exchange

__all__ = ["SLOT", "Journal", "dump_line", "in_flight_entry", "read_journal"]

logger = logging.getLogger("ssetally.proxy")

#: Bytes of one slot; an entry that does not fit is cut to its essential fields.
SLOT = 512
_LENGTH = struct.Struct("<I")
_ESSENTIAL = ("request_id", "time", "start", "method")


def dump_line(value: Any) -> bytes:
    """``value`` (an entry, a record) as compact JSON in UTF-8, on one line: natively for plain
    types, else by ``json`` (anything else written as its text, lone surrogates escaped)."""
    text = compact_json(value)
    if text is None:
        text = json.dumps(value, separators=(",", ":"), default=str)
    return text.encode("utf-8")


class Journal:
    """The slots of one worker (``path``, created or reset here, ``slots`` of them)."""

    def __init__(self, path: str, slots: int) -> None:
        self.path = path
        self.slots = max(1, slots)
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            os.ftruncate(fd, self.slots * SLOT)
            self._map = mmap.mmap(fd, self.slots * SLOT)
        finally:
            os.close(fd)
        self._free = list(range(self.slots - 1, -1, -1))
        self._taken: dict[str, int] = {}
        #: Requests that found every slot taken (not journaled).
        self.overflow = 0

    def _put(self, slot: int, entry: dict[str, Any]) -> None:
        data = dump_line(entry)
        if len(data) > SLOT - _LENGTH.size:
            data = json.dumps({k: entry.get(k) for k in _ESSENTIAL}).encode("utf-8")
        base = slot * SLOT
        self._map[base : base + _LENGTH.size] = _LENGTH.pack(0)
        self._map[base + _LENGTH.size : base + _LENGTH.size + len(data)] = data
        self._map[base : base + _LENGTH.size] = _LENGTH.pack(len(data))

    def begin(self, request_id: str, entry: dict[str, Any]) -> None:
        """Note a request as in flight (``entry`` carries ``request_id``)."""
        slot = self._taken.get(request_id)
        if slot is None:
            if not self._free:
                self.overflow += 1
                return
            slot = self._free.pop()
            self._taken[request_id] = slot
        self._put(slot, entry)

    def end(self, request_id: str) -> None:
        """The request's record went to the sink: free its slot."""
        slot = self._taken.pop(request_id, None)
        if slot is not None:
            base = slot * SLOT
            self._map[base : base + _LENGTH.size] = _LENGTH.pack(0)
            self._free.append(slot)

    @property
    def in_flight(self) -> int:
        """Requests journaled now."""
        return len(self._taken)

    def close(self) -> None:
        self._map.close()


#: The fields of an ``Exchange`` an in-flight entry copies as they are.
_COPIED = "request_id time start method key_fingerprint request_bytes injected upstream_status"


def in_flight_entry(x: Exchange) -> dict[str, Any]:
    """What the record of ``x`` would say if its worker died now."""
    entry = {name: getattr(x, name) for name in _COPIED.split()}
    entry["path"] = x.path[:200]
    entry["requested_model"] = (x.requested_model or "")[:100] or None
    entry["stream"] = x.event_stream
    return entry


def read_journal(path: str) -> list[dict[str, Any]]:
    """The entries left in a dead worker's journal (unreadable slots are skipped)."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError:
        return []
    entries: list[dict[str, Any]] = []
    for base in range(0, len(data) - SLOT + 1, SLOT):
        (length,) = _LENGTH.unpack_from(data, base)
        if length == 0:
            continue
        if length > SLOT - _LENGTH.size:
            logger.warning("ssetally proxy: a journal slot of %s is corrupt", path)
            continue
        raw = data[base + _LENGTH.size : base + _LENGTH.size + length]
        try:
            entry = json.loads(raw)
        except ValueError:
            logger.warning("ssetally proxy: a journal slot of %s is unreadable", path)
            continue
        if isinstance(entry, dict) and isinstance(entry.get("request_id"), str):
            entries.append(entry)
    return entries
