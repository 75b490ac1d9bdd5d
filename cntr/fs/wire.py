# ruff: noqa: BLE001  # a request that fails in any way is answered, never dropped
"""serve-fs's own FUSE session: requests read from ``/dev/fuse``, answered by `Operations`.

libfuse 3.14 (what pyfuse3 is built on here) cannot negotiate the kernel features that
matter most for a passthrough of the host's files, so this module speaks the kernel's wire
protocol (``<linux/fuse.h>``) itself and calls the same `cntr.fs.operations.Operations`
methods pyfuse3 would, with the same argument and result types:

- **FUSE passthrough** (Linux 6.9+): regular files are opened on the host and handed to the
  kernel as backing files (``FUSE_DEV_IOC_BACKING_OPEN``); the kernel then reads, writes
  and maps them itself and serve-fs sees no READ or WRITE at all.  One backing id per inode
  while it has passthrough opens (the kernel refuses two backing files for one inode).
- ``FOPEN_CACHE_DIR``: directory listings stay in the kernel's cache between opens while
  the directory's mtime is unchanged (checked when its attributes expire), so a second
  walk of a tree sends OPENDIR/RELEASEDIR but no READDIRPLUS.
- ``FUSE_CACHE_SYMLINKS``: symlink targets are kept in the page cache.
- ``max_pages`` 256: 1 MiB requests for what still goes through serve-fs.
- requests pyfuse3's Operations has no method for, answered here on the host file:
  FALLOCATE (the modes the kernel passes: preallocate, keep size, punch hole, zero range),
  LSEEK (SEEK_DATA/SEEK_HOLE), COPY_FILE_RANGE (and its 64-bit form), STATX (the birth
  time), TMPFILE (`Operations.tmpfile`) and IOCTL for the ioctls in `IOCTLS` (attribute
  flags, on directories too with HAS_IOCTL_DIR: the kernel checks the caller's rights
  before it sends them; others ENOTTY).
- ``DONT_MASK``: the kernel sends modes without the umask; `Operations.create_mode` lets
  the host apply it, or the directory's default ACL instead (POSIX).
- ``SETXATTR_EXT``: the kernel says when setting an access ACL must clear set-group-ID
  (FUSE_SETXATTR_ACL_KILL_SGID: a requester outside the file's group without CAP_FSETID).
- FUSE_NOTIFY_INVAL_INODE where the kernel's cached attributes go stale behind its back:
  the mode after an O_TRUNC open cleared set-ID bits, and at the first writable
  passthrough open of an inode, whose attributes are then not cached at all while it is
  open for writing (writes through a shared mapping of the backing file change mtime
  unseen by the kernel).
- times before 1970: fuse_attr's seconds are packed signed (the kernel reads time64_t).

- ``HANDLE_KILLPRIV_V2``: serve-fs clears set-user/group-ID bits and file capabilities
  itself when an unprivileged write, truncation or ``O_TRUNC`` open asks for it, so the
  kernel no longer asks for ``security.capability`` before every write (it did once per
  write(2); with SB_NOSEC now once per inode).

FUSE_DIRECT_IO_ALLOW_MMAP is not asked for: direct_io is only for files of pseudo
filesystems (`Operations.pseudo_file`), whose own mmap fails as it does on the host.

Passthrough is not used for read-only opens of files under 64 KiB (their pages stay in
the FUSE inode's cache between opens, cheaper for trees of small files read again), for
files opened with ``direct_io`` (procfs and sysfs files that report size 0), for writable
opens of set-user/group-ID files (a backing write runs with serve-fs's credentials, which
would not clear those bits), or when the kernel refuses the backing file (another
filesystem stacked too deep): those are read and written through serve-fs as before.

The kernel refuses (EIO) an open whose mode differs from the files of the inode already
open, so an inode keeps the mode of its open files: a writable open of a set-user-ID file
while the file is open in passthrough mode is passed through too (its writes then keep
the bits), and an inode open through the page cache is not passed through until those
files are closed.  A direct_io open that is mmapped switches the inode
to the page cache in the kernel, unseen here: a passthrough open of it meanwhile fails.

Requests are served one at a time by one thread; the loop polls ``/dev/fuse`` for
``spin_ns`` before sleeping (see `cntr.fs.server`).  With ``uring``
(``CNTR_SERVE_FS_LOOP=uring``) and the kernel's consent, requests come over FUSE over io_uring
instead, one pinned thread per CPU (`cntr.fs.uring`), answered under `Session.lock`;
``/dev/fuse`` then only brings forgets and interrupts, read in batches (``settle_s``).
The session ends when the filesystem is unmounted (ENODEV), at FUSE_DESTROY, or when
`stop` is called (signal handlers).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import logging
import os
import select
import stat
import struct
import threading
import time
from collections.abc import Callable
from typing import Any, cast

from pyfuse3 import EntryAttributes, FUSEError, RequestContext, SetattrFields

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
    MODE,
    MTIME,
    MTIME_NS,
    NLINK,
    RDEV_MAJ,
    RDEV_MIN,
    SIZE,
    Inode,
    StatT,
)
from cntr.fs.operations import Operations
from cntr.fs.uring import Transport
from cntr.linux import syscalls as sc

log = logging.getLogger("cntr.fs")

# --- <linux/fuse.h> -------------------------------------------------------------------
KERNEL_MAJOR, KERNEL_MINOR = 7, 41

LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR = 17, 18, 20, 21, 22, 23
REMOVEXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR = 24, 25, 26, 27, 28, 29, 30
ACCESS, CREATE, INTERRUPT, DESTROY, POLL, NOTIFY_REPLY = 34, 35, 36, 38, 40, 41
BATCH_FORGET, READDIRPLUS, RENAME2 = 42, 44, 45
IOCTL, FALLOCATE, LSEEK, COPY_FILE_RANGE = 39, 43, 46, 47
TMPFILE, STATX, COPY_FILE_RANGE_64 = 51, 52, 53

# INIT flags (flags2 holds bits 32-63)
ASYNC_READ = 1 << 0
ATOMIC_O_TRUNC = 1 << 3
EXPORT_SUPPORT = 1 << 4
BIG_WRITES = 1 << 5
DONT_MASK = 1 << 6
HAS_IOCTL_DIR = 1 << 11
AUTO_INVAL_DATA = 1 << 12
DO_READDIRPLUS = 1 << 13
ASYNC_DIO = 1 << 15
PARALLEL_DIROPS = 1 << 18
POSIX_ACL = 1 << 20
MAX_PAGES = 1 << 22
CACHE_SYMLINKS = 1 << 23
HANDLE_KILLPRIV_V2 = 1 << 28
SETXATTR_EXT = 1 << 29
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37
OVER_IO_URING = 1 << 41

FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_NONSEEKABLE = 1 << 0, 1 << 1, 1 << 2
FOPEN_CACHE_DIR, FOPEN_PASSTHROUGH = 1 << 3, 1 << 7

FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 1 << 4, 1 << 5, 1 << 6
FATTR_ATIME_NOW, FATTR_MTIME_NOW, FATTR_CTIME = 1 << 7, 1 << 8, 1 << 10
FATTR_KILL_SUIDGID = 1 << 11
FUSE_OPEN_KILL_SUIDGID = 1 << 0
FUSE_WRITE_KILL_SUIDGID = 1 << 2
FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0
FUSE_IOCTL_DIR = 1 << 4
NOTIFY_INVAL_INODE = 2
FSYNC_FDATASYNC = 1

# _IOW(229, 1, struct fuse_backing_map) and _IOW(229, 2, uint32_t)
FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501
FUSE_DEV_IOC_BACKING_CLOSE = 0x4004E502
#: FILESYSTEM_MAX_STACK_DEPTH: backing files may sit on overlayfs (a container's root)
MAX_STACK_DEPTH = 2

MAX_PAGES_WANTED = 256
MAX_WRITE = MAX_PAGES_WANTED * 4096
#: a request buffer: the largest WRITE plus its headers
BUFFER_SIZE = MAX_WRITE + 4096

_IN = struct.Struct("=IIQQIIIHH")  # fuse_in_header
_IN_SIZE = _IN.size
_OUT = struct.Struct("=IiQ")  # fuse_out_header
_OUT_SIZE = _OUT.size
# fuse_attr; its seconds are u64 in <linux/fuse.h> but the kernel reads them as time64_t:
# packed signed, times before 1970 pass.
_ATTR = "QQQqqqIIIIIIIIII"
_ENTRY = struct.Struct("=QQQQII" + _ATTR)  # fuse_entry_out
_ATTR_OUT = struct.Struct("=QII" + _ATTR)  # fuse_attr_out
_DIRENT = struct.Struct("=QQII")  # fuse_dirent without its name
_OPEN_OUT = struct.Struct("=QIi")  # fuse_open_out (fh, open_flags, backing_id)
_INIT_IN = struct.Struct("=IIII")
_INIT_OUT = struct.Struct("=IIIIHHIIHHII24x")
_U32 = struct.Struct("=I")
_U32_PAIR = struct.Struct("=II")
_U64 = struct.Struct("=Q")
_SETATTR_IN = struct.Struct("=II3Q3q8I")  # times signed, as in _ATTR
_READ_IN = struct.Struct("=QQII")  # fh, offset, size, flags (lock owner etc. follow)
_WRITE_IN = struct.Struct("=QQIIQII")
_RELEASE_IN = struct.Struct("=QII")
_FSYNC_IN = struct.Struct("=QI")
_RENAME2_IN = struct.Struct("=QI")
_CREATE_IN = struct.Struct("=IIII")
_MKNOD_IN = struct.Struct("=III")
_POLL_IN = struct.Struct("=QQII")
_STATFS_OUT = struct.Struct("=5Q4I24x")
_FORGET_ONE = struct.Struct("=QQ")
_BACKING_MAP = struct.Struct("=iIQ")
_WRITE_IN_SIZE = 40  # fuse_write_in
_SETXATTR_IN_SIZE = 8  # FUSE_COMPAT_SETXATTR_IN_SIZE, without FUSE_SETXATTR_EXT
_SETXATTR_EXT_IN = struct.Struct("=IIII")  # size, flags, setxattr_flags, padding
_NOTIFY_INVAL_INODE = struct.Struct("=IiQQqq")  # fuse_out_header + fuse_notify_inval_inode_out
_FALLOCATE_IN = struct.Struct("=QQQI")  # fh, offset, length, mode
_LSEEK_IN = struct.Struct("=QQI")  # fh, offset, whence
_COPY_FILE_RANGE_IN = struct.Struct("=7Q")
_IOCTL_IN = struct.Struct("=QIIQII")  # fh, flags, cmd, arg, in_size, out_size
_IOCTL_OUT = struct.Struct("=iIII")  # result, flags, in_iovs, out_iovs
_STATX_IN = struct.Struct("=IIQII")  # getattr_flags, reserved, fh, sx_flags, sx_mask
# fuse_statx_out: attr_valid, attr_valid_nsec, flags, spare[2], then struct fuse_statx
_STATX_OUT = struct.Struct("=QII2Q" + "IIQIIIHHQQQQ" + "qIi" * 4 + "IIII" + "14Q")
_STATX_SYNC_TYPE = 0x6000  # AT_STATX_FORCE_SYNC | AT_STATX_DONT_SYNC
_STATX_REPLY_MASK = 0x0FFF  # STATX_BASIC_STATS | STATX_BTIME: what fuse_statx carries

#: the file ioctls serve-fs runs on the host file (FUSE_IOCTL, restricted): attribute
#: flags (chattr/lsattr; the two setters are taken by the VFS from user space, so they
#: come only from the kernel's fileattr calls, which check the caller's rights first:
#: owner, CAP_LINUX_IMMUTABLE), the inode generation and the filesystem label.  Others
#: answer ENOTTY: serve-fs runs them with its own privileges, which the requester may
#: not have (FS_IOC32_SETFLAGS, for one, reaches a FUSE file unchecked on 64-bit).
IOCTLS = frozenset({
    0x80086601, 0x40086602,  # FS_IOC_GETFLAGS, FS_IOC_SETFLAGS
    0x80046601,  # FS_IOC32_GETFLAGS
    0x801C581F, 0x401C5820,  # FS_IOC_FSGETXATTR, FS_IOC_FSSETXATTR
    0x80087601, 0x80047601,  # FS_IOC_GETVERSION, FS_IOC32_GETVERSION
    0x81009431,  # FS_IOC_GETFSLABEL
})

_NS = 1_000_000_000
_SUID_SGID = stat.S_ISUID | stat.S_ISGID
_ENTRY_PACK = _ENTRY.pack
_ATTR_OUT_PACK = _ATTR_OUT.pack

Handler = Callable[[int, RequestContext, memoryview], bytes | None]


class Request:
    """What `Operations` reads from a pyfuse3 RequestContext: uid, gid, pid, umask."""

    __slots__ = ("gid", "pid", "uid", "umask")

    def __init__(self) -> None:
        self.uid = self.gid = self.pid = self.umask = 0


class _Fields:
    """A pyfuse3 SetattrFields: which attributes a SETATTR changes."""

    __slots__ = ("update_atime", "update_ctime", "update_gid", "update_mode",
                 "update_mtime", "update_size", "update_uid")

    def __init__(self, valid: int) -> None:
        self.update_mode = bool(valid & FATTR_MODE)
        self.update_uid = bool(valid & FATTR_UID)
        self.update_gid = bool(valid & FATTR_GID)
        self.update_size = bool(valid & FATTR_SIZE)
        self.update_atime = bool(valid & (FATTR_ATIME | FATTR_ATIME_NOW))
        self.update_mtime = bool(valid & (FATTR_MTIME | FATTR_MTIME_NOW))
        self.update_ctime = bool(valid & FATTR_CTIME)


def _timeout(seconds: float) -> tuple[int, int]:
    whole = int(seconds)
    return whole, int((seconds - whole) * _NS)


def pack_attr_fields(e: EntryAttributes) -> tuple[int, ...]:
    """The fuse_attr fields of ``e`` in wire order."""
    a, m, c = e.st_atime_ns, e.st_mtime_ns, e.st_ctime_ns
    return (e.st_ino, e.st_size, e.st_blocks, a // _NS, m // _NS, c // _NS,
            a % _NS, m % _NS, c % _NS, e.st_mode, e.st_nlink, e.st_uid, e.st_gid,
            e.st_rdev & 0xFFFFFFFF, e.st_blksize, 0)


class Packed(bytes):
    """A fuse_entry_out: what Operations returns for an inode when `Session` serves it
    (`Session.pack` is its ``make_entry``), with the two attributes of an
    EntryAttributes that this module reads.  Packing the reply straight from the statx
    result skips building an EntryAttributes and reading it back: ~2 us of every reply
    that carries attributes."""

    __slots__ = ()

    @property
    def st_ino(self) -> int:
        ino: int = _U64.unpack_from(self)[0]
        return ino

    @property
    def st_mode(self) -> int:
        mode: int = _U32.unpack_from(self, _MODE_AT)[0]
        return mode

    def attr_out(self) -> bytes:
        """The fuse_attr_out of the same attributes (attr_valid, its nsec, the attr)."""
        return self[24:32] + self[36:40] + b"\0\0\0\0" + self[40:]


#: where fuse_attr's mode is in a fuse_entry_out (40-byte head, 6 u64 and 3 u32 before it)
_MODE_AT = 40 + 48 + 12


def pack_entry(e: EntryAttributes | Packed) -> bytes:
    """fuse_entry_out for a lookup-style reply; st_ino 0 is a negative entry."""
    if isinstance(e, Packed):
        return e
    ev, evn = _timeout(e.entry_timeout)
    av, avn = _timeout(e.attr_timeout)
    return _ENTRY_PACK(e.st_ino, e.generation, ev, av, evn, avn, *pack_attr_fields(e))


class _DirBuffer:
    """A READDIRPLUS reply being filled; `add` is Operations' ``readdir_reply``."""

    __slots__ = ("left", "parts")

    def __init__(self, size: int) -> None:
        self.left = size
        self.parts: list[bytes] = []

    def add(self, name: bytes, e: EntryAttributes, next_id: int) -> bool:
        namelen = len(name)
        size = _ENTRY.size + _DIRENT.size + ((namelen + 7) & ~7)
        if size > self.left:
            return False
        self.left -= size
        pad = b"\0" * (-namelen & 7)
        entry = pack_entry(e)
        ino, mode = (_U64.unpack_from(entry)[0], _U32.unpack_from(entry, _MODE_AT)[0])
        self.parts.append(entry + _DIRENT.pack(ino, next_id, namelen, (mode & 0o170000) >> 12)
                          + name + pad)
        return True


def _readdir_reply(token: _DirBuffer, name: bytes, e: EntryAttributes, next_id: int) -> bool:
    return token.add(name, e, next_id)


def _name(body: memoryview, start: int = 0) -> bytes:
    """The NUL-terminated name at ``start``."""
    raw = bytes(body[start:])
    end = raw.find(b"\0")
    return raw if end < 0 else raw[:end]


def _two_names(body: memoryview, start: int) -> tuple[bytes, bytes]:
    raw = bytes(body[start:])
    first, _, rest = raw.partition(b"\0")
    second, _, _ = rest.partition(b"\0")
    return first, second


def _run(coro: Any) -> Any:
    """The result of an Operations coroutine (its handlers never suspend)."""
    try:
        coro.send(None)
    except StopIteration as done:
        return done.value
    coro.close()
    raise RuntimeError("serve-fs: a request handler suspended")


class Session:
    """One FUSE connection (``fd``, a /dev/fuse descriptor already mounted) served by
    ``ops``.  `run` returns when the filesystem goes away or `stop` is called."""

    #: how long to poll /dev/fuse before sleeping (cntr.fs.server.DirectLoop explains)
    spin_ns = 100_000
    #: once woken, how long to let requests pile up before reading them (io_uring mode:
    #: only forgets come this way then, and one BATCH_FORGET beats a wake-up per FORGET)
    settle_s = 0.0

    def __init__(self, ops: Operations, fd: int, *, wakeup_fd: int | None = None,
                 passthrough: bool = True, uring: bool = False) -> None:
        self.ops = ops
        self.fd = fd
        self.wakeup_fd = wakeup_fd
        self.want_passthrough = passthrough
        #: ask for FUSE over io_uring (granted when the kernel offers it)
        self.want_uring = uring
        #: held while a request is answered (the io_uring threads answer too)
        self.lock = threading.Lock()
        #: the io_uring transport, once INIT granted it; started after the INIT reply
        self._uring: Transport | None = None
        self._uring_start: Callable[[], None] | None = None
        #: set by INIT: the kernel accepted FUSE_PASSTHROUGH
        self.passthrough = False
        self.stopping = False
        #: node id -> [backing id, passthrough opens]
        self._backing: dict[int, list[int]] = {}
        #: file handle -> node id, for files opened in passthrough mode
        self._pt_files: dict[int, int] = {}
        #: node id -> files open through the page cache; file handle -> node id
        self._cached: dict[int, int] = {}
        self._cached_files: dict[int, int] = {}
        #: node id -> writable passthrough opens; the file handles of those opens.  The
        #: kernel does not see writes through a shared mapping of a backing file, so
        #: the attributes of these inodes are not cached (timeout 0): stat asks the host.
        self._pt_writers: dict[int, int] = {}
        self._pt_writer_files: set[int] = set()
        #: set by INIT: the kernel sends the extended fuse_setxattr_in
        self._setxattr_ext = False
        self._poller: select.poll | None = None
        #: the fields of the request being served
        self._request = Request()
        #: the same, as what Operations takes (it reads uid, gid, pid and umask)
        self._ctx = cast(RequestContext, self._request)
        ops.readdir_reply = _readdir_reply  # type: ignore[assignment]  # our token type
        ev, evn = _timeout(ops.entry_timeout)
        av, avn = _timeout(ops.attr_timeout)
        self._timeouts = (ev, av, evn, avn)
        ops.make_entry = cast("Callable[[Inode, StatT], EntryAttributes]", self.pack)
        self._handlers: dict[int, Handler] = {
            LOOKUP: self._lookup, GETATTR: self._getattr, SETATTR: self._setattr,
            READLINK: self._readlink, SYMLINK: self._symlink, MKNOD: self._mknod,
            MKDIR: self._mkdir, UNLINK: self._unlink, RMDIR: self._rmdir,
            RENAME: self._rename, RENAME2: self._rename2, LINK: self._link,
            OPEN: self._open, READ: self._read, WRITE: self._write, STATFS: self._statfs,
            RELEASE: self._release, FSYNC: self._fsync, SETXATTR: self._setxattr,
            GETXATTR: self._getxattr, LISTXATTR: self._listxattr,
            REMOVEXATTR: self._removexattr, FLUSH: self._flush, INIT: self._init,
            OPENDIR: self._opendir, READDIRPLUS: self._readdirplus,
            RELEASEDIR: self._releasedir, FSYNCDIR: self._fsyncdir, ACCESS: self._access,
            CREATE: self._create, POLL: self._poll, DESTROY: self._destroy,
            FALLOCATE: self._fallocate, LSEEK: self._lseek, IOCTL: self._ioctl,
            COPY_FILE_RANGE: self._copy_file_range, COPY_FILE_RANGE_64: self._copy_file_range_64,
            STATX: self._statx, TMPFILE: self._tmpfile,
        }
        #: requests that take no reply
        self._silent = {FORGET: self._forget, BATCH_FORGET: self._batch_forget,
                        INTERRUPT: None, NOTIFY_REPLY: None}

    def stop(self) -> None:
        """End `run` at its next wait (safe from a signal handler)."""
        self.stopping = True

    # --- the request loop -------------------------------------------------------------
    def run(self) -> None:
        """Serve requests read from ``fd`` until the filesystem goes away or `stop`."""
        try:
            self._read_loop()
        finally:
            if self._uring is not None:
                self._uring.stop()
                self._uring = None

    def _read_loop(self) -> None:
        fd = self.fd
        os.set_blocking(fd, False)
        buf = bytearray(BUFFER_SIZE)
        view = memoryview(buf)
        bufs = [buf]
        readv = os.readv
        write = os.write
        unpack_unique = _U64.unpack_from
        pack_out = _OUT.pack
        answer = self.answer
        lock = self.lock
        wait = self._wait
        while not self.stopping:
            wait()  # poll first: a read that finds nothing costs an exception
            try:
                n = readv(fd, bufs)
            except BlockingIOError:
                continue
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINTR):
                    continue  # the request was interrupted before it was read
                if exc.errno == errno.ENODEV:
                    return  # unmounted
                raise
            with lock:
                result = answer(buf, view[_IN_SIZE:n])
            if result is None:
                continue
            err, reply = result
            unique = unpack_unique(buf, 8)[0]
            try:
                if reply:
                    write(fd, pack_out(_OUT_SIZE + len(reply), err, unique) + reply)
                else:
                    write(fd, pack_out(_OUT_SIZE, err, unique))
            except OSError as exc:
                if exc.errno == errno.ENODEV:
                    return
                if exc.errno != errno.ENOENT:  # ENOENT: interrupted, nobody waits
                    raise
            if self._uring_start is not None:  # the INIT reply granting io_uring is out
                start, self._uring_start = self._uring_start, None
                start()

    def answer(self, header: bytes | bytearray | memoryview,
               body: memoryview) -> tuple[int, bytes | None] | None:
        """Serve one request: ``(0 or -errno, reply payload)``, or None for a request that
        takes no reply (FORGET, INTERRUPT).  ``header`` starts with the fuse_in_header,
        ``body`` is what follows it.  Not reentrant: one request at a time."""
        fields = self._request
        _len, opcode, _unique, nodeid, fields.uid, fields.gid, fields.pid, _ext, _ = (
            _IN.unpack_from(header))
        handler = self._handlers.get(opcode)
        if handler is None:
            if opcode in self._silent:
                quiet = self._silent[opcode]
                if quiet is not None:
                    quiet(nodeid, self._ctx, body)
                return None
            return -errno.ENOSYS, None
        try:
            return 0, handler(nodeid, self._ctx, body)
        except FUSEError as exc:
            return -exc.errno, None
        except OSError as exc:
            return -(exc.errno or errno.EIO), None
        except Exception as exc:
            log.error("serve-fs: request %d failed: %r", opcode, exc)
            return -errno.EIO, None

    def _wait(self) -> None:
        """Spin on /dev/fuse for ``spin_ns``, then sleep in poll(2) until it is readable."""
        poller = self._poller
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            if self.wakeup_fd is not None:
                poller.register(self.wakeup_fd, select.POLLIN)
        poll = poller.poll
        if poll(0):
            return
        spin = self.spin_ns
        if spin > 0:
            deadline = time.monotonic_ns() + spin
            yield_cpu = os.sched_yield
            clock = time.monotonic_ns
            while clock() < deadline:
                yield_cpu()  # a requester on this CPU runs first
                if poll(0):
                    return
        if not self.stopping:
            for ready, _ in poller.poll():
                if ready == self.wakeup_fd:
                    with contextlib.suppress(BlockingIOError):
                        os.read(ready, 512)
            if self.settle_s and not self.stopping:
                time.sleep(self.settle_s)

    def pack(self, node: Inode, st: StatT) -> Packed:
        """Operations' ``make_entry``: the fuse_entry_out of ``node`` with attributes
        ``st`` (a statx result), as `cntr.fs.operations.Operations._entry` would fill an
        EntryAttributes: the node id as inode number, host id 0 shown as the container
        root's when it is not mapped."""
        uid, gid = self.ops.shown_ids(st)
        rdev = os.makedev(st[RDEV_MAJ], st[RDEV_MIN]) & 0xFFFFFFFF  # as _entry's st_rdev
        ev, av, evn, avn = self._timeouts
        nodeid = node.nodeid
        if nodeid in self._pt_writers:
            av = avn = 0
        return Packed(_ENTRY_PACK(
            nodeid, node.gen, ev, av, evn, avn, nodeid, st[SIZE], st[BLOCKS], st[ATIME],
            st[MTIME], st[CTIME], st[ATIME_NS], st[MTIME_NS], st[CTIME_NS], st[MODE],
            st[NLINK], uid, gid, rdev, st[BLKSIZE], 0))

    # --- session ----------------------------------------------------------------------
    def _init(self, _nodeid: int, _req: RequestContext, body: memoryview) -> bytes:
        major, minor, max_readahead, flags = _INIT_IN.unpack_from(body)
        if major != KERNEL_MAJOR:
            raise FUSEError(errno.EPROTO)
        if flags & INIT_EXT:
            flags |= _U32.unpack_from(body, _INIT_IN.size)[0] << 32
        want = (ASYNC_READ | ATOMIC_O_TRUNC | BIG_WRITES | AUTO_INVAL_DATA | DO_READDIRPLUS
                | ASYNC_DIO | PARALLEL_DIROPS | MAX_PAGES | CACHE_SYMLINKS
                | HANDLE_KILLPRIV_V2 | INIT_EXT | DONT_MASK | HAS_IOCTL_DIR | SETXATTR_EXT)
        if self.ops.supports_dot_lookup:
            want |= EXPORT_SUPPORT
        if self.ops.enable_acl:
            want |= POSIX_ACL
        if self.want_passthrough:
            want |= PASSTHROUGH
        got = want & flags
        self.passthrough = bool(got & PASSTHROUGH)
        self._setxattr_ext = bool(got & SETXATTR_EXT)
        if self.want_uring and flags & OVER_IO_URING and self._uring is None:
            uring = Transport(self, self.fd, max_write=MAX_WRITE, max_pages=MAX_PAGES_WANTED)
            if uring.prepare():
                got |= OVER_IO_URING
                self._uring = uring
                self._uring_start = uring.start
        log.debug("serve-fs: FUSE %d.%d, flags %#x, passthrough %s, io_uring %s", major,
                  minor, got, self.passthrough, bool(got & OVER_IO_URING))
        if self.want_passthrough and not self.passthrough:
            # Not silent: every read and write now costs a round trip through serve-fs.
            log.warning("serve-fs: the kernel refused FUSE passthrough (FUSE %d.%d): file "
                        "contents go through serve-fs", major, minor)
        self.ops.init()
        return _INIT_OUT.pack(KERNEL_MAJOR, min(minor, KERNEL_MINOR), max_readahead,
                              got & 0xFFFFFFFF, 16, 12, MAX_WRITE, 1, MAX_PAGES_WANTED, 0,
                              got >> 32, MAX_STACK_DEPTH if self.passthrough else 0)

    def _destroy(self, _nodeid: int, _req: RequestContext, _body: memoryview) -> None:
        self.stopping = True

    def _forget(self, nodeid: int, _req: RequestContext, body: memoryview) -> None:
        _run(self.ops.forget([(nodeid, _U64.unpack_from(body)[0])]))

    def _batch_forget(self, _nodeid: int, _req: RequestContext, body: memoryview) -> None:
        count = _U32.unpack_from(body)[0]
        _run(self.ops.forget(list(_FORGET_ONE.iter_unpack(body[8:8 + 16 * count]))))

    # --- metadata ---------------------------------------------------------------------
    def _lookup(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        return pack_entry(_run(self.ops.lookup(nodeid, _name(body), req)))

    def _attr(self, e: EntryAttributes | Packed) -> bytes:
        if isinstance(e, Packed):
            return e.attr_out()
        av, avn = _timeout(e.attr_timeout)
        return _ATTR_OUT_PACK(av, avn, 0, *pack_attr_fields(e))

    def _getattr(self, nodeid: int, req: RequestContext, _body: memoryview) -> bytes:
        return self._attr(_run(self.ops.getattr(nodeid, req)))

    def _setattr(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        (valid, _, fh, size, _owner, atime, mtime, _ctime, atimensec, mtimensec,
         _ctimensec, mode, _, uid, gid, _) = _SETATTR_IN.unpack_from(body)
        attr = EntryAttributes()
        attr.st_size = size
        attr.st_mode = mode
        attr.st_uid = uid
        attr.st_gid = gid
        now = time.time_ns() if valid & (FATTR_ATIME_NOW | FATTR_MTIME_NOW) else 0
        attr.st_atime_ns = now if valid & FATTR_ATIME_NOW else atime * _NS + atimensec
        attr.st_mtime_ns = now if valid & FATTR_MTIME_NOW else mtime * _NS + mtimensec
        handle = fh if valid & FATTR_FH else None
        fields = cast(SetattrFields, _Fields(valid))
        e = _run(self.ops.setattr(nodeid, attr, fields, handle, req))
        if valid & FATTR_KILL_SUIDGID and self._kill_privs(
                self.ops.table.fd(self.ops.table.get(nodeid)), e.st_mode):
            e = _run(self.ops.getattr(nodeid, req))
        return self._attr(e)

    @staticmethod
    def _kill_privs(fd: int, mode: int | None = None) -> bool:
        """Clear set-user-ID, set-group-ID (with group execute) and file capabilities of
        the file ``fd`` (of mode ``mode``, else fstat'ed), as a write, truncate or chown by
        an unprivileged user does (FUSE_HANDLE_KILLPRIV_V2: the kernel leaves that to
        serve-fs, whose own syscalls run with CAP_FSETID); True if anything was cleared."""
        if mode is None:
            mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            return False
        path = b"/proc/self/fd/%d" % fd  # also for O_PATH descriptors
        try:
            os.removexattr(path, b"security.capability")
            changed = True
        except OSError as exc:
            if exc.errno not in (errno.ENODATA, errno.EOPNOTSUPP):
                raise
            changed = False
        kill = stat.S_ISUID | (stat.S_ISGID if mode & stat.S_IXGRP else 0)
        if mode & kill:
            os.chmod(path, stat.S_IMODE(mode) & ~kill)
            changed = True
        return changed

    def _readlink(self, nodeid: int, req: RequestContext, _body: memoryview) -> bytes:
        target: bytes = _run(self.ops.readlink(nodeid, req))
        return target

    def _statfs(self, _nodeid: int, req: RequestContext, _body: memoryview) -> bytes:
        sv = _run(self.ops.statfs(req))
        return _STATFS_OUT.pack(sv.f_blocks, sv.f_bfree, sv.f_bavail, sv.f_files, sv.f_ffree,
                                sv.f_bsize, sv.f_namemax, sv.f_frsize, 0)

    def _access(self, nodeid: int, req: RequestContext, body: memoryview) -> None:
        _run(self.ops.access(nodeid, _U32.unpack_from(body)[0], req))

    # --- namespace changes ------------------------------------------------------------
    def _mknod(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        mode, rdev, self._request.umask = _MKNOD_IN.unpack_from(body)
        return pack_entry(_run(self.ops.mknod(nodeid, _name(body, 16), mode, rdev, req)))

    def _mkdir(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        mode, self._request.umask = _U32_PAIR.unpack_from(body)
        return pack_entry(_run(self.ops.mkdir(nodeid, _name(body, 8), mode, req)))

    def _symlink(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        name, target = _two_names(body, 0)
        return pack_entry(_run(self.ops.symlink(nodeid, name, target, req)))

    def _unlink(self, nodeid: int, req: RequestContext, body: memoryview) -> None:
        _run(self.ops.unlink(nodeid, _name(body), req))

    def _rmdir(self, nodeid: int, req: RequestContext, body: memoryview) -> None:
        _run(self.ops.rmdir(nodeid, _name(body), req))

    def _rename(self, nodeid: int, req: RequestContext, body: memoryview) -> None:
        newdir = _U64.unpack_from(body)[0]
        old, new = _two_names(body, 8)
        _run(self.ops.rename(nodeid, old, newdir, new, 0, req))

    def _rename2(self, nodeid: int, req: RequestContext, body: memoryview) -> None:
        newdir, flags = _RENAME2_IN.unpack_from(body)
        old, new = _two_names(body, 16)
        _run(self.ops.rename(nodeid, old, newdir, new, flags, req))

    def _link(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        target = _U64.unpack_from(body)[0]
        return pack_entry(_run(self.ops.link(target, nodeid, _name(body, 8), req)))

    # --- files ------------------------------------------------------------------------
    def _open_reply(self, nodeid: int, fi: Any, flags: int, *, new: bool = False) -> bytes:
        """fuse_open_out for ``fi``, in passthrough mode where it can be (``new``: a file
        just created, whose attributes the kernel has not cached yet).

        The kernel fails an open (EIO) whose mode differs from the inode's open files'
        (passthrough with this backing id, or the page cache), so an inode that has files
        open keeps their mode; the counts drop at RELEASE, after the kernel's.
        """
        fh = fi.fh
        if self.passthrough:
            writable = flags & os.O_ACCMODE != os.O_RDONLY
            entry = self._backing.get(nodeid)
            if entry is not None:  # whatever else this open would be, it must be this
                entry[1] += 1
                self._pt_files[fh] = nodeid
                if writable:
                    self._pt_writer(nodeid, fh, new)
                return _OPEN_OUT.pack(fh, FOPEN_PASSTHROUGH, entry[0])
            if (not fi.direct_io and nodeid not in self._cached
                    and self._pass_through(fh, writable)):
                backing = self._backing_open(nodeid, fh)
                if backing:
                    self._pt_files[fh] = nodeid
                    if writable:
                        self._pt_writer(nodeid, fh, new)
                    return _OPEN_OUT.pack(fh, FOPEN_PASSTHROUGH, backing)
            if not fi.direct_io:
                self._cached[nodeid] = self._cached.get(nodeid, 0) + 1
                self._cached_files[fh] = nodeid
        open_flags = 0
        if fi.direct_io:
            open_flags |= FOPEN_DIRECT_IO
        if fi.keep_cache:
            open_flags |= FOPEN_KEEP_CACHE
        if fi.nonseekable:
            open_flags |= FOPEN_NONSEEKABLE
        return _OPEN_OUT.pack(fh, open_flags, 0)

    def _pt_writer(self, nodeid: int, fh: int, new: bool) -> None:
        """Count a writable passthrough open of ``nodeid``; at the first, drop the
        attributes the kernel cached (replies carry timeout 0 from now on; a ``new``
        file's come with this reply)."""
        count = self._pt_writers.get(nodeid, 0)
        self._pt_writers[nodeid] = count + 1
        self._pt_writer_files.add(fh)
        if not count and not new:
            self.inval_attrs(nodeid)

    def inval_attrs(self, nodeid: int) -> None:
        """FUSE_NOTIFY_INVAL_INODE for the attributes of ``nodeid`` (offset -1: its
        cached pages stay): the next stat asks serve-fs."""
        try:
            os.write(self.fd, _NOTIFY_INVAL_INODE.pack(_NOTIFY_INVAL_INODE.size,
                                                       NOTIFY_INVAL_INODE, 0, nodeid, -1, 0))
        except OSError as exc:  # ENOENT: the kernel no longer has the inode
            log.debug("serve-fs: invalidating node %#x: %s", nodeid, exc)

    #: read-only opens of files smaller than this use the page cache: a tree of small
    #: files read again took ~50 ms per 1,000 files that way against ~110 ms passed through
    #: (each passthrough open and release also registers and drops a backing file)
    passthrough_min_size = 64 << 10

    def _pass_through(self, fh: int, writable: bool) -> bool:
        """Whether a new open of an inode with no other open files is passed through:
        writable ones unless set-user/group-ID, read-only ones of larger files."""
        st = os.fstat(fh)
        if writable:
            return not st.st_mode & _SUID_SGID
        return st.st_size >= self.passthrough_min_size

    def _backing_open(self, nodeid: int, fh: int) -> int:
        """A backing id for the inode from its host file ``fh``; 0 if the kernel refuses."""
        arg = bytearray(_BACKING_MAP.pack(fh, 0, 0))
        try:
            backing = int(fcntl.ioctl(self.fd, FUSE_DEV_IOC_BACKING_OPEN, arg, True))
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
                fcntl.ioctl(self.fd, FUSE_DEV_IOC_BACKING_CLOSE,
                            bytearray(_U32.pack(entry[0])), True)
            except OSError as exc:
                log.debug("serve-fs: closing backing id %d: %s", entry[0], exc)

    def _open(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        flags, open_flags = _U32_PAIR.unpack_from(body)
        fi = _run(self.ops.open(nodeid, flags, req))
        try:
            if open_flags & FUSE_OPEN_KILL_SUIDGID and self._kill_privs(fi.fh):
                # The kernel keeps the mode it had cached (O_TRUNC invalidates only
                # size and times): it must ask again.
                self.inval_attrs(nodeid)
            return self._open_reply(nodeid, fi, flags)
        except BaseException:
            _run(self.ops.release(fi.fh))
            raise

    def _create(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        flags, mode, self._request.umask, _ = _CREATE_IN.unpack_from(body)
        fi, entry = _run(self.ops.create(nodeid, _name(body, 16), mode, flags, req))
        try:
            return self._created(entry, fi, flags)
        except BaseException:
            _run(self.ops.release(fi.fh))
            raise

    def _created(self, entry: EntryAttributes | Packed, fi: Any, flags: int) -> bytes:
        """fuse_entry_out + fuse_open_out of a file just created; its attributes not to
        be cached if it is open for writing in passthrough mode (`_pt_writers`)."""
        opened = self._open_reply(entry.st_ino, fi, flags, new=True)
        packed = pack_entry(entry)
        if entry.st_ino in self._pt_writers:  # attr_valid and attr_valid_nsec: 0
            packed = packed[:24] + bytes(8) + packed[32:36] + bytes(4) + packed[40:]
        return packed + opened

    def _read(self, _nodeid: int, _req: RequestContext, body: memoryview) -> bytes:
        fh, offset, size, _ = _READ_IN.unpack_from(body)
        data: bytes = _run(self.ops.read(fh, offset, size))
        return data

    def _write(self, nodeid: int, _req: RequestContext, body: memoryview) -> bytes:
        fh, offset, size, write_flags, _, _, _ = _WRITE_IN.unpack_from(body)
        data = body[_WRITE_IN_SIZE:_WRITE_IN_SIZE + size]
        written: int = _run(self.ops.write(fh, offset, data))
        if write_flags & FUSE_WRITE_KILL_SUIDGID and self._kill_privs(fh):
            self.inval_attrs(nodeid)  # the mode the kernel cached is the old one
        return _U32_PAIR.pack(written, 0)

    def _flush(self, _nodeid: int, _req: RequestContext, body: memoryview) -> None:
        _run(self.ops.flush(_U64.unpack_from(body)[0]))

    def _release(self, _nodeid: int, _req: RequestContext, body: memoryview) -> None:
        fh = _RELEASE_IN.unpack_from(body)[0]
        self._released(fh)
        _run(self.ops.release(fh))

    def _fsync(self, _nodeid: int, _req: RequestContext, body: memoryview) -> None:
        fh, flags = _FSYNC_IN.unpack_from(body)
        _run(self.ops.fsync(fh, bool(flags & FSYNC_FDATASYNC)))

    def _poll(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        fh, _kh, _flags, _events = _POLL_IN.unpack_from(body)
        revents: int = _run(self.ops.poll(nodeid, fh, None, req))
        return _U32_PAIR.pack(revents, 0)

    # --- directories ------------------------------------------------------------------
    def _opendir(self, nodeid: int, req: RequestContext, _body: memoryview) -> bytes:
        fh = int(_run(self.ops.opendir(nodeid, req)))
        # The kernel keeps the listing while the directory's mtime does not change.
        return _OPEN_OUT.pack(fh, FOPEN_CACHE_DIR | FOPEN_KEEP_CACHE, 0)

    def _readdirplus(self, _nodeid: int, _req: RequestContext, body: memoryview) -> bytes:
        fh, offset, size, _ = _READ_IN.unpack_from(body)
        out = _DirBuffer(size)
        _run(self.ops.readdir(fh, offset, out))  # type: ignore[arg-type]  # our token
        return b"".join(out.parts)

    def _releasedir(self, _nodeid: int, _req: RequestContext, body: memoryview) -> None:
        _run(self.ops.releasedir(_RELEASE_IN.unpack_from(body)[0]))

    def _fsyncdir(self, _nodeid: int, _req: RequestContext, body: memoryview) -> None:
        fh, flags = _FSYNC_IN.unpack_from(body)
        _run(self.ops.fsyncdir(fh, bool(flags & FSYNC_FDATASYNC)))

    # --- extended attributes ----------------------------------------------------------
    def _getxattr(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        size = _U32.unpack_from(body)[0]
        value: bytes = _run(self.ops.getxattr(nodeid, _name(body, 8), req))
        return self._sized(value, size)

    @staticmethod
    def _sized(value: bytes, size: int) -> bytes:
        """A getxattr/listxattr reply: the size asked for 0, ERANGE when too small."""
        if size == 0:
            return _U32_PAIR.pack(len(value), 0)
        if len(value) > size:
            raise FUSEError(errno.ERANGE)
        return value

    def _setxattr(self, nodeid: int, req: RequestContext, body: memoryview) -> None:
        if self._setxattr_ext:
            size, flags, setxattr_flags, _ = _SETXATTR_EXT_IN.unpack_from(body)
            raw = bytes(body[_SETXATTR_EXT_IN.size:])
        else:
            size, flags = _U32_PAIR.unpack_from(body)
            setxattr_flags = 0
            raw = bytes(body[_SETXATTR_IN_SIZE:])
        name, _, rest = raw.partition(b"\0")
        if flags & (os.XATTR_CREATE | os.XATTR_REPLACE):
            # Operations.setxattr has no flags (pyfuse3's signature): check first, as
            # pyfuse3 does.
            try:
                _run(self.ops.getxattr(nodeid, name, req))
                exists = True
            except FUSEError as exc:
                if exc.errno != errno.ENODATA:
                    raise
                exists = False
            if exists and flags & os.XATTR_CREATE:
                raise FUSEError(errno.EEXIST)
            if not exists and flags & os.XATTR_REPLACE:
                raise FUSEError(errno.ENODATA)
        _run(self.ops.setxattr(nodeid, name, rest[:size], req))
        if setxattr_flags & FUSE_SETXATTR_ACL_KILL_SGID:
            # An access ACL set by someone outside the file's group without CAP_FSETID
            # (the kernel judged): set-group-ID goes, as the disk's own setfacl does.
            fd = self.ops.table.fd(self.ops.table.get(nodeid))
            mode = os.stat(fd).st_mode
            if mode & stat.S_ISGID:
                os.chmod(b"/proc/self/fd/%d" % fd, stat.S_IMODE(mode) & ~stat.S_ISGID)

    def _listxattr(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        size = _U32.unpack_from(body)[0]
        names: list[bytes] = _run(self.ops.listxattr(nodeid, req))
        return self._sized(b"".join(n + b"\0" for n in names), size)

    def _removexattr(self, nodeid: int, req: RequestContext, body: memoryview) -> None:
        _run(self.ops.removexattr(nodeid, _name(body), req))

    # --- more file operations ---------------------------------------------------------
    def _kill_privs_unprivileged(self, nodeid: int, fd: int) -> None:
        """As a write by the requester would: clear set-user/group-ID of ``fd`` unless
        the requester has CAP_FSETID (for fallocate and copy_file_range, where the kernel
        leaves it to a FUSE_HANDLE_KILLPRIV_V2 server without saying)."""
        mode = os.fstat(fd).st_mode
        if stat.S_ISREG(mode) and mode & _SUID_SGID and not Operations.has_fsetid(
                self._request.pid, self._request.uid) and self._kill_privs(fd, mode):
            self.inval_attrs(nodeid)

    def _fallocate(self, nodeid: int, _req: RequestContext, body: memoryview) -> None:
        fh, offset, length, mode = _FALLOCATE_IN.unpack_from(body)
        sc.fallocate(fh, mode, offset, length)
        self._kill_privs_unprivileged(nodeid, fh)

    def _lseek(self, _nodeid: int, _req: RequestContext, body: memoryview) -> bytes:
        fh, offset, whence = _LSEEK_IN.unpack_from(body)
        return _U64.pack(os.lseek(fh, offset, whence))

    def _copy_file_range(self, _nodeid: int, _req: RequestContext,
                         body: memoryview) -> bytes:
        return self._copy(body, wide=False)

    def _copy_file_range_64(self, _nodeid: int, _req: RequestContext,
                            body: memoryview) -> bytes:
        return self._copy(body, wide=True)

    def _copy(self, body: memoryview, *, wide: bool) -> bytes:
        """copy_file_range(2) between two open files; the reply's size is a u32 in
        FUSE_COPY_FILE_RANGE, a u64 in FUSE_COPY_FILE_RANGE_64."""
        fh_in, off_in, nodeid_out, fh_out, off_out, length, flags = (
            _COPY_FILE_RANGE_IN.unpack_from(body))
        if flags:
            raise FUSEError(errno.EINVAL)
        if not wide:
            length = min(length, 0xFFFFF000)  # the reply's size is a u32
        done = os.copy_file_range(fh_in, fh_out, length, off_in, off_out)
        if done:
            self._kill_privs_unprivileged(nodeid_out, fh_out)
        return _U64.pack(done) if wide else _U32_PAIR.pack(done, 0)

    def _ioctl(self, _nodeid: int, _req: RequestContext, body: memoryview) -> bytes:
        fh, flags, cmd, _arg, in_size, out_size = _IOCTL_IN.unpack_from(body)
        if cmd not in IOCTLS:
            raise FUSEError(errno.ENOTTY)
        data = bytearray(body[_IOCTL_IN.size:_IOCTL_IN.size + in_size])
        if len(data) < out_size:
            data.extend(bytes(out_size - len(data)))
        # A directory's handle is serve-fs's own (opendir), not a descriptor.
        fd = self.ops.open_dir_handle(fh) if flags & FUSE_IOCTL_DIR else fh
        try:
            result = int(fcntl.ioctl(fd, cmd, data, True)) if data else int(
                fcntl.ioctl(fd, cmd, 0))
        finally:
            if fd != fh:
                os.close(fd)
        return _IOCTL_OUT.pack(result, 0, 0, 0) + bytes(data[:out_size])

    def _statx(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        """FUSE_STATX: getattr with the birth time (and the host's attribute flags)."""
        _getattr_flags, _, _fh, sx_flags, _sx_mask = _STATX_IN.unpack_from(body)
        ops = self.ops
        if ops.gate is not None:
            ops.gate.check(req.pid)
        node = ops.table.get(nodeid)
        st = ops.statbuf.at(ops.table.fd(node), b"", sc.AT_EMPTY_PATH
                            | (sx_flags & _STATX_SYNC_TYPE))
        uid, gid = ops.shown_ids(st)
        _, av, _, avn = self._timeouts
        if nodeid in self._pt_writers:
            av = avn = 0
        return _STATX_OUT.pack(
            av, avn, 0, 0, 0,
            st[0] & _STATX_REPLY_MASK, st[BLKSIZE], st[2], st[NLINK], uid, gid, st[MODE], 0,
            nodeid, st[SIZE], st[BLOCKS], st[11],
            st[ATIME], st[ATIME_NS], 0, st[BTIME], st[BTIME_NS], 0,
            st[CTIME], st[CTIME_NS], 0, st[MTIME], st[MTIME_NS], 0,
            st[RDEV_MAJ], st[RDEV_MIN], st[DEV_MAJ], st[DEV_MIN], *(0,) * 14)

    def _tmpfile(self, nodeid: int, req: RequestContext, body: memoryview) -> bytes:
        flags, mode, self._request.umask, _ = _CREATE_IN.unpack_from(body)
        fi, entry = _run(self.ops.tmpfile(nodeid, mode, flags, req))
        try:
            return self._created(entry, fi, flags)
        except BaseException:
            _run(self.ops.release(fi.fh))
            raise
