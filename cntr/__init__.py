"""cntr: attach to a running container with every tool of the host at hand.

Layers, bottom up:

- ``cntr.linux``: the only code that talks to the kernel (ctypes syscalls, procfs,
  namespaces, mounts, capabilities, cgroups, LSM labels, pty);
- ``cntr.engines``: one module per container engine, turning ids and names into pids;
- ``cntr.fs``: serve-fs, the FUSE filesystem that serves the host's tree into a session
  (one handler core; it speaks the kernel's FUSE protocol itself, and pyfuse3's libfuse
  session is an adapter over the same core);
- ``cntr.context`` and ``cntr.schema``: the records passed between stages, checked
  against ``schemas/``; ``cntr.errors``: what can go wrong and its exit code;
- ``cntr.session``: a session inside a container: its plan (the ordered set-up operations)
  and the processes that carry it out; ``cntr.offline``: sessions over a container's
  filesystem when it runs no process;
- ``cntr.stages`` (the checkout's ``stages/``, linked as ``cntr/stages``): resolve,
  capture, serve_fs, enter, attach, exec, built on the above;
- ``cntr.cli``: the command line, the only user of click; for operators around it:
  ``cntr.audit`` (session records to the system log), ``cntr.asciicast`` (--record),
  ``cntr.complete`` (shell completion's container names), ``cntr.manpage`` (cntr(1)),
  ``cntr.version`` (--version).
"""

__version__ = "0.1.0"
