"""Credentials echoed anywhere in a report are redacted, and a report that echoes none comes
back as the very same object (nothing rebuilt)."""

from __future__ import annotations

from typing import Any

import pytest
from ssetally import Attempt, StreamReport, Usage
from ssetally._core import mentions as native_mentions
from ssetally._metering._redact import REDACTED, _walk, mentions, redact_report

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


class _Text(str):
    pass


class _Mapping(dict):  # type: ignore[type-arg]
    pass


#: Values of every kind the walk meets, each holding the secret or not.
VALUES: list[Any] = [
    None,
    1,
    2.5,
    True,
    "",
    "plain",
    SECRET,
    f"x{SECRET}y",
    "\u00e9\u65e5" + SECRET,
    [1, [2, [3, SECRET]]],
    (None, "a"),
    {"k": SECRET},
    {SECRET: 1},
    {"k": {"j": ("a", "b")}},
    Attempt("stream", True, SECRET),
    _usage(raw={"a": [1, {"b": SECRET}]}),
    _Text(SECRET),
    _Text("no"),
    _Mapping(k=SECRET),
    _Mapping(k="no"),
    "\ud800" + SECRET,
    "\ud800",
    object(),
    10**30,
    float("nan"),
    [[[[[[[[[[[[[[SECRET]]]]]]]]]]]]]],
]


@pytest.mark.parametrize("value", VALUES, ids=range(len(VALUES)))
@pytest.mark.parametrize("secrets", [(SECRET,), (OTHER, SECRET), (OTHER,), ("",)])
def test_the_native_walk_finds_what_the_python_walk_finds(
    value: Any, secrets: tuple[str, ...]
) -> None:
    """``_core.mentions`` reads plain values and hands the rest back (None); either way
    ``mentions`` answers as the Python walk does."""
    expected = _walk(value, secrets)
    native = native_mentions(value, secrets)
    assert native in (expected, None)
    assert mentions(value, secrets) is expected
    assert mentions([value, "tail"], secrets) is (expected or any(s in "tail" for s in secrets))
    deep: Any = value
    for _ in range(70):  # past the native depth: the Python walk takes over
        deep = [deep]
    assert mentions(deep, secrets) is expected
