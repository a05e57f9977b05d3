"""``compact_json``, the native JSON text of the records the sinks write: exactly the text of
Python's encoder (``ensure_ascii=False``, compact, NaN refused, the three line breaks of
``str.splitlines`` that JSON leaves raw escaped), or None where that encoder must decide."""

from __future__ import annotations

import enum
import json
import math
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from ssetally._core import compact_json
from ssetally.sinks._jsonl import _LINE_BREAKS

_TEXT = json.JSONEncoder(ensure_ascii=False, separators=(",", ":"), allow_nan=False)


def python_text(value: object) -> str:
    return _TEXT.encode(value).translate(_LINE_BREAKS)


# Every kind of character that an encoder treats apart: controls, quote, backslash, DEL,
# the line breaks, their neighbours, the BMP's top, astral characters.
_SPECIAL = '\x00\x01\x08\x09\x0a\x0c\x0d\x1f "\\/\x7f\x80\x84\x85\x86\u2027\u2028\u2029\u202a\ufeff\uffff\U0001f600'
texts = st.text(
    alphabet=st.one_of(st.sampled_from(_SPECIAL), st.characters(exclude_categories=("Cs",)))
)
floats = st.one_of(
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(
        [0.0, -0.0, 1e-5, 1e-4, 9.999e-5, 1e15, 1e16, 1e17, 5e-324, sys.float_info.max]
    ),
)
ints = st.one_of(st.integers(-(2**63), 2**63 - 1), st.sampled_from([-(2**63), 2**63 - 1, 0]))
scalars = st.one_of(st.none(), st.booleans(), ints, floats, texts)
values = st.recursive(
    scalars,
    lambda inner: st.one_of(st.lists(inner, max_size=5), st.dictionaries(texts, inner, max_size=5)),
    max_leaves=30,
)


@settings(max_examples=300, deadline=None)
@given(value=values)
def test_the_text_of_pythons_encoder(value: object) -> None:
    text = compact_json(value)
    assert text == python_text(value)
    assert json.loads(text) == value
    assert len(text.splitlines()) == 1  # one record, one line


@settings(max_examples=200, deadline=None)
@given(value=floats)
def test_floats_as_repr(value: float) -> None:
    assert compact_json([value]) == f"[{value!r}]"
    assert float(json.loads(compact_json([value]))[0]) == value  # type: ignore[arg-type]


def test_a_usage_record() -> None:
    record = {
        "time": "2026-12-03T13:17:06.386Z",
        "usage": {"input_tokens": 32, "output_tokens": 8, "cached_input_tokens": None},
        "timings": {"ttft": 0.0008313879999946039, "duration": 1.996899993628176e-05},
        "stream": True,
        "warnings": ["mod\u00e8le — “quoted”\n"],
        "choices": [],
    }
    assert compact_json(record) == python_text(record)


class _Color(enum.IntEnum):
    RED = 1


class _Text(str):
    pass


@pytest.mark.parametrize(
    "value",
    [
        "\ud800",  # a lone surrogate: not UTF-8
        {"\udfff": 1},
        2**63,
        -(2**63) - 1,
        math.nan,
        math.inf,
        -math.inf,
        (1, 2),
        {1: "int key"},
        _Color.RED,
        _Text("a str subclass"),
        1.5j,
        b"bytes",
        {"nested": [{"deep": object()}]},
    ],
)
def test_left_to_the_python_encoder(value: object) -> None:
    assert compact_json(value) is None


def test_nesting_beyond_64_is_left_to_the_python_encoder() -> None:
    value: object = 1
    for _ in range(64):
        value = [value]
    assert compact_json(value) == "[" * 64 + "1" + "]" * 64
    assert compact_json([value]) is None


def test_the_jsonl_sink_writes_the_same_lines(tmp_path: object) -> None:
    from pathlib import Path

    from ssetally.sinks import JsonlSink

    path = Path(str(tmp_path)) / "usage.jsonl"
    records = [
        {"record_id": "a", "text": "x\u2028y", "n": 2**62, "f": 1e-7},
        {"record_id": "b", "big": 2**70},  # sanitised to None, then written natively
        {"record_id": "c", "nan": math.nan},
    ]
    sink = JsonlSink(str(path))
    for record in records:
        assert sink.write(record)
    sink.close()
    lines = path.read_text(encoding="utf-8").splitlines()
    assert len(lines) == 3
    first = json.loads(lines[0])
    assert first["text"] == "x\u2028y" and first["n"] == 2**62 and first["f"] == 1e-7
    assert json.loads(lines[1])["big"] is None
    assert json.loads(lines[2])["nan"] is None
