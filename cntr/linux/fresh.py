"""Kernel pieces of an offline session: fresh namespaces instead of a container's, a
private overlay mount, and the /proc, /sys and /dev a new pid namespace needs.

An offline session has no process to join: the setup child creates new uts, ipc, cgroup,
pid (and, unless the host's network is asked for, net) namespaces, names the uts one after
the container and brings its loopback up; the session's first process, pid 1 of the new pid
namespace, mounts a proc of that namespace (a proc instance shows the pid namespace of the
process that mounts it, so the setup child cannot), a sysfs, and a small /dev.

Caveats:
- ``overlay`` creates a detached mount (fsopen/fsmount): it is in no mount table and goes
  away with its last descriptor.  Layers are given one by one (``lowerdir+``, Linux 6.8+)
  because fsconfig limits a string to 256 bytes, less than two docker layer paths.
- /dev: the fresh one ``cntr.linux.mounts.assemble`` gives a session whose container
  has none, bound into the container's root as well; where there is none (``cntr exec``), a
  tmpfs with null, zero, full, random, urandom and tty, a devpts instance of its own and
  /dev/shm, as runc gives a container.
"""

from __future__ import annotations

# _socket, the C module under socket: socket itself costs ~3 ms to import on every attach.
# Imported here, not where it is used: that runs chrooted into the container (no Python).
import _socket
import fcntl
import os
import stat
import struct

from cntr.errors import suppress
from cntr.linux import mounts, syscalls

SIOCGIFFLAGS = 0x8913
SIOCSIFFLAGS = 0x8914
IFF_UP = 0x1

DEVICES = (("null", 1, 3), ("zero", 1, 5), ("full", 1, 7), ("random", 1, 8),
           ("urandom", 1, 9), ("tty", 5, 0))
"""The device nodes of the session's /dev (name, major, minor), as runc's defaults."""
DEV_LINKS = (("fd", "/proc/self/fd"), ("stdin", "/proc/self/fd/0"),
             ("stdout", "/proc/self/fd/1"), ("stderr", "/proc/self/fd/2"),
             ("ptmx", "pts/ptmx"))


def unshare_namespaces(hostname: str, network: bool) -> None:
    """New uts, ipc, cgroup and pid namespaces (and net when ``network``), the hostname
    set and loopback up.  The pid namespace is the children's: fork afterwards."""
    flags = (syscalls.CLONE_NEWUTS | syscalls.CLONE_NEWIPC | syscalls.CLONE_NEWCGROUP
             | syscalls.CLONE_NEWPID)
    if network:
        flags |= syscalls.CLONE_NEWNET
    syscalls.unshare(flags)
    if hostname:
        _socket.sethostname(hostname)
    if network:
        loopback_up()


def loopback_up() -> None:
    """Bring ``lo`` of the current network namespace up (SIOCSIFFLAGS, netdevice(7))."""
    s = _socket.socket(_socket.AF_INET, _socket.SOCK_DGRAM)
    try:
        req = struct.pack("16sH14x", b"lo", 0)
        flags = struct.unpack("16sH14x", fcntl.ioctl(s, SIOCGIFFLAGS, req))[1]
        fcntl.ioctl(s, SIOCSIFFLAGS, struct.pack("16sH14x", b"lo", flags | IFF_UP))
    finally:
        s.close()


def tmpfs(mode: str = "755") -> int:
    """A detached tmpfs; its mount descriptor."""
    return mounts.detached_mount("tmpfs", strings=(("mode", mode),))


def overlay(lower: list[str], upper: str = "", work: str = "") -> int:
    """A detached overlay of ``lower`` (topmost first) with ``upper``/``work`` as its
    writable layer, or a throwaway one on a tmpfs when ``upper`` is empty; its mount
    descriptor."""
    scratch = None
    if not upper:
        scratch = tmpfs()
        os.mkdir("upper", 0o755, dir_fd=scratch)
        os.mkdir("work", 0o700, dir_fd=scratch)
        upper, work = f"/proc/self/fd/{scratch}/upper", f"/proc/self/fd/{scratch}/work"
    fs = syscalls.fsopen("overlay")
    try:
        for layer in lower:
            syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, "lowerdir+", layer)
        syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, "upperdir", upper)
        syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, "workdir", work)
        syscalls.fsconfig(fs, syscalls.FSCONFIG_CMD_CREATE)
        return syscalls.fsmount(fs)
    finally:
        os.close(fs)
        if scratch is not None:
            os.close(scratch)  # the overlay holds the tmpfs now


def _is_dir(path: str) -> bool:
    try:
        return stat.S_ISDIR(os.lstat(path).st_mode)
    except OSError:
        return False


def mount_kernel_fs(base_dir: str) -> None:
    """In pid 1 of the new pid namespace: proc, sysfs and a /dev at ``/`` and under
    ``base_dir`` (the container's root), where the directories exist."""
    noexec = syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC
    for top in ("/", base_dir.rstrip("/") + "/"):
        if _is_dir(f"{top}proc"):
            syscalls.mount("proc", f"{top}proc", "proc", noexec)
        if _is_dir(f"{top}sys"):
            syscalls.mount("sysfs", f"{top}sys", "sysfs", noexec | syscalls.MS_RDONLY)
    try:  # enter's fresh /dev (a mount of its own, not the served host's directory)
        provided = os.stat("/dev").st_dev != os.stat("/").st_dev
    except OSError:
        provided = False
    if not provided:
        _make_dev("/dev")
    target = base_dir.rstrip("/") + "/dev"
    if _is_dir(target):
        syscalls.mount("/dev", target, None, syscalls.MS_BIND | syscalls.MS_REC)


def _make_dev(target: str) -> None:
    syscalls.mount("tmpfs", target, "tmpfs", syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
                   "mode=755,size=65536k")
    for name, major, minor in DEVICES:
        path = f"{target}/{name}"
        os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(major, minor))
        os.chmod(path, 0o666)  # mknod applies the umask
    for name, dest in DEV_LINKS:
        os.symlink(dest, f"{target}/{name}")
    os.mkdir(f"{target}/pts", 0o755)
    os.mkdir(f"{target}/shm", 0o1777)
    os.chmod(f"{target}/shm", 0o1777)
    with suppress(OSError):  # a kernel without devpts: no ptys in the session
        syscalls.mount("devpts", f"{target}/pts", "devpts",
                       syscalls.MS_NOSUID | syscalls.MS_NOEXEC,
                       "newinstance,ptmxmode=0666,mode=0620")
    syscalls.mount("shm", f"{target}/shm", "tmpfs",
                   syscalls.MS_NOSUID | syscalls.MS_NODEV | syscalls.MS_NOEXEC,
                   "mode=1777,size=65536k")


def chroot_private_copy() -> None:
    """``cntr exec`` of an offline container, once in the mount namespace standing for
    its own with the working directory at its root (``mounts.enter_root``): a private copy
    of that namespace with a copy of the root's tree mounted over its ``/`` and chrooted
    into, so the session's /proc, /sys and /dev are mounted there and nowhere else."""
    # The kernel moves the working directory into the copy (a mount of the old namespace
    # could not be cloned from the new one), as mounts.assemble relies on.
    syscalls.unshare(syscalls.CLONE_NEWNS)
    # Privileged: nothing mounted below may propagate back to the host's namespace.
    syscalls.mount(None, "/", None, syscalls.MS_REC | syscalls.MS_PRIVATE)
    flags = syscalls.OPEN_TREE_CLONE | syscalls.OPEN_TREE_CLOEXEC | syscalls.AT_RECURSIVE
    tree = syscalls.open_tree(syscalls.AT_FDCWD, ".", flags)
    try:
        syscalls.move_mount(tree, "", syscalls.AT_FDCWD, "/", syscalls.MOVE_MOUNT_F_EMPTY_PATH)
        os.fchdir(tree)
    finally:
        os.close(tree)
    os.chroot(".")
    os.chdir("/")
