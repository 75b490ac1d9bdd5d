"""Container engines: turn the name a user gave into the host pid of a container's main process.

Each module holds one engine with the same small interface (base.Engine): `lookup(ident)` and
`list()`.  `resolve()` asks the engines of the requested types (all by default, in TYPES' order;
one after the other while that is quick, else at once) and returns the single match, or raises
NotFound (saying what each engine answered) or Ambiguous (naming every candidate).

Caveats:
- An all-digits name is first taken as a host pid (process_id) when such a process exists, and
  then no engine is asked: pass `types` without process_id to reach a docker id made of digits.
- `k8s:...` names go to the kubernetes type only.
- The same process reached through two engines (a docker container is also a task in
  containerd's `moby` namespace) counts once, for the engine that comes first in TYPES.
- Engines are asked one after the other while that is quick, the rest at once from
  short-lived threads as soon as one has taken 20 ms (`base.inline_then_threads`); the
  threads are joined before resolve() returns: callers that later need a single-threaded
  process (setns of a mount namespace) are not affected.
"""

from __future__ import annotations

import _thread

from cntr.context import Offline
from cntr.engines.base import (
    Engine,
    EngineError,
    Match,
    NotRunning,
    bound,
    in_threads,
    inline_then_threads,
    shared_process_scan,
)
from cntr.errors import Ambiguous, NotFound

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable


def _engine(module: str, name: str) -> Callable[[], Engine]:
    """A factory of ``cntr.engines.MODULE.NAME``, imported when first made: an attach by
    pid asks process_id alone and never imports the other engines (~2 ms)."""
    def make() -> Engine:
        cls: Callable[[], Engine] = getattr(
            __import__(f"cntr.engines.{module}", fromlist=[name]), name)
        return cls()

    make.__qualname__ = name
    return make


#: every type, in the order resolve() prefers them; "command" is only used when asked for
ENGINES: dict[str, Callable[[], Engine]] = {
    "process_id": _engine("process_id", "ProcessIdEngine"),
    "docker": _engine("docker", "DockerEngine"),
    "podman": _engine("podman", "PodmanEngine"),
    "lxc": _engine("lxc", "LxcEngine"),
    "lxd": _engine("lxd", "LxdEngine"),
    "nspawn": _engine("nspawn", "NspawnEngine"),
    "containerd": _engine("containerd", "ContainerdEngine"),
    "kubernetes": _engine("containerd", "KubernetesEngine"),
    "rkt": _engine("rkt", "RktEngine"),
    "command": _engine("command", "CommandEngine"),
}
#: the default types, in order
TYPES: list[str] = [t for t in ENGINES if t != "command"]
#: other spellings accepted by parse_types
ALIASES = {"process-id": "process_id", "pid": "process_id", "k8s": "kubernetes"}

__all__ = [
    "ALIASES",
    "ENGINES",
    "TYPES",
    "Engine",
    "EngineError",
    "Match",
    "NotRunning",
    "StoppedContainer",
    "list_all",
    "make",
    "parse_types",
    "resolve",
]


def parse_types(text: str) -> list[str]:
    """"docker,podman" -> ["docker", "podman"]; ValueError naming unknown types."""
    out: list[str] = []
    unknown = []
    for raw in text.split(","):
        word = raw.strip().lower()
        if not word:
            continue
        word = ALIASES.get(word, word)
        if word not in ENGINES:
            unknown.append(raw.strip())
        elif word not in out:
            out.append(word)
    if unknown:
        known = ", ".join([*ENGINES, "process-id"])
        raise ValueError(f"unknown container type {', '.join(map(repr, unknown))} (known: {known})")
    if not out:
        raise ValueError("no container type given")
    return out


def make(type_name: str) -> Engine:
    """A fresh engine of `type_name`."""
    return ENGINES[type_name]()


def _ask(engine: Engine, ident: str) -> tuple[list[Match], str]:
    """(matches, what the engine answered) without raising; a container that is not
    running is a match with pid 0 (its NotRunning is kept in ``_stopped``)."""
    try:
        found = engine.lookup(ident)
    except NotRunning as exc:
        if exc.match is None:
            return [], str(exc).removeprefix(f"{engine.name}: ")
        with _stopped_lock:
            _stopped[id(exc.match)] = exc
        return [exc.match], ""
    except EngineError as exc:
        return [], str(exc).removeprefix(f"{engine.name}: ")
    except Exception as exc:  # noqa: BLE001 (a bug in one engine must not hide the others')
        return [], f"internal error: {exc!r}"
    return found, "" if found else engine.reason


class StoppedContainer(NotFound):
    """The one container called so exists but runs no process: ``match`` names it (pid 0,
    its state), ``offline`` is what the engine keeps of it (None: nothing cntr can use)."""

    def __init__(self, message: str, match: Match | None = None,
                 offline: Offline | None = None) -> None:
        super().__init__(message)
        self.match = match
        self.offline = offline


_stopped: dict[int, NotRunning] = {}
_stopped_lock = _thread.allocate_lock()  # not threading's: see base.in_threads


def _describe(m: Match) -> str:
    ident = m.name or m.container_id[:12]
    extra = f"id {m.container_id[:12]}" if m.name and m.container_id != m.name else ""
    pid = f"pid {m.pid}" if m.pid else ("" if m.state == "running" else m.state)
    details = ", ".join(x for x in (extra, pid) if x)
    return f"{m.engine}:{ident}" + (f" ({details})" if details else "")


def resolve(ident: str, types: list[str] | None = None) -> Match:
    """The one running container (or process) called `ident` among the engines of `types`.

    Raises NotFound (what every engine answered, on one line) or Ambiguous; its subclass
    StoppedContainer (with the engine's description) when the one container is not running.
    """
    with shared_process_scan():
        try:
            return _resolve(ident, types)
        finally:
            with _stopped_lock:
                _stopped.clear()


def _resolve(ident: str, types: list[str] | None) -> Match:
    names = list(types) if types else list(TYPES)
    for t in names:
        if t not in ENGINES:
            raise ValueError(f"unknown container type {t!r}")
    if ident.startswith("k8s:"):
        if "kubernetes" not in names:
            raise NotFound(f"no container '{ident}': k8s: names need the kubernetes type")
        names = ["kubernetes"]
    elif "kubernetes" in names and len(names) > 1:
        names.remove("kubernetes")  # it only answers to k8s: names
    answers: dict[str, str] = {}
    if "process_id" in names:
        found, answers["process_id"] = _ask(make("process_id"), ident)
        if found:
            return found[0]
        names.remove("process_id")
        if not ident.isdigit():
            del answers["process_id"]  # "not a pid" is noise in the message
    results: dict[str, list[Match]] = {}
    if names:
        engines = [make(t) for t in names]
        if names == ["containerd"]:  # asked alone: containers without a task too
            engines[0].ask_ctr = True  # type: ignore[attr-defined]  # ContainerdEngine
        asked = inline_then_threads([bound(_ask, e, ident) for e in engines])
        for t, (found, answer) in zip(names, asked, strict=True):
            results[t], answers[t] = found, answer
    # One process reached through two engines is one container: keep the first engine's.
    matches: list[Match] = []
    seen: set[int] = set()
    for t in names:
        for m in results[t]:
            if m.pid and m.pid in seen:
                continue
            seen.add(m.pid)
            matches.append(m)
    if len(matches) == 1 and matches[0].pid:
        return matches[0]
    running = [m for m in matches if m.pid]
    if len(running) == 1 and all(m.pid or id(m) in _stopped for m in matches):
        return running[0]  # a stopped namesake in another engine does not compete
    if len(matches) == 1 and id(matches[0]) in _stopped:
        exc = _stopped[id(matches[0])]
        raise StoppedContainer(f"no container '{ident}': {exc}", exc.match, exc.offline)
    if matches:
        listed = "; ".join(_describe(m) for m in matches)
        narrow = " (narrow it with --type or give a longer id)"
        raise Ambiguous(f"'{ident}' matches {len(matches)} containers: {listed}{narrow}")
    said = "; ".join(f"{t}: {answers[t]}" for t in answers)
    raise NotFound(f"no container '{ident}': {said}")


def list_all(types: list[str] | None = None, stopped: bool = False) -> list[Match]:
    """Every running container of the engines of `types` (default TYPES), each process
    once; with `stopped`, also those that are not running (pid 0, their state) of the
    engines that can list them."""
    with shared_process_scan():
        return _list_all(types, stopped)


def _list_all(types: list[str] | None, stopped: bool = False) -> list[Match]:
    names = [t for t in (types or TYPES) if t != "process_id"]
    # A pod's containers are containerd tasks too: name them as pods, the more useful name.
    if "kubernetes" in names:
        names.remove("kubernetes")
        names.insert(0, "kubernetes")

    def one(t: str) -> list[Match]:
        engine = make(t)
        try:
            found = engine.list()
            lister = getattr(engine, "stopped", None)
            if stopped and lister is not None:
                found = found + [m for m in lister() if m.pid == 0]
            return found
        except EngineError:
            return []

    lists = in_threads([bound(one, t) for t in names]) if names else []
    out: list[Match] = []
    seen: set[int] = set()
    for found in lists:
        for m in found:
            if m.pid == 0 or m.pid not in seen:
                seen.add(m.pid)
                out.append(m)
    return out
