"""serve-fs's inode table stays bounded on a real FUSE mount (FUSE_NOTIFY_PRUNE).

The kernel keeps every inode it has a dentry for until memory pressure, and serve-fs keeps
an entry for every inode the kernel holds.  Past its bound the session asks the kernel to
drop the oldest (``InodeTable.max_inodes``); the kernel FORGETs those it holds no reference
to.  The bound is made small here so that a walk of a few thousand files crosses it many
times; the server reports its table size on SIGUSR1.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cntr.errors import CntrError
from tests.integration.fsutil import (
    REPO,
    Served,
    fuse_uring_enabled,
    io_urings,
    is_mounted,
    serve_fs_mount,
)

pytestmark = [pytest.mark.root, pytest.mark.fuse]

DIRS, FILES, BOUND = 6, 500, 400
_ENV = {"CNTR_SERVE_FS_INODES": str(BOUND)}

# serve-fs that writes its table size to a file on SIGUSR1 (argv: the file, then
# serve-fs's own arguments).
_REPORTING = (
    "import os, signal, sys, cntr.stages.serve_fs as s, cntr.fs.passthrough as p\n"
    "out = sys.argv.pop(1)\n"
    "init = p.Passthrough.__init__\n"
    "def reporting(self, fd, **kw):\n"
    "    init(self, fd, **kw)\n"
    "    def report(_sig, _frame):\n"
    "        with open(out + '.tmp', 'w') as f:\n"
    "            f.write(str(len(self.table.by_id)))\n"
    "        os.rename(out + '.tmp', out)\n"
    "    signal.signal(signal.SIGUSR1, report)\n"
    "p.Passthrough.__init__ = reporting\n"
    "sys.exit(s._main(sys.argv[1:]))\n"
)


def _content(d: int, f: int) -> bytes:
    return f"file {d}/{f}\n".encode() * (1 + f % 7)


def _tree(src: Path) -> None:
    for d in range(DIRS):
        sub = src / f"d{d}"
        sub.mkdir(parents=True)
        for f in range(FILES):
            (sub / f"f{f:03d}").write_bytes(_content(d, f))


def _table_size(served: Served, out: Path) -> int:
    """The size of serve-fs's table once the forgets the kernel queued are in (over
    /dev/fuse they come before the next request; with io_uring concurrently with it)."""
    size = -1
    for _ in range(50):
        os.stat(served.mountpoint)  # a round trip: a prune that is due is made
        out.unlink(missing_ok=True)
        served.proc.send_signal(signal.SIGUSR1)
        for _ in range(500):
            if out.exists():
                break
            time.sleep(0.01)
        else:
            raise AssertionError(f"serve-fs did not report its table:\n{served.log_text()}")
        size = int(out.read_text())
        if size <= BOUND:
            break
        time.sleep(0.1)
    return size


def _walk_and_read(mnt: Path) -> int:
    seen = 0
    for d in range(DIRS):
        for f in range(FILES):
            path = mnt / f"d{d}" / f"f{f:03d}"
            st = os.lstat(path)
            assert st.st_size == len(_content(d, f))
            assert path.read_bytes() == _content(d, f)
            seen += 1
    return seen


@pytest.mark.parametrize("loop", ["wire", "uring"])
def test_walk_past_the_bound_leaves_the_table_within_it(tmp_path: Path, loop: str) -> None:
    src = tmp_path / "src"
    _tree(src)
    out = tmp_path / "table"
    with (fuse_uring_enabled() if loop == "uring" else contextlib.nullcontext(),
          serve_fs_mount(src, env={**_ENV, "CNTR_SERVE_FS_LOOP": loop},
                         launcher=("-c", _REPORTING, str(out))) as served):
        if loop == "uring":
            os.stat(served.mountpoint)  # INIT answered, rings registered
            assert io_urings(served.proc.pid) >= (os.cpu_count() or 1), served.log_text()
        mnt = served.mountpoint
        inos = {name: os.lstat(mnt / "d0" / name).st_ino for name in ("f000", "f001")}
        assert _walk_and_read(mnt) == DIRS * FILES
        assert _table_size(served, out) <= BOUND
        # a second walk finds everything again, byte for byte, under the same ids
        assert _walk_and_read(mnt) == DIRS * FILES
        assert {name: os.lstat(mnt / "d0" / name).st_ino for name in inos} == inos
        assert sorted(os.listdir(mnt)) == [f"d{d}" for d in range(DIRS)]
        assert _table_size(served, out) <= BOUND
        assert served.proc.poll() is None, served.log_text()


def test_without_a_bound_the_kernel_keeps_every_inode(tmp_path: Path) -> None:
    """What the bound is for: no memory pressure here, so nothing is ever forgotten."""
    src = tmp_path / "src"
    _tree(src)
    out = tmp_path / "table"
    with serve_fs_mount(src, env={"CNTR_SERVE_FS_INODES": "0"},
                        launcher=("-c", _REPORTING, str(out))) as served:
        assert _walk_and_read(served.mountpoint) == DIRS * FILES
        # the root, the directories and every file
        assert _table_size(served, out) == 1 + DIRS + DIRS * FILES


def test_a_bad_bound_is_refused(tmp_path: Path) -> None:
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    proc = subprocess.run([sys.executable, "-m", "cntr.stages.serve_fs", str(tmp_path), str(mnt)],
                          env={**os.environ, "CNTR_SERVE_FS_INODES": "lots"}, cwd=REPO,
                          capture_output=True, text=True, timeout=60)
    assert proc.stderr == ("cntr: serve-fs: CNTR_SERVE_FS_INODES must be a number >= 0, "
                           "not 'lots'\n")
    assert proc.returncode == CntrError.exit_code == 1
    assert not is_mounted(mnt)
    assert os.listdir(mnt) == []


def test_inodes_in_use_are_kept_past_the_bound(tmp_path: Path) -> None:
    src = tmp_path / "src"
    _tree(src)
    out = tmp_path / "table"
    with serve_fs_mount(src, env=_ENV,
                        launcher=("-c", _REPORTING, str(out))) as served:
        mnt = served.mountpoint
        fd = os.open(mnt / "d0" / "f001", os.O_RDWR)
        cwd = subprocess.Popen(["sleep", "600"], cwd=mnt / "d1")
        try:
            before_fd, before_cwd = os.fstat(fd), os.stat(f"/proc/{cwd.pid}/cwd")
            assert _walk_and_read(mnt) == DIRS * FILES
            assert _walk_and_read(mnt) == DIRS * FILES
            assert _table_size(served, out) <= BOUND
            # the open file and the cwd still answer: their inodes were never forgotten
            after = os.fstat(fd)
            assert (after.st_ino, after.st_size) == (before_fd.st_ino, before_fd.st_size)
            assert os.pwrite(fd, b"FILE", 0) == 4
            assert (src / "d0" / "f001").read_bytes()[:4] == b"FILE"
            assert os.stat(f"/proc/{cwd.pid}/cwd").st_ino == before_cwd.st_ino
            assert len(os.listdir(f"/proc/{cwd.pid}/cwd")) == FILES
            (Path(f"/proc/{cwd.pid}/cwd") / "new").write_bytes(b"made in the cwd")
            assert (src / "d1" / "new").read_bytes() == b"made in the cwd"
        finally:
            cwd.kill()
            cwd.wait()
            os.close(fd)
        assert served.proc.poll() is None, served.log_text()
