"""serve-fs behaves like the disk under it: each operation done through a serve-fs mount
and on a plain directory of the same host filesystem, compared.

Every test runs the same function on ``pair.plain`` (a directory used natively) and on
``pair.served`` (another directory, through serve-fs) and compares what a user sees: the
return value or errno, the resulting mode, size, contents, xattrs.  Where permissions
matter the function runs as an unprivileged requester in a forked child (`as_user`).
Operations the kernel's FUSE protocol cannot carry are checked to fail the documented way
(README, serve-fs caveats).  Every session type runs every test: the wire session over
/dev/fuse, the same over io_uring, and pyfuse3's libfuse session, whose differences (what
libfuse 3.14 cannot negotiate: README, "serve-fs sessions") are asserted exactly.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import functools
import mmap
import os
import pickle
import shutil
import stat
import struct
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cntr.linux import syscalls as sc
from tests.conftest import require
from tests.integration.fsutil import Served, fuse_uring_enabled, serve_fs_mount

pytestmark = [pytest.mark.root, pytest.mark.fuse]

Outcome = tuple[str, object]
USER, GROUP, OTHER_GROUP = 1234, 1234, 5555

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_COLLAPSE_RANGE = 0x01, 0x02, 0x08
FALLOC_FL_ZERO_RANGE, FALLOC_FL_INSERT_RANGE = 0x10, 0x20
FS_IOC_GETFLAGS, FS_IOC_SETFLAGS = 0x80086601, 0x40086602
FS_IOC_FSGETXATTR = 0x801C581F
FS_IMMUTABLE_FL, FS_APPEND_FL, FS_NODUMP_FL, FS_NOATIME_FL = 0x10, 0x20, 0x40, 0x80
#: past the bound on how late stat shows a write through a shared mapping (README: 0.1 s)
AFTER_WRITER_BOUND = 0.15


@dataclass
class Pair:
    plain: Path
    """a directory used natively."""
    served: Path
    """another directory of the same host filesystem, through serve-fs."""
    served_host: Path
    """``served`` seen natively (what serve-fs did on the host)."""
    server: Served
    session: str
    """the session type (CNTR_SERVE_FS_LOOP)."""


ENOTSUP = errno.errorcode[errno.EOPNOTSUPP]


@pytest.fixture(scope="module", params=["wire", "uring", "libfuse"])
def served_root(request: pytest.FixtureRequest) -> Iterator[tuple[Path, Served, str]]:
    loop = request.param
    root = Path(tempfile.mkdtemp(prefix="cntr-conf-"))
    os.chmod(root, 0o755)
    try:
        with (fuse_uring_enabled() if loop == "uring" else contextlib.nullcontext(),
              serve_fs_mount(root, env={"CNTR_SERVE_FS_LOOP": loop}) as served):
            os.stat(served.mountpoint)
            yield root, served, loop
    finally:
        for flagged in root.rglob("*"):  # nothing immutable may stay behind
            with contextlib.suppress(OSError):
                _chattr(flagged, remove=FS_IMMUTABLE_FL | FS_APPEND_FL)
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pair(served_root: tuple[Path, Served, str],
         request: pytest.FixtureRequest) -> Iterator[Pair]:
    root, served, session = served_root
    name = request.node.name.replace("[", "_").replace("]", "_")
    (root / name / "plain").mkdir(parents=True)
    (root / name / "served").mkdir()
    for d in (root / name, root / name / "plain", root / name / "served"):
        os.chmod(d, 0o777)
    yield Pair(root / name / "plain", served.mountpoint / name / "served",
               root / name / "served", served, session)
    assert served.proc.poll() is None, f"serve-fs died:\n{served.log_text()}"


def outcome(fn: Callable[[Path], object], where: Path) -> Outcome:
    try:
        return ("ok", fn(where))
    except OSError as exc:
        return ("err", errno.errorcode.get(exc.errno or 0, exc.errno))


def as_user(fn: Callable[[Path], object], where: Path, *, uid: int = USER,
            gid: int = GROUP, groups: tuple[int, ...] = (), umask: int = 0o022) -> Outcome:
    """`outcome` of ``fn(where)`` in a forked child with these ids and no capabilities."""
    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            os.close(rfd)
            os.setgroups(list(groups))
            os.setresgid(gid, gid, gid)
            os.setresuid(uid, uid, uid)
            os.umask(umask)
            data = pickle.dumps(outcome(fn, where))
        except BaseException as exc:  # noqa: BLE001  # reported to the parent
            data = pickle.dumps(("child failed", repr(exc)))
        os.write(wfd, data)
        os._exit(0)
    os.close(wfd)
    chunks = []
    while chunk := os.read(rfd, 65536):
        chunks.append(chunk)
    os.close(rfd)
    os.waitpid(pid, 0)
    result: Outcome = pickle.loads(b"".join(chunks))
    assert result[0] != "child failed", result
    return result


def both(pair: Pair, fn: Callable[[Path], object], **user: object) -> Outcome:
    """``fn`` natively and through serve-fs (as a user if ``user`` ids are given): the
    same outcome, which is returned."""
    if user:
        expected = as_user(fn, pair.plain, **user)  # type: ignore[arg-type]
        got = as_user(fn, pair.served, **user)  # type: ignore[arg-type]
    else:
        expected, got = outcome(fn, pair.plain), outcome(fn, pair.served)
    assert got == expected, f"through serve-fs {got!r}, natively {expected!r}"
    return got


def mode_of(path: Path) -> int:
    return stat.S_IMODE(os.lstat(path).st_mode)


def _flags(path: Path) -> int:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        buf = bytearray(4)
        fcntl.ioctl(fd, FS_IOC_GETFLAGS, buf, True)
        return int(struct.unpack("=I", buf)[0])
    finally:
        os.close(fd)


def _set_flags(path: Path, flags: int) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW)
    try:
        fcntl.ioctl(fd, FS_IOC_SETFLAGS, bytearray(struct.pack("=I", flags)), True)
    finally:
        os.close(fd)


def _chattr(path: Path, *, add: int = 0, remove: int = 0) -> None:
    """What chattr +X / -X does: the flags read, changed, set."""
    _set_flags(path, (_flags(path) | add) & ~remove)


def _chattr_at(path: Path, add: int, remove: int, _where: Path) -> None:
    _chattr(path, add=add, remove=remove)


# --- behaviour -----------------------------------------------------------------------
def test_shared_mmap_of_a_file_emptied_by_o_trunc(pair: Pair) -> None:
    """A file empty when opened keeps the page cache (direct_io is for procfs & co)."""
    def op(d: Path) -> bytes:
        (d / "f").write_bytes(b"old contents")
        fd = os.open(d / "f", os.O_RDWR | os.O_TRUNC)
        try:
            os.ftruncate(fd, 8192)
            with mmap.mmap(fd, 8192) as m:
                m[4096:4101] = b"hello"
                m.flush()
        finally:
            os.close(fd)
        return (d / "f").read_bytes()[4090:4110]
    both(pair, op)


def test_o_direct_write_to_an_empty_file(pair: Pair) -> None:
    def op(d: Path) -> tuple[int, bytes]:
        (d / "f").write_bytes(b"")
        fd = os.open(d / "f", os.O_RDWR | os.O_DIRECT)
        try:
            with mmap.mmap(-1, 4096) as buf:  # page aligned, as O_DIRECT wants
                buf.write(b"d" * 4096)
                written = os.pwrite(fd, buf, 0)
        finally:
            os.close(fd)
        return written, (d / "f").read_bytes()[:8]
    assert both(pair, op) == ("ok", (4096, b"dddddddd"))


def test_pseudo_files_are_still_read_through_serve_fs() -> None:
    """procfs files report size 0: they are served without the page cache (direct_io),
    so their contents are read."""
    with serve_fs_mount("/proc") as served:
        assert os.stat(served.mountpoint / "version").st_size == 0
        assert (served.mountpoint / "version").read_bytes() == Path("/proc/version").read_bytes()
        assert (served.mountpoint / "meminfo").read_text().startswith("MemTotal:")


@pytest.mark.parametrize("mode", [0o644, 0o4755], ids=["passthrough", "page-cache"])
def test_mtime_after_a_write_through_a_shared_mmap(pair: Pair, mode: int) -> None:
    """stat after a write through a mapping shows the new mtime and ctime within the bound
    (the kernel does not see those writes to a passed-through file: serve-fs lets it cache
    the attributes of files open for writing for 0.1 s only; a set-user-ID file open for
    writing is not passed through)."""
    def op(d: Path) -> tuple[bool, bool]:
        (d / "f").write_bytes(b"." * 8192)
        os.chmod(d / "f", mode)
        os.utime(d / "f", ns=(10**18, 10**18))
        fd = os.open(d / "f", os.O_RDWR)
        try:
            before = os.stat(d / "f")  # the attributes are cached now
            with mmap.mmap(fd, 8192) as m:
                os.stat(d / "f")
                time.sleep(0.01)
                m[0:5] = b"hello"
                m.flush()
                time.sleep(AFTER_WRITER_BOUND)
                after = os.stat(d / "f")
        finally:
            os.close(fd)
        return (after.st_mtime_ns != before.st_mtime_ns,
                after.st_ctime_ns != before.st_ctime_ns)
    assert both(pair, op) == ("ok", (True, True))
    seen, host = os.stat(pair.served / "f"), os.stat(pair.served_host / "f")
    assert (seen.st_mtime_ns, seen.st_ctime_ns) == (host.st_mtime_ns, host.st_ctime_ns)


def test_mtime_after_a_write_through_a_shared_mmap_of_a_new_file(pair: Pair) -> None:
    def op(d: Path) -> bool:
        fd = os.open(d / "new", os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o644)
        try:
            os.ftruncate(fd, 4096)
            os.utime(fd, ns=(10**18, 10**18))
            before = os.stat(d / "new").st_mtime_ns
            with mmap.mmap(fd, 4096) as m:
                time.sleep(0.01)
                m[0:3] = b"new"
                m.flush()
                time.sleep(AFTER_WRITER_BOUND)
                return os.stat(d / "new").st_mtime_ns != before
        finally:
            os.close(fd)
    assert both(pair, op) == ("ok", True)


def test_size_and_mtime_right_after_a_write_to_a_file_open_for_writing(pair: Pair) -> None:
    """stat and lseek(SEEK_END) right after a write(2) show the new size and mtime, though
    the attributes of a file open for writing are cached (the kernel sees the write)."""
    def op(d: Path) -> list[tuple[int, int, bool]]:
        (d / "f").write_bytes(b"." * 100)
        fd = os.open(d / "f", os.O_RDWR)
        seen = []
        try:
            for chunk in (1, 4899, 65000):
                os.utime(fd, ns=(10**18, 10**18))
                size = os.stat(d / "f").st_size  # the attributes are cached now
                os.lseek(fd, 0, os.SEEK_END)
                os.pwrite(fd, b"x" * chunk, size)
                after = os.stat(d / "f")
                seen.append((os.lseek(fd, 0, os.SEEK_END), after.st_size,
                             after.st_mtime_ns != 10**18))
        finally:
            os.close(fd)
        return seen
    assert both(pair, op) == ("ok", [(101, 101, True), (5000, 5000, True),
                                     (70000, 70000, True)])


@pytest.mark.parametrize("how", ["truncate", "ftruncate", "o_trunc"])
def test_truncation_by_the_unprivileged_owner_clears_set_id_bits(pair: Pair, how: str) -> None:
    def op(d: Path) -> int:
        f = d / "f"
        f.write_bytes(b"abc")
        os.chmod(f, 0o6755)
        if how == "truncate":
            os.truncate(f, 1)
        elif how == "ftruncate":
            fd = os.open(f, os.O_RDWR)
            os.ftruncate(fd, 0)
            os.close(fd)
        else:
            os.close(os.open(f, os.O_WRONLY | os.O_TRUNC))
        return mode_of(f)
    assert both(pair, op, uid=USER, gid=GROUP) == ("ok", 0o755)
    assert mode_of(pair.served_host / "f") == 0o755


@pytest.mark.parametrize("how", ["write", "pwrite-large", "copy_file_range"])
def test_writes_by_another_user_clear_set_id_bits_at_once(pair: Pair, how: str) -> None:
    """The mode stat shows right after the write is the cleared one (the kernel's cached
    mode is dropped when serve-fs clears the bits)."""
    for d in (pair.plain, pair.served_host):
        (d / "f").write_bytes(b"x" * (200 << 10 if how == "pwrite-large" else 10))
        (d / "src").write_bytes(b"source")
        os.chmod(d / "f", 0o6777)
    time.sleep(1.1)

    def op(d: Path) -> tuple[int, int]:
        before = mode_of(d / "f")
        fd = os.open(d / "f", os.O_WRONLY | (os.O_APPEND if how == "write" else 0))
        try:
            if how == "copy_file_range":
                src = os.open(d / "src", os.O_RDONLY)
                try:
                    os.copy_file_range(src, fd, 6, 0, 2)
                finally:
                    os.close(src)
            elif how == "write":
                os.write(fd, b"y")
            else:
                os.pwrite(fd, b"z" * 8192, 100 << 10)
        finally:
            os.close(fd)
        return before, mode_of(d / "f")
    assert both(pair, op, uid=4321, gid=4321) == ("ok", (0o6777, 0o777))


def test_times_before_1970(pair: Pair) -> None:
    def op(d: Path) -> tuple[int, int]:
        (d / "f").write_bytes(b"x")
        os.utime(d / "f", ns=(-315619200 * 10**9 + 250, -86400 * 10**9 - 1))
        st = os.stat(d / "f")
        return st.st_atime_ns, st.st_mtime_ns
    assert both(pair, op) == ("ok", (-315619200 * 10**9 + 250, -86400 * 10**9 - 1))
    result = subprocess.run(["touch", "-d", "1960-01-01 00:00:00 UTC", str(pair.served / "t")],
                            capture_output=True, check=False, timeout=30)
    assert result.returncode == 0, result.stderr
    assert os.stat(pair.served / "t").st_mtime == os.stat(pair.served_host / "t").st_mtime


@pytest.mark.parametrize("default_acl", [True, False])
def test_the_umask_applies_only_where_no_default_acl_does(pair: Pair,
                                                          default_acl: bool) -> None:
    require(None if shutil.which("setfacl") else "setfacl is missing (Debian: acl)")
    for d in (pair.plain, pair.served):
        if default_acl:
            subprocess.run(["setfacl", "-d", "-m", "u::rwx,g::rwx,o::rwx", str(d)],
                           check=True, timeout=30)

    def op(d: Path) -> tuple[int | str, ...]:
        os.close(os.open(d / "f", os.O_CREAT | os.O_WRONLY, 0o666))
        os.mkdir(d / "dir", 0o777)
        os.mkfifo(d / "fifo", 0o666)
        try:
            tmp = os.open(d, os.O_TMPFILE | os.O_WRONLY, 0o666)
        except OSError as exc:
            return (mode_of(d / "f"), mode_of(d / "dir"), mode_of(d / "fifo"),
                    errno.errorcode[exc.errno or 0])
        try:
            tmp_mode = stat.S_IMODE(os.fstat(tmp).st_mode)
        finally:
            os.close(tmp)
        return mode_of(d / "f"), mode_of(d / "dir"), mode_of(d / "fifo"), tmp_mode
    expected = (0o666, 0o777, 0o666, 0o666) if default_acl else (0o644, 0o755, 0o644, 0o644)
    if pair.session == "libfuse":
        # No DONT_MASK: the kernel applies the umask, default ACL or not; no O_TMPFILE.
        assert as_user(op, pair.plain, uid=USER, gid=GROUP, umask=0o022) == ("ok", expected)
        assert as_user(op, pair.served, uid=USER, gid=GROUP, umask=0o022) == (
            "ok", (0o644, 0o755, 0o644, ENOTSUP))
        return
    assert both(pair, op, uid=USER, gid=GROUP, umask=0o022) == ("ok", expected)


@pytest.mark.parametrize("member", [False, True])
@pytest.mark.parametrize("kind", ["file", "dir"])
def test_chmod_keeps_set_group_id_only_for_the_files_group(pair: Pair, member: bool,
                                                           kind: str) -> None:
    """chmod g+s by the owner keeps the bit only when the owner is in the file's group."""
    for d in (pair.plain, pair.served_host):
        if kind == "file":
            (d / "f").write_bytes(b"")
        else:
            (d / "f").mkdir()
        os.chown(d / "f", USER, OTHER_GROUP)
    time.sleep(1.1)  # the owner the kernel cached for the served side

    def op(d: Path) -> int:
        os.chmod(d / "f", 0o2755)
        return mode_of(d / "f")
    groups = (OTHER_GROUP,) if member else ()
    assert both(pair, op, uid=USER, gid=GROUP, groups=groups) == (
        "ok", 0o2755 if member else 0o755)


def test_setfacl_by_an_owner_outside_the_group_clears_set_group_id(pair: Pair) -> None:
    require(None if shutil.which("setfacl") else "setfacl is missing (Debian: acl)")
    for d in (pair.plain, pair.served_host):
        (d / "f").write_bytes(b"")
        os.chown(d / "f", USER, OTHER_GROUP)
        os.chmod(d / "f", 0o2775)
    time.sleep(1.1)

    def op(d: Path) -> int:
        result = subprocess.run(["setfacl", "-m", "u:99:r", str(d / "f")],
                                capture_output=True, check=False)
        if result.returncode:
            raise OSError(errno.EPERM, result.stderr.decode())
        return mode_of(d / "f")
    got = both(pair, op, uid=USER, gid=GROUP)
    assert got == ("ok", 0o775)
    assert (os.getxattr(pair.served_host / "f", "system.posix_acl_access")
            == os.getxattr(pair.plain / "f", "system.posix_acl_access"))


def test_open_by_handle_after_the_kernel_forgot_the_inode(pair: Pair) -> None:
    def op(d: Path) -> tuple[bytes, list[str]]:
        (d / "sub").mkdir()
        (d / "sub" / "f").write_bytes(b"by handle")
        handle, _ = sc.name_to_handle_at(sc.AT_FDCWD, os.fsencode(d / "sub" / "f"), 0)
        dir_handle, _ = sc.name_to_handle_at(sc.AT_FDCWD, os.fsencode(d / "sub"), 0)
        mount_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            # Nothing holds the inodes: the kernel evicts them (FUSE_FORGET).
            Path("/proc/sys/vm/drop_caches").write_text("2")
            fd = sc.open_by_handle_at(mount_fd, handle, os.O_RDONLY)
            try:
                data = os.read(fd, 100)
            finally:
                os.close(fd)
            dfd = sc.open_by_handle_at(mount_fd, dir_handle, os.O_RDONLY | os.O_DIRECTORY)
            try:
                names = os.listdir(dfd)
            finally:
                os.close(dfd)
            return data, names
        finally:
            os.close(mount_fd)
    assert both(pair, op) == ("ok", (b"by handle", ["f"]))

    def gone(d: Path) -> None:
        handle, _ = sc.name_to_handle_at(sc.AT_FDCWD, os.fsencode(d / "sub" / "f"), 0)
        os.unlink(d / "sub" / "f")
        Path("/proc/sys/vm/drop_caches").write_text("2")
        mount_fd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.close(sc.open_by_handle_at(mount_fd, handle, os.O_RDONLY))
        finally:
            os.close(mount_fd)
    assert both(pair, gone) == ("err", "ESTALE")


# --- operations ------------------------------------------------------------------------
FALLOCATE_MODES = {
    "preallocate": 0, "keep-size": FALLOC_FL_KEEP_SIZE,
    "punch-hole": FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE,
    "zero-range": FALLOC_FL_ZERO_RANGE, "zero-range-keep": FALLOC_FL_ZERO_RANGE
    | FALLOC_FL_KEEP_SIZE, "collapse-range": FALLOC_FL_COLLAPSE_RANGE,
    "insert-range": FALLOC_FL_INSERT_RANGE,
}


@pytest.mark.parametrize("size", [16 << 10, 256 << 10])  # page cache / passthrough
@pytest.mark.parametrize("mode", list(FALLOCATE_MODES))
def test_fallocate(pair: Pair, mode: str, size: int) -> None:
    def op(d: Path) -> tuple[int, int, bytes]:
        (d / "f").write_bytes(bytes(range(256)) * (size // 256))
        fd = os.open(d / "f", os.O_RDWR)
        try:
            ranged = mode.endswith("range")  # block aligned, inside the file
            sc.fallocate(fd, FALLOCATE_MODES[mode], 4096 if ranged else 8192,
                         4096 if ranged else 3 * size)
            st = os.fstat(fd)
            return st.st_size, st.st_blocks, os.pread(fd, 16, 8190)
        finally:
            os.close(fd)
    if mode in ("collapse-range", "insert-range") or pair.session == "libfuse":
        # The kernel's FUSE refuses these modes before asking the server (README);
        # libfuse has no FALLOCATE at all.
        assert outcome(op, pair.served) == ("err", errno.errorcode[errno.EOPNOTSUPP])
        assert outcome(op, pair.plain)[0] == "ok"
    else:
        assert both(pair, op)[0] == "ok"


def test_fallocate_by_a_user_clears_set_id_bits(pair: Pair) -> None:
    for d in (pair.plain, pair.served_host):
        (d / "f").write_bytes(b"abc")
        os.chmod(d / "f", 0o6777)
    time.sleep(1.1)

    def op(d: Path) -> int:
        fd = os.open(d / "f", os.O_WRONLY)
        try:
            sc.fallocate(fd, 0, 0, 65536)
        finally:
            os.close(fd)
        return mode_of(d / "f")
    if pair.session == "libfuse":  # no FALLOCATE
        assert as_user(op, pair.served, uid=4321, gid=4321) == ("err", ENOTSUP)
        assert mode_of(pair.served_host / "f") == 0o6777
        return
    assert both(pair, op, uid=4321, gid=4321) == ("ok", 0o777)


@pytest.mark.parametrize("size", [16 << 10, 256 << 10])
@pytest.mark.parametrize("writable", [False, True])
def test_lseek_data_and_hole(pair: Pair, size: int, writable: bool) -> None:
    def op(d: Path) -> list[object]:
        with open(d / "f", "wb") as f:
            f.write(b"a" * 4096)
            f.truncate(size)
            f.seek(size - 4096)
            f.write(b"b" * 4096)
        fd = os.open(d / "f", os.O_RDWR if writable else os.O_RDONLY)
        try:
            out: list[object] = []
            for whence in (os.SEEK_DATA, os.SEEK_HOLE):
                for offset in (0, 4096, size // 2, size - 1, size, size + 1):
                    try:
                        out.append(os.lseek(fd, offset, whence))
                    except OSError as exc:
                        out.append(errno.errorcode[exc.errno or 0])
            return out
        finally:
            os.close(fd)
    if pair.session == "libfuse":
        # No LSEEK: the kernel's generic answer, the whole file is data.
        offsets = (0, 4096, size // 2, size - 1, size, size + 1)
        assert outcome(op, pair.served) == ("ok", [
            *(o if o < size else "ENXIO" for o in offsets),
            *(size if o < size else "ENXIO" for o in offsets)])
        return
    both(pair, op)


@pytest.mark.parametrize("length", [10, 300 << 10])
def test_copy_file_range(pair: Pair, length: int) -> None:
    def op(d: Path) -> tuple[int, int, bytes, bytes]:
        data = os.urandom(200 << 10)
        (d / "src").write_bytes(data)
        (d / "dst").write_bytes(b"x" * 100)
        fin = os.open(d / "src", os.O_RDONLY)
        fout = os.open(d / "dst", os.O_WRONLY)
        try:
            first = os.copy_file_range(fin, fout, length, 5, 50)
            second = os.copy_file_range(fin, fout, length, 300 << 10, 0)  # beyond EOF
        finally:
            os.close(fin)
            os.close(fout)
        got = (d / "dst").read_bytes()
        return first, second, got[:50], (got[50:] == data[5:5 + length]).to_bytes(1, "big")
    both(pair, op)


def test_o_tmpfile(pair: Pair) -> None:
    def op(d: Path) -> tuple[bytes, int, int, int, int, str]:
        fd = os.open(d, os.O_TMPFILE | os.O_RDWR, 0o640)
        try:
            os.write(fd, b"unnamed")
            st = os.fstat(fd)
            sc.linkat(fd, b"", sc.AT_FDCWD, os.fsencode(d / "named"), sc.AT_EMPTY_PATH)
        finally:
            os.close(fd)
        excl = os.open(d, os.O_TMPFILE | os.O_WRONLY | os.O_EXCL, 0o600)
        try:
            sc.linkat(excl, b"", sc.AT_FDCWD, os.fsencode(d / "never"), sc.AT_EMPTY_PATH)
            refused = "linked"
        except OSError as exc:
            refused = errno.errorcode[exc.errno or 0]
        finally:
            os.close(excl)
        named = os.stat(d / "named")
        return ((d / "named").read_bytes(), stat.S_IMODE(named.st_mode), named.st_nlink,
                named.st_uid, st.st_nlink, refused)
    if pair.session == "libfuse":  # no TMPFILE
        assert as_user(op, pair.served, uid=USER, gid=GROUP, umask=0) == ("err", ENOTSUP)
        return
    assert both(pair, op, uid=USER, gid=GROUP, umask=0) == (
        "ok", (b"unnamed", 0o640, 1, USER, 0, "ENOENT"))


def test_statx_birth_time(pair: Pair) -> None:
    (pair.served / "f").write_bytes(b"x")
    (pair.plain / "f").write_bytes(b"x")
    seen = sc.statx(sc.AT_FDCWD, os.fsencode(pair.served / "f"), 0,
                    sc.STATX_BASIC_STATS | sc.STATX_BTIME)
    host = sc.statx(sc.AT_FDCWD, os.fsencode(pair.served_host / "f"), 0,
                    sc.STATX_BASIC_STATS | sc.STATX_BTIME)
    plain = sc.statx(sc.AT_FDCWD, os.fsencode(pair.plain / "f"), 0,
                     sc.STATX_BASIC_STATS | sc.STATX_BTIME)
    assert ((seen.stx_mtime.tv_sec, seen.stx_size, seen.stx_mode)
            == (host.stx_mtime.tv_sec, host.stx_size, host.stx_mode))
    if pair.session == "libfuse":  # no STATX: the kernel's getattr has no birth time
        assert seen.stx_mask & sc.STATX_BTIME == 0
        assert subprocess.run(["stat", "-c", "%w", str(pair.served / "f")],
                              capture_output=True, text=True, check=True,
                              timeout=30).stdout == "-\n"
        return
    assert seen.stx_mask & sc.STATX_BTIME == plain.stx_mask & sc.STATX_BTIME
    assert ((seen.stx_btime.tv_sec, seen.stx_btime.tv_nsec)
            == (host.stx_btime.tv_sec, host.stx_btime.tv_nsec))
    assert ((seen.stx_mtime.tv_sec, seen.stx_size, seen.stx_mode)
            == (host.stx_mtime.tv_sec, host.stx_size, host.stx_mode))
    done = subprocess.run(["stat", "-c", "%w", str(pair.served / "f")], capture_output=True,
                          text=True, check=True, timeout=30)
    native = subprocess.run(["stat", "-c", "%w", str(pair.served_host / "f")],
                            capture_output=True, text=True, check=True, timeout=30)
    assert done.stdout == native.stdout


@pytest.mark.parametrize("kind", ["file", "dir"])
def test_file_attribute_flags(pair: Pair, kind: str) -> None:
    """chattr/lsattr (FS_IOC_GETFLAGS/SETFLAGS, FS_IOC_FSGETXATTR) reach the host file."""
    def op(d: Path) -> list[object]:
        f = d / "f"
        if kind == "file":
            f.write_bytes(b"x")
        else:
            f.mkdir()
        out: list[object] = [outcome(lambda _: _flags(f) & 0xFF, d)]
        for add, remove in ((FS_NODUMP_FL, 0), (FS_NOATIME_FL, 0),
                            (FS_IMMUTABLE_FL, FS_NODUMP_FL | FS_NOATIME_FL)):
            out.append(outcome(functools.partial(_chattr_at, f, add, remove), d))
            out.append(outcome(lambda _: _flags(f) & 0xFF, d))
        out.append(outcome(lambda _: (f / "new" if kind == "dir" else f).write_bytes(b"y"),
                           d))
        out.append(outcome(lambda _: _chattr(f, add=FS_APPEND_FL, remove=FS_IMMUTABLE_FL), d))
        out.append(outcome(lambda _: open(f, "wb").close() if kind == "file" else None, d))
        out.append(outcome(lambda _: _chattr(f, remove=FS_APPEND_FL), d))
        fd = os.open(f, os.O_RDONLY)
        try:
            buf = bytearray(28)
            fcntl.ioctl(fd, FS_IOC_FSGETXATTR, buf, True)
            out.append(struct.unpack_from("=I", buf)[0])
        finally:
            os.close(fd)
        return out
    if pair.session == "libfuse":  # no IOCTL: chattr and lsattr fail
        assert outcome(op, pair.served) == ("err", "ENOTTY")
        assert _flags(pair.served_host / "f") & 0xFF == 0
        return
    result = both(pair, op)
    assert result[0] == "ok"
    assert isinstance(result[1], list)
    if result[1][1] == ("ok", None):
        # Where the host filesystem has the flags (ext4), they took effect.
        assert result[1][2:8] == [("ok", FS_NODUMP_FL), ("ok", None),
                                  ("ok", FS_NODUMP_FL | FS_NOATIME_FL), ("ok", None),
                                  ("ok", FS_IMMUTABLE_FL), ("err", "EPERM")]
    assert _flags(pair.served_host / "f") & 0xFF == 0


def test_file_attribute_flags_need_the_owner_and_capabilities(pair: Pair) -> None:
    for d in (pair.plain, pair.served_host):
        (d / "mine").write_bytes(b"")
        os.chown(d / "mine", USER, GROUP)
        (d / "theirs").write_bytes(b"")
    time.sleep(1.1)

    def op(d: Path) -> list[Outcome]:
        return [outcome(lambda _: _chattr(d / "mine", add=FS_NODUMP_FL), d),
                outcome(lambda _: _flags(d / "mine") & FS_NODUMP_FL, d),
                outcome(lambda _: _chattr(d / "mine", add=FS_IMMUTABLE_FL), d),
                outcome(lambda _: _chattr(d / "theirs", add=FS_NODUMP_FL), d),
                outcome(lambda _: _chattr(d / "mine", remove=FS_NODUMP_FL), d)]
    if pair.session == "libfuse":  # no IOCTL
        assert as_user(op, pair.served, uid=USER, gid=GROUP) == ("ok", [("err", "ENOTTY")] * 5)
        return
    both(pair, op, uid=USER, gid=GROUP)


def test_other_ioctls(pair: Pair) -> None:
    """An ioctl serve-fs does not carry answers ENOTTY, as the disk's own file does for
    ioctls it does not know; FIONREAD and FIGETBSZ are the VFS's own."""
    def op(d: Path) -> list[object]:
        (d / "f").write_bytes(b"12345")
        fd = os.open(d / "f", os.O_RDONLY)
        try:
            out: list[object] = []
            for cmd in (0x5401, 0x541B):  # TCGETS, FIONREAD
                buf = bytearray(64)
                try:
                    fcntl.ioctl(fd, cmd, buf, True)
                    out.append(bytes(buf[:4]))
                except OSError as exc:
                    out.append(errno.errorcode[exc.errno or 0])
            return out
        finally:
            os.close(fd)
    assert both(pair, op) == ("ok", ["ENOTTY", struct.pack("=i", 5)])


def test_an_ioctl_the_vfs_does_not_check_is_not_run_with_serve_fs_privileges(
        pair: Pair) -> None:
    """FS_IOC32_SETFLAGS from a user reaches the FUSE file unchecked (the VFS only
    checks FS_IOC_SETFLAGS): serve-fs must not run it as root (immutable by anyone)."""
    for d in (pair.plain, pair.served_host):
        (d / "f").write_bytes(b"")
        os.chown(d / "f", USER, GROUP)
    time.sleep(1.1)

    def op(d: Path) -> int:
        fd = os.open(d / "f", os.O_RDONLY)
        try:
            buf = bytearray(struct.pack("=I", FS_IMMUTABLE_FL))
            return int(fcntl.ioctl(fd, 0x40046602, buf, True))
        finally:
            os.close(fd)
    assert both(pair, op, uid=USER, gid=GROUP) == ("err", "ENOTTY")
    assert _flags(pair.served_host / "f") & FS_IMMUTABLE_FL == 0


def test_rwf_nowait_is_refused_through_fuse(pair: Pair) -> None:
    """The kernel's FUSE files do not take RWF_NOWAIT (no FMODE_NOWAIT): EOPNOTSUPP
    before serve-fs is asked (README)."""
    def op(d: Path) -> int:
        (d / "f").write_bytes(b"x" * 100)
        fd = os.open(d / "f", os.O_RDONLY)
        try:
            return os.preadv(fd, [bytearray(10)], 0, os.RWF_NOWAIT)
        finally:
            os.close(fd)
    assert outcome(op, pair.plain) == ("ok", 10)
    assert outcome(op, pair.served) == ("err", errno.errorcode[errno.EOPNOTSUPP])

