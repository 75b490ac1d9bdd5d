"""``cntr enter``: build the nested container from a context and run a command in it.

The stage checks the context (``verify``; ``--tools``: ``verify_tools``), makes the plan
(``cntr.session.plan``) and either prints it (``describe``, ``--dry-run``) or carries it
out (``enter``: ``cntr.session.supervisor``, which forks the setup child, the reaper and
the command, see ``cntr.session``).  An offline context (a container that runs no
process) is entered over its filesystem, held by ``cntr.offline`` for the session.

Caveats:
- the session stays alive, and serve-fs with it, while any process started in it runs
  (``sleep 100 &``): the reaper waits for them, and the mount namespace lives until its
  last process exits.  cntr returns the command's status without waiting for them.
- ``--effective-user`` changes the owner of files the session creates on the host; the
  session itself keeps the container's ids.
"""

from __future__ import annotations

import os
import sys

from cntr import audit, launch
from cntr.context import Context
from cntr.errors import StaleContext
from cntr.launch import SessionServer, check_host
from cntr.linux import cgroups, namespaces, procfs
from cntr.session import plan, supervisor
from cntr.session.plan import EnterOptions, default_command, wants_tty
from cntr.stages.capture import verify_tools

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any

__all__ = ["EnterOptions", "default_command", "describe", "enter", "open_server", "verify",
           "wants_tty"]
"""The stage; the options and the command's defaults are ``cntr.session.plan``'s."""


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


def open_server(base_dir: str | None = None) -> SessionServer:
    """The serve-fs of a session: the one the console entry prestarted, or a new one;
    ended (if it never started) or waited for when the ``with`` block it is used in ends."""
    base_dir = base_dir or EnterOptions().base_dir
    server = launch.take_prestarted()
    if server is None or server.base_dir != base_dir:
        if server is not None:
            server.close()
        server = SessionServer(base_dir)
    return server


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
            cgroups.warm_up()  # after serve-fs's fork, which would end it
            return _enter(ctx, opts, own)
    # The setup child's cgroup join then finds the migration lock ready (attach started
    # it already: this does nothing there).
    cgroups.warm_up()
    return _enter(ctx, opts, server)


def _enter_offline(ctx: Context, opts: EnterOptions, server: SessionServer | None) -> int:
    from cntr import offline

    def build(root_fd: int, started: Callable[[int], None]) -> int:
        # Our own mount namespace stands for the container's: the setup child setns()es
        # into it (plan.SetnsMnt).
        target = (os.dup(root_fd), namespaces.open_own_mnt(), started)
        if server is None and not opts.container_root:
            with open_server(opts.base_dir) as own:
                return _enter(ctx, opts, own, target)
        return _enter(ctx, opts, server, target)

    return offline.run(ctx, opts.read_only, build)


def _open_root(pid: int) -> int:
    try:
        return os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise StaleContext(f"process {pid} exited") from None


def _enter(ctx: Context, opts: EnterOptions, server: SessionServer | None,
           target: tuple[int, namespaces.NamespaceFds, Callable[[int], None]] | None = None,
           ) -> int:
    started: Callable[[int], None] | None = None
    if target is not None:  # an offline session: its root and only its mount namespace
        root_fd, nsfds, started = target
    else:
        root_fd = _open_root(ctx.pid)
        try:
            nsfds = namespaces.open_namespaces(ctx.pid)
        except FileNotFoundError:
            os.close(root_fd)
            raise StaleContext(f"process {ctx.pid} exited") from None
        except BaseException:
            os.close(root_fd)
            raise
    try:
        session = plan.build(ctx, opts, plan.gather(ctx, opts, root_fd))
    except BaseException:
        os.close(root_fd)
        nsfds.close()
        raise
    caps_op = session.find(plan.Capabilities)
    if caps_op is not None and caps_op.unguarded:
        print(f"cntr: warning: {caps_op.unguarded}", file=sys.stderr)
    return supervisor.run(ctx, opts, session, server=server, root_fd=root_fd, nsfds=nsfds,
                          started=started)


def describe(ctx: Context, opts: EnterOptions | None = None) -> list[dict[str, Any]]:
    """The ordered plan ``enter`` would carry out, without doing any of it (--dry-run):
    the operations the session's processes execute, as they print them."""
    opts = opts or EnterOptions()
    if ctx.offline is not None or opts.container_root:
        return plan.build(ctx, opts, plan.gather(ctx, opts, None)).show()
    root_fd = _open_root(ctx.pid)
    try:
        return plan.build(ctx, opts, plan.gather(ctx, opts, root_fd)).show()
    finally:
        os.close(root_fd)
