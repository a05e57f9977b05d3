"""The ``get`` the retrieval fallback needs, over a bare httpx/httpx2 transport (which never
follows redirects); the body is read raw and decoded with the retrieval's bound."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, NamedTuple

from ._metering._decode import MAX_JSON_BODY, aread_body, read_body


class Fetched(NamedTuple):
    """A GET's answer: status, bounded decoded body, headers, and why the body is cut."""

    status_code: int
    content: bytes
    headers: Mapping[str, str]
    truncated: str | None = None


_TIMEOUT_KEYS = ("connect", "read", "write", "pool")


def _timeout_extension(seconds: float) -> dict[str, float]:
    return dict.fromkeys(_TIMEOUT_KEYS, seconds)


class TransportGetter:
    """The ``client.get`` that ``retrieve`` needs, over a bare transport."""

    def __init__(self, transport: Any, lib: Any) -> None:
        self._transport = transport
        self._lib = lib

    def get(
        self, url: str, *, headers: dict[str, str], timeout: float, follow_redirects: bool = False
    ) -> Fetched:
        # A bare transport never follows redirects.
        request = self._lib.Request(
            "GET", url, headers=headers, extensions={"timeout": _timeout_extension(timeout)}
        )
        response = self._transport.handle_request(request)
        try:
            coding = response.headers.get("content-encoding", "")
            body = read_body(response.stream, coding, MAX_JSON_BODY)
        finally:
            response.close()
        return Fetched(response.status_code, body.content, response.headers, body.truncated)


class AsyncTransportGetter:
    """The ``client.get`` that ``aretrieve`` needs, over a bare async transport."""

    def __init__(self, transport: Any, lib: Any) -> None:
        self._transport = transport
        self._lib = lib

    async def get(
        self, url: str, *, headers: dict[str, str], timeout: float, follow_redirects: bool = False
    ) -> Fetched:
        # A bare transport never follows redirects.
        request = self._lib.Request(
            "GET", url, headers=headers, extensions={"timeout": _timeout_extension(timeout)}
        )
        response = await self._transport.handle_async_request(request)
        try:
            coding = response.headers.get("content-encoding", "")
            body = await aread_body(response.stream, coding, MAX_JSON_BODY)
        finally:
            await response.aclose()
        return Fetched(response.status_code, body.content, response.headers, body.truncated)
