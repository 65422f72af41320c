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
import threading
import uuid
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import WAIT, StartWorker
from hauler import Job, JobStatus, SerializationError, WorkerConfig, create_server
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


@given(value=json_values)
def test_any_json_value_round_trips_through_storage(storage: Storage, value: Any) -> None:
    handle = create_server(storage)
    info = handle.get(handle.queue(Holder(value)))
    assert same(info.args, {"value": value}), (info.args, value)
    assert Holder._decode(info.args) == Holder(value)


@settings(max_examples=15)
@given(value=json_values)
def test_any_json_value_reaches_the_job_intact(
    storage: Storage, start_worker: StartWorker, value: Any
) -> None:
    seen: dict[str, Any] = {}
    # One worker per test, shared by its examples (started on the first one).
    worker = getattr(storage, "_echo_worker", None)
    if worker is None:
        worker = start_worker(WorkerConfig(lambda: seen).register(Echo))
        storage._echo_worker = worker  # type: ignore[attr-defined]
        storage._echo_seen = seen  # type: ignore[attr-defined]
    seen = storage._echo_seen  # type: ignore[attr-defined]
    key = uuid.uuid4().hex
    (info,) = worker.wait([worker.queue(Echo(key, value))], timeout=WAIT)
    assert info.status is JobStatus.COMPLETED, info.last_error
    assert same(seen[key], value), (seen[key], value)


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


def test_round_trip_is_thread_safe(storage: Storage) -> None:
    """Many threads queueing and reading different values at once get their own back."""
    handle = create_server(storage)
    values = [[i, str(i), {"f": i / 7}] for i in range(200)]
    ids: dict[int, uuid.UUID] = {}

    def put(lo: int) -> None:
        for i in range(lo, 200, 4):
            ids[i] = handle.queue(Holder(values[i]))

    threads = [threading.Thread(target=put, args=(lo,)) for lo in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=WAIT)
    for i, job_id in ids.items():
        assert same(handle.get(job_id).args["value"], values[i])
