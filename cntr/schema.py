"""Checking a decoded record against its schema in ``schemas/``.

The schemas are JSON Schema documents restricted to the keywords implemented here:
``type`` (with the extra type ``binary`` for msgpack bytes), ``const``, ``enum``,
``required``, ``properties``, ``additionalProperties``, ``items`` (one schema or a list),
``minItems``/``maxItems``, ``minimum``/``maximum``, ``maxLength``, ``maxProperties`` and
``$ref`` to ``#/definitions/NAME``.  A keyword outside this list is an error when the
schema is loaded, so a schema can never silently check less than it says.

Why a checker of its own rather than the ``jsonschema`` package: cntr depends on the
four packages its design names (pyfuse3, trio, msgpack, click) and nothing else; a context
is checked on every attach, where this module needs only the standard ``json`` and a
validator package would add its own dependency tree to the start-up; and records are
msgpack, with ``bytes`` that JSON Schema has no type for (``binary`` above).  Apart from
``binary`` the schemas are plain JSON Schema (draft-07 keywords), readable by any
validator.
"""

from __future__ import annotations

import os

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from typing import Any

SCHEMA_DIR = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                          "schemas")
if not os.path.isdir(SCHEMA_DIR):  # installed from the wheel: they are in cntr/schemas
    SCHEMA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "schemas")

_KEYWORDS = frozenset({
    "$id", "title", "description", "type", "const", "enum", "required", "properties",
    "additionalProperties", "items", "minItems", "maxItems", "minimum", "maximum",
    "maxLength", "maxProperties", "$ref", "definitions",
})


class SchemaError(ValueError):
    """The record does not match; the message names the field and what was expected."""


_loaded: dict[str, dict[str, Any]] = {}


def load(name: str) -> dict[str, Any]:
    """Load ``schemas/NAME.json`` (e.g. ``context.v1``), once per process (a dict, not
    functools.cache: functools is not imported on the attach path)."""
    schema = _loaded.get(name)
    if schema is None:
        import json  # not at the top: a plain attach validates no record

        with open(os.path.join(SCHEMA_DIR, f"{name}.json")) as f:
            schema = json.load(f)
        _check_keywords(schema, name)
        _loaded[name] = schema
    return schema


def _check_keywords(node: Any, where: str) -> None:
    if isinstance(node, dict):
        if "type" in node or "properties" in node or "$ref" in node or "const" in node:
            unknown = set(node) - _KEYWORDS
            if unknown:
                raise ValueError(f"schema {where}: unsupported keywords {sorted(unknown)}")
        for key, value in node.items():
            _check_keywords(value, f"{where}.{key}")
    elif isinstance(node, list):
        for i, value in enumerate(node):
            _check_keywords(value, f"{where}[{i}]")


def _type_ok(value: Any, typ: str) -> bool:
    if typ == "object":
        return isinstance(value, dict)
    if typ == "array":
        return isinstance(value, list | tuple)
    if typ == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if typ == "string":
        return isinstance(value, str)
    if typ == "boolean":
        return isinstance(value, bool)
    if typ == "null":
        return value is None
    if typ == "binary":
        return isinstance(value, bytes)
    raise ValueError(f"unknown schema type {typ!r}")


def _describe(value: Any) -> str:
    names = {dict: "an object", list: "an array", tuple: "an array", str: "a string",
             bool: "a boolean", int: "an integer", float: "a number", bytes: "bytes",
             type(None): "null"}
    return names.get(type(value), type(value).__name__)


def validate(value: Any, schema: dict[str, Any], root: dict[str, Any] | None = None,
             path: str = "") -> None:
    """Raise SchemaError naming the first field of ``value`` that does not match."""
    root = root if root is not None else schema
    where = path or "record"
    if "$ref" in schema:
        ref = schema["$ref"]
        prefix = "#/definitions/"
        if not ref.startswith(prefix):
            raise ValueError(f"unsupported $ref {ref!r}")
        validate(value, root["definitions"][ref[len(prefix):]], root, path)
        return
    if "const" in schema and value != schema["const"]:
        raise SchemaError(f"{where}: expected {schema['const']!r}, got {value!r:.60}")
    if "enum" in schema and value not in schema["enum"]:
        raise SchemaError(f"{where}: expected one of {schema['enum']}, got {value!r:.60}")
    typ = schema.get("type")
    if typ is not None:
        types = typ if isinstance(typ, list) else [typ]
        if not any(_type_ok(value, t) for t in types):
            raise SchemaError(f"{where}: expected {' or '.join(types)}, got {_describe(value)}")
    if isinstance(value, int) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            raise SchemaError(f"{where}: {value} is below the minimum {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            raise SchemaError(f"{where}: {value} is above the maximum {schema['maximum']}")
    if isinstance(value, str) and len(value) > schema.get("maxLength", len(value)):
        raise SchemaError(f"{where}: longer than {schema['maxLength']} characters")
    if isinstance(value, dict):
        _validate_object(value, schema, root, path)
    elif isinstance(value, list | tuple):
        _validate_array(value, schema, root, path)


def _validate_object(value: dict[Any, Any], schema: dict[str, Any], root: dict[str, Any],
                     path: str) -> None:
    where = path or "record"
    if len(value) > schema.get("maxProperties", len(value)):
        raise SchemaError(f"{where}: more than {schema['maxProperties']} entries")
    for key in schema.get("required", ()):
        if key not in value:
            raise SchemaError(f"{where}: missing field {key!r}")
    props = schema.get("properties", {})
    extra = schema.get("additionalProperties", True)
    for key, item in value.items():
        if not isinstance(key, str):
            raise SchemaError(f"{where}: key {key!r:.40} is not a string")
        if key in props:
            validate(item, props[key], root, f"{path}.{key}" if path else key)
        elif extra is False:
            raise SchemaError(f"{where}: unknown field {key!r:.60}")
        elif isinstance(extra, dict):
            # a map's key (an environment variable, a path) may hold anything: quoted
            # unless plain, so the message stays one readable line
            sub = f"{where}.{key}" if key.isidentifier() else f"{where}[{key!r:.60}]"
            validate(item, extra, root, sub)


def _validate_array(value: list[Any] | tuple[Any, ...], schema: dict[str, Any],
                    root: dict[str, Any], path: str) -> None:
    where = path or "record"
    if len(value) < schema.get("minItems", 0):
        raise SchemaError(f"{where}: fewer than {schema['minItems']} items")
    if len(value) > schema.get("maxItems", len(value)):
        raise SchemaError(f"{where}: more than {schema['maxItems']} items")
    items = schema.get("items")
    if isinstance(items, list):
        for i, (item, sub) in enumerate(zip(value, items, strict=False)):
            validate(item, sub, root, f"{where}[{i}]")
    elif isinstance(items, dict):
        for i, item in enumerate(value):
            validate(item, items, root, f"{where}[{i}]")
