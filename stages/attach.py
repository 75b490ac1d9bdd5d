"""``cntr attach``: resolve, capture and enter in one process, as the pipeline
``cntr resolve ID | cntr capture | cntr enter -- CMD`` does through pipes.
"""

from __future__ import annotations

from stages.capture import capture
from stages.enter import EnterOptions, check_host, enter
from stages.resolve import resolve


def attach(ident: str, types: list[str] | None, opts: EnterOptions) -> int:
    check_host()
    resolved = resolve(ident, types)
    return enter(capture(resolved.pid, resolved), opts)
