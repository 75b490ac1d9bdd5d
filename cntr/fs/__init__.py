"""serve-fs: a FUSE passthrough of a host directory tree (by default the host's ``/``).

A shell inside a container's namespaces sees the host's files through this mount.  The
floors, each importing only those below it:

- `cntr.fs.log`: the ``cntr.fs`` logger, which imports logging only once a message can
  show (serve-fs's start-up is on the attach path);
- `cntr.fs.protocol`: ``<linux/fuse.h>``: opcodes, flags, struct layouts, ioctl numbers;
- `cntr.fs.inodes`: the inode table (FUSE node ids <-> host files, by file handle; a
  bounded cache of O_PATH descriptors, never one descriptor per inode);
- `cntr.fs.gate`: the mount-namespace gate (serve only the session's processes);
- `cntr.fs.passthrough`: the handler core, one plain method per operation: typed ids in,
  reply payloads in the kernel's layout out, OSError for errors;
- `cntr.fs.workers`: the threads that answer requests which can block on the host for
  long (fsync, fallocate, copy_file_range), so that they hold up no other requester;
- `cntr.fs.completions`: the io_uring of the reading thread that FSYNC and FSYNCDIR go to
  first (the kernel waits for them; the workers are the fallback);
- `cntr.fs.uring` and `cntr.fs.session`: the transports (FUSE over io_uring, /dev/fuse)
  and the dispatcher both use: the gate checked once per request, errors turned into
  -errno once;
- `cntr.fs.libfuse`: pyfuse3's libfuse session under trio, a thin adapter over the core
  (the only importer of pyfuse3 and trio, imported only for that session);
- `cntr.fs.server`: mount or adopt a /dev/fuse descriptor, run the chosen session, unmount;
- `cntr.fs.tree`: serve one tree (the core, its grafts, the session chosen).

Caveats are listed in each module; the main ones: serve-fs's own mount is hidden from
itself (ENOENT), descriptors cached by serve-fs keep host filesystems busy for a plain
``umount``, and statfs always describes the served root's filesystem.
"""
