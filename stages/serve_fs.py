"""Stage serve-fs: serve a host directory tree over FUSE until it is unmounted.

``serve_fs()`` is what ``cntr serve-fs`` calls (a session's serve-fs, forked by
`cntr.launch`, runs `cntr.fs.tree.serve_tree` itself); it never touches click.
Run standalone for tests and debugging::

    python -m cntr.stages.serve_fs [--debug] [--ready-fd=N] [--allowed-mnt-ns=INO] ROOT MOUNTPOINT

The session (``CNTR_SERVE_FS_LOOP``: wire, uring or libfuse) is `cntr.launch.serve_fs_loop`'s
choice; caveats are those of `cntr.fs.tree` and of the session's module.
"""

from __future__ import annotations

import logging
import sys
from collections.abc import Sequence

from cntr.errors import CntrError
from cntr.fs.passthrough import IdMap
from cntr.fs.tree import serve_tree
from cntr.launch import serve_fs_loop


def serve_fs(root: str = "/", *, mountpoint: str | None = None, fuse_fd: int | None = None,
             ready_fd: int | None = None, uid_map: IdMap | None = None,
             gid_map: IdMap | None = None,
             effective_user: tuple[int, int] | None = None,
             allowed_mnt_ns: int | None = None, debug: bool = False,
             synthetic: Sequence[str] = (),
             exec_helper: str | None = None) -> int:
    """Serve `root` until the filesystem is unmounted (`cntr.fs.tree.serve_tree`, whose
    docstring says what each argument does) on the session loop ``CNTR_SERVE_FS_LOOP``
    names; returns an exit status (0 on clean unmount).
    """
    return serve_tree(root, loop=serve_fs_loop(),
                      mountpoint=mountpoint, fuse_fd=fuse_fd, ready_fd=ready_fd,
                      uid_map=uid_map, gid_map=gid_map, effective_user=effective_user,
                      allowed_mnt_ns=allowed_mnt_ns, debug=debug, synthetic=synthetic,
                      exec_helper=exec_helper)


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
        print("usage: python -m cntr.stages.serve_fs [--debug] [--ready-fd=N] "
              "[--allowed-mnt-ns=INO] ROOT MOUNTPOINT", file=sys.stderr)
        return 2
    logging.basicConfig(level=logging.DEBUG if debug else logging.INFO,
                        format="%(name)s: %(message)s")
    try:
        return serve_fs(args[0], mountpoint=args[1], ready_fd=ready_fd,
                        allowed_mnt_ns=allowed_mnt_ns, debug=debug)
    except CntrError as exc:
        print(f"cntr: serve-fs: {exc.message.removeprefix('serve-fs: ')}", file=sys.stderr)
        return exc.exit_code


if __name__ == "__main__":
    sys.exit(_main(sys.argv[1:]))
