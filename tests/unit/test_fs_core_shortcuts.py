"""What the handler core answers from what it already holds instead of asking the host
again: a file created for writing and still open answers for its inode (xattrs, attributes,
changes) through that descriptor; a root:root create looks nothing up in its parent; the
page-cache stamp a release leaves.  Each shortcut must answer what the long way would."""

from __future__ import annotations

import errno
import os
import stat
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.fs import protocol
from cntr.fs.inodes import ROOT_INODE, InodeT
from cntr.fs.passthrough import FileHandle, Passthrough
from cntr.linux import syscalls as sc

_TAG = b"user.tag"


@pytest.fixture(params=[True, False], ids=["handles", "names"])
def fs(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Passthrough]:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    fs = Passthrough(fd, use_handles=request.param)
    yield fs
    fs.close()


def create(fs: Passthrough, name: bytes, flags: int = os.O_WRONLY,
           req: protocol.Request | None = None) -> tuple[InodeT, FileHandle]:
    """CREATE ``name`` in the root: (node id, file handle)."""
    reply = fs.create(ROOT_INODE, name, stat.S_IFREG | 0o644, flags,
                      req or protocol.Request(umask=0o022))
    nodeid = protocol.ENTRY_OUT.unpack_from(reply)[0]
    fh, _open_flags, _backing = protocol.OPEN_OUT.unpack_from(reply, protocol.ENTRY_OUT.size)
    return InodeT(nodeid), FileHandle(fh)


def open_flags(fs: Passthrough, nodeid: InodeT, flags: int = os.O_RDONLY) -> int:
    """The fuse_open_out flags of an open of ``nodeid`` (released right after)."""
    fh, got, _ = protocol.OPEN_OUT.unpack(fs.open(nodeid, flags))
    fs.release(FileHandle(fh))
    return int(got)


def replace_on_host(tmp_path: Path) -> None:
    """The host moves ``f`` to ``g`` (tagged ``old``) and puts a new ``f`` (tagged ``new``)
    in its place."""
    os.setxattr(tmp_path / "f", _TAG, b"old")
    os.rename(tmp_path / "f", tmp_path / "g")
    (tmp_path / "f").write_bytes(b"new file")
    os.setxattr(tmp_path / "f", _TAG, b"new")


def test_an_open_created_file_answers_for_its_own_inode(fs: Passthrough,
                                                        tmp_path: Path) -> None:
    nodeid, fh = create(fs, b"f")
    with pytest.raises(OSError) as missing:
        fs.getxattr(nodeid, b"security.capability")
    assert missing.value.errno == errno.ENODATA
    replace_on_host(tmp_path)
    assert fs.getxattr(nodeid, _TAG) == b"old"
    assert fs.listxattr(nodeid) == _TAG + b"\0"
    fs.setxattr(nodeid, b"user.more", b"1", 0)
    attr = protocol.ATTR_OUT.unpack(fs.setattr(nodeid, protocol.Request(), protocol.FATTR_MODE,
                                               None, 0, 0o600, 0, 0, 0, 0))
    fs.removexattr(nodeid, _TAG)
    assert stat.S_IMODE(attr[12]) == 0o600
    assert stat.S_IMODE((tmp_path / "g").stat().st_mode) == 0o600
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o644
    assert os.listxattr(tmp_path / "g") == ["user.more"]
    assert os.getxattr(tmp_path / "f", _TAG) == b"new"
    fs.release(fh)
    assert (tmp_path / "g").read_bytes() == b""


def test_after_its_release_the_long_way_answers(fs: Passthrough, tmp_path: Path) -> None:
    nodeid, fh = create(fs, b"f")
    fs.release(fh)
    replace_on_host(tmp_path)
    if fs.table.use_handles:
        assert fs.getxattr(nodeid, _TAG) == b"old"  # the handle is the inode's
    else:
        with pytest.raises(OSError) as stale:  # the name is another file's now
            fs.getxattr(nodeid, _TAG)
        assert stale.value.errno == errno.ESTALE


def test_two_opens_of_one_created_file(fs: Passthrough, tmp_path: Path) -> None:
    nodeid, fh = create(fs, b"f")
    other = FileHandle(protocol.OPEN_OUT.unpack(fs.open(nodeid, os.O_WRONLY))[0])
    fs.release(fh)  # the created one goes first: the other stays usable
    os.setxattr(tmp_path / "f", _TAG, b"v")
    assert fs.getxattr(nodeid, _TAG) == b"v"
    fs.release(other)
    assert fs.getxattr(nodeid, _TAG) == b"v"


def test_a_page_cache_writer_leaves_a_stamp_that_a_host_write_breaks(
        fs: Passthrough, tmp_path: Path) -> None:
    # passthrough off: every open goes through the page cache
    nodeid, fh = create(fs, b"f")
    fs.write(nodeid, fh, 0, b"a" * 100)
    fs.release(fh)
    assert open_flags(fs, nodeid) & protocol.FOPEN_KEEP_CACHE
    with open(tmp_path / "f", "r+b") as f:
        f.write(b"b" * 100)
    st = (tmp_path / "f").stat()
    os.utime(tmp_path / "f", ns=(st.st_atime_ns, st.st_mtime_ns + 1_000_000_000))
    assert not open_flags(fs, nodeid) & protocol.FOPEN_KEEP_CACHE
    assert open_flags(fs, nodeid) & protocol.FOPEN_KEEP_CACHE


@pytest.mark.parametrize("setgid", [False, True])
def test_new_files_of_root_and_of_a_user_in_a_set_group_id_directory(
        fs: Passthrough, tmp_path: Path, setgid: bool) -> None:
    os.chown(tmp_path, 0, 4321)
    os.chmod(tmp_path, 0o2777 if setgid else 0o777)
    _, fh = create(fs, b"root", req=protocol.Request(0, 0, umask=0o022))
    fs.release(fh)
    _, fh = create(fs, b"user", req=protocol.Request(1234, 1234, umask=0o022))
    fs.release(fh)
    group = 4321 if setgid else 0
    assert [((tmp_path / n).stat().st_uid, (tmp_path / n).stat().st_gid)
            for n in ("root", "user")] == [(0, group), (1234, 4321 if setgid else 1234)]


#: a struct vfs_cap_data (revision 2): CAP_NET_BIND_SERVICE permitted and effective
_CAPS = struct.pack("<5I", 0x02000001, 1 << 10, 0, 0, 0)


@pytest.mark.parametrize("still_open", [True, False], ids=["open", "released"])
def test_a_chown_clears_set_user_id_and_capabilities(fs: Passthrough, tmp_path: Path,
                                                     still_open: bool) -> None:
    nodeid, fh = create(fs, b"f")
    if not still_open:
        fs.release(fh)
    os.chmod(tmp_path / "f", 0o4755)
    os.setxattr(tmp_path / "f", "security.capability", _CAPS)
    valid = protocol.FATTR_UID | protocol.FATTR_KILL_SUIDGID
    attr = protocol.ATTR_OUT.unpack(fs.setattr(nodeid, protocol.Request(), valid, None, 0, 0,
                                               1234, 0, 0, 0))
    assert (attr[14], stat.S_IMODE(attr[12])) == (1234, 0o755)  # uid, mode
    st = (tmp_path / "f").stat()
    assert (st.st_uid, stat.S_IMODE(st.st_mode)) == (1234, 0o755)
    assert "security.capability" not in os.listxattr(tmp_path / "f")
    valid = protocol.FATTR_MODE | protocol.FATTR_SIZE
    fs.setattr(nodeid, protocol.Request(), valid, None, 7, 0o640, 0, 0, 0, 0)
    st = (tmp_path / "f").stat()
    assert (st.st_size, stat.S_IMODE(st.st_mode)) == (7, 0o640)
    if still_open:
        fs.release(fh)


def test_chmod_fd_takes_an_o_path_descriptor(tmp_path: Path) -> None:
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_PATH)
    try:
        sc.chmod_fd(fd, 0o4711)
        assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o4711
        os.unlink(tmp_path / "f")
        sc.chmod_fd(fd, 0o600)  # the inode, not a name
        assert stat.S_IMODE(os.fstat(fd).st_mode) == 0o600
    finally:
        os.close(fd)
    with pytest.raises(OSError) as bad:
        sc.chmod_fd(fd, 0o600)
    assert bad.value.errno == errno.EBADF


def test_a_missing_name_is_a_negative_entry_other_errors_raise(fs: Passthrough,
                                                              tmp_path: Path) -> None:
    entry = protocol.ENTRY_OUT.unpack(fs.lookup(ROOT_INODE, b"missing"))
    assert entry[:6] == (0, 0, 1, 0, 0, 0)  # node id 0: cached as missing for 1 s
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_PATH)
    try:
        with pytest.raises(OSError) as not_dir:
            fs.statbuf.find(fd, b"x", 0)
        assert not_dir.value.errno == errno.ENOTDIR
        assert fs.statbuf.find(fs.table.root.fd, b"nope", 0) is None
    finally:
        os.close(fd)


def test_chmod_fd_without_fchmodat2_goes_through_procfs(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # what a kernel before 6.6 leaves (its first ENOSYS clears the flag)
    monkeypatch.setattr(sc, "_fchmodat2_works", [False])
    (tmp_path / "f").write_bytes(b"")
    fd = os.open(tmp_path / "f", os.O_PATH)
    try:
        sc.chmod_fd(fd, 0o2750)
    finally:
        os.close(fd)
    assert stat.S_IMODE((tmp_path / "f").stat().st_mode) == 0o2750
