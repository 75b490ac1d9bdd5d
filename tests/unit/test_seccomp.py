"""The session's seccomp filter and guard capability, without privileges: the BPF program
is run by a small interpreter of the three instructions it uses, for every ABI it covers
(an aarch64 kernel cannot be asked here)."""

from __future__ import annotations

import errno
import struct

import pytest

from cntr.linux import caps, seccomp

DENY = seccomp.RET_ERRNO | errno.EPERM
X32 = seccomp.X32_BIT


def run(prog: bytes, arch: int, nr: int, arg0: int = 0) -> int:
    """What the filter answers for a call (classic BPF: ld abs, jeq k, ret k)."""
    data = struct.pack("=iIQ6Q", nr, arch, 0, arg0 & 0xFFFFFFFFFFFFFFFF, 0, 0, 0, 0, 0)
    insns = [struct.unpack("=HBBI", prog[i:i + 8]) for i in range(0, len(prog), 8)]
    acc, pc = 0, 0
    while True:
        code, jt, jf, k = insns[pc]
        if code == 0x20:
            acc = struct.unpack_from("=I", data, k)[0]
            pc += 1
        elif code == 0x15:
            pc += 1 + (jt if acc == k else jf)
        elif code == 0x06:
            return int(k)
        else:
            raise AssertionError(f"unexpected instruction {code:#x}")


X86 = seccomp.AUDIT_ARCH_X86_64
I386 = seccomp.AUDIT_ARCH_I386
A64 = seccomp.AUDIT_ARCH_AARCH64
ARM = seccomp.AUDIT_ARCH_ARM


@pytest.mark.parametrize(("arch", "nr", "arg0", "want"), [
    (X86, 283, 9, DENY), (X86, 283, 8, DENY), (X86, 283, 7, seccomp.RET_ALLOW),
    (X86, 283, (1 << 32) | 9, DENY),  # the kernel reads an int: only the low word counts
    (X86, 222, 8, DENY), (X86, 222, 1, seccomp.RET_ALLOW),
    (X86, X32 | 283, 9, DENY), (X86, X32 | 526, 9, DENY), (X86, X32 | 222, 9,
                                                          seccomp.RET_ALLOW),
    (X86, 169, 0, seccomp.RET_ALLOW), (X86, 0, 9, seccomp.RET_ALLOW),
    (I386, 322, 9, DENY), (I386, 259, 8, DENY), (I386, 283, 9, seccomp.RET_ALLOW),
    (A64, 85, 9, DENY), (A64, 107, 8, DENY), (A64, 85, 1, seccomp.RET_ALLOW),
    (A64, 283, 9, seccomp.RET_ALLOW),
    (0x12345678, 0, 0, DENY),  # an ABI the kernel does not run
])
def test_wake_alarm_filter(arch: int, nr: int, arg0: int, want: int) -> None:
    machine = "aarch64" if arch == A64 else "x86_64"
    prog = seccomp.program(caps.WAKE_ALARM, machine)
    assert prog is not None
    assert run(prog, arch, nr, arg0) == want


@pytest.mark.parametrize(("arch", "nr", "want"), [
    (X86, 169, DENY), (X86, 246, DENY), (X86, 320, DENY), (X86, X32 | 528, DENY),
    (X86, X32 | 169, DENY), (X86, 283, seccomp.RET_ALLOW), (I386, 88, DENY),
    (I386, 283, DENY), (A64, 142, DENY), (A64, 104, DENY), (A64, 294, DENY),
    (ARM, 88, DENY), (ARM, 347, DENY), (ARM, 401, DENY), (ARM, 350, seccomp.RET_ALLOW),
])
def test_sys_boot_filter(arch: int, nr: int, want: int) -> None:
    machine = "aarch64" if arch in (A64, ARM) else "x86_64"
    prog = seccomp.program(caps.SYS_BOOT, machine)
    assert prog is not None
    assert run(prog, arch, nr, 0xdead) == want


def test_no_filter_elsewhere() -> None:
    assert seccomp.program(caps.WAKE_ALARM, "riscv64") is None


DOCKER = 0xA80425FB  # docker's default bounding set


@pytest.mark.parametrize(("bounding", "inheritable", "want"), [
    (DOCKER, 0, caps.WAKE_ALARM),
    (DOCKER | 1 << caps.WAKE_ALARM, 0, caps.SYS_BOOT),
    (DOCKER, 1 << caps.WAKE_ALARM, caps.SYS_BOOT),  # execve could raise it from there
    (DOCKER | 1 << caps.WAKE_ALARM | 1 << caps.SYS_BOOT, 0, None),
    (DOCKER | 1 << caps.SYS_PTRACE, 0, None),
    ((1 << 41) - 1, 0, None),  # LXD: everything
])
def test_guard_bit(bounding: int, inheritable: int, want: int | None) -> None:
    assert caps.guard_bit(bounding, inheritable) == want


def test_guarded_sets() -> None:
    g = 1 << caps.WAKE_ALARM
    assert caps.guarded_sets(DOCKER, DOCKER, DOCKER, 0, 0, uid=0) == (
        DOCKER | g, DOCKER | g, DOCKER | g, 0, 0)
    assert caps.guarded_sets(DOCKER, 0, 0, 0, 0, uid=1000) == (DOCKER | g, g, g, g, g)
