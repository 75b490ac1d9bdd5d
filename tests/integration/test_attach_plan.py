"""``enter --dry-run`` prints what the session does: the plan it prints is, exactly, the
list of operations the session's processes log as they carry them out
(``CNTR_PLAN_LOG``), on the demo, docker and podman containers, for a command that runs
and one that cannot be found, and a --tools session."""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Container, run_cntr

pytestmark = [pytest.mark.root, pytest.mark.fuse]


def planned_and_done(ctx: bytes, log: Path, *args: str,
                     ) -> tuple[list[dict[str, Any]], list[dict[str, Any]], int, bytes]:
    """(the --dry-run plan, the operations logged by a real ``cntr enter ARGS``, its
    exit status and stderr) for the context ``ctx``."""
    dry = run_cntr("enter", "--dry-run", "--format", "json", *args, input=ctx)
    assert dry.returncode == 0, dry.stderr.decode()
    out = run_cntr("enter", *args, input=ctx, env={**os.environ, "CNTR_PLAN_LOG": str(log)})
    done = [json.loads(line) for line in log.read_text().splitlines()]
    log.unlink()
    return json.loads(dry.stdout), done, out.returncode, out.stderr


def context_of(c: Container) -> bytes:
    if c.engine == "demo":  # its ident is a pid
        return run_cntr("capture", c.ident).stdout
    resolved = run_cntr("resolve", "-t", c.engine, c.ident)
    assert resolved.returncode == 0, resolved.stderr.decode()
    return run_cntr("capture", input=resolved.stdout).stdout


def test_the_session_does_what_the_dry_run_prints(container: Container,
                                                   tmp_path: Path) -> None:
    ctx = context_of(container)
    plan, done, code, err = planned_and_done(ctx, tmp_path / "log", "--", "true")
    assert (code, err) == (0, b"")
    assert done == plan
    steps = [s["step"] for s in plan]
    assert steps[:6] == ["verify", "open", "mkdir", "serve-fs", "join-cgroups", "setns"]
    assert steps[-3:] == ["fork", "chdir", "exec"]


def test_a_command_not_found_is_tried_as_planned(demo: Container, tmp_path: Path) -> None:
    ctx = context_of(demo)
    plan, done, code, err = planned_and_done(ctx, tmp_path / "log", "--", "/no/such/cmd")
    assert (code, err) == (127, b"cntr: cannot run '/no/such/cmd': No such file or directory\n")
    assert done == plan
    assert plan[-1]["argv"] == ["/no/such/cmd"]


def test_a_tools_session_does_what_the_dry_run_prints(demo: Container,
                                                      tmp_path: Path) -> None:
    """``--tools DIR``: the tree served and the binds onto names it lacks (serve-fs shows
    them) are as planned."""
    from tests.integration.test_tools import make_toolbox

    tools = tmp_path / "toolbox"
    make_toolbox(tools)
    ctx = context_of(demo)
    plan, done, code, err = planned_and_done(ctx, tmp_path / "log", "--tools", str(tools),
                                             "--", "tools-only")
    assert (code, err) == (0, b"")
    assert done == plan
    assert [s["root"] for s in plan if s["step"] == "serve-fs"] == [str(tools)]
    assert {"step": "bind", "source": "container /etc/hostname",
            "target": "/etc/hostname"} in plan
