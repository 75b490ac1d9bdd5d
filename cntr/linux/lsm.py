"""The Linux security module label of a process (AppArmor or SELinux), read and applied.

A container's label is read from ``/proc/PID/attr/current`` (``attr/apparmor/current``
where the kernel has the per-LSM directory).  It is applied to the session with the
``exec`` attribute, so it takes effect at the session command's execve, as runc does.

Caveats:
- this machine's kernel has no AppArmor or SELinux: the paths here are exercised by the
  unit tests against a fake proc tree only (see README.md).
- AppArmor's ``unconfined`` label is not applied (there is nothing to apply).
"""

from __future__ import annotations

import os

from cntr.record import record


@record(frozen=True)
class Label:
    """A process's LSM label."""

    lsm: str
    """``apparmor``, ``selinux`` or ``""`` when the kernel has neither."""
    label: str
    """the label as the kernel prints it, without the AppArmor mode suffix."""


def active_lsm(sys_root: str = "/sys") -> str:
    try:
        with open(f"{sys_root}/kernel/security/lsm") as f:
            lsms = f.read().strip().split(",")
    except OSError:
        return ""
    for name in ("apparmor", "selinux"):
        if name in lsms:
            return name
    return ""


def read_label(pid: int | str, proc: str = "/proc", sys_root: str = "/sys") -> Label:
    lsm = active_lsm(sys_root)
    if not lsm:
        return Label("", "")
    for path in (f"{proc}/{pid}/attr/{lsm}/current", f"{proc}/{pid}/attr/current"):
        try:
            with open(path, "rb") as f:
                raw = f.read().rstrip(b"\0\n").decode(errors="replace")
        except OSError:
            continue
        if lsm == "apparmor":
            raw = raw.rsplit(" (", 1)[0]  # "docker-default (enforce)"
        return Label(lsm, raw)
    return Label(lsm, "")


def apply_label(label: Label, proc: str = "/proc") -> None:
    """Arrange for the next execve to run under ``label``; no-op without one."""
    if not label.lsm or not label.label or label.label == "unconfined":
        return
    if label.lsm == "apparmor":
        value = f"exec {label.label}".encode()
        paths = [f"{proc}/self/attr/apparmor/exec", f"{proc}/self/attr/exec"]
    else:
        value = label.label.encode()
        paths = [f"{proc}/self/attr/selinux/exec", f"{proc}/self/attr/exec"]
    last: OSError | None = None
    for path in paths:
        try:
            fd = os.open(path, os.O_WRONLY)
        except FileNotFoundError as exc:
            last = exc
            continue
        try:
            os.write(fd, value)
            return
        finally:
            os.close(fd)
    raise OSError(last.errno if last else 2, f"set {label.lsm} label {label.label!r}")
