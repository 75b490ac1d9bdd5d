"""The attach pipeline end to end against real containers: the demo, docker and podman.

Each test runs ``cntr`` as a user would (a subprocess, through the console entry) and
checks what the user would look at: what the session shows, its exit status, its output
bytes, and that nothing is left on the host or in the container afterwards.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cntr.linux import caps
from tests.conftest import CNTR, REPO, Container, run_cntr

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def mount_points(pid: int | str) -> list[str]:
    """The mount table of a process as (mount point, fs type) lines, ids left out."""
    out = []
    for line in Path(f"/proc/{pid}/mountinfo").read_text().splitlines():
        fields = line.split()
        sep = fields.index("-")
        out.append(f"{fields[4]} {fields[sep + 1]} {fields[3]}")
    return sorted(out)


def cntr_processes() -> list[str]:
    """cntr processes still running: a session's serve-fs (named cntr-serve-fs) or the cntr
    command itself; serve-fs instances other tests start on their own are not ours, nor
    the cntr processes of another checkout's virtualenv (other developers on this machine:
    a session's serve-fs is a fork of its cntr, so it has the same command line)."""
    found = []
    me = os.getpid()
    ours = os.path.dirname(sys.executable) + "/"
    for entry in os.listdir("/proc"):
        if not entry.isdigit() or int(entry) == me:
            continue
        try:
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode()
        except OSError:
            continue
        if not cmd.startswith(ours):
            continue
        if comm == "cntr-serve-fs" or " -m cntr " in cmd or "/bin/cntr " in cmd:
            found.append(f"{entry}: {comm}: {cmd}")
    return found


def ns_pid(pid: int) -> int:
    """The pid of a host process inside its own pid namespace."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("NSpid:"):
            return int(line.split()[-1])
    raise AssertionError(f"no NSpid for {pid}")


def snapshot(c: Container) -> dict[str, object]:
    return {
        "host mounts": mount_points("self"),
        "container mounts": mount_points(c.pid),
        # (other tools of a developer's machine churn /tmp: their files are not cntr's)
        "tmp": sorted(n for n in os.listdir("/tmp") if not n.startswith(("bash_", "pytest"))),
        "base dir": sorted(os.listdir("/var/lib/cntr")) if os.path.isdir("/var/lib/cntr")
        else [],
        "container tmp": sorted(os.listdir(f"/proc/{c.pid}/root/tmp")),
        "processes": cntr_processes(),
    }


def attach(c: Container, *cmd: str, **kw: object) -> subprocess.CompletedProcess[bytes]:
    return run_cntr("attach", c.ident, "--", *cmd, **kw)  # type: ignore[arg-type]


def sh(c: Container, script: str) -> str:
    out = attach(c, "/bin/sh", "-c", script)
    assert out.returncode == 0, out.stderr.decode()
    return out.stdout.decode()


def test_host_tool_runs_in_session(container: Container) -> None:
    assert not os.path.exists(f"/proc/{container.pid}/root/usr/bin/python3")
    out = attach(container, "python3", "-c", "import socket; print(6 * 7)")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"42\n"


def test_hostname_and_files_are_the_containers(container: Container) -> None:
    lines = sh(container, 'hostname; echo "$(cat /var/lib/cntr/etc/hostname)"; '
                          'echo "$(cat /etc/hostname)"')
    assert lines.split() == [container.hostname] * 3


def test_container_root_is_at_base_dir(container: Container) -> None:
    listing = sh(container, "ls -a /var/lib/cntr").split()
    assert sorted(listing) == sorted([*os.listdir(f"/proc/{container.pid}/root"), ".", ".."])


def test_host_tree_grants_no_setuid_or_devices(container: Container) -> None:
    """The host's setuid programs and device nodes give nothing through the session's /."""
    fields = sh(container, "grep ' / / ' /proc/self/mountinfo").split()
    assert "fuse.cntr" in fields, fields
    assert {"nosuid", "nodev"} <= set(fields[5].split(",")), fields


def test_namespaces_are_the_containers(container: Container) -> None:
    kinds = ["net", "uts", "ipc", "pid", "cgroup", "mnt"]
    out = sh(container, "for k in " + " ".join(kinds) + "; do readlink /proc/self/ns/$k; done")
    seen = dict(zip(kinds, out.split(), strict=True))
    for kind in kinds[:-1]:
        assert seen[kind] == os.readlink(f"/proc/{container.pid}/ns/{kind}"), kind
    # The mount namespace is the session's own, nested one: neither the host's nor the
    # container's.
    assert seen["mnt"] != os.readlink(f"/proc/{container.pid}/ns/mnt")
    assert seen["mnt"] != os.readlink("/proc/self/ns/mnt")


def test_ps_shows_the_containers_processes(container: Container) -> None:
    nspid = ns_pid(container.pid)
    out = sh(container, "ls /proc | grep -E '^[0-9]+$'; echo self $$")
    pids = {int(x) for x in out.split() if x.isdigit()}
    assert nspid in pids
    # Only the container's pid namespace: far fewer than the host's processes, and the
    # session itself has a small pid there.
    host_pids = {int(x) for x in os.listdir("/proc") if x.isdigit()}
    assert len(pids) < len(host_pids)
    assert int(out.split("self")[1].split()[0]) in pids


def test_session_is_in_the_containers_cgroups(container: Container) -> None:
    nspid = ns_pid(container.pid)
    out = sh(container, f"cat /proc/self/cgroup; echo ===; cat /proc/{nspid}/cgroup")
    mine, theirs = out.split("===\n")
    assert mine.strip() and mine == theirs


def test_capabilities_are_within_the_containers(container: Container) -> None:
    """The container's sets plus the guard capability (issue 19: cntr.linux.caps)."""
    status = Path(f"/proc/{container.pid}/status").read_text()
    cont = {k: int(v, 16) for k, v in re.findall(r"(Cap\w+):\s+(\w+)", status)}
    out = sh(container, "grep Cap /proc/self/status")
    mine = {k: int(v, 16) for k, v in re.findall(r"(Cap\w+):\s+(\w+)", out)}
    want = caps.guarded_sets(cont["CapBnd"], cont["CapEff"], cont["CapPrm"], cont["CapInh"],
                             cont["CapAmb"], uid=0)
    assert (mine["CapBnd"], mine["CapEff"], mine["CapPrm"], mine["CapInh"],
            mine["CapAmb"]) == want
    assert mine["CapBnd"] & ~cont["CapBnd"] == 1 << caps.WAKE_ALARM


def test_container_environment_is_set(container: Container) -> None:
    name, value = container.env_var
    out = sh(container, f'echo "${name}"; echo "$PATH"')
    got, path = out.splitlines()
    assert got == value
    # the container's PATH, then the host's entries it lacks, then cntr's own directory
    environ = Path(f"/proc/{container.pid}/environ").read_bytes().split(b"\0")
    theirs = next((e[5:].decode() for e in environ if e.startswith(b"PATH=")),
                  "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    want = theirs.split(":")
    for p in [*os.environ["PATH"].split(":"), os.path.dirname(CNTR[0])]:
        if p and p not in want:
            want.append(p)
    assert path.split(":") == want


@pytest.mark.parametrize(("script", "code"), [("exit 7", 7), ("exit 0", 0),
                                              ("kill -TERM $$", 128 + 15),
                                              ("kill -KILL $$", 128 + 9)])
def test_exit_status_propagates(container: Container, script: str, code: int) -> None:
    out = attach(container, "/bin/sh", "-c", script)
    assert out.returncode == code, out.stderr.decode()


def test_piped_binary_output_is_byte_exact(container: Container) -> None:
    data = bytes(range(256)) * 4096 + b"\r\n\0\x1b[0m"
    out = attach(container, "python3", "-c",
                 "import sys; d = sys.stdin.buffer.read(); sys.stdout.buffer.write(d[::-1])",
                 input=data[::-1])
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == data


def test_exec_shows_the_containers_files(container: Container) -> None:
    out = run_cntr("exec", container.ident, "--", "cat", "/etc/os-release")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == Path(f"/proc/{container.pid}/root/etc/os-release").read_bytes()
    assert out.stdout != Path("/etc/os-release").read_bytes()


def test_exec_inside_a_session(container: Container) -> None:
    out = sh(container, "cntr exec cat /etc/os-release; echo ===; cat /etc/os-release")
    inside, host_view = out.split("===\n")
    assert inside == Path(f"/proc/{container.pid}/root/etc/os-release").read_text()
    assert host_view == Path("/etc/os-release").read_text()


def test_nothing_left_behind_and_container_untouched(container: Container) -> None:
    before = snapshot(container)
    with subprocess.Popen(
        [*CNTR, "attach", container.ident, "--", "/bin/sh", "-c",
         "echo ready; read line; echo $line > /tmp/cntr-written; echo done"],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO,
    ) as proc:
        assert proc.stdout is not None and proc.stdin is not None
        assert proc.stdout.readline() == b"ready\n"
        during = mount_points(container.pid)
        proc.stdin.write(b"hello\n")
        proc.stdin.close()
        assert proc.stdout.read() == b"done\n"
        assert proc.wait(timeout=30) == 0
    # The file the session wrote went to the host's /tmp (served), not the container's.
    written = Path("/tmp/cntr-written")
    assert written.read_text() == "hello\n"
    written.unlink()
    deadline = time.monotonic() + 10
    while cntr_processes() and time.monotonic() < deadline:
        time.sleep(0.05)
    after = snapshot(container)
    assert during == before["container mounts"]
    assert after == before


def test_pipeline_of_stages_matches_attach(container: Container) -> None:
    cntr = " ".join(CNTR)
    pipeline = subprocess.run(
        f"{cntr} resolve {container.ident} | {cntr} capture | "
        f"{cntr} enter -- /bin/sh -c 'hostname; echo ${container.env_var[0]}; exit 3'",
        shell=True, capture_output=True, cwd=REPO, timeout=60)
    direct = attach(container, "/bin/sh", "-c",
                    f"hostname; echo ${container.env_var[0]}; exit 3")
    assert pipeline.returncode == direct.returncode == 3, pipeline.stderr.decode()
    assert pipeline.stdout == direct.stdout == (
        f"{container.hostname}\n{container.env_var[1]}\n".encode())


def test_interactive_session_gets_a_pty(demo: Container) -> None:
    import fcntl
    import pty
    import struct
    import termios

    pid, fd = pty.fork()
    if pid == 0:
        os.chdir(REPO)
        os.execv(CNTR[0], [*CNTR, "attach", demo.ident, "--", "/bin/sh"])
    fcntl.ioctl(fd, termios.TIOCSWINSZ, struct.pack("HHHH", 33, 101, 0, 0))
    import select

    out = b""
    os.write(fd, b"test -t 0 && test -t 1 && echo tty-$((1+1)); stty size; "
                 b"echo marker-$((6*7)); exit 5\n")
    deadline = time.monotonic() + 30
    while (left := deadline - time.monotonic()) > 0 and select.select([fd], [], [], left)[0]:
        try:
            chunk = os.read(fd, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 5, out
    assert b"marker-42" in out
    assert b"tty-2" in out  # stdin and stdout are a terminal
    assert b"33 101" in out  # of the caller's size


def test_effective_user_owns_files_created_on_the_host(demo: Container) -> None:
    path = Path("/tmp/cntr-effective-user")
    path.unlink(missing_ok=True)
    out = run_cntr("attach", "--effective-user", "nobody", demo.ident, "--", "/bin/sh", "-c",
                   f"id -u; echo x > {path}; stat -c %u /var/lib/cntr")
    try:
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout.split()[0] == b"0"  # the session keeps the container's ids
        assert path.stat().st_uid == 65534
    finally:
        path.unlink(missing_ok=True)


def test_attach_to_a_process_of_the_host() -> None:
    """A plain process that shares cntr's own namespaces is a valid target too."""
    with subprocess.Popen(["sleep", "300"]) as proc:
        try:
            out = run_cntr("attach", str(proc.pid), "--", "/bin/sh", "-c",
                           "hostname; ls /var/lib/cntr/etc/os-release")
        finally:
            proc.kill()
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == [os.uname().nodename,
                                           "/var/lib/cntr/etc/os-release"]


def test_readme_demo_command_runs() -> None:
    """The README's first command, with a command instead of an interactive shell."""
    out = subprocess.run([REPO / "scripts/demo", "--", "/bin/sh", "-c",
                          "hostname; cat /var/lib/cntr/etc/hostname; echo $CNTR_DEMO"],
                         capture_output=True, timeout=300, check=False)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.split() == [b"cntr-demo", b"cntr-demo", b"hello"]
