"""Requests that can block on the host for long, answered by a small pool of threads.

serve-fs answers every other request on the thread that reads ``/dev/fuse``
(`cntr.fs.session`): handing requests to other threads costs more than it gains under
the GIL.  Measured with 4 concurrent ``tar -x`` of 4,000 files on 2 CPUs: 4.1 s on one
thread, 6.4 s with 2 reader threads on cloned ``/dev/fuse`` descriptors under one lock,
6.7-9.2 s with 2-4 readers and only the inode table locked (every syscall of a handler
releases the GIL and the next waiting reader takes it: the threads convoy, the server's
system time doubles).  What one thread cannot do is wait for two things at once: an
fsync(2) that takes a millisecond on a journaled disk, a fallocate(2) or
copy_file_range(2) of gigabytes, a host filesystem that is frozen or a network one that
hangs, each of which used to hold every other requester until it returned (scripts/bench
``fsync-p4``, 4 writers with an fsync after each 4 KiB write, 12 runs: 557 ms inline
against 260 ms answered here, C passthrough_ll 252 ms, native 225 ms).  The cost is the
handoff, one thread wake-up: ~50-100 us per request (``fsync-p1``: 149 -> 163 ms for 200
fsyncs; on a RAM-backed disk, where an fsync takes ~100 us, 0.42 -> 0.52 s for 2,000).

FSYNC and FSYNCDIR go first to the reading thread's io_uring (`cntr.fs.completions`),
which has no hand-off to a Python thread: they come here only when the kernel refused
that ring, or while it is full.  The other opcodes in `BLOCKING` (FALLOCATE,
COPY_FILE_RANGE and its 64-bit form) always come here: each is handed to a worker thread:
the reading thread copies the request, duplicates the descriptors it names (``dup(2)``;
for FSYNCDIR opens the directory) and goes back to reading; the worker runs the same
handler as the reading thread would (`Session.answer`, on the copy whose handles name the
duplicates) and writes the reply to ``/dev/fuse`` itself.  The duplicates are what make
this safe: the kernel may send the RELEASE of a file while a request on it is still being
answered (its requester was killed), and the reading thread then closes the file's
descriptor, whose number a later open may reuse; the worker's duplicate still names the
file the request was for, and is closed by the worker when it is done.

The handlers of these opcodes touch no state of the handler core that another thread
changes (`cntr.fs.passthrough`: a syscall on the descriptor, a check of the requester's
capabilities in /proc, a FUSE_NOTIFY_INVAL_INODE written to ``/dev/fuse``), so workers
take no lock.

Threads are started on demand, up to `Workers.size` (``CNTR_SERVE_FS_WORKERS``, default
`DEFAULT_SIZE`; 0 answers these requests inline, and FSYNC and FSYNCDIR too: no ring
either): a workload without them never starts one.  Requests beyond that wait for a free
worker, in order, without holding up the reading thread.

Caveats:
- only the ``/dev/fuse`` loop hands requests over (to the ring or here); with FUSE over
  io_uring (`cntr.fs.uring`) every request is answered on its queue's thread, as before.
- a worker blocked when the session ends (a frozen filesystem) is left to the process's
  exit (daemon threads): its reply has nobody to go to.
"""

from __future__ import annotations

import _thread
import errno
import os

from cntr.errors import count_from_env
from cntr.fs.log import log
from cntr.fs.protocol import (
    COPY_FILE_RANGE,
    COPY_FILE_RANGE_64,
    FALLOCATE,
    FSYNC,
    FSYNC_FDATASYNC,
    FSYNC_IN,
    FSYNCDIR,
    IN_HEADER,
    OUT_HEADER,
    U32,
    U64,
    Request,
)

TYPE_CHECKING = False
if TYPE_CHECKING:
    import queue
    import threading
    from collections.abc import Callable
else:  # the C module under queue: its SimpleQueue, without heapq and queue's own (~1 ms)
    import _queue as queue

BLOCKING = frozenset({FSYNC, FSYNCDIR, FALLOCATE, COPY_FILE_RANGE, COPY_FILE_RANGE_64})
"""The opcodes answered by a worker."""

DEFAULT_SIZE = 8
"""Workers at most, unless ``CNTR_SERVE_FS_WORKERS`` says otherwise."""

_IN_SIZE = IN_HEADER.size
_OUT_SIZE = OUT_HEADER.size
#: where the file handles are in each request's body (fuse_fsync_in and
#: fuse_fallocate_in start with fh; fuse_copy_file_range_in has fh_in and fh_out)
_HANDLES = {FSYNC: (0,), FALLOCATE: (0,), COPY_FILE_RANGE: (0, 24),
            COPY_FILE_RANGE_64: (0, 24)}

if TYPE_CHECKING:
    Answer = Callable[[bytes | bytearray | memoryview, memoryview, Request],
                      "tuple[int, bytes | None] | None"]
    OpenDir = Callable[[int], int]


def size_from_env() -> int:
    """``CNTR_SERVE_FS_WORKERS`` (a number >= 0), `DEFAULT_SIZE` when unset."""
    return count_from_env("CNTR_SERVE_FS_WORKERS", DEFAULT_SIZE)


class _Job:
    """One request being answered by a worker: its copy and the descriptors it owns."""

    __slots__ = ("data", "dir_fd", "fds")

    def __init__(self, data: bytearray, fds: list[int], dir_fd: int) -> None:
        self.data = data
        #: duplicates written into ``data`` in place of the request's handles
        self.fds = fds
        #: FSYNCDIR: the directory, opened for it (-1 otherwise)
        self.dir_fd = dir_fd


class Workers:
    """The pool of one session (``fuse_fd``, the /dev/fuse descriptor its requests are
    read from): `take`, on the reading thread, hands a request over.

    Replies go out through a duplicate of ``fuse_fd`` (the same open file, so the same
    FUSE device the request was read from) that the workers close when the last of them
    ends: a reply finished after the session closed ``fuse_fd`` must not land on
    whatever file reuses its number."""

    def __init__(self, answer: Answer, open_dir: OpenDir, fuse_fd: int,
                 size: int = DEFAULT_SIZE) -> None:
        #: the session's dispatcher (`cntr.fs.session.Session.answer`)
        self.answer = answer
        #: a new descriptor of an open directory's handle (`Passthrough.open_dir_handle`)
        self.open_dir = open_dir
        self.size = size
        self._fuse_fd = os.dup(fuse_fd)
        self._jobs: queue.SimpleQueue[_Job | None] = queue.SimpleQueue()
        self._threads: list[threading.Thread] = []
        self._live = 0
        self._idle = 0
        #: requests handed over and not answered yet (the reading thread does not spin
        #: while there are: `cntr.fs.session.Session._wait`)
        self.busy = 0
        self._stopped = False
        self._mutex = _thread.allocate_lock()

    def take(self, opcode: int, buf: bytearray, n: int) -> bool:
        """Whether the request of ``n`` bytes in ``buf`` was handed to a worker, which
        then answers it; False: answer it here.  ``opcode`` may be the low byte of the
        request's (what the reading thread looks at: every opcode but CUSE_INIT is below
        256); the whole one is checked here."""
        if opcode not in BLOCKING or not self.size or U32.unpack_from(buf, 4)[0] != opcode:
            return False
        data = bytearray(buf[:n])
        fds: list[int] = []
        dir_fd = -1
        try:
            if opcode == FSYNCDIR:
                dir_fd = self.open_dir(U64.unpack_from(data, _IN_SIZE)[0])
            else:
                for at in _HANDLES[opcode]:
                    fd = os.dup(U64.unpack_from(data, _IN_SIZE + at)[0])
                    fds.append(fd)
                    U64.pack_into(data, _IN_SIZE + at, fd)
        except OSError:
            for fd in fds:
                os.close(fd)
            return False  # answered here: the same error, from the handler
        self._submit(_Job(data, fds, dir_fd))
        return True

    def _submit(self, job: _Job) -> None:
        with self._mutex:
            self.busy += 1
            spawn = not self._idle and self._live < self.size
            if spawn:
                self._live += 1
            else:
                self._idle = max(self._idle - 1, 0)
        if spawn:
            import threading  # with the first worker: most sessions never start one

            thread = threading.Thread(target=self._work, name="serve-fs-worker",
                                      daemon=True)
            self._threads.append(thread)
            thread.start()
        self._jobs.put(job)

    def stop(self) -> None:
        """Let the workers end once the requests handed over are answered (one blocked
        on the host ends with the process); the last one closes the reply descriptor."""
        with self._mutex:
            self._stopped = True
            live = self._live
            if not live:
                os.close(self._fuse_fd)
        for _ in range(live):
            self._jobs.put(None)

    def _work(self) -> None:
        req = Request()
        while True:
            job = self._jobs.get()
            if job is None:
                break
            try:
                self._run(job, req)
            except Exception as exc:  # noqa: BLE001  # a worker never dies of a request
                log.error("serve-fs: worker: %r", exc)
            with self._mutex:
                self._idle += 1
                self.busy -= 1
        with self._mutex:
            self._live -= 1
            if not self._live and self._stopped:
                os.close(self._fuse_fd)

    def _run(self, job: _Job, req: Request) -> None:
        data = job.data
        result: tuple[int, bytes | None] | None
        try:
            if job.dir_fd >= 0:
                result = self._fsyncdir(job.dir_fd, data)
            else:
                result = self.answer(data, memoryview(data)[_IN_SIZE:], req)
        finally:
            for fd in job.fds:
                os.close(fd)
            if job.dir_fd >= 0:
                os.close(job.dir_fd)
        if result is None:
            return
        err, reply = result
        unique = U64.unpack_from(data, 8)[0]
        out = OUT_HEADER.pack(_OUT_SIZE + len(reply or b""), err, unique) + (reply or b"")
        try:
            os.write(self._fuse_fd, out)
        except OSError as exc:
            # ENOENT: interrupted, nobody waits; ENODEV: unmounted meanwhile.
            if exc.errno not in (errno.ENOENT, errno.ENODEV):
                log.error("serve-fs: worker: writing a reply: %s", exc)

    @staticmethod
    def _fsyncdir(fd: int, data: bytearray) -> tuple[int, bytes | None]:
        """FSYNCDIR on the directory ``fd`` opened for it (`Passthrough.fsyncdir` does
        the same on a descriptor it opens itself)."""
        _fh, flags = FSYNC_IN.unpack_from(data, _IN_SIZE)
        try:
            if flags & FSYNC_FDATASYNC:
                os.fdatasync(fd)
            else:
                os.fsync(fd)
        except OSError as exc:
            return -(exc.errno or errno.EIO), None
        return 0, None

