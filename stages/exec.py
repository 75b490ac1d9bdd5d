"""``cntr exec``: run a command of the container in its own root and environment.

Inside an attach session (no container named) it chroots into the session's view of the
container's root (``$CNTR_BASE_DIR``, default ``/var/lib/cntr``) with the container's
PATH restored; from the host (a container named) it resolves, captures and enters with
the container's root as ``/`` instead of the host's served tree.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Sequence

from cntr.errors import CommandNotRun, NotFound, PermissionDenied
from cntr.launch import DEFAULT_BASE_DIR, check_host
from cntr.linux import cgroups
from cntr.stages.capture import capture
from cntr.stages.enter import EnterOptions, enter
from cntr.stages.resolve import resolve


def exec_in_session(command: Sequence[str]) -> int:
    """In an attach session: exec ``command`` chrooted into the container's root."""
    base = os.environ.get("CNTR_BASE_DIR") or DEFAULT_BASE_DIR
    if "CNTR_CONTAINER_PATH" not in os.environ or not os.path.isdir(base):
        raise NotFound(
            "not inside a cntr session: name a container (cntr exec ID -- CMD) "
            "or run this from a shell started by cntr attach")
    env = {k: v for k, v in os.environ.items() if k not in ("CNTR_CONTAINER_PATH",
                                                              "CNTR_BASE_DIR")}
    env["PATH"] = os.environ["CNTR_CONTAINER_PATH"]
    cwd = os.getcwd()
    try:
        os.chroot(base)
    except PermissionError:
        raise PermissionDenied(
            f"chroot({base}): the session lacks CAP_SYS_CHROOT (the container's "
            "capabilities do not include it)") from None
    rel = os.path.relpath(cwd, base) if cwd.startswith(base.rstrip("/") + "/") else ""
    try:
        os.chdir("/" + rel if rel and not rel.startswith("..") else "/")
    except OSError:
        os.chdir("/")
    argv = list(command) or ["/bin/sh"]
    try:
        os.execvpe(argv[0], argv, env)
    except OSError as exc:
        raise CommandNotRun(
            f"cannot run {argv[0]!r} in the container: {exc.strerror}",
            127 if exc.errno == errno.ENOENT else 126) from None


def exec_in_container(ident: str, types: list[str] | None, command: Sequence[str]) -> int:
    """From the host: run ``command`` in the container's root, namespaces and ids."""
    check_host()
    cgroups.warm_up()  # while resolve and capture run: the session's cgroup join is faster
    resolved = resolve(ident, types)
    ctx = capture(resolved.pid, resolved)
    return enter(ctx, EnterOptions(command=list(command) or ["/bin/sh"],
                                   container_root=True))
