"""LXC: `lxc-info --no-humanize --state --pid --name NAME`.

LXC containers have names only; they live in the lxcpath (`lxc-config lxc.lxcpath`, by default
/var/lib/lxc for root).  `lxc-ls --fancy -F NAME,STATE,PID` lists them.

Caveats:
- Only the default lxcpath is searched: containers made with `-P DIR` are not found.
- LXD's containers are LXC containers too, but in LXD's own lxcpath: the lxd engine finds them.
- Unprivileged containers of other users (lxc-start as a user) are in that user's lxcpath and
  are not found.

A name with no ``<lxcpath>/NAME/config`` is not asked about: lxc-info would only say it does
not exist, after ~5 ms of process start-up on every attach by name.  The lxcpath is
``lxc.lxcpath`` of /etc/lxc/lxc.conf, else /var/lib/lxc.
"""

from __future__ import annotations

import os

from cntr.engines.base import (
    NO_SUCH_CONTAINER,
    NOT_INSTALLED,
    BaseEngine,
    EngineError,
    Match,
    NotRunning,
    first_line,
    on_path,
    run_tool,
)

DEFAULT_LXCPATH = "/var/lib/lxc"


def lxcpath(conf: str = "/etc/lxc/lxc.conf") -> str:
    """root's lxcpath: ``lxc.lxcpath`` of the system configuration, else the default."""
    try:
        with open(conf, encoding="utf-8", errors="replace") as f:
            for line in f:
                key, sep, value = line.partition("=")
                if sep and key.strip() == "lxc.lxcpath" and value.strip():
                    return value.strip()
    except OSError:
        pass
    return DEFAULT_LXCPATH


def parse_info(text: str) -> tuple[str, int]:
    """(state, pid) from `lxc-info -s -p -H` ("State: RUNNING", "PID: 42"); pid 0 if none."""
    state, pid = "", 0
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key.strip() == "State":
            state = value.strip()
        elif key.strip() == "PID" and value.strip().isdigit():
            pid = int(value.strip())
    return state, pid


def parse_ls(text: str) -> list[tuple[str, str, int]]:
    """(name, state, pid) rows of `lxc-ls --fancy -F NAME,STATE,PID`."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[0] != "NAME":
            pid = int(fields[2]) if len(fields) > 2 and fields[2].isdigit() else 0
            out.append((fields[0], fields[1], pid))
    return out


class LxcEngine(BaseEngine):
    """LXC containers of the default lxcpath."""

    name = "lxc"

    def __init__(self, lxcpath: str | None = None) -> None:
        super().__init__()
        #: where the containers live (None: root's lxcpath, read at each lookup)
        self.lxcpath = lxcpath

    def lookup(self, ident: str) -> list[Match]:
        self.reason = NO_SUCH_CONTAINER
        if not ident or "/" in ident or ident in (".", ".."):
            return self._none(NO_SUCH_CONTAINER)
        path = self.lxcpath or lxcpath()
        if (os.path.isdir(path) and not os.path.exists(os.path.join(path, ident, "config"))
                and on_path("lxc-info")):
            return self._none(NO_SUCH_CONTAINER)
        res = run_tool(["lxc-info", "--no-humanize", "--state", "--pid", "--name", ident])
        if res is None:
            return self._none(NOT_INSTALLED)
        rc, out, err = res
        if rc != 0:
            if "doesn't exist" in err or "does not exist" in err:
                return self._none(NO_SUCH_CONTAINER)
            raise EngineError(f"lxc: {first_line(err) or f'lxc-info exit {rc}'}")
        state, pid = parse_info(out)
        if pid <= 0:
            raise NotRunning(f"lxc: container '{ident}' is not running (state {state or '?'})")
        return [Match(self.name, ident, ident, pid)]

    def list(self) -> list[Match]:
        res = run_tool(["lxc-ls", "--fancy", "-F", "NAME,STATE,PID"])
        if res is None or res[0] != 0:
            return []
        return [Match(self.name, n, n, pid) for n, state, pid in parse_ls(res[1])
                if state == "RUNNING" and pid > 0]
