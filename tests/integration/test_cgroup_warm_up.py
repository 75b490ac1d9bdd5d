"""`cntr.linux.cgroups.warm_up`: the migrations that keep the cgroup lock ready move
nothing, and end (with their thread) when told to, or by themselves."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tests.conftest import REPO

pytestmark = [pytest.mark.root]

PROBE = """
import os, sys, time
from cntr.linux import cgroups

def cgroup():
    with open("/proc/self/cgroup") as f:
        return f.read()

def threads():
    return len(os.listdir("/proc/self/task"))

def settled():
    # warmed() returns once the thread let it: the thread itself then only returns
    for _ in range(100):
        if threads() == 1:
            break
        time.sleep(0.01)
    return threads()

before = cgroup()
cgroups.WARM_FOR = float(sys.argv[1])
cgroups.warm_up()
cgroups.warm_up()  # idempotent: one thread
print(threads())
time.sleep(0.05)
if sys.argv[2] == "stop":
    cgroups.warmed()
elif sys.argv[2] == "fork":  # the thread ends before a fork copies the process
    pid = os.fork()
    if pid == 0:
        os._exit(threads())
    print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]), end=" ")
else:
    time.sleep(cgroups.WARM_FOR + 0.1)
print(settled(), cgroup() == before)
"""


def probe(warm_for: float, how: str) -> list[str]:
    out = subprocess.run([sys.executable, "-c", PROBE, str(warm_for), how], capture_output=True,
                         text=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()


def test_warm_up_moves_nothing_and_its_thread_ends_when_told() -> None:
    assert probe(10.0, "stop") == ["2", "1", "True"]


def test_warm_up_ends_by_itself() -> None:
    assert probe(0.1, "wait") == ["2", "1", "True"]


def test_warm_up_ends_before_a_fork() -> None:
    assert probe(10.0, "fork") == ["2", "1", "1", "True"]
