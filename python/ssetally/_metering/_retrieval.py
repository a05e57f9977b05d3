"""The retrieval fallback: read a Responses stream's usage with ``GET /responses/{id}``.

A Responses stream that ended without its terminal event (cut, truncated, the client stopped
reading) may still have its usage server-side when it was created with ``store=true``. The
sync and async functions share one policy; only the waiting and the HTTP call differ. The
answer is read raw and decoded with a bound (``MAX_JSON_BODY``), never whole.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

from .._report import StreamReport
from .._tap import UsageTap
from ._decode import MAX_JSON_BODY, Body, aread_response, read_response
from ._redact import redact, secrets_of

#: Request headers that carry credentials or routing and must go with the retrieval.
_FORWARDED_HEADERS = (
    "authorization",
    "api-key",
    "openai-organization",
    "openai-project",
    "x-api-key",
    "user-agent",
)
_PENDING = ("queued", "in_progress")


@dataclass(frozen=True)
class RetrievalPolicy:
    """How hard to try: total deadline in seconds, first poll delay, backoff factor,
    the longest backoff wait, and how many 5xx answers in a row to accept.

    A ``Retry-After`` sent with a 429 is honoured as given, even beyond ``max_delay``, as long
    as it ends within the deadline (asking earlier would only be refused again)."""

    deadline: float = 30.0
    first_delay: float = 0.25
    backoff: float = 2.0
    max_delay: float = 5.0
    max_server_errors: int = 3


@dataclass(frozen=True)
class RetrievalResult:
    """The terminal response's report, or why none could be had."""

    report: StreamReport | None
    reason: str


#: What a response id may look like: it names one path segment, never ``.``, ``..`` or a path.
_RESPONSE_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,255}")


def valid_response_id(response_id: str | None) -> bool:
    """True for an id that can be read back (``resp_...``); ids from the network are checked
    before a request carrying credentials is built from them."""
    return response_id is not None and _RESPONSE_ID.fullmatch(response_id) is not None


def retrieval_url(request_url: str, response_id: str) -> str:
    """``{base}/responses/{id}?{query}`` for a request that went to ``{base}/responses?{query}``
    (the query is kept: Azure routes by ``api-version``). The id comes from the stream, so it
    is percent-encoded: it can only name ``/responses/{id}``, never another path (``../``), a
    query or a fragment."""
    base, sep, query = request_url.partition("?")
    base = base.rstrip("/").removesuffix("/responses")
    query = query.partition("#")[0]
    return f"{base}/responses/{quote(response_id, safe='')}" + (sep + query if query else "")


def retrieval_headers(request_headers: Mapping[str, str]) -> dict[str, str]:
    """The credentials and routing headers of the original request."""
    return {k: v for k, v in request_headers.items() if k.lower() in _FORWARDED_HEADERS}


def retrieval_request(request: Any, response_id: str) -> tuple[str, dict[str, str]]:
    """The URL and headers of the ``GET`` that reads back response ``response_id`` stored by
    ``request`` (an httpx/httpx2 request, or anything with ``url`` and ``headers``)."""
    return retrieval_url(str(request.url), response_id), retrieval_headers(request.headers)


def _report_of(response_object: Mapping[str, Any]) -> StreamReport:
    """Normalise a Response object with the same native code that reads streams."""
    event = {"type": "response.completed", "response": response_object}
    tap = UsageTap("responses")
    tap.feed(b"data: " + json.dumps(event).encode() + b"\n\n")
    return tap.finish()


class _Attempts:
    """The retry policy as a state machine: given each HTTP answer, say what to do next."""

    def __init__(self, policy: RetrievalPolicy, secrets: Sequence[str] = ()) -> None:
        self.policy = policy
        self.secrets = secrets
        self.started = time.monotonic()
        self.delay = policy.first_delay
        self.server_errors = 0

    def answer(
        self, status: int, body: bytes, headers: Mapping[str, str]
    ) -> RetrievalResult | float:
        """A final result, or the seconds to wait before asking again."""
        if status == 200:
            try:
                obj = json.loads(body)
            except ValueError:
                return RetrievalResult(None, "retrieval returned a body that is not JSON")
            if not isinstance(obj, dict):
                return RetrievalResult(None, "retrieval returned JSON that is not a response")
            if obj.get("status") in _PENDING:
                return self._wait(f"response still {obj.get('status')}")
            report = _report_of(obj)
            if report.usage is None:
                return RetrievalResult(report, "retrieved response carries no usage")
            return RetrievalResult(report, "ok")
        if status == 404:
            return RetrievalResult(
                None, "retrieval got 404: the response was not stored (store=false?)"
            )
        if 300 <= status < 400:
            # The credentials were sent to this origin only: a redirect is never followed.
            return RetrievalResult(None, f"retrieval was redirected (HTTP {status}); not followed")
        if status == 429:
            return self._wait("rate limited (429)", _retry_after(headers))
        if status >= 500:
            self.server_errors += 1
            if self.server_errors >= self.policy.max_server_errors:
                return RetrievalResult(
                    None, f"retrieval failed: {self.server_errors} server errors, last {status}"
                )
            return self._wait(f"server error {status}")
        # Redacted before it is cut: a cut could keep the head of a credential.
        excerpt = redact(body.decode("utf-8", "replace"), self.secrets)[:200]
        return RetrievalResult(None, f"retrieval failed with HTTP {status}: {excerpt!r}")

    def failure(self, exc: BaseException) -> RetrievalResult | float:
        self.server_errors += 1
        if self.server_errors >= self.policy.max_server_errors:
            why = redact(f"{type(exc).__name__}: {exc}", self.secrets)
            return RetrievalResult(None, f"retrieval failed: {why}")
        return self._wait(type(exc).__name__)

    def _wait(self, why: str, hint: float | None = None) -> RetrievalResult | float:
        delay = min(self.delay, self.policy.max_delay) if hint is None else hint
        self.delay = min(self.delay * self.policy.backoff, self.policy.max_delay)
        if time.monotonic() - self.started + delay > self.policy.deadline:
            return RetrievalResult(
                None, f"retrieval deadline of {self.policy.deadline}s passed ({why})"
            )
        return delay


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return max(0.0, float(headers.get("retry-after", "")))
    except ValueError:
        return None


def _answer_of(
    attempts: _Attempts, status: int, body: Body, headers: Any
) -> RetrievalResult | float:
    if body.truncated is not None and status == 200:
        return RetrievalResult(
            None, f"retrieval body not read whole ({MAX_JSON_BODY} bytes at most): {body.truncated}"
        )
    return attempts.answer(status, body.content, headers)


def _fetched(response: Any) -> Body:
    """What a getter's ``get`` answered (it read the body with the bound itself)."""
    return Body(response.content, getattr(response, "truncated", None))


def _get(client: Any, url: str, headers: Mapping[str, str], timeout: float) -> Any:
    """One GET; the body read raw and decoded with a bound when the client can stream (an
    httpx/httpx2 client), else as the getter (transport, aiohttp) read it."""
    if not hasattr(client, "stream"):
        response = client.get(url, headers=dict(headers), timeout=timeout, follow_redirects=False)
        return response.status_code, _fetched(response), response.headers
    with client.stream(
        "GET", url, headers=dict(headers), timeout=timeout, follow_redirects=False
    ) as response:
        return response.status_code, read_response(response, MAX_JSON_BODY), response.headers


async def _aget(client: Any, url: str, headers: Mapping[str, str], timeout: float) -> Any:
    """Async twin of ``_get``."""
    if not hasattr(client, "stream"):
        response = await client.get(
            url, headers=dict(headers), timeout=timeout, follow_redirects=False
        )
        return response.status_code, _fetched(response), response.headers
    async with client.stream(
        "GET", url, headers=dict(headers), timeout=timeout, follow_redirects=False
    ) as response:
        body = await aread_response(response, MAX_JSON_BODY)
        return response.status_code, body, response.headers


def retrieve(
    client: Any, url: str, headers: Mapping[str, str], policy: RetrievalPolicy
) -> RetrievalResult:
    """Fetch the stored response with a sync httpx/httpx2 client; never raises."""
    attempts = _Attempts(policy, secrets_of(headers, url))
    while True:
        try:
            status, body, got = _get(client, url, headers, policy.max_delay * 2)
            step = _answer_of(attempts, status, body, got)
        except Exception as exc:  # noqa: BLE001 - a fallback reports, it never raises
            step = attempts.failure(exc)
        if isinstance(step, RetrievalResult):
            return step
        time.sleep(step)


async def aretrieve(
    client: Any, url: str, headers: Mapping[str, str], policy: RetrievalPolicy
) -> RetrievalResult:
    """Async twin of ``retrieve``."""
    attempts = _Attempts(policy, secrets_of(headers, url))
    while True:
        try:
            status, body, got = await _aget(client, url, headers, policy.max_delay * 2)
            step = _answer_of(attempts, status, body, got)
        except Exception as exc:  # noqa: BLE001 - a fallback reports, it never raises
            step = attempts.failure(exc)
        if isinstance(step, RetrievalResult):
            return step
        await asyncio.sleep(step)
