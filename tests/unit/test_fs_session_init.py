"""serve-fs's answer to the kernel's FUSE_INIT: what it asks for, and the one warning line
when the kernel does not offer passthrough (every read would then reach serve-fs)."""

from __future__ import annotations

import logging
import os
import struct
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.fs import protocol
from cntr.fs.passthrough import Passthrough
from cntr.fs.session import Session


@pytest.fixture
def session(tmp_path: Path) -> Iterator[Session]:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    fs = Passthrough(fd)
    yield Session(fs, -1)
    fs.close()


def init(session: Session, offered: int) -> int:
    """Send INIT offering ``offered`` (64 bits); the flags serve-fs's reply accepts."""
    flags = offered | protocol.INIT_EXT
    body = struct.pack("=IIII", 7, 45, 1 << 17, flags & 0xFFFFFFFF) + struct.pack(
        "=I", flags >> 32) + bytes(44)
    header = struct.pack("=IIQQIIIHH", 40 + len(body), protocol.INIT, 1, 0, 0, 0, 0, 0, 0)
    result = session.answer(header, memoryview(body), protocol.Request())
    assert result is not None
    err, reply = result
    assert err == 0 and reply is not None
    fields: tuple[int, ...] = struct.unpack_from("=IIIIHHIIHHII", reply)
    return fields[3] | fields[10] << 32  # flags, flags2


def test_passthrough_offered_is_taken_silently(session: Session,
                                               caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "cntr.fs"):
        got = init(session, protocol.PASSTHROUGH | protocol.POSIX_ACL)
    assert got & protocol.PASSTHROUGH
    assert session.passthrough is True
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []


def test_passthrough_refused_is_one_warning(session: Session,
                                            caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.DEBUG, "cntr.fs"):
        got = init(session, protocol.POSIX_ACL)
    assert not got & protocol.PASSTHROUGH
    assert session.passthrough is False
    assert [(r.levelname, r.getMessage()) for r in caplog.records
            if r.levelno >= logging.WARNING] == [
        ("WARNING", "serve-fs: the kernel refused FUSE passthrough (FUSE 7.45): file contents "
                    "go through serve-fs")]


def test_passthrough_not_wanted_is_not_reported(tmp_path: Path,
                                                caplog: pytest.LogCaptureFixture) -> None:
    fd = os.open(tmp_path, os.O_PATH | os.O_DIRECTORY)
    session = Session(Passthrough(fd), -1, passthrough=False)
    with caplog.at_level(logging.DEBUG, "cntr.fs"):
        assert not init(session, protocol.PASSTHROUGH) & protocol.PASSTHROUGH
    assert [r for r in caplog.records if r.levelno >= logging.WARNING] == []
