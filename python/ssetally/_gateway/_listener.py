"""The address of a proxy that serves from a socket it bound itself (``ProxyServer``,
``Supervisor``)."""

from __future__ import annotations

import socket


class Listener:
    """``port`` and ``url`` of a server bound to ``host`` (``_port`` until it is bound)."""

    host: str
    _port: int
    _socket: socket.socket | None

    @property
    def port(self) -> int:
        """The bound port."""
        if self._socket is not None:
            return int(self._socket.getsockname()[1])
        return self._port

    @property
    def url(self) -> str:
        """``http://HOST:PORT``."""
        return f"http://{self.host}:{self.port}"
