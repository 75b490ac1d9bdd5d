"""The version of the libfuse 3 that pyfuse3 runs on, asked of the library itself.

``fuse_pkgversion()`` (libfuse >= 3.0) names the full release ("3.14.0");
``fuse_version()`` gives major * 100 + minor (FUSE_MAKE_VERSION in fuse_common.h) where
the first is missing.  Loading the shared object costs ~1 ms and no process; only when
it cannot be loaded does ``pkg-config --modversion fuse3`` answer, which names the
development package's version (libfuse3-dev), usually the same release.
"""

from __future__ import annotations

import ctypes
import subprocess

SONAME = "libfuse3.so.3"
"""The soname pyfuse3 links against (libfuse3-3 in Debian)."""


def version() -> str | None:
    """libfuse's version ("3.14.0"), or None when neither the library nor pkg-config
    knows it."""
    try:
        lib = ctypes.CDLL(SONAME)
    except OSError:
        return _pkg_config()
    pkgversion = getattr(lib, "fuse_pkgversion", None)
    if pkgversion is not None:
        pkgversion.restype = ctypes.c_char_p
        pkgversion.argtypes = []
        text: bytes | None = pkgversion()
        if text:
            return text.decode(errors="replace")
    number = lib.fuse_version
    number.restype = ctypes.c_int
    number.argtypes = []
    n: int = number()
    return f"{n // 100}.{n % 100}"


def _pkg_config() -> str | None:
    try:
        out = subprocess.run(["pkg-config", "--modversion", "fuse3"], capture_output=True,
                             text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None
