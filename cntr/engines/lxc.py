"""LXC: `lxc-info --no-humanize --state --pid --name NAME`.

LXC containers have names only; they live in the lxcpath (`lxc-config lxc.lxcpath`, by default
/var/lib/lxc for root).  `lxc-ls --fancy -F NAME,STATE,PID` lists them.

Caveats:
- Only the default lxcpath is searched: containers made with `-P DIR` are not found.
- LXD's containers are LXC containers too, but in LXD's own lxcpath: the lxd engine finds them.
- A stopped container raises NotRunning with its configuration (``describe_stopped``),
  for an offline session over its directory root.
- Unprivileged containers of other users (lxc-start as a user) are in that user's lxcpath and
  are not found.

A name with no ``<lxcpath>/NAME/config`` is not asked about: lxc-info would only say it does
not exist, after ~5 ms of process start-up on every attach by name.  The lxcpath is
``lxc.lxcpath`` of /etc/lxc/lxc.conf, else /var/lib/lxc.
"""

from __future__ import annotations

import os

from cntr.context import Offline
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


def parse_config(text: str) -> dict[str, list[str]]:
    """The keys of an LXC config file, each with its values in order (includes are not
    followed)."""
    out: dict[str, list[str]] = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep and not key.strip().startswith("#"):
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def describe_stopped(config_path: str, name: str) -> Offline | None:
    """What an offline session over a stopped LXC container needs, from its config: its
    directory root (``lxc.rootfs.path``), ``lxc.environment``, ``lxc.init.cwd``,
    ``lxc.init.uid``/``gid``, ``lxc.uts.name`` and every capability but ``lxc.cap.drop``
    (or only ``lxc.cap.keep``); None when the root is not a plain directory or the
    container maps its ids (a user namespace: not offline yet)."""
    from cntr.engines.docker import cap_mask

    try:
        with open(config_path, encoding="utf-8", errors="replace") as f:
            conf = parse_config(f.read())
    except OSError:
        return None
    root = (conf.get("lxc.rootfs.path") or [""])[-1]
    if root.startswith("dir:"):
        root = root[4:]
    if not root.startswith("/") or ":" in root or not os.path.isdir(root) or \
            conf.get("lxc.idmap"):
        return None
    env = {}
    for item in conf.get("lxc.environment", []):
        key, _, value = item.partition("=")
        env[key] = value
    keep = " ".join(conf.get("lxc.cap.keep", [])).split()
    caps = cap_mask(keep) if keep else (
        cap_mask(["ALL"]) & ~cap_mask(" ".join(conf.get("lxc.cap.drop", [])).split()))
    uid = (conf.get("lxc.init.uid") or [""])[-1]
    gid = (conf.get("lxc.init.gid") or [""])[-1]
    return Offline(state="stopped", exit_code=0, rootfs="dir", lower=[], upper="", work="",
                   path=root, env=env, cwd=(conf.get("lxc.init.cwd") or ["/"])[-1],
                   user=f"{uid}:{gid}" if uid and gid else uid,
                   hostname=(conf.get("lxc.uts.name") or [name])[-1], caps=caps, image="")


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
            offline = describe_stopped(os.path.join(path, ident, "config"), ident)
            raise NotRunning(f"lxc: container '{ident}' is not running (state {state or '?'})",
                             Match(self.name, ident, ident, 0, "stopped"), offline)
        return [Match(self.name, ident, ident, pid)]

    def stopped(self) -> list[Match]:
        """Every container of the lxcpath that is not running (state stopped)."""
        res = run_tool(["lxc-ls", "--fancy", "-F", "NAME,STATE,PID"])
        if res is None or res[0] != 0:
            return []
        return [Match(self.name, n, n, 0, "stopped") for n, state, pid in parse_ls(res[1])
                if state == "STOPPED"]

    def list(self) -> list[Match]:
        res = run_tool(["lxc-ls", "--fancy", "-F", "NAME,STATE,PID"])
        if res is None or res[0] != 0:
            return []
        return [Match(self.name, n, n, pid) for n, state, pid in parse_ls(res[1])
                if state == "RUNNING" and pid > 0]
