"""serve-fs start-up: the default session never imports pyfuse3 or trio; every session
serves.

The wire session (the default) and the io_uring one are serve-fs's own; pyfuse3 and trio
(about 150 ms of imports on the attach path) are imported only by the libfuse session
(``CNTR_SERVE_FS_LOOP=libfuse``, `cntr.fs.libfuse`).  These tests pin that down and check
that every session serves.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import CNTR, require
from tests.integration.fsutil import PYTHON, REPO, serve_fs_mount

_PROBE = r'''
import json, sys
import cntr.stages.serve_fs, cntr.fs.server, cntr.fs.tree
print(json.dumps(sorted(m for m in ("pyfuse3", "trio", "importlib.metadata")
                        if m in sys.modules)))
'''


def test_default_import_skips_pyfuse3_and_trio() -> None:
    res = subprocess.run([PYTHON, "-c", _PROBE], cwd=REPO, capture_output=True, check=True,
                         timeout=60)
    assert json.loads(res.stdout) == []


def _serve_and_read(tmp_path: Path, env: dict[str, str],
                    launcher: Sequence[str] = ("-m", "cntr.stages.serve_fs")) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("through the loop\n")
    with serve_fs_mount(tmp_path / "src", env=env, launcher=launcher) as served:
        assert (served.mountpoint / "f").read_text() == "through the loop\n"
        assert sorted(p.name for p in served.mountpoint.iterdir()) == ["f"]
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=20) == 0, served.log_text()


@pytest.mark.fuse
def test_wire_session_serves(tmp_path: Path) -> None:
    _serve_and_read(tmp_path, env={"CNTR_SERVE_FS_LOOP": ""})


@pytest.mark.fuse
def test_libfuse_session_serves(tmp_path: Path) -> None:
    _serve_and_read(tmp_path, env={"CNTR_SERVE_FS_LOOP": "libfuse"})


def test_unknown_loop_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    res = subprocess.run([PYTHON, "-m", "cntr.stages.serve_fs", str(tmp_path),
                          str(tmp_path / "mnt")],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "CNTR_SERVE_FS_LOOP": "bogus"})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "cntr: serve-fs: CNTR_SERVE_FS_LOOP must be one of wire, uring, libfuse, not 'bogus'"]
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.parametrize("loop", ["trio", "bogus"])
def test_cntr_serve_fs_refuses_an_unknown_loop(tmp_path: Path, loop: str) -> None:
    """``cntr serve-fs`` (and a session) refuse a loop that is not one of the three with
    one line, nothing mounted (``trio`` was a separate loop name once)."""
    (tmp_path / "mnt").mkdir()
    res = subprocess.run([*CNTR, "serve-fs", str(tmp_path), "--mountpoint",
                          str(tmp_path / "mnt")], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False,
                         env={**os.environ, "CNTR_SERVE_FS_LOOP": loop})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"cntr: serve-fs: CNTR_SERVE_FS_LOOP must be one of wire, uring, libfuse, not {loop!r}"]
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.fuse
def test_cntr_serve_fs_serves_on_libfuse(tmp_path: Path) -> None:
    """``cntr serve-fs`` runs pyfuse3's session as it runs the others."""
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("libfuse\n")
    (tmp_path / "mnt").mkdir()
    proc = subprocess.Popen([*CNTR, "serve-fs", str(tmp_path / "src"), "--mountpoint",
                             str(tmp_path / "mnt")], cwd=REPO, stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            env={**os.environ, "CNTR_SERVE_FS_LOOP": "libfuse"})
    try:
        deadline = time.monotonic() + 30
        while not os.path.ismount(tmp_path / "mnt"):
            assert proc.poll() is None and time.monotonic() < deadline, "not mounted"
            time.sleep(0.05)
        assert (tmp_path / "mnt" / "f").read_text() == "libfuse\n"
    finally:
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=30)
    assert (proc.returncode, err) == (0, b"")
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.fuse
def test_uring_session_without_the_kernels_consent_serves_over_dev_fuse(
        tmp_path: Path) -> None:
    """fuse.enable_uring=N (the default): the io_uring session is not offered and serve-fs
    serves through /dev/fuse; serve-fs never changes the module parameter."""
    param = Path("/sys/module/fuse/parameters/enable_uring")
    require(None if param.exists() else "this kernel has no FUSE over io_uring")
    old = param.read_text().strip()
    param.write_text("N")
    try:
        _serve_and_read(tmp_path, env={"CNTR_SERVE_FS_LOOP": "uring"})
        assert param.read_text().strip() == "N"
    finally:
        param.write_text(old)
