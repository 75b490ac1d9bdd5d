"""The mount-namespace gate: serve only the threads of one mount namespace.

A process of the container can reach the session's mount through ``/proc/<session
pid>/root``, ``/cwd``, ``/fd/N`` or ``/map_files`` (same uid, so it passes the ptrace access
checks), and its requests then arrive like the session's.  With ``allowed_mnt_ns`` set
(`cntr.fs.tree.serve_tree`), the dispatcher (`cntr.fs.session.Session.answer`, and
`cntr.fs.libfuse` for pyfuse3's session) checks every gated request once, before its
handler runs, and refuses it with EACCES ("Permission denied", what a user expects from an
access rule; EPERM would read as a missing privilege) unless the calling thread's mount
namespace (``/proc/<pid>/ns/mnt``, the host's /proc: serve-fs runs in the host's
namespaces) has that inode.  Requests with pid 0 come from the kernel itself (forget,
writeback) and pass.

Gated: every request that names a node or a name (lookup, getattr, setattr, readlink,
statfs, access, mknod, mkdir, symlink, unlink, rmdir, rename, link, open, create, poll,
opendir, getxattr, setxattr, listxattr, removexattr, tmpfile, statx).  The others (read,
write, flush, release, fsync, readdirplus, releasedir, fsyncdir, fallocate, lseek,
copy_file_range, ioctl; forget, interrupt, init, destroy) act on a file handle that only an
admitted open/opendir/create/tmpfile returns, or on the kernel's own bookkeeping: refusing
a release would leak a descriptor.  Limits:

- the kernel answers from its dentry and attribute caches for ``entry_timeout`` and
  ``attr_timeout`` without asking: a refused process may still stat (see the metadata of)
  names a session process looked up in the last second, and readlink(2) on
  ``/proc/<pid>/fd/N`` (procfs) shows paths; it cannot open, read, list, write, create or
  remove anything (open and opendir always ask, refusals are not cached);
- a descriptor a session process hands over (SCM_RIGHTS, inheritance) works, as does
  anything done by a process that can ptrace a session process and act as it;
- a session process that moves to another mount namespace (``unshare -m``, ``ip netns
  exec``, bwrap) keeps its cached verdict while it lasts, then is refused: serve-fs cannot
  tell a namespace unshared from the session's from any other, and re-reading the
  namespace on every request would cost 3.5 us instead of 0.4 us;
- the verdict is taken when the request is handled: a requester that dies and whose pid is
  reused by an admitted process before serve-fs reads the request is judged as the latter
  (it would need a full pid wrap-around inside that window).
"""

from __future__ import annotations

import errno
import os

from cntr.fs.log import log
from cntr.linux import syscalls as sc

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal

_pidfd_send_signal = signal.pidfd_send_signal


class MountNsGate:
    """Admits requests from threads of one mount namespace only (module docstring).

    The verdict for a thread id is cached with a pidfd of that thread: the pidfd is opened
    before ``/proc/<pid>/ns/mnt`` is read and checked alive after, so the verdict is the
    one of the thread the pidfd refers to; on each later hit a signal-0 pidfd_send_signal
    (about 0.3 us, against 3.5 us for the stat) says whether that thread still exists.  Once
    it is gone its id may belong to another process: the entry is dropped and the new
    holder judged afresh, whichever way the old verdict went.  At most ``size`` entries
    (and pidfds); the oldest goes first.  Without a pidfd (a non-leader thread before Linux
    6.9, descriptors exhausted) the verdict is taken afresh on every request.
    """

    __slots__ = ("_cache", "_pidfd_flags", "mnt_ns", "size")

    def __init__(self, mnt_ns: int, *, size: int = 256) -> None:
        if size < 1:
            raise ValueError("size must be >= 1")
        #: the inode of the admitted mount namespace (st_ino of /proc/PID/ns/mnt)
        self.mnt_ns = mnt_ns
        self.size = size
        #: thread id -> (admitted, pidfd)
        self._cache: dict[int, tuple[bool, int]] = {}
        self._pidfd_flags = sc.PIDFD_THREAD

    def check(self, pid: int) -> None:
        """Return if ``pid`` (a FUSE request's thread id) may be served, else raise
        PermissionError (EACCES)."""
        if pid == 0:  # the kernel's own requests (forget, writeback)
            return
        hit = self._cache.get(pid)
        if hit is not None:
            try:
                _pidfd_send_signal(hit[1], 0)
            except OSError:  # ESRCH: gone, the id may be someone else's now
                self._drop(pid)
            else:
                if hit[0]:
                    return
                raise PermissionError(errno.EACCES, "another mount namespace")
        if not self._judge(pid):
            raise PermissionError(errno.EACCES, "another mount namespace")

    def close(self) -> None:
        """Close the cached pidfds."""
        for _, pidfd in self._cache.values():
            os.close(pidfd)
        self._cache.clear()

    def _drop(self, pid: int) -> None:
        entry = self._cache.pop(pid, None)
        if entry is not None:
            os.close(entry[1])

    def _judge(self, pid: int) -> bool:
        pidfd = self._pidfd(pid)
        if pidfd == -2:
            log.debug("serve-fs: refused pid %d: no such process", pid)
            return False
        try:
            ns = os.stat(b"/proc/%d/ns/mnt" % pid).st_ino
        except OSError:
            ns = -1  # gone (or exiting: its namespaces are already released)
        admitted = ns == self.mnt_ns
        if pidfd >= 0:
            try:
                _pidfd_send_signal(pidfd, 0)
            except OSError:  # gone before the stat: that stat may be another process's
                os.close(pidfd)
                return False
            cache = self._cache
            if len(cache) >= self.size:
                self._drop(next(iter(cache)))
            cache[pid] = (admitted, pidfd)
        if not admitted:
            log.debug("serve-fs: refused pid %d: mount namespace %d, not %d", pid, ns,
                      self.mnt_ns)
        return admitted

    def _pidfd(self, pid: int) -> int:
        """A pidfd of thread ``pid``; -2 when there is no such thread, -1 when none can
        be had (the verdict is then not cached)."""
        try:
            return os.pidfd_open(pid, self._pidfd_flags)
        except ProcessLookupError:
            return -2
        except OSError as exc:
            if exc.errno == errno.EINVAL and self._pidfd_flags:
                # Before Linux 6.9 there is no PIDFD_THREAD: leaders only from now on.
                self._pidfd_flags = 0
                return self._pidfd(pid)
            return -1
