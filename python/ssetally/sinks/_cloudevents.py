"""The CloudEvents sink: usage records POSTed to a collector as CloudEvents 1.0 in the
structured JSON batch format (``application/cloudevents-batch+json``).

Each record is one event whose ``id`` is the record's ``record_id``: delivery is at least once
(a batch is retried when the answer is lost) and the collector deduplicates on the id.
Connection errors, timeouts, 5xx, 408 and 429 are retried with exponential backoff and full
jitter, at least as long as ``Retry-After`` asks (capped), while the records wait in the spool;
other answers refuse the records (counted failed and logged). Redirects are not followed.
"""

from __future__ import annotations

import json
import logging
import os
import socket
import time
from datetime import timezone
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import httpx

from ._base import BatchRejected, RemoteSink, TransientError, redact_url
from ._columns import TOKEN_FIELDS, columns, parse_time
from ._spool import DEFAULT_SPOOL_BYTES, default_spool_dir

__all__ = ["DEFAULT_EVENT_TYPE", "DEFAULT_TOKEN_ENV", "CloudEventsSink", "parse_retry_after"]

logger = logging.getLogger("ssetally.sinks")

#: The ``type`` of the events.
DEFAULT_EVENT_TYPE = "ssetally.usage"
#: The environment variable holding the collector's bearer token.
DEFAULT_TOKEN_ENV = "SSETALLY_CLOUDEVENTS_TOKEN"
BATCH_CONTENT_TYPE = "application/cloudevents-batch+json"
# Answers that say "not now": the records wait in the spool and are sent again.
_RETRY_STATUS = frozenset({408, 425, 429})
# Answers that may be about one event of the batch: the events are sent one at a time.
_PER_EVENT_STATUS = frozenset({400, 413, 422})


class _EventRefused(Exception):
    """The collector refused a batch in a way one of its events may be the cause of."""


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a ``Retry-After`` header (delay seconds or an HTTP-date)."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return max(0.0, when.timestamp() - (time.time() if now is None else now))


class CloudEventsSink(RemoteSink):
    """Batches of CloudEvents POSTed to ``url`` (``cloudevents+https://host/path``, or
    ``cloudevents+http://`` for a collector on a trusted network).

    ``event_type`` and ``source`` name the events (default ``ssetally.usage`` and
    ``ssetally-proxy/<instance_id>`` from each record). ``subject`` is the record's
    ``subject`` when present, else its key fingerprint. The bearer token is read from the
    environment variable ``token_env`` at every request (so it can rotate) and never logged.
    """

    kind = "cloudevents"

    def __init__(
        self,
        url: str,
        *,
        event_type: str = DEFAULT_EVENT_TYPE,
        source: str | None = None,
        instance_id: str | None = None,
        token_env: str = DEFAULT_TOKEN_ENV,
        timeout: float = 10.0,
        trust_env: bool = True,
        spool_dir: str | None = None,
        spool_max_bytes: int = DEFAULT_SPOOL_BYTES,
        **options: Any,
    ) -> None:
        url = url.removeprefix("cloudevents+")
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ValueError(
                "a CloudEvents sink URL is cloudevents+https://host/path (or cloudevents+http://)"
            )
        if not event_type:
            raise ValueError("the CloudEvents type must not be empty")
        self.url = url
        self.event_type = event_type
        self.source = source
        self.instance_id = instance_id or socket.gethostname() or "unknown"
        self.token_env = token_env
        if parts.password:
            self._secrets = (parts.password,)
        self._client = httpx.Client(
            timeout=httpx.Timeout(timeout, connect=min(timeout, 5.0)),
            follow_redirects=False,
            trust_env=trust_env,
        )
        redacted = redact_url(urlunsplit(parts._replace(query="", fragment="")))
        super().__init__(
            redacted,
            spool_dir=spool_dir or default_spool_dir(self.kind, redacted),
            spool_max_bytes=spool_max_bytes,
            **options,
        )

    # -- events

    def event(self, record: dict[str, Any]) -> dict[str, Any]:
        """The CloudEvent of a sanitised record."""
        c = columns(record)
        instance = c["instance_id"] or self.instance_id
        event: dict[str, Any] = {
            "specversion": "1.0",
            "id": c["record_id"],
            "source": self.source or f"ssetally-proxy/{quote(instance, safe='-._~')}",
            "type": self.event_type,
            "datacontenttype": "application/json",
        }
        subject = c["subject"] or c["key_fingerprint"]
        if subject:
            event["subject"] = subject
        when = parse_time(record.get("time"))
        if when is not None:
            event["time"] = when.astimezone(timezone.utc).isoformat().replace("+00:00", "Z")
        data: dict[str, Any] = {
            "request_id": c["request_id"],
            "instance_id": c["instance_id"],
            "key_fingerprint": c["key_fingerprint"],
            "model": c["model"],
            "requested_model": c["requested_model"],
            "provider": c["provider"],
            "api": c["api"],
            "stream": c["stream"],
            "status": c["status"],
            "http_status": c["http_status"],
            "tokens": {kind: c[field] for kind, field in TOKEN_FIELDS},
            "usage_source": c["usage_source"],
            "duration_s": c["duration_s"],
        }
        if "cost" in record:
            data["cost"] = record["cost"]
        if record.get("sanitized"):
            data["sanitized"] = record["sanitized"]
        event["data"] = data
        return event

    # -- writing

    def _write_batch(self, records: list[dict[str, Any]]) -> None:
        body = json.dumps(
            [self.event(r) for r in records],
            ensure_ascii=False,
            separators=(",", ":"),
            allow_nan=False,
        ).encode("utf-8")
        headers = {"Content-Type": BATCH_CONTENT_TYPE}
        token = os.environ.get(self.token_env)
        if token:
            headers["Authorization"] = f"Bearer {token}"
            if token not in self._secrets:
                self._secrets = (*self._secrets, token)
        try:
            response = self._client.post(self.url, content=body, headers=headers)
        except httpx.TransportError as exc:
            raise TransientError(f"{type(exc).__name__}: {exc}") from exc
        status = response.status_code
        if 200 <= status < 300:
            return
        text = response.text[:200].strip().replace("\n", " ")
        message = f"HTTP {status}{': ' + text if text else ''}"
        if status in _RETRY_STATUS or status >= 500:
            raise TransientError(message, parse_retry_after(response.headers.get("retry-after")))
        if status in _PER_EVENT_STATUS:
            raise _EventRefused(message)
        # Redirects (not followed), bad credentials, no such collector: no event can pass.
        if 300 <= status < 400:
            message += f" (redirect to {response.headers.get('location')!r} not followed)"
        raise BatchRejected(message)

    def _close_destination(self) -> None:
        self._client.close()
