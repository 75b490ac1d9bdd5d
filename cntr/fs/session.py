# ruff: noqa: BLE001  # a request that fails in any way is answered, never dropped
"""serve-fs's own FUSE session: the dispatcher, and the ``/dev/fuse`` read loop.

libfuse 3.14 (what pyfuse3 is built on here) cannot negotiate the kernel features that
matter most for a passthrough of the host's files, so serve-fs speaks the kernel's wire
protocol (`cntr.fs.protocol`) itself.  `Session.answer` is the one dispatcher of both
transports (this module's read loop and `cntr.fs.uring`): the fuse_in_header unpacked
once, a table opcode -> (parser, gated) built once, the mount-namespace gate
(`cntr.fs.gate`) checked once for gated opcodes, the request's arguments parsed and
handed to the handler core (`cntr.fs.passthrough.Passthrough`), whose reply payload goes
out as it is; ``OSError`` becomes ``-errno`` here and nowhere else, anything unexpected
EIO and a log line.

What INIT asks the kernel for (and what the core does with it, see its docstring):
FUSE_PASSTHROUGH (backing files: the kernel reads and writes regular files itself),
``FOPEN_CACHE_DIR`` (directory listings stay cached between opens while the directory's
mtime is unchanged and the listing is younger than the entry timeout, so a second walk of
a tree soon after sends OPENDIR/RELEASEDIR but no READDIRPLUS; a later one, READDIRPLUS
rather than a LOOKUP per name: `Passthrough.opendir`), ``CACHE_SYMLINKS``, ``max_pages``
256 (1 MiB requests for what still goes through serve-fs), ``HANDLE_KILLPRIV_V2``,
``DONT_MASK``, ``SETXATTR_EXT``, ``HAS_IOCTL_DIR``, ``EXPORT_SUPPORT``, ``POSIX_ACL``
(with ``acl``), ``PARALLEL_DIROPS``, ``ATOMIC_O_TRUNC``, ``DO_READDIRPLUS``, and FUSE over
io_uring with ``uring``.

Requests are served one at a time by one thread; before sleeping in poll(2) the loop
keeps polling without a timeout (yielding the CPU between polls) for ``spin_ns``: a
requester that sends its next request within that time finds serve-fs awake.  Waking a
sleeping server on another CPU costs an inter-processor interrupt, which on a VM is a VM
exit: measured 60-90 us per request on a 2-vCPU Firecracker guest against ~8 us when both
sides share a CPU, i.e. most of the cost of a request.  Spinning keeps that wake-up out of
bursts of requests (untar, create: -30 to -40 % wall time there; neutral for read, delete
and large writes) for at most ``spin_ns`` of CPU after each burst; 0 turns it off.

Where serve-fs runs is most of what a round trip costs, and one thread cannot follow the
requester.  Measured on that guest, the CREATE of a new file (its name already looked up)
in a directory just written to: 60 us with serve-fs and the requester pinned to one CPU,
87-127 us on two; C passthrough_ll 45 us on one CPU, 116 us on two and 64-88 us unpinned,
its idle threads being woken where the requester runs.  Tried and dropped: serve-fs pinned
to one CPU with the requester free (127-158 us: the requester ends up on the other CPU),
2-3 threads blocked in read(2) under one lock, no spinning (146-196 us, one such thread
257 us; the workers' module gives the same design under concurrency), and
RELEASE answered only once /dev/fuse had been idle for 10-25 us, so that the next
synchronous request never waits behind it (no change beyond the noise).  FUSE over
io_uring (`cntr.fs.uring`) is what gets the placement: its queues are per CPU.

The inode table stays within its bound (`cntr.fs.inodes`): once a reply has gone out and
the table is past it, `prune` asks the kernel to forget the oldest inodes
(FUSE_NOTIFY_PRUNE); their FORGETs take them out.  The kernel evicts them inside that
write(2), and an unused inode has nothing for serve-fs to answer first: serve-fs never asks
for FUSE_WRITEBACK_CACHE, and without it the kernel writes a file's dirty pages back
synchronously at close and munmap (``fuse_flush``, ``fuse_vma_close``), before the inode
can be unused.

With ``uring`` (``CNTR_SERVE_FS_LOOP=uring``) and the kernel's consent, requests come
over FUSE over io_uring instead, one pinned thread per CPU (`cntr.fs.uring`), answered
under `Session.lock`; ``/dev/fuse`` then only brings forgets and interrupts, read in
batches (``settle_s``).  The session ends when the filesystem is unmounted (ENODEV), at
FUSE_DESTROY, or when `stop` is called (signal handlers).
"""

from __future__ import annotations

import _thread
import errno
import os
import select
import struct
import time

from cntr.errors import suppress
from cntr.fs.completions import OPCODES, Completions
from cntr.fs.gate import MountNsGate
from cntr.fs.inodes import InodeT
from cntr.fs.log import log
from cntr.fs.passthrough import Passthrough
from cntr.fs.protocol import (
    ACCESS,
    ASYNC_DIO,
    ASYNC_READ,
    ATOMIC_O_TRUNC,
    AUTO_INVAL_DATA,
    BATCH_FORGET,
    BIG_WRITES,
    BUFFER_SIZE,
    CACHE_SYMLINKS,
    COPY_FILE_RANGE,
    COPY_FILE_RANGE_64,
    COPY_FILE_RANGE_IN,
    CREATE,
    CREATE_IN,
    DESTROY,
    DO_READDIRPLUS,
    DONT_MASK,
    EXPORT_SUPPORT,
    FALLOCATE,
    FALLOCATE_IN,
    FATTR_ATIME_NOW,
    FATTR_FH,
    FATTR_MTIME_NOW,
    FLUSH,
    FORGET,
    FORGET_ONE,
    FSYNC,
    FSYNC_FDATASYNC,
    FSYNC_IN,
    FSYNCDIR,
    FUSE_OPEN_KILL_SUIDGID,
    FUSE_SETXATTR_ACL_KILL_SGID,
    FUSE_WRITE_KILL_SUIDGID,
    GETATTR,
    GETXATTR,
    HANDLE_KILLPRIV_V2,
    HAS_IOCTL_DIR,
    IN_HEADER,
    IN_HEADER_ARGS,
    INIT,
    INIT_EXT,
    INIT_IN,
    INIT_OUT,
    INTERRUPT,
    IOCTL,
    IOCTL_IN,
    KERNEL_MAJOR,
    KERNEL_MINOR,
    LINK,
    LISTXATTR,
    LOOKUP,
    LSEEK,
    LSEEK_IN,
    MAX_PAGES,
    MAX_PAGES_WANTED,
    MAX_STACK_DEPTH,
    MAX_WRITE,
    MKDIR,
    MKNOD,
    MKNOD_IN,
    NOTIFY_INVAL_INODE,
    NOTIFY_INVAL_INODE_OUT,
    NOTIFY_PRUNE,
    NOTIFY_PRUNE_OUT,
    NOTIFY_REPLY,
    OPEN,
    OPENDIR,
    OUT_HEADER,
    OVER_IO_URING,
    PARALLEL_DIROPS,
    PASSTHROUGH,
    POLL,
    POLL_IN,
    POSIX_ACL,
    READ,
    READ_IN,
    READDIRPLUS,
    READLINK,
    RELEASE,
    RELEASE_IN,
    RELEASEDIR,
    REMOVEXATTR,
    RENAME,
    RENAME2,
    RENAME2_IN,
    RMDIR,
    SETATTR,
    SETATTR_IN,
    SETXATTR,
    SETXATTR_EXT,
    SETXATTR_EXT_IN,
    SETXATTR_IN_SIZE,
    STATFS,
    STATX,
    STATX_IN,
    SYMLINK,
    TMPFILE,
    U32,
    U32_PAIR,
    U64,
    UNLINK,
    WRITE,
    WRITE_IN,
    WRITE_IN_SIZE,
    Request,
)
from cntr.fs.workers import Workers

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

    from cntr.fs.uring import Transport

RING_OPCODES = frozenset(op & 0xFF for op in OPCODES)
"""The low bytes of `cntr.fs.completions.OPCODES` (what the request loop looks at)."""

_NS = 1_000_000_000
_IN_SIZE = IN_HEADER.size
_in_header_args = IN_HEADER_ARGS.unpack_from
_OUT_SIZE = OUT_HEADER.size

if TYPE_CHECKING:
    Handler = Callable[[InodeT, Request, memoryview], bytes | None]
    """A request's parser: node id, requester and body (what follows the fuse_in_header)
    in, the reply payload out (None: an empty reply)."""
Reply = tuple[int, bytes | None] | None
"""What `Session.answer` returns: (0 or -errno, payload), None for no reply at all."""


def _name(body: memoryview, start: int = 0) -> bytes:
    """The NUL-terminated name at ``start``."""
    return body[start:].tobytes().partition(b"\0")[0]


def _two_names(body: memoryview, start: int) -> tuple[bytes, bytes]:
    raw = body[start:].tobytes()
    first, _, rest = raw.partition(b"\0")
    second, _, _ = rest.partition(b"\0")
    return first, second


def _sized(value: bytes, size: int) -> bytes:
    """A getxattr/listxattr reply: the size asked for 0, ERANGE when too small."""
    if size == 0:
        return U32_PAIR.pack(len(value), 0)
    if len(value) > size:
        raise OSError(errno.ERANGE, "buffer too small")
    return value


class Session:
    """One FUSE connection (``fd``, a /dev/fuse descriptor already mounted) answered by
    ``fs``; ``gate`` (if any) admits the gated requests.  `run` returns when the
    filesystem goes away or `stop` is called."""

    #: how long to poll /dev/fuse before sleeping (module docstring)
    spin_ns = 100_000
    #: once woken, how long to let requests pile up before reading them (io_uring mode:
    #: only forgets come this way then, and one BATCH_FORGET beats a wake-up per FORGET)
    settle_s = 0.0

    def __init__(self, fs: Passthrough, fd: int, *, gate: MountNsGate | None = None,
                 wakeup_fd: int | None = None, passthrough: bool = True,
                 uring: bool = False) -> None:
        self.fs = fs
        self.fd = fd
        self.gate = gate
        self.wakeup_fd = wakeup_fd
        self.want_passthrough = passthrough
        #: ask for FUSE over io_uring (granted when the kernel offers it)
        self.want_uring = uring
        #: held while a request is answered (the io_uring threads answer too)
        self.lock = _thread.allocate_lock()  # threading's Lock, without threading
        #: the io_uring transport, once INIT granted it; started after the INIT reply
        self._uring: Transport | None = None
        self._uring_start: Callable[[], None] | None = None
        #: set by INIT: the kernel accepted FUSE_PASSTHROUGH
        self.passthrough = False
        self.stopping = False
        #: where requests that can block for long go (`cntr.fs.workers`; None: inline)
        self.workers: Workers | None = None
        #: the io_uring FSYNC and FSYNCDIR go to first (`cntr.fs.completions`; None: none)
        self.completions: Completions | None = None
        #: set by INIT: the kernel sends the extended fuse_setxattr_in
        self._setxattr_ext = False
        self._poller: select.poll | None = None
        #: opcode -> (parser, gated): the gate runs before gated ones
        self._table: dict[int, tuple[Handler, bool]] = {
            LOOKUP: (self._lookup, True), GETATTR: (self._getattr, True),
            SETATTR: (self._setattr, True), READLINK: (self._readlink, True),
            SYMLINK: (self._symlink, True), MKNOD: (self._mknod, True),
            MKDIR: (self._mkdir, True), UNLINK: (self._unlink, True),
            RMDIR: (self._rmdir, True), RENAME: (self._rename, True),
            RENAME2: (self._rename2, True), LINK: (self._link, True),
            OPEN: (self._open, True), CREATE: (self._create, True),
            TMPFILE: (self._tmpfile, True), STATFS: (self._statfs, True),
            ACCESS: (self._access, True), POLL: (self._poll, True),
            OPENDIR: (self._opendir, True), STATX: (self._statx, True),
            GETXATTR: (self._getxattr, True), SETXATTR: (self._setxattr, True),
            LISTXATTR: (self._listxattr, True), REMOVEXATTR: (self._removexattr, True),
            # on a file handle only an admitted open returns, or the kernel's own
            READ: (self._read, False), WRITE: (self._write, False),
            FLUSH: (self._flush, False), RELEASE: (self._release, False),
            FSYNC: (self._fsync, False), READDIRPLUS: (self._readdirplus, False),
            RELEASEDIR: (self._releasedir, False), FSYNCDIR: (self._fsyncdir, False),
            FALLOCATE: (self._fallocate, False), LSEEK: (self._lseek, False),
            IOCTL: (self._ioctl, False), COPY_FILE_RANGE: (self._copy_file_range, False),
            COPY_FILE_RANGE_64: (self._copy_file_range_64, False),
            INIT: (self._init, False), DESTROY: (self._destroy, False),
        }
        #: opcode -> requests answered, when counting (`cntr.fs.server`: CNTR_SERVE_FS_COUNTS)
        self.counts: dict[int, int] | None = None
        #: requests that take no reply
        self._silent: dict[int, Handler | None] = {
            FORGET: self._forget, BATCH_FORGET: self._batch_forget,
            INTERRUPT: None, NOTIFY_REPLY: None}

    def stop(self) -> None:
        """End `run` at its next wait (safe from a signal handler)."""
        self.stopping = True

    # --- the dispatcher ------------------------------------------------------------------
    def answer(self, header: bytes | bytearray | memoryview, body: memoryview,
               req: Request) -> Reply:
        """Serve one request: ``(0 or -errno, reply payload)``, or None for a request that
        takes no reply (FORGET, INTERRUPT).  ``header`` starts with the fuse_in_header,
        ``body`` is what follows it; ``req`` is filled with its requester.  Not
        reentrant: one request at a time (`lock`)."""
        opcode, nodeid, req.uid, req.gid, req.pid = _in_header_args(header)
        if self.counts is not None:
            self.counts[opcode] = self.counts.get(opcode, 0) + 1
        entry = self._table.get(opcode)
        if entry is None:
            if opcode in self._silent:
                quiet = self._silent[opcode]
                if quiet is not None:
                    try:
                        quiet(nodeid, req, body)
                    except Exception as exc:  # no reply to carry it
                        log.error("serve-fs: request %d failed: %r", opcode, exc)
                return None
            return -errno.ENOSYS, None
        handler, gated = entry
        try:
            if gated and self.gate is not None:
                self.gate.check(req.pid)
            return 0, handler(nodeid, req, body)
        except OSError as exc:
            return -(exc.errno or errno.EIO), None
        except Exception as exc:
            log.error("serve-fs: request %d failed: %r", opcode, exc,
                      exc_info=self.fs.debug)
            return -errno.EIO, None

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
        unpack_unique = U64.unpack_from
        pack_out = OUT_HEADER.pack
        answer = self.answer
        lock = self.lock
        wait = self._wait
        req = Request()
        workers = self.workers
        ring = self.completions
        table = self.fs.table
        by_id = table.by_id
        while not self.stopping:
            if ring is not None and ring.pending and ring.ready():
                ring.reap()  # fsyncs done: their replies first
            if not wait():  # poll first: a read that finds nothing costs an exception
                continue
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
                # fsync to the ring (`cntr.fs.completions`), it and the like to a worker
                # thread (`cntr.fs.workers`)
                if ring is not None and buf[4] in RING_OPCODES and ring.take(buf, n):
                    if self.counts is not None:
                        self.counts[buf[4]] = self.counts.get(buf[4], 0) + 1
                    continue
                if workers is not None and workers.take(buf[4], buf, n):
                    continue
                result = answer(buf, view[_IN_SIZE:n], req)
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
            if len(by_id) > table.prune_above:  # after the reply: nothing waits on it
                with lock:  # workers (and io_uring threads) read the table meanwhile
                    self.prune()
            if self._uring_start is not None:  # the INIT reply granting io_uring is out
                start, self._uring_start = self._uring_start, None
                start()

    def _wait(self) -> bool:
        """Spin on /dev/fuse for ``spin_ns``, then sleep in poll(2) until it is readable:
        True.  False when the wait ended otherwise: a completion on the ring
        (`completions`, looked at in memory while spinning, polled with /dev/fuse when
        sleeping), or a signal's byte on the wakeup pipe (the loop then looks at
        ``stopping``).  No spinning while fsyncs are out on the ring, as while workers
        are busy."""
        poller = self._poller
        ring = self.completions
        if poller is None:
            poller = self._poller = select.poll()
            poller.register(self.fd, select.POLLIN)
            if self.wakeup_fd is not None:
                poller.register(self.wakeup_fd, select.POLLIN)
            if ring is not None:
                poller.register(ring.fd, select.POLLIN)
        poll = poller.poll
        if self._fuse_ready(poll(0)):
            return True
        if self.stopping:
            return False
        spin = self.spin_ns
        if self.workers is not None and self.workers.busy:
            spin = 0  # spinning holds the GIL a worker needs to start and to reply
        elif ring is not None and ring.pending:
            # An fsync takes 150-700 us here: spinning through it, or for spin_ns after
            # it went out, cost 50-150 us of CPU per fsync and won nothing measurable
            # (pgbench -c 4 on 2 CPUs: 1,127 tps spinning, 1,384 not).
            spin = 0
        if spin > 0:
            deadline = time.monotonic_ns() + spin
            yield_cpu = os.sched_yield
            clock = time.monotonic_ns
            while clock() < deadline:
                yield_cpu()  # a requester on this CPU runs first
                if self._fuse_ready(poll(0)):
                    return True
                if self.stopping or (ring is not None and ring.pending and ring.ready()):
                    return False
        if self.stopping:
            return False
        fuse = self._fuse_ready(poll())
        if self.settle_s and not self.stopping:
            time.sleep(self.settle_s)
        return fuse

    def _fuse_ready(self, events: list[tuple[int, int]]) -> bool:
        """Whether /dev/fuse is among the poll ``events``.  A signal's byte on the wakeup
        pipe is read away here, whatever the signal (a handler of its own may have left
        it): left there, every later poll would return at once."""
        fuse = False
        ring = self.completions
        for ready, _ in events:
            if ready == self.fd:
                fuse = True
            elif ring is not None and ready == ring.fd:
                pass  # completions: reaped by the loop
            else:
                with suppress(BlockingIOError):
                    os.read(ready, 512)
        return fuse

    # --- session ----------------------------------------------------------------------
    def _init(self, _nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        major, minor, max_readahead, flags = INIT_IN.unpack_from(body)
        if major != KERNEL_MAJOR:
            raise OSError(errno.EPROTO, f"FUSE {major}.{minor}")
        if flags & INIT_EXT:
            flags |= U32.unpack_from(body, INIT_IN.size)[0] << 32
        want = (ASYNC_READ | ATOMIC_O_TRUNC | BIG_WRITES | AUTO_INVAL_DATA | DO_READDIRPLUS
                | ASYNC_DIO | PARALLEL_DIROPS | MAX_PAGES | CACHE_SYMLINKS | EXPORT_SUPPORT
                | HANDLE_KILLPRIV_V2 | INIT_EXT | DONT_MASK | HAS_IOCTL_DIR | SETXATTR_EXT)
        if self.fs.acl:
            want |= POSIX_ACL
        if self.want_passthrough:
            want |= PASSTHROUGH
        got = want & flags
        self.passthrough = bool(got & PASSTHROUGH)
        self.fs.dev_fd = self.fd
        self.fs.passthrough = self.passthrough
        self.fs.notify_inval = self.inval_attrs
        self._setxattr_ext = bool(got & SETXATTR_EXT)
        if self.want_uring and flags & OVER_IO_URING and self._uring is None:
            # here: the wire session (the default) needs neither it nor cntr.linux.io_uring
            from cntr.fs.uring import Transport

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
        return INIT_OUT.pack(KERNEL_MAJOR, min(minor, KERNEL_MINOR), max_readahead,
                             got & 0xFFFFFFFF, 16, 12, MAX_WRITE, 1, MAX_PAGES_WANTED, 0,
                             got >> 32, MAX_STACK_DEPTH if self.passthrough else 0)

    def inval_attrs(self, nodeid: int) -> None:
        """FUSE_NOTIFY_INVAL_INODE for the attributes of ``nodeid`` (offset -1: its
        cached pages stay)."""
        try:
            os.write(self.fd, NOTIFY_INVAL_INODE_OUT.pack(
                NOTIFY_INVAL_INODE_OUT.size, NOTIFY_INVAL_INODE, 0, nodeid, -1, 0))
        except OSError as exc:  # ENOENT: the kernel no longer has the inode
            log.debug("serve-fs: invalidating node %#x: %s", nodeid, exc)

    def prune_if_due(self) -> None:
        """`prune` if the inode table is past its bound."""
        table = self.fs.table
        if len(table.by_id) > table.prune_above:
            self.prune()

    def prune(self) -> None:
        """FUSE_NOTIFY_PRUNE of the table's oldest inodes past its bound
        (`cntr.fs.inodes.InodeTable.prune_ids`): the kernel drops those it holds no
        reference to (their unused dentries first) and FORGETs them, which takes them out
        of the table; it keeps, and serve-fs keeps serving, whatever is still in use.  A
        kernel without it (before FUSE 7.45) refuses with EINVAL: the table is then
        unbounded, as the kernel's memory pressure is the only thing that forgets."""
        table = self.fs.table
        ids = table.prune_ids()
        pack = NOTIFY_PRUNE_OUT.pack
        step = 4096  # node ids per notification: 32 KiB, well within one write
        for start in range(0, len(ids), step):
            chunk = ids[start:start + step]
            try:
                os.write(self.fd, pack(NOTIFY_PRUNE_OUT.size + 8 * len(chunk), NOTIFY_PRUNE,
                                       0, len(chunk), 0, 0)
                         + struct.pack(f"={len(chunk)}Q", *chunk))
            except OSError as exc:
                if exc.errno == errno.EINVAL and table.max_inodes:
                    log.info("serve-fs: the kernel cannot prune inodes (FUSE_NOTIFY_PRUNE: "
                             "%s): the inode table is unbounded", exc.strerror)
                    table.set_bound(0)
                elif exc.errno != errno.ENODEV:
                    log.warning("serve-fs: pruning %d inodes: %s", len(chunk), exc)
                return

    def _destroy(self, _nodeid: InodeT, _req: Request, _body: memoryview) -> None:
        self.stopping = True

    def _forget(self, nodeid: InodeT, _req: Request, body: memoryview) -> None:
        self.fs.forget(((nodeid, U64.unpack_from(body)[0]),))
        self.fs.table.pruned()

    def _batch_forget(self, _nodeid: InodeT, _req: Request, body: memoryview) -> None:
        count = U32.unpack_from(body)[0]
        self.fs.forget(FORGET_ONE.iter_unpack(body[8:8 + 16 * count]))
        self.fs.table.pruned()

    # --- metadata ---------------------------------------------------------------------
    def _lookup(self, nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        return self.fs.lookup(nodeid, _name(body))

    def _getattr(self, nodeid: InodeT, _req: Request, _body: memoryview) -> bytes:
        return self.fs.getattr(nodeid)

    def _statx(self, nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        _getattr_flags, _, _fh, sx_flags, _sx_mask = STATX_IN.unpack_from(body)
        return self.fs.statx(nodeid, sx_flags)

    def _setattr(self, nodeid: InodeT, req: Request, body: memoryview) -> bytes:
        (valid, _, fh, size, _owner, atime, mtime, _ctime, atimensec, mtimensec,
         _ctimensec, mode, _, uid, gid, _) = SETATTR_IN.unpack_from(body)
        now = time.time_ns() if valid & (FATTR_ATIME_NOW | FATTR_MTIME_NOW) else 0
        return self.fs.setattr(
            nodeid, req, valid, fh if valid & FATTR_FH else None, size, mode,
            uid, gid, now if valid & FATTR_ATIME_NOW else atime * _NS + atimensec,
            now if valid & FATTR_MTIME_NOW else mtime * _NS + mtimensec)

    def _readlink(self, nodeid: InodeT, _req: Request, _body: memoryview) -> bytes:
        return self.fs.readlink(nodeid)

    def _statfs(self, _nodeid: InodeT, _req: Request, _body: memoryview) -> bytes:
        return self.fs.statfs()

    def _access(self, nodeid: InodeT, _req: Request, body: memoryview) -> None:
        self.fs.access(nodeid, U32.unpack_from(body)[0])

    # --- namespace changes ------------------------------------------------------------
    def _mknod(self, nodeid: InodeT, req: Request, body: memoryview) -> bytes:
        mode, rdev, req.umask = MKNOD_IN.unpack_from(body)
        return self.fs.mknod(nodeid, _name(body, 16), mode, rdev, req)

    def _mkdir(self, nodeid: InodeT, req: Request, body: memoryview) -> bytes:
        mode, req.umask = U32_PAIR.unpack_from(body)
        return self.fs.mkdir(nodeid, _name(body, 8), mode, req)

    def _symlink(self, nodeid: InodeT, req: Request, body: memoryview) -> bytes:
        name, target = _two_names(body, 0)
        return self.fs.symlink(nodeid, name, target, req)

    def _unlink(self, nodeid: InodeT, _req: Request, body: memoryview) -> None:
        self.fs.unlink(nodeid, _name(body))

    def _rmdir(self, nodeid: InodeT, _req: Request, body: memoryview) -> None:
        self.fs.rmdir(nodeid, _name(body))

    def _rename(self, nodeid: InodeT, _req: Request, body: memoryview) -> None:
        newdir = U64.unpack_from(body)[0]
        old, new = _two_names(body, 8)
        self.fs.rename(nodeid, old, newdir, new, 0)

    def _rename2(self, nodeid: InodeT, _req: Request, body: memoryview) -> None:
        newdir, flags = RENAME2_IN.unpack_from(body)
        old, new = _two_names(body, 16)
        self.fs.rename(nodeid, old, newdir, new, flags)

    def _link(self, nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        target = U64.unpack_from(body)[0]
        return self.fs.link(target, nodeid, _name(body, 8))

    # --- files ------------------------------------------------------------------------
    def _open(self, nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        flags, open_flags = U32_PAIR.unpack_from(body)
        return self.fs.open(nodeid, flags, bool(open_flags & FUSE_OPEN_KILL_SUIDGID))

    def _create(self, nodeid: InodeT, req: Request, body: memoryview) -> bytes:
        flags, mode, req.umask, _ = CREATE_IN.unpack_from(body)
        return self.fs.create(nodeid, _name(body, 16), mode, flags, req)

    def _tmpfile(self, nodeid: InodeT, req: Request, body: memoryview) -> bytes:
        flags, mode, req.umask, _ = CREATE_IN.unpack_from(body)
        return self.fs.tmpfile(nodeid, mode, flags, req)

    def _read(self, _nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        fh, offset, size, _ = READ_IN.unpack_from(body)
        return self.fs.read(fh, offset, size)

    def _write(self, nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        fh, offset, size, write_flags, _, _, _ = WRITE_IN.unpack_from(body)
        written = self.fs.write(nodeid, fh, offset,
                                body[WRITE_IN_SIZE:WRITE_IN_SIZE + size],
                                bool(write_flags & FUSE_WRITE_KILL_SUIDGID))
        return U32_PAIR.pack(written, 0)

    def _flush(self, _nodeid: InodeT, _req: Request, body: memoryview) -> None:
        self.fs.flush(U64.unpack_from(body)[0])

    def _release(self, _nodeid: InodeT, _req: Request, body: memoryview) -> None:
        self.fs.release(RELEASE_IN.unpack_from(body)[0])

    def _fsync(self, _nodeid: InodeT, _req: Request, body: memoryview) -> None:
        fh, flags = FSYNC_IN.unpack_from(body)
        self.fs.fsync(fh, bool(flags & FSYNC_FDATASYNC))

    def _poll(self, _nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        fh, _kh, _flags, _events = POLL_IN.unpack_from(body)
        return U32_PAIR.pack(self.fs.poll(fh), 0)

    def _fallocate(self, nodeid: InodeT, req: Request, body: memoryview) -> None:
        fh, offset, length, mode = FALLOCATE_IN.unpack_from(body)
        self.fs.fallocate(nodeid, fh, offset, length, mode, req)

    def _lseek(self, _nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        fh, offset, whence = LSEEK_IN.unpack_from(body)
        return U64.pack(self.fs.lseek(fh, offset, whence))

    def _copy_file_range(self, _nodeid: InodeT, req: Request, body: memoryview) -> bytes:
        # The reply's size is a u32 in FUSE_COPY_FILE_RANGE.
        return U32_PAIR.pack(self._copy(body, req, 0xFFFFF000), 0)

    def _copy_file_range_64(self, _nodeid: InodeT, req: Request, body: memoryview) -> bytes:
        return U64.pack(self._copy(body, req, None))

    def _copy(self, body: memoryview, req: Request, limit: int | None) -> int:
        fh_in, off_in, nodeid_out, fh_out, off_out, length, flags = (
            COPY_FILE_RANGE_IN.unpack_from(body))
        return self.fs.copy_file_range(
            fh_in, off_in, nodeid_out, fh_out, off_out,
            length if limit is None else min(length, limit), flags, req)

    def _ioctl(self, _nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        fh, flags, cmd, _arg, in_size, out_size = IOCTL_IN.unpack_from(body)
        return self.fs.ioctl(fh, flags, cmd,
                             body[IOCTL_IN.size:IOCTL_IN.size + in_size].tobytes(), out_size)

    # --- directories ------------------------------------------------------------------
    def _opendir(self, nodeid: InodeT, _req: Request, _body: memoryview) -> bytes:
        return self.fs.opendir(nodeid)

    def _readdirplus(self, _nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        fh, offset, size, _ = READ_IN.unpack_from(body)
        return self.fs.readdirplus(fh, offset, size)

    def _releasedir(self, _nodeid: InodeT, _req: Request, body: memoryview) -> None:
        self.fs.releasedir(RELEASE_IN.unpack_from(body)[0])

    def _fsyncdir(self, _nodeid: InodeT, _req: Request, body: memoryview) -> None:
        fh, flags = FSYNC_IN.unpack_from(body)
        self.fs.fsyncdir(fh, bool(flags & FSYNC_FDATASYNC))

    # --- extended attributes ----------------------------------------------------------
    def _getxattr(self, nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        size = U32.unpack_from(body)[0]
        return _sized(self.fs.getxattr(nodeid, _name(body, 8)), size)

    def _setxattr(self, nodeid: InodeT, _req: Request, body: memoryview) -> None:
        if self._setxattr_ext:
            size, flags, setxattr_flags, _ = SETXATTR_EXT_IN.unpack_from(body)
            raw = body[SETXATTR_EXT_IN.size:].tobytes()
        else:
            size, flags = U32_PAIR.unpack_from(body)
            setxattr_flags = 0
            raw = body[SETXATTR_IN_SIZE:].tobytes()
        name, _, rest = raw.partition(b"\0")
        self.fs.setxattr(nodeid, name, rest[:size], flags,
                         bool(setxattr_flags & FUSE_SETXATTR_ACL_KILL_SGID))

    def _listxattr(self, nodeid: InodeT, _req: Request, body: memoryview) -> bytes:
        return _sized(self.fs.listxattr(nodeid), U32.unpack_from(body)[0])

    def _removexattr(self, nodeid: InodeT, _req: Request, body: memoryview) -> None:
        self.fs.removexattr(nodeid, _name(body))
