"""One stream's reads -> the events each parser under test hands back.

Every adapter takes the reads of one HTTP response body (``Iterable[bytes]``) and returns an
iterable of objects with a ``.data`` str (the naive loop yields the data str itself). A fresh
parser is made for every stream, as a client makes one per response. Adapters whose library
is not installed are absent from ``ADAPTERS``; ``MISSING`` says why.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import httpx
import ssetally
from openai2_framing import openai2_events
from pure_python import naive_payloads

Adapter = Callable[[Iterable[bytes]], Iterable[Any]]

_SSE_HEADERS = [("content-type", "text/event-stream")]
_URL = "http://127.0.0.1/stream"


class _HttpxReads(httpx.SyncByteStream):
    def __init__(self, reads: Iterable[bytes]) -> None:
        self._reads = reads

    def __iter__(self) -> Iterator[bytes]:
        return iter(self._reads)


_HTTPX_REQUEST = httpx.Request("GET", _URL)


def httpx_response(reads: Iterable[bytes]) -> httpx.Response:
    """An in-memory streaming ``httpx.Response`` (no network) over ``reads``."""
    return httpx.Response(
        200, headers=_SSE_HEADERS, stream=_HttpxReads(reads), request=_HTTPX_REQUEST
    )


def ssetally_decoder(reads: Iterable[bytes]) -> Iterable[Any]:
    return itertools.chain.from_iterable(map(ssetally.SSEDecoder().feed, reads))


def ssetally_eventsource(reads: Iterable[bytes]) -> Iterable[Any]:
    return ssetally.EventSource(httpx_response(reads)).iter_sse()


ADAPTERS: dict[str, Adapter] = {
    "ssetally.decoder": ssetally_decoder,
    "ssetally.eventsource": ssetally_eventsource,
    "openai2.reimpl": openai2_events,
    "naive.lines": naive_payloads,
}
MISSING: dict[str, str] = {}

try:
    import httpx_sse
    from httpx._decoders import TextDecoder
    from httpx_sse._decoders import SSEDecoder as HttpxSseDecoder
    from httpx_sse._decoders import SSELineDecoder

    def httpx_sse_eventsource(reads: Iterable[bytes]) -> Iterable[Any]:
        return httpx_sse.EventSource(httpx_response(reads)).iter_sse()

    def httpx_sse_decoders(reads: Iterable[bytes]) -> Iterator[Any]:
        """httpx's incremental UTF-8 decoder, then httpx-sse's line and field decoders,
        as ``EventSource.iter_sse`` drives them (without the ``httpx.Response``)."""
        text, lines, fields = TextDecoder("utf-8"), SSELineDecoder(), HttpxSseDecoder()
        for read in reads:
            for line in lines.decode(text.decode(read)):
                event = fields.decode(line.rstrip("\n"))
                if event is not None:
                    yield event
        for line in lines.decode(text.flush()) + lines.flush():
            event = fields.decode(line.rstrip("\n"))
            if event is not None:
                yield event

    ADAPTERS["httpx-sse.eventsource"] = httpx_sse_eventsource
    ADAPTERS["httpx-sse.decoders"] = httpx_sse_decoders
except ImportError as exc:
    MISSING["httpx-sse"] = str(exc)

try:
    import httpx2

    class _Httpx2Reads(httpx2.SyncByteStream):
        def __init__(self, reads: Iterable[bytes]) -> None:
            self._reads = reads

        def __iter__(self) -> Iterator[bytes]:
            return iter(self._reads)

    _HTTPX2_REQUEST = httpx2.Request("GET", _URL)

    def httpx2_eventsource(reads: Iterable[bytes]) -> Iterable[Any]:
        response = httpx2.Response(
            200, headers=_SSE_HEADERS, stream=_Httpx2Reads(reads), request=_HTTPX2_REQUEST
        )
        return iter(httpx2.EventSource(response))

    ADAPTERS["httpx2.eventsource"] = httpx2_eventsource
except (ImportError, AttributeError) as exc:
    MISSING["httpx2"] = str(exc)

try:
    from openai._streaming import SSEDecoder as OpenaiSSEDecoder

    def openai3_decoder(reads: Iterable[bytes]) -> Iterable[Any]:
        return OpenaiSSEDecoder().iter_bytes(iter(reads))

    ADAPTERS["openai3.decoder"] = openai3_decoder
except ImportError as exc:
    MISSING["openai"] = str(exc)

try:
    import sseclient

    def sseclient_events(reads: Iterable[bytes]) -> Iterable[Any]:
        return sseclient.SSEClient(iter(reads)).events()

    ADAPTERS["sseclient"] = sseclient_events
except ImportError as exc:
    MISSING["sseclient-py"] = str(exc)


def usage_tap_class() -> Any:
    """``ssetally.UsageTap`` if the installed build has it, else ``None``."""
    tap = getattr(ssetally, "UsageTap", None)
    if tap is not None:
        return tap
    try:
        from ssetally._tap import UsageTap

        UsageTap("auto")  # the native half may be missing even when the module imports
    except (ImportError, AttributeError) as exc:
        MISSING["ssetally.UsageTap"] = f"{type(exc).__name__}: {exc}"
        return None
    return UsageTap
