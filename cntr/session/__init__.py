"""A session: the nested container ``cntr enter`` builds, as a plan and the processes that
carry it out.

The plan (``plan``) is the ordered list of set-up operations, built once from the context,
the options and what the host shows of the container (``plan.Facts``); ``enter --dry-run``
prints it, and the session's processes execute it, each the part that is its own:

- the *supervisor* (``supervisor``; host namespaces) has done the operations before the
  first fork (the context checked, ``/dev/fuse`` opened, serve-fs started by
  ``cntr.launch``); it forks the setup child (which hands serve-fs its parameters once
  the FUSE filesystem is created), relays the pty, forwards signals to the reaper and
  returns the command's exit status;
- the *setup child* (``setup``), single-threaded, joins the container's cgroups, builds
  the session's mount namespace (``cntr.linux.mounts``), joins the uts, ipc, net, cgroup,
  pid, time and user namespaces, forks the reaper and waits for it; when told to stop
  (SIGTERM from the supervisor, or its parent-death signal) it kills every process of the
  session, found in the host's /proc, the reaper last;
- the *reaper* (``reaper``), the session's first process in the container's pid namespace:
  session leader, subreaper, the container's credentials plus the guard capability and the
  seccomp filter that takes its power away (``plan.session_guard``, ``cntr.linux.seccomp``),
  non-dumpable; it forks the command, forwards signals to the command's process group,
  reaps every orphan of the session and exits when it has no child left;
- the *command* (``reaper.command``), in a process group of its own (the terminal's
  foreground one), with default signal dispositions, executed in the container's working
  directory.

They report on one pipe (``messages``).  ``CNTR_PLAN_LOG=FILE`` makes each process append
every operation it carries out to FILE, one JSON line each, in the form ``--dry-run``
prints it (``inherit.Inherited.log``): the tests compare the two.

Imports go one way: ``supervisor`` and ``setup`` use ``plan``, ``messages`` and
``inherit``; ``setup`` forks into ``reaper``; nothing here imports ``cntr.stages``.
"""
