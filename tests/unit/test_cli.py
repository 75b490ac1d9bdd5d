"""The command line through click's CliRunner: parsing, usage errors and exit codes that
need no privileges."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from cntr import cli, context, entry
from tests.unit.test_records import sample_context


@pytest.fixture(autouse=True)
def in_process_exit() -> Iterator[None]:
    cli.FAST_EXIT = False  # os._exit would end the test process
    yield
    cli.FAST_EXIT = True


def run(*args: str, input: bytes | None = None) -> tuple[int, str]:
    result = CliRunner().invoke(cli.main, list(args), input=input)
    return result.exit_code, result.output


def test_help_lists_every_subcommand() -> None:
    code, out = run("--help")
    assert code == 0
    for name in ("attach", "exec", "resolve", "capture", "enter", "serve-fs", "diff", "ps"):
        assert name in out


def test_unknown_engine_type_is_a_usage_error() -> None:
    code, out = run("resolve", "x", "-t", "docker,nosuch")
    assert code == 2
    assert "nosuch" in out


def test_enter_rejects_garbage_with_exit_3() -> None:
    code, out = run("enter", "--", "true", input=b"garbage")
    assert code == 3
    assert out.startswith("cntr: enter: ") and out.count("\n") == 1


def test_enter_rejects_an_empty_pipe() -> None:
    code, out = run("enter", "--", "true", input=b"")
    assert code == 3
    assert "empty" in out


def test_diff_of_identical_contexts(tmp_path: Path) -> None:
    saved = tmp_path / "ctx"
    saved.write_bytes(context.encode(sample_context(), "msgpack"))
    code, out = run("diff", str(saved), str(saved))
    assert (code, out) == (0, "")


def test_diff_names_what_changed(tmp_path: Path) -> None:
    a, b = tmp_path / "a", tmp_path / "b.json"
    a.write_bytes(context.encode(sample_context(), "msgpack"))
    b.write_bytes(context.encode(sample_context(env={"PATH": "/bin", "Y": "1"}), "json"))
    code, out = run("diff", str(a), str(b))
    assert code == 1
    assert "env: - X=é" in out.splitlines()
    assert "env: + Y=1" in out.splitlines()


def test_diff_of_a_missing_file_is_bad_input(tmp_path: Path) -> None:
    code, out = run("diff", str(tmp_path / "nope"), str(tmp_path / "nope"))
    assert code == 3
    assert "cannot read" in out


def test_serve_fs_needs_one_target(tmp_path: Path) -> None:
    code, out = run("serve-fs", str(tmp_path))
    assert code == 2
    assert "exactly one of --mountpoint and --fuse-fd" in out


@pytest.mark.parametrize(("args", "want"), [
    (["web"], ("web", None, [])),
    (["web", "--", "ls", "-l", "--tty"], ("web", None, ["ls", "-l", "--tty"])),
    (["-t", "docker", "web", "--", "sh"], ("web", ["docker"], ["sh"])),
    (["--type", "docker,podman", "web"], ("web", ["docker", "podman"], [])),
    (["--type=lxc", "42", "--"], ("42", ["lxc"], [])),
])
def test_plain_attach_lines_skip_click(args: list[str],
                                       want: tuple[str, list[str] | None, list[str]]) -> None:
    assert entry.plain_attach(args) == want


@pytest.mark.parametrize("args", [
    [],  # no ID: click's usage error
    ["-t"],
    ["--tty", "web"],  # any other option: click parses it
    ["web", "ls"],  # a command without "--": click decides what its options mean
    ["web", "--no-tty", "--", "sh"],
    ["-t", "nosuch", "web"],  # click reports the bad type
    ["-tdocker", "web"],
])
def test_other_attach_lines_go_to_click(args: list[str]) -> None:
    assert entry.plain_attach(args) is None
