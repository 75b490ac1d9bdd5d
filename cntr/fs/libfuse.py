"""pyfuse3's libfuse session over the handler core: ``CNTR_SERVE_FS_LOOP=libfuse``.

`Operations` is a thin pyfuse3 adapter: each method checks the mount-namespace gate for
the gated operations (the same set as `cntr.fs.session`), calls the same
`cntr.fs.passthrough.Passthrough` method the wire session calls, converts its reply bytes
to pyfuse3's types (fuse_entry_out into EntryAttributes, fuse_open_out into FileInfo, ...)
and raises FUSEError for OSError (anything else: EIO and a log line).  `serve` mounts (or
adopts ``/dev/fd/N``) with ``pyfuse3.init`` and runs ``pyfuse3.main()`` under ``trio.run``.
Only this module imports pyfuse3 and trio, and only this session does.

What libfuse 3.14 does not negotiate, and what a user gets instead (README, "serve-fs
sessions"):

- no FUSE passthrough: every read and write goes through serve-fs;
- no HANDLE_KILLPRIV_V2: the kernel clears set-user/group-ID bits itself (a SETATTR of the
  mode after an unprivileged write or truncation), and asks for ``security.capability``
  before each write; after an unprivileged ``O_TRUNC`` open (FUSE_ATOMIC_O_TRUNC: the
  kernel drops that mode change) `Operations.open` clears them as the kernel would ask;
- no SETXATTR_EXT: `Operations.setxattr` judges itself whether setting an access ACL
  clears set-group-ID (the requester outside the file's group, without CAP_FSETID);
- no DONT_MASK: the kernel applies the umask before serve-fs sees the mode, also in a
  directory with a default ACL (where POSIX says the ACL replaces the umask);
- no FOPEN_CACHE_DIR, CACHE_SYMLINKS or max_pages 256: listings and symlink targets are
  asked for again, writes come in 128 KiB pieces;
- requests pyfuse3's Operations has no method for are answered ENOSYS by libfuse, which
  the kernel turns into: EOPNOTSUPP for fallocate(2) and O_TMPFILE, ENOTTY for ioctls
  (chattr/lsattr), a generic answer for lseek's SEEK_DATA/SEEK_HOLE (the whole file is
  data), a copy through serve-fs for copy_file_range(2), and no birth time in statx(2).

Caveats:
- pyfuse3 keeps one global session: one libfuse `serve` per process.
- requests are answered one at a time (``max_tasks=1``): the core's handlers block.
"""

from __future__ import annotations

import errno
import logging
import os
import signal
from collections.abc import Callable, Sequence
from typing import ParamSpec, TypeVar

import pyfuse3
import trio
from pyfuse3 import (
    EntryAttributes,
    FileInfo,
    FUSEError,
    ReaddirToken,
    RequestContext,
    SetattrFields,
    StatvfsData,
)

from cntr.fs.gate import MountNsGate
from cntr.fs.inodes import InodeT
from cntr.fs.passthrough import FileHandle, Passthrough
from cntr.fs.protocol import (
    ATTR_OUT,
    ENTRY_OUT,
    FATTR_ATIME,
    FATTR_GID,
    FATTR_MODE,
    FATTR_MTIME,
    FATTR_SIZE,
    FATTR_UID,
    FOPEN_DIRECT_IO,
    FOPEN_KEEP_CACHE,
    OPEN_OUT,
    STATFS_OUT,
    Request,
)

log = logging.getLogger("cntr.fs")

P = ParamSpec("P")
T = TypeVar("T")
_NS = 1_000_000_000
_ENTRY_SIZE = ENTRY_OUT.size


def _attributes(fields: tuple[int, ...], entry_valid: float = 0.0) -> EntryAttributes:
    """An EntryAttributes of the node id, generation, attr timeout and fuse_attr in
    ``fields`` (the tail of an unpacked fuse_entry_out or fuse_attr_out)."""
    (nodeid, gen, av, avn, _ino, size, blocks, atime, mtime, ctime, atimensec, mtimensec,
     ctimensec, mode, nlink, uid, gid, rdev, blksize, _) = fields
    e = EntryAttributes()
    e.st_ino = nodeid
    e.generation = gen
    e.entry_timeout = entry_valid
    e.attr_timeout = av + avn / _NS
    e.st_mode = mode
    e.st_nlink = nlink
    e.st_uid = uid
    e.st_gid = gid
    e.st_rdev = rdev
    e.st_size = size
    e.st_blocks = blocks
    e.st_blksize = blksize
    e.st_atime_ns = atime * _NS + atimensec
    e.st_mtime_ns = mtime * _NS + mtimensec
    e.st_ctime_ns = ctime * _NS + ctimensec
    return e


def entry_attributes(entry: bytes) -> EntryAttributes:
    """The EntryAttributes of a fuse_entry_out (node id 0: a negative entry)."""
    nodeid, gen, ev, av, evn, avn, *attr = ENTRY_OUT.unpack_from(entry)
    return _attributes((nodeid, gen, av, avn, *attr), ev + evn / _NS)


def attr_attributes(nodeid: int, attr_out: bytes) -> EntryAttributes:
    """The EntryAttributes of a fuse_attr_out of ``nodeid``."""
    av, avn, _, *attr = ATTR_OUT.unpack_from(attr_out)
    return _attributes((nodeid, 0, av, avn, *attr))


def file_info(open_out: bytes) -> FileInfo:
    """The FileInfo of a fuse_open_out."""
    fh, flags, _backing = OPEN_OUT.unpack_from(open_out)
    # (never FOPEN_NONSEEKABLE: the core does not set it, and Debian's pyfuse3 3.2.1
    # FileInfo may lack the field)
    return FileInfo(fh=fh, direct_io=bool(flags & FOPEN_DIRECT_IO),
                    keep_cache=bool(flags & FOPEN_KEEP_CACHE))


def _invalidate(nodeid: int) -> None:
    try:
        pyfuse3.invalidate_inode(nodeid, attr_only=True)
    except OSError as exc:  # ENOENT: the kernel no longer has the inode
        log.debug("serve-fs: invalidating node %#x: %s", nodeid, exc)


def _request(ctx: RequestContext) -> Request:
    return Request(ctx.uid, ctx.gid, ctx.pid, ctx.umask)


class Operations(pyfuse3.Operations):
    """pyfuse3's Operations, each a call of ``fs`` (module docstring)."""

    supports_dot_lookup = True
    enable_writeback_cache = False

    def __init__(self, fs: Passthrough, gate: MountNsGate | None = None) -> None:
        super().__init__()
        self.fs = fs
        self.gate = gate
        self.enable_acl = fs.acl
        fs.notify_inval = _invalidate

    def _call(self, ctx: RequestContext | None, fn: Callable[P, T], *args: P.args,
              **kwargs: P.kwargs) -> T:
        """``fn(*args)``, after the gate when ``ctx`` is given; errors as FUSEError."""
        try:
            if ctx is not None and self.gate is not None:
                self.gate.check(ctx.pid)
            return fn(*args, **kwargs)
        except OSError as exc:
            raise FUSEError(exc.errno or errno.EIO) from None
        except Exception as exc:  # a bug is EIO, never a dead server
            log.error("serve-fs: %s failed: %r", getattr(fn, "__name__", fn), exc,
                      exc_info=self.fs.debug)
            raise FUSEError(errno.EIO) from None

    # --- metadata ----------------------------------------------------------------------
    async def lookup(self, parent_inode: int, name: bytes,
                     ctx: RequestContext) -> EntryAttributes:
        return entry_attributes(self._call(ctx, self.fs.lookup, InodeT(parent_inode), name))

    async def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:
        try:
            self.fs.forget(inode_list)
        except Exception as exc:  # noqa: BLE001  # forget has no reply to carry it
            log.error("serve-fs: forget failed: %r", exc)

    async def getattr(self, inode: int, ctx: RequestContext) -> EntryAttributes:
        return attr_attributes(inode, self._call(ctx, self.fs.getattr, InodeT(inode)))

    async def setattr(self, inode: int, attr: EntryAttributes, fields: SetattrFields,
                      fh: int | None, ctx: RequestContext) -> EntryAttributes:
        valid = ((FATTR_SIZE if fields.update_size else 0)
                 | (FATTR_MODE if fields.update_mode else 0)
                 | (FATTR_UID if fields.update_uid else 0)
                 | (FATTR_GID if fields.update_gid else 0)
                 | (FATTR_ATIME if fields.update_atime else 0)
                 | (FATTR_MTIME if fields.update_mtime else 0))
        return attr_attributes(inode, self._call(
            ctx, self.fs.setattr, InodeT(inode), _request(ctx), valid,
            None if fh is None else FileHandle(fh), attr.st_size, attr.st_mode,
            attr.st_uid, attr.st_gid, attr.st_atime_ns, attr.st_mtime_ns))

    async def readlink(self, inode: int, ctx: RequestContext) -> bytes:
        return self._call(ctx, self.fs.readlink, InodeT(inode))

    async def statfs(self, ctx: RequestContext) -> StatvfsData:
        (blocks, bfree, bavail, files, ffree, bsize, namemax, frsize, _) = (
            STATFS_OUT.unpack(self._call(ctx, self.fs.statfs)))
        out = StatvfsData()
        out.f_blocks, out.f_bfree, out.f_bavail = blocks, bfree, bavail
        out.f_files, out.f_ffree, out.f_favail = files, ffree, ffree
        out.f_bsize, out.f_namemax, out.f_frsize = bsize, namemax, frsize
        return out

    async def access(self, inode: int, mode: int, ctx: RequestContext) -> bool:
        self._call(ctx, self.fs.access, InodeT(inode), mode)
        return True

    # --- namespace changes -----------------------------------------------------------
    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: RequestContext) -> EntryAttributes:
        return entry_attributes(self._call(ctx, self.fs.mknod, InodeT(parent_inode), name,
                                           mode, rdev, _request(ctx)))

    async def mkdir(self, parent_inode: int, name: bytes, mode: int,
                    ctx: RequestContext) -> EntryAttributes:
        return entry_attributes(self._call(ctx, self.fs.mkdir, InodeT(parent_inode), name,
                                           mode, _request(ctx)))

    async def symlink(self, parent_inode: int, name: bytes, target: bytes,
                      ctx: RequestContext) -> EntryAttributes:
        return entry_attributes(self._call(ctx, self.fs.symlink, InodeT(parent_inode), name,
                                           target, _request(ctx)))

    async def unlink(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        self._call(ctx, self.fs.unlink, InodeT(parent_inode), name)

    async def rmdir(self, parent_inode: int, name: bytes, ctx: RequestContext) -> None:
        self._call(ctx, self.fs.rmdir, InodeT(parent_inode), name)

    async def rename(  # noqa: PLR0917  # pyfuse3's signature
            self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
            name_new: bytes, flags: int, ctx: RequestContext) -> None:
        self._call(ctx, self.fs.rename, InodeT(parent_inode_old), name_old,
                   InodeT(parent_inode_new), name_new, flags)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes,
                   ctx: RequestContext) -> EntryAttributes:
        return entry_attributes(self._call(ctx, self.fs.link, InodeT(inode),
                                           InodeT(new_parent_inode), new_name))

    # --- files -----------------------------------------------------------------------
    async def open(self, inode: int, flags: int, ctx: RequestContext) -> FileInfo:
        # libfuse takes FUSE_ATOMIC_O_TRUNC but not HANDLE_KILLPRIV_V2: the kernel then
        # drops the mode change an O_TRUNC open by an unprivileged user implies (its
        # truncation is the OPEN's), so the kill is done here, as the kernel would ask.
        kill = bool(flags & os.O_TRUNC) and not Passthrough.has_fsetid(ctx.pid, ctx.uid)
        return file_info(self._call(ctx, self.fs.open, InodeT(inode), flags, kill))

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: RequestContext) -> tuple[FileInfo, EntryAttributes]:
        reply = self._call(ctx, self.fs.create, InodeT(parent_inode), name, mode, flags,
                           _request(ctx))
        return file_info(reply[_ENTRY_SIZE:]), entry_attributes(reply)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        return self._call(None, self.fs.read, FileHandle(fh), off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        # The node id only matters for a kill_privs the kernel never asks for here.
        return self._call(None, self.fs.write, InodeT(0), FileHandle(fh), off, buf)

    async def flush(self, fh: int) -> None:
        self._call(None, self.fs.flush, FileHandle(fh))

    async def release(self, fh: int) -> None:
        self._call(None, self.fs.release, FileHandle(fh))

    async def fsync(self, fh: int, datasync: bool) -> None:
        self._call(None, self.fs.fsync, FileHandle(fh), datasync)

    async def poll(self, inode: int, fh: int, poll_handle: object,
                   ctx: RequestContext) -> int:
        return self._call(ctx, self.fs.poll, FileHandle(fh))

    # --- directories -----------------------------------------------------------------
    async def opendir(self, inode: int, ctx: RequestContext) -> int:
        fh: int = OPEN_OUT.unpack_from(self._call(ctx, self.fs.opendir, InodeT(inode)))[0]
        return fh

    async def readdir(self, fh: int, start_id: int, token: ReaddirToken) -> None:
        def add(name: bytes, entry: bytes, _ino: int, _mode: int, next_id: int) -> bool:
            return pyfuse3.readdir_reply(token, name, entry_attributes(entry), next_id)

        self._call(None, self.fs.readdir, FileHandle(fh), start_id, add)

    async def releasedir(self, fh: int) -> None:
        self._call(None, self.fs.releasedir, FileHandle(fh))

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        self._call(None, self.fs.fsyncdir, FileHandle(fh), datasync)

    # --- extended attributes ---------------------------------------------------------
    async def getxattr(self, inode: int, name: bytes, ctx: RequestContext) -> bytes:
        return self._call(ctx, self.fs.getxattr, InodeT(inode), name)

    async def setxattr(self, inode: int, name: bytes, value: bytes,
                       ctx: RequestContext) -> None:
        # pyfuse3 checked XATTR_CREATE/XATTR_REPLACE already (and passes no flags).  An
        # access ACL set by someone outside the file's group clears set-group-ID, as the
        # kernel says with SETXATTR_EXT, which libfuse does not take: judged here.
        self._call(ctx, self._setxattr, InodeT(inode), name, value, _request(ctx))

    def _setxattr(self, nodeid: InodeT, name: bytes, value: bytes, req: Request) -> None:
        kill = name == b"system.posix_acl_access" and self.fs.outside_group(nodeid, req)
        self.fs.setxattr(nodeid, name, value, 0, kill)

    async def listxattr(self, inode: int, ctx: RequestContext) -> list[bytes]:
        names = self._call(ctx, self.fs.listxattr, InodeT(inode))
        return names.split(b"\0")[:-1]

    async def removexattr(self, inode: int, name: bytes, ctx: RequestContext) -> None:
        self._call(ctx, self.fs.removexattr, InodeT(inode), name)


def fuse_options() -> set[str]:
    """pyfuse3's defaults plus what a shared passthrough needs.

    ``default_permissions``: the kernel checks modes (serve-fs runs as root);
    ``allow_other``: the session's users are not the mounter.  libfuse's ``nosuid`` and
    ``nodev`` stay: with the uid translation a container root owns the host's root files in
    the kernel's eyes, and must not get the host's block devices or setuid programs with it.
    ``debug`` is not libfuse's "debug" (a dump of every packet on stderr): the core logs
    each call itself.
    """
    return set(pyfuse3.default_options) | {"allow_other", "default_permissions",
                                          "fsname=cntr", "subtype=cntr"}


def serve(fs: Passthrough, gate: MountNsGate | None, target: str, *, unmount: bool,
          ready: Callable[[], None]) -> None:
    """Serve ``fs`` on ``target`` (a mountpoint, or ``/dev/fd/N`` of a /dev/fuse
    descriptor mounted elsewhere, which libfuse then uses as it is) until the filesystem is
    unmounted or SIGTERM/SIGINT; ``ready()`` is called once the mount is there, before the
    first request is read.  ``unmount``: unmount ``target`` at the end."""
    pyfuse3.init(Operations(fs, gate), target, fuse_options())
    try:
        trio.run(_main, ready)
    finally:
        pyfuse3.close(unmount=unmount)


async def _main(ready: Callable[[], None]) -> None:
    async with trio.open_nursery() as nursery:

        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("serve-fs: signal %d, stopping", signum)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signals)
        ready()
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        nursery.cancel_scope.cancel()
