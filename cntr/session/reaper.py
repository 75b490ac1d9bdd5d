"""The reaper and the command: the plan's ``reaper`` and ``command`` parts.

The reaper is the session's first process in the container's pid namespace: session
leader, subreaper, the container's credentials plus the guard capability and the seccomp
filter that takes its power away (``cntr.linux.seccomp``), non-dumpable.  It forks the
command, forwards signals to the command's process group, reaps every orphan of the
session, reports the command's end (``X``, then ``L`` if processes are left) and exits
when it has no child left, with the command's status.

The command runs in a process group of its own (the terminal's foreground one), with
default signal dispositions, in the container's working directory; one that cannot be run
exits 127 (not found) or 126.

Caveats:
- the session stays alive, and serve-fs with it, while any process started in it runs
  (``sleep 100 &``): the reaper waits for them, and the mount namespace lives until its
  last process exits.  cntr returns the command's status without waiting for them.
"""

from __future__ import annotations

import errno
import os

from cntr.errors import suppress
from cntr.linux import caps, lsm, seccomp, syscalls
from cntr.session import messages, plan
from cntr.session.inherit import FORWARDED, Inherited
from cntr.session.messages import send

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal

RESET_SIGNALS = (*FORWARDED, signal.SIGPIPE, signal.SIGXFSZ, signal.SIGTTOU,
                 signal.SIGCHLD)
"""Signals the command must start with at their default dispositions, as from a shell
(Python ignores SIGPIPE and SIGXFSZ, the setup child the forwarded ones)."""
REAPER_WAITS = {*FORWARDED, signal.SIGCHLD}
"""Signals the reaper keeps blocked and takes with sigwaitinfo."""


def _close_fds(keep: set[int]) -> None:
    """Close every descriptor but ``keep``: the reaper lives as long as the session and
    must hold nothing of the host's (the pty master, serve-fs's pipes, /proc)."""
    lo = 0
    for fd in sorted(keep):
        if lo < fd:  # closerange(0, 0) would close everything (close_range(0, ~0))
            os.closerange(lo, fd)
        lo = fd + 1
    os.closerange(lo, os.sysconf("SC_OPEN_MAX"))


class _Step:
    """What an error names."""

    def __init__(self) -> None:
        self.step = "set up the session"


def _run(inh: Inherited, op: plan.Op, ended_w: int, at: _Step) -> None:
    """One operation of the reaper's part (the fork of the command aside)."""
    if isinstance(op, plan.SessionInit):
        at.step = "mount /proc, /sys and /dev"
        from cntr import offline

        offline.session_init(inh.ctx, op.base_dir)  # returns in a child
        at.step = "set up the session"
    elif isinstance(op, plan.ReaperSession):
        # Taken with sigwaitinfo in the loop below: a signal that arrives before the
        # command exists waits, and reaches the command once it does.
        signal.pthread_sigmask(signal.SIG_BLOCK, REAPER_WAITS)
        for sig in REAPER_WAITS:
            signal.signal(sig, signal.SIG_DFL)
        keep = {0, 1, 2, inh.status_w, ended_w}
        _close_fds(keep | {fd for fd in (inh.slave, inh.log_fd) if fd is not None})
        syscalls.set_name(plan.REAPER_COMM)  # what ps shows in the container
        if inh.slave is not None and op.controlling_tty:
            at.step = "make the pty the controlling terminal"
            # The supervisor imported it with the pty (this process imports nothing).
            from cntr.linux import pty

            pty.make_controlling(inh.slave)
        else:
            os.setsid()
        # Orphans of the session come here, not to the container's pid 1, which may
        # never wait for them (facts.md: only a subreaper in the same pid namespace).
        syscalls.prctl(syscalls.PR_SET_CHILD_SUBREAPER, 1)
    elif isinstance(op, plan.NoNewPrivs):
        syscalls.prctl(syscalls.PR_SET_NO_NEW_PRIVS, 1)
    elif isinstance(op, plan.LsmLabel):
        at.step = "set the LSM label"
        lsm.apply_label(lsm.Label(op.lsm, op.label))
    elif isinstance(op, plan.Capabilities):
        if op.guard is not None:
            at.step = "install the seccomp filter"
            # Before the capability drop: with CAP_SYS_ADMIN no no_new_privs is needed, so
            # the session's no_new_privs stays exactly the container's.
            seccomp.install(op.guard)
        at.step = "drop capabilities"
        caps.drop_bounding(op.bounding)
        syscalls.prctl(syscalls.PR_SET_KEEPCAPS, 1)
    elif isinstance(op, plan.Ids):
        at.step = "set groups"
        # A user namespace with setgroups denied (user_namespaces(7)) refuses this; the
        # container itself cannot change groups either.
        with suppress(PermissionError):
            os.setgroups(op.groups)
        at.step = f"setresgid({op.gid})"
        os.setresgid(op.gid, op.gid, op.gid)
        at.step = f"setresuid({op.uid})"
        os.setresuid(op.uid, op.uid, op.uid)
    elif isinstance(op, plan.CapabilitySets):
        at.step = "set capabilities"
        caps.set_sets(op.effective, op.permitted, op.inheritable, op.ambient)
        # The reaper never executes anything, so this stays: its memory (cntr's, with the
        # session's plan) is out of reach of the container even where there is no guard
        # (CAP_SYS_PTRACE in the init user namespace is needed, ptrace(2)).
        syscalls.prctl(syscalls.PR_SET_DUMPABLE, 0)
    else:
        raise AssertionError(f"not an operation of the reaper: {op!r}")


def reaper(inh: Inherited, ended_w: int) -> None:
    """The reaper: carries out its part of the plan, forks the command, forwards signals
    to it and reaps every descendant. Never returns."""
    status_w = inh.status_w
    at = _Step()
    ops = inh.plan.part("reaper")
    fork = ops.pop()
    assert isinstance(fork, plan.ForkCommand)
    try:
        for op in ops:
            _run(inh, op, ended_w, at)
            inh.log(op)
        exec_r, exec_w = os.pipe()
        at.step = "fork the command"
        inh.log(fork)
        cmd = os.fork()
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        messages.fail(status_w, at.step, exc)
        os._exit(125)
    if cmd == 0:
        os.close(exec_r)
        command(inh, fork)
    try:
        os.close(exec_w)
        with suppress(OSError):
            os.setpgid(cmd, cmd)  # the command does it too: whichever runs first
        tty = os.dup(0) if inh.slave is not None else None
        # The command has stdio now; holding them would keep a reader of cntr's output
        # waiting for leftovers that closed theirs.
        for fd in (0, 1, 2):
            with suppress(OSError):
                os.close(fd)
        os.read(exec_r, 1)  # end-of-file: the command was executed, or failed to be
        os.close(exec_r)
        send(status_w, messages.READY)
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
                with suppress(ProcessLookupError):
                    os.killpg(cmd, signal.SIGCONT)
                continue
            if pid == cmd:
                code = os.waitstatus_to_exitcode(status)
                code = 128 - code if code < 0 else code
                if tty is not None:
                    from cntr.linux import pty  # the supervisor's, with the pty

                    pty.give_up(tty)
                    os.close(tty)
                    tty = None
                # Before the supervisor hears of it: the setup child reads this to know
                # that cntr ending now leaves the leftovers alone.
                os.write(ended_w, b"X")
                os.close(ended_w)
                send(status_w, messages.EXITED, str(code))
        if code is not None and status_w >= 0:
            send(status_w, messages.LEFT)  # processes are left: they keep the session
            os.close(status_w)
            status_w = -1
        info = signal.sigwaitinfo(REAPER_WAITS)
        if info.si_signo != signal.SIGCHLD and code is None:
            try:
                os.killpg(cmd, info.si_signo)
            except ProcessLookupError:  # it left its group (setsid)
                with suppress(ProcessLookupError):
                    os.kill(cmd, info.si_signo)


def execute(argv: list[str], env: dict[str, str], first: str | None) -> None:
    """``os.execvpe(argv[0], argv, env)``: ``argv[0]`` looked up in ``env``'s PATH (the
    default path without one), each entry tried with execve, the first error that is not
    ENOENT or ENOTDIR raised when none runs (else the last).  Without os.execvpe's
    ``import warnings`` (os.get_exec_path): here, where / is the served tree, an import is
    a round of FUSE requests before the command.

    ``first``: where the supervisor found the search ends in the host's tree
    (`cntr.session.supervisor.host_exec_path`), tried first: every entry before it is
    absent there, and so in the served tree, so a miss through FUSE is saved per entry.
    If it does not run here (the session's ids may not execute it, the tree changed), the
    search runs as os.execvpe's, whose result it then is. Returns only by raising OSError."""
    name = argv[0]
    if first is not None:
        with suppress(OSError):
            os.execve(first, argv, env)
    if "/" in name:  # os.execvpe: a path is executed as it is, not searched
        os.execve(name, argv, env)
    saved: OSError | None = None
    last: OSError | None = None
    for entry in env.get("PATH", os.defpath).split(os.pathsep):
        try:
            os.execve(os.path.join(entry, name), argv, env)
        except (FileNotFoundError, NotADirectoryError) as exc:
            last = exc
        except OSError as exc:
            last = exc
            saved = saved or exc
    assert last is not None  # str.split gives at least one entry
    raise saved or last


def command(inh: Inherited, fork: plan.ForkCommand) -> None:
    """The command, forked by the reaper: a process group of its own (in the terminal's
    foreground when ``fork.foreground``), default signal dispositions, then the plan's
    ``command`` part: the working directory, execve. Never returns."""
    status_w = inh.status_w
    step = "start the command"
    argv = ["?"]
    try:
        os.setpgid(0, 0)
        if inh.slave is not None and fork.foreground:
            # Job control: the terminal's signals (Ctrl-C, Ctrl-Z, SIGWINCH) go to this
            # group. From a background group tcsetpgrp stops the caller with SIGTTOU
            # unless it is ignored (tcsetpgrp(3)); it is reset below.
            signal.signal(signal.SIGTTOU, signal.SIG_IGN)
            os.tcsetpgrp(0, os.getpid())
        for sig in RESET_SIGNALS:
            signal.signal(sig, signal.SIG_DFL)
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        for op in inh.plan.part("command"):
            if isinstance(op, plan.Chdir):
                try:
                    os.chdir(op.path)
                except OSError:
                    os.chdir(op.otherwise)
                inh.log(op)
            elif isinstance(op, plan.Exec):
                argv = op.argv
                step = f"run {argv[0]}"
                inh.log(op)
                execute(argv, op.env, inh.exec_path)
            else:
                raise AssertionError(f"not an operation of the command: {op!r}")
        raise AssertionError("the plan has no exec")
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        if step.startswith("run ") and isinstance(exc, OSError):
            send(status_w, messages.ERROR, f"cannot run {argv[0]!r}: {exc.strerror}")
            os._exit(127 if exc.errno == errno.ENOENT else 126)
        messages.fail(status_w, step, exc)
        os._exit(125)
