"""What every engine module shares: the Match record, the Engine protocol, and small helpers.

An engine module answers one question: which host process is the main process of the container
the user named?  Helpers here speak HTTP/1.1 over a unix socket (docker, podman, LXD APIs), run
an engine's CLI with a hard timeout, and read /proc.

Caveats:
- Every helper fails fast: sockets and commands get a timeout of a few seconds and a command that
  hangs is killed with its whole process group.  A lookup never blocks forever.
- /proc readers take a `proc` argument so that tests can feed a fake tree; they tolerate
  processes that vanish between listing and reading (the usual /proc race).
- Pids are host pids: cntr runs in the host's pid namespace.
"""

from __future__ import annotations

# _socket, the C module under socket: socket itself costs ~3 ms to import (selectors, the
# enums of its constants), for a class whose methods used here are all _socket's.
import _socket
import _thread
import os

from cntr import cjson
from cntr.context import Offline
from cntr.errors import CntrError, suppress
from cntr.linux.procfs import split_stat
from cntr.record import record

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable, Iterator, Sequence
    from typing import Any, Protocol, TypeVar

    T = TypeVar("T")
else:
    Protocol = object  # Engine is an interface for the type checker only

#: seconds an engine's API socket may take to answer
SOCKET_TIMEOUT = 3.0
#: seconds an engine's CLI may take to answer
COMMAND_TIMEOUT = 5.0

#: the reason of an empty answer when the engine's tools are absent
NOT_INSTALLED = "not installed"
#: the reason of an empty answer when the engine has no such container
NO_SUCH_CONTAINER = "no such container"


@record(frozen=True)
class Match:
    """A running container (or process) that answers to the name the user gave."""

    engine: str
    """The engine that knows it: "docker", "podman", ..., "process_id"."""
    container_id: str
    """The engine's full id of the container (the pid as text for process_id and command)."""
    name: str
    """The container's name as the engine shows it ("" if it has none)."""
    pid: int
    """Host pid of the container's main process (0 for a container that is not running)."""
    state: str = "running"
    """"running", or what the engine says of a stopped one: created, exited, dead, ..."""


class EngineError(CntrError):
    """The engine is there but failed or timed out; the message says what it answered."""


class NotRunning(EngineError):
    """The engine knows the container, but it has no running process (pid 0).

    ``match`` names it (pid 0, its state); ``offline`` describes its filesystem and
    configuration when the engine keeps them (None when it does not: no offline session)."""

    def __init__(self, message: str, match: Match | None = None,
                 offline: Offline | None = None) -> None:
        super().__init__(message)
        self.match = match
        self.offline = offline


class Engine(Protocol):
    """One container engine.  Instances are cheap and used by one thread at a time."""

    name: str
    """The type name, as in `--type docker`."""
    reason: str
    """Why the last `lookup` returned []: "no such container", "not installed", ..."""

    def lookup(self, ident: str) -> list[Match]:
        """Containers answering to `ident` (name, full id or id prefix).

        [] when none (see `reason`), several when an id prefix is ambiguous.
        Raises EngineError when the engine is there but unusable (daemon down, timeout),
        NotRunning when the container exists but is stopped.
        """
        ...

    def list(self) -> list[Match]:
        """Every running container of the engine (for `cntr ps`); [] when not installed."""
        ...


def host_path(path: str) -> str:
    """The host's absolute ``path`` as this process reaches it: below ``$CNTR_HOST_ROOT``
    when that is set (cntr in a container that has the host's root mounted elsewhere, as
    ``/host`` in a Kubernetes node debug pod), symlinks resolved inside that root (the
    host's /var/run -> /run must not lead to the container's /run); ``path`` itself
    otherwise."""
    root = os.environ.get("CNTR_HOST_ROOT", "").rstrip("/")
    if not root or not path.startswith("/"):
        return path
    todo = [p for p in path.split("/") if p]
    done: list[str] = []
    links = 0
    while todo:
        name = todo.pop(0)
        if name in (".", ".."):
            if name == ".." and done:
                done.pop()
            continue
        try:
            target = os.readlink("/".join([root, *done, name]))
        except OSError:  # not a symlink, or absent: taken as it is
            done.append(name)
            continue
        links += 1
        if links > 40:  # a loop: ELOOP when the caller opens it
            done.append(name)
            break
        if target.startswith("/"):
            done = []
        todo[:0] = [p for p in target.split("/") if p]
    return "/".join([root, *done, *todo])


# --------------------------------------------------------------------------- HTTP on unix sockets


_SAFE = frozenset(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789_.-~")


def quote(text: str) -> str:
    """Percent-encode a path segment (urllib.parse.quote(text, safe=""), without the
    ~5 ms import of urllib.parse and ipaddress on every lookup)."""
    return "".join(chr(b) if b in _SAFE else f"%{b:02X}" for b in text.encode())


def _dechunk(body: bytes) -> bytes:
    out = bytearray()
    while body:
        size_line, _, rest = body.partition(b"\r\n")
        size = int(size_line.split(b";")[0], 16)
        if size == 0:
            break
        out += rest[:size]
        body = rest[size + 2:]
    return bytes(out)


def unix_http_get(path: str, url: str, timeout: float = SOCKET_TIMEOUT) -> tuple[int, bytes]:
    """GET `url` from the HTTP server on unix socket `path`: (status, body).

    HTTP/1.0, so the server closes the connection after the body and never chunks it
    (chunking is still undone if a server does); a few lines of socket code instead of
    http.client, whose import alone costs more than the request (~16 ms).

    Raises OSError when the socket does not answer (ENOENT, ECONNREFUSED, timeout) and
    EngineError when the answer is not HTTP.
    """
    sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM)
    sock.settimeout(timeout)
    chunks = []
    try:
        sock.connect(path)
        sock.sendall(f"GET {url} HTTP/1.0\r\nHost: localhost\r\n"
                     "Accept: application/json\r\n\r\n".encode())
        while data := sock.recv(65536):
            chunks.append(data)
    finally:
        sock.close()
    head, sep, body = b"".join(chunks).partition(b"\r\n\r\n")
    parts = head.split(None, 2)
    if not sep or len(parts) < 2 or not parts[0].startswith(b"HTTP/") or not parts[1].isdigit():
        raise EngineError(f"{path}: not an HTTP answer to GET {url}: {head[:60]!r}")
    if b"transfer-encoding: chunked" in head.lower():
        try:
            body = _dechunk(body)
        except ValueError as exc:
            raise EngineError(f"{path}: bad chunked answer to GET {url}") from exc
    return int(parts[1]), body


def unix_http_json(path: str, url: str, timeout: float = SOCKET_TIMEOUT) -> tuple[int, Any]:
    """Like unix_http_get, with the body decoded as JSON (None when it is not JSON)."""
    status, body = unix_http_get(path, url, timeout)
    try:
        return status, cjson.loads(body)
    except ValueError:
        return status, None


def api_message(data: Any, body_default: str = "") -> str:
    """The error text of a docker/podman/LXD API answer ({"message": ...} or {"error": ...})."""
    if isinstance(data, dict):
        for key in ("message", "error", "cause"):
            if isinstance(data.get(key), str) and data[key]:
                return str(data[key])
    return body_default


# --------------------------------------------------------------------------- commands


def bound(fn: Callable[..., T], *args: Any) -> Callable[[], T]:
    """``fn`` with ``args``: functools.partial, without functools (see `in_threads`)."""
    return lambda: fn(*args)


def in_threads(calls: Sequence[Callable[[], T]]) -> list[T]:
    """The results of ``calls``, run each in a thread of its own (engines mostly wait on
    sockets and processes); the first exception a call raised is raised after all ended.
    Plain threads: concurrent.futures costs ~5 ms to import; threading itself (with
    functools and collections, ~6 ms of CPU) is imported here, where threads run."""
    if len(calls) == 1:
        return [calls[0]()]
    import threading

    results: list[Any] = [None] * len(calls)
    errors: list[BaseException] = []

    def run(i: int) -> None:
        try:
            results[i] = calls[i]()
        except BaseException as exc:  # noqa: BLE001  # handed to the caller below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,), name="cntr-engine", daemon=True)
               for i in range(len(calls))]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


INLINE_BUDGET = 0.02
"""Seconds `inline_then_threads` runs calls one after the other before it hands the rest
to threads."""


def inline_then_threads(calls: Sequence[Callable[[], T]],
                        budget: float = INLINE_BUDGET) -> list[T]:
    """The results of ``calls``, in order: run one after the other in this thread while
    they have taken less than ``budget`` seconds in all, the rest at once in threads
    (`in_threads`) as soon as they have taken more.

    What resolve needs: most lookups are a file read or one round trip to a daemon's
    socket (well under a millisecond each), where a thread per engine costs more than the
    lookups (thread starts, and wake-ups a loaded machine is slow to schedule: 4 ms of
    CPU and ~5 ms of wall time measured on a resolve here); a lookup that has to wait
    (an engine's CLI, a daemon slow to answer) sends the others to threads, so waits
    still overlap: at worst the first slow call's time is added to that of the rest."""
    import time

    results: list[T] = []
    deadline = time.monotonic() + budget
    for i, call in enumerate(calls):
        if time.monotonic() > deadline:
            return results + in_threads(calls[i:])
        results.append(call())
    return results


def find_on_path(tool: str) -> str | None:
    """Where the executable ``tool`` is on $PATH (shutil.which without its ~3 ms import)."""
    for directory in os.environ.get("PATH", os.defpath).split(os.pathsep):
        path = os.path.join(directory or ".", tool)
        if os.access(path, os.X_OK) and not os.path.isdir(path):
            return path
    return None


def on_path(tool: str) -> bool:
    """``tool`` is an executable on $PATH."""
    return find_on_path(tool) is not None


def run_tool(argv: Sequence[str], timeout: float = COMMAND_TIMEOUT) -> tuple[int, str, str] | None:
    """Run an engine's CLI: (returncode, stdout, stderr), or None when it is not installed.

    The command runs in its own session with stdin from /dev/null and LC_ALL=C (messages are
    matched in English); on timeout its whole process group is killed and EngineError raised.
    """
    exe = find_on_path(argv[0])
    if exe is None:
        return None
    import subprocess  # ~4 ms to import: only when a tool runs

    env = dict(os.environ, LC_ALL="C")
    try:
        proc = subprocess.Popen(
            [exe, *argv[1:]],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
            start_new_session=True,
        )
    except OSError as exc:
        raise EngineError(f"{argv[0]}: cannot run: {exc.strerror}") from exc
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        with suppress(ProcessLookupError):
            os.killpg(proc.pid, 9)  # SIGKILL (subprocess imported signal, the attach path not)
        with suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=1)
        raise EngineError(f"`{' '.join(argv)}` gave no answer within {timeout:g} s") from exc
    return proc.returncode, out, err


def reason_of(exc: OSError) -> str:
    """An OSError's text without its errno number: "Connection refused", "timed out"."""
    return exc.strerror or str(exc) or type(exc).__name__


def first_line(text: str) -> str:
    """The first non-empty line of a tool's message, without a leading 'Error: '."""
    for raw in text.splitlines():
        line = raw.strip()
        if line:
            return line.removeprefix("Error: ").removeprefix("error: ")
    return ""


# --------------------------------------------------------------------------- /proc


def iter_pids(proc: str = "/proc") -> Iterator[int]:
    """Every pid in `proc`, in no particular order."""
    try:
        names = os.listdir(proc)
    except OSError:
        return
    for entry in names:
        if entry.isdigit():
            yield int(entry)


def read_cmdline(pid: int, proc: str = "/proc") -> list[str]:
    """argv of `pid` ([] for kernel threads, zombies and vanished processes)."""
    try:
        with open(f"{proc}/{pid}/cmdline", "rb") as f:
            raw = f.read()
    except OSError:
        return []
    return [a.decode(errors="surrogateescape") for a in raw.split(b"\0")[:-1]] if raw else []


@record(frozen=True)
class ProcStat:
    """The fields of /proc/PID/stat that lookups need (proc(5))."""

    comm: str
    """The command name, at most 15 characters."""
    state: str
    """R, S, D, Z, ..."""
    ppid: int
    """The parent's pid."""
    starttime: int
    """Clock ticks after boot when the process started."""
    uid: int
    """Owner (owner of the /proc/PID directory, i.e. the real uid)."""


def read_stat(pid: int, proc: str = "/proc") -> ProcStat | None:
    """The stat of `pid`, None when it vanished."""
    # os.open and one read, not open(): resolve by name reads this for every process of
    # the host (a scan), and a file object costs two more syscalls and as much Python as
    # the parsing.  The file's owner is its /proc/PID directory's (proc(5)).
    try:
        fd = os.open(f"{proc}/{pid}/stat", os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return None
    try:
        raw = os.read(fd, 4096)  # the whole of it: a few hundred bytes, made by one read
        uid = os.fstat(fd).st_uid
    except OSError:
        return None
    finally:
        os.close(fd)
    try:
        comm, fields = split_stat(raw)
        return ProcStat(comm, fields[0], int(fields[1]), int(fields[19]), uid)
    except (IndexError, ValueError):
        return None


_scan_lock = _thread.allocate_lock()
_scans: dict[tuple[str, str], Any] | None = None


class shared_process_scan:
    """While inside, `processes` and `commands` read /proc once each and every engine
    shares that reading (resolve asks the engines at once; three of them look for daemon
    processes)."""

    def __enter__(self) -> None:
        global _scans
        _scans = {}

    def __exit__(self, *_exc: object) -> None:
        global _scans
        _scans = None


def _shared(kind: str, proc: str, read: Callable[[str], T]) -> T:
    scans = _scans
    if scans is None:
        return read(proc)
    with _scan_lock:
        if (kind, proc) not in scans:
            scans[kind, proc] = read(proc)
        found: T = scans[kind, proc]
        return found


def processes(proc: str = "/proc") -> dict[int, ProcStat]:
    """The stat of every process (pid -> ProcStat); shared within `shared_process_scan`."""
    return _shared("stat", proc, _read_all)


def commands(proc: str = "/proc") -> dict[int, str]:
    """The command name (comm) of every process; shared within `shared_process_scan`.
    What the engines look for daemons by: reading ``/proc/PID/comm`` costs the kernel
    far less than ``stat`` (measured here over the host's ~130 processes: 0.9 ms against
    1.5 ms, and no parsing), so a lookup by name that finds no daemon reads no stat."""
    return _shared("comm", proc, _read_comms)


def _read_all(proc: str) -> dict[int, ProcStat]:
    out = {}
    for pid in iter_pids(proc):
        st = read_stat(pid, proc)
        if st is not None:
            out[pid] = st
    return out


def _read_comms(proc: str) -> dict[int, str]:
    out = {}
    for pid in iter_pids(proc):
        try:
            fd = os.open(f"{proc}/{pid}/comm", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            out[pid] = os.read(fd, 64).decode(errors="replace").removesuffix("\n")
        except OSError:
            continue
        finally:
            os.close(fd)
    return out


def alive(pid: int, proc: str = "/proc") -> bool:
    """`pid` exists and is not a zombie."""
    st = read_stat(pid, proc)
    return st is not None and st.state not in ("Z", "X")


def children(pid: int, proc: str = "/proc") -> list[int]:
    """Living children of `pid`, oldest first (from a scan of ppid: works without
    CONFIG_PROC_CHILDREN and on fake trees; the shared scan within `shared_process_scan`)."""
    found = [(st.starttime, p) for p, st in processes(proc).items()
             if st.ppid == pid and st.state not in ("Z", "X")]
    return [p for _, p in sorted(found)]


def option_value(argv: Sequence[str], *names: str) -> str | None:
    """The value of the last of the options `names` in argv.

    Forms: `-n X`, `-nX`, `--name=X`, `--name X`.
    """
    value: str | None = None
    i = 0
    while i < len(argv):
        arg = argv[i]
        for name in names:
            if arg == name and i + 1 < len(argv):
                value = argv[i + 1]
                i += 1
                break
            if name.startswith("--") and arg.startswith(name + "="):
                value = arg[len(name) + 1 :]
                break
            short = not name.startswith("--") and len(name) == 2
            if short and arg.startswith(name) and arg != name:
                value = arg[2:]
                break
        i += 1
    return value


def is_hex(text: str) -> bool:
    """`text` is a non-empty lowercase hex string (a possible id prefix)."""
    return bool(text) and all(c in "0123456789abcdef" for c in text)


class BaseEngine:
    """Defaults shared by the engine classes."""

    name = "?"

    def __init__(self) -> None:
        self.reason = NO_SUCH_CONTAINER

    def _none(self, reason: str) -> list[Match]:
        self.reason = reason
        return []
