"""``python -m cntr``: the same as the ``cntr`` command."""

from cntr.cli import main

main()
