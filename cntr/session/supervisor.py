"""The supervisor: cntr's own process, in the host's namespaces, for the session's lifetime.

``run`` forks the setup child (``cntr.session.setup``) with the plan and serve-fs's
parameters (the setup child hands them over once the FUSE filesystem is created), relays
the pty, forwards signals to the reaper (to the setup child, which ends the set-up, before
the reaper exists) and returns the command's exit status; a set-up that fails is a
``SessionSetupError`` (exit 125), one that takes longer than ``SETUP_TIMEOUT`` too.

Caveats:
- ``--effective-user`` changes the owner of files the session creates on the host; the
  session itself keeps the container's ids.
"""

from __future__ import annotations

import os
import select
import stat
import struct
import sys
import time

from cntr import audit, launch
from cntr.context import Context
from cntr.errors import SessionSetupError, suppress
from cntr.launch import SessionServer
from cntr.linux import procfs
from cntr.linux.namespaces import NamespaceFds
from cntr.session import messages, plan
from cntr.session.inherit import FORWARDED, Inherited, open_log
from cntr.session.messages import Messages, SetupTimeout
from cntr.session.setup import setup_child

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal
if TYPE_CHECKING:
    from typing import Any

SETUP_TIMEOUT = float(os.environ.get("CNTR_SETUP_TIMEOUT") or 30)
"""Seconds the session may take to be built (up to the command's execve) before enter
gives up: a serve-fs that never answers would otherwise leave the setup blocked."""


def serve_fs_params(op: plan.ServeFs) -> dict[str, Any]:
    """serve-fs's parameters; for a --tools session also the tree to serve, the mount
    points the session needs, shown (not made: nothing is written into it) where the tree
    lacks them, and a static busybox for `cntr exec`, which the tree does not have."""
    params: dict[str, Any] = {"uid_map": op.uid_map, "gid_map": op.gid_map,
                              "effective_user": op.effective_user}
    if op.tools is None:
        return params
    helper = launch.static_busybox()
    if helper is None:
        print("cntr: warning: cntr exec does not work in this session: the host has no "
              "static busybox (apt-get install busybox-static)", file=sys.stderr)
    return params | {"root": op.root, "exec_helper": helper, "synthetic": list(op.synthetic)}


def below(path: str, dirs: list[str]) -> bool:
    """``path`` (as written, or with its links resolved here) is one of ``dirs`` or below
    one.  Its links are resolved once (realpath stats every component)."""
    forms = (os.path.normpath(path), os.path.realpath(path))
    return any(p == d or p.startswith(d.rstrip("/") + "/") for d in dirs for p in forms)


def host_exec_path(argv: list[str], env: dict[str, str], differs: list[str]) -> str | None:
    """Where ``execute``'s search of ``argv[0]`` ends in the supervisor's tree (the host's,
    which serve-fs serves as the session's /): the first PATH entry that holds a regular
    file with an execute bit, as ``os.path.join(entry, argv[0])``; None when the search
    cannot be decided here: ``argv[0]`` is a path, an entry before it is relative (the
    session's working directory), or it or an entry before it is at or below one of
    ``differs`` (the session's own mounts: the container's root, /proc, /dev, /sys, the
    bound files), or not found.  Entries absent here are absent in the session too."""
    name = argv[0]
    if not name or "/" in name:
        return None
    for entry in env.get("PATH", os.defpath).split(os.pathsep):
        if not entry.startswith("/"):
            return None
        path = os.path.join(entry, name)
        if below(path, differs):
            return None
        try:
            st = os.stat(path)
        except (FileNotFoundError, NotADirectoryError):
            continue
        except OSError:
            return None
        if stat.S_ISREG(st.st_mode) and st.st_mode & 0o111:
            return path
        # Not executable: execve fails with EACCES there and the search goes on.
    return None


def exec_prefetch(path: str | None) -> tuple[str, ...]:
    """What the execve of ``path`` (`host_exec_path`'s answer) looks up through FUSE that
    is worth looking up ahead (`cntr.session.setup.prefetch`): the file, its ELF
    interpreter (``PT_INTERP``, elf(5)) and the dynamic loader's cache, read last; nothing
    for a static, non-ELF (a script) or unreadable file."""
    if path is None:
        return ()
    try:
        with open(path, "rb") as f:
            head = f.read(64)
            if len(head) < 64 or head[:6] != b"\x7fELF\x02\x01":  # 64-bit, little-endian
                return ()
            phoff, = struct.unpack_from("<Q", head, 32)
            phentsize, phnum = struct.unpack_from("<HH", head, 54)
            f.seek(phoff)
            table = f.read(phentsize * phnum)
            for i in range(phnum):
                at = i * phentsize
                if struct.unpack_from("<I", table, at)[0] == 3:  # PT_INTERP
                    offset, = struct.unpack_from("<Q", table, at + 8)
                    size, = struct.unpack_from("<Q", table, at + 32)
                    f.seek(offset)
                    interp = f.read(min(size, 4096)).split(b"\0")[0].decode()
                    return (path, interp, "/etc/ld.so.cache") if interp.startswith("/") else ()
    except (OSError, struct.error, UnicodeDecodeError):
        return ()
    return ()


def run(ctx: Context, opts: plan.EnterOptions, session: plan.Plan, *,
        server: SessionServer | None, root_fd: int, nsfds: NamespaceFds,
        started: Callable[[int], None] | None = None) -> int:
    """Carry out ``session``: fork the setup child on ``root_fd`` and ``nsfds`` (both
    closed here once it has them) and supervise it; the command's exit status.
    ``started(pid)`` is called with the setup child's pid."""
    serve = session.find(plan.ServeFs)
    exe = session.find(plan.Exec)
    assert exe is not None
    master = slave = None
    if exe.pty:
        # Imported only for a pty (with termios, tty and contextlib), before the session's
        # processes are forked: they use it and import nothing themselves.
        from cntr.linux import pty

        master, slave = pty.open_pty(0)
    status_r, status_w = os.pipe()
    fuse_fd = server.fuse_fd if server is not None and serve is not None else None
    log_fd = open_log()
    exec_path = None
    ahead: tuple[str, ...] = ()
    if serve is not None and serve.tools is None:  # the session's / is the host's tree
        mounted = session.mounted_over()
        exec_path = host_exec_path(exe.argv, exe.env, mounted)
        # (a path such as $SHELL's is not searched, but looked up ahead all the same)
        given = exe.argv[0] if exe.argv[0].startswith("/") else None
        ahead = exec_prefetch(exec_path or (given if given and not below(given, mounted)
                                            else None))
    start: Callable[[int], None] | None = None
    if server is not None and serve is not None and fuse_fd is not None:
        params = serve_fs_params(serve)
        fs = server

        def start(mnt_ns: int) -> None:
            if launch.SERVE_FS_ISOLATION:
                # The session's own mount namespace: serve-fs refuses requests from
                # processes outside it (the container's, via /proc/PID/root).
                params["allowed_mnt_ns"] = mnt_ns
            fs.start(params)

    inh = Inherited(ctx, opts, session, nsfds, root_fd, fuse_fd, slave, status_w,
                    os.getpid(), master, log_fd, exec_path, ahead, start)
    for op in session.part("supervisor"):  # done: the context checked, serve-fs started
        inh.log(op)
    child = os.fork()
    if child == 0:
        os.close(status_r)
        setup_child(inh)
    if started is not None:
        started(child)
    os.close(status_w)
    os.close(root_fd)
    nsfds.close()
    if slave is not None:
        os.close(slave)
    if log_fd is not None:
        os.close(log_fd)
    if server is not None:
        server.release_fuse_fd()
        if start is not None:
            server.handed_over()
    return supervise(child, server=server if fuse_fd is not None else None,
                     status_r=status_r, master=master, pid=ctx.pid)


def supervise(child: int, *, server: SessionServer | None, status_r: int,
              master: int | None, pid: int) -> int:
    """Read the setup child's and the reaper's messages until the command has ended (or
    the set-up failed); its exit status.  Closes ``status_r`` and ``master``.  ``server``
    (the setup child starts it) is killed when the set-up times out."""
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
        with suppress(ProcessLookupError):
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

    old = {s: signal.signal(s, forward) for s in FORWARDED}
    msgs = Messages(status_r)
    try:
        errors: list[str] = []
        started = False
        deadline = time.monotonic() + SETUP_TIMEOUT
        try:
            while not started and (msg := msgs.next(deadline)) is not None:
                tag, text = msg
                if tag == messages.REAPER:
                    reaper = int(text)
                    audit.SESSION_PID = reaper
                elif tag == messages.WARNING:
                    print(f"cntr: warning: {text}", file=sys.stderr)
                elif tag == messages.ERROR:
                    errors.append(text)
                elif tag == messages.READY:
                    started = True
        except SetupTimeout:
            # Ending serve-fs aborts the FUSE connection: whatever waits on it fails; the
            # setup child then ends what it started (SIGTERM), else it is killed.
            if server is not None:
                server.kill()
            with suppress(ProcessLookupError):
                os.kill(child, signal.SIGTERM)
            pidfd = os.pidfd_open(child)
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
                from cntr.linux import pty  # imported by run, with the pty

                pty.relay(master, status_r)  # until the command's end is reported
            while (msg := msgs.next()) is not None:
                tag, text = msg
                if tag == messages.EXITED:
                    code = int(text)
                elif tag == messages.LEFT:
                    left = True
                    break
                elif tag == messages.ERROR:
                    errors.append(text)
        if code is None:
            # Set-up failed, or the session was killed before the command's end was
            # reported (the container exited): the setup child's status says which.
            code = wait_child()
        elif left and forwarded:
            # cntr was told to stop: what the session left running (a job that ignores the
            # signal, as background jobs of sh do) goes too, so nothing stays behind.
            with suppress(ProcessLookupError):
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
