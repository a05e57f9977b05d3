"""Whether an upstream rejected the ``stream_options`` that usage injection added.

Some OpenAI-compatible servers (older Azure API versions, some gateways and local servers)
answer a body with ``stream_options`` with HTTP 400, e.g. OpenAI's error format
``{"error": {"message": "Unrecognized request argument supplied: stream_options",
"type": "invalid_request_error", "param": null, "code": null}}``. The front-ends that injected
it then send the caller's own request once more, unchanged, and meter that answer as usual.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from ._decode import MAX_ERROR_BODY, read_body

#: The member injection adds; an error that names it is about the injection.
_PARAM = "stream_options"

#: At most this much of an error body is read to decide (an OpenAI error is a few hundred bytes).
MAX_ERROR_BYTES = MAX_ERROR_BODY

#: The warning of a report whose request was sent again without the injection.
RETRIED = (
    "the server rejected stream_options (HTTP 400: {message}); the request was sent again "
    "without it, as the caller wrote it"
)


def _message(body: Any) -> str | None:
    """The error text of an OpenAI-style (or FastAPI/vLLM-style) error body."""
    if isinstance(body, str):
        return body
    if not isinstance(body, Mapping):
        return None
    error = body.get("error")
    if isinstance(error, Mapping):
        param = error.get("param")
        message = error.get("message")
        text = str(message) if message is not None else ""
        return f"{text} (param {param})" if isinstance(param, str) and param else text
    for key in ("error", "message", "detail"):
        value = body.get(key)
        if isinstance(value, str):
            return value
        if value is not None:
            return json.dumps(value, ensure_ascii=False, default=str)
    return None


def stream_options_rejection(status: int, content: bytes | None) -> str | None:
    """The server's error message when a 400 answer's body names ``stream_options``, else
    None (the answer is another error, to be passed on as it is)."""
    if status != 400 or not content or len(content) > MAX_ERROR_BYTES:
        return None
    text = content.decode("utf-8", "replace")
    try:
        body: Any = json.loads(text)
    except (ValueError, RecursionError):
        body = text
    message = _message(body)
    if message is None or _PARAM not in message:
        return None
    return message[:300]


# The transports see raw answers (httpx/httpx2 ``Response`` objects, ``lib`` their module).


def worth_reading(response: Any) -> bool:
    """A 400 answer with a short declared body: worth reading to see if it rejected the
    injected ``stream_options`` (a longer or unsized body is passed on unread)."""
    if response.status_code != 400:
        return False
    length = response.headers.get("content-length", "")
    return length.isdigit() and int(length) <= MAX_ERROR_BYTES


def read_closed(response: Any) -> bytes:
    """The raw body of a sync answer ``worth_reading`` said is small, then closed."""
    try:
        return b"".join(response.stream)
    finally:
        response.close()


async def aread_closed(response: Any) -> bytes:
    """Async twin of ``read_closed``."""
    try:
        return b"".join([chunk async for chunk in response.stream])
    finally:
        await response.aclose()


def rebuilt(lib: Any, response: Any, raw: bytes) -> Any:
    """A response like ``response`` whose (still encoded) body is ``raw``, read already."""
    return lib.Response(
        response.status_code, headers=response.headers, content=raw,
        extensions=response.extensions,
    )  # fmt: skip


def rejection(response: Any, raw: bytes) -> str | None:
    """The server's message when this raw 400 body rejects ``stream_options`` (decoded with a
    bound: a compressed bomb, or a body that does not decode, is not a rejection)."""
    coding = response.headers.get("content-encoding", "")
    body = read_body([raw], coding, MAX_ERROR_BYTES)
    if body.truncated is not None:
        return None
    return stream_options_rejection(response.status_code, body.content)
