"""The container shapes met in the field, each attached to for real (issue 11).

Docker containers run as a non-root user, without capabilities, privileged, read-only,
with ``--init``, in the host's pid or net namespace, with no_new_privs, and distroless (one
static binary: no /etc, no shell, no /tmp); a chroot-style container and a sandboxed
process attached by pid, neither with a /proc, /dev or /sys of its own; and rootless podman
of another user (a user with subordinate ids running ``podman run`` itself), resolved by
name.

For each: attach (hostname, a host tool), ``cntr exec`` from the host and inside a
session, the session's identity against the container process's (ids, groups,
no_new_privs, time namespace, all five capability sets) and nothing left behind.
"""

from __future__ import annotations

import json
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from cntr.linux import caps
from tests.conftest import CNTR, REPO, Container, engine_container, run_cntr
from tests.integration.test_attach import mount_points, ns_pid
from tests.integration.test_attach_plan import planned_and_done

pytestmark = [pytest.mark.root, pytest.mark.fuse]

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
PODMAN = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
ULIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]
IMAGE = "cntr-busybox:test"
STATE = Path("/var/lib/cntr-shapes")
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
ROOTLESS_USER = "cntr-shapes"
CNTR_BIN = os.path.join(os.path.dirname(sys.executable), "cntr")
RUN_USER_MADE: list[bool] = []
"""Whether the fixture made /run/user (removed with the user)."""

DISTROLESS_C = r"""
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
    if (argc > 1 && strcmp(argv[1], "hello") == 0) {
        printf("hello from %s\n", getenv("CNTR_SHAPE"));
        return 0;
    }
    for (;;) pause();
}
"""

DOCKER_SHAPES: dict[str, list[str]] = {
    "user": ["--user", "1000:1000"],
    "cap-drop-all": ["--cap-drop", "ALL"],
    # `--privileged` itself cannot start here: runc fails "unable to apply caps" because
    # root on this kind of machine lacks CAP_SYS_RESOURCE, and docker ignores --cap-drop
    # with --privileged. What it gives otherwise, minus that one capability:
    "privileged": ["--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE", "--security-opt",
                   "seccomp=unconfined", "--security-opt", "systempaths=unconfined",
                   "--device-cgroup-rule", "a *:* rwm"],
    "read-only": ["--read-only"],
    "init": ["--init"],
    "pid-host": ["--pid=host"],
    "network-host": ["--network=host"],
    "no-new-privileges": ["--security-opt", "no-new-privileges"],
    "distroless": [],
}
SHAPES = [*DOCKER_SHAPES, "chroot", "sandbox", "rootless-podman"]
FRESH = ("chroot", "sandbox")
"""Shapes without a /proc (and /dev, /sys) of their own: the session gets fresh ones."""


@dataclass
class Shape:
    """A running container of one shape and what a user expects of it."""

    name: str
    c: Container
    exec_cmd: list[str]
    """a command of the container, for ``cntr exec``."""
    exec_out: bytes
    """its output."""
    host_uid: int = 0
    """the host uid of the container's root (rootless podman: the user's)."""
    cleanup: list[list[str]] = field(default_factory=list)
    pids: list[int] = field(default_factory=list)
    """processes the fixture started itself (killed at teardown)."""
    launcher: subprocess.Popen[bytes] | None = None
    """the fixture's child that started them (waited for at teardown)."""


def _run(*argv: str, user: str | None = None) -> str:
    """Run ``argv`` (as ``user``, with its home and runtime directory); its stdout."""
    cwd = None
    if user is not None:
        entry = pwd.getpwnam(user)
        cwd = entry.pw_dir
        argv = ("runuser", "-u", user, "--", "env", f"HOME={entry.pw_dir}",
                f"XDG_RUNTIME_DIR=/run/user/{entry.pw_uid}", *argv)
    out = subprocess.run(argv, capture_output=True, text=True, timeout=300, check=False,
                         cwd=cwd)
    if out.returncode != 0:
        raise AssertionError(f"{' '.join(argv)}: {out.stderr.strip()[-800:]}")
    return out.stdout


def _wait_for(what: str, fn: Callable[[], int], timeout: float = 30) -> int:
    """Poll ``fn`` until it returns a pid."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := fn():
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} did not start")


def _busybox_out(name: str) -> bytes:
    return f"{name}\nID=busybox\nNAME=\"cntr busybox\"\n".encode()


def _busybox_cmd() -> list[str]:
    return ["/bin/sh", "-c", 'echo "$CNTR_SHAPE"; cat /usr/lib/os-release']


def _distroless_image() -> str:
    image = "cntr-shapes-distroless:test"  # removed with its container (_docker_shape)
    if subprocess.run([DOCKER, "image", "inspect", image], capture_output=True,
                      check=False).returncode == 0:
        return image
    work = STATE / "distroless"
    shutil.rmtree(work, ignore_errors=True)
    (work / "root").mkdir(parents=True)
    (work / "app.c").write_text(DISTROLESS_C)
    _run("gcc", "-static", "-O2", "-o", str(work / "root/app"), str(work / "app.c"))
    _run("tar", "-C", str(work / "root"), "-cf", str(work / "image.tar"), "app")
    _run(DOCKER, "import", "--change", 'CMD ["/app"]', str(work / "image.tar"), image)
    shutil.rmtree(work)
    return image


def _docker_shape(name: str, cleanup: list[list[str]]) -> Shape:
    """Start the docker container of shape ``name``; ``cleanup`` gets what removes it
    (filled before anything is started, so a failure leaves nothing)."""
    engine_container("docker")  # dockerd runs and the busybox image exists
    cname = f"cntr-shapes-{name}"
    cleanup.append([DOCKER, "rm", "-f", cname])
    if name == "distroless":
        cleanup.append([DOCKER, "rmi", "-f", "cntr-shapes-distroless:test"])
    subprocess.run([DOCKER, "rm", "-f", cname], capture_output=True, check=False)
    opts = DOCKER_SHAPES[name]
    net = [] if "--network=host" in opts else ["--network", "none"]
    if name == "distroless":
        image, cmd = _distroless_image(), ["/app"]
        exec_cmd, exec_out = ["/app", "hello"], b"hello from distroless\n"
    else:
        image, cmd = IMAGE, ["/bin/sleep", "100000"]
        exec_cmd, exec_out = _busybox_cmd(), _busybox_out(name)
    _run(DOCKER, "run", "-d", "--name", cname, *net, "--hostname", cname,
         "-e", f"CNTR_SHAPE={name}", *ULIMITS, *opts, image, *cmd)
    pid = int(_run(DOCKER, "inspect", "-f", "{{.State.Pid}}", cname))
    if name == "distroless":  # what docker adds (/dev, /proc, /sys, /etc/hosts...) aside
        root = Path(f"/proc/{pid}/root")
        assert [p.exists() for p in (root / "bin", root / "tmp", root / "etc/passwd")] == [
            False, False, False]
    return Shape(name, Container("docker", cname, pid, cname, ("CNTR_SHAPE", name)),
                 exec_cmd, exec_out, cleanup=cleanup)


def _rootfs() -> Path:
    root = STATE / "rootfs"
    _run("sh", str(REPO / "scripts/busybox-rootfs"), str(root))
    return root


def _child_with_root(parent: int, root: str, comm: str) -> int:
    """The process below ``parent`` whose root is ``root`` and command ``comm``, or 0."""
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if (os.readlink(f"/proc/{entry}/root") == root
                    and Path(f"/proc/{entry}/comm").read_text().strip() == comm
                    and _has_ancestor(int(entry), parent)):
                return int(entry)
        except OSError:
            continue
    return 0


def _has_ancestor(pid: int, ancestor: int) -> bool:
    while pid > 1:
        if pid == ancestor:
            return True
        try:
            pid = int(Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[1])
        except OSError:
            return False
    return False


def _unshared_shape(name: str) -> Shape:
    """chroot: unshare + chroot of a busybox root, no /proc, /dev, /sys mounted in it;
    sandbox: a process in new pid, net, uts and ipc namespaces that kept the host's mount
    namespace (its /proc shows the host's pid namespace)."""
    hostname = f"cntr-shapes-{name}"
    env = ["/usr/bin/env", "-i", f"PATH={PATH}", f"CNTR_SHAPE={name}"]
    if name == "chroot":
        root = str(_rootfs())
        target = f"chroot {root} /bin/env -i PATH={PATH} CNTR_SHAPE={name} /bin/sleep 100000"
        # and a time namespace of its own, so the session's joining it shows
        mnt = ["--mount", "--propagation", "private", "--time", "--boottime", "86400"]
    else:
        root, mnt = "/", []
        target = " ".join([*env, "/bin/sleep", "100000"])
    launcher = subprocess.Popen(
        ["setsid", "unshare", "--fork", "--pid", "--uts", "--ipc", "--net", *mnt,
         "/bin/sh", "-c", f"hostname {hostname} && exec {target}"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        pid = _wait_for(name, lambda: _child_with_root(launcher.pid, root, "sleep"))
    except BaseException:
        launcher.kill()  # (unshare --fork: its child, pid 1 of the namespace, dies too)
        launcher.wait(timeout=60)
        raise
    if name == "chroot":
        exec_out = _busybox_out(name)
    else:
        exec_out = f"{name}\n".encode() + Path("/usr/lib/os-release").read_bytes()
    return Shape(name, Container(name, str(pid), pid, hostname, ("CNTR_SHAPE", name)),
                 _busybox_cmd(), exec_out, pids=[pid, launcher.pid], launcher=launcher)


def _id_range(path: str, user: str) -> tuple[int, int] | None:
    for line in Path(path).read_text().splitlines():
        parts = line.split(":")
        if len(parts) == 3 and parts[0] == user:
            return int(parts[1]), int(parts[2])
    return None


def _remove_user() -> None:
    try:
        uid = pwd.getpwnam(ROOTLESS_USER).pw_uid
    except KeyError:
        return
    # Processes the user's podman left (its pause process, conmon): ours, ended by pid.
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                if os.stat(f"/proc/{entry}").st_uid == uid:
                    os.kill(int(entry), signal.SIGKILL)
            except OSError:
                continue
    subprocess.run(["userdel", "-r", "-f", ROOTLESS_USER], capture_output=True, check=False)
    shutil.rmtree(f"/run/user/{uid}", ignore_errors=True)
    if RUN_USER_MADE:
        os.rmdir("/run/user")
        RUN_USER_MADE.clear()
    for path in ("/etc/subuid", "/etc/subgid"):
        lines = Path(path).read_text().splitlines(keepends=True)
        Path(path).write_text("".join(ln for ln in lines
                                      if not ln.startswith(f"{ROOTLESS_USER}:")))


def _rootless_shape() -> Shape:
    """A user with subordinate ids runs ``podman run`` itself (runc, cgroupfs, no network,
    its own store in its home)."""
    engine_container("docker")  # the busybox root's tarball exists (scripts/engines)
    _remove_user()
    try:
        return _start_rootless()
    except BaseException:
        _remove_user()  # its processes, the container among them, and its store
        raise


def _start_rootless() -> Shape:
    name = "rootless-podman"
    _run("useradd", "-m", "-s", "/bin/sh", ROOTLESS_USER)
    user = pwd.getpwnam(ROOTLESS_USER)
    for path in ("/etc/subuid", "/etc/subgid"):  # useradd adds a range when configured to
        if _id_range(path, ROOTLESS_USER) is None:
            with open(path, "a") as f:
                f.write(f"{ROOTLESS_USER}:20000000:65536\n")
    if not os.path.isdir("/run/user"):  # no logind here: made for the user, removed after
        os.mkdir("/run/user", 0o755)
        RUN_USER_MADE.append(True)
    os.makedirs(f"/run/user/{user.pw_uid}", mode=0o700, exist_ok=True)
    os.chown(f"/run/user/{user.pw_uid}", user.pw_uid, user.pw_gid)
    tar = Path(user.pw_dir) / "rootfs.tar"
    shutil.copy("/var/lib/cntr-test/rootfs.tar", tar)
    os.chown(tar, user.pw_uid, user.pw_gid)
    cname = f"cntr-shapes-{name}"
    _run(*PODMAN, "import", "-q", str(tar), "localhost/cntr-busybox:test", user=ROOTLESS_USER)
    _run(*PODMAN, "run", "-d", "--name", cname, "--network", "none", "--hostname", cname,
         "-e", f"CNTR_SHAPE={name}", *ULIMITS, "localhost/cntr-busybox:test",
         "/bin/sleep", "100000", user=ROOTLESS_USER)
    pid = int(_run("podman", "inspect", "-f", "{{.State.Pid}}", cname, user=ROOTLESS_USER))
    return Shape(name, Container("podman", cname, pid, cname, ("CNTR_SHAPE", name)),
                 _busybox_cmd(), _busybox_out(name), host_uid=user.pw_uid,
                 cleanup=[["runuser", "-u", ROOTLESS_USER, "--", "env",
                           f"HOME={user.pw_dir}", f"XDG_RUNTIME_DIR=/run/user/{user.pw_uid}",
                           *PODMAN, "rm", "-f", "-t", "0", cname]])


def _stop(shape: Shape) -> None:
    for argv in shape.cleanup:
        subprocess.run(argv, capture_output=True, timeout=120, check=False,
                       cwd="/" if argv[0] != "runuser" else pwd.getpwnam(ROOTLESS_USER).pw_dir)
    for pid in shape.pids:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            continue
    if shape.launcher is not None:
        shape.launcher.wait(timeout=60)
    if shape.name == "rootless-podman":
        _remove_user()


@pytest.fixture(scope="module", params=SHAPES)
def shape(request: pytest.FixtureRequest) -> Iterator[Shape]:
    name: str = request.param
    if name in DOCKER_SHAPES:
        cleanup: list[list[str]] = []
        try:
            s = _docker_shape(name, cleanup)
        except BaseException:
            _stop(Shape(name, Container("docker", "", 0, "", ("", "")), [], b"",
                        cleanup=cleanup))
            raise
    elif name in FRESH:
        s = _unshared_shape(name)
    else:
        s = _rootless_shape()
    try:
        yield s
    finally:
        _stop(s)


def attach(s: Shape, script: str) -> subprocess.CompletedProcess[bytes]:
    return run_cntr("attach", s.c.ident, "--", "/bin/sh", "-c", script)


UNGUARDED = re.compile(
    rb"cntr: warning: container .+ holds cap_sys_ptrace: its processes can trace the "
    rb"session's processes and read their memory\n")
"""The one line cntr prints for a container whose processes may trace the session."""


def quiet(stderr: bytes, s: Shape) -> bool:
    """Whether a session's stderr is what cntr prints for a session that went well:
    nothing, or for a container holding CAP_SYS_PTRACE the warning that no guard protects
    the session."""
    bounding = int(_status(Path(f"/proc/{s.c.pid}/status").read_text())["CapBnd"])
    if bounding >> caps.SYS_PTRACE & 1:
        return UNGUARDED.fullmatch(stderr) is not None
    return stderr == b""


def ok(out: subprocess.CompletedProcess[bytes], s: Shape) -> str:
    """The output of a session that succeeded and was `quiet`."""
    assert out.returncode == 0, out.stderr.decode()
    assert quiet(out.stderr, s), out.stderr
    return out.stdout.decode()


# ----------------------------------------------------------------------------- attach, exec


def test_attach_runs_a_host_tool(shape: Shape) -> None:
    out = ok(attach(shape, 'hostname; python3 -c "print(6 * 7)"; echo "$CNTR_SHAPE"'), shape)
    assert out.split("\n") == [shape.c.hostname, "42", shape.name, ""]


def test_exec_from_the_host(shape: Shape) -> None:
    out = run_cntr("exec", shape.c.ident, "--", *shape.exec_cmd)
    assert (out.returncode, out.stdout) == (0, shape.exec_out), out.stderr
    assert quiet(out.stderr, shape), out.stderr


def _holds(pid: int, cap: int) -> bool:
    return bool(int(_status(Path(f"/proc/{pid}/status").read_text())["CapEff"]) >> cap & 1)


def _inner_id(pid: int, kind: str, outer: int) -> int:
    """The id in the user namespace of ``pid`` of the host id ``outer``."""
    for line in Path(f"/proc/{pid}/{kind}_map").read_text().splitlines():
        first, outside, count = (int(x) for x in line.split())
        if outside <= outer < outside + count:
            return first + outer - outside
    raise AssertionError(f"{kind} {outer} is not mapped in {pid}")


def _others_may_run(path: str) -> bool:
    """Whether a user who owns nothing on the path may execute ``path``."""
    parts = Path(path).parents
    return os.stat(path).st_mode & 0o001 != 0 and all(
        os.stat(p).st_mode & 0o001 for p in parts)


def test_exec_inside_a_session(shape: Shape) -> None:
    argv = " ".join(f"'{a}'" for a in shape.exec_cmd)
    # This checkout's cntr, by its path: another one may be installed on the host's PATH.
    out = attach(shape, f"{CNTR_BIN} exec {argv}")
    uid = int(str(_status(Path(f"/proc/{shape.c.pid}/status").read_text())["Uid"]).split()[0])
    python = os.path.realpath(sys.executable)
    runnable = _others_may_run(CNTR_BIN) and _others_may_run(python)
    if _inner_id(shape.c.pid, "uid", uid) != 0 and not runnable:
        # cntr's launcher or its interpreter lies where other users cannot reach it (a
        # checkout or a pyenv under /root): the shell says so, naming the launcher.
        assert (out.returncode, out.stdout, out.stderr) == (
            126, b"", f"/bin/sh: 1: {CNTR_BIN}: Permission denied\n".encode())
    elif _holds(shape.c.pid, 18):  # CAP_SYS_CHROOT
        assert (out.returncode, out.stdout) == (0, shape.exec_out), out.stderr
        assert quiet(out.stderr, shape), out.stderr
    else:  # the container could not chroot either: the documented refusal
        assert (out.returncode, out.stdout) == (6, b"")
        assert out.stderr.decode() == (
            "cntr: exec: chroot(/var/lib/cntr): the session lacks CAP_SYS_CHROOT (the "
            "container's capabilities do not include it)\n")


# ----------------------------------------------------------------------------- identity

IDENTITY = ("Uid", "Gid", "Groups", "NoNewPrivs", "CapInh", "CapPrm", "CapEff", "CapBnd",
            "CapAmb")


def _status(text: str) -> dict[str, int | str]:
    out: dict[str, int | str] = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in IDENTITY:
            out[key] = int(value.strip(), 16) if key.startswith("Cap") else " ".join(
                value.split())
    return out


def expected_identity(container: dict[str, int | str]) -> dict[str, int | str]:
    """The container process's identity as the session must have it: the same, with the
    guard capability of issue 19 (``caps.guarded_sets``)."""
    want = dict(container)
    uid = int(str(container["Uid"]).split()[0])
    sets = caps.guarded_sets(*(int(container[k]) for k in ("CapBnd", "CapEff", "CapPrm",
                                                           "CapInh", "CapAmb")), uid=uid)
    for key, value in zip(("CapBnd", "CapEff", "CapPrm", "CapInh", "CapAmb"), sets,
                          strict=True):
        want[key] = value
    return want


def test_identity_is_the_containers(shape: Shape) -> None:
    """ids, groups, no_new_privs, all five capability sets and the time namespace of a
    session process against the container's, both read in the session (the same user
    namespace's view)."""
    nspid = ns_pid(shape.c.pid)
    out = ok(attach(shape, f"cat /proc/self/status; echo ===; cat /proc/{nspid}/status; "
                           "echo ===; readlink /proc/self/ns/time"), shape)
    mine, theirs, time_ns = out.split("===\n")
    assert time_ns == os.readlink(f"/proc/{shape.c.pid}/ns/time") + "\n"
    if shape.name == "chroot":  # the one shape in a time namespace of its own
        assert time_ns != os.readlink("/proc/self/ns/time") + "\n"
    container = _status(theirs)
    if shape.host_uid == 0:  # rootless: the host sees the user's ids, the session its own
        assert container == _status(Path(f"/proc/{shape.c.pid}/status").read_text())
    assert _status(mine) == expected_identity(container)


# ----------------------------------------------------------------------------- leftovers


def container_processes(c: Container) -> list[str]:
    """The processes of the container's pid namespace (of its cgroup when that namespace is
    the host's) as ``nspid state comm``."""
    pid_ns = os.readlink(f"/proc/{c.pid}/ns/pid")
    by_cgroup = pid_ns == os.readlink("/proc/self/ns/pid")
    cgroup = Path(f"/proc/{c.pid}/cgroup").read_text()
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if by_cgroup:
                if Path(f"/proc/{entry}/cgroup").read_text() != cgroup:
                    continue
            elif os.readlink(f"/proc/{entry}/ns/pid") != pid_ns:
                continue
            stat = Path(f"/proc/{entry}/stat").read_text()
            comm = stat[stat.index("(") + 1:stat.rindex(")")]
            state = stat.rsplit(")", 1)[1].split()[0]
            found.append(f"{ns_pid(int(entry))} {state} {comm}")
        except (OSError, AssertionError):
            continue
    return sorted(found)


def snapshot(c: Container) -> dict[str, object]:
    root = os.readlink(f"/proc/{c.pid}/root")
    tmp = Path(f"/proc/{c.pid}/root/tmp")

    def ours(m: str) -> bool:
        # Other developers' sessions and mounts come and go on this machine: only what a
        # session of this container could leave is compared.
        point = m.split(maxsplit=1)[0]
        return (point == "/var/lib/cntr" or point.startswith("/var/lib/cntr/")
                or (root != "/" and point.startswith(root + "/")))

    shared = os.readlink(f"/proc/{c.pid}/ns/mnt") == os.readlink("/proc/self/ns/mnt")
    return {
        "host mounts": [m for m in mount_points("self") if ours(m)],
        "container mounts": [m for m in mount_points(c.pid) if not shared or ours(m)],
        "container processes": container_processes(c),
        # (a sandbox in the host's mount namespace has the host's /tmp)
        "container tmp": sorted(os.listdir(tmp)) if tmp.is_dir() and root != "/" else None,
        "base dir": sorted(os.listdir("/var/lib/cntr")),
        # (the host's /tmp is left out: other developers' tests make cntr-* files there)
    }


def descendants(pid: int) -> list[tuple[int, str]]:
    """``pid`` and every process below it, with their start times."""
    out: list[tuple[int, str]] = []
    todo = [pid]
    while todo:
        p = todo.pop()
        try:
            out.append((p, Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()[19]))
            for task in os.listdir(f"/proc/{p}/task"):
                todo += [int(x) for x in Path(f"/proc/{p}/task/{task}/children")
                         .read_text().split()]
        except OSError:
            continue
    return out


def alive(procs: list[tuple[int, str]]) -> list[int]:
    left = []
    for pid, start in procs:
        try:
            stat = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if stat[19] == start:
            left.append(pid)
    return left


def test_nothing_left_behind(shape: Shape) -> None:
    before = snapshot(shape.c)
    with subprocess.Popen(
        [*CNTR, "attach", shape.c.ident, "--", "/bin/sh", "-c",
         "echo x > /dev/null; cntr exec true 2>/dev/null; echo ready; read line; echo done"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"ready\n"
        during = snapshot(shape.c)
        session = descendants(proc.pid)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.stdout.read() == b"done\n"
        assert proc.wait(timeout=60) == 0
    assert during["container mounts"] == before["container mounts"]
    assert during["host mounts"] == before["host mounts"]
    # The session's processes: cntr, serve-fs, the setup child, the shell.
    assert len(session) >= 4, session
    deadline = time.monotonic() + 30
    while alive(session) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert alive(session) == []
    assert snapshot(shape.c) == before


# ----------------------------------------------------------------------------- ids on the host


def _host_id(pid: int, kind: str, inner: int) -> int:
    """The host id of ``inner`` in the user namespace of ``pid`` (``kind``: uid or gid)."""
    for line in Path(f"/proc/{pid}/{kind}_map").read_text().splitlines():
        first, outside, count = (int(x) for x in line.split())
        if first <= inner < first + count:
            return outside + inner - first
    raise AssertionError(f"{kind} {inner} is not mapped in {pid}")


def test_files_created_on_the_host_carry_the_containers_ids(shape: Shape) -> None:
    """What the session writes on the host belongs to the container's ids as the host maps
    them: rootless podman's root is the user, its uid 1 the user's first subordinate id."""
    files = [Path(f"/tmp/cntr-shapes-{shape.name}-{n}") for n in (0, 1)]
    for f in files:
        f.unlink(missing_ok=True)
    try:
        out = ok(attach(shape, f"id -u; id -g; echo x > {files[0]}; echo y > {files[1]}; "
                               f"chown 1:1 {files[1]} 2>/dev/null && echo chowned; true"), shape)
        uid, gid, *rest = out.split()
        pid = shape.c.pid
        owner = (_host_id(pid, "uid", int(uid)), _host_id(pid, "gid", int(gid)))
        chowned = _holds(pid, 0)  # CAP_CHOWN
        assert rest == (["chowned"] if chowned else [])
        other = (_host_id(pid, "uid", 1), _host_id(pid, "gid", 1)) if chowned else owner
        assert [(f.stat().st_uid, f.stat().st_gid) for f in files] == [owner, other]
        if shape.name == "rootless-podman":
            user = pwd.getpwnam(ROOTLESS_USER)
            sub_uid = _id_range("/etc/subuid", ROOTLESS_USER)
            sub_gid = _id_range("/etc/subgid", ROOTLESS_USER)
            assert sub_uid is not None and sub_gid is not None
            assert [owner, other] == [(user.pw_uid, user.pw_gid), (sub_uid[0], sub_gid[0])]
    finally:
        for f in files:
            f.unlink(missing_ok=True)


def test_resolved_by_name_or_pid(shape: Shape) -> None:
    """Rootless podman of another user is found through its conmon."""
    out = run_cntr("resolve", shape.c.ident, "--format", "json")
    assert out.returncode == 0, out.stderr.decode()
    record = json.loads(out.stdout)
    engine = {"docker": "docker", "podman": "podman"}.get(shape.c.engine, "process_id")
    name = shape.c.ident if engine != "process_id" else "sleep"
    assert (record["engine"], record["name"], record["pid"]) == (engine, name, shape.c.pid)


# ----------------------------------------------------------------------------- fresh /dev


def _interfaces(pid: int) -> list[str]:
    """The network interfaces of the process's net namespace, asked in it."""
    out = _run("nsenter", f"--net=/proc/{pid}/ns/net", "python3", "-c",
               "import socket; print(' '.join(sorted(n for _, n in socket.if_nameindex())))")
    return out.split()


PTY_PROBE = ("import os, pty; m, s = pty.openpty(); print(os.ttyname(s)); "
             "os.write(m, b'hi\\n'); print(os.read(s, 3))")


@pytest.mark.parametrize("name", FRESH)
def test_fresh_dev_proc_sys(name: str, request: pytest.FixtureRequest) -> None:
    """A container without /proc, /dev, /sys of its own: the session's /dev works, its
    /proc is the container's pid namespace, its /sys the container's net namespace, and
    nothing is mounted in the container or on the host."""
    s = _unshared_shape(name)
    request.addfinalizer(lambda: _stop(s))
    before = snapshot(s.c)
    script = ("echo x > /dev/null && echo null-ok; head -c 4 /dev/urandom | wc -c; "
              f'python3 -c "{PTY_PROBE}"; ls /sys/class/net | sort | tr "\\n" " "; echo; '
              "python3 -c 'import os; print(os.stat(\"/dev/null\").st_rdev == os.makedev(1, 3))';"
              "awk '{print $5, $(NF-2), $6}' /proc/self/mountinfo | "
              "grep -E '^/(dev|dev/pts|dev/shm|proc|proc/sys|sys) '; echo ===; "
              "ps -e -o pid=,comm=; echo ===; read line")
    with subprocess.Popen([*CNTR, "attach", s.c.ident, "--", "/bin/sh", "-c", script],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=REPO) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        lines = []
        while (line := proc.stdout.readline().decode()) != "===\n":
            assert line, proc.stderr.read() if proc.stderr else ""
            lines.append(line.rstrip("\n"))
        ps = []
        while (line := proc.stdout.readline().decode()) != "===\n":
            assert line
            ps.append(" ".join(line.split()))
        # While the session waits: the container's pid namespace seen from the host.
        seen = [" ".join(p.split()[::2]) for p in container_processes(s.c)]
        proc.stdin.write(b"\n")
        proc.stdin.close()
        assert proc.wait(timeout=60) == 0
        assert proc.stderr is not None and quiet(proc.stderr.read(), s)
    # chroot: the first pty of a devpts of its own; sandbox: the host's /dev it kept
    pts = r"/dev/pts/0" if name == "chroot" else r"/dev/pts/\d+"
    assert re.fullmatch(pts, lines[2]), lines
    assert lines[:2] + lines[3:5] == ["null-ok", "4", "b'hi\\n'",
                                      " ".join(_interfaces(s.c.pid)) + " "]
    assert lines[5] == "True"
    # Later mounts at one point hide earlier ones: the last of each is what shows.
    shown = {point: (kind, "ro" in opts.split(",")) for point, kind, opts in
             (line.split() for line in lines[6:])}
    want = {"/proc": ("proc", False), "/proc/sys": ("proc", True), "/sys": ("sysfs", True),
            "/dev/pts": ("devpts", False), "/dev/shm": ("tmpfs", False),
            "/dev": ("tmpfs" if name == "chroot" else "devtmpfs", False)}
    assert shown == want
    # ps lists exactly the container's processes: those the host saw, and ps itself.
    extra = sorted(set(ps) - set(seen))
    assert len(extra) == 1 and extra[0].endswith(" ps"), (ps, seen)
    assert sorted(set(seen) - set(ps)) == []
    assert "1 sleep" in ps
    deadline = time.monotonic() + 30
    while snapshot(s.c) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert snapshot(s.c) == before


def test_fresh_dev_needs_nothing_in_the_container() -> None:
    """The chroot container's own /dev, /proc, /sys stay empty directories."""
    root = _rootfs()
    assert [sorted(os.listdir(root / d)) for d in ("dev", "proc", "sys")] == [[], [], []]



@pytest.mark.parametrize("name", FRESH)
def test_dry_run_shows_the_fresh_mounts(name: str, request: pytest.FixtureRequest,
                                        tmp_path: Path) -> None:
    """``enter --dry-run`` plans the fresh mounts where enter makes them: /dev with the
    copies, /proc and /sys once the pid and net namespaces are joined; the session
    carries out exactly that plan."""
    s = _unshared_shape(name)
    request.addfinalizer(lambda: _stop(s))
    ctx = run_cntr("capture", s.c.ident).stdout
    out = run_cntr("enter", "--dry-run", "--format", "json", "--", "true", input=ctx)
    assert out.returncode == 0, out.stderr.decode()
    plan, done, code, err = planned_and_done(ctx, tmp_path / "log", "--", "true")
    assert (code, done) == (0, plan), err.decode()  # (it warns: the shape holds ptrace)
    assert json.loads(out.stdout) == plan
    steps = [(st["step"], st.get("target") or st.get("namespace")) for st in
             json.loads(out.stdout)]
    kernel = [st for st in steps if st[1] in ("/proc", "/dev", "/sys")]
    if name == "chroot":
        assert kernel == [("mount", "/dev"), ("mount", "/proc"), ("mount", "/sys")]
    else:  # the host's /dev and /sys are mounts of its own; a /sys of another net
        # namespace is only seen once it is joined: the plan says so
        assert kernel == [("bind", "/dev"), ("bind", "/sys"), ("mount", "/proc"),
                          ("mount", "/sys")]
        assert [st.get("if") for st in json.loads(out.stdout)
                if st["step"] == "mount" and st.get("target") == "/sys"] == [
            "the container's /sys shows another net namespace"]
    assert (steps.index(("setns", "net")) < steps.index(("setns", "pid"))
            < steps.index(("mount", "/proc")) < steps.index(("fork", None)))


@pytest.fixture(scope="module")
def never_reaps() -> Iterator[Container]:
    """A docker container whose pid 1 (/bin/sleep) never calls wait()."""
    engine_container("docker")
    name = "cntr-shapes-never-reaps"
    subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)
    _run(DOCKER, "run", "-d", "--name", name, "--network", "none", "--hostname", name,
         *ULIMITS, IMAGE, "/bin/sleep", "100000")
    pid = int(_run(DOCKER, "inspect", "-f", "{{.State.Pid}}", name))
    try:
        yield Container("docker", name, pid, name, ("CNTR_SHAPE", "never-reaps"))
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)


def test_many_short_sessions_leave_nothing(never_reaps: Container) -> None:
    """100 sessions in a row (issue 11), each running a command and a pipeline: the
    container's process table (zombies included), its mounts and the host's are as
    before."""
    before = snapshot(never_reaps)
    assert before["container processes"] == ["1 S sleep"]
    for i in range(100):
        out = run_cntr("attach", never_reaps.ident, "--", "/bin/sh", "-c",
                       f"echo {i} | cat > /dev/null; echo {i}")
        assert (out.returncode, out.stdout, out.stderr) == (0, f"{i}\n".encode(), b"")
    deadline = time.monotonic() + 30
    while snapshot(never_reaps) != before and time.monotonic() < deadline:
        time.sleep(0.05)
    assert snapshot(never_reaps) == before
