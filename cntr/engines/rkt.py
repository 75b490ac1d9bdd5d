"""rkt (abandoned upstream in 2019): `rkt list --full --no-legend`, then `rkt status UUID`.

rkt pods have a UUID and apps with names.  `rkt status UUID` prints key=value lines, among them
`state=running` and `pid=NNN` (the pod's stage1 init, whose children are the apps).

Caveats:
- NOT live-tested: rkt is in no registry this project can reach and runs nowhere here.  The
  parsers are tested against samples written from rkt's documented output formats
  (Documentation/subcommands/status.md and list.md of rkt v1.30), not recorded ones.
- The pid is stage1's: with the default systemd-nspawn stage1 it is systemd-nspawn's child,
  whose namespaces the apps share.
- A name matches the UUID, a UUID prefix, or an app name.
"""

from __future__ import annotations

from cntr.engines.base import (
    NO_SUCH_CONTAINER,
    NOT_INSTALLED,
    BaseEngine,
    EngineError,
    Match,
    NotRunning,
    first_line,
    run_tool,
)

STATES = {"embryo", "preparing", "prepared", "running", "deleting", "exited", "garbage", "aborted",
          "exited-garbage"}


def parse_status(text: str) -> dict[str, str]:
    """The key=value lines of `rkt status`."""
    out = {}
    for line in text.splitlines():
        key, sep, value = line.partition("=")
        if sep:
            out[key.strip()] = value.strip()
    return out


def parse_list(text: str) -> list[tuple[str, str, str]]:
    """(uuid, app, state) rows of `rkt list --full [--no-legend]`, one per app.

    A pod's first app shares the pod's line; its other apps follow on lines that start with
    blanks and carry no UUID or state.
    """
    out: list[tuple[str, str, str]] = []
    for line in text.splitlines():
        fields = line.split()
        if not fields or fields[0] == "UUID":
            continue
        if line[0].isspace():
            if out:
                uuid, _, state = out[-1]
                out.append((uuid, fields[0], state))
            continue
        if len(fields) < 3:
            continue
        state = next((f for f in fields[2:] if f in STATES), "")
        out.append((fields[0], fields[1], state))
    return out


class RktEngine(BaseEngine):
    """rkt pods."""

    name = "rkt"

    def _pods(self) -> list[tuple[str, str, str]] | None:
        res = run_tool(["rkt", "list", "--full", "--no-legend"])
        if res is None:
            return None
        rc, out, err = res
        if rc != 0:
            raise EngineError(f"rkt: {first_line(err) or f'rkt list exit {rc}'}")
        return parse_list(out)

    def _status(self, uuid: str, app: str) -> Match:
        res = run_tool(["rkt", "status", uuid])
        if res is None or res[0] != 0:
            raise EngineError(f"rkt: {first_line(res[2]) if res else 'rkt vanished'}")
        status = parse_status(res[1])
        pid = status.get("pid", "")
        if status.get("state") != "running" or not pid.isdigit() or int(pid) <= 0:
            raise NotRunning(f"rkt: pod '{uuid}' is not running (state {status.get('state')})")
        return Match(self.name, uuid, app, int(pid))

    def lookup(self, ident: str) -> list[Match]:
        self.reason = NO_SUCH_CONTAINER
        pods = self._pods()
        if pods is None:
            return self._none(NOT_INSTALLED)
        first_app: dict[str, str] = {}
        for uuid, app, _state in pods:
            first_app.setdefault(uuid, app)
        chosen = {uuid: first_app[uuid] for uuid, app, _state in pods
                  if ident and (uuid.startswith(ident) or ident == app)}
        return [self._status(uuid, app) for uuid, app in chosen.items()] or self._none(
            NO_SUCH_CONTAINER
        )

    def list(self) -> list[Match]:
        try:
            pods = self._pods() or []
            running: dict[str, str] = {}
            for uuid, app, state in pods:
                if state == "running":
                    running.setdefault(uuid, app)
            return [self._status(uuid, app) for uuid, app in running.items()]
        except EngineError:
            return []
