"""Shell completion through click's own mechanism, loaded into real bash, zsh and fish,
completing subcommands, options, -t types and the name of a running container."""

from __future__ import annotations

import os
import select
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from tests.conftest import Container

BIN = Path(sys.executable).parent  # where `cntr` is installed
ENV = dict(os.environ, PATH=f"{BIN}:{os.environ.get('PATH', '')}")


def script(shell: str, cntr: str = "cntr") -> str:
    out = subprocess.run([cntr], env=dict(ENV, _CNTR_COMPLETE=f"{shell}_source"),
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout


def bash(words: list[str], env: dict[str, str] = ENV, cntr: str = "cntr") -> list[str]:
    """COMPREPLY of the completion function the bash script defines, for ``words``."""
    prog = (script("bash", cntr) + "\nCOMP_WORDS=(\"$@\"); COMP_CWORD=$(($# - 1))\n"
            "_cntr_completion cntr\nprintf '%s\\n' \"${COMPREPLY[@]}\"\n")
    out = subprocess.run(["bash", "--norc", "-c", prog, "bash", *words], env=env,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout.splitlines()


def fish(line: str, cntr: str = "cntr") -> list[str]:
    prog = f"{script('fish', cntr)}\ncomplete -C '{line}'\n"
    out = subprocess.run(["fish", "--no-config", "-c", prog], env=ENV, capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout.splitlines()


def zsh(typed: str, tmp_path: Path, cntr: str = "cntr") -> str:
    """The command line an interactive zsh (compinit, the script sourced) has after
    ``typed`` and a TAB: printed by going to the line's start, typing ``echo`` and Enter."""
    (tmp_path / "_cntr").write_text(script("zsh", cntr))
    (tmp_path / ".zshrc").write_text(
        "autoload -U compinit && compinit -u -d $ZDOTDIR/.zcompdump\n"
        "source $ZDOTDIR/_cntr\nPS1='> '\nunsetopt zle_bracketed_paste 2>/dev/null\n"
        "print READY\n")
    master, slave = os.openpty()
    proc = subprocess.Popen(["zsh", "-i"], stdin=slave, stdout=slave, stderr=slave,
                            env=dict(ENV, ZDOTDIR=str(tmp_path), TERM="dumb"),
                            start_new_session=True)
    os.close(slave)
    seen = b""

    def until(done: Callable[[bytes], bool]) -> None:
        nonlocal seen
        deadline = time.monotonic() + 60
        while not done(seen):
            assert time.monotonic() < deadline, seen
            if select.select([master], [], [], 1)[0]:
                seen += os.read(master, 65536)

    try:
        until(lambda b: b"READY" in b)
        os.write(master, typed.encode() + b"\t")
        # Ctrl-A, then a prefix that turns the completed line into a printed one
        os.write(master, b"\x01echo DONE: \r")
        until(lambda b: b"\r\n" in b.partition(b"\nDONE: ")[2])
        os.write(master, b"exit\r")
        proc.wait(timeout=30)
    finally:
        os.close(master)
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    line = seen.split(b"\nDONE: ", 1)[1].split(b"\r\n", 1)[0]
    return line.decode()


@pytest.mark.docker
def test_bash_completes(docker_container: Container) -> None:
    name = docker_container.ident
    assert bash(["cntr", "att"]) == ["attach"]
    assert bash(["cntr", "attach", name[:-2]]) == [name]
    assert bash(["cntr", "exec", name[:-2]]) == [name]
    assert bash(["cntr", "resolve", "-t", "docker", name[:-2]]) == [name]
    assert bash(["cntr", "attach", "--rec"]) == ["--record"]
    assert bash(["cntr", "ps", "-t", "docker,po"]) == ["docker,podman"]
    assert "doctor" in bash(["cntr", "do"])
    cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert bash(["cntr", "attach", cid[:6]]) == [cid[:12]]


@pytest.mark.docker
def test_fish_completes(docker_container: Container) -> None:
    name = docker_container.ident
    cid = subprocess.run(["docker", "inspect", "-f", "{{.Id}}", name], capture_output=True,
                         text=True, check=True).stdout.strip()
    assert fish(f"cntr attach {name[:-2]}") == [f"{name}\tdocker {cid[:12]}"]
    # the option with its help's first words, as click shortens it
    [record] = fish("cntr attach --rec")
    assert record.startswith("--record\tRecord the session's terminal output")


@pytest.mark.docker
def test_zsh_completes(docker_container: Container, tmp_path: Path) -> None:
    name = docker_container.ident
    assert zsh(f"cntr attach {name[:-2]}", tmp_path) == f"cntr attach {name}"
    assert zsh("cntr doct", tmp_path) == "cntr doctor"


@pytest.mark.podman
def test_completion_leaves_out_an_engine_that_does_not_answer(
        podman_container: Container, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Engines are asked at once; one that does not answer by the deadline (a docker socket
    that accepts and never replies) is left out, and the others' containers are offered."""
    from cntr import complete

    path = tmp_path / "docker.sock"
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(8)
    monkeypatch.setenv("DOCKER_HOST", f"unix://{path}")
    try:
        found = complete.containers(["docker", "podman"], deadline=0.5)
    finally:
        server.close()
    assert {engine for engine, _, _ in found} == {"podman"}
    assert podman_container.ident in {name for _, _, name in found}


@pytest.mark.docker
def test_tools_sources_complete(docker_container: Container) -> None:
    """What --tools SOURCE completes to (wired to the option where it exists)."""
    import click

    from cntr import cli

    ctx = click.Context(cli.main)
    param = click.Option(["--tools"])
    name = docker_container.ident

    def values(incomplete: str) -> list[tuple[str, str]]:
        return [(i.value, i.type) for i in cli._complete_tools(ctx, param, incomplete)]

    assert values(name[:-2]) == [(name, "plain")]
    assert values(f"docker:{name[:-2]}") == [(f"docker:{name}", "plain")]
    assert values("/us") == [("/us", "dir")]
    assert values("nosuchtype:x") == []
