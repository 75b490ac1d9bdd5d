"""cntr run from its container image (scripts/build-image), as the README says to run it.

- ``docker run --pid=host --privileged -v /var/run/docker.sock:... cntr:latest attach NAME``
  attaching to the docker test container;
- ``ctr run --privileged --with-ns pid:... cntr attach PID`` attaching to the containerd test
  container;
- the shape of a Kubernetes node debug pod (privileged, the host's pid namespace, the
  node's root at /host, ``CNTR_HOST_ROOT=/host``) attaching to the pod-shaped containerd
  container by its ``k8s:`` name.

In each, the session's tools are the image's own files: a tool the image has and the host
lacks (tcpdump) runs, a host-only one (mmdebstrap) is not there, and a marker only the
image has (gdb-minimal in its dpkg database: the host has gdb, which conflicts) is seen;
the hostname, namespaces and files are the target's; ``cntr exec`` runs in the target's
root; nothing is left behind.

This machine's root lacks CAP_SYS_RESOURCE, so no docker container can start with
``--privileged`` here (runc: "unable to apply caps"); the docker runs then use the flags
``--privileged`` stands for, minus that capability (PRIVILEGED below, as the README says).
"""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Container, engine_container, require
from tests.integration.test_attach import mount_points
from tests.integration.test_tools import PROBE as TOOLS_PROBE
from tests.integration.test_tools import cntr_host_mounts, make_toolbox
from tests.integration.test_tools import expected as tools_expected

pytestmark = [pytest.mark.root, pytest.mark.fuse, pytest.mark.engine, pytest.mark.docker]

DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
CTR = ["ctr", "-a", "/run/containerd/containerd.sock", "-n", "default"]
IMAGE = "cntr:latest"
CTR_IMAGE = "docker.io/library/cntr:latest"
MARKER = "/var/lib/dpkg/info/gdb-minimal.list"  # the host has gdb, which conflicts with it
TOOLS = ("python3", "strace", "gdb", "tcpdump", "ip", "ps", "curl", "vi", "less", "ctr",
         "fusermount3", "cntr")

CAP_SYS_RESOURCE = 24


def _all_caps() -> bool:
    """This process holds every capability the kernel has (what --privileged hands out)."""
    last = int(Path("/proc/sys/kernel/cap_last_cap").read_text())
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("CapBnd:"):
            return int(line.split()[1], 16) == (1 << (last + 1)) - 1
    return False


PRIVILEGED = ["--privileged"] if _all_caps() else [
    # What --privileged grants, minus the capabilities this host's root lacks.
    "--cap-add", "ALL", "--cap-drop", "SYS_RESOURCE",
    "--security-opt", "seccomp=unconfined", "--security-opt", "apparmor=unconfined",
    "--security-opt", "systempaths=unconfined", "--device", "/dev/fuse",
    "-v", "/sys/fs/cgroup:/sys/fs/cgroup"]

# What the session prints about itself: the image's tools, a host-only tool, the marker,
# its namespaces, the target's hostname and variable, and the target's root through exec.
PROBE = (
    "command -v tcpdump; command -v vi; command -v mmdebstrap || echo no-mmdebstrap; "
    f"test -f {MARKER} && echo marker; "
    "for n in uts ipc net pid cgroup; do readlink /proc/self/ns/$n; done; "
    "hostname; echo $CNTR_TEST_VAR; "
    "cntr exec sh -c 'test -x /bin/busybox && echo busybox-root; command -v tcpdump "
    "|| echo no-tcpdump'")


def expected(c: Container, hostname: str) -> str:
    ns = [os.readlink(f"/proc/{c.pid}/ns/{n}") for n in ("uts", "ipc", "net", "pid", "cgroup")]
    return "\n".join([
        "/usr/bin/tcpdump", "/usr/bin/vi", "no-mmdebstrap", "marker", *ns, hostname,
        c.env_var[1], "busybox-root", "no-tcpdump", ""])


def run(argv: list[str], timeout: float = 120, **kw: object) -> subprocess.CompletedProcess[str]:
    # **kw passes env and the like through; mypy cannot match it to run()'s overloads
    result: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        argv, capture_output=True, text=True, timeout=timeout, cwd=REPO, **kw)
    return result


@pytest.fixture(scope="module")
def image() -> str:
    """cntr:latest in docker and in the test containerd (built once, cached after)."""
    require(None if os.path.exists("/usr/bin/mmdebstrap") else
            "mmdebstrap is missing (scripts/setup --engines installs it)")
    engine_container("docker")
    engine_container("containerd")
    out = run([str(REPO / "scripts/build-image"), "--containerd"], timeout=900,
              env={**os.environ, "CONTAINERD_ADDRESS": "/run/containerd/containerd.sock",
                   "CONTAINERD_NAMESPACE": "default"})
    assert out.returncode == 0, out.stderr[-2000:]
    return IMAGE


@pytest.fixture(scope="module")
def docker_target(image: str) -> Container:
    return engine_container("docker")


@pytest.fixture(scope="module")
def containerd_target(image: str) -> Container:
    return engine_container("containerd")


@pytest.fixture(scope="module")
def pod_target(image: str) -> Container:
    engine_container("containerd")
    out = run([str(REPO / "scripts/engines"), "pid", "kubernetes"], timeout=60)
    assert out.returncode == 0, out.stderr
    pid = int(out.stdout.split()[-1])
    return Container("kubernetes", "k8s:default/cntr-test-pod/main", pid, "",
                     ("CNTR_TEST_VAR", "kubernetes"))


def image_processes(name: str) -> list[str]:
    """Processes of the cntr container ``name`` (cntr, its serve-fs and setup child): they
    carry its CNTR_IMAGE_TEST variable (other developers' sessions run at the same time)."""
    marker = f"CNTR_IMAGE_TEST={name}".encode()
    found = []
    for entry in os.listdir("/proc"):
        try:
            env = Path(f"/proc/{entry}/environ").read_bytes().split(b"\0")
            comm = Path(f"/proc/{entry}/comm").read_text().strip()
        except OSError:  # not a process, or gone
            continue
        if marker in env:
            found.append(f"{entry}: {comm}")
    return found


def cntr_containers() -> list[str]:
    """The cntr containers this module runs (docker and containerd), left or running."""
    docker = run([DOCKER, "ps", "-aq", "--filter", "name=cntr-image-"]).stdout.split()
    ctr = [c for c in run([*CTR, "containers", "ls", "-q"]).stdout.split()
           if c.startswith("cntr-image-")]
    return docker + ctr


def snapshot(c: Container, name: str) -> dict[str, object]:
    return {
        "host mounts": cntr_host_mounts(),
        "target mounts": mount_points(c.pid),
        "target tmp": sorted(os.listdir(f"/proc/{c.pid}/root/tmp")),
        "processes": image_processes(name),
        "containers": cntr_containers(),
    }


def settled(before: dict[str, object], c: Container, name: str) -> dict[str, object]:
    """The snapshot once the cntr container's processes are gone (a few ms after exit)."""
    deadline = time.monotonic() + 10
    while True:
        now = snapshot(c, name)
        if now == before or time.monotonic() > deadline:
            return now
        time.sleep(0.1)


@pytest.fixture
def name() -> Iterator[str]:
    """The name of a cntr container a test runs; removed after, whatever happened."""
    n = f"cntr-image-{os.getpid()}-{time.monotonic_ns()}"
    yield n
    subprocess.run([DOCKER, "rm", "-f", n], capture_output=True, timeout=60, check=False)
    for args in (["tasks", "kill", "-s", "KILL", n], ["tasks", "rm", "-f", n],
                 ["containers", "rm", n]):
        subprocess.run([*CTR, *args], capture_output=True, timeout=60, check=False)


def docker_run(name: str, *args: str) -> subprocess.CompletedProcess[str]:
    return run(docker_argv(name, *args))


def docker_argv(name: str, *args: str, volumes: tuple[str, ...] = ()) -> list[str]:
    return [DOCKER, "run", "--rm", "-i", "--name", name, "--network", "none", "--pid=host",
            "-e", f"CNTR_IMAGE_TEST={name}", *PRIVILEGED, *(f"-v{v}" for v in volumes),
            "-v", "/var/run/docker.sock:/var/run/docker.sock", IMAGE, *args]


def ctr_run(name: str, *args: str, mounts: tuple[str, ...] = (),
            env: tuple[str, ...] = ()) -> subprocess.CompletedProcess[str]:
    # pid 1 of this machine is not ours to open (/proc/1/ns/pid: EACCES): the host's pid
    # namespace is named through this process instead, which is in it.
    opts = [f"--mount={m}" for m in mounts] + [
        f"--env={e}" for e in (*env, f"CNTR_IMAGE_TEST={name}")]
    return run([*CTR, "run", "--rm", "--privileged", "--with-ns",
                f"pid:/proc/{os.getpid()}/ns/pid", *opts, CTR_IMAGE, name, *args])


def test_image_has_the_tools_and_is_cached(image: str) -> None:
    out = run([DOCKER, "run", "--rm", "--network", "none", "--entrypoint", "sh", image, "-c",
               f"for t in {' '.join(TOOLS)}; do command -v $t; done; "
               "find /var/lib/apt/lists /var/cache/apt /usr/share/doc /usr/share/man "
               "-mindepth 1 2>/dev/null | wc -l"])
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert [os.path.basename(p) for p in lines[:-1]] == list(TOOLS)
    assert lines[-1] == "0"  # no apt lists, no documentation
    before = run([DOCKER, "image", "inspect", "-f", "{{.Id}}", image]).stdout
    again = run([str(REPO / "scripts/build-image")], timeout=600)
    assert again.returncode == 0, again.stderr
    # Its inputs did not change: nothing built or loaded, one line saying so, the same image.
    assert again.stderr.count("\n") == 1, again.stderr
    assert again.stderr.startswith(f"build-image: {image}: "), again.stderr
    assert run([DOCKER, "image", "inspect", "-f", "{{.Id}}", image]).stdout == before


def test_docker_run_attaches_with_the_images_tools(docker_target: Container, name: str) -> None:
    before = snapshot(docker_target, name)
    with subprocess.Popen(
            docker_argv(name, "attach", docker_target.ident, "--", "sh", "-c",
                        PROBE + "; echo ready; read line; echo $line"),
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True) as proc:
        assert proc.stdout is not None and proc.stdin is not None and proc.stderr is not None
        lines: list[str] = []
        while not lines or lines[-1] != "ready\n":
            lines.append(proc.stdout.readline())
            assert lines[-1], proc.stderr.read()
        # While it runs: the cntr container's cntr, setup child and serve-fs are seen
        # (so their absence after means something), the target's mount table is untouched.
        assert ": cntr-serve-fs" in " ".join(image_processes(name))
        assert mount_points(docker_target.pid) == before["target mounts"]
        out, err = proc.communicate("bye\n", timeout=60)
    assert (proc.returncode, err) == (0, "")
    assert "".join(lines) + out == expected(docker_target, docker_target.hostname).replace(
        "no-tcpdump\n", "no-tcpdump\nready\nbye\n")
    assert settled(before, docker_target, name) == before


def test_docker_run_exit_status_and_bad_name(docker_target: Container, name: str) -> None:
    out = docker_run(name, "attach", docker_target.ident, "--", "sh", "-c", "exit 7")
    assert (out.returncode, out.stdout, out.stderr) == (7, "", "")
    out = docker_run(name, "attach", "-t", "docker", "cntr-image-no-such", "--", "true")
    assert out.returncode == 4
    assert out.stderr.count("\n") == 1
    assert out.stderr.startswith("cntr: attach: no container 'cntr-image-no-such'")


def test_ctr_run_attaches_by_pid(containerd_target: Container, name: str) -> None:
    before = snapshot(containerd_target, name)
    out = ctr_run(name, "cntr", "attach", str(containerd_target.pid), "--", "sh", "-c", PROBE)
    assert (out.returncode, out.stderr) == (0, "")
    hostname = Path(f"/proc/{containerd_target.pid}/root/etc/hostname").read_text().strip()
    uts = subprocess.run(["nsenter", "-t", str(containerd_target.pid), "-u", "hostname"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert hostname and uts
    assert out.stdout == expected(containerd_target, uts)
    assert settled(before, containerd_target, name) == before


def test_node_debug_pod_attaches_by_k8s_name(pod_target: Container, name: str) -> None:
    # kubectl debug node/N --profile=sysadmin: privileged, the node's pid namespace, the
    # node's root at /host; CNTR_HOST_ROOT tells cntr where containerd's socket is.
    before = snapshot(pod_target, name)
    host = ("type=bind,src=/,dst=/host,options=rbind:ro",)
    out = ctr_run(name, "cntr", "attach", pod_target.ident, "--", "sh", "-c", PROBE,
                  mounts=host, env=("CNTR_HOST_ROOT=/host",))
    assert (out.returncode, out.stderr) == (0, "")
    uts = subprocess.run(["nsenter", "-t", str(pod_target.pid), "-u", "hostname"],
                         capture_output=True, text=True, check=True).stdout.strip()
    assert out.stdout == expected(pod_target, uts)
    assert settled(before, pod_target, name) == before


def test_node_debug_pod_without_host_root_says_why(pod_target: Container, name: str) -> None:
    host = ("type=bind,src=/,dst=/host,options=rbind:ro",)
    out = ctr_run(name, "cntr", "attach", pod_target.ident, "--", "true", mounts=host)
    assert (out.returncode, out.stdout) == (4, "")
    assert out.stderr == (
        "cntr: attach: no container 'k8s:default/cntr-test-pod/main': kubernetes: "
        "containerd not running (no /run/containerd/containerd.sock)\n")


def test_docker_run_with_tools_from_a_directory(docker_target: Container, name: str,
                                                tmp_path: Path) -> None:
    # --tools from the image: a toolbox directory mounted into the cntr container; the
    # image's static busybox serves `cntr exec` (the toolbox has no cntr).
    make_toolbox(tmp_path / "toolbox")
    before = snapshot(docker_target, name)
    out = run(docker_argv(name, "attach", "--tools", "/toolbox", docker_target.ident, "--",
                          "sh", "-c", TOOLS_PROBE, volumes=(f"{tmp_path}/toolbox:/toolbox:ro",)))
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == tools_expected(docker_target)
    assert settled(before, docker_target, name) == before
    assert sorted(os.listdir(tmp_path / "toolbox")) == ["bin"]


def test_podman_run_attaches_by_name(image: str, name: str) -> None:
    # The image exported to podman (build-image --podman: a docker archive, podman load).
    target = engine_container("podman")
    out = run([str(REPO / "scripts/build-image"), "--podman"], timeout=600)
    assert out.returncode == 0, out.stderr
    before = snapshot(target, name)
    podman = ["podman", "--cgroup-manager=cgroupfs", "--runtime", "runc"]
    try:
        # podman's --privileged grants what root has; --ulimit: below this host's hard
        # limits (see scripts/engines).
        out = run([*podman, "run", "--rm", "--name", name, "--network", "none", "--pid=host",
                   "--privileged", "--ulimit", "nofile=1024:1024", "--ulimit",
                   "nproc=1000:1000", "-e", f"CNTR_IMAGE_TEST={name}",
                   f"localhost/{IMAGE}", "attach", target.ident, "--", "sh", "-c", PROBE])
    finally:
        subprocess.run([*podman, "rm", "-f", name], capture_output=True, timeout=60,
                       check=False)
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == expected(target, target.hostname)
    assert settled(before, target, name) == before
