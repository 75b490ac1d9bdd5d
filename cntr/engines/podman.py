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

Before the CLI, root's podman database is read (`cntr.engines.bolt`, podman 4's
``bolt_state.db``): when no container there has the name, the id or an id starting so,
podman would only say "no such container", and is not asked (~25 ms, ~40 ms of CPU, on
every attach by name of another engine's container).  Any other answer (a container or
pod has it, the database is being written, is elsewhere than its default place, is not
one this reader understands) goes to the CLI as before.  ``db_path`` says where the
database is: ``<graphroot>/libpod/bolt_state.db``, with the graphroot of storage.conf;
nowhere (the CLI decides) when not root, when ``CONTAINERS_CONF``,
``CONTAINERS_STORAGE_CONF``, ``CONTAINER_HOST`` (podman is then a client of that service),
``CONTAINER_CONNECTION`` or ``CNTR_HOST_ROOT`` is set, when a containers.conf moves
``static_dir``, chooses a ``database_backend`` or makes podman ``remote``, or when a SQLite
database (``db.sql``, podman >= 4.8) is there too.

Caveats:
- Measured (podman 4.3, Debian 12, median of 20): API socket ~2 ms, `podman inspect` ~40-45 ms
  (~20x), the conmon scan ~1.5 ms, the database ~0.3 ms.
- The conmon scan matches a name exactly and an id by prefix; it cannot tell a paused container.
- A stopped container (State.Pid 0) raises NotRunning.
"""

from __future__ import annotations

import os

from cntr.engines import bolt
from cntr.engines.base import (
    NO_SUCH_CONTAINER,
    NOT_INSTALLED,
    EngineError,
    Match,
    NotRunning,
    alive,
    children,
    commands,
    find_on_path,
    option_value,
    read_cmdline,
    read_stat,
)
from cntr.engines.docker import DockerCompatEngine, socket_from_host
from cntr.errors import suppress
from cntr.record import record


def default_socket() -> str:
    """Where `podman system service` listens by default for this user."""
    if os.geteuid() == 0:
        return "/run/podman/podman.sock"
    runtime = os.environ.get("XDG_RUNTIME_DIR") or f"/run/user/{os.geteuid()}"
    return f"{runtime}/podman/podman.sock"


DEFAULT_GRAPHROOT = "/var/lib/containers/storage"
STORAGE_CONFS = ("/etc/containers/storage.conf", "/usr/share/containers/storage.conf")
"""Root's storage.conf: the first that exists is the one containers/storage reads."""
CONTAINERS_CONFS = ("/usr/share/containers/containers.conf", "/etc/containers/containers.conf",
                    "/etc/containers/libpod.conf")
"""containers.conf files (and the older libpod.conf) that could move podman's database."""
CONTAINERS_CONF_DIR = "/etc/containers/containers.conf.d"
_MOVED_BY = ("static_dir", "database_backend", "remote", "active_service")
"""containers.conf keys that change where (or what) podman's database is, or make podman
a client of a service elsewhere."""


def _assigned(text: str, key: str) -> str | None:
    """The value of the first uncommented ``key = "value"`` line of a TOML file ("" for a
    value that is not a plain quoted string: escapes, arrays, ...), None when no line
    assigns it."""
    at = text.find(key)
    while at >= 0:  # only the lines the key is on (containers.conf is ~30 KB of comments)
        start = text.rfind("\n", 0, at) + 1
        end = text.find("\n", at)
        name, sep, value = text[start:end if end >= 0 else None].strip().partition("=")
        at = text.find(key, at + len(key))
        if not sep or name.strip() != key:
            continue
        value = value.split("#", 1)[0].strip()
        quote = value[:1]
        if quote in ('"', "'") and len(value) >= 2 and value.endswith(quote) and \
                value.count(quote) == 2 and "\\" not in value:
            return value[1:-1]
        return ""
    return None


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            return f.read()
    except OSError:
        return None


def db_path() -> str | None:
    """Where root's podman keeps its BoltDB database, when that can be told without
    podman (see the module docstring); None: ask podman."""
    if os.geteuid() != 0 or any(os.environ.get(v) for v in (
            "CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF_OVERRIDE",
            "CONTAINER_HOST", "CONTAINER_CONNECTION", "CNTR_HOST_ROOT")):
        return None
    graphroot: str | None = DEFAULT_GRAPHROOT
    for conf in STORAGE_CONFS:
        text = _read(conf)
        if text is not None:
            graphroot = _assigned(text, "graphroot")
            if graphroot is None:
                graphroot = DEFAULT_GRAPHROOT
            break
    if not graphroot or not graphroot.startswith("/"):
        return None
    confs = list(CONTAINERS_CONFS)
    with suppress(OSError):
        confs += sorted(os.path.join(CONTAINERS_CONF_DIR, name)
                        for name in os.listdir(CONTAINERS_CONF_DIR))
    for conf in confs:
        text = _read(conf)
        if text is not None and any(_assigned(text, k) is not None for k in _MOVED_BY):
            return None
    static = os.path.join(graphroot, "libpod")
    if os.path.exists(os.path.join(static, "db.sql")):
        return None
    return os.path.join(static, "bolt_state.db")


def known_to_db(ident: str, path: str | None) -> bool:
    """False only when podman's database at ``path`` has no container whose name, id or
    id prefix is ``ident`` (and no pod of that name): podman itself would answer "no
    such container".  True when it may know it, or the database cannot tell."""
    if not path:
        return True
    try:
        ctrs, names = bolt.read_bucket_keys(path, (b"ctr",), (b"name-registry",))
    except (OSError, bolt.BoltError):
        return True
    if ctrs is None or names is None:
        return True
    key = ident.encode(errors="surrogateescape")
    # lookupContainerID (libpod/boltdb_state_internal.go): a full id, a name (of a
    # container, or a pod: then the prefix search still runs), a unique id prefix.
    return key in names or any(c.startswith(key) for c in ctrs)


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
    for pid, comm in commands(proc).items():
        if comm != "conmon":
            continue
        st = read_stat(pid, proc)
        if st is None:
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
        self, socket_path: str | None = None, timeout: float | None = None, proc: str = "/proc",
        db: str | None = "",
    ) -> None:
        """``db``: podman's database (`db_path` when ""; None: none, always ask the CLI)."""
        if socket_path is None:
            socket_path = socket_from_host(os.environ.get("CONTAINER_HOST"), default_socket())
        super().__init__(socket_path, timeout)
        self.proc = proc
        self.db = db_path() if db == "" else db

    def cli_lookup(self, ident: str) -> list[Match] | None:
        if find_on_path(self.cli) is None:
            return None
        if not known_to_db(ident, self.db):
            return self._none(NO_SUCH_CONTAINER)
        return super().cli_lookup(ident)

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
