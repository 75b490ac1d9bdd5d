"""``cntr doctor`` on this host and in a mount namespace whose /dev has no fuse device."""

from __future__ import annotations

import gzip
import json
import os
import re
import subprocess

import pytest

from cntr.engines import ENGINES
from tests.conftest import CNTR, REPO, Container, run_cntr

NAMES = ["root", "/dev/fuse", "mount API", "FUSE passthrough", "FUSE over io_uring",
         "cgroups", "user namespaces",
         *[f"engine {t}" for t in ENGINES if t not in ("process_id", "command")]]
LINE = re.compile(r"^(OK|WARN|FAIL|-) +(.+?)  +(\S.*)$")


def kernel_config(option: str) -> bool | None:
    """Whether the running kernel was built with ``option`` (None: no /proc/config.gz)."""
    try:
        with gzip.open("/proc/config.gz", "rt") as f:
            return f"{option}=y" in f.read().splitlines()
    except OSError:
        return None


def parse(text: str) -> tuple[dict[str, tuple[str, str]], str]:
    *lines, verdict = text.splitlines()
    checks = {}
    for line in lines:
        m = LINE.match(line)
        assert m, line
        checks[m.group(2)] = (m.group(1), m.group(3))
    assert list(checks) == NAMES
    return checks, verdict


def uring_parameter() -> str:
    with open("/sys/module/fuse/parameters/enable_uring") as f:
        return f.read().strip()


@pytest.mark.fuse
@pytest.mark.docker
def test_doctor_on_this_host(docker_container: Container) -> None:
    uring_before = uring_parameter()  # scripts/bench turns it on for its run
    out = run_cntr("doctor")
    uring = uring_parameter()
    assert out.returncode == 0, out.stderr
    assert out.stderr == b""
    checks, verdict = parse(out.stdout.decode())
    assert verdict == "attach can work on this host"
    assert checks["root"] == ("OK", "running as root")
    st = os.stat("/dev/fuse")
    assert checks["/dev/fuse"] == ("OK", f"opens (device {os.major(st.st_rdev)}:"
                                         f"{os.minor(st.st_rdev)})")
    assert checks["mount API"] == ("OK", "fsopen, fsconfig, fsmount answer")
    built = kernel_config("CONFIG_FUSE_PASSTHROUGH")
    if built is not None:
        assert checks["FUSE passthrough"][0] == ("OK" if built else "WARN")
    if uring == uring_before:
        assert checks["FUSE over io_uring"][0] == ("OK" if uring == "Y" else "-")
    status, detail = checks["engine docker"]
    assert status == "OK" and re.fullmatch(r"answers: \d+ running", detail), detail

    as_json = run_cntr("doctor", "--json")
    assert as_json.returncode == 0
    report = json.loads(as_json.stdout)
    assert report["attach_works"] is True
    assert [c["name"] for c in report["checks"]] == NAMES
    assert {c["name"] for c in report["checks"] if c["required"]} == {
        "root", "/dev/fuse", "mount API"}
    assert set(report["checks"][0]) == {"name", "status", "detail", "fix", "required"}


def in_namespace_without_fuse(*args: str) -> subprocess.CompletedProcess[bytes]:
    """``cntr ARGS`` in a private mount namespace whose /dev is an empty tmpfs."""
    script = 'mount -t tmpfs tmpfs /dev && exec "$@"'
    return subprocess.run(["unshare", "-m", "--propagation", "private", "sh", "-c", script,
                           "sh", *CNTR, *args], capture_output=True, cwd=REPO, timeout=120)


@pytest.mark.root
def test_doctor_without_dev_fuse_says_so_and_fails() -> None:
    out = in_namespace_without_fuse("doctor")
    assert out.returncode == 1, out.stderr
    checks, verdict = parse(out.stdout.decode())
    assert checks["/dev/fuse"] == (
        "FAIL", "missing -> load the module (modprobe fuse); in a container, pass the "
        "device in (docker run --device /dev/fuse)")
    assert checks["FUSE passthrough"] == (
        "WARN", "not probed: /dev/fuse: No such file or directory -> fix the lines above, "
        "then run cntr doctor again")
    assert checks["root"][0] == checks["mount API"][0] == "OK"
    assert verdict == "attach cannot work on this host: fix the FAIL lines above"

    as_json = in_namespace_without_fuse("doctor", "--json")
    assert as_json.returncode == 1
    report = json.loads(as_json.stdout)
    assert report["attach_works"] is False
    assert [c["name"] for c in report["checks"] if c["status"] == "FAIL"] == ["/dev/fuse"]
    # and attach itself agrees: exit 7 (unsupported), one line
    attach = in_namespace_without_fuse("attach", str(os.getpid()), "--", "true")
    assert attach.returncode == 7
    assert attach.stderr.decode().startswith("cntr: attach: /dev/fuse is missing")
