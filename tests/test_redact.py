"""Credentials echoed anywhere in a report are redacted, and a report that echoes none comes
back as the very same object (nothing rebuilt)."""

from __future__ import annotations

from typing import Any

import pytest
from ssetally import Attempt, StreamReport, Usage
from ssetally._metering._redact import REDACTED, redact_report

SECRET = "sk-live-0123456789abcdef"
OTHER = "Bearer-token-xyz-98765"


def _text(value: Any) -> str:
    """Every string in ``value`` (NamedTuples, mappings, sequences), joined."""
    if isinstance(value, str):
        return value
    if isinstance(value, dict) or hasattr(value, "items"):
        return " ".join(_text(k) + " " + _text(v) for k, v in value.items())
    if isinstance(value, (list, tuple)):
        return " ".join(_text(v) for v in value)
    return ""


def _usage(**fields: Any) -> Usage:
    return Usage(input_tokens=3, output_tokens=2, total_tokens=5, **fields)


#: Every place a server, a proxy or an error can echo a credential, each given the text.
PLACES = {
    "response_id": lambda t: StreamReport(response_id=f"resp_{t}"),
    "model": lambda t: StreamReport(model=t),
    "finish_reason": lambda t: StreamReport(finish_reason=f"stop {t}"),
    "incomplete_reason": lambda t: StreamReport(incomplete_reason=t),
    "error": lambda t: StreamReport(error={"message": f"bad key {t}", "nested": [{"k": t}]}),
    "error text": lambda t: StreamReport(error=f"Unauthorized: {t}"),
    "error key": lambda t: StreamReport(error={t: 1}),
    "warnings": lambda t: StreamReport(warnings=("fine", f"echo {t}")),
    "usage raw": lambda t: StreamReport(usage=_usage(raw={"user": t})),
    "usage note": lambda t: StreamReport(usage=_usage(note=f"from {t}")),
    "step usages": lambda t: StreamReport(step_usages=(_usage(), _usage(raw={"x": [t]}))),
    "attempts": lambda t: StreamReport(attempts=(Attempt("retrieval", False, f"GET {t} 401"),)),
    "output": lambda t: StreamReport(output={"choices": [{"index": 0, "text": f"it is {t}"}]}),
}


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_secret_echoed_anywhere_is_redacted(place: str) -> None:
    report = PLACES[place](SECRET)
    redacted = redact_report(report, (OTHER, SECRET))
    assert SECRET in _text(report)
    assert SECRET not in _text(redacted)
    assert REDACTED in _text(redacted)
    # Nothing else changed: the same report with the placeholder where the secret was.
    assert redacted == redact_report(PLACES[place](REDACTED), (OTHER, SECRET))


@pytest.mark.parametrize("place", sorted(PLACES))
def test_a_report_that_echoes_nothing_is_returned_as_it_is(place: str) -> None:
    report = PLACES[place]("harmless text")
    assert redact_report(report, (OTHER, SECRET)) is report
    assert redact_report(report, ()) is report
