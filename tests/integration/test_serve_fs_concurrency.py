"""serve-fs with concurrent requesters: what they get is what they would get natively,
no descriptor outlives its file, and one requester blocked on the host does not stall
the others.

- four ``tar -x`` of one tarball at once through the mount, with a walk of another tree
  (``find`` + reads) running alongside, compared byte for byte and by metadata with the
  same extraction done natively;
- after it, every file the kernel released is closed in serve-fs (its regular
  descriptors into the tree, counted in ``/proc/PID/fd``, are back to what they were);
- concurrent writers that fsync after every write each get their data on the host;
- a request that blocks on the host (fallocate on a frozen filesystem: ``fsfreeze``)
  while other requesters look up, list and stat: they are answered meanwhile, and the
  blocked one completes once the filesystem is thawed.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import platform
import random
import stat
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.fsutil import fuse_uring_enabled, serve_fs_mount

pytestmark = [pytest.mark.root, pytest.mark.fuse]

#: seconds a requester may take before the test calls it stuck (never a timing assert:
#: the requests it waits for finish in milliseconds, or never)
STUCK_S = 60

#: the sessions checked: serve-fs's default, the same with blocking requests answered
#: inline by the reading thread (``CNTR_SERVE_FS_WORKERS=0``), FUSE over io_uring (one
#: thread per CPU's queue) and pyfuse3's libfuse session
SESSIONS = {"default": {}, "inline": {"CNTR_SERVE_FS_WORKERS": "0"},
            "uring": {"CNTR_SERVE_FS_LOOP": "uring"},
            "libfuse": {"CNTR_SERVE_FS_LOOP": "libfuse"}}


def make_tree(root: Path, files: int = 600, seed: int = 15) -> None:
    """Directories, files of random sizes and modes, symlinks and hard links."""
    rng = random.Random(seed)
    dirs = [root]
    root.mkdir(parents=True)
    for i in range(files):
        if i % 40 == 0:
            d = rng.choice(dirs) / f"d{i:04d}"
            d.mkdir()
            dirs.append(d)
        parent = rng.choice(dirs)
        kind = rng.random()
        if kind < 0.08 and i:
            os.symlink(f"../target-{i}", parent / f"l{i:04d}")
        elif kind < 0.12 and i:
            first = next(p for p in root.rglob("f*") if p.is_file() and not p.is_symlink())
            os.link(first, parent / f"h{i:04d}")
        else:
            f = parent / f"f{i:04d}"
            f.write_bytes(rng.randbytes(rng.randrange(0, 20_000)))
            os.chmod(f, rng.choice((0o644, 0o600, 0o755, 0o444)))
        os.utime(parent, ns=(1_600_000_000_000_000_000, 1_600_000_000_000_000_000))


def snapshot(root: Path) -> dict[str, tuple[object, ...]]:
    """Every entry below ``root``: type, mode, size, mtime, link count, owner, and the
    contents' digest or the symlink's target."""
    out: dict[str, tuple[object, ...]] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = p.lstat()
            if stat.S_ISLNK(st.st_mode):
                what: object = os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                what = hashlib.sha256(p.read_bytes()).hexdigest()
            else:
                what = None
            out[str(p.relative_to(root))] = (stat.S_IFMT(st.st_mode), stat.S_IMODE(st.st_mode),
                                             st.st_size if not stat.S_ISDIR(st.st_mode) else 0,
                                             st.st_mtime_ns, st.st_nlink, st.st_uid,
                                             st.st_gid, what)
    return out


def regular_fds_below(pid: int, root: Path) -> list[str]:
    """The paths of ``pid``'s descriptors below ``root`` that are not O_PATH ones (the
    inode table's cache): files and directories serve-fs holds open."""
    out = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            flags = next(int(line.split()[1], 8)
                         for line in Path(f"/proc/{pid}/fdinfo/{fd}").read_text().splitlines()
                         if line.startswith("flags:"))
        except (FileNotFoundError, StopIteration):
            continue  # closed meanwhile
        if target.startswith(str(root)) and not flags & os.O_PATH:
            out.append(target)
    return sorted(out)


def settled(*, want: list[str], pid: int, root: Path) -> list[str]:
    """``regular_fds_below`` once it equals ``want``, or what it is after STUCK_S (the
    kernel sends RELEASE after close(2) returns, asynchronously)."""
    deadline = time.monotonic() + STUCK_S
    while True:
        now = regular_fds_below(pid, root)
        if now == want or time.monotonic() > deadline:
            return now
        time.sleep(0.05)


@pytest.fixture(params=sorted(SESSIONS))
def session_env(request: pytest.FixtureRequest) -> Iterator[dict[str, str]]:
    """The environment of one session kind (io_uring: offered by the kernel meanwhile)."""
    with (fuse_uring_enabled() if request.param == "uring" else contextlib.nullcontext()):
        yield SESSIONS[request.param]


def test_concurrent_untars_and_a_walk_match_native(tmp_path: Path,
                                                   session_env: dict[str, str]) -> None:
    src = tmp_path / "src"
    make_tree(src / "tree")
    make_tree(src / "walked", files=300, seed=16)
    tarball = tmp_path / "tree.tar"
    subprocess.run(["tar", "-cf", str(tarball), "-C", str(src), "tree"], check=True)
    native = tmp_path / "native"
    native.mkdir()
    subprocess.run(["tar", "-xf", str(tarball), "-C", str(native)], check=True)
    want = snapshot(native)
    want_walked = snapshot(src / "walked")

    served_root = tmp_path / "served"
    served_root.mkdir()
    subprocess.run(["cp", "-a", str(src / "walked"), str(served_root)], check=True)
    with serve_fs_mount(served_root, env=session_env) as served:
        mnt = served.mountpoint
        os.stat(mnt / "walked")  # the mount's descriptor (see the fsync test) is counted
        before = regular_fds_below(served.pid, served_root)
        for i in range(4):
            (mnt / f"x{i}").mkdir()
        tars = [subprocess.Popen(["tar", "-xf", str(tarball), "-C", str(mnt / f"x{i}")],
                                 stderr=subprocess.PIPE) for i in range(4)]
        walked: list[dict[str, tuple[object, ...]]] = []
        walker = threading.Thread(target=lambda: walked.append(snapshot(mnt / "walked")))
        walker.start()
        for tar in tars:
            _out, err = tar.communicate(timeout=STUCK_S * 5)
            assert (tar.returncode, err) == (0, b"")
        walker.join(STUCK_S * 5)
        assert not walker.is_alive()
        assert walked == [want_walked]
        for i in range(4):
            assert snapshot(mnt / f"x{i}") == want, f"through the mount, x{i}"
            assert snapshot(served_root / f"x{i}") == want, f"on the host, x{i}"
        assert settled(want=before, pid=served.pid, root=served_root) == before


FSYNC_WRITER = """
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
for i in range(50):
    os.pwrite(fd, bytes([65 + int(sys.argv[2])]) * 4096, i * 4096)
    os.fsync(fd) if i % 2 else os.fdatasync(fd)
os.close(fd)
"""


def test_concurrent_fsyncing_writers(tmp_path: Path, session_env: dict[str, str]) -> None:
    root = tmp_path / "root"
    root.mkdir(parents=True)
    (root / "seen").mkdir()
    with serve_fs_mount(root, env=session_env) as served:
        # The inode table keeps a descriptor of the first file or directory it meets on
        # each mount (for open_by_handle_at): in the count from here on.
        os.stat(served.mountpoint / "seen")
        before = regular_fds_below(served.pid, root)
        writers = [subprocess.Popen([sys.executable, "-c", FSYNC_WRITER,
                                     str(served.mountpoint / f"log{i}"), str(i)],
                                    stderr=subprocess.PIPE) for i in range(4)]
        for w in writers:
            _out, err = w.communicate(timeout=STUCK_S * 5)
            assert (w.returncode, err) == (0, b"")
        for i in range(4):
            assert (root / f"log{i}").read_bytes() == bytes([65 + i]) * 4096 * 50
        assert settled(want=before, pid=served.pid, root=root) == before


@contextlib.contextmanager
def ext4_image(tmp_path: Path) -> Iterator[Path]:
    """A small ext4 filesystem of our own (loop device), mounted; gone afterwards."""
    require(None if subprocess.run(["sh", "-c", "command -v mkfs.ext4 losetup fsfreeze"],
                                   capture_output=True).returncode == 0
            else "mkfs.ext4, losetup and fsfreeze are needed (e2fsprogs, util-linux)")
    image = tmp_path / "ext4.img"
    with open(image, "wb") as f:
        f.truncate(64 << 20)
    subprocess.run(["mkfs.ext4", "-q", "-F", str(image)], check=True)
    dev = subprocess.run(["losetup", "--find", "--show", str(image)], check=True,
                         capture_output=True, text=True).stdout.strip()
    where = tmp_path / "ext4"
    where.mkdir()
    try:
        subprocess.run(["mount", dev, str(where)], check=True)
        try:
            yield where
        finally:
            subprocess.run(["fsfreeze", "--unfreeze", str(where)], capture_output=True,
                           check=False)
            subprocess.run(["umount", str(where)], check=True)
    finally:
        subprocess.run(["losetup", "-d", dev], check=True)


def test_a_request_blocked_on_the_host_does_not_stall_the_others(tmp_path: Path) -> None:
    with ext4_image(tmp_path) as fs:
        for i in range(20):
            (fs / f"f{i}").write_bytes(b"x" * i)
        (fs / "sub").mkdir()
        with serve_fs_mount(fs) as served:
            mnt = served.mountpoint
            fd = os.open(mnt / "grown", os.O_RDWR | os.O_CREAT, 0o644)
            try:
                subprocess.run(["fsfreeze", "--freeze", str(fs)], check=True)
                try:
                    blocked = _blocked_requester(fd, served.pid)
                    # Whatever needs no write to the frozen filesystem is answered
                    # while the fallocate waits in serve-fs.
                    seen = _in_thread(lambda: (
                        sorted(os.listdir(mnt)),
                        [os.stat(mnt / f"f{i}").st_size for i in range(20)],
                        os.listdir(mnt / "sub")))
                    assert seen == (sorted([*(f"f{i}" for i in range(20)), "sub",
                                            "grown", "lost+found"]), list(range(20)), [])
                    assert blocked.is_alive(), "fallocate returned on a frozen filesystem"
                finally:
                    subprocess.run(["fsfreeze", "--unfreeze", str(fs)], check=True)
                blocked.join(STUCK_S)
                assert not blocked.is_alive()
                assert os.fstat(fd).st_size == 1 << 20
            finally:
                os.close(fd)
            assert (fs / "grown").stat().st_size == 1 << 20


#: fallocate(2)'s number, to see a serve-fs thread wait in it (/proc/PID/task/TID/syscall)
FALLOCATE_NR = {"x86_64": 285, "aarch64": 47}


def _blocked_requester(fd: int, server: int) -> threading.Thread:
    """A thread that fallocates 1 MiB of ``fd``, returned once a thread of ``server``
    waits in the host's fallocate(2) for it (the filesystem is frozen)."""
    nr = FALLOCATE_NR.get(platform.machine())
    require(None if nr is not None else f"no fallocate number for {platform.machine()}")
    t = threading.Thread(target=os.posix_fallocate, args=(fd, 0, 1 << 20), daemon=True)
    t.start()
    deadline = time.monotonic() + STUCK_S
    while not any(_syscall_of(server, tid) == nr for tid in os.listdir(f"/proc/{server}/task")):
        assert t.is_alive(), "fallocate returned on a frozen filesystem"
        assert time.monotonic() < deadline, "serve-fs never got to the fallocate"
        time.sleep(0.01)
    return t


def _syscall_of(pid: int, tid: str) -> int | None:
    """The system call thread ``tid`` of ``pid`` waits in (None: running, or gone)."""
    try:
        first = Path(f"/proc/{pid}/task/{tid}/syscall").read_text().split()[0]
    except (FileNotFoundError, IndexError):
        return None
    return int(first) if first.lstrip("-").isdigit() else None


def _in_thread(fn: Callable[[], object]) -> object:
    """``fn()`` run in a thread; AssertionError if it does not return in STUCK_S (what it
    raises is raised here; after STUCK_S it is dropped with the thread)."""
    out: list[tuple[bool, object]] = []

    def run() -> None:
        try:
            out.append((True, fn()))
        except BaseException as exc:  # noqa: BLE001  # handed to the test's thread
            out.append((False, exc))

    t = threading.Thread(target=run, daemon=True)
    t.start()
    t.join(STUCK_S)
    assert not t.is_alive(), "a requester was not answered while another one blocked"
    ok, value = out[0]
    if not ok:
        assert isinstance(value, BaseException)
        raise value
    return value
