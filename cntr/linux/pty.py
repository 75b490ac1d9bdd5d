"""A pseudo-terminal for interactive sessions, and the loop that relays it.

The pty is allocated on the host; its slave becomes the session's controlling terminal
(inside the container's namespaces an inherited descriptor works like any other), and
the host terminal is put in raw mode while bytes are relayed both ways.  Window size
changes (SIGWINCH) are copied to the pty.

Caveats:
- ``recorder`` (``cntr.asciicast``, for ``--record``), when set, gets every chunk after it
  was written to the terminal, and every window size copied; it never changes the bytes.
- the relay ends when the session's process exits and its output is drained; a
  background job still holding the slave keeps its output, which is not relayed after.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import select
import struct
import termios
import tty
from collections.abc import Iterator

TYPE_CHECKING = False
if TYPE_CHECKING:
    import signal
    from typing import Protocol

    class Recorder(Protocol):
        def output(self, data: bytes) -> None: ...
        def resize(self, width: int, height: int) -> None: ...
else:  # the C module under signal, without its enums (~1.5 ms of enum at every start)
    import _signal as signal

_BUF = 65536
recorder: Recorder | None = None
"""Where relay also sends the session's output and window sizes (``--record``)."""


def open_pty(stdin_fd: int = 0) -> tuple[int, int]:
    """A (master, slave) pair sized like the terminal on ``stdin_fd``."""
    master, slave = os.openpty()
    os.set_inheritable(master, False)
    copy_winsize(stdin_fd, master)
    return master, slave


def copy_winsize(src: int, dst: int) -> None:
    with contextlib.suppress(OSError):
        size = fcntl.ioctl(src, termios.TIOCGWINSZ, b"\0" * 8)
        fcntl.ioctl(dst, termios.TIOCSWINSZ, size)


def window_size(fd: int) -> tuple[int, int] | None:
    """(columns, rows) of the terminal on ``fd``; None when it is not one."""
    try:
        rows, cols, _, _ = struct.unpack("HHHH", fcntl.ioctl(fd, termios.TIOCGWINSZ, b"\0" * 8))
    except OSError:
        return None
    return cols, rows


def make_controlling(slave: int) -> None:
    """In the session's process: new session, ``slave`` as controlling tty and stdio."""
    os.setsid()
    fcntl.ioctl(slave, termios.TIOCSCTTY, 0)
    for fd in (0, 1, 2):
        os.dup2(slave, fd)
    if slave > 2:
        os.close(slave)


def give_up(tty_fd: int) -> None:
    """What the kernel does when a session leader exits, for ``tty_fd``'s session: SIGHUP
    to the foreground process group, and the terminal no longer controls the session."""
    with contextlib.suppress(OSError):
        fcntl.ioctl(tty_fd, termios.TIOCNOTTY)


@contextlib.contextmanager
def raw_terminal(fd: int) -> Iterator[None]:
    """Raw mode on the terminal ``fd`` for the duration, restored afterwards."""
    try:
        saved = termios.tcgetattr(fd)
    except termios.error:
        yield
        return
    tty.setraw(fd, termios.TCSANOW)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        try:
            n = os.write(fd, view)
        except InterruptedError:
            continue
        view = view[n:]


def relay(master: int, pidfd: int, stdin_fd: int = 0, stdout_fd: int = 1) -> None:
    """Copy stdin -> master and master -> stdout until the process behind ``pidfd`` ends."""
    rec = recorder

    def winch(*_: object) -> None:
        copy_winsize(stdin_fd, master)
        if rec is not None and (size := window_size(stdin_fd)) is not None:
            rec.resize(*size)

    old_winch = signal.signal(signal.SIGWINCH, winch)
    stdin_open = True
    try:
        with raw_terminal(stdin_fd):
            while True:
                watch = [master, pidfd] + ([stdin_fd] if stdin_open else [])
                try:
                    ready, _, _ = select.select(watch, [], [])
                except InterruptedError:
                    continue
                if master in ready:
                    try:
                        data = os.read(master, _BUF)
                    except OSError as exc:
                        if exc.errno != errno.EIO:
                            raise
                        data = b""
                    if not data:
                        break
                    _write_all(stdout_fd, data)
                    if rec is not None:
                        rec.output(data)
                if stdin_open and stdin_fd in ready:
                    data = os.read(stdin_fd, _BUF)
                    if data:
                        _write_all(master, data)
                    else:
                        stdin_open = False
                if pidfd in ready and master not in ready:
                    _drain(master, stdout_fd, rec)
                    break
    finally:
        signal.signal(signal.SIGWINCH, old_winch)


def _drain(master: int, stdout_fd: int, rec: Recorder | None) -> None:
    os.set_blocking(master, False)
    while True:
        try:
            data = os.read(master, _BUF)
        except OSError:
            return
        if not data:
            return
        _write_all(stdout_fd, data)
        if rec is not None:
            rec.output(data)
