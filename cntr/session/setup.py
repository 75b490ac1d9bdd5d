"""The setup child: carries out the plan's ``setup`` part, forks the reaper, waits for it,
and ends the session when told to.

It is single-threaded (setns into a mount namespace needs it) and starts in the host's
namespaces: it joins the container's cgroups, builds the session's mount namespace
(``cntr.linux.mounts``), joins the container's namespaces (the user namespace last, so the
others are joined with the host's privileges), mounts the fresh /proc and /sys it needs in
between, and forks the reaper (``cntr.session.reaper``), in the container's pid namespace.
It hands serve-fs its parameters itself once the FUSE filesystem is created, and once in
the session's tree starts `prefetch` (the command's execve then finds what it looks up
known to the kernel).  Any failure is one ``E`` message and exit status 125.

SIGTERM (from the supervisor, or the parent-death signal when cntr dies) kills every
process of the session, descendants first, found in the host's /proc; once the command has
ended and cntr is gone, what the command left running goes on (README).
"""

from __future__ import annotations

import os
import time

from cntr.errors import suppress
from cntr.linux import cgroups, mounts, namespaces, procfs, syscalls
from cntr.session import messages, plan
from cntr.session import reaper as reaper_process
from cntr.session.inherit import FORWARDED, Inherited
from cntr.session.messages import send

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal


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


def kill_session(proc_fd: int, reaper: int) -> None:
    """SIGKILL every process of the session, descendants first so that the reaper reaps
    them (killed first, it would hand them to the container's pid 1), then the reaper."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        tree = _descendants(proc_fd, reaper)
        if not tree:
            break
        for pid in tree:
            with suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        with suppress(ProcessLookupError):
            os.kill(reaper, signal.SIGCONT)  # a stopped reaper reaps nothing
        time.sleep(0.01)
    with suppress(ProcessLookupError):
        os.kill(reaper, signal.SIGKILL)
    with suppress(ChildProcessError):
        os.waitpid(reaper, 0)


def prefetch(paths: tuple[str, ...]) -> int:
    """Fork a process that looks up ``paths`` (and reads the last one), so that the kernel
    knows their entries, and the last one's pages, before the command's execve walks the
    same paths through FUSE: the round trips are made while the setup child and the reaper
    still work.  It holds no descriptor of the session's and only reads; its pid."""
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child exits
        try:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)  # not the setup child's stop()
            os.closerange(0, os.sysconf("SC_OPEN_MAX"))
            for path in paths[:-1]:
                with suppress(OSError):
                    os.stat(path)
            with suppress(OSError), open(paths[-1], "rb") as f:
                f.read()
        finally:
            os._exit(0)
    return pid


def _end_prefetch(pid: int) -> None:
    """End and reap the prefetching process when the set-up ends before the reaper is
    forked (killed first: it may wait on a serve-fs that is gone)."""
    if pid:
        with suppress(ProcessLookupError):
            os.kill(pid, signal.SIGKILL)
        with suppress(ChildProcessError):
            os.waitpid(pid, 0)


def _command_ended(ended_r: int) -> bool:
    try:
        os.read(ended_r, 1)
    except BlockingIOError:
        return False
    return True  # "X", or end-of-file: the reaper is gone


class _Steps:
    """The setup child's interpreter over the plan's ``setup`` part; ``step`` is what an
    error names."""

    def __init__(self, inh: Inherited, proc_fd: int) -> None:
        self.inh = inh
        self.proc_fd = proc_fd
        """the host's /proc"""
        self.prefetching = 0
        """pid of the `prefetch` process, or 0"""
        self.step = "join the container's cgroups"
        self.root_open = True

    def warn(self, text: str) -> None:
        send(self.inh.status_w, messages.WARNING, text)

    def run(self, ops: list[plan.Op]) -> None:
        """Carry out ``ops`` (up to the fork of the reaper, which is the caller's)."""
        i = 0
        while i < len(ops):
            op = ops[i]
            if isinstance(op, plan.MountFuse):
                # One pass over the whole tree (mounts.assemble): every copy is taken
                # before the FUSE filesystem exists, every move made once serve-fs serves.
                j = i + 1
                while j < len(ops) and isinstance(ops[j], plan.Bind | plan.FreshDev):
                    j += 1
                self.tree(op, ops[i + 1:j])
                i = j
                continue
            self.one(op)
            self.inh.log(op)
            i += 1

    def close_root(self) -> None:
        if self.root_open:
            os.close(self.inh.root_fd)
            self.root_open = False

    def one(self, op: plan.Op) -> None:
        inh = self.inh
        if isinstance(op, plan.JoinCgroups):
            self.step = "join the container's cgroups"
            cgroups.join(op.paths, os.getpid())
        elif isinstance(op, plan.SetnsMnt):
            self.step = "open the container's mount namespace"
            mnt_fd = inh.nsfds.fds.pop("mnt")
            self.step = op.what
            try:
                mounts.enter_root(mnt_fd, inh.root_fd)
            finally:
                os.close(mnt_fd)
        elif isinstance(op, plan.Chroot):
            self.step = "enter the container's root"
            if op.private:
                from cntr.linux import fresh  # imported by setup_child, in the host's

                fresh.chroot_private_copy()
            else:
                os.chroot(".")
            self.close_root()
        elif isinstance(op, plan.UnshareMnt):
            self.step = "build the session's mount namespace"
            mounts.unshare_private()
        elif isinstance(op, plan.PivotRoot):
            self.step = "build the session's mount namespace"
            mounts.pivot()
            self.close_root()
            if inh.prefetch:  # in the session's tree now, while the rest is set up
                self.prefetching = prefetch(inh.prefetch)
        elif isinstance(op, plan.Warn):
            self.warn(op.text)
        elif isinstance(op, plan.Setns):
            self.step = "join the container's namespaces"
            namespaces.join(inh.nsfds, (op.kind,))
        elif isinstance(op, plan.FreshProc | plan.FreshSys):
            self.step = "mount the session's own /proc and /sys"
            failed = (mounts.mount_fresh_proc() if isinstance(op, plan.FreshProc)
                      else mounts.mount_fresh_sys(bool(op.only_if)))
            if failed is not None:
                self.warn(f"not provided in the session: {failed}")
        elif isinstance(op, plan.UnshareNamespaces):
            self.step = "create the session's namespaces"
            from cntr.linux import fresh  # imported by setup_child, in the host's

            fresh.unshare_namespaces(op.hostname, network=op.network)
        else:
            raise AssertionError(f"not an operation of the setup child: {op!r}")

    def tree(self, fuse: plan.Op, binds: list[plan.Op]) -> None:
        self.step = "build the session's mount namespace"
        inh = self.inh
        fuse_fd = inh.fuse_fd
        assert fuse_fd is not None  # the plan mounts FUSE only where enter opened it

        def created() -> None:
            os.close(fuse_fd)  # serve-fs holds it now: if it dies, FUSE aborts
            if inh.start_serve_fs is not None:
                # Here, not by the supervisor on a message: one wake-up less on the way
                # to serve-fs's first answer, which every later step waits for.
                inh.start_serve_fs(os.stat(f"{os.getpid()}/ns/mnt", dir_fd=self.proc_fd).st_ino)

        items: list[mounts.Item] = [
            (b.source, b.target, b.recursive) if isinstance(b, plan.Bind) else (None, "dev", True)
            for b in binds]
        skipped = mounts.assemble(fuse_fd, items, created,
                                  lambda i: inh.log(fuse if i < 0 else binds[i]))
        # offline: no container /proc, /dev, /sys to bind; the session mounts its own
        for item in skipped if inh.ctx.offline is None else ():
            self.warn(f"not bound in the session: {item}")


def setup_child(inh: Inherited) -> None:
    """The single-threaded setup child. Never returns."""
    status_w = inh.status_w
    reaper = 0
    if inh.master is not None:
        os.close(inh.master)
    # The host's /proc, to find the session's processes wherever the namespaces lead.
    proc_fd = os.open("/proc", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    ended_r, ended_w = os.pipe()
    os.set_blocking(ended_r, False)
    steps = _Steps(inh, proc_fd)

    def stop(_signum: int, _frame: object) -> None:
        # SIGTERM: cntr asks to end the session (it was told to stop, or gave up on the
        # set-up), or cntr died (the parent-death signal, SIGKILL included).
        if reaper and os.getppid() != inh.supervisor and _command_ended(ended_r):
            return  # cntr ended after the command: what it left running goes on (README)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        _end_prefetch(steps.prefetching)
        if reaper:
            kill_session(proc_fd, reaper)
        os._exit(128 + signal.SIGKILL)

    for sig in FORWARDED:
        signal.signal(sig, signal.SIG_IGN)  # the supervisor forwards them to the session
    signal.signal(signal.SIGTERM, stop)
    syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != inh.supervisor:
        os._exit(125)  # it died before the line above
    ops = inh.plan.part("setup")
    if any(isinstance(op, plan.Chroot | plan.UnshareNamespaces) for op in ops):
        # Here, in the host's namespaces: an import once in the container's would read its
        # files.  Only offline sessions and cntr exec use it (with _socket and fcntl).
        from cntr.linux import fresh  # noqa: F401
    fork = ops.pop()
    assert isinstance(fork, plan.ForkReaper)
    try:
        steps.run(ops)
        steps.close_root()
        inh.nsfds.close()
        steps.step = "fork the reaper"
        inh.log(fork)
        # SIGTERM waits until `reaper` is set, so stop() always knows what to kill.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
        pid = os.fork()
    except BaseException as exc:  # noqa: BLE001 - report anything, then exit
        messages.fail(status_w, steps.step, exc)
        _end_prefetch(steps.prefetching)
        os._exit(125)
    if pid == 0:
        os.close(ended_r)
        reaper_process.reaper(inh, ended_w)
    reaper = pid
    code = 125
    try:
        os.close(ended_w)
        send(status_w, messages.REAPER, str(pid))  # first: signals go to the reaper now
        if steps.prefetching:
            # Reaped now, a few look-ups from its end: the reaper is again this process's
            # only child (with SIGTERM blocked still, stop() never signals a reaped pid).
            with suppress(ChildProcessError):
                os.waitpid(steps.prefetching, 0)
            steps.prefetching = 0
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGTERM})
        os.close(status_w)
        if inh.slave is not None:
            os.close(inh.slave)
        for fd in (0, 1, 2):
            with suppress(OSError):
                os.close(fd)  # cntr's stdio: a reader waits for its end-of-file
        _, status = os.waitpid(pid, 0)
        reaper = 0  # reaped: its pid may be reused, stop() must not signal it
        code = os.waitstatus_to_exitcode(status)
        code = 128 - code if code < 0 else code
    finally:
        _end_prefetch(steps.prefetching)
        os._exit(code)  # a fork must never return to the caller
