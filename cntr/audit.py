"""Audit records: who entered which container, when, with what command, and how it ended.

Each session (``cntr attach``, ``cntr enter``, ``cntr exec ID -- CMD`` from the host) sends
two records to the system log: one when it starts, one when it ends.  They go over the
syslog protocol to the ``/dev/log`` unix datagram socket, which journald and rsyslog both
read, framed as glibc's ``syslog(3)`` frames a local message (RFC 3164 without the host
name, which the local daemon adds):

    <86>Dec  1 21:40:00 cntr[4242]: @cee: {"event": "session-start", ...}

Priority 86 is facility authpriv (10) and severity info (6): the facility of sudo and
login records, which rsyslog writes to ``/var/log/auth.log``.  The message is ``@cee: ``
followed by one JSON object (the CEE/lumberjack convention that rsyslog's mmjsonparse
and journald readers understand); README.md lists the fields.

Sending never fails a session and never blocks it: a non-blocking socket, one datagram,
and any error (nothing listens, the daemon's queue is full) is ignored.

Caveats:
- ``cntr_pid`` is the pid of the cntr process that supervises the session (the syslog
  PID); the host pid of the session's reaper (``session_pid``) exists only once the
  session is built, so only the end record has it (null when setup failed).
- A session killed with SIGKILL sends no end record.
"""

from __future__ import annotations

# _socket, the C module under socket: socket itself costs ~3 ms to import on every session
# (selectors, the enums of its constants), for one datagram.
import _socket
import os
import time

from cntr import cjson

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Any, TypeVar

    F = TypeVar("F", bound=Callable[..., int])

SOCKET = "/dev/log"
FACILITY_AUTHPRIV = 10
SEVERITY_INFO = 6
PRIORITY = FACILITY_AUTHPRIV * 8 + SEVERITY_INFO
TAG = "cntr"
MAX_COMMAND = 4096
"""Characters of the command kept in a record (a datagram must stay well under the
socket's limit); a longer one ends with "..." in its last kept argument."""
NO_LOGINUID = 4294967295  # (uid_t)-1: the process was not started from a login

STAGE = "enter"
"""The command that started the session ("attach" or "enter"; the CLI sets it);
sessions in the container's own root are "exec"."""

SESSION_PID: int | None = None
"""Host pid of the session's command process, once enter knows it (its end record)."""

_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov",
           "Dec")


def frame(message: dict[str, Any], now: float | None = None, pid: int | None = None) -> bytes:
    """The datagram for ``message``: ``<PRI>Mmm dd hh:mm:ss cntr[PID]: @cee: JSON``."""
    t = time.localtime(now)
    stamp = f"{_MONTHS[t.tm_mon - 1]} {t.tm_mday:2} {t.tm_hour:02}:{t.tm_min:02}:{t.tm_sec:02}"
    body = cjson.dumps(message, compact=True, ensure_ascii=False)
    return f"<{PRIORITY}>{stamp} {TAG}[{pid or os.getpid()}]: @cee: {body}".encode()


def send(message: dict[str, Any], path: str = SOCKET) -> None:
    """Send one record; silently nothing when no log daemon takes it."""
    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_DGRAM | _socket.SOCK_NONBLOCK
                              | _socket.SOCK_CLOEXEC)
    except OSError:
        return
    try:
        sock.sendto(frame(message), path)
    except OSError:
        pass  # no /dev/log, nobody bound to it, or its queue full: never hold a session
    finally:
        sock.close()


def _loginuid() -> int | None:
    try:
        with open("/proc/self/loginuid") as f:
            value = int(f.read().strip())
    except (OSError, ValueError):
        return None
    return None if value == NO_LOGINUID else value


def _user_name(uid: int | None) -> str | None:
    if uid is None:
        return None
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return None


def who() -> dict[str, Any]:
    """Who asked: the uid, the invoking user through sudo, and the login uid."""
    sudo_uid = os.environ.get("SUDO_UID")
    loginuid = _loginuid()
    return {
        "uid": os.getuid(),
        "euid": os.geteuid(),
        "sudo_user": os.environ.get("SUDO_USER"),
        "sudo_uid": int(sudo_uid) if sudo_uid and sudo_uid.isdigit() else None,
        "loginuid": loginuid,
        "login_user": _user_name(loginuid),
    }


def _command(argv: list[str]) -> list[str]:
    out: list[str] = []
    left = MAX_COMMAND
    for arg in argv:
        if len(arg) >= left:
            out.append(arg[:left] + "...")
            break
        out.append(arg)
        left -= len(arg)
    return out


def start_record(ctx: Any, kind: str, argv: list[str], session: str) -> dict[str, Any]:
    """The record a session sends when it starts."""
    return {
        "event": "session-start",
        "session": session,
        "kind": kind,
        "cntr_pid": os.getpid(),
        **who(),
        "engine": ctx.engine,
        "container_id": ctx.container_id,
        "container_name": ctx.name,
        "container_pid": ctx.pid,
        "command": _command(argv),
    }


def logged(default_command: Callable[[], list[str]]) -> Callable[[F], F]:
    """Decorate ``enter(ctx, opts, ...)``: a start record before it, an end record with
    the exit status (or cntr's own exit code and error when it raised) and the duration
    after it.  Only the calling process sends the end: forked children never return."""

    def decorate(fn: F) -> F:
        def wrapper(ctx: Any, opts: Any = None, *args: Any, **kw: Any) -> int:
            from cntr.errors import CntrError

            global SESSION_PID
            SESSION_PID = None
            pid = os.getpid()
            session = os.urandom(8).hex()
            kind = "exec" if opts is not None and opts.container_root else STAGE
            argv = list(opts.command) if opts is not None else []
            record = start_record(ctx, kind, argv or default_command(), session)
            send(record)
            began = time.monotonic()
            status, error = 1, None
            try:
                status = fn(ctx, opts, *args, **kw)
                return status
            except CntrError as exc:
                status, error = exc.exit_code, exc.message
                raise
            except KeyboardInterrupt:
                status, error = 130, "interrupted"
                raise
            except BaseException as exc:
                error = f"{type(exc).__name__}: {exc}"
                raise
            finally:
                if os.getpid() == pid:
                    keys = ("session", "kind", "cntr_pid", "uid", "sudo_user", "loginuid",
                            "engine", "container_id", "container_name", "container_pid")
                    send({"event": "session-end", **{k: record[k] for k in keys},
                          "session_pid": SESSION_PID, "exit_status": status, "error": error,
                          "duration_s": round(time.monotonic() - began, 3)})

        # What functools.wraps would copy (functools is not imported on the attach path).
        for attr in ("__module__", "__name__", "__qualname__", "__doc__", "__annotations__"):
            setattr(wrapper, attr, getattr(fn, attr))
        wrapper.__wrapped__ = fn  # type: ignore[attr-defined]  # as functools.wraps sets it
        return wrapper  # type: ignore[return-value]  # same signature as fn

    return decorate
