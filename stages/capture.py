"""``cntr capture``: dump a container process's context (namespaces, ids, capabilities,
cgroups, LSM label, environment, cwd and the files enter binds) as a record.

``capture_tools`` reads a ``--tools SOURCE`` (a directory or another container) into the
record's ``tools``; ``verify_tools`` is enter's check that it is still there.

Caveats:
- the context is a snapshot; ``enter`` re-checks the identity fields before acting.
- files are read through the container's root with ``openat2(RESOLVE_IN_ROOT)``, so a
  symlink in the container resolves inside the container, never to a host file.
"""

from __future__ import annotations

import os
import stat

from cntr.context import BOUND_FILES, Caps, Context, Resolved, Tools
from cntr.errors import CntrError, NotFound, PermissionDenied, StaleContext, os_error
from cntr.linux import lsm, mounts, procfs

_MAX_FILE = 1 << 20


def read_container_file(root_fd: int, rel: str) -> bytes | None:
    """Content of ``rel`` inside the container's root, or None when absent/not a file."""
    fd = mounts.open_in_container(root_fd, rel, os.O_RDONLY | os.O_NONBLOCK)
    if fd is None:
        return None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            return None
        return os.read(fd, _MAX_FILE)
    finally:
        os.close(fd)


def capture(pid: int, resolved: Resolved | None = None, proc: str = "/proc") -> Context:
    """Read the context of ``pid`` (optionally as named by a resolve record); a record
    of a container that is not running (``offline``) gives its offline context instead."""
    if resolved is not None and resolved.offline is not None:
        from cntr import offline

        return offline.context_of(resolved)
    try:
        start_time = procfs.read_start_time(pid, proc)
    except FileNotFoundError:
        raise NotFound(f"process {pid} does not exist (did the container exit?)") from None
    if resolved is not None and resolved.start_time != start_time:
        raise NotFound(
            f"process {pid} is not the one resolve found (it restarted or the pid was reused)"
        )
    try:
        status = procfs.read_status(pid, proc)
        uid_map = procfs.read_id_map(pid, "uid_map", proc)
        gid_map = procfs.read_id_map(pid, "gid_map", proc)
        env = procfs.read_environ(pid, proc)
        root = procfs.read_link(f"{proc}/{pid}/root")
        cwd = procfs.read_link(f"{proc}/{pid}/cwd")
        root_fd = os.open(f"{proc}/{pid}/root", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        raise NotFound(f"process {pid} exited while it was being captured") from None
    except PermissionError as exc:
        raise PermissionDenied(
            f"cannot read /proc/{pid}: {exc.strerror} (cntr needs root)") from None
    except OSError as exc:
        raise os_error(f"read /proc/{pid}", exc) from None
    try:
        files = {rel: read_container_file(root_fd, rel) for rel in BOUND_FILES}
    finally:
        os.close(root_fd)
    if cwd == root:
        rel_cwd = "/"
    elif root == "/" or cwd.startswith(root.rstrip("/") + "/"):
        rel_cwd = "/" + cwd[len(root.rstrip("/")):].lstrip("/")
    else:
        rel_cwd = "/"
    uid = procfs.map_to_inside(status.uids[1], uid_map)
    gid = procfs.map_to_inside(status.gids[1], gid_map)
    if uid is None or gid is None:
        raise CntrError(f"process {pid} runs with ids its own user namespace does not map")
    groups = [g for g in (procfs.map_to_inside(x, gid_map) for x in status.groups)
              if g is not None]
    label = lsm.read_label(pid, proc)
    r = resolved
    return Context(
        engine=r.engine if r else "process_id",
        container_id=r.container_id if r else str(pid),
        name=r.name if r else status.name,
        pid=pid,
        start_time=start_time,
        boot_id=procfs.read_boot_id(proc),
        nspid=status.nspid[-1],
        namespaces=procfs.read_namespaces(pid, proc),
        uid_map=uid_map,
        gid_map=gid_map,
        uid=uid,
        gid=gid,
        groups=groups,
        caps=Caps(
            bounding=status.cap_bounding,
            effective=status.cap_effective,
            permitted=status.cap_permitted,
            inheritable=status.cap_inheritable,
            ambient=status.cap_ambient,
        ),
        no_new_privs=status.no_new_privs,
        cgroups=procfs.read_cgroups(pid, proc),
        lsm=label.lsm,
        label=label.label,
        env=env,
        cwd=rel_cwd,
        root=root,
        files=files,
    )


def capture_tools(source: str) -> Tools:
    """Where a session's tools come from (``--tools SOURCE``): a directory (``SOURCE``
    starts with ``/`` or ``.``), else a container, resolved as an attach's ID is: by every
    engine, or by one with ``ENGINE:NAME`` (an engine type as ``-t`` names it:
    ``docker:toolbox``; ``k8s:...`` is a kubernetes name as for ID).  A container's tree
    is served from ``/proc/PID/root``, which the host reaches without entering it.

    A missing directory or an unknown or stopped container is NotFound (exit 4)."""
    if source.startswith(("/", ".")):
        path = os.path.abspath(source)
        if not os.path.isdir(path):
            why = "not a directory" if os.path.exists(path) else "no such directory"
            raise NotFound(f"--tools {source}: {why}")
        return Tools(source, path, "", "", "", 0, 0)
    from cntr import engines
    from cntr.stages.resolve import resolve

    prefix, sep, rest = source.partition(":")
    word = engines.ALIASES.get(prefix.lower(), prefix.lower())
    types = None
    ident = source
    if sep and rest and prefix.lower() != "k8s" and word in engines.ENGINES:
        types = [word]
        ident = f"k8s:{rest}" if word == "kubernetes" and not rest.startswith("k8s:") else rest
    try:
        found = resolve(ident, types)
        if found.offline is not None:  # not running: no tools to serve; say it as before
            found = resolve(ident, types, running=True)
    except CntrError as exc:
        raise type(exc)(f"--tools {source}: {exc}") from None
    root = f"/proc/{found.pid}/root"
    if not os.path.isdir(root):
        raise NotFound(f"--tools {source}: process {found.pid} has exited")
    return Tools(source, root, found.engine, found.container_id, found.name, found.pid,
                 found.start_time)


def verify_tools(tools: Tools, proc: str = "/proc") -> None:
    """Refuse tools that are gone: a removed directory (NotFound), a container process
    that exited or was replaced since it was captured (StaleContext)."""
    if not tools.pid:
        if not os.path.isdir(tools.root):
            raise NotFound(f"--tools {tools.source}: no such directory")
        return
    try:
        start = procfs.read_start_time(tools.pid, proc)
    except (FileNotFoundError, ProcessLookupError):
        start = None
    if start != tools.start_time or procfs.read_state(tools.pid, proc) in "ZX":
        raise StaleContext(f"--tools {tools.source}: process {tools.pid} of "
                           f"{tools.name or tools.container_id} is gone (the container "
                           "exited or was restarted)")
