"""Random and mutated input to every stage's decoder: a BadInput with one line, or a valid
record; never another exception, never a hang."""

from __future__ import annotations

import msgpack
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cntr import context
from cntr.context import Context, Resolved
from cntr.errors import BadInput
from tests.unit.test_records import SAMPLE_RESOLVED, sample_context

VALID = [
    context.encode(sample_context(), "msgpack"),
    context.encode(sample_context(), "json"),
    context.encode(SAMPLE_RESOLVED, "msgpack"),
    context.encode(SAMPLE_RESOLVED, "json"),
]


def _decode_all(raw: bytes) -> None:
    for decoder in (lambda r: context.decode(Context, r), lambda r: context.decode(Resolved, r),
                    context.read_any):
        try:
            decoder(raw)
        except BadInput as exc:
            assert "\n" not in str(exc)
            assert str(exc)


@settings(max_examples=400, deadline=2000, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_random_bytes(raw: bytes) -> None:
    _decode_all(raw)


@settings(max_examples=400, deadline=2000)
@given(st.sampled_from(VALID), st.data())
def test_mutated_records(raw: bytes, data: st.DataObject) -> None:
    buf = bytearray(raw)
    for _ in range(data.draw(st.integers(1, 8))):
        op = data.draw(st.sampled_from(["flip", "cut", "insert"]))
        pos = data.draw(st.integers(0, max(len(buf) - 1, 0)))
        if op == "flip" and buf:
            buf[pos] ^= data.draw(st.integers(1, 255))
        elif op == "cut":
            del buf[pos:pos + data.draw(st.integers(1, 64))]
        else:
            buf[pos:pos] = data.draw(st.binary(min_size=1, max_size=16))
    _decode_all(bytes(buf))


json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**63), 2**64 - 1) | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner,
                                                                max_size=5),
    max_leaves=30,
)


@settings(max_examples=300, deadline=2000)
@given(st.sampled_from([Context, Resolved]), st.data())
def test_wrong_types_in_valid_shape(cls: type[Context] | type[Resolved],
                                    data: st.DataObject) -> None:
    record = sample_context() if cls is Context else SAMPLE_RESOLVED
    d = context.to_dict(record)
    key = data.draw(st.sampled_from(sorted(d)))
    d[key] = data.draw(json_values)
    raw = msgpack.packb(d, use_bin_type=True)
    try:
        if cls is Context:
            context.decode(Context, raw)
        else:
            context.decode(Resolved, raw)
    except BadInput as exc:
        assert "\n" not in str(exc)


def test_deep_nesting_is_refused_not_a_crash() -> None:
    _decode_all(b"[" * 100000)
    _decode_all(b"\x91" * 100000)
