"""The local spool of the remote sinks: records that could not be delivered wait on disk.

A spool is a directory of append-only JSONL segment files (``<first-seq>.jsonl``), written and
fsynced batch by batch, read back oldest first and deleted once every record of a segment is
delivered. Its size is capped: past the cap records are refused (the sink counts them as
dropped and logs it). Nothing is held only in memory, so records survive a restart: a new sink
on the same directory replays them. Delivery is at least once; the destinations deduplicate on
``record_id``.

Several processes can share one spool root: each takes the first free *slot* (a subdirectory
locked with ``flock``) and, when it starts, adopts the segments of slots no process holds (left
by a process that died).
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from typing import IO, Any

try:
    import fcntl
except ImportError:  # pragma: no cover - Windows: one process per spool root
    fcntl = None  # type: ignore[assignment]

__all__ = ["DEFAULT_SEGMENT_BYTES", "DEFAULT_SPOOL_BYTES", "Spool", "default_spool_dir"]

logger = logging.getLogger("ssetally.sinks")

#: Bytes the spool may hold on disk before records are dropped.
DEFAULT_SPOOL_BYTES = 256 * 1024 * 1024
#: Bytes after which a new segment file is started.
DEFAULT_SEGMENT_BYTES = 8 * 1024 * 1024
_SEGMENT = re.compile(r"^(\d{20})\.jsonl$")
_MAX_SLOTS = 64


def default_spool_dir(kind: str, target: str) -> str:
    """The spool of a destination when none is configured: under ``$SSETALLY_SPOOL_DIR``, else
    ``$XDG_STATE_HOME/ssetally/spool`` (``~/.local/state``), else the temporary directory; one
    directory per destination (named by a hash of its password-free address)."""
    name = f"{kind}-{hashlib.sha256(target.encode('utf-8')).hexdigest()[:16]}"
    base = os.environ.get("SSETALLY_SPOOL_DIR")
    if not base:
        state = os.environ.get("XDG_STATE_HOME") or os.path.join("~", ".local", "state")
        base = os.path.join(os.path.expanduser(state), "ssetally", "spool")
        try:
            os.makedirs(base, exist_ok=True)
        except OSError:
            base = os.path.join(tempfile.gettempdir(), "ssetally-spool")
    return os.path.join(base, name)


def _fsync_dir(path: str) -> None:
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:  # pragma: no cover - some platforms cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover
        pass
    finally:
        os.close(fd)


class Spool:
    """A bounded on-disk FIFO of JSON records (used by one writer thread; not thread-safe)."""

    def __init__(
        self,
        root: str,
        max_bytes: int = DEFAULT_SPOOL_BYTES,
        segment_bytes: int = DEFAULT_SEGMENT_BYTES,
    ) -> None:
        if max_bytes <= 0 or segment_bytes <= 0:
            raise ValueError("spool sizes must be positive")
        self.root = root
        self.max_bytes = max_bytes
        self.segment_bytes = min(segment_bytes, max_bytes)
        #: Records waiting in the spool.
        self.depth = 0
        #: Bytes on disk (segments not yet deleted).
        self.size = 0
        #: Lines of the spool that could not be read back (a write torn by a crash).
        self.corrupt = 0
        os.makedirs(root, exist_ok=True)
        self._lock: IO[bytes] | None = None
        self.directory = self._take_slot()
        # Segments in order: [path, size]; the last one is appended to.
        self._segments: list[list[Any]] = []
        self._next_seq = 0
        self._sealed = False
        self._out: IO[bytes] | None = None
        self._in: IO[bytes] | None = None
        self._read_pos = 0  # byte offset of the first undelivered record in segment 0
        self._peeked: list[int] = []  # end offsets of the records handed out by peek
        self._adopt()
        self._scan()

    # -- slots

    def _take_slot(self) -> str:
        for n in range(_MAX_SLOTS):
            directory = os.path.join(self.root, f"slot-{n}")
            os.makedirs(directory, exist_ok=True)
            lock = open(os.path.join(directory, "lock"), "ab")  # noqa: SIM115 - held while open
            if fcntl is None or _try_lock(lock):
                self._lock = lock
                return directory
            lock.close()
        raise RuntimeError(f"every spool slot under {self.root} is in use")

    def _adopt(self) -> None:
        """Move the segments of slots no process holds into ours (a crashed process's)."""
        if fcntl is None:
            return
        for name in sorted(os.listdir(self.root)):
            directory = os.path.join(self.root, name)
            if directory == self.directory or not name.startswith("slot-"):
                continue
            try:
                lock = open(os.path.join(directory, "lock"), "ab")  # noqa: SIM115
            except OSError:
                continue
            try:
                if not _try_lock(lock):
                    continue
                moved = 0
                for segment in sorted(os.listdir(directory)):
                    if _SEGMENT.match(segment):
                        # Adopted segments go first (they are older), keeping their order.
                        target = os.path.join(self.directory, f"a{name}-{segment}")
                        os.replace(os.path.join(directory, segment), target)
                        moved += 1
                if moved:
                    logger.info("ssetally sink: adopted %d spool segments of %s", moved, name)
            finally:
                lock.close()

    # -- start-up

    def _scan(self) -> None:
        names = sorted(os.listdir(self.directory))
        own = [n for n in names if _SEGMENT.match(n)]
        seq = max((int(n[:20]) for n in own), default=-1) + 1
        adopted = []
        for name in names:
            if name.startswith("aslot-") and name.endswith(".jsonl"):
                # Adopted segments join our sequence, so a later restart keeps them.
                target = f"{seq:020d}.jsonl"
                os.replace(os.path.join(self.directory, name), os.path.join(self.directory, target))
                adopted.append(target)
                seq += 1
        if adopted:
            _fsync_dir(self.directory)
        for name in own + adopted:
            path = os.path.join(self.directory, name)
            with open(path, "rb") as f:
                data = f.read()
            if not data:
                os.unlink(path)
                continue
            self._segments.append([path, len(data)])
            self.size += len(data)
            self.depth += data.count(b"\n")
        self._next_seq = seq
        self._load_cursor()
        # Never append to a segment of an earlier run: its last line may be torn.
        self._sealed = bool(self._segments)
        if self.depth:
            logger.warning(
                "ssetally sink: %d records waiting in the spool %s", self.depth, self.directory
            )

    def _load_cursor(self) -> None:
        """Skip what an earlier run already delivered of its oldest segment."""
        try:
            with open(os.path.join(self.directory, "cursor"), encoding="ascii") as f:
                name, _, offset = f.read().partition(" ")
        except (OSError, ValueError):
            return
        if not self._segments or os.path.basename(self._segments[0][0]) != name:
            return
        try:
            pos = min(int(offset), self._segments[0][1])
        except ValueError:
            return
        with open(self._segments[0][0], "rb") as f:
            self.depth -= f.read(pos).count(b"\n")
        self._read_pos = pos

    def _save_cursor(self) -> None:
        # Not fsynced: a cursor lost in a crash only means records delivered once more.
        path = os.path.join(self.directory, "cursor")
        with open(path + ".tmp", "w", encoding="ascii") as f:
            f.write(f"{os.path.basename(self._segments[0][0])} {self._read_pos}")
        os.replace(path + ".tmp", path)

    # -- writing

    def room(self) -> int:
        """Bytes that may still be appended."""
        return max(0, self.max_bytes - self.size)

    def append(self, records: Sequence[Mapping[str, Any]]) -> int:
        """Append records (fsynced before returning); the number that fit under the cap.

        Records are appended in order, so the ones refused are the last ``len - result``.
        """
        lines = []
        total = 0
        for record in records:
            line = (
                json.dumps(record, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
                + "\n"
            ).encode("utf-8")
            if self.size + total + len(line) > self.max_bytes:
                break
            lines.append(line)
            total += len(line)
        if not lines:
            return 0
        if self._sealed or not self._segments or self._segments[-1][1] >= self.segment_bytes:
            self._new_segment()
        out = self._writer()
        out.write(b"".join(lines))
        out.flush()
        os.fsync(out.fileno())
        self._segments[-1][1] += total
        self.size += total
        self.depth += len(lines)
        return len(lines)

    def _new_segment(self) -> None:
        if self._out is not None:
            self._out.close()
            self._out = None
        path = os.path.join(self.directory, f"{self._next_seq:020d}.jsonl")
        self._next_seq += 1
        self._segments.append([path, 0])
        self._sealed = False
        self._writer()
        _fsync_dir(self.directory)

    def _writer(self) -> IO[bytes]:
        if self._out is None:
            self._out = open(self._segments[-1][0], "ab")  # noqa: SIM115 - kept open
        return self._out

    # -- reading

    def peek(self, limit: int) -> list[dict[str, Any]]:
        """Up to ``limit`` of the oldest records (all from one segment); ``commit`` removes them.

        A line that cannot be parsed (torn by a crash) is skipped and counted in ``corrupt``.
        """
        self._peeked = []
        records: list[dict[str, Any]] = []
        while self._segments and not records:
            path, size = self._segments[0]
            if self._read_pos >= size:
                self._finish_segment()
                continue
            if self._in is None:
                self._in = open(path, "rb")  # noqa: SIM115 - kept open while replaying
            self._in.seek(self._read_pos)
            pos = self._read_pos
            while len(records) < limit and pos < size:
                line = self._in.readline(size - pos)
                record = _parse(line)
                if record is None:
                    if records:
                        break  # seen again (and counted once) by the next peek
                    self._corrupt(path, pos, counted=line.endswith(b"\n"))
                    pos += len(line)
                    self._read_pos = pos
                    continue
                pos += len(line)
                records.append(record)
                self._peeked.append(pos)
        return records

    def commit(self, count: int) -> None:
        """Remove the first ``count`` records handed out by the last ``peek``."""
        if count <= 0:
            return
        self._read_pos = self._peeked[count - 1]
        self._peeked = self._peeked[count:]
        self.depth -= count
        if self._read_pos >= self._segments[0][1]:
            self._finish_segment()
        else:
            self._save_cursor()

    def _corrupt(self, path: str, pos: int, counted: bool) -> None:
        self.corrupt += 1
        if counted:
            self.depth -= 1
        logger.error("ssetally sink: an unreadable spool line in %s at byte %d", path, pos)

    def _finish_segment(self) -> None:
        path, size = self._segments.pop(0)
        if self._in is not None:
            self._in.close()
            self._in = None
        if not self._segments and self._out is not None:
            self._out.close()
            self._out = None
        try:
            os.unlink(path)
        except FileNotFoundError:
            pass
        self.size -= size
        self._read_pos = 0

    def close(self) -> None:
        for f in (self._in, self._out, self._lock):
            if f is not None:
                f.close()
        self._in = self._out = self._lock = None


def _parse(line: bytes) -> dict[str, Any] | None:
    if not line.endswith(b"\n"):
        return None
    try:
        record = json.loads(line)
    except ValueError:
        return None
    return record if isinstance(record, dict) else None


def _try_lock(f: IO[bytes]) -> bool:
    try:
        fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        return False
    return True
