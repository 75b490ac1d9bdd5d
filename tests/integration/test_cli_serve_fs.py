"""``cntr serve-fs`` as a user runs it: on a mount point, until SIGTERM."""

from __future__ import annotations

import signal
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import CNTR, REPO, run_cntr

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def test_serve_fs_on_a_mountpoint_until_sigterm(tmp_path: Path) -> None:
    src, mnt = tmp_path / "src", tmp_path / "mnt"
    src.mkdir()
    mnt.mkdir()
    (src / "f").write_text("hello\n")
    with subprocess.Popen([*CNTR, "serve-fs", str(src), "--mountpoint", str(mnt)],
                          cwd=REPO, stderr=subprocess.PIPE) as proc:
        deadline = time.monotonic() + 20
        while not (mnt / "f").exists():
            assert time.monotonic() < deadline, "serve-fs did not mount"
            time.sleep(0.05)
        assert (mnt / "f").read_text() == "hello\n"
        (mnt / "g").write_text("written\n")
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=20) == 0
    assert (src / "g").read_text() == "written\n"
    assert str(mnt) not in Path("/proc/self/mountinfo").read_text()


def test_serve_fs_needs_exactly_one_target(tmp_path: Path) -> None:
    out = run_cntr("serve-fs", str(tmp_path))
    assert out.returncode == 2
    assert out.stderr.decode().splitlines() == [
        "Usage: python -m cntr serve-fs [OPTIONS] [ROOT]",
        "Try 'python -m cntr serve-fs --help' for help.", "",
        "Error: give exactly one of --mountpoint and --fuse-fd"]
