"""The kernel's FUSE protocol (``<linux/fuse.h>``): opcodes, flags, struct layouts, ioctls.

Nothing but numbers and `struct.Struct` layouts, plus `Request` (the requester fields of
``fuse_in_header``): both transports (`cntr.fs.session` over ``/dev/fuse``, `cntr.fs.uring`
over io_uring) and the handler core (`cntr.fs.passthrough`) read them from here.  This
module imports nothing from ``cntr.fs``.

fuse_attr's seconds are u64 in ``<linux/fuse.h>`` but the kernel reads them as time64_t:
they are packed signed here, so times before 1970 pass.
"""

from __future__ import annotations

import struct

KERNEL_MAJOR, KERNEL_MINOR = 7, 41

# --- opcodes (enum fuse_opcode) --------------------------------------------------------
LOOKUP, FORGET, GETATTR, SETATTR, READLINK, SYMLINK = 1, 2, 3, 4, 5, 6
MKNOD, MKDIR, UNLINK, RMDIR, RENAME, LINK, OPEN, READ, WRITE = 8, 9, 10, 11, 12, 13, 14, 15, 16
STATFS, RELEASE, FSYNC, SETXATTR, GETXATTR, LISTXATTR = 17, 18, 20, 21, 22, 23
REMOVEXATTR, FLUSH, INIT, OPENDIR, READDIR, RELEASEDIR, FSYNCDIR = 24, 25, 26, 27, 28, 29, 30
ACCESS, CREATE, INTERRUPT, DESTROY, POLL, NOTIFY_REPLY = 34, 35, 36, 38, 40, 41
BATCH_FORGET, READDIRPLUS, RENAME2 = 42, 44, 45
IOCTL, FALLOCATE, LSEEK, COPY_FILE_RANGE = 39, 43, 46, 47
TMPFILE, STATX, COPY_FILE_RANGE_64 = 51, 52, 53
#: opcode -> its name (request counts)
OPCODE_NAMES = dict(enumerate((
    "", "LOOKUP", "FORGET", "GETATTR", "SETATTR", "READLINK", "SYMLINK", "", "MKNOD",
    "MKDIR", "UNLINK", "RMDIR", "RENAME", "LINK", "OPEN", "READ", "WRITE", "STATFS",
    "RELEASE", "", "FSYNC", "SETXATTR", "GETXATTR", "LISTXATTR", "REMOVEXATTR", "FLUSH",
    "INIT", "OPENDIR", "READDIR", "RELEASEDIR", "FSYNCDIR", "GETLK", "SETLK", "SETLKW",
    "ACCESS", "CREATE", "INTERRUPT", "BMAP", "DESTROY", "IOCTL", "POLL", "NOTIFY_REPLY",
    "BATCH_FORGET", "FALLOCATE", "READDIRPLUS", "RENAME2", "LSEEK", "COPY_FILE_RANGE",
    "SETUPMAPPING", "REMOVEMAPPING", "SYNCFS", "TMPFILE", "STATX", "COPY_FILE_RANGE_64")))

# --- INIT flags (flags2 holds bits 32-63) ---------------------------------------------
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

# --- fuse_open_out.open_flags ------------------------------------------------------------
FOPEN_DIRECT_IO, FOPEN_KEEP_CACHE, FOPEN_NONSEEKABLE = 1 << 0, 1 << 1, 1 << 2
FOPEN_CACHE_DIR, FOPEN_PASSTHROUGH = 1 << 3, 1 << 7

# --- fuse_setattr_in.valid and the other request flags ---------------------------------
FATTR_MODE, FATTR_UID, FATTR_GID, FATTR_SIZE = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FATTR_ATIME, FATTR_MTIME, FATTR_FH = 1 << 4, 1 << 5, 1 << 6
FATTR_ATIME_NOW, FATTR_MTIME_NOW, FATTR_CTIME = 1 << 7, 1 << 8, 1 << 10
FATTR_KILL_SUIDGID = 1 << 11
FUSE_OPEN_KILL_SUIDGID = 1 << 0
FUSE_WRITE_KILL_SUIDGID = 1 << 2
FUSE_SETXATTR_ACL_KILL_SGID = 1 << 0
FUSE_IOCTL_DIR = 1 << 4
FSYNC_FDATASYNC = 1
NOTIFY_INVAL_INODE = 2
NOTIFY_PRUNE = 9  # FUSE 7.45 (Linux 6.18): the kernel drops unused inodes by node id

# --- /dev/fuse ioctls: _IOW(229, 1, struct fuse_backing_map), _IOW(229, 2, uint32_t) ---
FUSE_DEV_IOC_BACKING_OPEN = 0x4010E501
FUSE_DEV_IOC_BACKING_CLOSE = 0x4004E502
#: FILESYSTEM_MAX_STACK_DEPTH: backing files may sit on overlayfs (a container's root)
MAX_STACK_DEPTH = 2

# --- sizes serve-fs negotiates ---------------------------------------------------------
MAX_PAGES_WANTED = 256
MAX_WRITE = MAX_PAGES_WANTED * 4096
#: a request buffer: the largest WRITE plus its headers
BUFFER_SIZE = MAX_WRITE + 4096
FUSE_MIN_READ_BUFFER = 8192

# --- FUSE over io_uring (fs/fuse/dev_uring.c) -----------------------------------------
URING_CMD_REGISTER, URING_CMD_COMMIT_AND_FETCH = 1, 2
#: struct fuse_uring_req_header: in_out[128], op_in[128], fuse_uring_ent_in_out (32)
URING_HEADER_SIZE = 288
URING_OP_IN = 128  # where op_in starts, and its size
URING_ENT_COMMIT_ID = 256 + 8  # ring_ent_in_out.commit_id, then payload_sz
URING_ENT_PAYLOAD_SZ = 256 + 16

# --- struct layouts --------------------------------------------------------------------
IN_HEADER = struct.Struct("=IIQQIIIHH")  # fuse_in_header
#: the fields of a fuse_in_header a dispatcher reads: opcode, nodeid, uid, gid, pid
IN_HEADER_ARGS = struct.Struct("=4xI8xQIII")
OUT_HEADER = struct.Struct("=IiQ")  # fuse_out_header
_ATTR = "QQQqqqIIIIIIIIII"  # fuse_attr, seconds signed (module docstring)
ENTRY_OUT = struct.Struct("=QQQQII" + _ATTR)  # fuse_entry_out
ATTR_OUT = struct.Struct("=QII" + _ATTR)  # fuse_attr_out
#: where fuse_attr's mode is in a fuse_entry_out (40-byte head, 6 u64 and 3 u32 before it)
ENTRY_MODE_AT = 40 + 48 + 12
DIRENT = struct.Struct("=QQII")  # fuse_dirent without its name
OPEN_OUT = struct.Struct("=QIi")  # fuse_open_out (fh, open_flags, backing_id)
INIT_IN = struct.Struct("=IIII")
INIT_OUT = struct.Struct("=IIIIHHIIHHII24x")
U32 = struct.Struct("=I")
U32_PAIR = struct.Struct("=II")
U64 = struct.Struct("=Q")
SETATTR_IN = struct.Struct("=II3Q3q8I")  # times signed, as in fuse_attr
READ_IN = struct.Struct("=QQII")  # fh, offset, size, flags (lock owner etc. follow)
WRITE_IN = struct.Struct("=QQIIQII")
WRITE_IN_SIZE = 40  # fuse_write_in
RELEASE_IN = struct.Struct("=QII")
FSYNC_IN = struct.Struct("=QI")
RENAME2_IN = struct.Struct("=QI")
CREATE_IN = struct.Struct("=IIII")  # flags, mode, umask, open_flags
MKNOD_IN = struct.Struct("=III")  # mode, rdev, umask
POLL_IN = struct.Struct("=QQII")
STATFS_OUT = struct.Struct("=5Q4I24x")
FORGET_ONE = struct.Struct("=QQ")
BACKING_MAP = struct.Struct("=iIQ")
SETXATTR_IN_SIZE = 8  # FUSE_COMPAT_SETXATTR_IN_SIZE, without FUSE_SETXATTR_EXT
SETXATTR_EXT_IN = struct.Struct("=IIII")  # size, flags, setxattr_flags, padding
NOTIFY_INVAL_INODE_OUT = struct.Struct("=IiQQqq")  # out header + fuse_notify_inval_inode_out
# out header + fuse_notify_prune_out (count, padding, spare), then count u64 node ids
NOTIFY_PRUNE_OUT = struct.Struct("=IiQIIQ")
FALLOCATE_IN = struct.Struct("=QQQI")  # fh, offset, length, mode
LSEEK_IN = struct.Struct("=QQI")  # fh, offset, whence
COPY_FILE_RANGE_IN = struct.Struct("=7Q")
IOCTL_IN = struct.Struct("=QIIQII")  # fh, flags, cmd, arg, in_size, out_size
IOCTL_OUT = struct.Struct("=iIII")  # result, flags, in_iovs, out_iovs
STATX_IN = struct.Struct("=IIQII")  # getattr_flags, reserved, fh, sx_flags, sx_mask
# fuse_statx_out: attr_valid, attr_valid_nsec, flags, spare[2], then struct fuse_statx
STATX_OUT = struct.Struct("=QII2Q" + "IIQIIIHHQQQQ" + "qIi" * 4 + "IIII" + "14Q")
STATX_SYNC_TYPE = 0x6000  # AT_STATX_FORCE_SYNC | AT_STATX_DONT_SYNC
STATX_REPLY_MASK = 0x0FFF  # STATX_BASIC_STATS | STATX_BTIME: what fuse_statx carries


class Request:
    """Who asks: the requester fields of a fuse_in_header (host ids and thread id), and
    the umask the create-style requests carry (FUSE_DONT_MASK).  A transport fills one
    per request it reads; handlers only read it."""

    __slots__ = ("gid", "pid", "uid", "umask")

    def __init__(self, uid: int = 0, gid: int = 0, pid: int = 0, umask: int = 0) -> None:
        self.uid = uid
        self.gid = gid
        self.pid = pid
        self.umask = umask

    def __repr__(self) -> str:
        return f"Request(uid={self.uid}, gid={self.gid}, pid={self.pid})"
