import copy
import math
import pickle
import re

import pytest

from hauler import _native
from hauler.errors import ConfigError
from hauler.retry import Backoff, MaxRetries, _native_retry


class TestMaxRetries:
    def test_count_and_infinite(self) -> None:
        assert MaxRetries.count(3).count_value == 3
        assert not MaxRetries.count(3).is_infinite
        assert MaxRetries.count(0).count_value == 0
        assert MaxRetries.infinite().count_value is None
        assert MaxRetries.infinite().is_infinite

    def test_equality_hash_repr(self) -> None:
        assert MaxRetries.count(2) == MaxRetries.count(2)
        assert MaxRetries.count(2) != MaxRetries.count(3)
        assert MaxRetries.count(2) != MaxRetries.infinite()
        assert MaxRetries.infinite() == MaxRetries.infinite()
        assert len({MaxRetries.count(1), MaxRetries.count(1), MaxRetries.infinite()}) == 2
        assert repr(MaxRetries.count(4)) == "MaxRetries.count(4)"
        assert repr(MaxRetries.infinite()) == "MaxRetries.infinite()"

    def test_immutable_and_copyable(self) -> None:
        m = MaxRetries.count(3)
        with pytest.raises(AttributeError):
            m.count_value = 4  # type: ignore[misc]
        assert copy.deepcopy(m) == m
        assert pickle.loads(pickle.dumps(m)) == m

    @pytest.mark.parametrize("bad", [-1, 2**32, True, False, 1.0, "3", None])
    def test_count_rejects(self, bad: object) -> None:
        with pytest.raises(ConfigError, match=re.escape(repr(bad))):
            MaxRetries.count(bad)  # type: ignore[arg-type]

    def test_count_bounds_accepted(self) -> None:
        assert MaxRetries.count(2**32 - 1).count_value == 2**32 - 1


class TestBackoffFormulas:
    def test_fixed(self) -> None:
        b = Backoff.fixed(7)
        assert [b.delay(k) for k in (1, 2, 5, 100)] == [7.0, 7.0, 7.0, 7.0]

    def test_linear(self) -> None:
        b = Backoff.linear(3)
        assert [b.delay(k) for k in (1, 2, 4)] == [3.0, 6.0, 12.0]

    def test_exponential(self) -> None:
        b = Backoff.exponential(2)
        assert [b.delay(k) for k in (1, 2, 10)] == [2.0, 4.0, 1024.0]
        assert Backoff.exponential(1).delay(50) == 1.0
        assert Backoff.exponential(1.5).delay(2) == 2.25

    def test_retry_number_below_one_counts_as_one(self) -> None:
        assert Backoff.linear(3).delay(0) == 3.0
        assert Backoff.exponential(2).delay(-5) == 2.0

    def test_zero_delay_allowed(self) -> None:
        assert Backoff.fixed(0).delay(3) == 0.0
        assert Backoff.linear(0).delay(3) == 0.0


class TestBackoffCap:
    def test_default_cap_is_one_day(self) -> None:
        assert Backoff.exponential(2).max_delay == 86400.0
        assert Backoff.exponential(2).delay(30) == 86400.0

    def test_cap_applies_before_jitter(self) -> None:
        b = Backoff.exponential(10, max_delay=60)
        assert b.delay(1) == 10.0
        assert b.delay(5) == 60.0
        j = Backoff.exponential(10, max_delay=60, jitter=0.5)
        assert j.delay(5, unit=0.0) == 30.0
        assert j.delay(5, unit=1.0) == 90.0

    def test_huge_retry_numbers_do_not_overflow(self) -> None:
        assert Backoff.exponential(10, max_delay=60).delay(100_000) == 60.0
        assert Backoff.linear(1e300, max_delay=5).delay(10**6) == 5.0

    def test_zero_cap(self) -> None:
        assert Backoff.fixed(10, max_delay=0).delay(1) == 0.0


class TestBackoffJitter:
    def test_unit_maps_to_the_spread(self) -> None:
        b = Backoff.fixed(10, jitter=0.2)
        assert b.delay(1, unit=0.0) == pytest.approx(8.0)
        assert b.delay(1, unit=0.5) == 10.0
        assert b.delay(1, unit=1.0) == pytest.approx(12.0)
        assert b.delay(1, unit=0.25) == pytest.approx(9.0)

    @pytest.mark.parametrize("jitter", [0.0, 0.1, 0.5, 1.0])
    @pytest.mark.parametrize("unit", [i / 20 for i in range(21)])
    def test_bounds(self, jitter: float, unit: float) -> None:
        b = Backoff.linear(4, jitter=jitter)
        d = b.delay(3, unit=unit)
        base = 12.0
        assert base * (1 - jitter) - 1e-9 <= d <= base * (1 + jitter) + 1e-9
        assert d == pytest.approx(base * (1 + jitter * (2 * unit - 1)))

    def test_unit_is_clamped(self) -> None:
        b = Backoff.fixed(10, jitter=1.0)
        assert b.delay(1, unit=-3.0) == 0.0
        assert b.delay(1, unit=7.0) == 20.0

    def test_no_jitter_ignores_unit(self) -> None:
        assert Backoff.fixed(10).delay(1, unit=0.0) == 10.0
        assert Backoff.fixed(10).delay(1, unit=1.0) == 10.0


class TestBackoffValidation:
    @pytest.mark.parametrize(
        ("factory", "value", "label"),
        [
            (Backoff.fixed, -1, "Backoff.fixed seconds"),
            (Backoff.fixed, math.nan, "Backoff.fixed seconds"),
            (Backoff.fixed, math.inf, "Backoff.fixed seconds"),
            (Backoff.linear, -0.5, "Backoff.linear seconds"),
            (Backoff.linear, math.inf, "Backoff.linear seconds"),
            (Backoff.exponential, 0.5, "Backoff.exponential base"),
            (Backoff.exponential, 0, "Backoff.exponential base"),
            (Backoff.exponential, -2, "Backoff.exponential base"),
            (Backoff.exponential, math.nan, "Backoff.exponential base"),
            (Backoff.exponential, math.inf, "Backoff.exponential base"),
            (Backoff.fixed, "10", "Backoff.fixed seconds"),
            (Backoff.fixed, True, "Backoff.fixed seconds"),
        ],
    )
    def test_bad_shape_value(self, factory: object, value: object, label: str) -> None:
        with pytest.raises(ConfigError, match=re.escape(label)) as info:
            factory(value)  # type: ignore[operator]
        assert repr(value) in str(info.value)

    @pytest.mark.parametrize("bad", [-1.0, math.nan, math.inf, "60", None])
    def test_bad_max_delay(self, bad: object) -> None:
        with pytest.raises(ConfigError, match="max_delay") as info:
            Backoff.fixed(1, max_delay=bad)  # type: ignore[arg-type]
        assert repr(bad) in str(info.value)

    @pytest.mark.parametrize("bad", [-0.1, 1.5, math.nan, math.inf, "0.1", True])
    def test_bad_jitter(self, bad: object) -> None:
        with pytest.raises(ConfigError, match="jitter") as info:
            Backoff.exponential(2, jitter=bad)  # type: ignore[arg-type]
        assert repr(bad) in str(info.value)

    def test_bad_kind(self) -> None:
        with pytest.raises(ConfigError, match="'random'"):
            Backoff("random", 1.0)  # type: ignore[arg-type]

    def test_boundaries_accepted(self) -> None:
        Backoff.exponential(1, max_delay=0, jitter=0)
        Backoff.fixed(0, jitter=1)


class TestBackoffValue:
    def test_equality_hash_repr(self) -> None:
        assert Backoff.fixed(1) == Backoff.fixed(1.0)
        assert Backoff.fixed(1) != Backoff.linear(1)
        assert Backoff.fixed(1) != Backoff.fixed(1, jitter=0.1)
        assert hash(Backoff.fixed(1)) == hash(Backoff.fixed(1.0))
        assert repr(Backoff.exponential(2)) == "Backoff.exponential(2.0)"
        assert (
            repr(Backoff.linear(5, max_delay=60, jitter=0.25))
            == "Backoff.linear(5.0, max_delay=60.0, jitter=0.25)"
        )

    def test_attributes_are_floats(self) -> None:
        b = Backoff.linear(5, max_delay=60, jitter=1)
        assert (b.kind, b.seconds, b.max_delay, b.jitter) == ("linear", 5.0, 60.0, 1.0)
        assert all(type(x) is float for x in (b.seconds, b.max_delay, b.jitter))

    def test_immutable_and_copyable(self) -> None:
        b = Backoff.exponential(3, jitter=0.1)
        with pytest.raises(AttributeError):
            b.jitter = 0.5  # type: ignore[misc]
        assert copy.deepcopy(b) == b
        assert pickle.loads(pickle.dumps(b)) == b


class TestNativeRetry:
    def test_shape(self) -> None:
        assert _native_retry(MaxRetries.count(3), Backoff.exponential(2)) == {
            "max_retries": 3,
            "backoff": "exponential",
            "seconds": 2.0,
            "max_delay": 86400.0,
            "jitter": 0.0,
        }
        assert _native_retry(MaxRetries.infinite(), Backoff.fixed(10, max_delay=5, jitter=0.5)) == {
            "max_retries": None,
            "backoff": "fixed",
            "seconds": 10.0,
            "max_delay": 5.0,
            "jitter": 0.5,
        }

    @pytest.mark.parametrize(
        "backoff",
        [
            Backoff.fixed(7),
            Backoff.linear(3, max_delay=10),
            Backoff.exponential(2, max_delay=300, jitter=0.3),
            Backoff.exponential(1.5, jitter=1.0),
        ],
    )
    @pytest.mark.parametrize("unit", [0.0, 0.3, 0.5, 1.0])
    def test_engine_computes_the_same_delays(self, backoff: Backoff, unit: float) -> None:
        retry = _native_retry(MaxRetries.count(3), backoff)
        _native.validate_retry(retry)
        for k in (1, 2, 3, 8, 20):
            assert _native.backoff_delay(retry, k, unit) == pytest.approx(
                backoff.delay(k, unit=unit), rel=1e-9, abs=1e-6
            )
