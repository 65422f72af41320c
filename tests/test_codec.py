import enum
import json
import math
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal
from typing import Any, Literal, NewType, Optional, Union
from uuid import UUID

import pytest

from hauler import create_server
from hauler._codec import codec_for
from hauler.errors import ConfigError, SerializationError
from hauler.job import Job
from hauler.storage import MemoryStorage


class Color(enum.Enum):
    RED = "red"
    GREEN = "green"


class Level(enum.IntEnum):
    LOW = 1
    HIGH = 2


class Mode(enum.StrEnum):
    FAST = "fast"
    SAFE = "safe"


UserId = NewType("UserId", int)


@dataclass
class Address:
    street: str
    city: str
    zip: str | None = None


@dataclass
class Line:
    sku: str
    qty: int
    price: Decimal
    when: datetime


@dataclass
class Node:
    name: str
    children: list["Node"] = field(default_factory=list)


class Everything(Job[None]):
    NAME = "everything"
    text: str
    number: int
    ratio: float
    flag: bool
    nothing: None
    when: datetime
    day: date
    uid: UUID
    amount: Decimal
    color: Color
    level: Level
    mode: Mode
    address: Address
    lines: list[Line]
    tags: list[str]
    pair: tuple[int, str]
    many: tuple[float, ...]
    scores: dict[str, int]
    by_mode: dict[Mode, list[int]]
    maybe: Optional[int]  # noqa: UP045 - the typing spelling is supported too
    maybe_too: int | None
    either: Union[int, str]  # noqa: UP007
    kind: Literal["a", "b", 3]
    color_lit: Literal[Color.RED]
    user: UserId
    raw: Any
    tree: Node
    plain_list: list  # type: ignore[type-arg]
    plain_dict: dict  # type: ignore[type-arg]
    default: str = "d"

    def run(self, state: None) -> None:
        pass


def make_everything() -> Everything:
    return Everything(
        text="héllo",
        number=-(2**40),
        ratio=0.25,
        flag=True,
        nothing=None,
        when=datetime(2024, 5, 1, 12, 30, 15, 123456, tzinfo=timezone(timedelta(hours=2))),
        day=date(2024, 2, 29),
        uid=UUID("12345678-1234-5678-1234-567812345678"),
        amount=Decimal("12.3400"),
        color=Color.GREEN,
        level=Level.HIGH,
        mode=Mode.SAFE,
        address=Address("1 Main St", "Springfield"),
        lines=[
            Line("a", 1, Decimal("1.5"), datetime(2024, 1, 1, tzinfo=UTC)),
            Line("b", 2, Decimal("-0"), datetime(2024, 1, 2, 3, 4, tzinfo=UTC)),
        ],
        tags=["x", "y"],
        pair=(1, "one"),
        many=(1.0, 2.5),
        scores={"a": 1, "b": 2},
        by_mode={Mode.FAST: [1], Mode.SAFE: []},
        maybe=None,
        maybe_too=7,
        either="seven",
        kind=3,
        color_lit=Color.RED,
        user=UserId(42),
        raw={"nested": [1, "two", None, {"x": 1.5}]},
        tree=Node("root", [Node("a"), Node("b", [Node("c")])]),
        plain_list=[1, "a"],
        plain_dict={"k": [True]},
    )


def roundtrip(job: Job[Any]) -> Any:
    encoded = job._encode()
    json.dumps(encoded, allow_nan=False)  # valid strict JSON
    return type(job)._decode(json.loads(json.dumps(encoded)))


class TestRoundTrip:
    def test_every_supported_type(self) -> None:
        job = make_everything()
        back = roundtrip(job)
        assert back == job
        assert type(back.pair) is tuple and type(back.many) is tuple
        assert back.when.utcoffset() == timedelta(hours=2)
        assert type(back.color) is Color and type(back.mode) is Mode
        assert type(back.address) is Address
        assert type(back.lines[0].price) is Decimal
        assert str(back.amount) == "12.3400"  # Decimal keeps its exponent

    def test_encoded_forms(self) -> None:
        enc = make_everything()._encode()
        assert enc["when"] == "2024-05-01T12:30:15.123456+02:00"
        assert enc["day"] == "2024-02-29"
        assert enc["uid"] == "12345678-1234-5678-1234-567812345678"
        assert enc["amount"] == "12.3400"
        assert enc["color"] == "green"
        assert enc["level"] == 2 and type(enc["level"]) is int
        assert enc["mode"] == "safe" and type(enc["mode"]) is str
        assert enc["address"] == {"street": "1 Main St", "city": "Springfield", "zip": None}
        assert enc["pair"] == [1, "one"]
        assert enc["by_mode"] == {"fast": [1], "safe": []}
        assert enc["color_lit"] == "red"
        assert enc["tree"]["children"][1]["children"][0] == {"name": "c", "children": []}
        assert enc["default"] == "d"

    def test_through_the_engine(self) -> None:
        """The encoded args survive the engine's storage (serde_json) unchanged."""
        job = make_everything()
        with MemoryStorage() as storage:
            handle = create_server(storage)
            info = handle.get(handle.queue(job))
        assert info.args == job._encode()
        assert Everything._decode(info.args) == job

    def test_int_accepted_for_float(self) -> None:
        @dataclass
        class P:
            x: float

        class J(Job[None]):
            NAME = "j_float"
            p: P
            y: float

            def run(self, state: None) -> None:
                pass

        back = J._decode({"p": {"x": 1}, "y": 2})
        assert back == J(P(1.0), 2.0)
        assert type(back.y) is float and type(back.p.x) is float

    def test_defaults_fill_missing_optional_fields(self) -> None:
        back = Everything._decode(
            {k: v for k, v in make_everything()._encode().items() if k != "default"}
        )
        assert back.default == "d"

    def test_union_members_tried_in_order(self) -> None:
        class J(Job[None]):
            NAME = "j_union"
            a: datetime | str
            b: str | datetime
            c: float | int
            d: int | float
            e: bool | int

            def run(self, state: None) -> None:
                pass

        iso = "2024-01-01T00:00:00+00:00"
        back = J._decode({"a": iso, "b": iso, "c": 1, "d": 1, "e": 1})
        assert back.a == datetime(2024, 1, 1, tzinfo=UTC)
        assert back.b == iso
        assert type(back.c) is float
        assert type(back.d) is int
        assert back.e == 1 and type(back.e) is int
        assert J._decode({"a": "x", "b": "x", "c": 1.5, "d": 1.5, "e": True}).e is True

    def test_subclass_values_encode_as_their_base(self) -> None:
        class MyStr(str):
            def __str__(self) -> str:
                return "not me"

        class MyInt(int):
            pass

        class J(Job[None]):
            NAME = "j_sub"
            s: str
            n: int
            t: list[int]

            def run(self, state: None) -> None:
                pass

        enc = J(MyStr("abc"), MyInt(5), (1, 2))._encode()  # type: ignore[arg-type]
        assert enc == {"s": "abc", "n": 5, "t": [1, 2]}
        assert type(enc["s"]) is str and type(enc["n"]) is int

    def test_codec_is_built_once_per_class(self) -> None:
        assert codec_for(Everything) is codec_for(Everything)
        assert Everything._spec() is Everything._spec()
        assert Everything._spec().codec is codec_for(Everything)

    def test_any_values_are_kept(self) -> None:
        raw = {"a": [1, {"b": None}]}
        enc = make_everything()._encode()
        enc["raw"] = raw
        assert Everything._decode(enc).raw == raw


def encode_error(job: Job[Any]) -> str:
    with pytest.raises(SerializationError) as info:
        job._encode()
    return str(info.value)


class Report(Job[None]):
    NAME = "report"
    items: list[Any]
    meta: dict[str, Any] = field(default_factory=dict)

    def run(self, state: None) -> None:
        pass


class TestEncodeErrors:
    def test_unsupported_type_names_field_and_type(self) -> None:
        class Tags(Job[None]):
            NAME = "tags"
            tags: Any

            def run(self, state: None) -> None:
                pass

        msg = encode_error(Tags({"a", "b"}))
        assert "Tags.tags" in msg and "set" in msg

    def test_nested_path(self) -> None:
        naive = datetime(2024, 1, 1)
        items = [1, "x", Line("s", 1, Decimal(1), naive)]
        msg = encode_error(Report(items))
        assert "Report.items[2].when" in msg
        assert "naive datetime" in msg and "timezone-aware" in msg

    @pytest.mark.parametrize("bad", [math.nan, math.inf, -math.inf])
    def test_non_finite_float(self, bad: float) -> None:
        msg = encode_error(Report([[0.5, bad]]))
        assert "Report.items[0][1]" in msg and "float" in msg

    def test_dict_key_not_str(self) -> None:
        msg = encode_error(Report([], meta={"ok": {1: "x"}}))
        assert "Report.meta['ok']" in msg and "int" in msg and "str keys" in msg

    def test_dict_value_path(self) -> None:
        msg = encode_error(Report([], meta={"when": object()}))
        assert "Report.meta['when']" in msg and "object" in msg

    def test_nested_dataclass_field(self) -> None:
        @dataclass
        class Box:
            content: Any

        msg = encode_error(Report([Box(content=b"bytes")]))
        assert "Report.items[0].content" in msg and "bytes" in msg

    def test_enum_value_is_checked(self) -> None:
        class Weird(enum.Enum):
            A = frozenset({1})

        msg = encode_error(Report([Weird.A]))
        assert "Report.items[0]" in msg and "frozenset" in msg

    def test_error_type(self) -> None:
        with pytest.raises(TypeError):  # SerializationError is a TypeError
            Report([{1, 2}])._encode()


def decode_error(cls: type[Job[Any]], args: dict[str, Any]) -> str:
    with pytest.raises(SerializationError) as info:
        cls._decode(args)
    return str(info.value)


def good_args() -> dict[str, Any]:
    enc = make_everything()._encode()
    return json.loads(json.dumps(enc))  # type: ignore[no-any-return]


class TestDecodeErrors:
    @pytest.mark.parametrize(
        ("field_name", "value", "expected"),
        [
            ("text", 5, "expected str"),
            ("number", "5", "expected int"),
            ("number", True, "expected int"),
            ("number", 1.0, "expected int"),
            ("ratio", "0.5", "expected float"),
            ("ratio", True, "expected float"),
            ("flag", 1, "expected bool"),
            ("nothing", 0, "expected None"),
            ("when", "2024-01-01T00:00:00", "expected datetime"),
            ("when", "yesterday", "expected datetime"),
            ("when", 1700000000, "expected datetime"),
            ("day", "2024-02-30", "expected date"),
            ("uid", "not-a-uuid", "expected UUID"),
            ("amount", "12,5", "expected Decimal"),
            ("amount", 1.5, "expected Decimal"),
            ("color", "blue", "expected Color"),
            ("level", True, "expected Level"),
            ("level", 3, "expected Level"),
            ("address", ["1 Main St"], "expected a dict of Address fields"),
            ("tags", "x", "expected list[str]"),
            ("pair", [1, "one", 2], "expected tuple[int, str]"),
            ("pair", {"a": 1}, "expected tuple[int, str]"),
            ("scores", [1], "expected dict[str, int]"),
            ("maybe_too", "7", "expected int"),
            ("either", 1.5, "expected int | str"),
            ("kind", "c", "expected Literal['a', 'b', 3]"),
            ("kind", True, "expected Literal['a', 'b', 3]"),
            ("color_lit", "green", "expected Literal[<Color.RED: 'red'>]"),
            ("user", "42", "expected int"),
            ("plain_list", {}, "expected list"),
            ("plain_dict", [], "expected dict"),
        ],
    )
    def test_wrong_type_names_field_and_expected(
        self, field_name: str, value: Any, expected: str
    ) -> None:
        args = good_args()
        args[field_name] = value
        msg = decode_error(Everything, args)
        assert f"Everything.{field_name}:" in msg
        assert expected in msg

    @pytest.mark.parametrize(
        ("path", "mutate"),
        [
            ("Everything.lines[1].qty", lambda a: a["lines"][1].__setitem__("qty", "2")),
            ("Everything.lines[0].when", lambda a: a["lines"][0].__setitem__("when", "x")),
            ("Everything.tags[1]", lambda a: a["tags"].__setitem__(1, 2)),
            ("Everything.many[0]", lambda a: a["many"].__setitem__(0, "1")),
            ("Everything.pair[1]", lambda a: a["pair"].__setitem__(1, 1)),
            ("Everything.scores['b']", lambda a: a["scores"].__setitem__("b", None)),
            ("Everything.by_mode['slow']", lambda a: a["by_mode"].__setitem__("slow", [])),
            ("Everything.by_mode['fast'][0]", lambda a: a["by_mode"].__setitem__("fast", ["1"])),
            ("Everything.address.city", lambda a: a["address"].__setitem__("city", 1)),
            (
                "Everything.tree.children[1].children[0].name",
                lambda a: a["tree"]["children"][1]["children"][0].__setitem__("name", 0),
            ),
        ],
    )
    def test_nested_paths(self, path: str, mutate: Any) -> None:
        args = good_args()
        mutate(args)
        assert f"{path}:" in decode_error(Everything, args)

    def test_optional_reports_the_inner_failure(self) -> None:
        @dataclass
        class Inner:
            n: int

        class J(Job[None]):
            NAME = "j_opt"
            inner: Inner | None

            def run(self, state: None) -> None:
                pass

        assert J._decode({"inner": None}).inner is None
        msg = decode_error(J, {"inner": {"n": "x"}})
        assert "J.inner.n: expected int, got str 'x'" in msg

    def test_missing_field(self) -> None:
        args = good_args()
        del args["text"]
        assert "Everything.text: the field is missing" in decode_error(Everything, args)

    def test_missing_nested_field(self) -> None:
        args = good_args()
        del args["address"]["city"]
        assert "Everything.address.city: the field is missing" in decode_error(Everything, args)

    def test_unknown_field(self) -> None:
        args = good_args()
        args["extra"] = 1
        args["address"]["planet"] = "earth"
        assert "Everything.address: unknown field(s) 'planet'" in decode_error(Everything, args)
        del args["address"]["planet"]
        assert "Everything: unknown field(s) 'extra'" in decode_error(Everything, args)

    def test_args_not_a_dict(self) -> None:
        msg = decode_error(Everything, ["x"])  # type: ignore[arg-type]
        assert "Everything: expected a dict of Everything fields, got list" in msg

    def test_message_shows_the_value(self) -> None:
        args = good_args()
        args["number"] = "five"
        msg = decode_error(Everything, args)
        assert msg == "cannot deserialize Everything.number: expected int, got str 'five'"


class TestUnsupportedAnnotations:
    def test_reported_by_spec_with_class_and_field(self) -> None:
        class Bad(Job[None]):
            NAME = "bad_types"
            ok: int
            tags: set[str]
            blob: bytes

            def run(self, state: None) -> None:
                pass

        with pytest.raises(ConfigError) as info:
            Bad._spec()
        msg = str(info.value)
        assert "Bad.tags: unsupported field type set[str]" in msg
        assert "Bad.blob: unsupported field type bytes" in msg
        assert "Bad.ok" not in msg

    def test_dict_keys_must_be_str(self) -> None:
        class BadKeys(Job[None]):
            NAME = "bad_keys"
            counts: dict[int, int]

            def run(self, state: None) -> None:
                pass

        with pytest.raises(ConfigError, match=r"BadKeys\.counts: .*dict keys must be str"):
            BadKeys._spec()

    def test_nested_dataclass_problem_names_both(self) -> None:
        @dataclass
        class Holder:
            things: frozenset[int]

        class UsesHolder(Job[None]):
            NAME = "uses_holder"
            holder: Holder

            def run(self, state: None) -> None:
                pass

        with pytest.raises(ConfigError) as info:
            UsesHolder._spec()
        assert "UsesHolder.holder: Holder.things: unsupported field type frozenset[int]" in str(
            info.value
        )

    def test_unresolvable_annotation(self) -> None:
        class Unresolved(Job[None]):
            NAME = "unresolved"
            thing: "Missing"  # type: ignore[name-defined]  # noqa: F821

            def run(self, state: None) -> None:
                pass

        with pytest.raises(ConfigError, match=r"Unresolved: cannot resolve.*Missing"):
            Unresolved._spec()
