"""io_uring (``<linux/io_uring.h>``): a ring's setup, its shared memory and its syscalls.

`Ring` is one io_uring: ``io_uring_setup(2)``, the SQ/CQ rings and the SQE array mapped,
the kernel's head and tail indices as 32-bit cells, ``io_uring_enter(2)`` and
``io_uring_register(2)``.  `Buffer` is anonymous memory with a fixed address (what an
iovec handed to the kernel points at).  `cntr.fs.uring` builds FUSE over io_uring on them.

The three syscalls are bound here (not in `cntr.linux.syscalls`) as separate function
objects with fixed argument types: a ctypes call releases the GIL for the duration of the
syscall, which is what lets a thread wait in ``io_uring_enter`` while others run.

Caveats:
- x86_64 (and other TSO machines) only as written: the ring indices are read and written
  with plain 32-bit loads and stores through ctypes, with no explicit barriers.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import struct

from cntr.errors import suppress

# The same numbers on every architecture (added after the syscall tables were unified).
_NR_IO_URING_SETUP, _NR_IO_URING_ENTER, _NR_IO_URING_REGISTER = 425, 426, 427
SETUP_SQE128 = 1 << 10
SETUP_SINGLE_ISSUER = 1 << 12
SETUP_DEFER_TASKRUN = 1 << 13
FEAT_SINGLE_MMAP = 1 << 0
ENTER_GETEVENTS = 1 << 0
OFF_SQ_RING, OFF_CQ_RING, OFF_SQES = 0, 0x8000000, 0x10000000
OP_FSYNC, OP_POLL_ADD, OP_URING_CMD = 3, 6, 46
FSYNC_DATASYNC = 1 << 0  # IORING_FSYNC_DATASYNC, in the SQE's fsync_flags
SQE_FIXED_FILE = 1 << 0
REGISTER_FILES = 2
SQE_SIZE = 128  # with IORING_SETUP_SQE128
SQE64_SIZE = 64  # without it
CQE_SIZE = 16
U32_MASK = 0xFFFFFFFF


class _SQOffsets(ctypes.Structure):
    _fields_ = [("head", ctypes.c_uint32), ("tail", ctypes.c_uint32),
                ("ring_mask", ctypes.c_uint32), ("ring_entries", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("dropped", ctypes.c_uint32),
                ("array", ctypes.c_uint32), ("resv1", ctypes.c_uint32),
                ("user_addr", ctypes.c_uint64)]


class _CQOffsets(ctypes.Structure):
    _fields_ = [("head", ctypes.c_uint32), ("tail", ctypes.c_uint32),
                ("ring_mask", ctypes.c_uint32), ("ring_entries", ctypes.c_uint32),
                ("overflow", ctypes.c_uint32), ("cqes", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("resv1", ctypes.c_uint32),
                ("user_addr", ctypes.c_uint64)]


class _Params(ctypes.Structure):
    _fields_ = [("sq_entries", ctypes.c_uint32), ("cq_entries", ctypes.c_uint32),
                ("flags", ctypes.c_uint32), ("sq_thread_cpu", ctypes.c_uint32),
                ("sq_thread_idle", ctypes.c_uint32), ("features", ctypes.c_uint32),
                ("wq_fd", ctypes.c_uint32), ("resv", ctypes.c_uint32 * 3),
                ("sq_off", _SQOffsets), ("cq_off", _CQOffsets)]


_libc = ctypes.CDLL(None, use_errno=True)
# Separate function objects (``libc["syscall"]`` is not cached) with fixed argument types.
_setup = _libc["syscall"]
_setup.argtypes = [ctypes.c_long, ctypes.c_uint, ctypes.POINTER(_Params)]
_setup.restype = ctypes.c_long
_enter = _libc["syscall"]
_enter.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_uint, ctypes.c_uint,
                   ctypes.c_void_p, ctypes.c_size_t]
_enter.restype = ctypes.c_long
_register = _libc["syscall"]
_register.argtypes = [ctypes.c_long, ctypes.c_int, ctypes.c_uint, ctypes.c_void_p,
                      ctypes.c_uint]
_register.restype = ctypes.c_long


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")
    return ret


class Buffer:
    """``size`` bytes of anonymous memory at a fixed ``address`` (``mem``, and ``view`` a
    memoryview of it); `release` unmaps it unless a slice of ``view`` is still held."""

    __slots__ = ("_anchor", "address", "mem", "view")

    def __init__(self, size: int) -> None:
        self.mem = mmap.mmap(-1, size)
        self.view = memoryview(self.mem)
        self._anchor = ctypes.c_char.from_buffer(self.mem)
        #: where the memory starts
        self.address = ctypes.addressof(self._anchor)

    def release(self) -> None:
        self.view.release()
        del self._anchor
        with suppress(BufferError):  # a handler still holds a slice
            self.mem.close()


class Iovecs:
    """A ``struct iovec`` array of (address, length) pairs at ``address``."""

    __slots__ = ("_array", "address")

    def __init__(self, *pairs: tuple[int, int]) -> None:
        self._array = (ctypes.c_uint64 * (2 * len(pairs)))(*(n for p in pairs for n in p))
        self.address = ctypes.addressof(self._array)


class Ring:
    """An io_uring of ``entries`` SQEs set up with ``flags`` (SETUP_*), mapped: ``sqes``
    (SQE i in slot i of the SQ array, ``sqe_size`` bytes each), ``cq`` (the CQ ring of
    ``cq_entries`` CQEs: CQE i at ``cqes_at + (i & cq_mask) * CQE_SIZE``), and the
    kernel's indices ``sq_head``, ``sq_tail``, ``cq_head``, ``cq_tail``: 32-bit cells of
    the shared memory whose ``value`` loads or stores them (one instruction each on
    x86_64; ctypes objects, cheaper on the request path than a property).  `close`
    unmaps it and closes the ring, which cancels its requests."""

    def __init__(self, entries: int, flags: int) -> None:
        self.sqe_size = SQE_SIZE if flags & SETUP_SQE128 else SQE64_SIZE
        params = _Params()
        params.flags = flags
        self.fd = _check(_setup(_NR_IO_URING_SETUP, entries, ctypes.byref(params)),
                         "io_uring_setup")
        self._maps: list[mmap.mmap] = []
        try:
            self._map(params)
        except BaseException:
            self.close()
            raise

    def _map(self, params: _Params) -> None:
        sq, cq = params.sq_off, params.cq_off
        sq_size = sq.array + params.sq_entries * 4
        cq_size = cq.cqes + params.cq_entries * CQE_SIZE
        prot = mmap.PROT_READ | mmap.PROT_WRITE
        flags = mmap.MAP_SHARED | mmap.MAP_POPULATE
        if params.features & FEAT_SINGLE_MMAP:
            sq_map = cq_map = mmap.mmap(self.fd, max(sq_size, cq_size), flags, prot,
                                        offset=OFF_SQ_RING)
            self._maps.append(sq_map)
        else:
            sq_map = mmap.mmap(self.fd, sq_size, flags, prot, offset=OFF_SQ_RING)
            self._maps.append(sq_map)
            cq_map = mmap.mmap(self.fd, cq_size, flags, prot, offset=OFF_CQ_RING)
            self._maps.append(cq_map)
        self.cq_entries = int(params.cq_entries)
        self.sqes = mmap.mmap(self.fd, params.sq_entries * self.sqe_size, flags, prot,
                              offset=OFF_SQES)
        self._maps.append(self.sqes)
        self.cq = cq_map
        self.cqes_at = cq.cqes
        cell = ctypes.c_uint32.from_buffer
        self.sq_head, self.sq_tail = cell(sq_map, sq.head), cell(sq_map, sq.tail)
        self.cq_head, self.cq_tail = cell(cq_map, cq.head), cell(cq_map, cq.tail)
        self.sq_mask = int(cell(sq_map, sq.ring_mask).value)
        self.cq_mask = int(cell(cq_map, cq.ring_mask).value)
        for i in range(params.sq_entries):  # SQ slot i always holds SQE i
            struct.pack_into("=I", sq_map, sq.array + 4 * i, i)

    def register_file(self, fd: int) -> bool:
        """Register ``fd`` as fixed file 0 (no file lookup per SQE); False if refused."""
        fds = (ctypes.c_int * 1)(fd)
        return bool(_register(_NR_IO_URING_REGISTER, self.fd, REGISTER_FILES, fds, 1) == 0)

    def enter(self, to_submit: int, min_complete: int, flags: int) -> int:
        """io_uring_enter(2), the GIL released while it waits: its result, or -errno."""
        ret = int(_enter(_NR_IO_URING_ENTER, self.fd, to_submit, min_complete, flags,
                         None, 0))
        return -ctypes.get_errno() if ret < 0 else ret

    def close(self) -> None:
        """Unmap the ring and close it (cancelling its requests)."""
        for name in ("sq_head", "sq_tail", "cq_head", "cq_tail"):  # they pin the mapping
            if hasattr(self, name):
                delattr(self, name)
        for m in self._maps:
            with suppress(BufferError):
                m.close()
        self._maps.clear()
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
