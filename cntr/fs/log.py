"""serve-fs's logger, ``cntr.fs``, without importing logging before a message can show.

logging costs ~16 ms to import (re, enum, traceback, string, weakref, ...), and serve-fs's
imports are on the attach path: the session's first exec goes through its mount.  ``log``
stands in for ``logging.getLogger("cntr.fs")`` and behaves as it would:

- while logging is not imported, nothing has configured it: the root logger's level is
  WARNING, so debug and info are dropped without importing it (a forked serve-fs);
- warning and error import logging at their first call and go through the real logger:
  unconfigured, logging's last resort prints them to stderr (a forked serve-fs's is the
  ``CNTR_SERVE_FS_LOG`` file or /dev/null);
- once logging is imported (the ``cntr serve-fs`` stage configures it before it serves,
  at DEBUG with --debug), every call goes through the real logger.
"""

from __future__ import annotations

import sys

TYPE_CHECKING = False
if TYPE_CHECKING:
    import logging


class LazyLogger:
    """The calls of :class:`logging.Logger` that serve-fs makes, logging imported at the
    first that can show (module docstring)."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def _get(self) -> logging.Logger:
        if self._logger is None:
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger

    # stacklevel=2: the record names the caller, not this module.
    def debug(self, msg: str, *args: object, exc_info: bool = False) -> None:
        if "logging" in sys.modules:
            self._get().debug(msg, *args, exc_info=exc_info, stacklevel=2)

    def info(self, msg: str, *args: object, exc_info: bool = False) -> None:
        if "logging" in sys.modules:
            self._get().info(msg, *args, exc_info=exc_info, stacklevel=2)

    def warning(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._get().warning(msg, *args, exc_info=exc_info, stacklevel=2)

    def error(self, msg: str, *args: object, exc_info: bool = False) -> None:
        self._get().error(msg, *args, exc_info=exc_info, stacklevel=2)


log = LazyLogger("cntr.fs")
"""What ``logging.getLogger("cntr.fs")`` was in serve-fs's modules."""
