"""Capability sets: names, and limiting the current process to a container's sets.

Caveats:
- Dropping from the bounding set needs CAP_SETPCAP in the current user namespace: call
  ``drop_bounding`` after joining the container's user namespace, before changing uid,
  and ``set_sets`` last.
- For uid 0 the kernel recomputes permitted/effective at execve from the bounding and
  inheritable sets (capabilities(7), "root"), so the bounding set is the real limit.
"""

from __future__ import annotations

from cntr.linux import syscalls

NAMES = (
    "chown", "dac_override", "dac_read_search", "fowner", "fsetid", "kill", "setgid",
    "setuid", "setpcap", "linux_immutable", "net_bind_service", "net_broadcast",
    "net_admin", "net_raw", "ipc_lock", "ipc_owner", "sys_module", "sys_rawio",
    "sys_chroot", "sys_ptrace", "sys_pacct", "sys_admin", "sys_boot", "sys_nice",
    "sys_resource", "sys_time", "sys_tty_config", "mknod", "lease", "audit_write",
    "audit_control", "setfcap", "mac_override", "mac_admin", "syslog", "wake_alarm",
    "block_suspend", "audit_read", "perfmon", "bpf", "checkpoint_restore",
)


SYS_PTRACE = 19
SYS_BOOT = 22
WAKE_ALARM = 35
GUARDS = (WAKE_ALARM, SYS_BOOT)
"""Candidates for the guard capability, in order of preference: cap_wake_alarm, cap_sys_boot.
Each is held by the session only when the container lacks it, and every use of it is
refused by the session's seccomp filter (``cntr.linux.seccomp``), so it gives nothing.
cap_wake_alarm comes first: the kernel checks it only in timerfd_create(2) and
timer_create(2), both filtered; cap_sys_boot also guards writes to /sys/kernel/reboot/*,
which no seccomp filter can tell apart (only where the container's /sys is writable)."""


def guard_bit(bounding: int, inheritable: int = 0) -> int | None:
    """The capability a session holds beyond a container with bounding set ``bounding``
    (and inheritable set ``inheritable``: execve can raise a permitted bit from it even
    outside the bounding set, so a bit held there is no guard).

    The kernel lets a process with the same ids ptrace another (and read its memory,
    environ, fds, maps) when the target's permitted set is a subset of its own
    (``cap_ptrace_access_check``); one bit the container can never hold breaks that.
    None when no bit helps: the container holds CAP_SYS_PTRACE (it may trace anything in
    its user namespace) or every candidate.
    """
    if bounding >> SYS_PTRACE & 1:
        return None
    held = bounding | inheritable
    for bit in GUARDS:
        if not held >> bit & 1:
            return bit
    return None


def guarded_sets(bounding: int, effective: int, permitted: int, inheritable: int,
                 ambient: int, *, uid: int) -> tuple[int, int, int, int, int]:
    """(bounding, effective, permitted, inheritable, ambient) of a session of a container
    with these sets whose process runs as ``uid``: the container's plus the guard bit.

    For uid 0 the bounding set carries it across execve (permitted becomes inheritable |
    bounding); other uids keep it through the ambient set, which needs it inheritable.
    """
    bit = guard_bit(bounding, inheritable)
    if bit is None:
        return bounding, effective, permitted, inheritable, ambient
    m = 1 << bit
    if uid == 0:
        return bounding | m, effective | m, permitted | m, inheritable, ambient
    return bounding | m, effective | m, permitted | m, inheritable | m, ambient | m


def names(mask: int) -> list[str]:
    """``cap_*`` names of the bits set in ``mask`` (unknown bits as ``cap_N``)."""
    out = []
    for bit in range(64):
        if mask >> bit & 1:
            out.append(f"cap_{NAMES[bit]}" if bit < len(NAMES) else f"cap_{bit}")
    return out


def drop_bounding(bounding: int) -> None:
    """Drop every capability outside ``bounding`` from the bounding set (needs CAP_SETPCAP)."""
    for cap in range(syscalls.cap_last_cap() + 1):
        if not bounding >> cap & 1:
            syscalls.prctl(syscalls.PR_CAPBSET_DROP, cap)


def set_sets(effective: int, permitted: int, inheritable: int, ambient: int) -> None:
    """Set the process's capability sets to the container's; call after changing uid
    (with PR_SET_KEEPCAPS, so permitted survives a change away from uid 0)."""
    syscalls.capset(effective & permitted, permitted, inheritable)
    syscalls.prctl(syscalls.PR_CAP_AMBIENT, syscalls.PR_CAP_AMBIENT_CLEAR_ALL)
    for cap in range(syscalls.cap_last_cap() + 1):
        if ambient >> cap & 1:
            syscalls.prctl(syscalls.PR_CAP_AMBIENT, 2, cap)  # PR_CAP_AMBIENT_RAISE
