"""One worker process of ``ssetally proxy --workers``: a ``MeteringProxy`` served by uvicorn
on the listening socket it inherited from the supervisor (``_supervisor``).

Started as ``python -c WORKER_COMMAND`` with its ``WorkerSpec`` pickled on stdin (written
by the supervisor, its parent: trusted). The worker stops itself when the supervisor is
gone.
"""

from __future__ import annotations

import gc
import logging
import os
import pickle
import signal
import socket
import sys
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, TypedDict

from ..sinks import Sink, open_sink
from ._config import ProxyConfig

__all__ = ["WORKER_COMMAND", "Launch", "LaunchOptions", "WorkerSpec", "main", "settle"]

#: The code a worker process runs.
WORKER_COMMAND = "from ssetally._gateway._worker import main; main()"

#: Seconds between two checks that the supervisor is still there.
PARENT_CHECK = 1.0


class LaunchOptions(TypedDict, total=False):
    """The keywords of ``serve_proxy`` and ``Supervisor`` that make a ``Launch``."""

    log_level: str
    http: str
    sink_options: Mapping[str, Any] | None
    otel: bool


@dataclass(frozen=True)
class Launch:
    """How each proxy process serves: uvicorn's log level and HTTP parser, the options its
    sink is opened with, and whether it sets up the OpenTelemetry SDK."""

    log_level: str = "info"
    http: str = "auto"
    #: Constructor options of the sink (spool, CloudEvents type, ...).
    sink_options: Mapping[str, Any] | None = None
    #: Set up the OpenTelemetry SDK in the worker (``--otel``): each process exports its own.
    otel: bool = False

    def open_sink(self, sink: str) -> Sink:
        """The sink ``sink`` names, opened with ``sink_options``."""
        return open_sink(sink, **(self.sink_options or {}))


@dataclass(frozen=True)
class WorkerSpec:
    """What a worker needs: its settings, where its records go, the socket to serve."""

    config: ProxyConfig
    sink: str
    fd: int
    journal: str
    launch: Launch = Launch()
    #: How the previous worker on this journal ended (``ended_by`` of its cut requests).
    predecessor: str | None = None


def settle(config: ProxyConfig) -> None:
    """Ready a serving process: load now what its first request would load (the price list
    when pricing is on, ~0.1 s the first stream would wait; the OpenTelemetry API when
    telemetry is on), then freeze the objects of start-up out of the garbage collector's
    passes (``gc.freeze``), which then scan only what requests in flight hold."""
    try:
        if config.cost:
            from genai_prices.data_snapshot import get_snapshot

            get_snapshot()
        if config.otel:
            from .._telemetry import shared_telemetry

            shared_telemetry()
    except Exception:  # not loaded now: the first request loads it, or says why
        logging.getLogger("ssetally.proxy").debug("readying the process failed", exc_info=True)
    gc.freeze()


def _watch_parent(parent: int) -> None:
    # An orphaned worker would keep the port without anyone restarting or reaping it.
    stop = threading.Event()
    while not stop.wait(PARENT_CHECK):
        if os.getppid() != parent:
            os.kill(os.getpid(), signal.SIGTERM)
            return


def _exit(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def main() -> None:
    """Serve until SIGTERM/SIGINT (then shut down gracefully: records flushed)."""
    spec = pickle.load(sys.stdin.buffer)
    if not isinstance(spec, WorkerSpec):
        raise SystemExit("ssetally proxy worker: no worker spec on stdin")
    # uvicorn raises the SIGTERM it handled again once it has shut down: an exception here,
    # so that the ``finally`` below runs (telemetry flushed) before the process ends.
    signal.signal(signal.SIGTERM, _exit)
    import uvicorn

    from ._app import MeteringProxy
    from ._durable import Leftovers, RecordLog, replay
    from ._journal import Journal
    from ._server import uvicorn_config

    handle = None
    launch = spec.launch
    if launch.otel:
        from .._telemetry_sdk import configure_sdk

        handle = configure_sdk(service_name="ssetally-proxy")
    sock = socket.socket(fileno=spec.fd)
    # What a killed predecessor left, read before this worker's journal replaces its own.
    left = Leftovers.read(spec.journal, exclude_pid=os.getpid())
    sink = launch.open_sink(spec.sink)
    log = RecordLog(spec.journal, sink.position)
    sink.write_ahead(log)
    why = spec.predecessor or "cut: a previous proxy worker died"
    cut = replay(left, sink, why, spec.config.instance_id)  # now in this worker's log
    journal = Journal(spec.journal, spec.config.max_client_connections)
    app = MeteringProxy(spec.config, sink, journal=journal)
    for record in cut:  # counted here: the dead worker never saw them end
        app.metrics.records.labels("queued").inc()
        app.metrics.observe(record)
    left.remove()
    threading.Thread(target=_watch_parent, args=(os.getppid(),), daemon=True).start()
    server = uvicorn.Server(uvicorn_config(app, "127.0.0.1", 0, launch.log_level, launch.http))
    settle(spec.config)
    try:
        server.run(sockets=[sock])
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        journal.close()
        log.close()
        if handle is not None:
            handle.shutdown()  # the worker's last spans and metrics are exported
