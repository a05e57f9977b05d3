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
