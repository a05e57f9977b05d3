"""The ``get`` the retrieval fallback needs, over a bare httpx/httpx2 transport (which never
follows redirects)."""

from __future__ import annotations

from typing import Any

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
    ) -> Any:
        # A bare transport never follows redirects.
        request = self._lib.Request(
            "GET", url, headers=headers, extensions={"timeout": _timeout_extension(timeout)}
        )
        response = self._transport.handle_request(request)
        try:
            response.read()
        finally:
            response.close()
        return response


class AsyncTransportGetter:
    """The ``client.get`` that ``aretrieve`` needs, over a bare async transport."""

    def __init__(self, transport: Any, lib: Any) -> None:
        self._transport = transport
        self._lib = lib

    async def get(
        self, url: str, *, headers: dict[str, str], timeout: float, follow_redirects: bool = False
    ) -> Any:
        # A bare transport never follows redirects.
        request = self._lib.Request(
            "GET", url, headers=headers, extensions={"timeout": _timeout_extension(timeout)}
        )
        response = await self._transport.handle_async_request(request)
        try:
            await response.aread()
        finally:
            await response.aclose()
        return response
