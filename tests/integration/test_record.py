"""``--record FILE``: the asciicast a session leaves plays back (asciinema cat, from Debian)
as exactly the bytes the session printed, piped and on a terminal."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import struct
import subprocess
import termios
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import CNTR, REPO, Container, run_cntr

# UTF-8 text, a tab, carriage returns, a line without its newline, output in several
# chunks and ~200 KB in one go
SCRIPT = "echo hello; printf 'é ü €\\t1\\r\\n'; seq 1 40000; printf 'no newline'"


CTTY = ["setsid", "--wait", "--ctty"]
"""Run a command in a session of its own with the terminal on its stdin as controlling tty."""


def play(cast: Path) -> bytes:
    """``asciinema cat CAST``'s output; it wants a terminal of its own to open (/dev/tty)."""
    master, slave = os.openpty()
    try:
        out = subprocess.run(
            [*CTTY, "asciinema", "cat", str(cast)], stdin=slave, capture_output=True,
            timeout=60)
    finally:
        os.close(master)
        os.close(slave)
    assert out.returncode == 0, out.stderr
    return out.stdout


def events(cast: Path) -> tuple[dict[str, Any], list[list[Any]]]:
    header, *rest = cast.read_text().splitlines()
    return json.loads(header), [json.loads(line) for line in rest]


@pytest.mark.fuse
@pytest.mark.docker
def test_piped_session_recorded_byte_for_byte(docker_container: Container,
                                               tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    out = run_cntr("attach", docker_container.ident, "--record", str(cast), "--", "sh", "-c",
                   SCRIPT + "; exit 4")
    assert (out.returncode, out.stderr) == (4, b"")
    plain = run_cntr("attach", docker_container.ident, "--", "sh", "-c", SCRIPT)
    assert out.stdout == plain.stdout  # recording changes no byte
    assert play(cast) == out.stdout
    header, evs = events(cast)
    assert header["version"] == 2
    assert (header["width"], header["height"]) == (80, 24)
    assert header["command"] == f"sh -c {SCRIPT}; exit 4"
    assert isinstance(header["timestamp"], int)
    assert set(header["env"]) <= {"SHELL", "TERM"}
    times = [e[0] for e in evs]
    assert times == sorted(times) and all(e[1] == "o" for e in evs)


@pytest.mark.fuse
@pytest.mark.docker
def test_a_closed_pipe_still_stops_the_session(docker_container: Container,
                                                tmp_path: Path) -> None:
    cast = tmp_path / "s.cast"
    out = subprocess.run(
        f"{' '.join(CNTR)} attach {docker_container.ident} --record {cast} -- yes | head -2;"
        " echo ${PIPESTATUS[0]}", shell=True, executable="/bin/bash", capture_output=True,
        cwd=REPO, timeout=60)
    assert out.stdout == b"y\ny\n141\n"  # yes ended by SIGPIPE, as without --record
    assert play(cast).startswith(b"y\ny\n")


def read_until(master: int, marker: bytes, seen: bytearray) -> None:
    while marker not in seen:
        chunk = os.read(master, 65536)
        assert chunk, seen
        seen += chunk


def set_size(fd: int, cols: int, rows: int) -> None:
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))


@pytest.mark.fuse
@pytest.mark.docker
def test_interactive_session_recorded_with_its_resize(docker_container: Container,
                                                      tmp_path: Path) -> None:
    cast = tmp_path / "t.cast"
    master, slave = os.openpty()
    set_size(master, 100, 30)
    proc = subprocess.Popen(
        [*CTTY, *CNTR, "attach", docker_container.ident, "--record", str(cast), "--", "sh", "-c",
         "stty size; read x; stty size; printf 'é\\033[1mbold\\033[0m\\n'"],
        stdin=slave, stdout=slave, stderr=slave, cwd=REPO)
    os.close(slave)
    seen = bytearray()
    try:
        read_until(master, b"30 100\r\n", seen)
        set_size(master, 120, 40)  # cntr gets SIGWINCH before it reads the line below
        os.write(master, b"go\r")
        while True:
            try:
                chunk = os.read(master, 65536)
            except OSError as exc:
                assert exc.errno == errno.EIO  # every holder of the slave is gone
                break
            if not chunk:
                break
            seen += chunk
        assert proc.wait(timeout=60) == 0
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert bytes(seen) == b"30 100\r\ngo\r\n40 120\r\n\xc3\xa9\x1b[1mbold\x1b[0m\r\n"
    assert play(cast) == bytes(seen)
    header, evs = events(cast)
    assert (header["width"], header["height"]) == (100, 30)
    assert [e[2] for e in evs if e[1] == "r"] == ["120x40"]
