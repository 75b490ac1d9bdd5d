"""What the session's processes inherit from the supervisor (by fork): the plan, the
open descriptors it works on, the optional log of the operations carried out, and which
signals are the session's."""

from __future__ import annotations

import os

from cntr.context import Context
from cntr.linux.namespaces import NamespaceFds
from cntr.record import record
from cntr.session.plan import EnterOptions, Op, Plan

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal

FORWARDED = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT, signal.SIGUSR1,
             signal.SIGUSR2)
"""Signals the supervisor forwards to the reaper, which forwards them to the command's
process group (the setup child ignores them)."""


@record
class Inherited:
    """The setup child's, the reaper's and the command's starting point."""

    ctx: Context
    opts: EnterOptions
    plan: Plan
    nsfds: NamespaceFds
    """the container's namespaces (an offline session: cntr's own mount namespace)."""
    root_fd: int
    """the container's root, opened in the host's mount namespace."""
    fuse_fd: int | None
    """the /dev/fuse descriptor serve-fs reads (none for ``cntr exec``)."""
    slave: int | None
    """the pty's slave, when interactive."""
    status_w: int
    """the write end of the message pipe (``cntr.session.messages``)."""
    supervisor: int
    """pid of the supervisor (the setup child's parent)."""
    master: int | None = None
    """the pty's master (the supervisor's: closed in the setup child)."""
    log_fd: int | None = None
    """``CNTR_PLAN_LOG``'s file, or None."""
    exec_path: str | None = None
    """where the command's PATH search ends in the host's tree, tried first
    (`cntr.session.supervisor.host_exec_path`); None: search."""
    prefetch: tuple[str, ...] = ()
    """paths the command's execve will look up, the last one read, looked up ahead by
    `cntr.session.setup.prefetch` (empty: none)."""
    start_serve_fs: Callable[[int], None] | None = None
    """hands serve-fs its parameters, given the inode of the session's mount namespace:
    the setup child calls it once the FUSE filesystem is created (None: no serve-fs)."""

    def log(self, op: Op) -> None:
        """Append ``op``, carried out, to the plan log (one JSON line, as --dry-run
        prints it)."""
        if self.log_fd is None:
            return
        import json

        os.write(self.log_fd, json.dumps(op.show()).encode() + b"\n")


def open_log() -> int | None:
    """``CNTR_PLAN_LOG``'s file, opened for appending (inherited by fork, not by exec)."""
    path = os.environ.get("CNTR_PLAN_LOG")
    if not path:
        return None
    return os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o600)
