"""Records: classes whose annotated attributes are their fields, given the ``__init__``,
``__repr__`` and ``__eq__`` that ``@dataclass`` would give them (and, when frozen,
``__hash__`` and refused assignment), plus ``fields``, ``asdict`` and ``replace``.

Why not ``dataclasses``: importing it imports ``inspect`` (and with it ``ast``, ``dis``,
``tokenize``, ...), ~9 ms of every ``cntr attach``, for records that use none of its
options; and it compiles each generated method from source, ~0.1 ms per class (~14 classes
are made on every attach).  Here no source is compiled: ``__init__`` is a closure over the
class's field names (~1 us for a call with every field positional, the common one; other
calls are bound as Python binds them, with its messages); ``__repr__``, ``__eq__``,
``__hash__`` and the frozen ``__setattr__`` are the same functions for every record,
reading the class's ``__record_fields__``.  Making a record class costs ~15 us.

What ``@dataclass`` does that a record does not: ``__slots__`` (it means creating the
class a second time), ``InitVar`` and keyword-only fields, ordering, ``__post_init__``,
fields inherited from a base record (deriving one record from another is refused), and
deep copies in ``asdict`` (values other than records, lists, tuples and dicts are shared,
not copied).  As there, an attribute without annotation, or annotated ``ClassVar``, is not
a field, and a method the class body defines itself is kept.

The type checker sees ``record`` as a ``dataclass_transform`` (PEP 681) with ``field`` as
its field specifier, so constructor calls are checked as for a dataclass.
"""

from __future__ import annotations

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar, dataclass_transform, overload

    C = TypeVar("C", bound=type)
    R = TypeVar("R")
    T = TypeVar("T")


class FrozenInstanceError(AttributeError):
    """Assignment to a field of a frozen record (or deletion of one)."""


class _Factory:
    """What ``field(default_factory=...)`` leaves in the class body until ``record`` reads it."""

    __slots__ = ("make",)

    def __init__(self, make: Callable[[], object]) -> None:
        self.make = make


_NO_VALUE = object()
"""What the class body leaves for a field without a default."""

_MUTABLE_DEFAULTS = (list, dict, set, bytearray)


def field(*, default_factory: Callable[[], T]) -> T:
    """A field whose default is made by ``default_factory()`` for each new record."""
    return _Factory(default_factory)  # type: ignore[return-value]  # read by record()


if TYPE_CHECKING:

    @overload
    @dataclass_transform(field_specifiers=(field,))
    def record(cls: C, /) -> C: ...

    @overload
    def record(*, frozen: bool = False) -> Callable[[C], C]: ...


def record(cls: C | None = None, /, *, frozen: bool = False) -> C | Callable[[C], C]:
    """Make ``cls`` a record: ``@record`` or ``@record(frozen=True)``."""
    if cls is None:
        return lambda c: _build(c, frozen)
    return _build(cls, frozen)


def _build(cls: C, frozen: bool) -> C:
    if any(hasattr(base, "__record_fields__") for base in cls.__bases__):
        raise TypeError(f"{cls.__qualname__}: a record cannot derive from a record")
    body = cls.__dict__
    names = tuple(name for name, annotation in body.get("__annotations__", {}).items()
                  if not str(annotation).startswith(("ClassVar", "typing.ClassVar")))
    defaults: dict[str, object] = {}
    factories: dict[str, Callable[[], object]] = {}
    for name in names:
        default = body.get(name, _NO_VALUE)
        if isinstance(default, _Factory):
            delattr(cls, name)
            factories[name] = default.make
        elif default is not _NO_VALUE:
            if isinstance(default, _MUTABLE_DEFAULTS):
                raise ValueError(f"{cls.__qualname__}.{name}: mutable default "
                                 f"{type(default).__name__}: use field(default_factory=...)")
            defaults[name] = default
        elif defaults or factories:
            raise TypeError(f"{cls.__qualname__}.{name}: a field without a default "
                            "follows one with a default")

    methods: dict[str, object] = {
        "__init__": _make_init(cls, names, defaults, factories),
        "__repr__": _repr,
        "__eq__": _eq,
    }
    if frozen:
        methods |= {"__setattr__": _refuse_setattr, "__delattr__": _refuse_delattr}
    methods = {attr: method for attr, method in methods.items() if attr not in body}
    if body.get("__hash__") is None:  # None too where the body defines only __eq__
        # Equal by value: hashed by value when frozen, unhashable when mutable (as dataclasses).
        methods["__hash__"] = _hash if frozen else None
    methods |= {"__record_fields__": names, "__match_args__": names}
    for attr, method in methods.items():
        setattr(cls, attr, method)
    return cls


def _make_init(cls: type, names: tuple[str, ...], defaults: dict[str, object],
               factories: dict[str, Callable[[], object]]) -> Callable[..., None]:
    """``__init__(self, *fields)``: positional or keyword, in the order of ``names``.

    The values go straight into the instance's ``__dict__`` (a frozen record's
    ``__setattr__`` refuses them).  A call with every field positional, the common one,
    does nothing else; the others bind the arguments as Python would, and fail with the
    same messages."""
    qualname = cls.__qualname__
    count = len(names)
    known = frozenset(names)

    def __init__(self: object, *args: object, **kwargs: object) -> None:
        if not kwargs and len(args) == count:
            self.__dict__.update(zip(names, args, strict=True))
            return
        if len(args) > count:
            raise TypeError(f"{qualname}.__init__() takes {count + 1} positional arguments "
                            f"but {len(args) + 1} were given")
        values = dict(zip(names, args, strict=False))
        for key in kwargs:
            if key in values:
                raise TypeError(f"{qualname}.__init__() got multiple values for argument "
                                f"{key!r}")
            if key not in known:
                raise TypeError(f"{qualname}.__init__() got an unexpected keyword argument "
                                f"{key!r}")
        values |= kwargs
        if len(values) < count:
            missing = [repr(name) for name in names
                       if name not in values and name not in defaults and name not in factories]
            if missing:
                listed = ", ".join(missing[:-1]) + " and " * (len(missing) > 1) + missing[-1]
                raise TypeError(f"{qualname}.__init__() missing {len(missing)} required "
                                f"positional argument{'s' * (len(missing) > 1)}: {listed}")
            for name in names:
                if name not in values:
                    values[name] = factories[name]() if name in factories else defaults[name]
        self.__dict__.update(values)

    __init__.__qualname__ = f"{qualname}.__init__"
    __init__.__module__ = cls.__module__
    return __init__


def _values(obj: Any) -> tuple[object, ...]:
    return tuple([getattr(obj, name) for name in obj.__record_fields__])


def _repr(self: Any) -> str:
    inner = ", ".join([f"{name}={getattr(self, name)!r}" for name in self.__record_fields__])
    return f"{type(self).__qualname__}({inner})"


def _eq(self: Any, other: object) -> object:
    if other.__class__ is not self.__class__:
        return NotImplemented
    return _values(self) == _values(other)


def _hash(self: Any) -> int:
    return hash(_values(self))


def _refuse_setattr(self: Any, name: str, value: object) -> None:
    raise FrozenInstanceError(f"cannot assign to field {name!r} of a frozen "
                              f"{type(self).__qualname__}")


def _refuse_delattr(self: Any, name: str) -> None:
    raise FrozenInstanceError(f"cannot delete field {name!r} of a frozen "
                              f"{type(self).__qualname__}")


def fields(obj: object) -> tuple[str, ...]:
    """The field names of a record class or instance, in the order of the class body."""
    names: tuple[str, ...] | None = getattr(obj, "__record_fields__", None)
    if names is None:
        raise TypeError(f"not a record: {obj!r:.60}")
    return names


def asdict(obj: object) -> dict[str, Any]:
    """The fields of a record instance as a dict; records, lists, tuples and dicts in
    the values are converted (records to dicts) recursively, as ``dataclasses.asdict``."""
    if isinstance(obj, type):
        raise TypeError(f"asdict() takes a record instance, not the class {obj.__qualname__}")
    fields(obj)
    out: dict[str, Any] = _convert(obj)
    return out


def _convert(value: Any) -> Any:
    names = getattr(type(value), "__record_fields__", None)
    if names is not None:
        return {name: _convert(getattr(value, name)) for name in names}
    if isinstance(value, list):
        return type(value)(_convert(v) for v in value)
    if isinstance(value, tuple):
        if hasattr(value, "_fields"):  # a namedtuple takes its fields as arguments
            return type(value)(*[_convert(v) for v in value])
        return type(value)(_convert(v) for v in value)
    if isinstance(value, dict):
        return type(value)((_convert(k), _convert(v)) for k, v in value.items())
    return value


def replace(obj: R, /, **changes: Any) -> R:
    """A copy of the record ``obj`` with ``changes`` (field name -> value) applied."""
    values = {name: getattr(obj, name) for name in fields(obj)}
    unknown = changes.keys() - values.keys()
    if unknown:
        raise TypeError(f"{type(obj).__qualname__} has no field {sorted(unknown)[0]!r}")
    return type(obj)(**(values | changes))
