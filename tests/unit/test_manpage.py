"""cntr(1): rendered by man, it lists every subcommand and every option ``--help`` lists,
and every environment variable cntr's code reads."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import click
from click.testing import CliRunner

from cntr import cli
from tests.conftest import REPO

OPTION = re.compile(r"^  (-\S.*?)(?:  |$)")
ENV_READ = re.compile(r"""environ(?:\.get\(|\[)"([A-Z_]+)"|"([A-Z_]+)" (?:not )?in os\.environ""")


def render(page: Path) -> str:
    out = subprocess.run(["man", "--warnings", "-l", str(page)], capture_output=True,
                         text=True, env=dict(os.environ, MANWIDTH="250"), timeout=60)
    assert out.returncode == 0 and out.stderr == "", out.stderr
    return out.stdout


def tagged(tag: str, text: str) -> bool:
    """Whether ``text`` has a list item (.TP) for ``tag``: short tags share the line."""
    return re.search(rf"\n {{7}}{re.escape(tag)}(\n| )", text) is not None


def help_options(args: list[str]) -> list[str]:
    """The option column of ``cntr ARGS --help``."""
    result = CliRunner().invoke(cli.main, [*args, "--help"], prog_name="cntr")
    assert result.exit_code == 0
    section = result.output.split("\nOptions:\n", 1)[1].split("\n\n", 1)[0]
    return [m.group(1) for line in section.splitlines() if (m := OPTION.match(line))]


def test_man_renders_every_command_and_option(tmp_path: Path) -> None:
    page = tmp_path / "cntr.1"
    subprocess.run([sys.executable, "-m", "cntr.manpage", str(page)], check=True,
                   cwd=REPO, timeout=60)
    text = render(page)
    lines = [line.strip() for line in text.splitlines()]
    root = click.Context(cli.main, info_name="cntr")
    commands = cli.main.list_commands(root)
    assert "attach" in commands and "doctor" in commands
    sections = "\n" + text.split("\nCOMMANDS\n", 1)[1].split("\nEXIT STATUS\n", 1)[0]
    for name in commands:
        usage = [line for line in lines if line.startswith(f"cntr {name} [OPTIONS]")]
        assert usage, name  # in the synopsis and as its section's title
        own = sections.split(f"\n   cntr {name} ")[1].split("\n   cntr ")[0]
        for opts in help_options([name]):
            assert tagged(opts, own), (name, opts)
    for opts in help_options([]):
        assert tagged(opts, text.split("\nCOMMANDS\n")[0]), opts
    for heading in ("NAME", "SYNOPSIS", "DESCRIPTION", "OPTIONS", "EXIT STATUS",
                    "ENVIRONMENT", "FILES", "EXAMPLES"):
        assert heading in lines
    exit_codes = text.split("\nEXIT STATUS\n")[1].split("\nENVIRONMENT\n")[0]
    for code in ("1", "2", "3", "4", "5", "6", "7", "8", "125", "126", "127", "128+N"):
        assert f"\n       {code} " in exit_codes, code
    # every variable the code reads is documented
    environment = text.split("\nENVIRONMENT\n")[1].split("\nFILES\n")[0]
    read = set()
    for path in [*REPO.glob("cntr/**/*.py"), *REPO.glob("stages/*.py")]:
        if path.name == "manpage.py":
            continue  # SOURCE_DATE_EPOCH: read when the page is built, not by cntr
        for m in ENV_READ.finditer(path.read_text()):
            read.add(m.group(1) or m.group(2))
    assert {"CNTR_BASE_DIR", "DOCKER_HOST", "CONTAINERD_ADDRESS"} <= read
    for var in sorted(read):
        assert re.search(rf"\b{var}\b", environment), var


def test_setup_installed_the_page() -> None:
    installed = Path("/usr/local/share/man/man1/cntr.1")
    assert installed.exists()  # scripts/setup generates it
    assert "\n.SH EXIT STATUS\n" in installed.read_text()
