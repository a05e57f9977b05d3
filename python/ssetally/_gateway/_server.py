"""Serving the metering proxy with uvicorn: in the foreground (``ssetally proxy``, one process
or ``workers`` of them), or from a background thread (``ProxyServer``)."""

from __future__ import annotations

import importlib.util
import math
import socket
import ssl
import sys
import threading
import time
from typing import TYPE_CHECKING, Any

from ..sinks import Sink, open_sink
from ._app import MeteringProxy
from ._config import ProxyConfig
from ._guard import with_header_timeout
from ._listener import Listener
from ._metrics import ProxyMetrics
from ._pools import upstream_path
from ._worker import Launch, LaunchOptions, settle

if TYPE_CHECKING:
    from typing_extensions import Self, Unpack

__all__ = ["ProxyServer", "runtime_line", "serve_proxy"]


def http_protocol(http: str) -> tuple[type[Any], str]:
    """uvicorn's HTTP protocol class for ``http`` (``auto``: httptools when installed, else
    h11), and the parser's name."""
    if http not in ("auto", "h11", "httptools"):
        raise ValueError(f"http must be auto, h11 or httptools, not {http!r}")
    if http in ("auto", "httptools"):
        try:
            from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

            return HttpToolsProtocol, "httptools"
        except ImportError:
            if http == "httptools":
                raise ImportError("--http httptools needs httptools: pip install httptools")
    from uvicorn.protocols.http.h11_impl import H11Protocol

    return H11Protocol, "h11"


def event_loop_name() -> str:
    """The event loop uvicorn runs (its ``auto``): ``uvloop`` when installed, else
    ``asyncio``."""
    return "uvloop" if importlib.util.find_spec("uvloop") is not None else "asyncio"


def runtime_line(config: ProxyConfig, http: str = "auto", workers: int = 1) -> str:
    """The start-up line: which event loop, client-side HTTP parser and upstream client the
    proxy runs (the fast path is uvloop, httptools and httptools)."""
    _, parser = http_protocol(http)
    client = upstream_path(config.upstream_client)
    line = f"ssetally proxy: event loop {event_loop_name()}, HTTP parser {parser}, upstream client {client}"
    return line + (f", {workers} workers" if workers > 1 else "")


def uvicorn_config(
    app: MeteringProxy, host: str, port: int, log_level: str, http: str = "auto"
) -> Any:
    try:
        import uvicorn
    except ImportError as exc:
        raise ImportError(
            "the metering proxy needs uvicorn: pip install 'ssetally[proxy]'"
        ) from exc
    cfg = app.config
    protocol, _ = http_protocol(http)
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        lifespan="on",
        http=with_header_timeout(protocol, cfg.header_timeout),
        log_level=log_level,
        access_log=False,
        server_header=False,
        date_header=False,
        # The application answers 431 itself; the parser only stops absurd header sections.
        h11_max_incomplete_event_size=cfg.max_header_bytes + 64 * 1024,
        timeout_graceful_shutdown=math.ceil(cfg.shutdown_timeout),
        timeout_keep_alive=max(1, math.ceil(cfg.keep_alive_timeout)),
        limit_concurrency=cfg.max_client_connections,
        backlog=2048,
        proxy_headers=False,
    )


def serve_proxy(
    config: ProxyConfig,
    *,
    host: str = "127.0.0.1",
    port: int = 8080,
    sink: Sink | str = "jsonl:ssetally-usage.jsonl",
    workers: int = 1,
    **launch: Unpack[LaunchOptions],
) -> None:
    """Run the proxy in the calling thread until interrupted (what ``ssetally proxy`` does).

    ``launch`` (``log_level``, ``http``, ``sink_options``, ``otel``) makes the ``Launch``
    every process of the proxy is served with (its defaults apply). ``http`` is uvicorn's HTTP
    implementation: ``h11`` refuses absolute-form request targets with 400; ``httptools``
    (faster; ``auto`` picks it when installed) reduces them to their path, so they still go to
    the fixed upstream only. ``workers`` above 1 runs that many processes on the one port (see
    ``_supervisor``); each opens ``sink`` (then a string) with ``sink_options``; ``otel`` sets
    up the OpenTelemetry SDK in each worker (one process: the caller sets it up). The
    serving process is readied first (``_worker.settle``: the price list loaded, the start-up
    objects frozen out of the garbage collector's passes).
    """
    import uvicorn

    settings = Launch(**launch)
    line = runtime_line(config, settings.http, workers)
    if workers > 1:
        if not isinstance(sink, str):
            raise ValueError("with several workers, give the sink as a string (each opens it)")
        from ._supervisor import Supervisor

        supervisor = Supervisor(config, workers=workers, host=host, port=port, sink=sink, **launch)
        supervisor.run(lambda s: print(f"{line}, on {s.url}", file=sys.stderr, flush=True))
        return
    print(line, file=sys.stderr, flush=True)
    app = MeteringProxy(config, settings.open_sink(sink) if isinstance(sink, str) else sink)
    settle(config)
    try:
        uvicorn.Server(uvicorn_config(app, host, port, settings.log_level, settings.http)).run()
    except KeyboardInterrupt:
        # uvicorn re-raises the Ctrl-C it handled, after a graceful shutdown (records flushed).
        pass


class ProxyServer(Listener):
    """A metering proxy served by uvicorn from a background thread (tests, benchmarks,
    embedding). ``with ProxyServer(config, sink) as proxy:`` listens on ``proxy.url`` until the
    block ends; on exit the fallbacks finish and the sink is flushed and closed.
    ``ssl_context`` verifies an https upstream (default: certifi's CA bundle, else the
    system's).
    """

    def __init__(
        self,
        config: ProxyConfig,
        sink: Sink | str,
        *,
        host: str = "127.0.0.1",
        port: int = 0,
        log_level: str = "warning",
        start_timeout: float = 10.0,
        http: str = "auto",
        ssl_context: ssl.SSLContext | None = None,
    ) -> None:
        self.app = MeteringProxy(
            config, open_sink(sink) if isinstance(sink, str) else sink, ssl_context=ssl_context
        )
        self._http = http
        self.host = host
        self._port = port
        self._log_level = log_level
        self._start_timeout = start_timeout
        self._server: Any = None
        self._thread: threading.Thread | None = None
        self._socket: socket.socket | None = None

    @property
    def sink(self) -> Sink:
        """Where the records go."""
        return self.app.sink

    @property
    def metrics(self) -> ProxyMetrics:
        """The proxy's metrics."""
        return self.app.metrics

    def start(self) -> Self:
        """Bind and serve from a daemon thread; returns once the server accepts."""
        import uvicorn

        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((self.host, self._port))
        self._socket = sock
        self._server = uvicorn.Server(
            uvicorn_config(self.app, self.host, 0, self._log_level, self._http)
        )
        self._thread = threading.Thread(
            target=self._server.run,
            kwargs={"sockets": [sock]},
            name=f"ssetally-proxy:{self.port}",
            daemon=True,
        )
        self._thread.start()
        deadline = time.monotonic() + self._start_timeout
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError("the proxy did not start")
            time.sleep(0.01)
        return self

    def stop(self, timeout: float = 30.0) -> None:
        """Stop serving, finish the fallbacks, flush and close the sink. Idempotent."""
        if self._server is not None:
            self._server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        if self._socket is not None:
            self._socket.close()
        self.app.sink.close()

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()

    def flush(self, timeout: float = 10.0) -> bool:
        """Wait until no request is in flight and every record is written to the sink."""
        deadline = time.monotonic() + timeout
        while not self.app.idle:
            if time.monotonic() > deadline:
                return False
            time.sleep(0.01)
        return self.app.sink.flush(max(0.0, deadline - time.monotonic()))
