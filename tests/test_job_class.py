import asyncio
import dataclasses
import math
import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import pytest

from hauler import DEFAULT_QUEUE, Backoff, ConfigError, Job, MaxRetries
from hauler.job import JobSpec


@dataclass
class AppState:
    sent: list[str] = field(default_factory=list)


class SendEmail(Job[AppState]):
    NAME = "send_email"
    to: str
    subject: str = "hello"
    cc: list[str] = field(default_factory=list)

    def run(self, state: AppState) -> None:
        state.sent.append(self.to)


class Configured(Job[AppState]):
    NAME = "configured"
    QUEUE = "mail"
    MAX_RETRIES = MaxRetries.infinite()
    BACKOFF = Backoff.linear(10, max_delay=60, jitter=0.1)
    TIMEOUT = 1.5
    PRIORITY = -3
    HEARTBEAT_INTERVAL = 250
    VERSION = 4

    async def run(self, state: AppState) -> None:
        await asyncio.sleep(0)
        state.sent.append("async")


def make_job(**attrs: Any) -> type[Job[Any]]:
    """A job class built at run time, with ``attrs`` as its class attributes."""
    namespace: dict[str, Any] = {"NAME": "made", "run": lambda self, state: None}
    namespace.update(attrs)
    return type("Made", (Job,), namespace)


class TestDataclassBehaviour:
    def test_construction(self) -> None:
        a = SendEmail("ada@example.com")
        b = SendEmail(to="ada@example.com", subject="hello", cc=[])
        c = SendEmail("ada@example.com", "hi", ["bob@example.com"])
        assert a == b
        assert a != c
        assert (c.to, c.subject, c.cc) == ("ada@example.com", "hi", ["bob@example.com"])

    def test_default_factory_gives_fresh_values(self) -> None:
        a, b = SendEmail("a"), SendEmail("b")
        a.cc.append("x")
        assert b.cc == []

    def test_repr(self) -> None:
        assert repr(SendEmail("a")) == "SendEmail(to='a', subject='hello', cc=[])"

    def test_is_a_dataclass(self) -> None:
        assert dataclasses.is_dataclass(SendEmail)
        assert [f.name for f in dataclasses.fields(SendEmail)] == ["to", "subject", "cc"]

    def test_missing_and_unknown_arguments(self) -> None:
        with pytest.raises(TypeError):
            SendEmail()  # type: ignore[call-arg]
        with pytest.raises(TypeError):
            SendEmail("a", bogus=1)  # type: ignore[call-arg]

    def test_equality_needs_the_same_class(self) -> None:
        class Other(Job[AppState]):
            NAME = "other"
            to: str
            subject: str = "hello"
            cc: list[str] = field(default_factory=list)

            def run(self, state: AppState) -> None:
                pass

        assert SendEmail("a") != Other("a")  # type: ignore[comparison-overlap]

    def test_class_constants_are_not_fields(self) -> None:
        assert [f.name for f in dataclasses.fields(Configured)] == []
        assert Configured() == Configured()

    def test_upper_case_annotated_attributes_are_not_fields(self) -> None:
        # Type checkers see these as fields (write constants without annotations, or as
        # ClassVar); at run time they are class constants all the same.
        class Annotated(Job[None]):
            NAME: str = "annotated"  # type: ignore[misc]
            BATCH_SIZE: int = 10
            X2_FACTOR: float = 2.0
            value: int  # type: ignore[misc]
            counter: ClassVar[int] = 0

            def run(self, state: None) -> None:
                pass

        assert [f.name for f in dataclasses.fields(Annotated)] == ["value"]
        assert Annotated.BATCH_SIZE == 10
        assert Annotated(1).X2_FACTOR == 2.0  # type: ignore[call-arg, arg-type]
        assert Annotated._spec().name == "annotated"

    def test_inherited_fields_are_not_duplicated(self) -> None:
        class TenantJob(Job[None]):
            tenant: str

        class Invoice(TenantJob):
            NAME = "invoice"
            number: int = 0
            tenant: str = "acme"  # redeclared with a default: stays in its place

            def run(self, state: None) -> None:
                pass

        assert [f.name for f in dataclasses.fields(Invoice)] == ["tenant", "number"]
        assert Invoice(number=1) == Invoice("acme", 1)

        class Refund(TenantJob):
            NAME = "refund"
            amount: int

            def run(self, state: None) -> None:
                pass

        assert [f.name for f in dataclasses.fields(Refund)] == ["tenant", "amount"]
        assert Refund("t", 5)._encode() == {"tenant": "t", "amount": 5}

    def test_dataclass_mixin_fields(self) -> None:
        @dataclass
        class Traced:
            trace_id: str = ""

        class Traceable(Job[None], Traced):
            NAME = "traceable"
            step: int = 0

            def run(self, state: None) -> None:
                pass

        assert [f.name for f in dataclasses.fields(Traceable)] == ["trace_id", "step"]
        assert Traceable._decode({"trace_id": "t", "step": 2}) == Traceable("t", 2)


class TestConstants:
    def test_defaults(self) -> None:
        assert SendEmail.QUEUE == DEFAULT_QUEUE == "default"
        assert SendEmail.MAX_RETRIES == MaxRetries.count(5)
        assert SendEmail.BACKOFF == Backoff.exponential(2)
        assert SendEmail.TIMEOUT is None
        assert SendEmail.PRIORITY == 0
        assert SendEmail.HEARTBEAT_INTERVAL == 5000
        assert SendEmail.VERSION == 1

    def test_default_spec(self) -> None:
        spec = SendEmail._spec()
        assert isinstance(spec, JobSpec)
        assert spec.cls is SendEmail
        assert spec.name == "send_email"
        assert spec.queue == "default"
        assert spec.priority == 0
        assert spec.retry == {
            "max_retries": 5,
            "backoff": "exponential",
            "seconds": 2.0,
            "max_delay": 86400.0,
            "jitter": 0.0,
        }
        assert spec.timeout_ms is None
        assert spec.heartbeat_ms == 5000
        assert spec.version == 1
        assert spec.is_async is False

    def test_configured_spec(self) -> None:
        spec = Configured._spec()
        assert spec.name == "configured"
        assert spec.queue == "mail"
        assert spec.priority == -3
        assert spec.retry == {
            "max_retries": None,
            "backoff": "linear",
            "seconds": 10.0,
            "max_delay": 60.0,
            "jitter": 0.1,
        }
        assert spec.timeout_ms == 1500
        assert spec.heartbeat_ms == 250
        assert spec.version == 4
        assert spec.is_async is True

    @pytest.mark.parametrize(
        ("timeout", "ms"), [(30, 30_000), (0.3, 300), (2.0004, 2000), (0.0001, 1)]
    )
    def test_timeout_in_ms(self, timeout: float, ms: int) -> None:
        assert make_job(TIMEOUT=timeout)._spec().timeout_ms == ms

    def test_spec_is_cached_per_class(self) -> None:
        assert SendEmail._spec() is SendEmail._spec()

        class Child(SendEmail):
            NAME = "child"

        assert SendEmail._spec().name == "send_email"
        assert Child._spec().name == "child"
        assert Child._spec() is not SendEmail._spec()

    def test_spec_is_computed_at_first_use(self) -> None:
        class Broken(Job[None]):  # no NAME: defining it is fine
            QUEUE = ""

        with pytest.raises(ConfigError):
            Broken._spec()

    def test_abstract_intermediate_base(self) -> None:
        class Base(Job[None]):
            QUEUE = "reports"
            PRIORITY = 5

        class Daily(Base):
            NAME = "daily"

            def run(self, state: None) -> None:
                pass

        assert (Daily._spec().queue, Daily._spec().priority) == ("reports", 5)


class TestConfigErrors:
    def message(self, cls: type[Job[Any]]) -> str:
        with pytest.raises(ConfigError) as info:
            cls._spec()
        return str(info.value)

    def test_name_missing(self) -> None:
        class NoName(Job[None]):
            def run(self, state: None) -> None:
                pass

        assert "NoName.NAME is missing" in self.message(NoName)

    def test_name_inherited(self) -> None:
        class Subclass(SendEmail):
            QUEUE = "other"

        msg = self.message(Subclass)
        assert "Subclass.NAME is missing" in msg and "'send_email'" in msg

    @pytest.mark.parametrize("bad", ["", 5, b"name"])
    def test_name_invalid(self, bad: object) -> None:
        msg = self.message(make_job(NAME=bad))
        assert f"Made.NAME must be a non-empty str, got {bad!r}" in msg

    @pytest.mark.parametrize(
        ("attr", "bad"),
        [
            ("QUEUE", ""),
            ("QUEUE", None),
            ("QUEUE", 3),
            ("MAX_RETRIES", 3),
            ("MAX_RETRIES", None),
            ("BACKOFF", "exponential"),
            ("BACKOFF", 2),
            ("TIMEOUT", 0),
            ("TIMEOUT", -1.0),
            ("TIMEOUT", math.nan),
            ("TIMEOUT", math.inf),
            ("TIMEOUT", "30"),
            ("TIMEOUT", True),
            ("PRIORITY", 1.5),
            ("PRIORITY", "1"),
            ("PRIORITY", True),
            ("PRIORITY", 2**31),
            ("PRIORITY", None),
            ("HEARTBEAT_INTERVAL", 0),
            ("HEARTBEAT_INTERVAL", -5),
            ("HEARTBEAT_INTERVAL", 1.5),
            ("HEARTBEAT_INTERVAL", True),
            ("VERSION", 0),
            ("VERSION", "1"),
            ("VERSION", False),
            ("VERSION", 2**32),
        ],
    )
    def test_invalid_constant(self, attr: str, bad: object) -> None:
        msg = self.message(make_job(**{attr: bad}))
        assert re.search(rf"Made\.{attr} must be .*, got {re.escape(repr(bad))}", msg), msg

    def test_boundaries_accepted(self) -> None:
        make_job(PRIORITY=-(2**31), VERSION=2**32 - 1, HEARTBEAT_INTERVAL=1)._spec()
        make_job(PRIORITY=2**31 - 1, TIMEOUT=1e-9)._spec()

    def test_run_missing(self) -> None:
        class NoRun(Job[None]):
            NAME = "no_run"

        assert "NoRun must define run(self, state)" in self.message(NoRun)
        with pytest.raises(NotImplementedError, match="NoRun must define run"):
            NoRun().run(None)

    def test_run_not_callable(self) -> None:
        assert "Made must define run(self, state)" in self.message(make_job(run=5))

    def test_every_problem_at_once(self) -> None:
        class Messy(Job[None]):
            QUEUE = ""
            PRIORITY = "high"  # type: ignore[assignment]
            VERSION = 0

        msg = self.message(Messy)
        for part in ("Messy.NAME", "Messy.QUEUE", "Messy.PRIORITY", "Messy.VERSION", "run"):
            assert part in msg

    def test_config_error_is_a_value_error(self) -> None:
        with pytest.raises(ValueError):
            make_job(QUEUE="")._spec()


S = TypeVar("S")


class TestGenericState:
    def test_state_reaches_run(self) -> None:
        state = AppState()
        SendEmail("ada@example.com").run(state)
        assert state.sent == ["ada@example.com"]

    def test_async_run(self) -> None:
        state = AppState()
        asyncio.run(Configured().run(state))
        assert state.sent == ["async"]

    def test_generic_intermediate_base(self) -> None:
        class Audited(Job[S], Generic[S]):
            actor: str

        class Delete(Audited[AppState]):
            NAME = "delete"
            target: int

            def run(self, state: AppState) -> None:
                state.sent.append(f"{self.actor}:{self.target}")

        state = AppState()
        job = Delete("root", 7)
        job.run(state)
        assert state.sent == ["root:7"]
        assert Delete._decode(job._encode()) == job

    def test_unparametrized_base(self) -> None:
        class Loose(Job):  # type: ignore[type-arg]
            NAME = "loose"

            def run(self, state: object) -> None:
                pass

        assert Loose._spec().name == "loose"


class TestEncodeDecode:
    def test_round_trip(self) -> None:
        job = SendEmail("ada@example.com", "hi", ["b@example.com"])
        assert job._encode() == {"to": "ada@example.com", "subject": "hi", "cc": ["b@example.com"]}
        assert SendEmail._decode(job._encode()) == job

    def test_decode_returns_the_class(self) -> None:
        back = SendEmail._decode({"to": "x"})
        assert type(back) is SendEmail
        assert back == SendEmail("x")
