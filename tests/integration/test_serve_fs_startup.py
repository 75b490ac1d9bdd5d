"""serve-fs start-up: the default session never imports trio; the other loops still work.

``cntr.fs`` imports pyfuse3 with placeholders for ``trio`` and ``importlib.metadata``
(about 150 ms of imports on the attach path); these tests pin that down and check that
every request loop serves: serve-fs's own wire session (the default), pyfuse3's libfuse
session without trio (``CNTR_SERVE_FS_LOOP=libfuse``) and with trio, including the trio
loop chosen after pyfuse3 was imported.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

import pytest

from tests.conftest import CNTR, require
from tests.integration.fsutil import PYTHON, REPO, serve_fs_mount

_PROBE = r'''
import json, sys
import stages.serve_fs, pyfuse3
out = {"trio": "trio" in sys.modules, "metadata": "importlib.metadata" in sys.modules,
       "version": pyfuse3.__version__}
import importlib.metadata, trio
out["real_version"] = importlib.metadata.version("pyfuse3")
out["real_trio"] = hasattr(trio, "run") and hasattr(trio.lowlevel, "current_trio_token")
print(json.dumps(out))
'''


def _probe(env: dict[str, str]) -> dict[str, object]:
    res = subprocess.run([PYTHON, "-c", _PROBE], cwd=REPO, capture_output=True, check=True,
                         timeout=60, env={**os.environ, **env})
    data: dict[str, object] = json.loads(res.stdout)
    return data


def test_default_import_skips_trio_and_metadata() -> None:
    got = _probe({"CNTR_SERVE_FS_TRIO": ""})
    assert got["trio"] is False
    assert got["metadata"] is False
    assert got["version"] == got["real_version"]
    assert got["real_trio"] is True  # a later `import trio` gets the real module


def test_trio_mode_imports_trio() -> None:
    got = _probe({"CNTR_SERVE_FS_TRIO": "1"})
    assert got["trio"] is True


def _serve_and_read(tmp_path: Path, env: dict[str, str],
                    launcher: Sequence[str] = ("-m", "stages.serve_fs")) -> None:
    (tmp_path / "src").mkdir()
    (tmp_path / "src" / "f").write_text("through the loop\n")
    with serve_fs_mount(tmp_path / "src", env=env, launcher=launcher) as served:
        assert (served.mountpoint / "f").read_text() == "through the loop\n"
        assert sorted(p.name for p in served.mountpoint.iterdir()) == ["f"]
        served.proc.send_signal(signal.SIGTERM)
        assert served.proc.wait(timeout=20) == 0, served.log_text()


@pytest.mark.fuse
def test_wire_session_serves(tmp_path: Path) -> None:
    _serve_and_read(tmp_path, env={"CNTR_SERVE_FS_TRIO": "", "CNTR_SERVE_FS_LOOP": ""})


@pytest.mark.fuse
def test_libfuse_direct_loop_serves(tmp_path: Path) -> None:
    _serve_and_read(tmp_path, env={"CNTR_SERVE_FS_TRIO": "", "CNTR_SERVE_FS_LOOP": "libfuse"})


def test_unknown_loop_is_one_clear_error(tmp_path: Path) -> None:
    (tmp_path / "mnt").mkdir()
    res = subprocess.run([PYTHON, "-m", "stages.serve_fs", str(tmp_path), str(tmp_path / "mnt")],
                         cwd=REPO, capture_output=True, text=True, timeout=60, check=False,
                         env={**os.environ, "CNTR_SERVE_FS_LOOP": "bogus"})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        "cntr: serve-fs: CNTR_SERVE_FS_LOOP must be one of wire, uring, libfuse, trio, not 'bogus'"]
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.parametrize("loop", ["libfuse", "trio"])
def test_reference_loops_are_refused_outside_the_benchmark(tmp_path: Path, loop: str) -> None:
    """pyfuse3's libfuse session is not as correct as the wire session (no
    KILLPRIV_V2, DONT_MASK, ...): only ``python -m stages.serve_fs`` (the benchmark's way)
    runs it; ``cntr serve-fs`` and sessions refuse it with one line, nothing mounted."""
    (tmp_path / "mnt").mkdir()
    res = subprocess.run([*CNTR, "serve-fs", str(tmp_path), "--mountpoint",
                          str(tmp_path / "mnt")], cwd=REPO, capture_output=True, text=True,
                         timeout=60, check=False,
                         env={**os.environ, "CNTR_SERVE_FS_LOOP": loop})
    assert res.returncode == 1
    assert res.stderr.strip().splitlines() == [
        f"cntr: serve-fs: CNTR_SERVE_FS_LOOP={loop} is only a benchmark reference "
        "(python -m stages.serve_fs), not as correct as a session must be: use wire or uring"]
    assert not os.path.ismount(tmp_path / "mnt")


@pytest.mark.fuse
def test_trio_loop_serves(tmp_path: Path) -> None:
    _serve_and_read(tmp_path, env={"CNTR_SERVE_FS_TRIO": "1"})


@pytest.mark.fuse
def test_trio_loop_chosen_after_pyfuse3_was_imported_without_trio(tmp_path: Path) -> None:
    code = ("import os, sys, stages.serve_fs as s; assert 'trio' not in sys.modules; "
            "os.environ['CNTR_SERVE_FS_TRIO'] = '1'; sys.exit(s._main(sys.argv[1:]))")
    _serve_and_read(tmp_path, env={"CNTR_SERVE_FS_TRIO": ""}, launcher=("-c", code))


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
        _serve_and_read(tmp_path, env={"CNTR_SERVE_FS_TRIO": "", "CNTR_SERVE_FS_LOOP": "uring"})
        assert param.read_text().strip() == "N"
    finally:
        param.write_text(old)
