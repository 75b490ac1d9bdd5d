"""The session's reaper (issue 11): nothing of a session stays in the container's process
table, running or zombie, once the session and what it left running have ended.

The container's pid 1 is ``/bin/sleep`` without ``--init``: it never waits, so every
orphan the kernel gave it would stay a zombie (facts.md). The reaper is a subreaper in the
container's pid namespace, and orphans go to it instead.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CNTR, REPO, Container, engine_container, run_cntr
from tests.integration.test_attach import mount_points

pytestmark = [pytest.mark.root, pytest.mark.fuse]

NAME = "cntr-process-zombie"


@pytest.fixture(scope="module")
def zombie_box() -> Iterator[Container]:
    """A docker container whose pid 1 never reaps (no --init)."""
    engine_container("docker")
    subprocess.run(["docker", "rm", "-f", NAME], capture_output=True, check=False)
    subprocess.run(["docker", "run", "-d", "--network", "none", "--name", NAME,
                    "cntr-busybox:test", "/bin/sleep", "100000"], capture_output=True,
                   check=True)
    try:
        out = subprocess.run(["docker", "inspect", "--format", "{{.State.Pid}}", NAME],
                             capture_output=True, text=True, check=True)
        pid = int(out.stdout)
        yield Container("docker", NAME, pid, NAME, ("", ""))
    finally:
        subprocess.run(["docker", "rm", "-f", NAME], capture_output=True, check=True)


def table(c: Container) -> list[tuple[str, str]]:
    """The container's process table as (state, command line), read on the host from
    /proc/*/stat of the processes in its pid namespace."""
    ns = os.readlink(f"/proc/{c.pid}/ns/pid")
    out = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            if os.readlink(f"/proc/{entry}/ns/pid") != ns:
                continue
            stat = Path(f"/proc/{entry}/stat").read_bytes()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
        except OSError:
            continue
        state = stat[stat.rindex(b")") + 2:].split()[0].decode()
        out.append((state, cmd.replace(b"\0", b" ").decode().strip()))
    return sorted(out)


def zombies(c: Container) -> int:
    return sum(state == "Z" for state, _ in table(c))


def ours() -> list[str]:
    """Host processes of our sessions still running (cntr, serve-fs, setup child)."""
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmd = Path(f"/proc/{entry}/cmdline").read_bytes()
            except OSError:
                continue
            if b"\0attach\0" in cmd and b"\0" + NAME.encode() + b"\0" in cmd:
                found.append(f"{entry}: {cmd!r}")
    return found


def settle(c: Container, want: list[tuple[str, str]], timeout: float = 20) -> None:
    """Wait until the container's table is ``want`` and our processes are gone: leftovers
    end (and are reaped) on their own time."""
    deadline = time.monotonic() + timeout
    while (table(c) != want or ours()) and time.monotonic() < deadline:
        time.sleep(0.05)
    assert table(c) == want
    assert ours() == []


ORPHANS = """
sleep 0.3 &
(sleep 0.3 &)
python3 -c 'import os, time
if os.fork() == 0 and os.fork() == 0:
    time.sleep(0.3)'
echo done
"""


def test_orphans_of_seven_sessions_leave_no_zombie(zombie_box: Container) -> None:
    before = table(zombie_box)
    assert before == [("S", "/bin/sleep 100000")]
    for _ in range(7):
        out = run_cntr("attach", "-t", "docker", NAME, "--", "/bin/sh", "-c", ORPHANS)
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout == b"done\n"
    out = run_cntr("attach", "-t", "docker", NAME, "--", "/bin/sh", "-c",
                   "gdb -p 1 -batch -ex bt >/dev/null 2>&1; echo $?")
    assert out.stdout == b"0\n", out.stderr.decode()
    settle(zombie_box, before)
    assert zombies(zombie_box) == 0


def test_status_is_the_commands_while_leftovers_run(zombie_box: Container) -> None:
    """cntr returns the command's status when it ends; what it left keeps the session
    (cntr says so) until it ends, then nothing of it remains."""
    before = table(zombie_box)
    out = run_cntr("attach", "-t", "docker", NAME, "--", "/bin/sh", "-c",
                   "sleep 1000 >/dev/null 2>&1 & exit 5")
    assert out.returncode == 5
    assert out.stderr == b"cntr: serve-fs keeps serving processes still running in the session\n"
    during = table(zombie_box)
    assert ("S", "sleep 1000") in during
    # The reaper waits for it, in the container's pid namespace (its parent is cntr's
    # setup child, outside: ps shows a parent pid of 0).
    reaper = [cmd for state, cmd in during if "-m cntr" in cmd or "cntr attach" in cmd]
    assert len(reaper) == 1, during
    ns = os.readlink(f"/proc/{zombie_box.pid}/ns/pid")
    for entry in os.listdir("/proc"):
        with contextlib.suppress(OSError):
            if (entry.isdigit() and os.readlink(f"/proc/{entry}/ns/pid") == ns
                    and Path(f"/proc/{entry}/cmdline").read_bytes() == b"sleep\0001000\0"):
                os.kill(int(entry), signal.SIGTERM)
    settle(zombie_box, before)
    assert zombies(zombie_box) == 0


def test_hundred_short_sessions_leave_nothing(zombie_box: Container) -> None:
    before = table(zombie_box)
    mounts = mount_points(zombie_box.pid)
    for i in range(100):
        out = run_cntr("attach", "-t", "docker", NAME, "--", "/bin/sh", "-c",
                       f"echo {i} & wait")
        assert (out.returncode, out.stdout) == (0, f"{i}\n".encode()), out.stderr.decode()
    settle(zombie_box, before)
    assert zombies(zombie_box) == 0
    assert mount_points(zombie_box.pid) == mounts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGKILL])
def test_stopped_session_leaves_no_zombie(zombie_box: Container, sig: int) -> None:
    """cntr told to stop (the signal is forwarded) or SIGKILLed (the setup child's
    parent-death signal): every process of the session is killed and reaped, jobs that
    ignore the signal (sh's background jobs ignore SIGINT) and orphans included."""
    before = table(zombie_box)
    script = "(sleep 100 &); sleep 100 & echo ready; wait"
    with subprocess.Popen([*CNTR, "attach", "-t", "docker", NAME, "--", "/bin/sh", "-c",
                           script], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          cwd=REPO) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(sig)
        proc.communicate(timeout=30)
    assert proc.returncode == (-sig if sig == signal.SIGKILL else 128 + sig)
    settle(zombie_box, before)
    assert zombies(zombie_box) == 0
