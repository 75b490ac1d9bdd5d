"""cntr.cjson gives what json gives, for every value JSON can hold."""

from __future__ import annotations

import json
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cntr import cjson

VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(),
    lambda inner: st.lists(inner) | st.dictionaries(st.text(), inner),
    max_leaves=30,
)


@given(VALUES, st.booleans(), st.booleans())
def test_dumps_is_json_dumps(value: object, compact: bool, ensure_ascii: bool) -> None:
    separators = (",", ":") if compact else None
    assert cjson.dumps(value, compact=compact, ensure_ascii=ensure_ascii) == json.dumps(
        value, separators=separators, ensure_ascii=ensure_ascii)


@given(VALUES, st.sampled_from(["", " ", "\n\t ", "\r\n"]))
def test_loads_is_json_loads(value: object, space: str) -> None:
    text = space + json.dumps(value) + space
    # repr: NaN is not equal to itself
    assert repr(cjson.loads(text)) == repr(json.loads(text))
    assert repr(cjson.loads(text.encode())) == repr(json.loads(text.encode()))


def test_loads_takes_a_byte_order_mark_and_the_constants() -> None:
    assert cjson.loads(b'\xef\xbb\xbf{"a": [1, 2.5, null, true]}') == {"a": [1, 2.5, None, True]}
    value = cjson.loads("[NaN, Infinity, -Infinity]")
    assert math.isnan(value[0]) and value[1:] == [math.inf, -math.inf]


@pytest.mark.parametrize(("text", "message"), [
    ("", "Expecting value: char 0"),
    ("  ", "Expecting value: char 2"),
    ("1 2", "Extra data: char 2"),
    ('{"a": }', "Expecting value: char 6"),
    ("[1", "Expecting ',' delimiter: line 1 column 3 (char 2)"),
    (b"\xff", "'utf-8' codec can't decode byte 0xff in position 0: invalid start byte"),
])
def test_loads_refuses_what_is_not_json(text: str | bytes, message: str) -> None:
    with pytest.raises(ValueError) as exc:
        cjson.loads(text)
    assert str(exc.value) == message
    with pytest.raises(ValueError):
        json.loads(text)


def test_dumps_refuses_what_json_refuses() -> None:
    with pytest.raises(TypeError) as exc:
        cjson.dumps({"a": {1, 2}})
    assert str(exc.value) == "Object of type set is not JSON serializable"
    loop: list[object] = []
    loop.append(loop)
    with pytest.raises(ValueError) as circular:
        cjson.dumps(loop)
    assert str(circular.value) == "Circular reference detected"
    assert cjson.dumps([1]) == "[1]"  # a failed encoding leaves nothing behind
