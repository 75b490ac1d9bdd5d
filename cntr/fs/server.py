"""Mount, serve and unmount: the glue between the handler core and a FUSE session.

``serve()`` either mounts a mountpoint itself or serves a /dev/fuse descriptor that another
process already mounted, possibly in another mount namespace.  The session is chosen with
``loop`` (`LOOPS`): serve-fs's own (`cntr.fs.session`, the default; ``uring`` adds FUSE over
io_uring), which mounts with `cntr.linux.mounts.fuse_mount` like a session's mount; or
pyfuse3's libfuse session (`cntr.fs.libfuse`, imported only then: the default session
never imports pyfuse3 or trio).  The loop ends when the filesystem is unmounted (or its
mount namespace dies), or on SIGTERM/SIGINT.

Caveats:
- requests are served one at a time: handlers block (syscalls on the host).  A host
  syscall that blocks (a hung NFS server) blocks the whole filesystem.
- in ``fuse_fd`` mode the mount options were chosen by the mounter; ours only configure
  the session.
- ``CNTR_SERVE_FS_COUNTS=FILE`` (serve-fs's own session, for the benchmark) counts the
  requests by opcode and writes them to FILE on SIGUSR1 and at the end (`_Counting`).
"""

from __future__ import annotations

import os

from cntr.errors import suppress
from cntr.fs.completions import Completions
from cntr.fs.gate import MountNsGate
from cntr.fs.inodes import max_inodes_from_env
from cntr.fs.log import log
from cntr.fs.passthrough import Passthrough
from cntr.fs.protocol import OPCODE_NAMES
from cntr.fs.session import Session
from cntr.fs.workers import Workers
from cntr.fs.workers import size_from_env as workers_size
from cntr.linux import syscalls as sc
from cntr.linux.mounts import fuse_mount

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal

LOOPS = ("wire", "uring", "libfuse")
"""The FUSE sessions: serve-fs's own over /dev/fuse, the same over io_uring, pyfuse3's."""


def mount_id_of(path: str) -> int:
    """The mount id of ``path``, without sending a request to a FUSE filesystem there."""
    st = sc.statx(sc.AT_FDCWD, os.fsencode(path), sc.AT_STATX_DONT_SYNC, sc.STATX_MNT_ID)
    return int(st.stx_mnt_id)


class _StopOnSignals:
    """While inside, SIGTERM and SIGINT call ``stop(signum)`` and wake the descriptor
    ``with`` gives (a request loop polls it); the previous handlers are put back after.
    (A class, as `_Counting`: contextlib's decorator would import contextlib, collections
    and functools into serve-fs, ~4 ms of its start.)"""

    def __init__(self, stop: Callable[[int], None]) -> None:
        self.stop = stop
        self.rfd = self.wfd = self.old_wakeup = -1
        self.old_handlers: dict[int, object] = {}

    def __enter__(self) -> int:
        self.rfd, self.wfd = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self.old_wakeup = signal.set_wakeup_fd(self.wfd, warn_on_full_buffer=False)
        self.old_handlers = {sig: signal.signal(sig, self._on_signal)
                             for sig in (signal.SIGTERM, signal.SIGINT)}
        return self.rfd

    def _on_signal(self, signum: int, _frame: object) -> None:
        log.info("serve-fs: signal %d, stopping", signum)
        self.stop(signum)

    def __exit__(self, *_exc: object) -> None:
        for sig, handler in self.old_handlers.items():
            signal.signal(sig, handler)  # type: ignore[arg-type]  # what signal() returned
        signal.set_wakeup_fd(self.old_wakeup)
        os.close(self.rfd)
        os.close(self.wfd)


class _Counting:
    """With ``path`` (CNTR_SERVE_FS_COUNTS, for the benchmark): while inside, count the
    requests by opcode, and on each SIGUSR1 and at the end replace ``path`` with them as
    JSON, ``{"seq": N, "counts": {"LOOKUP": n, ...}}`` (N: the dumps so far).  (The byte
    the signal writes to the wakeup pipe is read away by the request loop.)"""

    def __init__(self, session: Session, path: str | None) -> None:
        self.session = session
        self.path = path
        self.counts: dict[int, int] = {}
        self.seq = 0
        self.old: object = None

    def __enter__(self) -> None:
        if self.path:
            import json  # noqa: F401  # loaded now, not in the first SIGUSR1's handler

            self.session.counts = self.counts
            self.old = signal.signal(signal.SIGUSR1, self._dump)

    def _dump(self, _signum: int = 0, _frame: object = None) -> None:
        import json  # the benchmark's alone: no import on a session's path

        assert self.path
        self.seq += 1
        doc = {"seq": self.seq, "counts": {OPCODE_NAMES.get(op, str(op)): n
                                           for op, n in sorted(self.counts.items())}}
        with open(self.path + ".tmp", "w") as f:
            json.dump(doc, f)
        os.replace(self.path + ".tmp", self.path)

    def __exit__(self, *_exc: object) -> None:
        if self.path:
            signal.signal(signal.SIGUSR1, self.old)  # type: ignore[arg-type]  # signal()'s
            self._dump()


def _signal_ready(ready_fd: int | None) -> None:
    if ready_fd is not None:
        try:
            os.write(ready_fd, b"R")
        finally:
            os.close(ready_fd)


def serve(fs: Passthrough, *, gate: MountNsGate | None = None,
          mountpoint: str | None = None, fuse_fd: int | None = None,
          ready_fd: int | None = None, loop: str = "wire") -> int:
    """Serve ``fs`` until unmounted or signalled, with ``gate`` admitting requests; 0 on a
    clean end.  ``fs`` and ``gate`` are closed at the end.

    ``loop`` picks the FUSE session: ``wire`` (default) is serve-fs's own
    (`cntr.fs.session`: FUSE passthrough, cached directory listings); ``uring`` is the
    same with requests over FUSE over io_uring when the kernel offers it (module parameter
    ``fuse.enable_uring=Y``, which serve-fs never sets; `cntr.fs.uring`); ``libfuse`` is
    pyfuse3's libfuse session under trio (`cntr.fs.libfuse`, whose docstring lists what it
    cannot negotiate).  A mount failure is RuntimeError.
    """
    if (mountpoint is None) == (fuse_fd is None):
        raise ValueError("serve(): give exactly one of mountpoint and fuse_fd")
    if loop not in LOOPS:
        raise ValueError(f"serve(): loop must be one of {', '.join(LOOPS)}")
    try:
        if loop == "libfuse":
            from cntr.fs import libfuse  # pyfuse3 and trio: this session only

            def ready() -> None:
                if mountpoint is not None:
                    # Serving "/" on a mountpoint under "/": lookups must not enter it.
                    fs.self_mount_ids.add(mount_id_of(mountpoint))
                _signal_ready(ready_fd)

            libfuse.serve(fs, gate, mountpoint if mountpoint is not None
                          else f"/dev/fd/{fuse_fd}", unmount=mountpoint is not None,
                          ready=ready)
            return 0
        return _serve_wire(fs, gate, mountpoint, fuse_fd, ready_fd, uring=loop == "uring")
    finally:
        fs.close()
        if gate is not None:
            gate.close()


def _serve_wire(fs: Passthrough, gate: MountNsGate | None, mountpoint: str | None,
                fuse_fd: int | None, ready_fd: int | None, *, uring: bool) -> int:
    own_fd = fuse_fd is None
    if fuse_fd is None:
        fuse_fd = os.open("/dev/fuse", os.O_RDWR | os.O_CLOEXEC)
    mounted = False
    session = Session(fs, fuse_fd, gate=gate, uring=uring)
    fs.table.set_bound(max_inodes_from_env())  # FUSE_NOTIFY_PRUNE: this session only
    size = workers_size()
    if size:
        session.workers = Workers(session.answer, fs.open_dir_handle, fuse_fd, size)
        session.completions = Completions.setup(fuse_fd, fs.open_dir_handle)
    counts_path = os.environ.get("CNTR_SERVE_FS_COUNTS")
    try:
        with _StopOnSignals(lambda _signum: session.stop()) as wakeup_fd, \
                _Counting(session, counts_path):
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
                fs.self_mount_ids.add(mount_id_of(mountpoint))
            _signal_ready(ready_fd)
            session.run()
    finally:
        if session.workers is not None:
            session.workers.stop()
        if session.completions is not None:
            session.completions.close()
        if mounted and mountpoint is not None:
            with suppress(OSError):  # already unmounted from outside
                sc.umount2(mountpoint, sc.MNT_DETACH)
        if own_fd:
            os.close(fuse_fd)
    return 0
