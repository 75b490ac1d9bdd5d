"""Node ids derived from (device, inode number): what the session sees through real FUSE.

serve-fs reports each file's node id as its st_ino: stable for a file, shared by hard
links, and when the host reuses an inode number for a new file the node id stays and its
generation moves on (the kernel then drops its inode of the old file).
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest

from tests.conftest import require
from tests.integration.fsutil import serve_fs_mount

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def test_ids_are_stable_and_derived_from_the_host_inode(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    (src / "a").write_text("a")
    os.link(src / "a", src / "hard")
    (src / "b").write_text("b")
    with serve_fs_mount(src) as served:
        mnt = served.mountpoint
        a, hard, b = (os.lstat(mnt / n).st_ino for n in ("a", "hard", "b"))
        assert a == hard != b
        assert a & ((1 << 48) - 1) == os.lstat(src / "a").st_ino
        assert a >> 48 >= 1
        time.sleep(1.2)  # entry timeout: the next stat asks serve-fs again
        assert os.lstat(mnt / "a").st_ino == a


# serve-fs with the smallest descriptor cache: a cached O_PATH descriptor would keep the
# old file (and its inode number) alive on the host.
_SMALL_CACHE = (
    "import sys, cntr.stages.serve_fs as s, cntr.fs.passthrough as p\n"
    "init = p.Passthrough.__init__\n"
    "def small(self, fd, **kw):\n"
    "    init(self, fd, **{**kw, 'fd_cache_size': 4})\n"
    "p.Passthrough.__init__ = small\n"
    "sys.exit(s._main(sys.argv[1:]))\n"
)


def test_reused_inode_number_is_a_new_file_with_the_same_id(tmp_path: Path) -> None:
    src = tmp_path / "src"
    src.mkdir()
    for i in range(8):
        (src / f"d{i}").mkdir()
    with serve_fs_mount(src, launcher=("-c", _SMALL_CACHE)) as served:
        mnt = served.mountpoint
        reused = False
        for attempt in range(5):
            f = f"f{attempt}"
            (src / f).write_text("old")
            old_ino = os.lstat(src / f).st_ino
            assert (mnt / f).read_text() == "old"
            through = os.lstat(mnt / f).st_ino
            for i in range(8):  # push f's descriptor out of serve-fs's cache
                assert not (mnt / f"d{i}" / f"x{attempt}").exists()
            time.sleep(0.1)  # serve-fs closes its descriptor at RELEASE, sent after close
            os.unlink(src / f)
            time.sleep(0.01)  # a later birth time
            (src / f).write_text("new")
            if os.lstat(src / f).st_ino != old_ino:
                continue  # the host picked another inode number: try again
            reused = True
            time.sleep(1.2)  # entry/attr timeouts
            assert (mnt / f).read_text() == "new"
            assert os.lstat(mnt / f).st_ino == through
            break
        if not reused:
            require("the host filesystem did not reuse the inode number")
        assert served.proc.poll() is None
