"""Differential test: random operation sequences through serve-fs and on a plain directory.

A hypothesis `RuleBasedStateMachine` applies each operation to a directory seen through a
serve-fs mount and to a plain directory on the same host filesystem, and requires the same
outcome: the same return value or the same errno, the same contents and the same stat
fields (mode, size, nlink, uid, gid; times only where a rule sets them, before 1970
included).  Besides the namespace and data operations: fallocate (the modes FUSE carries),
lseek SEEK_DATA/SEEK_HOLE, copy_file_range and O_TMPFILE files linked in (not on pyfuse3's
libfuse session, which carries none of fallocate, lseek and O_TMPFILE).

The operations reach what users hit: files past the passthrough size (64 KiB), chown,
chmod, utimens, xattrs, truncate, fifos, descriptors held open across other operations,
operations made as a non-root user (the kernel's permission checks), and, in a second
machine, changes made on the host behind the mount.  It runs on every session that
ships (the wire session over /dev/fuse and over io_uring, and the libfuse session).

Replaying a failure: hypothesis prints the failing steps and a ``@reproduce_failure`` blob,
and keeps failing examples in its database under /var/tmp/cntr-hypothesis, tried first on
the next run.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import shutil
import stat
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase
from hypothesis.stateful import (
    RuleBasedStateMachine,
    precondition,
    rule,
    run_state_machine_as_test,
)

from cntr.linux import syscalls as sc
from tests.integration.fsutil import fuse_uring_enabled, serve_fs_mount

DATABASE = DirectoryBasedExampleDatabase("/var/tmp/cntr-hypothesis/serve-fs-diff")
USER = 1234
"""A non-root requester (the directories are made world-writable for it)."""

pytestmark = [pytest.mark.root, pytest.mark.fuse]

PATHS = st.sampled_from(["a", "b", "d", "d/a", "d/c", "d/e", "d/e/b", "e"])
TARGETS = st.sampled_from(["a", "d/a", "../a", "d", "missing", "e/b"])
DATA = st.binary(min_size=0, max_size=300)
MODES = st.integers(min_value=0, max_value=0o777)
#: offsets and sizes on both sides of the passthrough size (64 KiB)
BIG = st.integers(0, 140_000)
IDS = st.sampled_from([0, USER, 4321])
XNAMES = st.sampled_from(["user.a", "user.b", "trusted.t"])
SLOTS = st.integers(0, 2)
#: fallocate modes the kernel's FUSE passes on: 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE,
#: ZERO_RANGE, ZERO_RANGE|KEEP_SIZE
FALLOCATE_MODES = st.sampled_from([0, 0x01, 0x03, 0x10, 0x11])
OFFSETS = st.integers(0, 20000)
Outcome = tuple[str, object]
NB = os.O_NONBLOCK
"""Every open is non-blocking: a fifo among the paths must not wait for a peer."""


def read_file(path: Path) -> bytes:
    fd = os.open(path, os.O_RDONLY | NB)
    try:
        out = b""
        while chunk := os.read(fd, 1 << 20):
            out += chunk
        return out
    finally:
        os.close(fd)


def outcome(fn: Callable[[Path], object], root: Path) -> Outcome:
    try:
        return ("ok", fn(root))
    except OSError as exc:
        return ("err", exc.errno)


class ServeFsVsPlain(RuleBasedStateMachine):
    """One example: a fresh pair of directories, then random operations on both."""

    plain_base: Path
    served_base: Path
    #: the session type: libfuse carries no fallocate, lseek or O_TMPFILE (their exact
    #: errors are test_serve_fs_conformance's), so those rules do not run on it
    session = "wire"
    counter = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        n = next(self.counter)
        self.plain = self.plain_base / f"case{n}"
        self.served = self.served_base / f"case{n}"
        self.plain.mkdir()
        self.served.mkdir()
        for d in (self.plain, self.served):
            os.chmod(d, 0o777)
        #: descriptors held open across operations: slot -> (plain fd, served fd)
        self.fds: dict[int, tuple[int, int]] = {}

    def both(self, fn: Callable[[Path], object]) -> Outcome:
        expected = outcome(fn, self.plain)
        got = outcome(fn, self.served)
        assert got == expected, f"through serve-fs {got!r}, natively {expected!r}"
        return got

    def both_fds(self, slot: int, fn: Callable[[int], object]) -> None:
        plain, served = self.fds[slot]
        expected = outcome(lambda _r: fn(plain), self.plain)
        got = outcome(lambda _r: fn(served), self.served)
        assert got == expected, f"through serve-fs {got!r}, natively {expected!r}"

    # --- past the passthrough size ----------------------------------------------------
    @rule(path=PATHS, offset=BIG, size=st.integers(1, 70_000), byte=st.integers(0, 255))
    def write_big(self, path: str, offset: int, size: int, byte: int) -> None:
        data = bytes([byte]) * size
        def op(r: Path) -> int:
            fd = os.open(r / path, os.O_WRONLY | NB)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        self.both(op)

    @rule(path=PATHS, size=BIG)
    def truncate_big(self, path: str, size: int) -> None:
        self.both(lambda r: os.truncate(r / path, size))

    @rule(path=PATHS, offset=BIG, size=st.integers(0, 70_000))
    def pread(self, path: str, offset: int, size: int) -> None:
        def op(r: Path) -> bytes:
            fd = os.open(r / path, os.O_RDONLY | NB)
            try:
                return os.pread(fd, size, offset)
            finally:
                os.close(fd)
        self.both(op)

    # --- metadata -----------------------------------------------------------------------
    @rule(path=PATHS, uid=IDS, gid=IDS)
    def chown(self, path: str, uid: int, gid: int) -> None:
        self.both(lambda r: os.chown(r / path, uid, gid, follow_symlinks=False))

    @rule(path=PATHS, atime=st.integers(0, 2**33), mtime=st.integers(0, 2**33))
    def utimens(self, path: str, atime: int, mtime: int) -> None:
        def op(r: Path) -> tuple[int, int]:
            os.utime(r / path, ns=(atime, mtime), follow_symlinks=False)
            s = os.lstat(r / path)
            return (s.st_atime_ns, s.st_mtime_ns)
        self.both(op)

    @rule(path=PATHS, name=XNAMES, value=st.binary(max_size=64),
          flags=st.sampled_from([0, os.XATTR_CREATE, os.XATTR_REPLACE]))
    def setxattr(self, path: str, name: str, value: bytes, flags: int) -> None:
        self.both(lambda r: os.setxattr(r / path, name, value, flags, follow_symlinks=False))

    @rule(path=PATHS, name=XNAMES)
    def getxattr(self, path: str, name: str) -> None:
        self.both(lambda r: os.getxattr(r / path, name, follow_symlinks=False))

    @rule(path=PATHS, name=XNAMES)
    def removexattr(self, path: str, name: str) -> None:
        self.both(lambda r: os.removexattr(r / path, name, follow_symlinks=False))

    @rule(path=PATHS)
    def listxattr(self, path: str) -> None:
        self.both(lambda r: sorted(os.listxattr(r / path, follow_symlinks=False)))

    @rule(path=PATHS, mode=MODES)
    def mkfifo(self, path: str, mode: int) -> None:
        self.both(lambda r: os.mkfifo(r / path, mode))

    @rule(path=PATHS)
    def open_nonblocking_for_reading(self, path: str) -> None:
        # a fifo opens without a writer this way; other files as usual
        def op(r: Path) -> int:
            fd = os.open(r / path, os.O_RDONLY | os.O_NONBLOCK)
            try:
                return stat.S_IFMT(os.fstat(fd).st_mode)
            finally:
                os.close(fd)
        self.both(op)

    # --- descriptors held open across operations ------------------------------------------
    @rule(slot=SLOTS, path=PATHS, flags=st.sampled_from(
        [os.O_RDONLY, os.O_RDWR, os.O_WRONLY | os.O_APPEND, os.O_RDWR | os.O_CREAT]))
    def open_held(self, slot: int, path: str, flags: int) -> None:
        self.close_held(slot)
        plain = outcome(lambda r: os.open(r / path, flags | os.O_NONBLOCK, 0o644), self.plain)
        served = outcome(lambda r: os.open(r / path, flags | os.O_NONBLOCK, 0o644),
                         self.served)
        if plain[0] == served[0] == "ok":
            assert isinstance(plain[1], int) and isinstance(served[1], int)
            self.fds[slot] = (plain[1], served[1])
            return
        for kind, fd in (plain, served):
            if kind == "ok":
                assert isinstance(fd, int)
                os.close(fd)
        assert served == plain, f"through serve-fs {served!r}, natively {plain!r}"

    @rule(slot=SLOTS)
    def close_held(self, slot: int) -> None:
        fds = self.fds.pop(slot, None)
        if fds is not None:
            for fd in fds:
                os.close(fd)

    @precondition(lambda self: bool(self.fds))
    @rule(slot=SLOTS, offset=BIG, data=DATA)
    def held_pwrite(self, slot: int, offset: int, data: bytes) -> None:
        if slot in self.fds:
            self.both_fds(slot, lambda fd: os.pwrite(fd, data, offset))

    @precondition(lambda self: bool(self.fds))
    @rule(slot=SLOTS, data=DATA)
    def held_write(self, slot: int, data: bytes) -> None:
        if slot in self.fds:
            self.both_fds(slot, lambda fd: os.write(fd, data))

    @precondition(lambda self: bool(self.fds))
    @rule(slot=SLOTS, offset=BIG, size=st.integers(0, 70_000))
    def held_pread(self, slot: int, offset: int, size: int) -> None:
        if slot in self.fds:
            self.both_fds(slot, lambda fd: os.pread(fd, size, offset))

    @precondition(lambda self: bool(self.fds))
    @rule(slot=SLOTS, size=BIG)
    def held_ftruncate(self, slot: int, size: int) -> None:
        if slot in self.fds:
            self.both_fds(slot, lambda fd: os.ftruncate(fd, size))

    @precondition(lambda self: bool(self.fds))
    @rule(slot=SLOTS)
    def held_fstat(self, slot: int) -> None:
        if slot in self.fds:
            def op(fd: int) -> tuple[int, int, int]:
                s = os.fstat(fd)
                return (s.st_mode, s.st_size, s.st_nlink)
            self.both_fds(slot, op)

    # --- a non-root requester ---------------------------------------------------------
    @rule(path=PATHS, data=DATA, op=st.sampled_from(["read", "write", "create", "unlink",
                                                      "mkdir", "chmod", "stat", "list"]))
    def as_user(self, path: str, data: bytes, op: str) -> None:
        def run(r: Path) -> object:
            target = r / path
            if op == "read":
                return read_file(target)
            if op == "write":
                fd = os.open(target, os.O_RDWR | NB)
                try:
                    return os.write(fd, data)
                finally:
                    os.close(fd)
            if op == "create":
                os.close(os.open(target, os.O_CREAT | os.O_WRONLY | NB, 0o640))
            elif op == "unlink":
                os.unlink(target)
            elif op == "mkdir":
                os.mkdir(target, 0o755)
            elif op == "chmod":
                os.chmod(target, 0o600)
            elif op == "stat":
                s = os.lstat(target)
                return (s.st_mode, s.st_uid, s.st_gid)
            elif op == "list":
                return sorted(os.listdir(target))
            return None

        def as_1234(r: Path) -> object:
            os.setegid(USER)
            os.seteuid(USER)
            try:
                return run(r)
            finally:
                os.seteuid(0)
                os.setegid(0)
        self.both(as_1234)


    @rule(path=PATHS, mode=MODES, excl=st.booleans())
    def create(self, path: str, mode: int, excl: bool) -> None:
        flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if excl else 0)
        self.both(lambda r: os.close(os.open(r / path, flags | NB, mode)))

    @rule(path=PATHS, offset=st.integers(0, 5000), data=DATA)
    def write(self, path: str, offset: int, data: bytes) -> None:
        def op(r: Path) -> int:
            fd = os.open(r / path, os.O_WRONLY | NB)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        self.both(op)

    @rule(path=PATHS, data=DATA)
    def append(self, path: str, data: bytes) -> None:
        def op(r: Path) -> int:
            fd = os.open(r / path, os.O_WRONLY | os.O_APPEND | NB)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)
        self.both(op)

    @rule(path=PATHS, size=st.integers(0, 6000))
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda r: os.truncate(r / path, size))

    @precondition(lambda self: self.session != "libfuse")
    @rule(path=PATHS, mode=FALLOCATE_MODES, offset=OFFSETS, length=st.integers(1, 20000))
    def fallocate(self, path: str, mode: int, offset: int, length: int) -> None:
        def op(r: Path) -> tuple[int, bytes]:
            fd = os.open(r / path, os.O_RDWR | NB)
            try:
                sc.fallocate(fd, mode, offset, length)
                return os.fstat(fd).st_size, os.pread(fd, 64, max(offset - 32, 0))
            finally:
                os.close(fd)
        self.both(op)

    @precondition(lambda self: self.session != "libfuse")
    @rule(path=PATHS, whence=st.sampled_from([os.SEEK_DATA, os.SEEK_HOLE]), offset=OFFSETS)
    def seek(self, path: str, whence: int, offset: int) -> None:
        def op(r: Path) -> int | None:
            fd = os.open(r / path, os.O_RDONLY | NB)
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return None  # a directory's lseek is the kernel's own (README)
                return os.lseek(fd, offset, whence)
            finally:
                os.close(fd)
        self.both(op)

    @rule(src=PATHS, dst=PATHS, off_in=OFFSETS, off_out=OFFSETS,
          length=st.integers(0, 20000))
    def copy_range(self, src: str, dst: str, off_in: int, off_out: int, length: int) -> None:
        def op(r: Path) -> int:
            fin = os.open(r / src, os.O_RDONLY | NB)
            try:
                fout = os.open(r / dst, os.O_WRONLY | NB)
                try:
                    return os.copy_file_range(fin, fout, length, off_in, off_out)
                finally:
                    os.close(fout)
            finally:
                os.close(fin)
        self.both(op)

    @rule(path=PATHS, seconds=st.integers(-(2**34), 2**34), nsec=st.integers(0, 10**9 - 1))
    def utime(self, path: str, seconds: int, nsec: int) -> None:
        def op(r: Path) -> tuple[int, int]:
            os.utime(r / path, ns=(seconds * 10**9 + nsec, -seconds * 10**9 + nsec),
                     follow_symlinks=False)
            s = os.lstat(r / path)
            return s.st_atime_ns, s.st_mtime_ns
        self.both(op)

    @precondition(lambda self: self.session != "libfuse")
    @rule(path=PATHS, data=DATA, mode=MODES)
    def tmpfile_link(self, path: str, data: bytes, mode: int) -> None:
        def op(r: Path) -> int:
            parent = (r / path).parent
            fd = os.open(parent, os.O_TMPFILE | os.O_RDWR, mode)
            try:
                os.write(fd, data)
                sc.linkat(fd, b"", sc.AT_FDCWD, os.fsencode(r / path), sc.AT_EMPTY_PATH)
                return os.fstat(fd).st_nlink
            finally:
                os.close(fd)
        self.both(op)

    @rule(path=PATHS, mode=MODES)
    def mkdir(self, path: str, mode: int) -> None:
        self.both(lambda r: os.mkdir(r / path, mode | 0o700))

    @rule(src=PATHS, dst=PATHS, flags=st.sampled_from([0, sc.RENAME_NOREPLACE,
                                                       sc.RENAME_EXCHANGE]))
    def rename(self, src: str, dst: str, flags: int) -> None:
        self.both(lambda r: sc.renameat2(sc.AT_FDCWD, str(r / src), sc.AT_FDCWD,
                                         str(r / dst), flags))

    @rule(path=PATHS)
    def unlink(self, path: str) -> None:
        self.both(lambda r: os.unlink(r / path))

    @rule(path=PATHS)
    def rmdir(self, path: str) -> None:
        self.both(lambda r: os.rmdir(r / path))

    @rule(src=PATHS, dst=PATHS)
    def link(self, src: str, dst: str) -> None:
        self.both(lambda r: os.link(r / src, r / dst, follow_symlinks=False))

    @rule(dest=TARGETS, path=PATHS)
    def symlink(self, dest: str, path: str) -> None:
        self.both(lambda r: os.symlink(dest, r / path))

    @rule(path=PATHS, mode=MODES)
    def chmod(self, path: str, mode: int) -> None:
        self.both(lambda r: os.chmod(r / path, mode))

    @rule(path=PATHS)
    def read(self, path: str) -> None:
        self.both(lambda r: read_file(r / path))

    @rule(path=PATHS)
    def lstat(self, path: str) -> None:
        def op(r: Path) -> tuple[int, int, int, int, int]:
            s = os.lstat(r / path)
            return (s.st_mode, s.st_size, s.st_nlink, s.st_uid, s.st_gid)
        self.both(op)

    @rule(path=PATHS)
    def stat_follow(self, path: str) -> None:
        def op(r: Path) -> tuple[int, int, int]:
            s = os.stat(r / path)
            return (stat.S_IFMT(s.st_mode), s.st_size, s.st_nlink)
        self.both(op)

    @rule(path=st.sampled_from(["", "d", "d/e", "a"]))
    def listdir(self, path: str) -> None:
        self.both(lambda r: sorted(os.listdir(r / path)))

    def teardown(self) -> None:
        for slot in list(self.fds):
            self.close_held(slot)
        # Contents of the whole tree must match at the end of every example.
        def tree(r: Path) -> list[tuple[str, int, int, int, bytes | str | None, list[str]]]:
            out = []
            for dirpath, dirs, files in os.walk(r):
                for name in sorted(dirs + files):
                    p = Path(dirpath) / name
                    s = os.lstat(p)
                    body: bytes | str | None = None
                    if stat.S_ISREG(s.st_mode):
                        body = p.read_bytes()
                    elif stat.S_ISLNK(s.st_mode):
                        body = os.readlink(p)
                    out.append((str(p.relative_to(r)), s.st_mode, s.st_uid, s.st_gid,
                                body, sorted(os.listxattr(p, follow_symlinks=False))))
            return sorted(out)
        assert tree(self.served) == tree(self.plain)


class HostChangesBehindTheMount(ServeFsVsPlain):
    """The same, plus changes made on the host to the served tree itself (not through the
    mount): after the attribute timeout the mount shows them, as the plain side does."""

    backing_base: Path

    def __init__(self) -> None:
        super().__init__()
        self.backing = self.backing_base / self.served.name

    @rule(path=PATHS, data=DATA, how=st.sampled_from(["write", "unlink", "mkdir", "chmod"]))
    def on_the_host(self, path: str, data: bytes, how: str) -> None:
        def change(r: Path) -> object:
            if how == "write":  # non-blocking: a fifo made by a step above, no reader
                fd = os.open(r / path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | NB, 0o644)
                try:
                    return os.write(fd, data)
                finally:
                    os.close(fd)
            if how == "unlink":
                os.unlink(r / path)
            elif how == "mkdir":
                os.mkdir(r / path, 0o755)
            else:
                os.chmod(r / path, 0o640)
            return None
        expected = outcome(change, self.plain)
        got = outcome(change, self.backing)
        assert got == expected, f"on the host {got!r}, on the plain side {expected!r}"
        time.sleep(1.1)  # entry and attribute timeouts: the mount drops what it cached


@pytest.fixture(params=["wire", "uring", "libfuse"])
def bases(request: pytest.FixtureRequest) -> Iterator[tuple[Path, Path, Path, str]]:
    """(plain dir, the served dir through the mount, the served dir natively, the session
    type), for each session that ships."""
    tmp = Path(tempfile.mkdtemp(prefix="cntr-diff-"))
    os.chmod(tmp, 0o755)  # the non-root requester reaches the plain side as the served one
    (tmp / "plain").mkdir()
    (tmp / "served").mkdir()
    uring = fuse_uring_enabled() if request.param == "uring" else contextlib.nullcontext()
    try:
        with uring, serve_fs_mount(tmp / "served",
                                   env={"CNTR_SERVE_FS_LOOP": request.param}) as served:
            yield tmp / "plain", served.mountpoint, tmp / "served", request.param
            assert served.proc.poll() is None, served.log_text()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _settings(examples: int, steps: int) -> settings:
    return settings(max_examples=examples, stateful_step_count=steps, deadline=None,
                    suppress_health_check=list(HealthCheck), database=DATABASE,
                    print_blob=True)


def test_serve_fs_matches_a_plain_directory(bases: tuple[Path, Path, Path, str]) -> None:
    m = ServeFsVsPlain
    m.plain_base, m.served_base, _, m.session = bases
    run_state_machine_as_test(m, settings=_settings(150, 50))


def test_changes_on_the_host_show_through_the_mount(
        bases: tuple[Path, Path, Path, str]) -> None:
    m = HostChangesBehindTheMount
    m.plain_base, m.served_base, m.backing_base, m.session = bases
    run_state_machine_as_test(m, settings=_settings(25, 20))
