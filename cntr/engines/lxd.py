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


def parse_state(name: str, data: Any) -> Match:
    """A Match from the answer to GET /1.0/instances/NAME/state."""
    meta = data.get("metadata") if isinstance(data, dict) else None
    if not isinstance(meta, dict):
        raise EngineError(f"lxd: expected metadata in the state of '{name}', got {data!r:.80}")
    pid = meta.get("pid")
    if meta.get("status") != "Running" or not isinstance(pid, int) or pid <= 0:
        raise NotRunning(f"lxd: container '{name}' is not running (status {meta.get('status')})")
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
        return [parse_state(ident, data)]

    def list(self) -> list[Match]:
        sock = self._socket()
        if sock is None:
            return []
        try:
            status, data = unix_http_json(sock, "/1.0/instances?recursion=2", self.timeout)
        except (OSError, EngineError):
            return []
        return parse_instances(data) if status == 200 else []
