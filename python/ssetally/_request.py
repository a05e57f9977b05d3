"""Reading and adjusting the JSON body of an LLM request."""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

#: Endpoints whose streams only carry usage when `stream_options.include_usage` is set.
_USAGE_OPT_IN_PATHS = ("/chat/completions", "/completions")


def json_body(kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request's JSON body from httpx-style kwargs (``json=`` or ``content=``), if any."""
    body = kwargs.get("json")
    if body is None:
        content = kwargs.get("content")
        if isinstance(content, (bytes, str)):
            try:
                body = json.loads(content)
            except ValueError:
                return None
    return body if isinstance(body, dict) else None


def wants_usage_injection(path: str, body: Mapping[str, Any] | None) -> bool:
    """True for a streaming Chat/legacy Completions body that did not ask for usage.

    Responses never needs it (it always sends usage); a body that set
    ``stream_options.include_usage`` either way is left as the caller wrote it.
    """
    if body is None or body.get("stream") is not True:
        return False
    if not path.rstrip("/").endswith(_USAGE_OPT_IN_PATHS):
        return False
    options = body.get("stream_options")
    if options is None:
        return True
    return isinstance(options, Mapping) and "include_usage" not in options


def with_usage_requested(body: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``body`` with ``stream_options.include_usage`` set to true."""
    options = dict(body.get("stream_options") or {})
    options["include_usage"] = True
    return {**body, "stream_options": options}
