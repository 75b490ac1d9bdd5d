"""Engines for real: a name two engines know, the CLI fallbacks of docker and podman when
their API socket is absent, and the command engine, all through ``cntr resolve``."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import Container, run_cntr

pytestmark = [pytest.mark.root, pytest.mark.engine]

DUP = "cntr-tests-dup"
PODMAN = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]


def _inspect_pid(cli: list[str], name: str) -> int:
    out = subprocess.run([*cli, "inspect", "--format", "{{.State.Pid}}", name],
                         capture_output=True, text=True, check=True, timeout=60)
    return int(out.stdout.strip())


def _inspect_id(cli: list[str], name: str) -> str:
    out = subprocess.run([*cli, "inspect", "--format", "{{.Id}}", name],
                         capture_output=True, text=True, check=True, timeout=60)
    return out.stdout.strip()


@pytest.fixture
def duplicate(docker_container: Container, podman_container: Container) -> Iterator[None]:
    """A container named cntr-tests-dup in docker and another in podman."""
    for cli in (["docker"], PODMAN):
        subprocess.run([*cli, "rm", "-f", DUP], capture_output=True, check=False, timeout=60)
    try:
        subprocess.run(["docker", "run", "-d", "--name", DUP, "--network", "none",
                        "--ulimit", "nofile=1024:1024", "cntr-busybox:test", "/bin/sleep",
                        "1000"], capture_output=True, check=True, timeout=120)
        subprocess.run([*PODMAN, "run", "-d", "--name", DUP, "--network", "none",
                        "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000",
                        "localhost/cntr-busybox:test", "/bin/sleep", "1000"],
                       capture_output=True, check=True, timeout=120)
        yield
    finally:
        # docker rm has no stop timeout: -f kills at once (podman's -t 0 does the same)
        for rm in (["docker", "rm", "-f"], [*PODMAN, "rm", "-f", "-t", "0"]):
            subprocess.run([*rm, DUP], capture_output=True, check=False, timeout=120)


@pytest.mark.docker
@pytest.mark.podman
def test_a_name_two_engines_know_is_ambiguous(duplicate: None) -> None:
    d_pid, p_pid = _inspect_pid(["docker"], DUP), _inspect_pid(PODMAN, DUP)
    d_id, p_id = _inspect_id(["docker"], DUP), _inspect_id(PODMAN, DUP)
    out = run_cntr("resolve", DUP)
    assert (out.returncode, out.stdout) == (8, b"")
    assert out.stderr.decode() == (
        f"cntr: resolve: '{DUP}' matches 2 containers: docker:{DUP} (id {d_id[:12]}, pid "
        f"{d_pid}); podman:{DUP} (id {p_id[:12]}, pid {p_pid}) (narrow it with --type or "
        "give a longer id)\n")
    attach = run_cntr("attach", DUP, "--", "true")
    assert (attach.returncode, attach.stdout) == (8, b"")
    assert attach.stderr.decode() == out.stderr.decode().replace("resolve:", "attach:", 1)
    for engine, pid in (("docker", d_pid), ("podman", p_pid)):
        one = run_cntr("resolve", DUP, "-t", engine, "--format", "json")
        assert one.returncode == 0, one.stderr.decode()
        assert {k: v for k, v in json.loads(one.stdout).items() if k != "start_time"} == {
            "kind": "cntr.resolve", "version": 1, "engine": engine,
            "container_id": d_id if engine == "docker" else p_id, "name": DUP, "pid": pid}


def _wrapper(bindir: Path, tool: str, prefix: str, unset: str) -> Path:
    """``tool`` on PATH as a script that logs its arguments and runs the real one without
    the variable that points cntr at a missing socket."""
    real = shutil.which(tool)
    assert real is not None
    calls = bindir / f"{tool}.calls"
    script = bindir / tool
    script.write_text(f'#!/bin/sh\necho "$*" >> {calls}\nunset {unset}\n'
                      f'exec {real} {prefix} "$@"\n')
    script.chmod(0o755)
    return calls


@pytest.mark.parametrize(("engine", "var", "prefix"), [
    pytest.param("docker", "DOCKER_HOST", "", marks=pytest.mark.docker, id="docker"),
    pytest.param("podman", "CONTAINER_HOST", "--cgroup-manager=cgroupfs --runtime runc",
                 marks=pytest.mark.podman, id="podman"),
])
def test_cli_fallback_when_the_api_socket_is_absent(
        engine: str, var: str, prefix: str, tmp_path: Path,
        request: pytest.FixtureRequest) -> None:
    c: Container = request.getfixturevalue(f"{engine}_container")
    bindir = tmp_path / "bin"
    bindir.mkdir()
    calls = _wrapper(bindir, engine, prefix, var)
    missing = tmp_path / "no-such.sock"
    env = {**os.environ, var: f"unix://{missing}", "PATH": f"{bindir}:{os.environ['PATH']}"}
    out = run_cntr("resolve", c.ident, "-t", engine, "--format", "json", env=env)
    assert out.returncode == 0, out.stderr.decode()
    record = json.loads(out.stdout)
    assert (record["engine"], record["name"], record["pid"]) == (engine, c.ident, c.pid)
    assert f"inspect --type container {c.ident}" in calls.read_text().splitlines()
    assert not missing.exists()


def test_command_engine_live() -> None:
    marker = "cntr-tests-command-engine-7d1"
    procs = [subprocess.Popen(["sh", "-c", f"sleep {300 + i}; : {marker}"],
                              start_new_session=True) for i in range(2)]
    try:
        out = run_cntr("resolve", "-t", "command", marker, "--format", "json")
        assert out.returncode == 0, out.stderr.decode()
        record = json.loads(out.stdout)
        assert (record["engine"], record["pid"]) == ("command", procs[0].pid)  # the oldest
        none = run_cntr("resolve", "-t", "command", marker + "-absent")
        assert (none.returncode, none.stdout) == (4, b"")
        assert none.stderr.decode().startswith(
            f"cntr: resolve: no container '{marker}-absent': command: ")
    finally:
        for p in procs:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
