"""The syscall bindings cntr makes with ctypes, and nothing else (the io_uring ring is
`cntr.linux.io_uring`'s, libfuse's version query `cntr.linux.libfuse`'s).

Each wrapper checks the return value and raises ``OSError(errno, strerror, what)``
naming the call, so callers never see a bare -1.  Python 3.11 has no
``os.setns``/``os.unshare`` and no binding for the new mount API
(open_tree, move_mount, fsopen, fsconfig, fsmount), so they live here.

Caveats:
- syscall numbers are given for x86_64 and aarch64; others raise ``OSError(ENOSYS)``.
- ``setns(CLONE_NEWNS)`` and ``unshare(CLONE_NEWNS)`` fail with EINVAL in a process with
  more than one thread: call them in a single-threaded child (the setup child of
  `cntr.session.setup`, and the offline session's of `cntr.offline`).
"""

from __future__ import annotations

import ctypes
import errno
import os

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    import struct
    from typing import Any, NewType

    Pid = NewType("Pid", int)
    Fd = NewType("Fd", int)
else:
    Pid = Fd = int

# glibc's soname; ctypes.util.find_library would spawn ldconfig (~8 ms per start).
_libc = ctypes.CDLL("libc.so.6", use_errno=True)

# --- constants (linux/sched.h, linux/mount.h, sys/mount.h) -------------------------------
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NEWTIME = 0x00000080

MS_RDONLY = 1
MS_NOSUID = 2
MS_NODEV = 4
MS_NOEXEC = 8
MS_REMOUNT = 32
MS_BIND = 4096
MS_REC = 16384
MS_PRIVATE = 1 << 18
MNT_DETACH = 2

AT_FDCWD = -100
AT_SYMLINK_NOFOLLOW = 0x100
AT_EMPTY_PATH = 0x1000
AT_RECURSIVE = 0x8000

OPEN_TREE_CLONE = 1
OPEN_TREE_CLOEXEC = os.O_CLOEXEC
MOVE_MOUNT_F_EMPTY_PATH = 0x00000004
FSOPEN_CLOEXEC = 1
FSMOUNT_CLOEXEC = 1
FSCONFIG_SET_FLAG = 0
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
MOUNT_ATTR_NOSUID = 0x2
MOUNT_ATTR_NODEV = 0x4

RESOLVE_NO_MAGICLINKS = 0x02
RESOLVE_IN_ROOT = 0x10

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2

PR_SET_PDEATHSIG = 1
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_SET_NO_NEW_PRIVS = 38
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4
PR_SET_KEEPCAPS = 8
PR_SET_CHILD_SUBREAPER = 36
PR_SET_DUMPABLE = 4
PR_SET_NAME = 15
PR_SET_SECCOMP = 22
SECCOMP_MODE_FILTER = 2

_SYSCALLS: dict[str, dict[str, int]] = {
    "x86_64": {
        "pivot_root": 155, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "openat2": 437,
        "capget": 125, "capset": 126,
    },
    "aarch64": {
        "pivot_root": 41, "open_tree": 428, "move_mount": 429, "fsopen": 430,
        "fsconfig": 431, "fsmount": 432, "openat2": 437,
        "capget": 90, "capset": 91,
    },
}
_MACHINE = os.uname().machine  # platform.machine() costs an import of ~2.5 ms
_NR = _SYSCALLS.get(_MACHINE, {})

_syscall = _libc.syscall
_syscall.restype = ctypes.c_long


def _fn(name: str, restype: Any, *argtypes: Any) -> Any:
    f = getattr(_libc, name)
    f.restype = restype
    f.argtypes = list(argtypes)
    return f


def _check(ret: int, what: str, path: str | None = None) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}", path)
    return ret


def _sys(name: str, *args: Any) -> int:
    nr = _NR.get(name)
    if nr is None:
        raise OSError(errno.ENOSYS, f"{name}: no syscall number for {_MACHINE}")
    return int(_syscall(ctypes.c_long(nr), *args))


def _b(path: str | bytes | None) -> bytes | None:
    if path is None:
        return None
    return os.fsencode(path)


_setns = _fn("setns", ctypes.c_int, ctypes.c_int, ctypes.c_int)
_unshare = _fn("unshare", ctypes.c_int, ctypes.c_int)
_mount = _fn(
    "mount", ctypes.c_int,
    ctypes.c_char_p, ctypes.c_char_p, ctypes.c_char_p, ctypes.c_ulong, ctypes.c_char_p,
)
_umount2 = _fn("umount2", ctypes.c_int, ctypes.c_char_p, ctypes.c_int)
_prctl = _fn(
    "prctl", ctypes.c_int,
    ctypes.c_int, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong, ctypes.c_ulong,
)
_renameat2 = _fn(
    "renameat2", ctypes.c_int,
    ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint,
)
_fallocate = _fn(
    "fallocate", ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long, ctypes.c_long
)


def setns(fd: int, nstype: int = 0, what: str = "setns") -> None:
    _check(_setns(fd, nstype), what)


def unshare(flags: int) -> None:
    _check(_unshare(flags), "unshare")


def mount(
    source: str | None, target: str, fstype: str | None, flags: int, data: str | None = None
) -> None:
    _check(_mount(_b(source), _b(target), _b(fstype), flags, _b(data)), "mount", target)


def umount2(target: str, flags: int) -> None:
    _check(_umount2(_b(target), flags), "umount2", target)


def pivot_root(new_root: str, put_old: str) -> None:
    _check(_sys("pivot_root", _b(new_root), _b(put_old)), "pivot_root", new_root)


def open_tree(dfd: int, path: str, flags: int) -> Fd:
    ret = _sys("open_tree", ctypes.c_int(dfd), _b(path), ctypes.c_uint(flags))
    return Fd(_check(ret, "open_tree", path))


def move_mount(from_dfd: int, from_path: str, to_dfd: int, to_path: str, flags: int) -> None:
    ret = _sys(
        "move_mount", ctypes.c_int(from_dfd), _b(from_path), ctypes.c_int(to_dfd),
        _b(to_path), ctypes.c_uint(flags),
    )
    _check(ret, "move_mount", to_path)


def fsopen(fstype: str, flags: int = FSOPEN_CLOEXEC) -> Fd:
    return Fd(_check(_sys("fsopen", _b(fstype), ctypes.c_uint(flags)), "fsopen", fstype))


def fsconfig(fd: int, cmd: int, key: str | None = None, value: str | None = None) -> None:
    ret = _sys(
        "fsconfig", ctypes.c_int(fd), ctypes.c_uint(cmd), _b(key), _b(value), ctypes.c_int(0)
    )
    _check(ret, "fsconfig", key)


def fsmount(fd: int, flags: int = FSMOUNT_CLOEXEC, attr_flags: int = 0) -> Fd:
    ret = _sys("fsmount", ctypes.c_int(fd), ctypes.c_uint(flags), ctypes.c_uint(attr_flags))
    return Fd(_check(ret, "fsmount"))


class _OpenHow(ctypes.Structure):
    _fields_ = [
        ("flags", ctypes.c_uint64), ("mode", ctypes.c_uint64), ("resolve", ctypes.c_uint64)
    ]


def openat2(dfd: int, path: str, flags: int, resolve: int, mode: int = 0) -> Fd:
    """openat2(2): resolve ``path`` under ``dfd`` with RESOLVE_* restrictions."""
    how = _OpenHow(flags | os.O_CLOEXEC, mode, resolve)
    ret = _sys(
        "openat2", ctypes.c_int(dfd), _b(path), ctypes.byref(how), ctypes.c_size_t(24)
    )
    return Fd(_check(ret, "openat2", path))


def prctl(option: int, arg2: int = 0, arg3: int = 0, arg4: int = 0, arg5: int = 0) -> int:
    return _check(_prctl(option, arg2, arg3, arg4, arg5), f"prctl({option})")


def set_name(name: bytes) -> None:
    """prctl(PR_SET_NAME): the calling thread's comm (16 bytes with the NUL, truncated)."""
    buf = ctypes.create_string_buffer(name[:15], 16)
    _check(_prctl(PR_SET_NAME, ctypes.addressof(buf), 0, 0, 0), "prctl(PR_SET_NAME)")


class _SockFprog(ctypes.Structure):
    """struct sock_fprog (linux/filter.h)."""

    _fields_ = [("len", ctypes.c_ushort), ("filter", ctypes.c_void_p)]


def seccomp_set_filter(program: bytes) -> None:
    """Install a seccomp filter on the calling thread: ``program`` is an array of struct
    sock_filter (8 bytes each).  Needs no_new_privs or CAP_SYS_ADMIN (seccomp(2))."""
    buf = ctypes.create_string_buffer(program, len(program))
    prog = _SockFprog(len(program) // 8, ctypes.addressof(buf))
    _check(_prctl(PR_SET_SECCOMP, SECCOMP_MODE_FILTER, ctypes.addressof(prog), 0, 0),
           "prctl(PR_SET_SECCOMP)")


def renameat2(
    olddfd: int, oldpath: str | bytes, newdfd: int, newpath: str | bytes, flags: int
) -> None:
    ret = _renameat2(olddfd, os.fsencode(oldpath), newdfd, os.fsencode(newpath), flags)
    _check(ret, "renameat2", os.fsdecode(oldpath))


def fallocate(fd: int, mode: int, offset: int, length: int) -> None:
    _check(_fallocate(fd, mode, offset, length), "fallocate")


_fstatfs = _fn("fstatfs", ctypes.c_int, ctypes.c_int, ctypes.c_void_p)


def fstatfs_type(fd: int) -> int:
    """The f_type (filesystem magic, linux/magic.h) of the filesystem ``fd`` is on."""
    buf = (ctypes.c_long * 16)()  # struct statfs: 120 bytes on 64-bit, f_type first
    _check(_fstatfs(fd, ctypes.byref(buf)), "fstatfs")
    return int(buf[0]) & 0xFFFFFFFF


# --- capabilities (linux/capability.h, version 3: two 32-bit words per set) --------------
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


class _CapHeader(ctypes.Structure):
    _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]


class _CapData(ctypes.Structure):
    _fields_ = [
        ("effective", ctypes.c_uint32),
        ("permitted", ctypes.c_uint32),
        ("inheritable", ctypes.c_uint32),
    ]


def capset(effective: int, permitted: int, inheritable: int) -> None:
    hdr = _CapHeader(_LINUX_CAPABILITY_VERSION_3, 0)
    data = (_CapData * 2)()
    for i in range(2):
        shift = 32 * i
        data[i].effective = (effective >> shift) & 0xFFFFFFFF
        data[i].permitted = (permitted >> shift) & 0xFFFFFFFF
        data[i].inheritable = (inheritable >> shift) & 0xFFFFFFFF
    _check(_sys("capset", ctypes.byref(hdr), ctypes.byref(data)), "capset")


_cap_last_cap: list[int] = []


def cap_last_cap() -> int:
    """The highest capability number this kernel knows (read once per process, and kept
    by its forks: the session's processes ask after they have left the host's /proc)."""
    if not _cap_last_cap:
        _cap_last_cap.append(_read_cap_last_cap())
    return _cap_last_cap[0]


def _read_cap_last_cap() -> int:
    try:
        with open("/proc/sys/kernel/cap_last_cap", "rb") as f:
            return int(f.read())
    except FileNotFoundError:
        # No procfs (`cntr exec` in a chroot-style container's root): PR_CAPBSET_READ
        # answers EINVAL past the last capability.
        last = 0
        while _prctl(PR_CAPBSET_READ, last + 1, 0, 0, 0) >= 0:
            last += 1
        return last


# --- serve-fs bindings ---
# statx(2), name_to_handle_at(2)/open_by_handle_at(2) and the AT_EMPTY_PATH forms of
# fchownat/utimensat/linkat: Python's os module cannot pass AT_EMPTY_PATH, which is what
# lets serve-fs act on an O_PATH descriptor without building a path string.
AT_STATX_DONT_SYNC = 0x4000
STATX_BASIC_STATS = 0x07FF
STATX_BTIME = 0x0800
STATX_MNT_ID = 0x1000
UTIME_NOW = (1 << 30) - 1
UTIME_OMIT = (1 << 30) - 2
MAX_HANDLE_SZ = 128
#: open_by_handle_at(2) rejects O_PATH mount descriptors (EBADF): the mount_fd must be
#: a regular open file.


class StatxTimestamp(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_int64), ("tv_nsec", ctypes.c_uint32),
                ("_reserved", ctypes.c_int32)]


class Statx(ctypes.Structure):
    """struct statx (linux/stat.h); 256 bytes."""

    _fields_ = [
        ("stx_mask", ctypes.c_uint32), ("stx_blksize", ctypes.c_uint32),
        ("stx_attributes", ctypes.c_uint64), ("stx_nlink", ctypes.c_uint32),
        ("stx_uid", ctypes.c_uint32), ("stx_gid", ctypes.c_uint32),
        ("stx_mode", ctypes.c_uint16), ("_spare0", ctypes.c_uint16),
        ("stx_ino", ctypes.c_uint64), ("stx_size", ctypes.c_uint64),
        ("stx_blocks", ctypes.c_uint64), ("stx_attributes_mask", ctypes.c_uint64),
        ("stx_atime", StatxTimestamp), ("stx_btime", StatxTimestamp),
        ("stx_ctime", StatxTimestamp), ("stx_mtime", StatxTimestamp),
        ("stx_rdev_major", ctypes.c_uint32), ("stx_rdev_minor", ctypes.c_uint32),
        ("stx_dev_major", ctypes.c_uint32), ("stx_dev_minor", ctypes.c_uint32),
        ("stx_mnt_id", ctypes.c_uint64), ("_spare", ctypes.c_uint64 * 13),
    ]


class FileHandle(ctypes.Structure):
    """struct file_handle with room for MAX_HANDLE_SZ bytes of f_handle."""

    _fields_ = [("handle_bytes", ctypes.c_uint32), ("handle_type", ctypes.c_int32),
                ("f_handle", ctypes.c_ubyte * MAX_HANDLE_SZ)]


#: Raw entry points for hot paths: they return -1 and leave errno set (``ctypes.get_errno``)
#: instead of raising, so callers can avoid building exceptions per request.
statx_raw = _fn(
    "statx", ctypes.c_int,
    ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p,
)
name_to_handle_at_raw = _fn(
    "name_to_handle_at", ctypes.c_int,
    ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int,
)
open_by_handle_at_raw = _fn(
    "open_by_handle_at", ctypes.c_int, ctypes.c_int, ctypes.c_char_p, ctypes.c_int
)
_fchownat = _fn(
    "fchownat", ctypes.c_int,
    ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32, ctypes.c_uint32, ctypes.c_int,
)
_utimensat = _fn(
    "utimensat", ctypes.c_int,
    ctypes.c_int, ctypes.c_char_p, ctypes.c_void_p, ctypes.c_int,
)
_linkat = _fn(
    "linkat", ctypes.c_int,
    ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_int,
)


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


def statx(dirfd: int, path: bytes, flags: int, mask: int = STATX_BASIC_STATS) -> Statx:
    """statx(2) into a fresh buffer."""
    buf = Statx()
    _check(statx_raw(dirfd, path, flags, mask, ctypes.byref(buf)), "statx", os.fsdecode(path))
    return buf


def name_to_handle_at(dirfd: int, path: bytes, flags: int) -> tuple[bytes, int]:
    """name_to_handle_at(2): returns (struct file_handle as bytes, mount id)."""
    fh = FileHandle()
    fh.handle_bytes = MAX_HANDLE_SZ
    mount_id = ctypes.c_int()
    ret = name_to_handle_at_raw(dirfd, path, ctypes.byref(fh), ctypes.byref(mount_id), flags)
    _check(ret, "name_to_handle_at", os.fsdecode(path))
    return ctypes.string_at(ctypes.addressof(fh), 8 + fh.handle_bytes), mount_id.value


def open_by_handle_at(mount_fd: int, handle: bytes, flags: int) -> Fd:
    """open_by_handle_at(2) (needs CAP_DAC_READ_SEARCH); ``handle`` from name_to_handle_at."""
    return Fd(_check(open_by_handle_at_raw(mount_fd, handle, flags), "open_by_handle_at"))


# statx(2) again, without argtypes: ctypes then passes ints as C ints and bytes as char *
# without checking them against a prototype, ~0.6 us less per call (several per FUSE
# request); the pointer goes as a c_void_p, which a bare int would not be (truncated).
_statx_unchecked = _libc["statx"]
_statx_unchecked.restype = ctypes.c_int


class StatxBuffer:
    """A reusable struct statx for hot paths (serve-fs: several per request): `at` fills
    it and returns it unpacked by ``unpack`` (a `struct.Struct` of the layout the caller
    reads), asking for ``mask`` unless told otherwise; OSError carries only the errno and
    its strerror.  ``name`` must be bytes (the call is not checked against a prototype:
    a str would go as a wide string)."""

    __slots__ = ("_buf", "_mask", "_ptr", "_unpack")

    def __init__(self, unpack: struct.Struct, mask: int) -> None:
        self._buf = bytearray(256)
        self._ptr = ctypes.c_void_p(
            ctypes.addressof((ctypes.c_char * 256).from_buffer(self._buf)))
        self._unpack = unpack.unpack_from
        self._mask = mask

    def at(self, dirfd: int, name: bytes, flags: int, mask: int = -1) -> tuple[Any, ...]:
        """statx(dirfd, name, flags, mask), unpacked."""
        if _statx_unchecked(dirfd, name, flags, self._mask if mask < 0 else mask,
                            self._ptr) < 0:
            err = ctypes.get_errno()
            raise OSError(err, os.strerror(err))
        return self._unpack(self._buf)

    def find(self, dirfd: int, name: bytes, flags: int) -> tuple[Any, ...] | None:
        """`at` with the mask given at creation, but None where ``name`` does not exist
        (ENOENT): a lookup of a missing name is common and raising costs ~1 us."""
        if _statx_unchecked(dirfd, name, flags, self._mask, self._ptr) < 0:
            err = ctypes.get_errno()
            if err == errno.ENOENT:
                return None
            raise OSError(err, os.strerror(err))
        return self._unpack(self._buf)


class HandleBuffer:
    """name_to_handle_at(2) into one reusable struct file_handle, for hot paths."""

    __slots__ = ("_handle", "_handle_ptr", "_mount_id", "_mount_id_ptr")

    def __init__(self) -> None:
        self._handle = FileHandle()
        self._handle_ptr = ctypes.c_void_p(ctypes.addressof(self._handle))
        self._mount_id = ctypes.c_int()
        self._mount_id_ptr = ctypes.c_void_p(ctypes.addressof(self._mount_id))

    def handle(self, dirfd: int, path: bytes, flags: int) -> bytes | None:
        """The struct file_handle of ``path`` (bytes: the call is unchecked, as
        `StatxBuffer`'s) as bytes; None where there is none."""
        self._handle.handle_bytes = MAX_HANDLE_SZ
        if _name_to_handle_at_unchecked(dirfd, path, self._handle_ptr, self._mount_id_ptr,
                                        flags) < 0:
            return None
        return ctypes.string_at(self._handle_ptr, 8 + self._handle.handle_bytes)


# open_by_handle_at(2) and name_to_handle_at(2) without argtypes, as `_statx_unchecked`
_open_by_handle_at_unchecked = _libc["open_by_handle_at"]
_open_by_handle_at_unchecked.restype = ctypes.c_int
_name_to_handle_at_unchecked = _libc["name_to_handle_at"]
_name_to_handle_at_unchecked.restype = ctypes.c_int


def open_by_handle(mount_fd: int, handle: bytes, flags: int) -> int:
    """open_by_handle_at(2) for hot paths (``handle`` bytes: the call is unchecked, as
    `StatxBuffer`'s): OSError carries only the errno and strerror."""
    fd = int(_open_by_handle_at_unchecked(mount_fd, handle, flags))
    if fd < 0:
        err = ctypes.get_errno()
        raise OSError(err, os.strerror(err))
    return fd


def fchownat(dirfd: int, path: bytes, uid: int, gid: int, flags: int) -> None:
    """fchownat(2); -1 leaves an id unchanged.  AT_EMPTY_PATH acts on an O_PATH ``dirfd``."""
    _check(_fchownat(dirfd, path, uid & 0xFFFFFFFF, gid & 0xFFFFFFFF, flags), "fchownat")


def utimensat(dirfd: int, path: bytes, atime: tuple[int, int], mtime: tuple[int, int],
              flags: int) -> None:
    """utimensat(2) with (sec, nsec) pairs; nsec may be UTIME_NOW or UTIME_OMIT."""
    times = (_Timespec * 2)(_Timespec(*atime), _Timespec(*mtime))
    _check(_utimensat(dirfd, path, ctypes.byref(times), flags), "utimensat")


def linkat(olddirfd: int, oldpath: bytes, newdirfd: int, newpath: bytes, flags: int) -> None:
    """linkat(2); AT_EMPTY_PATH (needs CAP_DAC_READ_SEARCH) links an O_PATH descriptor."""
    _check(_linkat(olddirfd, oldpath, newdirfd, newpath, flags), "linkat",
           os.fsdecode(newpath))


#: pidfd_open(2) flag (Linux 6.9): a pidfd for a thread (FUSE requests carry thread ids);
#: older kernels reject it with EINVAL.  Same value as O_EXCL (linux/pidfd.h).
PIDFD_THREAD = os.O_EXCL


#: fchmodat2(2) (Linux 6.6) has one number on every architecture (those from 424 on do)
_NR_FCHMODAT2 = 452
# a handle of its own: argtypes set here must not reach `_syscall`'s other callers
_fchmodat2 = _libc["syscall"]
_fchmodat2.restype = ctypes.c_long
_fchmodat2.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint,
                       ctypes.c_int]
#: whether fchmodat2 with AT_EMPTY_PATH works here (cleared at the first ENOSYS/EINVAL)
_fchmodat2_works = [True]


def chmod_fd(fd: int, mode: int) -> None:
    """chmod of the file ``fd`` refers to, an O_PATH descriptor too: fchmodat2(fd, "",
    mode, AT_EMPTY_PATH), else (a kernel before 6.6) chmod of /proc/self/fd/N, whose walk
    through procfs costs ~5 us more.  OSError carries only the errno and its strerror."""
    if _fchmodat2_works[0]:
        if _fchmodat2(_NR_FCHMODAT2, fd, b"", mode, AT_EMPTY_PATH) == 0:
            return
        err = ctypes.get_errno()
        if err not in (errno.ENOSYS, errno.EINVAL):
            raise OSError(err, os.strerror(err))
        _fchmodat2_works[0] = False
    os.chmod(b"/proc/self/fd/%d" % fd, mode)
