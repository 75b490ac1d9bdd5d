"""Attach for real to every engine that runs here: containerd, a Kubernetes-shaped pod,
LXC, LXD (user-namespaced) and systemd-nspawn, each resolved by name (docker, podman and
the demo are covered in test_attach.py)."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Container, engine_container, run_cntr

pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.engine]

ENGINES = {
    # engine: (name a user types, hostname the test container has or None)
    "containerd": ("cntr-test-containerd", None),  # `ctr run` cannot set one
    "kubernetes": ("k8s:default/cntr-test-pod/main", None),
    "lxc": ("cntr-test-lxc", "cntr-lxc"),
    "lxd": ("cntr-test-lxd", "cntr-lxd"),
    "nspawn": ("cntr-test-nspawn", "cntr-nspawn"),
}


@pytest.fixture(scope="module", params=sorted(ENGINES))
def engine(request: pytest.FixtureRequest) -> tuple[Container, str, str | None]:
    name = request.param
    start = "containerd" if name == "kubernetes" else name
    c = engine_container(start)
    if name == "kubernetes":
        out = subprocess.run(["scripts/engines", "pid", "kubernetes"], capture_output=True,
                             text=True, check=True, cwd=Path(__file__).parents[2])
        c = Container("kubernetes", ENGINES[name][0], int(out.stdout.split()[-1]), "",
                      ("CNTR_TEST_VAR", "kubernetes"))
    ident, hostname = ENGINES[name]
    return c, ident, hostname


def test_resolves_to_the_engines_pid(engine: tuple[Container, str, str | None]) -> None:
    c, ident, _ = engine
    out = run_cntr("resolve", ident, "--format", "json")
    assert out.returncode == 0, out.stderr.decode()
    record = json.loads(out.stdout)
    assert (record["kind"], record["version"], record["pid"]) == ("cntr.resolve", 1, c.pid)
    start_time = int(Path(f"/proc/{c.pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    assert record["start_time"] == start_time


def test_attach_sees_the_container(engine: tuple[Container, str, str | None]) -> None:
    c, ident, hostname = engine
    kinds = ["net", "uts", "ipc", "pid", "cgroup", "user"]
    script = ("hostname; echo \"$CNTR_TEST_VAR\"; ls -a /var/lib/cntr | tr '\\n' ' '; echo; "
              + "; ".join(f"readlink /proc/self/ns/{k}" for k in kinds))
    out = run_cntr("attach", ident, "--", "/bin/sh", "-c", script)
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    if hostname is not None:
        assert lines[0] == hostname
    else:  # the container shares a uts namespace it did not name: it must be its own
        assert lines[0] == os.uname().nodename or lines[0]
    assert lines[1] == c.env_var[1]
    assert sorted(lines[2].split()) == sorted([*os.listdir(f"/proc/{c.pid}/root"), ".", ".."])
    for kind, seen in zip(kinds, lines[3:], strict=True):
        assert seen == os.readlink(f"/proc/{c.pid}/ns/{kind}"), kind


def _lxd() -> tuple[Container, list[tuple[int, int, int]]]:
    c = engine_container("lxd")
    text = Path(f"/proc/{c.pid}/uid_map").read_text()
    idmap = [(int(a), int(b), int(n)) for a, b, n in (line.split() for line in
                                                       text.splitlines())]
    return c, idmap


def test_lxd_session_sees_sensible_owners() -> None:
    c, idmap = _lxd()
    assert idmap[0][1] != 0, "LXD containers are user-namespaced"
    outside_root = idmap[0][1]
    host_file = Path("/tmp/cntr-owned-by-nobody")
    host_file.write_text("x")
    os.chown(host_file, 1 << 30, 1 << 30)  # a host id no map covers
    try:
        out = run_cntr("attach", "cntr-test-lxd", "--", "/bin/sh", "-c",
                       "id -u; stat -c '%u %g' /usr/bin /tmp/cntr-owned-by-nobody; "
                       "touch /var/lib/cntr/tmp/cntr-made /tmp/cntr-made-on-host; "
                       "stat -c '%u %g' /var/lib/cntr/tmp/cntr-made /tmp/cntr-made-on-host")
    finally:
        host_file.unlink()
    assert out.returncode == 0, out.stderr.decode()
    uid, usr_bin, nobody, made, made_host = out.stdout.decode().splitlines()
    assert uid == "0"
    assert usr_bin == "0 0"  # the host's root shows as the container's root
    assert nobody == "65534 65534"  # unmapped: the overflow id
    assert made == made_host == "0 0"
    # On the host, both files carry the container root's real ids.
    made_path = Path(f"/proc/{c.pid}/root/tmp/cntr-made")
    host_made = Path("/tmp/cntr-made-on-host")
    try:
        assert made_path.stat().st_uid == outside_root
        assert host_made.stat().st_uid == outside_root
    finally:
        made_path.unlink()
        host_made.unlink()


@pytest.mark.docker
@pytest.mark.podman
def test_ps_lists_every_engines_container() -> None:
    started = {e: engine_container(e) for e in ("docker", "podman", "containerd", "lxc",
                                                 "lxd", "nspawn")}
    out = run_cntr("ps", "--json")
    assert out.returncode == 0, out.stderr.decode()
    listed = {(m["engine"], m["pid"]) for m in json.loads(out.stdout)}
    for engine, c in started.items():
        assert (engine, c.pid) in listed, engine
    table = run_cntr("ps").stdout.decode().splitlines()
    assert table[0].split() == ["ENGINE", "ID", "NAME", "PID"]
    assert any(line.split()[0] == "kubernetes" and "default/cntr-test-pod/main" in line
               for line in table[1:])
