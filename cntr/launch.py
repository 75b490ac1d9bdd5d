"""Starting serve-fs in a process of its own for a session.

serve-fs's start-up (a Python process and its imports) is the longest wait on the attach
path, so it is started first, before cntr has even parsed its arguments (``prestart``,
called by the console entry for ``cntr attach``), or else by ``enter``; it then waits on a
pipe for its parameters and serves the ``/dev/fuse`` descriptor opened here once the setup
child has mounted it.  Only the standard library is imported here.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from typing import Any

from cntr.errors import PermissionDenied, Unsupported, os_error

FUSE_DEVICE = "/dev/fuse"
DEFAULT_BASE_DIR = "/var/lib/cntr"

def check_host() -> None:
    """The one-line failures that need no container: not root, no /dev/fuse."""
    if os.geteuid() != 0:
        raise PermissionDenied(
            "cntr must run as root: it joins namespaces and mounts a FUSE filesystem")


def open_fuse() -> int:
    try:
        return os.open(FUSE_DEVICE, os.O_RDWR | os.O_CLOEXEC)
    except FileNotFoundError:
        raise Unsupported(
            f"{FUSE_DEVICE} is missing: load the fuse module (modprobe fuse) or, in a "
            "container, pass the device in") from None
    except OSError as exc:
        raise os_error(f"open({FUSE_DEVICE})", exc) from None


_SERVE_CODE = """\
import json, os, sys
start_fd, fuse_fd, ready_fd = int(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3])
from stages.serve_fs import serve_fs
with os.fdopen(start_fd, "rb") as start:
    line = start.readline()
if not line.startswith(b"G"):
    sys.exit(0)
sys.exit(serve_fs("/", fuse_fd=fuse_fd, ready_fd=ready_fd, **json.loads(line[1:])))
"""
SERVE_FS_ISOLATION = True
"""Pass the session's mount namespace to serve-fs, which then refuses other processes."""


class SessionServer:
    """serve-fs, started ahead of the session so its start-up overlaps resolve, capture and
    the namespace work; it waits on a pipe for its parameters (``start``) and serves the
    ``/dev/fuse`` descriptor this object opened.  ``close`` ends it if it never started.
    """

    def __init__(self, base_dir: str) -> None:
        self.base_dir = base_dir
        check_host()
        self.fuse_fd: int = open_fuse()
        try:
            # The mount point of the container's root must exist in the served tree.
            os.makedirs(base_dir, mode=0o755, exist_ok=True)
        except OSError as exc:
            os.close(self.fuse_fd)
            raise os_error(f"create {base_dir}", exc) from None
        start_r, self.start_w = os.pipe()
        self.ready_r, ready_w = os.pipe()
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        env = dict(os.environ)
        env["PYTHONPATH"] = root + (":" + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
        argv = [sys.executable, "-c", _SERVE_CODE, str(start_r), str(self.fuse_fd),
                str(ready_w)]
        # A session of its own: a Ctrl-C meant for the session's command must not stop it.
        # libfuse reports benign races at unmount on stderr ("fuse_reply_* failed"): the
        # session's terminal gets none of it; CNTR_SERVE_FS_LOG=FILE keeps it.
        log = os.environ.get("CNTR_SERVE_FS_LOG")
        err = open(log, "ab") if log else subprocess.DEVNULL  # noqa: SIM115 - closed below
        try:
            self.proc = subprocess.Popen(
                argv, pass_fds=(start_r, self.fuse_fd, ready_w), start_new_session=True,
                stdin=subprocess.DEVNULL, stdout=err, stderr=err, env=env, cwd="/",
            )
        finally:
            if log and not isinstance(err, int):
                err.close()
        os.close(start_r)
        os.close(ready_w)

    def start(self, params: dict[str, Any]) -> None:
        """Hand serve-fs its parameters: it starts reading the mounted descriptor."""
        os.write(self.start_w, b"G" + json.dumps(params).encode() + b"\n")
        os.close(self.start_w)
        self.start_w = -1

    def release_fuse_fd(self) -> None:
        """Close this process's copy once the setup child has it (forked)."""
        if self.fuse_fd >= 0:
            os.close(self.fuse_fd)
            self.fuse_fd = -1

    def close(self) -> None:
        """End serve-fs if it never started; else wait a little for it to exit (it does
        when the session's namespace is gone)."""
        if self.start_w >= 0:
            os.close(self.start_w)
            self.start_w = -1
        self.release_fuse_fd()
        if self.ready_r >= 0:
            os.close(self.ready_r)
            self.ready_r = -1
        try:
            self.proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            # Processes left running in the session keep the filesystem in use.
            print("cntr: serve-fs keeps serving processes still running in the session",
                  file=sys.stderr)



_prestarted: SessionServer | None = None


def prestart() -> None:
    """Start serve-fs for a coming ``attach``; any failure is left for ``enter`` to report
    with its own message (this only saves time)."""
    global _prestarted
    if os.geteuid() != 0 or _prestarted is not None:
        return
    try:
        _prestarted = SessionServer(os.environ.get("CNTR_BASE_DIR") or DEFAULT_BASE_DIR)
    except Exception:  # noqa: BLE001 - enter reports it properly
        _prestarted = None


def take_prestarted() -> SessionServer | None:
    """The server ``prestart`` started, handed over once."""
    global _prestarted
    server, _prestarted = _prestarted, None
    return server
