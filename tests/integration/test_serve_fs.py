"""serve-fs on real FUSE mounts: POSIX behaviour of the passthrough, checked on the host.

Most tests share one mount of a temporary directory (module fixture) and work in a fresh
subdirectory of it: ``pair.mnt`` is the path through serve-fs, ``pair.src`` the same
directory seen natively.  Tests that need their own server (serving ``/``, SIGTERM, the
descriptor bound, the fuse_fd mode) start one.
"""

from __future__ import annotations

import contextlib
import errno
import os
import shutil
import signal
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cntr.linux import syscalls as sc
from tests.conftest import require
from tests.integration.fsutil import (
    Served,
    fuse_uring_enabled,
    io_urings,
    is_mounted,
    run_fuse_fd_session,
    serve_fs_mount,
)

pytestmark = [pytest.mark.root, pytest.mark.fuse]


@dataclass
class Pair:
    src: Path
    """the directory, natively."""
    mnt: Path
    """the same directory through serve-fs."""
    served: Served


@pytest.fixture(scope="module", params=["wire", "uring", "libfuse"])
def served_tmp(request: pytest.FixtureRequest) -> Iterator[tuple[Path, Served]]:
    """One mount per module and session kind: the default wire session over /dev/fuse, the
    same with requests over io_uring, and pyfuse3's libfuse session."""
    loop = request.param
    root = Path(tempfile.mkdtemp(prefix="cntr-src-"))
    os.chmod(root, 0o755)
    try:
        with (fuse_uring_enabled() if loop == "uring" else contextlib.nullcontext(),
              serve_fs_mount(root, env={"CNTR_SERVE_FS_LOOP": loop}) as served):
            os.stat(served.mountpoint)  # INIT answered, rings registered
            if loop == "uring":
                assert io_urings(served.proc.pid) >= (os.cpu_count() or 1), served.log_text()
            yield root, served
    finally:
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pair(served_tmp: tuple[Path, Served], request: pytest.FixtureRequest) -> Iterator[Pair]:
    root, served = served_tmp
    name = request.node.name.replace("[", "_").replace("]", "_")
    (root / name).mkdir()
    yield Pair(root / name, served.mountpoint / name, served)
    assert served.proc.poll() is None, f"serve-fs died:\n{served.log_text()}"


def err(fn: object, *args: object, **kw: object) -> int:
    """The errno ``fn(*args)`` fails with."""
    with pytest.raises(OSError) as info:
        fn(*args, **kw)  # type: ignore[operator]
    assert info.value.errno is not None
    return info.value.errno


# --- files -------------------------------------------------------------------------------
def test_create_read_write_append_truncate(pair: Pair) -> None:
    f = pair.mnt / "f"
    f.write_bytes(b"hello world")
    assert (pair.src / "f").read_bytes() == b"hello world"
    with open(f, "ab") as fh:
        fh.write(b"!!")
    assert f.read_bytes() == b"hello world!!"
    with open(f, "r+b") as fh:
        fh.seek(6)
        fh.write(b"WORLD")
    assert (pair.src / "f").read_bytes() == b"hello WORLD!!"
    os.truncate(f, 5)
    assert f.read_bytes() == b"hello"
    assert f.stat().st_size == 5
    with open(f, "wb") as fh:  # O_TRUNC
        fh.write(b"x")
    assert (pair.src / "f").read_bytes() == b"x"
    fd = os.open(f, os.O_RDWR)
    try:
        os.ftruncate(fd, 3)
        assert os.pread(fd, 10, 0) == b"x\0\0"
    finally:
        os.close(fd)


def test_append_to_file_grown_behind_the_servers_back(pair: Pair) -> None:
    (pair.src / "log").write_bytes(b"one\n")
    assert (pair.mnt / "log").read_bytes() == b"one\n"
    with open(pair.src / "log", "ab") as fh:
        fh.write(b"two\n")
    with open(pair.mnt / "log", "ab") as fh:
        fh.write(b"three\n")
    assert (pair.src / "log").read_bytes() == b"one\ntwo\nthree\n"


def test_o_excl_and_create_mode(pair: Pair) -> None:
    fd = os.open(pair.mnt / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o640)
    os.close(fd)
    assert stat.S_IMODE((pair.src / "x").stat().st_mode) == 0o640 & ~_umask()
    assert err(os.open, pair.mnt / "x", os.O_CREAT | os.O_EXCL | os.O_WRONLY) == errno.EEXIST


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def test_large_file_roundtrip(pair: Pair) -> None:
    data = os.urandom(3 * 1024 * 1024 + 123)
    (pair.mnt / "big").write_bytes(data)
    assert (pair.src / "big").read_bytes() == data
    assert (pair.mnt / "big").read_bytes() == data


def test_mmap_read(pair: Pair) -> None:
    import mmap

    (pair.src / "m").write_bytes(b"abc" * 5000)
    with open(pair.mnt / "m", "rb") as fh, mmap.mmap(fh.fileno(), 0, prot=mmap.PROT_READ) as m:
        assert m[:6] == b"abcabc"
        assert len(m) == 15000


def test_mmap_write_reaches_the_host(pair: Pair) -> None:
    """Shared writable mappings (passthrough maps the host file itself)."""
    import mmap

    (pair.src / "w").write_bytes(b"." * 8192)
    with open(pair.mnt / "w", "r+b") as fh, mmap.mmap(fh.fileno(), 0) as m:
        m[4096:4101] = b"hello"
        m.flush()
    assert (pair.src / "w").read_bytes()[4094:4103] == b"..hello.."


def test_two_opens_of_one_file_see_each_others_writes(pair: Pair) -> None:
    """Several open descriptors of one file, opened and closed in any order."""
    path = pair.mnt / "shared"
    path.write_bytes(b"0123456789")
    first = os.open(path, os.O_RDWR)
    second = os.open(path, os.O_RDONLY)
    try:
        os.pwrite(first, b"AB", 2)
        assert os.pread(second, 10, 0) == b"01AB456789"
        os.close(first)
        first = os.open(path, os.O_WRONLY | os.O_APPEND)
        os.write(first, b"!")
        assert os.pread(second, 20, 0) == b"01AB456789!"
    finally:
        os.close(first)
        os.close(second)
    assert (pair.src / "shared").read_bytes() == b"01AB456789!"


def test_opens_of_one_file_in_every_order_and_mode(pair: Pair) -> None:
    """A setuid file open for writing (not passed through: serve-fs clears its bits) and
    another open of it, a file truncated to empty on the host while open, an empty file
    read while written: every open works and sees the same contents."""
    (pair.src / "s").write_bytes(b"data")
    os.chmod(pair.src / "s", 0o4755)
    (pair.src / "t").write_bytes(b"abc")
    (pair.src / "e").write_bytes(b"")
    writer = os.open(pair.mnt / "s", os.O_WRONLY)
    reader = os.open(pair.mnt / "s", os.O_RDONLY)
    try:
        os.write(writer, b"DA")
        assert os.pread(reader, 10, 0) == b"DAta"
    finally:
        os.close(writer)
    writer = os.open(pair.mnt / "s", os.O_WRONLY | os.O_APPEND)
    try:
        os.write(writer, b"!")
        assert os.pread(reader, 10, 0) == b"DAta!"
    finally:
        os.close(writer)
        os.close(reader)
    reader = os.open(pair.mnt / "t", os.O_RDONLY)
    try:
        os.truncate(pair.src / "t", 0)
        time.sleep(1.2)  # attr timeout: the next open sees size 0
        writer = os.open(pair.mnt / "t", os.O_RDWR)
        try:
            os.write(writer, b"new")
        finally:
            os.close(writer)
        assert os.pread(reader, 10, 0) == b"new"
    finally:
        os.close(reader)
    reader = os.open(pair.mnt / "e", os.O_RDONLY)
    try:
        (pair.mnt / "e").write_bytes(b"hi")
        assert os.pread(reader, 10, 0) == b"hi"
    finally:
        os.close(reader)
    assert [(pair.src / n).read_bytes() for n in "ste"] == [b"DAta!", b"new", b"hi"]


def test_fsync_and_fdatasync(pair: Pair) -> None:
    fd = os.open(pair.mnt / "s", os.O_CREAT | os.O_RDWR, 0o644)
    try:
        os.write(fd, b"data")
        os.fsync(fd)
        os.fdatasync(fd)
    finally:
        os.close(fd)
    dfd = os.open(pair.mnt, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dfd)
    finally:
        os.close(dfd)
    assert (pair.src / "s").read_bytes() == b"data"


def test_changed_behind_the_servers_back_is_seen(pair: Pair) -> None:
    (pair.src / "c").write_bytes(b"old contents")
    assert (pair.mnt / "c").read_bytes() == b"old contents"
    time.sleep(0.01)
    (pair.src / "c").write_bytes(b"new contents!")
    time.sleep(1.2)  # attr timeout
    assert (pair.mnt / "c").read_bytes() == b"new contents!"


# --- directories and names -----------------------------------------------------------
def test_mkdir_rmdir_errors(pair: Pair) -> None:
    d = pair.mnt / "d"
    d.mkdir(0o750)
    assert (pair.src / "d").is_dir()
    (d / "inner").write_text("x")
    assert err(os.rmdir, d) == errno.ENOTEMPTY
    assert err(os.mkdir, d) == errno.EEXIST
    assert err(os.stat, pair.mnt / "missing") == errno.ENOENT
    assert err(os.unlink, pair.mnt / "missing") == errno.ENOENT
    assert err(os.rmdir, d / "inner") == errno.ENOTDIR
    assert err(os.unlink, d) in (errno.EISDIR, errno.EPERM)
    assert err(os.listdir, d / "inner") == errno.ENOTDIR
    os.unlink(d / "inner")
    os.rmdir(d)
    assert not (pair.src / "d").exists()


def test_rename_plain_noreplace_exchange(pair: Pair) -> None:
    (pair.mnt / "a").write_text("A")
    (pair.mnt / "b").write_text("B")
    os.rename(pair.mnt / "a", pair.mnt / "c")
    assert sorted(os.listdir(pair.src)) == ["b", "c"]
    with pytest.raises(OSError) as info:
        sc.renameat2(sc.AT_FDCWD, str(pair.mnt / "c"), sc.AT_FDCWD, str(pair.mnt / "b"),
                     sc.RENAME_NOREPLACE)
    assert info.value.errno == errno.EEXIST
    sc.renameat2(sc.AT_FDCWD, str(pair.mnt / "c"), sc.AT_FDCWD, str(pair.mnt / "b"),
                 sc.RENAME_EXCHANGE)
    assert (pair.src / "b").read_text() == "A"
    assert (pair.src / "c").read_text() == "B"
    assert (pair.mnt / "b").read_text() == "A"
    os.rename(pair.mnt / "c", pair.mnt / "b")  # replace
    assert (pair.mnt / "b").read_text() == "B"
    (pair.mnt / "sub").mkdir()
    os.rename(pair.mnt / "b", pair.mnt / "sub" / "b")
    assert (pair.src / "sub" / "b").read_text() == "B"
    assert err(os.rename, pair.mnt / "sub", pair.mnt / "sub" / "x") == errno.EINVAL


def test_hard_links(pair: Pair) -> None:
    (pair.mnt / "orig").write_text("data")
    os.link(pair.mnt / "orig", pair.mnt / "link")
    st1, st2 = os.stat(pair.mnt / "orig"), os.stat(pair.mnt / "link")
    assert st1.st_ino == st2.st_ino
    assert st1.st_nlink == 2
    assert os.stat(pair.src / "orig").st_nlink == 2
    os.unlink(pair.mnt / "orig")
    assert os.stat(pair.mnt / "link").st_nlink == 1
    assert (pair.mnt / "link").read_text() == "data"
    (pair.mnt / "d").mkdir()
    assert err(os.link, pair.mnt / "d", pair.mnt / "d2") == errno.EPERM


def test_symlinks(pair: Pair) -> None:
    (pair.mnt / "target").write_text("T")
    os.symlink("target", pair.mnt / "sl")
    os.symlink("/nonexistent/dangling", pair.mnt / "dl")
    assert os.readlink(pair.mnt / "sl") == "target"
    assert os.readlink(pair.src / "dl") == "/nonexistent/dangling"
    assert (pair.mnt / "sl").read_text() == "T"
    assert stat.S_ISLNK(os.lstat(pair.mnt / "sl").st_mode)
    assert err(os.stat, pair.mnt / "dl") == errno.ENOENT


def test_special_files(pair: Pair) -> None:
    os.mkfifo(pair.mnt / "fifo", 0o600)
    assert stat.S_ISFIFO(os.stat(pair.src / "fifo").st_mode)
    os.mknod(pair.mnt / "null", 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    st = os.stat(pair.mnt / "null")
    assert stat.S_ISCHR(st.st_mode)
    assert os.major(st.st_rdev) == 1
    assert os.minor(st.st_rdev) == 3
    # mounted nodev (libfuse's default, kept on purpose): device nodes do not open
    assert err(open, pair.mnt / "null", "wb") == errno.EACCES
    os.mknod(pair.mnt / "sock", 0o600 | stat.S_IFSOCK)
    assert stat.S_ISSOCK(os.stat(pair.src / "sock").st_mode)
    # a fifo through the mount is a real pipe (the kernel handles special files)
    got: list[bytes] = []
    reader = threading.Thread(target=lambda: got.append((pair.mnt / "fifo").read_bytes()))
    reader.start()
    with open(pair.mnt / "fifo", "wb") as fh:
        fh.write(b"through the fifo")
    reader.join(10)
    assert got == [b"through the fifo"]
    # (a unix socket bound natively cannot be connected to through the mount: the kernel
    # finds listening sockets by inode, and the FUSE inode is another one)


# --- metadata ----------------------------------------------------------------------------
def test_chmod_chown_utimes(pair: Pair) -> None:
    f = pair.mnt / "f"
    f.write_text("x")
    os.chmod(f, 0o4711)
    assert stat.S_IMODE(os.stat(pair.src / "f").st_mode) == 0o4711
    os.chown(f, 1234, 5678)
    st = os.stat(pair.src / "f")
    assert (st.st_uid, st.st_gid) == (1234, 5678)
    assert (os.stat(f).st_uid, os.stat(f).st_gid) == (1234, 5678)
    os.utime(f, ns=(1_000_000_123, 2_000_000_456))
    st = os.stat(pair.src / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (1_000_000_123, 2_000_000_456)
    assert os.stat(f).st_mtime_ns == 2_000_000_456
    before = time.time()
    os.utime(f)  # UTIME_NOW
    assert os.stat(pair.src / "f").st_mtime >= before - 1
    # UTIME_OMIT for atime: only mtime changes
    os.utime(f, ns=(5_000_000_000, 6_000_000_000))
    fd = os.open(f, os.O_RDONLY)
    try:
        sc.utimensat(fd, b"", (0, sc.UTIME_OMIT), (7, 0), sc.AT_EMPTY_PATH)
    finally:
        os.close(fd)
    st = os.stat(pair.src / "f")
    assert (st.st_atime_ns, st.st_mtime_ns) == (5_000_000_000, 7_000_000_000)


def test_chmod_chown_while_open_for_writing(pair: Pair) -> None:
    # A file created or opened for writing answers for its inode through that descriptor
    # (fchown, fchmod, fstat: not the O_PATH calls of the test above): tar's sequence.
    for opened in ("created", "opened"):
        f = pair.mnt / opened
        if opened == "opened":
            f.write_text("x")
            fd = os.open(f, os.O_WRONLY)
        else:
            fd = os.open(f, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            os.write(fd, b"data")
            os.fchown(fd, 1234, 5678)
            os.fchmod(fd, 0o640)
            os.utime(fd, ns=(1_000_000_123, 2_000_000_456))
            st = os.stat(pair.src / opened)
            assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (1234, 5678, 0o640)
            for seen in (os.fstat(fd), os.stat(f)):
                assert (seen.st_uid, seen.st_gid, stat.S_IMODE(seen.st_mode)) == (
                    1234, 5678, 0o640)
                assert (seen.st_atime_ns, seen.st_mtime_ns) == (1_000_000_123,
                                                                2_000_000_456)
            os.fchown(fd, -1, 91)  # -1: the owner stays
            assert (os.stat(pair.src / opened).st_uid, os.stat(f).st_gid) == (1234, 91)
        finally:
            os.close(fd)


def test_symlink_metadata_nofollow(pair: Pair) -> None:
    (pair.mnt / "t").write_text("x")
    os.utime(pair.mnt / "t", ns=(10**9, 10**9))
    os.symlink("t", pair.mnt / "l")
    os.utime(pair.mnt / "l", ns=(3 * 10**9, 4 * 10**9), follow_symlinks=False)
    assert os.lstat(pair.src / "l").st_mtime_ns == 4 * 10**9
    assert os.stat(pair.src / "t").st_mtime_ns == 10**9
    os.chown(pair.mnt / "l", 42, 43, follow_symlinks=False)
    st = os.lstat(pair.src / "l")
    assert (st.st_uid, st.st_gid) == (42, 43)
    assert os.stat(pair.src / "t").st_uid == 0


def test_xattrs(pair: Pair) -> None:
    f = pair.mnt / "f"
    f.write_text("x")
    os.setxattr(f, "user.k", b"v1")
    assert os.getxattr(pair.src / "f", "user.k") == b"v1"
    assert os.getxattr(f, "user.k") == b"v1"
    assert "user.k" in os.listxattr(f)
    assert err(os.setxattr, f, "user.k", b"v", os.XATTR_CREATE) == errno.EEXIST
    assert err(os.setxattr, f, "user.new", b"v", os.XATTR_REPLACE) == errno.ENODATA
    os.setxattr(f, "user.k", b"v2", os.XATTR_REPLACE)
    assert os.getxattr(f, "user.k") == b"v2"
    os.removexattr(f, "user.k")
    assert err(os.getxattr, f, "user.k") == errno.ENODATA
    assert os.listxattr(f) == [] or "user.k" not in os.listxattr(f)
    big = os.urandom(3000)
    os.setxattr(f, "user.big", big)
    assert os.getxattr(f, "user.big") == big
    # trusted.* on a symlink: the link's own xattr, not its target's
    os.symlink("f", pair.mnt / "l")
    os.setxattr(pair.mnt / "l", "trusted.k", b"on-link", follow_symlinks=False)
    assert os.getxattr(pair.src / "l", "trusted.k", follow_symlinks=False) == b"on-link"
    assert os.getxattr(pair.mnt / "l", "trusted.k", follow_symlinks=False) == b"on-link"
    assert err(os.getxattr, pair.src / "f", "trusted.k") == errno.ENODATA
    assert err(os.setxattr, pair.mnt / "l", "user.k", b"v",
               follow_symlinks=False) == errno.EPERM


def test_posix_acl(pair: Pair) -> None:
    f = pair.mnt / "acl"
    f.write_text("x")
    require(None if shutil.which("setfacl") and shutil.which("getfacl")
            else "setfacl/getfacl not installed (scripts/setup installs acl)")
    subprocess.run(["setfacl", "-m", "u:1234:rw", str(f)], check=True)
    native = subprocess.run(["getfacl", "-c", str(pair.src / "acl")], check=True,
                            capture_output=True, text=True).stdout
    assert "user:1234:rw-" in native
    through = subprocess.run(["getfacl", "-c", str(f)], check=True, capture_output=True,
                             text=True).stdout
    assert through == native


def test_posix_acl_is_enforced(pair: Pair) -> None:
    """An ACL entry grants what the mode bits alone refuse, through the mount as natively."""
    require(None if shutil.which("setfacl")
            else "setfacl not installed (scripts/setup installs acl)")
    os.chmod(pair.src, 0o755)
    secret = pair.src / "secret"
    secret.write_text("s")
    os.chmod(secret, 0o600)
    subprocess.run(["setfacl", "-m", "u:1234:r", str(secret)], check=True)
    for path in (secret, pair.mnt / "secret"):
        allowed = subprocess.run(["cat", str(path)], user=1234, capture_output=True,
                                 timeout=30, check=False)
        refused = subprocess.run(["cat", str(path)], user=1235, capture_output=True,
                                 timeout=30, check=False)
        assert (allowed.returncode, allowed.stdout) == (0, b"s"), (path, allowed.stderr)
        assert refused.returncode != 0 and b"Permission denied" in refused.stderr, path


def test_write_by_a_user_clears_setuid_bits(pair: Pair) -> None:
    """As on the disk: another user's write drops set-user-ID and set-group-ID."""
    os.chmod(pair.src, 0o755)
    for path in (pair.src / "native", pair.src / "through"):
        path.write_text("x")
        os.chown(path, 1234, 1234)
        os.chmod(path, 0o6777)
    for path in (pair.src / "native", pair.mnt / "through"):
        subprocess.run(["sh", "-c", 'echo y >> "$1"', "sh", str(path)], user=4321,
                       group=4321, extra_groups=[], check=True, timeout=30)
    assert stat.S_IMODE((pair.src / "native").stat().st_mode) == 0o777
    assert stat.S_IMODE((pair.src / "through").stat().st_mode) == 0o777


def test_truncation_by_a_user_clears_setuid_bits(pair: Pair) -> None:
    """truncate(2) and open(O_TRUNC) by another user drop them too, as on the disk."""
    os.chmod(pair.src, 0o755)
    names = [f"{how}-{where}" for how in ("truncate", "otrunc") for where in ("n", "t")]
    for name in names:
        path = pair.src / name
        path.write_text("xyz")
        os.chown(path, 1234, 1234)
        os.chmod(path, 0o6777)
    for name in names:
        base = pair.src if name.endswith("-n") else pair.mnt
        script = 'truncate -s 1 "$1"' if name.startswith("truncate") else ': > "$1"'
        subprocess.run(["sh", "-c", script, "sh", str(base / name)], user=4321, group=4321,
                       extra_groups=[], check=True, timeout=30)
    modes = {name: stat.S_IMODE((pair.src / name).stat().st_mode) for name in names}
    assert modes == dict.fromkeys(names, 0o777)


def test_ownership_of_new_files_is_the_callers(pair: Pair) -> None:
    os.chmod(pair.src, 0o777)
    script = 'cd "$1" && : > f && mkdir d && ln -s f l && mkfifo p'
    subprocess.run(["sh", "-c", script, "sh", str(pair.mnt)], check=True,
                   user=1234, group=2345, extra_groups=[], timeout=30)
    for name in ("f", "d", "l", "p"):
        st = os.lstat(pair.src / name)
        assert (st.st_uid, st.st_gid) == (1234, 2345), name
    # a setgid directory gives its group, as on the host
    sg = pair.src / "sg"
    sg.mkdir()
    os.chown(sg, 0, 777)
    os.chmod(sg, 0o2777)
    subprocess.run(["sh", "-c", ': > "$1"', "sh", str(pair.mnt / "sg" / "g")], check=True,
                   user=1234, group=2345, extra_groups=[], timeout=30)
    st = os.stat(sg / "g")
    assert (st.st_uid, st.st_gid) == (1234, 777)


def test_permissions_are_checked_by_the_kernel(pair: Pair) -> None:
    (pair.src / "secret").write_text("s")
    os.chmod(pair.src / "secret", 0o600)
    res = subprocess.run(["cat", str(pair.mnt / "secret")], user=1234, group=1234,
                         extra_groups=[], capture_output=True, timeout=30, check=False)
    assert res.returncode != 0
    assert b"Permission denied" in res.stderr
    os.chmod(pair.src / "secret", 0o644)
    time.sleep(1.2)  # attr timeout
    res = subprocess.run(["cat", str(pair.mnt / "secret")], user=1234, group=1234,
                         extra_groups=[], capture_output=True, timeout=30, check=True)
    assert res.stdout == b"s"


def test_statfs(pair: Pair) -> None:
    mine, native = os.statvfs(pair.mnt), os.statvfs(pair.src)
    assert mine.f_bsize == native.f_bsize
    assert mine.f_blocks == native.f_blocks
    assert mine.f_namemax == native.f_namemax


# --- readdir -----------------------------------------------------------------------------
def test_readdir_large_and_types(pair: Pair) -> None:
    for i in range(1500):
        (pair.src / f"file-{i:04d}").write_bytes(b"")
    (pair.src / "adir").mkdir()
    os.symlink("x", pair.src / "alink")
    names = sorted(os.listdir(pair.mnt))
    assert names == sorted(os.listdir(pair.src))
    with os.scandir(pair.mnt) as it:
        kinds = {e.name: (e.is_dir(follow_symlinks=False), e.is_symlink()) for e in it}
    assert kinds["adir"] == (True, False)
    assert kinds["alink"] == (False, True)
    assert kinds["file-0001"] == (False, False)
    out = subprocess.run(["ls", "-a", str(pair.mnt / "adir")], capture_output=True,
                         text=True, check=True).stdout.split()
    assert out == [".", ".."]


def test_readdir_while_directory_changes(pair: Pair) -> None:
    for i in range(600):
        (pair.src / f"n{i:04d}").write_bytes(b"")
    seen: list[str] = []
    with os.scandir(pair.mnt) as it:
        for k, entry in enumerate(it):
            seen.append(entry.name)
            if k == 10:
                # remove names not yet read and add new ones, natively and through us
                for i in range(300, 400):
                    os.unlink(pair.src / f"n{i:04d}")
                for i in range(50):
                    (pair.mnt / f"new{i}").write_bytes(b"")
    assert len(seen) == len(set(seen)), "a name was reported twice"
    untouched = {f"n{i:04d}" for i in range(600) if not 300 <= i < 400}
    assert untouched <= set(seen), "a name that stayed was skipped"
    assert sorted(os.listdir(pair.mnt)) == sorted(os.listdir(pair.src))


def test_listing_follows_changes_made_on_the_host(pair: Pair) -> None:
    """Listings are cached by the kernel, but a directory changed on the host is listed
    afresh once its attributes expire (1 s)."""
    (pair.src / "a").write_bytes(b"")
    assert os.listdir(pair.mnt) == ["a"]
    assert os.listdir(pair.mnt) == ["a"]
    (pair.src / "b").write_bytes(b"")
    os.unlink(pair.src / "a")
    time.sleep(1.2)  # attr timeout
    assert os.listdir(pair.mnt) == ["b"]
    (pair.mnt / "c").write_bytes(b"")  # through the mount: seen at once
    assert sorted(os.listdir(pair.mnt)) == ["b", "c"]


# --- robustness --------------------------------------------------------------------------
def test_file_removed_behind_the_servers_back(pair: Pair) -> None:
    (pair.src / "gone").write_text("x")
    (pair.src / "gdir").mkdir()
    (pair.src / "gdir" / "f").write_text("y")
    assert (pair.mnt / "gone").read_text() == "x"
    assert os.listdir(pair.mnt / "gdir") == ["f"]
    os.unlink(pair.src / "gone")
    shutil.rmtree(pair.src / "gdir")
    time.sleep(1.2)  # entry/attr timeouts
    assert err(os.stat, pair.mnt / "gone") == errno.ENOENT
    assert err(open, pair.mnt / "gone") == errno.ENOENT
    assert err(os.listdir, pair.mnt / "gdir") == errno.ENOENT
    # an open descriptor keeps working, as it would natively
    (pair.src / "held").write_text("held")
    fd = os.open(pair.mnt / "held", os.O_RDONLY)
    try:
        os.unlink(pair.src / "held")
        assert os.pread(fd, 10, 0) == b"held"
    finally:
        os.close(fd)
    assert os.listdir(pair.mnt) == []
    assert pair.served.proc.poll() is None


def test_replaced_behind_the_servers_back(pair: Pair) -> None:
    (pair.src / "r").write_text("file")
    assert (pair.mnt / "r").read_text() == "file"
    os.unlink(pair.src / "r")
    (pair.src / "r").mkdir()
    (pair.src / "r" / "inside").write_text("i")
    time.sleep(1.2)
    assert os.listdir(pair.mnt / "r") == ["inside"]


def test_sigterm_unmounts_cleanly(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with serve_fs_mount(tmp_path) as served:
        assert (served.mountpoint / "f").read_text() == "x"
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=20) == 0
        assert not is_mounted(served.mountpoint), "still mounted after SIGTERM"
        assert os.listdir(served.mountpoint) == []


def test_serving_root_does_not_recurse(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    with serve_fs_mount("/", mnt) as served:
        assert "tmp" in os.listdir(mnt)
        inside = Path(str(mnt) + str(mnt))  # the mountpoint's own path, through the mount
        assert inside.parent.is_dir()
        assert "mnt" not in os.listdir(inside.parent)
        assert not inside.exists()
        res = subprocess.run(["find", str(mnt) + str(tmp_path)], capture_output=True,
                             text=True, timeout=60, check=False)
        assert res.returncode == 0, res.stderr
        assert str(mnt) + str(tmp_path) in res.stdout.split()
        ls = subprocess.run(["ls", "-R", str(mnt) + str(tmp_path)], capture_output=True,
                            timeout=60, check=False)
        assert ls.returncode == 0
        # other mounts below / are crossed: /proc is procfs, not the empty directory
        assert (mnt / "proc" / "self").is_symlink()
        assert (mnt / "proc" / str(served.pid) / "status").read_text().startswith("Name:")
        assert "null" in os.listdir(mnt / "dev")
        assert served.proc.poll() is None


def test_walk_stays_within_descriptor_and_memory_bounds(tmp_path: Path) -> None:
    src = tmp_path / "tree"
    src.mkdir()
    for d in range(25):
        sub = src / f"d{d:02d}"
        sub.mkdir()
        for f in range(1000):
            (sub / f"f{f:04d}").write_bytes(b"")
    with serve_fs_mount(src) as served:
        count = 0
        max_fds = 0
        for dirpath, _dirs, files in os.walk(served.mountpoint):
            for name in files:
                os.lstat(os.path.join(dirpath, name))
                count += 1
            max_fds = max(max_fds, served.fd_count())
        assert count == 25_000
        assert max_fds < 5000, f"serve-fs held {max_fds} descriptors"
        rss = served.rss_kib()
        assert rss < 100 * 1024, f"serve-fs RSS {rss} KiB"


def test_fuse_fd_mode_in_another_mount_namespace(tmp_path: Path) -> None:
    (tmp_path / "hello.txt").write_text("hi from the host\n")
    data = run_fuse_fd_session(tmp_path)
    assert data["status"] == 0
    assert data["child"] == 0
    result = data["result"]
    assert isinstance(result, dict)
    assert "error" not in result, result
    assert result["listdir"] == ["hello.txt"]
    assert result["read"] == "hi from the host\n"
    assert (tmp_path / "written.txt").read_text() == "from the child"
