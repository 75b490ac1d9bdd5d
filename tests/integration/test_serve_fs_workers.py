"""Where serve-fs answers fsync: through its io_uring (the kernel's io-wq threads run the
fsyncs, no thread of serve-fs's own), and, when the kernel refuses serve-fs a ring (a
seccomp filter here, as under a container runtime's default profile), through its worker
threads as before.  Either way 4 writers that fsync every write get their data on the
host, every FSYNC is counted (``CNTR_SERVE_FS_COUNTS``), and no descriptor outlives its
file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.integration.fsutil import Served, serve_fs_mount
from tests.integration.test_serve_fs_concurrency import (
    FSYNC_WRITER,
    STUCK_S,
    regular_fds_below,
    settled,
)

pytestmark = [pytest.mark.root, pytest.mark.fuse]

WRITERS = 4
FSYNCS = 50  # per writer (FSYNC_WRITER)

#: serve-fs with io_uring_setup(2) refused (EPERM) by a seccomp filter
_REFUSED = (
    "import struct, sys, cntr.stages.serve_fs as s\n"
    "from cntr.linux import syscalls\n"
    "syscalls.seccomp_set_filter(\n"
    "    struct.pack('=HBBI', 0x20, 0, 0, 0)\n"  # the syscall's number
    "    + struct.pack('=HBBI', 0x15, 0, 1, 425)\n"  # io_uring_setup?
    "    + struct.pack('=HBBI', 0x06, 0, 0, 0x00050000 | 1)\n"  # EPERM
    "    + struct.pack('=HBBI', 0x06, 0, 0, 0x7FFF0000))\n"  # anything else: allowed
    "sys.exit(s._main(sys.argv[1:]))\n"
)


def threads(served: Served) -> list[str]:
    """The names of the server's threads but its main one (io-wq's: ``iou-wrk-PID``)."""
    pid = served.pid
    return sorted(Path(f"/proc/{pid}/task/{tid}/comm").read_text().strip()
                  for tid in os.listdir(f"/proc/{pid}/task") if tid != str(pid))


def fsync_writers(served: Served, root: Path) -> list[str]:
    """Run the writers to the end, check their files on the host; the server's threads
    then (before its descriptors settle: workers end only with the session)."""
    os.stat(served.mountpoint / "seen")  # the inode table's descriptor: counted before
    before = regular_fds_below(served.pid, root)
    writers = [subprocess.Popen([sys.executable, "-c", FSYNC_WRITER,
                                 str(served.mountpoint / f"log{i}"), str(i)],
                                stderr=subprocess.PIPE) for i in range(WRITERS)]
    for w in writers:
        _out, err = w.communicate(timeout=STUCK_S * 5)
        assert (w.returncode, err) == (0, b"")
    for i in range(WRITERS):
        assert (root / f"log{i}").read_bytes() == bytes([65 + i]) * 4096 * FSYNCS
    seen = threads(served)
    assert settled(want=before, pid=served.pid, root=root) == before
    return seen


def counted_fsyncs(path: Path) -> int:
    return int(json.loads(path.read_text())["counts"].get("FSYNC", 0))


def test_fsyncs_go_through_the_ring(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "seen").mkdir(parents=True)
    counts = tmp_path / "counts.json"
    with serve_fs_mount(root, env={"CNTR_SERVE_FS_COUNTS": str(counts)}) as served:
        seen = fsync_writers(served, root)
    assert seen, "no io-wq thread ran an fsync"
    assert all(name.startswith("iou-wrk-") for name in seen), seen
    assert counted_fsyncs(counts) == WRITERS * FSYNCS


def test_without_a_ring_the_workers_answer(tmp_path: Path) -> None:
    root = tmp_path / "root"
    (root / "seen").mkdir(parents=True)
    counts = tmp_path / "counts.json"
    with serve_fs_mount(root, env={"CNTR_SERVE_FS_COUNTS": str(counts)},
                        launcher=("-c", _REFUSED), debug=True) as served:
        seen = fsync_writers(served, root)
        log = served.log_text()
    assert seen, "no worker thread answered an fsync"
    assert not any(name.startswith("iou-wrk-") for name in seen), seen
    assert ("serve-fs: no io_uring for fsync (Operation not permitted): worker threads "
            "answer it") in log
    assert counted_fsyncs(counts) == WRITERS * FSYNCS
