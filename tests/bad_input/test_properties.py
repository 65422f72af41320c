"""Property tests: any JSON-able field value round-trips exactly, or is refused clearly.

What the payload codec supports, and so what these tests generate: ``None``, ``bool``,
``int`` from -2**63 to 2**64 - 1, finite ``float`` (including -0.0 and subnormals), ``str``
without lone surrogates, and lists and ``str``-keyed dicts of those, nested up to 126
levels inside a field. Anything else (a bigger int, NaN or infinity, a lone surrogate,
deeper nesting) is refused by ``queue()`` with ``SerializationError`` and nothing is stored.
Round-trip means equal *and* of the same types all the way down (``1``, ``1.0`` and
``True`` are equal in Python but not the same value), floats bit for bit.
"""

from __future__ import annotations

import math
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hauler import Job, SerializationError, create_server
from hauler.storage import Storage

I64_MIN = -(2**63)
U64_MAX = 2**64 - 1
#: Levels of lists/dicts a field value may nest (the payload's own dict is one more).
MAX_FIELD_DEPTH = 126


class Holder(Job[None]):
    NAME = "holder"
    value: Any = None

    def run(self, state: None) -> None:
        pass


class Echo(Job[dict[str, Any]]):
    """Puts the value it was given into the shared state, under its key."""

    NAME = "echo"
    key: str
    value: Any = None

    def run(self, state: dict[str, Any]) -> None:
        state[self.key] = self.value


leaves = (
    st.none()
    | st.booleans()
    | st.integers(min_value=I64_MIN, max_value=U64_MAX)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text()
)
json_values = st.recursive(
    leaves,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4)
    ),
    max_leaves=20,
)


def same(a: object, b: object) -> bool:
    """Equal and of the same types all the way down; floats compared bit for bit."""
    if type(a) is not type(b):
        return False
    if isinstance(a, float):
        assert isinstance(b, float)
        return struct.pack("<d", a) == struct.pack("<d", b)
    if isinstance(a, list):
        assert isinstance(b, list)
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if isinstance(a, dict):
        assert isinstance(b, dict)
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    return a == b


def nested(depth: int) -> Any:
    value: Any = 0
    for _ in range(depth):
        value = [value]
    return value


def with_one(bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Values holding ``bad`` somewhere: alone, or inside lists and dicts."""
    return st.recursive(
        bad,
        lambda inner: (
            st.tuples(st.lists(json_values, max_size=2), inner).map(lambda t: [*t[0], t[1]])
            | st.tuples(st.text(max_size=4), inner).map(lambda t: {t[0]: t[1]})
        ),
        max_leaves=4,
    )


unsupported = (
    st.integers(max_value=I64_MIN - 1)
    | st.integers(min_value=U64_MAX + 1)
    | st.sampled_from([math.nan, math.inf, -math.inf])
    | st.text(alphabet=st.characters(categories=["Cs"]), min_size=1)
)


@given(value=with_one(unsupported))
def test_unsupported_values_are_refused_and_nothing_stored(storage: Storage, value: Any) -> None:
    handle = create_server(storage)
    before = handle.counts()
    with pytest.raises(SerializationError) as raised:
        handle.queue(Holder(value))
    assert "value" in str(raised.value)  # the field is named
    assert handle.counts() == before


@given(key=st.text(alphabet=st.characters(categories=["Cs"]), min_size=1))
def test_surrogate_dict_keys_are_refused(storage: Storage, key: str) -> None:
    handle = create_server(storage)
    with pytest.raises(SerializationError, match="surrogates not allowed"):
        handle.queue(Holder({"ok": 1, key: 2}))
    assert handle.counts() == {}


def test_nesting_up_to_the_limit_round_trips(storage: Storage) -> None:
    handle = create_server(storage)
    for depth in (MAX_FIELD_DEPTH - 1, MAX_FIELD_DEPTH):
        value = nested(depth)
        assert same(handle.get(handle.queue(Holder(value))).args["value"], value)
    deep_dict: Any = 0
    for _ in range(MAX_FIELD_DEPTH):
        deep_dict = {"k": deep_dict}
    assert same(handle.get(handle.queue(Holder(deep_dict))).args["value"], deep_dict)


@pytest.mark.parametrize("depth", [MAX_FIELD_DEPTH + 1, 400, 5000])
def test_deeper_nesting_is_refused(storage: Storage, depth: int) -> None:
    handle = create_server(storage)
    with pytest.raises(SerializationError, match="nested too deeply"):
        handle.queue(Holder(nested(depth)))
    assert handle.counts() == {}


def test_self_containing_value_is_refused(storage: Storage) -> None:
    loop: list[Any] = []
    loop.append(loop)
    handle = create_server(storage)
    with pytest.raises(SerializationError, match="nested too deeply"):
        handle.queue(Holder(loop))
    assert handle.counts() == {}
