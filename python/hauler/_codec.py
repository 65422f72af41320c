"""Job fields to JSON-compatible values and back.

Encoding follows each value's runtime type; decoding follows each field's annotation.
Both are precomputed once per class (:func:`codec_for`), so the per-job work is a loop over
the fields with a fast path for plain ``str``/``int``/``bool``/``None`` values.

Supported: ``str``, ``int``, ``float`` (finite), ``bool``, ``None``, ``list[T]``,
``tuple[T, ...]`` and ``tuple[A, B]``, ``dict[str, T]``, unions (``T | None``...),
``Literal[...]``, ``datetime`` (timezone-aware; stored as ISO 8601 text), ``date``,
``UUID``, ``Decimal`` (stored as text), ``Enum`` subclasses (stored as their value),
dataclasses (stored as a dict of their ``init`` fields), and ``Any`` (stored as is).
"""

import dataclasses
import enum
import math
import reprlib
import types
import typing
from collections.abc import Callable, Mapping
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from typing import Any, Final, Generic, TypeVar, get_args, get_origin, get_type_hints
from uuid import UUID

from hauler.errors import ConfigError, SerializationError

__all__ = ["DataclassCodec", "codec_for"]

T = TypeVar("T")

_NoneType: Final = type(None)
# Values of exactly these types are valid JSON values as they are.
_PLAIN: Final = frozenset({str, int, bool, _NoneType})
_MISSING: Final = object()
_SUPPORTED: Final = (
    "str, int, float, bool, None, list, tuple, dict with str keys, datetime (aware), date, "
    "UUID, Decimal, Enum, dataclass"
)
_short = reprlib.Repr()
_short.maxstring = 40
_short.maxother = 40


class _Failure(Exception):
    """A value did not encode or decode; ``segments`` gathers its path, innermost first."""

    def __init__(self, detail: str) -> None:
        super().__init__(detail)
        self.detail = detail
        self.segments: list[str] = []


def _type_name(tp: object) -> str:
    """Name ``tp`` as a reader would write it: ``int``, ``list[str]``, ``Color``, ``None``."""
    if tp is _NoneType:
        return "None"
    if isinstance(tp, type) and not get_args(tp):
        return tp.__name__
    if get_origin(tp) in (typing.Union, types.UnionType):
        return " | ".join(_type_name(a) for a in get_args(tp))
    return repr(tp).replace("typing.", "")


def _describe(value: object) -> str:
    """Describe ``value`` for messages by its type and a short repr: ``str 'abc'``."""
    return f"{_type_name(type(value))} {_short.repr(value)}"


# ---------------------------------------------------------------------------------------
# Encoding: by runtime type, with one encoder per type found by ``isinstance`` once.


def _encode(value: Any) -> Any:
    """Encode any supported value to a JSON-compatible value."""
    tp = type(value)
    if tp in _PLAIN:
        return value
    encoder = _ENCODERS.get(tp)
    if encoder is None:
        encoder = _ENCODERS[tp] = _encoder_for(tp)
    return encoder(value)


def _encode_float(value: float) -> float:
    if not math.isfinite(value):
        raise _Failure(f"float {value!r} cannot be stored (JSON has no NaN or infinity)")
    return float(value)


def _encode_datetime(value: datetime) -> str:
    if value.utcoffset() is None:
        raise _Failure(
            f"naive datetime {value.isoformat()!r}: pass a timezone-aware datetime "
            "(for example datetime.now(timezone.utc))"
        )
    return value.isoformat()


def _encode_sequence(value: list[Any] | tuple[Any, ...]) -> list[Any]:
    out: list[Any] = []
    i = 0
    try:
        for i, item in enumerate(value):  # noqa: B007 - ``i`` names the failing item
            out.append(item if type(item) in _PLAIN else _encode(item))
    except _Failure as failure:
        failure.segments.append(f"[{i}]")
        raise
    return out


def _encode_key(key: object) -> str:
    if isinstance(key, enum.Enum):
        key = key.value
    if isinstance(key, str):
        return str.__str__(key)
    raise _Failure(f"dict key of type {_type_name(type(key))} (only str keys can be stored)")


def _encode_dict(value: dict[Any, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    key: object = None
    try:
        for key, item in value.items():
            out[key if type(key) is str else _encode_key(key)] = (
                item if type(item) in _PLAIN else _encode(item)
            )
    except _Failure as failure:
        failure.segments.append(f"[{key!r}]")
        raise
    return out


def _init_fields(cls: type) -> tuple[str, ...]:
    """Return the names of the ``init`` fields of dataclass ``cls``: what is stored, in order."""
    return tuple(f.name for f in dataclasses.fields(cls) if f.init)


def _dataclass_encoder(cls: type) -> Callable[[Any], dict[str, Any]]:
    names = _init_fields(cls)

    def encode(value: Any) -> dict[str, Any]:
        out: dict[str, Any] = {}
        name = ""
        try:
            for name in names:
                item = getattr(value, name)
                out[name] = item if type(item) in _PLAIN else _encode(item)
        except _Failure as failure:
            failure.segments.append(f".{name}")
            raise
        return out

    return encode


def _encoder_for(tp: type) -> Callable[[Any], Any]:
    """Pick the encoder of runtime type ``tp`` (its subclass relations decide)."""
    if issubclass(tp, enum.Enum):
        return lambda v: _encode(v.value)
    if issubclass(tp, int):
        return int
    if issubclass(tp, float):
        return _encode_float
    if issubclass(tp, str):
        return str.__str__
    if issubclass(tp, datetime):  # before date: a datetime is a date
        return _encode_datetime
    if issubclass(tp, date):
        return date.isoformat
    if issubclass(tp, UUID | Decimal):
        return str
    if issubclass(tp, list | tuple):
        return _encode_sequence
    if issubclass(tp, dict):
        return _encode_dict
    if dataclasses.is_dataclass(tp):
        return _dataclass_encoder(tp)

    def unsupported(value: object) -> Any:
        raise _Failure(f"unsupported type {_type_name(tp)} (supported: {_SUPPORTED})")

    return unsupported


_ENCODERS: dict[type, Callable[[Any], Any]] = {float: _encode_float}


# ---------------------------------------------------------------------------------------
# Decoding: by annotation, with one decoder per field built once.


@dataclasses.dataclass(frozen=True, slots=True)
class _Decoder:
    """How to decode one annotated value.

    Values whose exact type is in ``plain`` are kept as they are without calling ``fn``;
    ``fn`` decodes the rest or raises :class:`_Failure`.
    """

    fn: Callable[[Any], Any]
    plain: frozenset[type] = frozenset()


class _Unsupported(Exception):
    """An annotation hauler cannot decode."""


def _fail(expected: str) -> Callable[[Any], Any]:
    def fn(value: object) -> Any:
        raise _Failure(f"expected {expected}, got {_describe(value)}")

    return fn


def _identity(value: Any) -> Any:
    return value


_ANY: Final = _Decoder(_identity)
_PRIMITIVES: Final = {
    str: _Decoder(_fail("str"), frozenset({str})),
    int: _Decoder(_fail("int"), frozenset({int})),
    bool: _Decoder(_fail("bool"), frozenset({bool})),
    _NoneType: _Decoder(_fail("None"), frozenset({_NoneType})),
}


def _decode_float(value: object) -> float:
    if type(value) is int:
        return float(value)
    raise _Failure(f"expected float, got {_describe(value)}")


def _from_text(tp: type, parse: Callable[[str], Any]) -> _Decoder:
    """Build a decoder of values stored as text; ``parse`` raises ValueError on bad text."""
    expected = _type_name(tp)

    def fn(value: object) -> Any:
        if type(value) is str:
            try:
                return parse(value)
            except (ValueError, InvalidOperation):
                pass
        raise _Failure(f"expected {expected}, got {_describe(value)}")

    return _Decoder(fn)


def _parse_datetime(text: str) -> datetime:
    parsed = datetime.fromisoformat(text)
    if parsed.utcoffset() is None:
        raise ValueError("naive")
    return parsed


def _decode_decimal(value: object) -> Decimal:
    if type(value) is int:
        return Decimal(value)
    return _DECIMAL_TEXT.fn(value)  # type: ignore[no-any-return]


_DECIMAL_TEXT: Final = _from_text(Decimal, Decimal)
_LEAVES: Final = {
    float: _Decoder(_decode_float, frozenset({float})),
    datetime: _from_text(datetime, _parse_datetime),
    date: _from_text(date, date.fromisoformat),
    UUID: _from_text(UUID, UUID),
    Decimal: _Decoder(_decode_decimal),
}


def _enum_decoder(cls: type[enum.Enum]) -> _Decoder:
    value_types = frozenset(type(member.value) for member in cls)
    expected = f"{cls.__name__} (one of {', '.join(repr(m.value) for m in cls)})"

    def fn(value: object) -> Any:
        if type(value) in value_types:
            try:
                return cls(value)
            except ValueError:
                pass
        raise _Failure(f"expected {expected}, got {_describe(value)}")

    return _Decoder(fn)


def _literal_decoder(tp: object) -> _Decoder:
    options = [(lit.value if isinstance(lit, enum.Enum) else lit, lit) for lit in get_args(tp)]
    expected = _type_name(tp)

    def fn(value: object) -> Any:
        for stored, literal in options:
            if type(value) is type(stored) and value == stored:
                return literal
        raise _Failure(f"expected {expected}, got {_describe(value)}")

    return _Decoder(fn)


def _items(value: list[Any], item: _Decoder, as_tuple: bool) -> list[Any] | tuple[Any, ...]:
    fn, plain = item.fn, item.plain
    out: list[Any] = []
    i = 0
    try:
        for i, x in enumerate(value):  # noqa: B007 - ``i`` names the failing item
            out.append(x if type(x) in plain else fn(x))
    except _Failure as failure:
        failure.segments.append(f"[{i}]")
        raise
    return tuple(out) if as_tuple else out


def _sequence_decoder(tp: object, item: _Decoder, as_tuple: bool) -> _Decoder:
    expected = _type_name(tp)
    keep = item is _ANY and not as_tuple

    def fn(value: object) -> Any:
        if type(value) is not list:
            raise _Failure(f"expected {expected}, got {_describe(value)}")
        return value if keep else _items(value, item, as_tuple)

    return _Decoder(fn)


def _fixed_tuple_decoder(tp: object, items: list[_Decoder]) -> _Decoder:
    expected = _type_name(tp)

    def fn(value: object) -> Any:
        if type(value) is not list or len(value) != len(items):
            raise _Failure(f"expected {expected}, got {_describe(value)}")
        out: list[Any] = []
        i = 0
        try:
            for i, (x, item) in enumerate(zip(value, items, strict=True)):  # noqa: B007
                out.append(x if type(x) in item.plain else item.fn(x))
        except _Failure as failure:
            failure.segments.append(f"[{i}]")
            raise
        return tuple(out)

    return _Decoder(fn)


def _dict_decoder(tp: object, key: _Decoder, item: _Decoder) -> _Decoder:
    expected = _type_name(tp)
    keep = key is _PRIMITIVES[str] and item is _ANY

    def fn(value: object) -> Any:
        if type(value) is not dict:
            raise _Failure(f"expected {expected}, got {_describe(value)}")
        if keep:
            return value
        out: dict[Any, Any] = {}
        k: object = None
        try:
            for k, x in value.items():
                out[k if type(k) in key.plain else key.fn(k)] = (
                    x if type(x) in item.plain else item.fn(x)
                )
        except _Failure as failure:
            failure.segments.append(f"[{k!r}]")
            raise
        return out

    return _Decoder(fn)


def _union_decoder(tp: object, members: list[_Decoder]) -> _Decoder:
    expected = _type_name(tp)

    def fn(value: object) -> Any:
        for member in members:
            if type(value) in member.plain:
                return value
            try:
                return member.fn(value)
            except _Failure:
                continue
        raise _Failure(f"expected {expected}, got {_describe(value)}")

    return _Decoder(fn)


def _optional_decoder(inner: _Decoder) -> _Decoder:
    """``T | None``: report ``T``'s own failure (with its path) for a value that is not None."""
    fn = inner.fn

    def decode(value: object) -> Any:
        return None if value is None else fn(value)

    # Only ``None`` accepts ``None``, so T's plain types stay plain.
    return _Decoder(decode, inner.plain | {_NoneType})


def _build(tp: Any) -> _Decoder:
    """Build the decoder of annotation ``tp``; raise _Unsupported naming what is not."""
    if tp is Any or tp is object:
        return _ANY
    if tp is None or tp is _NoneType:
        return _PRIMITIVES[_NoneType]
    if isinstance(tp, typing.NewType):
        return _build(tp.__supertype__)
    if tp in _PRIMITIVES:
        return _PRIMITIVES[tp]
    if tp in _LEAVES:
        return _LEAVES[tp]
    origin = get_origin(tp)
    args = get_args(tp)
    if isinstance(tp, type) and not args:
        if issubclass(tp, enum.Enum):
            return _enum_decoder(tp)
        if dataclasses.is_dataclass(tp):
            return _dataclass_decoder(tp)
        if tp is list:
            return _sequence_decoder(tp, _ANY, as_tuple=False)
        if tp is tuple:
            return _sequence_decoder(tp, _ANY, as_tuple=True)
        if tp is dict:
            return _dict_decoder(tp, _PRIMITIVES[str], _ANY)
    if origin is typing.Literal:
        return _literal_decoder(tp)
    if origin is list:
        return _sequence_decoder(tp, _build(args[0]) if args else _ANY, as_tuple=False)
    if origin is tuple:
        if not args or (len(args) == 2 and args[1] is Ellipsis):
            return _sequence_decoder(tp, _build(args[0]) if args else _ANY, as_tuple=True)
        return _fixed_tuple_decoder(tp, [_build(a) for a in args])
    if origin is dict:
        key_tp, item_tp = args or (str, Any)
        key = _build(key_tp)
        if key is _ANY:
            key = _PRIMITIVES[str]
        elif not (key is _PRIMITIVES[str] or _is_str_enum(key_tp)):
            raise _Unsupported(f"{_type_name(tp)} (dict keys must be str)")
        return _dict_decoder(tp, key, _build(item_tp))
    if origin is typing.Union or origin is types.UnionType:
        members = [a for a in args if a is not _NoneType]
        if len(members) == 1 and len(args) == 2:
            return _optional_decoder(_build(members[0]))
        return _union_decoder(tp, [_build(a) for a in args])
    raise _Unsupported(_type_name(tp))


def _is_str_enum(tp: object) -> bool:
    return (
        isinstance(tp, type)
        and issubclass(tp, enum.Enum)
        and all(type(member.value) is str for member in tp)
    )


# ---------------------------------------------------------------------------------------
# Per-class codecs.


class DataclassCodec(Generic[T]):
    """Encode and decode the fields of one dataclass (a job class, or a nested dataclass).

    Build it with :func:`codec_for`, which caches one per class.
    """

    __slots__ = ("_cls", "_encode_fields", "_fields", "_required", "field_names", "name")

    def __init__(self, cls: type[T]) -> None:
        self._cls = cls
        self.name = cls.__name__
        self.field_names: tuple[str, ...] = _init_fields(cls)
        """The names :meth:`encode` writes, in order (the ``init`` fields)."""
        self._encode_fields = _dataclass_encoder(cls)
        self._fields: tuple[tuple[str, Callable[[Any], Any], frozenset[type]], ...] = ()
        self._required: frozenset[str] = frozenset()

    def _build_fields(self) -> None:
        """Compute the field decoders; raise ConfigError naming every unsupported field."""
        cls = self._cls
        try:
            hints = get_type_hints(cls)
        except Exception as e:  # NameError for an undefined name, and friends
            raise ConfigError(f"{self.name}: cannot resolve the field annotations: {e}") from e
        fields = []
        problems = []
        for f in dataclasses.fields(cls):  # type: ignore[arg-type]
            if not f.init:
                continue
            try:
                decoder = _build(hints.get(f.name, Any))
            except _Unsupported as e:
                problems.append(
                    f"{self.name}.{f.name}: unsupported field type {e} (supported: {_SUPPORTED})"
                )
                continue
            except ConfigError as e:  # from a nested dataclass
                problems.append(f"{self.name}.{f.name}: {e}")
                continue
            fields.append((f.name, decoder.fn, decoder.plain))
        if problems:
            raise ConfigError("; ".join(problems))
        self._fields = tuple(fields)
        self._required = frozenset(
            f.name
            for f in dataclasses.fields(cls)  # type: ignore[arg-type]
            if f.init
            and f.default is dataclasses.MISSING
            and f.default_factory is dataclasses.MISSING
        )

    def _path(self, failure: _Failure) -> str:
        return self.name + "".join(reversed(failure.segments))

    def encode(self, obj: T) -> dict[str, Any]:
        """Encode ``obj``'s fields to a JSON-compatible dict.

        Raises:
            SerializationError: A value has an unsupported type, or is a float NaN or
                infinity, or a naive datetime (the message names its path and type), or
                lists and dicts are nested too deeply.

        """
        try:
            return self._encode_fields(obj)
        except _Failure as failure:
            raise SerializationError(
                f"cannot serialize {self._path(failure)}: {failure.detail}"
            ) from None
        except RecursionError:
            raise SerializationError(
                f"cannot serialize {self.name}: a value is nested too deeply (or contains itself)"
            ) from None

    def decode(self, args: Mapping[str, Any]) -> T:
        """Rebuild an instance from the dict :meth:`encode` made.

        Raises:
            SerializationError: A field is missing or unknown, or a value does not fit its
                annotation; the message names its path and the expected type.

        """
        try:
            return self._decode_fields(args)
        except _Failure as failure:
            raise SerializationError(
                f"cannot deserialize {self._path(failure)}: {failure.detail}"
            ) from None

    def _decode_fields(self, args: object) -> T:
        if not isinstance(args, dict):
            raise _Failure(f"expected a dict of {self.name} fields, got {_describe(args)}")
        kwargs: dict[str, Any] = {}
        name = ""
        try:
            for name, fn, plain in self._fields:
                value = args.get(name, _MISSING)
                if value is _MISSING:
                    if name in self._required:
                        raise _Failure("the field is missing")
                elif type(value) in plain:
                    kwargs[name] = value
                else:
                    kwargs[name] = fn(value)
        except _Failure as failure:
            failure.segments.append(f".{name}")
            raise
        if len(args) != len(kwargs):  # kwargs holds only keys of args: the rest are unknown
            unknown = sorted(repr(k) for k in args if k not in kwargs)
            raise _Failure(f"unknown field(s) {', '.join(unknown)}")
        return self._cls(**kwargs)


def _dataclass_decoder(cls: type) -> _Decoder:
    codec: DataclassCodec[Any] = codec_for(cls)
    return _Decoder(codec._decode_fields)


_CODECS: dict[type, DataclassCodec[Any]] = {}


def codec_for(cls: type[T]) -> DataclassCodec[T]:
    """Return the codec of dataclass ``cls``, built on first use and cached.

    Raises:
        ConfigError: A field's annotation cannot be resolved or is not supported; the
            message names every such field.

    """
    codec = _CODECS.get(cls)
    if codec is None:
        codec = _CODECS[cls] = DataclassCodec(cls)
        try:  # registered first, so a dataclass that refers to itself finds its codec
            codec._build_fields()
        except BaseException:
            del _CODECS[cls]
            raise
    return codec
