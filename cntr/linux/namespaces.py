"""Opening and joining a process's namespaces.

All namespace descriptors are opened *before* any is joined: once the mount namespace is
the container's, ``/proc`` may be the container's and pids differ.

Caveats:
- setns(2) into the user namespace the caller is already in fails with EINVAL;
  ``open_namespaces`` leaves it out (joining any other kind one already shares is a no-op).
- joining a pid or time namespace affects only children: fork after ``join``.
- the user namespace is joined last, so the others are joined with the host's privileges.
"""

from __future__ import annotations

import os

from cntr.linux import syscalls
from cntr.record import record

FLAGS = {
    "mnt": syscalls.CLONE_NEWNS,
    "uts": syscalls.CLONE_NEWUTS,
    "ipc": syscalls.CLONE_NEWIPC,
    "net": syscalls.CLONE_NEWNET,
    "pid": syscalls.CLONE_NEWPID,
    "cgroup": syscalls.CLONE_NEWCGROUP,
    "time": syscalls.CLONE_NEWTIME,
    "user": syscalls.CLONE_NEWUSER,
}
JOIN_ORDER = ("uts", "ipc", "net", "cgroup", "pid", "time", "user")
"""Order of joining after the mount namespace; user last (see module docstring)."""


@record
class NamespaceFds:
    """Open descriptors of the namespaces to join, by kind."""

    fds: dict[str, int]

    def close(self) -> None:
        for fd in self.fds.values():
            os.close(fd)
        self.fds.clear()


def open_namespaces(pid: int, kinds: tuple[str, ...] = tuple(FLAGS)) -> NamespaceFds:
    """Open ``/proc/PID/ns/KIND`` for each kind (but a user namespace the caller shares)."""
    fds: dict[str, int] = {}
    try:
        for kind in kinds:
            path = f"/proc/{pid}/ns/{kind}"
            try:
                fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
            except FileNotFoundError:
                if not os.path.exists(f"/proc/{pid}"):
                    raise
                continue  # the kernel lacks this kind
            if kind == "user" and os.fstat(fd).st_ino == os.stat("/proc/self/ns/user").st_ino:
                os.close(fd)  # setns into one's own user namespace is EINVAL
                continue
            fds[kind] = fd
    except BaseException:
        for fd in fds.values():
            os.close(fd)
        raise
    return NamespaceFds(fds)


def open_own_mnt() -> NamespaceFds:
    """Only the caller's own mount namespace (an offline session has no other to join)."""
    return NamespaceFds({"mnt": os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)})


def join(nsfds: NamespaceFds, kinds: tuple[str, ...]) -> None:
    """setns(2) into each of ``kinds`` that is open, in the given order."""
    for kind in kinds:
        fd = nsfds.fds.get(kind)
        if fd is not None:
            syscalls.setns(fd, FLAGS[kind], f"setns({kind})")
