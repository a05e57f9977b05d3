"""The sink base: a bounded queue drained by one writer thread, which sanitises every record,
writes it in batches, isolates a record that fails from the others, and (for the remote
sinks) parks records in the on-disk spool while the destination is unreachable.

Every record queued ends in exactly one counter: ``written`` (now or after a spool replay),
``failed`` (refused by the destination, logged at most every 30 s with a count), ``dropped`` (queue or spool full, logged)
or still waiting (``pending`` in the queue, ``spool_depth`` on disk).
"""

from __future__ import annotations

import logging
import math
import os
import queue
import random
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from typing import Any, Protocol
from urllib.parse import urlsplit, urlunsplit

from ._sanitize import DEFAULT_LIMITS, Limits, sanitize_record
from ._spool import DEFAULT_SPOOL_BYTES, Spool

__all__ = [
    "DEFAULT_BATCH_SIZE",
    "DEFAULT_QUEUE_SIZE",
    "BatchRejected",
    "FileSink",
    "Sink",
    "TransientError",
    "WriteAhead",
    "redact_url",
]

logger = logging.getLogger("ssetally.sinks")

#: Records waiting beyond this are dropped (and counted) rather than growing memory.
DEFAULT_QUEUE_SIZE = 100_000
#: Records written per batch.
DEFAULT_BATCH_SIZE = 512
#: Seconds the writer waits after a record for more to write with it: under load one wake-up
#: and one write serve many records; a record reaches its destination this much later at most.
DEFAULT_LINGER = 0.02
_STOP = object()
# Seconds of spool replay between two looks at the queue, so new records keep flowing.
_REPLAY_SLICE = 1.0
# Seconds between two log messages about one ongoing condition (an outage, a full spool).
_LOG_EVERY = 30.0

_TRANSIENT = "transient"
_REJECTED = "rejected"
_RECORD = "record"


class TransientError(Exception):
    """The destination is unreachable, busy or slow: the records wait in the spool and the
    write is retried after a backoff (at least ``retry_after`` seconds when given)."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class BatchRejected(Exception):
    """The destination refused the batch for a reason that writing its records one at a time
    cannot fix (bad credentials, no such endpoint): every record of it fails."""


class WriteAhead(Protocol):
    """Keeps each record queued in a sink until the sink settled it (``Sink.write_ahead``)."""

    def add(self, record: Mapping[str, Any]) -> None:
        """``record`` (with its ``record_id``) is about to be queued."""

    def settled(self, records: Sequence[Mapping[str, Any]]) -> None:
        """``records`` are settled: written, failed, dropped or safely in the spool."""


class _Throttled:
    """Log a recurring condition at most every ``_LOG_EVERY`` seconds, with the count since."""

    def __init__(self) -> None:
        self.last = -math.inf
        self.count = 0

    def due(self, count: int = 1) -> int:
        self.count += count
        now = time.monotonic()
        if now - self.last < _LOG_EVERY:
            return 0
        self.last = now
        count, self.count = self.count, 0
        return count


class Sink:
    """Base of the sinks.

    ``write`` never blocks and never raises; the writer thread sanitises each record
    (``sanitize_record``), writes batches of up to ``batch_size``, and when a batch fails writes
    its records one by one, so one bad record never takes another down. ``flush`` waits until
    every queued record is settled (written, failed, dropped or safely in the spool);
    ``flush(spool=True)`` also waits for the spool to be replayed. ``close`` flushes and stops
    the writer; records still in the spool stay on disk for the next sink on that spool.
    """

    #: ``jsonl``, ``sqlite``, ``postgresql`` or ``cloudevents``.
    kind = "abstract"
    #: Strings masked in every message (a password); subclasses set it before ``__init__``.
    _secrets: tuple[str, ...] = ()
    #: Seconds at most that a ``Retry-After`` asked of the destination is honoured.
    retry_after_max = 60.0

    def __init__(
        self,
        target: str,
        *,
        queue_size: int = DEFAULT_QUEUE_SIZE,
        batch_size: int = DEFAULT_BATCH_SIZE,
        limits: Limits = DEFAULT_LIMITS,
        linger: float = DEFAULT_LINGER,
    ) -> None:
        if batch_size < 1:
            raise ValueError("batch_size must be at least 1")
        if not 0 <= linger <= 1:
            raise ValueError("linger must be between 0 and 1 second")
        #: Seconds the writer waits after a record for more to batch with it.
        self.linger = linger
        #: Callers waiting in ``flush`` (the writer does not linger for them).
        self._hurry = 0
        #: The destination as shown in messages (a URL without its password).
        self.target = target
        self.batch_size = batch_size
        self.limits = limits
        # C-implemented and unbounded: ``write`` keeps the bound itself (``_taken``).
        self._queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._queue_size = queue_size
        #: Records the writer took off the queue (only the writer adds to it).
        self._taken = 0
        self._cond = threading.Condition()
        self._submitted = 0
        self._settled = 0
        #: Records written to the destination (including spool replays).
        self.written = 0
        #: Records the destination refused (each logged once).
        self.failed = 0
        #: Records lost because the queue or the spool was full, or the sink closed.
        self.dropped = 0
        #: Records put into the spool (each is later written, failed, or still waits).
        self.spooled = 0
        self._spool: Spool | None = None
        self._failures = 0  # consecutive transient failures
        self._retry_at = 0.0  # monotonic time before which the destination is not tried
        self._down_log = _Throttled()
        self._drop_log = _Throttled()
        self._fail_log = _Throttled()
        self._close_deadline = math.inf
        self._closed = False
        self._ahead: WriteAhead | None = None
        self._listeners: list[Callable[[], None]] = []
        self._open()
        self._thread = threading.Thread(
            target=self._run, name=f"ssetally-sink-{self.kind}", daemon=True
        )
        self._thread.start()

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.target!r})"

    # -- for subclasses

    def _open(self) -> None:
        """Prepare the destination (called in the constructor, so errors surface early)."""

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        """Write sanitised records, all or none; raise on failure (see ``_classify``)."""
        raise NotImplementedError

    def _classify(self, exc: Exception) -> str:
        """``transient`` (retry later, from the spool), ``rejected`` (every record of the batch
        fails) or ``record`` (write the batch's records one by one)."""
        if isinstance(exc, TransientError):
            return _TRANSIENT
        if isinstance(exc, BatchRejected):
            return _REJECTED
        return _RECORD

    def _close_destination(self) -> None:
        """Release the destination (writer thread, after the last batch)."""

    def _describe(self, exc: BaseException) -> str:
        """An error for the log, one line, with the sink's secrets (a password) masked."""
        text = str(exc).strip().replace("\n", " ")[:500]
        for secret in self._secrets:
            text = text.replace(secret, "***")
        return f"{type(exc).__name__}: {text}" if text else type(exc).__name__

    def position(self) -> int | None:
        """Where the destination ends now, for ``written_since`` (None: it deduplicates)."""
        return None

    def written_since(self, position: int, record_ids: set[str]) -> set[str]:
        """Which of ``record_ids`` the destination holds past ``position`` (a ``position()``):
        a record replayed after a crash is written only when absent. The remote sinks and
        SQLite deduplicate on ``record_id`` themselves: none."""
        return set()

    # -- public

    def write_ahead(self, log: WriteAhead) -> None:
        """Hand every record to ``log`` before queueing it, and tell it once the record is
        settled (``ssetally proxy --workers``: what a killed worker had queued is replayed)."""
        self._ahead = log

    def on_settled(self, callback: Callable[[], None]) -> None:
        """Call ``callback`` (from the writer thread) after each batch is settled."""
        self._listeners.append(callback)

    def write(self, record: Mapping[str, Any]) -> bool:
        """Queue a record; False when it was dropped (queue full or sink closed).

        A record without a string ``record_id`` gets one (uuid4 hex), the key by which the
        remote destinations deduplicate a retried batch.
        """
        try:
            record_id = record.get("record_id")
            if not isinstance(record_id, str) or not record_id:
                record = {**record, "record_id": uuid.uuid4().hex}
        except Exception:
            logger.exception("ssetally sink: a record that is not a mapping was refused")
            with self._cond:
                self.failed += 1
            return False
        ahead = self._ahead
        if ahead is not None:
            ahead.add(record)
        with self._cond:
            if self._closed or self._submitted - self._taken >= self._queue_size:
                self.dropped += 1
                full = True
            else:
                self._queue.put(record)
                self._submitted += 1
                full = False
        if full and ahead is not None:
            ahead.settled([record])
        if full and not self._closed:
            count = self._drop_log.due()
            if count:
                logger.error(
                    "ssetally sink: the %s sink queue is full (%d records), %d records dropped",
                    self.kind,
                    self._queue_size,
                    count,
                )
        return not full

    def flush(self, timeout: float | None = None, *, spool: bool = False) -> bool:
        """Wait until every queued record is settled (and with ``spool=True`` until the spool is
        empty as well); False on timeout."""
        with self._cond:
            self._hurry += 1  # the writer stops lingering while someone waits
            try:
                return self._cond.wait_for(
                    lambda: (
                        self._settled >= self._submitted and (not spool or not self.spool_depth)
                    ),
                    timeout,
                )
            finally:
                self._hurry -= 1

    def close(self, timeout: float | None = 30.0) -> None:
        """Flush, try once more to replay the spool, then stop the writer thread. Idempotent."""
        with self._cond:
            if self._closed:
                return
            self._closed = True
            self._hurry += 1  # for good: nothing is worth waiting for once closing
            if timeout is not None:
                self._close_deadline = time.monotonic() + timeout
        self._queue.put(_STOP)  # never blocks: the queue's bound is kept by ``write``
        self._thread.join(timeout)

    @property
    def pending(self) -> int:
        """Records queued and not yet settled."""
        with self._cond:
            return self._submitted - self._settled

    @property
    def spool_depth(self) -> int:
        """Records waiting in the spool (0 for the local sinks, which have none)."""
        return 0 if self._spool is None else self._spool.depth

    @property
    def spool_directory(self) -> str | None:
        """The spool directory (this process's slot), None for the local sinks."""
        return None if self._spool is None else self._spool.directory

    def stats(self) -> dict[str, int]:
        """The counters at one instant."""
        with self._cond:
            return {
                "written": self.written,
                "failed": self.failed,
                "dropped": self.dropped,
                "spooled": self.spooled,
                "pending": self._submitted - self._settled,
                "spool_depth": self.spool_depth,
            }

    # -- writer thread

    def _run(self) -> None:
        stopping = False
        while not stopping:
            try:
                batch = [self._queue.get(timeout=self._idle_timeout())]
            except queue.Empty:
                batch = []
            if batch and batch[0] is not _STOP and self.linger and not self._hurry:
                # Not woken per record: the records of the next moment join this batch.
                time.sleep(self.linger)
            while batch and len(batch) < self.batch_size:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            if any(item is _STOP for item in batch):
                stopping = True
                batch = [item for item in batch if item is not _STOP]
            self._taken += len(batch)
            if batch:
                self._handle(batch)
            if self._spool is not None:
                self._replay(time.monotonic() + _REPLAY_SLICE)
        self._finish()

    def _idle_timeout(self) -> float | None:
        if self._spool is None or not self._spool.depth:
            return None
        return max(0.0, self._retry_at - time.monotonic())

    def _prepare(self, record: Any) -> dict[str, Any]:
        """A record as the writer hands it to ``_write_batch``: sanitised (``sanitize_record``).
        A sink may return a ``dict`` subclass carrying what it made of the record already."""
        return sanitize_record(record, self.limits)

    def _handle(self, batch: list[Any]) -> None:
        prepare = self._prepare
        records = [prepare(r) for r in batch]
        if self._spool is not None and (self._spool.depth or self._retry_at > time.monotonic()):
            # Keep the order: behind the records already waiting, or while backing off.
            self._to_spool(records)
        else:
            done = self._send(records)
            if done < len(records):
                self._to_spool(records[done:])
        if self._ahead is not None:
            self._ahead.settled(batch)
        with self._cond:
            self._settled += len(batch)
            self._cond.notify_all()
        for callback in self._listeners:
            try:
                callback()
            except Exception:  # a listener must not stop the writer
                logger.exception("ssetally sink: a listener of the %s sink failed", self.kind)

    def _send(self, records: list[dict[str, Any]]) -> int:
        """Write records; how many of them (a prefix) are settled. The rest met a transient
        failure and must be retried (only when there is a spool to keep them)."""
        try:
            self._write_batch(records)
        except Exception as exc:  # noqa: BLE001 - classified below
            kind = self._classify(exc)
            if kind == _TRANSIENT and self._spool is not None:
                self._down(exc)
                return 0
            if kind == _REJECTED or len(records) == 1:
                self._fail(records, exc)
                return len(records)
        else:
            self._up(len(records))
            return len(records)
        # One bad record must not take the others down: write them one at a time.
        for i, record in enumerate(records):
            try:
                self._write_batch([record])
            except Exception as exc:  # noqa: BLE001
                kind = self._classify(exc)
                if kind == _TRANSIENT and self._spool is not None:
                    self._down(exc)
                    return i
                if kind == _REJECTED:
                    self._fail(records[i:], exc)
                    return len(records)
                self._fail([record], exc)
            else:
                self._up(1)
        return len(records)

    def _up(self, count: int) -> None:
        if self._failures:
            logger.warning(
                "ssetally sink: %s is reachable again after %d failed attempts; %d records "
                "in the spool are being replayed",
                self.target,
                self._failures,
                self.spool_depth,
            )
            self._failures = 0
            self._down_log = _Throttled()
        self._retry_at = 0.0
        with self._cond:
            self.written += count

    def _down(self, exc: Exception) -> None:
        self._failures += 1
        delay = self._backoff(self._failures)
        retry_after = getattr(exc, "retry_after", None)
        if retry_after is not None:
            delay = max(delay, min(retry_after, self.retry_after_max))
        self._retry_at = time.monotonic() + delay
        if self._down_log.due():
            logger.warning(
                "ssetally sink: %s unavailable (%s); records wait in the spool %s, "
                "attempt %d, next in %.1f s",
                self.target,
                self._describe(exc),
                self.spool_directory,
                self._failures,
                delay,
            )

    def _backoff(self, failures: int) -> float:
        """Seconds before the next attempt (overridden by the remote sinks' settings)."""
        return random.uniform(0.0, min(30.0, 0.5 * 2 ** min(failures - 1, 30)))

    def _fail(self, records: list[dict[str, Any]], exc: Exception) -> None:
        with self._cond:
            self.failed += len(records)
        # A destination that refuses everything (a full disk) must not log once per record.
        count = self._fail_log.due(len(records))
        if not count:
            return
        ids = ", ".join(str(r.get("record_id")) for r in records[:5])
        more = f" and {len(records) - 5} more" if len(records) > 5 else ""
        logger.error(
            "ssetally sink: %s refused %d records since the last message (%s): record_id %s%s",
            self.target,
            count,
            self._describe(exc),
            ids,
            more,
        )

    def _to_spool(self, records: list[dict[str, Any]]) -> None:
        spool = self._spool
        assert spool is not None
        try:
            taken = spool.append(records)
        except (OSError, ValueError) as exc:
            logger.error(
                "ssetally sink: writing %d records to the spool %s failed: %s",
                len(records),
                spool.directory,
                self._describe(exc),
            )
            with self._cond:
                self.failed += len(records)
            return
        with self._cond:
            self.spooled += taken
            self.dropped += len(records) - taken
        if taken < len(records):
            count = self._drop_log.due(len(records) - taken)
            if count:
                logger.error(
                    "ssetally sink: the spool %s is full (%d of %d bytes): %d records dropped",
                    spool.directory,
                    spool.size,
                    spool.max_bytes,
                    count,
                )

    def _replay(self, deadline: float) -> None:
        spool = self._spool
        assert spool is not None
        while spool.depth and self._retry_at <= time.monotonic() < deadline:
            corrupt = spool.corrupt
            records = spool.peek(self.batch_size)
            with self._cond:
                self.failed += spool.corrupt - corrupt
            if not records:
                break
            done = self._send(records)
            spool.commit(done)
            with self._cond:
                self._cond.notify_all()
            if done < len(records):
                break

    def _finish(self) -> None:
        spool = self._spool
        if spool is not None:
            if self._retry_at <= time.monotonic():
                self._replay(self._close_deadline)
            if spool.depth:
                logger.warning(
                    "ssetally sink: %d records stay in the spool %s; a sink on the same "
                    "spool directory replays them",
                    spool.depth,
                    spool.directory,
                )
        try:
            self._close_destination()
        except Exception:
            logger.exception("ssetally sink: closing the %s sink failed", self.kind)
        if spool is not None:
            spool.close()
        with self._cond:
            self._cond.notify_all()


class FileSink(Sink):
    """A sink that writes one local file at ``path``; its folder is created on open."""

    def __init__(self, path: str, **options: Any) -> None:
        self.path = path
        super().__init__(path, **options)

    def _make_folder(self) -> None:
        directory = os.path.dirname(self.path)
        if directory:
            os.makedirs(directory, exist_ok=True)


class RemoteSink(Sink):
    """A sink whose destination can be away: records wait in a bounded on-disk spool and are
    replayed, with exponential backoff and full jitter between attempts."""

    def __init__(
        self,
        target: str,
        *,
        spool_dir: str,
        spool_max_bytes: int = DEFAULT_SPOOL_BYTES,
        backoff_base: float = 0.5,
        backoff_max: float = 30.0,
        retry_after_max: float = 60.0,
        **options: Any,
    ) -> None:
        self._spool_args = (spool_dir, spool_max_bytes)
        self.backoff_base = backoff_base
        self.backoff_max = backoff_max
        self.retry_after_max = retry_after_max
        super().__init__(target, **options)

    def _open(self) -> None:
        self._spool = Spool(*self._spool_args)
        self._connect_at_start()

    def _connect_at_start(self) -> None:
        """Try the destination once, so a misconfiguration shows in the log at start-up."""

    def _backoff(self, failures: int) -> float:
        ceiling = min(self.backoff_max, self.backoff_base * 2 ** min(failures - 1, 30))
        return random.uniform(0.0, ceiling)


def redact_url(url: str) -> str:
    """``url`` with its password (if any) replaced by ``***``."""
    try:
        parts = urlsplit(url)
        if parts.password is None:
            return url
        host = parts.netloc.rpartition("@")[2]
        user = parts.username or ""
        return urlunsplit(parts._replace(netloc=f"{user}:***@{host}"))
    except ValueError:
        return "<unparsable URL>"
