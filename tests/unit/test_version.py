"""``cntr --version``: every component named with the version found on this machine."""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from importlib import metadata

import cntr
from tests.conftest import CNTR, REPO


def test_version_names_every_component() -> None:
    out = subprocess.run([*CNTR, "--version"], capture_output=True, text=True, cwd=REPO,
                         timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""
    # the library's answer and the development package's (libfuse3-dev) agree
    libfuse = subprocess.run(["pkg-config", "--modversion", "fuse3"], capture_output=True,
                             text=True, check=True).stdout.strip()
    u = os.uname()
    assert out.stdout.splitlines() == [
        f"cntr {cntr.__version__}",
        f"Python {platform.python_version()} ({sys.executable})",
        f"pyfuse3 {metadata.version('pyfuse3')}",
        f"libfuse {libfuse}",
        f"kernel {u.sysname} {u.release} {u.machine}",
    ]
    assert metadata.version("cntr") == cntr.__version__  # pyproject takes it from cntr
