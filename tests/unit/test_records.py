"""The records between stages: round trips, schema checks for every field, bad input."""

from __future__ import annotations

import json
from typing import Any

import msgpack
import pytest

from cntr import context, schema
from cntr.context import Caps, Context, Offline, Resolved, Tools
from cntr.errors import BadInput
from cntr.record import fields, replace


def sample_context(**over: Any) -> Context:
    base = Context(
        engine="docker", container_id="f" * 64, name="web", pid=4242, start_time=123456,
        boot_id="2f907afe-3b62-4616-9348-405ae05e7e19", nspid=1,
        namespaces={"mnt": 4026532616, "pid": 4026532619, "user": 4026531837},
        uid_map=[(0, 0, 4294967295)], gid_map=[(0, 100000, 65536)], uid=0, gid=0,
        groups=[0, 10], caps=Caps(0xA80425FB, 0xA80425FB, 0xA80425FB, 0, 0),
        no_new_privs=False, cgroups=[(0, "", "/docker/abc"), (8, "pids", "/docker/abc")],
        lsm="apparmor", label="docker-default", env={"PATH": "/bin", "X": "é"},
        cwd="/srv", root="/var/lib/docker/overlay2/x/merged",
        files={"etc/hostname": b"web\n", "etc/localtime": b"\x00TZif", "etc/hosts": None},
    )
    return replace(base, **over)


SAMPLE_RESOLVED = Resolved("podman", "a" * 64, "db", 77, 99)


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_context_round_trip(fmt: str) -> None:
    ctx = sample_context()
    assert context.decode(Context, context.encode(ctx, fmt)) == ctx


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_resolved_round_trip(fmt: str) -> None:
    assert context.decode(Resolved, context.encode(SAMPLE_RESOLVED, fmt)) == SAMPLE_RESOLVED


def test_read_any_tells_the_kinds_apart() -> None:
    assert context.read_any(context.encode(SAMPLE_RESOLVED, "msgpack")) == SAMPLE_RESOLVED
    ctx = sample_context()
    assert context.read_any(context.encode(ctx, "json")) == ctx


def test_json_is_readable() -> None:
    text = context.encode(sample_context(), "json").decode()
    data = json.loads(text)
    assert data["kind"] == "cntr.context" and data["version"] == 1
    assert data["files"]["etc/hostname"].startswith("base64:")


def _mutations() -> list[tuple[str, Any, str]]:
    """(field, bad value, words the error must contain) for every field of the schema."""
    return [
        ("kind", "cntr.other", "cntr.context"),
        ("version", 4, "version 4"),
        ("engine", 5, "engine"),
        ("container_id", ["x"], "container_id"),
        ("name", None, "name"),
        ("pid", 0, "pid"),
        ("pid", "12", "pid"),
        ("start_time", -1, "start_time"),
        ("boot_id", 1, "boot_id"),
        ("nspid", 0, "nspid"),
        ("namespaces", {"mnt": "x"}, "namespaces.mnt"),
        ("uid_map", [[0, 0]], "uid_map"),
        ("gid_map", "0 0 1", "gid_map"),
        ("uid", -1, "uid"),
        ("gid", True, "gid"),
        ("groups", [-1], "groups"),
        ("caps", {"bounding": 1}, "caps"),
        ("no_new_privs", 1, "no_new_privs"),
        ("cgroups", [[0, "", 5]], "cgroups"),
        ("lsm", "smack", "lsm"),
        ("label", 3, "label"),
        ("env", {"A": 1}, "env.A"),
        ("cwd", 1, "cwd"),
        ("root", None, "root"),
        ("files", {"etc/passwd": 3}, "files"),
    ]


@pytest.mark.parametrize(("name", "value", "words"), _mutations())
def test_every_field_is_checked(name: str, value: Any, words: str) -> None:
    data = context.to_dict(sample_context())
    data[name] = value
    with pytest.raises(BadInput) as err:
        context.decode(Context, msgpack.packb(data, use_bin_type=True))
    assert words in str(err.value)


@pytest.mark.parametrize("name", [f for f in fields(Context) if f not in ("tools", "offline")])
def test_missing_field_is_named(name: str) -> None:
    data = context.to_dict(sample_context())
    del data[name]
    with pytest.raises(BadInput, match=f"missing field '{name}'"):
        context.decode(Context, msgpack.packb(data, use_bin_type=True))


def test_unknown_field_is_refused() -> None:
    data = context.to_dict(sample_context())
    data["surprise"] = 1
    with pytest.raises(BadInput, match="unknown field 'surprise'"):
        context.decode(Context, msgpack.packb(data, use_bin_type=True))


@pytest.mark.parametrize(("raw", "words"), [
    (b"", "empty"),
    (b"   \n", "empty"),
    (b"{not json", "not valid JSON"),
    (b"\xc1", "not a msgpack"),
    (msgpack.packb([1, 2]), "expected a cntr.context record"),
    (msgpack.packb({"kind": "cntr.context", "version": 1}), "missing field"),
])
def test_garbage_is_one_clear_error(raw: bytes, words: str) -> None:
    with pytest.raises(BadInput, match=words):
        context.decode(Context, raw)


def test_truncated_record_is_refused() -> None:
    raw = context.encode(sample_context(), "msgpack")
    with pytest.raises(BadInput):
        context.decode(Context, raw[: len(raw) // 2])


def test_oversized_record_is_refused() -> None:
    with pytest.raises(BadInput, match="larger than"):
        context.decode(Context, b"\x90" * (context.MAX_RECORD + 1))


def test_schemas_use_only_supported_keywords() -> None:
    for name, version in (("resolve.v1", 1), ("context.v1", 1), ("context.v2", 2),
                          ("resolve.v2", 2), ("context.v3", 3)):
        assert schema.load(name)["properties"]["version"]["const"] == version


def test_schema_documents_every_field() -> None:
    for cls, name, missing in ((Context, "context.v1", {"tools", "offline"}),
                               (Context, "context.v2", {"offline"}),
                               (Resolved, "resolve.v1", {"offline"})):
        props = schema.load(name)["properties"]
        assert set(props) == set(fields(cls)) - missing | {"kind", "version"}
    for cls, name in ((Context, "context.v3"), (Resolved, "resolve.v2")):
        loaded = schema.load(name)
        assert set(loaded["properties"]) == set(fields(cls)) | {"kind", "version"}
        assert set(loaded["definitions"]["offline"]["properties"]) == set(fields(Offline))


SAMPLE_TOOLS = Tools("docker:toolbox", "/proc/77/root", "docker", "b" * 64, "toolbox", 77, 5)


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_context_with_tools_is_version_2(fmt: str) -> None:
    ctx = sample_context(tools=SAMPLE_TOOLS)
    raw = context.encode(ctx, fmt)
    assert context.decode(Context, raw) == ctx
    assert context.to_dict(ctx)["version"] == 2
    assert context.to_dict(ctx)["tools"]["root"] == "/proc/77/root"
    # Without tools it stays version 1, without the field: an older cntr reads it.
    assert "tools" not in context.to_dict(sample_context())


@pytest.mark.parametrize(("version", "tools", "words"), [
    (1, {"source": "/x"}, "unknown field 'tools'"),
    (2, None, "tools"),
    (2, {**context.to_dict(sample_context(tools=SAMPLE_TOOLS))["tools"], "pid": -1}, "pid"),
    (2, {**context.to_dict(sample_context(tools=SAMPLE_TOOLS))["tools"], "x": 1}, "x"),
])
def test_tools_field_is_checked(version: int, tools: Any, words: str) -> None:
    data = context.to_dict(sample_context())
    data["version"] = version
    data["tools"] = tools
    with pytest.raises(BadInput) as err:
        context.decode(Context, msgpack.packb(data, use_bin_type=True))
    assert words in str(err.value)
