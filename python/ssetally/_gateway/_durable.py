"""What a killed proxy worker must not lose: the records it queued for its sink and the
requests it was relaying, written by its successor (or the supervisor) without duplicates.

A worker hands every record to a ``RecordLog`` before queueing it in its sink, and the sink
tells the log once the record is settled (written, refused, or in the sink's on-disk spool):
the log is a few append-only segment files next to the worker's journal, one ``R`` line per
record and one ``A`` line per settled batch (its ``record_id``s). A segment whose records are
all settled is deleted. Appends go to the page cache, which outlives a SIGKILL.

When a worker has died, ``Leftovers.read`` collects what it left: the records of its log not
settled, and the requests of its journal (``_journal``) that have no record yet. ``replay``
writes both to a sink: the records as they were (the sink deduplicates on ``record_id``, or for
a file looks past where the segment began, ``Sink.written_since``), and a ``truncated`` record
for each cut request.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import re
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from ..sinks import Sink
from ._journal import dump_line, read_journal
from ._record import Exchange, build_record

__all__ = ["Leftovers", "RecordLog", "cut_record", "replay"]

logger = logging.getLogger("ssetally.proxy")

#: Bytes after which the log starts a new segment (the old one goes once all of it is settled).
SEGMENT_BYTES = 4 * 1024 * 1024
_SEGMENT = re.compile(r"\.(\d+)\.(\d+)\.log$")
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


class RecordLog:
    """The records of one worker not yet settled in its sink, in segments ``BASE.PID.N.log``.

    ``position`` (the sink's ``Sink.position``) is noted at the start of each segment.
    Thread-safe: records are added from the event loop, settled from the sink's thread.
    """

    def __init__(
        self,
        base: str,
        position: Callable[[], int | None] | None = None,
        segment_bytes: int = SEGMENT_BYTES,
    ) -> None:
        self.base = base
        self._position = position
        self._segment_bytes = segment_bytes
        self._lock = threading.Lock()
        self._seq = 0
        self._fds: dict[int, int] = {}
        self._open: dict[int, int] = {}  # records not settled, by segment
        self._where: dict[str, int] = {}
        self._size = 0
        self._broken = False
        with self._lock:
            self._new_segment()

    def _name(self, seq: int) -> str:
        return f"{self.base}.{os.getpid()}.{seq}.log"

    def _new_segment(self) -> None:
        self._seq += 1
        fd = os.open(
            self._name(self._seq), os.O_WRONLY | os.O_APPEND | os.O_CREAT | _O_CLOEXEC, 0o600
        )
        self._fds[self._seq] = fd
        self._open[self._seq] = 0
        self._size = 0
        position = None if self._position is None else self._position()
        if position is not None:
            _write_all(fd, b"H" + json.dumps({"position": position}).encode() + b"\n")

    def _drop(self, seq: int) -> None:
        os.close(self._fds.pop(seq))
        del self._open[seq]
        os.unlink(self._name(seq))

    def _failed(self, exc: OSError) -> None:
        if not self._broken:
            self._broken = True
            logger.error(
                "ssetally proxy: the record log %s failed (%s): records queued in the sink "
                "are lost if this worker is killed",
                self.base,
                exc,
            )

    def add(self, record: Mapping[str, Any]) -> None:
        record_id = str(record.get("record_id"))
        try:
            line = dump_line(record)
        except (TypeError, ValueError, RecursionError) as exc:  # the sink sanitises it anyway
            logger.error("ssetally proxy: record %s not kept in the record log: %s", record_id, exc)
            return
        with self._lock:
            if record_id in self._where:
                return
            try:
                if self._size >= self._segment_bytes:
                    if not self._open[self._seq]:
                        self._drop(self._seq)
                    self._new_segment()
                _write_all(self._fds[self._seq], b"R" + line + b"\n")
            except OSError as exc:
                self._failed(exc)
                return
            self._size += len(line) + 2
            self._open[self._seq] += 1
            self._where[record_id] = self._seq

    def settled(self, records: Sequence[Mapping[str, Any]]) -> None:
        by_segment: dict[int, list[str]] = {}
        with self._lock:
            for record in records:
                record_id = str(record.get("record_id"))
                seq = self._where.pop(record_id, None)
                if seq is not None:
                    by_segment.setdefault(seq, []).append(record_id)
            for seq, ids in by_segment.items():
                self._open[seq] -= len(ids)
                try:
                    if self._open[seq] == 0 and seq != self._seq:
                        self._drop(seq)
                    else:
                        _write_all(self._fds[seq], b"A" + json.dumps(ids).encode() + b"\n")
                except OSError as exc:
                    self._failed(exc)

    @property
    def pending(self) -> int:
        """Records added and not settled."""
        with self._lock:
            return len(self._where)

    def close(self) -> None:
        """Close the segments; those with nothing pending are deleted."""
        with self._lock:
            for seq in list(self._fds):
                if self._open[seq] == 0:
                    self._drop(seq)
                else:
                    os.close(self._fds.pop(seq))


@dataclass
class Leftovers:
    """What a dead worker left at ``base``: its records not settled (``records``), the ids
    of every record its log holds (``logged``), the requests it was relaying (``entries``)."""

    base: str
    records: list[dict[str, Any]] = field(default_factory=list)
    logged: set[str] = field(default_factory=set)
    entries: list[dict[str, Any]] = field(default_factory=list)
    #: The sink's ``position`` when the oldest segment began (None: none noted).
    position: int | None = None
    files: list[str] = field(default_factory=list)

    @classmethod
    def read(cls, base: str, exclude_pid: int | None = None) -> Leftovers:
        """Read the journal ``base`` and the log segments next to it (not those of
        ``exclude_pid``: the reader's own)."""
        left = cls(base)
        found = []
        for path in glob.glob(glob.escape(base) + ".*.*.log"):
            match = _SEGMENT.search(path)
            if match and int(match.group(1)) != exclude_pid:
                found.append((int(match.group(1)), int(match.group(2)), path))
        records: dict[str, dict[str, Any]] = {}
        settled: set[str] = set()
        for _, _, path in sorted(found):
            left.files.append(path)
            try:
                with open(path, "rb") as f:
                    lines = f.read().splitlines()
            except OSError as exc:
                logger.error("ssetally proxy: reading the record log %s failed: %s", path, exc)
                continue
            for line in lines:
                try:
                    value = json.loads(line[1:])
                except ValueError:  # a line cut by the kill
                    continue
                kind = line[:1]
                if kind == b"R" and isinstance(value, dict) and "record_id" in value:
                    records.setdefault(str(value["record_id"]), value)
                elif kind == b"A" and isinstance(value, list):
                    settled.update(str(v) for v in value)
                elif kind == b"H" and isinstance(value, dict) and left.position is None:
                    position = value.get("position")
                    left.position = position if isinstance(position, int) else None
        left.logged = set(records)
        left.records = [r for k, r in records.items() if k not in settled]
        left.entries = [e for e in read_journal(base) if e["request_id"] not in left.logged]
        return left

    def __bool__(self) -> bool:
        return bool(self.records or self.entries or self.files)

    def remove(self) -> None:
        """Delete the log segments read (their records were replayed)."""
        for path in self.files:
            try:
                os.unlink(path)
            except OSError:
                pass


def _text(value: Any, limit: int) -> str | None:
    return value[:limit] if isinstance(value, str) else None


def cut_record(entry: dict[str, Any], why: str, instance_id: str) -> dict[str, Any]:
    """The record of an in-flight request (a journal ``entry``) whose worker died."""
    status = entry.get("upstream_status")
    start = entry.get("start")
    size = entry.get("request_bytes")
    x = Exchange(
        request_id=str(entry["request_id"])[:64],
        time=_text(entry.get("time"), 40) or "",
        start=float(start) if isinstance(start, (int, float)) else time.monotonic(),
        method=_text(entry.get("method"), 16) or "",
        path=_text(entry.get("path"), 200) or "",
        key_fingerprint=_text(entry.get("key_fingerprint"), 16),
        requested_model=_text(entry.get("requested_model"), 100),
        request_bytes=size if isinstance(size, int) else 0,
        injected=entry.get("injected") is True,
        upstream_status=status if isinstance(status, int) else None,
        http_status=status if isinstance(status, int) else None,
        event_stream=entry.get("stream") is True,
    )
    x.ended_by = why
    x.warnings.append("the proxy worker relaying this request died: usage and bytes unknown")
    return build_record(x, None, instance_id)


def replay(left: Leftovers, sink: Sink, why: str, instance_id: str) -> list[dict[str, Any]]:
    """Write ``left``'s records (those ``sink`` does not hold yet) and a record for each of
    its cut requests (``ended_by`` is ``why``) to ``sink``; the cut records are returned."""
    records = left.records
    if records and left.position is not None:
        try:
            held = sink.written_since(left.position, {str(r["record_id"]) for r in records})
        except OSError as exc:
            logger.error("ssetally proxy: looking for replayed records failed: %s", exc)
            held = set()
        records = [r for r in records if r["record_id"] not in held]
    for record in records:
        sink.write(record)
    cut = [cut_record(entry, why, instance_id) for entry in left.entries]
    for record in cut:
        sink.write(record)
    if records or cut:
        logger.warning(
            "ssetally proxy: %s; %d records it had queued were written again, %d requests "
            "it was relaying recorded as cut",
            why.removeprefix("cut: "),
            len(records),
            len(cut),
        )
    return cut
