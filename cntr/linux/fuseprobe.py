"""Ask the kernel which FUSE features it offers, without mounting anything.

A FUSE superblock is created with the mount API on a fresh ``/dev/fuse`` descriptor
(``fsopen("fuse")``, ``fsconfig(FSCONFIG_CMD_CREATE)``) and never attached anywhere
(no ``fsmount``): creating it makes the kernel queue its ``FUSE_INIT`` request, which
lists every feature flag this kernel would grant a server (fuse_send_init in
fs/fuse/inode.c sets FUSE_PASSTHROUGH when built with CONFIG_FUSE_PASSTHROUGH and
FUSE_OVER_IO_URING when the module parameter ``enable_uring`` is on).  The request is
read and never answered; closing the descriptor aborts the connection and frees the
superblock.  This is the kernel's own answer, not a guess from its version.

Needs CAP_SYS_ADMIN (as any FUSE mount by root).
"""

from __future__ import annotations

import os
import select
import struct

from cntr.linux import syscalls

FUSE_INIT = 26
INIT_EXT = 1 << 30
PASSTHROUGH = 1 << 37
OVER_IO_URING = 1 << 41
_IN_HEADER = struct.Struct("<IIQQIIIHH")  # struct fuse_in_header (40 bytes)
_INIT_IN = struct.Struct("<IIIII")  # major, minor, max_readahead, flags, flags2
_BUFSIZE = 1 << 17  # a read needs at least FUSE_MIN_READ_BUFFER (8 KiB)


class Init:
    """What the kernel's FUSE_INIT request offered."""

    def __init__(self, major: int, minor: int, flags: int) -> None:
        self.major = major
        self.minor = minor
        self.flags = flags
        """the 64 offered flag bits (flags2 holds bits 32-63 when INIT_EXT is set)."""

    @property
    def passthrough(self) -> bool:
        return bool(self.flags & PASSTHROUGH)

    @property
    def io_uring(self) -> bool:
        return bool(self.flags & OVER_IO_URING)


def parse_init(data: bytes) -> Init:
    """The offer in a FUSE_INIT request read from /dev/fuse; ValueError for anything else."""
    if len(data) < _IN_HEADER.size + 8:
        raise ValueError(f"short FUSE request ({len(data)} bytes)")
    _length, opcode, *_ = _IN_HEADER.unpack_from(data)
    if opcode != FUSE_INIT:
        raise ValueError(f"first FUSE request has opcode {opcode}, not INIT")
    body = data[_IN_HEADER.size:] + b"\0" * _INIT_IN.size
    major, minor, _readahead, flags, flags2 = _INIT_IN.unpack_from(body)
    if flags & INIT_EXT:
        flags |= flags2 << 32
    return Init(major, minor, flags)


def probe(device: str = "/dev/fuse", timeout: float = 2.0) -> Init:
    """The kernel's FUSE_INIT offer; OSError (naming the call) when it cannot be had."""
    fuse_fd = os.open(device, os.O_RDWR | os.O_CLOEXEC | os.O_NONBLOCK)
    try:
        fs = syscalls.fsopen("fuse")
        try:
            for key, value in (("source", "cntr-probe"), ("fd", str(fuse_fd)),
                               ("rootmode", "40000"), ("user_id", "0"), ("group_id", "0")):
                syscalls.fsconfig(fs, syscalls.FSCONFIG_SET_STRING, key, value)
            syscalls.fsconfig(fs, syscalls.FSCONFIG_CMD_CREATE)
            if not select.select([fuse_fd], [], [], timeout)[0]:
                raise TimeoutError(f"no FUSE_INIT request within {timeout:g} s")
            data = os.read(fuse_fd, _BUFSIZE)
        finally:
            os.close(fs)
    finally:
        os.close(fuse_fd)  # aborts the connection: nothing waits for an answer
    try:
        return parse_init(data)
    except ValueError as exc:
        raise OSError(0, str(exc), device) from None
