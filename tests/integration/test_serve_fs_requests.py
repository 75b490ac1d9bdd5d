"""The requests serve-fs is sent for everyday work: the round trips each operation costs.

serve-fs counts the requests it answers by opcode when ``CNTR_SERVE_FS_COUNTS`` names a
file (written on SIGUSR1 and when it ends: what ``scripts/bench`` reports per workload).
Each test does something through a fresh mount and compares the requests it cost, exactly
where the kernel's behaviour is fixed, and what a user sees.
"""

from __future__ import annotations

import json
import os
import signal
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cntr.fs.passthrough import Passthrough
from tests.integration.fsutil import Served, serve_fs_mount

pytestmark = [pytest.mark.root, pytest.mark.fuse]

ASYNC = frozenset({"RELEASE", "RELEASEDIR", "FORGET", "BATCH_FORGET"})
#: past the default entry timeout (1 s): dentries and cached listings have expired
AFTER_ENTRY_TIMEOUT = 1.2


@dataclass
class Counted:
    served: Served
    counts_file: Path
    root: Path
    """the served directory, natively"""
    seq: int = 0

    def requests(self) -> dict[str, int]:
        """The requests answered so far, by opcode name."""
        self.served.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                doc = json.loads(self.counts_file.read_text())
            except (OSError, ValueError):
                doc = {"seq": 0}
            if doc["seq"] > self.seq:
                self.seq = doc["seq"]
                return dict(doc["counts"])
            time.sleep(0.01)
        raise AssertionError(f"serve-fs wrote no counts to {self.counts_file}")

    def cost(self, fn: Callable[[], object]) -> dict[str, int]:
        """The requests ``fn`` made serve-fs answer, but those the kernel sends when it
        gets round to it (RELEASE, RELEASEDIR, FORGET: they may come after ``fn``)."""
        before = self.requests()
        fn()
        after = self.requests()
        return {op: n - before.get(op, 0) for op, n in after.items()
                if n - before.get(op, 0) and op not in ASYNC}


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[Counted]:
    root = tmp_path / "root"
    root.mkdir()
    with tempfile.TemporaryDirectory(prefix="cntr-counts-") as tmp:
        counts_file = Path(tmp) / "counts.json"
        with serve_fs_mount(root, env={"CNTR_SERVE_FS_COUNTS": str(counts_file)}) as served:
            yield Counted(served, counts_file, root)


def make_tree(top: Path, dirs: int = 3, files: int = 20) -> None:
    top.mkdir()
    for d in range(dirs):
        (top / f"d{d}").mkdir()
        for f in range(files):
            (top / f"d{d}" / f"f{f}").write_bytes(b"x" * f)


def walk(top: Path) -> list[tuple[str, int]]:
    """Every file below ``top`` and its size (lstat), sorted."""
    seen = []
    for dirpath, _dirs, files in os.walk(top):
        for name in files:
            path = os.path.join(dirpath, name)
            seen.append((os.path.relpath(path, top), os.lstat(path).st_size))
    return sorted(seen)


def test_counts_are_written_at_the_end(tmp_path: Path) -> None:
    counts_file = tmp_path / "counts.json"
    root = tmp_path / "root"
    root.mkdir()
    with serve_fs_mount(root, env={"CNTR_SERVE_FS_COUNTS": str(counts_file)}) as served:
        (served.mountpoint / "f").write_bytes(b"data")
    doc = json.loads(counts_file.read_text())
    assert doc["counts"]["INIT"] == 1
    assert doc["counts"]["CREATE"] == 1
    assert doc["counts"]["RELEASE"] == 1


def test_a_tree_walked_again_after_its_entries_expired_is_listed_not_looked_up(
        counted: Counted) -> None:
    """A cached listing older than the entry timeout is dropped at opendir: one
    READDIRPLUS per directory refreshes every entry, instead of a LOOKUP per name."""
    top = counted.served.mountpoint / "tree"
    make_tree(top)
    expected = sorted((f"d{d}/f{f}", f) for d in range(3) for f in range(20))
    assert walk(top) == expected  # lists every directory
    time.sleep(AFTER_ENTRY_TIMEOUT)
    seen: list[tuple[str, int]] = []
    cost = counted.cost(lambda: seen.extend(walk(top)))
    assert seen == expected
    # Before: a LOOKUP for each of the 64 names.  Now: "tree" itself (its parent was not
    # listed), a GETATTR of it, and a page and the end of each of the 4 listings.
    assert cost == {"LOOKUP": 1, "GETATTR": 1, "OPENDIR": 4, "READDIRPLUS": 8}, cost


def test_a_tree_walked_again_at_once_keeps_its_cached_listing(counted: Counted) -> None:
    top = counted.served.mountpoint / "tree"
    make_tree(top)
    walk(top)
    cost = counted.cost(lambda: walk(top))
    # the GETATTRs: each directory's mtime, which decides whether its listing is current
    assert cost == {"GETATTR": 4, "OPENDIR": 4}, cost


def test_a_listing_shows_changes(counted: Counted) -> None:
    """A name added through the mount shows in the next listing at once (the kernel drops
    its listing when the directory changes); one added on the host once the cached
    listing has expired (the entry timeout)."""
    top = counted.served.mountpoint / "d"
    top.mkdir()
    (top / "a").write_bytes(b"")
    assert sorted(os.listdir(top)) == ["a"]
    (top / "b").write_bytes(b"")
    assert sorted(os.listdir(top)) == ["a", "b"]
    (counted.root / "d" / "c").write_bytes(b"")
    os.unlink(counted.root / "d" / "a")
    time.sleep(AFTER_ENTRY_TIMEOUT)
    assert sorted(os.listdir(top)) == ["b", "c"]


def test_stat_and_seek_of_a_file_open_for_writing_ask_only_after_writes(
        counted: Counted) -> None:
    """Attributes of a file open for writing (passed through) are cached for
    `Passthrough.writer_attr_timeout`: lseek(SEEK_END) and stat between writes cost no
    GETATTR each, and each still shows the size the last write left."""
    path = counted.served.mountpoint / "f"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        os.pwrite(fd, b"x" * 100, 0)

        def seeks() -> list[int]:
            out = []
            for _ in range(20):
                out.append(os.lseek(fd, 0, os.SEEK_END))
                out.append(os.stat(path).st_size)
            return out

        sizes: list[int] = []
        cost = counted.cost(lambda: sizes.extend(seeks()))
        assert sizes == [100] * 40
        # Timeout 0 cost a GETATTR for each of the 40; now the write's own one or two
        # (the size it changed, then the times).
        assert cost.get("GETATTR", 0) <= 2, cost
        time.sleep(Passthrough.writer_attr_timeout + 0.05)
        cost = counted.cost(lambda: os.stat(path))
        assert cost == {"GETATTR": 1}, cost  # the bound: asked again once expired
    finally:
        os.close(fd)


def test_serve_fs_sleeps_after_writing_its_counts(counted: Counted) -> None:
    """SIGUSR1 leaves serve-fs asleep in poll(2) once it has written the counts (the
    request loop reads the signal's byte on its wakeup pipe away, whatever the signal,
    else poll would return at once, forever)."""
    counted.requests()
    counted.requests()
    states = []
    for _ in range(20):
        time.sleep(0.01)
        stat_line = Path(f"/proc/{counted.served.pid}/stat").read_text()
        states.append(stat_line.rpartition(")")[2].split()[0])
    assert states.count("S") >= 18, states  # a busy loop is "R" all along
