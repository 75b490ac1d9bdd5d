"""The records passed between stages, and their encoding.

``Resolved`` is what ``cntr resolve`` writes; ``Context`` is what ``cntr capture`` writes
and ``cntr enter`` reads.  Both are msgpack maps on a pipe, or JSON (``--format json``,
and by default when the output is a terminal).  Every decoded record is checked against
its schema in ``schemas/`` before any field is used; the schema is the documentation of
each field.

In JSON, ``bytes`` values (the captured files) are written as ``"base64:..."`` strings.
"""

from __future__ import annotations

from cntr import schema
from cntr.errors import BadInput
from cntr.record import asdict, field, fields, record

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from typing import Any, BinaryIO, TypeVar

    R = TypeVar("R", "Resolved", "Context")

MAX_RECORD = 16 << 20
"""Largest record a stage accepts (a context with a huge environment is ~1 MiB)."""
BOUND_FILES = (
    "etc/passwd", "etc/group", "etc/hostname", "etc/hosts", "etc/resolv.conf",
    "etc/localtime",
)
"""Container files captured in a context (``files``) and bound over the host's in a
session, so names and resolution match."""


@record(frozen=True)
class Offline:
    """A container (or image) that runs no process: what an offline session is built on.

    Engines fill it from their configuration (``docker inspect``, LXC's config, ...);
    capture turns it into a context, enter builds a session over ``lower``/``upper``
    (an overlay) or ``path`` (a directory) in fresh namespaces."""

    state: str
    """created, exited, dead, restarting, stopped, or image (for ``attach --image``)."""
    exit_code: int
    """the last exit status the engine recorded (0 if it never ran)."""
    rootfs: str
    """"overlay" (lower/upper/work) or "dir" (path)."""
    lower: list[str]
    """the overlay's read-only layers, topmost first."""
    upper: str
    """the container's own writable layer ("" for an image or a directory)."""
    work: str
    """overlayfs's work directory next to ``upper``."""
    path: str
    """the root directory (rootfs "dir"), or the engine's mount point of the overlay."""
    env: dict[str, str]
    """the configured environment."""
    cwd: str
    """the configured working directory ("/" when none)."""
    user: str
    """the configured user as the engine has it: "", "name", "uid", "name:group", ..."""
    hostname: str
    """the configured hostname."""
    caps: int
    """the capability set the engine would give the container's first process."""
    image: str
    """the image the container was made from (the reference, for ``attach --image``)."""
    uid_map: list[tuple[int, int, int]] = field(default_factory=list)
    """the user namespace's uid map the root filesystem is owned for (LXD), [] for none."""
    gid_map: list[tuple[int, int, int]] = field(default_factory=list)
    """the same for gids."""


@record(frozen=True)
class Resolved:
    """The process a container id or name resolved to."""

    KIND = "cntr.resolve"
    SCHEMA = "resolve"

    engine: str
    """engine that matched: docker, podman, process_id, ..."""
    container_id: str
    """the engine's full id, or the pid as text."""
    name: str
    """the container's name; empty when it has none."""
    pid: int
    """host pid of the container's main process."""
    start_time: int
    """field 22 of /proc/PID/stat, to detect a reused pid."""
    offline: Offline | None = None
    """the container runs no process (pid and start_time are 0): what it is made of.
    Records carrying it are version 2."""


@record(frozen=True)
class Caps:
    """A process's capability sets, as bit masks."""

    bounding: int
    effective: int
    permitted: int
    inheritable: int
    ambient: int


@record(frozen=True)
class Tools:
    """Where a session's tools come from (``--tools SOURCE``): the tree served as ``/``
    instead of the host's."""

    source: str
    """what the user gave: a directory, or a container (``[ENGINE:]NAME``)."""
    root: str
    """the tree served, as the host sees it: the directory, or ``/proc/PID/root``."""
    engine: str
    """the engine of a container source ("" for a directory)."""
    container_id: str
    name: str
    pid: int
    """host pid of the source container's process (0 for a directory)."""
    start_time: int
    """its start time (stat field 22), to refuse a replaced process (0 for a directory)."""


@record(frozen=True)
class Context:
    """Everything enter needs to build a session inside a container."""

    KIND = "cntr.context"
    SCHEMA = "context"

    engine: str
    container_id: str
    name: str
    pid: int
    """host pid of the container's process."""
    start_time: int
    """clock ticks since boot at which the process started."""
    boot_id: str
    """the boot the context was captured in."""
    nspid: int
    """the process's pid inside its own pid namespace."""
    namespaces: dict[str, int]
    """namespace kind -> inode, for every kind the kernel has."""
    uid_map: list[tuple[int, int, int]]
    gid_map: list[tuple[int, int, int]]
    uid: int
    """effective uid inside the container's user namespace."""
    gid: int
    groups: list[int]
    caps: Caps
    no_new_privs: bool
    cgroups: list[tuple[int, str, str]]
    """lines of /proc/PID/cgroup (hierarchy, controllers, path) in the host's view."""
    lsm: str
    """apparmor, selinux, or empty."""
    label: str
    env: dict[str, str]
    cwd: str
    """working directory relative to the container's root."""
    root: str
    """the container's root as the host sees it."""
    files: dict[str, bytes | None] = field(default_factory=dict)
    """container files enter binds over the host's (etc/passwd, ...); None when absent."""
    tools: Tools | None = None
    """where the session's ``/`` comes from; None: the host's ``/``.  A context with
    tools is written as version 2 (``schemas/context.v2.json``), one without as version 1,
    so the stages of an older cntr still read what they can act on."""
    offline: Offline | None = None
    """the container runs no process (pid 0, no namespaces): enter builds an offline
    session over this filesystem in fresh namespaces (``cntr.offline``).  A context with
    it is written as version 3 (``schemas/context.v3.json``, tools optional there)."""


VERSIONS = {Resolved.KIND: (1, 2), Context.KIND: (1, 2, 3)}
"""The record versions this cntr reads, per kind; each has ``schemas/SCHEMA.vN.json``."""


def to_dict(record: Resolved | Context) -> dict[str, Any]:
    out: dict[str, Any] = {"kind": record.KIND, "version": 1}
    out.update(asdict(record))
    if isinstance(record, Context):
        if record.tools is None:
            del out["tools"]
        else:
            out["version"] = 2
    if record.offline is None:
        del out["offline"]
    else:  # a container that runs no process: resolve version 2, context version 3
        out["version"] = 2 if isinstance(record, Resolved) else 3
    return out


def from_dict(cls: type[R], data: Any) -> R:
    """Check ``data`` against the schema of ``cls`` and build the record."""
    if not isinstance(data, dict):
        raise BadInput(f"expected a {cls.KIND} record (a map), got {type(data).__name__}")
    kind = data.get("kind")
    if kind != cls.KIND:
        raise BadInput(f"expected a {cls.KIND} record, got kind {kind!r:.60}")
    version = data.get("version")
    versions = VERSIONS[cls.KIND]
    if type(version) is not int or version not in versions:
        raise BadInput(
            f"{cls.KIND} record version {version!r:.20} is not supported "
            f"(this cntr reads version {' and '.join(map(str, versions))})"
        )
    try:
        schema.validate(data, schema.load(f"{cls.SCHEMA}.v{version}"))
    except schema.SchemaError as exc:
        raise BadInput(f"invalid {cls.KIND} record: {exc}") from None
    values = {name: data[name] for name in fields(cls) if name in data}
    if values.get("offline") is not None:
        off = dict(values["offline"])
        off["uid_map"] = [tuple(x) for x in off["uid_map"]]
        off["gid_map"] = [tuple(x) for x in off["gid_map"]]
        values["offline"] = Offline(**off)
    if cls is Context:
        if values.get("tools") is not None:
            values["tools"] = Tools(**values["tools"])
        values["caps"] = Caps(**values["caps"])
        values["uid_map"] = [tuple(x) for x in values["uid_map"]]
        values["gid_map"] = [tuple(x) for x in values["gid_map"]]
        values["cgroups"] = [tuple(x) for x in values["cgroups"]]
    return cls(**values)


# --- encoding -------------------------------------------------------------------------

def _json_default(obj: Any) -> Any:
    import base64

    if isinstance(obj, bytes):
        return "base64:" + base64.b64encode(obj).decode()
    raise TypeError(f"cannot encode {type(obj).__name__}")


def _json_hook(obj: dict[str, Any]) -> dict[str, Any]:
    import base64

    files = obj.get("files")
    if isinstance(files, dict) and obj.get("kind") == Context.KIND:
        for key, value in files.items():
            if isinstance(value, str) and value.startswith("base64:"):
                try:
                    files[key] = base64.b64decode(value[7:], validate=True)
                except ValueError:
                    raise BadInput(f"files.{key}: invalid base64") from None
    return obj


# json, msgpack and base64 are imported where used: `cntr attach` decodes no record.


def encode(record: Resolved | Context, fmt: str) -> bytes:
    import json

    import msgpack

    data = to_dict(record)
    if fmt == "json":
        return (json.dumps(data, indent=2, default=_json_default) + "\n").encode()
    return msgpack.packb(data, use_bin_type=True)  # type: ignore[no-any-return]  # untyped


def decode(cls: type[R], raw: bytes, what: str = "input") -> R:
    """Decode msgpack or JSON (told apart by the first byte) and validate."""
    return from_dict(cls, _parse(raw, what))


def _parse(raw: bytes, what: str) -> Any:
    """The decoded value of a msgpack or JSON record, not yet validated."""
    import json

    import msgpack

    if not raw.strip():
        raise BadInput(f"{what} is empty: the previous stage printed nothing (did it fail?)")
    if len(raw) > MAX_RECORD:
        raise BadInput(f"{what} is larger than {MAX_RECORD >> 20} MiB: not a cntr record")
    if raw.lstrip()[:1] == b"{":
        try:
            return json.loads(raw, object_hook=_json_hook)
        except (ValueError, RecursionError) as exc:
            raise BadInput(f"{what} is not valid JSON: {exc}") from None
    try:
        return msgpack.unpackb(raw, raw=False, strict_map_key=False)
    except (ValueError, msgpack.ExtraData, msgpack.FormatError,
            msgpack.StackError, TypeError) as exc:
        raise BadInput(f"{what} is not a msgpack or JSON record ({exc})") from None


def read_stream(stream: BinaryIO) -> bytes:
    """Read a whole record, refusing more than MAX_RECORD bytes."""
    raw = stream.read(MAX_RECORD + 1)
    if len(raw) > MAX_RECORD:
        raise BadInput(f"input is larger than {MAX_RECORD >> 20} MiB: not a cntr record")
    return raw


def read_any(raw: bytes, what: str = "input") -> Resolved | Context:
    """Decode either record kind (capture accepts a resolve record or a context)."""
    data = _parse(raw, what)
    kind = data.get("kind") if isinstance(data, dict) else None
    if kind == Context.KIND:
        return from_dict(Context, data)
    return from_dict(Resolved, data)
