"""Bad input and hostile conditions: one clear line on stderr, a documented exit code, and
nothing left behind."""

from __future__ import annotations

import subprocess

import pytest

from tests.conftest import CNTR, REPO, Container, run_cntr
from tests.integration.test_attach import snapshot

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def one_line(err: bytes, *words: str) -> str:
    text = err.decode()
    assert text.count("\n") == 1, f"expected one line, got {text!r}"
    assert text.startswith("cntr: ")
    for w in words:
        assert w in text, text
    return text


def test_unknown_container(demo: Container) -> None:
    before = snapshot(demo)
    out = run_cntr("attach", "no-such-container-7f3a", "--", "true")
    assert out.returncode == 4
    one_line(out.stderr, "no-such-container-7f3a")
    assert snapshot(demo) == before


def test_dead_pid(demo: Container) -> None:
    proc = subprocess.Popen(["true"])
    proc.wait()
    out = run_cntr("attach", str(proc.pid), "-t", "process_id", "--", "true")
    assert (out.returncode, out.stdout) == (4, b"")
    assert one_line(out.stderr) == (
        f"cntr: attach: no container '{proc.pid}': process_id: no such process\n")


def test_not_root(demo: Container) -> None:
    before = snapshot(demo)
    out = subprocess.run(
        ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups", "--inh-caps=-all",
         "--bounding-set=-all", *CNTR, "attach", demo.ident, "--", "true"],
        capture_output=True, cwd=REPO, timeout=60)
    assert (out.returncode, out.stdout) == (6, b"")
    assert one_line(out.stderr) == ("cntr: attach: cntr must run as root: it joins namespaces "
                                    "and mounts a FUSE filesystem\n")
    assert snapshot(demo) == before


def test_missing_dev_fuse(demo: Container) -> None:
    before = snapshot(demo)
    script = ('mount -t tmpfs tmpfs /dev && mknod -m 666 /dev/null c 1 3 && '
              'exec "$@"')
    out = subprocess.run(
        ["unshare", "--mount", "--propagation", "private", "sh", "-c", script, "sh",
         *CNTR, "attach", demo.ident, "--", "true"],
        capture_output=True, cwd=REPO, timeout=60)
    assert (out.returncode, out.stdout) == (7, b"")
    assert one_line(out.stderr) == ("cntr: attach: /dev/fuse is missing: load the fuse module "
                                    "(modprobe fuse) or, in a container, pass the device in\n")
    assert snapshot(demo) == before


def test_command_not_found(demo: Container) -> None:
    out = run_cntr("attach", demo.ident, "--", "no-such-command-x")
    assert (out.returncode, out.stdout) == (127, b"")
    assert one_line(out.stderr) == (
        "cntr: cannot run 'no-such-command-x': No such file or directory\n")


@pytest.mark.parametrize("data", [b"", b"garbage\n", b"\x92\x01\x02", b'{"kind": "x"}'])
def test_enter_rejects_bad_input(demo: Container, data: bytes) -> None:
    before = snapshot(demo)
    out = run_cntr("enter", "--", "true", input=data)
    assert out.returncode == 3
    one_line(out.stderr, "cntr: enter:")
    assert snapshot(demo) == before


def test_enter_refuses_a_context_of_a_dead_process(demo: Container) -> None:
    proc = subprocess.Popen(["sleep", "100"])
    try:
        ctx = run_cntr("capture", str(proc.pid)).stdout
    finally:
        proc.kill()
        proc.wait()
    out = run_cntr("enter", "--", "true", input=ctx)
    assert out.returncode == 5
    one_line(out.stderr, str(proc.pid), "gone")


def test_usage_error_exit_code() -> None:
    out = subprocess.run([*CNTR, "attach"], capture_output=True, cwd=REPO)
    assert (out.returncode, out.stdout) == (2, b"")
    assert out.stderr.decode().splitlines() == [
        "Usage: python -m cntr attach [OPTIONS] ID [COMMAND]...",
        "Try 'python -m cntr attach --help' for help.", "", "Error: Missing argument 'ID'."]
