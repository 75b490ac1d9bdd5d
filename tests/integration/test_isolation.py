"""No way in for the container: while a session runs, the container's own processes cannot
reach the host's files that serve-fs serves to the session, through any of the session
process's /proc links (root, cwd, fd, map_files), on every kind of container.

The refusal is "Permission denied" (EACCES).  On docker and podman the kernel itself may
refuse the /proc links first (a session process the container may not ptrace); the demo
container's probe runs with every capability (nsenter), so there only serve-fs's gate can
refuse: the control run, the same session with the gate switched off, reads the host's file.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import CNTR, REPO, Container

pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.engine]

HOST_ONLY = "/etc/debian_version"  # a host file the busybox containers do not have
PODMAN = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
# cntr with the isolation gate off (cntr.launch.SERVE_FS_ISOLATION): the control run
NO_GATE = [sys.executable, "-c", "import sys, cntr.launch as launch; "
           "launch.SERVE_FS_ISOLATION = False; from cntr.entry import main; "
           "sys.argv[0] = 'cntr'; main()"]


def in_container(c: Container, script: str) -> subprocess.CompletedProcess[str]:
    """Run a script as a process of the container itself (not of the session)."""
    if c.engine == "demo":
        cmd = ["nsenter", "-t", str(c.pid), "-a", "-r", "-w", "/bin/sh", "-c", script]
    else:
        cmd = [*({"docker": ["docker"], "podman": PODMAN}[c.engine]), "exec", c.ident,
               "/bin/sh", "-c", script]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=60, check=False)


def probes(pid: int) -> dict[str, str]:
    return {
        "root": f"cat /proc/{pid}/root{HOST_ONLY}",
        "root listing": f"ls /proc/{pid}/root/usr/bin/",
        "cwd": f"ls /proc/{pid}/cwd/",
        "fd": f"cat /proc/{pid}/fd/3",
        "map_files": f"for f in /proc/{pid}/map_files/*; do cat $f; done | head -c 1",
    }


def probe_session(c: Container, cntr: list[str]) -> dict[str, subprocess.CompletedProcess[str]]:
    """Start a session holding the host file open (fd 3) in a host directory (its cwd), probe
    its /proc links from the container, then check the session still reads the file."""
    assert in_container(c, f"cat {HOST_ONLY}").returncode != 0  # not in the container
    with subprocess.Popen(
        [*cntr, "attach", c.ident, "--", "/bin/sh", "-c",
         f"exec 3<{HOST_ONLY}; cd /usr/share; echo $$; read x; cat <&3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    ) as session:
        assert session.stdout is not None and session.stdin is not None
        pid = int(session.stdout.readline())
        try:
            seen = {what: in_container(c, script) for what, script in probes(pid).items()}
        finally:
            session.stdin.write(b"go\n")
            session.stdin.close()
        # The session itself still reads the host's file through the same descriptor.
        assert session.stdout.read() == Path(HOST_ONLY).read_bytes()
        assert session.wait(timeout=60) == 0
    return seen


def test_container_cannot_reach_the_sessions_host_view(container: Container) -> None:
    seen = probe_session(container, CNTR)
    for what, out in seen.items():
        assert out.stdout == "", f"{what}: the container read {out.stdout[:80]!r}"
        if what != "map_files":  # (a glob that matches nothing prints no error)
            assert "Permission denied" in out.stderr, (what, out.stderr)
            assert out.returncode != 0, what


def test_without_the_gate_the_container_reaches_it(demo: Container) -> None:
    """The control: on the demo only serve-fs's gate refuses, so with the gate off the same
    probes read the host's files."""
    seen = probe_session(demo, NO_GATE)
    host = Path(HOST_ONLY).read_text()
    assert (seen["root"].returncode, seen["root"].stdout) == (0, host), seen["root"].stderr
    assert (seen["fd"].returncode, seen["fd"].stdout) == (0, host), seen["fd"].stderr
    listing = sorted(p.name for p in Path("/usr/share").iterdir())
    assert sorted(seen["cwd"].stdout.split()) == listing
    assert seen["root listing"].returncode == 0
    assert "python3" in seen["root listing"].stdout.split()
