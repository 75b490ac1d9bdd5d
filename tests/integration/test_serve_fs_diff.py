"""Differential test: random operation sequences through serve-fs and on a plain directory.

A hypothesis `RuleBasedStateMachine` applies each operation to a directory seen through a
serve-fs mount and to a plain directory on the same host filesystem, and requires the same
outcome: the same return value or the same errno, the same contents and the same stat
fields (mode, size, nlink, uid, gid; times only where a rule sets them, before 1970
included).  Besides the namespace and data operations: fallocate (the modes FUSE carries),
lseek SEEK_DATA/SEEK_HOLE, copy_file_range and O_TMPFILE files linked in.
"""

from __future__ import annotations

import itertools
import os
import shutil
import stat
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, rule, run_state_machine_as_test

from cntr.linux import syscalls as sc
from tests.integration.fsutil import serve_fs_mount

pytestmark = [pytest.mark.root, pytest.mark.fuse]

PATHS = st.sampled_from(["a", "b", "d", "d/a", "d/c", "d/e", "d/e/b", "e"])
TARGETS = st.sampled_from(["a", "d/a", "../a", "d", "missing", "e/b"])
DATA = st.binary(min_size=0, max_size=300)
MODES = st.integers(min_value=0, max_value=0o777)
#: fallocate modes the kernel's FUSE passes on: 0, KEEP_SIZE, PUNCH_HOLE|KEEP_SIZE,
#: ZERO_RANGE, ZERO_RANGE|KEEP_SIZE
FALLOCATE_MODES = st.sampled_from([0, 0x01, 0x03, 0x10, 0x11])
OFFSETS = st.integers(0, 20000)
Outcome = tuple[str, object]


def outcome(fn: Callable[[Path], object], root: Path) -> Outcome:
    try:
        return ("ok", fn(root))
    except OSError as exc:
        return ("err", exc.errno)


class ServeFsVsPlain(RuleBasedStateMachine):
    """One example: a fresh pair of directories, then random operations on both."""

    plain_base: Path
    served_base: Path
    counter = itertools.count()

    def __init__(self) -> None:
        super().__init__()
        n = next(self.counter)
        self.plain = self.plain_base / f"case{n}"
        self.served = self.served_base / f"case{n}"
        self.plain.mkdir()
        self.served.mkdir()

    def both(self, fn: Callable[[Path], object]) -> Outcome:
        expected = outcome(fn, self.plain)
        got = outcome(fn, self.served)
        assert got == expected, f"through serve-fs {got!r}, natively {expected!r}"
        return got

    @rule(path=PATHS, mode=MODES, excl=st.booleans())
    def create(self, path: str, mode: int, excl: bool) -> None:
        flags = os.O_CREAT | os.O_WRONLY | (os.O_EXCL if excl else 0)
        self.both(lambda r: os.close(os.open(r / path, flags, mode)))

    @rule(path=PATHS, offset=st.integers(0, 5000), data=DATA)
    def write(self, path: str, offset: int, data: bytes) -> None:
        def op(r: Path) -> int:
            fd = os.open(r / path, os.O_WRONLY)
            try:
                return os.pwrite(fd, data, offset)
            finally:
                os.close(fd)
        self.both(op)

    @rule(path=PATHS, data=DATA)
    def append(self, path: str, data: bytes) -> None:
        def op(r: Path) -> int:
            fd = os.open(r / path, os.O_WRONLY | os.O_APPEND)
            try:
                return os.write(fd, data)
            finally:
                os.close(fd)
        self.both(op)

    @rule(path=PATHS, size=st.integers(0, 6000))
    def truncate(self, path: str, size: int) -> None:
        self.both(lambda r: os.truncate(r / path, size))

    @rule(path=PATHS, mode=FALLOCATE_MODES, offset=OFFSETS, length=st.integers(1, 20000))
    def fallocate(self, path: str, mode: int, offset: int, length: int) -> None:
        def op(r: Path) -> tuple[int, bytes]:
            fd = os.open(r / path, os.O_RDWR)
            try:
                sc.fallocate(fd, mode, offset, length)
                return os.fstat(fd).st_size, os.pread(fd, 64, max(offset - 32, 0))
            finally:
                os.close(fd)
        self.both(op)

    @rule(path=PATHS, whence=st.sampled_from([os.SEEK_DATA, os.SEEK_HOLE]), offset=OFFSETS)
    def seek(self, path: str, whence: int, offset: int) -> None:
        def op(r: Path) -> int | None:
            fd = os.open(r / path, os.O_RDONLY)
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
            fin = os.open(r / src, os.O_RDONLY)
            try:
                fout = os.open(r / dst, os.O_WRONLY)
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
        self.both(lambda r: (r / path).read_bytes())

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
        # Contents of the whole tree must match at the end of every example.
        def tree(r: Path) -> list[tuple[str, int, bytes | str | None]]:
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
                    out.append((str(p.relative_to(r)), s.st_mode, body))
            return sorted(out)
        assert tree(self.served) == tree(self.plain)


@pytest.fixture
def bases() -> Iterator[tuple[Path, Path]]:
    tmp = Path(tempfile.mkdtemp(prefix="cntr-diff-"))
    (tmp / "plain").mkdir()
    (tmp / "served").mkdir()
    try:
        with serve_fs_mount(tmp / "served") as served:
            yield tmp / "plain", served.mountpoint
            assert served.proc.poll() is None, served.log_text()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def test_serve_fs_matches_a_plain_directory(bases: tuple[Path, Path]) -> None:
    ServeFsVsPlain.plain_base, ServeFsVsPlain.served_base = bases
    run_state_machine_as_test(
        ServeFsVsPlain,
        settings=settings(max_examples=150, stateful_step_count=50, deadline=None,
                          suppress_health_check=list(HealthCheck), database=None),
    )
