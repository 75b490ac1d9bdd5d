"""No way in for the container: while a session runs, the container's own processes cannot
reach the host's files that serve-fs serves to the session, through any of the session
process's /proc links (root, cwd, fd, map_files)."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from tests.conftest import CNTR, REPO, Container

pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.engine]

HOST_ONLY = "/etc/debian_version"  # a host file the busybox container does not have


def in_container(c: Container, script: str) -> subprocess.CompletedProcess[str]:
    """Run a script as a process of the container itself (not of the session)."""
    return subprocess.run(["docker", "exec", c.ident, "/bin/sh", "-c", script],
                          capture_output=True, text=True, timeout=30, check=False)


def test_container_cannot_reach_the_sessions_host_view(docker_container: Container) -> None:
    c = docker_container
    assert in_container(c, f"cat {HOST_ONLY}").returncode != 0  # not in the container
    with subprocess.Popen(
        [*CNTR, "attach", c.ident, "--", "/bin/sh", "-c",
         f"exec 3<{HOST_ONLY}; cd /usr/share; echo $$; read x; cat <&3"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    ) as session:
        assert session.stdout is not None and session.stdin is not None
        pid = int(session.stdout.readline())
        try:
            attempts = {
                "root": f"cat /proc/{pid}/root{HOST_ONLY}",
                "root listing": f"ls /proc/{pid}/root/usr/bin/ | head -1",
                "cwd": f"ls /proc/{pid}/cwd/ | head -1",
                "fd": f"cat /proc/{pid}/fd/3",
                "map_files": f"for f in /proc/{pid}/map_files/*; do cat $f; done | head -c 1",
            }
            for what, script in attempts.items():
                out = in_container(c, script)
                assert out.stdout == "", f"{what}: the container read {out.stdout[:80]!r}"
        finally:
            session.stdin.write(b"go\n")
            session.stdin.close()
        # The session itself still reads the host's file through the same descriptor.
        assert session.stdout.read() == Path(HOST_ONLY).read_bytes()
        assert session.wait(timeout=30) == 0
