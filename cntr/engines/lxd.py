"""LXD: its REST API on the local unix socket, `GET /1.0/instances/NAME/state` -> pid.

The socket is $LXD_DIR/unix.socket, else /var/lib/lxd/unix.socket (Debian's package), else
/var/snap/lxd/common/lxd/unix.socket (the snap).  `GET /1.0/instances?recursion=2` lists every
instance with its state for `cntr ps`.  No CLI fallback: `lxc info` talks to the same socket.

Caveats:
- Only the default project is searched.
- LXD containers are user-namespaced by default: their uids are shifted (root inside is
  1000000 outside); the pid is a host pid as usual.
- Virtual machines (type virtual-machine) have a pid (qemu's) but no container to enter.
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
    api_message,
    on_path,
    quote,
    reason_of,
    unix_http_json,
)

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from typing import Any

SOCKETS = ("/var/lib/lxd/unix.socket", "/var/snap/lxd/common/lxd/unix.socket")


def find_socket() -> str | None:
    """The first LXD socket that exists."""
    lxd_dir = os.environ.get("LXD_DIR")
    for path in ([f"{lxd_dir}/unix.socket"] if lxd_dir else []) + list(SOCKETS):
        if os.path.exists(path):
            return path
    return None


LXD_DROPPED_CAPS = ("sys_time", "sys_module", "sys_rawio", "mac_admin", "mac_override")
"""What LXD's default lxc configuration drops (lxc.cap.drop) from an unprivileged container."""


def parse_idmap(text: str) -> tuple[list[tuple[int, int, int]], list[tuple[int, int, int]]]:
    """(uid map, gid map) from LXD's volatile.*.idmap JSON ([{Isuid, Isgid, Hostid, Nsid,
    Maprange}, ...])."""
    import json

    uids: list[tuple[int, int, int]] = []
    gids: list[tuple[int, int, int]] = []
    try:
        entries = json.loads(text or "[]")
    except ValueError:
        return [], []
    for e in entries if isinstance(entries, list) else []:
        if not isinstance(e, dict):
            continue
        line = (int(e.get("Nsid", 0)), int(e.get("Hostid", 0)), int(e.get("Maprange", 0)))
        if e.get("Isuid"):
            uids.append(line)
        if e.get("Isgid"):
            gids.append(line)
    return uids, gids


def describe_stopped(meta: dict[str, Any], pool_source: str) -> Offline | None:
    """What an offline session over a stopped LXD container needs, from GET
    /1.0/instances/NAME (expanded config) and its pool's source directory (dir pools)."""
    from cntr.engines.docker import cap_mask

    name = str(meta.get("name") or "")
    from cntr.engines.docker import _dict

    config = _dict(meta.get("expanded_config"))
    root = os.path.join(pool_source, "containers", name, "rootfs")
    if not name or not pool_source or not os.path.isdir(root):
        return None
    env = {k[len("environment."):]: str(v) for k, v in config.items()
           if k.startswith("environment.")}
    hostname = name
    for line in str(config.get("raw.lxc", "")).splitlines():
        key, _, value = line.partition("=")
        if key.strip() == "lxc.uts.name":
            hostname = value.strip()
    privileged = str(config.get("security.privileged", "")).lower() == "true"
    uids, gids = ([], []) if privileged else parse_idmap(
        str(config.get("volatile.last_state.idmap") or config.get("volatile.idmap.current")
            or ""))
    caps = cap_mask(["ALL"]) & ~cap_mask(LXD_DROPPED_CAPS)
    return Offline(state="stopped", exit_code=0, rootfs="dir", lower=[], upper="", work="",
                   path=root, env=env, cwd="/root" if os.path.isdir(f"{root}/root") else "/",
                   user="", hostname=hostname, caps=caps,
                   image=str(config.get("volatile.base_image", "")), uid_map=uids,
                   gid_map=gids)


def parse_state(name: str, data: Any) -> Match:
    """A Match from the answer to GET /1.0/instances/NAME/state."""
    meta = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict):
        raise EngineError(f"lxd: expected metadata in the state of '{name}', got {data!r:.80}")
    pid = meta.get("pid")
    if meta.get("status") != "Running" or not isinstance(pid, int) or pid <= 0:
        raise NotRunning(f"lxd: container '{name}' is not running (status {meta.get('status')})",
                         Match("lxd", name, name, 0, "stopped"))
    return Match("lxd", name, name, pid)


def parse_instances(data: Any) -> list[Match]:
    """Running instances from GET /1.0/instances?recursion=2."""
    out = []
    meta = data.get("metadata") if isinstance(data, dict) else None
    for inst in meta if isinstance(meta, list) else []:
        if not isinstance(inst, dict) or inst.get("type", "container") != "container":
            continue
        state = inst.get("state") or {}
        pid = state.get("pid") if isinstance(state, dict) else None
        if inst.get("status") == "Running" and isinstance(pid, int) and pid > 0:
            out.append(Match("lxd", str(inst.get("name")), str(inst.get("name")), pid))
    return out


class LxdEngine(BaseEngine):
    """LXD containers of the default project, via the API socket."""

    name = "lxd"

    def __init__(self, socket_path: str | None = None, timeout: float = 3.0) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.timeout = timeout

    def _socket(self) -> str | None:
        return self.socket_path if self.socket_path is not None else find_socket()

    def lookup(self, ident: str) -> list[Match]:
        self.reason = NO_SUCH_CONTAINER
        if not ident or "/" in ident:
            return self._none(NO_SUCH_CONTAINER)
        sock = self._socket()
        if sock is None or not os.path.exists(sock):
            if not on_path("lxd") and not on_path("lxc"):
                return self._none(NOT_INSTALLED)
            raise EngineError(f"lxd: not running (no {sock or SOCKETS[0]})")
        try:
            status, data = unix_http_json(sock, f"/1.0/instances/{quote(ident)}/state",
                                          self.timeout)
        except OSError as exc:
            raise EngineError(f"lxd: {sock}: {reason_of(exc)}") from exc
        if status == 404:
            return self._none(NO_SUCH_CONTAINER)
        if status != 200:
            raise EngineError(f"lxd: {sock}: {api_message(data, f'HTTP {status}')}")
        try:
            return [parse_state(ident, data)]
        except NotRunning as exc:
            raise NotRunning(str(exc), exc.match, self._describe(sock, ident)) from None

    def _describe(self, sock: str, name: str) -> Offline | None:
        """The offline description of stopped container ``name`` (dir pools only)."""
        try:
            status, data = unix_http_json(sock, f"/1.0/instances/{quote(name)}", self.timeout)
            meta = data.get("metadata") if status == 200 and isinstance(data, dict) else None
            if not isinstance(meta, dict) or meta.get("type", "container") != "container":
                return None
            devices = meta.get("expanded_devices") or {}
            pool = next((d.get("pool") for d in devices.values()
                         if isinstance(d, dict) and d.get("type") == "disk"
                         and d.get("path") == "/"), None)
            if not isinstance(pool, str):
                return None
            status, pdata = unix_http_json(sock, f"/1.0/storage-pools/{quote(pool)}",
                                           self.timeout)
            pmeta = pdata.get("metadata") if status == 200 and isinstance(pdata, dict) else {}
            if not isinstance(pmeta, dict) or pmeta.get("driver") != "dir":
                return None
            source = (pmeta.get("config") or {}).get("source") or ""
            return describe_stopped(meta, str(source))
        except (OSError, EngineError, AttributeError, ValueError):
            return None

    def stopped(self) -> list[Match]:
        """Every container of the default project that is not running."""
        sock = self._socket()
        if sock is None:
            return []
        try:
            status, data = unix_http_json(sock, "/1.0/instances?recursion=1", self.timeout)
        except (OSError, EngineError):
            return []
        meta = data.get("metadata") if status == 200 and isinstance(data, dict) else None
        return [Match("lxd", str(i.get("name")), str(i.get("name")), 0, "stopped")
                for i in (meta if isinstance(meta, list) else [])
                if isinstance(i, dict) and i.get("type", "container") == "container"
                and i.get("status") == "Stopped"]

    def list(self) -> list[Match]:
        sock = self._socket()
        if sock is None:
            return []
        try:
            status, data = unix_http_json(sock, "/1.0/instances?recursion=2", self.timeout)
        except (OSError, EngineError):
            return []
        return parse_instances(data) if status == 200 else []
