"""The stages of ``cntr attach``, one module each, callable as plain functions.

resolve -> capture -> (serve_fs, enter); ``attach`` composes them and ``exec`` runs a
container command in the container's own root.  No module here imports click: the CLI
(``cntr/cli.py``) parses arguments and calls these functions.
"""
