"""The stages of ``cntr attach``, one module each, callable as plain functions.

resolve -> capture -> (serve_fs, enter); ``attach`` composes them and ``exec`` runs a
container command in the container's own root.  No module here imports click: the CLI
(``cntr/cli.py``) parses arguments and calls these functions.

The package is ``cntr.stages``: in the checkout ``cntr/stages`` is a link to this
directory, and the wheel and the .deb install it as cntr/stages, so no generic top-level
name ``stages`` is installed.  Nothing in cntr/ imports it but the command line above it
(``cntr.cli``, ``cntr.entry``).
"""
