"""command: the container is the oldest process whose command line contains a given text.

For processes that no engine knows (a hand-made `unshare` sandbox, a `bwrap` session):
`cntr attach --type command 'sleep 1000'`.  Only used when asked for (not in the default types):
a text matches far too easily.

Caveats:
- The command line is argv joined with spaces; a process can rewrite its own argv.
- cntr's own process and its ancestors (whose command lines contain the text too) are skipped,
  as are kernel threads (empty command line) and zombies.
- The oldest match (by start time) wins, as `pgrep -o -f` does.
"""

from __future__ import annotations

import os

from cntr.engines.base import BaseEngine, Match, iter_pids, read_cmdline, read_stat


def ancestors(pid: int, proc: str = "/proc") -> set[int]:
    """`pid` and all its ancestors."""
    seen = set()
    while pid > 0 and pid not in seen:
        seen.add(pid)
        st = read_stat(pid, proc)
        if st is None:
            break
        pid = st.ppid
    return seen


class CommandEngine(BaseEngine):
    """Matches the oldest process whose command line contains the text."""

    name = "command"

    def __init__(self, proc: str = "/proc", self_pid: int | None = None) -> None:
        super().__init__()
        self.proc = proc
        self.self_pid = os.getpid() if self_pid is None else self_pid

    def lookup(self, ident: str) -> list[Match]:
        if not ident:
            return self._none("empty command")
        skip = ancestors(self.self_pid, self.proc)
        best: tuple[int, int, str] | None = None
        for pid in iter_pids(self.proc):
            if pid in skip:
                continue
            argv = read_cmdline(pid, self.proc)
            if not argv or ident not in " ".join(argv):
                continue
            st = read_stat(pid, self.proc)
            if st is None or st.state in ("Z", "X"):
                continue
            if best is None or (st.starttime, pid) < best[:2]:
                best = (st.starttime, pid, st.comm)
        if best is None:
            return self._none("no process has it in its command line")
        return [Match(self.name, str(best[1]), best[2], best[1])]

    def list(self) -> list[Match]:
        return []
