"""``cntr enter``: build the nested container from a context and run a command in it.

Four processes, as in the original cntr's "two-process dance" plus a server and a reaper:

- this process, the *supervisor* (host namespaces), checks the context, hands serve-fs
  (``cntr.launch``, forked early with the ``/dev/fuse`` descriptor) its parameters once the
  filesystem is mounted, relays the pty, forwards signals to the reaper and returns the
  command's exit status;
- a *setup child*, single-threaded, joins the container's cgroups, builds the session's
  mount namespace (``cntr.linux.mounts``), joins the uts, ipc, net, cgroup, pid, time and
  user namespaces, forks the reaper and waits for it; when told to stop (SIGTERM from the
  supervisor, or its parent-death signal) it kills every process of the session, found in
  the host's /proc, the reaper last;
- the *reaper*, the session's first process in the container's pid namespace: session
  leader, subreaper, the container's credentials plus the guard capability and the seccomp
  filter that takes its power away (``session_guard``, ``cntr.linux.seccomp``),
  non-dumpable; it forks the command, forwards signals to the command's process group,
  reaps every orphan of the session and exits when it has no child left;
- the *command*, in a process group of its own (the terminal's foreground one), with
  default signal dispositions, executed in the container's working directory.

Messages come back on one pipe, a line each: ``M`` (the FUSE filesystem exists: serve-fs
may start reading), ``P<pid>`` (the reaper's host pid), ``W<text>`` (a warning),
``E<text>`` (something failed: set-up, with exit status 125, or the command's execve, 126
or 127), ``R`` (the command was executed, or failed to be: set-up is over), ``X<status>``
(the command ended: its exit status, 128+N for signal N) and ``L`` (processes it left are
still running).  End-of-file means the reaper is gone (or set-up failed before it).

Caveats:
- the session stays alive, and serve-fs with it, while any process started in it runs
  (``sleep 100 &``): the reaper waits for them, and the mount namespace lives until its
  last process exits.  cntr returns the command's status without waiting for them.
- ``--effective-user`` changes the owner of files the session creates on the host; the
  session itself keeps the container's ids.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import signal
import sys
import termios
import time
from collections.abc import Callable, Iterator, Sequence

from cntr import audit, launch
from cntr.context import Context
from cntr.errors import (
    SessionSetupError,
    StaleContext,
    os_error,
)
from cntr.launch import DEFAULT_BASE_DIR, SessionServer, check_host
from cntr.linux import (
    caps,
    cgroups,
    fresh,
    lsm,
    mounts,
    namespaces,
    procfs,
    pty,
    seccomp,
    syscalls,
)
from cntr.record import field, record
from stages.capture import BOUND_FILES, verify_tools

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
    the host's so its tools are found, and with where ``cntr`` is (``/.cntr`` in a
    ``--tools`` session)."""
    env = dict(ctx.env)
    if interactive and "TERM" in os.environ:
        env.setdefault("TERM", os.environ["TERM"])
    if opts.container_root:
        return env
    cpath = env.get("PATH") or DEFAULT_PATH
    parts = cpath.split(":")
    # Last, where cntr itself lives (its virtualenv), so `cntr exec` works in the session;
    # in a --tools session, the /.cntr that serve-fs shows there (cntr.fs.tree).
    extra = ["/.cntr"] if ctx.tools else [os.path.dirname(sys.executable)]
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
    guard: int | None = None
    """the capability the session holds beyond the container's (``session_guard``)."""
    master: int | None = None
    """the pty's master (the supervisor's: closed in the setup child)."""


_FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
              signal.SIGUSR2)
_RESET_SIGNALS = (*_FORWARDED, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTTOU,
                  signal.SIGCHLD)
"""Signals the command must start with at their default dispositions, as from a shell
(Python ignores SIGPIPE and SIGXFSZ, the setup child the forwarded ones)."""
REAPER_COMM = b"cntr-reaper"
"""The reaper's process name (comm), as ps in the container shows it."""
_REAPER_WAITS = {*_FORWARDED, signal.SIGCHLD}
"""Signals the reaper keeps blocked and takes with sigwaitinfo."""


def session_guard(ctx: Context) -> tuple[int | None, str | None]:
    """The guard capability of a session of ``ctx`` (``cntr.linux.caps.guard_bit``) and,
    when there is none, the warning saying why the container can trace the session."""
    name = ctx.name or ctx.container_id or str(ctx.pid)
    if ctx.caps.bounding >> caps.SYS_PTRACE & 1:
        return None, (f"container {name} holds cap_sys_ptrace: its processes can trace "
                      "the session's processes and read their memory")
    bit = caps.guard_bit(ctx.caps.bounding, ctx.caps.inheritable)
    if bit is None:
        return None, (f"container {name} holds cap_wake_alarm and cap_sys_boot: no "
                      "capability is left to keep its processes from tracing the session's")
    if seccomp.program(bit) is None:
        return None, (f"no seccomp filter for {os.uname().machine}: processes of container "
                      f"{name} can trace the session's processes")
    return bit, None


def _session_sets(ctx: Context, guard: int | None) -> tuple[int, int, int, int, int]:
    """(bounding, effective, permitted, inheritable, ambient) of the session."""
    c = ctx.caps
    if guard is None:
        return c.bounding, c.effective, c.permitted, c.inheritable, c.ambient
    return caps.guarded_sets(c.bounding, c.effective, c.permitted, c.inheritable, c.ambient,
                             uid=ctx.uid)


def _close_fds(keep: set[int]) -> None:
    """Close every descriptor but ``keep``: the reaper lives as long as the session and
    must hold nothing of the host's (the pty master, serve-fs's pipes, /proc)."""
    lo = 0
    for fd in sorted(keep):
        if lo < fd:  # closerange(0, 0) would close everything (close_range(0, ~0))
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, os.sysconf("SC_OPEN_MAX"))


def _reaper(plan: _Plan, ended_w: int) -> None:
    """First process of the session in the container's pid namespace: session leader,
    subreaper, the container's credentials plus the guard; forks the command, forwards
    signals to it and reaps every descendant. Never returns."""
    ctx, slave, status_w = plan.ctx, plan.slave, plan.status_w
    step = "set up the session"
    try:
        if ctx.offline is not None:
            step = "mount /proc, /sys and /dev"
            from cntr import offline

            offline.session_init(ctx, plan.opts.base_dir)  # returns in a child
            step = "set up the session"
        # Taken with sigwaitinfo in the loop below: a signal that arrives before the
        # command exists waits, and reaches the command once it does.
        signal.pthread_sigmask(signal.SIG_BLOCK, _REAPER_WAITS)
        for sig in _REAPER_WAITS:
            signal.signal(sig, signal.SIG_DFL)
        _close_fds({0, 1, 2, status_w, ended_w} | ({slave} if slave is not None else set()))
        syscalls.set_name(REAPER_COMM)  # what ps shows in the container
        if slave is not None:
            step = "make the pty the controlling terminal"
            pty.make_controlling(slave)
        else:
            os.setsid()
        # Orphans of the session come here, not to the container's pid 1, which may
        # never wait for them (facts.md: only a subreaper in the same pid namespace).
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
        if ctx.no_new_privs:
            syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
        step = "set the LSM label"
        lsm.apply_label(lsm.Label(ctx.lsm, ctx.label))
        bounding, effective, permitted, inheritable, ambient = _session_sets(ctx, plan.guard)
        if plan.guard is not None:
            step = "install the seccomp filter"
            # Before the capability drop: with CAP_SYS_ADMIN no no_new_privs is needed, so
            # the session's no_new_privs stays exactly the container's.
            seccomp.install(plan.guard)
        step = "drop capabilities"
        caps.drop_bounding(bounding)
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
        caps.set_sets(effective, permitted, inheritable, ambient)
        # The reaper never executes anything, so this stays: its memory (cntr's, with the
        # session's plan) is out of reach of the container even where there is no guard
        # (CAP_SYS_PTRACE in the init user namespace is needed, ptrace(2)).
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
        exec_r, exec_w = os.pipe()
        step = "fork the command"
        cmd = os.fork()
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        _fail(status_w, step, exc)
        os._exit(125)
    if cmd == 0:
        os.close(exec_r)
        _command(plan)
    try:
        os.close(exec_w)
        with contextlib.suppress(OSError):
            os.setpgid(cmd, cmd)  # the command does it too: whichever runs first
        tty = os.dup(0) if slave is not None else None
        # The command has stdio now; holding them would keep a reader of cntr's output
        # waiting for leftovers that closed theirs.
        for fd in (0, 1, 2):
            with contextlib.suppress(OSError):
                os.close(fd)
        os.read(exec_r, 1)  # end-of-file: the command was executed, or failed to be
        os.close(exec_r)
        _send(status_w, b"R")
        _reap(cmd, status_w, ended_w, tty)
    finally:
        os._exit(125)  # only if the loop failed: a fork must never return to the caller


def _reap(cmd: int, status_w: int, ended_w: int, tty: int | None) -> None:
    """The reaper's loop: forward signals to the command's process group while it runs,
    report its end (``X``, then ``L`` if processes are left), reap until no child is left,
    then exit with the command's status. Never returns."""
    code: int | None = None
    while True:
        while True:
            try:
                pid, status = os.waitpid(-1, os.WNOHANG | os.WUNTRACED)
            except ChildProcessError:
                os._exit(code if code is not None else 0)
            if pid == 0:
                break
            if pid == cmd and os.WIFSTOPPED(status):
                # No job-control shell stands above the command to resume it (Ctrl-Z on a
                # command that is not a shell): it goes on, as it did with no reaper.
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(cmd, signal.SIGCONT)
                continue
            if pid == cmd:
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
                if tty is not None:
                    # What the kernel does when a session leader exits: SIGHUP to the
                    # foreground group, the terminal no longer controls the session.
                    with contextlib.suppress(OSError):
                        fcntl.ioctl(tty, termios.TIOCNOTTY)
                    os.close(tty)
                    tty = None
                # Before the supervisor hears of it: the setup child reads this to know
                # that cntr ending now leaves the leftovers alone.
                os.write(ended_w, b"X")
                os.close(ended_w)
                _send(status_w, b"X", str(code))
        if code is not None and status_w >= 0:
            _send(status_w, b"L")  # processes are left: they keep the session
            os.close(status_w)
            status_w = -1
        info = signal.sigwaitinfo(_REAPER_WAITS)
        if info.si_signo != signal.SIGCHLD and code is None:
            try:
                os.killpg(cmd, info.si_signo)
            except ProcessLookupError:  # it left its group (setsid)
                with contextlib.suppress(ProcessLookupError):
                    os.kill(cmd, info.si_signo)


def _command(plan: _Plan) -> None:
    """The command, forked by the reaper: a process group of its own in the terminal's
    foreground, default signal dispositions, the working directory, execve. Never
    returns; a command that cannot be run exits 127 (not found) or 126."""
    ctx, opts, argv, env, status_w = plan.ctx, plan.opts, plan.argv, plan.env, plan.status_w
    step = "start the command"
    try:
        os.setpgid(0, 0)
        if plan.slave is not None:
            # Job control: the terminal's signals (Ctrl-C, Ctrl-Z, SIGWINCH) go to this
            # group. From a background group tcsetpgrp stops the caller with SIGTTOU
            # unless it is ignored (tcsetpgrp(3)); it is reset below.
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            os.tcsetpgrp(0, os.getpid())
        for sig in _RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
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


def _descendants(proc_fd: int, root: int) -> list[int]:
    """Host pids of every descendant of ``root``, read from the host's /proc."""
    parent: dict[int, list[int]] = {}
    for entry in os.listdir(proc_fd):
        if not entry.isdigit():
            continue
        try:
            fd = os.open(f"{entry}/stat", os.O_RDONLY | os.O_CLOEXEC, dir_fd=proc_fd)
        except OSError:
            continue
        try:
            data = os.read(fd, 4096)
        except OSError:
            continue
        finally:
            os.close(fd)
        ppid = int(procfs.split_stat(data)[1][1])
        parent.setdefault(ppid, []).append(int(entry))
    out: list[int] = []
    todo = [root]
    while todo:
        kids = parent.get(todo.pop(), [])
        out += kids
        todo += kids
    return out


def _kill_session(proc_fd: int, reaper: int) -> None:
    """SIGKILL every process of the session, descendants first so that the reaper reaps
    them (killed first, it would hand them to the container's pid 1), then the reaper."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tree = _descendants(proc_fd, reaper)
        if not tree:
            break
        for pid in tree:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with contextlib.suppress(ProcessLookupError):
            os.kill(reaper, signal.SIGCONT)  # a stopped reaper reaps nothing
        time.sleep(0.01)
    with contextlib.suppress(ProcessLookupError):
        os.kill(reaper, signal.SIGKILL)
    with contextlib.suppress(ChildProcessError):
        os.waitpid(reaper, 0)


def _command_ended(ended_r: int) -> bool:
    try:
        os.read(ended_r, 1)
    except BlockingIOError:
        return False
    return True  # "X", or end-of-file: the reaper is gone


def _setup_child(plan: _Plan) -> None:
    """The single-threaded setup child. Never returns."""
    ctx, opts, fuse_fd, nsfds, root_fd, status_w = (
        plan.ctx, plan.opts, plan.fuse_fd, plan.nsfds, plan.root_fd, plan.status_w)
    reaper = 0
    if plan.master is not None:
        os.close(plan.master)
    # The host's /proc, to find the session's processes wherever the namespaces lead.
    proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    ended_r, ended_w = os.pipe()
    os.set_blocking(ended_r, False)

    def stop(_signum: int, _frame: object) -> None:
        # SIGTERM: cntr asks to end the session (it was told to stop, or gave up on the
        # set-up), or cntr died (the parent-death signal, SIGKILL included).
        if reaper and os.getppid() != plan.supervisor and _command_ended(ended_r):
            return  # cntr ended after the command: what it left running goes on (README)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        if reaper:
            _kill_session(proc_fd, reaper)
        os._exit(128 + signal.SIGKILL)

    for sig in _FORWARDED:
        signal.signal(sig, signal.SIG_IGN)  # the supervisor forwards them to the session
    signal.signal(signal.SIGTERM, stop)
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != plan.supervisor:
        os._exit(125)  # it died before the line above
    step = "join the container's cgroups"
    spec = None
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
                                      files=BOUND_FILES, pid_ns=ctx.namespaces.get("pid"))

            def mounted() -> None:
                os.close(fuse_fd)  # serve-fs holds it now: if it dies, FUSE aborts
                _send(status_w, b"M")

            mounts.build(spec, mnt_fd, root_fd, mounted)
            # offline: no container /proc, /dev, /sys to bind; the session mounts its own
            for item in spec.skipped if ctx.offline is None else ():
                _send(status_w, b"W", f"not bound in the session: {item}")
        os.close(root_fd)
        step = "join the container's namespaces"
        late = namespaces.JOIN_ORDER.index("time")
        namespaces.join(nsfds, namespaces.JOIN_ORDER[:late])
        if spec is not None and ctx.offline is None:  # offline: the session's pid 1 does
            # In the container's pid and net namespaces, still with the host's privileges.
            step = "mount the session's own /proc and /sys"
            for item in mounts.mount_kernel_fs(spec):
                _send(status_w, b"W", f"not provided in the session: {item}")
            step = "join the container's namespaces"
        namespaces.join(nsfds, namespaces.JOIN_ORDER[late:])
        nsfds.close()
        if ctx.offline is not None:
            step = "create the session's namespaces"
            fresh.unshare_namespaces(ctx.offline.hostname, network=opts.network != "host")
        step = "fork the reaper"
        # SIGTERM waits until `reaper` is set, so stop() always knows what to kill.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        _fail(status_w, step, exc)
        os._exit(125)
    if pid == 0:
        os.close(ended_r)
        _reaper(plan, ended_w)
    reaper = pid
    code = 125
    try:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.close(ended_w)
        _send(status_w, b"P", str(pid))
        os.close(status_w)
        if plan.slave is not None:
            os.close(plan.slave)
        for fd in (0, 1, 2):
            with contextlib.suppress(OSError):
                os.close(fd)  # cntr's stdio: a reader waits for its end-of-file
        _, status = os.waitpid(pid, 0)
        reaper = 0  # reaped: its pid may be reused, stop() must not signal it
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
    finally:
        os._exit(code)  # a fork must never return to the caller


@audit.logged(default_command)
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
    if ctx.tools is not None and not opts.container_root:
        verify_tools(ctx.tools)
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

    guard, warning = session_guard(ctx)
    if warning:
        print(f"cntr: warning: {warning}", file=sys.stderr)
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
                           supervisor, guard, master))
    if started is not None:
        started(child)
    os.close(status_w)
    os.close(root_fd)
    nsfds.close()
    if slave is not None:
        os.close(slave)
    params: dict[str, Any] = {"uid_map": ctx.uid_map, "gid_map": ctx.gid_map,
                              "effective_user": opts.effective_user}
    if ctx.tools is not None and fuse_fd is not None:
        params |= tools_params(ctx, opts)
    if server is not None:
        server.release_fuse_fd()
    return _supervise(child, server=server if fuse_fd is not None else None, params=params,
                      status_r=status_r, master=master, pid=ctx.pid)


def tools_params(ctx: Context, opts: EnterOptions) -> dict[str, Any]:
    """serve-fs's parameters for a --tools session: the tree to serve; the mount points
    the session needs, shown (not made: nothing is written into it) where the tree lacks
    them; and a static busybox for `cntr exec`, which the tree does not have."""
    assert ctx.tools is not None
    helper = launch.static_busybox()
    if helper is None:
        print("cntr: warning: cntr exec does not work in this session: the host has no "
              "static busybox (apt-get install busybox-static)", file=sys.stderr)
    return {"root": ctx.tools.root, "exec_helper": helper,
            "synthetic": [opts.base_dir.strip("/") + "/",
                          *(d + "/" for d in mounts.MOUNT_DIRS),
                          *(f for f in BOUND_FILES if ctx.files.get(f) is not None)]}


class _Messages:
    """The message pipe, read a line at a time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def next(self, deadline: float | None = None) -> tuple[bytes, str] | None:
        """The next (tag, text), or None at end-of-file; _SetupTimeout past ``deadline``."""
        while b"\n" not in self.buf:
            if self.eof:
                return None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise _SetupTimeout
            # A byte at a time: what follows a line stays in the pipe, where the pty relay
            # (which waits for the pipe to become readable) sees it.
            chunk = os.read(self.fd, 1)
            self.eof = not chunk
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line[:1], line[1:].decode(errors="replace")


def _supervise(child: int, *, server: SessionServer | None, params: dict[str, Any],
               status_r: int, master: int | None, pid: int) -> int:
    reaper = 0

    def container_gone() -> bool:
        try:
            fields = procfs.split_stat(procfs.read_bytes(f"/proc/{pid}/stat"))[1]
        except OSError:
            return True
        # PF_EXITING (0x4, field 9 "flags"): its pid 1 is exiting and kills the namespace's
        # processes; the command's end may be reported before it is a zombie.
        return fields[0][0] in "ZX" or bool(int(fields[6]) & 0x4)

    forwarded: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        forwarded.append(signum)
        with contextlib.suppress(ProcessLookupError):
            if reaper:
                os.kill(reaper, signum)  # it forwards to the command's process group
            else:  # still setting up: stop it (the setup child ends on SIGTERM)
                os.kill(child, signal.SIGTERM)

    def wait_child() -> int:
        while True:
            try:
                _, status = os.waitpid(child, 0)
                break
            except InterruptedError:
                continue
        code = os.waitstatus_to_exitcode(status)
        return 128 - code if code < 0 else code

    old = {s: signal.signal(s, forward) for s in _FORWARDED}
    msgs = _Messages(status_r)
    try:
        errors: list[str] = []
        started = False
        deadline = time.monotonic() + SETUP_TIMEOUT
        try:
            while not started and (msg := msgs.next(deadline)) is not None:
                tag, text = msg
                if tag == b"M" and server is not None:
                    if launch.SERVE_FS_ISOLATION:
                        # The session's own mount namespace: serve-fs refuses requests
                        # from processes outside it (the container's, via /proc/PID/root).
                        params["allowed_mnt_ns"] = os.stat(f"/proc/{child}/ns/mnt").st_ino
                    server.start(params)
                elif tag == b"P":
                    reaper = int(text)
                    audit.SESSION_PID = reaper
                elif tag == b"W":
                    print(f"cntr: warning: {text}", file=sys.stderr)
                elif tag == b"E":
                    errors.append(text)
                elif tag == b"R":
                    started = True
        except _SetupTimeout:
            # Ending serve-fs aborts the FUSE connection: whatever waits on it fails; the
            # setup child then ends what it started (SIGTERM), else it is killed.
            if server is not None:
                server.kill()
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
            pidfd = syscalls.pidfd_open(child)
            try:
                if not select.select([pidfd], [], [], 10)[0]:
                    os.kill(child, signal.SIGKILL)
            finally:
                os.close(pidfd)
            os.waitpid(child, 0)
            raise SessionSetupError(
                f"the session was not ready within {SETUP_TIMEOUT:g} s "
                "(serve-fs did not answer); nothing ran") from None
        code: int | None = None
        left = False
        if started:
            if master is not None and not errors:
                pty.relay(master, status_r)  # until the command's end is reported
            while (msg := msgs.next()) is not None:
                tag, text = msg
                if tag == b"X":
                    code = int(text)
                elif tag == b"L":
                    left = True
                    break
                elif tag == b"E":
                    errors.append(text)
        if code is None:
            # Set-up failed, or the session was killed before the command's end was
            # reported (the container exited): the setup child's status says which.
            code = wait_child()
        elif left and forwarded:
            # cntr was told to stop: what the session left running (a job that ignores the
            # signal, as background jobs of sh do) goes too, so nothing stays behind.
            with contextlib.suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
            wait_child()
        elif not left:
            wait_child()  # it ends with the reaper, which has no child left
        # else: processes are left; the setup child waits for them and init reaps it.
        if errors and code == 125:
            raise SessionSetupError(errors[0])
        if errors and code in (126, 127):
            print(f"cntr: {errors[0]}", file=sys.stderr)
        if code == 128 + signal.SIGKILL and pid and container_gone():
            print(f"cntr: the container exited (process {pid} is gone): the session ended",
                  file=sys.stderr)
        return code
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        os.close(status_r)
        if master is not None:
            os.close(master)


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
            {"step": "serve-fs", "root": ctx.tools.root if ctx.tools else "/",
             "uid_map": ctx.uid_map, "gid_map": ctx.gid_map,
             "effective_user": opts.effective_user},
        ]
        if ctx.tools is not None:
            t = ctx.tools
            steps[-1]["tools"] = {"source": t.source, "engine": t.engine or "directory",
                                  "container_id": t.container_id, "name": t.name,
                                  "pid": t.pid}
    steps.append({"step": "join-cgroups",
                  "paths": cgroups.cgroup_dirs(ctx.cgroups, mounts_info)})
    if "mnt" in ctx.namespaces and ctx.namespaces["mnt"] != own.get("mnt"):
        steps.append({"step": "setns", "namespace": "mnt", "inode": ctx.namespaces["mnt"]})
    fresh: list[str] = []
    if opts.container_root:
        steps.append({"step": "chroot", "path": ctx.root})
    else:
        base = opts.base_dir
        steps += [
            {"step": "unshare", "namespace": "mnt", "propagation": "private"},
            {"step": "mount", "source": "fuse.cntr (serve-fs: "
             + (f"the tools of {ctx.tools.source})" if ctx.tools else "the host's /)"),
             "target": "/"},
            {"step": "bind", "source": f"{ctx.root} (container /)", "target": base,
             "recursive": True},
        ]
        fresh = (list(mounts.MOUNT_DIRS) if ctx.offline is not None  # nothing to bind
                 else mounts.fresh_dirs(ctx.pid, ctx.namespaces.get("pid")))
        steps += [{"step": "bind", "source": f"container /{d}", "target": f"/{d}",
                   "recursive": True} for d in mounts.MOUNT_DIRS if d not in fresh]
        if "dev" in fresh:
            steps.append({"step": "mount", "source": mounts.FRESH["dev"], "target": "/dev"})
        steps += [{"step": "bind", "source": f"container /{f}", "target": f"/{f}"}
                  for f in BOUND_FILES if ctx.files.get(f) is not None]
        steps.append({"step": "pivot_root", "path": "/"})
    for kind in namespaces.JOIN_ORDER:
        if kind == "time":  # after the pid and net namespaces: see _setup_child
            steps += [{"step": "mount", "source": mounts.FRESH[d], "target": f"/{d}"}
                      for d in ("proc", "sys") if d in fresh]
        if kind in ctx.namespaces and ctx.namespaces[kind] != own.get(kind):
            steps.append({"step": "setns", "namespace": kind, "inode": ctx.namespaces[kind]})
    steps.append({"step": "fork", "process": "reaper", "setsid": True, "subreaper": True,
                  "dumpable": False})
    full = (1 << (syscalls.cap_last_cap() + 1)) - 1
    guard, warning = session_guard(ctx)
    bounding, effective, permitted, inheritable, ambient = _session_sets(ctx, guard)
    steps += [
        {"step": "capabilities", "drop_bounding": caps.names(full & ~bounding),
         "effective": caps.names(effective), "permitted": caps.names(permitted),
         "inheritable": caps.names(inheritable), "ambient": caps.names(ambient),
         "no_new_privs": ctx.no_new_privs,
         "guard": caps.names(1 << guard)[0] if guard is not None else None,
         "seccomp_refuses": list(seccomp.REFUSED[guard]) if guard is not None else [],
         "unguarded": warning},
        {"step": "ids", "uid": ctx.uid, "gid": ctx.gid, "groups": ctx.groups},
    ]
    if ctx.lsm and ctx.label:
        steps.append({"step": "lsm-label", "lsm": ctx.lsm, "label": ctx.label})
    steps += [
        {"step": "fork", "process": "command", "process_group": "own",
         "foreground": interactive},
        {"step": "chdir", "path": session_cwd(ctx, opts)},
        {"step": "exec", "argv": argv, "env": env, "pty": interactive},
    ]
    if ctx.offline is not None:
        from cntr import offline

        steps = offline.plan(steps, ctx, opts.read_only, opts.network, opts.base_dir)
    return steps
