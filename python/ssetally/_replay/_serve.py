"""The ``ssetally replay`` entry point: ``serve`` runs a ``ReplayServer`` until Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Callable, Sequence
from typing import Any

from ._server import ReplayServer
from ._sse import StreamSource


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    files: Sequence[StreamSource] = (),
    *,
    delay: float = 0.02,
    log: bool = True,
    ready: Callable[[ReplayServer], None] | None = None,
    **options: Any,
) -> None:
    """Run a ``ReplayServer`` in the calling thread until Ctrl-C.

    ``files`` are replayed one per POST (see ``ReplayServer``); ``delay`` paces the events
    (seconds). ``ready`` is called once the port is bound (default: print the base URL to
    stderr). Other keyword arguments (``faults``, ``cycle``, ``poll_in_progress``,
    ``retry_after``, ``require_auth``, ...) are ``ReplayServer``'s.
    """
    server = ReplayServer(host, port, streams=files, delay=delay, log=log, **options)
    server._bind()
    if ready is not None:
        ready(server)
    else:
        queued = f", {len(files)} stream(s) queued" if files else ""
        print(f"ssetally replay: serving {server.url}{queued}", file=sys.stderr, flush=True)
    try:
        server.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
