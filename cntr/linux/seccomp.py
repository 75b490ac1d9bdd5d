"""The session's seccomp filter: it refuses, with EPERM, every use of the guard capability.

A session holds one capability the container lacks (``cntr.linux.caps.guard_bit``) so
that no container process can ptrace it; this filter takes away everything that
capability would allow, so the session can do nothing the container cannot:

- cap_wake_alarm: ``timerfd_create(2)`` and ``timer_create(2)`` with the clocks
  CLOCK_REALTIME_ALARM (8) and CLOCK_BOOTTIME_ALARM (9), the kernel's only checks of it
  (fs/timerfd.c, kernel/time/alarmtimer.c);
- cap_sys_boot: ``reboot(2)``, ``kexec_load(2)`` and ``kexec_file_load(2)``.

Without the capability the kernel answers these with EPERM too (it checks the
capability before the arguments), so the session sees exactly the container's answer.

The filter is classic BPF over ``struct seccomp_data`` (nr at offset 0, arch at 4,
args[0] at 16), built with ``struct``.  Syscall numbers are those of the kernel's tables
(arch/x86/entry/syscalls/syscall_64.tbl and syscall_32.tbl, include/uapi/asm-generic/
unistd.h, arch/arm64/tools/syscall_32.tbl), checked against this machine's
``asm/unistd_{64,32,x32}.h``.

Caveats:
- ABIs covered: x86_64 with its x32 numbers (bit 0x40000000), i386, aarch64 and 32-bit
  arm; these are every ABI an x86_64 or aarch64 kernel runs.  A call under any other
  ``arch`` value is refused whatever it is (none exists on those hosts).  On other host
  architectures ``program`` returns None and the session goes unguarded.
- Only the low 32 bits of the clock id are compared: the kernel reads it as an int.
- The filter cannot be removed; it stays on every process the session starts.
"""

from __future__ import annotations

import errno
import os
import struct

from cntr.linux import caps, syscalls

# linux/filter.h, linux/bpf_common.h, linux/seccomp.h
_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
_RET_K = 0x06  # BPF_RET | BPF_K
RET_ALLOW = 0x7FFF0000
RET_ERRNO = 0x00050000
_OFF_NR, _OFF_ARCH, _OFF_ARG0_LO = 0, 4, 16  # little-endian: the low word of args[0]

AUDIT_ARCH_X86_64 = 0xC000003E
AUDIT_ARCH_I386 = 0x40000003
AUDIT_ARCH_AARCH64 = 0xC00000B7
AUDIT_ARCH_ARM = 0x40000028
X32_BIT = 0x40000000

ALARM_CLOCKS = (8, 9)
"""CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM (linux/time.h)."""

# Per audit arch: {name: nr}.  x32 shares the x86_64 arch value and sets X32_BIT.
_NUMBERS: dict[int, dict[str, tuple[int, ...]]] = {
    AUDIT_ARCH_X86_64: {
        "reboot": (169, X32_BIT | 169),
        "kexec_load": (246, X32_BIT | 528),
        "kexec_file_load": (320, X32_BIT | 320),
        "timerfd_create": (283, X32_BIT | 283),
        "timer_create": (222, X32_BIT | 526),
    },
    AUDIT_ARCH_I386: {
        "reboot": (88,), "kexec_load": (283,), "kexec_file_load": (),
        "timerfd_create": (322,), "timer_create": (259,),
    },
    AUDIT_ARCH_AARCH64: {
        "reboot": (142,), "kexec_load": (104,), "kexec_file_load": (294,),
        "timerfd_create": (85,), "timer_create": (107,),
    },
    AUDIT_ARCH_ARM: {
        "reboot": (88,), "kexec_load": (347,), "kexec_file_load": (401,),
        "timerfd_create": (350,), "timer_create": (257,),
    },
}
_HOST_ARCHES = {"x86_64": (AUDIT_ARCH_X86_64, AUDIT_ARCH_I386),
                "aarch64": (AUDIT_ARCH_AARCH64, AUDIT_ARCH_ARM)}

REFUSED: dict[int, tuple[str, ...]] = {
    caps.WAKE_ALARM: ("timerfd_create(CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM)",
                      "timer_create(CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM)"),
    caps.SYS_BOOT: ("reboot", "kexec_load", "kexec_file_load"),
}
"""What the filter refuses for each guard capability, as ``enter --dry-run`` shows it."""
_ALWAYS = {caps.WAKE_ALARM: (), caps.SYS_BOOT: ("reboot", "kexec_load", "kexec_file_load")}
_BY_CLOCK = {caps.WAKE_ALARM: ("timerfd_create", "timer_create"), caps.SYS_BOOT: ()}


class _Asm:
    """A tiny BPF assembler: forward jumps to labels, resolved at the end."""

    def __init__(self) -> None:
        self.code: list[tuple[int, int | str, int | str, int]] = []
        self.labels: dict[str, int] = {}

    def ld(self, offset: int) -> None:
        self.code.append((_LD_W_ABS, 0, 0, offset))

    def jeq(self, k: int, true: str) -> None:
        self.code.append((_JEQ_K, true, 0, k))

    def ret(self, k: int) -> None:
        self.code.append((_RET_K, 0, 0, k))

    def label(self, name: str) -> None:
        self.labels[name] = len(self.code)

    def assemble(self) -> bytes:
        out = b""
        for i, (op, jt, jf, k) in enumerate(self.code):
            t = jt if isinstance(jt, int) else self.labels[jt] - i - 1
            f = jf if isinstance(jf, int) else self.labels[jf] - i - 1
            assert 0 <= t < 256 and 0 <= f < 256, "jump out of range"
            out += struct.pack("=HBBI", op, t, f, k)
        return out


def program(guard: int, machine: str | None = None) -> bytes | None:
    """The filter for a session guarded by capability ``guard``; None when this host's
    architecture (``machine``, default ``uname -m``) is not covered."""
    arches = _HOST_ARCHES.get(machine or os.uname().machine)
    if arches is None or guard not in REFUSED:
        return None
    deny = RET_ERRNO | errno.EPERM
    a = _Asm()
    a.ld(_OFF_ARCH)
    for arch in arches:
        a.jeq(arch, f"arch{arch}")
    a.ret(deny)  # an ABI this kernel does not run
    for arch in arches:
        a.label(f"arch{arch}")
        a.ld(_OFF_NR)
        for name in _ALWAYS[guard]:
            for nr in _NUMBERS[arch][name]:
                a.jeq(nr, "deny")
        for name in _BY_CLOCK[guard]:
            for nr in _NUMBERS[arch][name]:
                a.jeq(nr, "clock")
        a.ret(RET_ALLOW)
    if _BY_CLOCK[guard]:
        a.label("clock")
        a.ld(_OFF_ARG0_LO)
        for clock in ALARM_CLOCKS:
            a.jeq(clock, "deny")
        a.ret(RET_ALLOW)
    a.label("deny")
    a.ret(deny)
    return a.assemble()


def install(guard: int) -> None:
    """Install the filter for ``guard`` on the calling process (inherited by its children
    and kept across execve).  Call it while the process still holds CAP_SYS_ADMIN, so no
    no_new_privs is needed; raises OSError(ENOSYS) where no filter exists."""
    prog = program(guard)
    if prog is None:
        raise OSError(errno.ENOSYS, f"no seccomp filter for {os.uname().machine}")
    syscalls.seccomp_set_filter(prog)
