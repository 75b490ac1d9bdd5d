"""Version 2 records (a container that runs no process) and the engines' description of
stopped docker and podman containers, from output recorded on Debian 12."""

from __future__ import annotations

import json
from pathlib import Path

import msgpack
import pytest

from cntr import context
from cntr.context import Offline, Resolved
from cntr.engines import docker
from cntr.engines.base import NotRunning
from cntr.errors import BadInput
from cntr.linux import caps

DATA = Path(__file__).parent / "data" / "engines"


def sample_offline(**over: object) -> Offline:
    values: dict[str, object] = dict(
        state="exited", exit_code=3, rootfs="overlay", lower=["/l/init", "/l/base"],
        upper="/l/c/diff", work="/l/c/work", path="/l/c/merged", env={"PATH": "/bin"},
        cwd="/srv", user="app", hostname="web", caps=0x3f, image="busybox")
    values.update(over)
    return Offline(**values)  # type: ignore[arg-type]  # the test's own values


def test_a_stopped_container_is_a_version_2_record() -> None:
    r = Resolved("docker", "abc", "web", 0, 0, sample_offline())
    data = context.to_dict(r)
    assert data["version"] == 2
    assert data["offline"]["state"] == "exited"
    assert context.decode(Resolved, msgpack.packb(data)) == r
    assert context.decode(Resolved, context.encode(r, "json")) == r


def test_a_running_container_is_still_version_1() -> None:
    r = Resolved("docker", "abc", "web", 42, 7)
    data = context.to_dict(r)
    assert data == {"kind": "cntr.resolve", "version": 1, "engine": "docker",
                    "container_id": "abc", "name": "web", "pid": 42, "start_time": 7}
    assert context.decode(Resolved, msgpack.packb(data)) == r


def test_version_1_refuses_pid_0_and_version_2_needs_offline() -> None:
    v1 = {"kind": "cntr.resolve", "version": 1, "engine": "docker", "container_id": "a",
          "name": "", "pid": 0, "start_time": 0}
    with pytest.raises(BadInput, match="pid: 0 is below the minimum 1"):
        context.decode(Resolved, msgpack.packb(v1))
    with pytest.raises(BadInput, match="missing field 'offline'"):
        context.decode(Resolved, msgpack.packb(v1 | {"version": 2}))
    bad = context.to_dict(Resolved("docker", "a", "", 0, 0, sample_offline(state="odd")))
    with pytest.raises(BadInput, match=r"offline\.state: expected one of"):
        context.decode(Resolved, msgpack.packb(bad))


def _inspect(name: str) -> dict[str, object]:
    data = json.loads((DATA / name).read_text())
    obj: dict[str, object] = data[0]
    return obj


def test_docker_describes_a_stopped_container() -> None:
    obj = _inspect("docker-cli-inspect-stopped.json")
    with pytest.raises(NotRunning) as err:
        docker.parse_inspect(obj, "docker")
    off = err.value.offline
    match = err.value.match
    assert match is not None and match.pid == 0 and match.name == "cntr-stopped-docker"
    assert off is not None and off.rootfs == "overlay"
    graph = obj["GraphDriver"]["Data"]  # type: ignore[index]  # recorded JSON
    assert off.upper == graph["UpperDir"] and off.work == graph["WorkDir"]
    assert off.lower == graph["LowerDir"].split(":")
    assert match.state == off.state


def test_docker_default_capabilities() -> None:
    obj = {"HostConfig": {"CapAdd": ["NET_ADMIN"], "CapDrop": ["CAP_MKNOD"]}}
    names = caps.names(docker.engine_caps(obj, "docker"))
    assert "cap_net_admin" in names and "cap_mknod" not in names and "cap_chown" in names
    assert len(names) == len(docker.DOCKER_DEFAULT_CAPS)
    assert docker.engine_caps({"HostConfig": {"Privileged": True}}, "docker") == (
        1 << len(caps.NAMES)) - 1
    podman = {"EffectiveCaps": ["CAP_CHOWN", "CAP_KILL"], "HostConfig": {}}
    assert caps.names(docker.engine_caps(podman, "podman")) == ["cap_chown", "cap_kill"]
