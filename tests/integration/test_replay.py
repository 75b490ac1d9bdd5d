"""Saved contexts: replayed while the container is the same, refused once it is not;
``--dry-run`` plans without acting; ``cntr diff`` says what changed."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

import pytest

from cntr.engines.base import children
from tests.conftest import CNTR, REPO, Container, run_cntr
from tests.integration.test_attach import snapshot

pytestmark = [pytest.mark.root, pytest.mark.fuse]


@pytest.mark.parametrize("fmt", ["msgpack", "json"])
def test_saved_context_replays(demo: Container, tmp_path: Path, fmt: str) -> None:
    saved = tmp_path / f"ctx.{fmt}"
    out = run_cntr("capture", demo.ident, "--format", fmt)
    assert out.returncode == 0, out.stderr.decode()
    saved.write_bytes(out.stdout)
    time.sleep(0.1)
    again = run_cntr("enter", "--context", str(saved), "--", "hostname")
    assert again.returncode == 0, again.stderr.decode()
    assert again.stdout == f"{demo.hostname}\n".encode()


def _short_container() -> subprocess.Popen[bytes]:
    """A throwaway container of its own (pid and uts namespaces), to restart at will."""
    proc = subprocess.Popen(["unshare", "--fork", "--pid", "--uts", "--kill-child",
                             "sleep", "1000"])
    deadline = time.monotonic() + 10
    while not children(proc.pid):
        assert time.monotonic() < deadline
        time.sleep(0.02)
    return proc


def _inner_pid(proc: subprocess.Popen[bytes]) -> int:
    return children(proc.pid)[0]


def test_stale_context_is_refused_after_restart(demo: Container, tmp_path: Path) -> None:
    first = _short_container()
    try:
        ctx = run_cntr("capture", str(_inner_pid(first)))
        assert ctx.returncode == 0, ctx.stderr.decode()
    finally:
        first.kill()
        first.wait()
    second = _short_container()  # the "restarted" container: same command, new process
    try:
        before = snapshot(demo)
        out = run_cntr("enter", "--", "true", input=ctx.stdout)
        assert out.returncode == 5
        assert out.stderr.decode().count("\n") == 1
        assert "gone" in out.stderr.decode() or "start time" in out.stderr.decode()
        assert snapshot(demo) == before
    finally:
        second.kill()
        second.wait()


def test_dry_run_plans_and_does_nothing(demo: Container) -> None:
    ctx = run_cntr("capture", demo.ident).stdout
    before = snapshot(demo)
    out = run_cntr("enter", "--dry-run", "--format", "json", "--", "ls", "-l", input=ctx)
    assert out.returncode == 0, out.stderr.decode()
    steps = json.loads(out.stdout)
    names = [s["step"] for s in steps]
    assert names[0] == "verify" and names[-1] == "exec"
    assert names.index("setns") < names.index("pivot_root") < names.index("fork")
    assert steps[-1]["argv"] == ["ls", "-l"]
    assert steps[-1]["env"]["CNTR_DEMO"] == "hello"
    binds = {s["target"] for s in steps if s["step"] == "bind"}
    assert {"/var/lib/cntr", "/proc", "/dev", "/sys", "/etc/hostname"} <= binds
    assert snapshot(demo) == before
    text = run_cntr("enter", "--dry-run", "--", "ls", input=ctx)
    assert text.returncode == 0
    assert b"pivot_root" in text.stdout and b"setns namespace: uts" in text.stdout


def test_diff_of_two_contexts(demo: Container, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(run_cntr("capture", demo.ident).stdout)
    same = run_cntr("diff", str(a), str(a))
    assert (same.returncode, same.stdout) == (0, b"")
    data = json.loads(run_cntr("capture", demo.ident, "--format", "json").stdout)
    data["env"]["NEW_VAR"] = "1"
    del data["env"]["CNTR_DEMO"]
    data["caps"]["effective"] = 0
    b = tmp_path / "b.json"
    b.write_text(json.dumps(data))
    out = run_cntr("diff", str(a), str(b))
    assert out.returncode == 1
    lines = out.stdout.decode().splitlines()
    assert "env: + NEW_VAR=1" in lines
    assert "env: - CNTR_DEMO=hello" in lines
    assert "caps.effective: - cap_chown" in lines


def test_pipeline_through_a_saved_file(demo: Container, tmp_path: Path) -> None:
    cntr = " ".join(CNTR)
    saved = tmp_path / "ctx"
    out = subprocess.run(
        f"{cntr} resolve {demo.ident} | {cntr} capture > {saved} && "
        f"{cntr} enter --context {saved} -- sh -c 'echo $CNTR_DEMO'",
        shell=True, capture_output=True, cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == b"hello\n"


@pytest.mark.parametrize("stage", ["enter", "capture"])
def test_stage_decoders_on_random_input(demo: Container, stage: str) -> None:
    """Random and mutated bytes on each stage's stdin, through the real command: exit 3,
    one line, nothing done (the in-process fuzz test covers many more inputs)."""
    import random

    rng = random.Random(1234)
    valid = run_cntr("capture", demo.ident).stdout
    inputs = [bytes(rng.randrange(256) for _ in range(rng.randrange(1, 400)))
              for _ in range(6)]
    for _ in range(6):
        buf = bytearray(valid)
        for _ in range(rng.randrange(1, 6)):
            buf[rng.randrange(len(buf))] = rng.randrange(256)
        inputs.append(bytes(buf[: rng.randrange(1, len(buf))]))
    before = snapshot(demo)
    for data in inputs:
        args = ["enter", "--", "true"] if stage == "enter" else ["capture"]
        out = run_cntr(*args, input=data)
        assert out.returncode in (3, 4, 5), (data[:40], out.stderr)
        assert out.stderr.count(b"\n") == 1 and out.stderr.startswith(b"cntr: ")
        assert b"Traceback" not in out.stderr
    assert snapshot(demo) == before
