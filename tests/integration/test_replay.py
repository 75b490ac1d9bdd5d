"""Saved contexts: replayed while the container is the same, refused once it is not;
``--dry-run`` plans without acting; ``cntr diff`` says what changed."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from cntr import context
from cntr.engines.base import children
from cntr.linux import caps, cgroups, seccomp
from cntr.session import plan
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
    pid = _inner_pid(first)
    try:
        ctx = run_cntr("capture", str(pid))
        assert ctx.returncode == 0, ctx.stderr.decode()
    finally:
        first.kill()
        first.wait()
    second = _short_container()  # the "restarted" container: same command, new process
    try:
        before = snapshot(demo)
        out = run_cntr("enter", "--", "true", input=ctx.stdout)
        assert out.returncode == 5
        # (gone, a zombie not yet reaped, or its pid taken by another process)
        assert out.stderr.decode() in (
            f"cntr: enter: process {pid} of container sleep is gone (the container exited "
            "or was restarted)\n",
            f"cntr: enter: process {pid} of container sleep is gone (it exited)\n",
            f"cntr: enter: process {pid} is not the captured one: its start time differs "
            "(the pid was reused or the container restarted)\n")
        assert snapshot(demo) == before
    finally:
        second.kill()
        second.wait()


def _expected_plan(ctx: dict[str, Any], argv: list[str]) -> list[dict[str, Any]]:
    """The plan enter must print for the demo's context, built from the context and the
    host (the demo joins no user or time namespace: they are the host's)."""
    own = {k: os.stat(f"/proc/self/ns/{k}").st_ino for k in ctx["namespaces"]}
    mounts = cgroups.cgroup_mounts(Path("/proc/self/mountinfo").read_text())
    full = (1 << (int(Path("/proc/sys/kernel/cap_last_cap").read_text()) + 1)) - 1
    # The session's sets: the container's, with the guard capability (issue 19) added
    record = context.decode(context.Context, json.dumps(ctx).encode())
    guard, warning = plan.session_guard(record)
    bounding, effective, permitted, inheritable, ambient = plan.session_sets(record, guard)
    env = dict(ctx["env"])
    cpath = env["PATH"]
    parts = cpath.split(":")
    for p in [*os.environ["PATH"].split(":"), os.path.dirname(sys.executable)]:
        if p and p not in parts:
            parts.append(p)
    env.update(PATH=":".join(parts), CNTR_CONTAINER_PATH=cpath)
    # Bound where the container has the file and the host a name to bind it onto.
    files = [f for f in ("etc/passwd", "etc/group", "etc/hostname", "etc/hosts",
                         "etc/resolv.conf", "etc/localtime")
             if ctx["files"].get(f) is not None and os.path.lexists("/" + f)]
    joined = [k for k in ("uts", "ipc", "net", "cgroup", "pid", "time", "user")
              if k in ctx["namespaces"] and ctx["namespaces"][k] != own[k]]
    early = [k for k in joined if k not in ("time", "user")]
    # The demo's /sys is a sysfs of its own: which net namespace it shows is checked once
    # the session is in the container's.
    sysfs = Path(f"/proc/{ctx['pid']}/root/sys/class/net").is_dir()
    return [
        {"step": "verify", "pid": ctx["pid"], "start_time": ctx["start_time"],
         "boot_id": ctx["boot_id"], "namespaces": ctx["namespaces"]},
        {"step": "open", "path": "/dev/fuse"},
        {"step": "mkdir", "path": "/var/lib/cntr", "where": "host"},
        {"step": "serve-fs", "root": "/", "uid_map": ctx["uid_map"], "gid_map": ctx["gid_map"],
         "effective_user": None},
        {"step": "join-cgroups", "paths": [
            mounts["0" if h == 0 else ctrls] + path for h, ctrls, path in ctx["cgroups"]
            if ("0" if h == 0 else ctrls) in mounts]},
        {"step": "setns", "namespace": "mnt", "inode": ctx["namespaces"]["mnt"]},
        {"step": "unshare", "namespace": "mnt", "propagation": "private"},
        {"step": "mount", "source": "fuse.cntr (serve-fs: the host's /)", "target": "/"},
        {"step": "bind", "source": f"{ctx['root']} (container /)", "target": "/var/lib/cntr",
         "recursive": True},
        *({"step": "bind", "source": f"container /{d}", "target": f"/{d}", "recursive": True}
          for d in ("proc", "dev", "sys")),
        *({"step": "bind", "source": f"container /{f}", "target": f"/{f}"} for f in files),
        {"step": "pivot_root", "path": "/"},
        *({"step": "setns", "namespace": k, "inode": ctx["namespaces"][k]} for k in early),
        *([{"step": "mount", "source": "sysfs (read-only, of the container's net namespace)",
            "target": "/sys", "if": "the container's /sys shows another net namespace"}]
          if sysfs else []),
        *({"step": "setns", "namespace": k, "inode": ctx["namespaces"][k]} for k in joined
          if k not in early),
        {"step": "fork", "process": "reaper"},
        {"step": "session", "setsid": True, "controlling_tty": False, "subreaper": True,
         "name": "cntr-reaper"},
        *([{"step": "no-new-privs"}] if ctx["no_new_privs"] else []),
        {"step": "capabilities", "drop_bounding": caps.names(full & ~bounding),
         "guard": caps.names(1 << guard)[0] if guard is not None else None,
         "seccomp_refuses": list(seccomp.REFUSED[guard]) if guard is not None else [],
         "unguarded": warning},
        {"step": "ids", "uid": ctx["uid"], "gid": ctx["gid"], "groups": ctx["groups"]},
        {"step": "capability-sets", "effective": caps.names(effective),
         "permitted": caps.names(permitted), "inheritable": caps.names(inheritable),
         "ambient": caps.names(ambient), "dumpable": False},
        {"step": "fork", "process": "command", "process_group": "own", "foreground": False},
        {"step": "chdir", "path": "/var/lib/cntr/" + ctx["cwd"].lstrip("/"), "otherwise": "/"},
        {"step": "exec", "argv": argv, "env": env, "pty": False},
    ]


def _as_text(steps: list[dict[str, Any]]) -> str:
    """The text form of a plan: numbered steps, ``key: value`` fields, lists joined by
    commas (``-`` when empty), maps as ``k=v``."""
    def show(v: Any) -> str:
        if isinstance(v, dict):
            return " ".join(f"{k}={show(x)}" for k, x in v.items())
        if isinstance(v, list):
            return ",".join(show(x) for x in v) or "-"
        return str(v)
    return "".join(
        (f"{i:2}. {s['step']} " + "  ".join(f"{k}: {show(v)}" for k, v in s.items()
                                           if k != "step")).rstrip() + "\n"
        for i, s in enumerate(steps, 1))


def test_dry_run_plans_and_does_nothing(demo: Container) -> None:
    ctx = run_cntr("capture", demo.ident).stdout
    data = json.loads(run_cntr("capture", demo.ident, "--format", "json").stdout)
    before = snapshot(demo)
    out = run_cntr("enter", "--dry-run", "--format", "json", "--", "ls", "-l", input=ctx)
    assert out.returncode == 0, out.stderr.decode()
    want = _expected_plan(data, ["ls", "-l"])
    assert json.loads(out.stdout) == want
    assert snapshot(demo) == before
    text = run_cntr("enter", "--dry-run", "--", "ls", "-l", input=ctx)
    assert (text.returncode, text.stderr) == (0, b"")
    assert text.stdout.decode() == _as_text(want)
    assert snapshot(demo) == before


def test_diff_of_two_contexts(demo: Container, tmp_path: Path) -> None:
    a = tmp_path / "a"
    a.write_bytes(run_cntr("capture", demo.ident).stdout)
    same = run_cntr("diff", str(a), str(a))
    assert (same.returncode, same.stdout, same.stderr) == (0, b"", b"")
    data = json.loads(run_cntr("capture", demo.ident, "--format", "json").stdout)
    data["env"]["NEW_VAR"] = "1"
    del data["env"]["CNTR_DEMO"]
    data["caps"]["effective"] &= ~1  # cap_chown
    b = tmp_path / "b.json"
    b.write_text(json.dumps(data))
    out = run_cntr("diff", str(a), str(b))
    assert (out.returncode, out.stderr) == (1, b"")
    assert out.stdout.decode().splitlines() == [
        "caps.effective: - cap_chown", "env: - CNTR_DEMO=hello", "env: + NEW_VAR=1"]


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
