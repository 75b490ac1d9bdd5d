"""The serve-fs inode table without FUSE or privileges: identity, counts, the fd cache.

Without CAP_DAC_READ_SEARCH open_by_handle_at fails, so the table probes each mount, finds
handles unusable and falls back to (parent, name): both the probe and the fallback run
here; as root the handle path runs too.
"""

from __future__ import annotations

import errno
import gc
import os
import stat
import tracemalloc
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.errors import CntrError
from cntr.fs.inodes import (
    BTIME_NS,
    INO,
    MAX_INODES,
    MODE,
    ROOT_INODE,
    InodeTable,
    StatT,
    max_inodes_from_env,
)
from cntr.fs.passthrough import host_root_id
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
    st = table.statbuf.at(table.root.fd, b"", sc.AT_EMPTY_PATH)
    assert table.find(st) is table.root
    # the root reached by another name (a bind mount of it below itself) is node 1 too
    assert table.learn(table.root, table.root.fd, b"", st) is table.root


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


def test_node_ids_come_from_dev_and_ino(table: InodeTable, tmp_path: Path) -> None:
    (tmp_path / "a").write_text("x")
    (tmp_path / "b").write_text("y")
    a, st_a = lookup(table, ROOT_INODE, b"a")
    b, st_b = lookup(table, ROOT_INODE, b"b")
    assert a & ((1 << 48) - 1) == st_a[INO]
    assert b & ((1 << 48) - 1) == st_b[INO]
    assert a >> 48 == b >> 48 >= 1
    assert ROOT_INODE < a < 1 << 63


def test_inode_numbers_too_wide_get_counter_ids(table: InodeTable, tmp_path: Path) -> None:
    """Inode numbers of 49+ bits (NFS, overlayfs xino) cannot be packed with the device."""
    (tmp_path / "a").write_text("x")
    _, st = lookup(table, ROOT_INODE, b"a")
    wide = list(st)
    wide[INO] = (1 << 60) + 5
    node = table.learn(table.root, table.root.fd, b"a", tuple(wide))
    node.nlookup += 1
    assert ROOT_INODE < node.nodeid < 1 << 48
    assert table.learn(table.root, table.root.fd, b"a", tuple(wide)) is node
    assert table.find(tuple(wide)) is node
    wide2 = list(wide)
    wide2[INO] += 1
    other = table.learn(table.root, table.root.fd, b"a", tuple(wide2))
    assert other.nodeid not in (node.nodeid, ROOT_INODE)
    table.drop_if_unused(other)
    table.forget(node.nodeid, 1)
    assert table.find(tuple(wide)) is None


def test_forget_and_forgotten_files_get_their_id_again(table: InodeTable,
                                                       tmp_path: Path) -> None:
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
    assert again == a
    assert table.get(a).gen == 0


@pytest.mark.parametrize("change", ["type", "birth time"])
def test_reused_inode_number_is_the_next_generation(table: InodeTable, tmp_path: Path,
                                                    change: str) -> None:
    (tmp_path / "a").write_text("x")
    a, st = lookup(table, ROOT_INODE, b"a")
    lookup(table, ROOT_INODE, b"a")
    fake = list(st)
    if change == "type":
        fake[MODE] = stat.S_IFDIR | 0o755
    else:
        fake[BTIME_NS] = (st[BTIME_NS] + 1) % 1_000_000_000
    node = table.learn(table.root, table.root.fd, b"a", tuple(fake))
    assert node.nodeid == a
    assert node.gen == 1
    assert table.find(st) is None  # the old file is not known any more
    assert table.find(tuple(fake)) is node
    # the kernel forgets its old inode (2 lookups) after taking one of the new file
    node.nlookup += 1
    table.forget(a, 2)
    assert table.get(a) is node
    table.forget(a, 1)
    with pytest.raises(OSError):
        table.get(a)


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
    f, _ = lookup(table, ROOT_INODE, b"old")
    os.rename(tmp_path / "old", tmp_path / "d" / "new")
    table.renamed(table.statbuf.at(table.fd(table.get(d)), b"new", NOFOLLOW), table.get(d),
                  b"new")
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


def test_forgotten_inodes_are_found_again_by_handle(table: InodeTable, tmp_path: Path) -> None:
    """open_by_handle_at through the mount: the kernel asks again for node ids it forgot."""
    (tmp_path / "f").write_text("x")
    (tmp_path / "gone").write_text("y")
    nodeid, _ = lookup(table, ROOT_INODE, b"f")
    gone, _ = lookup(table, ROOT_INODE, b"gone")
    with_handle = table.get(nodeid).mount is not None
    table.forget(nodeid, 1)
    table.forget(gone, 1)
    os.unlink(tmp_path / "gone")
    assert table.by_id.get(nodeid) is None
    node = table.revive(nodeid)
    if with_handle:  # root, and a filesystem with handles
        assert node is not None and table.get(nodeid) is node
        st = table.statbuf.at(table.fd(node), b"", sc.AT_EMPTY_PATH)
        assert os.stat(tmp_path / "f").st_ino == st[INO]
    else:  # (parent, name) inodes keep nothing once forgotten
        assert node is None
    assert table.revive(gone) is None  # removed: stale
    assert table.revive(12345) is None
    assert len(table.forgotten) <= table.forgotten_size


def test_unnamed_files_keep_a_pinned_descriptor(table: InodeTable, tmp_path: Path) -> None:
    fd = os.open(tmp_path, os.O_TMPFILE | os.O_RDWR, 0o600)
    try:
        st = table.statbuf.at(fd, b"", sc.AT_EMPTY_PATH)
        node = table.learn_unnamed(table.root, fd, st)
        node.nlookup += 1
        for i in range(20):  # more than the cache holds
            (tmp_path / f"n{i}").write_text("z")
            lookup(table, ROOT_INODE, f"n{i}".encode())
        assert node.fd >= 0 and node.nodeid not in table.lru
        assert table.fd(node) == node.fd
        pinned = node.fd
        table.forget(node.nodeid, 1)
        with pytest.raises(OSError) as info:
            os.fstat(pinned)
        assert info.value.errno == errno.EBADF
    finally:
        os.close(fd)


def synthetic_inodes(table: InodeTable, tmp_path: Path, count: int) -> list[int]:
    """``count`` inodes learned from one real file's statx with other inode numbers (the
    handle, where there is one, is that file's): node ids in the order learned."""
    (tmp_path / "f").write_text("")
    st = list(table.statbuf.at(table.root.fd, b"f", NOFOLLOW))
    first = st[INO]
    ids = []
    for i in range(count):
        st[INO] = first + 1 + i
        node = table.learn(table.root, table.root.fd, b"f", tuple(st))
        node.nlookup += 1
        ids.append(node.nodeid)
    return ids


def test_prune_names_the_oldest_and_moves_them_last(table: InodeTable, tmp_path: Path) -> None:
    table.set_bound(16)
    ids = synthetic_inodes(table, tmp_path, 20)
    assert len(table.by_id) == 21 > table.prune_above
    # back to 7/8 of the bound: 21 - 14 = 7, the root never
    pruned = table.prune_ids()
    assert pruned == ids[:7]
    assert list(table.by_id) == [ROOT_INODE, *ids[7:], *ids[:7]]
    # until the forgets come, another 1/8 of the bound is learned before pruning again
    assert table.prune_above == 21 + 2
    for nodeid in pruned[:2]:  # the kernel kept five (in use)
        table.forget(nodeid, 1)
    table.pruned()
    assert len(table.by_id) == 19 and table.prune_above == 16
    # the ones kept come after the rest next time
    assert table.prune_ids() == ids[7:12]
    table.set_bound(0)  # no bound: nothing to prune, ever
    table.pruned()
    assert len(table.by_id) > table.max_inodes == 0
    assert table.prune_above > 1 << 61


def test_per_inode_footprint(table: InodeTable, tmp_path: Path) -> None:
    """What one inode the kernel holds costs serve-fs: measured ~265 bytes with handles,
    ~270 with (parent, name) (the name is the kernel's, shared here)."""
    count = 100_000
    gc.collect()
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        synthetic_inodes(table, tmp_path, count)
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_inode = (after - before - count * 8) / count  # minus the list of ids
    assert per_inode < 300, f"{per_inode:.0f} bytes per inode"


@pytest.mark.parametrize(("raw", "size"), [("", MAX_INODES), ("0", 0), ("5000", 5000)])
def test_max_inodes_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, size: int) -> None:
    monkeypatch.setenv("CNTR_SERVE_FS_INODES", raw)
    assert max_inodes_from_env() == size


@pytest.mark.parametrize("raw", ["-1", "many", "2.5"])
def test_max_inodes_from_env_refuses(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CNTR_SERVE_FS_INODES", raw)
    with pytest.raises(CntrError) as err:
        max_inodes_from_env()
    assert str(err.value) == f"CNTR_SERVE_FS_INODES must be a number >= 0, not {raw!r}"


def test_bound_must_not_be_negative(table: InodeTable) -> None:
    with pytest.raises(ValueError):
        table.set_bound(-1)
