"""The ``cntr`` console entry point.

For ``cntr attach`` it starts serve-fs before anything else is imported, so serve-fs's own
start-up overlaps cntr's (see ``cntr.launch``), and with it the wait of the session's first
cgroup migration (``cntr.linux.cgroups.warm_up``).  The plain forms of attach, ``cntr attach
[-t TYPES] ID [-- COMMAND...]``, then run without click: importing click costs ~30 ms, a
third of an attach.  Every other command line, including any other attach option and
every mistake, goes to the click CLI (`cntr.cli`), which parses and reports it.
"""

from __future__ import annotations

import os
import sys


def main() -> None:
    args = sys.argv[1:]
    if len(args) > 1 and args[0] == "attach" and "--help" not in args and "-h" not in args:
        import gc

        # No cyclic garbage collection while cntr imports, resolves and captures: its
        # passes (~1.5 ms) only walk objects that all live on.  cntr.stages.attach turns it
        # back on before the session, serve-fs once it has imported its modules.
        gc.disable()
        from cntr import launch
        from cntr.linux import cgroups

        launch.prestart()
        if os.geteuid() == 0:
            cgroups.warm_up()  # a session's cgroup join, ~30 ms later, then does not wait
        plain = plain_attach(args[1:])
        if plain is not None:
            _attach(*plain)
    from cntr.cli import main as cli

    cli()


def plain_attach(args: list[str]) -> tuple[str, list[str] | None, list[str]] | None:
    """``(ID, engine types or None, COMMAND)`` when ``args`` (what follows ``attach``) is
    ``[-t TYPES | --type TYPES | --type=TYPES] ID [-- COMMAND...]``; None for any other
    form (click decides what those mean)."""
    types: str | None = None
    i = 0
    while i < len(args) and args[i].startswith("-"):
        arg = args[i]
        if arg in ("-t", "--type") and i + 1 < len(args):
            types = args[i + 1]
            i += 2
        elif arg.startswith("--type="):
            types = arg[len("--type="):]
            i += 1
        else:
            return None
    if i >= len(args):
        return None
    ident, rest = args[i], args[i + 1:]
    if rest and rest[0] != "--":
        return None
    parsed: list[str] | None = None
    if types:
        from cntr.engines import parse_types

        try:
            parsed = parse_types(types)
        except ValueError:
            return None  # click reports it as a usage error
    return ident, parsed, rest[1:]


def _attach(ident: str, types: list[str] | None, command: list[str]) -> None:
    from cntr.errors import run_stage

    def run() -> int:
        from cntr import audit
        from cntr.stages.attach import attach
        from cntr.stages.enter import EnterOptions

        audit.STAGE = "attach"
        return attach(ident, types, EnterOptions(command=command))

    run_stage("attach", run)
