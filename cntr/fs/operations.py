# ruff: noqa: BLE001  # every handler turns any exception into a FUSEError (pyfuse3 contract)
"""The pyfuse3 Operations of serve-fs: a passthrough of a host directory tree.

Every request is answered with descriptor-relative syscalls on the host (statx, openat,
open_by_handle_at, *at calls with AT_EMPTY_PATH, /proc/self/fd/N only where Linux has no
*at form: chmod, truncate, xattrs).  Handlers never await: a request runs to completion
before the next one is read, so there is no locking and no per-request thread.

Owners and ids:
- FUSE request contexts carry host ids (the kernel maps them into the mounter's user
  namespace, the init one).  New files, directories, nodes and symlinks are created as
  root and then chowned to the caller's ids (or to ``effective_user``); in a setgid
  directory the group is inherited as the host would do it, and setuid/setgid bits cleared
  by the chown are put back.
- With a ``uid_map``/``gid_map`` (the container's /proc/PID/uid_map lines), getattr and
  lookup replies report host id 0 as the container root's host id when 0 itself is not
  mapped into the container, so the container's root sees the host's root-owned files as
  its own instead of as the overflow id.  Nothing is mapped back: a chown from the session
  stores exactly the host ids the kernel sent.

Isolation (``allowed_mnt_ns``): a process of the container can reach the session's
mount through ``/proc/<session pid>/root``, ``/cwd``, ``/fd/N`` or ``/map_files`` (same uid,
so it passes the ptrace access checks), and its requests then arrive here like the
session's.  With ``allowed_mnt_ns`` set, every request is refused with EACCES ("Permission
denied", what a user expects from an access rule; EPERM would read as a missing privilege)
unless the calling thread's mount namespace (``/proc/<pid>/ns/mnt``, the host's /proc:
serve-fs runs in the host's namespaces) has that inode.  Requests with pid 0 come from the
kernel itself (forget, writeback) and pass.  `MountNsGate` caches the verdict per thread id
with a pidfd that tells when the id's process is gone (pid reuse; pid_max is often 32768).
Checked: every handler that gets a request context (lookup, getattr, setattr, readlink,
statfs, access, mknod, mkdir, symlink, unlink, rmdir, rename, link, open, create, poll,
opendir, getxattr, setxattr, listxattr, removexattr, tmpfile; the wire session's statx).
The others (read, write, flush, release, fsync, readdir, releasedir, fsyncdir, forget;
the wire session's fallocate, lseek, copy_file_range, ioctl) act on a file handle that
only an admitted open/opendir/create/tmpfile returns, or on the kernel's own bookkeeping.  Limits:
- the kernel answers from its dentry and attribute caches for ``entry_timeout`` and
  ``attr_timeout`` without asking: a refused process may still stat (see the metadata of)
  names a session process looked up in the last second, and readlink(2) on
  ``/proc/<pid>/fd/N`` (procfs) shows paths; it cannot open, read, list, write, create or
  remove anything (open and opendir always ask, refusals are not cached);
- a descriptor a session process hands over (SCM_RIGHTS, inheritance) works, as does
  anything done by a process that can ptrace a session process and act as it;
- a session process that moves to another mount namespace (``unshare -m``, ``ip netns
  exec``, bwrap) keeps its cached verdict while it lasts, then is refused: serve-fs cannot
  tell a namespace unshared from the session's from any other, and re-reading the
  namespace on every request would cost 3.5 us instead of 0.4 us;
- the verdict is taken when the request is handled: a requester that dies and whose pid is
  reused by an admitted process before serve-fs reads the request is judged as the latter
  (it would need a full pid wrap-around inside that window).

Caveats:
- lookups and readdir use statx(AT_STATX_DONT_SYNC): on network and FUSE filesystems the
  attributes in those replies may be as old as the host's cache (getattr is synchronous);
  it is what lets a lookup land on serve-fs's own mount without deadlocking on itself.
- serve-fs's own mount (served root ``/`` on a mountpoint under ``/``) is hidden: lookups
  of it give ENOENT and readdir leaves it out.  In ``fuse_fd`` mode the mount lives in
  another mount namespace that host lookups do not reach (/proc/PID/root is served as the
  symlink it is, never traversed by serve-fs).
- statfs reports the filesystem of the served root (pyfuse3 does not pass the inode).
- the kernel checks permissions (``default_permissions``) on mode bits; POSIX ACLs pass
  through as xattrs but are only enforced with ``acl=True`` (FUSE_POSIX_ACL), which costs a
  getxattr per inode.
- writes by serve-fs run as root: set-user/group-ID bits are cleared for an unprivileged
  user's write, truncation or O_TRUNC open by the wire session (HANDLE_KILLPRIV_V2), and
  by chmod of a requester outside the file's group (`keeps_setgid`, from
  /proc/PID/status; pyfuse3's libfuse session gets none of the kernel's flags for it and
  is only a benchmark reference, see `stages.serve_fs`).
- missing names are cached by the kernel as negative entries for ``entry_timeout``: a file
  created on the host right after a failed lookup shows up only then; create(2) always uses
  O_EXCL, so in that window an open(O_CREAT) fails with EEXIST rather than opening (and
  chowning) a file the kernel did not check.
- files reporting size 0 on pseudo filesystems (procfs, sysfs, ...: `PSEUDO_FS_TYPES`, by
  the statfs type of their filesystem, once per device) are opened with direct_io so their
  contents are read; other files, empty ones included, use the page cache
  (FOPEN_KEEP_CACHE while size and mtime are unchanged), so shared mmap and O_DIRECT work
  on them as on the disk.
- a lookup of "." or ".." of a node id the kernel forgot (open_by_handle_at through the
  mount: FUSE_EXPORT_SUPPORT) finds it again by the file handle `InodeTable.revive` kept;
  a removed file is ESTALE, as on the disk.
- the mount keeps libfuse's nosuid,nodev: device nodes are listed but do not open, and a unix
  socket bound on the host cannot be connected to through the mount (another inode).
"""

from __future__ import annotations

import errno
import logging
import os
import select
import signal
import stat
from collections.abc import Callable, Sequence
from typing import Any

import pyfuse3
from pyfuse3 import EntryAttributes, FileInfo, FUSEError, RequestContext, SetattrFields

from cntr.fs.inodes import (
    ATIME,
    ATIME_NS,
    BLKSIZE,
    BLOCKS,
    CTIME,
    CTIME_NS,
    GID,
    MNT_ID,
    MODE,
    MTIME,
    MTIME_NS,
    NLINK,
    RDEV_MAJ,
    RDEV_MIN,
    ROOT_INODE,
    SIZE,
    UID,
    Inode,
    InodeTable,
    StatT,
)
from cntr.linux import procfs
from cntr.linux import syscalls as sc

log = logging.getLogger("cntr.fs")

IdMap = list[tuple[int, int, int]]

_NOFOLLOW = sc.AT_SYMLINK_NOFOLLOW
_LOOKUP_FLAGS = sc.AT_SYMLINK_NOFOLLOW | sc.AT_STATX_DONT_SYNC
_EMPTY = sc.AT_EMPTY_PATH
_EMPTY_NOFOLLOW = sc.AT_EMPTY_PATH | sc.AT_SYMLINK_NOFOLLOW
_OPEN_STRIP = os.O_CREAT | os.O_EXCL | os.O_NOCTTY
#: what a O_TMPFILE open keeps of the kernel's flags (the rest is the file's creation)
_TMPFILE_KEEP = (os.O_ACCMODE | os.O_APPEND | os.O_DIRECT | os.O_SYNC | os.O_DSYNC
                 | os.O_NOATIME | os.O_EXCL)
#: linux/capability.h
_CAP_FSETID = 4
#: filesystems whose files report size 0 but have contents made up when read
#: (linux/magic.h): proc, sysfs, debugfs, tracefs, securityfs, cgroup, cgroup2, bpf,
#: configfs, pstore, efivarfs, selinuxfs, smackfs, fusectl, binfmt_misc, nsfs; and other
#: FUSE filesystems, which may make up contents the same way (lxcfs's /proc files)
PSEUDO_FS_TYPES = frozenset({
    0x9FA0, 0x62656572, 0x64626720, 0x74726163, 0x73636673, 0x27E0EB, 0x63677270,
    0xCAFE4A11, 0x62656570, 0x6165676C, 0xDE5E81E4, 0xF97CFF8C, 0x43415D53, 0x65735543,
    0x42494E4D, 0x6E736673, 0x65735546,
})
_NS = 1_000_000_000
_makedev = os.makedev


def host_root_id(idmap: IdMap | None) -> int | None:
    """The host id to show for host id 0, or None when 0 needs no translation.

    That is the outside id of the container's inside id 0, used only when host id 0 is
    not itself mapped into the container.
    """
    if not idmap:
        return None
    for _inside, outside, count in idmap:
        if outside <= 0 < outside + count:
            return None
    for inside, outside, count in idmap:
        if inside <= 0 < inside + count:
            root = outside - inside
            return root if root != 0 else None
    return None


class MountNsGate:
    """Admits requests from threads of one mount namespace only (module docstring).

    The verdict for a thread id is cached with a pidfd of that thread: the pidfd is opened
    before ``/proc/<pid>/ns/mnt`` is read and checked alive after, so the verdict is the
    one of the thread the pidfd refers to; on each later hit a signal-0 pidfd_send_signal
    (about 0.3 us, against 3.5 us for the stat) says whether that thread still exists.  Once
    it is gone its id may belong to another process: the entry is dropped and the new
    holder judged afresh, whichever way the old verdict went.  At most ``size`` entries
    (and pidfds); the oldest goes first.  Without a pidfd (a non-leader thread before Linux
    6.9, descriptors exhausted) the verdict is taken afresh on every request.
    """

    __slots__ = ("_cache", "_pidfd_flags", "mnt_ns", "size")

    def __init__(self, mnt_ns: int, *, size: int = 256) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        #: the inode of the admitted mount namespace (st_ino of /proc/PID/ns/mnt)
        self.mnt_ns = mnt_ns
        self.size = size
        #: thread id -> (admitted, pidfd)
        self._cache: dict[int, tuple[bool, int]] = {}
        self._pidfd_flags = sc.PIDFD_THREAD

    def check(self, pid: int) -> None:
        """Return if ``pid`` (a FUSE request's thread id) may be served, else FUSEError."""
        if pid == 0:  # the kernel's own requests (forget, writeback)
            return
        hit = self._cache.get(pid)
        if hit is not None:
            try:
                _pidfd_send_signal(hit[1], 0)
            except OSError:  # ESRCH: gone, the id may be someone else's now
                self._drop(pid)
            else:
                if hit[0]:
                    return
                raise FUSEError(errno.EACCES)
        if not self._judge(pid):
            raise FUSEError(errno.EACCES)

    def close(self) -> None:
        """Close the cached pidfds."""
        for _, pidfd in self._cache.values():
            os.close(pidfd)
        self._cache.clear()

    def _drop(self, pid: int) -> None:
        entry = self._cache.pop(pid, None)
        if entry is not None:
            os.close(entry[1])

    def _judge(self, pid: int) -> bool:
        pidfd = self._pidfd(pid)
        if pidfd == -2:
            log.debug("serve-fs: refused pid %d: no such process", pid)
            return False
        try:
            ns = os.stat(b"/proc/%d/ns/mnt" % pid).st_ino
        except OSError:
            ns = -1  # gone (or exiting: its namespaces are already released)
        admitted = ns == self.mnt_ns
        if pidfd >= 0:
            try:
                _pidfd_send_signal(pidfd, 0)
            except OSError:  # gone before the stat: that stat may be another process's
                os.close(pidfd)
                return False
            cache = self._cache
            if len(cache) >= self.size:
                self._drop(next(iter(cache)))
            cache[pid] = (admitted, pidfd)
        if not admitted:
            log.debug("serve-fs: refused pid %d: mount namespace %d, not %d", pid, ns,
                      self.mnt_ns)
        return admitted

    def _pidfd(self, pid: int) -> int:
        """A pidfd of thread ``pid``; -2 when there is no such thread, -1 when none can
        be had (the verdict is then not cached)."""
        try:
            return os.pidfd_open(pid, self._pidfd_flags)
        except ProcessLookupError:
            return -2
        except OSError as exc:
            if exc.errno == errno.EINVAL and self._pidfd_flags:
                # Before Linux 6.9 there is no PIDFD_THREAD: leaders only from now on.
                self._pidfd_flags = 0
                return self._pidfd(pid)
            return -1


_pidfd_send_signal = signal.pidfd_send_signal


class _Dir:
    """An open directory: the inode and the listing taken at the first readdir."""

    __slots__ = ("entries", "node")

    def __init__(self, node: Inode) -> None:
        self.node = node
        self.entries: list[bytes] | None = None


class Operations(pyfuse3.Operations):
    """Passthrough of the directory ``root_fd`` refers to (the table takes the descriptor)."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    #: adds one entry to a readdir reply (`cntr.fs.wire` installs its own)
    readdir_reply = staticmethod(pyfuse3.readdir_reply)

    def __init__(
        self,
        root_fd: int,
        *,
        entry_timeout: float = 1.0,
        attr_timeout: float = 1.0,
        fd_cache_size: int = 2048,
        uid_map: IdMap | None = None,
        gid_map: IdMap | None = None,
        effective_user: tuple[int, int] | None = None,
        acl: bool = False,
        use_handles: bool = True,
        allowed_mnt_ns: int | None = None,
        debug: bool = False,
    ) -> None:
        super().__init__()
        if fd_cache_size < 4:
            raise ValueError("fd_cache_size must be >= 4 (rename holds two descriptors)")
        self.enable_acl = acl
        self.table = InodeTable(root_fd, fd_cache_size=fd_cache_size, use_handles=use_handles)
        self.statbuf = self.table.statbuf
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        self.root_uid = host_root_id(uid_map)
        self.root_gid = host_root_id(gid_map)
        self.effective_user = effective_user
        #: with ``allowed_mnt_ns``: refuses requests from other mount namespaces
        self.gate = MountNsGate(allowed_mnt_ns) if allowed_mnt_ns is not None else None
        #: mount ids of serve-fs's own mount(s): never served back into themselves
        self.self_mount_ids: set[int] = set()
        #: (parent node id, name) -> a directory descriptor holding ``name``: entries
        #: shown in a directory that does not have them (`cntr.fs.tree` makes them in
        #: a detached tmpfs, so nothing is written into the served tree)
        self.grafts: dict[tuple[int, bytes], int] = {}
        self._dirs: dict[int, _Dir] = {}
        self._next_dir = 1
        #: open file handle -> inode, for writable opens (to refresh the cache stamp)
        self._writers: dict[int, Inode] = {}
        #: the process umask `create_mode` set last (None: not known)
        self._umask: int | None = None
        #: st_dev -> whether that filesystem is a pseudo filesystem (`PSEUDO_FS_TYPES`)
        self._pseudo_devs: dict[int, bool] = {}
        #: what lookup, getattr, setattr, create, mknod, mkdir, symlink, link and readdir
        #: reply for an inode and its statx: pyfuse3's EntryAttributes (`_entry`);
        #: `cntr.fs.wire` installs one that packs its reply bytes directly
        self.make_entry: Callable[[Inode, StatT], EntryAttributes] = self._entry
        self.debug = debug
        if debug:
            self._install_debug_logging()

    # --- helpers ---------------------------------------------------------------------
    def _entry(self, node: Inode, st: StatT) -> EntryAttributes:
        e = EntryAttributes()
        e.st_ino = node.nodeid
        if node.gen:
            e.generation = node.gen
        e.entry_timeout = self.entry_timeout
        e.attr_timeout = self.attr_timeout
        e.st_mode = st[MODE]
        e.st_nlink = st[NLINK]
        e.st_uid, e.st_gid = self.shown_ids(st)
        if st[RDEV_MAJ] or st[RDEV_MIN]:
            e.st_rdev = _makedev(st[RDEV_MAJ], st[RDEV_MIN])
        e.st_size = st[SIZE]
        e.st_blocks = st[BLOCKS]
        e.st_blksize = st[BLKSIZE]
        e.st_atime_ns = st[ATIME] * _NS + st[ATIME_NS]
        e.st_mtime_ns = st[MTIME] * _NS + st[MTIME_NS]
        e.st_ctime_ns = st[CTIME] * _NS + st[CTIME_NS]
        return e

    def shown_ids(self, st: StatT) -> tuple[int, int]:
        """The owner of ``st`` as replies show it: host id 0 as the container root's host
        id when 0 is not mapped into the container (module docstring)."""
        uid, gid = st[UID], st[GID]
        return (uid if uid or self.root_uid is None else self.root_uid,
                gid if gid or self.root_gid is None else self.root_gid)

    def _error(self, exc: BaseException, op: str) -> FUSEError:
        if isinstance(exc, FUSEError):
            return exc
        if isinstance(exc, OSError) and exc.errno:
            return FUSEError(exc.errno)
        log.error("serve-fs: %s failed: %r", op, exc, exc_info=self.debug)
        return FUSEError(errno.EIO)

    def _node(self, nodeid: int) -> Inode:
        node = self.table.by_id.get(nodeid)
        if node is None:
            raise FUSEError(errno.ESTALE)
        return node

    def _reply_entry(self, parent: Inode, pfd: int, name: bytes) -> EntryAttributes:
        """statx ``name`` (just created or linked), count a lookup, build the reply."""
        st = self.statbuf.at(pfd, name, _NOFOLLOW)
        node = self.table.learn(parent, pfd, name, st)
        node.nlookup += 1
        return self.make_entry(node, st)

    def create_mode(self, mode: int, umask: int) -> int:
        """The mode to create a file of ``mode`` with for a requester whose umask is
        ``umask``: ``mode`` itself, with serve-fs's process umask set to ``umask``, so
        that the host applies it exactly where POSIX says (not in a directory with a
        default ACL, whose ACL then replaces the umask).  The wire session asks the
        kernel for the unmasked mode (FUSE_DONT_MASK); in pyfuse3's session the kernel
        already applied the umask.  The umask is a syscall only when it changes
        (requests are served one at a time; nothing else serve-fs creates takes it)."""
        if umask != self._umask:
            os.umask(umask)
            self._umask = umask
        return mode

    @staticmethod
    def keeps_setgid(pid: int, uid: int, gid: int, file_gids: tuple[int, ...]) -> bool:
        """Whether a mode change by the requester ``pid`` (fsuid ``uid``, fsgid ``gid``)
        may keep the set-group-ID bit of a file whose group is one of ``file_gids`` (its
        host group and the one replies show): the requester is in that group or has
        CAP_FSETID, as the VFS's in_group_or_capable() asks (/proc/PID/status: groups
        and effective capabilities; CAP_FSETID is taken as it is seen in the requester's
        own user namespace).  A requester that is gone keeps nothing."""
        if uid == 0 or gid in file_gids or pid == 0:
            return True
        return Operations.has_fsetid(pid, uid, file_gids)

    @staticmethod
    def has_fsetid(pid: int, uid: int, file_gids: tuple[int, ...] = ()) -> bool:
        """Whether the requester ``pid`` (fsuid ``uid``) has CAP_FSETID in its effective
        set (/proc/PID/status; as seen in its own user namespace), or, with
        ``file_gids``, is in one of those groups.  A requester that is gone has
        nothing."""
        if uid == 0 or pid == 0:
            return True
        try:
            status = procfs.read_status(pid)
        except OSError:
            return False
        if file_gids and any(g in file_gids for g in status.groups):
            return True
        return bool(status.cap_effective >> _CAP_FSETID & 1)

    def open_dir_handle(self, fh: int) -> int:
        """A new O_RDONLY descriptor of the directory open as ``fh`` (an opendir
        handle; the caller closes it); EBADF if there is none."""
        d = self._dirs.get(fh)
        if d is None:
            raise FUSEError(errno.EBADF)
        return self.table.open(d.node, os.O_RDONLY | os.O_DIRECTORY)

    def _owner(self, ctx: RequestContext, pfd: int) -> tuple[int, int]:
        """(uid, gid) for a new file; -1 = leave as created (root, or the setgid group)."""
        if self.effective_user is not None:
            uid, gid = self.effective_user
        else:
            uid, gid = ctx.uid, ctx.gid
        if os.stat(pfd).st_mode & stat.S_ISGID:
            gid = -1
        return uid, gid

    def _chown_new(self, ctx: RequestContext, pfd: int, name: bytes, mode: int,
                   fd: int = -1) -> None:
        uid, gid = self._owner(ctx, pfd)
        if uid == 0 and gid in (0, -1):
            return
        # chown clears setuid/setgid on non-directories: put back the mode the file was
        # created with (the umask or a default ACL applied).
        restore = (mode & (stat.S_ISUID | stat.S_ISGID) and not stat.S_ISDIR(mode)
                   and not stat.S_ISLNK(mode))
        created = 0
        if restore:
            created = stat.S_IMODE(os.fstat(fd).st_mode if fd >= 0 else
                                   os.stat(name, dir_fd=pfd, follow_symlinks=False).st_mode)
        if fd >= 0:
            os.fchown(fd, uid, gid)
        else:
            sc.fchownat(pfd, name, uid, gid, _NOFOLLOW)
        if restore:
            if fd >= 0:
                os.fchmod(fd, created)
            else:
                os.chmod(name, created, dir_fd=pfd, follow_symlinks=False)

    # --- lifecycle ---------------------------------------------------------------------
    def init(self) -> None:
        pass

    def close(self) -> None:
        """Close every descriptor held (inode table, gate)."""
        self.table.close()
        if self.gate is not None:
            self.gate.close()

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            forget = self.table.forget
            for nodeid, nlookup in inode_list:
                forget(nodeid, nlookup)
        except Exception as exc:  # forget must not raise
            log.error("serve-fs: forget failed: %r", exc)

    # --- metadata --------------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: RequestContext) -> EntryAttributes:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            table = self.table
            parent = table.by_id.get(parent_inode)
            if parent is None:
                # open_by_handle_at of an inode the kernel forgot: it asks for "." (and
                # then "..") of the node id in the handle.
                parent = table.revive(parent_inode) if name in (b".", b"..") else None
                if parent is None:
                    raise FUSEError(errno.ESTALE)
            pfd = table.fd(parent)
            if self.grafts:
                pfd = self.grafts.get((parent_inode, name), pfd)
            if name == b"." or (name == b".." and parent_inode == ROOT_INODE):
                st = self.statbuf.at(pfd, b"", _EMPTY)
                if st[NLINK] == 0 and name == b".":
                    # open_by_handle_at of a removed file (the descriptor serve-fs
                    # caches keeps it): stale, as the disk says.
                    raise FUSEError(errno.ESTALE)
                parent.nlookup += 1
                return self.make_entry(parent, st)
            try:
                st = self.statbuf.at(pfd, name, _LOOKUP_FLAGS)
            except FileNotFoundError:
                # A negative entry the kernel caches for entry_timeout: PATH searches and
                # Python's import probing ask for many names that do not exist.
                e = EntryAttributes()
                e.st_ino = 0
                e.entry_timeout = self.entry_timeout
                return e
            if st[MNT_ID] in self.self_mount_ids:
                raise FUSEError(errno.ENOENT)
            node = table.learn(parent, pfd, name, st)
            node.nlookup += 1
            return self.make_entry(node, st)
        except Exception as exc:
            raise self._error(exc, "lookup") from None

    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            node = self.table.by_id.get(inode)
            if node is None:
                raise FUSEError(errno.ESTALE)
            st = self.statbuf.at(self.table.fd(node), b"", _EMPTY)
            return self.make_entry(node, st)
        except Exception as exc:
            raise self._error(exc, "getattr") from None

    async def setattr(self, inode: int, attr: EntryAttributes, fields: SetattrFields,
                      fh: int | None, ctx: RequestContext) -> EntryAttributes:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            node = self._node(inode)
            fd = self.table.fd(node)
            if fields.update_size:
                if fh is not None:
                    os.ftruncate(fh, attr.st_size)
                else:
                    os.truncate(b"/proc/self/fd/%d" % fd, attr.st_size)
            if fields.update_mode:
                mode = stat.S_IMODE(attr.st_mode)
                if mode & stat.S_ISGID:
                    st = self.statbuf.at(fd, b"", _EMPTY)
                    if not self.keeps_setgid(ctx.pid, ctx.uid, ctx.gid,
                                             (st[GID], self.shown_ids(st)[1])):
                        mode &= ~stat.S_ISGID
                os.chmod(b"/proc/self/fd/%d" % fd, mode)
            if fields.update_uid or fields.update_gid:
                uid = attr.st_uid if fields.update_uid else -1
                gid = attr.st_gid if fields.update_gid else -1
                sc.fchownat(fd, b"", uid, gid, _EMPTY_NOFOLLOW)
            if fields.update_atime or fields.update_mtime:
                atime = (divmod(attr.st_atime_ns, _NS) if fields.update_atime
                         else (0, sc.UTIME_OMIT))
                mtime = (divmod(attr.st_mtime_ns, _NS) if fields.update_mtime
                         else (0, sc.UTIME_OMIT))
                sc.utimensat(fd, b"", atime, mtime, _EMPTY_NOFOLLOW)
            # update_ctime: any change above already set ctime; it cannot be set directly.
            st = self.statbuf.at(fd, b"", _EMPTY)
            return self.make_entry(node, st)
        except Exception as exc:
            raise self._error(exc, "setattr") from None

    async def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            return os.readlink(b"", dir_fd=self.table.fd(self._node(inode)))
        except Exception as exc:
            raise self._error(exc, "readlink") from None

    async def statfs(self, ctx: RequestContext) -> pyfuse3.StatvfsData:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            sv = os.statvfs(self.table.root.fd)
            out = pyfuse3.StatvfsData()
            for field in ("f_bsize", "f_frsize", "f_blocks", "f_bfree", "f_bavail",
                          "f_files", "f_ffree", "f_favail", "f_namemax"):
                setattr(out, field, getattr(sv, field))
            return out
        except Exception as exc:
            raise self._error(exc, "statfs") from None

    async def access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        # Mounted with default_permissions: the kernel checks modes and never asks.
        if self.gate is not None:
            self.gate.check(ctx.pid)
        return True

    # --- namespace changes -----------------------------------------------------------
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: RequestContext) -> EntryAttributes:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            parent = self._node(parent_inode)
            pfd = self.table.fd(parent)
            os.mknod(name, self.create_mode(mode, ctx.umask), rdev, dir_fd=pfd)
            self._chown_new(ctx, pfd, name, mode)
            return self._reply_entry(parent, pfd, name)
        except Exception as exc:
            raise self._error(exc, "mknod") from None

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: RequestContext) -> EntryAttributes:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            parent = self._node(parent_inode)
            pfd = self.table.fd(parent)
            os.mkdir(name, self.create_mode(mode, ctx.umask), dir_fd=pfd)
            self._chown_new(ctx, pfd, name, mode)
            return self._reply_entry(parent, pfd, name)
        except Exception as exc:
            raise self._error(exc, "mkdir") from None

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: RequestContext) -> EntryAttributes:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            parent = self._node(parent_inode)
            pfd = self.table.fd(parent)
            os.symlink(target, name, dir_fd=pfd)
            self._chown_new(ctx, pfd, name, stat.S_IFLNK)
            return self._reply_entry(parent, pfd, name)
        except Exception as exc:
            raise self._error(exc, "symlink") from None

    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            os.unlink(name, dir_fd=self.table.fd(self._node(parent_inode)))
        except Exception as exc:
            raise self._error(exc, "unlink") from None

    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            os.rmdir(name, dir_fd=self.table.fd(self._node(parent_inode)))
        except Exception as exc:
            raise self._error(exc, "rmdir") from None

    async def rename(  # noqa: PLR0917  # pyfuse3's signature
            self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
            name_new: bytes, flags: int, ctx: RequestContext) -> None:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            table = self.table
            old_parent = self._node(parent_inode_old)
            new_parent = self._node(parent_inode_new)
            ofd = table.fd(old_parent)
            nfd = table.fd(new_parent)
            sc.renameat2(ofd, name_old, nfd, name_new, flags)
            # Inodes without file handles are found again by (parent, name): follow them.
            moved = self.statbuf.at(nfd, name_new, _LOOKUP_FLAGS)
            table.renamed(moved, new_parent, name_new)
            if flags & sc.RENAME_EXCHANGE:
                other = self.statbuf.at(ofd, name_old, _LOOKUP_FLAGS)
                table.renamed(other, old_parent, name_old)
        except Exception as exc:
            raise self._error(exc, "rename") from None

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: RequestContext) -> EntryAttributes:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            table = self.table
            node = self._node(inode)
            new_parent = self._node(new_parent_inode)
            fd = table.fd(node)
            nfd = table.fd(new_parent)
            sc.linkat(fd, b"", nfd, new_name, sc.AT_EMPTY_PATH)
            return self._reply_entry(new_parent, nfd, new_name)
        except Exception as exc:
            raise self._error(exc, "link") from None

    # --- files -----------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            node = self._node(inode)
            fd = self.table.open(node, flags & ~_OPEN_STRIP)
            if flags & os.O_ACCMODE != os.O_RDONLY:
                self._writers[fd] = node
            st = os.fstat(fd)
            size = st.st_size
            if size == 0 and self.pseudo_file(fd, st.st_dev):
                # procfs and friends report size 0 for files with contents: read them
                # through serve-fs, not through a page cache that believes the size.
                node.stamp = None
                return FileInfo(fh=fd, direct_io=True, keep_cache=False)
            # FOPEN_KEEP_CACHE only when size and mtime match what the kernel cached.
            stamp = (st.st_mtime_ns, size)
            keep = node.stamp == stamp
            node.stamp = stamp
            return FileInfo(fh=fd, keep_cache=keep)
        except Exception as exc:
            raise self._error(exc, "open") from None

    def pseudo_file(self, fd: int, dev: int) -> bool:
        """Whether the open file ``fd`` (on device ``dev``) is on a pseudo filesystem
        (`PSEUDO_FS_TYPES`: procfs, sysfs, ...), whose files report size 0 whatever they
        hold.  An empty file on a disk filesystem is just empty: it keeps the page cache
        (shared mmap and O_DIRECT work on it as on the disk).  One fstatfs per device."""
        pseudo = self._pseudo_devs.get(dev)
        if pseudo is None:
            try:
                pseudo = sc.fstatfs_type(fd) in PSEUDO_FS_TYPES
            except OSError:
                pseudo = True  # the old rule: an empty file is read through serve-fs
            self._pseudo_devs[dev] = pseudo
        return pseudo

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            parent = self._node(parent_inode)
            pfd = self.table.fd(parent)
            # Always O_EXCL: the kernel asks to create only after a lookup found nothing;
            # if a file appeared on the host since, opening it here would skip the
            # kernel's permission check on it and chown it to the caller.
            fd = os.open(name, (flags & ~os.O_NOCTTY) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                         self.create_mode(mode, ctx.umask), dir_fd=pfd)
            try:
                self._chown_new(ctx, pfd, name, mode, fd)
                st = self.statbuf.at(fd, b"", _EMPTY)
                node = self.table.learn(parent, pfd, name, st)
            except BaseException:
                os.close(fd)
                raise
            node.nlookup += 1
            node.stamp = (st[MTIME] * _NS + st[MTIME_NS], st[SIZE])
            if flags & os.O_ACCMODE != os.O_RDONLY:
                self._writers[fd] = node
            return FileInfo(fh=fd, keep_cache=True), self.make_entry(node, st)
        except Exception as exc:
            raise self._error(exc, "create") from None

    async def tmpfile(self, parent_inode: int, mode: int, flags: int,
                      ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        """open(O_TMPFILE) in the directory ``parent_inode``: an unnamed file, owned by
        the requester, that linkat(AT_EMPTY_PATH) may give a name later.  Its inode
        keeps an O_PATH descriptor pinned (it has no name to be reopened by) until the
        kernel forgets it."""
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            parent = self._node(parent_inode)
            pfd = self.table.fd(parent)
            fd = os.open(b"/proc/self/fd/%d" % pfd,
                         (flags & _TMPFILE_KEEP) | os.O_TMPFILE | os.O_CLOEXEC,
                         self.create_mode(mode, ctx.umask))
            try:
                self._chown_new(ctx, pfd, b"", mode, fd)
                st = self.statbuf.at(fd, b"", _EMPTY)
                node = self.table.learn_unnamed(parent, fd, st)
            except BaseException:
                os.close(fd)
                raise
            node.nlookup += 1
            node.stamp = (st[MTIME] * _NS + st[MTIME_NS], st[SIZE])
            self._writers[fd] = node
            return FileInfo(fh=fd, keep_cache=True), self.make_entry(node, st)
        except Exception as exc:
            raise self._error(exc, "tmpfile") from None

    async def read(self, fh: int, off: int, size: int) -> bytes:
        try:
            return os.pread(fh, size, off)
        except Exception as exc:
            raise self._error(exc, "read") from None

    async def write(self, fh: int, off: int, buf: bytes | memoryview) -> int:
        try:
            return os.pwrite(fh, buf, off)
        except Exception as exc:
            raise self._error(exc, "write") from None

    async def flush(self, fh: int) -> None:
        # ENOSYS once makes the kernel stop sending FLUSH on every close(2): a request
        # saved per file.  Nothing is lost: writes are synchronous pwrite(2)s whose errors
        # the writer already got, and without lock handlers the kernel keeps POSIX locks
        # itself.  The host descriptor is closed at release.
        raise FUSEError(errno.ENOSYS)

    async def release(self, fh: int) -> None:
        try:
            node = self._writers.pop(fh, None)
            if node is not None:
                st = os.fstat(fh)
                node.stamp = (st.st_mtime_ns, st.st_size)
            os.close(fh)
        except Exception as exc:
            raise self._error(exc, "release") from None

    async def fsync(self, fh: int, datasync: bool) -> None:
        try:
            if datasync:
                os.fdatasync(fh)
            else:
                os.fsync(fh)
        except Exception as exc:
            raise self._error(exc, "fsync") from None

    async def poll(self, inode: int, fh: int, ph: Any, ctx: RequestContext) -> int:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            p = select.poll()
            p.register(fh, select.POLLIN | select.POLLOUT | select.POLLPRI)
            events = p.poll(0)
            return events[0][1] if events else 0
        except Exception as exc:
            raise self._error(exc, "poll") from None

    # --- directories -----------------------------------------------------------------
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            node = self._node(inode)
            self.table.fd(node)  # fail now (ESTALE/ENOENT) rather than at readdir
            fh = self._next_dir
            self._next_dir = fh + 1
            self._dirs[fh] = _Dir(node)
            return fh
        except Exception as exc:
            raise self._error(exc, "opendir") from None

    async def readdir(self, fh: int, start_id: int, token: pyfuse3.ReaddirToken) -> None:
        try:
            d = self._dirs.get(fh)
            if d is None:
                raise FUSEError(errno.EBADF)
            table = self.table
            node = d.node
            pfd = table.fd(node)
            entries = d.entries
            if entries is None or start_id == 0:
                # One snapshot per pass: offsets are indexes into it, so they stay valid
                # while the directory changes (new names show up at the next rewind).
                entries = d.entries = [b".", b"..", *os.listdir(b"/proc/self/fd/%d" % pfd)]
                entries += [n for (p, n) in self.grafts if p == node.nodeid and n not in entries]
            grafts = self.grafts
            statx = self.statbuf.at
            learn = table.learn
            entry = self.make_entry
            reply = self.readdir_reply
            self_mounts = self.self_mount_ids
            for i in range(start_id, len(entries)):
                name = entries[i]
                if i < 2:
                    # "." and ".." take no lookup count (the kernel does not link them).
                    e = EntryAttributes()
                    e.st_ino = node.nodeid if i == 0 else ROOT_INODE
                    e.st_mode = stat.S_IFDIR
                    if not reply(token, name, e, i + 1):
                        return
                    continue
                dfd = grafts.get((node.nodeid, name), pfd) if grafts else pfd
                try:
                    st = statx(dfd, name, _LOOKUP_FLAGS)
                except OSError:
                    continue  # removed since the snapshot
                if st[MNT_ID] in self_mounts:
                    continue
                child = learn(node, dfd, name, st)
                if not reply(token, name, entry(child, st), i + 1):
                    table.drop_if_unused(child)
                    return
                child.nlookup += 1
        except Exception as exc:
            raise self._error(exc, "readdir") from None

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        try:
            d = self._dirs.get(fh)
            if d is None:
                raise FUSEError(errno.EBADF)
            fd = self.table.open(d.node, os.O_RDONLY | os.O_DIRECTORY)
            try:
                if datasync:
                    os.fdatasync(fd)
                else:
                    os.fsync(fd)
            finally:
                os.close(fd)
        except Exception as exc:
            raise self._error(exc, "fsyncdir") from None

    # --- extended attributes ---------------------------------------------------------
    # An O_PATH descriptor cannot be passed to f*xattr(2); /proc/self/fd/N, followed,
    # resolves to the inode itself (a symlink stays the symlink, not its target).
    def _xpath(self, inode: int) -> bytes:
        return b"/proc/self/fd/%d" % self.table.fd(self._node(inode))

    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            return os.getxattr(self._xpath(inode), name)
        except Exception as exc:
            raise self._error(exc, "getxattr") from None

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: RequestContext) -> None:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            os.setxattr(self._xpath(inode), name, value)
        except Exception as exc:
            raise self._error(exc, "setxattr") from None

    async def listxattr(self, inode: int, ctx: RequestContext) -> list[bytes]:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            return [os.fsencode(n) for n in os.listxattr(self._xpath(inode))]
        except Exception as exc:
            raise self._error(exc, "listxattr") from None

    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        try:
            if self.gate is not None:
                self.gate.check(ctx.pid)
            os.removexattr(self._xpath(inode), name)
        except Exception as exc:
            raise self._error(exc, "removexattr") from None

    # --- debugging -------------------------------------------------------------------
    def _install_debug_logging(self) -> None:
        """Log every request and its outcome (instance attributes shadow the methods)."""
        names = ("lookup", "getattr", "setattr", "readlink", "statfs", "access", "mknod",
                 "mkdir", "symlink", "unlink", "rmdir", "rename", "link", "open", "create",
                 "read", "write", "flush", "release", "fsync", "poll", "opendir", "readdir",
                 "releasedir", "fsyncdir", "getxattr", "setxattr", "listxattr",
                 "removexattr", "forget", "tmpfile")
        for name in names:
            method = getattr(self, name)

            def wrapper(*args: Any, _m: Any = method, _n: str = name) -> Any:
                async def logged() -> Any:
                    shown = [a for a in args if not isinstance(a, RequestContext | bytes)
                             or (isinstance(a, bytes) and len(a) < 256)]
                    try:
                        result = await _m(*args)
                    except FUSEError as e:
                        log.debug("%s%r -> %s", _n, tuple(shown), errno.errorcode.get(
                            e.errno, e.errno))
                        raise
                    log.debug("%s%r -> ok", _n, tuple(shown))
                    return result
                return logged()

            setattr(self, name, wrapper)
