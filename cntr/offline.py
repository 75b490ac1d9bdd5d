"""Offline sessions: a session over the filesystem of a container that is not running
(created, exited, dead, restarting between attempts) or of an image.

``context_of`` turns the engine's description (``Offline``, in a version 2 resolve record)
into a context: the configured environment, working directory, hostname and the
capabilities the engine would give, and the configured user resolved through the
container's own /etc/passwd and /etc/group (read layer by layer with
``openat2(RESOLVE_IN_ROOT)``).  ``enter`` then builds the usual session (serve-fs at
``/``, the container's root at the base directory) in fresh namespaces instead of joining a
process's (``cntr.linux.fresh``); ``session`` below holds the container's filesystem for
the session's lifetime.

Holding the container's writable layer, per engine (what keeps the container sound):
- docker (overlay2, dockerd 20.10): dockerd mounts a container's layers again at every
  start, and overlayfs lets a second mount use an upperdir already in use (it only warns,
  "upperdir is in-use by another mount", unless mounted with index=on, which dockerd does
  not ask for): a session with an overlay of its own over the same upperdir while the
  container starts would be two overlays writing one directory.  So the session uses
  dockerd's own mount instead: an export of the container (``GET /containers/ID/export``,
  or ``docker export`` without the socket) that cntr does not read holds dockerd's
  reference-counted mount of the layers for as long as the connection is open; a
  ``docker start`` meanwhile reuses that very mount.  Closing the connection (also when
  cntr is killed) drops the reference: dockerd unmounts it.
- podman (4.3): ``podman mount`` takes a reference on the container's storage mount and
  ``podman start`` reuses a mounted layer; ``podman umount`` drops it after the session.
  (``podman export`` would hold podman's container lock, and with it every ``podman
  inspect``, for the whole session.)
- a directory root (LXC, LXD): the session uses it as it is.
- ``--read-only`` and images: a private overlay (a detached mount, in no mount table) of
  the layers, the container's writable layer among them read-only, with a throwaway upper
  layer on a tmpfs.
A watcher asks the engine every ``WATCH_INTERVAL`` seconds; when the container runs (it
was started) or is gone, the session is ended and cntr says so in one line.

Caveats:
- the user is resolved from the topmost layer that has /etc/passwd; an overlay whiteout
  counts as absent, redirects and opaque directories are not followed.
- the session's first process is pid 1 of its pid namespace: when the command exits,
  whatever it left running there is killed (a session keeps nothing behind).
- podman's mount reference is dropped by a small guard process when cntr is SIGKILLed
  (it waits for the end of a pipe from cntr).
"""

from __future__ import annotations

import contextlib
import os
import signal
import stat
import sys
import threading
from collections.abc import Callable, Iterator

from cntr.context import Caps, Context, Offline, Resolved
from cntr.errors import CntrError, NotFound, StaleContext, Unsupported
from cntr.linux import mounts, procfs

WATCH_INTERVAL = float(os.environ.get("CNTR_OFFLINE_WATCH") or 1.0)
"""Seconds between two questions to the engine about the container's state."""

FULL_MAP = [(0, 0, 4294967295)]
"""The id map of the host's user namespace (the session runs in it)."""

BOUND_FILES = ("etc/passwd", "etc/group", "etc/hostname", "etc/hosts", "etc/resolv.conf",
               "etc/localtime")


class ContainerStarted(CntrError):
    """The container was started (or removed) while an offline session held its layer."""

    exit_code = 9


# --------------------------------------------------------------------------- capture


def _layers(off: Offline) -> list[str]:
    if off.rootfs == "dir":
        return [off.path]
    return [d for d in (off.upper, *off.lower) if d]


def read_file(off: Offline, rel: str) -> bytes | None:
    """``rel`` as the container would see it: from the topmost layer that has it (a
    whiteout, a 0/0 character device, hides the layers below); None when absent."""
    for layer in _layers(off):
        try:
            root = os.open(layer, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fd = mounts.open_in_container(root, rel, os.O_PATH | os.O_NOFOLLOW)
            if fd is None:
                continue
            try:
                st = os.fstat(fd)
            finally:
                os.close(fd)
            if stat.S_ISCHR(st.st_mode) and st.st_rdev == 0:
                return None
            if not stat.S_ISREG(st.st_mode) and not stat.S_ISLNK(st.st_mode):
                return None
            fd = mounts.open_in_container(root, rel, os.O_RDONLY | os.O_NONBLOCK)
            if fd is None:
                return None  # a symlink that leaves this layer: not followed
            try:
                if not stat.S_ISREG(os.fstat(fd).st_mode):
                    return None
                return os.read(fd, 1 << 20)
            finally:
                os.close(fd)
        finally:
            os.close(root)
    return None


def _entries(data: bytes | None) -> list[list[str]]:
    text = (data or b"").decode(errors="replace")
    return [line.split(":") for line in text.splitlines() if line and not line.startswith("#")]


def resolve_user(user: str, passwd: bytes | None,
                 group: bytes | None) -> tuple[int, int, list[int], str]:
    """(uid, gid, supplementary groups, home) of a configured user ("", "name", "uid",
    "name:group", "uid:gid"), as runc resolves it in the container's files."""
    name, _, grp = user.partition(":")
    users = [e for e in _entries(passwd) if len(e) >= 6]
    groups = [e for e in _entries(group) if len(e) >= 3]
    uid, gid, home, uname = 0, 0, "/", "root"
    if name:
        found = next((e for e in users if e[0] == name), None)
        if found is None and name.isdigit():
            found = next((e for e in users if e[2] == name), None)
        if found is not None:
            uname, uid, gid, home = found[0], int(found[2]), int(found[3]), found[5] or "/"
        elif name.isdigit():
            uid, gid, uname = int(name), int(name), ""
        else:
            raise NotFound(f"user {name!r} is not in the container's /etc/passwd")
    else:
        root = next((e for e in users if e[2] == "0"), None)
        if root is not None:
            home = root[5] or "/"
    if grp:
        g = next((e for e in groups if e[0] == grp), None)
        if g is None and grp.isdigit():
            gid = int(grp)
        elif g is None:
            raise NotFound(f"group {grp!r} is not in the container's /etc/group")
        else:
            gid = int(g[2])
    extra = sorted({int(e[2]) for e in groups
                    if uname and e[2].isdigit() and uname in e[3].split(",")} - {gid})
    return uid, gid, [gid, *extra], home


def context_of(resolved: Resolved) -> Context:
    """The context of an offline session over the container ``resolved`` describes."""
    off = resolved.offline
    assert off is not None  # the caller checked
    files = {rel: read_file(off, rel) for rel in BOUND_FILES}
    uid, gid, groups, home = resolve_user(off.user, files["etc/passwd"], files["etc/group"])
    if off.hostname:
        files["etc/hostname"] = off.hostname.encode() + b"\n"
    env = dict(off.env)
    env.setdefault("PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin")
    if off.hostname:
        env.setdefault("HOSTNAME", off.hostname)
    env.setdefault("HOME", home)
    # As runc does for a process without ambient capabilities: a uid other than 0 keeps
    # only the bounding set (execve clears its permitted and effective sets).
    # Never more than cntr holds itself (an engine's "all" on a host without some).
    bounding = off.caps & procfs.read_status(os.getpid()).cap_bounding
    held = bounding if uid == 0 else 0
    return Context(
        engine=resolved.engine, container_id=resolved.container_id, name=resolved.name,
        pid=0, start_time=0, boot_id=procfs.read_boot_id(), nspid=0, namespaces={},
        uid_map=off.uid_map or FULL_MAP, gid_map=off.gid_map or FULL_MAP, uid=uid, gid=gid,
        groups=groups,
        caps=Caps(bounding=bounding, effective=held, permitted=held, inheritable=0,
                  ambient=0),
        no_new_privs=False, cgroups=[], lsm="", label="", env=env, cwd=off.cwd or "/",
        root=off.path or off.upper or (off.lower[0] if off.lower else "/"),
        files=files, offline=off)


def replay(ctx: Context) -> Context:
    """``enter --offline``: a saved context of a container whose process is gone, over
    the container's filesystem as the engine describes it now (its ids, capabilities,
    environment, cwd and files are the saved ones)."""
    from cntr import engines
    from cntr.record import replace

    try:
        engines.resolve(ctx.container_id, [ctx.engine])
    except engines.StoppedContainer as exc:
        if exc.offline is None:
            raise Unsupported(
                f"{ctx.engine} keeps no filesystem cntr can use for "
                f"{ctx.name or ctx.container_id}") from None
        return replace(ctx, pid=0, start_time=0, nspid=0, namespaces={}, cgroups=[],
                       uid_map=exc.offline.uid_map or FULL_MAP,
                       gid_map=exc.offline.gid_map or FULL_MAP, offline=exc.offline)
    raise StaleContext(
        f"container {ctx.name or ctx.container_id} is running again: capture it anew "
        "(cntr attach) instead of replaying an offline session")


# --------------------------------------------------------------------------- hold


def _engine(name: str) -> object:
    from cntr import engines

    return engines.make(name)


def state(ctx: Context) -> str:
    """"running", "gone", or the engine's word for the stopped container (asked now)."""
    from cntr import engines

    engine = engines.make(ctx.engine)
    try:
        found = engine.lookup(ctx.container_id)
    except engines.NotRunning as exc:
        return exc.match.state if exc.match is not None else "stopped"
    except engines.EngineError:
        return "unknown"
    return "running" if any(m.pid for m in found) else "gone"


def _wait_released(ctx: Context, timeout: float = 5.0) -> None:
    """Wait until dockerd has unmounted the layers the export held (it does so once it
    sees the connection closed), unless the container runs on them now."""
    import time

    path = ctx.offline.path if ctx.offline is not None else ""
    deadline = time.monotonic() + timeout
    checked = False
    while path and os.path.ismount(path) and time.monotonic() < deadline:
        if not checked and time.monotonic() > deadline - timeout + 0.5:
            checked = True
            if state(ctx) == "running":
                return
        time.sleep(0.02)


@contextlib.contextmanager
def _docker_hold(ctx: Context) -> Iterator[str]:
    """dockerd's own mount of the container's layers, held by an unread export."""
    from cntr.engines.docker import DockerEngine

    engine = DockerEngine()
    sock_path = engine.socket_path
    if sock_path is not None and os.path.exists(sock_path):
        import socket

        from cntr.engines.base import quote

        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            # A small buffer: dockerd blocks writing the archive almost at once.
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.settimeout(10)
            sock.connect(sock_path)
            sock.sendall(f"GET /containers/{quote(ctx.container_id)}/export HTTP/1.0\r\n"
                         "Host: localhost\r\n\r\n".encode())
            head = b""
            while b"\r\n\r\n" not in head and len(head) < 65536:
                chunk = sock.recv(4096)
                if not chunk:
                    break
                head += chunk
            status = head.split(None, 2)[1:2]
            if status != [b"200"]:
                gone = status == [b"404"]
                what = head.partition(b"\r\n\r\n")[2][:200].decode(errors="replace").strip()
                raise (NotFound if gone else CntrError)(
                    f"docker cannot hold container {ctx.name or ctx.container_id}'s "
                    f"filesystem: {what or 'HTTP ' + b''.join(status).decode()}")
            yield ""
        finally:
            sock.close()
            _wait_released(ctx)
        return
    import subprocess

    proc = subprocess.Popen(["docker", "export", ctx.container_id], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, stdin=subprocess.DEVNULL)
    try:
        yield ""
    finally:
        proc.kill()
        proc.wait()
        if proc.stdout is not None:
            proc.stdout.close()
        if proc.stderr is not None:
            proc.stderr.close()
        _wait_released(ctx)


_PODMAN_GUARD = """
import subprocess, sys
if sys.stdin.buffer.read() != b"done":
    subprocess.run(["podman", "umount", sys.argv[1]], stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=60)
"""


@contextlib.contextmanager
def _podman_hold(ctx: Context) -> Iterator[str]:
    """podman's reference-counted mount of the container's storage."""
    import subprocess

    from cntr.engines.base import first_line, run_tool

    res = run_tool(["podman", "mount", ctx.container_id], timeout=30)
    if res is None or res[0] != 0:
        why = first_line(res[2]) if res else "podman is not installed"
        exc = NotFound if "no such" in why.lower() or "no container" in why.lower() else CntrError
        raise exc(f"podman mount {ctx.name or ctx.container_id}: {why}")
    # A guard that drops the reference if cntr dies without doing it (SIGKILL): it reads
    # its stdin until end-of-file and unmounts unless told "done" first.
    guard = subprocess.Popen([sys.executable, "-c", _PODMAN_GUARD, ctx.container_id],
                             stdin=subprocess.PIPE, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    try:
        yield res[1].strip()
    finally:
        run_tool(["podman", "umount", ctx.container_id], timeout=30)
        assert guard.stdin is not None
        with contextlib.suppress(BrokenPipeError):
            guard.stdin.write(b"done")
        guard.stdin.close()
        guard.wait()


@contextlib.contextmanager
def open_root(ctx: Context, read_only: bool) -> Iterator[int]:
    """A descriptor of the root the session is built on, held for the block."""
    from cntr.linux import fresh

    off = ctx.offline
    assert off is not None
    if off.rootfs == "dir" and not read_only:
        fd = os.open(off.path, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)
        return
    if read_only or not off.upper:
        lower = [off.path] if off.rootfs == "dir" else [d for d in (off.upper, *off.lower) if d]
        try:
            fd = fresh.overlay(lower)
        except FileNotFoundError as exc:
            raise NotFound(f"a layer of {ctx.name or ctx.container_id} is gone "
                           f"({exc.filename or 'removed meanwhile'})") from None
        try:
            yield fd
        finally:
            os.close(fd)
        return
    holds: dict[str, Callable[[Context], contextlib.AbstractContextManager[str]]] = {
        "docker": _docker_hold, "podman": _podman_hold}
    hold = holds.get(ctx.engine)
    if hold is None:
        raise Unsupported(
            f"{ctx.engine} would mount the container's layer a second time when it starts "
            "it, and overlayfs would not stop it: only --read-only sessions here")
    with hold(ctx) as where:
        merged = where or off.path
        if not os.path.ismount(merged):
            raise CntrError(f"{ctx.engine} did not mount {merged}")
        if state(ctx) == "running":
            raise ContainerStarted(
                f"container {ctx.name or ctx.container_id} started meanwhile: "
                "attach to it as usual")
        fd = os.open(merged, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            yield fd
        finally:
            os.close(fd)


# --------------------------------------------------------------------------- session


class _Watch:
    """Ends the session (SIGTERM to the setup child, which kills the session) when the
    engine says the container runs or is gone."""

    def __init__(self, ctx: Context) -> None:
        self.ctx = ctx
        self.child = 0
        self.seen = ""
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._run, name="cntr-offline-watch",
                                       daemon=True)

    def started(self, child: int) -> None:
        self.child = child
        self.thread.start()

    def _run(self) -> None:
        while not self.stop.wait(WATCH_INTERVAL):
            now = state(self.ctx)
            if now in ("running", "gone"):
                self.seen = now
                with contextlib.suppress(ProcessLookupError):
                    os.kill(self.child, signal.SIGTERM)
                return

    def close(self) -> None:
        self.stop.set()
        if self.thread.is_alive():
            self.thread.join()


def describe_session(ctx: Context, read_only: bool) -> str:
    off = ctx.offline
    assert off is not None
    name = ctx.name or ctx.container_id[:12]
    if off.state == "image":
        return (f"cntr: image {off.image} is not a container: offline session over its "
                "layers, changes are thrown away")
    what = f"{off.state}, exit code {off.exit_code}" if off.state == "exited" else off.state
    kind = ("changes are thrown away" if read_only or (off.rootfs == "overlay" and not off.upper)
            else "changes stay in the container")
    return (f"cntr: container {name} is not running ({what}): offline session over its "
            f"filesystem in new namespaces, {kind}")


def run(ctx: Context, read_only: bool, enter: Callable[[int, Callable[[int], None]], int],
        ) -> int:
    """Hold the container's filesystem, say what the session is, run ``enter(root_fd,
    started)`` (``started(pid)`` is called with the setup child's pid) and release it."""
    watch = _Watch(ctx) if ctx.offline is not None and ctx.offline.state != "image" else None
    with open_root(ctx, read_only) as root_fd:
        print(describe_session(ctx, read_only), file=sys.stderr)
        try:
            code = enter(root_fd, watch.started if watch else (lambda _pid: None))
        finally:
            if watch is not None:
                watch.close()
    if watch is not None and watch.seen:
        name = ctx.name or ctx.container_id[:12]
        did = "was started" if watch.seen == "running" else "was removed"
        raise ContainerStarted(f"container {name} {did}: the offline session ended")
    return code


def session_init(ctx: Context, base_dir: str) -> None:
    """In the session's first process, pid 1 of its new pid namespace: mount its /proc,
    /sys and /dev, then fork.  The child returns and goes on as the session's reaper; this
    process stays as the namespace's init: it holds no descriptor, forwards signals to the
    reaper, and exits with its status, which ends everything left in the namespace.

    A root filesystem owned for a user namespace (LXD's shifted ids, ``uid_map``): the
    child makes a user namespace and this process, privileged in the host's, writes its
    maps (a process cannot map other ids than its own into a namespace it made)."""
    from cntr.linux import fresh

    fresh.mount_kernel_fs(base_dir)
    userns = ctx.uid_map != FULL_MAP
    if userns:
        ready_r, ready_w = os.pipe()
        ack_r, ack_w = os.pipe()
    child = os.fork()
    if child == 0:
        if userns:
            from cntr.linux import syscalls

            os.close(ready_r)
            os.close(ack_w)
            syscalls.unshare(syscalls.CLONE_NEWUSER)
            os.write(ready_w, b"u")
            os.close(ready_w)
            if os.read(ack_r, 1) != b"k":
                raise OSError(1, "the user namespace's id maps were not written")
            os.close(ack_r)
        return
    if userns:
        os.close(ready_w)
        os.close(ack_r)
        ok = b""
        if os.read(ready_r, 1) == b"u":
            with contextlib.suppress(OSError):
                for which, lines in (("uid_map", ctx.uid_map), ("gid_map", ctx.gid_map)):
                    with open(f"/proc/{child}/{which}", "w") as f:
                        f.write("".join(f"{a} {b} {c}\n" for a, b, c in lines))
                ok = b"k"
        with contextlib.suppress(OSError):
            os.write(ack_w, ok or b"x")
        os.close(ready_r)
        os.close(ack_w)
    # Nothing of the session's (its pipes, the pty) may stay open here: readers wait
    # for their end-of-file.
    os.closerange(0, os.sysconf("SC_OPEN_MAX"))
    with contextlib.suppress(OSError):
        os.setsid()  # the group the supervisor signals

    def forward(signum: int, _frame: object) -> None:
        with contextlib.suppress(ProcessLookupError):
            try:
                os.killpg(child, signum)
            except ProcessLookupError:
                os.kill(child, signum)

    for sig in (signal.SIGTERM, signal.SIGHUP, signal.SIGINT, signal.SIGQUIT,
                signal.SIGUSR1, signal.SIGUSR2, signal.SIGWINCH):
        signal.signal(sig, forward)
    signal.pthread_sigmask(signal.SIG_SETMASK, ())
    code = 0
    while True:
        try:
            pid, status = os.waitpid(-1, 0)
        except InterruptedError:
            continue
        except ChildProcessError:
            break
        if pid == child:
            code = os.waitstatus_to_exitcode(status)
            break
    os._exit(128 - code if code < 0 else code)


def resolve_image(ref: str, types: list[str] | None = None) -> Resolved:
    """A version 2 resolve record for an image of docker or podman (the first of
    ``types`` that has ``ref``); NotFound naming what each engine answered."""
    from cntr.engines import EngineError
    from cntr.engines.docker import DockerEngine, NoSuchImage
    from cntr.engines.podman import PodmanEngine

    names = [t for t in (types or ["docker", "podman"]) if t in ("docker", "podman")]
    if not names:
        raise NotFound(f"no image '{ref}': only docker and podman have images")
    said = []
    for name in names:
        engine = DockerEngine() if name == "docker" else PodmanEngine()
        try:
            off = engine.image(ref)
        except NoSuchImage:
            said.append(f"{name}: no such image")
            continue
        except EngineError as exc:
            said.append(str(exc))
            continue
        if off is None:
            said.append(f"{name}: not an overlay image")
            continue
        return Resolved(engine=name, container_id=ref, name=ref, pid=0, start_time=0,
                        offline=off)
    raise NotFound(f"no image '{ref}': {'; '.join(said)}")


def hold_step(ctx: Context, read_only: bool) -> dict[str, object]:
    """How ``open_root`` will hold the container's filesystem, as a plan step."""
    off = ctx.offline
    assert off is not None
    if off.rootfs == "dir" and not read_only:
        return {"step": "open-root", "path": off.path}
    if read_only or not off.upper:
        lower = [off.path] if off.rootfs == "dir" else [d for d in (off.upper, *off.lower) if d]
        return {"step": "overlay", "lower": lower, "upper": "tmpfs (thrown away)",
                "mounted": "detached"}
    how = {"docker": f"GET /containers/{ctx.container_id}/export, held unread",
           "podman": f"podman mount {ctx.container_id}"}.get(ctx.engine, "unsupported")
    return {"step": "hold", "engine": ctx.engine, "how": how, "path": off.path or off.upper,
            "watch": f"every {WATCH_INTERVAL:g} s"}
