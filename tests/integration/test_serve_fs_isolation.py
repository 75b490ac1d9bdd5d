"""serve-fs's ``allowed_mnt_ns``: processes outside the session's mount namespace are refused.

A container process can reach the session's FUSE mount through ``/proc/<session pid>/root``,
``/cwd`` and ``/fd/N``.  Here a forked child plays the session: it mounts serve-fs (fd mode)
in a fresh mount namespace, and the test process (the host's namespace) plays the intruder.
The same scenario without ``allowed_mnt_ns`` shows that the intruder's paths do reach
serve-fs, so the refusals are the gate's doing.  `MountNsGate` is also tested alone
(verdict cache, pid reuse, bound).
"""

from __future__ import annotations

import errno
import json
import os
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import BinaryIO

import pytest

from cntr.fs.gate import MountNsGate
from tests.conftest import require
from tests.integration.fsutil import PYTHON, REPO

pytestmark = [pytest.mark.root]

# Run in a subprocess: open /dev/fuse, fork a child that mounts it in a fresh mount
# namespace (as enter's setup child does), serve it with serve_fs(fuse_fd=...,
# allowed_mnt_ns=<the child's namespace> or None).  The child reports on INFO_FD what it
# holds (its cwd is on the mount, one file and one directory descriptor are open), waits
# for a byte (or end-of-file) on GO_FD, reads again, reports, and exits, which ends serve_fs.
_SESSION_SCRIPT = r'''
import json, os, sys
from cntr.linux import syscalls as sc

src, gated, info_fd, go_fd = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
fuse_fd = os.open("/dev/fuse", os.O_RDWR)
mounted_r, mounted_w = os.pipe()
ready_r, ready_w = os.pipe()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        os.close(mounted_r); os.close(ready_w)
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        target = "/mnt" if os.path.isdir("/mnt") else "/tmp"
        sc.mount("tmpfs", target, "tmpfs", 0, "mode=755")
        mp = target + "/fs"
        os.mkdir(mp)
        fs = sc.fsopen("fuse")
        for key, value in (("source", "cntr"), ("fd", str(fuse_fd)), ("rootmode", "40000"),
                           ("user_id", "0"), ("group_id", "0")):
            sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, key, value)
        sc.fsconfig(fs, sc.FSCONFIG_SET_FLAG, "allow_other")
        sc.fsconfig(fs, sc.FSCONFIG_SET_FLAG, "default_permissions")
        sc.fsconfig(fs, sc.FSCONFIG_CMD_CREATE)
        mfd = sc.fsmount(fs)
        sc.move_mount(mfd, "", sc.AT_FDCWD, mp, sc.MOVE_MOUNT_F_EMPTY_PATH)
        os.close(mfd); os.close(fs); os.close(fuse_fd)
        os.write(mounted_w, b"M"); os.close(mounted_w)
        assert os.read(ready_r, 1) == b"R"
        os.chdir(mp)
        first = open("hello.txt").read()
        fd = os.open("hello.txt", os.O_RDONLY)
        dirfd = os.open("sub", os.O_RDONLY | os.O_DIRECTORY)
        info = {"pid": os.getpid(), "mp": mp, "fd": fd, "dirfd": dirfd, "read": first,
                "listdir": sorted(os.listdir("."))}
        os.write(info_fd, json.dumps(info).encode() + b"\n")
        os.read(go_fd, 1)
        after = {"read": open("hello.txt").read(), "held": os.pread(fd, 100, 0).decode(),
                 "listdir": sorted(os.listdir(".")), "sub": os.listdir("sub")}
        os.write(info_fd, json.dumps(after).encode() + b"\n")
        os.chdir("/")
        os.close(fd); os.close(dirfd)
        code = 0
    except BaseException as exc:
        os.write(info_fd, json.dumps({"error": repr(exc)}).encode() + b"\n")
    finally:
        os._exit(code)
os.close(mounted_w); os.close(ready_r); os.close(info_fd); os.close(go_fd)
assert os.read(mounted_r, 1) == b"M", "child did not mount"
ns = os.stat(f"/proc/{pid}/ns/mnt").st_ino
from cntr.stages.serve_fs import serve_fs
status = serve_fs(src, fuse_fd=fuse_fd, ready_fd=ready_w, allowed_mnt_ns=ns if gated else None)
child = os.waitpid(pid, 0)[1]
print(json.dumps({"status": status, "child": child}))
'''


class Session:
    """The child's report and a way to let it finish."""

    def __init__(self, proc: subprocess.Popen[bytes], info: object, go_w: int,
                 info_r: BinaryIO) -> None:
        self.proc = proc
        self.first: dict[str, object] = self._check(info)
        self._go_w = go_w
        self._info_r = info_r

    @staticmethod
    def _check(data: object) -> dict[str, object]:
        assert isinstance(data, dict), data
        assert "error" not in data, data
        return data

    @property
    def pid(self) -> int:
        pid = self.first["pid"]
        assert isinstance(pid, int)
        return pid

    def path(self, *parts: str) -> str:
        """A path into the mount as another process reaches it: /proc/PID/root/MP/..."""
        return os.path.join(f"/proc/{self.pid}/root{self.first['mp']}", *parts)

    def finish(self) -> dict[str, object]:
        """Let the child read again and exit; its second report."""
        os.write(self._go_w, b"G")
        line = self._info_r.readline()
        return self._check(json.loads(line))


@pytest.fixture(params=["wire", "libfuse"])
def session_factory(tmp_path: Path,
                    request: pytest.FixtureRequest) -> Iterator[Callable[[bool], Session]]:
    """Sessions on serve-fs's own dispatcher (wire; uring shares it) and on pyfuse3's
    libfuse session (its adapter checks the gate itself)."""
    src = tmp_path / "src"
    src.mkdir()
    (src / "hello.txt").write_text("hello from the host\n")
    (src / "never-looked-up.txt").write_text("secret\n")
    (src / "sub").mkdir()
    (src / "sub" / "inner").write_text("inner\n")
    started: list[tuple[subprocess.Popen[bytes], int, BinaryIO]] = []

    def start(gated: bool) -> Session:
        require(None if os.path.exists("/dev/fuse") else "needs /dev/fuse")
        info_r, info_w = os.pipe()
        go_r, go_w = os.pipe()
        proc = subprocess.Popen(
            [PYTHON, "-c", _SESSION_SCRIPT, str(src), "1" if gated else "0", str(info_w),
             str(go_r)],
            cwd=REPO, pass_fds=(info_w, go_r), stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL,
            env={**os.environ, "CNTR_SERVE_FS_LOOP": request.param})
        os.close(info_w)
        os.close(go_r)
        reader = os.fdopen(info_r, "rb")
        started.append((proc, go_w, reader))
        line = reader.readline()
        if not line:
            proc.wait(timeout=30)
            raise AssertionError(f"session failed: {proc.stderr.read()!r}"
                                 if proc.stderr else "session failed")
        return Session(proc, json.loads(line), go_w, reader)

    yield start
    for proc, go_w, reader in started:
        os.close(go_w)  # end-of-file lets a waiting child go on and exit
        try:
            out, errout = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, errout = proc.communicate()
        reader.close()
        assert proc.returncode == 0, errout.decode(errors="replace")[-2000:]
        result = json.loads(out.decode().strip().splitlines()[-1])
        assert result == {"status": 0, "child": 0}, (result, errout)
    assert (src / "never-created.txt").exists() is False


def _errno(fn: Callable[..., object], *args: object) -> int | None:
    try:
        fn(*args)
    except OSError as exc:
        return exc.errno
    return None


def _read(path: str) -> bytes:
    with open(path, "rb") as f:
        return f.read()


def _create(path: str) -> None:
    with open(path, "wb") as f:
        f.write(b"x")


@pytest.mark.fuse
def test_other_mount_namespaces_are_refused(session_factory: Callable[[bool], Session],
                                            tmp_path: Path) -> None:
    s = session_factory(True)
    assert s.first["read"] == "hello from the host\n"
    assert s.first["listdir"] == ["hello.txt", "never-looked-up.txt", "sub"]
    pid = s.pid
    fd, dirfd = s.first["fd"], s.first["dirfd"]
    attempts: dict[str, tuple[Callable[..., object], str]] = {
        # the child looked this name up: the dentry is cached, the open is not
        "root/ cached name": (_read, s.path("hello.txt")),
        "root/ new name": (_read, s.path("never-looked-up.txt")),
        "root/ list": (os.listdir, s.path()),
        "root/ subdir list": (os.listdir, s.path("sub")),
        "cwd/ read": (_read, f"/proc/{pid}/cwd/hello.txt"),
        "cwd/ list": (os.listdir, f"/proc/{pid}/cwd"),
        "cwd/ statfs": (os.statvfs, f"/proc/{pid}/cwd"),
        "cwd/ create": (_create, f"/proc/{pid}/cwd/never-created.txt"),
        "cwd/ unlink": (os.unlink, f"/proc/{pid}/cwd/hello.txt"),
        "cwd/ mkdir": (os.mkdir, f"/proc/{pid}/cwd/never-created.txt"),
        "fd/N file": (_read, f"/proc/{pid}/fd/{fd}"),
        "fd/N directory": (os.listdir, f"/proc/{pid}/fd/{dirfd}"),
    }
    got = {what: _errno(fn, arg) for what, (fn, arg) in attempts.items()}
    assert got == dict.fromkeys(attempts, errno.EACCES)
    # Another program sees a plain "Permission denied".
    res = subprocess.run(["cat", f"/proc/{pid}/cwd/hello.txt"], capture_output=True,
                         timeout=30, check=False)
    assert res.returncode != 0
    assert b"Permission denied" in res.stderr
    assert (tmp_path / "src" / "hello.txt").read_text() == "hello from the host\n"
    # The session itself is unaffected by the refusals (nothing negative was cached).
    after = s.finish()
    assert after["read"] == "hello from the host\n"
    assert after["held"] == "hello from the host\n"
    assert after["listdir"] == ["hello.txt", "never-looked-up.txt", "sub"]
    assert after["sub"] == ["inner"]


@pytest.mark.fuse
def test_without_the_gate_those_paths_reach_serve_fs(
        session_factory: Callable[[bool], Session]) -> None:
    """The control: the same paths work when ``allowed_mnt_ns`` is not given."""
    s = session_factory(False)
    pid = s.pid
    assert _read(s.path("never-looked-up.txt")) == b"secret\n"
    assert _read(f"/proc/{pid}/cwd/hello.txt") == b"hello from the host\n"
    assert _read(f"/proc/{pid}/fd/{s.first['fd']}") == b"hello from the host\n"
    assert os.listdir(f"/proc/{pid}/fd/{s.first['dirfd']}") == ["inner"]
    assert s.finish()["read"] == "hello from the host\n"


# --- the gate alone ------------------------------------------------------------------
def _host_ns() -> int:
    return os.stat("/proc/self/ns/mnt").st_ino


@pytest.fixture
def other_ns_process() -> Iterator[int]:
    """A process in a mount namespace of its own (it has unshared when this yields)."""
    proc = subprocess.Popen(["unshare", "-m", "sh", "-c", "echo ready; exec sleep 60"],
                            stdout=subprocess.PIPE, stdin=subprocess.DEVNULL)
    assert proc.stdout is not None
    assert proc.stdout.readline() == b"ready\n"
    try:
        yield proc.pid
    finally:
        proc.kill()
        proc.wait()
        proc.stdout.close()


def _refused(gate: MountNsGate, pid: int) -> bool:
    try:
        gate.check(pid)
    except PermissionError as exc:
        assert exc.errno == errno.EACCES
        return True
    return False


def _dead_pidfd() -> tuple[int, int]:
    """(pid, pidfd) of a process that has exited and been reaped."""
    proc = subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL)
    pidfd = os.pidfd_open(proc.pid)
    proc.kill()
    proc.wait()
    return proc.pid, pidfd


def test_gate_verdicts(other_ns_process: int) -> None:
    gate = MountNsGate(_host_ns())
    try:
        assert not _refused(gate, 0)  # the kernel's own requests
        assert not _refused(gate, os.getpid())
        assert not _refused(gate, os.getpid())  # cached
        # a live thread (FUSE requests carry thread ids)
        ready = threading.Event()
        done = threading.Event()
        live: list[int] = []

        def worker() -> None:
            live.append(threading.get_native_id())
            ready.set()
            done.wait(10)

        w = threading.Thread(target=worker)
        w.start()
        ready.wait(10)
        try:
            assert not _refused(gate, live[0])
        finally:
            done.set()
            w.join()
        assert _refused(gate, other_ns_process)
        assert _refused(gate, other_ns_process)  # cached
        dead_pid, pidfd = _dead_pidfd()
        os.close(pidfd)
        assert _refused(gate, dead_pid)
    finally:
        gate.close()


def test_gate_rejudges_a_reused_pid(other_ns_process: int) -> None:
    """A cached verdict whose process is gone is dropped, whichever way it went."""
    gate = MountNsGate(_host_ns())
    try:
        # other_ns_process "took over" the pid of an admitted process that exited
        _, dead = _dead_pidfd()
        gate._cache[other_ns_process] = (True, dead)  # simulate pid reuse
        assert _refused(gate, other_ns_process)
        # and a session process that got the pid of a refused one is admitted
        _, dead = _dead_pidfd()
        gate._cache[os.getpid()] = (False, dead)  # simulate pid reuse
        assert not _refused(gate, os.getpid())
    finally:
        gate.close()


def test_gate_is_bounded_and_closes_its_pidfds() -> None:
    before = len(os.listdir("/proc/self/fd"))
    gate = MountNsGate(_host_ns(), size=3)
    procs = [subprocess.Popen(["sleep", "60"], stdin=subprocess.DEVNULL) for _ in range(6)]
    try:
        for p in procs:
            assert not _refused(gate, p.pid)
        assert len(gate._cache) == 3  # the bound
        assert len(os.listdir("/proc/self/fd")) == before + 3
    finally:
        gate.close()
        for p in procs:
            p.kill()
            p.wait()
    assert len(os.listdir("/proc/self/fd")) == before
