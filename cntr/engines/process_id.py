"""process_id: the container is given as a host pid.

`cntr attach 4242` attaches to process 4242 whatever runs it; `resolve` tries this engine first
for an all-digits name, so a pid wins over a docker id prefix made of digits.

Caveats:
- A zombie has no namespaces left to enter: it does not match.
- The pid is read from the host's /proc; a pid inside a container's own pid namespace means
  nothing here.
"""

from __future__ import annotations

from cntr.engines.base import BaseEngine, Match, read_stat


class ProcessIdEngine(BaseEngine):
    """Matches a living host pid."""

    name = "process_id"

    def __init__(self, proc: str = "/proc") -> None:
        super().__init__()
        self.proc = proc

    def lookup(self, ident: str) -> list[Match]:
        if not ident.isascii() or not ident.isdigit() or int(ident) <= 0:
            return self._none("not a pid")
        pid = int(ident)
        st = read_stat(pid, self.proc)
        if st is None:
            return self._none("no such process")
        if st.state in ("Z", "X"):
            return self._none("process is a zombie")
        return [Match(self.name, str(pid), st.comm, pid)]

    def list(self) -> list[Match]:
        # Every process would be a "container": `cntr ps` lists engines' containers only.
        return []
