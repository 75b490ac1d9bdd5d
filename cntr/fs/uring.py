"""FUSE over io_uring for `cntr.fs.session.Session`: one queue per CPU, one thread per queue.

Why: with requests read from ``/dev/fuse``, the thread serving them is woken on whatever
CPU the scheduler picks; on a 2-vCPU VM (Firecracker, cpuidle haltpoll with
``guest_halt_poll_ns=0``: an idle vCPU halts at once and waking it costs a VM exit) a
request round trip costs ~45 us when the requester and serve-fs sit on different CPUs
against ~15 us on the same one.  FUSE over io_uring (Linux 6.14+, ``CONFIG_FUSE_IO_URING``,
module parameter ``fuse.enable_uring=Y``) keeps one queue per possible CPU: a request
issued on CPU N goes to queue N, so a server thread pinned to CPU N is woken where the
requester sleeps.

The protocol (``fs/fuse/dev_uring.c``, ``<linux/fuse.h>``; libfuse's ``lib/fuse_uring.c``
does the same in C):

- the kernel offers ``FUSE_OVER_IO_URING`` (INIT flags bit 41) when the module parameter is
  on.  Granting it makes the kernel *block* every new request after INIT until each queue
  ``0 .. num_possible_cpus() - 1`` has a registered entry: there is no fallback to
  ``/dev/fuse`` once granted, except when a REGISTER command fails (the kernel then clears
  the connection's io_uring state and wakes the waiting requests; `Transport.fall_back`).
  So the rings and their buffers are set up *before* the INIT reply (`Transport.prepare`),
  the flag is granted only if that worked, and the REGISTER commands go out once the INIT
  reply is written (`Transport.start`; before that the kernel answers them with EAGAIN).
- each queue's thread owns an io_uring (``IORING_SETUP_SQE128``: the command's 80-byte area
  holds ``struct fuse_uring_cmd_req {u64 flags; u64 commit_id; u16 qid; u8 pad[6]}``) and
  sends ``IORING_OP_URING_CMD`` SQEs on the /dev/fuse descriptor: ``cmd_op``
  ``FUSE_IO_URING_CMD_REGISTER`` (1) with ``addr`` = an iovec[2] (``len`` 2): the entry's
  header buffer (``struct fuse_uring_req_header``: ``in_out[128]``, ``op_in[128]``,
  ``struct fuse_uring_ent_in_out {u64 flags; u64 commit_id; u32 payload_sz; u32 pad;
  u64 reserved}``, 288 bytes) and its payload buffer (at least ``max(8192, max_write,
  max_pages * PAGE_SIZE)`` bytes, else EINVAL); then ``FUSE_IO_URING_CMD_COMMIT_AND_FETCH``
  (2) with ``commit_id`` answers a request and waits for the next one in the same command.
- a request completes a command with result 0: ``in_out`` holds the fuse_in_header,
  ``op_in`` the per-opcode struct (the request's first argument, possibly empty: LOOKUP's
  name travels in the payload), the payload buffer the other arguments (names, WRITE
  data), ``ring_ent_in_out.payload_sz`` their size and ``commit_id`` the id to commit
  with.  The op struct's size is ``in.len - 40 - payload_sz``; it is copied just in front
  of the payload (which starts one page into the entry's memory), so `Session.answer` gets
  the legacy contiguous body without WRITE data being copied.
- the reply: fuse_out_header in ``in_out`` (``unique`` must match), the out arguments in
  the payload buffer, their size in ``payload_sz``.
- FORGET, BATCH_FORGET and INTERRUPT still come through ``/dev/fuse`` (the kernel's
  ``fuse_io_uring_ops`` keeps the legacy send_forget/send_interrupt), so `Session.run`
  keeps reading it: without spinning once the rings are up, and `SETTLE_S` after each
  wake-up so that forgets come in batches (``rm -rf`` took twice as long with a wake-up,
  the GIL and the session lock taken from the queues' threads, per FORGET).
- commands end with -ENOTCONN (or -ECONNABORTED/-ECANCELED) when the filesystem goes away.

Design: one thread per possible CPU, pinned to it when the process may run there (the
queues of CPUs outside the affinity mask are needed all the same and are served
unpinned), each with its own ring (``SINGLE_ISSUER | DEFER_TASKRUN``: the kernel copies
requests into our buffers only inside our own ``io_uring_enter`` calls; /dev/fuse as a
registered file; `cntr.linux.io_uring.Ring`) and `DEPTH` entries.  The threads wait in
``io_uring_enter`` (`Ring.enter` releases the GIL), and answer under the session's one lock
(`Session` is not reentrant).  `Transport.stop` wakes them through an eventfd every ring
polls; a thread closes its ring itself before it ends, and the entries' buffers are dropped
only after every thread was joined.

Measured on that VM, serving a journaled ext4, best of 5 (``os.stat`` of 5000 missing
names; ``tar -x`` of 1000 small files, then ``rm -rf``; libfuse's C passthrough_ll for
reference): LOOKUP 48 -> 21 us (passthrough_ll 28-34), ``tar -x`` 460 -> 255 ms
(passthrough_ll ~255), ``rm -rf`` ~55-115 -> ~62 ms.

Caveats:
- concurrent requesters on several CPUs are *slower* than over /dev/fuse: two ``tar -x``
  at once 590 -> ~1450 ms, a 6-process metadata stress at half the throughput.  Answering
  is serialized (one lock, one GIL), so the threads only hand the session to each other,
  every handoff a wake-up of a halted vCPU, and ``answer`` runs ~5x slower with the
  interpreter's objects bouncing between the CPUs' caches.  Tried and dropped: the lock as
  a token the rings wait for in the kernel (linked reads of a pipe: 1.1 s for the two
  tars, but 14% slower alone); one thread for every queue, following the requester's CPU
  (0.95 s for the two tars, but 100 us per LOOKUP: the scheduler moves the requester).
- x86_64 (and other TSO machines) only as written: the ring indices are read and written
  with plain 32-bit loads and stores (`cntr.linux.io_uring`), with no explicit barriers.
- ``fuse.enable_uring`` is off by default; without it (or when io_uring is refused:
  ``kernel.io_uring_disabled``, a seccomp filter) the flag is not granted and everything
  goes through ``/dev/fuse`` as before.
- a thread that dies with its ring registered leaves its CPU's queue without entries:
  requests issued on that CPU then wait until the filesystem is unmounted.
- requests in flight when serve-fs is stopped by a signal fail with ECANCELED (ENOTCONN
  over /dev/fuse).
- notifications from serve-fs (none today) would still be written to ``/dev/fuse``.
"""

from __future__ import annotations

import contextlib
import errno
import mmap
import os
import struct
import threading
from collections.abc import Callable

from cntr.fs.log import log
from cntr.fs.protocol import (
    FUSE_MIN_READ_BUFFER,
    IN_HEADER,
    OUT_HEADER,
    U32,
    URING_CMD_COMMIT_AND_FETCH,
    URING_CMD_REGISTER,
    URING_ENT_COMMIT_ID,
    URING_ENT_PAYLOAD_SZ,
    URING_HEADER_SIZE,
    URING_OP_IN,
    Request,
)
from cntr.linux import io_uring
from cntr.linux.io_uring import (
    CQE_SIZE,
    ENTER_GETEVENTS,
    OP_POLL_ADD,
    OP_URING_CMD,
    SETUP_DEFER_TASKRUN,
    SETUP_SINGLE_ISSUER,
    SETUP_SQE128,
    SQE_FIXED_FILE,
    SQE_SIZE,
    U32_MASK,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Protocol
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal

    Protocol = object  # typing costs ~3.5 ms to import: Served is only a type


class Served(Protocol):
    """What the transport needs of the session it carries requests for
    (`cntr.fs.session.Session`)."""

    spin_ns: int
    settle_s: float
    lock: threading.Lock

    def answer(self, header: bytes | bytearray | memoryview, body: memoryview,
               req: Request) -> tuple[int, bytes | None] | None:
        """(0 or -errno, reply payload) for one request, None for no reply."""

    def prune_if_due(self) -> None:
        """Ask the kernel to forget inodes past the table's bound, if it is past it."""


#: entries per queue: one being answered, one already fetched behind it
DEPTH = 2
#: `Session.settle_s` while the rings serve (/dev/fuse only brings forgets then)
SETTLE_S = 0.02
#: where an entry's payload buffer starts in its memory (the op struct is copied in front)
_PAYLOAD_AT = mmap.PAGESIZE
_POLL_TAG = 0xFFFFFFFFFFFFFFFF
_POLLIN = 0x001  # io_uring's poll32_events
#: command results that mean the connection (or the ring) is going away
_GONE = frozenset((errno.ENOTCONN, errno.ECONNABORTED, errno.ECANCELED, errno.ENODEV))
#: asynchronous signals stay with the main thread (its poll wakes on them)
_SYNC_SIGNALS = frozenset((signal.SIGSEGV, signal.SIGBUS, signal.SIGFPE, signal.SIGILL,
                           signal.SIGABRT, signal.SIGTRAP))

# opcode, flags, ioprio, fd, cmd_op, pad, addr, len, op flags, user_data, buf_index,
# personality, file_index, then fuse_uring_cmd_req (flags, commit_id, qid) and padding
_SQE = struct.Struct("=BBHiIIQIIQHHiQQH62x")
_CQE = struct.Struct("=QiI")
_IN_HEAD = struct.Struct("=IIQ")  # fuse_in_header's len, opcode, unique
_ENT_IN = struct.Struct("=QI")  # commit_id, payload_sz
_EVENT = struct.pack("=Q", 1)


def possible_cpus() -> list[int]:
    """The kernel's possible CPUs (``/sys/devices/system/cpu/possible``, e.g. ``0-3``)."""
    try:
        with open("/sys/devices/system/cpu/possible", encoding="ascii") as f:
            text = f.read().strip()
    except OSError:
        return sorted(os.sched_getaffinity(0))
    cpus: list[int] = []
    for part in text.split(","):
        first, _, last = part.partition("-")
        cpus.extend(range(int(first), int(last or first) + 1))
    return cpus


def payload_size(max_write: int, max_pages: int) -> int:
    """The payload buffer the kernel requires (``fuse_uring_create``): at least
    ``max(FUSE_MIN_READ_BUFFER, max_write, max_pages * PAGE_SIZE)``."""
    return max(FUSE_MIN_READ_BUFFER, max_write, max_pages * mmap.PAGESIZE)


class _Entry:
    """One ring entry: header and payload buffers in one anonymous mapping, payload at
    `_PAYLOAD_AT`, and the iovec[2] that describes them to the kernel."""

    __slots__ = ("alive", "buffer", "cmd", "index", "iov", "iov_at", "mem", "view")

    def __init__(self, index: int, size: int) -> None:
        self.index = index
        self.buffer = io_uring.Buffer(_PAYLOAD_AT + size)
        self.mem = self.buffer.mem
        self.view = self.buffer.view
        base = self.buffer.address
        self.iov = io_uring.Iovecs((base, URING_HEADER_SIZE), (base + _PAYLOAD_AT, size))
        self.iov_at = self.iov.address
        self.cmd = URING_CMD_REGISTER
        self.alive = True

    def release(self) -> None:
        self.buffer.release()


class _Queue:
    """Queue ``qid``: its ring, its entries and the thread serving them."""

    def __init__(self, transport: Transport, qid: int, cpu: int | None) -> None:
        self.transport = transport
        self.qid = qid
        self.cpu = cpu
        self.entries: list[_Entry] = []
        self.error: BaseException | None = None
        self.set_up = threading.Event()
        self.ring: io_uring.Ring | None = None
        self.fuse_fd = transport.fd
        self.sqe_flags = 0
        self.lock = transport.lock
        self.answer: Callable[[memoryview, memoryview, Request], tuple[
            int, bytes | None] | None] = transport.session.answer
        self.prune_if_due = transport.session.prune_if_due
        #: the requester of the request being answered (each queue fills its own)
        self.req = Request()
        self.payload = transport.payload
        self.thread = threading.Thread(target=self._main, name=f"cntr-fuse-ring-{qid}",
                                       daemon=True)

    # --- setup (before the INIT reply) ------------------------------------------------
    def _main(self) -> None:
        try:
            self._setup()
        except BaseException as exc:  # noqa: BLE001  # reported to prepare(), which logs it
            self.error = exc
        finally:
            self.set_up.set()
        try:
            if self.error is None:
                self.transport.go.wait()
                if not self.transport.stopping:
                    self._serve()
        except BaseException as exc:  # noqa: BLE001  # the thread's end: log it
            log.error("serve-fs: io_uring queue %d failed: %r", self.qid, exc)
        finally:
            self._close()

    def _setup(self) -> None:
        signal.pthread_sigmask(signal.SIG_BLOCK, signal.valid_signals() - _SYNC_SIGNALS)
        if self.cpu is not None:
            try:
                os.sched_setaffinity(0, {self.cpu})
            except OSError as exc:  # offline, or outside our cpuset: serve it unpinned
                log.debug("serve-fs: io_uring queue %d not pinned: %s", self.qid, exc)
        depth = self.transport.depth
        self.ring = ring = io_uring.Ring(
            depth + 1, SETUP_SQE128 | SETUP_SINGLE_ISSUER | SETUP_DEFER_TASKRUN)
        self.sqes, self.sq_mask = ring.sqes, ring.sq_mask
        self.sq_ktail = ring.sq_tail
        self.sq_tail = ring.sq_tail.value
        if ring.register_file(self.fuse_fd):  # no file lookup per command
            self.fuse_fd, self.sqe_flags = 0, SQE_FIXED_FILE
        self.entries = [_Entry(i, self.transport.payload) for i in range(depth)]

    def _close(self) -> None:
        """Close the ring (cancelling its commands); the entries' memory stays with the
        transport until every thread was joined."""
        if hasattr(self, "sq_ktail"):
            del self.sq_ktail  # pins the ring's mapping
        if self.ring is not None:
            self.ring.close()
            self.ring = None

    # --- serving ----------------------------------------------------------------------
    def _push(self, entry: _Entry, cmd: int, commit_id: int) -> None:
        """Queue ``cmd`` for ``entry`` (submitted by the next io_uring_enter)."""
        entry.cmd = cmd
        tail = self.sq_tail
        _SQE.pack_into(self.sqes, (tail & self.sq_mask) * SQE_SIZE, OP_URING_CMD,
                       self.sqe_flags, 0, self.fuse_fd, cmd, 0, entry.iov_at, 2, 0,
                       entry.index, 0, 0, 0, 0, commit_id, self.qid)
        self.sq_tail = tail = (tail + 1) & U32_MASK
        self.sq_ktail.value = tail  # after the SQE: stores are not reordered on x86_64

    def _push_poll(self) -> None:
        """Queue a poll on the transport's eventfd: its completion means stop."""
        tail = self.sq_tail
        _SQE.pack_into(self.sqes, (tail & self.sq_mask) * SQE_SIZE, OP_POLL_ADD, 0, 0,
                       self.transport.event_fd, 0, 0, 0, 0, _POLLIN, _POLL_TAG,
                       0, 0, 0, 0, 0, 0)
        self.sq_tail = tail = (tail + 1) & U32_MASK
        self.sq_ktail.value = tail

    def _serve(self) -> None:
        transport = self.transport
        for entry in self.entries:
            self._push(entry, URING_CMD_REGISTER, 0)
        self._push_poll()
        ring = self.ring
        assert ring is not None  # set up by _setup
        enter = ring.enter
        cq_map = ring.cq
        cqes_at, cq_mask = ring.cqes_at, ring.cq_mask
        sq_khead, cq_khead, cq_ktail = ring.sq_head, ring.cq_head, ring.cq_tail
        entries = self.entries
        unpack_cqe = _CQE.unpack_from
        serve = self._answer
        live = len(entries)
        while live:
            pending = (self.sq_tail - sq_khead.value) & U32_MASK
            ret = enter(pending, 1, ENTER_GETEVENTS)
            if ret < 0 and -ret not in (errno.EINTR, errno.EAGAIN, errno.EBUSY):
                raise OSError(-ret, f"io_uring_enter: {os.strerror(-ret)}")
            head, tail = cq_khead.value, cq_ktail.value
            while head != tail:
                user_data, res, _ = unpack_cqe(cq_map, cqes_at + (head & cq_mask) * CQE_SIZE)
                head = (head + 1) & U32_MASK
                if user_data == _POLL_TAG:
                    live = 0  # Transport.stop
                    continue
                entry = entries[user_data]
                if res == 0:
                    serve(entry)
                elif not self._failed(entry, -res):
                    entry.alive = False
                    live -= 1
            cq_khead.value = head
            if transport.stopping:
                break

    def _failed(self, entry: _Entry, err: int) -> bool:
        """A command ended with ``err``: True if it was sent again."""
        if err in (errno.EAGAIN, errno.EINTR):
            self._push(entry, entry.cmd, 0)  # REGISTER before INIT was processed
            return True
        if err in _GONE:
            log.debug("serve-fs: io_uring queue %d: %s", self.qid, os.strerror(err))
            return False
        if entry.cmd == URING_CMD_COMMIT_AND_FETCH and not self.transport.stopping:
            # The request was gone (commit id unknown): the kernel dropped our entry with
            # it, register the buffers again as a new one.
            log.debug("serve-fs: io_uring queue %d: commit failed: %s", self.qid,
                      os.strerror(err))
            self._push(entry, URING_CMD_REGISTER, 0)
            return True
        log.debug("serve-fs: io_uring queue %d: register failed: %s", self.qid,
                  os.strerror(err))
        self.transport.fall_back()
        return False

    def _answer(self, entry: _Entry) -> None:
        """Serve the request in ``entry`` and queue its commit."""
        mem = entry.mem
        length, _opcode, unique = _IN_HEAD.unpack_from(mem)
        commit_id, size = _ENT_IN.unpack_from(mem, URING_ENT_COMMIT_ID)
        op_size = length - IN_HEADER.size - size
        result: tuple[int, bytes | None] | None
        if 0 <= op_size <= URING_OP_IN and size <= self.payload:
            # The op struct goes right in front of the payload: the body Session.answer
            # takes (what follows the fuse_in_header on /dev/fuse), without a copy.
            start = _PAYLOAD_AT - op_size
            if op_size:
                mem[start:_PAYLOAD_AT] = mem[URING_OP_IN:URING_OP_IN + op_size]
            view = entry.view  # answer reads the fuse_in_header at its start
            with self.lock:
                result = self.answer(view, view[start:_PAYLOAD_AT + size], self.req)
                # before the reply is committed: the prune blocks on nothing it waits for
                self.prune_if_due()
        else:
            log.error("serve-fs: io_uring request of %d bytes with %d of payload", length,
                      size)
            result = -errno.EIO, None
        n = 0
        if result is None:  # no reply on /dev/fuse (FORGET): none come this way
            err = 0
        else:
            err, reply = result
            if reply and not err:
                n = len(reply)
                if n > self.payload:
                    err, n = -errno.EIO, 0
                else:
                    mem[_PAYLOAD_AT:_PAYLOAD_AT + n] = reply
        OUT_HEADER.pack_into(mem, 0, OUT_HEADER.size + n, err, unique)
        U32.pack_into(mem, URING_ENT_PAYLOAD_SZ, n)
        self._push(entry, URING_CMD_COMMIT_AND_FETCH, commit_id)


class Transport:
    """The rings of one `Session`: `prepare` before the INIT reply (grant
    `cntr.fs.protocol.OVER_IO_URING` only if it returns True), `start` once the reply is written,
    `stop` when the session ends."""

    def __init__(self, session: Served, fd: int, *, max_write: int,
                 max_pages: int, depth: int = DEPTH) -> None:
        self.session = session
        self.fd = fd
        self.lock = session.lock
        self.depth = depth
        self.payload = payload_size(max_write, max_pages)
        self.go = threading.Event()
        self.stopping = False
        self.event_fd = -1
        self.queues: list[_Queue] = []

    def prepare(self, timeout: float = 10.0) -> bool:
        """Create every queue's ring and buffers (one thread each); False (and nothing left
        behind) if any of it failed."""
        allowed = os.sched_getaffinity(0)
        try:
            self.event_fd = os.eventfd(0, os.EFD_CLOEXEC | os.EFD_NONBLOCK)
            for qid in range(len(possible_cpus())):
                self.queues.append(_Queue(self, qid, qid if qid in allowed else None))
            for queue in self.queues:
                queue.thread.start()
        except (OSError, RuntimeError) as exc:
            log.debug("serve-fs: no io_uring: %s", exc)
            self.stop()
            return False
        for queue in self.queues:
            if not queue.set_up.wait(timeout):
                queue.error = TimeoutError("ring setup timed out")
            if queue.error is not None:
                log.debug("serve-fs: no io_uring (queue %d): %s", queue.qid, queue.error)
                self.stop()
                return False
        log.debug("serve-fs: io_uring: %d queues of %d entries, %d bytes of payload",
                  len(self.queues), self.depth, self.payload)
        return True

    def start(self) -> None:
        """Register the entries (the INIT reply was written) and quiet the session's
        /dev/fuse loop: no spinning, forgets read in batches."""
        session = self.session
        session.spin_ns = 0
        session.settle_s = SETTLE_S
        self.go.set()

    def fall_back(self) -> None:
        """A REGISTER failed: the kernel went back to /dev/fuse (it clears the connection's
        io_uring state and wakes the requests waiting for the ring): serve it as before."""
        session = self.session
        session.spin_ns = type(session).spin_ns
        session.settle_s = type(session).settle_s

    def stop(self) -> None:
        """Wake and join every queue's thread; their rings are closed when this returns."""
        self.stopping = True
        self.go.set()
        if self.event_fd >= 0:
            with contextlib.suppress(OSError):
                os.write(self.event_fd, _EVENT)
        for queue in self.queues:
            if queue.thread.ident is not None:
                queue.thread.join()
        for queue in self.queues:
            for entry in queue.entries:
                entry.release()
            queue.entries = []
        self.queues = []
        if self.event_fd >= 0:
            os.close(self.event_fd)
            self.event_fd = -1
