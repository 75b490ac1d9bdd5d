"""``cntr attach --tools SOURCE ID``: the session's ``/`` is SOURCE instead of the host's.

SOURCE here is a toolbox made by the test: a directory with a static busybox and a tool
of its own (``tools-only``), and a docker container made from the same tree.  Neither
has ``/var/lib/cntr``, ``/proc`` (the directory) or ``/etc`` (the directory), so the
session's mount points come from serve-fs's synthetic entries.  In each session a tool
only SOURCE has runs, a host-only one (mmdebstrap) is not there, the hostname,
namespaces and files are the target's, ``cntr exec`` runs in the target's root (with the
static busybox at ``/.cntr``: the toolbox has no cntr), and nothing is left in the
target, in SOURCE or on the host.
"""

from __future__ import annotations

import io
import json
import os
import shutil
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CNTR, REPO, Container, engine_container, run_cntr
from tests.integration.test_attach import mount_points

pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.engine, pytest.mark.docker]

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = ("sh", "ls", "cat", "hostname", "readlink", "echo", "test", "env", "sleep")

PROBE = (
    "tools-only; command -v mmdebstrap || echo no-mmdebstrap; hostname; echo $CNTR_TEST_VAR; "
    "for n in uts ipc net pid cgroup; do readlink /proc/self/ns/$n; done; cat /etc/hostname; "
    "test -x /var/lib/cntr/bin/busybox && echo container-root; "
    "cntr exec cat /etc/os-release; "
    "cntr exec sh -c 'command -v tools-only || echo no-tools-only'")


def expected(c: Container) -> str:
    ns = [os.readlink(f"/proc/{c.pid}/ns/{n}") for n in ("uts", "ipc", "net", "pid", "cgroup")]
    return "\n".join([
        "only-in-tools", "no-mmdebstrap", c.hostname, c.env_var[1], *ns, c.hostname,
        "container-root", "ID=busybox", 'NAME="cntr busybox"', "no-tools-only", ""])


def make_toolbox(root: Path) -> None:
    """A tools tree: a static busybox, a few applets, and a tool only it has."""
    (root / "bin").mkdir(parents=True)
    shutil.copy(BUSYBOX, root / "bin/busybox")
    for applet in APPLETS:
        (root / "bin" / applet).symlink_to("busybox")
    tool = root / "bin/tools-only"
    tool.write_text("#!/bin/sh\necho only-in-tools\n")
    tool.chmod(0o755)


def listing(root: Path | str) -> list[str]:
    """Every path below ``root`` (not following symlinks or other filesystems' mounts)."""
    out = []
    dev = os.lstat(root).st_dev
    for top, dirs, files in os.walk(root):
        rel = os.path.relpath(top, root)
        out += [os.path.join(rel, n) for n in sorted(dirs + files)]
        # /proc, /dev, /sys and bound files of a container are other filesystems
        dirs[:] = sorted(d for d in dirs if os.lstat(os.path.join(top, d)).st_dev == dev)
    return out


def cntr_host_mounts(*under: Path | str) -> list[str]:
    """The host's mounts a session could leave: on the base directory or below it, on or
    below ``under``, a FUSE root.  Not the whole table: on a shared machine it changes
    all the time (other developers' containers start and stop, their tests mount)."""
    out = []
    for line in mount_points("self"):
        where, fstype = line.split()[:2]
        if (where == "/" and fstype.startswith("fuse")) or any(
                where == str(u) or where.startswith(f"{u}/") for u in ("/var/lib/cntr", *under)):
            out.append(line)
    return out


def our_processes(marker: str) -> list[str]:
    """cntr processes (cntr, its serve-fs and setup child: forks with one command line)
    whose command line names ``marker``; other developers' sessions run at the same time."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:  # not a process, or gone
            continue
        if marker in cmd and " -m cntr " in f" {cmd}" and int(entry) != os.getpid():
            found.append(f"{entry}: {comm}: {cmd}")
    return found


def snapshot(target: Container, source: Path | str, source_pid: int | None,
             marker: str) -> dict[str, object]:
    state: dict[str, object] = {
        "host mounts": cntr_host_mounts(source),
        "target mounts": mount_points(target.pid),
        "target tmp": sorted(os.listdir(f"/proc/{target.pid}/root/tmp")),
        "source": listing(source),
        "host base dir": sorted(os.listdir("/var/lib/cntr")),
        "processes": our_processes(marker),
    }
    if source_pid is not None:
        state["source mounts"] = mount_points(source_pid)
    return state


def settled(before: dict[str, object], *args: object) -> dict[str, object]:
    deadline = time.monotonic() + 10
    while True:
        now = snapshot(*args)  # type: ignore[arg-type]  # snapshot's own arguments
        if now == before or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


@pytest.fixture(scope="module")
def tools_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("cntr-tools") / "toolbox"
    make_toolbox(root)
    return root


@pytest.fixture(scope="module")
def toolbox(tools_dir: Path) -> Iterator[tuple[str, int, Path]]:
    """A running docker container of the toolbox tree: (name, pid, its root as seen from
    the host)."""
    engine_container("docker")
    name = f"cntr-image-toolbox-{os.getpid()}"
    image = f"cntr-image-toolbox:{os.getpid()}"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add(tools_dir, arcname=".")
    subprocess.run([DOCKER, "import", "-", image], input=buf.getvalue(), check=True,
                   capture_output=True, timeout=120)
    try:
        subprocess.run([DOCKER, "run", "-d", "--name", name, "--network", "none",
                        "--ulimit", "nofile=1024:1024", image, "/bin/sleep", "100000"],
                       check=True, capture_output=True, timeout=120)
        pid = int(subprocess.run([DOCKER, "inspect", "-f", "{{.State.Pid}}", name],
                                 check=True, capture_output=True, text=True).stdout)
        yield name, pid, Path(f"/proc/{pid}/root")
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, timeout=120,
                       check=False)
        subprocess.run([DOCKER, "rmi", "-f", image], capture_output=True, timeout=120,
                       check=False)


@pytest.fixture(scope="module")
def target() -> Container:
    return engine_container("docker")


def test_session_from_a_directory(target: Container, tools_dir: Path) -> None:
    before = snapshot(target, tools_dir, None, str(tools_dir))
    with subprocess.Popen(
            [*CNTR, "attach", "--tools", str(tools_dir), target.ident, "--", "sh", "-c",
             PROBE + "; echo ready; read line; echo $line"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            cwd=REPO, text=True) as proc:
        assert proc.stdout is not None and proc.stderr is not None
        lines: list[str] = []
        while not lines or lines[-1] != "ready\n":
            lines.append(proc.stdout.readline())
            assert lines[-1], proc.stderr.read()
        # While it runs: cntr's processes (serve-fs among them) are seen, so their absence
        # after means something; the target's mount table and SOURCE are untouched.
        assert ": cntr-serve-fs: " in " ".join(our_processes(str(tools_dir)))
        assert mount_points(target.pid) == before["target mounts"]
        assert listing(tools_dir) == before["source"]
        out, err = proc.communicate("bye\n", timeout=60)
    assert (proc.returncode, err) == (0, "")
    assert "".join(lines) + out == expected(target) + "ready\nbye\n"
    assert settled(before, target, tools_dir, None, str(tools_dir)) == before


def test_session_from_a_relative_directory(target: Container, tools_dir: Path) -> None:
    out = subprocess.run([*CNTR, "attach", "--tools", "./toolbox", target.ident, "--",
                          "tools-only"], cwd=tools_dir.parent, capture_output=True,
                         timeout=60, env={**os.environ, "PYTHONPATH": str(REPO)})
    assert (out.returncode, out.stdout, out.stderr) == (0, b"only-in-tools\n", b"")


def test_session_from_a_toolbox_container(target: Container,
                                          toolbox: tuple[str, int, Path]) -> None:
    name, pid, root = toolbox
    source = f"docker:{name}"
    before = snapshot(target, root, pid, source)
    out = run_cntr("attach", "--tools", source, target.ident, "--", "sh", "-c", PROBE)
    assert (out.returncode, out.stderr.decode()) == (0, "")
    assert out.stdout.decode() == expected(target)
    # No base directory (nor anything else) was made in the toolbox; its mount namespace
    # is as it was.
    assert not (root / "var").exists()
    assert settled(before, target, root, pid, source) == before
    # Without a type, the name is resolved by every engine, as an ID is.
    out = run_cntr("attach", "--tools", name, target.ident, "--", "tools-only")
    assert (out.returncode, out.stdout, out.stderr) == (0, b"only-in-tools\n", b"")


def test_capture_records_and_dry_run_shows_the_tools(target: Container,
                                                    toolbox: tuple[str, int, Path]) -> None:
    name, pid, _ = toolbox
    cntr = " ".join(CNTR)
    out = subprocess.run(
        f"{cntr} resolve {target.ident} | {cntr} capture --tools docker:{name} --format json",
        shell=True, capture_output=True, cwd=REPO, timeout=60, check=True)
    record = json.loads(out.stdout)
    cid = subprocess.run([DOCKER, "inspect", "-f", "{{.Id}}", name], capture_output=True,
                         text=True, check=True).stdout.strip()
    start_time = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19])
    assert record["version"] == 2
    assert record["tools"] == {"source": f"docker:{name}", "root": f"/proc/{pid}/root",
                               "engine": "docker", "container_id": cid, "name": name,
                               "pid": pid, "start_time": start_time}
    plan = run_cntr("enter", "--dry-run", "--format", "json", input=out.stdout)
    assert plan.returncode == 0, plan.stderr.decode()
    serve = [s for s in json.loads(plan.stdout) if s["step"] == "serve-fs"]
    assert [(s["root"], s["tools"]) for s in serve] == [(f"/proc/{pid}/root", {
        "source": f"docker:{name}", "engine": "docker", "container_id": cid, "name": name,
        "pid": pid})]
    # A context without tools stays version 1, without the field.
    plain = subprocess.run(f"{cntr} resolve {target.ident} | {cntr} capture --format json",
                           shell=True, capture_output=True, cwd=REPO, timeout=60, check=True)
    assert "tools" not in json.loads(plain.stdout)
    assert json.loads(plain.stdout)["version"] == 1


def test_enter_with_tools_runs_the_pipeline(target: Container, tools_dir: Path) -> None:
    cntr = " ".join(CNTR)
    out = subprocess.run(
        f"{cntr} resolve {target.ident} | {cntr} capture | "
        f"{cntr} enter --tools {tools_dir} -- tools-only",
        shell=True, capture_output=True, cwd=REPO, timeout=60)
    assert (out.returncode, out.stdout, out.stderr) == (0, b"only-in-tools\n", b"")


@pytest.mark.parametrize(("source", "message"), [
    ("/nonexistent-cntr-tools", "--tools /nonexistent-cntr-tools: no such directory"),
    ("./README.md", "--tools ./README.md: not a directory"),
    ("docker:cntr-image-no-such",
     "--tools docker:cntr-image-no-such: no container 'cntr-image-no-such': docker: "
     "no such container"),
])
def test_bad_source_is_one_line(target: Container, source: str, message: str) -> None:
    before = our_processes(source)
    out = run_cntr("attach", "--tools", source, target.ident, "--", "true")
    assert (out.returncode, out.stdout) == (4, b"")
    assert out.stderr.decode() == f"cntr: attach: {message}\n"
    assert our_processes(source) == before == []


def test_stopped_source_container_is_one_line(target: Container) -> None:
    name = f"cntr-image-stopped-{os.getpid()}"
    subprocess.run([DOCKER, "create", "--name", name, "--network", "none",
                    "cntr-busybox:test", "/bin/true"], check=True, capture_output=True)
    try:
        out = run_cntr("attach", "--tools", f"docker:{name}", target.ident, "--", "true")
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)
    assert (out.returncode, out.stdout) == (4, b"")
    assert out.stderr.decode() == (
        f"cntr: attach: --tools docker:{name}: no container '{name}': docker: container "
        f"'{name}' is not running (status created)\n")


def test_tools_gone_since_capture(target: Container, tmp_path: Path) -> None:
    tools = tmp_path / "gone"
    make_toolbox(tools)
    cntr = " ".join(CNTR)
    ctx = tmp_path / "ctx"
    subprocess.run(f"{cntr} resolve {target.ident} | {cntr} capture --tools {tools} > {ctx}",
                   shell=True, check=True, cwd=REPO, timeout=60)
    shutil.rmtree(tools)
    out = run_cntr("enter", "--context", str(ctx), "--", "true")
    assert (out.returncode, out.stdout) == (4, b"")
    assert out.stderr.decode() == f"cntr: enter: --tools {tools}: no such directory\n"
