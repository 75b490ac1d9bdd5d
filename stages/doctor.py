"""``cntr doctor``: what works on this host for cntr and what does not, each with the fix.

Every check is a `Check` (name, status, what was found, the fix); the checks attach
cannot do without (root, /dev/fuse, the mount API) are ``required``: one of them failing
makes the exit status non-zero.  Statuses: ``OK``; ``WARN`` (cntr works, with less:
slower file contents, a failing engine); ``FAIL``; ``-`` (absent and nothing to fix: an
engine that is not installed, an opt-in feature that is off).

Kernel features are probed by using them, never from the kernel's version: the mount API
by calling ``fsopen`` (only ENOSYS means absent), FUSE passthrough and FUSE over io_uring
from the kernel's own FUSE_INIT offer (``cntr.linux.fuseprobe``).
"""

from __future__ import annotations

import errno
import os
import stat
from functools import partial

from cntr import launch
from cntr.linux import cgroups, fuseprobe, procfs, syscalls
from cntr.record import record

OK, WARN, FAIL, ABSENT = "OK", "WARN", "FAIL", "-"
URING_PARAMETER = "/sys/module/fuse/parameters/enable_uring"
MAX_USER_NS = "/proc/sys/user/max_user_namespaces"
UNPRIVILEGED_USER_NS = "/proc/sys/kernel/unprivileged_userns_clone"
"""Debian's switch for user namespaces made by non-root users (rootless podman)."""


@record
class Check:
    """One line of the report."""

    name: str
    status: str
    """OK, WARN, FAIL or - (absent, nothing to fix)."""
    detail: str
    """what was found."""
    fix: str = ""
    """what to do about it ("" when nothing is to be done)."""
    required: bool = False
    """attach cannot work when this check fails."""


def check_root() -> Check:
    uid = os.geteuid()
    if uid == 0:
        return Check("root", OK, "running as root", required=True)
    return Check("root", FAIL, f"running as uid {uid}",
                 "run cntr as root (sudo cntr ...): it joins namespaces and mounts FUSE",
                 required=True)


def check_fuse_device(device: str = launch.FUSE_DEVICE) -> Check:
    fix_missing = ("load the module (modprobe fuse); in a container, pass the device in "
                   "(docker run --device /dev/fuse)")
    try:
        st = os.stat(device)
    except FileNotFoundError:
        return Check(device, FAIL, "missing", fix_missing, required=True)
    if not stat.S_ISCHR(st.st_mode):
        return Check(device, FAIL, "not a character device", fix_missing, required=True)
    try:
        os.close(os.open(device, os.O_RDWR | os.O_CLOEXEC))
    except OSError as exc:
        fix = ("run as root" if exc.errno in (errno.EACCES, errno.EPERM) else
               "check the device's permissions and the device cgroup")
        return Check(device, FAIL, f"cannot be opened: {exc.strerror}", fix, required=True)
    return Check(device, OK, f"opens (device {os.major(st.st_rdev)}:{os.minor(st.st_rdev)})",
                 required=True)


def check_mount_api() -> Check:
    name = "mount API"
    try:
        os.close(syscalls.fsopen("fuse"))
    except OSError as exc:
        if exc.errno == errno.ENOSYS:
            return Check(name, FAIL, "fsopen is not implemented by this kernel",
                         "cntr needs Linux >= 5.6 (fsopen, fsmount, open_tree, move_mount)",
                         required=True)
        if exc.errno == errno.ENODEV:
            return Check(name, FAIL, "fsopen works but the kernel has no fuse filesystem",
                         "modprobe fuse (CONFIG_FUSE_FS)", required=True)
        if exc.errno == errno.EPERM:
            return Check(name, OK, "fsopen exists (it refused a non-root caller)",
                         required=True)
        return Check(name, FAIL, f"fsopen(fuse): {exc.strerror}", "", required=True)
    return Check(name, OK, "fsopen, fsconfig, fsmount answer", required=True)


def probe_init() -> fuseprobe.Init | str:
    """The kernel's FUSE_INIT offer, or why it could not be read."""
    if os.geteuid() != 0:
        return "not probed: needs root"
    try:
        return fuseprobe.probe(launch.FUSE_DEVICE)
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename else ""
        return f"not probed: {where}{exc.strerror or exc}"


def check_passthrough(init: fuseprobe.Init | str) -> Check:
    name = "FUSE passthrough"
    if isinstance(init, str):
        return Check(name, WARN, init, "fix the lines above, then run cntr doctor again")
    protocol = f"FUSE protocol {init.major}.{init.minor}"
    if init.passthrough:
        return Check(name, OK, f"offered by the kernel ({protocol}): file contents bypass "
                     "serve-fs")
    return Check(name, WARN, f"not offered by the kernel ({protocol}): every read and write "
                 "goes through serve-fs (slower)",
                 "Linux >= 6.9 built with CONFIG_FUSE_PASSTHROUGH=y")


def check_io_uring(init: fuseprobe.Init | str, parameter: str = URING_PARAMETER) -> Check:
    name = "FUSE over io_uring"
    try:
        with open(parameter) as f:
            value = f.read().strip()
    except FileNotFoundError:
        return Check(name, ABSENT, "not in this kernel (opt-in: CNTR_SERVE_FS_LOOP=uring)",
                     "Linux >= 6.14 built with CONFIG_FUSE_IO_URING=y")
    except OSError as exc:
        return Check(name, WARN, f"{parameter}: {exc.strerror}")
    if value == "Y":
        if isinstance(init, fuseprobe.Init) and not init.io_uring:
            return Check(name, WARN, "fuse.enable_uring=Y but the kernel's FUSE_INIT does "
                         "not offer it")
        return Check(name, OK, "enabled (fuse.enable_uring=Y): CNTR_SERVE_FS_LOOP=uring "
                     "uses it")
    return Check(name, ABSENT, f"off (fuse.enable_uring={value}): opt-in, for "
                 "CNTR_SERVE_FS_LOOP=uring", f"echo Y > {parameter}")


def check_cgroups(mountinfo: str | None = None) -> Check:
    name = "cgroups"
    if mountinfo is None:
        mountinfo = procfs.read_bytes("/proc/self/mountinfo").decode(errors="replace")
    found = cgroups.cgroup_mounts(mountinfo)
    v2 = found.pop("0", None)
    v1 = sorted(found)  # the v1 hierarchies by their controllers
    if v2 and not v1:
        return Check(name, OK, f"v2 (unified) at {v2}")
    if v2 and v1:
        return Check(name, OK, f"hybrid: v2 at {v2}, v1 for {' '.join(v1)}")
    if v1:
        return Check(name, OK, f"v1: {' '.join(v1)}")
    return Check(name, WARN, "no cgroup filesystem is mounted: sessions join no cgroup",
                 "mount -t cgroup2 none /sys/fs/cgroup")


def check_user_namespaces(path: str = MAX_USER_NS) -> Check:
    name = "user namespaces"
    if not os.path.exists("/proc/self/ns/user"):
        return Check(name, ABSENT, "not in this kernel (CONFIG_USER_NS): no container uses "
                     "them here")
    try:
        with open(path) as f:
            limit = int(f.read().strip())
    except (OSError, ValueError):
        return Check(name, OK, "available")
    if limit == 0:
        return Check(name, WARN, f"disabled ({path} is 0): user-namespaced containers "
                     "(LXD, rootless podman) cannot start here",
                     "sysctl -w user.max_user_namespaces=15000")
    try:
        with open(UNPRIVILEGED_USER_NS) as f:
            unprivileged = f.read().strip()
    except OSError:
        unprivileged = ""  # not a Debian kernel: no such switch
    if unprivileged == "0":
        return Check(name, WARN, f"available to root only ({UNPRIVILEGED_USER_NS} is 0): "
                     "rootless containers (podman) cannot start here",
                     "sysctl -w kernel.unprivileged_userns_clone=1")
    return Check(name, OK, f"available (user.max_user_namespaces={limit})")


_PROBE_NAME = "cntr-doctor-no-such-container"


def _engine(type_name: str) -> Check:
    from cntr import engines
    from cntr.engines import base

    engine = engines.make(type_name)
    name = f"engine {type_name}"
    try:
        found = engine.lookup(_PROBE_NAME)
        running = engine.list()
    except engines.EngineError as exc:
        daemon = "containerd" if type_name == "kubernetes" else type_name
        fix = (f"check that {daemon} runs and answers on its socket" if os.geteuid() == 0
               else "run cntr doctor as root: engines answer root")
        return Check(name, WARN, f"fails: {str(exc).removeprefix(f'{type_name}: ')}", fix)
    except Exception as exc:  # noqa: BLE001 (a bug in one engine must not hide the others')
        return Check(name, WARN, f"internal error: {exc!r}")
    if engine.reason == base.NOT_INSTALLED and not found:
        return Check(name, ABSENT, "not installed")
    # any other answer to a name nobody uses ("no such container", "no such machine")
    # means the engine was asked and answered
    return Check(name, OK, f"answers: {len(running)} running")


def check_engines() -> list[Check]:
    """One check per engine type (process_id and command read /proc, which always
    answers: they are left out)."""
    from cntr import engines
    from cntr.engines.base import in_threads

    types = [t for t in engines.ENGINES if t not in ("process_id", "command")]
    return in_threads([partial(_engine, t) for t in types])


def doctor() -> list[Check]:
    """Every check, in the order the report shows them."""
    init = probe_init()
    return [check_root(), check_fuse_device(), check_mount_api(), check_passthrough(init),
            check_io_uring(init), check_cgroups(), check_user_namespaces(),
            *check_engines()]


def attach_works(checks: list[Check]) -> bool:
    return not any(c.required and c.status == FAIL for c in checks)


def report(checks: list[Check]) -> str:
    """One line per check: status, name, what was found, then the fix after "->"."""
    width = max(len(c.name) for c in checks)
    lines = []
    for c in checks:
        fix = f" -> {c.fix}" if c.fix and c.status != OK else ""
        lines.append(f"{c.status:<4} {c.name:<{width}}  {c.detail}{fix}")
    verdict = ("attach can work on this host" if attach_works(checks) else
               "attach cannot work on this host: fix the FAIL lines above")
    return "\n".join([*lines, verdict]) + "\n"
