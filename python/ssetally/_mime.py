"""Content-Type checks for event streams."""

from __future__ import annotations


def is_event_stream(content_type: str) -> bool:
    """True when a Content-Type header names ``text/event-stream``.

    The MIME essence is compared case-insensitively with parameters ignored, as browsers do;
    a comma-combined header is accepted when one of its parts is an event stream, as httpx-sse
    accepts it. Look-alikes such as ``text/event-streamx`` are rejected.
    """
    for part in content_type.split(","):
        if part.partition(";")[0].strip().lower() == "text/event-stream":
            return True
    return False
