"""``ssetally proxy --workers N``: N worker processes (``_worker``) serving one listening
socket, bound here and inherited by each worker (a pre-fork: the kernel hands each new
connection to one worker blocked in ``accept``; a worker that dies leaves the queue to the
others).

* Records: every worker writes to the one configured sink (JSONL: whole-line batches in one
  ``O_APPEND`` write each; SQLite: WAL and a busy timeout; PostgreSQL: transactions).
* ``/metrics``: the sum over the workers (prometheus-client's multiprocess mode, in a
  directory of this supervisor's that is removed at exit).
* A worker that exits while the proxy is not stopping is restarted (after a back-off that
  grows while it keeps dying young). Nothing it accepted is lost (``_durable``): its
  successor writes the records it had queued but not written, and a record with status
  ``truncated`` and ``ended_by`` saying the worker died for each request it had in flight
  (noted in a fixed-size journal, ``_journal``), and counts those in ``/metrics``. What is
  left when the proxy stops is written by the supervisor itself.
"""

from __future__ import annotations

import logging
import os
import pickle
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from ..sinks import Sink
from ._config import ProxyConfig
from ._durable import Leftovers, replay
from ._exposition import MULTIPROC_ENV
from ._listener import Listener
from ._worker import WORKER_COMMAND, Launch, LaunchOptions, WorkerSpec

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

__all__ = ["Supervisor"]

logger = logging.getLogger("ssetally.proxy")

#: Seconds between two looks at the workers.
POLL = 0.1
#: A worker that lived shorter than this died young: its restart waits longer each time.
YOUNG = 5.0
MAX_BACKOFF = 10.0


def _exit_reason(code: int) -> str:
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        return f"was killed by {name}"
    return f"exited with status {code}"


class _Worker:
    __slots__ = ("backoff", "index", "journal", "process", "restart_at", "started", "why")

    def __init__(self, index: int, journal: str) -> None:
        self.index = index
        self.journal = journal
        self.process: subprocess.Popen[bytes] | None = None
        self.started = 0.0
        self.backoff = 0.0
        self.restart_at = 0.0
        #: How its last process ended, for the records of the requests it cut.
        self.why: str | None = None


class Supervisor(Listener):
    """Run ``workers`` proxy processes on ``host:port`` (0: any free port, see ``port``).

    ``start()`` returns once the socket listens and the workers were started; a monitor
    thread then restarts dead workers until ``stop()``. ``run()`` is the foreground form
    (``ssetally proxy --workers``): until SIGINT or SIGTERM. Each worker opens ``sink``;
    ``launch`` (``log_level``, ``http``, ``sink_options``, ``otel``) makes the ``Launch`` each
    is started with.
    """

    def __init__(
        self,
        config: ProxyConfig,
        *,
        workers: int,
        host: str = "127.0.0.1",
        port: int = 8080,
        sink: str = "jsonl:ssetally-usage.jsonl",
        **launch: Unpack[LaunchOptions],
    ) -> None:
        if workers < 1:
            raise ValueError(f"--workers must be at least 1, not {workers}")
        self.config = config
        self.host = host
        self._port = port
        self.sink_spec = sink
        #: What each worker is started with (``Launch``: log level, HTTP parser, ...).
        self.launch = Launch(**launch)
        self._count = workers
        self._dir = ""
        self._socket: socket.socket | None = None
        self._workers: list[_Worker] = []
        self._sink: Sink | None = None
        self._stopping = threading.Event()
        self._lock = threading.Lock()
        self._monitor: threading.Thread | None = None
        #: Requests cut by a worker's death (each gets a record from the worker's successor).
        self.cut_records = 0
        #: Workers restarted so far.
        self.restarts = 0

    @property
    def pids(self) -> list[int]:
        """The process ids of the workers running now."""
        with self._lock:
            return [
                w.process.pid
                for w in self._workers
                if w.process is not None and w.process.poll() is None
            ]

    def start(self) -> Self:
        """Bind, start the workers and the monitor thread."""
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self.host, self._port))
            sock.listen(2048)
            sock.set_inheritable(True)
        except OSError:
            sock.close()
            raise
        self._socket = sock
        self._dir = tempfile.mkdtemp(prefix="ssetally-proxy-")
        os.mkdir(os.path.join(self._dir, "metrics"))
        with self._lock:
            for i in range(self._count):
                worker = _Worker(i, os.path.join(self._dir, f"journal-{i}"))
                self._workers.append(worker)
                self._spawn(worker)
        self._monitor = threading.Thread(
            target=self._watch, name="ssetally-supervisor", daemon=True
        )
        self._monitor.start()
        return self

    def _spawn(self, worker: _Worker) -> None:
        assert self._socket is not None
        spec = WorkerSpec(
            config=self.config,  # one instance: its workers share its instance id
            sink=self.sink_spec,
            fd=self._socket.fileno(),
            journal=worker.journal,
            launch=self.launch,
            predecessor=worker.why,
        )
        env = dict(os.environ)
        env[MULTIPROC_ENV] = os.path.join(self._dir, "metrics")
        process = subprocess.Popen(
            [sys.executable, "-c", WORKER_COMMAND],
            stdin=subprocess.PIPE,
            pass_fds=(self._socket.fileno(),),
            env=env,
            start_new_session=True,  # a Ctrl-C reaches the supervisor, which stops the workers
        )
        assert process.stdin is not None
        try:
            process.stdin.write(pickle.dumps(spec))
            process.stdin.close()
        except OSError:  # it died at once: seen (and restarted) as any dead worker
            pass
        worker.process = process
        worker.started = time.monotonic()

    def _watch(self) -> None:
        while not self._stopping.wait(POLL):
            with self._lock:
                for worker in self._workers:
                    if self._stopping.is_set():
                        return
                    try:
                        self._check(worker)
                    except Exception:  # e.g. no process could be started: try again later
                        logger.exception("ssetally proxy: supervising worker %d", worker.index)
                        worker.process = None
                        worker.backoff = min(MAX_BACKOFF, max(0.5, worker.backoff * 2))
                        worker.restart_at = time.monotonic() + worker.backoff

    def _check(self, worker: _Worker) -> None:
        process = worker.process
        now = time.monotonic()
        if process is None:
            if now >= worker.restart_at:
                self._spawn(worker)
                self.restarts += 1
            return
        code = process.poll()
        if code is None:
            return
        logger.warning(
            "ssetally proxy: worker %d (pid %d) %s; restarting it",
            worker.index,
            process.pid,
            _exit_reason(code),
        )
        self._reap(worker, code)
        young = now - worker.started < YOUNG
        worker.backoff = min(MAX_BACKOFF, max(0.5, worker.backoff * 2)) if young else 0.0
        worker.restart_at = now + worker.backoff
        worker.process = None
        if worker.backoff == 0.0:
            self._spawn(worker)
            self.restarts += 1

    def _reap(self, worker: _Worker, code: int) -> None:
        """Note how the worker ended (its successor records what it left); its live gauges
        dropped."""
        assert worker.process is not None
        pid = worker.process.pid
        worker.why = f"cut: the proxy worker (pid {pid}) {_exit_reason(code)}"
        self.cut_records += len(Leftovers.read(worker.journal).entries)
        try:
            from prometheus_client import multiprocess

            multiprocess.mark_process_dead(pid, os.path.join(self._dir, "metrics"))  # type: ignore[no-untyped-call]
        except Exception:  # noqa: BLE001 - only the live gauges of a dead process
            logger.warning("ssetally proxy: dropping the gauges of worker %d failed", pid)

    def _write_leftovers(self, worker: _Worker) -> None:
        """Write what a worker that is not restarted left (see ``_durable``)."""
        left = Leftovers.read(worker.journal)
        if not left.records and not left.entries:
            left.remove()
            return
        if self._sink is None:
            self._sink = self.launch.open_sink(self.sink_spec)
        why = worker.why or "cut: the proxy stopped"
        replay(left, self._sink, why, self.config.instance_id)
        if self._sink.flush(self.config.shutdown_timeout):
            left.remove()

    def stop(self, timeout: float | None = None) -> None:
        """Stop the workers gracefully (SIGTERM; SIGKILL past ``timeout``), write the records
        of requests they left, close the sink. Idempotent."""
        if self._stopping.is_set() and self._monitor is None:
            return
        self._stopping.set()
        if self._monitor is not None:
            self._monitor.join()
            self._monitor = None
        grace = self.config.shutdown_timeout + 5.0 if timeout is None else timeout
        with self._lock:
            running = [w for w in self._workers if w.process is not None]
            for w in running:
                if w.process is not None and w.process.poll() is None:
                    w.process.send_signal(signal.SIGTERM)
            deadline = time.monotonic() + grace
            for w in running:
                assert w.process is not None
                try:
                    w.process.wait(max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    w.process.kill()
                    w.process.wait()
                self._reap(w, w.process.returncode)
                w.process = None
            for w in self._workers:
                self._write_leftovers(w)
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        if self._sink is not None:
            self._sink.close(self.config.shutdown_timeout)
            self._sink = None
        if self._dir:
            shutil.rmtree(self._dir, ignore_errors=True)

    def run(self, started: Callable[[Supervisor], None] | None = None) -> None:
        """Serve until SIGINT or SIGTERM, then stop; ``started`` is called once serving."""
        done = threading.Event()

        def _signal(signum: int, frame: Any) -> None:
            done.set()

        previous = {s: signal.signal(s, _signal) for s in (signal.SIGINT, signal.SIGTERM)}
        try:
            self.start()
            if started is not None:
                started(self)
            while not done.wait(0.5):
                pass
        finally:
            self.stop()
            for s, handler in previous.items():
                signal.signal(s, handler)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
