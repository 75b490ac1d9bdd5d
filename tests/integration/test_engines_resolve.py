"""resolve() against real engines: the test containers of scripts/engines, found by name, full id
and id prefix, must give the pid the engine itself reports, and that pid must be the container's
(its hostname and its CNTR_TEST_VAR).

Needs root and the engines' Debian packages; a session-scoped fixture runs
`scripts/engines start ENGINE` once per engine (idempotent: running engines are reused) and
leaves them running (`scripts/engines stop all` stops them).  A missing package or a failed start
skips that engine's tests with the reason, or fails them when CI (or CNTR_MUST_WORK) is set, as
tests/conftest.py does.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from cntr.engines import bolt, make, podman, resolve
from cntr.errors import NotFound
from tests.conftest import require

REPO = Path(__file__).resolve().parents[2]
SCRIPT = REPO / "scripts" / "engines"

#: engine -> (the binary it needs, whether its ids are hex ids distinct from names,
#:            whether it sets the hostname to cntr-ENGINE)
ENGINES = {
    "docker": ("dockerd", True, True),
    "podman": ("podman", True, True),
    "containerd": ("containerd", False, False),
    "kubernetes": ("containerd", False, False),
    "lxc": ("lxc-start", False, True),
    "lxd": ("lxd", False, True),
    "nspawn": ("systemd-nspawn", False, True),
}
#: the engine `scripts/engines start` needs for each type
STARTER = {"kubernetes": "containerd"}
#: the name each test container answers to
NAMES = {"kubernetes": "k8s:default/cntr-test-pod/main"}

pytestmark = [pytest.mark.root, pytest.mark.engine]


def _require(reason: str) -> None:
    require(reason)  # in CI a missing engine fails instead of skipping


def _marks(engine: str) -> list[pytest.MarkDecorator]:
    return [getattr(pytest.mark, engine)] if engine in ("docker", "podman") else []


def _params(engines: list[str]) -> list[object]:
    return [pytest.param(e, marks=_marks(e), id=e) for e in engines]


@pytest.fixture(scope="session")
def started() -> Callable[[str], int]:
    """started(engine) -> the pid the engine reports for cntr-test-ENGINE, starting it once."""
    cache: dict[str, int | str] = {}

    def start(engine: str) -> int:
        if os.geteuid() != 0:
            _require("needs root to start container engines")
        binary = ENGINES[engine][0]
        if shutil.which(binary) is None:
            _require(f"{engine}: {binary} not installed")
        starter = STARTER.get(engine, engine)
        if starter not in cache:
            res = subprocess.run([str(SCRIPT), "start", starter], capture_output=True, text=True,
                                 stdin=subprocess.DEVNULL, timeout=300, check=False)
            cache[starter] = "" if res.returncode == 0 else (res.stderr.strip() or res.stdout)
        if cache[starter]:
            _require(f"scripts/engines start {starter} failed: {cache[starter]}")
        res = subprocess.run([str(SCRIPT), "pid", engine], capture_output=True, text=True,
                             stdin=subprocess.DEVNULL, timeout=60, check=False)
        if res.returncode != 0 or not res.stdout.strip().isdigit():
            pytest.fail(f"scripts/engines pid {engine}: {res.stdout!r} {res.stderr!r}")
        return int(res.stdout.strip())

    return start


def _container_checks(engine: str, pid: int) -> None:
    """The pid is the test container's main process: its env and its hostname say so."""
    environ = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    assert f"CNTR_TEST_VAR={engine}".encode() in environ
    assert os.readlink(f"/proc/{pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
    if engine in ("docker", "podman"):
        # both bind-mount a generated /etc/hostname into the container
        assert Path(f"/proc/{pid}/root/etc/hostname").read_text().strip() == f"cntr-{engine}"
    if ENGINES[engine][2]:
        uts = subprocess.run(["nsenter", "-t", str(pid), "-u", "hostname"], capture_output=True,
                             text=True, check=True, timeout=10).stdout.strip()
        assert uts == f"cntr-{engine}"


@pytest.mark.parametrize("engine", _params(list(ENGINES)))
def test_resolve_by_name(engine: str, started: Callable[[str], int]) -> None:
    pid = started(engine)
    name = NAMES.get(engine, f"cntr-test-{engine}")
    m = resolve(name)
    assert (m.engine, m.pid) == (engine, pid)
    assert resolve(name, [engine]) == m
    _container_checks(engine, m.pid)


@pytest.mark.parametrize("engine", _params(list(ENGINES)))
def test_resolve_by_full_id(engine: str, started: Callable[[str], int]) -> None:
    pid = started(engine)
    m = resolve(NAMES.get(engine, f"cntr-test-{engine}"), [engine])
    by_id = resolve(m.container_id, [engine])
    assert by_id.pid == pid
    assert by_id.container_id == m.container_id


@pytest.mark.parametrize("engine", _params([e for e, v in ENGINES.items() if v[1]]))
def test_resolve_by_id_prefix(engine: str, started: Callable[[str], int]) -> None:
    pid = started(engine)
    m = resolve(f"cntr-test-{engine}", [engine])
    assert resolve(m.container_id[:12], [engine]).pid == pid
    assert resolve(m.container_id[:12]).pid == pid  # all types: the same process counts once


@pytest.mark.parametrize("engine", _params(list(ENGINES)))
def test_list_has_the_test_container(engine: str, started: Callable[[str], int]) -> None:
    pid = started(engine)
    assert pid in [m.pid for m in make(engine).list()]


@pytest.mark.parametrize("engine", _params(list(ENGINES)))
def test_pid_resolves_to_process_id(engine: str, started: Callable[[str], int]) -> None:
    pid = started(engine)
    m = resolve(str(pid))
    assert (m.engine, m.pid, m.container_id) == ("process_id", pid, str(pid))


@pytest.mark.parametrize("engine", _params(["docker", "podman"]))
def test_stopped_container_is_not_running(engine: str, started: Callable[[str], int]) -> None:
    started(engine)
    cli = ["/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"]
    if engine == "podman":
        cli = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
    image = "cntr-busybox:test" if engine == "docker" else "localhost/cntr-busybox:test"
    name = f"cntr-test-{engine}-stopped"
    subprocess.run([*cli, "rm", "-f", name], capture_output=True, check=False)
    subprocess.run([*cli, "create", "--name", name, image, "/bin/true"], capture_output=True,
                   check=True, timeout=60)
    try:
        with pytest.raises(NotFound, match=f"{engine}: container '{name}' is not running"):
            resolve(name)
    finally:
        subprocess.run([*cli, "rm", "-f", name], capture_output=True, check=False, timeout=60)


def test_unknown_name_says_what_engines_answered(started: Callable[[str], int]) -> None:
    started("docker")
    with pytest.raises(NotFound) as info:
        resolve("cntr-test-no-such-container")
    msg = str(info.value)
    assert "docker: no such container" in msg and "podman:" in msg and "lxc:" in msg


def _podman_listing() -> tuple[list[bytes], list[bytes]]:
    """(container ids, names of containers and pods) as podman lists them."""
    def lines(*args: str) -> list[str]:
        out = subprocess.run(["podman", *args, "--no-trunc"], capture_output=True,
                             text=True, check=False, timeout=60)
        assert out.returncode == 0, out.stderr
        return [line for line in out.stdout.split("\n") if line]

    containers = [line.split() for line in lines("ps", "-a", "--format", "{{.ID}} {{.Names}}")]
    pods = lines("pod", "ls", "--format", "{{.Name}}")
    return (sorted(c[0].encode() for c in containers),
            sorted([c[1].encode() for c in containers] + [p.encode() for p in pods]))


@pytest.mark.podman
def test_podman_database_holds_what_podman_lists(started: Callable[[str], int]) -> None:
    started("podman")
    path = podman.db_path()
    assert path is not None, "root's podman database is where podman 4.3 keeps it"
    for _ in range(5):  # other tests may create or remove podman containers meanwhile
        before = bolt.read_bucket_keys(path, (b"ctr",), (b"name-registry",))
        listed = _podman_listing()
        if before == bolt.read_bucket_keys(path, (b"ctr",), (b"name-registry",)):
            break
    assert tuple(before) == listed


@pytest.mark.podman
def test_podman_is_not_run_for_a_name_it_does_not_know(started: Callable[[str], int],
                                                       tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    pid = started("podman")
    real = shutil.which("podman")
    assert real is not None
    log = tmp_path / "podman.log"
    wrapper = tmp_path / "bin" / "podman"
    wrapper.parent.mkdir()
    wrapper.write_text(f'#!/bin/sh\necho "$*" >> {log}\nexec {real} "$@"\n')
    wrapper.chmod(0o755)
    monkeypatch.setenv("PATH", f"{wrapper.parent}:{os.environ.get('PATH', '')}")
    # No API socket: the path of a machine where `podman system service` does not run.
    eng = podman.PodmanEngine(socket_path=str(tmp_path / "none.sock"))
    assert eng.lookup("cntr-test-no-such-container") == []
    assert eng.reason == "no such container"
    assert not log.exists()
    (m,) = eng.lookup("cntr-test-podman")
    assert (m.engine, m.name, m.pid) == ("podman", "cntr-test-podman", pid)
    assert log.read_text().split("\n")[0] == "inspect --type container cntr-test-podman"
