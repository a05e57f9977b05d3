"""An ASGI app served by uvicorn from a thread on 127.0.0.1, for the tests that need a real
server around the app (the middleware's tests, scripted upstreams written with FastAPI)."""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Literal

from typing_extensions import Self


class UvicornThread:
    """``app`` under uvicorn in a daemon thread, on a port of its own: the block waits (at
    most ``timeout`` seconds) until it serves and stops it at the end."""

    def __init__(
        self, app: Any, *, lifespan: Literal["auto", "on", "off"] = "auto", timeout: float = 10.0
    ) -> None:
        import uvicorn  # here, so that a test module without it can skip itself first

        self.timeout = timeout
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        config = uvicorn.Config(app, log_level="warning", lifespan=lifespan, access_log=False)
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(
            target=self.server.run, kwargs={"sockets": [self.sock]}, daemon=True
        )

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.sock.getsockname()[1]}"

    def __enter__(self) -> Self:
        self.thread.start()
        deadline = time.monotonic() + self.timeout
        while not self.server.started:
            assert time.monotonic() < deadline and self.thread.is_alive()
            time.sleep(0.01)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(self.timeout)
        self.sock.close()
