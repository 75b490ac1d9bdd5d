"""The handler core of serve-fs: a passthrough of a host directory tree.

`Passthrough` has one plain method per FUSE operation: node ids (`InodeT`), file handles
(`FileHandle`) and parsed arguments in, the reply payload out, packed once from the statx
tuple in the kernel's layout (`cntr.fs.protocol`: fuse_entry_out, fuse_attr_out,
fuse_open_out, ...), and `OSError` for every error.  It knows no transport and no FUSE
library: `cntr.fs.session` parses requests for it, `cntr.fs.libfuse` adapts it to pyfuse3.
Which requests it serves is the dispatcher's business, and so is the mount-namespace gate
(`cntr.fs.gate`).

Every request is answered with descriptor-relative syscalls on the host (statx, openat,
open_by_handle_at, *at calls with AT_EMPTY_PATH, fchmodat2 too; /proc/self/fd/N, a walk
through procfs of ~5 us here, only where Linux has no form that takes an O_PATH
descriptor: truncate, xattrs).  A file created for writing answers for its inode through
its open descriptor until its release (f*xattr(2), no open_by_handle_at: `_files`), and
so does a file opened for writing.  Handlers block (no await, no thread): a request runs
to completion before the next one is read, so there is no locking.  The state a request
touches is the inode table (`table`), the open directories (`_dirs`), the open-file
bookkeeping (`_writers`, `_files` and the passthrough counts below) and the process umask
(`create_mode`): what a multi-threaded server has to lock.

Owners and ids:
- FUSE request contexts carry host ids (the kernel maps them into the mounter's user
  namespace, the init one).  New files, directories, nodes and symlinks are created as
  root and then chowned to the caller's ids (or to ``effective_user``); in a setgid
  directory the group is inherited as the host would do it, and setuid/setgid bits cleared
  by the chown are put back.
- With a ``uid_map``/``gid_map`` (the container's /proc/PID/uid_map lines), replies report
  host id 0 as the container root's host id when 0 itself is not mapped into the
  container, so the container's root sees the host's root-owned files as its own instead
  of as the overflow id.  Nothing is mapped back: a chown from the session stores exactly
  the host ids the kernel sent.

What the kernel features negotiated by `cntr.fs.session` need from the core (pyfuse3's
session negotiates none of them; README lists what that changes):

- **FUSE passthrough** (Linux 6.9+, ``passthrough`` and ``dev_fd`` set at INIT): regular
  files are opened on the host and handed to the kernel as backing files
  (``FUSE_DEV_IOC_BACKING_OPEN``); the kernel then reads, writes and maps them itself and
  serve-fs sees no WRITE, and READs only from readahead of the FUSE inode's own page cache,
  which the kernel still does for a prefetch (posix_fadvise(WILLNEED), readahead(2)) though
  nothing reads those pages: `read` fails them unread.  One backing id per inode while it has
  passthrough opens (the kernel refuses two backing files for one inode).  Not used for
  read-only opens of files under 64 KiB (their pages stay in the FUSE inode's cache
  between opens, cheaper for trees of small files read again), for files opened with
  ``direct_io``, for writable opens of set-user/group-ID files (a backing write runs with
  serve-fs's credentials, which would not clear those bits), or when the kernel refuses
  the backing file (another filesystem stacked too deep).  The kernel refuses (EIO) an open
  whose mode differs from the files of the inode already open, so an inode keeps the mode
  of its open files: a writable open of a set-user-ID file while the file is open in
  passthrough mode is passed through too (its writes then keep the bits), and an inode
  open through the page cache is not passed through until those files are closed.  A
  direct_io open that is mmapped switches the inode to the page cache in the kernel,
  unseen here: a passthrough open of it meanwhile fails.
- ``HANDLE_KILLPRIV_V2``: set-user/group-ID bits and file capabilities are cleared here
  when an unprivileged write, truncation or ``O_TRUNC`` open asks for it (`_kill_privs`),
  and after fallocate and copy_file_range, where the kernel leaves it to the server
  without saying; the kernel then no longer asks for ``security.capability`` before
  every write.
- FUSE_NOTIFY_INVAL_INODE where the kernel's cached attributes go stale behind its back
  (`inval_attrs`): the mode after an O_TRUNC open cleared set-ID bits, and at the first
  writable passthrough open of an inode, whose attributes are then cached for 0.1 s only
  (`writer_attr_timeout`) while it is open for writing: writes through a shared mapping
  of the backing file change mtime unseen by the kernel, so stat shows them up to 0.1 s
  late (write(2)s the kernel sees: it keeps the size and asks again after each).
- ``DONT_MASK``: modes come without the umask; `create_mode` lets the host apply it, or
  the directory's default ACL instead (POSIX).
- ``SETXATTR_EXT``: setting an access ACL clears set-group-ID when the kernel says so
  (FUSE_SETXATTR_ACL_KILL_SGID: a requester outside the file's group without CAP_FSETID).
- the requests beyond pyfuse3's Operations: fallocate (the modes the kernel passes),
  lseek (SEEK_DATA/SEEK_HOLE), copy_file_range, statx (the birth time), tmpfile and
  ioctl for the ioctls in `IOCTLS` (attribute flags, on directories too: the kernel
  checks the caller's rights before it sends them; others ENOTTY).

Caveats:
- lookups and readdir use statx(AT_STATX_DONT_SYNC): on network and FUSE filesystems the
  attributes in those replies may be as old as the host's cache (getattr is synchronous);
  it is what lets a lookup land on serve-fs's own mount without deadlocking on itself.
- serve-fs's own mount (served root ``/`` on a mountpoint under ``/``) is hidden: lookups
  of it give ENOENT and readdir leaves it out.  In ``fuse_fd`` mode the mount lives in
  another mount namespace that host lookups do not reach (/proc/PID/root is served as the
  symlink it is, never traversed by serve-fs).
- statfs reports the filesystem of the served root.
- the kernel checks permissions (``default_permissions``) on mode bits; POSIX ACLs pass
  through as xattrs but are only enforced with ``acl=True`` (FUSE_POSIX_ACL), which costs a
  getxattr per inode.
- writes by serve-fs run as root: set-user/group-ID bits are cleared for an unprivileged
  user's write, truncation or O_TRUNC open as above, and by chmod of a requester outside
  the file's group (`keeps_setgid`, from /proc/PID/status).
- missing names are cached by the kernel as negative entries for ``entry_timeout``: a file
  created on the host right after a failed lookup shows up only then; create(2) always uses
  O_EXCL, so in that window an open(O_CREAT) fails with EEXIST rather than opening (and
  chowning) a file the kernel did not check.
- files reporting size 0 on pseudo filesystems (procfs, sysfs, ...: `PSEUDO_FS_TYPES`, by
  the statfs type of their filesystem, once per device) are opened with direct_io so their
  contents are read; other files, empty ones included, use the page cache
  (FOPEN_KEEP_CACHE while size and mtime are unchanged), so shared mmap and O_DIRECT work
  on them as on the disk.  FUSE_DIRECT_IO_ALLOW_MMAP is not asked for: a direct_io file's
  own mmap fails as it does on the host.
- a lookup of "." or ".." of a node id the kernel forgot (open_by_handle_at through the
  mount: FUSE_EXPORT_SUPPORT) finds it again by the file handle `InodeTable.revive` kept;
  a removed file is ESTALE, as on the disk.
- the mount is nosuid,nodev: device nodes are listed but do not open, and a unix socket
  bound on the host cannot be connected to through the mount (another inode).
"""

from __future__ import annotations

import errno
import fcntl
import os
import select
import stat
import time

from cntr.fs.inodes import (
    ATIME,
    ATIME_NS,
    BLKSIZE,
    BLOCKS,
    BTIME,
    BTIME_NS,
    CTIME,
    CTIME_NS,
    DEV_MAJ,
    DEV_MIN,
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
    InodeT,
    InodeTable,
    StatT,
)
from cntr.fs.log import log
from cntr.fs.protocol import (
    ATTR_OUT,
    BACKING_MAP,
    DIRENT,
    ENTRY_OUT,
    FATTR_ATIME,
    FATTR_ATIME_NOW,
    FATTR_GID,
    FATTR_KILL_SUIDGID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_MTIME_NOW,
    FATTR_SIZE,
    FATTR_UID,
    FOPEN_CACHE_DIR,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    FOPEN_PASSTHROUGH,
    FUSE_DEV_IOC_BACKING_CLOSE,
    FUSE_DEV_IOC_BACKING_OPEN,
    FUSE_IOCTL_DIR,
    IOCTL_OUT,
    OPEN_OUT,
    STATFS_OUT,
    STATX_OUT,
    STATX_REPLY_MASK,
    STATX_SYNC_TYPE,
    U32,
    Request,
)
from cntr.linux import procfs
from cntr.linux import syscalls as sc

TYPE_CHECKING = False  # typing costs ~3.5 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable, Iterable
    from typing import NewType

    FileHandle = NewType("FileHandle", int)
else:
    FileHandle = int
"""A FUSE file handle: for files the host descriptor itself, for directories an index
into the open directories."""
IdMap = list[tuple[int, int, int]]
if TYPE_CHECKING:
    AddEntry = Callable[[bytes, bytes, int, int, int], bool]
"""A readdir sink: (name, fuse_entry_out, inode number, mode, next offset) -> whether it
fit (`Passthrough.readdir`)."""

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
_SUID_SGID = stat.S_ISUID | stat.S_ISGID
#: filesystems whose files report size 0 but have contents made up when read
#: (linux/magic.h): proc, sysfs, debugfs, tracefs, securityfs, cgroup, cgroup2, bpf,
#: configfs, pstore, efivarfs, selinuxfs, smackfs, fusectl, binfmt_misc, nsfs; and other
#: FUSE filesystems, which may make up contents the same way (lxcfs's /proc files)
PSEUDO_FS_TYPES = frozenset({
    0x9FA0, 0x62656572, 0x64626720, 0x74726163, 0x73636673, 0x27E0EB, 0x63677270,
    0xCAFE4A11, 0x62656570, 0x6165676C, 0xDE5E81E4, 0xF97CFF8C, 0x43415D53, 0x65735543,
    0x42494E4D, 0x6E736673, 0x65735546,
})
#: the file ioctls served on the host file (FUSE_IOCTL, restricted): attribute flags
#: (chattr/lsattr; the two setters are taken by the VFS from user space, so they come
#: only from the kernel's fileattr calls, which check the caller's rights first: owner,
#: CAP_LINUX_IMMUTABLE), the inode generation and the filesystem label.  Others answer
#: ENOTTY: serve-fs runs them with its own privileges, which the requester may not have
#: (FS_IOC32_SETFLAGS, for one, reaches a FUSE file unchecked on 64-bit).
IOCTLS = frozenset({
    0x80086601, 0x40086602,  # FS_IOC_GETFLAGS, FS_IOC_SETFLAGS
    0x80046601,  # FS_IOC32_GETFLAGS
    0x801C581F, 0x401C5820,  # FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR
    0x80087601, 0x80047601,  # FS_IOC_GETVERSION, FS_IOC32_GETVERSION
    0x81009431,  # FS_IOC_GETFSLABEL
})
_NS = 1_000_000_000
_makedev = os.makedev
_ENTRY_PACK = ENTRY_OUT.pack
_ATTR_OUT_PACK = ATTR_OUT.pack
_DIRENT_PACK = DIRENT.pack
_ENTRY_DIRENT_SIZE = ENTRY_OUT.size + DIRENT.size
#: a fuse_dirent's name is padded to 8 bytes: the padding of a name of length n
_PADDING = tuple(b"\0" * n for n in range(8))


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


def _timeout(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * _NS)


class _Dir:
    """An open directory: the inode and the listing taken at the first readdir."""

    __slots__ = ("entries", "node")

    def __init__(self, node: Inode) -> None:
        self.node = node
        self.entries: list[bytes] | None = None


class _DirBuffer:
    """A READDIRPLUS reply being filled; `add` is an `AddEntry`."""

    __slots__ = ("left", "parts")

    def __init__(self, size: int) -> None:
        self.left = size
        self.parts: list[bytes] = []

    def add(self, name: bytes, entry: bytes, ino: int, mode: int, next_id: int) -> bool:
        namelen = len(name)
        size = _ENTRY_DIRENT_SIZE + ((namelen + 7) & ~7)
        if size > self.left:
            return False
        self.left -= size
        self.parts += (entry, _DIRENT_PACK(ino, next_id, namelen, (mode & 0o170000) >> 12),
                       name, _PADDING[-namelen & 7])  # joined once, at the end
        return True


class Passthrough:
    """Passthrough of the directory ``root_fd`` refers to (the table takes the descriptor).

    ``acl``: the session asks the kernel to enforce POSIX ACLs (FUSE_POSIX_ACL).
    ``debug``: log every call and its outcome (``cntr.fs: lookup(1, b'f') -> ok``).
    """

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
        debug: bool = False,
    ) -> None:
        if fd_cache_size < 4:
            raise ValueError("fd_cache_size must be >= 4 (rename holds two descriptors)")
        self.acl = acl
        self.table = InodeTable(root_fd, fd_cache_size=fd_cache_size, use_handles=use_handles)
        self.statbuf = self.table.statbuf
        self.entry_timeout = entry_timeout
        self.attr_timeout = attr_timeout
        ev, evn = _timeout(entry_timeout)
        av, avn = _timeout(attr_timeout)
        self._timeouts = (ev, av, evn, avn)
        #: the attribute timeout of inodes open for writing in passthrough mode
        self._writer_timeout = _timeout(min(attr_timeout, self.writer_attr_timeout))
        #: the reply to a lookup of a missing name: a negative entry cached for
        #: entry_timeout (PATH searches and Python's import probing ask for many)
        self._negative = _ENTRY_PACK(0, 0, ev, 0, evn, 0, *(0,) * 16)
        self.root_uid = host_root_id(uid_map)
        self.root_gid = host_root_id(gid_map)
        self.effective_user = effective_user
        #: mount ids of serve-fs's own mount(s): never served back into themselves
        self.self_mount_ids: set[int] = set()
        #: (parent node id, name) -> a directory descriptor holding ``name``: entries
        #: shown in a directory that does not have them (`cntr.fs.tree` makes them in
        #: a detached tmpfs, so nothing is written into the served tree)
        self.grafts: dict[tuple[int, bytes], int] = {}
        #: set by the session at INIT: the /dev/fuse descriptor for backing files (-1:
        #: none) and whether the kernel took FUSE_PASSTHROUGH
        self.dev_fd = -1
        self.passthrough = False
        #: set by the session (`cntr.fs.session`, `cntr.fs.libfuse`): has the kernel drop
        #: the attributes it cached for a node (FUSE_NOTIFY_INVAL_INODE)
        self.notify_inval: Callable[[int], None] | None = None
        self._dirs: dict[int, _Dir] = {}
        self._next_dir = 1
        #: open file handle -> inode, for writable opens (to refresh the cache stamp)
        self._writers: dict[int, Inode] = {}
        #: node id -> a file handle open on it, for files created or opened for writing:
        #: it stands in for the inode's O_PATH descriptor (`_fd`, `_file`): the GETXATTR
        #: of security.capability at the first write, and whatever else comes before the
        #: release, then cost no open_by_handle_at(2) and no walk through procfs
        self._files: dict[int, int] = {}
        #: the process umask `create_mode` set last (None: not known)
        self._umask: int | None = None
        #: st_dev -> whether that filesystem is a pseudo filesystem (`PSEUDO_FS_TYPES`)
        self._pseudo_devs: dict[int, bool] = {}
        #: node id -> [backing id, passthrough opens]
        self._backing: dict[int, list[int]] = {}
        #: file handle -> node id, for files opened in passthrough mode
        self._pt_files: dict[int, int] = {}
        #: node id -> files open through the page cache; file handle -> node id
        self._cached: dict[int, int] = {}
        self._cached_files: dict[int, int] = {}
        #: node id -> writable passthrough opens; the file handles of those opens.  The
        #: kernel does not see writes through a shared mapping of a backing file, so
        #: the attributes of these inodes are cached for `writer_attr_timeout` only.
        self._pt_writers: dict[int, int] = {}
        self._pt_writer_files: set[int] = set()
        self.debug = debug
        if debug:
            self._install_debug_logging()

    # --- replies -----------------------------------------------------------------------
    def _entry(self, node: Inode, st: StatT) -> bytes:
        """The fuse_entry_out of ``node`` with attributes ``st``: the node id as inode
        number, host id 0 shown as the container root's when it is not mapped."""
        # shown_ids() and makedev() inline: every LOOKUP, CREATE and readdir entry
        uid, gid = st[UID], st[GID]
        if not uid and self.root_uid is not None:
            uid = self.root_uid
        if not gid and self.root_gid is not None:
            gid = self.root_gid
        ev, av, evn, avn = self._timeouts
        nodeid = node.nodeid
        if nodeid in self._pt_writers:
            av, avn = self._writer_timeout
        rdev = st[RDEV_MAJ] or st[RDEV_MIN]
        return _ENTRY_PACK(
            nodeid, node.gen, ev, av, evn, avn, nodeid, st[SIZE], st[BLOCKS], st[ATIME],
            st[MTIME], st[CTIME], st[ATIME_NS], st[MTIME_NS], st[CTIME_NS], st[MODE],
            st[NLINK], uid, gid,
            _makedev(st[RDEV_MAJ], st[RDEV_MIN]) & 0xFFFFFFFF if rdev else 0,
            st[BLKSIZE], 0)

    def _attr(self, node: Inode, st: StatT) -> bytes:
        """The fuse_attr_out of ``node`` with attributes ``st`` (as `_entry`)."""
        uid, gid = st[UID], st[GID]
        if not uid and self.root_uid is not None:
            uid = self.root_uid
        if not gid and self.root_gid is not None:
            gid = self.root_gid
        _, av, _, avn = self._timeouts
        nodeid = node.nodeid
        if nodeid in self._pt_writers:
            av, avn = self._writer_timeout
        rdev = st[RDEV_MAJ] or st[RDEV_MIN]
        return _ATTR_OUT_PACK(
            av, avn, 0, nodeid, st[SIZE], st[BLOCKS], st[ATIME], st[MTIME], st[CTIME],
            st[ATIME_NS], st[MTIME_NS], st[CTIME_NS], st[MODE], st[NLINK], uid, gid,
            _makedev(st[RDEV_MAJ], st[RDEV_MIN]) & 0xFFFFFFFF if rdev else 0,
            st[BLKSIZE], 0)

    def shown_ids(self, st: StatT) -> tuple[int, int]:
        """The owner of ``st`` as replies show it: host id 0 as the container root's host
        id when 0 is not mapped into the container (module docstring)."""
        uid, gid = st[UID], st[GID]
        return (uid if uid or self.root_uid is None else self.root_uid,
                gid if gid or self.root_gid is None else self.root_gid)

    def _node(self, nodeid: int) -> Inode:
        node = self.table.by_id.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, "unknown node id")
        return node

    def _file(self, node: Inode) -> int:
        """A file created or opened on ``node`` for writing and still open (`_files`: the
        same inode, a regular descriptor, so f*xattr(2), fchmod(2), fchown(2) and
        ftruncate(2) take it); -1 if none."""
        return self._files.get(node.nodeid, -1)

    def _fd(self, node: Inode) -> int:
        """A descriptor of ``node`` for metadata calls (statx, chown, utimens, chmod):
        `_file`, else its O_PATH descriptor (cached or reopened)."""
        fh = self._files.get(node.nodeid)
        return fh if fh is not None else self.table.fd(node)

    def _new_entry(self, parent: Inode, pfd: int, name: bytes) -> bytes:
        """statx ``name`` (just created or linked), count a lookup, build the reply."""
        st = self.statbuf.at(pfd, name, _NOFOLLOW)
        node = self.table.learn(parent, pfd, name, st)
        node.nlookup += 1
        return self._entry(node, st)

    # --- owners, modes, privileges ---------------------------------------------------
    def create_mode(self, mode: int, umask: int) -> int:
        """The mode to create a file of ``mode`` with for a requester whose umask is
        ``umask``: ``mode`` itself, with serve-fs's process umask set to ``umask``, so
        that the host applies it exactly where POSIX says (not in a directory with a
        default ACL, whose ACL then replaces the umask).  The session asks the kernel
        for the unmasked mode (FUSE_DONT_MASK); in pyfuse3's session the kernel already
        applied the umask.  The umask is a syscall only when it changes (requests are
        served one at a time; nothing else serve-fs creates takes it)."""
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
        return Passthrough.has_fsetid(pid, uid, file_gids)

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

    def _owner(self, req: Request, pfd: int) -> tuple[int, int]:
        """(uid, gid) for a new file; -1 = leave as created (root, or the setgid group).
        root:root is answered without looking at the parent: whether it is set-group-ID
        or not, the file keeps what serve-fs (root) created it with."""
        if self.effective_user is not None:
            uid, gid = self.effective_user
        else:
            uid, gid = req.uid, req.gid
        if (uid or gid) and os.stat(pfd).st_mode & stat.S_ISGID:
            gid = -1
        return uid, gid

    def _chown_new(self, req: Request, pfd: int, name: bytes, mode: int,
                   fd: int = -1) -> None:
        uid, gid = self._owner(req, pfd)
        if uid == 0 and gid in (0, -1):
            return
        # chown clears setuid/setgid on non-directories: put back the mode the file was
        # created with (the umask or a default ACL applied).
        restore = (mode & _SUID_SGID and not stat.S_ISDIR(mode) and not stat.S_ISLNK(mode))
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

    @staticmethod
    def _kill_privs(fd: int, mode: int | None = None, *, o_path: bool = False) -> bool:
        """Clear set-user-ID, set-group-ID (with group execute) and file capabilities of
        the file ``fd`` (of mode ``mode``, else fstat'ed; ``o_path``: an O_PATH
        descriptor, whose xattrs only /proc/self/fd/N reaches), as a write, truncate or
        chown by an unprivileged user does (FUSE_HANDLE_KILLPRIV_V2: the kernel leaves
        that to serve-fs, whose own syscalls run with CAP_FSETID); True if anything was
        cleared."""
        if mode is None:
            mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return False
        try:
            os.removexattr(b"/proc/self/fd/%d" % fd if o_path else fd, b"security.capability")
            changed = True
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
            changed = False
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if mode & kill:
            sc.chmod_fd(fd, stat.S_IMODE(mode) & ~kill)
            changed = True
        return changed

    def _kill_privs_unprivileged(self, nodeid: int, fd: int, req: Request) -> None:
        """As a write by the requester would: clear set-user/group-ID of ``fd`` unless
        the requester has CAP_FSETID (for fallocate and copy_file_range, where the kernel
        leaves it to a FUSE_HANDLE_KILLPRIV_V2 server without saying)."""
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) and mode & _SUID_SGID and not self.has_fsetid(
                req.pid, req.uid) and self._kill_privs(fd, mode):
            self.inval_attrs(nodeid)

    def inval_attrs(self, nodeid: int) -> None:
        """Have the kernel drop the attributes it cached for ``nodeid`` (its cached pages
        stay): the next stat asks serve-fs.  Through ``notify_inval``, which the session
        sets (nothing before)."""
        if self.notify_inval is not None:
            self.notify_inval(nodeid)

    # --- lifecycle -----------------------------------------------------------------------
    def close(self) -> None:
        """Close every descriptor held (the inode table's)."""
        self.table.close()

    def forget(self, items: Iterable[tuple[int, int]]) -> None:
        """The kernel dropped references: (node id, count) pairs."""
        forget = self.table.forget
        for nodeid, nlookup in items:
            forget(nodeid, nlookup)

    # --- metadata ----------------------------------------------------------------------
    def lookup(self, parent_id: InodeT, name: bytes) -> bytes:
        """fuse_entry_out of ``name`` in ``parent_id`` (a negative entry if missing)."""
        table = self.table
        parent = table.by_id.get(parent_id)
        if parent is None:
            # open_by_handle_at of an inode the kernel forgot: it asks for "." (and then
            # "..") of the node id in the handle.
            parent = table.revive(parent_id) if name in (b".", b"..") else None
            if parent is None:
                raise OSError(errno.ESTALE, "unknown node id")
        pfd = table.fd(parent)
        if self.grafts:
            pfd = self.grafts.get((parent_id, name), pfd)
        if name == b"." or (name == b".." and parent_id == ROOT_INODE):
            st = self.statbuf.at(pfd, b"", _EMPTY)
            if st[NLINK] == 0 and name == b".":
                # open_by_handle_at of a removed file (the descriptor serve-fs caches
                # keeps it): stale, as the disk says.
                raise OSError(errno.ESTALE, "removed")
            parent.nlookup += 1
            return self._entry(parent, st)
        found = self.statbuf.find(pfd, name, _LOOKUP_FLAGS)
        if found is None:
            return self._negative
        if found[MNT_ID] in self.self_mount_ids:
            raise OSError(errno.ENOENT, "serve-fs's own mount")
        node = table.learn(parent, pfd, name, found)
        node.nlookup += 1
        return self._entry(node, found)

    def getattr(self, nodeid: InodeT) -> bytes:
        """fuse_attr_out of ``nodeid``."""
        # _node() and _fd() inline: the kernel asks for a directory's attributes after
        # every create and unlink in it (default_permissions)
        node = self.table.by_id.get(nodeid)
        if node is None:
            raise OSError(errno.ESTALE, "unknown node id")
        fh = self._files.get(nodeid)
        return self._attr(node, self.statbuf.at(self.table.fd(node) if fh is None else fh,
                                                b"", _EMPTY))

    def statx(self, nodeid: InodeT, sx_flags: int) -> bytes:
        """fuse_statx_out of ``nodeid``: getattr with the birth time (and the host's
        attribute flags); ``sx_flags``' sync type is passed on."""
        node = self._node(nodeid)
        st = self.statbuf.at(self._fd(node), b"", _EMPTY | (sx_flags & STATX_SYNC_TYPE))
        uid, gid = self.shown_ids(st)
        _, av, _, avn = self._timeouts
        if nodeid in self._pt_writers:
            av, avn = self._writer_timeout
        return STATX_OUT.pack(
            av, avn, 0, 0, 0,
            st[0] & STATX_REPLY_MASK, st[BLKSIZE], st[2], st[NLINK], uid, gid, st[MODE], 0,
            nodeid, st[SIZE], st[BLOCKS], st[11],
            st[ATIME], st[ATIME_NS], 0, st[BTIME], st[BTIME_NS], 0,
            st[CTIME], st[CTIME_NS], 0, st[MTIME], st[MTIME_NS], 0,
            st[RDEV_MAJ], st[RDEV_MIN], st[DEV_MAJ], st[DEV_MIN], *(0,) * 14)

    def setattr(self, nodeid: InodeT, req: Request, valid: int, fh: FileHandle | None,  # noqa: PLR0917  # fuse_setattr_in's fields
                size: int, mode: int, uid: int, gid: int, atime_ns: int,
                mtime_ns: int) -> bytes:
        """Change what ``valid`` (FATTR_* bits) names; fuse_attr_out after.  Times are
        already resolved (FATTR_*_NOW: the caller's clock); FATTR_KILL_SUIDGID clears
        set-ID bits and capabilities afterwards (`_kill_privs`)."""
        node = self._node(nodeid)
        fd = self._file(node)
        o_path = fd < 0
        if o_path:
            fd = self.table.fd(node)
        if valid & FATTR_SIZE:
            if fh is not None:
                os.ftruncate(fh, size)
            elif not o_path:
                os.ftruncate(fd, size)
            else:
                os.truncate(b"/proc/self/fd/%d" % fd, size)
        if valid & FATTR_MODE:
            mode = stat.S_IMODE(mode)
            if mode & stat.S_ISGID:
                st = self.statbuf.at(fd, b"", _EMPTY)
                if not self.keeps_setgid(req.pid, req.uid, req.gid,
                                         (st[GID], self.shown_ids(st)[1])):
                    mode &= ~stat.S_ISGID
            if o_path:
                sc.chmod_fd(fd, mode)
            else:  # a regular descriptor: os.fchmod, cheaper than fchmodat2 through ctypes
                os.fchmod(fd, mode)
        if valid & (FATTR_UID | FATTR_GID):
            uid = uid if valid & FATTR_UID else -1
            gid = gid if valid & FATTR_GID else -1
            if o_path:
                sc.fchownat(fd, b"", uid, gid, _EMPTY_NOFOLLOW)
            else:
                os.fchown(fd, uid, gid)
        if valid & (FATTR_ATIME | FATTR_ATIME_NOW | FATTR_MTIME | FATTR_MTIME_NOW):
            atime = (divmod(atime_ns, _NS) if valid & (FATTR_ATIME | FATTR_ATIME_NOW)
                     else (0, sc.UTIME_OMIT))
            mtime = (divmod(mtime_ns, _NS) if valid & (FATTR_MTIME | FATTR_MTIME_NOW)
                     else (0, sc.UTIME_OMIT))
            sc.utimensat(fd, b"", atime, mtime, _EMPTY_NOFOLLOW)
        # FATTR_CTIME: any change above already set ctime; it cannot be set directly.
        st = self.statbuf.at(fd, b"", _EMPTY)
        if valid & FATTR_KILL_SUIDGID and self._kill_privs(fd, st[MODE], o_path=o_path):
            st = self.statbuf.at(fd, b"", _EMPTY)
        return self._attr(node, st)

    def readlink(self, nodeid: InodeT) -> bytes:
        """The target of the symlink ``nodeid``."""
        return os.readlink(b"", dir_fd=self.table.fd(self._node(nodeid)))

    def statfs(self) -> bytes:
        """fuse_statfs_out of the served root's filesystem (module docstring)."""
        sv = os.statvfs(self.table.root.fd)
        return STATFS_OUT.pack(sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files, sv.f_ffree,
                               sv.f_bsize, sv.f_namemax, sv.f_frsize, 0)

    def access(self, nodeid: InodeT, mask: int) -> None:
        """Mounted with default_permissions: the kernel checks modes and never asks."""

    # --- namespace changes -----------------------------------------------------------
    def mknod(self, parent_id: InodeT, name: bytes, mode: int, rdev: int,
              req: Request) -> bytes:
        parent = self._node(parent_id)
        pfd = self.table.fd(parent)
        os.mknod(name, self.create_mode(mode, req.umask), rdev, dir_fd=pfd)
        self._chown_new(req, pfd, name, mode)
        return self._new_entry(parent, pfd, name)

    def mkdir(self, parent_id: InodeT, name: bytes, mode: int, req: Request) -> bytes:
        parent = self._node(parent_id)
        pfd = self.table.fd(parent)
        os.mkdir(name, self.create_mode(mode, req.umask), dir_fd=pfd)
        self._chown_new(req, pfd, name, mode)
        return self._new_entry(parent, pfd, name)

    def symlink(self, parent_id: InodeT, name: bytes, target: bytes, req: Request) -> bytes:
        parent = self._node(parent_id)
        pfd = self.table.fd(parent)
        os.symlink(target, name, dir_fd=pfd)
        self._chown_new(req, pfd, name, stat.S_IFLNK)
        return self._new_entry(parent, pfd, name)

    def unlink(self, parent_id: InodeT, name: bytes) -> None:
        os.unlink(name, dir_fd=self.table.fd(self._node(parent_id)))

    def rmdir(self, parent_id: InodeT, name: bytes) -> None:
        os.rmdir(name, dir_fd=self.table.fd(self._node(parent_id)))

    def rename(self, old_id: InodeT, old_name: bytes, new_id: InodeT, new_name: bytes,
               flags: int) -> None:
        """renameat2(2) with ``flags`` (RENAME_NOREPLACE, RENAME_EXCHANGE)."""
        table = self.table
        old_parent = self._node(old_id)
        new_parent = self._node(new_id)
        ofd = table.fd(old_parent)
        nfd = table.fd(new_parent)
        sc.renameat2(ofd, old_name, nfd, new_name, flags)
        # Inodes without file handles are found again by (parent, name): follow them.
        moved = self.statbuf.at(nfd, new_name, _LOOKUP_FLAGS)
        table.renamed(moved, new_parent, new_name)
        if flags & sc.RENAME_EXCHANGE:
            other = self.statbuf.at(ofd, old_name, _LOOKUP_FLAGS)
            table.renamed(other, old_parent, old_name)

    def link(self, nodeid: InodeT, new_parent_id: InodeT, new_name: bytes) -> bytes:
        table = self.table
        node = self._node(nodeid)
        new_parent = self._node(new_parent_id)
        nfd = table.fd(new_parent)
        sc.linkat(table.fd(node), b"", nfd, new_name, sc.AT_EMPTY_PATH)
        return self._new_entry(new_parent, nfd, new_name)

    # --- files ---------------------------------------------------------------------------
    def open(self, nodeid: InodeT, flags: int, kill_privs: bool = False) -> bytes:
        """fuse_open_out of a new open of ``nodeid`` with ``flags``; ``kill_privs``
        (FUSE_OPEN_KILL_SUIDGID: an O_TRUNC open by an unprivileged user) clears set-ID
        bits and capabilities."""
        node = self._node(nodeid)
        fd = self.table.open(node, flags & ~_OPEN_STRIP)
        try:
            if flags & os.O_ACCMODE != os.O_RDONLY:
                self._writers[fd] = node
                self._files[nodeid] = fd
            st = os.fstat(fd)
            if kill_privs and self._kill_privs(fd, st.st_mode):
                # The kernel keeps the mode it had cached (O_TRUNC invalidates only
                # size and times): it must ask again.
                self.inval_attrs(nodeid)
                st = os.fstat(fd)  # the mode without the bits just cleared
            size = st.st_size
            if size == 0 and self.pseudo_file(fd, st.st_dev):
                # procfs and friends report size 0 for files with contents: read them
                # through serve-fs, not through a page cache that believes the size.
                node.stamp = None
                return self._opened(nodeid, FileHandle(fd), flags, FOPEN_DIRECT_IO,
                                    st.st_mode, size)
            # FOPEN_KEEP_CACHE only when size and mtime match what the kernel cached.
            stamp = (st.st_mtime_ns, size)
            keep = node.stamp == stamp
            node.stamp = stamp
            return self._opened(nodeid, FileHandle(fd), flags,
                                FOPEN_KEEP_CACHE if keep else 0, st.st_mode, size)
        except BaseException:
            self.release(FileHandle(fd))
            raise

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

    def create(self, parent_id: InodeT, name: bytes, mode: int, flags: int,
               req: Request) -> bytes:
        """fuse_entry_out + fuse_open_out of a new file ``name`` open with ``flags``."""
        parent = self._node(parent_id)
        pfd = self.table.fd(parent)
        # Always O_EXCL: the kernel asks to create only after a lookup found nothing; if
        # a file appeared on the host since, opening it here would skip the kernel's
        # permission check on it and chown it to the caller.
        fd = os.open(name, (flags & ~os.O_NOCTTY) | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC,
                     self.create_mode(mode, req.umask), dir_fd=pfd)
        try:
            self._chown_new(req, pfd, name, mode, fd)
            st = self.statbuf.at(fd, b"", _EMPTY)
            node = self.table.learn(parent, pfd, name, st)
        except BaseException:
            os.close(fd)
            raise
        return self._created(node, st, FileHandle(fd), flags)

    def tmpfile(self, parent_id: InodeT, mode: int, flags: int, req: Request) -> bytes:
        """open(O_TMPFILE) in the directory ``parent_id``: an unnamed file, owned by the
        requester, that linkat(AT_EMPTY_PATH) may give a name later; fuse_entry_out +
        fuse_open_out.  Its inode keeps an O_PATH descriptor pinned (it has no name to be
        reopened by) until the kernel forgets it."""
        parent = self._node(parent_id)
        pfd = self.table.fd(parent)
        fd = os.open(b"/proc/self/fd/%d" % pfd,
                     (flags & _TMPFILE_KEEP) | os.O_TMPFILE | os.O_CLOEXEC,
                     self.create_mode(mode, req.umask))
        try:
            self._chown_new(req, pfd, b"", mode, fd)
            st = self.statbuf.at(fd, b"", _EMPTY)
            node = self.table.learn_unnamed(parent, fd, st)
        except BaseException:
            os.close(fd)
            raise
        return self._created(node, st, FileHandle(fd), flags)

    def _created(self, node: Inode, st: StatT, fh: FileHandle, flags: int) -> bytes:
        """The reply of a file just created, open as ``fh``: its attributes not to be
        cached if it is open for writing in passthrough mode (`_pt_writers`)."""
        node.stamp = (st[MTIME] * _NS + st[MTIME_NS], st[SIZE])
        if flags & os.O_ACCMODE != os.O_RDONLY:
            self._writers[fh] = node
            self._files[node.nodeid] = fh
        try:
            opened = self._opened(node.nodeid, fh, flags, FOPEN_KEEP_CACHE, st[MODE],
                                  st[SIZE], new=True)
        except BaseException:
            self.release(fh)
            self.table.drop_if_unused(node)  # the kernel never gets it
            raise
        node.nlookup += 1
        return self._entry(node, st) + opened

    def _opened(self, nodeid: int, fh: FileHandle, flags: int, open_flags: int,  # noqa: PLR0917  # one open's facts
                mode: int, size: int, *, new: bool = False) -> bytes:
        """fuse_open_out for ``fh`` (whose file has ``mode`` and ``size`` now), in
        passthrough mode where it can be (``new``: a file just created, whose attributes
        the kernel has not cached yet).

        The kernel fails an open (EIO) whose mode differs from the inode's open files'
        (passthrough with this backing id, or the page cache), so an inode that has files
        open keeps their mode; the counts drop at RELEASE, after the kernel's.
        """
        if self.passthrough:
            writable = flags & os.O_ACCMODE != os.O_RDONLY
            entry = self._backing.get(nodeid)
            if entry is not None:  # whatever else this open would be, it must be this
                entry[1] += 1
                self._pt_files[fh] = nodeid
                if writable:
                    self._pt_writer(nodeid, fh, new)
                return OPEN_OUT.pack(fh, FOPEN_PASSTHROUGH, entry[0])
            direct_io = open_flags & FOPEN_DIRECT_IO
            if (not direct_io and nodeid not in self._cached
                    and self._pass_through(mode, size, writable)):
                backing = self._backing_open(nodeid, fh)
                if backing:
                    self._pt_files[fh] = nodeid
                    if writable:
                        self._pt_writer(nodeid, fh, new)
                    return OPEN_OUT.pack(fh, FOPEN_PASSTHROUGH, backing)
            if not direct_io:
                self._cached[nodeid] = self._cached.get(nodeid, 0) + 1
                self._cached_files[fh] = nodeid
        return OPEN_OUT.pack(fh, open_flags, 0)

    #: the bound on how late stat shows a write through a shared mapping of a file open
    #: for writing in passthrough mode (the kernel sees write(2)s itself: it updates the
    #: size and asks again after each).  Timeout 0 cost a GETATTR per lseek(SEEK_END) and
    #: per stat of such a file (a database asks for its tables' sizes all the time).
    writer_attr_timeout = 0.1

    def _pt_writer(self, nodeid: int, fh: int, new: bool) -> None:
        """Count a writable passthrough open of ``nodeid``; at the first, drop the
        attributes the kernel cached (replies carry `writer_attr_timeout` from now on; a
        ``new`` file's come with this reply)."""
        count = self._pt_writers.get(nodeid, 0)
        self._pt_writers[nodeid] = count + 1
        self._pt_writer_files.add(fh)
        if not count and not new:
            self.inval_attrs(nodeid)

    #: read-only opens of files smaller than this use the page cache: a tree of small
    #: files read again took ~50 ms per 1,000 files that way against ~110 ms passed through
    #: (each passthrough open and release also registers and drops a backing file)
    passthrough_min_size = 64 << 10

    def _pass_through(self, mode: int, size: int, writable: bool) -> bool:
        """Whether a new open of an inode with no other open files, of a file with
        ``mode`` and ``size``, is passed through: writable ones unless
        set-user/group-ID, read-only ones of larger files."""
        if writable:
            return not mode & _SUID_SGID
        return size >= self.passthrough_min_size

    def _backing_open(self, nodeid: int, fh: int) -> int:
        """A backing id for the inode from its host file ``fh``; 0 if the kernel refuses."""
        arg = bytearray(BACKING_MAP.pack(fh, 0, 0))
        try:
            backing = int(fcntl.ioctl(self.dev_fd, FUSE_DEV_IOC_BACKING_OPEN, arg, True))
        except OSError as exc:
            log.debug("serve-fs: no passthrough for node %#x: %s", nodeid, exc)
            return 0
        self._backing[nodeid] = [backing, 1]
        return backing

    def _released(self, fh: int) -> None:
        """Forget ``fh``'s open mode; the inode's backing id goes with its last file."""
        nodeid = self._cached_files.pop(fh, None)
        if nodeid is not None:
            left = self._cached.pop(nodeid) - 1
            if left:
                self._cached[nodeid] = left
            return
        nodeid = self._pt_files.pop(fh, None)
        if nodeid is None:
            return
        if fh in self._pt_writer_files:
            self._pt_writer_files.discard(fh)
            left = self._pt_writers.pop(nodeid) - 1
            if left:
                self._pt_writers[nodeid] = left
        entry = self._backing[nodeid]
        entry[1] -= 1
        if entry[1] == 0:
            del self._backing[nodeid]
            try:
                fcntl.ioctl(self.dev_fd, FUSE_DEV_IOC_BACKING_CLOSE,
                            bytearray(U32.pack(entry[0])), True)
            except OSError as exc:
                log.debug("serve-fs: closing backing id %d: %s", entry[0], exc)

    def read(self, fh: FileHandle, offset: int, size: int) -> bytes:
        """pread(2); EIO, unread, for a file open in passthrough mode (`_pt_files`)."""
        if fh in self._pt_files:
            # Its reads and maps go to the backing file: a READ on it is readahead of
            # the FUSE inode's own page cache (posix_fadvise(WILLNEED), readahead(2):
            # a database's prefetch), pages nothing reads and passthrough writes do not
            # update.  A failed readahead leaves them out of the cache, silently.
            raise OSError(errno.EIO, "readahead of a file open in passthrough mode")
        return os.pread(fh, size, offset)

    def write(self, nodeid: InodeT, fh: FileHandle, offset: int, data: bytes | memoryview,
              kill_privs: bool = False) -> int:
        """pwrite(2); ``kill_privs`` (FUSE_WRITE_KILL_SUIDGID) clears set-ID bits and
        capabilities after."""
        try:
            written = os.pwrite(fh, data, offset)
        except OSError as exc:
            if exc.errno != errno.EINVAL or not fcntl.fcntl(fh, fcntl.F_GETFL) & os.O_DIRECT:
                raise
            # O_DIRECT wants an aligned buffer, which a request's bytes are not: the
            # requester's was (its offset and length are checked by the host as given).
            import mmap  # here: only this rare case needs it (serve-fs's start does not)

            with mmap.mmap(-1, max(len(data), 1)) as aligned:
                aligned.write(data)
                written = os.pwrite(fh, memoryview(aligned)[:len(data)], offset)
        if kill_privs and self._kill_privs(fh):
            self.inval_attrs(nodeid)  # the mode the kernel cached is the old one
        return written

    def flush(self, fh: FileHandle) -> None:
        """Always ENOSYS, which once makes the kernel stop sending FLUSH on every
        close(2): a request saved per file.  Nothing is lost: writes are synchronous
        pwrite(2)s whose errors the writer already got, and without lock handlers the
        kernel keeps POSIX locks itself.  The host descriptor is closed at release."""
        raise OSError(errno.ENOSYS, "no flush")

    def release(self, fh: FileHandle) -> None:
        """Close ``fh``; its inode keeps the (mtime, size) it was left with, or no stamp
        at all after a writable open in passthrough mode: its writes bypassed the FUSE
        inode's page cache, so the next open through that cache must not keep whatever
        it holds (FOPEN_KEEP_CACHE), and an fstat would not change that."""
        passed_through = fh in self._pt_files
        self._released(fh)
        node = self._writers.pop(fh, None)
        try:
            if node is not None:
                files = self._files
                if files.get(node.nodeid) == fh:
                    del files[node.nodeid]
                if passed_through:
                    node.stamp = None
                else:
                    st = os.fstat(fh)
                    node.stamp = (st.st_mtime_ns, st.st_size)
        finally:
            os.close(fh)

    def fsync(self, fh: FileHandle, datasync: bool) -> None:
        if datasync:
            os.fdatasync(fh)
        else:
            os.fsync(fh)

    def poll(self, fh: FileHandle) -> int:
        """The poll(2) events ready on ``fh`` now."""
        p = select.poll()
        p.register(fh, select.POLLIN | select.POLLOUT | select.POLLPRI)
        events = p.poll(0)
        return events[0][1] if events else 0

    def fallocate(self, nodeid: InodeT, fh: FileHandle, offset: int, length: int,  # noqa: PLR0917  # fuse_fallocate_in
                  mode: int, req: Request) -> None:
        """fallocate(2) with the kernel's ``mode`` (preallocate, keep size, punch hole,
        zero range)."""
        sc.fallocate(fh, mode, offset, length)
        self._kill_privs_unprivileged(nodeid, fh, req)

    def lseek(self, fh: FileHandle, offset: int, whence: int) -> int:
        """lseek(2), for SEEK_DATA and SEEK_HOLE."""
        return os.lseek(fh, offset, whence)

    def copy_file_range(self, fh_in: FileHandle, off_in: int, nodeid_out: InodeT,  # noqa: PLR0917  # fuse_copy_file_range_in's fields
                        fh_out: FileHandle, off_out: int, length: int, flags: int,
                        req: Request) -> int:
        """copy_file_range(2) between two open files: bytes copied."""
        if flags:
            raise OSError(errno.EINVAL, "copy_file_range flags")
        done = os.copy_file_range(fh_in, fh_out, length, off_in, off_out)
        if done:
            self._kill_privs_unprivileged(nodeid_out, fh_out, req)
        return done

    def ioctl(self, fh: FileHandle, flags: int, cmd: int, data: bytes,
              out_size: int) -> bytes:
        """One of `IOCTLS` on the host file (ENOTTY for others): fuse_ioctl_out and the
        ``out_size`` bytes of the argument after it."""
        if cmd not in IOCTLS:
            raise OSError(errno.ENOTTY, "ioctl not passed through")
        arg = bytearray(data)
        if len(arg) < out_size:
            arg.extend(bytes(out_size - len(arg)))
        # A directory's handle is serve-fs's own (opendir), not a descriptor.
        fd = self.open_dir_handle(fh) if flags & FUSE_IOCTL_DIR else fh
        try:
            result = (int(fcntl.ioctl(fd, cmd, arg, True)) if arg
                      else int(fcntl.ioctl(fd, cmd, 0)))
        finally:
            if fd != fh:
                os.close(fd)
        return IOCTL_OUT.pack(result, 0, 0, 0) + bytes(arg[:out_size])

    # --- directories -----------------------------------------------------------------
    def opendir(self, nodeid: InodeT) -> bytes:
        """fuse_open_out of a new directory handle: the kernel keeps the listing while the
        directory's mtime does not change (FOPEN_CACHE_DIR), and keeps the one it has
        (FOPEN_KEEP_CACHE) if it was listed less than ``entry_timeout`` ago.

        An older listing is dropped: its entries have expired, so every name walked from
        it would cost a LOOKUP (``rm -r``, ``find``, a tree walked again after a second),
        where listing it again (READDIRPLUS) refreshes them all in a request or two."""
        node = self._node(nodeid)
        self.table.fd(node)  # fail now (ESTALE/ENOENT) rather than at readdir
        fh = self._next_dir
        self._next_dir = fh + 1
        self._dirs[fh] = _Dir(node)
        if time.monotonic() - node.listed < self.entry_timeout:
            return OPEN_OUT.pack(fh, FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, 0)
        return OPEN_OUT.pack(fh, FOPEN_CACHE_DIR, 0)

    def open_dir_handle(self, fh: int) -> int:
        """A new O_RDONLY descriptor of the directory open as ``fh`` (an opendir
        handle; the caller closes it); EBADF if there is none."""
        d = self._dirs.get(fh)
        if d is None:
            raise OSError(errno.EBADF, "no such directory handle")
        return self.table.open(d.node, os.O_RDONLY | os.O_DIRECTORY)

    def readdirplus(self, fh: FileHandle, offset: int, size: int) -> bytes:
        """A READDIRPLUS reply of at most ``size`` bytes from ``offset``."""
        out = _DirBuffer(size)
        Passthrough.readdir(self, fh, offset, out.add)  # not the debug log's wrapper
        return b"".join(out.parts)

    def readdir(self, fh: FileHandle, start: int, add: AddEntry) -> None:
        """Hand the entries of the directory ``fh`` from offset ``start`` to ``add`` until
        it says one did not fit; every entry handed over but "." and ".." takes a lookup.

        One snapshot of the names per pass (taken at offset 0): offsets are indexes into
        it, so they stay valid while the directory changes (new names show up at the next
        rewind)."""
        d = self._dirs.get(fh)
        if d is None:
            raise OSError(errno.EBADF, "no such directory handle")
        table = self.table
        node = d.node
        nodeid = node.nodeid
        pfd = table.fd(node)
        entries = d.entries
        grafts = self.grafts
        if entries is None or start == 0:
            node.listed = time.monotonic()
            entries = d.entries = [b".", b"..", *os.listdir(b"/proc/self/fd/%d" % pfd)]
            entries += [n for (p, n) in grafts if p == nodeid and n not in entries]
        statx = self.statbuf.at
        learn = table.learn
        entry = self._entry
        self_mounts = self.self_mount_ids
        for i in range(start, len(entries)):
            name = entries[i]
            if i < 2:
                # "." and ".." take no lookup count (the kernel does not link them).
                ino = nodeid if i == 0 else ROOT_INODE
                dot = _ENTRY_PACK(ino, 0, 0, 0, 0, 0, ino, *(0,) * 8, stat.S_IFDIR,
                                  *(0,) * 6)
                if not add(name, dot, ino, stat.S_IFDIR, i + 1):
                    return
                continue
            dfd = grafts.get((nodeid, name), pfd) if grafts else pfd
            try:
                st = statx(dfd, name, _LOOKUP_FLAGS)
            except OSError:
                continue  # removed since the snapshot
            if st[MNT_ID] in self_mounts:
                continue
            child = learn(node, dfd, name, st)
            if not add(name, entry(child, st), child.nodeid, st[MODE], i + 1):
                table.drop_if_unused(child)
                return
            child.nlookup += 1

    def releasedir(self, fh: FileHandle) -> None:
        self._dirs.pop(fh, None)

    def fsyncdir(self, fh: FileHandle, datasync: bool) -> None:
        fd = self.open_dir_handle(fh)
        try:
            if datasync:
                os.fdatasync(fd)
            else:
                os.fsync(fd)
        finally:
            os.close(fd)

    # --- extended attributes ---------------------------------------------------------
    # An O_PATH descriptor cannot be passed to f*xattr(2) (nor to the *xattrat(2) calls
    # of Linux 6.13); /proc/self/fd/N, followed, resolves to the inode itself (a symlink
    # stays the symlink, not its target), for a walk through procfs (~5 us here).
    def _xpath(self, nodeid: int) -> int | bytes:
        """What the xattr calls take for ``nodeid``: `_file` (f*xattr(2): no
        open_by_handle_at, no walk; the inode itself, whatever the host did to its name
        since), else its O_PATH descriptor's /proc/self/fd/N."""
        node = self._node(nodeid)
        fh = self._file(node)
        if fh >= 0:
            return fh
        return b"/proc/self/fd/%d" % self.table.fd(node)

    def getxattr(self, nodeid: InodeT, name: bytes) -> bytes:
        """The value of ``name`` (the caller applies the size the kernel asked for)."""
        return os.getxattr(self._xpath(nodeid), name)

    def outside_group(self, nodeid: InodeT, req: Request) -> bool:
        """Whether the requester is neither in the group of ``nodeid`` nor has
        CAP_FSETID (the VFS's in_group_or_capable(), as `keeps_setgid` reads it)."""
        st = self.statbuf.at(self._fd(self._node(nodeid)), b"", _EMPTY)
        return not self.keeps_setgid(req.pid, req.uid, req.gid,
                                     (st[GID], self.shown_ids(st)[1]))

    def setxattr(self, nodeid: InodeT, name: bytes, value: bytes, flags: int,
                 kill_sgid: bool = False) -> None:
        """setxattr(2) with ``flags`` (XATTR_CREATE, XATTR_REPLACE); ``kill_sgid``
        (FUSE_SETXATTR_ACL_KILL_SGID: an access ACL set by someone outside the file's
        group without CAP_FSETID, as the kernel judged) clears set-group-ID after, as
        the disk's own setfacl does."""
        target = self._xpath(nodeid)
        os.setxattr(target, name, value, flags)
        if kill_sgid:
            mode = os.stat(target).st_mode
            if mode & stat.S_ISGID:
                os.chmod(target, stat.S_IMODE(mode) & ~stat.S_ISGID)

    def listxattr(self, nodeid: InodeT) -> bytes:
        """The names, each followed by a NUL (the caller applies the size)."""
        return b"".join(os.fsencode(n) + b"\0" for n in os.listxattr(self._xpath(nodeid)))

    def removexattr(self, nodeid: InodeT, name: bytes) -> None:
        os.removexattr(self._xpath(nodeid), name)

    # --- debugging -------------------------------------------------------------------
    def _install_debug_logging(self) -> None:
        """Log every call and its outcome (instance attributes shadow the methods)."""
        names = ("lookup", "getattr", "setattr", "readlink", "statfs", "access", "mknod",
                 "mkdir", "symlink", "unlink", "rmdir", "rename", "link", "open", "create",
                 "read", "write", "flush", "release", "fsync", "poll", "opendir",
                 "readdirplus", "readdir", "releasedir", "fsyncdir", "getxattr",
                 "setxattr", "listxattr", "removexattr", "forget", "tmpfile", "statx",
                 "fallocate", "lseek", "copy_file_range", "ioctl")
        for name in names:
            method = getattr(self, name)

            def logged(*args: object, _m: Callable[..., object] = method,
                       _n: str = name) -> object:
                shown = tuple(a for a in args if not isinstance(a, Request | memoryview)
                              and not callable(a)
                              and not (isinstance(a, bytes) and len(a) >= 256))
                try:
                    result = _m(*args)
                except OSError as exc:
                    log.debug("%s%r -> %s", _n, shown,
                              errno.errorcode.get(exc.errno or 0, exc.errno))
                    raise
                log.debug("%s%r -> ok", _n, shown)
                return result

            setattr(self, name, logged)
