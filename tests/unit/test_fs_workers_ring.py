"""cntr.fs.completions without FUSE, on a real io_uring: FSYNC and FSYNCDIR queued on
the ring, their replies (0 or the fsync's errno) written by `reap` to a pipe standing in
for /dev/fuse, the file an fsync was asked for still the one synced after its number was
reused, nothing left open; and the fallback when the kernel refuses a ring (a seccomp
filter)."""

from __future__ import annotations

import errno
import os
import select
import struct
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.fs.completions import Completions
from cntr.fs.protocol import FSYNC, FSYNCDIR, GETATTR, IN_HEADER, OUT_HEADER
from tests.unit.test_fs_workers import open_fds, request

REPO = Path(__file__).resolve().parents[2]


class Pipe:
    """Where the replies go: its read end, non-blocking."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe()
        os.set_blocking(self.rfd, False)

    def replies(self) -> list[tuple[int, int]]:
        """(error, unique) of every reply written so far (each header alone)."""
        try:
            raw = os.read(self.rfd, 1 << 16)
        except BlockingIOError:
            return []
        out = []
        for length, err, unique in OUT_HEADER.iter_unpack(raw):
            assert length == OUT_HEADER.size
            out.append((err, unique))
        return out


@pytest.fixture
def pipe() -> Iterator[Pipe]:
    p = Pipe()
    yield p
    os.close(p.rfd)
    os.close(p.wfd)


def settle(ring: Completions) -> None:
    """Reap until no request is out (each waits at most 30 s for a completion)."""
    while ring.pending:
        assert select.select([ring.fd], [], [], 30)[0], "no completion in 30 s"
        ring.reap()


def fsync(fh: int, unique: int, flags: int = 0, opcode: int = FSYNC) -> bytearray:
    return request(opcode, unique, struct.pack("=QI4x", fh, flags))


def new_ring(pipe: Pipe, open_dir: object = None) -> Completions:
    ring = Completions.setup(pipe.wfd, open_dir or (lambda fh: -1))  # type: ignore[arg-type]
    assert ring is not None, "this kernel refused an io_uring"
    return ring


@pytest.mark.parametrize("flags", [0, 1], ids=["fsync", "fdatasync"])
def test_an_fsync_is_answered_by_the_kernel(tmp_path: Path, pipe: Pipe, flags: int) -> None:
    fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
    os.write(fd, b"x" * 4096)
    before = open_fds()
    ring = new_ring(pipe)
    opened = open_fds() - before  # the ring's own descriptors
    assert ring.take(fsync(fd, 11, flags), IN_HEADER.size + 16)
    assert ring.pending
    settle(ring)
    assert pipe.replies() == [(0, 11)]
    assert open_fds() == before | opened  # the duplicate is closed
    ring.close()
    assert open_fds() == before
    os.close(fd)


def test_a_failed_fsync_gets_its_errno(pipe: Pipe) -> None:
    """fsync(2) of a pipe is EINVAL: the reply says so."""
    r, w = os.pipe()
    with pytest.raises(OSError) as native:
        os.fsync(r)
    assert native.value.errno == errno.EINVAL
    ring = new_ring(pipe)
    assert ring.take(fsync(r, 12), IN_HEADER.size + 16)
    settle(ring)
    assert pipe.replies() == [(-errno.EINVAL, 12)]
    ring.close()
    os.close(r)
    os.close(w)


def test_a_file_released_while_its_fsync_is_out_is_still_the_one_synced(
        tmp_path: Path, pipe: Pipe) -> None:
    """The kernel may RELEASE a file while its fsync is out, and a later open reuse its
    number: here the number is made a pipe's at once (fsync of which is EINVAL).  io_uring
    looks the file up when its io-wq thread starts the fsync, after that: only the
    duplicate the ring was given keeps the file the request was for."""
    ring = new_ring(pipe)
    before = open_fds()
    r, w = os.pipe()
    for unique in range(20):
        fd = os.open(tmp_path / "f", os.O_RDWR | os.O_CREAT, 0o644)
        assert ring.take(fsync(fd, unique), IN_HEADER.size + 16)
        os.dup2(r, fd)  # RELEASE, and the number reused
        settle(ring)
        assert pipe.replies() == [(0, unique)]
        os.close(fd)
    os.close(r)
    os.close(w)
    assert open_fds() == before
    ring.close()


def test_fsyncdir_on_the_directory_the_core_opened(tmp_path: Path, pipe: Pipe) -> None:
    opened: list[int] = []

    def open_dir(fh: int) -> int:
        opened.append(fh)
        return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)

    ring = new_ring(pipe, open_dir)
    before = open_fds()
    assert ring.take(fsync(77, 13, 1, FSYNCDIR), IN_HEADER.size + 16)
    settle(ring)
    assert pipe.replies() == [(0, 13)]
    assert opened == [77]
    assert open_fds() == before
    ring.close()


def test_what_the_ring_does_not_take(pipe: Pipe) -> None:
    """Other opcodes (also one whose low byte is FSYNC's), a handle that is no descriptor
    and a directory handle the core does not know (both answered by the handler: its
    EBADF) stay with the caller, and nothing is queued."""

    def no_dir(fh: int) -> int:
        raise OSError(errno.EBADF, "no such directory handle")

    ring = new_ring(pipe, no_dir)
    before = open_fds()
    assert not ring.take(request(GETATTR, 1, b"\0" * 16), IN_HEADER.size + 16)
    assert not ring.take(fsync(0, 2, opcode=FSYNC + 256), IN_HEADER.size + 16)
    assert not ring.take(fsync(987_654, 3), IN_HEADER.size + 16)
    assert not ring.take(fsync(5, 4, opcode=FSYNCDIR), IN_HEADER.size + 16)
    assert not ring.pending
    assert not ring.ready()
    assert pipe.replies() == []
    assert open_fds() == before
    ring.close()


#: a child that may not set up an io_uring (seccomp: EPERM), as under a container
#: runtime's default profile or ``kernel.io_uring_disabled=2``
_REFUSED = """
import logging, os, struct, sys
from cntr.linux import syscalls
prog = (struct.pack("=HBBI", 0x20, 0, 0, 0)  # nr
        + struct.pack("=HBBI", 0x15, 0, 1, 425)  # io_uring_setup?
        + struct.pack("=HBBI", 0x06, 0, 0, 0x00050000 | 1)  # EPERM
        + struct.pack("=HBBI", 0x06, 0, 0, 0x7FFF0000))  # allowed
syscalls.seccomp_set_filter(prog)
logging.basicConfig(level=logging.INFO, format="%(message)s")
from cntr.fs.completions import Completions
r, w = os.pipe()
print(Completions.setup(w, lambda fh: -1))
"""


@pytest.mark.root
def test_no_ring_when_the_kernel_refuses_one() -> None:
    out = subprocess.run([sys.executable, "-c", _REFUSED], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert (out.stdout, out.stderr) == (
        "None\n", "serve-fs: no io_uring for fsync (Operation not permitted): worker "
        "threads answer it\n")
