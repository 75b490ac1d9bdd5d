"""No container process can take over a session (issue 19), and the session can still debug.

A small static C probe (``probe/takeover.c``, built here with ``gcc -static``) is copied
into a container and run with ``docker exec`` / ``podman exec`` against a live session's
processes: the reaper, the command, and a leftover of a command that ended. Each way the
kernel gives one process power over another (``ptrace_may_access``) must be refused, with
the errno the kernel gives; the same probe against a process of the container that is not
the session's succeeds, so the refusal is the session's guard and nothing else.

The containers: the engines' test containers (docker's default seccomp profile already
refuses ``process_vm_readv`` and ``pidfd_getfd`` to a process without CAP_SYS_PTRACE: the
control run shows it), and a docker container with ``seccomp=unconfined``, where only
cntr's guard stands in the way.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from cntr.linux import caps
from tests.conftest import CNTR, REPO, engine_container, require, run_cntr
from tests.integration.test_attach import ns_pid

pytestmark = [pytest.mark.root, pytest.mark.fuse]

PROBE_SRC = Path(__file__).parent / "probe" / "takeover.c"
PROBE = "/cntr-takeover-probe"
CHECKS = ("ptrace-attach", "ptrace-seize", "maps", "process_vm_readv", "mem", "environ",
          "fd", "cwd", "root", "ns/mnt", "pidfd_getfd")
REFUSED = {
    "ptrace-attach": "EPERM", "ptrace-seize": "EPERM", "process_vm_readv": "EPERM",
    "pidfd_getfd": "EPERM",
    # /proc answers a failed ptrace_may_access with EACCES
    "maps": "EACCES", "mem": "EACCES", "environ": "EACCES", "fd": "EACCES",
    "cwd": "EACCES", "root": "EACCES", "ns/mnt": "EACCES",
}
ALLOWED = dict.fromkeys(CHECKS, "ok")
DOCKER_SECCOMP = {**ALLOWED, "process_vm_readv": "EPERM", "pidfd_getfd": "EPERM"}
"""The control run in a container with docker's default seccomp profile, which refuses
both calls to a process without CAP_SYS_PTRACE (podman's allows them)."""


@dataclass(frozen=True)
class Box:
    """A container the probe runs in."""

    engine: str
    """docker, podman or lxc (LXD's): the CLI that runs ``exec``."""
    name: str
    pid: int
    """host pid of its pid 1."""
    control: dict[str, str]
    """what the probe gets against a process of the container that is not the session's."""


@pytest.fixture(scope="module")
def probe(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("probe") / "takeover"
    build = subprocess.run(["gcc", "-static", "-O1", "-Wall", "-o", str(out), str(PROBE_SRC)],
                           capture_output=True, text=True, check=False)
    if build.returncode != 0:
        require(f"gcc -static failed (scripts/setup installs libc6-dev): {build.stderr}")
    return out


def _host_pid(engine: str, name: str) -> int:
    fmt = "{{.State.Pid}}"
    out = subprocess.run([engine, "inspect", "--format", fmt, name], capture_output=True,
                         text=True, check=True)
    return int(out.stdout.strip())


@contextlib.contextmanager
def _own_container(engine: str, name: str, *args: str) -> Iterator[int]:
    subprocess.run([engine, "rm", "-f", name], capture_output=True, check=False)
    subprocess.run([engine, "run", "-d", "--network", "none", "--name", name, *args,
                    "cntr-busybox:test", "/bin/sleep", "100000"], capture_output=True,
                   check=True)
    try:
        yield _host_pid(engine, name)
    finally:
        stop_now = ["-t", "0"] if engine == "podman" else []  # docker rm -f kills at once
        subprocess.run([engine, "rm", "-f", *stop_now, name], capture_output=True, check=True)


@pytest.fixture(scope="module", params=["docker", "docker-unconfined", "podman"])
def box(request: pytest.FixtureRequest, probe: Path) -> Iterator[Box]:
    engine, _, kind = request.param.partition("-")
    test = engine_container(engine)  # starts the engine (and builds the image) if needed
    with contextlib.ExitStack() as stack:
        if kind:
            name = f"cntr-process-takeover-{engine}"
            pid = stack.enter_context(_own_container(
                engine, name, "--security-opt", "seccomp=unconfined"))
            b = Box(engine, name, pid, ALLOWED)
        else:
            b = Box(engine, test.ident, test.pid,
                    DOCKER_SECCOMP if engine == "docker" else ALLOWED)
        subprocess.run([engine, "cp", str(probe), f"{b.name}:{PROBE}"], check=True)
        stack.callback(subprocess.run, [engine, "exec", b.name, "rm", "-f", PROBE],
                       check=False)
        yield b


def run_probe(box: Box, nspid: int, user: str = "0") -> dict[str, str]:
    if box.engine == "lxc":  # LXD's client
        cmd = ["lxc", "exec", "--user", user, box.name, "--", PROBE, str(nspid)]
    else:
        cmd = [box.engine, "exec", "-u", user, box.name, PROBE, str(nspid)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)
    assert out.returncode == 0, out.stderr
    return dict(line.split(" ", 1) for line in out.stdout.splitlines())


def _children(pid: int) -> list[int]:
    """Host pids whose parent is ``pid`` (zombies included), oldest first."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            stat = Path(f"/proc/{entry}/stat").read_bytes()
        except OSError:
            continue
        fields = stat[stat.rindex(b")") + 2:].split()
        if int(fields[1]) == pid:
            found.append((int(fields[19]), int(entry)))
    return [p for _, p in sorted(found)]


def _comm(pid: int) -> str:
    return Path(f"/proc/{pid}/comm").read_text().strip()


@dataclass(frozen=True)
class Session:
    """Host pids of a live session's processes."""

    reaper: int
    command: int
    leftover: int


@contextlib.contextmanager
def open_session(name: str, engine: str) -> Iterator[Session]:
    """A session whose command (sh) waits on stdin after an inner sh left ``sleep 1000``
    running (reparented to the reaper)."""
    script = 'sh -c "sleep 1000 &"; echo ready; read x'
    with subprocess.Popen([*CNTR, "attach", "-t", engine, name, "--", "/bin/sh", "-c", script],
                          stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, cwd=REPO) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        leftover = 0
        try:
            assert proc.stdout.readline() == b"ready\n"
            setup = [c for c in _children(proc.pid) if _comm(c) != "cntr-serve-fs"]
            assert len(setup) == 1, setup
            (reaper,) = _children(setup[0])
            kids = _children(reaper)
            deadline = time.monotonic() + 10
            # The inner sh's child is reparented to the reaper, and is sh until it has
            # executed sleep.
            while ((len(kids) < 2 or _comm(kids[-1]) != "sleep")
                   and time.monotonic() < deadline):
                time.sleep(0.02)
                kids = _children(reaper)
            command, leftover = kids
            assert _comm(leftover) == "sleep", kids
            yield Session(reaper, command, leftover)
        finally:
            if leftover:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(leftover, signal.SIGKILL)
            proc.stdin.close()
            proc.wait(timeout=30)


@contextlib.contextmanager
def _control_target(box: Box, user: str = "0") -> Iterator[int]:
    """A process of the container that is not the session's, started with ``exec -d``:
    its container pid."""
    subprocess.run([box.engine, "exec", "-d", "-u", user, box.name, "sleep", "1001"],
                   capture_output=True, check=True)
    my_ns = os.readlink(f"/proc/{box.pid}/ns/pid")
    deadline = time.monotonic() + 10
    host = None
    while host is None and time.monotonic() < deadline:
        for entry in os.listdir("/proc"):
            with contextlib.suppress(OSError):
                if (entry.isdigit() and os.readlink(f"/proc/{entry}/ns/pid") == my_ns
                        and Path(f"/proc/{entry}/cmdline").read_bytes() == b"sleep\0001001\0"):
                    host = int(entry)
                    break
        time.sleep(0.02)
    assert host is not None, "the exec'd sleep did not show"
    try:
        yield ns_pid(host)
    finally:
        os.kill(host, signal.SIGKILL)  # the engine's exec process (shim, conmon) reaps it


def test_container_cannot_take_over_the_session(box: Box) -> None:
    with open_session(box.name, box.engine) as s:
        for what, pid in (("reaper", s.reaper), ("command", s.command),
                          ("leftover", s.leftover)):
            assert run_probe(box, ns_pid(pid)) == REFUSED, what
            # Another uid fails the kernel's first check already (the ids must match).
            assert run_probe(box, ns_pid(pid), user="1000") == REFUSED, what
    with _control_target(box) as target:
        assert run_probe(box, target) == box.control


def test_non_root_container_cannot_take_over_its_session(probe: Path) -> None:
    """A container running as 1000:1000: the session holds the guard in its ambient set,
    and a process of the container with the same ids cannot trace it."""
    engine_container("docker")
    name = "cntr-process-takeover-user"
    with _own_container("docker", name, "--user", "1000:1000", "--security-opt",
                        "seccomp=unconfined") as pid:
        subprocess.run(["docker", "cp", str(probe), f"{name}:{PROBE}"], check=True)
        b = Box("docker", name, pid, ALLOWED)
        out = run_cntr("attach", "-t", "docker", name, "--", "/bin/sh", "-c",
                       "id -u; id -g; grep Cap /proc/self/status")
        assert out.returncode == 0, out.stderr.decode()
        lines = out.stdout.decode().splitlines()
        assert lines[:2] == ["1000", "1000"]
        mine = {k: int(v, 16) for k, v in re.findall(r"(Cap\w+):\s+(\w+)", "\n".join(lines))}
        cont = {k: int(v, 16) for k, v in re.findall(
            r"(Cap\w+):\s+(\w+)", Path(f"/proc/{pid}/status").read_text())}
        want = caps.guarded_sets(cont["CapBnd"], cont["CapEff"], cont["CapPrm"],
                                 cont["CapInh"], cont["CapAmb"], uid=1000)
        assert (mine["CapBnd"], mine["CapEff"], mine["CapPrm"], mine["CapInh"],
                mine["CapAmb"]) == want
        assert mine["CapAmb"] == 1 << caps.WAKE_ALARM
        with open_session(name, "docker") as s:
            for session_pid in (s.reaper, s.command, s.leftover):
                assert run_probe(b, ns_pid(session_pid), user="1000") == REFUSED
        with _control_target(b, user="1000") as target:
            assert run_probe(b, target, user="1000") == ALLOWED


def test_lxd_session_warns_it_is_unguarded() -> None:
    """LXD's root holds every capability in its user namespace, CAP_SYS_PTRACE included:
    no guard can help, and cntr says so in one line."""
    engine_container("lxd")
    out = run_cntr("attach", "-t", "lxd", "cntr-test-lxd", "--", "true")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stderr.decode() == (
        "cntr: warning: container cntr-test-lxd holds cap_sys_ptrace: its processes can "
        "trace the session's processes and read their memory\n")


def test_lxd_reaper_is_out_of_reach(probe: Path) -> None:
    """The documented limit, exactly: in LXD (CAP_SYS_PTRACE in the container's user
    namespace) the command is open to the container, but not the reaper, which is
    non-dumpable with memory from the host's user namespace."""
    engine_container("lxd")
    subprocess.run(["lxc", "file", "push", "-q", str(probe), f"cntr-test-lxd{PROBE}"],
                   capture_output=True, check=True)
    lxd = Box("lxc", "cntr-test-lxd", 0, ALLOWED)
    try:
        with open_session("cntr-test-lxd", "lxd") as s:
            assert run_probe(lxd, ns_pid(s.reaper)) == REFUSED
            assert run_probe(lxd, ns_pid(s.command)) == ALLOWED
    finally:
        subprocess.run(["lxc", "exec", "cntr-test-lxd", "--", "rm", "-f", PROBE],
                       check=False)


GUARD_USES = """
import ctypes, errno
libc = ctypes.CDLL(None, use_errno=True)
def err(ret):
    return "ok" if ret >= 0 else errno.errorcode[ctypes.get_errno()]
print("reboot", err(libc.syscall(169, 0xdead, 0, 0, 0)))  # bad magic: EINVAL if allowed
print("timerfd_create", err(libc.timerfd_create(9, 0)))  # CLOCK_BOOTTIME_ALARM
print("timerfd_create-boottime", err(libc.timerfd_create(7, 0)))  # CLOCK_BOOTTIME
print("kexec_load", err(libc.syscall(246, 0, 0, 0, 0)))
"""


def _guard_step(pid: int) -> dict[str, object]:
    ctx = run_cntr("capture", str(pid)).stdout
    plan = run_cntr("enter", "--dry-run", "--format", "json", input=ctx)
    assert plan.returncode == 0, plan.stderr.decode()
    step: dict[str, object] = next(s for s in json.loads(plan.stdout)
                                   if s["step"] == "capabilities")
    return step


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_guard_gives_the_session_nothing(engine: str) -> None:
    """What the guard capability (cap_wake_alarm) would allow is refused, as the container
    is refused it; reboot fails with EPERM before its magic is looked at."""
    c = engine_container(engine)
    out = run_cntr("attach", "-t", engine, c.ident, "--", "python3", "-c", GUARD_USES)
    assert out.returncode == 0, out.stderr.decode()
    # no kexec in this kernel: ENOSYS whoever asks (the capability is checked inside it)
    assert out.stdout.decode().splitlines() == [
        "reboot EPERM", "timerfd_create EPERM", "timerfd_create-boottime ok",
        "kexec_load ENOSYS"]
    step = _guard_step(c.pid)
    assert step["guard"] == "cap_wake_alarm"
    assert step["seccomp_refuses"] == [
        "timerfd_create(CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM)",
        "timer_create(CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM)"]
    assert step["unguarded"] is None


def test_sys_boot_guard_gives_the_session_nothing(probe: Path) -> None:
    """A container holding cap_wake_alarm: the guard is cap_sys_boot, whose reboot the
    filter refuses (a holder would get EINVAL for the bad magic) and the alarm clocks stay
    the container's; the container still cannot trace the session."""
    engine_container("docker")
    name = "cntr-process-takeover-wake"
    with _own_container("docker", name, "--cap-add", "WAKE_ALARM", "--security-opt",
                        "seccomp=unconfined") as pid:
        out = run_cntr("attach", "-t", "docker", name, "--", "python3", "-c", GUARD_USES)
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout.decode().splitlines() == [
            "reboot EPERM", "timerfd_create ok", "timerfd_create-boottime ok",
            "kexec_load EPERM"]
        step = _guard_step(pid)
        assert step["guard"] == "cap_sys_boot"
        assert step["seccomp_refuses"] == ["reboot", "kexec_load", "kexec_file_load"]
        subprocess.run(["docker", "cp", str(probe), f"{name}:{PROBE}"], check=True)
        b = Box("docker", name, pid, ALLOWED)
        with open_session(name, "docker") as s:
            assert run_probe(b, ns_pid(s.command)) == REFUSED
        with _control_target(b) as target:
            assert run_probe(b, target) == ALLOWED


@pytest.mark.parametrize("engine", ["docker", "podman"])
def test_session_still_debugs(engine: str) -> None:
    """strace and gdb from a session, on the container's pid 1 and on its own commands."""
    c = engine_container(engine)

    def sh(script: str) -> str:
        out = run_cntr("attach", "-t", engine, c.ident, "--", "/bin/sh", "-c", script,
                       timeout=120)
        assert out.returncode == 0, out.stderr.decode()
        return out.stdout.decode()

    # pid 1 sleeps in one syscall: strace shows it resumed, and detaches at the timeout.
    traced = sh("timeout 2 strace -p 1 2>&1; echo status=$?")
    assert "strace: Process 1 attached" in traced
    assert "strace: Process 1 detached" in traced
    assert traced.endswith("status=124\n")
    bt = sh("gdb -p 1 -batch -ex bt 2>&1; echo status=$?")
    assert re.search(r"^#0 ", bt, re.M), bt
    assert "[Inferior 1 (process 1) detached]" in bt and bt.endswith("status=0\n")
    own = sh("strace -f true 2>&1; echo status=$?")
    assert own.splitlines()[0].startswith('execve("'), own
    assert own.endswith("+++ exited with 0 +++\nstatus=0\n")
    run = sh("gdb -batch -ex run --args /bin/true 2>&1; echo status=$?")
    assert re.search(r"^\[Inferior 1 \(process \d+\) exited normally\]$", run, re.M), run
    assert run.endswith("status=0\n")
    assert Path(f"/proc/{c.pid}/stat").read_text().split()[2] == "S"  # pid 1 goes on
