"""The enter plan: every set-up operation of a session, in order, as data.

``gather`` reads what the plan depends on (``Facts``: the host's namespaces and cgroup
mounts, which of the container's ``/proc``, ``/dev``, ``/sys`` and bound files exist, the
command and its environment); ``build`` turns a context, the options and those facts into
a ``Plan``, with no side effect.  ``enter --dry-run`` prints ``Plan.show()``; the session's
processes execute the same operations (``cntr.session.setup``, ``cntr.session.reaper``),
each the part whose ``where`` names it, so the two cannot disagree.  Like bubblewrap's
list of ``SetupOp``.

What can be decided before the session exists is decided here: a bind whose source the
container lacks, or whose target the served tree lacks, is not in the plan.  What can only
be known inside the session is an operation that says so: ``FreshSys(only_if=...)`` (a
``/sys`` of the container that shows another net namespace is known once that namespace
is joined), ``Chdir.otherwise`` (a working directory that is gone).

Caveats:
- the facts are read when the plan is made: a file of the container that disappears
  before the setup child binds it is skipped then (not reported), as one the host lacks;
- for an offline context (``cntr.offline``) the container's files are looked up layer by
  layer (``offline.read_file``), so the dry-run, which holds nothing, plans what the
  session does.
"""

from __future__ import annotations

import os
import sys

from cntr.context import BOUND_FILES, Context, Tools
from cntr.launch import DEFAULT_BASE_DIR, FUSE_DEVICE
from cntr.linux import caps, cgroups, mounts, namespaces, procfs, seccomp, syscalls
from cntr.record import field, record

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import Any, TypeVar

    OpT = TypeVar("OpT", bound="Op")

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REAPER_COMM = b"cntr-reaper"
"""The reaper's process name (comm), as ps in the container shows it."""


@record
class EnterOptions:
    """How to enter; every field has the default a user gets from ``cntr attach``."""

    command: Sequence[str] = ()
    """the command and its arguments; empty: the caller's ``$SHELL`` (or ``/bin/sh``)."""
    base_dir: str = field(default_factory=lambda: os.environ.get("CNTR_BASE_DIR")
                          or DEFAULT_BASE_DIR)
    """where the container's root appears in the session."""
    effective_user: tuple[int, int] | None = None
    """uid and gid that own files the session creates on the host."""
    tty: bool | None = None
    """allocate a pty; None: when stdin and stdout are terminals."""
    container_root: bool = False
    """run in the container's own root instead of the host's served tree (``cntr exec``)."""
    read_only: bool = False
    """offline sessions (``cntr.offline``): throw the session's changes away."""
    network: str = "none"
    """offline sessions: "none" (a new network namespace, loopback only) or "host"."""


def session_env(ctx: Context, opts: EnterOptions, interactive: bool) -> dict[str, str]:
    """The container's environment; in a session (not ``cntr exec``) PATH is extended with
    the host's so its tools are found, and with where ``cntr`` is (``/.cntr`` in a
    ``--tools`` session)."""
    env = dict(ctx.env)
    if interactive and "TERM" in os.environ:
        env.setdefault("TERM", os.environ["TERM"])
    if opts.container_root:
        return env
    cpath = env.get("PATH") or DEFAULT_PATH
    parts = cpath.split(":")
    # Last, where cntr itself lives (its virtualenv), so `cntr exec` works in the session;
    # in a --tools session, the /.cntr that serve-fs shows there (cntr.fs.tree).
    extra = ["/.cntr"] if ctx.tools else [os.path.dirname(sys.executable)]
    for p in [*os.environ.get("PATH", DEFAULT_PATH).split(":"), *extra]:
        if p and p not in parts:
            parts.append(p)
    env["PATH"] = ":".join(parts)
    env["CNTR_CONTAINER_PATH"] = cpath
    if opts.base_dir != DEFAULT_BASE_DIR:
        env["CNTR_BASE_DIR"] = opts.base_dir
    return env


def wants_tty(opts: EnterOptions) -> bool:
    """A pty for the session: as asked, else when stdin and stdout are terminals."""
    return opts.tty if opts.tty is not None else (os.isatty(0) and os.isatty(1))


def session_cwd(ctx: Context, opts: EnterOptions) -> str:
    """The container's working directory, as the session sees it."""
    if opts.container_root:
        return ctx.cwd
    return os.path.join(opts.base_dir, ctx.cwd.lstrip("/"))


def default_command() -> list[str]:
    shell = os.environ.get("SHELL") or "/bin/sh"
    return [shell if os.path.exists(shell) else "/bin/sh"]


def session_guard(ctx: Context) -> tuple[int | None, str | None]:
    """The guard capability of a session of ``ctx`` (``cntr.linux.caps.guard_bit``) and,
    when there is none, the warning saying why the container can trace the session."""
    name = ctx.name or ctx.container_id or str(ctx.pid)
    if ctx.caps.bounding >> caps.SYS_PTRACE & 1:
        return None, (f"container {name} holds cap_sys_ptrace: its processes can trace "
                      "the session's processes and read their memory")
    bit = caps.guard_bit(ctx.caps.bounding, ctx.caps.inheritable)
    if bit is None:
        return None, (f"container {name} holds cap_wake_alarm and cap_sys_boot: no "
                      "capability is left to keep its processes from tracing the session's")
    if seccomp.program(bit) is None:
        return None, (f"no seccomp filter for {os.uname().machine}: processes of container "
                      f"{name} can trace the session's processes")
    return bit, None


def session_sets(ctx: Context, guard: int | None) -> tuple[int, int, int, int, int]:
    """(bounding, effective, permitted, inheritable, ambient) of the session."""
    c = ctx.caps
    if guard is None:
        return c.bounding, c.effective, c.permitted, c.inheritable, c.ambient
    return caps.guarded_sets(c.bounding, c.effective, c.permitted, c.inheritable, c.ambient,
                             uid=ctx.uid)


# ------------------------------------------------------------------------ operations


class Op:
    """One operation of the plan.  ``where`` names the process that carries it out:
    ``supervisor`` (done before the setup child is forked), ``setup``, ``reaper`` or
    ``command``; a ``Fork*`` operation is the last of its process's part."""

    where = "setup"

    def show(self) -> dict[str, Any]:
        """The operation as ``enter --dry-run`` prints it (and ``CNTR_PLAN_LOG`` logs it)."""
        raise NotImplementedError


@record(frozen=True)
class Verify(Op):
    """The context's process is still the captured one (``cntr.stages.enter.verify``)."""

    where = "supervisor"
    pid: int
    start_time: int
    boot_id: str
    namespaces: dict[str, int]

    def show(self) -> dict[str, Any]:
        return {"step": "verify", "pid": self.pid, "start_time": self.start_time,
                "boot_id": self.boot_id, "namespaces": self.namespaces}


@record(frozen=True)
class Hold(Op):
    """An offline session's hold of the container's filesystem (``cntr.offline``)."""

    where = "supervisor"
    how: dict[str, Any]
    """``offline.hold_step``: how it is held."""

    def show(self) -> dict[str, Any]:
        return dict(self.how)


@record(frozen=True)
class OpenFuse(Op):
    """``/dev/fuse``, opened by ``cntr.launch.SessionServer`` (before serve-fs is forked)."""

    where = "supervisor"
    path: str

    def show(self) -> dict[str, Any]:
        return {"step": "open", "path": self.path}


@record(frozen=True)
class MakeBaseDir(Op):
    """The mount point of the container's root, made in the host's tree (serve-fs shows
    it) by ``cntr.launch.SessionServer``."""

    where = "supervisor"
    path: str

    def show(self) -> dict[str, Any]:
        return {"step": "mkdir", "path": self.path, "where": "host"}


@record(frozen=True)
class ServeFs(Op):
    """serve-fs's parameters: the setup child hands them over once it has created the
    FUSE filesystem, and serve-fs starts serving."""

    where = "supervisor"
    root: str
    uid_map: list[tuple[int, int, int]]
    gid_map: list[tuple[int, int, int]]
    effective_user: tuple[int, int] | None
    tools: Tools | None
    synthetic: tuple[str, ...]
    """mount points serve-fs shows in a ``--tools`` tree that lacks them (not printed)."""

    def show(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": "serve-fs", "root": self.root,
                               "uid_map": self.uid_map, "gid_map": self.gid_map,
                               "effective_user": self.effective_user}
        if self.tools is not None:
            t = self.tools
            out["tools"] = {"source": t.source, "engine": t.engine or "directory",
                            "container_id": t.container_id, "name": t.name, "pid": t.pid}
        return out


@record(frozen=True)
class JoinCgroups(Op):
    """Write the setup child's pid to ``cgroup.procs`` of each directory."""

    paths: tuple[str, ...]

    def show(self) -> dict[str, Any]:
        return {"step": "join-cgroups", "paths": list(self.paths)}


@record(frozen=True)
class SetnsMnt(Op):
    """setns into the container's mount namespace (an offline session: cntr's own), then
    fchdir to the container's root: for a chroot-style container it is not the
    namespace's root."""

    inode: int
    what: str
    """the step an error names."""

    def show(self) -> dict[str, Any]:
        return {"step": "setns", "namespace": "mnt", "inode": self.inode}


@record(frozen=True)
class Chroot(Op):
    """``cntr exec``: chroot into the container's root; ``private``: into a private copy
    of it in a new mount namespace (an offline container, ``cntr.linux.fresh``)."""

    path: str
    private: bool

    def show(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": "chroot", "path": self.path}
        if self.private:
            out["copy"] = "private mount namespace"
        return out


@record(frozen=True)
class UnshareMnt(Op):
    """A private copy of the mount namespace: nothing done afterwards propagates back."""

    def show(self) -> dict[str, Any]:
        return {"step": "unshare", "namespace": "mnt", "propagation": "private"}


@record(frozen=True)
class MountFuse(Op):
    """The FUSE filesystem serve-fs serves, over ``/`` of the private copy."""

    source: str

    def show(self) -> dict[str, Any]:
        return {"step": "mount", "source": self.source, "target": "/"}


@record(frozen=True)
class Bind(Op):
    """A copy of the container's ``source`` (relative to its root, "" for the root) onto
    ``target`` (relative) of the served tree."""

    source: str
    target: str
    recursive: bool
    shown: str
    """the source as printed."""

    def show(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": "bind", "source": self.shown,
                               "target": "/" + self.target}
        if self.recursive:
            out["recursive"] = True
        return out


@record(frozen=True)
class FreshDev(Op):
    """A fresh ``/dev`` (``cntr.linux.mounts.dev_mounts``) for a container without one."""

    def show(self) -> dict[str, Any]:
        return {"step": "mount", "source": mounts.FRESH["dev"], "target": "/dev"}


@record(frozen=True)
class PivotRoot(Op):
    """The served tree becomes the root, the old one detached."""

    def show(self) -> dict[str, Any]:
        return {"step": "pivot_root", "path": "/"}


@record(frozen=True)
class Warn(Op):
    """A warning the session gives (message ``W``): what the plan left out."""

    text: str

    def show(self) -> dict[str, Any]:
        return {"step": "warn", "text": self.text}


@record(frozen=True)
class Setns(Op):
    """Join one of the container's namespaces (``namespaces.JOIN_ORDER``)."""

    kind: str
    inode: int

    def show(self) -> dict[str, Any]:
        return {"step": "setns", "namespace": self.kind, "inode": self.inode}


@record(frozen=True)
class FreshProc(Op):
    """A procfs of the container's pid namespace over ``/proc`` (after joining it)."""

    def show(self) -> dict[str, Any]:
        return {"step": "mount", "source": mounts.FRESH["proc"], "target": "/proc"}


@record(frozen=True)
class FreshSys(Op):
    """A sysfs of the container's net namespace over ``/sys`` (after joining it)."""

    only_if: str
    """"": always (the container has no /sys); else the condition, checked then."""

    def show(self) -> dict[str, Any]:
        out: dict[str, Any] = {"step": "mount", "source": mounts.FRESH["sys"],
                               "target": "/sys"}
        if self.only_if:
            out["if"] = self.only_if
        return out


@record(frozen=True)
class UnshareNamespaces(Op):
    """An offline session's new namespaces (``cntr.linux.fresh.unshare_namespaces``)."""

    kinds: tuple[str, ...]
    hostname: str
    network: bool

    def show(self) -> dict[str, Any]:
        return {"step": "unshare", "namespaces": list(self.kinds), "hostname": self.hostname,
                "loopback": "up" if self.network else "host network"}


@record(frozen=True)
class ForkReaper(Op):
    """Fork the reaper: the operations that follow, up to ``ForkCommand``, are its."""

    def show(self) -> dict[str, Any]:
        return {"step": "fork", "process": "reaper"}


@record(frozen=True)
class SessionInit(Op):
    """An offline session: the reaper's process stays as pid 1 of the new pid namespace
    and mounts its /proc, /sys and /dev (``cntr.offline.session_init``); its child goes on."""

    where = "reaper"
    base_dir: str

    def show(self) -> dict[str, Any]:
        base = self.base_dir.rstrip("/")
        return {"step": "mount", "what": "proc, sysfs (by pid 1), /dev bound",
                "targets": ["/proc", "/sys", f"{base}/proc", f"{base}/sys", f"{base}/dev"]}


@record(frozen=True)
class ReaperSession(Op):
    """The reaper's own set-up: signals taken with sigwaitinfo, every descriptor of the
    host's closed, its name, session leader (of the pty when interactive), subreaper."""

    where = "reaper"
    controlling_tty: bool

    def show(self) -> dict[str, Any]:
        return {"step": "session", "setsid": True, "controlling_tty": self.controlling_tty,
                "subreaper": True, "name": REAPER_COMM.decode()}


@record(frozen=True)
class NoNewPrivs(Op):
    """The container's no_new_privs."""

    where = "reaper"

    def show(self) -> dict[str, Any]:
        return {"step": "no-new-privs"}


@record(frozen=True)
class LsmLabel(Op):
    """The container's LSM label, for the command's execve (``cntr.linux.lsm``)."""

    where = "reaper"
    lsm: str
    label: str

    def show(self) -> dict[str, Any]:
        return {"step": "lsm-label", "lsm": self.lsm, "label": self.label}


@record(frozen=True)
class Capabilities(Op):
    """The seccomp filter of the guard (before the drop: with CAP_SYS_ADMIN it needs no
    no_new_privs), the bounding set, PR_SET_KEEPCAPS for the uid change."""

    where = "reaper"
    bounding: int
    drop: int
    """the bits dropped from the bounding set."""
    guard: int | None
    unguarded: str | None

    def show(self) -> dict[str, Any]:
        guard = self.guard
        return {"step": "capabilities", "drop_bounding": caps.names(self.drop),
                "guard": caps.names(1 << guard)[0] if guard is not None else None,
                "seccomp_refuses": list(seccomp.REFUSED[guard]) if guard is not None else [],
                "unguarded": self.unguarded}


@record(frozen=True)
class Ids(Op):
    """Groups, gid and uid of the container's process."""

    where = "reaper"
    uid: int
    gid: int
    groups: list[int]

    def show(self) -> dict[str, Any]:
        return {"step": "ids", "uid": self.uid, "gid": self.gid, "groups": self.groups}


@record(frozen=True)
class CapabilitySets(Op):
    """The session's capability sets (after the uid change, which clears them), then
    the reaper made non-dumpable."""

    where = "reaper"
    effective: int
    permitted: int
    inheritable: int
    ambient: int

    def show(self) -> dict[str, Any]:
        return {"step": "capability-sets", "effective": caps.names(self.effective),
                "permitted": caps.names(self.permitted),
                "inheritable": caps.names(self.inheritable),
                "ambient": caps.names(self.ambient), "dumpable": False}


@record(frozen=True)
class ForkCommand(Op):
    """Fork the command: a process group of its own (the terminal's foreground one when
    interactive), default signal dispositions; the operations that follow are its."""

    where = "reaper"
    foreground: bool

    def show(self) -> dict[str, Any]:
        return {"step": "fork", "process": "command", "process_group": "own",
                "foreground": self.foreground}


@record(frozen=True)
class Chdir(Op):
    """The container's working directory, as the session sees it; ``otherwise`` when it
    cannot be entered."""

    where = "command"
    path: str
    otherwise: str = "/"

    def show(self) -> dict[str, Any]:
        return {"step": "chdir", "path": self.path, "otherwise": self.otherwise}


@record(frozen=True)
class Exec(Op):
    """execve of the command (looked up in the session's PATH)."""

    where = "command"
    argv: list[str]
    env: dict[str, str]
    pty: bool

    def show(self) -> dict[str, Any]:
        return {"step": "exec", "argv": self.argv, "env": self.env, "pty": self.pty}


@record(frozen=True)
class Plan:
    """The operations of a session, in the order they are carried out."""

    ops: tuple[Op, ...]

    def part(self, where: str) -> list[Op]:
        """The operations ``where`` carries out, in order."""
        return [op for op in self.ops if op.where == where]

    def find(self, cls: type[OpT]) -> OpT | None:
        """The first operation of type ``cls``, or None."""
        return next((op for op in self.ops if isinstance(op, cls)), None)

    def show(self) -> list[dict[str, Any]]:
        return [op.show() for op in self.ops]

    def mounted_over(self) -> list[str]:
        """The targets the session mounts over the served tree, as the plan shows them
        (the FUSE mount itself, ``/``, aside): where the session's / is not the served
        tree."""
        out: list[str] = []
        for op in self.ops:
            if not isinstance(op, MountFuse):
                shown = op.show()
                out += [shown["target"]] if "target" in shown else shown.get("targets", [])
        return out


# --------------------------------------------------------------------------- builder


@record(frozen=True)
class Facts:
    """What a plan depends on beyond the context and the options, read by ``gather``."""

    own_ns: dict[str, int]
    """kind -> inode of cntr's own namespaces."""
    cgroup_mounts: dict[str, str]
    """``cgroups.cgroup_mounts`` of the host."""
    cap_last_cap: int
    argv: list[str]
    env: dict[str, str]
    interactive: bool
    fresh: tuple[str, ...] = ()
    """the ``mounts.MOUNT_DIRS`` the container has no mount of its own of (or a /proc of
    another pid namespace): the session gets fresh ones."""
    sysfs: bool = False
    """the container's own /sys is a sysfs: the session covers it with one of the
    container's net namespace if it shows another (known once that is joined)."""
    files: tuple[str, ...] = ()
    """the ``BOUND_FILES`` that are regular files in the container."""
    missing: tuple[str, ...] = ()
    """bind targets (relative) the served tree lacks."""


def gather(ctx: Context, opts: EnterOptions, root_fd: int | None) -> Facts:
    """The facts of a plan for ``ctx``; ``root_fd``: the container's root (an online
    context), opened in the host's mount namespace."""
    interactive = wants_tty(opts)
    base = Facts(
        own_ns=procfs.read_namespaces(os.getpid()),
        cgroup_mounts=cgroups.cgroup_mounts(procfs.read_bytes("/proc/self/mountinfo").decode()),
        cap_last_cap=syscalls.cap_last_cap(), argv=list(opts.command) or default_command(),
        env=session_env(ctx, opts, interactive), interactive=interactive)
    if opts.container_root:
        return base
    if ctx.offline is not None:  # nothing of its own mounted in the layers
        from cntr import offline

        fresh = tuple(mounts.MOUNT_DIRS)
        sysfs = False
        files = tuple(f for f in BOUND_FILES if offline.read_file(ctx.offline, f) is not None)
    else:
        assert root_fd is not None
        found, sysfs = mounts.container_mounts(root_fd, ctx.namespaces.get("pid"))
        fresh = tuple(found)
        files = tuple(mounts.regular_files(root_fd, BOUND_FILES))
    # A --tools tree shows what it lacks of these (ServeFs.synthetic); the host's is as is.
    missing = () if ctx.tools is not None else tuple(
        t for t in (*mounts.MOUNT_DIRS, *files) if not os.path.lexists("/" + t))
    return Facts(base.own_ns, base.cgroup_mounts, base.cap_last_cap, base.argv, base.env,
                 interactive, fresh, sysfs, files, missing)


def build(ctx: Context, opts: EnterOptions, facts: Facts) -> Plan:
    """The plan of a session of ``ctx``: no side effect."""
    online = ctx.offline is None
    served = not opts.container_root
    own = facts.own_ns
    ops: list[Op] = []
    if online:
        ops.append(Verify(ctx.pid, ctx.start_time, ctx.boot_id, dict(ctx.namespaces)))
    else:
        from cntr import offline

        ops.append(Hold(offline.hold_step(ctx, opts.read_only)))
    base = opts.base_dir.strip("/")
    files = [f for f in facts.files if f not in facts.missing]
    if served:
        ops += [OpenFuse(FUSE_DEVICE), MakeBaseDir(opts.base_dir),
                ServeFs(ctx.tools.root if ctx.tools else "/", ctx.uid_map, ctx.gid_map,
                        opts.effective_user, ctx.tools,
                        (base + "/", *(d + "/" for d in mounts.MOUNT_DIRS), *files))]
    if online:
        ops.append(JoinCgroups(tuple(cgroups.cgroup_dirs(ctx.cgroups, facts.cgroup_mounts))))
    mnt_inode = ctx.namespaces.get("mnt") if online else own.get("mnt")
    ops.append(SetnsMnt(mnt_inode or 0, "enter the container's root" if opts.container_root
                        else "build the session's mount namespace"))
    warnings: list[str] = []
    if opts.container_root:
        ops.append(Chroot(ctx.root, private=not online))
    else:
        ops += [UnshareMnt(),
                MountFuse("fuse.cntr (serve-fs: " + (f"the tools of {ctx.tools.source})"
                                                     if ctx.tools else "the host's /)")),
                Bind("", base, True, f"{ctx.root} (container /)")]
        for d in mounts.MOUNT_DIRS:
            if d in facts.fresh and d != "dev":
                continue  # /proc and /sys: once the namespaces are joined
            if d in facts.missing:
                warnings.append(f"not bound in the session: /{d} (absent on the host)")
            elif d in facts.fresh:
                ops.append(FreshDev())
            else:
                ops.append(Bind(d, d, True, f"container /{d}"))
        ops += [Bind(f, f, False, f"container /{f}") for f in files]
        ops.append(PivotRoot())
        # An offline session's pid 1 mounts its own /proc, /sys and /dev.
        ops += [Warn(w) for w in warnings if online]
    for kind in namespaces.JOIN_ORDER:
        if kind == "time" and served and online:
            # In the container's pid and net namespaces, still with the host's privileges.
            if "proc" in facts.fresh:
                ops.append(FreshProc())
            if "sys" in facts.fresh:
                ops.append(FreshSys(""))
            elif facts.sysfs and "sys" not in facts.missing:
                ops.append(FreshSys("the container's /sys shows another net namespace"))
        if kind in ctx.namespaces and ctx.namespaces[kind] != own.get(kind):
            ops.append(Setns(kind, ctx.namespaces[kind]))
    if not online:
        assert ctx.offline is not None
        network = opts.network != "host"
        ops.append(UnshareNamespaces(("uts", "ipc", "cgroup", "pid",
                                      *(("net",) if network else ())),
                                     ctx.offline.hostname, network))
    ops.append(ForkReaper())
    if not online:
        ops.append(SessionInit(opts.base_dir))
    ops.append(ReaperSession(facts.interactive))
    if ctx.no_new_privs:
        ops.append(NoNewPrivs())
    if ctx.lsm and ctx.label and ctx.label != "unconfined":  # else lsm.apply_label: no-op
        ops.append(LsmLabel(ctx.lsm, ctx.label))
    guard, warning = session_guard(ctx)
    bounding, effective, permitted, inheritable, ambient = session_sets(ctx, guard)
    full = (1 << (facts.cap_last_cap + 1)) - 1
    ops += [Capabilities(bounding, full & ~bounding, guard, warning),
            Ids(ctx.uid, ctx.gid, list(ctx.groups)),
            CapabilitySets(effective, permitted, inheritable, ambient),
            ForkCommand(facts.interactive),
            Chdir(session_cwd(ctx, opts)),
            Exec(facts.argv, facts.env, facts.interactive)]
    return Plan(tuple(ops))
