"""``cntr resolve``: turn a container id, name or pid into a record naming its process.

The engines are asked in the documented order (``cntr.engines.TYPES``) or only those
given with ``-t``; the record carries the process's start time so later stages detect a
pid that was reused.  A container that exists but is not running resolves to a version 2
record with pid 0 and the engine's description of it (``offline``: state, filesystem,
configuration), from which capture and enter build an offline session.
"""

from __future__ import annotations

from cntr import engines
from cntr.context import Resolved
from cntr.errors import NotFound
from cntr.linux import procfs


def resolve(ident: str, types: list[str] | None = None, running: bool = False) -> Resolved:
    """The record of ``ident``; ``running``: a container that is not running is NotFound
    (StoppedContainer) instead of an offline record."""
    try:
        match = engines.resolve(ident, types)
    except engines.StoppedContainer as exc:
        if exc.match is None or exc.offline is None or running:
            raise
        m = exc.match
        return Resolved(engine=m.engine, container_id=m.container_id, name=m.name, pid=0,
                        start_time=0, offline=exc.offline)
    try:
        start_time = procfs.read_start_time(match.pid)
    except FileNotFoundError:
        raise NotFound(
            f"{match.engine} container {ident!r} has pid {match.pid}, which has exited"
        ) from None
    return Resolved(
        engine=match.engine,
        container_id=match.container_id,
        name=match.name,
        pid=match.pid,
        start_time=start_time,
    )
