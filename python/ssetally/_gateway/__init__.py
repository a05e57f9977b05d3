"""The metering gateway: a reverse proxy that relays LLM answers byte for byte and writes one
usage record per request. ``_config`` (settings), ``_headers``, ``_record`` (the record of a
request), ``_relay`` (sending to the client), ``_metrics``, ``_trace`` (the span of a request that
failed before any stream), ``_app`` (the ASGI application,
metering through the shared pipeline) and ``_server`` (running it with uvicorn)."""

from ._app import MeteringProxy
from ._config import ProxyConfig, default_instance_id, key_fingerprint
from ._metrics import ProxyMetrics
from ._server import ProxyServer, serve_proxy

__all__ = [
    "MeteringProxy",
    "ProxyConfig",
    "ProxyMetrics",
    "ProxyServer",
    "default_instance_id",
    "key_fingerprint",
    "serve_proxy",
]
