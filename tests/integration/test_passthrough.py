"""FUSE passthrough and the page-cache policy, counted in serve-fs's own request log.

``cntr serve-fs --fs-debug`` logs every request it answers (``cntr.fs: read(...) -> ok``):
a file passed through is read and written by the kernel itself, so no READ or WRITE
appears; a small read-only file is read once and then served from the page cache.  When
either shortcut is unavailable (the kernel refuses passthrough, a mount has no file
handles), serve-fs says so in one warning line instead of slowing down silently.
"""

from __future__ import annotations

import contextlib
import mmap
import os
import re
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.conftest import CNTR, REPO
from tests.integration.fsutil import is_mounted, unmount

pytestmark = [pytest.mark.root, pytest.mark.fuse]

PASSTHROUGH_MIN = 64 << 10
"""Files at least this large are passed through even for read-only opens (README)."""


@dataclass
class Cli:
    """A ``cntr serve-fs`` started as a user would, and its stderr."""

    src: Path
    mnt: Path
    proc: subprocess.Popen[bytes]
    log: Path

    def requests(self, op: str) -> list[str]:
        """The logged requests named ``op`` so far (lookup, open, read, write, ...)."""
        return [line for line in self.log.read_text().splitlines()
                if re.match(rf"cntr\.fs: {op}\(", line)]

    def warnings(self) -> list[str]:
        """Lines that are neither a logged request nor the INIT summary."""
        return [line for line in self.log.read_text().splitlines()
                if not re.match(r"cntr\.fs: (\w+\(.*\) -> \w+|serve-fs: FUSE 7\.\d+, flags .*)$",
                                line)]


def wait_mounted(mnt: Path, proc: subprocess.Popen[bytes], log: Path) -> None:
    deadline = time.monotonic() + 30
    while not is_mounted(mnt):
        assert proc.poll() is None, f"serve-fs exited with {proc.returncode}: {log.read_text()}"
        assert time.monotonic() < deadline, "serve-fs did not mount"
        time.sleep(0.02)


@contextlib.contextmanager
def cli_serve_fs(src: Path | str, *args: str) -> Iterator[Cli]:
    """``cntr serve-fs SRC --mountpoint MNT ARGS...``; unmounted (it then exits) at the end."""
    mnt = Path(tempfile.mkdtemp(prefix="cntr-pt-mnt-"))
    log = Path(tempfile.mkstemp(prefix="cntr-pt-", suffix=".log")[1])
    with open(log, "wb") as logf:
        proc = subprocess.Popen([*CNTR, "serve-fs", str(src), "--mountpoint", str(mnt), *args],
                                cwd=REPO, stdin=subprocess.DEVNULL, stdout=logf, stderr=logf)
    try:
        wait_mounted(mnt, proc, log)
        yield Cli(Path(src), mnt, proc, log)
        unmount(mnt)
        assert proc.wait(timeout=30) == 0, log.read_text()
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
        unmount(mnt)
        os.rmdir(mnt)
        log.unlink()


@pytest.fixture
def src(tmp_path: Path) -> Path:
    d = tmp_path / "src"
    d.mkdir()
    return d


def test_large_file_is_read_and_written_without_serve_fs(src: Path) -> None:
    data = os.urandom(4 * PASSTHROUGH_MIN + 5)
    (src / "big").write_bytes(data)
    with cli_serve_fs(src, "--fs-debug") as fs:
        assert (fs.mnt / "big").read_bytes() == data
        with open(fs.mnt / "big", "r+b") as f:
            f.seek(PASSTHROUGH_MIN)
            f.write(b"through the backing file")
            f.seek(0)
            assert f.read() == data[:PASSTHROUGH_MIN] + b"through the backing file" + data[
                PASSTHROUGH_MIN + 24:]
        assert len(fs.requests("open")) == 2
        assert fs.requests("read") == []
        assert fs.requests("write") == []
        assert fs.warnings() == []
    assert (src / "big").read_bytes()[PASSTHROUGH_MIN:PASSTHROUGH_MIN + 24] == (
        b"through the backing file")


def test_small_read_only_file_is_served_once_then_from_the_cache(src: Path) -> None:
    (src / "small").write_bytes(b"s" * 1000)
    with cli_serve_fs(src, "--fs-debug") as fs:
        for _ in range(3):
            assert (fs.mnt / "small").read_bytes() == b"s" * 1000
        assert len(fs.requests("open")) == 3  # each open is seen ...
        assert len(fs.requests("read")) == 1  # ... the contents once
        # a change on the host is seen once the attributes expire (the cache is dropped)
        (src / "small").write_bytes(b"t" * 999)
        time.sleep(1.2)
        assert (fs.mnt / "small").read_bytes() == b"t" * 999
        assert len(fs.requests("read")) == 2
        assert fs.warnings() == []


def test_small_writable_open_is_passed_through(src: Path) -> None:
    (src / "w").write_bytes(b"0123")
    with cli_serve_fs(src, "--fs-debug") as fs:
        with open(fs.mnt / "w", "r+b") as f:
            f.write(b"ab")
            f.seek(0)
            assert f.read() == b"ab23"
        assert fs.requests("read") == fs.requests("write") == []
    assert (src / "w").read_bytes() == b"ab23"


def logged_soon(fs: Cli, op: str) -> list[str]:
    """``fs.requests(op)`` once there is one (readahead is asynchronous: fadvise returns
    before its READs are answered)."""
    deadline = time.monotonic() + 10
    while not fs.requests(op):
        assert time.monotonic() < deadline, f"no {op} request logged: {fs.log.read_text()}"
        time.sleep(0.02)
    return fs.requests(op)


def test_prefetch_of_a_passed_through_file_is_answered_unread(src: Path) -> None:
    """posix_fadvise(WILLNEED) on a file open for writing (a database's prefetch: 14,346 of
    the 14,350 READs of ``pgbench -i -s 10`` came from ANALYZE's): the kernel fills the FUSE
    inode's own page cache, which a passthrough file never reads, so serve-fs fails those
    READs without reading the host (readahead fails silently), and every read gets the
    file's contents, its writes included."""
    data = os.urandom(4 * PASSTHROUGH_MIN)
    (src / "table").write_bytes(data)
    new = data[:8192] + b"a new row" + data[8192 + 9:]
    with cli_serve_fs(src, "--fs-debug") as fs:
        with open(fs.mnt / "table", "r+b", buffering=0) as f:
            os.posix_fadvise(f.fileno(), 0, len(data), os.POSIX_FADV_WILLNEED)
            reads = logged_soon(fs, "read")
            f.seek(8192)
            f.write(b"a new row")
            os.posix_fadvise(f.fileno(), 0, len(data), os.POSIX_FADV_WILLNEED)
            f.seek(0)
            assert f.read() == new
        assert reads
        assert [line for line in fs.requests("read") if not line.endswith(") -> EIO")] == []
        assert (fs.mnt / "table").read_bytes() == new
        with open(fs.mnt / "table", "rb") as r, mmap.mmap(r.fileno(), 0,
                                                          prot=mmap.PROT_READ) as m:
            assert m[:] == new
        assert fs.requests("write") == []
        assert fs.warnings() == []
    assert (src / "table").read_bytes() == new


def test_a_prefetched_small_file_shows_its_writes_to_the_next_reader(src: Path) -> None:
    """A small file written through passthrough after a prefetch, then opened read-only
    (through the page cache, which the prefetch would have filled with the old contents):
    cat, stat and mmap show what was written."""
    (src / "pg_filenode.map").write_bytes(b"o" * 512)
    with cli_serve_fs(src, "--fs-debug") as fs:
        path = fs.mnt / "pg_filenode.map"
        with open(path, "r+b", buffering=0) as f:
            os.fstat(f.fileno())
            os.posix_fadvise(f.fileno(), 0, 0, os.POSIX_FADV_WILLNEED)
            logged_soon(fs, "read")
            f.write(b"n" * 600)
        assert os.stat(path).st_size == 600
        assert subprocess.run(["cat", str(path)], capture_output=True,
                              check=True).stdout == b"n" * 600
        with open(path, "rb") as r, mmap.mmap(r.fileno(), 0, prot=mmap.PROT_READ) as m:
            assert m[:] == b"n" * 600
        assert fs.requests("write") == []
    assert (src / "pg_filenode.map").read_bytes() == b"n" * 600


def test_a_small_file_open_for_reading_sees_another_opens_writes(src: Path) -> None:
    """A small file held open for reading (through the page cache: `tail -f` of a log)
    while another open appends and a shared mapping writes: the reader, stat and cat see
    each write (the writers then go through serve-fs: the kernel keeps one mode per
    inode)."""
    (src / "log").write_bytes(b"first\n")
    with cli_serve_fs(src) as fs:
        path = fs.mnt / "log"
        with open(path, "rb", buffering=0) as reader:
            assert reader.read() == b"first\n"
            with open(path, "ab", buffering=0) as writer:
                writer.write(b"second\n")
            assert os.fstat(reader.fileno()).st_size == 13
            assert reader.read() == b"second\n"
            with open(path, "r+b") as f, mmap.mmap(f.fileno(), 0) as m:
                m[:5] = b"FIRST"
                m.flush()
            reader.seek(0)
            assert reader.read() == b"FIRST\nsecond\n"
            assert os.stat(path).st_size == 13
        assert subprocess.run(["cat", str(path)], capture_output=True,
                              check=True).stdout == b"FIRST\nsecond\n"
    assert (src / "log").read_bytes() == b"FIRST\nsecond\n"


def test_without_fs_debug_nothing_is_logged(src: Path) -> None:
    (src / "f").write_bytes(b"x" * 100)
    with cli_serve_fs(src) as fs:
        assert (fs.mnt / "f").read_bytes() == b"x" * 100
        assert fs.log.read_text() == ""


# In a mount namespace of its own: an overlay without nfs_export (file handles that do
# not open again), served by `cntr serve-fs`, read through, then unmounted.
_OVERLAY = """
set -e
cd "$1"; shift
mkdir lower upper work ovl mnt
echo from-lower > lower/f
mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work,nfs_export=off ovl
"$@" serve-fs ovl --mountpoint mnt 2>log &
while ! grep -q " $PWD/mnt " /proc/self/mountinfo; do sleep 0.05; done
cat mnt/f; cat mnt/f; ls mnt
grep " $PWD/ovl " /proc/self/mountinfo | cut -d' ' -f1 > ovl-id
umount mnt; wait $!
"""


def test_a_mount_without_file_handles_is_reported(tmp_path: Path) -> None:
    """An overlay mount has no file handles that open again: serve-fs falls back to parent
    and name, and says so once for the mount, however many of its files are looked up."""
    out = subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", _OVERLAY,
                          "sh", str(tmp_path), *CNTR], cwd=REPO, capture_output=True,
                         timeout=120, check=False)
    assert (out.returncode, out.stdout) == (0, b"from-lower\nfrom-lower\nf\n"), out.stderr
    mnt_id = int((tmp_path / "ovl-id").read_text())
    assert (tmp_path / "log").read_text().splitlines() == [
        f"serve-fs: no file handles on {tmp_path}/ovl (overlay, mount {mnt_id}): its files "
        "are found again by name"]


def test_kernel_filesystems_without_handles_are_not_reported(tmp_path: Path) -> None:
    """procfs never has file handles: the fallback is normal there, and not reported."""
    with cli_serve_fs("/proc/sys") as fs:
        assert (fs.mnt / "kernel" / "ostype").read_text() == "Linux\n"
        assert sorted(os.listdir(fs.mnt / "kernel")) == sorted(os.listdir("/proc/sys/kernel"))
        assert fs.log.read_text() == ""
