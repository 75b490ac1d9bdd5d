"""containerd (through `ctr`) and Kubernetes pods whose containers containerd runs.

containerd has no names besides ids; its containers live in namespaces (`default`, `k8s.io` for
Kubernetes' CRI plugin, `moby` for docker).  A lookup asks every containerd socket it can find:
$CONTAINERD_ADDRESS if set, else /run/containerd/containerd.sock, the embedded one of dockerd
(/run/docker/containerd/containerd.sock, or wherever a running `containerd --config X` says in
X's [grpc] address), and any `containerd --address X` process; then, per socket,
`ctr namespaces ls -q` and per namespace `ctr tasks ls` (TASK PID STATUS).

Kubernetes (`k8s:[NAMESPACE/]POD[/CONTAINER]`): the CRI plugin labels each container with
io.kubernetes.pod.namespace, io.kubernetes.pod.name, io.kubernetes.container.name and
io.cri-containerd.kind (sandbox = the pause container, container = an app container).
`ctr -n k8s.io containers ls 'labels."io.kubernetes.pod.name"==POD'` narrows the candidates
and `ctr containers info` reads their labels.  A plain container id (or containerd://ID, as a
pod's status shows it) is looked up in namespace k8s.io too.  Without NAMESPACE every namespace
is searched (kubectl would assume "default"); `k8s:A/B` is NAMESPACE/POD, or else POD/CONTAINER.
Without CONTAINER the pod's only running app container is taken (several: ambiguous; none: its
sandbox).

Caveats:
- A lookup by id reads the running tasks from each containerd's state directory
  (``<state>/io.containerd.runtime.v2.task/NS/ID/init.pid``, the layout of the runtime v2
  shims) and calls no ctr; ctr (~20-30 ms a call, 1 + namespaces calls per socket) is used
  when a state directory cannot be read, for $CONTAINERD_ADDRESS, and for `list`.
- Docker's containers also show in namespace `moby`; resolve() counts a process once (docker's).
- Live-tested with a k8s-shaped container made by `ctr run --label` (scripts/engines), not with a
  kubelet: none runs here.  crictl (CRI-O) is not used.
"""

from __future__ import annotations

import _socket  # not socket: see cntr.engines.base
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
    bound,
    commands,
    first_line,
    host_path,
    in_threads,
    is_hex,
    on_path,
    option_value,
    read_cmdline,
    reason_of,
    run_tool,
)
from cntr.record import record

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence
    from typing import TypeVar

    T = TypeVar("T")

DEFAULT_SOCKET = "/run/containerd/containerd.sock"
DEFAULT_STATE = "/run/containerd"
TASK_DIR = "io.containerd.runtime.v2.task"
#: where dockerd's own containerd listens when dockerd runs with its default --exec-root
DOCKER_SOCKETS = (
    "/run/docker/containerd/containerd.sock",
    "/var/run/docker/containerd/containerd.sock",
)
K8S_NAMESPACE = "k8s.io"
LABEL_POD_NS = "io.kubernetes.pod.namespace"
LABEL_POD = "io.kubernetes.pod.name"
LABEL_CONTAINER = "io.kubernetes.container.name"
LABEL_KIND = "io.cri-containerd.kind"


@record(frozen=True)
class Task:
    """One row of `ctr tasks ls`."""

    id: str
    """The container id."""
    pid: int
    """The task's init pid (0 when none)."""
    status: str
    """RUNNING, STOPPED, PAUSED, CREATED, ..."""


def parse_tasks(text: str) -> list[Task]:
    """Rows of `ctr tasks ls` (header TASK PID STATUS)."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if len(fields) < 3 or fields[0] == "TASK" or not fields[1].isdigit():
            continue
        out.append(Task(fields[0], int(fields[1]), fields[2]))
    return out


def parse_namespaces(text: str) -> list[str]:
    """Names from `ctr namespaces ls` or `ctr namespaces ls -q`."""
    out = []
    for line in text.splitlines():
        fields = line.split()
        if fields and fields[0] != "NAME":
            out.append(fields[0])
    return out


def parse_info_labels(text: str) -> dict[str, str]:
    """The Labels of `ctr containers info ID` (JSON)."""
    try:
        data = cjson.loads(text)
    except ValueError as exc:
        raise EngineError(
            f"containerd: `ctr containers info` printed no JSON: {text[:80]!r}"
        ) from exc
    labels = data.get("Labels") if isinstance(data, dict) else None
    return {str(k): str(v) for k, v in labels.items()} if isinstance(labels, dict) else {}


def _config_string(path: str, *keys: str) -> str | None:
    """A string setting of a containerd config.toml (``keys`` is its table path), None when
    the file is unreadable or the setting unset."""
    try:
        with open(host_path(path), "rb") as f:
            raw = f.read()
    except OSError:
        return None
    simple = _plain_toml_string(raw, keys)
    if simple is not None:
        return simple or None
    import tomllib  # ~7 ms to import: only for what the plain reading cannot tell

    try:
        value: object = tomllib.loads(raw.decode("utf-8", "replace"))
    except tomllib.TOMLDecodeError:
        return None
    for key in keys:
        value = value.get(key) if isinstance(value, dict) else None
    return value if isinstance(value, str) and value else None


def _plain_toml_string(raw: bytes, keys: tuple[str, ...]) -> str | None:
    """``keys`` of a config written the way containerd writes it (``[table]`` headers,
    ``key = "string"`` lines): the value, "" when surely unset, None when unsure (another
    syntax: the caller asks tomllib)."""
    *tables, name = keys
    want = ".".join(tables)
    table = ""
    found = ""
    for text in raw.decode("utf-8", "replace").splitlines():
        line = text.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("["):
            if not line.endswith("]") or line.startswith("[["):
                return None
            table = line[1:-1].strip()
            continue
        key, sep, value = line.partition("=")
        if not sep:
            return None
        if table != want or key.strip() != name:
            continue
        value = value.strip()
        if len(value) < 2 or value[0] != '"' or value[-1] != '"' or "\\" in value:
            return None
        found = value[1:-1]
    return found


def config_address(path: str) -> str | None:
    """The [grpc] address of a containerd config.toml, None when unreadable or unset."""
    return _config_string(path, "grpc", "address")


def config_state(path: str) -> str | None:
    """The ``state`` directory of a containerd config.toml, None when unreadable or unset."""
    return _config_string(path, "state")


def state_of(argv: list[str]) -> str:
    """The state directory a containerd command line keeps its tasks in."""
    state = option_value(argv, "--state")
    if state:
        return state
    config = option_value(argv, "-c", "--config") or "/etc/containerd/config.toml"
    return config_state(config) or DEFAULT_STATE


def find_state_dirs(proc: str = "/proc") -> list[str] | None:
    """Task directories of every running containerd, or None when one cannot be read (then
    only ctr can tell)."""
    out: list[str] = []
    for pid, comm in commands(proc).items():
        if comm != "containerd":
            continue
        tasks = host_path(os.path.join(state_of(read_cmdline(pid, proc)), TASK_DIR))
        if not os.path.isdir(tasks):
            return None
        out.append(tasks)
    return out


def running_tasks(task_dirs: list[str], ident: str | None) -> list[tuple[str, str, int]]:
    """(namespace, id, pid) of running tasks whose id is ``ident`` or, for hex, starts with
    it (every running task for None), read from the shims' state
    (``<state>/io.containerd.runtime.v2.task/NS/ID/init.pid``): no ctr call, so a miss
    costs microseconds instead of ~100 ms."""
    out = []
    prefix = ident is not None and is_hex(ident)
    for tasks in task_dirs:
        try:
            namespaces = os.listdir(tasks)
        except OSError:
            continue
        for ns in namespaces:
            try:
                ids = os.listdir(os.path.join(tasks, ns))
            except OSError:
                continue
            for cid in ids:
                if ident is not None and cid != ident and not (
                        prefix and cid.startswith(ident)):
                    continue
                try:
                    with open(os.path.join(tasks, ns, cid, "init.pid")) as f:
                        pid = int(f.read().strip() or 0)
                except (OSError, ValueError):
                    continue
                # A shim killed with its container leaves its directory behind for a while.
                if pid > 0 and os.path.exists(f"/proc/{pid}"):
                    out.append((ns, cid, pid))
    return out


def address_of(argv: list[str]) -> str:
    """The socket a containerd command line listens on."""
    address = option_value(argv, "-a", "--address")
    if address:
        return address
    config = option_value(argv, "-c", "--config") or "/etc/containerd/config.toml"
    return config_address(config) or DEFAULT_SOCKET


def find_sockets(proc: str = "/proc") -> list[str]:
    """containerd sockets that exist: $CONTAINERD_ADDRESS alone if set, else the default, the
    docker-embedded ones and those of running containerd processes."""
    env = os.environ.get("CONTAINERD_ADDRESS")
    if env:
        return [host_path(env.removeprefix("unix://"))]
    candidates = [DEFAULT_SOCKET, *DOCKER_SOCKETS]
    for pid, comm in commands(proc).items():
        if comm == "containerd":
            candidates.append(address_of(read_cmdline(pid, proc)))
    out: list[str] = []
    seen: set[str] = set()
    for candidate in candidates:
        path = host_path(candidate.removeprefix("unix://"))
        real = os.path.realpath(path)
        if real not in seen and os.path.exists(path):
            seen.add(real)
            out.append(path)
    return out


class Ctr:
    """`ctr` on one socket."""

    def __init__(self, socket_path: str) -> None:
        self.socket_path = socket_path

    def run(self, *args: str, namespace: str | None = None) -> tuple[int, str, str]:
        # ctr retries a dead socket until its deadline: bound the dial and the whole call.
        argv = ["ctr", "-a", self.socket_path, "--connect-timeout", "2s", "--timeout", "4s"]
        if namespace is not None:
            argv += ["-n", namespace]
        res = run_tool([*argv, *args])
        if res is None:
            raise FileNotFoundError("ctr")
        return res

    def ok(self, *args: str, namespace: str | None = None) -> str:
        rc, out, err = self.run(*args, namespace=namespace)
        if rc != 0:
            raise EngineError(f"containerd: {self.socket_path}: {first_line(err)}")
        return out

    def probe(self) -> None:
        """Fail fast on a socket nobody listens on (ctr would retry for its whole timeout)."""
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
        sock.settimeout(2)
        try:
            sock.connect(self.socket_path)
        except OSError as exc:
            raise EngineError(
                f"containerd: {self.socket_path}: {reason_of(exc)}"
            ) from exc
        finally:
            sock.close()

    def namespaces(self) -> list[str]:
        self.probe()
        return parse_namespaces(self.ok("namespaces", "ls", "-q"))

    def tasks(self, namespace: str) -> list[Task]:
        return parse_tasks(self.ok("tasks", "ls", namespace=namespace))

    def containers(self, namespace: str, *filters: str) -> list[str]:
        return self.ok("containers", "ls", "-q", *filters, namespace=namespace).split()

    def labels(self, namespace: str, cid: str) -> dict[str, str]:
        return parse_info_labels(self.ok("containers", "info", cid, namespace=namespace))


def parse_snapshot_mount(text: str) -> tuple[list[str], str, str] | None:
    """(lower dirs topmost first, upperdir, workdir) from the `mount -t overlay ... -o
    OPTIONS` line `ctr snapshots mounts` prints; None for another kind of snapshot."""
    for line in text.splitlines():
        words = line.split()
        if words[:3] == ["mount", "-t", "overlay"] and "-o" in words:
            opts = dict(o.partition("=")[::2]
                        for o in words[words.index("-o") + 1].split(","))
            lower = [d for d in opts.get("lowerdir", "").split(":") if d]
            return lower, opts.get("upperdir", ""), opts.get("workdir", "")
    return None


def offline_from_info(info: dict[str, object], layers: tuple[list[str], str, str],
                      name: str) -> Offline:
    """An Offline from `ctr containers info` (its OCI spec) and its snapshot's layers."""
    from cntr.engines.docker import _dict, cap_mask

    spec = _dict(info.get("Spec"))
    process = _dict(spec.get("process"))
    user = _dict(process.get("user"))
    bounding = _dict(process.get("capabilities")).get("bounding") or []
    env = {}
    for item in process.get("env") or ():
        key, _, value = str(item).partition("=")
        env[key] = value
    lower, upper, work = layers
    return Offline(
        state="stopped", exit_code=0, rootfs="overlay", lower=lower, upper=upper, work=work,
        path="", env=env, cwd=str(process.get("cwd") or "/"),
        user=f"{int(user.get('uid') or 0)}:{int(user.get('gid') or 0)}",
        hostname=str(spec.get("hostname") or name), caps=cap_mask(bounding),
        image=str(info.get("Image") or ""))


def describe_stopped(ctr: Ctr, namespace: str, cid: str) -> Offline | None:
    """What an offline session over container `cid` needs: its OCI spec and the layers of
    its snapshot (`ctr snapshots mounts` only prints them); None when unreadable."""
    try:
        info = cjson.loads(ctr.ok("containers", "info", cid, namespace=namespace))
        key, snapshotter = str(info.get("SnapshotKey") or ""), str(info.get("Snapshotter"))
        if not key or snapshotter not in ("overlayfs", "native"):
            return None
        # The target is only printed, never mounted.
        layers = parse_snapshot_mount(ctr.ok("snapshots", "--snapshotter", snapshotter,
                                             "mounts", "/nonexistent", key,
                                             namespace=namespace))
    except (EngineError, ValueError, AttributeError):
        return None
    if layers is None or not isinstance(info, dict):
        return None
    return offline_from_info(info, layers, cid)


def id_matches(ident: str, cid: str) -> bool:
    """`ident` names container `cid`: equal, or a prefix of a 64-hex id (docker's style)."""
    return ident == cid or (len(cid) == 64 and is_hex(cid) and is_hex(ident)
                            and cid.startswith(ident))


def _parallel(calls: Sequence[Callable[[], T]]) -> list[T | EngineError]:
    """Run `calls` in threads (they wait on ctr processes); an EngineError is returned in place
    of the result of the call that raised it."""

    def guarded(call: Callable[[], T]) -> T | EngineError:
        try:
            return call()
        except EngineError as exc:
            return exc

    return in_threads([bound(guarded, c) for c in calls]) if calls else []


def _find_in(ctr: Ctr, ns: str, ident: str) -> tuple[list[Task], list[str]]:
    """(running tasks matching ident, ids of matching containers without a running task)."""
    running, idle = [], []
    for task in ctr.tasks(ns):
        if id_matches(ident, task.id):
            if task.pid > 0 and task.status in ("RUNNING", "PAUSED"):
                running.append(task)
            else:
                idle.append(task.id)
    if not running and not idle and ident in ctr.containers(ns):
        idle.append(ident)  # created, never started (or its task was deleted)
    return running, idle


class ContainerdEngine(BaseEngine):
    """containerd: tasks of every namespace of every containerd socket."""

    name = "containerd"

    def __init__(self, sockets: list[str] | None = None, proc: str = "/proc") -> None:
        super().__init__()
        self._sockets = sockets
        self.proc = proc
        #: ask ctr even when the task state directories say nothing runs: only it knows
        #: containers without a task (set when containerd is the only type asked)
        self.ask_ctr = False

    def sockets(self) -> list[str]:
        return self._sockets if self._sockets is not None else find_sockets(self.proc)

    def _ctrs(self) -> list[Ctr] | None:
        """Ctr per socket; None when ctr is not installed; EngineError when no socket."""
        if not on_path("ctr"):
            return None
        socks = self.sockets()
        if not socks:
            what = "not running" if self.name == "containerd" else "containerd not running"
            raise EngineError(f"{self.name}: {what} (no {DEFAULT_SOCKET})")
        return [Ctr(s) for s in socks]

    def lookup(self, ident: str) -> list[Match]:
        self.reason = NO_SUCH_CONTAINER
        if (self._sockets is None and "CONTAINERD_ADDRESS" not in os.environ
                and not self.ask_ctr):
            task_dirs = find_state_dirs(self.proc)
            if task_dirs is not None:
                # A stopped container has no task directory: it reads as "no such
                # container" here, where ctr would say "not running".
                if not task_dirs and not self.sockets():
                    raise EngineError(f"containerd: not running (no {DEFAULT_SOCKET})")
                tasks = running_tasks(task_dirs, ident)
                return ([Match(self.name, cid, cid, pid) for _, cid, pid in tasks]
                        or self._none(NO_SUCH_CONTAINER))
        ctrs = self._ctrs()
        if ctrs is None:
            return self._none(NOT_INSTALLED)
        # Every (socket, namespace) at once: each ctr call costs ~20 ms, mostly start-up.
        pairs: list[tuple[Ctr, str]] = []
        errors: list[str] = []
        for ctr, result in zip(ctrs, _parallel([ctr.namespaces for ctr in ctrs]), strict=True):
            if isinstance(result, EngineError):
                errors.append(str(result).removeprefix("containerd: "))
            else:
                pairs += [(ctr, ns) for ns in result]
        found: list[Match] = []
        stopped: list[tuple[Ctr, str, str]] = []
        calls = [bound(_find_in, ctr, ns, ident) for ctr, ns in pairs]
        for (ctr, ns), answer in zip(pairs, _parallel(calls), strict=True):
            if isinstance(answer, EngineError):
                errors.append(str(answer).removeprefix("containerd: "))
                continue
            running, known = answer
            found += [Match(self.name, t.id, t.id, t.pid) for t in running]
            stopped += [(ctr, ns, cid) for cid in known]
        if found:
            return found
        if stopped:
            ctr, ns, cid = stopped[0]
            offline = describe_stopped(ctr, ns, cid)
            raise NotRunning(f"containerd: container '{ns}/{cid}' is not running",
                             Match(self.name, cid, cid, 0, "stopped"), offline)
        if errors:
            raise EngineError("containerd: " + "; ".join(errors))
        return self._none(NO_SUCH_CONTAINER)

    def stopped(self) -> list[Match]:
        """Containers of every namespace without a running task (pid 0, "stopped")."""
        if self.name != "containerd":
            return []  # a pod's containers are listed as containerd's
        out = []
        for ctr in self._ctrs() or []:
            for ns in ctr.namespaces():
                running = {t.id for t in ctr.tasks(ns)
                           if t.pid > 0 and t.status in ("RUNNING", "PAUSED")}
                out += [Match(self.name, cid, cid, 0, "stopped")
                        for cid in ctr.containers(ns) if cid not in running]
        return out

    def list(self) -> list[Match]:
        try:
            ctrs = self._ctrs()
        except EngineError:
            return []
        out = []
        for ctr in ctrs or []:
            try:
                for ns in ctr.namespaces():
                    out += [Match(self.name, t.id, t.id, t.pid) for t in ctr.tasks(ns)
                            if t.pid > 0 and t.status in ("RUNNING", "PAUSED")]
            except EngineError:
                continue
        return out


@record(frozen=True)
class PodRef:
    """A parsed `k8s:[NAMESPACE/]POD[/CONTAINER]`."""

    namespace: str | None
    """The pod's namespace; None: any."""
    pod: str
    """The pod's name."""
    container: str | None
    """The container's name in the pod; None: the pod's only app container."""


def parse_k8s(ident: str) -> list[PodRef]:
    """The readings of a k8s: name, most likely first ([] when it is not one)."""
    if not ident.startswith("k8s:"):
        return []
    parts = ident[len("k8s:") :].split("/")
    if any(not p for p in parts) or len(parts) > 3:
        return []
    if len(parts) == 1:
        return [PodRef(None, parts[0], None)]
    if len(parts) == 2:
        return [PodRef(parts[0], parts[1], None), PodRef(None, parts[0], parts[1])]
    return [PodRef(parts[0], parts[1], parts[2])]


def select_pod_containers(
    ref: PodRef, labelled: dict[str, dict[str, str]], running: dict[str, int]
) -> list[tuple[str, str, int]]:
    """(container id, "ns/pod/container", pid) of the running containers `ref` designates,
    given each candidate's labels and the running tasks' pids."""
    apps, sandboxes = [], []
    for cid, labels in labelled.items():
        if labels.get(LABEL_POD) != ref.pod or cid not in running:
            continue
        if ref.namespace is not None and labels.get(LABEL_POD_NS) != ref.namespace:
            continue
        cname = labels.get(LABEL_CONTAINER, "")
        full = f"{labels.get(LABEL_POD_NS, '?')}/{ref.pod}/{cname or 'sandbox'}"
        if labels.get(LABEL_KIND) == "sandbox" or not cname:
            sandboxes.append((cid, full, running[cid]))
        elif ref.container is None or cname == ref.container:
            apps.append((cid, full, running[cid]))
    if apps or ref.container is not None:
        return sorted(apps)
    return sorted(sandboxes)


class KubernetesEngine(ContainerdEngine):
    """Pods' containers in containerd namespace k8s.io."""

    name = "kubernetes"

    def lookup(self, ident: str) -> list[Match]:
        self.reason = NO_SUCH_CONTAINER
        refs = parse_k8s(ident)
        cid = ident.removeprefix("containerd://")
        if not refs and not cid:
            return self._none("not a k8s:[NAMESPACE/]POD[/CONTAINER] name")
        ctrs = self._ctrs()
        if ctrs is None:
            return self._none(NOT_INSTALLED)
        errors: list[str] = []
        if not refs:
            # a container id, as in a pod's status (containerd://ID)
            by_id = [m for m in self._all(ctrs, errors) if id_matches(cid, m.container_id)]
            if by_id or not errors:
                return by_id or self._none("no such container in namespace k8s.io")
        for ref in refs:
            found: list[Match] = []
            for ctr in ctrs:
                try:
                    found += self._lookup_on(ctr, ref)
                except EngineError as exc:
                    errors.append(str(exc).removeprefix("containerd: "))
            if found:
                return found
        if errors:
            raise EngineError("kubernetes: " + "; ".join(errors))
        return self._none("no such pod or container")

    def _lookup_on(self, ctr: Ctr, ref: PodRef) -> list[Match]:
        if K8S_NAMESPACE not in ctr.namespaces():
            return []
        ids = ctr.containers(K8S_NAMESPACE, f'labels."{LABEL_POD}"=={ref.pod}')
        if not ids:
            return []
        labelled = {cid: ctr.labels(K8S_NAMESPACE, cid) for cid in ids}
        running = {t.id: t.pid for t in ctr.tasks(K8S_NAMESPACE)
                   if t.pid > 0 and t.status in ("RUNNING", "PAUSED")}
        return [Match(self.name, cid, full, pid)
                for cid, full, pid in select_pod_containers(ref, labelled, running)]

    def _all(self, ctrs: list[Ctr], errors: list[str], apps_only: bool = False) -> list[Match]:
        """Every running container of namespace k8s.io, named ns/pod/container."""
        out = []
        for ctr in ctrs:
            try:
                if K8S_NAMESPACE not in ctr.namespaces():
                    continue
                running = {t.id: t.pid for t in ctr.tasks(K8S_NAMESPACE)
                           if t.pid > 0 and t.status in ("RUNNING", "PAUSED")}
                for cid, pid in running.items():
                    labels = ctr.labels(K8S_NAMESPACE, cid)
                    cname = labels.get(LABEL_CONTAINER, "")
                    sandbox = labels.get(LABEL_KIND) == "sandbox" or not cname
                    if apps_only and sandbox:
                        continue
                    full = "/".join((labels.get(LABEL_POD_NS, "?"), labels.get(LABEL_POD, "?"),
                                     "sandbox" if sandbox else cname))
                    out.append(Match(self.name, cid, full, pid))
            except EngineError as exc:
                errors.append(str(exc).removeprefix("containerd: "))
        return out

    def list(self) -> list[Match]:
        try:
            ctrs = self._ctrs()
        except EngineError:
            return []
        return self._all(ctrs or [], [], apps_only=True)
