"""``cntr attach``: resolve, capture and enter in one process, as the pipeline
``cntr resolve ID | cntr capture | cntr enter -- CMD`` does through pipes.

serve-fs is started first, so its start-up runs while the container is resolved and
captured; it is ended again if either fails.  The kernel's wait before the first cgroup
migration is started early too (`cntr.linux.cgroups.warm_up`, until enter forks the
setup child), so the setup child's join does not wait.  A container that is not running
gets an offline session (``cntr.offline``); ``attach_image`` gives one over an image.
"""

from __future__ import annotations

import gc

from cntr.launch import check_host
from cntr.linux import cgroups
from cntr.stages.capture import capture, capture_tools
from cntr.stages.enter import EnterOptions, enter, open_server
from cntr.stages.resolve import resolve


def _collect_again() -> None:
    """Garbage collection back on for the session when the console entry turned it off
    for the start-up, without the objects made so far: they live as long as the process,
    and the processes forked next do not have to copy their pages for collections."""
    if not gc.isenabled():
        gc.freeze()
        gc.enable()


def attach(ident: str, types: list[str] | None, opts: EnterOptions,
           tools: str | None = None) -> int:
    """``tools``: ``--tools SOURCE``, the tree served as ``/`` instead of the host's (see
    `cntr.stages.capture.capture_tools`); ``types`` applies to ``ident`` only."""
    check_host()
    with open_server(opts.base_dir) as server:
        cgroups.warm_up()  # the console entry started it already; enter's fork ends it
        resolved = resolve(ident, types)
        ctx = capture(resolved.pid, resolved)
        if tools is not None:
            from cntr.record import replace

            ctx = replace(ctx, tools=capture_tools(tools))
        _collect_again()
        return enter(ctx, opts, server)


def attach_image(ref: str, types: list[str] | None, opts: EnterOptions) -> int:
    """``cntr attach --image REF``: an offline session over an image of docker or podman
    (the first of ``types`` that has it), with a throwaway writable layer."""
    from cntr.offline import resolve_image

    check_host()
    with open_server(opts.base_dir) as server:
        resolved = resolve_image(ref, types)
        _collect_again()
        return enter(capture(0, resolved), opts, server)
