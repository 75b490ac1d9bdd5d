"""Starting serve-fs in a process of its own for a session.

serve-fs's start-up (its imports) would be the longest wait on the attach path, so it is
forked first, before cntr has even parsed its arguments (``prestart``, called by the
console entry for ``cntr attach``), or else by ``enter``; it then waits on a pipe for its
parameters and serves the ``/dev/fuse`` descriptor opened here once the setup child has
mounted it.  Only ``os``, ``sys`` and ``_signal`` (built in) are imported up front: this
module runs before anything else of cntr; ``prestart`` imports what both processes need
before it forks.
"""

from __future__ import annotations

import os
import sys

from cntr.errors import CntrError, PermissionDenied, Unsupported, os_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal

FUSE_DEVICE = "/dev/fuse"
DEFAULT_BASE_DIR = "/var/lib/cntr"
SERVE_FS_ISOLATION = True
"""Pass the session's mount namespace to serve-fs, which then refuses other processes."""
SERVE_FS_COMM = b"cntr-serve-fs"
"""The process name (comm) of a session's serve-fs, as ps and the tests see it."""
WAIT_FOR_EXIT = 5.0
"""Seconds ``close`` waits for serve-fs to exit after the session."""


SESSION_LOOPS = ("wire", "uring", "libfuse")
"""The FUSE sessions serve-fs runs (`cntr.fs.server.serve`, chosen with
``CNTR_SERVE_FS_LOOP``): serve-fs's own over /dev/fuse (the default) or io_uring, and
pyfuse3's libfuse session (README lists what it cannot negotiate)."""


def serve_fs_loop() -> str:
    """The FUSE session ``CNTR_SERVE_FS_LOOP`` asks for, wire by default; one line
    (CntrError) for an unknown one.  Checked before serve-fs is forked, whose output goes
    to /dev/null."""
    loop = os.environ.get("CNTR_SERVE_FS_LOOP") or "wire"
    if loop in SESSION_LOOPS:
        return loop
    raise CntrError(f"CNTR_SERVE_FS_LOOP must be one of {', '.join(SESSION_LOOPS)}, "
                    f"not {loop!r}")


def check_host() -> None:
    """The failure that needs no container: cntr is not root."""
    if os.geteuid() != 0:
        raise PermissionDenied(
            "cntr must run as root: it joins namespaces and mounts a FUSE filesystem")


def open_fuse() -> int:
    """Open /dev/fuse; its absence is one clear line (exit 7)."""
    try:
        return os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Unsupported(
            f"{FUSE_DEVICE} is missing: load the fuse module (modprobe fuse) or, in a "
            "container, pass the device in") from None
    except OSError as exc:
        raise os_error(f"open({FUSE_DEVICE})", exc) from None


class SessionServer:
    """serve-fs, started ahead of the session so its start-up overlaps resolve, capture and
    the namespace work; it waits on a pipe for its parameters (``start``) and serves the
    ``/dev/fuse`` descriptor this object opened.  ``close`` ends it if it never started.

    It is a fork of this process, not a new interpreter: no second Python start-up
    (~20 ms and as much CPU) on the attach path.  It runs in a session of its own (a
    Ctrl-C meant for the session's command must not stop it), with its output going to
    /dev/null (libfuse reports benign races at unmount there; ``CNTR_SERVE_FS_LOG=FILE``
    keeps it).
    """

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        check_host()
        serve_fs_loop()
        self.fuse_fd: int = open_fuse()
        try:
            # The mount point of the container's root must exist in the served tree.
            os.makedirs(base_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            os.close(self.fuse_fd)
            raise os_error(f"create {base_dir}", exc) from None
        start_r, self.start_w = os.pipe()
        self.ready_r, ready_w = os.pipe()
        self.pid = os.fork()
        if self.pid == 0:
            _serve_child(start_r, self.fuse_fd, ready_w, keep=(start_r, self.fuse_fd, ready_w))
        os.close(start_r)
        os.close(ready_w)
        self.pidfd = _pidfd(self.pid)

    def __enter__(self) -> SessionServer:
        return self

    def __exit__(self, *_exc: object) -> None:
        self.close()

    def start(self, params: dict[str, object]) -> None:
        """Hand serve-fs its parameters: it starts reading the mounted descriptor."""
        from cntr import cjson

        os.write(self.start_w, b"G" + cjson.dumps(params).encode() + b"\n")
        os.close(self.start_w)
        self.start_w = -1

    def handed_over(self) -> None:
        """Close this process's end of the parameter pipe: a forked child that holds it
        (the setup child) calls ``start``; serve-fs ends if it exits first."""
        if self.start_w >= 0:
            os.close(self.start_w)
            self.start_w = -1

    def release_fuse_fd(self) -> None:
        """Close this process's copy once the setup child has it (forked)."""
        if self.fuse_fd >= 0:
            os.close(self.fuse_fd)
            self.fuse_fd = -1

    def kill(self) -> None:
        """End serve-fs at once (a session that cannot be built)."""
        if self.pid > 0:
            try:
                os.kill(self.pid, signal.SIGKILL)
            except ProcessLookupError:
                return

    def close(self) -> None:
        """End serve-fs if it never started; else wait a little for it to exit (it does
        when the session's namespace is gone)."""
        if self.start_w >= 0:
            os.close(self.start_w)
            self.start_w = -1
        self.release_fuse_fd()
        if self.ready_r >= 0:
            os.close(self.ready_r)
            self.ready_r = -1
        if self.pid <= 0:
            return
        import select

        if self.pidfd < 0 or select.select([self.pidfd], [], [], WAIT_FOR_EXIT)[0]:
            os.waitpid(self.pid, 0)
        else:
            # Processes left running in the session keep the filesystem in use; serve-fs
            # goes on serving them and exits with them (init reaps it).
            print("cntr: serve-fs keeps serving processes still running in the session",
                  file=sys.stderr)
        if self.pidfd >= 0:
            os.close(self.pidfd)
            self.pidfd = -1
        self.pid = -1


STATIC_BUSYBOX = ("/usr/bin/busybox", "/bin/busybox", "/usr/lib/cntr/busybox")
"""Where a static busybox may be: ``cntr exec`` in a ``--tools`` session runs on it."""


def static_busybox() -> str | None:
    """A statically linked busybox of the host, or None.

    A ``--tools`` tree may have neither cntr, nor Python, nor the host's C library, so
    cntr's own ``cntr`` cannot run in it; a static executable runs whatever the tree
    holds (no ELF interpreter, no shared library is looked up in it).  Static: an ELF
    file without a PT_INTERP program header (elf(5))."""
    import struct

    for path in STATIC_BUSYBOX:
        try:
            with open(path, "rb") as f:
                head = f.read(64)
                if head[:5] != b"\x7fELF\x02" or len(head) < 64:  # 64-bit ELF only
                    continue
                phoff, = struct.unpack_from("<Q", head, 32)
                phentsize, phnum = struct.unpack_from("<HH", head, 54)
                f.seek(phoff)
                table = f.read(phentsize * phnum)
        except OSError:
            continue
        types = [struct.unpack_from("<I", table, i * phentsize)[0] for i in range(phnum)]
        if 3 not in types:  # PT_INTERP
            return os.path.realpath(path)
    return None


def _pidfd(pid: int) -> int:
    try:
        return os.pidfd_open(pid)
    except OSError:
        return -1


def _serve_child(start_fd: int, fuse_fd: int, ready_fd: int, keep: tuple[int, ...]) -> None:
    """The forked serve-fs: wait for the parameters, then serve. Never returns."""
    code = 1
    try:
        os.setsid()

        for sig in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT):
            signal.signal(sig, signal.SIG_DFL)
        log = os.environ.get("CNTR_SERVE_FS_LOG")
        out = os.open(log or os.devnull, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
        null = os.open(os.devnull, os.O_RDONLY)
        os.dup2(null, 0)
        os.dup2(out, 1)
        os.dup2(out, 2)
        # Nothing of the caller's but what serve-fs needs (a terminal, a pipe the
        # caller's caller waits on for end-of-file, ...).
        fds = sorted(keep)
        lo = 3
        for fd in fds:
            os.closerange(lo, fd)
            lo = fd + 1
        os.closerange(lo, 65536)
        _set_comm(SERVE_FS_COMM)
        # Imports first: they are what this early start overlaps with the caller's work.
        import gc

        from cntr import cjson
        from cntr.fs.tree import serve_tree

        # The console entry turned garbage collection off for the start-up; serve-fs runs
        # as long as the session: on again, without its start-up objects (gc.freeze).
        gc.freeze()
        gc.enable()
        with os.fdopen(start_fd, "rb") as start:
            line = start.readline()
        if not line.startswith(b"G"):
            os._exit(0)
        params = cjson.loads(line[1:])
        code = serve_tree(params.pop("root", "/"), loop=serve_fs_loop(), fuse_fd=fuse_fd,
                          ready_fd=ready_fd, **params)
    except BaseException:  # noqa: BLE001 - a forked child must never return to the caller
        import traceback

        traceback.print_exc()
    finally:
        os._exit(code)


def _set_comm(name: bytes) -> None:
    try:
        with open("/proc/self/comm", "wb") as f:
            f.write(name)
    except OSError:
        return


_prestarted: SessionServer | None = None


def _import_shared() -> None:
    """Import, before serve-fs is forked, the modules both processes import: the fork
    inherits them instead of importing them a second time, and this process needs each
    of them on the way to a session anyway (cntr.cjson for ``start``, select for
    ``close``, the mount and syscall layers for capture and enter).  Not json: cntr.cjson
    does without it (and without the re and enum it imports); not threading or
    contextlib, which this process does without on a plain attach (serve-fs imports
    them itself, while this process resolves and captures)."""
    import select  # noqa: F401

    from cntr import cjson  # noqa: F401
    from cntr.linux import mounts  # noqa: F401


def prestart() -> None:
    """Start serve-fs for a coming ``attach``; any failure is left for ``enter`` to report
    with its own message (this only saves time)."""
    global _prestarted
    if os.geteuid() != 0 or _prestarted is not None:
        return
    _import_shared()
    try:
        _prestarted = SessionServer(os.environ.get("CNTR_BASE_DIR") or DEFAULT_BASE_DIR)
    except Exception:  # noqa: BLE001 - enter reports it properly
        _prestarted = None


def take_prestarted() -> SessionServer | None:
    """The server ``prestart`` started, handed over once."""
    global _prestarted
    server, _prestarted = _prestarted, None
    return server
