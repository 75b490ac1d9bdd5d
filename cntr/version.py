"""What ``cntr --version`` prints: cntr's version and those of what it runs on.

pyfuse3's version comes from its package metadata (no import: pyfuse3 pulls in trio,
~200 ms), libfuse's from the library (``cntr.linux.libfuse``), the kernel's from uname.
"""

from __future__ import annotations

import os
import platform
import sys

import cntr


def _pyfuse3() -> str | None:
    from importlib import metadata

    try:
        return metadata.version("pyfuse3")
    except metadata.PackageNotFoundError:
        pass
    try:
        import pyfuse3
    except ImportError:
        return None
    found: str | None = getattr(pyfuse3, "__version__", None)
    return found


def versions() -> dict[str, str | None]:
    """Component -> version (None: not found), in the order --version prints them."""
    from cntr.linux import libfuse

    uname = os.uname()
    return {
        "cntr": cntr.__version__,
        "Python": f"{platform.python_version()} ({sys.executable})",
        "pyfuse3": _pyfuse3(),
        "libfuse": libfuse.version(),
        "kernel": f"{uname.sysname} {uname.release} {uname.machine}",
    }


def text() -> str:
    """One line per component, "name version", "not found" for what is missing."""
    return "".join(f"{name} {value or 'not found'}\n" for name, value in versions().items())
