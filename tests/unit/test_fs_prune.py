"""What the session writes to the kernel when the inode table is past its bound
(FUSE_NOTIFY_PRUNE), read back from a pipe in place of /dev/fuse; and a kernel that does
not know the notification (an eventfd refuses the write with EINVAL, as such a kernel does)."""

from __future__ import annotations

import fcntl
import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.fs import protocol
from cntr.fs.inodes import ROOT_INODE
from cntr.fs.passthrough import Passthrough
from cntr.fs.session import Session
from tests.unit.test_fs_inodes import synthetic_inodes


@pytest.fixture
def fs(tmp_path: Path) -> Iterator[Passthrough]:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    fs = Passthrough(fd)
    yield fs
    fs.close()


def learn(fs: Passthrough, tmp_path: Path, count: int) -> list[int]:
    """``count`` inodes learned in ``fs``'s table (`synthetic_inodes`), oldest first."""
    return synthetic_inodes(fs.table, tmp_path, count)


def notifications(fd: int) -> list[list[int]]:
    """The FUSE_NOTIFY_PRUNE messages written to the pipe ``fd``: their node ids."""
    os.set_blocking(fd, False)
    data = b""
    try:
        while chunk := os.read(fd, 1 << 20):
            data += chunk
    except BlockingIOError:
        pass
    out = []
    while data:
        length, code, unique, count, _pad, _spare = protocol.NOTIFY_PRUNE_OUT.unpack_from(data)
        assert (code, unique) == (protocol.NOTIFY_PRUNE, 0)
        assert length == protocol.NOTIFY_PRUNE_OUT.size + 8 * count <= len(data)
        out.append(list(struct.unpack_from(f"={count}Q", data, protocol.NOTIFY_PRUNE_OUT.size)))
        data = data[length:]
    return out


def test_past_the_bound_the_oldest_are_named(fs: Passthrough, tmp_path: Path) -> None:
    rfd, wfd = os.pipe()
    try:
        session = Session(fs, wfd)
        fs.table.set_bound(80)
        ids = learn(fs, tmp_path, 79)
        session.prune_if_due()  # 80 with the root: not past it
        assert notifications(rfd) == []
        ids += learn(fs, tmp_path, 100)[79:]
        session.prune_if_due()
        # back to 7/8 of the bound: 101 - 70 = 31 named, the oldest, never the root
        assert notifications(rfd) == [ids[:31]]
        assert ROOT_INODE not in ids
        session.prune_if_due()  # the forgets are not in yet: nothing more
        assert notifications(rfd) == []
    finally:
        os.close(rfd)
        os.close(wfd)


def test_many_are_named_in_notifications_of_4096(fs: Passthrough, tmp_path: Path) -> None:
    rfd, wfd = os.pipe()
    try:
        fcntl.fcntl(wfd, fcntl.F_SETPIPE_SZ, 1 << 20)
        session = Session(fs, wfd)
        fs.table.set_bound(1000)
        ids = learn(fs, tmp_path, 10_000)
        session.prune()
        sent = notifications(rfd)
        assert [len(chunk) for chunk in sent] == [4096, 4096, 10_001 - 875 - 8192]
        assert [i for chunk in sent for i in chunk] == ids[:10_001 - 875]
    finally:
        os.close(rfd)
        os.close(wfd)


def test_a_kernel_without_prune_leaves_the_table_unbounded(
        fs: Passthrough, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    efd = os.eventfd(0, os.EFD_NONBLOCK)
    try:
        session = Session(fs, efd)
        fs.table.set_bound(10)
        learn(fs, tmp_path, 20)
        with caplog.at_level(logging.DEBUG, "cntr.fs"):
            session.prune_if_due()
            session.prune_if_due()
        assert fs.table.max_inodes == 0
        assert [(r.levelname, r.getMessage()) for r in caplog.records] == [
            ("INFO", "serve-fs: the kernel cannot prune inodes (FUSE_NOTIFY_PRUNE: Invalid "
                     "argument): the inode table is unbounded")]
        learn(fs, tmp_path, 40)
        session.prune_if_due()  # no bound now: nothing is tried again
        assert len(caplog.records) == 1
    finally:
        os.close(efd)
