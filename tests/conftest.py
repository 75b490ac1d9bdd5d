"""Markers decided by feature checks, shared fixtures, and the CI rule: no silent skips.

A test marked ``root``, ``fuse``, ``engine``, ``docker`` or ``podman`` (every marker
pyproject.toml declares has a check in `CHECKS`) is skipped with a precise reason when this
machine lacks what it needs, except when ``CI`` (or ``CNTR_MUST_WORK``) is set: then the
missing requirement is a failure, so CI can never pass by skipping (as bubblewrap's
BWRAP_MUST_WORK).  Tests skip only through `require`.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
CNTR = shlex.split(os.environ.get("CNTR_UNDER_TEST", "")) or [sys.executable, "-m", "cntr"]
"""How tests run cntr: this checkout, or CNTR_UNDER_TEST (e.g. /usr/bin/cntr of the .deb)."""
MUST_WORK = os.environ.get("CI", "").lower() in ("1", "true", "yes") or bool(
    os.environ.get("CNTR_MUST_WORK"))


def _root_missing() -> str | None:
    return None if os.geteuid() == 0 else "needs root"


def _fuse_missing() -> str | None:
    if os.geteuid() != 0:
        return "needs root"
    if not os.path.exists("/dev/fuse"):
        return "needs /dev/fuse"
    return None


def _tool_missing(*tools: str) -> str | None:
    for tool in tools:
        if shutil.which(tool) is None:
            return f"{tool} is not installed (scripts/setup --engines installs it)"
    return None


def _engine_missing() -> str | None:
    return _root_missing() or (None if (REPO / "scripts/engines").exists()
                               else "scripts/engines is missing")


def _docker_missing() -> str | None:
    return _engine_missing() or _tool_missing("dockerd", "docker")


def _podman_missing() -> str | None:
    return _engine_missing() or _tool_missing("podman")


CHECKS = {"root": _root_missing, "fuse": _fuse_missing, "engine": _engine_missing,
          "docker": _docker_missing, "podman": _podman_missing}
"""Every marker pyproject.toml declares, and what its tests need."""

#: fixtures that start an engine's test container: their tests get the engine's markers
ENGINE_FIXTURES = {"docker_container": "docker", "podman_container": "podman"}


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """A test that uses docker or podman carries the marker (so ``-m "not docker"`` and
    the checks below see it), whether it asks for the fixture or a ``container`` param."""
    for item in items:
        names = set(getattr(item, "fixturenames", ()))
        callspec = getattr(item, "callspec", None)
        param = callspec.params.get("container") if callspec is not None else None
        for fixture, engine in ENGINE_FIXTURES.items():
            if fixture in names or param == engine:
                item.add_marker(getattr(pytest.mark, engine))
                item.add_marker(pytest.mark.engine)


def pytest_runtest_setup(item: pytest.Item) -> None:
    for name, check in CHECKS.items():
        if item.get_closest_marker(name) is None:
            continue
        require(check())


def require(reason: str | None) -> None:
    """Skip (or, in CI, fail) when ``reason`` says something is missing."""
    if reason:
        if MUST_WORK:
            pytest.fail(f"{reason} (CI: a skip here would hide a failure)")
        pytest.skip(reason)


@dataclass(frozen=True)
class Container:
    """A running container the tests attach to."""

    engine: str
    """demo, docker, podman, ..."""
    ident: str
    """what a user types: a name, or the pid for the demo."""
    pid: int
    """host pid of its main process."""
    hostname: str
    env_var: tuple[str, str]
    """a variable set in the container's environment, and its value."""


def run_cntr(*args: str, input: bytes | None = None, timeout: float = 60,
             **kw: object) -> subprocess.CompletedProcess[bytes]:
    # **kw passes env and the like through; mypy cannot match it to run()'s overloads
    result: subprocess.CompletedProcess[bytes] = subprocess.run(  # type: ignore[call-overload]
        [*CNTR, *args], input=input, capture_output=True, timeout=timeout, cwd=REPO, **kw)
    return result


@pytest.fixture(scope="session")
def demo() -> Iterator[Container]:
    require(_root_missing())
    out = subprocess.run([REPO / "scripts/demo", "start"], capture_output=True, text=True,
                         timeout=60)
    if out.returncode != 0:
        pytest.fail(f"demo container did not start: {out.stderr}")
    pid = int(out.stdout.split()[-1])
    yield Container("demo", str(pid), pid, "cntr-demo", ("CNTR_DEMO", "hello"))
    subprocess.run([REPO / "scripts/demo", "stop"], timeout=60, check=False)


def engine_container(engine: str) -> Container:
    """Start ``engine`` and its test container through scripts/engines."""
    require(_engine_missing())
    if shutil.which({"docker": "dockerd"}.get(engine, engine)) is None and engine != "nspawn":
        require(f"{engine} is not installed (scripts/setup --engines installs it)")
    start = subprocess.run([REPO / "scripts/engines", "start", engine], capture_output=True,
                           text=True, timeout=600)
    if start.returncode != 0:
        require(f"{engine} did not start: {start.stderr.strip()[-500:]}")
    out = subprocess.run([REPO / "scripts/engines", "pid", engine], capture_output=True,
                         text=True, timeout=60)
    if out.returncode != 0:
        require(f"{engine} test container has no pid: {out.stderr.strip()}")
    pid = int(out.stdout.split()[-1])
    return Container(engine, f"cntr-test-{engine}", pid, f"cntr-{engine}",
                     ("CNTR_TEST_VAR", engine))


@pytest.fixture(scope="session")
def docker_container() -> Container:
    return engine_container("docker")


@pytest.fixture(scope="session")
def podman_container() -> Container:
    return engine_container("podman")


@pytest.fixture(params=["demo", "docker", "podman"])
def container(request: pytest.FixtureRequest) -> Container:
    """Each kind of container issue 2 names: the demo, docker and podman."""
    name = {"demo": "demo", "docker": "docker_container", "podman": "podman_container"}
    c: Container = request.getfixturevalue(name[request.param])
    return c
