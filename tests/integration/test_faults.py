"""Never harm the host or the container: faults, signals, load and hostile containers.

Each test checks that afterwards nothing is left: no mount in the host's or the
container's table, no cntr or serve-fs process, no file in /tmp or the container.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.engines.base import children
from tests.conftest import CNTR, REPO, Container, engine_container, run_cntr
from tests.integration.test_attach import cntr_processes, mount_points, snapshot

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def _start_demo(state: str, prepare: str = "") -> Container:
    """A demo container of its own (scripts/demo with another state directory)."""
    env = {**os.environ, "CNTR_DEMO_DIR": state}
    if prepare:
        subprocess.run([REPO / "scripts/busybox-rootfs", f"{state}/rootfs"], check=True)
        subprocess.run(["sh", "-c", prepare], cwd=f"{state}/rootfs", check=True)
    out = subprocess.run([REPO / "scripts/demo", "start"], env=env, capture_output=True,
                         text=True, timeout=60, check=True)
    pid = int(out.stdout.split()[-1])
    return Container("demo", str(pid), pid, "cntr-demo", ("CNTR_DEMO", "hello"))


def _stop_demo(state: str) -> None:
    subprocess.run([REPO / "scripts/demo", "stop"], env={**os.environ, "CNTR_DEMO_DIR": state},
                   timeout=60, check=False)
    shutil.rmtree(state, ignore_errors=True)


@pytest.fixture
def disposable() -> Iterator[Container]:
    """A demo container that a test may kill."""
    state = "/var/lib/cntr-demo-faults"
    _stop_demo(state)
    yield _start_demo(state)
    _stop_demo(state)


def wait_clean(c: Container, before: dict[str, object], timeout: float = 10) -> None:
    """Wait until the host and container look as before (processes end asynchronously)."""
    deadline = time.monotonic() + timeout
    while True:
        now = snapshot(c) if os.path.exists(f"/proc/{c.pid}") else None
        if now is not None and now == before:
            return
        if now is None and not cntr_processes():
            return
        if time.monotonic() > deadline:
            assert now == before
            assert not cntr_processes()
            return
        time.sleep(0.05)


def _session(c: Container, script: str, **kw: object) -> subprocess.Popen[bytes]:
    # **kw passes stdin and the like through; mypy cannot match it to Popen's overloads
    proc: subprocess.Popen[bytes] = subprocess.Popen(  # type: ignore[call-overload]
        [*CNTR, "attach", c.ident, "--", "/bin/sh", "-c", script],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO, **kw)
    return proc


def _serve_fs_of(cntr_pid: int) -> int:
    for child in children(cntr_pid):
        if Path(f"/proc/{child}/comm").read_text().strip() == "cntr-serve-fs":
            return child
    raise AssertionError("no serve-fs child")


def test_serve_fs_killed_mid_session(demo: Container) -> None:
    before = snapshot(demo)
    with _session(demo, "echo ready; read x; read l < /etc/os-release; echo rd=$?; echo alive",
                  stdin=subprocess.PIPE) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"ready\n"
        os.kill(_serve_fs_of(proc.pid), signal.SIGKILL)
        time.sleep(0.2)
        proc.stdin.write(b"go\n")
        proc.stdin.close()
        assert proc.stderr is not None
        out, err = proc.stdout.read(), proc.stderr.read()
        proc.wait(timeout=30)
    # The session's file operations fail (ENOTCONN), nothing hangs, the session exits: its
    # shell reports the error, or, when a page of the shell's own binary (a host file
    # served by serve-fs) was not yet in memory, the kernel ends it with SIGBUS.
    assert b"rd=0" not in out
    if proc.returncode == 0:
        assert out.endswith(b"alive\n"), err
        assert b"Transport endpoint is not connected" in err
    else:
        assert proc.returncode == 128 + signal.SIGBUS, err
    wait_clean(demo, before)


def test_container_exits_mid_session(disposable: Container) -> None:
    host_mounts = mount_points("self")
    with _session(disposable, "echo ready; sleep 100") as proc:
        assert proc.stdout is not None and proc.stderr is not None
        assert proc.stdout.readline() == b"ready\n"
        os.kill(disposable.pid, signal.SIGKILL)
        proc.wait(timeout=30)
        err = proc.stderr.read().decode()
    assert proc.returncode == 128 + signal.SIGKILL
    assert err.count("\n") == 1 and "container exited" in err
    deadline = time.monotonic() + 10
    while cntr_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    assert not cntr_processes()
    assert mount_points("self") == host_mounts


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP])
def test_signal_to_cntr_ends_the_session(demo: Container, sig: int) -> None:
    before = snapshot(demo)
    with _session(demo, "echo ready; sleep 100 & wait") as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(sig)
        proc.communicate(timeout=30)
    assert proc.returncode == 128 + sig
    wait_clean(demo, before)


def test_sigkill_of_cntr_leaves_nothing(demo: Container) -> None:
    """SIGKILL cannot be handled: the setup child notices (parent-death signal), kills the
    session's process group, and the kernel then drops the namespace and the mount, which
    ends serve-fs. Nothing is left for a later run to reap."""
    before = snapshot(demo)
    with _session(demo, "echo ready; sleep 100 & sleep 100 & wait") as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.kill()
        proc.communicate(timeout=30)
    wait_clean(demo, before)


@pytest.mark.parametrize("delay", [0.0, 0.05, 0.1, 0.15, 0.2, 0.3])
def test_signal_during_setup_leaves_nothing(demo: Container, delay: float) -> None:
    before = snapshot(demo)
    with _session(demo, "echo ran") as proc:
        time.sleep(delay)
        proc.send_signal(signal.SIGTERM)
        proc.communicate(timeout=30)
    # Finished before the signal (0), ended by it (143, or -15 before cntr set its
    # handlers), or stopped while setting up (137: the setup child ended on SIGTERM).
    assert proc.returncode in {0, 128 + signal.SIGTERM, -signal.SIGTERM, 137}
    wait_clean(demo, before)


@pytest.mark.engine
@pytest.mark.docker
def test_read_only_container_root() -> None:
    engine_container("docker")
    name = "cntr-test-readonly"
    subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)
    subprocess.run(["docker", "run", "-d", "--read-only", "--network", "none", "--name", name,
                    "--ulimit", "nofile=1024:1024", "cntr-busybox:test", "/bin/sleep",
                    "100000"], capture_output=True, check=True)
    try:
        out = run_cntr("attach", name, "--", "/bin/sh", "-c",
                       "ls /var/lib/cntr/bin/busybox; touch /var/lib/cntr/x 2>&1; echo ok")
        assert out.returncode == 0, out.stderr.decode()
        lines = out.stdout.decode().splitlines()
        assert lines[0] == "/var/lib/cntr/bin/busybox"
        assert "Read-only file system" in lines[1]
        assert lines[-1] == "ok"
    finally:
        subprocess.run(["docker", "rm", "-f", name], capture_output=True, check=False)


def test_hung_engine_fails_fast(tmp_path: Path) -> None:
    """A docker socket that accepts and never answers: resolve gives up with one line."""
    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(server.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept)
    t.start()
    try:
        out = run_cntr("resolve", "-t", "docker", "anything",
                       env={**os.environ, "DOCKER_HOST": f"unix://{path}", "PATH": "/nonexist"})
    finally:
        stop.set()
        t.join()
        for s in held:
            s.close()
        server.close()
    # (a resolve that waited for ever would end in run_cntr's timeout, a failure)
    assert (out.returncode, out.stderr.decode()) == (
        4, f"cntr: resolve: no container 'anything': docker: {path}: timed out\n")


def test_twenty_sessions_at_once(demo: Container) -> None:
    before = snapshot(demo)
    script = ('d=$(mktemp -d /tmp/cntr-load.XXXXXX) && i=0; while [ $i -lt 50 ]; do '
              'echo "$i $$" > $d/f$i; i=$((i+1)); done; '
              'cat $d/f* | wc -l; rm -r $d; hostname')
    procs = [_session(demo, script) for _ in range(20)]
    results = [p.communicate(timeout=240) for p in procs]
    for p, (out, err) in zip(procs, results, strict=True):
        assert p.returncode == 0, err.decode()
        assert out.split() == [b"50", b"cntr-demo"]
    wait_clean(demo, before, timeout=30)


def test_concurrent_writers_lose_nothing(demo: Container) -> None:
    """Several processes of one session write through one serve-fs at once."""
    before = snapshot(demo)
    # Four writer processes (the demo has no /dev/shm, so no multiprocessing locks).
    script = """
import hashlib, os, subprocess, sys, tempfile
if len(sys.argv) > 1:
    d, n = sys.argv[1], int(sys.argv[2])
    h = hashlib.sha256()
    for i in range(200):
        data = os.urandom(4096 + i)
        with open(f"{d}/w{n}-{i}", "wb") as f:
            f.write(data)
        with open(f"{d}/log{n}", "ab") as f:
            f.write(data[:64])
        h.update(data)
    print(h.hexdigest())
    sys.exit(0)
d = tempfile.mkdtemp(prefix="cntr-writers.", dir="/tmp")
procs = [subprocess.Popen([sys.executable, "-c", CODE, d, str(n)], stdout=subprocess.PIPE)
         for n in range(4)]
digests = [p.communicate()[0].decode().strip() for p in procs]
for n, want in enumerate(digests):
    h = hashlib.sha256()
    for i in range(200):
        with open(f"{d}/w{n}-{i}", "rb") as f:
            h.update(f.read())
    assert h.hexdigest() == want, n
    assert os.path.getsize(f"{d}/log{n}") == 200 * 64
import shutil; shutil.rmtree(d)
print("verified", len(digests) * 200)
"""
    script = f"CODE = {script!r}\n" + script
    out = run_cntr("attach", demo.ident, "--", "python3", "-c", script, timeout=240)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"verified 800\n"
    wait_clean(demo, before)


HOSTILE = """
rm -f etc/hostname etc/passwd && ln -s /etc/debian_version etc/hostname
ln -s ../../etc/shadow etc/passwd
mkdir -p var/lib && ln -s /etc var/lib/cntr
rm -rf tmp && ln -s /etc tmp
"""


def test_hostile_container_symlinks() -> None:
    """A container whose /etc/hostname, /etc/passwd, /var/lib/cntr and /tmp are symlinks
    to host paths: nothing of the host is bound or written through them."""
    state = "/var/lib/cntr-demo-hostile"
    _stop_demo(state)
    host_etc = sorted(os.listdir("/etc"))
    c = _start_demo(state, HOSTILE)
    try:
        out = run_cntr("attach", c.ident, "--", "/bin/sh", "-c",
                       "cat /etc/hostname; echo ===; head -1 /etc/passwd; echo ===; "
                       "ls /var/lib/cntr/tmp/ | head -3")
        assert out.returncode == 0, out.stderr.decode()
        hostname, passwd, _ = out.stdout.decode().split("===\n")
        # /etc/hostname -> /etc/debian_version resolves inside the container, where it does
        # not exist: the host's own /etc/hostname stays, never the host's debian_version.
        assert hostname == Path("/etc/hostname").read_text()
        assert passwd.split(":")[0] == Path("/etc/passwd").read_text().split(":")[0]
        assert sorted(os.listdir("/etc")) == host_etc
        assert not any(n.startswith("cntr") for n in os.listdir(f"/proc/{c.pid}/root/etc/"))
    finally:
        _stop_demo(state)


def test_job_control_in_interactive_session(demo: Container) -> None:
    import pty

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.environ["SHELL"] = "/bin/bash"
        os.execv(CNTR[0], [*CNTR, "attach", demo.ident])

    def expect(token: bytes, timeout: float = 20) -> bytes:
        import select

        got = b""
        deadline = time.monotonic() + timeout
        while token not in got:
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([fd], [], [], left)[0]:
                break
            try:
                got += os.read(fd, 4096)
            except OSError:
                break
        assert token in got, got
        return got

    os.write(fd, b"echo sh-$((1+1))\n")
    expect(b"sh-2")
    os.write(fd, b"sleep 2\n")
    time.sleep(1)
    os.write(fd, b"\x1a")  # Ctrl-Z stops the job
    expect(b"Stopped")
    os.write(fd, b"jobs\n")
    expect(b"sleep 2")
    os.write(fd, b"fg\n")  # resumes it; the next line runs once it has finished
    os.write(fd, b"echo jc-$((40+2))\n")
    expect(b"jc-42")
    os.write(fd, b"exit 0\n")
    _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert os.waitstatus_to_exitcode(status) == 0


def test_serve_fs_that_never_answers_times_out(demo: Container, tmp_path: Path) -> None:
    """serve-fs hung before it serves: enter gives up after its set-up time with one line,
    and leaves nothing behind.  serve-fs's log (CNTR_SERVE_FS_LOG) is a FIFO nobody reads,
    so serve-fs's first step, opening it, never returns: every time, however fast the
    session starts (stopping serve-fs from outside raced with its start)."""
    fifo = tmp_path / "serve-fs.log"
    os.mkfifo(fifo)
    before = snapshot(demo)
    env = {**os.environ, "CNTR_SETUP_TIMEOUT": "3", "CNTR_SERVE_FS_LOG": str(fifo)}
    with subprocess.Popen([*CNTR, "attach", demo.ident, "--", "true"], cwd=REPO, env=env,
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE) as proc:
        _, err = proc.communicate(timeout=60)
    assert proc.returncode == 125
    assert err.decode() == ("cntr: attach: the session was not ready within 3 s (serve-fs did "
                            "not answer); nothing ran\n")
    wait_clean(demo, before)
