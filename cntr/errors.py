"""The errors cntr reports, each carrying a message a user can act on and an exit code.

Exit codes (documented in README.md):
  1  generic failure (CntrError)
  2  usage error: bad arguments (click's own)
  3  bad input: a record on stdin or in a file that does not decode or validate
  4  not found: no container or process matches
  5  stale: the context no longer describes the running container
  6  permission: cntr needs root (or a capability it does not have)
  7  unsupported: the kernel or machine lacks something cntr needs (/dev/fuse, a syscall)
  8  ambiguous: a name matches containers in more than one engine
  9  an offline session was ended: its container was started or removed meanwhile
  125 the session could not be built: nothing ran
  126 the command was found but could not be executed (as sh reports it)
  127 the command was not found (as sh reports it)
  128+N the command was killed by signal N; any other code is the command's own
"""

from __future__ import annotations

import os
import sys

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import NoReturn

class CntrError(Exception):
    """A failure with a one-line message for the user."""

    exit_code = 1

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class BadInput(CntrError):
    """A record did not decode or did not match its schema."""

    exit_code = 3


class NotFound(CntrError):
    """No container or process matched."""

    exit_code = 4


class StaleContext(CntrError):
    """The context describes a process that is gone or was replaced."""

    exit_code = 5


class PermissionDenied(CntrError):
    """cntr lacks the privileges it needs."""

    exit_code = 6


class Unsupported(CntrError):
    """The kernel or the machine lacks a feature cntr needs."""

    exit_code = 7


class Ambiguous(CntrError):
    """A name matched containers of more than one engine."""

    exit_code = 8


class SessionSetupError(CntrError):
    """The nested container could not be built; nothing ran."""

    exit_code = 125


def os_error(what: str, exc: OSError, hint: str | None = None) -> CntrError:
    """Wrap an OSError once, naming the operation, e.g. 'setns(/proc/42/ns/mnt): ...'."""
    reason = exc.strerror or str(exc)
    # ctypes wrappers already prefix the call name: do not repeat it.
    if ": " in reason:
        reason = reason.split(": ", 1)[1]
    msg = f"{what}: {reason}"
    if hint:
        msg += f" ({hint})"
    if exc.errno in (1, 13):  # EPERM, EACCES
        return PermissionDenied(msg)
    if exc.errno == 38:  # ENOSYS
        return Unsupported(msg)
    return CntrError(msg)


def count_from_env(name: str, default: int) -> int:
    """The environment variable ``name`` as a number >= 0, ``default`` when it is unset
    or empty; anything else is one clear line (CntrError)."""
    raw = os.environ.get(name, "")
    if not raw:
        return default
    try:
        count = int(raw)
    except ValueError:
        count = -1
    if count < 0:
        raise CntrError(f"{name} must be a number >= 0, not {raw!r}")
    return count

class CommandNotRun(CntrError):
    """The session was built but its command could not be executed (126/127, as sh)."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def run_stage(stage: str, fn: Callable[[], int | None], *, debug: bool = False,
              fast_exit: bool = True) -> NoReturn:
    """Run one command's ``fn`` and exit with its code; a failure becomes the one line
    ``cntr: STAGE: message`` on stderr and its exit code (``debug`` re-raises instead).

    ``fast_exit`` leaves with os._exit once stdout and stderr are flushed: every resource
    is closed by then, and interpreter teardown would add ~20 ms to every attach (tests
    that run the CLI in-process turn it off).
    """
    try:
        code = fn()
    except CntrError as exc:
        if debug:
            raise
        _fail(stage, exc.message, exc.exit_code, fast_exit)
    except KeyboardInterrupt:
        _fail(stage, "interrupted", 130, fast_exit)
    except BrokenPipeError:
        _exit(141, fast_exit)
    except OSError as exc:
        if debug:
            raise
        _fail(stage, f"{exc.strerror or exc}" + (f": {exc.filename}" if exc.filename else ""),
              1, fast_exit)
    _exit(code or 0, fast_exit)


def _fail(stage: str, message: str, code: int, fast_exit: bool) -> NoReturn:
    sys.stderr.write(f"cntr: {stage}: {message}\n")
    _exit(code, fast_exit)


def _exit(code: int, fast_exit: bool) -> NoReturn:
    if not fast_exit:
        sys.exit(code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except BrokenPipeError:
        code = code or 141
    os._exit(code)


class suppress:
    """``with suppress(E1, E2): ...``: contextlib.suppress without contextlib, which imports
    collections and functools (with threading, which imports them too, ~6 ms of CPU in a
    fresh interpreter here) for the one context manager the attach path uses everywhere."""

    __slots__ = ("kinds",)

    def __init__(self, *kinds: type[BaseException]) -> None:
        self.kinds = kinds

    def __enter__(self) -> None:
        return None

    def __exit__(self, kind: type[BaseException] | None, _exc: BaseException | None,
                 _tb: object) -> bool:
        return kind is not None and issubclass(kind, self.kinds)
