"""``python -m cntr``: the same as the ``cntr`` command."""

from cntr.entry import main

main()
