import httpx

from ssetally import SSEError


def test_sse_error() -> None:
    assert issubclass(SSEError, httpx.TransportError)
