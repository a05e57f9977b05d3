"""The request side of metering: reading an LLM request's JSON body and asking it for usage."""

from __future__ import annotations

import codecs
import json
from collections.abc import Mapping
from typing import Any, NamedTuple

from .._core import compact_json, json_object

#: Endpoints whose streams only carry usage when `stream_options.include_usage` is set.
_USAGE_OPT_IN_PATHS = ("/chat/completions", "/completions")

#: Request paths whose JSON body is worth reading (LLM endpoints).
_LLM_PATH_ENDINGS = (
    "/chat/completions",
    "/completions",
    "/responses",
    "/messages",
    "/generateContent",
    "/streamGenerateContent",
    "/chat",
    "/interactions",
)


def is_llm_path(path: str) -> bool:
    """True for a path that looks like an LLM endpoint (its JSON body is worth reading)."""
    path = path.split("?", 1)[0].rstrip("/")
    return path.endswith(_LLM_PATH_ENDINGS) or ":streamGenerateContent" in path


def parse_json_object(body: bytes | str | None) -> dict[str, Any] | None:
    """``body`` parsed as a JSON object, None if it is not one (never raises)."""
    if not body:
        return None
    if type(body) in (bytes, str):
        found = json_object(body)  # natively; what it leaves to json.loads, below
        if found is not None:
            return found
    try:
        obj = json.loads(_text(body))
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


def _text(body: bytes | str) -> bytes | str:
    """Plain UTF-8 as text, the rest as it came: ``json.loads`` of bytes first sniffs their
    encoding (a BOM, or the NUL bytes of UTF-16 and UTF-32) and decodes them with
    ``surrogatepass``, which strict UTF-8 refuses."""
    if isinstance(body, str) or body[:3] == codecs.BOM_UTF8 or b"\x00" in body[:2]:
        return body
    try:
        return body.decode("utf-8")
    except UnicodeDecodeError:
        return body


def json_body(kwargs: Mapping[str, Any]) -> dict[str, Any] | None:
    """The request's JSON body from httpx-style kwargs (``json=`` or ``content=``), if any."""
    body = kwargs.get("json")
    if body is None:
        content = kwargs.get("content")
        return parse_json_object(content) if isinstance(content, (bytes, str)) else None
    return body if isinstance(body, dict) else None


def requested_model(body: Mapping[str, Any] | None) -> str | None:
    """The ``model`` a request body asked for."""
    model = None if body is None else body.get("model")
    return model if isinstance(model, str) else None


def wants_usage_injection(path: str, body: Mapping[str, Any] | None) -> bool:
    """True for a streaming Chat/legacy Completions body that did not ask for usage.

    Responses never needs it (it always sends usage); a body that set
    ``stream_options.include_usage`` either way is left as the caller wrote it.
    """
    if body is None or body.get("stream") is not True:
        return False
    if not path.split("?", 1)[0].rstrip("/").endswith(_USAGE_OPT_IN_PATHS):
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


def usage_request(method: str, path: str, body: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """The body to send instead of ``body`` so that the stream reports its usage, or None
    when the request needs no change. The one place that decides on usage injection."""
    if method.upper() != "POST" or not wants_usage_injection(path, body):
        return None
    assert body is not None
    return with_usage_requested(body)


def encode_body(body: Mapping[str, Any], *, strict: bool = False) -> bytes:
    """A JSON body as compact UTF-8 bytes (what the transport and the proxy send; U+0085,
    U+2028 and U+2029 as ``\\u`` escapes, which mean the same to a JSON reader). Raises
    ``UnicodeEncodeError`` for a lone surrogate (a valid JSON escape with no UTF-8 form): the
    callers then send the request as it was. ``strict`` encodes as httpx encodes ``json=``:
    a NaN or an infinity (which ``json.loads`` accepts, JSON does not) raises ``ValueError``."""
    text = compact_json(body)  # the common body, natively (NaN, surrogates: json decides)
    if text is None:
        text = json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=not strict)
    return text.encode("utf-8")


#: The warning of a report whose request could not carry the injected ``stream_options``.
NOT_INJECTED = (
    "include_usage was not added: the request body cannot be sent again as UTF-8 JSON "
    "({why}); the request went out as the caller wrote it"
)


class Injection(NamedTuple):
    """What usage injection does to one request: the body to send and its bytes, or (both
    None) nothing; ``skipped`` says why a body that needed it could not get it."""

    body: dict[str, Any] | None = None
    content: bytes | None = None
    skipped: str | None = None


def inject_usage(method: str, path: str, body: Mapping[str, Any] | None) -> Injection:
    """Usage injection for one request, never raising: the new body and its encoding, or why
    the request must go out unchanged (a body that cannot be re-encoded)."""
    new = usage_request(method, path, body)
    if new is None:
        return Injection()
    try:
        return Injection(new, encode_body(new, strict=True))
    except (ValueError, RecursionError) as exc:
        why = f"{type(exc).__name__}: {exc}"[:200]
        return Injection(skipped=NOT_INJECTED.format(why=why))
