"""Through a real mount (FUSE passthrough on): what serve-fs answers from what it already
holds must be what the host says.  A file created through the mount and still open answers
for its own inode (its xattrs, its mode) whatever the host did to its name; a file written
in passthrough mode leaves no page-cache stamp, so a host write after it is seen."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.fsutil import Served, serve_fs_mount

pytestmark = [pytest.mark.root, pytest.mark.fuse]

_TAG = "user.tag"


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[Served, Path]]:
    root = tmp_path / "root"
    root.mkdir()
    with serve_fs_mount(root) as served:
        yield served, root


def host_write(path: Path, data: bytes) -> None:
    """Overwrite ``path`` in place on the host, its mtime one second later (same size)."""
    st = path.stat()
    with open(path, "r+b") as f:
        f.write(data)
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))


def read(path: Path) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read()


def test_an_open_file_answers_for_itself_after_the_host_replaced_it(
        served: tuple[Served, Path]) -> None:
    mnt, root = served[0].mountpoint, served[1]
    fd = os.open(mnt / "f", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    try:
        os.write(fd, b"x")
        os.setxattr(root / "f", _TAG, b"old")
        os.rename(root / "f", root / "g")
        (root / "f").write_bytes(b"new file")
        os.setxattr(root / "f", _TAG, b"new")
        assert os.getxattr(fd, _TAG) == b"old"
        assert os.listxattr(fd) == [_TAG]
        os.fchmod(fd, 0o600)
        os.setxattr(fd, "user.more", b"1")
    finally:
        os.close(fd)
    assert stat.S_IMODE((root / "g").stat().st_mode) == 0o600
    assert stat.S_IMODE((root / "f").stat().st_mode) == 0o644
    assert sorted(os.listxattr(root / "g")) == ["user.more", _TAG]
    assert os.listxattr(root / "f") == [_TAG]
    assert (root / "g").read_bytes() == b"x"


@pytest.mark.parametrize("read_between", [False, True], ids=["unread", "read"])
def test_a_host_write_after_a_passthrough_write_is_seen(
        served: tuple[Served, Path], read_between: bool) -> None:
    mnt, root = served[0].mountpoint, served[1]
    with open(mnt / "f", "xb", buffering=0) as f:
        f.write(b"a" * 100)
    if read_between:
        assert read(mnt / "f") == b"a" * 100
    host_write(root / "f", b"b" * 100)
    assert read(mnt / "f") == b"b" * 100
    assert read(mnt / "f") == b"b" * 100
    host_write(root / "f", b"c" * 100)
    assert read(mnt / "f") == b"c" * 100
