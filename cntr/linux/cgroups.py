"""Joining a container's cgroups, v1 and v2 (hybrid hosts have both).

The container's membership comes from ``/proc/PID/cgroup`` read in the host's cgroup
namespace; each line is placed under the host's mount of that hierarchy, found in
``/proc/self/mountinfo``.  Joining writes the pid to ``cgroup.procs``.

Caveats:
- a v1 hierarchy the host has not mounted is skipped (nothing to join);
- joining a v2 cgroup with subtree controllers enabled is refused by the kernel
  ("no internal processes"); the container's own leaf is always joinable.
"""

from __future__ import annotations

import os
from collections.abc import Sequence


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
    for d in dirs:
        path = os.path.join(d, "cgroup.procs")
        try:
            with open(path, "w") as f:
                f.write(str(pid))
        except OSError as exc:
            raise OSError(exc.errno, f"join cgroup: {exc.strerror}", path) from exc
