"""The ``cntr`` console entry point.

For ``cntr attach`` it starts serve-fs before anything else is imported, so serve-fs's own
start-up overlaps cntr's (see ``cntr.launch``); then it runs the click CLI.
"""

from __future__ import annotations

import sys


def main() -> None:
    if len(sys.argv) > 2 and sys.argv[1] == "attach" and "--help" not in sys.argv[2:]:
        from cntr import launch

        launch.prestart()
    from cntr.cli import main as cli

    cli()
