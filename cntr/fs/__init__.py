"""serve-fs: a pyfuse3 passthrough of a host directory tree (by default the host's ``/``).

A shell inside a container's namespaces sees the host's files through this mount.

- `cntr.fs.inodes`: the inode table (FUSE node ids <-> host files, by file handle; a
  bounded cache of O_PATH descriptors, never one descriptor per inode);
- `cntr.fs.operations`: the pyfuse3 ``Operations`` (every request answered with
  descriptor-relative syscalls);
- `cntr.fs.server`: mount or adopt a /dev/fuse descriptor, run the trio loop, unmount.

Ownership: files created through the mount belong to the caller's host ids (FUSE requests
carry host ids), or to ``effective_user`` when given.  With the container's uid/gid maps,
host id 0 is reported as the container root's host id when 0 is not mapped into the
container, so the container's root sees the host's root-owned files as its own (identity
maps change nothing).

Caveats are listed in each module; the main ones: serve-fs's own mount is hidden from
itself (ENOENT), descriptors cached by serve-fs keep host filesystems busy for a plain
``umount``, and statfs always describes the served root's filesystem.
"""
