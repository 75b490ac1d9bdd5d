"""cntr.fs.workers without FUSE: requests handed over, the descriptors they name kept
alive by duplicates while they are answered, replies written whole, nothing left open."""

from __future__ import annotations

import os
import struct
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.errors import CntrError
from cntr.fs.protocol import (
    COPY_FILE_RANGE,
    FSYNC,
    FSYNCDIR,
    GETATTR,
    IN_HEADER,
    OUT_HEADER,
    U64,
    Request,
)
from cntr.fs.workers import Workers, size_from_env


def request(opcode: int, unique: int, body: bytes) -> bytearray:
    """A fuse_in_header and ``body``, in a buffer larger than the request (as read)."""
    head = IN_HEADER.pack(IN_HEADER.size + len(body), opcode, unique, 7, 1000, 1000, 42,
                          0, 0)
    return bytearray(head + body + b"\xee" * 64)


def open_fds() -> set[int]:
    """Our open descriptors (not the one that listed them, closed by then)."""
    out = set()
    for name in os.listdir("/proc/self/fd"):
        try:
            os.fstat(int(name))
        except OSError:
            continue
        out.add(int(name))
    return out


class Replies:
    """The read end of the pipe the workers write replies to."""

    def __init__(self) -> None:
        self.rfd, self.wfd = os.pipe()

    def next(self) -> tuple[int, int, bytes]:
        """(error, unique, payload) of the next reply."""
        head = os.read(self.rfd, OUT_HEADER.size)
        length, err, unique = OUT_HEADER.unpack(head)
        payload = os.read(self.rfd, length - OUT_HEADER.size) if length > OUT_HEADER.size \
            else b""
        return err, unique, payload


def stop(workers: Workers) -> None:
    """Stop ``workers`` and wait for its threads (the last closes its descriptor)."""
    workers.stop()
    for t in workers._threads:
        t.join(30)
        assert not t.is_alive()


@pytest.fixture
def replies() -> Iterator[Replies]:
    r = Replies()
    yield r
    os.close(r.rfd)
    os.close(r.wfd)


def test_a_file_closed_and_its_number_reused_meanwhile_is_still_the_one_answered(
        tmp_path: Path, replies: Replies) -> None:
    """The kernel may RELEASE a file while its fsync is being answered: the worker's
    duplicate still names that file, not the one a later open got its number for."""
    (tmp_path / "a").write_bytes(b"a")
    (tmp_path / "b").write_bytes(b"b")
    fd_a = os.open(tmp_path / "a", os.O_RDONLY)
    ino_a = os.fstat(fd_a).st_ino
    go = threading.Event()
    seen: list[tuple[int, int, int, int]] = []

    def answer(header: bytes | bytearray | memoryview, body: memoryview,
               req: Request) -> tuple[int, bytes | None]:
        go.wait(30)
        fh = U64.unpack_from(body)[0]
        # the dispatcher fills ``req`` from the header (pid 42 in `request`)
        seen.append((fh, os.fstat(fh).st_ino, IN_HEADER.unpack_from(header)[6],
                     IN_HEADER.unpack_from(header)[1]))
        return 0, None

    before = open_fds()
    workers = Workers(answer, lambda fh: -1, replies.wfd)
    buf = request(FSYNC, 11, struct.pack("=QI4x", fd_a, 0))
    assert workers.take(FSYNC, buf, IN_HEADER.size + 16)
    os.close(fd_a)  # RELEASE
    fd_b = os.open(tmp_path / "b", os.O_RDONLY)  # the lowest number: fd_a's again
    assert fd_b == fd_a
    go.set()
    assert replies.next() == (0, 11, b"")
    [(fh, ino, pid, opcode)] = seen
    assert (ino, pid, opcode) == (ino_a, 42, FSYNC)
    assert fh != fd_b
    os.close(fd_b)
    stop(workers)
    assert open_fds() == before - {fd_a}


def test_copy_file_range_gets_both_files_and_the_reply_payload(
        tmp_path: Path, replies: Replies) -> None:
    src = os.open(tmp_path / "src", os.O_RDWR | os.O_CREAT)
    dst = os.open(tmp_path / "dst", os.O_RDWR | os.O_CREAT)
    got: list[tuple[int, int]] = []

    def answer(header: bytes | bytearray | memoryview, body: memoryview,
               req: Request) -> tuple[int, bytes | None]:
        fh_in, _, _, fh_out = struct.unpack_from("=4Q", body)
        got.append((os.fstat(fh_in).st_ino, os.fstat(fh_out).st_ino))
        return -5, b"payload!"

    workers = Workers(answer, lambda fh: -1, replies.wfd)
    body = struct.pack("=7Q", src, 0, 9, dst, 0, 100, 0)
    assert workers.take(COPY_FILE_RANGE, request(COPY_FILE_RANGE, 12, body),
                        IN_HEADER.size + len(body))
    assert replies.next() == (-5, 12, b"payload!")
    assert got == [(os.fstat(src).st_ino, os.fstat(dst).st_ino)]
    stop(workers)
    os.close(src)
    os.close(dst)


def test_fsyncdir_on_the_directory_the_core_opened(tmp_path: Path, replies: Replies) -> None:
    opened: list[int] = []

    def open_dir(fh: int) -> int:
        opened.append(fh)
        return os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)

    before = open_fds()
    workers = Workers(lambda *a: (0, None), open_dir, replies.wfd)
    assert workers.take(FSYNCDIR, request(FSYNCDIR, 13, struct.pack("=QI4x", 77, 1)),
                        IN_HEADER.size + 16)
    assert replies.next() == (0, 13, b"")
    assert opened == [77]
    stop(workers)
    assert open_fds() == before


def test_what_is_not_handed_over(replies: Replies) -> None:
    """Other opcodes (also one whose low byte, what the reading thread passes, is
    FSYNC's), a pool of size 0, and a handle that is no descriptor (answered by the
    reading thread: the handler's own EBADF) stay with the reading thread."""
    workers = Workers(lambda *a: (0, None), lambda fh: -1, replies.wfd)
    assert not workers.take(GETATTR, request(GETATTR, 1, b"\0" * 16), IN_HEADER.size + 16)
    alias = request(FSYNC + 256, 4, struct.pack("=QI4x", 0, 0))  # its low byte is FSYNC's
    assert not workers.take(FSYNC, alias, IN_HEADER.size + 16)
    bad = request(FSYNC, 2, struct.pack("=QI4x", 987_654, 0))
    assert not workers.take(FSYNC, bad, IN_HEADER.size + 16)
    assert workers._threads == []
    stop(workers)
    inline = Workers(lambda *a: (0, None), lambda fh: -1, replies.wfd, size=0)
    assert not inline.take(FSYNC, request(FSYNC, 3, struct.pack("=QI4x", 0, 0)),
                           IN_HEADER.size + 16)
    stop(inline)


def test_more_blocked_requests_than_workers_wait_their_turn(tmp_path: Path,
                                                            replies: Replies) -> None:
    go = threading.Event()
    started = threading.Semaphore(0)

    def answer(header: bytes | bytearray | memoryview, body: memoryview,
               req: Request) -> tuple[int, bytes | None]:
        started.release()
        go.wait(30)
        return 0, None

    fd = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    workers = Workers(answer, lambda fh: -1, replies.wfd, size=2)
    for unique in range(5):
        assert workers.take(FSYNC, request(FSYNC, unique, struct.pack("=QI4x", fd, 0)),
                            IN_HEADER.size + 16)
    assert started.acquire(timeout=30) and started.acquire(timeout=30)
    assert len(workers._threads) == 2
    go.set()
    assert sorted(replies.next()[1] for _ in range(5)) == [0, 1, 2, 3, 4]
    assert len(workers._threads) == 2
    stop(workers)
    os.close(fd)


@pytest.mark.parametrize(("raw", "size"), [("", 8), ("0", 0), ("3", 3)])
def test_size_from_env(monkeypatch: pytest.MonkeyPatch, raw: str, size: int) -> None:
    monkeypatch.setenv("CNTR_SERVE_FS_WORKERS", raw)
    assert size_from_env() == size


@pytest.mark.parametrize("raw", ["-1", "many", "2.5"])
def test_size_from_env_refuses(monkeypatch: pytest.MonkeyPatch, raw: str) -> None:
    monkeypatch.setenv("CNTR_SERVE_FS_WORKERS", raw)
    with pytest.raises(CntrError) as err:
        size_from_env()
    assert str(err.value) == f"CNTR_SERVE_FS_WORKERS must be a number >= 0, not {raw!r}"
