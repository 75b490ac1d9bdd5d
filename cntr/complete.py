"""What shell completion offers for an ID: the running containers of every engine, fast.

Every engine is asked at once, each in a thread of its own, and completion takes what has
answered within ``DEADLINE`` seconds: an engine that is slow or hangs (a podman CLI on a
loaded host takes seconds) is left out instead of holding the shell.  Podman's containers
come from its conmon processes (one pass over /proc, ~2 ms) rather than from ``podman
ps``, containerd's tasks from its shims' state directories rather than through ``ctr``
(~40 ms a call); the API sockets (docker, LXD) and /proc scans answer in milliseconds.

Caveats:
- an engine CLI still running at the deadline (lxc-ls, machinectl, ctr) is not waited for:
  it ends on its own, within the engines' command timeout.
"""

from __future__ import annotations

import threading

DEADLINE = 0.4
"""Seconds completion waits for the engines."""


def _podman() -> list[tuple[str, str, str]]:
    from cntr.engines.podman import scan_conmon

    return [("podman", c.cid, c.name) for c in scan_conmon()]


def _containerd() -> list[tuple[str, str, str]]:
    """Running tasks from the shims' state directories (no ctr: ~40 ms a call)."""
    from cntr.engines import containerd

    dirs = containerd.find_state_dirs()
    if dirs is None:
        return _engine("containerd")
    tasks = sorted(containerd.running_tasks(dirs, None))
    return [("containerd", cid, cid) for _ns, cid, _pid in tasks]


def _engine(type_name: str) -> list[tuple[str, str, str]]:
    from cntr import engines

    return [(m.engine, m.container_id, m.name) for m in engines.make(type_name).list()]


def containers(types: list[str] | None = None,
               deadline: float = DEADLINE) -> list[tuple[str, str, str]]:
    """(engine, id, name) of each running container the engines of ``types`` (default:
    all) listed within ``deadline`` seconds, in engine order."""
    from cntr import engines

    names = [t for t in (types or engines.TYPES) if t not in ("process_id", "command")]
    if "kubernetes" in names:  # a pod's containers are containerd tasks: the pod's name
        names.remove("kubernetes")
        names.insert(0, "kubernetes")
    results: dict[str, list[tuple[str, str, str]]] = {}

    def ask(t: str) -> None:
        try:
            fast = {"podman": _podman, "containerd": _containerd}.get(t)
            results[t] = fast() if fast else _engine(t)
        except Exception:  # noqa: BLE001 (an engine that fails offers nothing)
            results[t] = []

    threads = [threading.Thread(target=ask, args=(t,), daemon=True, name=f"complete-{t}")
               for t in names]
    for thread in threads:
        thread.start()
    import time

    end = time.monotonic() + deadline
    for thread in threads:
        thread.join(max(0.0, end - time.monotonic()))
    out = []
    seen = set()
    for t in names:
        for item in results.get(t, []):
            if item[1] not in seen:  # a docker container is also a containerd task
                seen.add(item[1])
                out.append(item)
    return out


def candidates(incomplete: str, types: list[str] | None = None,
               deadline: float = DEADLINE) -> list[tuple[str, str]]:
    """(value, description) for an ID starting with ``incomplete``: each container's name,
    and its id (12 hex digits when longer) when that differs from the name."""
    out: list[tuple[str, str]] = []
    seen: set[str] = set()
    for engine, cid, name in containers(types, deadline):
        short = cid[:12] if len(cid) > 12 and all(c in "0123456789abcdef" for c in cid) else cid
        for value, help_ in ((name, f"{engine} {short}"), (short, f"{engine} {name}")):
            if value and value not in seen and value.startswith(incomplete):
                seen.add(value)
                out.append((value, help_))
    return out


def types(incomplete: str) -> list[str]:
    """Completions of a comma-separated ``-t`` list: the known types for its last item."""
    from cntr import engines

    done, _, last = incomplete.rpartition(",")
    given = set(done.split(",")) if done else set()
    prefix = f"{done}," if done else ""
    return [prefix + t for t in [*engines.ENGINES, *engines.ALIASES]
            if t.startswith(last) and t not in given]
