"""The session's files are the container's (issue 17): passwd, group, hosts, resolv.conf,
hostname and localtime byte for byte against the container's own, read on the host through
``/proc/PID/root`` as the container resolves them; ``/proc``, ``/dev`` and ``/sys`` by the
device and inode of their roots. On the demo, docker and podman, and on a docker container
whose every one of these files is a bind mount of its own (localtime included); and a
container whose files are symlinks aimed at host paths shows none of the host's."""

from __future__ import annotations

import base64
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.context import BOUND_FILES
from cntr.linux.mounts import open_in_container
from tests.conftest import REPO, Container, engine_container, run_cntr

pytestmark = [pytest.mark.root, pytest.mark.fuse]

DOCKER = "/usr/bin/docker" if Path("/usr/bin/docker").exists() else "docker"
KERNEL_DIRS = ("proc", "dev", "sys")
PROBE = """
import base64, json, os
out = {}
for rel in FILES:
    try:
        with open("/" + rel, "rb") as f:
            out[rel] = base64.b64encode(f.read()).decode()
    except FileNotFoundError:
        out[rel] = None
for rel in DIRS:
    st = os.stat("/" + rel)
    out[rel] = [st.st_dev, st.st_ino]
print(json.dumps(out))
""".replace("FILES", repr(BOUND_FILES)).replace("DIRS", repr(KERNEL_DIRS))

OWN_FILES = {
    "etc/passwd": b"root:x:0:0:root:/root:/bin/sh\nshapes:x:4242:4242::/home/shapes:/bin/sh\n",
    "etc/group": b"root:x:0:\nshapes:x:4242:\n",
    "etc/localtime": b"TZif2 cntr-shapes: not a real zone, only its bytes matter\n",
}


@pytest.fixture(scope="module")
def docker_own_files() -> Iterator[Container]:
    """A docker container with passwd, group and localtime bound from files of its own
    (docker itself binds hostname, hosts and resolv.conf)."""
    engine_container("docker")
    state = Path("/var/lib/cntr-shapes/files")
    state.mkdir(parents=True, exist_ok=True)
    volumes = []
    for rel, data in OWN_FILES.items():
        path = state / rel.replace("/", "-")
        path.write_bytes(data)
        volumes += ["-v", f"{path}:/{rel}:ro"]
    name = "cntr-shapes-files"
    subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)
    subprocess.run([DOCKER, "run", "-d", "--name", name, "--network", "none",
                    "--hostname", name, "--dns", "192.0.2.53", "--add-host",
                    "cntr-shapes.test:192.0.2.1", *volumes, "-e", "CNTR_SHAPE=files",
                    "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1000:1000",
                    "cntr-busybox:test", "/bin/sleep", "100000"],
                   capture_output=True, check=True, timeout=120)
    pid = int(subprocess.run([DOCKER, "inspect", "-f", "{{.State.Pid}}", name],
                             capture_output=True, text=True, check=True).stdout)
    try:
        yield Container("docker", name, pid, name, ("CNTR_SHAPE", "files"))
    finally:
        subprocess.run([DOCKER, "rm", "-f", name], capture_output=True, check=False)
        for rel in OWN_FILES:
            (state / rel.replace("/", "-")).unlink(missing_ok=True)
        state.rmdir()


@pytest.fixture(params=["demo", "docker", "podman", "docker-own-files"])
def target(request: pytest.FixtureRequest) -> Container:
    name = {"demo": "demo", "docker": "docker_container", "podman": "podman_container",
            "docker-own-files": "docker_own_files"}[request.param]
    c: Container = request.getfixturevalue(name)
    return c


def container_file(pid: int, rel: str) -> bytes | None:
    """``rel`` as the container itself resolves it (its symlinks stay in its root)."""
    root = os.open(f"/proc/{pid}/root", os.O_PATH | os.O_DIRECTORY)
    try:
        fd = open_in_container(root, rel, os.O_RDONLY)
    finally:
        os.close(root)
    if fd is None:
        return None
    with os.fdopen(fd, "rb") as f:
        return f.read()


def test_files_are_the_containers(target: Container) -> None:
    out = run_cntr("attach", target.ident, "--", "python3", "-c", PROBE)
    assert out.returncode == 0, out.stderr.decode()
    seen = json.loads(out.stdout)
    for rel in BOUND_FILES:
        got = None if seen[rel] is None else base64.b64decode(seen[rel])
        want = container_file(target.pid, rel)
        if want is None:
            # Absent in the container: nothing to bind, the host's shows (README).
            want = Path("/" + rel).read_bytes() if Path("/" + rel).exists() else None
        assert got == want, rel
    if target.ident == "cntr-shapes-files":
        assert {rel: container_file(target.pid, rel) for rel in OWN_FILES} == OWN_FILES
        hosts = container_file(target.pid, "etc/hosts")
        assert hosts is not None and b"192.0.2.1\tcntr-shapes.test" in hosts
    for rel in KERNEL_DIRS:
        st = os.stat(f"/proc/{target.pid}/root/{rel}")
        assert seen[rel] == [st.st_dev, st.st_ino], rel
        # ... and not the host's
        assert seen[rel] != [os.stat(f"/{rel}").st_dev, os.stat(f"/{rel}").st_ino], rel


HOSTILE = {
    # name in the container: (symlink target, what the session must show there)
    "etc/passwd": ("/etc/shadow", "container"),  # the container's own shadow, not the host's
    "etc/hosts": ("../../../../../etc/hosts.real", "container"),  # ..s stop at its root
    "etc/hostname": ("/etc/debian_version", "host"),  # absent in the container: not bound
    "etc/group": ("/proc/self/root/etc/group", "host"),  # a magic link: refused
    "etc/resolv.conf": ("/proc/1/root/etc/shadow", "host"),
}


def test_hostile_symlinks_show_only_the_containers_files() -> None:
    """A container whose bound files are symlinks aimed at host paths: each resolves in the
    container's root or is not bound, byte for byte; no host file shows through."""
    state = Path("/var/lib/cntr-demo-shapes-hostile")
    env = {**os.environ, "CNTR_DEMO_DIR": str(state)}
    root = state / "rootfs"
    subprocess.run([REPO / "scripts/demo", "stop"], env=env, timeout=60, check=False)
    shutil.rmtree(state, ignore_errors=True)
    subprocess.run(["sh", str(REPO / "scripts/busybox-rootfs"), str(root)], check=True)
    (root / "etc/shadow").write_bytes(b"root:container-only-hash:1::::::\n")
    (root / "etc/hosts.real").write_bytes(b"192.0.2.7 hostile.test\n")
    for rel, (target, _) in HOSTILE.items():
        (root / rel).unlink()
        (root / rel).symlink_to(target)
    try:
        out = subprocess.run([REPO / "scripts/demo", "start"], env=env, capture_output=True,
                             text=True, timeout=60, check=True)
        pid = int(out.stdout.split()[-1])
        seen = run_cntr("attach", str(pid), "--", "python3", "-c", PROBE)
        assert seen.returncode == 0, seen.stderr.decode()
        files = json.loads(seen.stdout)
        host_shadow = Path("/etc/shadow").read_bytes()
        for rel, (_, source) in HOSTILE.items():
            got = base64.b64decode(files[rel])
            want = container_file(pid, rel) if source == "container" else Path(
                "/" + rel).read_bytes()
            assert got == want, rel
            assert host_shadow not in got, rel
        assert base64.b64decode(files["etc/passwd"]) == b"root:container-only-hash:1::::::\n"
        assert base64.b64decode(files["etc/hosts"]) == b"192.0.2.7 hostile.test\n"
    finally:
        subprocess.run([REPO / "scripts/demo", "stop"], env=env, timeout=60, check=False)
        shutil.rmtree(state, ignore_errors=True)
