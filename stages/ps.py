"""``cntr ps``: every attachable container on the host, across all engines (with
``--all`` also those that are not running, which attach reaches offline)."""

from __future__ import annotations

from cntr import engines
from cntr.engines.base import Match


def ps(types: list[str] | None = None, stopped: bool = False) -> list[Match]:
    """Running containers of every engine (or of ``types``), each process once; with
    ``stopped`` also the containers that are not running (pid 0 and their state)."""
    return sorted(engines.list_all(types, stopped),
                  key=lambda m: (m.engine, m.name, m.pid, m.container_id))


def _short(cid: str) -> str:
    """Long hex ids shortened to 12 characters, as docker and podman print them."""
    if len(cid) == 64 and all(c in "0123456789abcdef" for c in cid):
        return cid[:12]
    return cid


def table(matches: list[Match], states: bool = False) -> str:
    """The listing as aligned columns; ``states`` adds a STATE column (``ps --all``)."""
    rows = [("ENGINE", "ID", "NAME", "PID") + (("STATE",) if states else ())]
    rows += [(m.engine, _short(m.container_id), m.name, str(m.pid))
             + ((m.state,) if states else ()) for m in matches]
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    return "".join(
        "  ".join(f"{cell:<{w}}" for cell, w in zip(r, widths, strict=False)) + f"  {r[-1]}\n"
        for r in rows)
