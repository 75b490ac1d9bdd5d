"""The serve-fs inode table without FUSE or privileges: identity, counts, the fd cache.

Without CAP_DAC_READ_SEARCH open_by_handle_at fails, so the table probes each mount, finds
handles unusable and falls back to (parent, name): both the probe and the fallback run
here; as root the handle path runs too.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.fs.inodes import MODE, ROOT_INODE, InodeTable, StatT, key_of
from cntr.fs.operations import host_root_id
from cntr.linux import syscalls as sc

NOFOLLOW = sc.AT_SYMLINK_NOFOLLOW


@pytest.fixture(params=[False, True], ids=["fallback", "handles"])
def table(tmp_path: Path, request: pytest.FixtureRequest) -> Iterator[InodeTable]:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    t = InodeTable(fd, fd_cache_size=8, use_handles=request.param)
    yield t
    t.close()


def lookup(t: InodeTable, parent_id: int, name: bytes) -> tuple[int, StatT]:
    """What the lookup handler does: statx the name, learn it, count one lookup."""
    parent = t.get(parent_id)
    pfd = t.fd(parent)
    st = t.statbuf.at(pfd, name, NOFOLLOW)
    node = t.learn(parent, pfd, name, st)
    node.nlookup += 1
    return node.nodeid, st


def test_root(table: InodeTable, tmp_path: Path) -> None:
    assert table.root.nodeid == ROOT_INODE
    assert table.get(ROOT_INODE) is table.root
    table.forget(ROOT_INODE, 100)
    assert table.get(ROOT_INODE) is table.root
    assert key_of(table.statbuf.at(table.root.fd, b"", sc.AT_EMPTY_PATH)) == table.root.key


def test_same_file_same_node_id_hard_links_too(table: InodeTable, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    os.link(tmp_path / "a", tmp_path / "b")
    (tmp_path / "c").write_text("y")
    a, _ = lookup(table, ROOT_INODE, b"a")
    a2, _ = lookup(table, ROOT_INODE, b"a")
    b, _ = lookup(table, ROOT_INODE, b"b")
    c, _ = lookup(table, ROOT_INODE, b"c")
    assert a == a2 == b
    assert c != a
    assert table.get(a).nlookup == 3


def test_forget_and_new_node_ids_are_never_reused(table: InodeTable, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    a, _ = lookup(table, ROOT_INODE, b"a")
    lookup(table, ROOT_INODE, b"a")
    table.forget(a, 1)
    assert table.get(a).nlookup == 1
    table.forget(a, 1)
    with pytest.raises(OSError) as info:
        table.get(a)
    assert info.value.errno == errno.ESTALE
    table.forget(a, 1)  # unknown: ignored
    again, _ = lookup(table, ROOT_INODE, b"a")
    assert again != a


def test_reused_inode_number_with_other_type_is_a_new_node(table: InodeTable,
                                                            tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    a, st = lookup(table, ROOT_INODE, b"a")
    fake = list(st)
    fake[MODE] = stat.S_IFDIR | 0o755
    node = table.learn(table.root, table.root.fd, b"a", tuple(fake))
    assert node.nodeid != a
    assert table.get(a).nodeid == a  # the kernel's old node stays valid until forgotten


def test_descriptor_cache_is_bounded(table: InodeTable, tmp_path: Path) -> None:
    ids = []
    for i in range(40):
        (tmp_path / f"f{i}").write_text(str(i))
        ids.append(lookup(table, ROOT_INODE, f"f{i}".encode())[0])
    before = len(os.listdir("/proc/self/fd"))
    for _ in range(2):
        for nodeid in ids:
            assert table.fd(table.get(nodeid)) >= 0
            assert len(table.lru) <= 8
    assert table.open_fds() <= 8 + 1 + len(table.mounts)
    assert len(os.listdir("/proc/self/fd")) - before <= 8


def test_reopen_reads_the_right_file(table: InodeTable, tmp_path: Path) -> None:
    ids = {}
    for i in range(30):
        (tmp_path / f"f{i}").write_text(f"content {i}")
        ids[i] = lookup(table, ROOT_INODE, f"f{i}".encode())[0]
    for i, nodeid in ids.items():
        fd = table.open(table.get(nodeid), os.O_RDONLY)
        try:
            assert os.pread(fd, 100, 0) == f"content {i}".encode()
        finally:
            os.close(fd)


def test_nested_directories_after_eviction(table: InodeTable, tmp_path: Path) -> None:
    deep = tmp_path / "a" / "b" / "c"
    deep.mkdir(parents=True)
    (deep / "f").write_text("deep")
    nodeid: int = ROOT_INODE
    for name in (b"a", b"b", b"c", b"f"):
        nodeid, _ = lookup(table, nodeid, name)
    for i in range(20):  # push everything out of the cache
        (tmp_path / f"x{i}").write_text("")
        table.fd(table.get(lookup(table, ROOT_INODE, f"x{i}".encode())[0]))
    fd = table.open(table.get(nodeid), os.O_RDONLY)
    try:
        assert os.read(fd, 10) == b"deep"
    finally:
        os.close(fd)


def test_rename_is_followed(table: InodeTable, tmp_path: Path) -> None:
    (tmp_path / "d").mkdir()
    (tmp_path / "old").write_text("moved")
    d, _ = lookup(table, ROOT_INODE, b"d")
    f, st = lookup(table, ROOT_INODE, b"old")
    os.rename(tmp_path / "old", tmp_path / "d" / "new")
    table.renamed(key_of(st), table.get(d), b"new")
    for i in range(20):
        (tmp_path / f"x{i}").write_text("")
        table.fd(table.get(lookup(table, ROOT_INODE, f"x{i}".encode())[0]))
    fd = table.open(table.get(f), os.O_RDONLY)
    try:
        assert os.read(fd, 10) == b"moved"
    finally:
        os.close(fd)


def test_replaced_behind_our_back_is_stale_not_wrong(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    t = InodeTable(fd, fd_cache_size=4, use_handles=False)
    try:
        (tmp_path / "f").write_text("old")
        f, _ = lookup(t, ROOT_INODE, b"f")
        keep = os.open(tmp_path / "f", os.O_RDONLY)  # keeps the old inode number in use
        os.unlink(tmp_path / "f")
        (tmp_path / "f").write_text("new")
        for i in range(8):
            (tmp_path / f"x{i}").write_text("")
            t.fd(t.get(lookup(t, ROOT_INODE, f"x{i}".encode())[0]))
        with pytest.raises(OSError) as info:
            t.fd(t.get(f))
        assert info.value.errno == errno.ESTALE
        os.close(keep)
    finally:
        t.close()


def test_drop_if_unused(table: InodeTable, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("")
    parent = table.root
    st = table.statbuf.at(parent.fd, b"a", NOFOLLOW)
    node = table.learn(parent, parent.fd, b"a", st)
    table.drop_if_unused(node)
    with pytest.raises(OSError):
        table.get(node.nodeid)
    table.drop_if_unused(table.root)
    assert table.get(ROOT_INODE) is table.root


def test_cache_size_must_be_positive(tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_PATH)
    try:
        with pytest.raises(ValueError):
            InodeTable(fd, fd_cache_size=0)
    finally:
        os.close(fd)


@pytest.mark.parametrize(("idmap", "expected"), [
    (None, None),
    ([], None),
    ([(0, 0, 4294967295)], None),             # identity
    ([(0, 100000, 65536)], 100000),           # a user-namespaced container
    ([(0, 100000, 1000), (1000, 0, 1)], None),  # host 0 is mapped: nothing to translate
    ([(1, 200000, 10)], None),                # no inside 0
])
def test_host_root_id(idmap: list[tuple[int, int, int]] | None, expected: int | None) -> None:
    assert host_root_id(idmap) == expected
