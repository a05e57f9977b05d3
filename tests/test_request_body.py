"""``parse_json_object``: a request body read as ``json.loads`` reads bytes (any of the
encodings JSON allows, a UTF-8 BOM, surrogates passed through), an object or None."""

from __future__ import annotations

import codecs
import json
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from ssetally._metering._request import parse_json_object

_BODIES = [
    b'{"a":1}',
    b' \n{"a": [1, 2.5, null]}',
    codecs.BOM_UTF8 + b'{"a":1}',
    '{"a":"\u00e9\U0001f600"}'.encode(),
    b'{"a":"\xed\xa0\x80"}',  # an encoded lone surrogate: json.loads passes it through
    b'{"a":"\xff"}',
    b"[1]",
    b"",
    b"{",
    b"\x00",
    b"\x00{",
]
for codec in ("utf-16", "utf-16-le", "utf-16-be", "utf-32", "utf-32-le", "utf-32-be"):
    _BODIES.append('{"model":"gpt-4o","x":"\u00e9"}'.encode(codec))


def _reference(body: bytes) -> Any:
    try:
        obj = json.loads(body)
    except (ValueError, RecursionError):
        return None
    return obj if isinstance(obj, dict) else None


@pytest.mark.parametrize("body", _BODIES)
def test_a_body_is_read_as_json_loads_reads_bytes(body: bytes) -> None:
    assert parse_json_object(body) == _reference(body)


def test_text_is_read_as_it_is() -> None:
    assert parse_json_object('{"a":"\u00e9"}') == {"a": "\u00e9"}
    assert parse_json_object("\ufeff{}") is None  # json.loads refuses a BOM in text
    assert parse_json_object("[]") is None


@given(st.binary(max_size=40) | st.text(max_size=40).map(lambda t: t.encode("utf-8")))
def test_any_bytes_read_as_json_loads_reads_them(body: bytes) -> None:
    assert parse_json_object(body) == _reference(body)


def test_the_nesting_limit_gives_none() -> None:
    deep = b'{"a":' * 100_000 + b"1" + b"}" * 100_000
    assert parse_json_object(deep) is None
    assert parse_json_object(deep.decode()) is None


_json = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(st.characters(codec=None, categories=None), max_size=12),
    lambda inner: (
        st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4)
    ),
    max_leaves=25,
)


@given(
    value=st.dictionaries(st.text(max_size=8), _json, max_size=6),
    ascii_only=st.booleans(),
    spaced=st.booleans(),
)
def test_property_a_json_object_reads_as_json_loads_reads_it(
    value: dict[str, Any], ascii_only: bool, spaced: bool
) -> None:
    """The native read (``_core.json_object``) gives what ``json.loads`` gives, or leaves the
    body to it: every float bit for bit, duplicate keys, escapes, lone surrogates, big ints."""
    from ssetally._core import json_object

    text = json.dumps(value, ensure_ascii=ascii_only, indent=1 if spaced else None)
    want = json.loads(text)
    for body in (text, text.encode("utf-8", "surrogatepass")):
        got = json_object(body)
        if got is not None:
            assert repr(got) == repr(want)
        assert repr(parse_json_object(body)) == repr(want)


def test_duplicate_keys_and_numbers_read_as_json_loads_reads_them() -> None:
    for text in (
        '{"a":1,"b":2,"a":3}',
        '{"x":[1e400,-1e400,1e-400,-0.0,-0,0.1,17976931348623157e292]}',
        '{"n":9223372036854775807,"m":-9223372036854775808,"big":9223372036854775808}',
        '{"s":"\\u00e9\\/\\ud83d\\ude00","lone":"\\udc00"}',
        '{"nan":NaN,"inf":Infinity}',
    ):
        assert repr(parse_json_object(text)) == repr(json.loads(text))
        assert repr(parse_json_object(text.encode())) == repr(json.loads(text))


def test_a_plain_body_is_read_natively_and_the_rest_left_to_json_loads() -> None:
    from ssetally._core import json_object

    assert json_object(b'{"model":"m","stream":true}') == {"model": "m", "stream": True}
    for left in (b"[1]", b'{"a":"\\ud800"}', b'{"a":99999999999999999999}', b"\xff\xfe{\x00}\x00"):
        assert json_object(left) is None
