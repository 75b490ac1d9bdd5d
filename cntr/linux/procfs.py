"""Reading a process's state from procfs: identity, ids, capabilities, cgroups, environment.

Every reader takes a ``proc`` root (default ``/proc``) so the parsers can be tested on a
recorded tree.  Ids read here are as the *reader* sees them (the host's, when cntr runs
in the initial namespaces).

Caveats:
- ``/proc/PID/environ`` is the environment the process was *started* with; a process that
  changed its own environment later is not reflected (same as the original cntr).
- A pid can be reused: callers compare ``start_time`` (field 22 of ``stat``) to detect it.
"""

from __future__ import annotations

import os

from cntr.record import record

NAMESPACE_KINDS = ("mnt", "uts", "ipc", "net", "pid", "cgroup", "user", "time")


@record(frozen=True)
class Status:
    """The fields of ``/proc/PID/status`` cntr needs."""

    uids: tuple[int, int, int, int]
    """real, effective, saved, filesystem uid."""
    gids: tuple[int, int, int, int]
    """real, effective, saved, filesystem gid."""
    groups: tuple[int, ...]
    """supplementary groups."""
    cap_inheritable: int
    cap_permitted: int
    cap_effective: int
    cap_bounding: int
    cap_ambient: int
    no_new_privs: bool
    nspid: tuple[int, ...]
    """the pid in each nested pid namespace, outermost first."""
    name: str
    """the command name (``comm``)."""


def read_bytes(path: str) -> bytes:
    """The whole of ``path``, with os.open and os.read: a buffered file object costs
    an fstat, an ioctl, an lseek and its Python for each of the dozen /proc files an
    attach reads."""
    fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    try:
        chunks = []
        while chunk := os.read(fd, 65536):
            chunks.append(chunk)
        return b"".join(chunks)
    finally:
        os.close(fd)


def read_status(pid: int, proc: str = "/proc") -> Status:
    fields: dict[str, str] = {}
    for line in read_bytes(f"{proc}/{pid}/status").decode(errors="replace").splitlines():
        key, _, value = line.partition(":")
        fields[key] = value.strip()

    def ids(key: str) -> tuple[int, int, int, int]:
        a, b, c, d = (int(x) for x in fields[key].split())
        return (a, b, c, d)

    def cap(key: str) -> int:
        return int(fields.get(key, "0"), 16)

    nspid = tuple(int(x) for x in fields.get("NSpid", str(pid)).split())
    return Status(
        uids=ids("Uid"),
        gids=ids("Gid"),
        groups=tuple(int(x) for x in fields.get("Groups", "").split()),
        cap_inheritable=cap("CapInh"),
        cap_permitted=cap("CapPrm"),
        cap_effective=cap("CapEff"),
        cap_bounding=cap("CapBnd"),
        cap_ambient=cap("CapAmb"),
        no_new_privs=fields.get("NoNewPrivs", "0") == "1",
        nspid=nspid,
        name=fields.get("Name", ""),
    )


def split_stat(raw: bytes) -> tuple[str, list[str]]:
    """``/proc/PID/stat`` as (comm, the fields after it): field 3 (state) is index 0.

    comm (field 2) may contain spaces and parentheses: it ends at the last ')'.
    """
    lpar, rpar = raw.find(b"("), raw.rindex(b")")
    return raw[lpar + 1 : rpar].decode(errors="replace"), raw[rpar + 2 :].decode().split()


def read_start_time(pid: int, proc: str = "/proc") -> int:
    """Field 22 of ``/proc/PID/stat``: start time in clock ticks since boot."""
    return int(split_stat(read_bytes(f"{proc}/{pid}/stat"))[1][19])


def read_state(pid: int, proc: str = "/proc") -> str:
    """Field 3 of ``/proc/PID/stat``: R, S, D, Z (zombie), X (dead), ..."""
    return split_stat(read_bytes(f"{proc}/{pid}/stat"))[1][0]


def read_boot_id(proc: str = "/proc") -> str:
    return read_bytes(f"{proc}/sys/kernel/random/boot_id").decode().strip()


def read_namespaces(pid: int, proc: str = "/proc") -> dict[str, int]:
    """Inode of each namespace the process is in; kinds the kernel lacks are left out."""
    out: dict[str, int] = {}
    for kind in NAMESPACE_KINDS:
        try:
            out[kind] = os.stat(f"{proc}/{pid}/ns/{kind}").st_ino
        except FileNotFoundError:
            continue
    return out


def parse_id_map(text: str) -> list[tuple[int, int, int]]:
    """Lines of ``uid_map``/``gid_map``: inside, outside, count."""
    out = []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            out.append((int(parts[0]), int(parts[1]), int(parts[2])))
    return out


def read_id_map(pid: int, which: str, proc: str = "/proc") -> list[tuple[int, int, int]]:
    return parse_id_map(read_bytes(f"{proc}/{pid}/{which}").decode())


def map_to_inside(host_id: int, id_map: list[tuple[int, int, int]]) -> int | None:
    """The id a host id has inside a user namespace, or None when it is unmapped."""
    for inside, outside, count in id_map:
        if outside <= host_id < outside + count:
            return inside + host_id - outside
    return None


def parse_cgroups(text: str) -> list[tuple[int, str, str]]:
    """Lines of ``/proc/PID/cgroup``: hierarchy id, controllers, path."""
    out = []
    for line in text.splitlines():
        hier, ctrls, path = line.split(":", 2)
        out.append((int(hier), ctrls, path))
    return out


def read_cgroups(pid: int, proc: str = "/proc") -> list[tuple[int, str, str]]:
    return parse_cgroups(read_bytes(f"{proc}/{pid}/cgroup").decode())


def parse_environ(data: bytes) -> dict[str, str]:
    env: dict[str, str] = {}
    for item in data.split(b"\0"):
        if not item:
            continue
        key, sep, value = item.partition(b"=")
        if sep and key:
            env[os.fsdecode(key)] = os.fsdecode(value)
    return env


def read_environ(pid: int, proc: str = "/proc") -> dict[str, str]:
    return parse_environ(read_bytes(f"{proc}/{pid}/environ"))


def read_link(path: str) -> str:
    return os.readlink(path)
