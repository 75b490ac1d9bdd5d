"""Offline sessions on real docker and podman containers that are not running: a container
that exits at start because a file is missing is fixed in a session and then starts; a
created-never-started container; an image; --read-only; a start during a session; the
pipeline resolve | capture | enter; bad input.  Containers are named cntr-offline-* and
removed at teardown."""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.linux import caps
from tests.conftest import CNTR, REPO, engine_container, run_cntr
from tests.integration.test_attach_plan import planned_and_done

pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.engine]

FAILING = "test -f /etc/app.conf || exit 3; exec sleep 100000"
"""The container's command: exit 3 at start unless /etc/app.conf exists."""

CLI = {
    "docker": ["/usr/bin/docker"],
    "podman": ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"],
}
IMAGE = {"docker": "cntr-busybox:test", "podman": "localhost/cntr-busybox:test"}
# scripts/engines' limits: this machine has no CAP_SYS_RESOURCE for the engines' defaults
LIMITS = ["--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000"]


def engine_cmd(engine: str, *args: str, check: bool = True) -> str:
    out = subprocess.run([*CLI[engine], *args], capture_output=True, text=True, timeout=120)
    if check:
        assert out.returncode == 0, out.stderr
    return out.stdout.strip()


def inspect(engine: str, name: str, template: str) -> str:
    return engine_cmd(engine, "inspect", "-f", template, name)


def host_mounts() -> str:
    with open("/proc/self/mountinfo") as f:
        return f.read()


@pytest.fixture(params=["docker", "podman"])
def engine(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    engine_container(name)  # the engine runs (and its test image exists)
    return name


@pytest.fixture
def stopped(engine: str) -> Iterator[tuple[str, str]]:
    """A container of ``engine`` that exited with status 3 at its start."""
    name = f"cntr-offline-{uuid.uuid4().hex[:8]}"
    engine_cmd(engine, "create", "--name", name, "--network", "none", *LIMITS,
               IMAGE[engine], "sh", "-c", FAILING)
    try:
        engine_cmd(engine, "start", name, check=False)
        for _ in range(100):
            if inspect(engine, name, "{{.State.Status}}") == "exited":
                break
            time.sleep(0.1)
        assert inspect(engine, name, "{{.State.ExitCode}}") == "3"
        yield engine, name
    finally:
        engine_cmd(engine, "rm", "-f", name, check=False)


@pytest.fixture
def created(engine: str) -> Iterator[tuple[str, str]]:
    """A container of ``engine`` that was created and never started."""
    name = f"cntr-offline-{uuid.uuid4().hex[:8]}"
    engine_cmd(engine, "create", "--name", name, "--network", "none", "--env", "APP=web",
               "--workdir", "/tmp", "--hostname", "offline-host", "--user", "nobody",
               *LIMITS, IMAGE[engine], "sh", "-c", FAILING)
    try:
        yield engine, name
    finally:
        engine_cmd(engine, "rm", "-f", name, check=False)


def layer_dirs(engine: str, name: str) -> list[str]:
    return [inspect(engine, name, "{{.GraphDriver.Data.UpperDir}}")]


def assert_nothing_left(engine: str, name: str) -> None:
    mounts = host_mounts()
    for d in layer_dirs(engine, name):
        assert d.rsplit("/", 1)[0] not in mounts
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert f"export {name}" not in procs


def test_a_fix_made_offline_lets_the_container_start(stopped: tuple[str, str]) -> None:
    engine, name = stopped
    out = run_cntr("attach", name, "--", "/bin/sh", "-c",
                   "echo fixed > /var/lib/cntr/etc/app.conf; hostname; "
                   "cat /proc/1/status | head -1; cntr exec cat /etc/app.conf")
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert lines[0] == inspect(engine, name, "{{.Config.Hostname}}")
    assert lines[2] == "fixed"  # the container's own cat, in its own root
    assert out.stderr.decode() == (
        f"cntr: container {name} is not running (exited, exit code 3): offline session "
        "over its filesystem in new namespaces, changes stay in the container\n")
    assert_nothing_left(engine, name)
    engine_cmd(engine, "start", name)
    time.sleep(1)
    assert inspect(engine, name, "{{.State.Status}}") == "running"
    assert engine_cmd(engine, "exec", name, "cat", "/etc/app.conf") == "fixed"


def test_a_created_container_has_its_configuration(created: tuple[str, str]) -> None:
    engine, name = created
    script = ("hostname; id -u; id -g; pwd; echo $APP; ls /sys/class/net; "
              "grep -c . /proc/self/status >/dev/null && echo proc; "
              "grep CapBnd /proc/self/status")
    out = run_cntr("attach", name, "--", "/bin/sh", "-c", script)
    assert out.returncode == 0, out.stderr.decode()
    lines = out.stdout.decode().splitlines()
    assert lines[:6] == ["offline-host", "65534", "65534", "/var/lib/cntr/tmp", "web", "lo"]
    assert lines[6] == "proc"
    want = 0xa80425fb if engine == "docker" else 0x800405fb
    guard = caps.guard_bit(want, 0)  # the one capability a session holds beyond its container
    assert int(lines[7].split()[1], 16) == want | (1 << guard if guard is not None else 0)
    assert "(created)" in out.stderr.decode()
    assert_nothing_left(engine, name)


def test_read_only_leaves_no_change(stopped: tuple[str, str]) -> None:
    engine, name = stopped
    upper = layer_dirs(engine, name)[0]
    before = subprocess.run(["find", upper], capture_output=True, text=True).stdout
    out = run_cntr("attach", "--read-only", name, "--", "/bin/sh", "-c",
                   "echo x > /var/lib/cntr/etc/app.conf; rm /var/lib/cntr/bin/ls; "
                   "cat /var/lib/cntr/etc/app.conf")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"x\n"
    assert "changes are thrown away" in out.stderr.decode()
    after = subprocess.run(["find", upper], capture_output=True, text=True).stdout
    assert after == before
    assert_nothing_left(engine, name)


def test_an_image(engine: str) -> None:
    out = run_cntr("attach", "--image", IMAGE[engine], "--", "/bin/sh", "-c",
                   "head -1 /var/lib/cntr/etc/passwd; touch /var/lib/cntr/made")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"root:x:0:0:root:/root:/bin/sh\n"
    assert out.stderr.decode() == (
        f"cntr: image {IMAGE[engine]} is not a container: offline session over its layers, "
        "changes are thrown away\n")


def test_start_during_a_session_ends_it_and_keeps_the_container(
        stopped: tuple[str, str]) -> None:
    engine, name = stopped
    result: list[subprocess.CompletedProcess[bytes]] = []
    session = threading.Thread(target=lambda: result.append(run_cntr(
        "attach", name, "--", "/bin/sh", "-c",
        "echo fixed > /var/lib/cntr/etc/app.conf; touch /tmp/cntr-offline-ready; sleep 60")))
    session.start()
    for _ in range(300):
        if subprocess.run(["test", "-e", "/tmp/cntr-offline-ready"]).returncode == 0:
            break
        time.sleep(0.1)
    subprocess.run(["rm", "-f", "/tmp/cntr-offline-ready"], check=True)
    engine_cmd(engine, "start", name)
    session.join(timeout=60)
    (out,) = result
    assert out.returncode == 9, out.stderr.decode()
    assert out.stderr.decode().splitlines()[-1] == (
        f"cntr: attach: container {name} was started: the offline session ended")
    assert inspect(engine, name, "{{.State.Status}}") == "running"
    assert engine_cmd(engine, "exec", name, "cat", "/etc/app.conf") == "fixed"


def test_the_pipeline_builds_the_same_session(stopped: tuple[str, str]) -> None:
    engine, name = stopped
    resolved = run_cntr("resolve", name, "--format", "json")
    assert resolved.returncode == 0, resolved.stderr.decode()
    record = json.loads(resolved.stdout)
    assert (record["version"], record["pid"], record["offline"]["state"]) == (2, 0, "exited")
    ctx = run_cntr("capture", input=resolved.stdout)
    assert ctx.returncode == 0, ctx.stderr.decode()
    out = run_cntr("enter", "--", "/bin/sh", "-c", "hostname; ls /var/lib/cntr/etc/passwd",
                   input=ctx.stdout)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().splitlines() == [
        inspect(engine, name, "{{.Config.Hostname}}"), "/var/lib/cntr/etc/passwd"]
    assert_nothing_left(engine, name)


def test_ps_all_lists_the_stopped_container(stopped: tuple[str, str]) -> None:
    engine, name = stopped
    out = run_cntr("ps", "--all", "--json", "-t", engine)
    assert out.returncode == 0, out.stderr.decode()
    (entry,) = [m for m in json.loads(out.stdout) if m["name"] == name]
    assert (entry["pid"], entry["state"]) == (0, "exited")
    plain = run_cntr("ps", "--json", "-t", engine)
    assert name not in plain.stdout.decode()


def test_bad_input(engine: str) -> None:
    out = run_cntr("attach", "--image", "cntr-offline-nosuch:none", "-t", engine, "--", "true")
    assert out.returncode == 4
    assert out.stderr.decode() == (
        f"cntr: attach: no image 'cntr-offline-nosuch:none': {engine}: no such image\n")


def test_a_container_removed_before_the_session(stopped: tuple[str, str]) -> None:
    engine, name = stopped
    resolved = run_cntr("resolve", name)
    ctx = run_cntr("capture", input=resolved.stdout)
    engine_cmd(engine, "rm", "-f", name)
    out = run_cntr("enter", "--", "true", input=ctx.stdout)
    assert out.returncode == 4, out.stderr.decode()
    assert len(out.stderr.decode().splitlines()) == 1
    assert out.stderr.decode().startswith("cntr: enter: ")


def test_replaying_a_gone_process_offline(engine: str, tmp_path: Path) -> None:
    name = f"cntr-offline-{uuid.uuid4().hex[:8]}"
    engine_cmd(engine, "run", "-d", "--name", name, "--network", "none", "--env",
               "SAVED=yes", *LIMITS, IMAGE[engine], "sleep", "100000")
    try:
        saved = tmp_path / "ctx.json"
        resolved = run_cntr("resolve", name)
        ctx = run_cntr("capture", "--format", "json", input=resolved.stdout)
        assert ctx.returncode == 0, ctx.stderr.decode()
        saved.write_bytes(ctx.stdout)
        engine_cmd(engine, "stop", "-t", "1", name)
        refused = run_cntr("enter", "--context", str(saved), "--", "true")
        assert refused.returncode == 5
        out = run_cntr("enter", "--offline", "--context", str(saved), "--", "/bin/sh", "-c",
                       "echo $SAVED; id -u")
        assert out.returncode == 0, out.stderr.decode()
        assert out.stdout == b"yes\n0\n"
        engine_cmd(engine, "rm", "-f", name)
        gone = run_cntr("enter", "--offline", "--context", str(saved), "--", "true")
        assert gone.returncode == 4
        assert len(gone.stderr.decode().splitlines()) == 1
    finally:
        engine_cmd(engine, "rm", "-f", name, check=False)


@pytest.fixture
def lxc_stopped(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An LXC container that was created and never started, its root a copy of the test
    container's."""
    engine_container("lxc")
    name = f"cntr-offline-{uuid.uuid4().hex[:8]}"
    base = Path("/var/lib") / name
    subprocess.run(["cp", "-a", "/var/lib/cntr-test/lxc/rootfs", str(base)], check=True)
    conf = tmp_path / "config"
    conf.write_text(f"lxc.rootfs.path = dir:{base}\nlxc.uts.name = offline-lxc\n"
                    "lxc.net.0.type = empty\nlxc.cap.drop = sys_module sys_time\n"
                    "lxc.environment = APP=lxc\nlxc.init.cmd = /bin/sleep 100000\n")
    try:
        subprocess.run(["lxc-create", "-n", name, "-t", "none", "-f", str(conf)],
                       check=True, capture_output=True)
        yield name, base
    finally:
        subprocess.run(["lxc-destroy", "-n", name], capture_output=True)
        subprocess.run(["rm", "-rf", str(base)], check=True)


def test_a_stopped_lxc_container(lxc_stopped: tuple[str, Path]) -> None:
    name, root = lxc_stopped
    out = run_cntr("attach", name, "--", "/bin/sh", "-c",
                   "hostname; echo $APP; echo hi > /var/lib/cntr/made")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"offline-lxc\nlxc\n"
    assert (root / "made").read_text() == "hi\n"
    assert "(stopped)" in out.stderr.decode()
    ro = run_cntr("attach", "--read-only", name, "--", "/bin/sh", "-c",
                  "rm /var/lib/cntr/made")
    assert ro.returncode == 0, ro.stderr.decode()
    assert (root / "made").exists()
    assert str(root) not in host_mounts()


def test_dry_run_of_an_offline_context(created: tuple[str, str], tmp_path: Path) -> None:
    """The plan of an offline session, and the session carrying out exactly that plan."""
    engine, name = created
    resolved = run_cntr("resolve", name)
    ctx = run_cntr("capture", input=resolved.stdout)
    out = run_cntr("enter", "--dry-run", "--format", "json", "--", "true", input=ctx.stdout)
    assert out.returncode == 0, out.stderr.decode()
    steps = json.loads(out.stdout)
    plan, done, code, err = planned_and_done(ctx.stdout, tmp_path / "log", "--", "true")
    assert (code, done) == (0, plan), err.decode()
    assert plan == steps
    kinds = [s["step"] for s in steps]
    assert kinds[0] == "hold" and steps[0]["engine"] == engine
    assert kinds.index("unshare", kinds.index("pivot_root")) < kinds.index("fork")
    assert kinds[kinds.index("fork") + 1] == "mount"
    assert not [s for s in steps if s["step"] in ("bind", "mount") and s.get("target") == "/proc"]
    ids = next(s for s in steps if s["step"] == "ids")
    assert (ids["uid"], ids["gid"]) == (65534, 65534)
    assert_nothing_left(engine, name)


@pytest.fixture
def containerd_stopped() -> Iterator[str]:
    """A containerd container that has no task (created with ctr, never started)."""
    engine_container("containerd")
    name = f"cntr-offline-{uuid.uuid4().hex[:8]}"
    subprocess.run(["ctr", "-n", "default", "containers", "create", "--env", "APP=ctrd",
                    "docker.io/library/cntr-busybox:test", name, "--", "sh", "-c", "exit 3"],
                   check=True, capture_output=True, timeout=60)
    try:
        yield name
    finally:
        subprocess.run(["ctr", "-n", "default", "containers", "rm", name],
                       capture_output=True, timeout=60)


def test_a_containerd_container_without_a_task(containerd_stopped: str) -> None:
    name = containerd_stopped
    listed = run_cntr("ps", "--all", "--json", "-t", "containerd")
    assert {"engine": "containerd", "container_id": name, "name": name, "pid": 0,
            "state": "stopped"} in json.loads(listed.stdout)
    refused = run_cntr("attach", "-t", "containerd", name, "--", "true")
    assert refused.returncode == 7
    assert refused.stderr.decode().splitlines()[-1] == (
        "cntr: attach: containerd would mount the container's layer a second time when it "
        "starts it, and overlayfs would not stop it: only --read-only sessions here")
    out = run_cntr("attach", "-t", "containerd", "--read-only", name, "--", "/bin/sh", "-c",
                   "echo $APP; hostname; touch /var/lib/cntr/made; ls /var/lib/cntr/made")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode() == f"ctrd\n{name}\n/var/lib/cntr/made\n"
    again = run_cntr("attach", "-t", "containerd", "--read-only", name, "--", "/bin/sh", "-c",
                     "ls /var/lib/cntr/made")
    assert again.returncode != 0  # thrown away
    assert b"No such file or directory" in again.stderr


def test_sigkill_of_cntr_leaves_no_hold(stopped: tuple[str, str]) -> None:
    engine, name = stopped
    with subprocess.Popen([*CNTR, "attach", name, "--", "/bin/sh", "-c",
                           "echo ready; sleep 60"],
                          stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=REPO) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.kill()
        proc.wait()
    merged = "" if engine == "docker" else "mounted"
    for _ in range(100):
        if engine == "docker":
            merged = inspect(engine, name, "{{.GraphDriver.Data.MergedDir}}")
            if merged.rsplit("/", 1)[0] not in host_mounts():
                break
        elif inspect(engine, name, "{{.Id}}")[:12] not in engine_cmd(engine, "mount"):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"{engine} still holds {name}'s layer")
    engine_cmd(engine, "start", name)  # and it starts on its own mount as usual


@pytest.fixture
def lxd_stopped() -> Iterator[str]:
    """An LXD container that ran once (so LXD shifted its files to its id map) and stopped."""
    engine_container("lxd")
    name = f"cntr-offline-{uuid.uuid4().hex[:8]}"

    def lxc(*args: str) -> None:
        subprocess.run(["lxc", *args], check=True, capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=120)

    try:
        lxc("init", "cntr-busybox", name, "-c", "environment.APP=lxd",
            "-c", "limits.kernel.nofile=1024", "-c", "limits.kernel.nproc=1000",
            "-c", "raw.lxc=lxc.init.cmd=/bin/sleep 100000\nlxc.uts.name=offline-lxd")
        lxc("start", name)
        lxc("stop", "-f", name)
        yield name
    finally:
        subprocess.run(["lxc", "delete", "-f", name], capture_output=True,
                       stdin=subprocess.DEVNULL, timeout=120)


def test_a_stopped_lxd_container_in_its_user_namespace(lxd_stopped: str) -> None:
    name = lxd_stopped
    root = Path("/var/lib/lxd/storage-pools/default/containers") / name / "rootfs"
    shifted = root.joinpath("etc/passwd").stat().st_uid
    assert shifted != 0  # LXD shifted the files when it started it
    out = run_cntr("attach", name, "--", "/bin/sh", "-c",
                   "hostname; echo $APP; id -u; stat -c %u /var/lib/cntr/etc/passwd; "
                   "touch /var/lib/cntr/made")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"offline-lxd\nlxd\n0\n0\n"
    assert root.joinpath("made").stat().st_uid == shifted  # the container's root owns it
    assert "(stopped)" in out.stderr.decode()


def test_exec_from_the_host_runs_the_containers_command(created: tuple[str, str]) -> None:
    engine, name = created
    out = run_cntr("exec", name, "--", "/bin/sh", "-c", "id -u; grep ^ID= /etc/os-release")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"65534\nID=busybox\n"
    assert_nothing_left(engine, name)


def test_a_container_removed_during_the_session(created: tuple[str, str]) -> None:
    engine, name = created
    result: list[subprocess.CompletedProcess[bytes]] = []
    session = threading.Thread(target=lambda: result.append(run_cntr(
        "attach", name, "--", "/bin/sh", "-c", "touch /tmp/cntr-offline-rm-ready; sleep 60")))
    session.start()
    for _ in range(300):
        if subprocess.run(["test", "-e", "/tmp/cntr-offline-rm-ready"]).returncode == 0:
            break
        time.sleep(0.1)
    subprocess.run(["rm", "-f", "/tmp/cntr-offline-rm-ready"], check=True)
    engine_cmd(engine, "rm", "-f", name)
    session.join(timeout=60)
    (out,) = result
    assert out.returncode == 9, out.stderr.decode()
    assert out.stderr.decode().splitlines()[-1] == (
        f"cntr: attach: container {name} was removed: the offline session ended")


def test_network_host(created: tuple[str, str]) -> None:
    _, name = created
    host = sorted(os.listdir("/sys/class/net"))
    out = run_cntr("attach", "--network", "host", name, "--", "ls", "/sys/class/net")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout.decode().split() == host
