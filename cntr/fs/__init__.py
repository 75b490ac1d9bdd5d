"""serve-fs: a pyfuse3 passthrough of a host directory tree (by default the host's ``/``).

A shell inside a container's namespaces sees the host's files through this mount.

- `cntr.fs.inodes`: the inode table (FUSE node ids <-> host files, by file handle; a
  bounded cache of O_PATH descriptors, never one descriptor per inode);
- `cntr.fs.operations`: the pyfuse3 ``Operations`` (every request answered with
  descriptor-relative syscalls);
- `cntr.fs.server`: mount or adopt a /dev/fuse descriptor, run the request loop, unmount.

Ownership: files created through the mount belong to the caller's host ids (FUSE requests
carry host ids), or to ``effective_user`` when given.  With the container's uid/gid maps,
host id 0 is reported as the container root's host id when 0 is not mapped into the
container, so the container's root sees the host's root-owned files as its own (identity
maps change nothing).

Isolation: with ``allowed_mnt_ns`` only processes of that mount namespace (the session's)
are served; see `cntr.fs.operations`.

Caveats are listed in each module; the main ones: serve-fs's own mount is hidden from
itself (ENOENT), descriptors cached by serve-fs keep host filesystems busy for a plain
``umount``, and statfs always describes the served root's filesystem.

Importing this package imports pyfuse3 *without trio* (see `_import_pyfuse3`) unless trio
is already imported or ``CNTR_SERVE_FS_TRIO=1`` asks for the trio loop.
"""

from __future__ import annotations

import os
import sys
import types
from typing import Any


class _Placeholder(types.ModuleType):
    """A module that stands in for one pyfuse3 imports but serve-fs never calls."""

    def __getattr__(self, name: str) -> Any:
        # AttributeError (not another type): the import system probes attributes such as
        # ``__path__`` with getattr(..., default).
        raise AttributeError(
            f"{self.__name__}.{name}: serve-fs imported pyfuse3 with a placeholder for "
            f"{self.__name__}; cntr.fs.server.serve() installs the real event loop hook")


class _PackageNotFoundError(ModuleNotFoundError):
    """importlib.metadata.PackageNotFoundError, for the placeholder below."""


def _version(name: str) -> str:
    """importlib.metadata.version() for a plain installed wheel: its dist-info's name."""
    prefix, suffix = name + "-", ".dist-info"
    for entry in sys.path:
        try:
            names = os.listdir(entry or ".")
        except OSError:
            continue
        for found in names:
            if found.startswith(prefix) and found.endswith(suffix):
                return found[len(prefix):-len(suffix)]
    raise _PackageNotFoundError(name)


def _import_pyfuse3() -> None:
    """Import pyfuse3 without importing trio (~140 ms) and importlib.metadata (~15 ms).

    Start-up of serve-fs is on the critical path of every attach: the session's first
    file access waits for it.  pyfuse3's extension module does ``import trio`` at module
    level, but reaches trio afterwards only through its module attribute ``pyfuse3.trio``
    (inside ``main()``, ``terminate()`` and the worker loop, never at import time);
    ``pyfuse3.asyncio.enable()`` swaps that attribute the same way.  serve-fs's default
    loop (`cntr.fs.server.DirectLoop`) replaces ``pyfuse3.trio`` before ``main()`` and
    never needs trio, so while pyfuse3 is imported ``sys.modules["trio"]`` is a placeholder
    whose every attribute raises AttributeError.  pyfuse3's pure-Python part only calls
    ``importlib.metadata.version("pyfuse3")`` for ``__version__``; it gets a placeholder
    module too, whose ``version()`` reads the version from the ``pyfuse3-X.dist-info``
    directory name on ``sys.path``.

    Both placeholders leave ``sys.modules`` right after the import: a later ``import
    trio`` anywhere in the process gets the real trio, and the trio mode
    (``serve(use_trio=True)``) sets ``pyfuse3.trio`` back to it.  Nothing is replaced
    when trio or pyfuse3 is already imported, or with ``CNTR_SERVE_FS_TRIO=1``.  (Another
    thread importing trio during those few milliseconds would get the placeholder: import
    cntr.fs before starting threads that use trio.)
    """
    if ("pyfuse3" in sys.modules or "trio" in sys.modules
            or os.environ.get("CNTR_SERVE_FS_TRIO") == "1"):
        return
    trio = _Placeholder("trio", "placeholder for trio while pyfuse3 is imported")
    metadata = _Placeholder("importlib.metadata", "placeholder while pyfuse3 is imported")
    metadata.PackageNotFoundError = _PackageNotFoundError  # type: ignore[attr-defined]  # module attribute
    metadata.version = _version  # type: ignore[attr-defined]  # module attribute
    placeholders = {"trio": trio}
    if "importlib.metadata" not in sys.modules:
        placeholders["importlib.metadata"] = metadata
    sys.modules.update(placeholders)
    try:
        import pyfuse3  # noqa: F401  # the import this function exists for
    finally:
        for name, module in placeholders.items():
            if sys.modules.get(name) is module:
                del sys.modules[name]


_import_pyfuse3()
