"""``cntr ps``: every attachable container on the host, across all engines."""

from __future__ import annotations

from cntr import engines
from cntr.engines.base import Match


def ps(types: list[str] | None = None) -> list[Match]:
    """Running containers of every engine (or of ``types``), each process once."""
    return sorted(engines.list_all(types), key=lambda m: (m.engine, m.name, m.pid))


def _short(cid: str) -> str:
    """Long hex ids shortened to 12 characters, as docker and podman print them."""
    if len(cid) == 64 and all(c in "0123456789abcdef" for c in cid):
        return cid[:12]
    return cid


def table(matches: list[Match]) -> str:
    rows = [("ENGINE", "ID", "NAME", "PID")]
    rows += [(m.engine, _short(m.container_id), m.name, str(m.pid)) for m in matches]
    widths = [max(len(r[i]) for r in rows) for i in range(3)]
    return "".join(
        f"{r[0]:<{widths[0]}}  {r[1]:<{widths[1]}}  {r[2]:<{widths[2]}}  {r[3]}\n"
        for r in rows)
