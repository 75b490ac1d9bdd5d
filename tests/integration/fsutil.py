"""Helpers to run serve-fs in a subprocess for tests: mount, wait, always unmount.

`serve_fs_mount` starts ``python -m cntr.stages.serve_fs --ready-fd=N ROOT MOUNTPOINT``, waits
for the ready byte (and the mount in /proc/self/mountinfo), yields a `Served`, and on exit
unmounts lazily and kills the server if it does not end by itself (pyfuse3 ``test/util.py``
does the same).
"""

from __future__ import annotations

import contextlib
import os
import select
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tests.conftest import require

REPO = Path(__file__).resolve().parent.parent.parent
PYTHON = sys.executable


ENABLE_URING = Path("/sys/module/fuse/parameters/enable_uring")


@contextlib.contextmanager
def fuse_uring_enabled() -> Iterator[None]:
    """The kernel offers FUSE over io_uring while this lasts (the module parameter is put
    back as it was)."""
    require(None if ENABLE_URING.exists() else "this kernel has no FUSE over io_uring")
    old = ENABLE_URING.read_text().strip()
    ENABLE_URING.write_text("Y")
    try:
        yield
    finally:
        ENABLE_URING.write_text(old)


def io_urings(pid: int) -> int:
    """How many io_uring descriptors process ``pid`` has open (Python's mmap keeps a
    duplicate of the descriptor it maps: several per ring)."""
    fds = Path(f"/proc/{pid}/fd")
    return sum(1 for fd in fds.iterdir() if os.readlink(fd) == "anon_inode:[io_uring]")


@dataclass
class Served:
    """A running serve-fs."""

    mountpoint: Path
    """where the tree is served."""
    proc: subprocess.Popen[bytes]
    """the serve-fs process."""
    log: Path
    """its stderr."""

    @property
    def pid(self) -> int:
        return self.proc.pid

    def fd_count(self) -> int:
        """Descriptors the server holds now."""
        return len(os.listdir(f"/proc/{self.pid}/fd"))

    def rss_kib(self) -> int:
        """Resident memory of the server (VmRSS, KiB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
        raise AssertionError("no VmRSS")

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")


def is_mounted(path: str | Path) -> bool:
    """Whether ``path`` is a mount point in our mount namespace."""
    target = os.path.realpath(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


def unmount(path: str | Path) -> None:
    """Lazy unmount, ignoring "not mounted"."""
    if not is_mounted(path):
        return
    res = subprocess.run(["fusermount3", "-u", "-z", str(path)], capture_output=True,
                         check=False)
    if res.returncode != 0 and is_mounted(path):
        subprocess.run(["umount", "-l", str(path)], capture_output=True, check=False)


def _wait_ready(rfd: int, proc: subprocess.Popen[bytes], mountpoint: Path,
                timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([rfd], [], [], 0.1)
        if ready:
            if os.read(rfd, 1) == b"R":
                break
            raise AssertionError("serve-fs exited before it was ready")
        if proc.poll() is not None:
            raise AssertionError(f"serve-fs exited with {proc.returncode} before ready")
    else:
        raise AssertionError("serve-fs did not get ready in time")
    while not is_mounted(mountpoint):
        if time.monotonic() > deadline:
            raise AssertionError("mount did not appear in /proc/self/mountinfo")
        time.sleep(0.01)


@contextlib.contextmanager
def serve_fs_mount(root: str | Path, mountpoint: str | Path | None = None, *,
                   debug: bool = False, timeout: float = 20,
                   env: Mapping[str, str] | None = None,
                   launcher: Sequence[str] = ("-m", "cntr.stages.serve_fs")) -> Iterator[Served]:
    """Serve ``root`` on ``mountpoint`` (a fresh temp dir by default) in a subprocess.

    ``env`` is added to the environment; ``launcher`` replaces ``-m cntr.stages.serve_fs``
    (e.g. ``-c CODE`` that ends up in ``cntr.stages.serve_fs._main``)."""
    tmp = None
    if mountpoint is None:
        tmp = tempfile.mkdtemp(prefix="cntr-mnt-")
        mountpoint = tmp
    mnt = Path(mountpoint)
    mnt.mkdir(parents=True, exist_ok=True)
    log = Path(tempfile.mkstemp(prefix="serve-fs-", suffix=".log")[1])
    rfd, wfd = os.pipe()
    args = [PYTHON, *launcher, f"--ready-fd={wfd}", str(root), str(mnt)]
    if debug:
        args.insert(1 + len(launcher), "--debug")
    with open(log, "wb") as logf:
        proc = subprocess.Popen(args, cwd=REPO, pass_fds=(wfd,), stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=logf,
                                env={**os.environ, **env} if env is not None else None)
    os.close(wfd)
    try:
        try:
            _wait_ready(rfd, proc, mnt, timeout)
        finally:
            os.close(rfd)
        yield Served(mnt, proc, log)
    finally:
        unmount(mnt)
        # The server ends by itself once the kernel drops the connection; a copy of the
        # mount in a mount namespace created meanwhile (a container starting) keeps it
        # alive, so ask it to stop, then kill it.
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None:
                proc.send_signal(sig)
            try:
                proc.wait(timeout=5)
                break
            except subprocess.TimeoutExpired:
                continue
        unmount(mnt)
        if tmp is not None:
            with contextlib.suppress(OSError):
                os.rmdir(tmp)
        with contextlib.suppress(OSError):
            log.unlink()


# Run in a subprocess by `run_fuse_fd_session`: open /dev/fuse, fork a child that mounts
# it with the new mount API in a fresh mount namespace, serve it with serve_fs(fuse_fd=...),
# let the child use the files and exit, and report what it saw plus serve_fs's status.
_FUSE_FD_SCRIPT = r'''
import json, os, sys
from cntr.linux import syscalls as sc

src = sys.argv[1]
fuse_fd = os.open("/dev/fuse", os.O_RDWR)
os.set_inheritable(fuse_fd, True)
mounted_r, mounted_w = os.pipe()
ready_r, ready_w = os.pipe()
result_r, result_w = os.pipe()
pid = os.fork()
if pid == 0:
    code = 1
    try:
        os.close(mounted_r); os.close(ready_w); os.close(result_r)
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        target = "/mnt" if os.path.isdir("/mnt") else "/tmp"
        sc.mount("tmpfs", target, "tmpfs", 0, "mode=755")
        os.mkdir(target + "/fs")
        fs = sc.fsopen("fuse")
        sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, "source", "cntr")
        sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, "fd", str(fuse_fd))
        sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, "rootmode", "40000")
        sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, "user_id", "0")
        sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, "group_id", "0")
        sc.fsconfig(fs, sc.FSCONFIG_SET_FLAG, "allow_other")
        sc.fsconfig(fs, sc.FSCONFIG_SET_FLAG, "default_permissions")
        sc.fsconfig(fs, sc.FSCONFIG_CMD_CREATE)
        mfd = sc.fsmount(fs)
        sc.move_mount(mfd, "", sc.AT_FDCWD, target + "/fs", sc.MOVE_MOUNT_F_EMPTY_PATH)
        os.close(mfd); os.close(fs); os.close(fuse_fd)
        os.write(mounted_w, b"M"); os.close(mounted_w)
        assert os.read(ready_r, 1) == b"R"
        mp = target + "/fs"
        out = {
            "listdir": sorted(os.listdir(mp)),
            "read": open(mp + "/hello.txt").read(),
        }
        with open(mp + "/written.txt", "w") as f:
            f.write("from the child")
        out["stat_mode"] = os.stat(mp + "/written.txt").st_mode
        os.write(result_w, json.dumps(out).encode())
        code = 0
    except BaseException as exc:
        os.write(result_w, json.dumps({"error": repr(exc)}).encode())
    finally:
        os._exit(code)
os.close(mounted_w); os.close(ready_r); os.close(result_w)
assert os.read(mounted_r, 1) == b"M", "child did not mount"
from cntr.stages.serve_fs import serve_fs
status = serve_fs(src, fuse_fd=fuse_fd, ready_fd=ready_w)
child = os.waitpid(pid, 0)[1]
result = b""
while chunk := os.read(result_r, 65536):
    result += chunk
print(json.dumps({"status": status, "child": child, "result": json.loads(result or b"{}")}))
'''


def run_fuse_fd_session(src: str | Path, timeout: float = 60) -> dict[str, object]:
    """Run the fuse_fd-mode scenario on ``src``; returns serve_fs's status and what the
    child in the other mount namespace saw."""
    import json

    out = subprocess.run([PYTHON, "-c", _FUSE_FD_SCRIPT, str(src)], cwd=REPO,
                         capture_output=True, timeout=timeout, check=False)
    if out.returncode != 0:
        raise AssertionError(f"fuse_fd session failed ({out.returncode}): "
                             f"{out.stderr.decode(errors='replace')[-2000:]}")
    data: dict[str, object] = json.loads(out.stdout.decode().strip().splitlines()[-1])
    return data
