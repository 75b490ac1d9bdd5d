"""lxd (stub)."""

from __future__ import annotations

from cntr.engines.base import BaseEngine, Match


class LxdEngine(BaseEngine):
    name = "lxd"

    def lookup(self, ident: str) -> list[Match]:
        return self._none("not implemented")

    def list(self) -> list[Match]:
        return []
