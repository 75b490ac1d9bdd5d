"""systemd-nspawn: machined's record of the machine, else the systemd-nspawn process.

With systemd-machined running, `machinectl show NAME -p Leader --value` gives the container's
leader pid.  machined needs systemd as PID 1, which is not the case on every machine (not on
cntr's test machines), and nspawn runs fine without it (`--register=no`).  So, when machinectl
does not know NAME, the systemd-nspawn processes are scanned: the machine name is `-M NAME` /
`--machine=NAME`, else the last component of `-D DIR` / `--directory=DIR` (or of `-i IMAGE`
without its .raw suffix), as systemd-nspawn(1) says; the leader is the nspawn process's child
(nspawn clones the container's init with CLONE_PARENT, so it is nspawn's direct child).

Caveats:
- The scan sees every nspawn process; one that is still setting up has no child yet and is
  skipped.
- `--ephemeral` machines are named after a random copy of the directory unless -M is given.
"""

from __future__ import annotations

import os

from cntr.engines.base import (
    NO_SUCH_CONTAINER,
    NOT_INSTALLED,
    BaseEngine,
    Match,
    alive,
    children,
    commands,
    on_path,
    option_value,
    read_cmdline,
    run_tool,
)


def machine_name(argv: list[str]) -> str | None:
    """The machine name of a systemd-nspawn command line."""
    name = option_value(argv, "-M", "--machine")
    if name:
        return name
    directory = option_value(argv, "-D", "--directory")
    if directory:
        return os.path.basename(directory.rstrip("/")) or None
    image = option_value(argv, "-i", "--image")
    if image:
        return os.path.basename(image).removesuffix(".raw") or None
    return None


def parse_leader(text: str) -> int:
    """The pid of `machinectl show -p Leader` ("Leader=42" or, with --value, "42"); 0 if none."""
    value = text.strip().removeprefix("Leader=")
    return int(value) if value.isdigit() else 0


def scan(proc: str = "/proc", only: str | None = None) -> list[tuple[str, int]]:
    """(machine name, leader pid) of every systemd-nspawn process that has a living child
    (``only``: of those whose machine is called so; the children of the others are not
    looked for, a scan of every process's stat)."""
    out = []
    for pid, comm in commands(proc).items():
        if comm != "systemd-nspawn" or not alive(pid, proc):
            continue
        name = machine_name(read_cmdline(pid, proc))
        if only is not None and name != only:
            continue
        kids = children(pid, proc)
        if name and kids:
            out.append((name, kids[0]))
    return out


class NspawnEngine(BaseEngine):
    """systemd-nspawn machines (registered or not)."""

    name = "nspawn"

    def __init__(self, proc: str = "/proc") -> None:
        super().__init__()
        self.proc = proc

    def _machined(self, ident: str) -> int:
        # machined needs systemd as PID 1 (sd_booted(3): /run/systemd/system exists) and
        # keeps its state under /run/systemd/machines; without both, machinectl can only
        # fail, ~8 ms later.
        if not (os.path.isdir("/run/systemd/system") and os.path.isdir("/run/systemd/machines")):
            return 0
        res = run_tool(["machinectl", "show", ident, "-p", "Leader", "--value"], timeout=3)
        return parse_leader(res[1]) if res is not None and res[0] == 0 else 0

    def lookup(self, ident: str) -> list[Match]:
        self.reason = NO_SUCH_CONTAINER
        if not ident:
            return self._none(NO_SUCH_CONTAINER)
        leader = self._machined(ident)
        if leader:
            return [Match(self.name, ident, ident, leader)]
        found = [Match(self.name, n, n, pid) for n, pid in scan(self.proc, ident)]
        if found:
            return found
        if not on_path("systemd-nspawn"):
            return self._none(NOT_INSTALLED)
        return self._none("no such machine")

    def list(self) -> list[Match]:
        return [Match(self.name, n, n, pid) for n, pid in scan(self.proc)]
