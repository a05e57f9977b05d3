"""The ``ssetally replay`` entry point: ``serve`` runs a ``ReplayServer`` until Ctrl-C."""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Callable

from ._faults import Faults
from ._server import ReplayServer
from ._sse import StreamSource


def serve(
    host: str = "127.0.0.1",
    port: int = 8000,
    files: Sequence[StreamSource] = (),
    *,
    delay: float = 0.02,
    faults: Faults | None = None,
    cycle: bool = False,
    poll_in_progress: int = 0,
    retry_after: float = 1.0,
    require_auth: bool = True,
    log: bool = True,
    ready: Callable[[ReplayServer], None] | None = None,
) -> None:
    """Run a ``ReplayServer`` in the calling thread until Ctrl-C.

    ``files`` are replayed one per POST (see ``ReplayServer``); ``delay`` paces the events
    (seconds). ``ready`` is called once the port is bound (default: print the base URL to
    stderr).
    """
    server = ReplayServer(
        host,
        port,
        streams=files,
        delay=delay,
        faults=faults,
        cycle=cycle,
        poll_in_progress=poll_in_progress,
        retry_after=retry_after,
        require_auth=require_auth,
        log=log,
    )
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
