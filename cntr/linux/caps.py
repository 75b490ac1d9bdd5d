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
