"""FSYNC and FSYNCDIR answered through an io_uring of the reading thread.

An fsync(2) takes ~700 us on this machine's disk; answered inline it holds up every other
requester that long, and handed to a worker thread (`cntr.fs.workers`) it costs a thread
wake-up and the GIL taken back twice (~50-100 us per request).  Here the reading thread
queues an IORING_OP_FSYNC (IORING_FSYNC_DATASYNC for fdatasync) on a ring of its own and
goes back to reading: the kernel runs it on one of its io-wq threads, and the request
loop (`cntr.fs.session.Session._read_loop`) waits on ``/dev/fuse`` and on the ring's fd
together (poll(2): POLLIN when a completion is there; `ready` looks at the CQ ring in
memory, no syscall), and writes each reply when its completion is reaped (`reap`).  No
Python thread is involved, so nothing waits for the GIL.  The loop does not spin while
fsyncs are out (`cntr.fs.session.Session._wait`: measured, it cost CPU and won nothing).

The descriptor is still duplicated (``dup(2)``; FSYNCDIR opens the directory, as the
handler would): io_uring looks a request's file up when an io-wq thread issues it, not
when it is submitted (measured: an fsync submitted on a file whose number was then made a
pipe's with dup2 failed with EINVAL 20 times out of 20), and the kernel may RELEASE the
file meanwhile (its requester was killed), after which a later open may reuse its number.
The duplicate is closed when the completion is reaped.

The reply is written by the reading thread, not by a write linked to the fsync
(IOSQE_IO_LINK, which the io-wq thread would run right after it, sparing the reading
thread a wake-up): a link breaks only on a request the kernel marks failed, and a failed
IORING_OP_FSYNC is not (measured on 6.18: the fsync of a pipe completed with -EINVAL, its
linked write ran anyway, and with IOSQE_CQE_SKIP_SUCCESS the failure posted no CQE at
all), so the requester would have been told its failed fsync succeeded.

Requests go to the ring only while fewer than its CQ size are out (more would overflow
it): the others go where they would without it (`cntr.fs.workers`, or inline).
`setup` returns None when the kernel refuses a ring (``kernel.io_uring_disabled``, a
seccomp filter, an old kernel): the workers then answer these requests as before.

Caveats:
- FALLOCATE and COPY_FILE_RANGE stay with the workers: copy_file_range has no io_uring
  operation, and a fallocate is followed by a check of the requester's capabilities
  (`Passthrough.fallocate`), which the core does not offer apart from it.
- FUSE over io_uring (`cntr.fs.uring`) answers fsync on its queue threads, as before.
- these requests do not go through `cntr.fs.session.Session.answer`: the request loop
  counts them itself (``CNTR_SERVE_FS_COUNTS``), and ``--debug`` logs no line for them.
"""

from __future__ import annotations

import errno
import os
import struct

from cntr.fs.log import log
from cntr.fs.protocol import (
    FSYNC,
    FSYNC_FDATASYNC,
    FSYNC_IN,
    FSYNCDIR,
    IN_HEADER,
    OUT_HEADER,
    U32,
    U64,
)
from cntr.linux.io_uring import CQE_SIZE, FSYNC_DATASYNC, OP_FSYNC, U32_MASK, Ring

OPCODES = frozenset({FSYNC, FSYNCDIR})
"""The opcodes answered through the ring."""

ENTRIES = 64
"""SQ entries of the ring (its CQ has twice as many: the requests out at most)."""

_IN_SIZE = IN_HEADER.size
_OUT_SIZE = OUT_HEADER.size
#: struct io_uring_sqe (64 bytes): opcode, flags, ioprio, fd, off, addr, len,
#: fsync_flags, user_data, buf_index, personality, splice_fd_in, addr3, pad
_SQE = struct.Struct("=BBHiQQIIQHHiQQ")
_CQE = struct.Struct("=QiI")  # user_data, res, flags

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    OpenDir = Callable[[int], int]


class Completions:
    """The ring of one session: `take` (on the reading thread) queues a request, `reap`
    (on the reading thread too) writes the replies of those done to ``fuse_fd``; `ready`
    says whether there are any, ``fd`` is what to poll for them.  Nothing here is
    thread-safe: the reading thread alone uses it."""

    def __init__(self, ring: Ring, fuse_fd: int, open_dir: OpenDir) -> None:
        self.ring = ring
        #: the ring's descriptor: POLLIN when a completion is there
        self.fd = ring.fd
        self._fuse_fd = fuse_fd
        #: a new descriptor of an open directory's handle (`Passthrough.open_dir_handle`)
        self.open_dir = open_dir
        #: user_data -> (the request's unique, the descriptor its fsync was queued on)
        self.pending: dict[int, tuple[int, int]] = {}
        self._limit = ring.cq_entries
        self._next = 0
        self._cq_head, self._cq_tail = ring.cq_head, ring.cq_tail

    @classmethod
    def setup(cls, fuse_fd: int, open_dir: OpenDir) -> Completions | None:
        """A ring for the session of ``fuse_fd``; None (and a log line) if the kernel
        refuses one."""
        try:
            ring = Ring(ENTRIES, 0)
        except OSError as exc:
            log.info("serve-fs: no io_uring for fsync (%s): worker threads answer it",
                     os.strerror(exc.errno or errno.EIO))
            return None
        return cls(ring, fuse_fd, open_dir)

    def take(self, buf: bytearray, n: int) -> bool:
        """Whether the request of ``n`` bytes in ``buf`` went to the ring, which then
        answers it; False: answer it elsewhere (not one of `OPCODES`, the ring full, a
        handle that names no descriptor: the handler gives the error)."""
        opcode = U32.unpack_from(buf, 4)[0]
        if opcode not in OPCODES or len(self.pending) >= self._limit or n < _IN_SIZE + 8:
            return False
        fh, flags = FSYNC_IN.unpack_from(buf, _IN_SIZE)
        try:
            fd = self.open_dir(fh) if opcode == FSYNCDIR else os.dup(fh)
        except OSError:
            return False
        ring = self.ring
        tag = self._next
        self._next = (tag + 1) & 0xFFFFFFFFFFFFFFFF
        tail = ring.sq_tail.value
        _SQE.pack_into(ring.sqes, (tail & ring.sq_mask) * ring.sqe_size, OP_FSYNC, 0, 0, fd,
                       0, 0, 0, FSYNC_DATASYNC if flags & FSYNC_FDATASYNC else 0, tag,
                       0, 0, 0, 0, 0)
        ring.sq_tail.value = (tail + 1) & U32_MASK  # after the SQE: x86_64 keeps the order
        submitted = ring.enter(1, 0, 0)
        if submitted != 1:  # not consumed (EAGAIN, EBUSY, ...): take it back
            ring.sq_tail.value = tail
            os.close(fd)
            log.debug("serve-fs: io_uring_enter: %s", os.strerror(-submitted or errno.EIO))
            return False
        self.pending[tag] = (U64.unpack_from(buf, 8)[0], fd)
        return True

    def ready(self) -> bool:
        """Whether a completion waits to be reaped (a look at the CQ ring: no syscall)."""
        return self._cq_head.value != self._cq_tail.value

    def reap(self) -> None:
        """Write the reply of every request completed: 0 or the fsync's -errno."""
        ring = self.ring
        cq, at, mask = ring.cq, ring.cqes_at, ring.cq_mask
        head, tail = self._cq_head.value, self._cq_tail.value
        pending = self.pending
        pack = OUT_HEADER.pack
        while head != tail:
            tag, res, _flags = _CQE.unpack_from(cq, at + (head & mask) * CQE_SIZE)
            head = (head + 1) & U32_MASK
            self._cq_head.value = head  # the slot is free once read
            entry = pending.pop(tag, None)
            if entry is None:
                continue
            unique, fd = entry
            os.close(fd)
            try:
                os.write(self._fuse_fd, pack(_OUT_SIZE, min(res, 0), unique))
            except OSError as exc:
                # ENOENT: interrupted, nobody waits; ENODEV: unmounted meanwhile.
                if exc.errno not in (errno.ENOENT, errno.ENODEV):
                    log.error("serve-fs: writing an fsync's reply: %s", exc)

    def close(self) -> None:
        """Close the ring (cancelling what it has not started) and the descriptors of
        the requests still out: their replies have nobody to go to."""
        del self._cq_head, self._cq_tail  # they pin the ring's mapping
        self.ring.close()
        for _unique, fd in self.pending.values():
            os.close(fd)
        self.pending.clear()

