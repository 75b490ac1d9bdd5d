"""Mount, serve and unmount: the glue between `Operations` and a FUSE session.

``serve()`` either mounts a mountpoint itself or serves a /dev/fuse descriptor that another
process already mounted, possibly in another mount namespace.  The session is chosen with
``loop``: serve-fs's own (`cntr.fs.wire`, the default; ``uring`` adds FUSE over io_uring),
which mounts with `cntr.linux.mounts.fuse_mount` like a session's mount; or pyfuse3's
libfuse session (``pyfuse3.init(ops, mountpoint, options)``, or ``"/dev/fd/N"``, which
libfuse treats as "already mounted, use this descriptor"), driven by `DirectLoop` or by
trio.  The loop ends when the filesystem is unmounted (or its mount namespace dies), or on
SIGTERM/SIGINT.

Caveats:
- pyfuse3 keeps one global session: one libfuse `serve()` per process.
- requests are served one at a time: handlers never await (blocking syscalls on the
  host); `DirectLoop` drops trio from pyfuse3's request path altogether, and trio is then
  never imported (`cntr.fs` imports pyfuse3 with a placeholder for it; the ``trio`` loop
  imports the real one and hands it to pyfuse3).  A host syscall that blocks (a hung NFS
  server) blocks the whole filesystem.
- in ``fuse_fd`` mode the mount options were chosen by the mounter; ours only configure
  the session.
"""
from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import time
from collections.abc import Callable, Coroutine, Iterator
from typing import Any

import pyfuse3

from cntr.fs.operations import Operations
from cntr.fs.wire import Session
from cntr.linux import syscalls as sc
from cntr.linux.mounts import fuse_mount

log = logging.getLogger("cntr.fs")

_monotonic_ns = time.monotonic_ns
_sched_yield = os.sched_yield


def fuse_options() -> set[str]:
    """pyfuse3's defaults plus what a shared passthrough needs.

    ``default_permissions``: the kernel checks modes (serve-fs runs as root);
    ``allow_other``: the session's users are not the mounter.  libfuse's ``nosuid`` and
    ``nodev`` stay: with the uid translation a container root owns the host's root files in
    the kernel's eyes, and must not get the host's block devices or setuid programs with it.
    """
    opts = set(pyfuse3.default_options)
    opts |= {"allow_other", "default_permissions", "fsname=cntr", "subtype=cntr"}
    # ``debug`` is not libfuse's "debug" (a dump of every packet on stderr): Operations
    # logs each request itself.
    return opts


def mount_id_of(path: str) -> int:
    """The mount id of ``path``, without sending a request to a FUSE filesystem there."""
    st = sc.statx(sc.AT_FDCWD, os.fsencode(path), sc.AT_STATX_DONT_SYNC, sc.STATX_MNT_ID)
    return int(st.stx_mnt_id)


class _ClosedResourceError(Exception):
    """The FUSE descriptor is being closed (signal or terminate())."""


class _NullLock:
    """pyfuse3's read lock: with a single worker there is nobody to exclude."""

    async def __aenter__(self) -> None:
        return None

    async def __aexit__(self, *exc: object) -> None:
        return None


class _Task:
    name = "serve-fs"


class _Nursery:
    """Runs started coroutines one after the other when the block ends."""

    def __init__(self) -> None:
        self._coros: list[Coroutine[Any, Any, Any]] = []

    async def __aenter__(self) -> _Nursery:
        return self

    def start_soon(self, fn: Callable[..., Coroutine[Any, Any, Any]], *args: Any,
                   name: str | None = None) -> None:
        self._coros.append(fn(*args))

    async def __aexit__(self, *exc: object) -> None:
        while self._coros:
            await self._coros.pop(0)


class DirectLoop:
    """A stand-in for the trio module inside pyfuse3 that never suspends.

    pyfuse3 reaches its event loop only through its module attribute ``trio`` (which
    ``pyfuse3.asyncio.enable()`` replaces the same way).  serve-fs handlers never await,
    so the only place a request loop ever waits is "is /dev/fuse readable": this loop
    blocks right there in poll(2), and the whole ``pyfuse3.main()`` coroutine runs to the
    end in one ``send(None)``.  That saves trio's two scheduler passes per request (a lock
    checkpoint and the epoll wait), about half of the per-request cost.  Signals wake the
    poll through ``signal.set_wakeup_fd``; `notify_closing` (called by
    ``pyfuse3.terminate()``) ends the loop at the next wait.

    Before sleeping in poll(2), the loop keeps polling without a timeout (yielding the CPU
    between polls) for ``spin_ns``: a requester that sends its next request within that
    time finds serve-fs awake.  Waking a sleeping server on another CPU costs an
    inter-processor interrupt, which on a VM is a VM exit: measured 60-90 us per request
    on a 2-vCPU Firecracker guest against ~8 us when both sides share a CPU, i.e. most of
    the cost of a request.  Spinning keeps that wake-up out of bursts of requests (untar,
    create: -30 to -40 % wall time there; neutral for read, delete and large writes) for
    at most ``spin_ns`` of CPU after each burst; 0 turns it off.
    """

    ClosedResourceError = _ClosedResourceError
    Lock = _NullLock
    #: how long to poll /dev/fuse before sleeping (see the class docstring)
    spin_ns = 100_000

    def __init__(self, wakeup_fd: int) -> None:
        self.lowlevel = self
        self.from_thread = self
        self.closing = False
        self._poll = select.poll()
        self._wakeup_fd = wakeup_fd
        self._poll.register(wakeup_fd, select.POLLIN)
        self._registered: set[int] = set()

    def current_trio_token(self) -> str:
        return "serve-fs-direct"

    def current_task(self) -> _Task:
        return _Task()

    def open_nursery(self) -> _Nursery:
        return _Nursery()

    def notify_closing(self, fd: int) -> None:
        self.closing = True

    async def wait_readable(self, fd: int) -> None:
        if fd not in self._registered:
            self._poll.register(fd, select.POLLIN)
            self._registered.add(fd)
        poll = self._poll.poll
        while True:
            if self.closing:
                raise _ClosedResourceError
            events = poll(0)
            if not events and self.spin_ns > 0:
                deadline = _monotonic_ns() + self.spin_ns
                while True:
                    _sched_yield()  # a requester on this CPU runs first
                    events = poll(0)
                    if events or _monotonic_ns() >= deadline:
                        break
            if not events:
                events = poll()
            for ready, _events in events:
                if ready == fd:
                    return
                with contextlib.suppress(BlockingIOError):
                    os.read(self._wakeup_fd, 512)

    def run(self, coro: Coroutine[Any, Any, Any]) -> None:
        """Drive ``coro`` (pyfuse3.main()) to completion; it must never suspend."""
        try:
            coro.send(None)
        except StopIteration:
            return
        coro.close()
        raise RuntimeError("serve-fs: a request handler suspended in the direct loop")


@contextlib.contextmanager
def _stop_on_signals(stop: Callable[[int], None]) -> Iterator[int]:
    """While inside, SIGTERM and SIGINT call ``stop(signum)`` and wake the descriptor
    yielded (a request loop polls it); the previous handlers are put back after."""
    rfd, wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    def on_signal(signum: int, _frame: object) -> None:
        log.info("serve-fs: signal %d, stopping", signum)
        stop(signum)

    old_wakeup = signal.set_wakeup_fd(wfd, warn_on_full_buffer=False)
    old_handlers = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM,
                                                                   signal.SIGINT)}
    try:
        yield rfd
    finally:
        for sig, handler in old_handlers.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(old_wakeup)
        os.close(rfd)
        os.close(wfd)


def _serve_direct(ready_fd: int | None, stopped: list[int]) -> None:
    def stop(signum: int) -> None:
        stopped.append(signum)
        pyfuse3.terminate()

    with _stop_on_signals(stop) as wakeup_fd:
        loop = DirectLoop(wakeup_fd)
        saved_trio = pyfuse3.trio  # type: ignore[attr-defined]  # pyfuse3's loop hook
        pyfuse3.trio = loop  # type: ignore[attr-defined]
        try:
            _signal_ready(ready_fd)
            loop.run(pyfuse3.main(min_tasks=1, max_tasks=1))
        finally:
            pyfuse3.trio = saved_trio  # type: ignore[attr-defined]


def _signal_ready(ready_fd: int | None) -> None:
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"R")
        finally:
            os.close(ready_fd)


async def _serve_trio(ready_fd: int | None, stopped: list[int]) -> None:
    import trio  # only this mode needs trio (see cntr.fs._import_pyfuse3)

    async with trio.open_nursery() as nursery:

        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("serve-fs: signal %d, stopping", signum)
                    stopped.append(signum)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signals)
        _signal_ready(ready_fd)
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        nursery.cancel_scope.cancel()


LOOPS = ("wire", "uring", "libfuse", "trio")


def serve(ops: Operations, *, mountpoint: str | None = None, fuse_fd: int | None = None,
          ready_fd: int | None = None, loop: str = "wire") -> int:
    """Serve ``ops`` until unmounted or signalled; 0 on a clean end.

    ``loop`` picks the FUSE session: ``wire`` (default) is serve-fs's own
    (`cntr.fs.wire`: FUSE passthrough, cached directory listings); ``uring`` is the same
    with requests over FUSE over io_uring when the kernel offers it (module parameter
    ``fuse.enable_uring=Y``, which serve-fs never sets; `cntr.fs.uring`); ``libfuse`` is
    pyfuse3's libfuse session driven by `DirectLoop`, ``trio`` the same with pyfuse3's own
    trio loop (about twice the per-request overhead).  The last two negotiate none of
    the kernel features libfuse 3.14 lacks; they stay as references for the benchmark.
    """
    if (mountpoint is None) == (fuse_fd is None):
        raise ValueError("serve(): give exactly one of mountpoint and fuse_fd")
    if loop not in LOOPS:
        raise ValueError(f"serve(): loop must be one of {', '.join(LOOPS)}")
    if loop in ("wire", "uring"):
        try:
            return _serve_wire(ops, mountpoint, fuse_fd, ready_fd, uring=loop == "uring")
        finally:
            ops.close()
    target = mountpoint if mountpoint is not None else f"/dev/fd/{fuse_fd}"
    # pyfuse3 before 3.3 (Debian 12 has 3.2.1) makes its worker lock in init(), from
    # pyfuse3.trio: that must already be the loop's (cntr.fs left a placeholder there).
    pyfuse3.trio = DirectLoop  # type: ignore[attr-defined]  # pyfuse3's loop hook
    if loop == "trio":
        import trio  # only this mode needs trio

        pyfuse3.trio = trio  # type: ignore[attr-defined]  # pyfuse3's loop hook
    pyfuse3.init(ops, target, fuse_options())
    try:
        if mountpoint is not None:
            # Serving "/" on a mountpoint under "/": lookups must not enter this mount.
            ops.self_mount_ids.add(mount_id_of(mountpoint))
        stopped: list[int] = []
        if loop == "trio":
            import trio

            trio.run(_serve_trio, ready_fd, stopped)
        else:
            _serve_direct(ready_fd, stopped)
    finally:
        pyfuse3.close(unmount=mountpoint is not None)
        ops.close()
    return 0


def _serve_wire(ops: Operations, mountpoint: str | None, fuse_fd: int | None,
                ready_fd: int | None, *, uring: bool) -> int:
    own_fd = fuse_fd is None
    if fuse_fd is None:
        fuse_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    mounted = False
    session = Session(ops, fuse_fd, uring=uring)
    try:
        with _stop_on_signals(lambda _signum: session.stop()) as wakeup_fd:
            session.wakeup_fd = wakeup_fd
            if mountpoint is not None:
                try:
                    mnt = fuse_mount(fuse_fd)  # the options a session's mount gets
                    try:
                        sc.move_mount(mnt, "", sc.AT_FDCWD, mountpoint,
                                      sc.MOVE_MOUNT_F_EMPTY_PATH)
                    finally:
                        os.close(mnt)
                except OSError as exc:
                    raise RuntimeError(exc.strerror or str(exc)) from None
                mounted = True
                # Serving "/" on a mountpoint under "/": lookups must not enter this mount.
                ops.self_mount_ids.add(mount_id_of(mountpoint))
            _signal_ready(ready_fd)
            session.run()
    finally:
        if mounted and mountpoint is not None:
            with contextlib.suppress(OSError):  # already unmounted from outside
                sc.umount2(mountpoint, sc.MNT_DETACH)
        if own_fd:
            os.close(fuse_fd)
    return 0
