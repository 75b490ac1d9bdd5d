"""Docker: find a container's main process through dockerd's API socket, else the docker CLI.

`GET /containers/{ident}/json` on the local socket answers for a name, a full id or a unique id
prefix, and carries State.Pid, Id and Name: one request, no process to start.  The socket is
$DOCKER_HOST when it is unix://..., else /var/run/docker.sock.  When the socket does not answer
(or DOCKER_HOST is tcp:// or ssh://) `docker inspect --type container` is asked instead: it also
honours docker contexts.  The compatible parts are shared with podman (DockerCompatEngine).

Caveats:
- Measured on Debian 12, 2 cores (dockerd 20.10, median of 20): the socket lookup takes ~1 ms,
  `docker inspect` ~20 ms (the 28.x CLI in /usr/local/bin, which negotiates API 1.41 with
  dockerd 20.10) to ~25 ms (Debian's 20.10 CLI): the socket is ~20x faster.
- An ambiguous id prefix makes dockerd answer an error; the candidates are then listed
  (`GET /containers/json?all=1`) so that the caller can show them.
- A stopped container (State.Pid 0) raises NotRunning carrying what an offline session
  needs (`describe_stopped`): state, the overlay layers of GraphDriver, Env, WorkingDir,
  User, Hostname and the capabilities docker would give it (its default set, CapAdd,
  CapDrop, Privileged).  Only the overlay2/overlay graph drivers are described.
- Reading the socket needs root or the docker group, as every docker command does.
"""

from __future__ import annotations

import os

from cntr import cjson
from cntr.context import Offline
from cntr.engines.base import (
    NO_SUCH_CONTAINER,
    NOT_INSTALLED,
    BaseEngine,
    EngineError,
    Match,
    NotRunning,
    api_message,
    first_line,
    host_path,
    quote,
    reason_of,
    run_tool,
    unix_http_json,
)

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from typing import Any

DEFAULT_SOCKET = "/var/run/docker.sock"

DOCKER_DEFAULT_CAPS = (
    "chown", "dac_override", "fsetid", "fowner", "mknod", "net_raw", "setgid", "setuid",
    "setfcap", "setpcap", "net_bind_service", "sys_chroot", "kill", "audit_write",
)
"""The capabilities dockerd 20.10 gives a container (oci/caps/defaults.go)."""
PODMAN_DEFAULT_CAPS = (
    "chown", "dac_override", "fowner", "fsetid", "kill", "net_bind_service", "setfcap",
    "setgid", "setpcap", "setuid", "sys_chroot",
)
"""podman 4.3's default_capabilities (containers.conf(5), containers/common 0.50)."""

#: engine states of a container without a process, as the records name them
_STATES = {"created": "created", "configured": "created", "initialized": "created",
           "exited": "exited", "dead": "dead", "restarting": "restarting",
           "stopped": "stopped"}


def _dict(value: Any) -> dict[str, Any]:
    return value if isinstance(value, dict) else {}


def cap_mask(names: Any) -> int:
    """The bit mask of capability names as docker and podman write them ("CAP_CHOWN",
    "chown", "ALL"); names this kernel does not know are left out."""
    from cntr.linux import caps

    mask = 0
    for raw in names or ():
        name = str(raw).lower().removeprefix("cap_")
        if name == "all":
            mask |= (1 << len(caps.NAMES)) - 1
        elif name in caps.NAMES:
            mask |= 1 << caps.NAMES.index(name)
    return mask


def engine_caps(obj: dict[str, Any], engine: str) -> int:
    """The capability set `engine` gives the container of inspect object `obj`."""
    host = _dict(obj.get("HostConfig"))
    if host.get("Privileged"):
        return cap_mask(["ALL"])
    if engine == "podman" and isinstance(obj.get("EffectiveCaps"), list):
        return cap_mask(obj["EffectiveCaps"])  # podman says it
    default = DOCKER_DEFAULT_CAPS if engine == "docker" else PODMAN_DEFAULT_CAPS
    return (cap_mask(default) | cap_mask(host.get("CapAdd"))) & ~cap_mask(host.get("CapDrop"))


def parse_env(items: Any) -> dict[str, str]:
    """["K=V", ...] as a dict (later entries win, as in execve's environment)."""
    out = {}
    for item in items or ():
        if isinstance(item, str):
            key, _, value = item.partition("=")
            if key:
                out[key] = value
    return out


def describe_stopped(obj: dict[str, Any], engine: str, image: str = "") -> Offline | None:
    """What an offline session over this container (or image, when `image` is given)
    needs; None when its filesystem is not an overlay the engine keeps on this host."""
    graph = _dict(obj.get("GraphDriver"))
    data = _dict(graph.get("Data"))
    if not data or graph.get("Name") not in ("overlay", "overlay2"):
        return None
    lower = [d for d in str(data.get("LowerDir") or "").split(":") if d]
    upper = str(data.get("UpperDir") or "")
    if image:
        lower, upper = ([upper] if upper else []) + lower, ""
        if not lower:
            return None
    elif not upper:
        return None
    config = _dict(obj.get("Config"))
    state = _dict(obj.get("State"))
    status = "image" if image else _STATES.get(str(state.get("Status", "")), "stopped")
    if not image and state.get("Restarting"):
        status = "restarting"
    cid = str(obj.get("Id", "")).removeprefix("sha256:")
    return Offline(
        state=status,
        exit_code=int(state.get("ExitCode") or 0) if not image else 0,
        rootfs="overlay",
        lower=lower,
        upper=upper,
        work=str(data.get("WorkDir") or "") if not image else "",
        path=str(data.get("MergedDir") or ""),
        env=parse_env(config.get("Env")),
        cwd=str(config.get("WorkingDir") or "/"),
        user=str(config.get("User") or ""),
        hostname=str(config.get("Hostname") or cid[:12]),
        caps=engine_caps(obj, engine) if not image else cap_mask(
            DOCKER_DEFAULT_CAPS if engine == "docker" else PODMAN_DEFAULT_CAPS),
        image=image or str(config.get("Image") or obj.get("ImageName") or ""),
    )


def socket_from_host(host: str | None, default: str | None) -> str | None:
    """The unix socket path of a DOCKER_HOST/CONTAINER_HOST value; `default` when unset,
    None when it names a remote (tcp://, ssh://) daemon."""
    if not host:
        return default
    if host.startswith("unix://"):
        return host[len("unix://") :]
    return None


def parse_inspect(obj: Any, engine: str) -> Match:
    """A Match from one object of `docker inspect`/`podman inspect` or GET /containers/X/json.

    Raises NotRunning for a container without a process and EngineError when the object
    lacks the fields (not a container).
    """
    if not isinstance(obj, dict):
        raise EngineError(f"{engine}: expected an inspect object, got {type(obj).__name__}")
    state = obj.get("State")
    cid, name = obj.get("Id"), obj.get("Name")
    if not isinstance(state, dict) or not isinstance(cid, str):
        keys = list(obj)
        raise EngineError(f"{engine}: expected State and Id in the inspect object, got {keys}")
    # docker prefixes names with "/" (a legacy of links); podman does not.
    name = name.lstrip("/") if isinstance(name, str) else ""
    pid = state.get("Pid")
    if not isinstance(pid, int) or pid <= 0 or state.get("Running") is False:
        status = state.get("Status", "not running")
        offline = describe_stopped(obj, engine)
        match = Match(engine, cid, name, 0, offline.state if offline else str(status))
        raise NotRunning(f"{engine}: container '{name or cid}' is not running (status {status})",
                         match, offline)
    return Match(engine, cid, name, pid)


def parse_inspect_list(text: str, engine: str) -> list[Match]:
    """Matches from the JSON array `docker inspect` / `podman inspect` print."""
    try:
        data = cjson.loads(text) if text.strip() else []
    except ValueError as exc:
        raise EngineError(f"{engine}: inspect printed no JSON: {text[:80]!r}") from exc
    if not isinstance(data, list):
        kind = type(data).__name__
        raise EngineError(f"{engine}: expected a JSON array from inspect, got {kind}")
    return [parse_inspect(obj, engine) for obj in data]


def is_no_such(message: str) -> bool:
    """docker's and podman's ways of saying "not found"."""
    low = message.lower()
    return "no such container" in low or "no such object" in low or "no container with" in low


def is_ambiguous(message: str) -> bool:
    """dockerd's and podman's answer to an id prefix shared by several containers."""
    low = message.lower()
    return "multiple" in low and ("prefix" in low or "ids" in low or "found" in low)


class NoSuchImage(EngineError):
    """The engine has no image of that reference."""

    exit_code = 4


class DockerCompatEngine(BaseEngine):
    """An engine with a docker-compatible API socket and an `inspect` CLI (docker, podman)."""

    cli = "docker"

    def __init__(self, socket_path: str | None, timeout: float | None = None) -> None:
        super().__init__()
        self.socket_path = socket_path
        self.timeout = timeout

    # ---------------------------------------------------------------- API
    def _get(self, url: str) -> tuple[int, Any]:
        assert self.socket_path is not None
        if self.timeout is None:
            return unix_http_json(self.socket_path, url)
        return unix_http_json(self.socket_path, url, self.timeout)

    def api_lookup(self, ident: str) -> list[Match]:
        """Ask the API socket; OSError when it does not answer."""
        status, data = self._get(f"/containers/{quote(ident)}/json")
        if status == 200:
            return [parse_inspect(data, self.name)]
        message = api_message(data, f"HTTP {status}")
        if is_ambiguous(message):
            return self._prefix_candidates(ident)
        if status == 404 or is_no_such(message):
            return self._none(NO_SUCH_CONTAINER)
        raise EngineError(f"{self.name}: {self.socket_path}: {message}")

    def _prefix_candidates(self, prefix: str) -> list[Match]:
        status, data = self._get("/containers/json?all=1")
        if status != 200 or not isinstance(data, list):
            raise EngineError(f"{self.name}: id prefix '{prefix}' is ambiguous")
        found = []
        for entry in data:
            cid = entry.get("Id", "") if isinstance(entry, dict) else ""
            if isinstance(cid, str) and cid.startswith(prefix):
                names = entry.get("Names") or [""]
                pid = 0  # not in the listing; the caller only shows these candidates
                found.append(Match(self.name, cid, str(names[0]).lstrip("/"), pid))
        return found

    def api_list(self) -> list[Match]:
        status, data = self._get("/containers/json")
        if status != 200 or not isinstance(data, list):
            raise EngineError(f"{self.name}: {self.socket_path}: {api_message(data, str(status))}")
        out = []
        for entry in data:
            if isinstance(entry, dict) and isinstance(entry.get("Id"), str):
                try:
                    out.extend(self.api_lookup(entry["Id"]))
                except NotRunning:
                    continue  # stopped between the listing and the inspect
        return out

    def api_stopped(self) -> list[Match]:
        status, data = self._get("/containers/json?all=1")
        if status != 200 or not isinstance(data, list):
            raise EngineError(f"{self.name}: {self.socket_path}: {api_message(data, str(status))}")
        out = []
        for entry in data:
            if isinstance(entry, dict) and entry.get("State") != "running":
                try:
                    self.api_lookup(str(entry.get("Id", "")))
                except NotRunning as exc:
                    if exc.match is not None:
                        out.append(exc.match)
        return out

    def api_image(self, ref: str) -> Offline | None:
        status, data = self._get(f"/images/{quote(ref)}/json")
        if status == 200 and isinstance(data, dict):
            return describe_stopped(data, self.name, image=ref)
        if status == 404:
            raise NoSuchImage(f"{self.name}: no such image '{ref}'")
        raise EngineError(f"{self.name}: {self.socket_path}: {api_message(data, str(status))}")

    # ---------------------------------------------------------------- CLI
    def cli_lookup(self, ident: str) -> list[Match] | None:
        """Ask the CLI; None when it is not installed."""
        res = run_tool([self.cli, "inspect", "--type", "container", ident])
        if res is None:
            return None
        rc, out, err = res
        if rc == 0:
            return parse_inspect_list(out, self.name)
        if is_ambiguous(err):
            return self._cli_prefix_candidates(ident)
        if is_no_such(err):
            return self._none(NO_SUCH_CONTAINER)
        raise EngineError(f"{self.name}: {first_line(err) or f'{self.cli} inspect exit {rc}'}")

    def _cli_prefix_candidates(self, prefix: str) -> list[Match]:
        res = run_tool([self.cli, "ps", "-a", "-q", "--no-trunc"])
        ids = [i for i in (res[1].split() if res and res[0] == 0 else []) if i.startswith(prefix)]
        return [Match(self.name, cid, "", 0) for cid in ids]

    def cli_list(self) -> list[Match] | None:
        res = run_tool([self.cli, "ps", "-q", "--no-trunc"])
        if res is None:
            return None
        rc, out, err = res
        if rc != 0:
            raise EngineError(f"{self.name}: {first_line(err)}")
        ids = out.split()
        if not ids:
            return []
        res = run_tool([self.cli, "inspect", "--type", "container", *ids])
        # A container may stop between ps and inspect: keep the others.
        return [m for m in _parse_each(res[1] if res else "", self.name)]

    def cli_stopped(self) -> list[Match]:
        res = run_tool([self.cli, "ps", "-a", "-q", "--no-trunc"])
        if res is None or res[0] != 0:
            return []
        out = []
        running = set(_parse_ids(run_tool([self.cli, "ps", "-q", "--no-trunc"])))
        for cid in res[1].split():
            if cid in running:
                continue
            try:
                self.cli_lookup(cid)
            except NotRunning as exc:
                if exc.match is not None:
                    out.append(exc.match)
        return out

    def cli_image(self, ref: str) -> Offline | None:
        res = run_tool([self.cli, "image", "inspect", ref])
        if res is None:
            raise EngineError(f"{self.name}: {NOT_INSTALLED}")
        rc, out, err = res
        if rc != 0:
            if "no such" in err.lower() or "unknown" in err.lower() or "not known" in err.lower():
                raise NoSuchImage(f"{self.name}: no such image '{ref}'")
            raise EngineError(f"{self.name}: {first_line(err) or f'image inspect exit {rc}'}")
        try:
            data = cjson.loads(out)
        except ValueError as exc:
            raise EngineError(f"{self.name}: image inspect printed no JSON") from exc
        if not isinstance(data, list) or not data or not isinstance(data[0], dict):
            raise NoSuchImage(f"{self.name}: no such image '{ref}'")
        return describe_stopped(data[0], self.name, image=ref)

    def _use_socket(self) -> bool:
        return self.socket_path is not None and os.path.exists(self.socket_path)

    def stopped(self) -> list[Match]:
        """Every container of the engine that is not running (pid 0, with its state)."""
        if self._use_socket():
            try:
                return self.api_stopped()
            except OSError:
                pass
        return self.cli_stopped()

    def image(self, ref: str) -> Offline | None:
        """What an offline session over image `ref` needs (None: not an overlay image).

        Raises NoSuchImage when the engine has no such image."""
        if self._use_socket():
            try:
                return self.api_image(ref)
            except OSError:
                pass
        return self.cli_image(ref)

    # ---------------------------------------------------------------- Engine
    def lookup(self, ident: str) -> list[Match]:
        self.reason = NO_SUCH_CONTAINER
        if not ident:
            return self._none(NO_SUCH_CONTAINER)
        api_error = None
        if self.socket_path is not None and os.path.exists(self.socket_path):
            try:
                return self.api_lookup(ident)
            except OSError as exc:
                api_error = f"{self.socket_path}: {reason_of(exc)}"
        found = self.cli_lookup(ident)
        if found is None:
            if api_error is not None:
                raise EngineError(f"{self.name}: {api_error}")
            return self._none(NOT_INSTALLED)
        return found

    def list(self) -> list[Match]:
        if self.socket_path is not None and os.path.exists(self.socket_path):
            try:
                return self.api_list()
            except OSError:
                pass
        return self.cli_list() or []


def _parse_ids(res: tuple[int, str, str] | None) -> list[str]:
    return res[1].split() if res and res[0] == 0 else []


def _parse_each(text: str, engine: str) -> list[Match]:
    try:
        data = cjson.loads(text) if text.strip() else []
    except ValueError:
        return []
    out = []
    for obj in data if isinstance(data, list) else []:
        try:
            out.append(parse_inspect(obj, engine))
        except EngineError:
            continue
    return out


class DockerEngine(DockerCompatEngine):
    """docker: API socket first, `docker inspect` second."""

    name = "docker"
    cli = "docker"

    def __init__(self, socket_path: str | None = None, timeout: float | None = None) -> None:
        if socket_path is None:
            socket_path = socket_from_host(os.environ.get("DOCKER_HOST"), DEFAULT_SOCKET)
            socket_path = socket_path and host_path(socket_path)
        super().__init__(socket_path, timeout)


__all__ = ["DockerCompatEngine", "DockerEngine", "NoSuchImage", "describe_stopped",
           "parse_inspect", "parse_inspect_list"]
