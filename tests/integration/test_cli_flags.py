"""Every flag and variable README.md documents, through the real command line.

Each test runs ``cntr`` as a user would (a subprocess, or a process on a pty) and checks
what the user sees: output, exit status, owners of files, errno values.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import pty
import re
import select
import signal
import struct
import subprocess
import tempfile
import termios
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from cntr.context import Context
from cntr.record import fields
from tests.conftest import CNTR, REPO, Container, run_cntr
from tests.integration.fsutil import PYTHON, is_mounted, unmount

pytestmark = [pytest.mark.root, pytest.mark.fuse]


# --- serve-fs ----------------------------------------------------------------------
@contextlib.contextmanager
def serve_fs(src: Path, *args: str) -> Iterator[tuple[Path, subprocess.Popen[bytes]]]:
    """``cntr serve-fs SRC --mountpoint MNT ARGS...`` until the block ends."""
    mnt = Path(tempfile.mkdtemp(prefix="cntr-flags-"))
    proc = subprocess.Popen([*CNTR, "serve-fs", str(src), "--mountpoint", str(mnt), *args],
                            cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 30
        while not is_mounted(mnt):
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline, "serve-fs did not mount"
            time.sleep(0.02)
        yield mnt, proc
    finally:
        unmount(mnt)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.communicate(timeout=30)
        if proc.poll() is None:
            proc.kill()
            proc.communicate()
        os.rmdir(mnt)


def test_serve_fs_exits_by_itself_when_unmounted(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with serve_fs(tmp_path) as (mnt, proc):
        assert (mnt / "f").read_text() == "x"
        subprocess.run(["umount", str(mnt)], check=True)
        out, err = proc.communicate(timeout=30)  # no signal: it ends by itself
        assert (proc.returncode, out, err) == (0, b"", b"")


@pytest.mark.parametrize(("user", "owner"), [("nobody", (65534, 65534)),
                                             ("4242", (4242, 4242))])
def test_serve_fs_effective_user(tmp_path: Path, user: str, owner: tuple[int, int]) -> None:
    with serve_fs(tmp_path, "--effective-user", user) as (mnt, _):
        (mnt / "made").write_text("x")
        (mnt / "dir").mkdir()
        os.symlink("made", mnt / "link")
    for name in ("made", "dir", "link"):
        st = os.lstat(tmp_path / name)
        assert (st.st_uid, st.st_gid) == owner, name


def test_serve_fs_without_effective_user_files_are_the_callers(tmp_path: Path) -> None:
    with serve_fs(tmp_path) as (mnt, _):
        (mnt / "made").write_text("x")
    st = os.lstat(tmp_path / "made")
    assert (st.st_uid, st.st_gid) == (0, 0)


def test_serve_fs_allowed_mnt_ns(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    own = os.stat("/proc/self/ns/mnt").st_ino
    with serve_fs(tmp_path, "--allowed-mnt-ns", str(own)) as (mnt, _):
        assert (mnt / "f").read_text() == "x"
    other = subprocess.Popen(["unshare", "-m", "sleep", "100"])
    try:
        deadline = time.monotonic() + 10
        while os.stat(f"/proc/{other.pid}/ns/mnt").st_ino == own:
            assert time.monotonic() < deadline
            time.sleep(0.02)
        ino = os.stat(f"/proc/{other.pid}/ns/mnt").st_ino
        with serve_fs(tmp_path, "--allowed-mnt-ns", str(ino)) as (mnt, _):
            got = {"stat": err_of(os.stat, mnt / "f"), "open": err_of(open, mnt / "f"),
                   "create": err_of(open, mnt / "g", "w"), "listdir": err_of(os.listdir, mnt)}
            assert got == dict.fromkeys(got, errno.EACCES)
    finally:
        other.kill()
        other.wait()
    assert not (tmp_path / "g").exists()


def test_serve_fs_fs_debug_logs_each_request(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("x")
    with serve_fs(tmp_path, "--fs-debug") as (mnt, proc):
        assert (mnt / "f").read_text() == "x"
        assert err_of(os.stat, mnt / "missing") == errno.ENOENT
        unmount(mnt)
        _, err = proc.communicate(timeout=30)
    lines = err.decode().splitlines()
    ops = [line for line in lines if line.startswith(("cntr.fs: lookup", "cntr.fs: read"))]
    assert ops == ["cntr.fs: lookup(1, b'f') -> ok", *(
        f"cntr.fs: read({m.group(1)}, 0, 4096) -> ok" for m in [re.search(
            r"read\((\d+),", "\n".join(lines))] if m),
        "cntr.fs: lookup(1, b'missing') -> ok"]  # a negative entry, cached


def err_of(fn: object, *args: object) -> int | None:
    try:
        fn(*args)  # type: ignore[operator]
    except OSError as exc:
        return exc.errno
    return None


# Opens /dev/fuse, lets a child mount it in a mount namespace of its own, and runs
# `cntr serve-fs --fuse-fd N SRC` on the descriptor; the child uses the files and exits,
# which unmounts: serve-fs must then exit with 0 by itself.
_FUSE_FD = r'''
import json, os, subprocess, sys
from cntr.linux import syscalls as sc

src, cntr = sys.argv[1], sys.argv[2:]
fuse_fd = os.open("/dev/fuse", os.O_RDWR)
mounted_r, mounted_w = os.pipe()
result_r, result_w = os.pipe()
pid = os.fork()
if pid == 0:
    try:
        sc.unshare(sc.CLONE_NEWNS)
        sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
        sc.mount("tmpfs", "/mnt", "tmpfs", 0, "mode=755")
        os.mkdir("/mnt/fs")
        fs = sc.fsopen("fuse")
        for k, v in (("source", "cntr"), ("fd", str(fuse_fd)), ("rootmode", "40000"),
                     ("user_id", "0"), ("group_id", "0")):
            sc.fsconfig(fs, sc.FSCONFIG_SET_STRING, k, v)
        sc.fsconfig(fs, sc.FSCONFIG_SET_FLAG, "allow_other")
        sc.fsconfig(fs, sc.FSCONFIG_CMD_CREATE)
        mfd = sc.fsmount(fs)
        sc.move_mount(mfd, "", sc.AT_FDCWD, "/mnt/fs", sc.MOVE_MOUNT_F_EMPTY_PATH)
        os.close(mfd); os.close(fs); os.close(fuse_fd)
        os.write(mounted_w, b"M")
        out = {"listdir": os.listdir("/mnt/fs"), "read": open("/mnt/fs/hello").read()}
        with open("/mnt/fs/written", "w") as f:
            f.write("by the child")
        os.write(result_w, json.dumps(out).encode())
    finally:
        os._exit(0)
os.close(mounted_w); os.close(result_w)
assert os.read(mounted_r, 1) == b"M"
os.set_inheritable(fuse_fd, True)
server = subprocess.run([*cntr, "serve-fs", "--fuse-fd", str(fuse_fd), src],
                        pass_fds=(fuse_fd,), capture_output=True, timeout=60)
os.waitpid(pid, 0)
print(json.dumps({"code": server.returncode, "stderr": server.stderr.decode(),
                  "child": json.loads(os.read(result_r, 65536) or b"{}")}))
'''


def test_serve_fs_fuse_fd(tmp_path: Path) -> None:
    (tmp_path / "hello").write_text("from the host\n")
    out = subprocess.run([PYTHON, "-c", _FUSE_FD, str(tmp_path), *CNTR], cwd=REPO,
                         capture_output=True, timeout=120, check=False)
    assert out.returncode == 0, out.stderr.decode()
    assert json.loads(out.stdout) == {
        "code": 0, "stderr": "", "child": {"listdir": ["hello"], "read": "from the host\n"}}
    assert (tmp_path / "written").read_text() == "by the child"


# --- attach and enter ----------------------------------------------------------------
def test_cntr_base_dir(demo: Container) -> None:
    base = "/var/lib/cntr-tests-base"
    env = {**os.environ, "CNTR_BASE_DIR": base}
    try:
        out = run_cntr("attach", demo.ident, "--", "/bin/sh", "-c",
                       f'pwd; ls -a {base} | sort; echo "$CNTR_BASE_DIR"', env=env)
        assert (out.returncode, out.stderr) == (0, b""), out.stderr.decode()
        lines = out.stdout.decode().splitlines()
        root = sorted([*os.listdir(f"/proc/{demo.pid}/root"), ".", ".."])
        assert lines == [base, *sorted(root), base]
        assert os.listdir(base) == []  # left empty on the host
    finally:
        with contextlib.suppress(OSError):
            os.rmdir(base)


def test_cntr_serve_fs_log_keeps_the_servers_messages(demo: Container,
                                                      tmp_path: Path) -> None:
    """A host mount without file handles (an overlay) makes serve-fs warn: the warning goes
    to CNTR_SERVE_FS_LOG, and without it nowhere near the terminal."""
    log = tmp_path / "serve-fs.log"
    for d in ("lower", "upper", "work", "ovl"):
        (tmp_path / d).mkdir()
    (tmp_path / "lower" / "f").write_text("from-lower\n")
    script = ("mount -t overlay overlay -o lowerdir=lower,upperdir=upper,workdir=work,"
              'nfs_export=off ovl && cd / && exec "$@"')
    for keep in (True, False):
        env = {**os.environ, **({"CNTR_SERVE_FS_LOG": str(log)} if keep else {})}
        out = subprocess.run(
            ["unshare", "-m", "--propagation", "private", "sh", "-c", script, "sh", *CNTR,
             "attach", demo.ident, "--", "/bin/sh", "-c", f"cat {tmp_path}/ovl/f"],
            cwd=tmp_path, env=env, capture_output=True, timeout=120, check=False)
        assert (out.returncode, out.stdout, out.stderr) == (0, b"from-lower\n", b""), (
            out.stderr)
    lines = log.read_text().splitlines()
    assert len(lines) == 1, lines
    assert re.fullmatch(rf"serve-fs: no file handles on {tmp_path}/ovl \(overlay, mount \d+\):"
                        r" its files are found again by name", lines[0]), lines


def test_debug_shows_the_traceback() -> None:
    plain = run_cntr("resolve", "no-such-container-d3b", "-t", "process_id")
    assert (plain.returncode, plain.stdout) == (4, b"")
    message = plain.stderr.decode()
    assert message.startswith("cntr: resolve: no container 'no-such-container-d3b'")
    assert message.count("\n") == 1
    debug = run_cntr("--debug", "resolve", "no-such-container-d3b", "-t", "process_id")
    err = debug.stderr.decode()
    assert debug.returncode == 1
    assert err.startswith("Traceback (most recent call last):\n"), err
    assert err.splitlines()[-1].rstrip() == (
        "cntr.errors.NotFound: " + message[len("cntr: resolve: "):]).rstrip()


def test_exit_126_when_the_command_cannot_be_executed(demo: Container) -> None:
    out = run_cntr("attach", demo.ident, "--", "/etc/hostname")
    assert (out.returncode, out.stdout) == (126, b"")
    assert out.stderr.decode() == "cntr: cannot run '/etc/hostname': Permission denied\n"


def test_exit_127_when_the_command_is_missing(demo: Container) -> None:
    out = run_cntr("attach", demo.ident, "--", "no-such-command-x")
    assert (out.returncode, out.stdout) == (127, b"")
    assert out.stderr.decode() == (
        "cntr: cannot run 'no-such-command-x': No such file or directory\n")


def test_the_session_starts_in_the_containers_working_directory() -> None:
    with subprocess.Popen(["sleep", "300"], cwd="/usr/share") as target:
        try:
            out = run_cntr("attach", str(target.pid), "--", "/bin/sh", "-c", "pwd")
        finally:
            target.kill()
    assert (out.returncode, out.stdout) == (0, b"/var/lib/cntr/usr/share\n"), out.stderr


def test_exec_from_the_host_starts_in_the_containers_working_directory() -> None:
    with subprocess.Popen(["sleep", "300"], cwd="/usr/share") as target:
        try:
            out = run_cntr("exec", str(target.pid), "--", "/bin/sh", "-c", "pwd")
        finally:
            target.kill()
    assert (out.returncode, out.stdout) == (0, b"/usr/share\n"), out.stderr


# --- a terminal ------------------------------------------------------------------------
class Terminal:
    """cntr on the slave side of a pty this test holds the master of."""

    def __init__(self, *args: str, rows: int = 24, cols: int = 80) -> None:
        self.pid, self.fd = pty.fork()
        if self.pid == 0:  # pragma: no cover  # the child execs
            os.chdir(REPO)
            os.environ["SHELL"] = "/bin/sh"
            os.execv(CNTR[0], [*CNTR, *args])
        self.resize(rows, cols)
        self.seen = b""

    def resize(self, rows: int, cols: int) -> None:
        fcntl.ioctl(self.fd, termios.TIOCSWINSZ, struct.pack("HHHH", rows, cols, 0, 0))

    def expect(self, pattern: bytes, timeout: float = 30) -> re.Match[bytes]:
        deadline = time.monotonic() + timeout
        while (m := re.search(pattern, self.seen)) is None:
            left = deadline - time.monotonic()
            assert left > 0 and select.select([self.fd], [], [], left)[0], self.seen
            try:
                chunk = os.read(self.fd, 4096)
            except OSError:
                chunk = b""
            assert chunk, f"end of output before {pattern!r}: {self.seen!r}"
            self.seen += chunk
        self.seen = self.seen[m.end():]
        return m

    def send(self, text: bytes) -> None:
        os.write(self.fd, text)

    def wait(self) -> int:
        with contextlib.suppress(OSError):
            while os.read(self.fd, 4096):
                pass
        _, status = os.waitpid(self.pid, 0)
        os.close(self.fd)
        return os.waitstatus_to_exitcode(status)


def test_window_size_is_followed_after_a_resize(demo: Container) -> None:
    term = Terminal("attach", demo.ident, "--", "/bin/sh", rows=33, cols=101)
    term.send(b"stty size; echo at-$((1+1))\n")
    assert term.expect(rb"(\d+ \d+)\r\nat-2").group(1) == b"33 101"
    term.resize(47, 133)  # the kernel sends cntr SIGWINCH
    # the new size reaches the session's pty asynchronously: ask until it shows
    deadline = time.monotonic() + 20
    while True:
        term.send(b"stty size; echo sz-$((2+2))\n")
        size = term.expect(rb"(\d+ \d+)\r\nsz-4").group(1)
        if size == b"47 133" or time.monotonic() > deadline:
            break
        time.sleep(0.1)
    assert size == b"47 133"
    term.send(b"exit 3\n")
    assert term.wait() == 3


@pytest.mark.parametrize(("flag", "tty"), [("--tty", True), ("--no-tty", False)])
def test_tty_flags_on_a_terminal(demo: Container, flag: str, tty: bool) -> None:
    term = Terminal("attach", flag, demo.ident, "--", "/bin/sh", "-c",
                    # a pty of its own is the session's controlling terminal; without
                    # one the command has cntr's descriptors and no controlling terminal
                    "if (: </dev/tty) 2>/dev/null; then echo tty-yes; else echo tty-no; fi")
    m = term.expect(rb"tty-(yes|no)")
    assert m.group(1) == (b"yes" if tty else b"no")
    assert term.wait() == 0


@pytest.mark.parametrize(("flag", "tty"), [("--tty", True), ("--no-tty", False),
                                           (None, False)])
def test_tty_flags_on_pipes(demo: Container, flag: str | None, tty: bool) -> None:
    args = ["attach", *([flag] if flag else []), demo.ident, "--", "/bin/sh", "-c",
            "if test -t 1; then echo tty-yes; else echo tty-no; fi"]
    out = run_cntr(*args, input=b"")
    assert out.returncode == 0, out.stderr.decode()
    assert out.stdout == (b"tty-yes\r\n" if tty else b"tty-no\n")


# --- signals -------------------------------------------------------------------------
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM, signal.SIGHUP, signal.SIGQUIT,
                                 signal.SIGUSR1, signal.SIGUSR2], ids=lambda s: s.name)
def test_signal_is_forwarded_to_the_command(demo: Container, sig: signal.Signals) -> None:
    name = sig.name[3:]
    # A loop of builtins: a child of the shell (a sleep) would get the signal too, being in
    # the command's process group, and the shell might report its death on stderr.
    script = f"trap 'echo got-{name}; exit 3' {name}; echo ready; while :; do :; done"
    with subprocess.Popen([*CNTR, "attach", demo.ident, "--", "/bin/sh", "-c", script],
                          cwd=REPO, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE) as proc:
        assert proc.stdout is not None
        assert proc.stdout.readline() == b"ready\n"
        proc.send_signal(sig)
        try:
            out, err = proc.communicate(timeout=60)
        except subprocess.TimeoutExpired:
            proc.kill()  # (the session ends with it: the setup child's parent-death signal)
            raise
    assert (proc.returncode, out, err) == (3, f"got-{name}\n".encode(), b"")


# --- ps and diff ---------------------------------------------------------------------
@pytest.mark.engine
@pytest.mark.docker
@pytest.mark.podman
@pytest.mark.parametrize("engine", ["docker", "podman", "process_id"])
def test_ps_t_lists_only_the_engines_asked(engine: str, docker_container: Container,
                                            podman_container: Container) -> None:
    out = run_cntr("ps", "-t", engine, "--json")
    assert (out.returncode, out.stderr) == (0, b""), out.stderr.decode()
    listed = json.loads(out.stdout)
    if engine == "process_id":
        assert listed == []  # nothing to list: pids are not containers
        return
    assert {m["engine"] for m in listed} == {engine}
    mine = docker_container if engine == "docker" else podman_container
    assert [m["name"] for m in listed if m["pid"] == mine.pid] == [f"cntr-test-{engine}"]


def _changed(value: object) -> object:
    """A different value of the same JSON type."""
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return value + 1
    if isinstance(value, str):
        return value + "x"
    if isinstance(value, list):
        return [*value, value[0] if value else 7]
    raise AssertionError(f"no change for {value!r}")


#: fields only newer record versions carry: (version, a value) for each
OPTIONAL: dict[str, tuple[int, dict[str, object]]] = {
    "tools": (2, {"source": "/opt/tools", "root": "/opt/tools", "engine": "",
                  "container_id": "", "name": "", "pid": 0, "start_time": 0}),
    "offline": (3, {"state": "exited", "exit_code": 0, "rootfs": "dir", "lower": [],
                    "upper": "", "work": "", "path": "/srv/root", "env": {}, "cwd": "/",
                    "user": "", "hostname": "h", "caps": 0, "image": "",
                    "uid_map": [[0, 0, 4294967295]], "gid_map": [[0, 0, 4294967295]]}),
}


def _variants(data: dict[str, object]) -> Iterator[tuple[str, dict[str, object]]]:
    """(what, a copy of ``data`` with exactly that changed), for every field of Context."""
    for name in fields(Context):
        if name in OPTIONAL:  # absent from a running container's context: see below
            continue
        value = data[name]
        if isinstance(value, dict):
            keys = sorted(value) or ["new"]
            for key in keys[:1]:
                changed = json.loads(json.dumps(data))
                sub = changed[name]
                if name == "caps":
                    for which in sorted(value):
                        c = json.loads(json.dumps(data))
                        c["caps"][which] ^= 1 << 2  # cap_dac_read_search
                        yield f"caps.{which}", c
                    break
                if name == "files":
                    sub[key] = "base64:AAEC" if sub.get(key) is None else None
                elif isinstance(sub.get(key), int):
                    sub[key] += 1
                else:
                    sub[key] = _changed(sub.get(key, ""))
                yield f"{name}.{key}", changed
        else:
            changed = json.loads(json.dumps(data))
            if name == "cgroups":
                changed[name][0][2] += "x"
            elif name == "lsm":
                changed[name] = "selinux" if value == "apparmor" else "apparmor"
            else:
                changed[name] = _changed(value)
            yield name, changed


def test_diff_reports_each_field_in_one_line(demo: Container, tmp_path: Path) -> None:
    captured = run_cntr("capture", demo.ident, "--format", "json")
    assert captured.returncode == 0, captured.stderr.decode()
    data = json.loads(captured.stdout)
    seen = []
    variants = [(data, what, changed) for what, changed in _variants(data)]
    for name, (version, value) in OPTIONAL.items():
        with_it = {**json.loads(json.dumps(data)), "version": version, name: value}
        changed = json.loads(json.dumps(with_it))
        changed[name]["cwd" if name == "offline" else "source"] = "/elsewhere"
        variants.append((with_it, name, changed))
    for before, what, changed in variants:
        base = tmp_path / f"base-{what.replace('/', '_')}.json"
        base.write_text(json.dumps(before))
        other = tmp_path / (what.replace("/", "_") + ".json")
        other.write_text(json.dumps(changed))
        out = run_cntr("diff", str(base), str(other))
        lines = out.stdout.decode().splitlines()
        assert (out.returncode, out.stderr) == (1, b""), (what, out.stderr)
        assert len(lines) == 1, (what, lines)
        field = what.split(".")[0]
        assert lines[0].startswith(f"{what.split('.')[0] if field != 'caps' else what}: "), (
            what, lines)
        seen.append(field)
    assert sorted(set(seen)) == sorted(fields(Context))


def test_the_command_starts_with_default_signal_dispositions(demo: Container) -> None:
    """As from a shell: a writer to a closed pipe dies of SIGPIPE quietly (Python, which
    cntr is, ignores SIGPIPE; the command must not inherit that)."""
    out = run_cntr("attach", demo.ident, "--", "/bin/sh", "-c",
                   "yes | head -1; grep -E '^Sig(Ign|Blk)' /proc/self/status")
    assert (out.returncode, out.stderr) == (0, b""), out.stderr.decode()
    assert out.stdout.decode().splitlines() == [
        "y", "SigBlk:\t0000000000000000", "SigIgn:\t0000000000000000"]
