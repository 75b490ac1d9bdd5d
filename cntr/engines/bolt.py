"""Read a bbolt database (go.etcd.io/bbolt) without its library: the keys of a bucket.

podman 4 keeps what it knows of its containers in one (``bolt_state.db``); reading the
keys of two of its buckets answers "is there a container called so?" in well under a
millisecond, where ``podman inspect`` takes ~25 ms and ~40 ms of CPU (`cntr.engines.podman`).

The format (bbolt's ``page.go``, ``meta.go``, ``bucket.go``), little-endian:
- the file is a sequence of pages of ``page_size`` bytes; each starts with a header: id
  u64, flags u16 (0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist), count u16 (elements),
  overflow u32 (how many more pages the page spans);
- pages 0 and 1 are meta pages: after the header, magic u32 (0xED0CDAED), version u32 (2),
  page_size u32, flags u32, the root bucket (root page u64, sequence u64), freelist u64,
  pgid u64 (the end of the file in use), txid u64 and an FNV-1a 64 checksum of the 56 bytes
  before it.  The valid one with the higher txid is the last committed transaction;
- a branch page holds ``count`` elements of 16 bytes after its header: pos u32, ksize u32,
  child page u64; the key is ``pos`` bytes after the element's own start;
- a leaf page holds elements of 16 bytes: flags u32 (0x01: the value is a bucket), pos
  u32, ksize u32, vsize u32; key then value ``pos`` bytes after the element's start;
- a bucket's value is its root page u64 and sequence u64; a root page 0 means an inline
  bucket, whose single leaf page follows those 16 bytes in the value.

Consistency: bbolt lets one process at a time open a database for writing, holding an
exclusive ``flock`` while it is open (podman opens it for each operation); read-only
openers take a shared one.  `read_bucket_keys` takes the shared lock without waiting,
reads, and lets go: while it holds it no writer is active, so the pages it reads belong to
one committed transaction.  When a writer holds it, it raises `BoltBusy` at once (callers
fall back to the engine's CLI) rather than waiting.  The other way round, a podman that
opens the database in the ~0.3 ms the shared lock is held retries 50 ms later (bbolt's
flock retry interval).

Every structural surprise (bad magic or checksum, a page of the wrong type, a reference
past the file's end, a loop) raises `BoltError`: the caller then asks the engine instead.
"""

from __future__ import annotations

import fcntl
import os
import struct

MAGIC = 0xED0CDAED
VERSION = 2
BRANCH, LEAF, META = 0x01, 0x02, 0x04
BUCKET_LEAF = 0x01
PAGE_HEADER = 16
ELEMENT = 16
MAX_DEPTH = 32
"""Deeper than any B+tree bbolt makes (it splits pages at 4 KiB): a deeper one is a loop."""

_FNV_OFFSET = 0xCBF29CE484222325
_FNV_PRIME = 0x100000001B3


class BoltError(Exception):
    """The file is not a bbolt database cntr can read (the message says what was wrong)."""


class BoltBusy(BoltError):
    """A writer has the database open (it holds the exclusive lock)."""


def fnv1a64(data: bytes) -> int:
    """The 64-bit FNV-1a hash (Go's ``hash/fnv.New64a``), bbolt's meta checksum."""
    h = _FNV_OFFSET
    for b in data:
        h = ((h ^ b) * _FNV_PRIME) & 0xFFFFFFFFFFFFFFFF
    return h


class _Reader:
    """Pages read by ``pread`` from an open database file, checked as they are read."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.size = os.fstat(fd).st_size
        head = os.pread(fd, PAGE_HEADER + 64, 0)
        first = self._meta(head)
        page_size = first[0] if first is not None else 4096
        second = self._meta(os.pread(fd, PAGE_HEADER + 64, page_size))
        metas = [m for m in (first, second) if m is not None and m[0] == page_size]
        if not metas:
            raise BoltError("no valid meta page")
        self.page_size, self.root, self.pages, self.txid = max(metas, key=lambda m: m[3])
        if self.pages * self.page_size > self.size:
            raise BoltError(f"the meta page says {self.pages} pages, the file is shorter")

    @staticmethod
    def _meta(raw: bytes) -> tuple[int, int, int, int] | None:
        """(page_size, root page, pages in use, txid) of a valid meta page, else None."""
        if len(raw) < PAGE_HEADER + 64:
            return None
        flags, = struct.unpack_from("<H", raw, 8)
        body = raw[PAGE_HEADER:PAGE_HEADER + 64]
        magic, version, page_size, _, root, _, _, pages, txid, checksum = struct.unpack(
            "<IIIIQQQQQQ", body)
        if flags != META or magic != MAGIC or version != VERSION or fnv1a64(body[:56]) != checksum:
            return None
        if page_size < 512 or page_size & (page_size - 1):
            return None
        return page_size, root, pages, txid

    def page(self, pgid: int) -> bytes:
        """Page ``pgid`` with its overflow pages."""
        if not 2 <= pgid < self.pages:
            raise BoltError(f"page {pgid} is outside the database (pages 2-{self.pages - 1})")
        offset = pgid * self.page_size
        head = os.pread(self.fd, self.page_size, offset)
        if len(head) < PAGE_HEADER:
            raise BoltError(f"page {pgid} is cut short")
        page_id, _, _, overflow = struct.unpack_from("<QHHI", head)
        if page_id != pgid:
            raise BoltError(f"page {pgid} says it is page {page_id}")
        if overflow:
            if pgid + overflow >= self.pages:
                raise BoltError(f"page {pgid} overflows past the database")
            head += os.pread(self.fd, overflow * self.page_size, offset + self.page_size)
        return head


def _elements(page: bytes, where: str) -> tuple[int, int]:
    """(flags, count) of a branch or leaf page whose elements fit in it."""
    flags, count = struct.unpack_from("<HH", page, 8)
    if flags not in (BRANCH, LEAF):
        raise BoltError(f"{where}: page of type {flags:#x}, not a branch or leaf")
    if PAGE_HEADER + count * ELEMENT > len(page):
        raise BoltError(f"{where}: {count} elements do not fit in the page")
    return flags, count


def _slice(page: bytes, start: int, length: int, where: str) -> bytes:
    if start + length > len(page):
        raise BoltError(f"{where}: an element points past its page")
    return page[start:start + length]


def _leaf_items(reader: _Reader, page: bytes, depth: int = 0
                ) -> list[tuple[bytes, int, bytes]]:
    """Every (key, flags, value) of the tree whose root is ``page``, in key order."""
    if depth > MAX_DEPTH:
        raise BoltError("the tree is deeper than bbolt makes them (a loop?)")
    flags, count = _elements(page, f"depth {depth}")
    out: list[tuple[bytes, int, bytes]] = []
    for i in range(count):
        at = PAGE_HEADER + i * ELEMENT
        if flags == BRANCH:
            pos, ksize, child = struct.unpack_from("<IIQ", page, at)
            _slice(page, at + pos, ksize, "branch")
            out += _leaf_items(reader, reader.page(child), depth + 1)
        else:
            eflags, pos, ksize, vsize = struct.unpack_from("<IIII", page, at)
            key = _slice(page, at + pos, ksize, "leaf")
            value = _slice(page, at + pos + ksize, vsize, "leaf")
            out.append((key, eflags, value))
    return out


def _bucket_root(reader: _Reader, value: bytes, name: bytes) -> bytes:
    """The root page of the bucket whose header is ``value``."""
    if len(value) < 16:
        raise BoltError(f"bucket {name!r}: a header of {len(value)} bytes")
    root, = struct.unpack_from("<Q", value)
    if root == 0:  # inline: its leaf page follows the header
        return value[16:]
    return reader.page(root)


def _keys(reader: _Reader, path: tuple[bytes, ...]) -> list[bytes] | None:
    page = reader.page(reader.root)
    for name in path:
        for key, flags, value in _leaf_items(reader, page):
            if key == name and flags & BUCKET_LEAF:
                page = _bucket_root(reader, value, name)
                break
        else:
            return None
    return [key for key, _, _ in _leaf_items(reader, page)]


def read_bucket_keys(path: str, *buckets: tuple[bytes, ...]) -> list[list[bytes] | None]:
    """The keys of each bucket of ``buckets`` (a bucket is named by its path from the
    top level), None for a bucket the database lacks; one consistent reading.

    Raises OSError when the file cannot be opened, BoltBusy when a writer has it open,
    BoltError when it is not a database this reader understands."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
        except BlockingIOError:
            raise BoltBusy(f"{path} is open for writing") from None
        try:
            reader = _Reader(fd)
            return [_keys(reader, b) for b in buckets]
        except struct.error as exc:
            raise BoltError(f"{path}: {exc}") from None
        finally:
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)
