"""Serving one tree: the handler core for a root directory, the entries shown where the tree
lacks them, and the FUSE session they run on until the filesystem is unmounted.

`serve_tree` is what a session's serve-fs (forked by `cntr.launch`) and the serve-fs stage
(`cntr.stages.serve_fs`) run; the stage chooses the session loop and maps the CLI to it.

Caveats:
- sets the process umask to 0, then to each requester's for the files it creates
  (`cntr.fs.passthrough.Passthrough.create_mode`: the host applies it, or a default ACL).
- pyfuse3 has one global session: one libfuse `serve_tree` per process.
- ``synthetic`` paths the served tree lacks (a ``--tools`` tree without ``/var/lib/cntr``,
  ``/proc`` or ``/etc/passwd``, where the session mounts the container's) are shown as
  empty directories and files of a tmpfs that serve-fs made detached (fsmount(2), in no
  mount table): nothing is written into the served tree, and what the session writes
  below them is gone with serve-fs.
"""

from __future__ import annotations

import os
import stat

from cntr.errors import CntrError, os_error
from cntr.fs.gate import MountNsGate
from cntr.fs.inodes import MODE
from cntr.fs.passthrough import IdMap, Passthrough
from cntr.fs.server import serve
from cntr.linux import syscalls
from cntr.linux.mounts import detached_mount

TYPE_CHECKING = False  # typing costs ~3.5 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Sequence

HELPER_DIR = ".cntr"
"""Where a ``--tools`` session finds its ``cntr`` (``exec_helper``): ``/.cntr``."""

# `cntr exec` for a tree without cntr: run by a static busybox (cntr.launch.static_busybox)
# with the behaviour of cntr.stages.exec.exec_in_session: the container's root and PATH, the
# working directory kept when it is inside the container's root.
HELPER_SCRIPT = """#!/{dir}/{busybox} sh
# cntr in a --tools session: only `cntr exec [CMD [ARGS...]]` (the tools tree lacks cntr).
bb=/{dir}/{busybox}
if [ "$1" != exec ]; then
    echo "cntr: in a --tools session only 'cntr exec CMD' runs (the tools lack cntr)" >&2
    exit 2
fi
shift
[ $# -gt 0 ] || set -- /bin/sh
base=${{CNTR_BASE_DIR:-/var/lib/cntr}}
if [ -z "${{CNTR_CONTAINER_PATH+x}}" ] || [ ! -d "$base" ]; then
    echo "cntr: exec: not inside a cntr session" >&2
    exit 4
fi
case $PWD/ in "$base"/*) wd=$PWD ;; *) wd=$base ;; esac
exec "$bb" env -u CNTR_CONTAINER_PATH -u CNTR_BASE_DIR PATH="$CNTR_CONTAINER_PATH" \
    "$bb" nsenter --root="$base" --wd="$wd" "$@"
"""


def serve_tree(root: str = "/", *, loop: str = "wire", mountpoint: str | None = None,
               fuse_fd: int | None = None, ready_fd: int | None = None,
               uid_map: IdMap | None = None, gid_map: IdMap | None = None,
               effective_user: tuple[int, int] | None = None,
               allowed_mnt_ns: int | None = None, debug: bool = False,
               synthetic: Sequence[str] = (), exec_helper: str | None = None) -> int:
    """Serve `root` until the filesystem is unmounted; returns an exit status (0 on clean unmount).

    Exactly one of ``mountpoint`` (serve-fs mounts and unmounts it) and ``fuse_fd`` (a
    /dev/fuse descriptor already mounted elsewhere) is given.  ``ready_fd`` receives one
    byte ``b"R"`` and is closed once requests are being served.

    ``allowed_mnt_ns`` (the inode of a mount namespace, ``os.stat("/proc/PID/ns/mnt")
    .st_ino``): serve only processes of that namespace, refusing every other with EACCES
    ("Permission denied"); `cntr.fs.gate` says what is checked and what the kernel's
    caches still show.  None serves every process that reaches the mount.

    ``loop``: the FUSE session (`cntr.fs.server.serve`), as `cntr.launch.serve_fs_loop`
    chose it.

    ``synthetic``: paths (relative; a trailing ``/`` for a directory) shown as empty
    directories or files where ``root`` lacks them; ``exec_helper``: a static busybox
    shown with a ``cntr`` script for it in ``/.cntr`` (see the module docstring).
    """
    if (mountpoint is None) == (fuse_fd is None):
        raise CntrError("serve-fs: give exactly one of a mountpoint and a FUSE descriptor")
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(f"serve-fs: open({root})", exc) from exc
    os.umask(0)
    # acl: the kernel enforces POSIX ACLs (FUSE_POSIX_ACL) as the disk under it would.
    fs = Passthrough(root_fd, acl=True, uid_map=uid_map, gid_map=gid_map,
                     effective_user=effective_user, debug=debug)
    if synthetic or exec_helper:
        try:
            graft(fs, synthetic, exec_helper)
        except OSError as exc:
            fs.close()
            raise os_error("serve-fs: make the synthetic entries", exc) from exc
    gate = MountNsGate(allowed_mnt_ns) if allowed_mnt_ns is not None else None
    try:
        return serve(fs, gate=gate, mountpoint=mountpoint, fuse_fd=fuse_fd,
                     ready_fd=ready_fd, loop=loop)
    except RuntimeError as exc:  # a mount failure (pyfuse3's, or fuse_mount's)
        raise CntrError(f"serve-fs: mount {mountpoint or fuse_fd}: {exc}") from exc


def _detached_tmpfs() -> int:
    """A small tmpfs that is mounted nowhere: its mount descriptor."""
    return detached_mount("tmpfs", syscalls.MOUNT_ATTR_NOSUID | syscalls.MOUNT_ATTR_NODEV,
                          (("size", "8m"), ("nr_inodes", "256"), ("mode", "755")))


def graft(ops: Passthrough, synthetic: Sequence[str], exec_helper: str | None) -> None:
    """Show the ``synthetic`` paths the tree lacks, and ``exec_helper``, through
    ``ops.grafts``.

    Each path is walked from the root; at its first missing component the rest is made
    in a detached tmpfs, below a copy of the part that exists, and that component is
    grafted into the directory the walk reached.  Those directories are pinned in the
    inode table (one lookup the kernel never forgets), so their node ids stay the keys.
    """
    old_umask = os.umask(0o022)  # serve-fs runs with 0; these are its own directories
    try:
        _graft(ops, synthetic, exec_helper)
    finally:
        os.umask(old_umask)


def _graft(ops: Passthrough, synthetic: Sequence[str], exec_helper: str | None) -> None:
    tmp = _detached_tmpfs()
    table = ops.table
    holders: dict[str, int] = {}  # tmpfs directory (a copy of an existing path) -> fd

    def holder(prefix: str) -> int:
        if prefix not in holders:
            os.makedirs(f"/proc/self/fd/{tmp}/{prefix}", mode=0o755, exist_ok=True)
            holders[prefix] = os.open(f"/proc/self/fd/{tmp}/{prefix}",
                                      os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return holders[prefix]

    wanted = [p.strip("/") + "/" * p.endswith("/") for p in synthetic]
    if exec_helper:
        wanted.append(f"{HELPER_DIR}/")
    for path in wanted:
        names = [n for n in path.split("/") if n]
        node, fd = table.root, table.fd(table.root)
        for i, name in enumerate(names):
            key = (node.nodeid, name.encode())
            try:
                if key in ops.grafts:  # made for an earlier path: the rest goes beside it
                    raise FileNotFoundError
                st = ops.statbuf.at(fd, name.encode(), syscalls.AT_SYMLINK_NOFOLLOW)
            except FileNotFoundError:
                if key not in ops.grafts:
                    ops.grafts[key] = holder("/".join(names[:i]))
                    node.nlookup += 1  # pinned: see the docstring
                rest = f"/proc/self/fd/{tmp}/{'/'.join(names)}"
                if path.endswith("/"):
                    os.makedirs(rest, mode=0o755, exist_ok=True)
                else:
                    os.makedirs(os.path.dirname(rest), mode=0o755, exist_ok=True)
                    os.close(os.open(rest, os.O_CREAT | os.O_WRONLY | os.O_CLOEXEC, 0o644))
                break
            if i == len(names) - 1 or not stat.S_ISDIR(st[MODE]):
                break  # there already (or a symlink or file in the way: left alone)
            node = table.learn(node, fd, name.encode(), st)
            fd = table.fd(node)
    top = (table.root.nodeid, HELPER_DIR.encode())
    if exec_helper and top in ops.grafts:  # (a tree with a /.cntr of its own gets none)
        # /.cntr/cntr is the script, /.cntr/busybox a copy of the host's static busybox
        # (~2 MB; a copy because the host's may be on a filesystem without file handles,
        # overlayfs in cntr's image, which serve-fs could not reopen a graft from).
        helper = f"/proc/self/fd/{tmp}/{HELPER_DIR}"
        # shutil only here (a --tools session): it imports bz2, lzma and zlib, ~2.5 ms of
        # every serve-fs's start, which is on the way to a session's first request.
        import shutil

        with open(exec_helper, "rb") as src, open(f"{helper}/busybox", "xb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
        with open(f"{helper}/cntr", "xb") as f:
            f.write(HELPER_SCRIPT.format(dir=HELPER_DIR, busybox="busybox").encode())
        os.chmod(f"{helper}/cntr", 0o755)
        os.chmod(f"{helper}/busybox", 0o755)
