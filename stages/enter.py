"""``cntr enter``: build the nested container from a context and run a command in it.

Three processes, as in the original cntr's "two-process dance" plus a server:

- this process (host namespaces) checks the context, hands serve-fs (``cntr.launch``,
  forked early with the ``/dev/fuse`` descriptor) its parameters once the filesystem is
  mounted, relays the pty, forwards signals and returns the command's exit status;
- a *setup child*, single-threaded, joins the container's cgroups, builds the session's
  mount namespace (``cntr.linux.mounts``), joins the uts, ipc, net, cgroup, pid, time and
  user namespaces, forks the session process, waits for it and exits with its status;
- the *session process* (in the container's pid namespace) limits its capabilities to
  the container's, takes its ids and LSM label, and executes the command.

Messages from the setup child and the session process come back on a pipe: ``M`` (the
FUSE filesystem exists: serve-fs may start reading), ``P<pid>`` (the session's host pid),
``W<text>`` (a warning) and ``E<text>`` (setup failed: nothing ran).  The pipe is
close-on-exec, so its end-of-file means the command was executed or setup failed.

Caveats:
- the session stays alive, and serve-fs with it, while any process started in it runs
  (``sleep 100 &``): the mount namespace lives until its last process exits.
- ``--effective-user`` changes the owner of files the session creates on the host; the
  session itself keeps the container's ids.
"""

from __future__ import annotations

import contextlib
import errno
import os
import select
import signal
import sys
import time
from collections.abc import Callable, Iterator, Sequence

from cntr import launch
from cntr.context import Context
from cntr.errors import (
    SessionSetupError,
    StaleContext,
    os_error,
)
from cntr.launch import DEFAULT_BASE_DIR, SessionServer, check_host
from cntr.linux import caps, cgroups, fresh, lsm, mounts, namespaces, procfs, pty, syscalls
from cntr.record import field, record
from stages.capture import BOUND_FILES

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from typing import Any

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
SETUP_TIMEOUT = float(os.environ.get("CNTR_SETUP_TIMEOUT") or 30)
"""Seconds the session may take to be built (up to the command's execve) before enter
gives up: a serve-fs that never answers would otherwise leave the setup blocked."""


class _SetupTimeout(Exception):
    """The setup child did not finish within SETUP_TIMEOUT."""


@record
class EnterOptions:
    """How to enter; every field has the default a user gets from ``cntr attach``."""

    command: Sequence[str] = ()
    """the command and its arguments; empty: the caller's ``$SHELL`` (or ``/bin/sh``)."""
    base_dir: str = field(default_factory=lambda: os.environ.get("CNTR_BASE_DIR")
                          or DEFAULT_BASE_DIR)
    """where the container's root appears in the session."""
    effective_user: tuple[int, int] | None = None
    """uid and gid that own files the session creates on the host."""
    tty: bool | None = None
    """allocate a pty; None: when stdin and stdout are terminals."""
    container_root: bool = False
    """run in the container's own root instead of the host's served tree (``cntr exec``)."""
    read_only: bool = False
    """offline sessions (``cntr.offline``): throw the session's changes away."""
    network: str = "none"
    """offline sessions: "none" (a new network namespace, loopback only) or "host"."""


def verify(ctx: Context, proc: str = "/proc") -> None:
    """Refuse a context whose process is gone or replaced; the message says which field.
    An offline context has no process (``cntr.offline`` checks the engine instead)."""
    if ctx.offline is not None:
        return
    pid = ctx.pid
    try:
        start = procfs.read_start_time(pid, proc)
    except (FileNotFoundError, ProcessLookupError):
        raise StaleContext(
            f"process {pid} of container {ctx.name or ctx.container_id} is gone "
            "(the container exited or was restarted)") from None
    boot = procfs.read_boot_id(proc)
    if boot != ctx.boot_id:
        raise StaleContext(f"the context was captured in another boot ({ctx.boot_id})")
    if start != ctx.start_time:
        raise StaleContext(
            f"process {pid} is not the captured one: its start time differs "
            "(the pid was reused or the container restarted)")
    current = procfs.read_namespaces(pid, proc)
    if procfs.read_state(pid, proc) in "ZX" or any(k not in current for k in ctx.namespaces):
        # A zombie: it exited, and its namespaces are being released.
        raise StaleContext(
            f"process {pid} of container {ctx.name or ctx.container_id} is gone "
            "(it exited)")
    for kind, ino in ctx.namespaces.items():
        if current.get(kind) != ino:
            raise StaleContext(
                f"process {pid} is in another {kind} namespace than when captured "
                f"({ino} -> {current.get(kind)})")


def session_env(ctx: Context, opts: EnterOptions, interactive: bool) -> dict[str, str]:
    """The container's environment; in a session (not ``cntr exec``) PATH is extended with
    the host's so its tools are found."""
    env = dict(ctx.env)
    if interactive and "TERM" in os.environ:
        env.setdefault("TERM", os.environ["TERM"])
    if opts.container_root:
        return env
    cpath = env.get("PATH") or DEFAULT_PATH
    parts = cpath.split(":")
    # Last, where cntr itself lives (its virtualenv), so `cntr exec` works in the session.
    extra = [os.path.dirname(sys.executable)]
    for p in [*os.environ.get("PATH", DEFAULT_PATH).split(":"), *extra]:
        if p and p not in parts:
            parts.append(p)
    env["PATH"] = ":".join(parts)
    env["CNTR_CONTAINER_PATH"] = cpath
    if opts.base_dir != DEFAULT_BASE_DIR:
        env["CNTR_BASE_DIR"] = opts.base_dir
    return env


def wants_tty(opts: EnterOptions) -> bool:
    """A pty for the session: as asked, else when stdin and stdout are terminals."""
    return opts.tty if opts.tty is not None else (os.isatty(0) and os.isatty(1))


def session_cwd(ctx: Context, opts: EnterOptions) -> str:
    """The container's working directory, as the session sees it."""
    if opts.container_root:
        return ctx.cwd
    return os.path.join(opts.base_dir, ctx.cwd.lstrip("/"))


def default_command() -> list[str]:
    shell = os.environ.get("SHELL") or "/bin/sh"
    return [shell if os.path.exists(shell) else "/bin/sh"]


@contextlib.contextmanager
def open_server(base_dir: str | None = None) -> Iterator[SessionServer]:
    """The serve-fs of a session: the one the console entry prestarted, or a new one;
    ended (if it never started) or waited for when the block ends."""
    base_dir = base_dir or EnterOptions().base_dir
    server = launch.take_prestarted()
    if server is None or server.base_dir != base_dir:
        if server is not None:
            server.close()
        server = SessionServer(base_dir)
    try:
        yield server
    finally:
        server.close()


def _send(fd: int, tag: bytes, text: str = "") -> None:
    with contextlib.suppress(OSError):
        os.write(fd, tag + text.encode(errors="replace").replace(b"\n", b" ") + b"\n")


def _fail(fd: int, what: str, exc: BaseException) -> None:
    if isinstance(exc, OSError):
        msg = str(os_error(what, exc))
        if exc.filename and str(exc.filename) not in msg:
            msg = f"{what}({exc.filename}): {msg.split(': ', 1)[1]}"
    else:
        msg = f"{what}: {exc}"
    _send(fd, b"E", msg)


@record
class _Plan:
    """What the setup child and the session process work from (all inherited by fork)."""

    ctx: Context
    opts: EnterOptions
    argv: list[str]
    env: dict[str, str]
    nsfds: namespaces.NamespaceFds
    root_fd: int
    """the container's root, opened in the host's mount namespace."""
    fuse_fd: int | None
    slave: int | None
    """the pty's slave, when interactive."""
    status_w: int
    """the write end of the message pipe."""
    supervisor: int
    """pid of the supervisor (the setup child's parent)."""


_RESET_SIGNALS = (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP,
                  signal.SIGPIPE, signal.SIGXFSZ)
_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2)


def _session_process(plan: _Plan) -> None:
    """In the container's pid namespace: credentials, label, cwd, execve. Never returns."""
    ctx, opts, argv, env, slave, status_w = (
        plan.ctx, plan.opts, plan.argv, plan.env, plan.slave, plan.status_w)
    step = "set up the session"
    try:
        if ctx.offline is not None:
            step = "mount /proc, /sys and /dev"
            from cntr import offline

            offline.session_init(ctx, opts.base_dir, status_w, slave)  # returns in a child
            step = "set up the session"
        # Python ignores SIGPIPE (and the setup child SIGINT); the command must start with
        # the default dispositions, as from a shell.
        for sig in _RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        if slave is not None:
            step = "make the pty the controlling terminal"
            pty.make_controlling(slave)
        else:
            # A process group of its own, so signals reach the whole session (the supervisor
            # forwards them; a terminal's Ctrl-C reaches the supervisor's group only once).
            os.setsid()
        if ctx.no_new_privs:
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        step = "set the LSM label"
        lsm.apply_label(lsm.Label(ctx.lsm, ctx.label))
        step = "drop capabilities"
        caps.drop_bounding(ctx.caps.bounding)
        syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)
        step = "set groups"
        # A user namespace with setgroups denied (user_namespaces(7)) refuses this; the
        # container itself cannot change groups either.
        with contextlib.suppress(PermissionError):
            os.setgroups(ctx.groups)
        step = f"setresgid({ctx.gid})"
        os.setresgid(ctx.gid, ctx.gid, ctx.gid)
        step = f"setresuid({ctx.uid})"
        os.setresuid(ctx.uid, ctx.uid, ctx.uid)
        step = "set capabilities"
        caps.set_sets(ctx.caps.effective, ctx.caps.permitted, ctx.caps.inheritable,
                      ctx.caps.ambient)
        try:
            os.chdir(session_cwd(ctx, opts))
        except OSError:
            os.chdir("/")
        step = f"run {argv[0]}"
        os.execvpe(argv[0], argv, env)
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        if step.startswith("run ") and isinstance(exc, OSError):
            _send(status_w, b"E", f"cannot run {argv[0]!r}: {exc.strerror}")
            os._exit(127 if exc.errno == errno.ENOENT else 126)
        _fail(status_w, step, exc)
        os._exit(125)


def _setup_child(plan: _Plan) -> None:
    """The single-threaded setup child. Never returns."""
    ctx, opts, fuse_fd, nsfds, root_fd, status_w = (
        plan.ctx, plan.opts, plan.fuse_fd, plan.nsfds, plan.root_fd, plan.status_w)
    session = 0

    def supervisor_gone(_signum: int, _frame: object) -> None:
        # The supervisor died (SIGKILL): end the whole session, then ourselves, so no
        # process is left in the container and the namespace (and serve-fs) goes away.
        if session:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session, signal.SIGKILL)
        os._exit(128 + signal.SIGKILL)

    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_IGN)  # the supervisor forwards them to the session
    signal.signal(signal.SIGTERM, supervisor_gone)
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != plan.supervisor:
        os._exit(125)  # it died before the line above
    step = "join the container's cgroups"
    try:
        cgroups.join(ctx.cgroups, os.getpid())
        step = "open the container's mount namespace"
        mnt_fd = nsfds.fds.pop("mnt")
        if opts.container_root and ctx.offline is not None:
            step = "enter the container's root"
            fresh.private_root(mnt_fd, root_fd)
        elif opts.container_root:
            step = "enter the container's root"
            syscalls.setns(mnt_fd, syscalls.CLONE_NEWNS, "setns(mnt)")
            os.fchdir(root_fd)
            os.chroot(".")
        else:
            assert fuse_fd is not None  # enter() passes one unless container_root
            step = "build the session's mount namespace"
            spec = mounts.SessionRoot(fuse_fd=fuse_fd, base_dir=opts.base_dir.strip("/"),
                                      files=BOUND_FILES)

            def mounted() -> None:
                os.close(fuse_fd)  # serve-fs holds it now: if it dies, FUSE aborts
                _send(status_w, b"M")

            mounts.build(spec, mnt_fd, root_fd, mounted)
            # offline: no container /proc, /dev, /sys to bind; the session mounts its own
            for item in spec.skipped if ctx.offline is None else ():
                _send(status_w, b"W", f"not bound in the session: {item}")
        os.close(root_fd)
        step = "join the container's namespaces"
        namespaces.join(nsfds, namespaces.JOIN_ORDER)
        nsfds.close()
        if ctx.offline is not None:
            step = "create the session's namespaces"
            fresh.unshare_namespaces(ctx.offline.hostname, network=opts.network != "host")
        step = "fork the session process"
        pid = os.fork()
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        _fail(status_w, step, exc)
        os._exit(125)
    if pid == 0:
        _session_process(plan)
    session = pid
    _send(status_w, b"P", str(pid))
    os.close(status_w)
    if plan.slave is not None:
        os.close(plan.slave)
    while True:
        try:
            _, status = os.waitpid(pid, 0)
            break
        except ChildProcessError:
            os._exit(125)
    code = os.waitstatus_to_exitcode(status)
    os._exit(128 - code if code < 0 else code)


def enter(ctx: Context, opts: EnterOptions | None = None,
          server: SessionServer | None = None) -> int:
    """Run ``opts.command`` in a session inside the container; return its exit status.

    A signal that ends the command gives 128+N, as a shell reports it.  ``server`` is a
    serve-fs started earlier (``open_server``); without one, enter starts its own.
    """
    opts = opts or EnterOptions()
    check_host()
    if ctx.offline is not None:  # no process to join: cntr.offline holds its filesystem
        return _enter_offline(ctx, opts, server)
    verify(ctx)
    if server is None and not opts.container_root:
        with open_server(opts.base_dir) as own:
            return _enter(ctx, opts, own)
    return _enter(ctx, opts, server)


def _enter_offline(ctx: Context, opts: EnterOptions, server: SessionServer | None) -> int:
    from cntr import offline

    def build(root_fd: int, started: Callable[[int], None]) -> int:
        # Our own mount namespace stands for the container's: build() setns()es into it.
        target = (os.dup(root_fd), namespaces.open_own_mnt(), started)
        if server is None and not opts.container_root:
            with open_server(opts.base_dir) as own:
                return _enter(ctx, opts, own, target)
        return _enter(ctx, opts, server, target)

    return offline.run(ctx, opts.read_only, build)


def _enter(ctx: Context, opts: EnterOptions, server: SessionServer | None,
           target: tuple[int, namespaces.NamespaceFds, Callable[[int], None]] | None = None,
           ) -> int:
    argv = list(opts.command) or default_command()
    interactive = wants_tty(opts)
    env = session_env(ctx, opts, interactive)
    started: Callable[[int], None] | None = None
    if target is not None:  # an offline session: its root and only its mount namespace
        root_fd, nsfds, started = target
    else:
        try:
            root_fd = os.open(f"/proc/{ctx.pid}/root",
                              os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
            try:
                nsfds = namespaces.open_namespaces(ctx.pid)
            except BaseException:
                os.close(root_fd)
                raise
        except FileNotFoundError:
            raise StaleContext(f"process {ctx.pid} exited") from None

    master = slave = None
    if interactive:
        master, slave = pty.open_pty(0)
    status_r, status_w = os.pipe()
    fuse_fd = server.fuse_fd if server is not None and not opts.container_root else None
    supervisor = os.getpid()
    child = os.fork()
    if child == 0:
        os.close(status_r)
        _setup_child(_Plan(ctx, opts, argv, env, nsfds, root_fd, fuse_fd, slave, status_w,
                           supervisor))
    if started is not None:
        started(child)
    os.close(status_w)
    os.close(root_fd)
    nsfds.close()
    if slave is not None:
        os.close(slave)
    params: dict[str, Any] = {"uid_map": ctx.uid_map, "gid_map": ctx.gid_map,
                              "effective_user": opts.effective_user}
    if server is not None:
        server.release_fuse_fd()
    return _supervise(child, server=server if fuse_fd is not None else None, params=params,
                      status_r=status_r, master=master, pid=ctx.pid)


def _read_messages(status_r: int, child: int, server: SessionServer | None,
                   params: dict[str, Any]) -> tuple[list[str], int | None]:
    """Read the setup messages until end-of-file; start serve-fs on 'M'."""
    errors: list[str] = []
    session_pid: int | None = None
    buf = b""
    deadline = time.monotonic() + SETUP_TIMEOUT
    with os.fdopen(status_r, "rb", buffering=0) as f:
        while True:
            left = deadline - time.monotonic()
            try:
                ready = left > 0 and select.select([f], [], [], left)[0]
            except InterruptedError:
                continue
            if not ready:
                raise _SetupTimeout
            chunk = f.read(4096)
            if not chunk:
                break
            buf += chunk
            while b"\n" in buf:
                line, buf = buf.split(b"\n", 1)
                tag, text = line[:1], line[1:].decode(errors="replace")
                if tag == b"M" and server is not None:
                    if launch.SERVE_FS_ISOLATION:
                        # The session's own mount namespace: serve-fs refuses requests
                        # from processes outside it (the container's, through /proc/PID/root).
                        params["allowed_mnt_ns"] = os.stat(f"/proc/{child}/ns/mnt").st_ino
                    server.start(params)
                elif tag == b"P":
                    session_pid = int(text)
                elif tag == b"W":
                    print(f"cntr: warning: {text}", file=sys.stderr)
                elif tag == b"E":
                    errors.append(text)
    return errors, session_pid


def _supervise(child: int, *, server: SessionServer | None, params: dict[str, Any],
               status_r: int, master: int | None, pid: int) -> int:
    session_pid: int | None = None

    def container_gone() -> bool:
        try:
            return procfs.read_state(pid) in "ZX"
        except OSError:
            return True

    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            if session_pid:
                os.killpg(session_pid, signum)
            else:  # still setting up: stop it (the setup child ends on SIGTERM)
                os.kill(child, signal.SIGTERM)

    old = {s: signal.signal(s, forward) for s in _FORWARDED}
    try:
        try:
            errors, session_pid = _read_messages(status_r, child, server, params)
        except _SetupTimeout:
            # Ending serve-fs aborts the FUSE connection: whatever waits on it fails.
            if server is not None:
                server.kill()
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGKILL)
            os.waitpid(child, 0)
            raise SessionSetupError(
                f"the session was not ready within {SETUP_TIMEOUT:g} s "
                "(serve-fs did not answer); nothing ran") from None
        if master is not None and not errors:
            pidfd = syscalls.pidfd_open(child)
            try:
                pty.relay(master, pidfd)
            finally:
                os.close(pidfd)
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        if forwarded and session_pid:
            # cntr was told to stop: what the session left running (a job that ignores the
            # signal, as background jobs of sh do) goes too, so nothing stays behind.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(session_pid, signal.SIGKILL)
        code = os.waitstatus_to_exitcode(status)
        if errors and code in (125, 126, 127):
            if code == 125:
                raise SessionSetupError(errors[0])
            print(f"cntr: {errors[0]}", file=sys.stderr)
        code = 128 - code if code < 0 else code
        if code == 128 + signal.SIGKILL and pid and container_gone():
            print(f"cntr: the container exited (process {pid} is gone): the session ended",
                  file=sys.stderr)
        return code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if master is not None:
            os.close(master)


def run_in_container(ctx: Context, command: Sequence[str]) -> int:
    """``cntr exec ID -- CMD``: the command in the container's own root and environment."""
    return enter(ctx, EnterOptions(command=command, container_root=True))


def describe(ctx: Context, opts: EnterOptions | None = None) -> list[dict[str, Any]]:
    """The ordered plan ``enter`` would carry out, without doing any of it (--dry-run)."""
    opts = opts or EnterOptions()
    argv = list(opts.command) or default_command()
    interactive = wants_tty(opts)
    env = session_env(ctx, opts, interactive)
    mounts_info = cgroups.cgroup_mounts(procfs.read_bytes("/proc/self/mountinfo").decode())
    own = procfs.read_namespaces(os.getpid())
    steps: list[dict[str, Any]] = [
        {"step": "verify", "pid": ctx.pid, "start_time": ctx.start_time,
         "boot_id": ctx.boot_id, "namespaces": ctx.namespaces},
    ]
    if not opts.container_root:
        steps += [
            {"step": "open", "path": launch.FUSE_DEVICE},
            {"step": "mkdir", "path": opts.base_dir, "where": "host"},
            {"step": "serve-fs", "root": "/", "uid_map": ctx.uid_map, "gid_map": ctx.gid_map,
             "effective_user": opts.effective_user},
        ]
    steps.append({"step": "join-cgroups",
                  "paths": cgroups.cgroup_dirs(ctx.cgroups, mounts_info)})
    if "mnt" in ctx.namespaces and ctx.namespaces["mnt"] != own.get("mnt"):
        steps.append({"step": "setns", "namespace": "mnt", "inode": ctx.namespaces["mnt"]})
    if opts.container_root:
        steps.append({"step": "chroot", "path": ctx.root})
    else:
        base = opts.base_dir
        steps += [
            {"step": "unshare", "namespace": "mnt", "propagation": "private"},
            {"step": "mount", "source": "fuse.cntr (serve-fs: the host's /)", "target": "/"},
            {"step": "bind", "source": f"{ctx.root} (container /)", "target": base,
             "recursive": True},
        ]
        steps += [{"step": "bind", "source": f"container /{d}", "target": f"/{d}",
                   "recursive": True} for d in mounts.MOUNT_DIRS]
        steps += [{"step": "bind", "source": f"container /{f}", "target": f"/{f}"}
                  for f in BOUND_FILES if ctx.files.get(f) is not None]
        steps.append({"step": "pivot_root", "path": "/"})
    for kind in namespaces.JOIN_ORDER:
        if kind in ctx.namespaces and ctx.namespaces[kind] != own.get(kind):
            steps.append({"step": "setns", "namespace": kind, "inode": ctx.namespaces[kind]})
    steps.append({"step": "fork"})
    full = (1 << (syscalls.cap_last_cap() + 1)) - 1
    steps += [
        {"step": "capabilities", "drop_bounding": caps.names(full & ~ctx.caps.bounding),
         "effective": caps.names(ctx.caps.effective),
         "permitted": caps.names(ctx.caps.permitted),
         "inheritable": caps.names(ctx.caps.inheritable),
         "ambient": caps.names(ctx.caps.ambient), "no_new_privs": ctx.no_new_privs},
        {"step": "ids", "uid": ctx.uid, "gid": ctx.gid, "groups": ctx.groups},
    ]
    if ctx.lsm and ctx.label:
        steps.append({"step": "lsm-label", "lsm": ctx.lsm, "label": ctx.label})
    steps += [
        {"step": "chdir", "path": session_cwd(ctx, opts)},
        {"step": "exec", "argv": argv, "env": env, "pty": interactive},
    ]
    if ctx.offline is not None:
        from cntr import offline

        steps = offline.plan(steps, ctx, opts.read_only, opts.network, opts.base_dir)
    return steps
