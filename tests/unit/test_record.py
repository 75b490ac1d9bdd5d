"""cntr.record, the dataclass stand-in of the attach path: generated methods, fields,
asdict and replace."""

from __future__ import annotations

from collections import namedtuple

import pytest

from cntr.record import FrozenInstanceError, asdict, field, fields, record, replace


@record(frozen=True)
class Point:
    x: int
    y: int = 0


@record
class Bag:
    KIND = "bag"

    name: str
    items: list[int] = field(default_factory=list)
    tags: dict[str, Point] = field(default_factory=dict)
    note: str = ""


def test_init_is_positional_or_keyword_in_annotation_order() -> None:
    assert Point(1, 2) == Point(y=2, x=1)
    bag = Bag("b", [1], note="n")
    assert (bag.name, bag.items, bag.tags, bag.note) == ("b", [1], {}, "n")


def test_defaults_and_missing_arguments() -> None:
    assert Point(3).y == 0
    with pytest.raises(TypeError, match="missing 1 required positional argument: 'x'"):
        Point()  # type: ignore[call-arg]
    with pytest.raises(TypeError, match="unexpected keyword argument 'z'"):
        Point(1, z=2)  # type: ignore[call-arg]


def test_factories_give_each_record_its_own_object() -> None:
    a, b = Bag("a"), Bag("b")
    a.items.append(1)
    a.tags["p"] = Point(1)
    assert b.items == [] and b.tags == {}
    assert "items" not in Bag.__dict__  # the marker does not stay in the class
    given = [7]
    assert Bag("c", given).items is given


def test_frozen_refuses_assignment_and_deletion() -> None:
    p = Point(1, 2)
    with pytest.raises(FrozenInstanceError, match="'x'"):
        p.x = 5  # type: ignore[misc]
    with pytest.raises(AttributeError):
        del p.y
    with pytest.raises(AttributeError):
        p.other = 1  # type: ignore[attr-defined]
    assert p == Point(1, 2)


def test_mutable_records_can_be_assigned() -> None:
    bag = Bag("a")
    bag.note = "changed"
    assert bag.note == "changed"


def test_equality_compares_type_and_fields() -> None:
    @record(frozen=True)
    class Other:
        x: int
        y: int = 0

    same_fields: object = Other(1, 2)
    as_tuple: object = (1, 2)
    assert Point(1, 2) == Point(1, 2)
    assert Point(1, 2) != Point(1, 3)
    assert Point(1, 2) != same_fields
    assert Point(1, 2) != as_tuple


def test_frozen_records_hash_by_value_mutable_ones_do_not_hash() -> None:
    assert hash(Point(1, 2)) == hash(Point(1, 2))
    assert {Point(1, 2), Point(1, 2), Point(2)} == {Point(1, 2), Point(2)}
    with pytest.raises(TypeError, match="unhashable"):
        hash(Bag("a"))


def test_repr_is_the_one_of_a_dataclass() -> None:
    assert repr(Point(1, 2)) == "Point(x=1, y=2)"
    assert repr(Bag("a", [1])) == "Bag(name='a', items=[1], tags={}, note='')"


def test_fields_in_order_without_class_attributes() -> None:
    assert fields(Bag) == ("name", "items", "tags", "note")
    assert fields(Bag("a")) == fields(Bag)
    assert Bag.KIND == "bag"
    with pytest.raises(TypeError, match="not a record"):
        fields(object())


def test_asdict_converts_nested_records_and_containers() -> None:
    pair = namedtuple("pair", "a b")
    bag = Bag("a", [1, 2], {"p": Point(1, 2)}, note="n")
    out = asdict(bag)
    assert out == {"name": "a", "items": [1, 2], "tags": {"p": {"x": 1, "y": 2}}, "note": "n"}
    assert out["items"] is not bag.items

    @record
    class Holder:
        points: list[tuple[Point, int]]
        named: object

    held = asdict(Holder([(Point(3), 4)], pair(Point(5), None)))
    assert held["points"] == [({"x": 3, "y": 0}, 4)]
    assert held["named"] == pair({"x": 5, "y": 0}, None)
    assert type(held["named"]) is pair
    with pytest.raises(TypeError):
        asdict(Bag)
    with pytest.raises(TypeError):
        asdict({"x": 1})


def test_replace_makes_a_changed_copy() -> None:
    p = Point(1, 2)
    q = replace(p, y=5)
    assert (p, q) == (Point(1, 2), Point(1, 5))
    bag = Bag("a", [1])
    assert replace(bag).items is bag.items  # shared, as dataclasses.replace
    with pytest.raises(TypeError, match="no field 'z'"):
        replace(p, z=1)


def test_methods_of_the_class_body_are_kept() -> None:
    @record(frozen=True)
    class Custom:
        x: int

        def __repr__(self) -> str:
            return "custom"

    assert repr(Custom(1)) == "custom"
    assert Custom(1) == Custom(1)


def test_bad_definitions_are_refused() -> None:
    with pytest.raises(ValueError, match="mutable default"):

        @record
        class Shared:
            items: list[int] = []  # noqa: RUF012  # the mistake under test

    with pytest.raises(TypeError, match="follows one with a default"):

        @record
        class Order:
            a: int = 0
            b: int  # type: ignore[misc]

    with pytest.raises(TypeError, match="cannot derive"):

        @record(frozen=True)
        class Derived(Point):
            z: int = 0


def test_a_record_without_fields() -> None:
    @record
    class Empty:
        pass

    assert Empty() == Empty()
    assert fields(Empty) == ()
    assert repr(Empty()).endswith(".<locals>.Empty()")  # the qualified name, as dataclasses
