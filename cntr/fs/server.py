"""Mount, serve and unmount: the glue between `Operations` and pyfuse3's trio main loop.

``serve()`` either mounts a mountpoint itself (``pyfuse3.init(ops, mountpoint, options)``)
or serves a /dev/fuse descriptor that another process already mounted, possibly in another
mount namespace (``pyfuse3.init(ops, "/dev/fd/N", options)``: libfuse treats a /dev/fd/N
mountpoint as "already mounted, use this descriptor").  The loop ends when the filesystem
is unmounted (or its mount namespace dies), or on SIGTERM/SIGINT.

Caveats:
- pyfuse3 keeps one global session: one `serve()` per process.
- the main loop runs a single worker task: handlers never await, so more workers would only
  add trio scheduling per request.
- in ``fuse_fd`` mode the mount options were chosen by the mounter; ours only configure
  libfuse's session.
"""

from __future__ import annotations

import logging
import os
import signal

import pyfuse3
import trio

from cntr.fs.operations import Operations
from cntr.linux import syscalls as sc

log = logging.getLogger("cntr.fs")


def fuse_options() -> set[str]:
    """pyfuse3's defaults plus what a shared passthrough needs.

    ``default_permissions``: the kernel checks modes (serve-fs runs as root);
    ``allow_other``: the session's users are not the mounter.  libfuse's ``nosuid`` and
    ``nodev`` stay: with the uid translation a container root owns the host's root files in
    the kernel's eyes, and must not get the host's block devices or setuid programs with it.
    """
    opts = set(pyfuse3.default_options)
    opts |= {"allow_other", "default_permissions", "fsname=cntr", "subtype=cntr"}
    # ``debug`` is not libfuse's "debug" (a dump of every packet on stderr): Operations
    # logs each request itself.
    return opts


def mount_id_of(path: str) -> int:
    """The mount id of ``path``, without sending a request to a FUSE filesystem there."""
    st = sc.statx(sc.AT_FDCWD, os.fsencode(path), sc.AT_STATX_DONT_SYNC, sc.STATX_MNT_ID)
    return int(st.stx_mnt_id)


async def _main(ready_fd: int | None, stopped: list[int]) -> None:
    async with trio.open_nursery() as nursery:

        async def on_signals() -> None:
            with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
                async for signum in signals:
                    log.info("serve-fs: signal %d, stopping", signum)
                    stopped.append(signum)
                    pyfuse3.terminate()
                    return

        nursery.start_soon(on_signals)
        if ready_fd is not None:
            try:
                os.write(ready_fd, b"R")
            finally:
                os.close(ready_fd)
        await pyfuse3.main(min_tasks=1, max_tasks=1)
        nursery.cancel_scope.cancel()


def serve(ops: Operations, *, mountpoint: str | None = None, fuse_fd: int | None = None,
          ready_fd: int | None = None, debug: bool = False) -> int:
    """Serve ``ops`` until unmounted or signalled; 0 on a clean end."""
    if (mountpoint is None) == (fuse_fd is None):
        raise ValueError("serve(): give exactly one of mountpoint and fuse_fd")
    target = mountpoint if mountpoint is not None else f"/dev/fd/{fuse_fd}"
    pyfuse3.init(ops, target, fuse_options())
    try:
        if mountpoint is not None:
            # Serving "/" on a mountpoint under "/": lookups must not enter this mount.
            ops.self_mount_ids.add(mount_id_of(mountpoint))
        stopped: list[int] = []
        trio.run(_main, ready_fd, stopped)
    finally:
        pyfuse3.close(unmount=mountpoint is not None)
        ops.table.close()
    return 0


