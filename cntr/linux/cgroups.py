"""Joining a container's cgroups, v1 and v2 (hybrid hosts have both).

The container's membership comes from ``/proc/PID/cgroup`` read in the host's cgroup
namespace; each line is placed under the host's mount of that hierarchy, found in
``/proc/self/mountinfo``.  Joining writes the pid to ``cgroup.procs``.

Caveats:
- a v1 hierarchy the host has not mounted is skipped (nothing to join);
- joining a v2 cgroup with subtree controllers enabled is refused by the kernel
  ("no internal processes"); the container's own leaf is always joinable.

The first move of a process into a cgroup takes ~10 ms of waiting (nothing of CPU):
every migration takes the kernel's ``cgroup_threadgroup_rwsem`` for writing
(``cgroup_attach_lock``, kernel/cgroup/cgroup.c), a per-CPU rwsem whose writer first waits
for an RCU grace period unless another writer came within about one grace period before
(``rcu_sync_enter``/``rcu_sync_exit``, kernel/rcu/sync.c; the ``favordynmods`` mount
option keeps it ready for good).  ``warm_up`` starts that wait early and keeps the rwsem
ready, in a thread, with migrations that move nothing, until ``warmed``: the session's
join then finds it ready (measured here: 10-11 ms without, 0.1-1 ms with).
"""

from __future__ import annotations

import os

from cntr.linux.procfs import parse_cgroups, read_bytes

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import Any


def cgroup_mounts(mountinfo: str) -> dict[str, str]:
    """Map a hierarchy key (``"0"`` for v2, else the v1 controller list) to its mount point.

    The v1 key is the comma-separated controller list as ``/proc/PID/cgroup`` prints it,
    e.g. ``cpu,cpuacct`` or ``name=systemd``.
    """
    out: dict[str, str] = {}
    for line in mountinfo.splitlines():
        pre, _, post = line.partition(" - ")
        fields = pre.split()
        fstype, _source, superopts = [*post.split(), "", "", ""][:3]
        mountpoint = fields[4].replace("\\040", " ")
        if fields[3] != "/":
            continue  # a bind of a sub-cgroup: not the hierarchy root
        if fstype == "cgroup2":
            out.setdefault("0", mountpoint)
        elif fstype == "cgroup":
            ctrls = [o for o in superopts.split(",") if _is_controller(o)]
            out.setdefault(",".join(ctrls), mountpoint)
    return out


_NOT_CONTROLLERS = frozenset(
    {"rw", "ro", "noprefix", "xattr", "clone_children", "cpuset_v2_mode", "favordynmods"}
)


def _is_controller(opt: str) -> bool:
    if opt.startswith("name="):
        return True
    return "=" not in opt and opt not in _NOT_CONTROLLERS


def cgroup_dirs(
    memberships: list[tuple[int, str, str]], mounts: dict[str, str]
) -> list[str]:
    """The host directories of each membership, skipping hierarchies not mounted."""
    dirs = []
    for hier, ctrls, path in memberships:
        key = "0" if hier == 0 else ctrls
        base = mounts.get(key)
        if base is None:
            # The order of controllers can differ between the two files.
            want = set(ctrls.split(","))
            base = next((m for k, m in mounts.items() if set(k.split(",")) == want), None)
        if base is None:
            continue
        dirs.append(os.path.join(base, path.lstrip("/")))
    return dirs


def join(dirs: Sequence[str], pid: int) -> None:
    """Move ``pid`` into each cgroup directory of ``dirs`` (``cgroup_dirs``); OSError
    names the file."""
    data = str(pid).encode()
    for d in dirs:
        path = os.path.join(d, "cgroup.procs")
        # os.open and os.write: a text file object costs as much as the migration itself
        # (the setup child joins a dozen hierarchies of a v1 host on the way to its mounts).
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
            try:
                os.write(fd, data)
            finally:
                os.close(fd)
        except OSError as exc:
            raise OSError(exc.errno, f"join cgroup: {exc.strerror}", path) from exc



WARM_INTERVAL = 0.004
"""Seconds between the warm-up's migrations: well within the ~10-15 ms the rwsem stays
ready after one (measured here)."""
WARM_FOR = 2.0
"""Seconds after which the warm-up stops by itself (a caller that never forks)."""

_warm: tuple[Any, Callable[[], None]] | None = None  # (stop lock, join) of the thread
_hooked = False


def warm_up() -> None:
    """Keep the cgroup migration lock ready (see the module docstring) until `warmed`,
    which the next ``os.fork`` calls: a thread moves this process into the cgroup it is
    in (a migration that changes nothing), at once and every WARM_INTERVAL, so that a
    `join` in the child forked next, a few ms later, does not wait.  Idempotent.
    Nothing is done when the hierarchy is mounted with ``favordynmods`` or there is
    nothing to write to; errors are ignored (this only saves time)."""
    global _warm
    if _warm is not None:
        return
    try:
        mountinfo = read_bytes("/proc/self/mountinfo").decode()
        own = parse_cgroups(read_bytes("/proc/self/cgroup").decode())
    except OSError:
        return
    if "favordynmods" in mountinfo:
        return
    dirs = cgroup_dirs(own[:1], cgroup_mounts(mountinfo))
    if not dirs:
        return
    import _thread

    path = os.path.join(dirs[0], "cgroup.procs")
    # _thread, not threading: Thread.start waits until the new thread runs, a wait a
    # loaded machine can make last milliseconds on the attach path; nothing here needs
    # more than two locks (both held by this thread until it stops and joins).
    stop = _thread.allocate_lock()
    stop.acquire()
    done = _thread.allocate_lock()
    done.acquire()

    def move() -> None:
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CLOEXEC)
        except OSError:
            done.release()
            return
        try:
            pid = str(os.getpid()).encode()
            for _ in range(int(WARM_FOR / WARM_INTERVAL)):
                os.write(fd, pid)
                if stop.acquire(timeout=WARM_INTERVAL):
                    break
        except OSError:
            pass
        finally:
            os.close(fd)
            done.release()  # its last step: the thread only returns after it

    _thread.start_new_thread(move, ())

    def join() -> None:
        done.acquire()

    _warm = (stop, join)
    global _hooked
    if not _hooked:  # whoever forks next (enter's setup child) forks without the thread
        os.register_at_fork(before=warmed)
        _hooked = True


def warmed() -> None:
    """End `warm_up`'s thread and wait for it: before forking (a fork must not copy a
    process with other threads running); every ``os.fork`` calls it first."""
    global _warm
    if _warm is not None:
        stop, join = _warm
        _warm = None
        stop.release()
        join()
