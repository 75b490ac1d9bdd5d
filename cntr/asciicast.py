"""``--record FILE``: the session's terminal output, with its timing, as an asciicast v2 file.

asciicast v2 (the format asciinema records and plays) is one JSON header line, ``{"version":
2, "width": W, "height": H, "timestamp": UNIX, "env": {"SHELL": ..., "TERM": ...},
"command": ...}``, then one JSON array per event: ``[seconds, "o", text]`` for output and
``[seconds, "r", "WxH"]`` for a window resize, seconds counted from the header.

Two ways to get the output, neither changing a byte of it:
- an interactive session (a pty): the pty relay (``cntr.linux.pty``) hands every chunk it
  wrote to the terminal to the writer, and every window size it copied;
- a piped session: stdout is replaced by a pipe for the session, and a forked copier writes
  what comes out of it to cntr's own stdout first, then to the recording.

Caveats:
- asciicast output events are text: bytes that are not UTF-8 are recorded as U+FFFD (a
  character split across two reads is kept whole); what the terminal or the pipe receives
  is the session's bytes, unchanged.
- in a piped session only stdout is recorded (stderr goes its own way), and the recording
  ends when the last process holding the session's stdout closes it, which cntr waits for
  (a background job started in the session that keeps stdout open delays its exit).
"""

from __future__ import annotations

import codecs
import contextlib
import json
import os
import signal
import sys
import time
from collections.abc import Iterator, Sequence

from cntr.errors import BadInput
from cntr.linux import pty

DEFAULT_SIZE = (80, 24)
"""Width and height recorded for a session without a terminal."""
_ENV = ("SHELL", "TERM")


class Writer:
    """An open asciicast v2 file: the header is written on creation."""

    def __init__(self, path: str, width: int, height: int, command: Sequence[str] = ()) -> None:
        try:
            self._file = open(path, "w", encoding="utf-8")  # noqa: SIM115 - closed by close()
        except OSError as exc:
            raise BadInput(f"cannot write the recording {path}: {exc.strerror}") from None
        header: dict[str, object] = {
            "version": 2, "width": width, "height": height, "timestamp": int(time.time()),
            "env": {k: os.environ[k] for k in _ENV if k in os.environ},
        }
        if command:
            header["command"] = " ".join(command)
        self._file.write(json.dumps(header) + "\n")
        self._file.flush()
        self._start = time.monotonic()
        self._decoder = codecs.getincrementaldecoder("utf-8")("replace")

    def _event(self, kind: str, data: str) -> None:
        t = round(time.monotonic() - self._start, 6)
        self._file.write(json.dumps([t, kind, data], ensure_ascii=False) + "\n")

    def output(self, data: bytes) -> None:
        """Record ``data`` as written to the terminal."""
        text = self._decoder.decode(data)
        if text:
            self._event("o", text)

    def resize(self, width: int, height: int) -> None:
        self._event("r", f"{width}x{height}")

    def fileno(self) -> int:
        return self._file.fileno()

    def close(self) -> None:
        rest = self._decoder.decode(b"", final=True)
        if rest:
            self._event("o", rest)
        self._file.close()

    def abandon(self) -> None:
        """Close this process's copy, writing nothing more (a forked copier records)."""
        self._file.close()  # the header is flushed: nothing is pending


def _copy(read_fd: int, writer: Writer, out_fd: int = 1) -> None:
    """The copier of a piped session: stdout first, the recording after. Never returns."""
    code = 0
    try:
        # Ctrl-C and cntr's stop signals are for the session, which ends and closes the
        # pipe: the copier finishes on that end-of-file.
        for sig in (signal.SIGINT, signal.SIGQUIT, signal.SIGTERM, signal.SIGHUP):
            signal.signal(sig, signal.SIG_IGN)
        keep = {read_fd, out_fd, writer.fileno()}
        for name in os.listdir("/proc/self/fd"):
            if int(name) not in keep and int(name) > 2:
                with contextlib.suppress(OSError):
                    os.close(int(name))
        while data := os.read(read_fd, 65536):
            view = memoryview(data)
            try:
                while view:
                    view = view[os.write(out_fd, view):]
            except OSError:
                # cntr's stdout was closed (`cntr attach ... | head -1`): stop reading, so
                # the session's next write fails as it would without the copier (SIGPIPE)
                writer.output(data[:len(data) - len(view)])
                break
            writer.output(data)
        writer.close()
    except BaseException:  # noqa: BLE001 - a forked child must never return to the caller
        code = 1
    os._exit(code)


@contextlib.contextmanager
def recording(path: str, interactive: bool, command: Sequence[str]) -> Iterator[None]:
    """Record the session run inside the block (``interactive``: the one with a pty)."""
    size = (pty.window_size(0) if interactive else None) or DEFAULT_SIZE
    writer = Writer(path, *size, command=command)
    if interactive:
        pty.recorder = writer
        try:
            yield
        finally:
            pty.recorder = None
            writer.close()
        return
    sys.stdout.flush()
    read_fd, write_fd = os.pipe()
    copier = os.fork()
    if copier == 0:
        os.close(write_fd)
        _copy(read_fd, writer)
    os.close(read_fd)
    writer.abandon()
    saved = os.dup(1)
    os.dup2(write_fd, 1)  # inheritable: the session's stdout
    os.close(write_fd)
    try:
        yield
    finally:
        sys.stdout.flush()
        os.dup2(saved, 1)
        os.close(saved)
        while True:
            try:
                os.waitpid(copier, 0)
                break
            except InterruptedError:
                continue
