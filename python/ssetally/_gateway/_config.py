"""The metering proxy's settings (``ProxyConfig``) and the identities it stamps on records."""

from __future__ import annotations

import hashlib
import importlib
import os
import re
import socket
import uuid
from dataclasses import dataclass, field
from typing import Any

import httpx

from .._metering import RetrievalPolicy

#: A header name (RFC 9110 token).
_TOKEN = re.compile(r"[!#$%&'*+.^_`|~0-9A-Za-z-]{1,256}")
#: Headers that carry credentials (the fingerprinted key headers, cookies, proxy credentials).
_CREDENTIAL_HEADERS = frozenset(
    {"authorization", "proxy-authorization", "cookie", "x-api-key", "api-key", "x-goog-api-key"}
)
#: The durations (seconds) that must be positive when set; each has the flag ``--field-name``.
_SECONDS = (
    "header_timeout",
    "body_timeout",
    "keep_alive_timeout",
    "idle_timeout",
    "stream_deadline",
)

__all__ = ["ProxyConfig", "default_instance_id", "key_fingerprint", "safe_url"]


def safe_url(url: httpx.URL) -> str:
    """``url`` without its userinfo (a password in ``--upstream`` never reaches a log)."""
    return str(url.copy_with(username=None, password=None)) if url.userinfo else str(url)


def default_instance_id() -> str:
    """``HOSTNAME-PID-RANDOM``: unique per proxy process."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


def key_fingerprint(key: str | None, salt: str = "") -> str | None:
    """The first 16 hex digits of SHA-256(salt + key): enough to tell keys apart, useless to
    recover one. A ``Bearer`` prefix is removed first."""
    if not key:
        return None
    parts = key.split(None, 1)
    if parts and parts[0].lower() == "bearer":
        parts = parts[1:]
    if not parts or not parts[0].strip():
        return None
    key = parts[0].strip()
    return hashlib.sha256((salt + key).encode("utf-8")).hexdigest()[:16]


@dataclass(frozen=True)
class ProxyConfig:
    """Settings of a ``MeteringProxy``.

    :param upstream: the one origin (and optional path prefix) requests go to, e.g.
        ``https://api.openai.com``; the request path is appended to it.
    :param inject_usage: add ``stream_options.include_usage`` to Chat/legacy Completions
        streams that did not ask for usage, and strip the added chunk from what the client
        receives.
    :param retrieve: fetch the usage of a cut Responses stream with ``GET /responses/{id}``.
    :param estimate: count tokens with tiktoken when no usage could be had.
    :param max_body_bytes: larger request bodies get 413.
    :param max_header_bytes: larger request header sections get 431.
    :param key_salt: salt of the API key fingerprints.
    :param metrics_path: the path served by the proxy itself (not forwarded).
    :param json_capture_bytes: non-streamed JSON answers up to this size are read for usage.
    :param header_timeout: seconds a client has to send a request's header section, from its
        first byte (slowloris); the connection is closed past it.
    :param body_timeout: seconds a client has to send the whole request body (408 past it).
    :param keep_alive_timeout: seconds an idle client connection is kept between requests.
    :param max_client_connections: client connections served at once; more get 503.
    :param max_inflight_body_bytes: request body bytes all requests together may hold in
        memory; a request that would pass it gets 503.
    :param idle_timeout: longest time a stream may go without an output-bearing event
        (comments and pings do not count); the stream is cut past it. None: no limit.
    :param stream_deadline: longest time one answer may stream; cut past it. None: no limit.
    :param cost: price every report and record (genai-prices, about a third of a
        millisecond of CPU a stream); off, records have no cost.
    :param subject_header: the request header whose value is each record's ``subject`` (whom
        a request is billed to; the CloudEvents ``subject``, else the key fingerprint);
        sanitised and cut to 256 characters. A credential header is refused.
    :param metering: meter answers and write records; off (``--no-metering``), the proxy is a
        pure pass-through: no meter, no records, no usage injection (its bounds, timeouts
        and path and framing checks still hold).
    :param upstream_client: the client reading the upstream's answers: ``httptools`` (the
        lean asyncio client of ``_upstream``), ``httpx2``, ``httpx``, or ``auto`` (httptools
        when installed, else httpx2, else httpx). The retrieval always uses httpx2/httpx.
    """

    upstream: str
    inject_usage: bool = False
    retrieve: bool = True
    estimate: bool = True
    max_body_bytes: int = 32 * 1024 * 1024
    max_header_bytes: int = 64 * 1024
    connect_timeout: float = 10.0
    read_timeout: float = 600.0
    max_connections: int = 1000
    instance_id: str = field(default_factory=default_instance_id)
    key_salt: str = ""
    metrics_path: str = "/metrics"
    retrieval: RetrievalPolicy = field(default_factory=RetrievalPolicy)
    json_capture_bytes: int = 8 * 1024 * 1024
    otel: bool = True
    shutdown_timeout: float = 30.0
    upstream_client: str = "auto"
    header_timeout: float = 10.0
    body_timeout: float = 60.0
    keep_alive_timeout: float = 5.0
    max_client_connections: int = 1024
    max_inflight_body_bytes: int = 256 * 1024 * 1024
    idle_timeout: float | None = 900.0
    stream_deadline: float | None = 3600.0
    subject_header: str | None = None
    cost: bool = True
    metering: bool = True

    def __post_init__(self) -> None:
        if self.inject_usage and not self.metering:
            raise ValueError("--inject-usage needs metering: drop --no-metering or it")
        for key in _SECONDS:
            value = getattr(self, key)
            if value is not None and not value > 0:
                flag = "--" + key.replace("_", "-")
                raise ValueError(f"{flag} must be a positive number of seconds, got {value!r}")
        name = self.subject_header
        if name is not None:
            if not _TOKEN.fullmatch(name):
                raise ValueError(f"--subject-header must be a header name, got {name[:100]!r}")
            if name.lower() in _CREDENTIAL_HEADERS:
                raise ValueError(f"--subject-header {name} carries credentials: never recorded")

    def upstream_url(self) -> httpx.URL:
        """The validated upstream URL."""
        url = httpx.URL(self.upstream)
        if url.scheme not in ("http", "https") or not url.host:
            raise ValueError(f"--upstream must be an http(s) URL, got {self.upstream!r}")
        if url.query or url.fragment:
            raise ValueError("--upstream must not have a query or a fragment")
        return url


def http_library(name: str, client: Any) -> Any:
    """The ``httpx`` or ``httpx2`` module for the upstream pool."""
    if client is not None:
        name = type(client).__module__.split(".", 1)[0]
    if name not in ("auto", "httpx", "httpx2"):
        raise ValueError(f"upstream_client must be auto, httpx or httpx2, not {name!r}")
    if name in ("auto", "httpx2"):
        try:
            return importlib.import_module("httpx2")
        except ImportError:
            if name == "httpx2":
                raise
    return httpx
