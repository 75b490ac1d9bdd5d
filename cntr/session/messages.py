"""The message pipe from a session's processes to the supervisor: one line each, a tag
byte and a text.

- ``P<pid>``: the reaper's host pid (setup child);
- ``W<text>``: a warning, printed as ``cntr: warning: TEXT``;
- ``E<text>``: something failed: set-up (the sender exits 125) or the command's execve
  (126 or 127);
- ``R``: the command was executed, or failed to be: set-up is over (reaper);
- ``X<status>``: the command ended: its exit status, 128+N for signal N (reaper);
- ``L``: processes it left are still running (reaper).

End-of-file means the reaper is gone (or set-up failed before it).  A newline in a text is
sent as a space; a write to a supervisor that is gone is dropped.
"""

from __future__ import annotations

import os
import select
import time

from cntr.errors import os_error, suppress

REAPER = b"P"
WARNING = b"W"
ERROR = b"E"
READY = b"R"
EXITED = b"X"
LEFT = b"L"


class SetupTimeout(Exception):
    """The set-up did not finish before the deadline given to ``Messages.next``."""


def send(fd: int, tag: bytes, text: str = "") -> None:
    """Write one message (a process of the session; never raises)."""
    with suppress(OSError):
        os.write(fd, tag + text.encode(errors="replace").replace(b"\n", b" ") + b"\n")


def fail(fd: int, what: str, exc: BaseException) -> None:
    """``E``: ``what`` failed with ``exc``, as the one line the user gets
    (``cntr.errors.os_error`` for an OSError, with the file it names)."""
    if isinstance(exc, OSError):
        msg = str(os_error(what, exc))
        if exc.filename and str(exc.filename) not in msg:
            msg = f"{what}({exc.filename}): {msg.split(': ', 1)[1]}"
    else:
        msg = f"{what}: {exc}"
    send(fd, ERROR, msg)


class Messages:
    """The supervisor's end of the pipe, read a message at a time."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.buf = b""
        self.eof = False

    def next(self, deadline: float | None = None) -> tuple[bytes, str] | None:
        """The next (tag, text), or None at end-of-file; SetupTimeout past ``deadline``
        (``time.monotonic``)."""
        while b"\n" not in self.buf:
            if self.eof:
                return None
            if deadline is not None:
                left = deadline - time.monotonic()
                if left <= 0 or not select.select([self.fd], [], [], left)[0]:
                    raise SetupTimeout
            # A byte at a time: what follows a line stays in the pipe, where the pty relay
            # (which waits for the pipe to become readable) sees it.
            chunk = os.read(self.fd, 1)
            self.eof = not chunk
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return line[:1], line[1:].decode(errors="replace")
