"""Stage serve-fs: serve a host directory tree over FUSE until it is unmounted.

``serve_fs()`` is what ``cntr serve-fs`` and ``attach`` call; it never touches click.
Run standalone for tests and debugging::

    python -m stages.serve_fs [--debug] [--ready-fd=N] [--allowed-mnt-ns=INO] ROOT MOUNTPOINT

Caveats:
- sets the process umask to 0, then to each requester's for the files it creates
  (`cntr.fs.operations.Operations.create_mode`: the host applies it, or a default ACL).
- pyfuse3 has one global session: one serve_fs() per process.
- ``CNTR_SERVE_FS_LOOP=libfuse`` and ``trio`` (pyfuse3's libfuse session) run only here,
  standalone, as the benchmark's reference: ``serve_fs()`` refuses them otherwise.  That
  session cannot negotiate what the wire session does to behave like the disk
  (FUSE_HANDLE_KILLPRIV_V2, FUSE_DONT_MASK, FUSE_SETXATTR_EXT) nor carry its extra
  requests (fallocate, statx, O_TMPFILE, ioctls, ...), so no cntr session runs on it.
"""

from __future__ import annotations

import logging
import os
import sys

from cntr.errors import CntrError, os_error
from cntr.fs.operations import IdMap, Operations
from cntr.fs.server import LOOPS, serve


def serve_fs(root: str = "/", *, mountpoint: str | None = None, fuse_fd: int | None = None,
             ready_fd: int | None = None, uid_map: IdMap | None = None,
             gid_map: IdMap | None = None,
             effective_user: tuple[int, int] | None = None,
             allowed_mnt_ns: int | None = None, debug: bool = False,
             reference_loops: bool = False) -> int:
    """Serve `root` until the filesystem is unmounted; returns an exit status (0 on clean unmount).

    Exactly one of ``mountpoint`` (serve-fs mounts and unmounts it) and ``fuse_fd`` (a
    /dev/fuse descriptor already mounted elsewhere) is given.  ``ready_fd`` receives one
    byte ``b"R"`` and is closed once requests are being served.

    ``allowed_mnt_ns`` (the inode of a mount namespace, ``os.stat("/proc/PID/ns/mnt")
    .st_ino``): serve only processes of that namespace, refusing every other with EACCES
    ("Permission denied"); `cntr.fs.operations` says what is checked and what the kernel's
    caches still show.  None serves every process that reaches the mount.

    ``reference_loops``: accept pyfuse3's libfuse session (``CNTR_SERVE_FS_LOOP=libfuse``
    or ``trio``), for the benchmark (module docstring); refused otherwise.
    """
    if (mountpoint is None) == (fuse_fd is None):
        raise CntrError("serve-fs: give exactly one of a mountpoint and a FUSE descriptor")
    loop = _loop() if reference_loops else session_loop()
    try:
        root_fd = os.open(root, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise os_error(f"serve-fs: open({root})", exc) from exc
    os.umask(0)
    # acl: the kernel enforces POSIX ACLs (FUSE_POSIX_ACL) as the disk under it would.
    ops = Operations(root_fd, acl=True, uid_map=uid_map, gid_map=gid_map,
                     effective_user=effective_user, allowed_mnt_ns=allowed_mnt_ns,
                     debug=debug)
    try:
        return serve(ops, mountpoint=mountpoint, fuse_fd=fuse_fd, ready_fd=ready_fd,
                     loop=loop)
    except RuntimeError as exc:  # pyfuse3 reports mount failures as RuntimeError
        raise CntrError(f"serve-fs: mount {mountpoint or fuse_fd}: {exc}") from exc


def session_loop() -> str:
    """The FUSE session a cntr session or ``cntr serve-fs`` runs (`_loop`): wire or uring;
    CntrError (one line) for pyfuse3's libfuse session, a benchmark reference only."""
    loop = _loop()
    if loop in ("libfuse", "trio"):
        # The CLI prints it as "cntr: serve-fs: ...".
        raise CntrError(f"CNTR_SERVE_FS_LOOP={loop} is only a benchmark reference "
                        "(python -m stages.serve_fs), not as correct as a session must be: "
                        "use wire or uring")
    return loop


def _loop() -> str:
    """The FUSE session: ``CNTR_SERVE_FS_LOOP`` (wire, uring, libfuse or trio; see
    `cntr.fs.server.serve`), or trio with the older ``CNTR_SERVE_FS_TRIO=1``."""
    if os.environ.get("CNTR_SERVE_FS_TRIO") == "1":
        return "trio"
    loop = os.environ.get("CNTR_SERVE_FS_LOOP") or "wire"
    if loop not in LOOPS:
        raise CntrError(f"serve-fs: CNTR_SERVE_FS_LOOP must be one of {', '.join(LOOPS)}, "
                        f"not {loop!r}")
    return loop


def _main(argv: list[str]) -> int:
    debug = "--debug" in argv
    args = [a for a in argv if a != "--debug"]
    ready_fd: int | None = None
    allowed_mnt_ns: int | None = None
    while args and args[0].startswith(("--ready-fd=", "--allowed-mnt-ns=")):
        opt, value = args.pop(0).split("=", 1)
        if opt == "--ready-fd":
            ready_fd = int(value)
        else:
            allowed_mnt_ns = int(value)
    if len(args) != 2:
        print("usage: python -m stages.serve_fs [--debug] [--ready-fd=N] "
              "[--allowed-mnt-ns=INO] ROOT MOUNTPOINT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(name)s: %(message)s")
    try:
        return serve_fs(args[0], mountpoint=args[1], ready_fd=ready_fd,
                        allowed_mnt_ns=allowed_mnt_ns, debug=debug, reference_loops=True)
    except CntrError as exc:
        print(f"cntr: {exc}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
