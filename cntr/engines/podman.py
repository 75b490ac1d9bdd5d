"""Podman: its API socket when `podman system service` runs, else `podman inspect`, then conmon.

Podman has no daemon.  Its docker-compatible API exists only while `podman system service` runs:
$CONTAINER_HOST (unix://...), else /run/podman/podman.sock for root and
$XDG_RUNTIME_DIR/podman/podman.sock for others.  Without it the CLI is asked:
`podman inspect --type container IDENT`.

The CLI is run WITHOUT `--cgroup-manager`/`--runtime`: inspect reads podman's database and
each container records its own OCI runtime, so the flags the container was created with (here
`--cgroup-manager=cgroupfs --runtime runc`, see scripts/engines) are not needed to read it; and
cntr must not write /etc/containers/containers.conf, which belongs to the admin.

Rootless containers of other users live in stores that root's `podman` does not read.  Their
conmon processes (one per container, a child of nobody) carry `-c ID` (`--cid`), `-n NAME`
(`--name`) and `-p PIDFILE` (`--container-pidfile`) on their command lines; the container's
process is the pid in that file, or else conmon's child.  That scan runs when the socket and the
CLI found nothing, and costs one pass over /proc.

Caveats:
- Measured (podman 4.3, Debian 12, median of 20): API socket ~2 ms, `podman inspect` ~40-45 ms
  (~20x), the conmon scan ~1.5 ms.
- The conmon scan matches a name exactly and an id by prefix; it cannot tell a paused container.
- A stopped container (State.Pid 0) raises NotRunning.
"""

from __future__ import annotations

import os

from cntr.engines.base import (
    NO_SUCH_CONTAINER,
    NOT_INSTALLED,
    EngineError,
    Match,
    NotRunning,
    alive,
    children,
    option_value,
    processes,
    read_cmdline,
)
from cntr.engines.docker import DockerCompatEngine, socket_from_host
from cntr.record import record


def default_socket() -> str:
    """Where `podman system service` listens by default for this user."""
    if os.geteuid() == 0:
        return "/run/podman/podman.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return f"{runtime}/podman/podman.sock"


@record(frozen=True)
class Conmon:
    """What a conmon command line says about its container."""

    pid: int
    """conmon's own pid."""
    cid: str
    """The container's full id (-c/--cid)."""
    name: str
    """The container's name (-n/--name), "" when absent."""
    pidfile: str
    """Where the OCI runtime wrote the container's pid (-p/--container-pidfile), "" if absent."""
    uid: int
    """The user that owns conmon (0 for rootful podman)."""


def parse_conmon(pid: int, argv: list[str], uid: int) -> Conmon | None:
    """A Conmon from conmon's argv, None when it names no container."""
    cid = option_value(argv, "-c", "--cid")
    if not cid:
        return None
    name = option_value(argv, "-n", "--name") or ""
    pidfile = option_value(argv, "-p", "--container-pidfile") or ""
    return Conmon(pid, cid, name, pidfile, uid)


def scan_conmon(proc: str = "/proc") -> list[Conmon]:
    """Every conmon process's container."""
    found = []
    for pid, st in processes(proc).items():
        if st.comm != "conmon":
            continue
        c = parse_conmon(pid, read_cmdline(pid, proc), st.uid)
        if c is not None:
            found.append(c)
    return found


def conmon_container_pid(c: Conmon, proc: str = "/proc") -> int:
    """The container's main pid: the pidfile's content if readable and alive, else conmon's
    first child (conmon is the subreaper of the container process); 0 if none."""
    if c.pidfile:
        try:
            with open(c.pidfile) as f:
                pid = int(f.read().strip() or 0)
            if pid > 0 and alive(pid, proc):
                return pid
        except (OSError, ValueError):
            pass
    kids = children(c.pid, proc)
    return kids[0] if kids else 0


def conmon_matches(ident: str, conmons: list[Conmon], proc: str = "/proc") -> list[Match]:
    """Matches for `ident` (exact name, full id or id prefix) among conmon processes."""
    exact = [c for c in conmons if ident in (c.name, c.cid)]
    chosen = exact or [c for c in conmons if len(ident) >= 3 and c.cid.startswith(ident)]
    out = []
    for c in chosen:
        pid = conmon_container_pid(c, proc)
        if pid:
            out.append(Match("podman", c.cid, c.name, pid))
    return out


class PodmanEngine(DockerCompatEngine):
    """podman: API socket, then `podman inspect`, then conmon processes."""

    name = "podman"
    cli = "podman"

    def __init__(
        self, socket_path: str | None = None, timeout: float | None = None, proc: str = "/proc"
    ) -> None:
        if socket_path is None:
            socket_path = socket_from_host(os.environ.get("CONTAINER_HOST"), default_socket())
        super().__init__(socket_path, timeout)
        self.proc = proc

    def lookup(self, ident: str) -> list[Match]:
        error = None
        try:
            found = super().lookup(ident)
        except NotRunning:
            raise
        except EngineError as exc:
            # The socket or the CLI failed; conmon may still know the container.
            found, error = [], exc
        if found:
            return found
        reason = self.reason
        # Rootless containers of other users: only their conmon tells.
        others = conmon_matches(ident, scan_conmon(self.proc), self.proc) if ident else []
        if others:
            return others
        if error is not None:
            raise error
        return self._none(reason if reason == NOT_INSTALLED else NO_SUCH_CONTAINER)

    def list(self) -> list[Match]:
        seen = {m.container_id: m for m in super().list()}
        for c in scan_conmon(self.proc):
            if c.cid not in seen:
                pid = conmon_container_pid(c, self.proc)
                if pid:
                    seen[c.cid] = Match("podman", c.cid, c.name, pid)
        return list(seen.values())
