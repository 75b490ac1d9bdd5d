"""The pure parts of ``cntr doctor``: the FUSE_INIT parser, cgroup layouts, the report."""

from __future__ import annotations

import struct

import pytest

from cntr.linux import fuseprobe
from cntr.stages import doctor


def init_request(minor: int, flags: int, opcode: int = fuseprobe.FUSE_INIT) -> bytes:
    body = struct.pack("<IIIII", 7, minor, 131072, flags & 0xFFFFFFFF, flags >> 32)
    header = struct.pack("<IIQQIIIHH", 40 + len(body) + 44, opcode, 2, 0, 0, 0, 0, 0, 0)
    return header + body + b"\0" * 44


def test_parse_init_reads_the_extended_flags() -> None:
    offer = fuseprobe.parse_init(init_request(45, fuseprobe.INIT_EXT | fuseprobe.PASSTHROUGH))
    assert (offer.major, offer.minor, offer.passthrough, offer.io_uring) == (7, 45, True, False)
    both = fuseprobe.INIT_EXT | fuseprobe.PASSTHROUGH | fuseprobe.OVER_IO_URING
    assert fuseprobe.parse_init(init_request(45, both)).io_uring


def test_parse_init_ignores_flags2_without_init_ext() -> None:
    offer = fuseprobe.parse_init(init_request(31, fuseprobe.PASSTHROUGH))
    assert not offer.passthrough


def test_parse_init_refuses_other_requests() -> None:
    with pytest.raises(ValueError, match="opcode 1, not INIT"):
        fuseprobe.parse_init(init_request(45, 0, opcode=1))
    with pytest.raises(ValueError, match="short FUSE request"):
        fuseprobe.parse_init(b"\0" * 10)


V2 = "30 1 0:26 / /sys/fs/cgroup rw,nosuid - cgroup2 cgroup2 rw\n"
V1 = ("31 1 0:27 / /sys/fs/cgroup/memory rw - cgroup cgroup rw,memory\n"
      "32 1 0:28 / /sys/fs/cgroup/cpu,cpuacct rw - cgroup cgroup rw,cpu,cpuacct\n")
HYBRID = V1 + "33 1 0:29 / /sys/fs/cgroup/unified rw - cgroup2 cgroup2 rw\n"


@pytest.mark.parametrize(("mountinfo", "detail"), [
    (V2, "v2 (unified) at /sys/fs/cgroup"),
    (V1, "v1: cpu,cpuacct memory"),
    (HYBRID, "hybrid: v2 at /sys/fs/cgroup/unified, v1 for cpu,cpuacct memory"),
])
def test_cgroup_layouts(mountinfo: str, detail: str) -> None:
    assert doctor.check_cgroups(mountinfo) == doctor.Check("cgroups", "OK", detail)


def test_no_cgroups_is_a_warning() -> None:
    assert doctor.check_cgroups("").status == "WARN"


def test_report_puts_the_fix_after_the_finding() -> None:
    checks = [doctor.Check("root", "OK", "running as root", required=True),
              doctor.Check("/dev/fuse", "FAIL", "missing", "modprobe fuse", required=True)]
    assert doctor.report(checks) == (
        "OK   root       running as root\n"
        "FAIL /dev/fuse  missing -> modprobe fuse\n"
        "attach cannot work on this host: fix the FAIL lines above\n")
    assert not doctor.attach_works(checks)
