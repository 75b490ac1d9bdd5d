"""Prototype: more readers of one FUSE connection, each on its own cloned /dev/fuse fd."""

from __future__ import annotations

import errno
import fcntl
import logging
import os
import struct
import threading
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from cntr.fs.wire import Session

log = logging.getLogger("cntr.fs")

#: _IOR(229, 0, uint32_t)
FUSE_DEV_IOC_CLONE = 0x8004E500


def clone_fd(fd: int) -> int:
    """A new /dev/fuse descriptor attached to the connection of ``fd``."""
    new = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    try:
        fcntl.ioctl(new, FUSE_DEV_IOC_CLONE, struct.pack("=I", fd))
    except BaseException:
        os.close(new)
        raise
    return new


def reader(session: Session, fd: int) -> None:
    """Serve requests from ``fd`` (blocking reads: the GIL is released while waiting)."""
    from cntr.fs.wire import _IN_SIZE, _OUT, _OUT_SIZE, _U64, BUFFER_SIZE
    buf = bytearray(BUFFER_SIZE)
    view = memoryview(buf)
    bufs = [buf]
    readv = os.readv
    write = os.write
    unpack_unique = _U64.unpack_from
    pack_out = _OUT.pack
    answer = session.answer
    lock = session.lock
    try:
        while not session.stopping:
            try:
                n = readv(fd, bufs)
            except OSError as exc:
                if exc.errno in (errno.ENOENT, errno.EINTR, errno.EAGAIN):
                    continue
                if exc.errno == errno.ENODEV:
                    return
                raise
            if session.fine:
                result = answer(buf, view[_IN_SIZE:n])
            else:
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
                if exc.errno != errno.ENOENT:
                    raise
    finally:
        os.close(fd)


def start_readers(session: Session, count: int) -> list[threading.Thread]:
    out = []
    for i in range(count):
        fd = clone_fd(session.fd)
        t = threading.Thread(target=reader, args=(session, fd), name=f"serve-fs-{i}",
                             daemon=True)
        t.start()
        out.append(t)
    return out


class Offload:
    """Prototype: requests that may block for long, answered by a pool of threads."""

    def __init__(self, session: Session, size: int = 4) -> None:
        import queue
        self.session = session
        self.size = size
        self.q: queue.SimpleQueue[tuple[bytes, int] | None] = queue.SimpleQueue()
        self.threads: list[threading.Thread] = []
        self.idle = 0
        self.mutex = threading.Lock()

    def submit(self, data: bytes, fd: int) -> None:
        with self.mutex:
            spawn = self.idle == 0 and len(self.threads) < self.size
            if not spawn:
                self.idle -= 1
        if spawn:
            t = threading.Thread(target=self._work, name="serve-fs-offload", daemon=True)
            self.threads.append(t)
            t.start()
        self.q.put((data, fd))

    def _work(self) -> None:
        from cntr.fs.wire import _IN_SIZE, _OUT, _OUT_SIZE, _U64
        s = self.session
        while True:
            item = self.q.get()
            if item is None:
                return
            data, fd = item
            result = s.answer(data, memoryview(data)[_IN_SIZE:], fresh=True)
            if result is not None:
                err, reply = result
                unique = _U64.unpack_from(data, 8)[0]
                try:
                    os.write(fd, _OUT.pack(_OUT_SIZE + len(reply or b""), err, unique)
                             + (reply or b""))
                except OSError as exc:
                    log.debug("offload reply: %s", exc)
            with self.mutex:
                self.idle += 1
