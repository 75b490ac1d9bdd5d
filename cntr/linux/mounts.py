"""Building the session's root: the host's tree served by FUSE as ``/``, the container's
root at the base directory, and the container's ``/proc``, ``/dev``, ``/sys`` and a few
files bound over the host's.

What to bind is decided beforehand (``container_mounts``, ``regular_files``, read through
the container's root from the host: ``cntr.session.plan``).  The sequence runs in a
single-threaded child that has opened, while still in the host's mount namespace, a
descriptor of the container's root (``/proc/PID/root``) and of its mount namespace:

1. ``setns(mnt)``, then ``fchdir(root)`` (``enter_root``): the working directory is the
   container's root (for a chroot-style container it is not the namespace's root).
2. ``unshare(CLONE_NEWNS)`` (``unshare_private``): a private copy; the kernel moves root
   and cwd into the copy.  Everything is made private at once, so nothing done afterwards
   propagates back into the container (mount_namespaces(7), "shared subtrees").
3. The FUSE filesystem is created with fsopen/fsconfig on the ``/dev/fuse`` descriptor
   serve-fs will read, and serve-fs is handed its parameters: it answers the kernel's
   INIT while the copies of 4 are taken (``assemble``, as are 4 and 5).
4. ``open_tree(OPEN_TREE_CLONE)`` takes detached copies of the container's root, its
   ``proc``/``dev``/``sys`` mounts and the bound files, resolved with ``RESOLVE_IN_ROOT``
   so a symlink in the container cannot name a host path.
5. fsmount makes the FUSE filesystem a detached mount (nothing shows in any mount table
   but the session's), attached over ``/`` of the private namespace; the copies are moved
   onto it (onto the host's names themselves: a host ``/etc/localtime`` that is a symlink
   is covered, its target is not looked up), and ``pivot_root(".", ".")`` +
   ``umount2(".", MNT_DETACH)`` (``pivot``) make it the root with the old root gone, as
   runc does (pivot_root(2), "NOTES").

A container whose ``/proc``, ``/dev`` or ``/sys`` is not a mount of its own (a chroot-style
container, a sandboxed process attached by pid), or whose ``/proc`` shows another pid
namespace than its own (a ``/sys`` of another net namespace), gets fresh ones, as a container
runtime would give it, in the session's namespace only (nothing is mounted or written in
the container):

- ``/dev`` (step 4, ``dev_mounts``): a tmpfs (``mode=755,nosuid``) holding ``null``,
  ``zero``, ``full``, ``random``, ``urandom`` and ``tty``, a new devpts instance at ``pts``
  with ``ptmx -> pts/ptmx``, a tmpfs ``shm`` (1777) and the ``fd``, ``stdin``, ``stdout``,
  ``stderr`` links to ``/proc/self/fd``: the served host's ``/dev`` is ``nodev``, so its
  nodes would not open.  It is made and filled while detached, with the copies of step 4
  (filling it needs no FUSE round trip), and moved onto the FUSE mount with them: its
  mount point, the host's
  ``/dev`` in the served tree, exists only once the FUSE mount is attached;
- ``/proc`` and ``/sys`` (``mount_fresh_proc``, ``mount_fresh_sys``, after the pid and net
  namespaces are joined, before the user namespace): a procfs shows the pid namespace of
  the process that creates it and a sysfs the mounter's net namespace, so they cannot be
  made in step 4.  A container ``/sys`` of another net namespace than the container's is
  covered too.  ``/proc`` is read-write (``ps``, ``gdb``'s ``/proc/PID/mem`` work) with the
  paths docker makes read-only (``sys``, ``sysrq-trigger``, ``irq``, ``bus``, ``fs``)
  read-only; ``/sys`` is read-only, as docker mounts it, and has no cgroup hierarchies
  below it.

Caveats:
- the bound files are skipped where the host lacks them.
- the base directory must exist in the served tree (``enter`` creates it on the host).
- the nodes of a fresh ``/dev`` belong to the host's root: in a user-namespaced container
  they show as owned by the overflow id (they open all the same, mode 666).
"""

from __future__ import annotations

import errno
import os
import stat

from cntr.linux import syscalls

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from collections.abc import Callable
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal

RESOLVE_CONTAINER = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
MOUNT_DIRS = ("proc", "dev", "sys")
MOUNT_ATTR_RDONLY = 0x1  # linux/mount.h
MOUNT_ATTR_NOEXEC = 0x8
DEV_NODES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
             ("urandom", 1, 9), ("tty", 5, 0))
"""Character devices of a fresh /dev, with the numbers Linux assigns them everywhere
(Documentation/admin-guide/devices.txt), as runc creates them."""
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
             ("ptmx", "pts/ptmx"))
PROC_READ_ONLY = ("sys", "sysrq-trigger", "irq", "bus", "fs")
"""Paths of a fresh /proc made read-only, as docker does: writes there change the host
(sysctls are checked against the writer's uid only, not its capabilities)."""


def _clone(fd: int, recursive: bool) -> int:
    flags = syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC | syscalls.AT_EMPTY_PATH
    if recursive:
        flags |= syscalls.AT_RECURSIVE
    return syscalls.open_tree(fd, "", flags)


def open_in_container(root_fd: int, rel: str, flags: int) -> int | None:
    """Open ``rel`` as the container resolves it (symlinks stay inside its root); None
    when it cannot be opened."""
    try:
        return syscalls.openat2(root_fd, rel, flags, RESOLVE_CONTAINER)
    except OSError:
        return None


def fuse_mount(fuse_fd: int) -> int:
    """Create a detached FUSE mount on ``fuse_fd``; returns its mount descriptor."""
    fs = fuse_filesystem(fuse_fd)
    try:
        return fuse_attachable(fs)
    finally:
        os.close(fs)


def fuse_filesystem(fuse_fd: int) -> int:
    """The FUSE filesystem of ``fuse_fd``, created (its filesystem context descriptor):
    from here on ``fuse_fd`` can be read, and the kernel's INIT waits there (before, a
    read of it fails with EPERM)."""
    fs = syscalls.fsopen("fuse")
    try:
        for key, value in (
            ("source", "cntr"), ("subtype", "cntr"), ("fd", str(fuse_fd)),
            ("rootmode", "40000"), ("user_id", "0"), ("group_id", "0"),
        ):
            syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, key, value)
        # allow_other: the session may run as any uid; default_permissions: the kernel
        # checks modes, so serve-fs (running as root) never decides access itself.
        for flag in ("allow_other", "default_permissions"):
            syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_FLAG, flag)
        syscalls.fsconfig(fs, syscalls.FSCONFIG_CMD_CREATE)
    except BaseException:
        os.close(fs)
        raise
    return fs


def fuse_attachable(fs: int) -> int:
    """A detached mount of the FUSE filesystem ``fs`` (`fuse_filesystem`)."""
    # nosuid, nodev: with the uid translation a container's root owns the host's root
    # files in the kernel's eyes, and must not get the host's setuid programs or block
    # devices with them.
    return syscalls.fsmount(fs, syscalls.FSMOUNT_CLOEXEC,
                            syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV)


def detached_mount(fstype: str, attrs: int = 0, strings: tuple[tuple[str, str], ...] = (),
              flags: tuple[str, ...] = ()) -> int:
    """A detached mount of a new ``fstype`` filesystem (in no mount table until it is
    moved somewhere); returns its mount descriptor."""
    fs = syscalls.fsopen(fstype)
    try:
        for key, value in (("source", fstype), *strings):
            syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, key, value)
        for flag in flags:
            syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_FLAG, flag)
        syscalls.fsconfig(fs, syscalls.FSCONFIG_CMD_CREATE)
        return syscalls.fsmount(fs, syscalls.FSMOUNT_CLOEXEC, attrs)
    finally:
        os.close(fs)


def dev_mounts() -> list[tuple[int, str]]:
    """A fresh /dev as detached mounts, filled: (mount descriptor, target) in the order
    they are to be attached (the tmpfs, then its devpts and shm)."""
    nosuid = syscalls.MOUNT_ATTR_NOSUID
    out: list[tuple[int, str]] = []
    try:
        dev = detached_mount("tmpfs", nosuid, (("mode", "755"), ("size", "65536k")))
        out.append((dev, "dev"))
        # Privileged (CAP_MKNOD): the nodes live on our own tmpfs, never in the container.
        for name, major, minor in DEV_NODES:
            os.mknod(name, stat.S_IFCHR | 0o666, os.makedev(major, minor), dir_fd=dev)
            os.chmod(name, 0o666, dir_fd=dev)  # whatever the umask
        for name, target in DEV_LINKS:
            os.symlink(target, name, dir_fd=dev)
        for name in ("pts", "shm"):
            os.mkdir(name, 0o755, dir_fd=dev)
        # newinstance: the session's ptys are its own, not the host's (devpts(5)).
        out.append((detached_mount("devpts", nosuid | MOUNT_ATTR_NOEXEC,
                              (("ptmxmode", "0666"), ("mode", "0620")), ("newinstance",)),
                    "dev/pts"))
        out.append((detached_mount("tmpfs", nosuid | syscalls.MOUNT_ATTR_NODEV,
                              (("mode", "1777"), ("size", "65536k"))), "dev/shm"))
    except BaseException:
        for fd, _ in out:
            os.close(fd)
        raise
    return out


def _procfs_of(fd: int, pid_ns: int | None) -> bool:
    """Whether the directory ``fd`` (a container's /proc) shows the pid namespace
    ``pid_ns``: its pid 1 is in it.  Only an inode is compared, whatever the container
    put there."""
    if pid_ns is None:
        return True
    try:
        return os.stat("1/ns/pid", dir_fd=fd).st_ino == pid_ns
    except OSError:
        return False


def _is_dir(rel: str, dir_fd: int) -> bool:
    try:
        return stat.S_ISDIR(os.stat(rel, dir_fd=dir_fd, follow_symlinks=False).st_mode)
    except OSError:
        return False


def _own_mount(fd: int, rel: str, root_dev: int, pid_ns: int | None) -> bool:
    """Whether ``fd``, the container's ``rel`` (one of ``MOUNT_DIRS``), is a mount of its
    own that the session may show (a /proc of its own pid namespace)."""
    if os.fstat(fd).st_dev == root_dev:
        return False
    return rel != "proc" or _procfs_of(fd, pid_ns)


FRESH = {
    "proc": "proc (of the container's pid namespace; sys, sysrq-trigger, irq, bus, fs "
            "read-only)",
    "dev": "tmpfs (null, zero, full, random, urandom, tty, devpts at pts, shm)",
    "sys": "sysfs (read-only, of the container's net namespace)",
}
"""What a session gets for each of ``MOUNT_DIRS`` the container has none of (dry-run)."""


def container_mounts(root_fd: int, pid_ns: int | None) -> tuple[list[str], bool]:
    """What the container at ``root_fd`` (its root, opened in the host's mount namespace)
    has of ``MOUNT_DIRS``: those a session gets fresh ones of (not a mount of its own, or
    a /proc of another pid namespace than ``pid_ns``), and whether its own /sys is a sysfs
    (it has ``class/net``), whose net namespace ``mount_fresh_sys`` checks once it is
    joined."""
    root_dev = os.fstat(root_fd).st_dev
    fresh = []
    sysfs = False
    for rel in MOUNT_DIRS:
        fd = open_in_container(root_fd, rel, os.O_PATH | os.O_DIRECTORY)
        if fd is None:
            fresh.append(rel)
            continue
        try:
            if not _own_mount(fd, rel, root_dev, pid_ns):
                fresh.append(rel)
            elif rel == "sys":
                sysfs = _is_dir("class/net", fd)
        finally:
            os.close(fd)
    return fresh, sysfs


def regular_files(root_fd: int, rels: tuple[str, ...]) -> list[str]:
    """The ``rels`` that are regular files in the container at ``root_fd`` (resolved as
    the container resolves them)."""
    out = []
    for rel in rels:
        fd = open_in_container(root_fd, rel, os.O_PATH)
        if fd is None:
            continue
        try:
            if stat.S_ISREG(os.fstat(fd).st_mode):
                out.append(rel)
        finally:
            os.close(fd)
    return out


def enter_root(mnt_ns_fd: int, root_fd: int) -> None:
    """Step 1: setns into the mount namespace ``mnt_ns_fd``, then fchdir to ``root_fd``."""
    syscalls.setns(mnt_ns_fd, syscalls.CLONE_NEWNS, "setns(mnt)")
    os.fchdir(root_fd)


def unshare_private() -> None:
    """Step 2: a private copy of the mount namespace (root and cwd move into it)."""
    syscalls.unshare(syscalls.CLONE_NEWNS)
    # Privileged: our copy must not share propagation with the container's mounts.
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)


Item = tuple[str | None, str, bool]
"""What ``assemble`` mounts: (source relative to the container's root, "" for the root
itself, None for a fresh /dev; target relative to the served tree; recursive)."""


def assemble(fuse_fd: int, items: list[Item], on_created: Callable[[], None],
             attached: Callable[[int], None]) -> list[str]:
    """Steps 3-5 of the module docstring but the pivot, in the calling (single-threaded)
    process, whose working directory is the container's root in the private copy.

    The FUSE filesystem is created first and ``on_created`` called, so the caller can
    start serving it: serve-fs takes its parameters and answers the kernel's INIT while
    every item is copied (or made), in order; the moves that follow look paths up through
    it and wait for serve-fs.  ``attached(i)`` is called once item
    ``i`` is in place (-1: the FUSE mount over ``/``).  Returns what was skipped: a fresh
    /dev that could not be made, a directory the served tree lacks.  A file gone from
    the container since the caller looked, or from the served tree, is skipped silently;
    a directory gone from the container is an error.
    """
    croot = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    clones: list[tuple[int, str, int]] = []
    skipped: list[str] = []
    fs = -1
    try:
        fs = fuse_filesystem(fuse_fd)
        on_created()
        for i, (source, target, recursive) in enumerate(items):
            if source is None:
                try:
                    clones += [(fd, t, i) for fd, t in dev_mounts()]
                except OSError as exc:
                    skipped.append(f"/{target} (a fresh one: {exc.strerror})")
                continue
            if not source:
                clones.append((_clone(croot, recursive=True), target, i))
                continue
            flags = os.O_PATH | (os.O_DIRECTORY if recursive else 0)
            fd = open_in_container(croot, source, flags)
            if fd is None:
                if recursive:
                    raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), source)
                continue
            try:
                if recursive or stat.S_ISREG(os.fstat(fd).st_mode):
                    clones.append((_clone(fd, recursive), target, i))
            finally:
                os.close(fd)
        mnt = fuse_attachable(fs)
        os.close(fs)
        fs = -1
        # Over "/" of our private copy: nothing outside this namespace sees it.
        syscalls.move_mount(mnt, "", syscalls.AT_FDCWD, "/", syscalls.MOVE_MOUNT_F_EMPTY_PATH)
        attached(-1)
        failed = set()
        for n, (fd, target, i) in enumerate(clones):
            try:
                # Onto the host's name itself, never where a host symlink points: its target
                # would be looked up from the container's root (ours until pivot_root), and
                # /etc/localtime is a symlink on most hosts.
                syscalls.move_mount(fd, "", mnt, target, syscalls.MOVE_MOUNT_F_EMPTY_PATH)
            except FileNotFoundError:
                if items[i][0] == "":
                    raise
                failed.add(i)
                if target in MOUNT_DIRS:
                    skipped.append(f"/{target} (absent on the host)")
                # A file the host lacks (/etc/localtime on a minimal host) is not needed
                # to show the container's: it stays at /var/lib/cntr/etc.
            if i not in failed and (n + 1 == len(clones) or clones[n + 1][2] != i):
                attached(i)
        os.fchdir(mnt)
        os.close(mnt)
    finally:
        if fs >= 0:
            os.close(fs)
        for fd, _, _ in clones:
            os.close(fd)
        os.close(croot)
    return skipped


def pivot() -> None:
    """The working directory (the served tree) becomes the root, the old one detached."""
    try:
        syscalls.pivot_root(".", ".")
        syscalls.umount2(".", syscalls.MNT_DETACH)
    except OSError:
        # pivot_root refuses some layouts (a namespace root without a parent): chroot
        # gives the same view; the container's own tree is all that lies outside it.
        os.chroot(".")
    os.chdir("/")


def _mount_proc() -> None:
    """A procfs of the caller's pid namespace over ``/proc``, with ``PROC_READ_ONLY``
    read-only."""
    attrs = syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC
    fd = detached_mount("proc", attrs)
    try:
        syscalls.move_mount(fd, "", syscalls.AT_FDCWD, "/proc",
                            syscalls.MOVE_MOUNT_F_EMPTY_PATH)
    finally:
        os.close(fd)
    flags = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    for rel in PROC_READ_ONLY:
        path = f"/proc/{rel}"
        if not os.path.exists(path):
            continue  # /proc/bus and the like depend on the kernel's configuration
        syscalls.mount(path, path, None, syscalls.MS_BIND | syscalls.MS_REC)
        syscalls.mount(None, path, None,
                       syscalls.MS_REMOUNT | syscalls.MS_BIND | syscalls.MS_RDONLY | flags)


def _in_child(fn: Callable[[], None]) -> str | None:
    """Run ``fn`` in a short-lived child (in the pid namespace joined last); None when it
    succeeded, else why it failed."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - a forked child; its failures come back on the pipe
        os.close(r)
        code = 0
        try:
            syscalls.prctl(syscalls.PR_SET_PDEATHSIG, signal.SIGKILL)
            fn()
        except BaseException as exc:  # noqa: BLE001 - reported to the parent, then exit
            why = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
            if isinstance(exc, OSError) and exc.filename:
                why = f"{exc.filename}: {why}"
            os.write(w, why.encode(errors="replace")[:512])
            code = 1
        os._exit(code)
    os.close(w)
    try:
        with os.fdopen(r, "rb") as f:
            why = f.read().decode(errors="replace")
    finally:
        _, status = os.waitpid(pid, 0)
    if os.waitstatus_to_exitcode(status) == 0:
        return None
    return why or f"exit status {os.waitstatus_to_exitcode(status)}"


def mount_fresh_proc() -> str | None:
    """A procfs of the caller's pid namespace over ``/proc``; call after joining the
    container's pid namespace and before its user namespace (it needs the host's
    privileges).  None when done, else what failed.

    procfs shows the pid namespace of the process creating it (not the one its children
    get), so a short-lived child, which is in the container's pid namespace, mounts it in
    the session's (shared) mount namespace."""
    why = _in_child(_mount_proc)
    return None if why is None else f"/proc (a fresh procfs: {why})"


def mount_fresh_sys(only_if_other: bool) -> str | None:
    """A sysfs of the caller's net namespace over ``/sys``; call after joining the
    container's net namespace and before its user namespace.  ``only_if_other``: only
    when the ``/sys`` there (the container's own) shows another net namespace; all sysfs
    mounts of one net namespace share a superblock, so a container's own /sys of another
    one (a sandbox that kept the host's) shows other interfaces.  None when done (or not
    needed), else what failed."""
    try:
        fd = detached_mount("sysfs", MOUNT_ATTR_RDONLY | syscalls.MOUNT_ATTR_NOSUID
                            | syscalls.MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC)
    except OSError as exc:
        return None if only_if_other else f"/sys (a fresh sysfs: {exc.strerror})"
    try:
        if only_if_other and os.stat("/sys").st_dev == os.fstat(fd).st_dev:
            return None
        syscalls.move_mount(fd, "", syscalls.AT_FDCWD, "/sys",
                            syscalls.MOVE_MOUNT_F_EMPTY_PATH)
    except OSError as exc:
        return f"/sys (a fresh sysfs: {exc.strerror})"
    finally:
        os.close(fd)
    return None
