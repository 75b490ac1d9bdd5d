"""Audit records of sessions, received on a /dev/log socket the test binds.

cntr runs in a private mount namespace whose /dev is a copy of the host's (device nodes
made again, directories and symlinks bound or copied) with the test's datagram socket
bound at /dev/log: nothing changes on the host's /dev, whether or not a log daemon
listens there.
"""

from __future__ import annotations

import json
import os
import re
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import CNTR, REPO, Container

# Runs in the new mount namespace: a tmpfs holding the host's /dev (but its log) and the
# socket, moved over /dev; then execs the command.
WITH_DEV_LOG = r"""
import os, stat, subprocess, sys
sock, new, argv = sys.argv[1], sys.argv[2], sys.argv[3:]
subprocess.run(["mount", "-t", "tmpfs", "-o", "mode=755", "cntr-test-dev", new], check=True)
for name in os.listdir("/dev"):
    if name == "log":
        continue
    src, dst = "/dev/" + name, new + "/" + name
    st = os.lstat(src)
    if stat.S_ISLNK(st.st_mode):
        os.symlink(os.readlink(src), dst)
    elif stat.S_ISCHR(st.st_mode) or stat.S_ISBLK(st.st_mode):
        os.mknod(dst, st.st_mode, st.st_rdev)
    elif stat.S_ISDIR(st.st_mode):
        os.mkdir(dst)
        subprocess.run(["mount", "--rbind", src, dst], check=True)
open(new + "/log", "w").close()
subprocess.run(["mount", "--bind", sock, new + "/log"], check=True)
subprocess.run(["mount", "--move", new, "/dev"], check=True)
os.execvp(argv[0], argv)
"""
FRAME = re.compile(rb"^<86>[A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d cntr\[(\d+)\]: @cee: (.*)$")


def run_with_log(sock_path: Path, *args: str, env: dict[str, str] | None = None,
                 ) -> subprocess.CompletedProcess[bytes]:
    newdev = sock_path.parent / "dev"
    newdev.mkdir(exist_ok=True)
    return subprocess.run(
        ["unshare", "-m", "--propagation", "private", sys.executable, "-c", WITH_DEV_LOG,
         str(sock_path), str(newdev), *CNTR, *args],
        capture_output=True, cwd=REPO, timeout=120, env=env, stdin=subprocess.DEVNULL)


@pytest.fixture
def log_socket(tmp_path: Path) -> Iterator[tuple[Path, socket.socket]]:
    path = tmp_path / "log"
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.bind(str(path))
    yield path, sock
    sock.close()


def received(sock: socket.socket) -> list[tuple[int, dict[str, object]]]:
    """Every record queued on ``sock``: (syslog PID, the JSON object)."""
    out: list[tuple[int, dict[str, object]]] = []
    sock.setblocking(False)
    while True:
        try:
            data = sock.recv(65536)
        except BlockingIOError:
            return out
        m = FRAME.match(data)
        assert m, data
        out.append((int(m.group(1)), json.loads(m.group(2))))


def loginuid() -> int | None:
    value = int(Path("/proc/self/loginuid").read_text())
    return None if value == 4294967295 else value


@pytest.mark.fuse
@pytest.mark.docker
def test_attach_sends_a_start_and_an_end_record(
        docker_container: Container, log_socket: tuple[Path, socket.socket]) -> None:
    path, sock = log_socket
    cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", docker_container.ident],
                         capture_output=True, text=True, check=True).stdout.strip()
    env = dict(os.environ, SUDO_USER="alice", SUDO_UID="1234")
    began = time.time()
    out = run_with_log(path, "attach", docker_container.ident, "--", "sh", "-c",
                       "echo in; exit 3", env=env)
    assert (out.returncode, out.stdout, out.stderr) == (3, b"in\n", b"")
    records = received(sock)
    assert len(records) == 2, records
    (pid1, start), (pid2, end) = records
    assert pid1 == pid2 == start["cntr_pid"]
    assert re.fullmatch(r"[0-9a-f]{16}", str(start["session"]))
    login = loginuid()
    assert start == {
        "event": "session-start", "session": start["session"], "kind": "attach",
        "cntr_pid": pid1, "uid": 0, "euid": 0, "sudo_user": "alice", "sudo_uid": 1234,
        "loginuid": login, "login_user": start["login_user"],
        "engine": "docker", "container_id": cid, "container_name": docker_container.ident,
        "container_pid": docker_container.pid, "command": ["sh", "-c", "echo in; exit 3"],
    }
    if login is not None:
        import pwd

        assert start["login_user"] == pwd.getpwuid(login).pw_name
    session_pid = end["session_pid"]
    assert isinstance(session_pid, int) and session_pid not in (pid1, docker_container.pid)
    duration = end.pop("duration_s")
    assert isinstance(duration, float)
    assert 0 < duration < time.time() - began
    assert end == {
        "event": "session-end", "session": start["session"], "kind": "attach",
        "cntr_pid": pid1, "uid": 0, "sudo_user": "alice", "loginuid": login,
        "engine": "docker", "container_id": cid, "container_name": docker_container.ident,
        "container_pid": docker_container.pid, "session_pid": session_pid,
        "exit_status": 3, "error": None,
    }


@pytest.mark.fuse
@pytest.mark.docker
def test_exec_and_a_failed_session_are_recorded(
        docker_container: Container, log_socket: tuple[Path, socket.socket]) -> None:
    path, sock = log_socket
    env = {k: v for k, v in os.environ.items() if not k.startswith("SUDO_")}
    out = run_with_log(path, "exec", docker_container.ident, "--", "/bin/true", env=env)
    assert (out.returncode, out.stderr) == (0, b"")
    out = run_with_log(path, "exec", docker_container.ident, "--", "/no/such", env=env)
    assert out.returncode == 127
    (_, start), (_, end), (_, start2), (_, end2) = received(sock)
    assert (start["kind"], start["command"], start["sudo_user"], start["sudo_uid"]) == (
        "exec", ["/bin/true"], None, None)
    assert (end["event"], end["exit_status"], end["error"]) == ("session-end", 0, None)
    assert (start2["command"], end2["exit_status"]) == (["/no/such"], 127)
    assert start2["session"] == end2["session"] != start["session"]


@pytest.mark.fuse
@pytest.mark.docker
def test_nobody_listening_is_silent(docker_container: Container,
                                    log_socket: tuple[Path, socket.socket]) -> None:
    path, sock = log_socket
    sock.close()  # the socket file stays: connecting to it is refused
    out = run_with_log(path, "attach", docker_container.ident, "--", "echo", "ok")
    assert (out.returncode, out.stdout, out.stderr) == (0, b"ok\n", b"")


@pytest.mark.fuse
def test_a_refused_session_records_cntrs_error(log_socket: tuple[Path, socket.socket],
                                                tmp_path: Path) -> None:
    path, sock = log_socket
    sleeper = subprocess.Popen(["sleep", "60"])
    ctx = tmp_path / "ctx"
    with ctx.open("wb") as f:
        subprocess.run([*CNTR, "capture", str(sleeper.pid)], stdout=f, check=True, cwd=REPO)
    sleeper.kill()
    sleeper.wait()
    out = run_with_log(path, "enter", "--context", str(ctx), "--", "true")
    assert out.returncode == 5
    message = out.stderr.decode().removeprefix("cntr: enter: ").rstrip("\n")
    (_, start), (_, end) = received(sock)
    assert (start["kind"], start["engine"], start["container_pid"], start["command"]) == (
        "enter", "process_id", sleeper.pid, ["true"])
    assert (end["exit_status"], end["error"], end["session_pid"]) == (5, message, None)
