"""The inode table of serve-fs: FUSE node ids <-> host files, without one fd per inode.

Each inode the kernel knows about is an `Inode` keyed by the host's (st_dev, st_ino).  It
stores how to reach the file again, not an open descriptor:

- on filesystems that support file handles, the ``struct file_handle`` from
  name_to_handle_at(2) plus the `Mount` it was seen on; open_by_handle_at(2) with that
  mount's descriptor reopens it (on the same vfsmount, so mounts stacked below a
  directory are still crossed by a later openat);
- on filesystems without handles (procfs, overlayfs without ``nfs_export``, some FUSE
  filesystems), the parent `Inode` and the name; reopening re-resolves the name and checks
  that (st_dev, st_ino) still match, else ESTALE.

Open O_PATH descriptors live only in a bounded LRU cache (``fd_cache_size``); one regular
descriptor is kept per mount that supports handles (open_by_handle_at(2) rejects O_PATH
mount descriptors with EBADF), and the root's descriptor is pinned.

Node ids are derived from the file's identity: ``(device index << 48) | st_ino``, the
device index numbering the host devices (st_dev) in the order serve-fs meets them, from 1
(so no id is 0 or FUSE_ROOT_ID).  One dict maps node ids to inodes: it answers both the
kernel's "which file is node N" and the lookup's "do I know (dev, ino)".  The served root
is node 1 and its own derived id is an alias of 1.  Files whose inode number does not fit
in 48 bits (NFS, overlayfs with xino) or a 32,768th device get ids from a counter below
2**48 through a small side table.  The kernel also reports node ids as ``st_ino``, so
inode numbers seen through the mount are 49 to 63 bits wide and stay unique across host
devices (hard-link detection in tar, du, rsync -H relies on it).

A (dev, ino) found again with another file type or birth time is a new file that reused
the inode number: it keeps the node id with the next ``generation``, which makes the
kernel drop (mark bad) its inode of the old file.  The lookup count is per node id, summed
over generations: the kernel's FORGET carries no generation, and it sends one for the old
inode too.

Inodes the kernel forgot keep their handle in a bounded map (`InodeTable.forgotten`, the
latest 4,096): open_by_handle_at(2) through the mount names node ids the kernel may no
longer hold, and it asks for them again (`InodeTable.revive`).  A file without a name
(O_TMPFILE) keeps a pinned O_PATH descriptor outside the cache (`InodeTable.learn_unnamed`).

Caveats:
- cached descriptors pin host files: an unlinked file's space is freed only when its
  descriptor leaves the cache, and ``umount`` (without ``-l``) of a host filesystem that
  serve-fs has touched fails with EBUSY while serve-fs runs;
- a file reached through two bind mounts of the same filesystem is one inode, reopened
  through the mount it was first seen on;
- the (parent, name) fallback follows renames done through serve-fs only; a rename behind
  serve-fs's back makes the inode ESTALE until the kernel forgets it;
- the table is not thread-safe; serve-fs answers one request at a time (the handler
  core's methods block), so requests never interleave;
- between a generation bump in readdir and the entry reaching the kernel (a reply buffer
  that was full), the kernel's inode of the old file is served as the new one;
- a file handle taken through the mount (name_to_handle_at(2) on serve-fs's mount) of an
  inode that was pruned opens again only while it is among the latest 4,096 forgotten
  (`forgotten`), ESTALE after.

Memory: about 265 bytes per inode the kernel holds (the `Inode` 96, its id and identity
40 each, its handle 56, one dict entry ~35-70; `tests/unit/test_fs_inodes.py` measures it),
and the kernel holds an inode per cached dentry until memory pressure: a walk of 1,000,000
files would keep ~270 MiB.  The table is bounded instead (`max_inodes`, `MAX_INODES` =
131,072, ``CNTR_SERVE_FS_INODES``): past it `prune_ids` names the inodes learned longest ago,
the session asks the kernel to drop them (FUSE_NOTIFY_PRUNE, Linux 6.18) and the kernel
FORGETs those it holds no reference to: an open file, a cwd, a directory with cached entries
stay, in the kernel and here.  A pruned file looked up again gets its node id back (ids are
derived from the file).  Without FUSE_NOTIFY_PRUNE (an older kernel, the libfuse session)
the table is as large as the kernel's cache.
"""

from __future__ import annotations

import errno
import os
import stat
import struct

from cntr.errors import count_from_env
from cntr.fs.log import log
from cntr.linux import syscalls as sc

TYPE_CHECKING = False  # typing costs ~3.5 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections import OrderedDict
    from typing import NewType

    InodeT = NewType("InodeT", int)
else:
    from _collections import OrderedDict  # collections would import keyword, operator, reprlib

    InodeT = int

ROOT_INODE = InodeT(1)  # pyfuse3.ROOT_INODE, FUSE_ROOT_ID
#: inodes the table holds before the session asks the kernel to forget the oldest
MAX_INODES = 131_072
_NO_BOUND = 1 << 62


def max_inodes_from_env() -> int:
    """``CNTR_SERVE_FS_INODES`` (a number >= 0, 0: no bound), `MAX_INODES` when unset."""
    return count_from_env("CNTR_SERVE_FS_INODES", MAX_INODES)


STATX_MASK = sc.STATX_BASIC_STATS | sc.STATX_BTIME | sc.STATX_MNT_ID
_O_PATH = os.O_PATH | os.O_NOFOLLOW | os.O_CLOEXEC

# struct statx unpacked in one call (cheaper than reading its fields one by one).
_STATX = struct.Struct("=IIQIIIHHQQQQqIiqIiqIiqIiIIIIQ")
# indices into the unpacked tuple
NLINK, UID, GID, MODE, INO, SIZE, BLOCKS = 3, 4, 5, 6, 8, 9, 10
BLKSIZE = 1
ATIME, ATIME_NS, BTIME, BTIME_NS, CTIME, CTIME_NS, MTIME, MTIME_NS = (
    12, 13, 15, 16, 18, 19, 21, 22,
)
RDEV_MAJ, RDEV_MIN, DEV_MAJ, DEV_MIN, MNT_ID = 24, 25, 26, 27, 28
StatT = tuple[int, ...]


def stat_buffer() -> sc.StatxBuffer:
    """A reusable statx(2) buffer: its ``at(dirfd, name, flags)`` is the struct unpacked
    as a tuple (`StatT`, indexed by the constants above), for `STATX_MASK`."""
    return sc.StatxBuffer(_STATX, STATX_MASK)


def key_of(st: StatT) -> int:
    """(st_dev, st_ino) as one int."""
    return (st[DEV_MAJ] << 96) | (st[DEV_MIN] << 64) | st[INO]


#: node id = (device index << _INO_BITS) | st_ino, below 2**63 (pyfuse3 and libfuse pass
#: ids through signed types in places); anything else gets a counter id below 2**48.
_INO_BITS = 48
_INO_LIMIT = 1 << _INO_BITS
_DEV_LIMIT = 1 << (63 - _INO_BITS)


def ident_of(st: StatT) -> int:
    """File type and birth time: what tells a reused inode number from the old file."""
    return (((st[BTIME] << 30) | st[BTIME_NS]) << 4) | (st[MODE] >> 12)


class Mount:
    """One host mount that supports file handles."""

    __slots__ = ("fd", "mount_id")

    def __init__(self, mount_id: int, fd: int) -> None:
        self.mount_id = mount_id
        #: a regular (non-O_PATH) descriptor of some object on the mount
        self.fd = fd


class Inode:
    """One file the kernel holds a lookup count on."""

    __slots__ = ("fd", "gen", "ident", "listed", "mount", "nlookup", "nodeid", "ref",
                 "stamp")

    def __init__(self, nodeid: int, ident: int, ref: bytes | tuple[Inode, bytes],
                 mount: Mount | None) -> None:
        self.nodeid = nodeid
        #: FUSE generation: bumped when (dev, ino) turns out to be another file
        self.gen = 0
        self.ident = ident
        self.nlookup = 0
        #: a struct file_handle, or (parent, name) where handles are not supported
        self.ref = ref
        self.mount = mount
        #: cached O_PATH descriptor or -1
        self.fd = -1
        #: (mtime_ns, size) when last opened or released: decides FOPEN_KEEP_CACHE
        self.stamp: tuple[int, int] | None = None
        #: a directory: time.monotonic() of its last listing from the start (readdir)
        self.listed = 0.0

    def __repr__(self) -> str:
        return (f"<Inode {self.nodeid:#x} gen={self.gen} nlookup={self.nlookup} "
                f"fd={self.fd}>")


class InodeTable:
    """Node ids, (dev, ino) identity, lookup counts and the O_PATH descriptor cache.

    ``root_fd`` is an O_PATH (or regular) descriptor of the served directory; the table
    takes ownership.  ``use_handles=False`` forces the (parent, name) fallback everywhere
    (open_by_handle_at needs CAP_DAC_READ_SEARCH).
    """

    def __init__(self, root_fd: int, *, fd_cache_size: int = 2048,
                 use_handles: bool = True, max_inodes: int = MAX_INODES) -> None:
        if fd_cache_size < 1:
            raise ValueError("fd_cache_size must be >= 1")
        self.fd_cache_size = fd_cache_size
        self.max_inodes = 0
        self.prune_above = 0
        self.set_bound(max_inodes)
        self.use_handles = use_handles
        self.statbuf = stat_buffer()
        st = self.statbuf.at(root_fd, b"", os.AT_EMPTY_PATH if hasattr(os, "AT_EMPTY_PATH")
                             else sc.AT_EMPTY_PATH)
        self.root = Inode(ROOT_INODE, ident_of(st), b"", None)
        self.root.fd = root_fd
        self.root.nlookup = 1
        #: node id -> inode, the only per-inode table
        self.by_id: dict[int, Inode] = {ROOT_INODE: self.root}
        self.lru: OrderedDict[int, Inode] = OrderedDict()
        #: node id -> (ident, generation, file handle, mount) of inodes the kernel
        #: forgot, the latest `forgotten_size` of them (`revive`)
        self.forgotten: OrderedDict[int, tuple[int, int, bytes, Mount]] = OrderedDict()
        self.forgotten_size = 4096
        #: mount id -> Mount, or None when that mount has no usable handles
        self.mounts: dict[int, Mount | None] = {}
        #: (major << 32 | minor) -> device index (1, 2, ...)
        self._devs: dict[int, int] = {}
        #: key_of() <-> counter id, for files whose ids cannot be derived
        self._counter_ids: dict[int, int] = {}
        self._counter_keys: dict[int, int] = {}
        self._next_counter_id = ROOT_INODE + 1
        #: the root's derived id, answered with ROOT_INODE
        self._root_alias = -1
        self._root_alias = self._id(st, create=True)
        self._name_to_handle = sc.HandleBuffer().handle

    # --- lookups ---------------------------------------------------------------------
    def get(self, nodeid: int) -> Inode:
        """The inode for a node id the kernel sent; ESTALE if unknown."""
        node = self.by_id.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, "unknown node id")
        return node

    def fd(self, node: Inode) -> int:
        """An O_PATH descriptor of ``node``, from the cache or reopened (then cached)."""
        fd = node.fd
        if fd >= 0:
            if node.nodeid != ROOT_INODE:
                try:  # noqa: SIM105  # hot path: suppress() costs a context manager
                    self.lru.move_to_end(node.nodeid)
                except KeyError:  # pinned (`learn_unnamed`): not in the cache
                    pass
            return fd
        fd = self._reopen(node, _O_PATH)
        self._cache(node, fd)
        return fd

    def open(self, node: Inode, flags: int) -> int:
        """A new regular descriptor of ``node`` opened with ``flags`` (caller closes it)."""
        ref = node.ref
        if type(ref) is bytes and node.mount is not None:
            return self._by_handle(node.mount, ref, flags | os.O_CLOEXEC)
        return os.open(b"/proc/self/fd/%d" % self.fd(node), flags | os.O_CLOEXEC)

    def learn(self, parent: Inode, parent_fd: int, name: bytes, st: StatT) -> Inode:
        """The inode for ``name`` in ``parent`` whose statx is ``st``; created if new.

        The lookup count is not changed: the caller adds one once the reply is sent.
        """
        ino = st[INO]
        idx = self._devs.get((st[DEV_MAJ] << 32) | st[DEV_MIN], 0)
        nodeid = ((idx << _INO_BITS) | ino if idx and ino < _INO_LIMIT
                  else self._id(st, create=True))
        if nodeid == self._root_alias:
            return self.root
        ident = (((st[BTIME] << 30) | st[BTIME_NS]) << 4) | (st[MODE] >> 12)
        node = self.by_id.get(nodeid)
        if node is not None and node.ident == ident:
            return node
        ref: bytes | tuple[Inode, bytes] = (parent, name)
        mount: Mount | None = None
        if self.use_handles:
            mnt_id = st[MNT_ID]
            if mnt_id in self.mounts:
                mount = self.mounts[mnt_id]
            else:
                mount = self._probe_mount(mnt_id, parent_fd, name, st[MODE])
            if mount is not None:
                handle = self._name_to_handle(parent_fd, name, 0)
                if handle is None:
                    mount = None
                else:
                    ref = handle
        if node is not None:
            # The inode number was reused by another file: same id, next generation.
            self._uncache(node)
            node.gen += 1
            node.ident = ident
            node.ref = ref
            node.mount = mount
            node.stamp = None
            return node
        node = Inode(nodeid, ident, ref, mount)
        self.by_id[nodeid] = node
        return node

    def learn_unnamed(self, parent: Inode, fd: int, st: StatT) -> Inode:
        """The inode of a file that has no name (O_TMPFILE), open as ``fd``, whose statx
        is ``st``: it keeps an O_PATH descriptor of its own outside the cache (pinned,
        closed when the kernel forgets the inode), as nothing else would reach it again.
        The lookup count is not changed."""
        nodeid = self._id(st, create=True)
        ident = ident_of(st)
        node = self.by_id.get(nodeid)
        if node is not None:  # a reused inode number (or the root alias, impossibly)
            self._uncache(node)
            node.gen += 1
            node.ident = ident
            node.stamp = None
        else:
            node = Inode(nodeid, ident, (parent, b""), None)
            self.by_id[nodeid] = node
        node.ref = (parent, b"")
        node.mount = None
        # Followed (no O_NOFOLLOW): the file itself, not the /proc magic link.
        node.fd = os.open(b"/proc/self/fd/%d" % fd, os.O_PATH | os.O_CLOEXEC)
        return node

    def revive(self, nodeid: int) -> Inode | None:
        """The inode ``nodeid`` the kernel forgot, found again by its file handle (the
        kernel asks for it when open_by_handle_at(2) through the mount names an inode it
        no longer has: FUSE_EXPORT_SUPPORT); None if unknown, or if the file is gone or
        is another one now."""
        entry = self.forgotten.pop(nodeid, None)
        if entry is None:
            return None
        ident, gen, handle, mount = entry
        node = Inode(nodeid, ident, handle, mount)
        node.gen = gen
        try:
            fd = self._reopen(node, _O_PATH)
        except OSError:
            return None
        try:
            st = self.statbuf.at(fd, b"", sc.AT_EMPTY_PATH | sc.AT_STATX_DONT_SYNC)
        except OSError:
            os.close(fd)
            return None
        if self._id(st, create=False) != nodeid or ident_of(st) != ident:
            os.close(fd)
            return None
        self.by_id[nodeid] = node
        self._cache(node, fd)
        return node

    def find(self, st: StatT) -> Inode | None:
        """The inode of the file whose statx is ``st``, if the table has it."""
        nodeid = self._id(st, create=False)
        if nodeid == self._root_alias:
            return self.root
        node = self.by_id.get(nodeid)
        if node is None or node.ident != ident_of(st):
            return None
        return node

    def drop_if_unused(self, node: Inode) -> None:
        """Remove ``node`` if the kernel never got it (e.g. a readdir entry that did not fit)."""
        if node.nlookup == 0 and node.nodeid != ROOT_INODE:
            self._remove(node)

    def forget(self, nodeid: int, nlookup: int) -> None:
        """The kernel dropped ``nlookup`` references to ``nodeid``."""
        node = self.by_id.get(nodeid)
        if node is None or nodeid == ROOT_INODE:
            return
        node.nlookup -= nlookup
        if node.nlookup <= 0:
            self._remove(node)

    def set_bound(self, max_inodes: int) -> None:
        """Aim to hold at most ``max_inodes`` inodes (0: no bound): past it `prune_ids`
        names the oldest for the session to ask the kernel to forget."""
        if max_inodes < 0:
            raise ValueError("max_inodes must be >= 0")
        #: how many inodes the table aims to hold (0: no bound)
        self.max_inodes = max_inodes
        #: the table size past which the session prunes (`prune_ids`, `pruned`)
        self.prune_above = max_inodes if max_inodes > 0 else _NO_BOUND

    def prune_ids(self) -> list[int]:
        """The node ids to ask the kernel to forget (FUSE_NOTIFY_PRUNE) so that the table
        gets back to 7/8 of `max_inodes`: the ones learned longest ago (the dict keeps
        insertion order), never the root.  They move to the end of the order: the kernel
        refuses those still in use (an open file, a cwd, a directory with cached entries),
        and they are not asked for again before the rest.  Until the forgets of these come
        in (`pruned`), the table may grow by 1/8 of the bound before the next prune: the
        forgets come after the reply that prompted the prune, or (io_uring) concurrently.
        """
        by_id = self.by_id
        slack = max(1, self.max_inodes // 8)
        count = len(by_id) - self.max_inodes + slack
        self.prune_above = len(by_id) + slack
        if count <= 0:
            return []
        ids: list[int] = []
        for nodeid in by_id:
            if nodeid != ROOT_INODE:
                ids.append(nodeid)
                if len(ids) == count:
                    break
        for nodeid in ids:
            by_id[nodeid] = by_id.pop(nodeid)
        return ids

    def pruned(self) -> None:
        """Forgets came in: the next prune is due as soon as the table is past its bound
        (those the kernel kept come last in the order: the next prune names others)."""
        if self.max_inodes:
            self.prune_above = self.max_inodes

    def renamed(self, st: StatT, new_parent: Inode, new_name: bytes) -> None:
        """Keep a (parent, name) inode reachable after a rename done through serve-fs.

        ``st`` is the statx of the file at its new name."""
        node = self.find(st)
        if node is not None and type(node.ref) is tuple:
            node.ref = (new_parent, new_name)

    def close(self) -> None:
        """Close every descriptor the table holds."""
        for node in self.lru.values():
            if node.fd >= 0:
                os.close(node.fd)
                node.fd = -1
        self.lru.clear()
        for mount in self.mounts.values():
            if mount is not None:
                os.close(mount.fd)
        self.mounts.clear()
        if self.root.fd >= 0:
            os.close(self.root.fd)
            self.root.fd = -1

    def open_fds(self) -> int:
        """Descriptors held by the table (cache + mounts + root), for tests and stats."""
        return len(self.lru) + sum(1 for m in self.mounts.values() if m is not None) + 1

    # --- internals -----------------------------------------------------------------
    def _id(self, st: StatT, *, create: bool) -> int:
        """The node id of (dev, ino) in ``st``; -1 if it has none and ``create`` is false."""
        dev = (st[DEV_MAJ] << 32) | st[DEV_MIN]
        idx = self._devs.get(dev, 0)
        if not idx and create and len(self._devs) + 1 < _DEV_LIMIT:
            idx = self._devs[dev] = len(self._devs) + 1
        ino = st[INO]
        if idx and ino < _INO_LIMIT:
            return (idx << _INO_BITS) | ino
        key = key_of(st)
        nodeid = self._counter_ids.get(key, -1)
        if nodeid < 0 and create:
            nodeid = self._next_counter_id
            if nodeid >= _INO_LIMIT:  # pragma: no cover  # 2**48 files with 64-bit inos
                raise OSError(errno.ENOSPC, "serve-fs ran out of node ids")
            self._next_counter_id = nodeid + 1
            self._counter_ids[key] = nodeid
            self._counter_keys[nodeid] = key
        return nodeid

    def _remove(self, node: Inode) -> None:
        nodeid = node.nodeid
        self.by_id.pop(nodeid, None)
        if nodeid < _INO_LIMIT:
            key = self._counter_keys.pop(nodeid, None)
            if key is not None:
                del self._counter_ids[key]
        elif node.mount is not None and type(node.ref) is bytes:
            # Kept for `revive`: a handle of this id may still be out there.
            forgotten = self.forgotten
            forgotten[nodeid] = (node.ident, node.gen, node.ref, node.mount)
            if len(forgotten) > self.forgotten_size:
                forgotten.popitem(last=False)
        self._uncache(node)

    def _uncache(self, node: Inode) -> None:
        if node.fd >= 0:
            os.close(node.fd)
            node.fd = -1
            self.lru.pop(node.nodeid, None)  # absent when pinned (`learn_unnamed`)

    def _cache(self, node: Inode, fd: int) -> None:
        node.fd = fd
        lru = self.lru
        lru[node.nodeid] = node
        if len(lru) > self.fd_cache_size:
            _, old = lru.popitem(last=False)
            os.close(old.fd)
            old.fd = -1

    def _reopen(self, node: Inode, flags: int) -> int:
        ref = node.ref
        if type(ref) is bytes:
            if node.mount is None:  # the root: its descriptor is pinned
                raise OSError(errno.ESTALE, "root descriptor closed")
            return self._by_handle(node.mount, ref, flags)
        assert isinstance(ref, tuple)
        parent, name = ref
        pfd = self.fd(parent)
        fd = os.open(name, flags, dir_fd=pfd)
        try:
            st = self.statbuf.at(fd, b"", sc.AT_EMPTY_PATH | sc.AT_STATX_DONT_SYNC)
        except BaseException:
            os.close(fd)
            raise
        nodeid = self._id(st, create=False)
        if (nodeid if nodeid != self._root_alias else ROOT_INODE) != node.nodeid:
            os.close(fd)
            raise OSError(errno.ESTALE, "file replaced behind serve-fs")
        return fd

    @staticmethod
    def _by_handle(mount: Mount, handle: bytes, flags: int) -> int:
        return sc.open_by_handle(mount.fd, handle, flags)

    def _probe_mount(self, mnt_id: int, parent_fd: int, name: bytes, mode: int) -> Mount | None:
        """First sight of a mount: open a mount descriptor and check handles round-trip."""
        mount: Mount | None = None
        handle = self._name_to_handle(parent_fd, name, 0)
        if handle is not None and (stat.S_ISDIR(mode) or stat.S_ISREG(mode)):
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK | os.O_NOCTTY
            try:
                mfd = os.open(name, flags, dir_fd=parent_fd)
            except OSError:
                mfd = -1
            if mfd >= 0:
                candidate = Mount(mnt_id, mfd)
                try:
                    os.close(self._by_handle(candidate, handle, _O_PATH))
                    mount = candidate
                except OSError:
                    os.close(mfd)
        if mount is None:
            _report_no_handles(mnt_id)
        self.mounts[mnt_id] = mount
        return mount


#: kernel filesystems that never have file handles: their fallback is expected, not news
_PSEUDO_FS = frozenset({"proc", "sysfs", "devpts", "mqueue", "cgroup", "cgroup2", "debugfs",
                        "tracefs", "securityfs", "bpf", "pstore", "configfs", "fusectl",
                        "binfmt_misc", "hugetlbfs", "efivarfs", "nsfs", "autofs"})


def _report_no_handles(mnt_id: int) -> None:
    """Say once per mount that its files are found again by name (slower, and a file
    renamed on the host is lost), unless it is a kernel filesystem where that is normal."""
    where, fstype = "?", "?"
    try:
        with open("/proc/self/mountinfo") as f:
            for line in f:
                pre, _, post = line.partition(" - ")
                parts = pre.split()
                if parts and parts[0] == str(mnt_id):
                    where, fstype = parts[4], post.split()[0]
                    break
    except OSError:
        pass
    if fstype in _PSEUDO_FS:
        return
    log.warning("serve-fs: no file handles on %s (%s, mount %d): its files are found again "
                "by name", where, fstype, mnt_id)
