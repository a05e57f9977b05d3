"""The upstream connection pools a proxy can read answers through: the lean pool of
``_upstream`` (httptools), or an httpx/httpx2 client (the fallback, and the usage retrieval)."""

from __future__ import annotations

import ssl
from typing import Any

import httpx

from ._config import ProxyConfig, http_library
from ._upstream import UpstreamPool, httptools_available

__all__ = ["lean_pool", "stack_client", "upstream_path"]

#: Idle keep-alive connections kept per pool at most.
MAX_IDLE = 200


def upstream_path(name: str, client: Any = None) -> str:
    """The client that reads the answers for ``upstream_client`` ``name``: ``httptools``
    (the lean pool; ``auto`` picks it when httptools is installed and no ``client`` is
    given), ``httpx2`` or ``httpx``."""
    if name == "httptools":
        if not httptools_available():
            raise ImportError("upstream_client httptools needs httptools: pip install httptools")
        if client is None:
            return "httptools"
    if name == "auto" and client is None and httptools_available():
        return "httptools"
    return str(http_library("auto" if name == "httptools" else name, client).__name__)


def lean_pool(
    url: httpx.URL, cfg: ProxyConfig, ssl_context: ssl.SSLContext | None = None
) -> UpstreamPool:
    """The lean pool to ``url`` with the limits and timeouts of ``cfg``."""
    return UpstreamPool(
        url,
        max_connections=cfg.max_connections,
        max_idle=min(cfg.max_connections, MAX_IDLE),
        connect_timeout=cfg.connect_timeout,
        read_timeout=cfg.read_timeout,
        max_header_bytes=cfg.max_header_bytes,
        ssl_context=ssl_context,
    )


def stack_client(http: Any, cfg: ProxyConfig) -> Any:
    """An ``AsyncClient`` of ``http`` (the httpx or httpx2 module) with the limits and
    timeouts of ``cfg``."""
    return http.AsyncClient(
        timeout=http.Timeout(
            connect=cfg.connect_timeout,
            read=cfg.read_timeout,
            write=cfg.read_timeout,
            pool=cfg.connect_timeout,
        ),
        limits=http.Limits(
            max_connections=cfg.max_connections,
            max_keepalive_connections=min(cfg.max_connections, MAX_IDLE),
        ),
        follow_redirects=False,
        trust_env=False,
    )
