"""What the metering transports send: the caller's request, with ``include_usage`` added to a
Chat/legacy Completions stream when it is due (fail-open: a body that cannot be rewritten is
sent as it is, and the report says why)."""

from __future__ import annotations

import importlib
import logging
from typing import Any, NamedTuple

from ._metering import inject_usage, parse_json_object

logger = logging.getLogger("ssetally")


def library(request: Any) -> Any:
    """The ``httpx`` or ``httpx2`` module a request object belongs to."""
    name = type(request).__module__.split(".", 1)[0]
    if name not in ("httpx", "httpx2"):
        name = "httpx"
    return importlib.import_module(name)


def request_content(request: Any) -> bytes | None:
    """The request body when it is already in memory (never reads a streaming body)."""
    try:
        content = request.content
    except Exception:  # noqa: BLE001 - RequestNotRead: a streaming body, left alone
        return None
    return content if isinstance(content, bytes) else None


class Prepared(NamedTuple):
    """The request to send, its JSON body, whether ``include_usage`` was added to it, and
    why not when it could not be."""

    request: Any
    body: dict[str, Any] | None
    injected: bool
    skipped: str | None = None


def prepare(request: Any, include_usage: bool) -> Prepared:
    """The request to send, with ``include_usage`` added when it is due.

    Never raises: a body that cannot be rewritten is sent as it is (fail-open), and the
    report says why."""
    body = parse_json_object(request_content(request))
    if not include_usage:
        return Prepared(request, body, False)
    injection = inject_usage(request.method, request.url.path, body)
    if injection.body is None or injection.content is None:
        return Prepared(request, body, False, injection.skipped)
    try:
        headers = request.headers.copy()
        headers["content-length"] = str(len(injection.content))
        # The usage chunk is removed from the raw bytes: they must not be compressed.
        headers["accept-encoding"] = "identity"
        sent = library(request).Request(
            request.method, request.url, headers=headers, content=injection.content,
            extensions=request.extensions,
        )  # fmt: skip
    except Exception as exc:
        logger.exception("ssetally: include_usage could not be added; request sent unchanged")
        why = f"include_usage was not added: {type(exc).__name__}: {exc}"[:300]
        return Prepared(request, body, False, why)
    return Prepared(sent, injection.body, True)
