"""HTTP headers at the proxy: what is forwarded, what is dropped, whose key a request carries,
and the proxy's own error answers."""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any
from urllib.parse import parse_qsl

from .._metering import SECRET_FIELDS, StreamMeter, wire_secrets
from ._config import key_fingerprint

Message = MutableMapping[str, Any]
Send = Callable[[Message], Awaitable[None]]


#: Hop-by-hop headers (RFC 9110 7.6.1) and others a proxy must not forward as they are.
HOP_BY_HOP = frozenset(
    {
        b"connection",
        b"keep-alive",
        b"proxy-connection",
        b"proxy-authenticate",
        b"proxy-authorization",
        b"te",
        b"trailer",
        b"transfer-encoding",
        b"upgrade",
    }
)
#: Request headers the proxy sets itself (httpx computes Host and Content-Length).
REQUEST_DROP = frozenset({b"host", b"content-length", b"expect"})
#: Credentials headers whose value is fingerprinted (never stored).
KEY_HEADERS = ("authorization", "x-api-key", "api-key", "x-goog-api-key")
_KEY_NAMES = tuple(name.encode() for name in KEY_HEADERS)
_PARSE_INLINE_LIMIT = 256 * 1024


def header(headers: Iterable[tuple[bytes, bytes]], name: bytes) -> str | None:
    for key, value in headers:
        if key.lower() == name:
            return value.decode("latin-1")
    return None


def connection_tokens(value: str | None) -> frozenset[bytes]:
    """The header names a ``Connection`` header lists (hop-by-hop for this connection)."""
    if not value:
        return frozenset()
    return frozenset(t.strip().lower().encode("latin-1") for t in value.split(",") if t.strip())


def forward_headers(headers: list[tuple[bytes, bytes]]) -> list[tuple[bytes, bytes]]:
    """The request headers to send upstream: less hop-by-hop ones and those the proxy sets."""
    also = connection_tokens(header(headers, b"connection"))
    return [
        (k, v)
        for k, v in headers
        if (name := k.lower()) not in HOP_BY_HOP and name not in REQUEST_DROP and name not in also
    ]


def fingerprint(headers: list[tuple[bytes, bytes]], query: bytes, salt: str) -> str | None:
    # One pass over the headers: the first field of each key header, then by precedence.
    first: dict[bytes, bytes] = {}
    for raw, raw_value in headers:
        name = raw.lower()
        if name in _KEY_NAMES and name not in first:
            first[name] = raw_value
    for name in _KEY_NAMES:
        value = first.get(name)
        if value:
            return key_fingerprint(value.decode("latin-1"), salt)
    if b"key=" in query:
        for k, v in parse_qsl(query.decode("latin-1")):
            if k == "key":
                return key_fingerprint(v, salt)
    return None


#: Header fields either ``fingerprint`` or ``wire_secrets`` reads (lower case).
_CREDENTIAL_FIELDS = frozenset({*_KEY_NAMES, *SECRET_FIELDS})


class Credentials:
    """The key fingerprint and the secrets of a request (``fingerprint``, ``wire_secrets``),
    worked out once per distinct set of credential fields and query: a gateway sees the same
    few keys on request after request, and hashing and splitting them is a good part of a
    short stream's cost. At most ``limit`` are kept (the oldest go first)."""

    def __init__(self, salt: str, limit: int = 4096) -> None:
        self._salt = salt
        self._limit = limit
        self._known: dict[tuple[Any, ...], tuple[str | None, tuple[str, ...]]] = {}

    def __call__(
        self, headers: list[tuple[bytes, bytes]], query: bytes
    ) -> tuple[str | None, tuple[str, ...]]:
        fields = tuple((k, v) for k, v in headers if k.lower() in _CREDENTIAL_FIELDS)
        key = (query, *fields)
        known = self._known.get(key)
        if known is None:
            known = (fingerprint(headers, query, self._salt), wire_secrets(headers, query))
            if len(self._known) >= self._limit:
                del self._known[next(iter(self._known))]
            self._known[key] = known
        return known


async def send_error(
    send: Send, status: int, message: str, kind: str, *, close: bool = False
) -> None:
    """The proxy's own JSON error answer; ``close`` ends the connection after it (the rest of
    what the client sent cannot be trusted to frame a next request)."""
    body = json.dumps({"error": {"message": message, "type": kind, "code": None}}).encode()
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    if close:
        headers.append((b"connection", b"close"))
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


#: The record's warning when the upstream compressed an answer to an injected request.
DECODED_FOR_CLIENT = (
    "the upstream answered with Content-Encoding {coding!r} although the proxy asked for "
    "identity (usage injected): the body was decoded for the client (Content-Encoding and "
    "Content-Length removed) so that the usage chunk could be removed"
)


def client_headers(
    meter: StreamMeter, headers: list[tuple[bytes, bytes]], warnings: list[str]
) -> list[tuple[bytes, bytes]]:
    """The answer's headers as the client gets them from a metered stream: no Content-Length
    once usage is stripped, and no Content-Encoding when the body is decoded for the client
    (``warnings`` then says so)."""
    if not meter.stripping:
        return headers
    drop = {b"content-length"}
    if meter.compressed:
        drop.add(b"content-encoding")
        coding = next((v for k, v in headers if k.lower() == b"content-encoding"), b"")
        warnings.append(DECODED_FOR_CLIENT.format(coding=coding.decode("latin-1")[:50]))
    return [(k, v) for k, v in headers if k.lower() not in drop]
