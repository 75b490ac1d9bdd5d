"""Building the session's root: the host's tree served by FUSE as ``/``, the container's
root at the base directory, and the container's ``/proc``, ``/dev``, ``/sys`` and a few
files bound over the host's.

The sequence runs in a single-threaded child that has opened, while still in the host's
mount namespace, a descriptor of the container's root (``/proc/PID/root``) and of its
mount namespace:

1. ``setns(mnt)``, then ``fchdir(root)``: the working directory is the container's root
   (for a chroot-style container it is not the namespace's root).
2. ``unshare(CLONE_NEWNS)``: a private copy; the kernel moves root and cwd into the copy.
   Everything is made private at once, so nothing done afterwards propagates back into
   the container (mount_namespaces(7), "shared subtrees").
3. ``open_tree(OPEN_TREE_CLONE)`` takes detached copies of the container's root, its
   ``proc``/``dev``/``sys`` mounts and the bound files, resolved with ``RESOLVE_IN_ROOT``
   so a symlink in the container cannot name a host path.
4. The FUSE filesystem is created with fsopen/fsconfig/fsmount on the ``/dev/fuse``
   descriptor serve-fs will read; nothing shows in any mount table but the session's.
5. It is attached over ``/`` of the private namespace, the copies are moved onto it, and
   ``pivot_root(".", ".")`` + ``umount2(".", MNT_DETACH)`` make it the root with the old
   root gone, as runc does (pivot_root(2), "NOTES").

Caveats:
- a container ``/proc``, ``/dev`` or ``/sys`` that is not a mount of its own is not bound
  (the host's then shows there); the bound files are skipped where the host lacks them.
- the base directory must exist in the served tree (``enter`` creates it on the host).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable

from cntr.linux import syscalls
from cntr.record import field, record

RESOLVE_CONTAINER = syscalls.RESOLVE_IN_ROOT | syscalls.RESOLVE_NO_MAGICLINKS
MOUNT_DIRS = ("proc", "dev", "sys")


@record
class SessionRoot:
    """What to assemble; every path is relative (no leading slash)."""

    fuse_fd: int
    """the open /dev/fuse descriptor serve-fs serves."""
    base_dir: str
    """where the container's root goes, e.g. ``var/lib/cntr``."""
    files: tuple[str, ...]
    """container files to bind over the host's, e.g. ``etc/hostname``."""
    skipped: list[str] = field(default_factory=list)
    """what could not be bound (reported as warnings)."""


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
        # nosuid, nodev: with the uid translation a container's root owns the host's root
        # files in the kernel's eyes, and must not get the host's setuid programs or block
        # devices with them.
        return syscalls.fsmount(fs, syscalls.FSMOUNT_CLOEXEC,
                                syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV)
    finally:
        os.close(fs)


def build(spec: SessionRoot, mnt_ns_fd: int, root_fd: int,
          on_mounted: Callable[[], None]) -> None:
    """Run steps 1-5 of the module docstring in the calling (single-threaded) process.

    ``on_mounted`` is called once the FUSE filesystem exists, so the caller can start
    serving it; the moves that follow look paths up through it and wait for serve-fs.
    """
    syscalls.setns(mnt_ns_fd, syscalls.CLONE_NEWNS, "setns(mnt)")
    os.fchdir(root_fd)
    syscalls.unshare(syscalls.CLONE_NEWNS)
    # Privileged: our copy must not share propagation with the container's mounts.
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    croot = os.open(".", os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    clones: list[tuple[int, str]] = []
    try:
        root_dev = os.fstat(croot).st_dev
        clones.append((_clone(croot, recursive=True), spec.base_dir))
        for rel in MOUNT_DIRS:
            fd = open_in_container(croot, rel, os.O_PATH | os.O_DIRECTORY)
            if fd is None:
                spec.skipped.append(f"/{rel} (absent in the container)")
                continue
            try:
                if os.fstat(fd).st_dev == root_dev:
                    spec.skipped.append(f"/{rel} (not a mount in the container)")
                    continue
                clones.append((_clone(fd, recursive=True), rel))
            finally:
                os.close(fd)
        for rel in spec.files:
            fd = open_in_container(croot, rel, os.O_PATH)
            if fd is None:
                continue
            try:
                if stat.S_ISREG(os.fstat(fd).st_mode):
                    clones.append((_clone(fd, recursive=False), rel))
            finally:
                os.close(fd)
        mnt = fuse_mount(spec.fuse_fd)
        on_mounted()
        # Over "/" of our private copy: nothing outside this namespace sees it.
        syscalls.move_mount(mnt, "", syscalls.AT_FDCWD, "/", syscalls.MOVE_MOUNT_F_EMPTY_PATH)
        for fd, target in clones:
            try:
                syscalls.move_mount(
                    fd, "", mnt, target,
                    syscalls.MOVE_MOUNT_F_EMPTY_PATH | 0x10,  # MOVE_MOUNT_T_SYMLINKS
                )
            except FileNotFoundError:
                if target == spec.base_dir:
                    raise
                if target in MOUNT_DIRS:
                    spec.skipped.append(f"/{target} (absent on the host)")
                # A file the host lacks (/etc/localtime on a minimal host) is not needed
                # to show the container's: it stays at /var/lib/cntr/etc.
        os.fchdir(mnt)
        os.close(mnt)
    finally:
        for fd, _ in clones:
            os.close(fd)
        os.close(croot)
    try:
        syscalls.pivot_root(".", ".")
        syscalls.umount2(".", syscalls.MNT_DETACH)
    except OSError:
        # pivot_root refuses some layouts (a namespace root without a parent): chroot
        # gives the same view; the container's own tree is all that lies outside it.
        os.chroot(".")
    os.chdir("/")
