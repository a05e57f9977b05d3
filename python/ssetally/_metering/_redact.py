"""Credentials in requests, and keeping them out of every report, record and error."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Any
from urllib.parse import parse_qsl, urlsplit

from .._core import mentions as native_mentions
from .._report import Attempt, StreamReport, Usage

#: Request headers whose values are credentials: never repeated in reports or errors.
_SECRET_HEADERS = (
    "authorization",
    "proxy-authorization",
    "api-key",
    "x-api-key",
    "x-goog-api-key",
    "cookie",
)
#: The same names as header field names on the wire (to pick them out of raw headers).
SECRET_FIELDS = frozenset(name.encode() for name in _SECRET_HEADERS)
#: Query parameters that carry credentials (Gemini's ``key``, Azure SAS ``sig``, ...).
_SECRET_PARAMS = ("key", "api-key", "api_key", "apikey", "access_token", "token", "sig")
#: Shorter values are left alone: redacting them would blank out ordinary words.
_MIN_SECRET_LENGTH = 8
#: What a credential is replaced with.
REDACTED = "[REDACTED]"


def secrets_of(headers: Mapping[str, str], url: str = "") -> tuple[str, ...]:
    """The credential values of a request: the secret headers (whole, and the token after an
    auth scheme such as ``Bearer``, each cookie value) and secret query parameters. Longest
    first, so that a value containing another is replaced whole."""
    found: set[str] = set()
    for name, value in headers.items():
        name = name.lower()
        if name not in _SECRET_HEADERS:
            continue
        value = value.strip()
        found.add(value)
        if name == "cookie":
            found.update(part.partition("=")[2].strip() for part in value.split(";"))
        else:
            found.add(value.partition(" ")[2].strip())
    query = urlsplit(url).query if url else ""
    for name, value in parse_qsl(query, keep_blank_values=False):
        if name.lower() in _SECRET_PARAMS:
            found.add(value)
    usable = (v for v in found if len(v) >= _MIN_SECRET_LENGTH)
    return tuple(sorted(usable, key=len, reverse=True))


def wire_secrets(headers: Iterable[tuple[bytes, bytes]], query: bytes = b"") -> tuple[str, ...]:
    """``secrets_of`` a request as an ASGI server hands it over: raw header fields and the raw
    query string (only the credential fields are decoded)."""
    fields = {
        k.decode("latin-1"): v.decode("latin-1") for k, v in headers if k.lower() in SECRET_FIELDS
    }
    return secrets_of(fields, "?" + query.decode("latin-1") if query else "")


def request_secrets(request: Any) -> tuple[str, ...]:
    """``secrets_of`` an httpx/httpx2 request (empty when there is none)."""
    try:
        return secrets_of(request.headers, str(request.url))
    except (AttributeError, RuntimeError, TypeError):
        return ()


_SCALARS = frozenset({int, float, bool, type(None)})


def redact(value: Any, secrets: Sequence[str]) -> Any:
    """``value`` (text, or JSON-like data: dicts, lists, tuples) with every secret replaced by
    ``[REDACTED]``; other values are returned as they are."""
    if not secrets:
        return value
    kind = type(value)
    if kind is str or isinstance(value, str):
        for secret in secrets:
            if secret in value:
                value = value.replace(secret, REDACTED)
        return value
    if kind in _SCALARS:  # exact types: the ABC checks below are slow for what they rule out
        return value
    if kind is dict:
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, Mapping):
        return {redact(k, secrets): redact(v, secrets) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        items = [redact(v, secrets) for v in value]
        return items if isinstance(value, list) else type(value)(items)
    return value


def mentions(value: Any, secrets: Sequence[str]) -> bool:
    """Whether any secret occurs in ``value`` (what ``redact`` reads), building nothing:
    natively for plain values (``_core.mentions``), else by walking it here."""
    if not secrets:
        return False
    found = native_mentions(value, secrets)
    return found if found is not None else _walk(value, secrets)


def _walk(value: Any, secrets: Sequence[str]) -> bool:
    kind = type(value)
    if kind is str:
        for secret in secrets:
            if secret in value:
                return True
        return False
    if kind in _SCALARS:
        return False
    if kind is dict or (kind is not list and isinstance(value, Mapping)):
        for key, item in value.items():
            if _walk(key, secrets) or _walk(item, secrets):
                return True
        return False
    if kind is list or isinstance(value, tuple):  # a report's NamedTuples too
        for item in value:
            if _walk(item, secrets):
                return True
        return False
    return isinstance(value, str) and _walk(str(value), secrets)


def _echoed(report: StreamReport, secrets: tuple[str, ...]) -> bool:
    """Whether a secret occurs in what ``redact_report`` redacts (and nowhere else is read):
    one walk over all of it."""
    # The named tuples themselves: their other fields are numbers and this package's own
    # words (a usage's source, an attempt's source), which hold no secret.
    parts = (
        report.response_id,
        report.model,
        report.finish_reason,
        report.incomplete_reason,
        report.error,
        report.warnings,
        report.attempts,
        report.output,
        report.usage,
        report.step_usages,
    )
    return mentions(parts, secrets)


def redact_report(report: StreamReport, secrets: tuple[str, ...]) -> StreamReport:
    """The report with the request's credentials (``request_secrets``) replaced wherever the
    server, a proxy or an error message could have echoed them: error, warnings, attempt
    reasons, the provider's strings, usage objects and notes, and the reassembled output."""
    if not secrets or not _echoed(report, secrets):
        # The common case: nothing echoed, nothing rebuilt.
        return report

    def text(value: str | None) -> str | None:
        return None if value is None else redact(value, secrets)

    def usage(u: Usage | None) -> Usage | None:
        if u is None:
            return None
        return u.replace(raw=redact(dict(u.raw), secrets), note=text(u.note))

    return report.replace(
        usage=usage(report.usage),
        response_id=text(report.response_id),
        model=text(report.model),
        finish_reason=text(report.finish_reason),
        incomplete_reason=text(report.incomplete_reason),
        error=redact(report.error, secrets),
        warnings=tuple(redact(w, secrets) for w in report.warnings),
        step_usages=tuple(usage(u) for u in report.step_usages),
        attempts=tuple(Attempt(a.source, a.ok, redact(a.reason, secrets)) for a in report.attempts),
        output=None if report.output is None else redact(report.output, secrets),
    )
