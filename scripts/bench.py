"""Benchmark serve-fs (cntr's FUSE passthrough) and the attach path against their limits.

What it measures, in one run, interleaved (every repetition goes round-robin over the
targets of a workload, starting one target further each time, so that machine noise hits
all targets alike):

Filesystem workloads, each on seven targets:
  ``native``  the backing directory itself (the limit);
  ``serve-fs`` ``python -m cntr.stages.serve_fs DIR MNT`` (its own FUSE session: passthrough);
  ``serve-fs-uring`` the same with requests over FUSE over io_uring
              (``CNTR_SERVE_FS_LOOP=uring``; the benchmark turns the module parameter
              ``fuse.enable_uring`` on for its run and puts it back);
  ``serve-fs-libfuse`` the same handler core on pyfuse3's libfuse session
              (``CNTR_SERVE_FS_LOOP=libfuse``): what the wire session gains;
  ``c-ll``    libfuse's low-level C example ``passthrough_ll`` in its default mode (the
              reference the goals compare against: multi-threaded, cache=auto, 1 s timeouts);
  ``c-ll-wb`` the same with ``-o writeback -o cache=always``;
  ``c-ll-perm`` (only when named in ``--targets``) the same with ``-o default_permissions``,
              as serve-fs mounts: the kernel checks permissions, so after every create,
              unlink or rename in a directory it asks for the directory's attributes again
              (a GETATTR that c-ll, which lets every user do anything, is not sent);
  ``bindfs``  Debian's bindfs (high-level libfuse, single-threaded by default);
  ``serve-fs-inline`` (only when named in ``--targets``, which picks the targets of a
              run) serve-fs without its worker threads (``CNTR_SERVE_FS_WORKERS=0``):
              fsync and the like answered on the reading thread.
  ``serve-fs-before`` with ``CNTR_BENCH_BEFORE=DIR``: serve-fs from another checkout
              (the code before a change, A/B in one run), on that checkout's own
              virtualenv's Python when it has one (``DIR/.venv``), else on this one's.
  Workloads: sequential write of a large file (write + close; the flush to disk is not
  timed), sequential read cold (after ``drop_caches``) and warm, 4 KiB random reads of the
  warm file (fio, fixed seed), creating 4,000 small files in 40 directories, stat of every
  entry of that (warm) tree, reading every file of it, extracting a tarball of such a tree,
  and deleting both trees.

Concurrency workloads, on the same targets: ``untar-pN``, N concurrent ``tar -x`` of that
tarball into N directories at once, ``fsync-pN``, N writers of a file each that fsync
after every 4 KiB write (a database's log), and ``build-jN``, ``make -jN`` of a C project the
benchmark generates (200 small files including a few of 20 headers, gcc -O1, one link;
its objects are removed before each run), for N = 1, 2 and 4 requesters.  The scaling
table reads off how each target's throughput grows with the requesters (N trees or one
build per run, paired run by run).

Database workloads, on the same targets: a PostgreSQL server (Debian's, run as the
postgres user) with its data directory on the target (a copy of one made by initdb
natively, untimed), listening on a unix socket in a scratch directory and nowhere else:
``pg-init`` times ``pgbench -i -s 10`` (init + load), ``pg-tps`` is the tps of the
``pgbench -c 4 -T 30`` that follows (higher is better: its ratios are tps over tps).
The server is stopped and its directories removed after every run.

Program start through a mount of ``/`` (warm): ``chroot MNT /usr/bin/python3 -c pass`` and
``chroot MNT /bin/true`` against ``chroot / ...`` (the same chroot(1) call, so only the
filesystem differs); each run is the mean of several launches after one untimed launch.

Session path latency (commands run in the benchmark's original mount namespace):
  attach: ``cntr attach cntr-test-docker -- true`` against ``docker exec cntr-test-docker
  true`` (the reference) and ``nsenter -t PID -a true`` (the limit), plus ``cntr attach`` by
  the docker container's pid and into the demo container (``scripts/demo start``); by name
  every engine is asked, as the user's attach asks them (podman over its API socket when
  ``podman system service`` runs, else from its database: the figure does not depend on
  which);
  resolve: ``cntr resolve cntr-test-docker [-t docker]`` against ``docker inspect``.

Memory: serve-fs's VmRSS/VmHWM and open descriptors after a walk (lstat of every entry) of
1,000,000 empty files (``--walk-files N``) through a serve-fs mount (the tree is made
once, natively, in /var/cache/cntr-bench/walk and grown when a walk needs more), with
serve-fs's inode table bound (``CNTR_SERVE_FS_INODES``, passed through: 0 measures the
table without a bound).

Request counts: serve-fs (its own session) counts the requests it answers by opcode
(``CNTR_SERVE_FS_COUNTS``); the benchmark takes them before and after the timed part of
every run and prints the median per workload and opcode (JSON: ``requests``).

Output: per workload and target the median of N runs, its spread ((max-min)/median), the
ratios to ``native`` (or the workload's limit) and to the reference (``c-ll``, ``docker
exec``), and the issue's goal where one applies: an aligned table on stdout, the same as
JSON with ``--json FILE``.  Then the scaling table and every goal of issue 15 side by
side, each with the spread of its per-run ratios (runs paired by index: the runs of a
repetition are interleaved, so a pair shares the machine's state): serve-fs <= 0.8x
c-ll on every filesystem workload and <= 4x native on the metadata ones (create,
stat-tree, read-tree, untar, delete); <= 1.0x c-ll with 2 and 4 requesters; throughput
x1.2 from 1 to 2 requesters and no loss from 2 to 4; pgbench >= 0.95x native tps and its
init + load <= 1.5x native; ``cntr attach`` by name <= 0.7x ``docker exec``, by pid <=
0.6x; VmRSS < 100 MiB and bounded descriptors after the walk (JSON: ``goals``,
``scaling``), and the load average before and after the run (JSON: ``meta.loadavg``; the
machine may be shared).  Progress goes to stderr.  Exit status 0 unless something broke
(a mount that does not come up, a command that fails); timings never fail the run.

Where the files live: the filesystem workloads run on a scratch ext4 filesystem made for
the run (a sparse image on /var/tmp, journaled, attached with ``losetup --direct-io=on`` so
cold reads reach the disk and pages are not cached twice), one directory per target.  The
host's root here is ext4 without a journal, on which creating files gets 20-40x slower
(300-400 us per create) for minutes after many deletes (ext4 skips recently deleted
inodes), which would swamp the differences being measured.

Caveats:
- all FUSE mounts and temp dirs live in a private mount namespace of the benchmark
  (unshare(CLONE_NEWNS)), so they never show up in other processes' mount tables and vanish
  with the benchmark; the session-path commands are started back in the original namespace.
- sequential write times ``write`` + ``close`` of page-cache data; the disk's own speed is
  excluded (an untimed sync follows).  Before it, an untimed native write and delete of
  twice the size recycles warm pages: on this VM, first-touch of guest memory would
  otherwise dominate (and randomise) the result.  Cold reads depend on the disk and on
  ``drop_caches``, which is global: it also drops the FUSE targets' page caches.
- the FUSE targets differ in caching policy (serve-fs keeps the page cache across opens
  while a file is unchanged, c-ll's default mode drops it on every open, c-ll-wb keeps
  everything): warm numbers compare policies as much as request paths.
- timings of whole processes (tar, fio, chroot, cntr) include their start-up, identical
  on every target; fio reports its runtime in whole milliseconds.
- small numbers (single milliseconds) on a 2-core VM are noisy: read the spread column.
- the C reference cannot walk 200,000 files here (it keeps a descriptor per inode and
  RLIMIT_NOFILE is 20,000 without CAP_SYS_RESOURCE), so the memory section has no
  reference; for the same reason every ``untar-pN`` run starts with the kernel's unused
  dentries and inodes dropped (untimed, on every target) and removes its trees after.
- c-ll is mounted with ``allow_other`` (the PostgreSQL server is not the mounting user;
  serve-fs and bindfs allow other users already when root mounts them).
- ``--quick`` shrinks every size (500 files, a project of 24 files, pgbench scale 1 for
  5 s, 20,000 files walked) and makes 2 runs: it shows that everything runs, not what it
  costs.
- ``--profile DIR`` runs every serve-fs under cProfile (DIR/serve-fs-*.prof): its
  timings are then inflated and only good for finding where the time goes.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import math
import os
import platform
import random
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from cntr.fs.inodes import max_inodes_from_env  # noqa: E402  # as below
from cntr.linux import syscalls as sc  # noqa: E402  # the repository is put on sys.path first

CACHE = Path(os.environ.get("CNTR_BENCH_CACHE", "/var/cache/cntr-bench"))
LL_SRC_DIR = Path("/usr/share/doc/libfuse3-dev/examples")
DOCKER = "/usr/bin/docker" if os.path.exists("/usr/bin/docker") else "docker"
CNTR = str(REPO / ".venv" / "bin" / "cntr")
#: ``CNTR_BENCH_BEFORE=DIR``: another checkout of cntr (the code before a change), served
#: as the target ``serve-fs-before`` with its own virtualenv's Python, else this tree's
BEFORE = os.environ.get("CNTR_BENCH_BEFORE", "")
BEFORE_PYTHON = (os.path.join(BEFORE, ".venv", "bin", "python")
                 if BEFORE and os.path.exists(os.path.join(BEFORE, ".venv", "bin", "python"))
                 else sys.executable)
CONTAINER = "cntr-test-docker"
MNT_DETACH = 2
PR_SET_PDEATHSIG = 1
MIB = 1 << 20
# A clean environment for the programs started through the mounts.
EXEC_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "HOME": "/root"}


def log(msg: str) -> None:
    """Progress on stderr."""
    print(f"bench: {msg}", file=sys.stderr, flush=True)


class BenchError(Exception):
    """Something the benchmark needs broke (not a slow timing)."""


# ----------------------------------------------------------------------------- settings


@dataclass(frozen=True)
class Sizes:
    """How much work each workload does."""

    runs: int
    """repetitions of every workload (the median is reported)."""
    big_mib: int
    """size of the large file for the sequential and random workloads."""
    fio_mib: int
    """bytes read by the 4 KiB random-read job."""
    dirs: int
    """directories of the small-file tree."""
    files: int
    """files of the small-file tree (spread evenly over ``dirs``)."""
    max_file: int
    """largest small file, bytes (sizes are drawn with a fixed seed)."""
    exec_launches: int
    """timed launches per run of the program-start workloads."""
    attach_launches: int
    """timed launches per run of the attach variants."""
    resolve_launches: int
    """timed launches per run of the resolve variants."""
    walk_dirs: int
    """directories (1,000 files each) of the cached tree walked for the memory figures."""
    build_files: int = 200
    """C files of the generated project the build workloads compile."""
    pg_scale: int = 10
    """pgbench's scale factor (100,000 rows of pgbench_accounts each)."""
    pg_seconds: int = 30
    """seconds of each ``pgbench -c 4 -T`` run."""


DEFAULT = Sizes(runs=5, big_mib=512, fio_mib=128, dirs=40, files=4000, max_file=8192,
                exec_launches=10, attach_launches=3, resolve_launches=5, walk_dirs=1000)
QUICK = Sizes(runs=2, big_mib=64, fio_mib=16, dirs=10, files=500, max_file=8192,
              exec_launches=4, attach_launches=2, resolve_launches=3, walk_dirs=20,
              build_files=24, pg_scale=1, pg_seconds=5)
REQUESTERS = (1, 2, 4)
"""concurrent requesters of the concurrency workloads (untar-pN, fsync-pN, build-jN)."""


# ----------------------------------------------------------------------------- processes


def _die_with_parent() -> None:
    """preexec_fn: the child gets SIGKILL if the benchmark dies (mounts die with our ns)."""
    sc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def in_namespace(ns_fd: int) -> Callable[[], None]:
    """preexec_fn joining the mount namespace ``ns_fd`` (the child is single-threaded)."""

    def enter() -> None:
        sc.setns(ns_fd, sc.CLONE_NEWNS, "setns(original mount namespace)")

    return enter


def run_quiet(argv: Sequence[str], *, what: str, preexec: Callable[[], None] | None = None,
              env: dict[str, str] | None = None, timeout: float = 600,
              **popen: Any) -> str:
    """Run ``argv`` (``popen``: more of subprocess.run's arguments, such as ``user``);
    return its stdout, raise BenchError (with its stderr) on failure."""
    try:
        res: subprocess.CompletedProcess[str] = subprocess.run(
            argv, stdin=subprocess.DEVNULL, capture_output=True, text=True,
            preexec_fn=preexec, env=env, timeout=timeout, **popen)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise BenchError(f"{what}: {exc}") from exc
    if res.returncode != 0:
        err = res.stderr.strip().splitlines()
        raise BenchError(f"{what}: exit {res.returncode}: {err[-1] if err else ''}")
    return res.stdout


def time_command(argv: Sequence[str], *, preexec: Callable[[], None] | None = None,
                 env: dict[str, str] | None = None) -> float:
    """Wall time of one run of ``argv`` (output discarded); BenchError if it fails."""
    t0 = time.perf_counter()
    res = subprocess.run(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                         stderr=subprocess.PIPE, preexec_fn=preexec, env=env, timeout=120)
    elapsed = time.perf_counter() - t0
    if res.returncode != 0:
        err = res.stderr.decode(errors="replace").strip().splitlines()
        raise BenchError(f"{' '.join(argv)}: exit {res.returncode}: {err[-1] if err else ''}")
    return elapsed


def mean_launch(argv: Sequence[str], launches: int, **kw: Any) -> float:
    """One untimed launch, then the mean wall time of ``launches`` launches."""
    time_command(argv, **kw)
    return sum(time_command(argv, **kw) for _ in range(launches)) / launches


# ----------------------------------------------------------------------------- mounts


def mounted_below(path: Path) -> list[str]:
    """Mount points at or below ``path`` in our mount namespace."""
    prefix = str(path).rstrip("/") + "/"
    out = []
    with open("/proc/self/mountinfo") as f:
        for line in f:
            mnt = line.split()[4].replace("\\040", " ")
            if mnt == str(path) or mnt.startswith(prefix):
                out.append(mnt)
    return out


def is_mounted(path: Path) -> bool:
    """Whether ``path`` itself is a mount point."""
    target = str(path)
    with open("/proc/self/mountinfo") as f:
        return any(line.split()[4] == target for line in f)


@dataclass
class Mount:
    """A FUSE filesystem served by a child process."""

    name: str
    mountpoint: Path
    proc: subprocess.Popen[bytes]
    log: Path
    counts_file: Path | None = None
    """serve-fs's request counts (CNTR_SERVE_FS_COUNTS), None for the other servers."""
    counts_seq: int = 0

    def requests(self) -> dict[str, int]:
        """The requests served so far by opcode: SIGUSR1 has serve-fs write them anew."""
        assert self.counts_file is not None
        self.proc.send_signal(signal.SIGUSR1)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            with contextlib.suppress(OSError, ValueError):
                doc = json.loads(self.counts_file.read_text())
                if doc["seq"] > self.counts_seq:
                    self.counts_seq = doc["seq"]
                    return dict(doc["counts"])
            time.sleep(0.005)
        raise BenchError(f"{self.name}: no request counts in {self.counts_file}")

    def status(self) -> dict[str, int]:
        """VmRSS/VmHWM (KiB) and the descriptor count of the server."""
        out: dict[str, int] = {}
        with open(f"/proc/{self.proc.pid}/status") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key in ("VmRSS", "VmHWM"):
                    out[key] = int(value.split()[0])
        out["fds"] = len(os.listdir(f"/proc/{self.proc.pid}/fd"))
        return out

    def stop(self) -> None:
        """Unmount (lazily) and make sure the server is gone."""
        with contextlib.suppress(OSError):
            if is_mounted(self.mountpoint):
                sc.umount2(str(self.mountpoint), MNT_DETACH)
        for sig in (None, signal.SIGTERM, signal.SIGKILL):
            if sig is not None and self.proc.poll() is None:
                self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=10)
                break
            except subprocess.TimeoutExpired:
                continue


@dataclass
class Tools:
    """Where the comparison programs are."""

    passthrough_ll: Path | None
    bindfs: str | None
    fio: str | None
    profile_dir: Path | None


def build_passthrough_ll() -> Path | None:
    """Compile libfuse's passthrough_ll example once into the cache dir."""
    exe = CACHE / "passthrough_ll"
    if exe.exists():
        return exe
    src = LL_SRC_DIR / "passthrough_ll.c"
    build = CACHE / "build"
    build.mkdir(parents=True, exist_ok=True)
    for name in ("passthrough_ll.c", "passthrough_helpers.h"):
        for cand in (LL_SRC_DIR / name, LL_SRC_DIR / f"{name}.gz"):
            if cand.exists():
                data = cand.read_bytes()
                if cand.suffix == ".gz":
                    import gzip
                    data = gzip.decompress(data)
                (build / name).write_bytes(data)
                break
    if not (build / "passthrough_ll.c").exists():
        log(f"no {src}: the C reference is skipped (install libfuse3-dev)")
        return None
    flags = run_quiet(["pkg-config", "fuse3", "--cflags", "--libs"],
                      what="pkg-config fuse3").split()
    run_quiet(["gcc", "-O2", "-Wall", "-o", str(exe) + ".tmp",
               str(build / "passthrough_ll.c"), *flags], what="gcc passthrough_ll.c")
    os.rename(str(exe) + ".tmp", exe)
    log(f"built {exe}")
    return exe


TARGETS = ("serve-fs", "serve-fs-uring", "serve-fs-libfuse", "serve-fs-inline",
           "serve-fs-before", "c-ll",
           "c-ll-wb", "c-ll-perm", "bindfs")
"""the FUSE targets ``--targets`` may name (native always runs)."""


def before_counts() -> bool:
    """Whether the ``CNTR_BENCH_BEFORE`` tree's serve-fs counts its requests (SIGUSR1
    would end one that does not)."""
    server = Path(BEFORE, "cntr", "fs", "server.py")
    return server.exists() and "CNTR_SERVE_FS_COUNTS" in server.read_text()


def serve_fs_env(kind: str) -> dict[str, str] | None:
    """The environment of the serve-fs target ``kind``: ``serve-fs-inline`` answers
    fsync and the like on the reading thread (``CNTR_SERVE_FS_WORKERS=0``), any other
    ``serve-fs-LOOP`` sets ``CNTR_SERVE_FS_LOOP``; ``serve-fs-before`` is another
    checkout's default session."""
    suffix = kind.removeprefix("serve-fs").removeprefix("-")
    if not suffix:
        return None
    if suffix == "inline":
        return {**os.environ, "CNTR_SERVE_FS_WORKERS": "0"}
    if suffix == "before":  # another checkout's default session
        return {**os.environ}
    return {**os.environ, "CNTR_SERVE_FS_LOOP": suffix}


def start_mount(kind: str, root: Path, mnt: Path, tools: Tools, logdir: Path, *,
                timeout: float = 30) -> Mount:
    """Serve ``root`` on ``mnt`` with the FUSE implementation ``kind``; wait for it."""
    mnt.mkdir(parents=True, exist_ok=True)
    logfile = logdir / f"{kind}-{mnt.parent.name}.log"
    pass_fds: tuple[int, ...] = ()
    rfd = wfd = -1
    env = None
    counts_file: Path | None = None
    if kind.startswith("serve-fs"):
        env = serve_fs_env(kind) or dict(os.environ)
        if kind != "serve-fs-libfuse" and (kind != "serve-fs-before" or before_counts()):
            # (pyfuse3's session counts nothing, nor does a tree from before the counts)
            counts_file = logdir / f"{kind}-{mnt.parent.name}.counts.json"
            env["CNTR_SERVE_FS_COUNTS"] = str(counts_file)
        rfd, wfd = os.pipe()
        pass_fds = (wfd,)
        stage = "cntr.stages.serve_fs"
        if kind == "serve-fs-before":  # another tree's code: `-m` runs it from its cwd
            env.pop("CNTR_SERVE_FS_LOOP", None)
            if not os.path.exists(os.path.join(BEFORE, "cntr", "stages")):
                stage = "stages.serve_fs"  # a tree from before the stages were cntr.stages
        python = BEFORE_PYTHON if kind == "serve-fs-before" else sys.executable
        argv = [python, "-m", stage, f"--ready-fd={wfd}", str(root), str(mnt)]
        if tools.profile_dir is not None:
            prof = tools.profile_dir / f"{kind}-{mnt.parent.name}.prof"
            argv[1:3] = ["-m", "cProfile", "-o", str(prof), "-m", stage]
    elif kind in ("c-ll", "c-ll-wb", "c-ll-perm"):
        assert tools.passthrough_ll is not None
        # allow_other: the database workloads' server runs as the postgres user.
        argv = [str(tools.passthrough_ll), "-f", "-o", "allow_other", "-o", f"source={root}",
                str(mnt)]
        if kind == "c-ll-wb":
            argv[2:2] = ["-o", "writeback", "-o", "cache=always"]
        elif kind == "c-ll-perm":
            argv[2:2] = ["-o", "default_permissions"]
    elif kind == "bindfs":
        assert tools.bindfs is not None
        argv = [tools.bindfs, "-f", str(root), str(mnt)]
    else:
        raise ValueError(kind)
    # The benchmark never starts threads, so preexec_fn is safe here.
    with open(logfile, "wb") as logf:
        proc = subprocess.Popen(argv, cwd=BEFORE if kind == "serve-fs-before" else REPO,
                                env=env, pass_fds=pass_fds,
                                stdin=subprocess.DEVNULL,
                                stdout=logf, stderr=logf,
                                preexec_fn=_die_with_parent)  # noqa: PLW1509  # no threads
    mount = Mount(kind, mnt, proc, logfile, counts_file)
    if wfd >= 0:
        os.close(wfd)
    try:
        deadline = time.monotonic() + timeout
        if rfd >= 0:  # serve-fs says "R" on its ready descriptor
            import select
            while not select.select([rfd], [], [], 0.1)[0]:
                if proc.poll() is not None or time.monotonic() > deadline:
                    break
            with contextlib.suppress(OSError):
                os.set_blocking(rfd, False)
                os.read(rfd, 1)
        while not is_mounted(mnt):
            if proc.poll() is not None or time.monotonic() > deadline:
                tail = logfile.read_text(errors="replace").strip().splitlines()[-3:]
                raise BenchError(f"{kind}: {mnt} did not get mounted "
                                 f"(exit {proc.poll()}): {' | '.join(tail)}")
            time.sleep(0.01)
    except BaseException:
        mount.stop()
        raise
    finally:
        if rfd >= 0:
            os.close(rfd)
    return mount


# ----------------------------------------------------------------------------- fs workloads


@dataclass
class Target:
    """Where a workload runs: a native directory or a mount of one."""

    name: str
    path: Path
    mount: Mount | None = None
    big_warm: bool = False
    counted: dict[str, dict[str, int]] = field(default_factory=dict)
    """requests of the timed part of the last run (`start`, `stop`), by workload"""
    _before: dict[str, int] = field(default_factory=dict)

    def start(self) -> float:
        """The clock at the start of a timed part (after taking the request counts)."""
        if self.mount is not None and self.mount.counts_file is not None:
            self._before = self.mount.requests()
        return time.perf_counter()

    def stop(self, t0: float, workload: str = "") -> float:
        """Seconds since ``t0``; the requests since `start` go to ``counted``."""
        elapsed = time.perf_counter() - t0
        if self.mount is not None and self.mount.counts_file is not None:
            after = self.mount.requests()
            self.counted[workload] = {op: n - self._before.get(op, 0)
                                      for op, n in after.items()
                                      if n - self._before.get(op, 0)}
        return elapsed


@dataclass
class FsContext:
    """What the filesystem workloads share."""

    sizes: Sizes
    tools: Tools
    work: Path
    block: bytearray = field(default_factory=lambda: bytearray(os.urandom(MIB)))
    payload: bytes = b""
    file_sizes: list[int] = field(default_factory=list)
    tarball: Path | None = None
    fs_targets: list[Target] = field(default_factory=list)
    pg_bin: Path | None = None
    """where the PostgreSQL server's programs are (None: not installed)."""


SCRATCH_GIB = 12
ENABLE_URING = Path("/sys/module/fuse/parameters/enable_uring")


def enable_fuse_uring() -> str | None:
    """Let the kernel offer FUSE over io_uring; the parameter's old value, None when this
    kernel has none."""
    try:
        old = ENABLE_URING.read_text().strip()
        ENABLE_URING.write_text("Y")
    except OSError:
        return None
    return old



def scratch_fs(image: Path, mountpoint: Path) -> str:
    """A journaled ext4 filesystem on ``mountpoint`` (a loop device on the sparse file
    ``image``); returns the loop device for `drop_scratch_fs`."""
    with open(image, "wb") as f:
        f.truncate(SCRATCH_GIB << 30)
    run_quiet(["mkfs.ext4", "-q", "-F", "-N", "400000",
               "-E", "lazy_itable_init=0,lazy_journal_init=0,nodiscard", str(image)],
              what="mkfs.ext4 (scratch filesystem)")
    dev = run_quiet(["losetup", "--find", "--show", "--direct-io=on", str(image)],
                    what="losetup").strip()
    try:
        mountpoint.mkdir(parents=True, exist_ok=True)
        sc.mount(dev, str(mountpoint), "ext4", 0)
    except BaseException:
        subprocess.run(["losetup", "-d", dev], check=False)
        raise
    return dev


def drop_scratch_fs(dev: str, mountpoint: Path) -> None:
    with contextlib.suppress(OSError):
        sc.umount2(str(mountpoint), 0)
    subprocess.run(["losetup", "-d", dev], check=False)


def drop_caches(ctx: FsContext, level: str = "3") -> None:
    """Write back and drop the page, dentry and inode caches (global); ``level`` "2": the
    dentries and unused inodes only (the page cache of an inode goes with it)."""
    os.sync()
    with open("/proc/sys/vm/drop_caches", "w") as f:
        f.write(level)
    for t in ctx.fs_targets:
        t.big_warm = False


def write_big(ctx: FsContext, path: Path) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o644)
    try:
        view = memoryview(ctx.block)
        for _ in range(ctx.sizes.big_mib):
            done = 0
            while done < MIB:
                done += os.write(fd, view[done:])
    finally:
        os.close(fd)


def read_all(ctx: FsContext, path: Path) -> int:
    fd = os.open(path, os.O_RDONLY)
    total = 0
    try:
        while n := os.readv(fd, [ctx.block]):
            total += n
    finally:
        os.close(fd)
    return total


def ensure_big(ctx: FsContext, t: Target) -> Path:
    big = t.path / "big"
    try:
        ok = big.stat().st_size == ctx.sizes.big_mib * MIB
    except FileNotFoundError:
        ok = False
    if not ok:
        write_big(ctx, big)
        os.sync()
    return big


def prime_page_allocator(ctx: FsContext) -> None:
    """Write and delete a native scratch file twice the size of the big file.

    On this VM the first touch of a guest page costs several times a warm one (a 512 MiB
    write into fresh memory took 1.3 s, then 0.12 s): writing that much first leaves as
    many just-freed, host-backed pages for the timed write to reuse, whatever the target
    (a FUSE write fills two page caches: the mount's and the backing file's).
    """
    scratch = ctx.work / "prime"
    fd = os.open(scratch, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        for _ in range(2 * ctx.sizes.big_mib):
            os.write(fd, ctx.block)
    finally:
        os.close(fd)
        scratch.unlink()  # dirty pages of an unlinked file are dropped, never written


def wl_seq_write(ctx: FsContext, t: Target) -> float:
    big = t.path / "big"
    with contextlib.suppress(FileNotFoundError):
        big.unlink()
    os.sync()
    prime_page_allocator(ctx)
    t0 = time.perf_counter()
    write_big(ctx, big)
    elapsed = time.perf_counter() - t0
    t.big_warm = False
    os.sync()  # untimed: the next workload must not pay for our dirty pages
    return elapsed


def wl_seq_read_cold(ctx: FsContext, t: Target) -> float:
    big = ensure_big(ctx, t)
    drop_caches(ctx)
    t0 = time.perf_counter()
    n = read_all(ctx, big)
    elapsed = time.perf_counter() - t0
    if n != ctx.sizes.big_mib * MIB:
        raise BenchError(f"{t.name}: read {n} bytes of {big}")
    return elapsed


def wl_seq_read_warm(ctx: FsContext, t: Target) -> float:
    big = ensure_big(ctx, t)
    read_all(ctx, big)  # untimed: warm every cache this target has
    t0 = time.perf_counter()
    read_all(ctx, big)
    elapsed = time.perf_counter() - t0
    t.big_warm = True
    return elapsed


def wl_rand_read(ctx: FsContext, t: Target) -> float:
    big = ensure_big(ctx, t)
    if not t.big_warm:
        read_all(ctx, big)
        t.big_warm = True
    if ctx.tools.fio is None:  # os.pread with a fixed seed
        rng = random.Random(4096)
        blocks = ctx.sizes.big_mib * MIB // 4096
        offsets = [rng.randrange(blocks) * 4096 for _ in range(ctx.sizes.fio_mib * 256)]
        fd = os.open(big, os.O_RDONLY)
        try:
            t0 = time.perf_counter()
            for off in offsets:
                os.pread(fd, 4096, off)
            return time.perf_counter() - t0
        finally:
            os.close(fd)
    # invalidate=0: fio would otherwise drop the file's page cache before the job.
    out = run_quiet([ctx.tools.fio, "--name=randread", f"--filename={big}", "--rw=randread",
                     "--bs=4k", f"--size={ctx.sizes.big_mib}M", f"--io_size={ctx.sizes.fio_mib}M",
                     "--ioengine=psync", "--invalidate=0", "--randrepeat=1", "--norandommap",
                     "--output-format=json"], what=f"fio on {t.name}")
    job = json.loads(out[out.index("{"):])["jobs"][0]["read"]
    return float(job["runtime"]) / 1000


def make_tree(ctx: FsContext, root: Path) -> None:
    os.mkdir(root)
    per = ctx.sizes.files // ctx.sizes.dirs
    i = 0
    for d in range(ctx.sizes.dirs):
        sub = root / f"d{d:03d}"
        os.mkdir(sub)
        for f in range(per):
            fd = os.open(sub / f"f{f:04d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
            os.write(fd, ctx.payload[:ctx.file_sizes[i]])
            os.close(fd)
            i += 1


def stat_tree(root: Path) -> int:
    n = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames + dirnames:
            os.lstat(os.path.join(dirpath, name))
            n += 1
    return n


def read_tree(root: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            with open(os.path.join(dirpath, name), "rb", buffering=0) as f:
                total += len(f.read())
    return total


def ensure_tree(ctx: FsContext, t: Target) -> Path:
    tree = t.path / "tree"
    if not tree.exists():
        make_tree(ctx, tree)
    return tree


def timed_fill(t: Target, dest: Path, fill: Callable[[Path], None]) -> float:
    """Seconds ``fill(dest)`` takes to write ``dest`` anew (an old one is removed and the
    disk synced first, untimed)."""
    if dest.exists():
        shutil.rmtree(dest)
    os.sync()
    t0 = t.start()
    fill(dest)
    return t.stop(t0)


def wl_create(ctx: FsContext, t: Target) -> float:
    return timed_fill(t, t.path / "tree", partial(make_tree, ctx))


def wl_stat_tree(ctx: FsContext, t: Target) -> float:
    tree = ensure_tree(ctx, t)
    os.sync()  # before the untimed pass: a long sync must not let the caches expire
    want = stat_tree(tree)  # untimed: the tree is warm
    t0 = t.start()
    n = stat_tree(tree)
    elapsed = t.stop(t0)
    if n != want or n != ctx.sizes.files + ctx.sizes.dirs:
        raise BenchError(f"{t.name}: stat saw {n} entries, expected "
                         f"{ctx.sizes.files + ctx.sizes.dirs}")
    return elapsed


def wl_read_tree(ctx: FsContext, t: Target) -> float:
    tree = ensure_tree(ctx, t)
    os.sync()
    t0 = t.start()
    n = read_tree(tree)
    elapsed = t.stop(t0)
    if n != sum(ctx.file_sizes):
        raise BenchError(f"{t.name}: read {n} bytes of the tree, expected {sum(ctx.file_sizes)}")
    return elapsed


def extract(ctx: FsContext, dest: Path) -> None:
    assert ctx.tarball is not None
    os.mkdir(dest)
    run_quiet(["tar", "-xf", str(ctx.tarball), "-C", str(dest)], what=f"tar -x in {dest}")


def wl_untar(ctx: FsContext, t: Target) -> float:
    return timed_fill(t, t.path / "untar", partial(extract, ctx))


def wl_delete(ctx: FsContext, t: Target) -> float:
    tree = ensure_tree(ctx, t)
    dest = t.path / "untar"
    if not dest.exists():
        extract(ctx, dest)
    os.sync()  # untimed: written-back files are cheaper to delete than dirty ones
    t0 = t.start()
    shutil.rmtree(tree)
    shutil.rmtree(dest)
    return t.stop(t0)


def wl_exec(argv: list[str]) -> Callable[[FsContext, Target], float]:
    def run(ctx: FsContext, t: Target) -> float:
        return mean_launch(["chroot", str(t.path), *argv], ctx.sizes.exec_launches,
                           env=EXEC_ENV)
    return run


# ----------------------------------------------------------------------------- concurrency


def untar_parallel(ctx: FsContext, dests: list[Path]) -> None:
    """``tar -x`` of the tarball into every directory of ``dests`` at once."""
    assert ctx.tarball is not None
    procs = []
    try:
        for dest in dests:
            os.mkdir(dest)
            procs.append(subprocess.Popen(["tar", "-xf", str(ctx.tarball), "-C", str(dest)],
                                          stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                          stderr=subprocess.PIPE))
        for proc, dest in zip(procs, dests, strict=False):
            _out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                last = err.decode(errors="replace").strip().splitlines()
                raise BenchError(f"tar -x in {dest}: exit {proc.returncode}: "
                                 f"{last[-1] if last else ''}")
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def wl_untar_parallel(n: int) -> Callable[[FsContext, Target], float]:
    """``n`` requesters at once: ``n`` concurrent ``tar -x`` into ``n`` directories."""

    def run(ctx: FsContext, t: Target) -> float:
        dests = [t.path / f"untar-p{n}-{i}" for i in range(n)]
        # passthrough_ll keeps a descriptor per inode the kernel holds, and has 20,000
        # (RLIMIT_NOFILE): 4 trees of 4,000 files next to the trees of the workloads
        # before pass it.  So the kernel forgets every unused inode first (on every
        # target alike; the tarball is read again, untimed, so that tar finds it in the
        # page cache), and the trees go once timed, before the next workload.
        drop_caches(ctx, "2")
        assert ctx.tarball is not None
        read_all(ctx, ctx.tarball)
        t0 = time.perf_counter()
        try:
            untar_parallel(ctx, dests)
            return time.perf_counter() - t0
        finally:
            for dest in dests:
                shutil.rmtree(dest, ignore_errors=True)
            os.sync()

    return run


FSYNC_WRITES = 200
FSYNC_REQUESTER = """\
import os, sys
fd = os.open(sys.argv[1], os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o644)
block = b"x" * 4096
for i in range(int(sys.argv[2])):
    os.pwrite(fd, block, i * 4096)
    os.fsync(fd)
os.close(fd)
"""


def wl_fsync_parallel(n: int) -> Callable[[FsContext, Target], float]:
    """``n`` requesters at once, each writing FSYNC_WRITES blocks of 4 KiB to a file of
    its own with an fsync(2) after each (a database's log): the fsyncs of one requester
    must not wait for another's."""

    def run(ctx: FsContext, t: Target) -> float:
        files = [t.path / f"fsync-p{n}-{i}" for i in range(n)]
        for f in files:
            f.unlink(missing_ok=True)
        os.sync()
        t0 = time.perf_counter()
        procs = [subprocess.Popen([sys.executable, "-c", FSYNC_REQUESTER, str(f),
                                   str(FSYNC_WRITES)], stdin=subprocess.DEVNULL,
                                  stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                 for f in files]
        failed = []
        for proc, f in zip(procs, files, strict=True):
            _out, err = proc.communicate(timeout=600)
            if proc.returncode != 0:
                failed.append(f"{f}: exit {proc.returncode}: {err.decode(errors='replace')}")
        elapsed = time.perf_counter() - t0
        if failed:
            raise BenchError("fsync requester failed: " + "; ".join(failed))
        for f in files:
            if f.stat().st_size != FSYNC_WRITES * 4096:
                raise BenchError(f"{f}: {f.stat().st_size} bytes written")
        return elapsed

    return run


BUILD_HEADERS = 20
BUILD_MAKEFILE = """\
SRCS := $(sort $(wildcard src/*.c))
OBJS := $(SRCS:src/%.c=obj/%.o)
prog: $(OBJS)
\t$(CC) -o $@ $^
obj/%.o: src/%.c | obj
\t$(CC) -O1 -Wall -Iinclude -MMD -c -o $@ $<
obj:
\tmkdir -p obj
-include $(OBJS:.o=.d)
"""


def make_project(root: Path, files: int) -> None:
    """A C project of ``files`` small sources (each including a few of 20 generated
    headers), a main and a Makefile that compiles them into obj/ and links ``prog``."""
    (root / "src").mkdir(parents=True)
    (root / "include").mkdir()
    (root / "Makefile").write_text(BUILD_MAKEFILE)
    for h in range(BUILD_HEADERS):
        decls = "".join(f"int h{h}_f{k}(int x);\nstatic inline int h{h}_g{k}(int x) "
                        f"{{ return x * {k + 3} + {h}; }}\n" for k in range(20))
        (root / "include" / f"h{h:02d}.h").write_text(
            f"#ifndef H{h}\n#define H{h}\n#include <stddef.h>\n{decls}#endif\n")
    calls = []
    for i in range(files):
        inc = "".join(f'#include "h{(i + k) % BUILD_HEADERS:02d}.h"\n' for k in range(4))
        body = "".join(
            f"int u{i}_f{k}(int x) {{\n    int s = 0;\n    for (int j = 0; j < x; j++)\n"
            f"        s += h{i % BUILD_HEADERS}_g{k % 20}(j) ^ {k};\n    return s;\n}}\n"
            for k in range(8))
        (root / "src" / f"u{i:04d}.c").write_text(f"{inc}#include <string.h>\n{body}")
        calls.append(f"    s += u{i}_f0(argc);\n")
    protos = "".join(f"int u{i}_f0(int x);\n" for i in range(files))
    (root / "src" / "main.c").write_text(
        f"{protos}int main(int argc, char **argv) {{\n    int s = 0;\n    (void)argv;\n"
        f"{''.join(calls)}    return s == -1;\n}}\n")
    (root / ".complete").touch()


def wl_build(n: int) -> Callable[[FsContext, Target], float]:
    """``make -jN`` of the generated project (its objects removed first, untimed)."""

    def run(ctx: FsContext, t: Target) -> float:
        proj = t.path / "proj"
        if not (proj / ".complete").exists():
            if proj.exists():
                shutil.rmtree(proj)
            make_project(proj, ctx.sizes.build_files)
        for old in (proj / "obj", proj / "prog"):
            if old.is_dir():
                shutil.rmtree(old)
            elif old.exists():
                old.unlink()
        os.sync()
        t0 = time.perf_counter()
        run_quiet(["make", "-s", "-C", str(proj), f"-j{n}"], what=f"make -j{n} on {t.name}",
                  env={**EXEC_ENV, "CC": "gcc"})
        elapsed = time.perf_counter() - t0
        if not (proj / "prog").exists():
            raise BenchError(f"make -j{n} on {t.name} left no prog")
        return elapsed

    return run


def concurrency_workloads(sizes: Sizes) -> list[Workload]:
    """untar-pN (N concurrent ``tar -x``), fsync-pN (N fsyncing writers) and build-jN
    (``make -jN``) for each N of
    REQUESTERS; issue 15: <= 1.0x C passthrough_ll with several requesters."""
    out = []
    for n in REQUESTERS:
        goals = [Goal("serve-fs", "c-ll", 1.0)] if n > 1 else []
        out.append(Workload(
            f"untar-p{n}", f"{n} concurrent tar -x of {sizes.files} files (one dir each)",
            "fs", "native", "c-ll", list(goals), run=wl_untar_parallel(n)))
    for n in REQUESTERS:
        goals = [Goal("serve-fs", "c-ll", 1.0)] if n > 1 else []
        out.append(Workload(
            f"fsync-p{n}", f"{n} concurrent writers of {FSYNC_WRITES} x 4 KiB, fsync each",
            "fs", "native", "c-ll", list(goals), run=wl_fsync_parallel(n)))
    for n in REQUESTERS:
        goals = [Goal("serve-fs", "c-ll", 1.0)] if n > 1 else []
        out.append(Workload(
            f"build-j{n}", f"make -j{n} of {sizes.build_files} C files (gcc -O1)",
            "fs", "native", "c-ll", list(goals), run=wl_build(n)))
    return out


def scaling(summaries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """How throughput grows with the requesters, per target: for each N of REQUESTERS
    past 1, the throughput with N over the throughput with N/2 (``gain``, per run, runs
    paired by their index, and of the medians) and over the throughput with 1
    (``speedup``).  Throughput is N / t(N) for untar-pN and fsync-pN (N trees or
    files) and 1 / t(N) for
    build-jN (one build).  Goal (issue 15: serve-fs's own throughput grows with the
    cores it is given): serve-fs gains at least 1.2x from 1 to 2 requesters, and loses
    nothing from 2 to 4 (the machine may have fewer cores than requesters)."""
    by_name = {s["name"]: s for s in summaries}
    out: list[dict[str, Any]] = []
    for family, trees in (("untar-p", True), ("fsync-p", True), ("build-j", False)):
        for n in REQUESTERS[1:]:
            one, half, many = (by_name.get(f"{family}{k}") for k in (1, n // 2, n))
            if one is None or half is None or many is None:
                continue
            for target, tn in many["targets"].items():
                t1 = one["targets"].get(target)
                th = half["targets"].get(target)
                if t1 is None or th is None:
                    continue
                work = n if trees else 1
                work_half = n // 2 if trees else 1
                runs = [(work / b) / (work_half / a)
                        for a, b in zip(th["samples"], tn["samples"], strict=False) if b > 0]
                gain = (work / tn["median"]) / (work_half / th["median"])
                row: dict[str, Any] = {
                    "workload": f"{family}N", "target": target, "requesters": n,
                    "versus_requesters": n // 2, "gain": gain, "spread": run_spread(runs),
                    "speedup": (work / tn["median"]) / (1 / t1["median"])}
                if target == "serve-fs":
                    want = 1.2 if n == 2 else 1.0
                    row["goal"] = {"min_ratio": want, "met": gain >= want}
                out.append(row)
    return out


def run_spread(values: list[float]) -> float | None:
    """(max - min) / median of per-run ratios; None without two of them."""
    if len(values) < 2:
        return None
    m = statistics.median(values)
    return (max(values) - min(values)) / m if m else None


# ----------------------------------------------------------------------------- database


PG_USER = "postgres"


def pg_bindir() -> Path | None:
    """Debian's newest PostgreSQL server binaries (package postgresql)."""
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"),
                   key=lambda p: int(p.parent.parent.name) if p.parent.parent.name.isdigit()
                   else 0)
    return found[-1].parent if found else None


def run_as_postgres(argv: Sequence[str], *, what: str, timeout: float = 900) -> str:
    """``argv`` as the postgres user (its server refuses to run as root); its stdout."""
    return run_quiet(argv, what=what, env={**EXEC_ENV, "HOME": "/tmp"}, timeout=timeout,
                     user=PG_USER, group=PG_USER, extra_groups=[], cwd="/")


def pg_template(ctx: FsContext) -> Path:
    """A data directory made once per benchmark run by initdb, natively (untimed): each
    run copies it onto its target (initdb itself is not what is measured)."""
    assert ctx.pg_bin is not None
    tmpl = ctx.work / "pg-template"
    if not (tmpl / "PG_VERSION").exists():
        tmpl.mkdir(mode=0o700)
        shutil.chown(tmpl, PG_USER, PG_USER)
        run_as_postgres([str(ctx.pg_bin / "initdb"), "-D", str(tmpl), "-U", PG_USER,
                         "--auth=trust", "--no-sync", "--no-instructions"], what="initdb")
    return tmpl


def wl_pgbench(ctx: FsContext, t: Target) -> dict[str, float]:
    """A PostgreSQL server with its data directory on ``t`` (a copy of the template),
    listening only on a unix socket in a scratch directory: ``pgbench -i -s SCALE``
    (timed: init + load) and ``pgbench -c 4 -T SECONDS`` (tps); the server is stopped and
    its directories removed afterwards."""
    if ctx.pg_bin is None:
        raise BenchError("no PostgreSQL server (scripts/setup --bench installs postgresql)")
    bindir = ctx.pg_bin
    data = t.path / "pgdata"
    sock = ctx.work / "pgsock"
    for old in (data, sock):
        if old.exists():
            shutil.rmtree(old)
    tmpl = pg_template(ctx)
    subprocess.run(["cp", "-a", str(tmpl), str(data)], check=True)
    sock.mkdir(mode=0o700)
    shutil.chown(sock, PG_USER, PG_USER)
    os.sync()
    pg_ctl = [str(bindir / "pg_ctl"), "-D", str(data)]
    client = ["-h", str(sock), "-U", PG_USER]
    run_as_postgres([*pg_ctl, "-w", "-t", "120", "-l", str(sock / "server.log"),
                     "-o", f"-c listen_addresses='' -k {sock}", "start"],
                    what=f"pg_ctl start on {t.name}")
    try:
        t0 = t.start()
        run_as_postgres([str(bindir / "pgbench"), *client, "-i", "-q",
                         "-s", str(ctx.sizes.pg_scale), PG_USER],
                        what=f"pgbench -i on {t.name}")
        init_s = t.stop(t0, "pg-init")
        run_as_postgres([str(bindir / "psql"), *client, "-q", "-c", "CHECKPOINT", PG_USER],
                        what="CHECKPOINT")
        t0 = t.start()
        out = run_as_postgres([str(bindir / "pgbench"), *client, "-c", "4",
                               "-T", str(ctx.sizes.pg_seconds), PG_USER],
                              what=f"pgbench -c 4 on {t.name}")
        t.stop(t0, "pg-tps")
    finally:
        try:
            run_as_postgres([*pg_ctl, "-w", "-t", "60", "-m", "fast", "stop"],
                            what=f"pg_ctl stop on {t.name}")
        except BenchError as exc:
            log(f"{exc}; stopping it in immediate mode")
            with contextlib.suppress(BenchError):
                run_as_postgres([*pg_ctl, "-w", "-t", "60", "-m", "immediate", "stop"],
                                what=f"pg_ctl stop -m immediate on {t.name}")
        shutil.rmtree(sock, ignore_errors=True)
        shutil.rmtree(data, ignore_errors=True)
    tps = [line for line in out.splitlines() if line.startswith("tps = ")]
    if not tps:
        raise BenchError(f"pgbench on {t.name} printed no tps: {out.strip()[-200:]}")
    return {"pg-init": init_s, "pg-tps": float(tps[0].split()[2])}


def database_workloads(sizes: Sizes) -> list[Workload]:
    """pg-init (seconds) and pg-tps (its figures come from pg-init's runs); issue 15:
    >= 0.95x native tps, init + load <= 1.5x native."""
    return [
        Workload("pg-init", f"pgbench -i -s {sizes.pg_scale} (init + load)", "fs", "native",
                 "c-ll", [Goal("serve-fs", "native", 1.5)], run=wl_pgbench),
        Workload("pg-tps", f"pgbench -c 4 -T {sizes.pg_seconds} (tps, higher is better)",
                 "fs", "native", "c-ll", [Goal("serve-fs", "native", min_ratio=0.95)],
                 unit="tps", run_by="pg-init"),
    ]


# ----------------------------------------------------------------------------- workloads


@dataclass(frozen=True)
class Goal:
    """``target``'s median must be at most ``max_ratio`` and at least ``min_ratio`` times
    ``versus``'s (a time at most, a rate such as tps at least)."""

    target: str
    versus: str
    max_ratio: float = math.inf
    min_ratio: float = 0.0

    def label(self) -> str:
        if self.min_ratio > 0:
            return f">={self.min_ratio:g}x {self.versus}"
        return f"<={self.max_ratio:g}x {self.versus}"

    def met(self, ratio: float) -> bool:
        return self.min_ratio <= ratio <= self.max_ratio


@dataclass
class Workload:
    """One row group of the table."""

    name: str
    description: str
    group: str
    """"fs" (the backing-dir targets), "exec" (mounts of /) or "session"."""
    baseline: str
    """the limit: ratios in the "x limit" column are to this target."""
    reference: str
    """the reference implementation: the "x ref" column."""
    goals: list[Goal]
    run: Callable[[Any, Any], float | dict[str, float]] | None = None
    """one run on one target: seconds, or {workload name: figure} for a run that yields
    the figures of several workloads (see ``run_by``)."""
    samples: dict[str, list[float]] = field(default_factory=dict)
    requests: dict[str, list[dict[str, int]]] = field(default_factory=dict)
    """target -> per run, the requests serve-fs answered in the timed part, by opcode"""
    errors: dict[str, str] = field(default_factory=dict)
    unit: str = "s"
    """"s" (lower is better) or "tps" (transactions per second: higher is better)."""
    run_by: str | None = None
    """the workload whose run also yields this one's figures (this one never runs)."""


def fs_goals(*extra: Goal) -> list[Goal]:
    return [*extra, Goal("serve-fs", "c-ll", 0.8)]


METADATA = {"create", "stat-tree", "read-tree", "untar", "delete"}
"""the metadata workloads of issue 15's goal: <= 4x native."""


def make_workloads(sizes: Sizes) -> list[Workload]:
    big = f"{sizes.big_mib} MiB"
    tree = f"{sizes.files} files in {sizes.dirs} dirs"
    fs = [
        ("seq-write", f"write {big} in 1 MiB writes, close", wl_seq_write,
         fs_goals(Goal("serve-fs", "native", 1.5))),
        ("seq-read-cold", f"read {big} after drop_caches", wl_seq_read_cold, fs_goals()),
        ("seq-read-warm", f"read {big} again", wl_seq_read_warm,
         fs_goals(Goal("serve-fs", "native", 1.2))),
        ("rand-read-4k", f"{sizes.fio_mib} MiB of 4 KiB random reads, warm", wl_rand_read,
         fs_goals()),
        ("create", f"create {tree}", wl_create, fs_goals()),
        ("stat-tree", f"lstat every entry of the warm tree ({tree})", wl_stat_tree,
         fs_goals(Goal("serve-fs", "native", 1.5))),
        ("read-tree", "read every file of the tree", wl_read_tree, fs_goals()),
        ("untar", f"tar -x of a tarball of {tree}", wl_untar, fs_goals()),
        ("delete", "rm -r the tree and the extracted tree", wl_delete, fs_goals()),
    ]
    out = [Workload(n, d, "fs", "native", "c-ll", g, run=f) for n, d, f, g in fs]
    for wl in out:
        if wl.name in METADATA:
            wl.goals.append(Goal("serve-fs", "native", 4.0))
    out += concurrency_workloads(sizes)
    out += database_workloads(sizes)
    for name, argv in (("exec-python", ["/usr/bin/python3", "-c", "pass"]),
                       ("exec-true", ["/bin/true"])):
        out.append(Workload(name, f"chroot MNT {' '.join(argv)} (mount of /, warm, per launch)",
                            "exec", "native", "c-ll",
                            fs_goals(Goal("serve-fs", "native", 1.3)), run=wl_exec(argv)))
    out.append(Workload("attach", f"attach round trip `true` in {CONTAINER} (per launch)",
                        "session", "nsenter", "docker-exec",
                        [Goal("cntr-attach", "docker-exec", 0.7),
                         Goal("cntr-attach-pid", "docker-exec", 0.6)]))
    out.append(Workload("resolve", f"find {CONTAINER}'s pid (per launch)", "session",
                        "docker-inspect", "docker-inspect", []))
    return out


# ----------------------------------------------------------------------------- session path


@dataclass
class SessionVariant:
    """One command of the attach or resolve workload."""

    name: str
    argv: Callable[[], list[str]]
    """builds the command before each run (untimed): the containers may have been
    restarted by somebody else's tests meanwhile, with a new pid."""


class SessionTargets:
    """The docker test container and the demo, started (idempotently) in the original
    mount namespace, so that they never inherit the benchmark's mounts."""

    def __init__(self, host_ns: int) -> None:
        self.enter_host = in_namespace(host_ns)

    def _script(self, *args: str) -> str:
        return run_quiet([str(REPO / "scripts" / args[0]), *args[1:]],
                         what=f"scripts/{' '.join(args)}", preexec=self.enter_host,
                         timeout=300).strip()

    def docker_pid(self) -> str:
        try:
            return self._script("engines", "pid", "docker")
        except BenchError:
            self._script("engines", "start", "docker")
            return self._script("engines", "pid", "docker")

    def demo_pid(self) -> str:
        return self._script("demo", "start")

    def variants(self) -> dict[str, list[SessionVariant]]:
        # Every cntr launch imports cntr's modules from their byte-code: with
        # PYTHONDONTWRITEBYTECODE set, a tree changed since its last compile would compile
        # them again on every launch (~25 ms an attach), a cost no installed cntr has.
        # (cntr/stages is a link to stages/, which compileall does not follow)
        run_quiet([sys.executable, "-m", "compileall", "-q", str(REPO / "cntr"),
                   str(REPO / "stages")], what="python -m compileall cntr stages")
        attach: list[SessionVariant] = []
        resolve: list[SessionVariant] = []
        try:
            self._script("engines", "start", "docker")
            self.docker_pid()
        except BenchError as exc:
            log(f"docker is not available, its variants are skipped: {exc}")
        else:
            attach += [
                SessionVariant("nsenter",
                               lambda: ["nsenter", "-t", self.docker_pid(), "-a", "true"]),
                SessionVariant("docker-exec", lambda: [DOCKER, "exec", CONTAINER, "true"]),
                SessionVariant("cntr-attach",
                               lambda: [CNTR, "attach", CONTAINER, "--", "true"]),
                SessionVariant("cntr-attach-pid",
                               lambda: [CNTR, "attach", self.docker_pid(), "--", "true"]),
            ]
            resolve += [
                SessionVariant("docker-inspect", lambda: [
                    DOCKER, "inspect", "--format", "{{.State.Pid}}", CONTAINER]),
                SessionVariant("cntr-resolve-t",
                               lambda: [CNTR, "resolve", CONTAINER, "-t", "docker"]),
                SessionVariant("cntr-resolve", lambda: [CNTR, "resolve", CONTAINER]),
            ]
        try:
            self.demo_pid()
        except BenchError as exc:
            log(f"the demo container is not available: {exc}")
        else:
            attach.append(SessionVariant(
                "cntr-attach-demo", lambda: [CNTR, "attach", self.demo_pid(), "--", "true"]))
        return {"attach": attach, "resolve": resolve}


# ----------------------------------------------------------------------------- memory


def ensure_walk_tree(dirs: int) -> Path:
    """At least ``dirs`` directories of 1,000 empty files in the cache dir, each made once
    (``dNNN.done`` beside a complete one): a larger --walk-files adds to the tree."""
    root = CACHE / "walk"
    old = CACHE / "walk-200k"  # the tree of the fixed 200,000-file walk: reused
    if not root.exists() and (old / ".complete").exists():
        os.rename(old, root)
        for d in range(200):
            (root / f"d{d:03d}.done").touch()
    root.mkdir(parents=True, exist_ok=True)
    missing = [d for d in range(dirs) if not (root / f"d{d:03d}.done").exists()]
    if missing:
        log(f"creating {len(missing) * 1000:,} files in {root} (once)")
    for d in missing:
        sub = root / f"d{d:03d}"
        if sub.exists():
            shutil.rmtree(sub)
        sub.mkdir()
        for f in range(1000):
            os.close(os.open(sub / f"f{f:04d}", os.O_WRONLY | os.O_CREAT, 0o644))
        (root / f"d{d:03d}.done").touch()
    return root


def walk(root: Path, dirs: int, sample: Callable[[], None] | None = None) -> int:
    """lstat every entry of the first ``dirs`` directories of the walk tree."""
    n = 0
    for d in range(dirs):
        n += stat_tree(root / f"d{d:03d}")
        if sample is not None:
            sample()
    return n


def memory_section(sizes: Sizes, tools: Tools, work: Path) -> dict[str, Any]:
    root = ensure_walk_tree(sizes.walk_dirs)
    files = sizes.walk_dirs * 1000
    t0 = time.perf_counter()
    walk(root, sizes.walk_dirs)
    native_s = time.perf_counter() - t0
    mount = start_mount("serve-fs", root, work / "mnt" / "walk", tools, work / "logs")
    try:
        before = mount.status()
        max_fds = before["fds"]

        def sample() -> None:
            nonlocal max_fds
            max_fds = max(max_fds, mount.status()["fds"])

        t0 = time.perf_counter()
        n = walk(mount.mountpoint, sizes.walk_dirs, sample)
        serve_s = time.perf_counter() - t0
        after = mount.status()
    finally:
        mount.stop()
    if n != files:
        raise BenchError(f"walk through serve-fs saw {n} files, expected {files}")
    return {"files": files, "native_walk_s": native_s, "serve_fs_walk_s": serve_s,
            "rss_before_kib": before["VmRSS"], "rss_kib": after["VmRSS"],
            "hwm_kib": after["VmHWM"], "fds_before": before["fds"], "fds_after": after["fds"],
            "fds_max": max_fds, "max_inodes": max_inodes_from_env()}


# ----------------------------------------------------------------------------- report


def fmt_time(sec: float) -> str:
    if sec >= 10:
        return f"{sec:.1f} s"
    if sec >= 1:
        return f"{sec:.2f} s"
    if sec >= 1e-3:
        return f"{sec * 1e3:.1f} ms" if sec < 0.1 else f"{sec * 1e3:.0f} ms"
    return f"{sec * 1e6:.0f} us"


def summarize(wl: Workload) -> dict[str, Any]:
    meds = {t: statistics.median(s) for t, s in wl.samples.items() if s}
    targets: dict[str, Any] = {}
    for t, s in wl.samples.items():
        if not s:
            continue
        m = meds[t]
        targets[t] = {
            "samples": s, "median": m, "min": min(s), "max": max(s),
            "spread": (max(s) - min(s)) / m if m else 0.0,
            "x_limit": m / meds[wl.baseline] if wl.baseline in meds else None,
            "x_reference": m / meds[wl.reference] if wl.reference in meds else None,
        }
        if wl.unit == "s":
            targets[t].update({"samples_s": s, "median_s": m, "min_s": min(s),
                               "max_s": max(s)})
    goals = []
    for g in wl.goals:
        if g.target in meds and g.versus in meds:
            ratio = meds[g.target] / meds[g.versus]
            runs = [a / b for a, b in zip(wl.samples[g.target], wl.samples[g.versus],
                                          strict=False) if b > 0]
            goals.append({"target": g.target, "versus": g.versus,
                          "max_ratio": None if math.isinf(g.max_ratio) else g.max_ratio,
                          "min_ratio": g.min_ratio, "label": g.label(), "ratio": ratio,
                          "run_ratios": runs, "spread": run_spread(runs),
                          "met": g.met(ratio)})
    return {"name": wl.name, "description": wl.description, "limit": wl.baseline,
            "reference": wl.reference, "unit": wl.unit, "targets": targets, "goals": goals,
            "errors": wl.errors,
            "requests": {t: median_requests(r) for t, r in wl.requests.items() if r}}


def fmt_figure(value: float, unit: str) -> str:
    return fmt_time(value) if unit == "s" else f"{value:,.0f} {unit}"


def print_table(summaries: list[dict[str, Any]], memory: dict[str, Any] | None,
                out: Any = sys.stdout) -> None:
    rows: list[list[str]] = [["workload", "target", "median", "spread", "x limit", "x ref",
                              "goal"]]
    notes: list[str] = []
    for s in summaries:
        if not s["targets"] and not s["errors"]:
            continue
        notes.append(f"  {s['name']}: {s['description']}; limit {s['limit']}, "
                     f"ref {s['reference']}")
        first = True
        for t, r in s["targets"].items():
            goal = "; ".join(
                f"{g['label']}: {g['ratio']:.2f} "
                f"{'ok' if g['met'] else 'MISS'}"
                for g in s["goals"] if g["target"] == t)
            rows.append([s["name"] if first else "", t, fmt_figure(r["median"], s["unit"]),
                         f"{r['spread'] * 100:.0f}%",
                         "" if r["x_limit"] is None else f"{r['x_limit']:.2f}",
                         "" if r["x_reference"] is None else f"{r['x_reference']:.2f}", goal])
            first = False
        for t, err in s["errors"].items():
            rows.append([s["name"] if first else "", t, "FAILED", "", "", "", err[:60]])
            first = False
    print_rows(rows, {2, 3, 4, 5}, out)
    if memory:
        m = memory
        rss_ok = m["rss_kib"] < 100 * 1024
        fds_ok = m["fds_max"] < 5000
        print(f"\nserve-fs after walking {m['files']:,} files (lstat of every entry): "
              f"walk {fmt_time(m['serve_fs_walk_s'])} (native {fmt_time(m['native_walk_s'])},"
              f" {m['serve_fs_walk_s'] / m['native_walk_s']:.1f}x)", file=out)
        print(f"  VmRSS {m['rss_kib'] / 1024:.1f} MiB (at mount {m['rss_before_kib'] / 1024:.1f}"
              f" MiB), VmHWM {m['hwm_kib'] / 1024:.1f} MiB   goal <100 MiB: "
              f"{'ok' if rss_ok else 'MISS'}", file=out)
        print(f"  descriptors: {m['fds_before']} at mount, max {m['fds_max']} during the walk, "
              f"{m['fds_after']} after   goal bounded (<5,000): {'ok' if fds_ok else 'MISS'}",
              file=out)
        bound = m.get("max_inodes", 0)
        print(f"  inode table bound: {f'{bound:,} inodes' if bound else 'none'} "
              "(CNTR_SERVE_FS_INODES)", file=out)
    print("\nmedian of the runs; spread = (max-min)/median; x limit = median / the limit's "
          "(native, nsenter, docker inspect); x ref = median / the reference's (c-ll = "
          "passthrough_ll default mode, docker exec); a tps row is a rate: higher is better",
          file=out)
    print("\n".join(notes), file=out)


def record_requests(workloads: list[Workload], name: str, t: Target) -> None:
    """File the requests ``t`` counted in a run of the workload ``name``."""
    by_name = {w.name: w for w in workloads}
    for key, counts in t.counted.items():
        wl = by_name.get(key or name)
        if wl is not None:
            wl.requests.setdefault(t.name, []).append(counts)


def median_requests(runs: list[dict[str, int]]) -> dict[str, float]:
    """Per opcode, the median over runs (a run without an opcode counts 0)."""
    ops = sorted({op for r in runs for op in r})
    return {op: statistics.median(r.get(op, 0) for r in runs) for op in ops}


def print_requests(summaries: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    """Requests per run of each workload on each counting serve-fs target (medians)."""
    rows = [["workload", "target", "requests", "by opcode"]]
    for s in summaries:
        for target, med in s.get("requests", {}).items():
            ops = sorted(med.items(), key=lambda kv: -kv[1])
            rows.append([s["name"], target, f"{sum(med.values()):,.0f}",
                         " ".join(f"{op}={n:g}" for op, n in ops)])
    if len(rows) > 1:
        print("\nrequests per run (median; the timed part only)", file=out)
        print_rows(rows, {2}, out)


def record_figures(workloads: list[Workload], target: str, figures: dict[str, float],
                   progress: str) -> None:
    """File the figures of one run that yields several workloads' (``run_by``)."""
    by_name = {w.name: w for w in workloads}
    for name, value in figures.items():
        wl = by_name[name]
        wl.samples.setdefault(target, []).append(value)
        log(f"run {progress} {name:<13} {target:<16} {fmt_figure(value, wl.unit)}")


def goal_rows(summaries: list[dict[str, Any]], scal: list[dict[str, Any]],
              memory: dict[str, Any] | None) -> list[dict[str, Any]]:
    """Every goal of the run as one flat list: what, the figure, its spread over the
    runs (of per-run ratios), the bound and whether it is met."""
    rows: list[dict[str, Any]] = []
    for s in summaries:
        for g in s["goals"]:
            rows.append({"goal": f"{s['name']}: {g['target']} / {g['versus']}",
                         "figure": g["ratio"], "unit": "x", "spread": g["spread"],
                         "bound": g["label"],
                         "met": g["met"]})
    for r in scal:
        if "goal" in r:
            rows.append({"goal": f"{r['workload']}: {r['target']} throughput x"
                                 f"{r['requesters']} / x{r['versus_requesters']} requesters",
                         "figure": r["gain"], "unit": "x", "spread": r["spread"],
                         "bound": f">={r['goal']['min_ratio']:g}x", "met": r["goal"]["met"]})
    if memory:
        rows.append({"goal": f"memory: serve-fs VmRSS after walking {memory['files']:,} files",
                     "figure": memory["rss_kib"] / 1024, "unit": "MiB", "spread": None,
                     "bound": "<100 MiB", "met": memory["rss_kib"] < 100 * 1024})
        rows.append({"goal": "memory: serve-fs descriptors, most during the walk",
                     "figure": float(memory["fds_max"]), "unit": "fds", "spread": None,
                     "bound": "<5000", "met": memory["fds_max"] < 5000})
    return rows


def print_scaling(scal: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    if not scal:
        return
    print("\nscaling: throughput with N requesters / with N/2 (gain) and / with 1 (speedup)",
          file=out)
    rows = [["workload", "target", "N", "gain", "spread", "speedup"]]
    for r in scal:
        rows.append([r["workload"], r["target"], str(r["requesters"]), f"{r['gain']:.2f}",
                     "" if r["spread"] is None else f"{r['spread'] * 100:.0f}%",
                     f"{r['speedup']:.2f}"])
    print_rows(rows, {2, 3, 4, 5}, out)


def print_goals(goals: list[dict[str, Any]], out: Any = sys.stdout) -> None:
    if not goals:
        return
    print("\ngoals (issue 15), side by side: the ratio of medians, the spread of the per-run "
          "ratios", file=out)
    rows = [["goal", "figure", "spread", "bound", ""]]
    for g in goals:
        unit = g.get("unit", "x")
        figure = {"x": f"{g['figure']:.2f}x", "MiB": f"{g['figure']:.1f} MiB"}.get(
            unit, f"{g['figure']:.0f}")
        rows.append([g["goal"], figure,
                     "" if g["spread"] is None else f"{g['spread'] * 100:.0f}%", g["bound"],
                     "ok" if g["met"] else "MISS"])
    print_rows(rows, {1, 2}, out)
    met = sum(1 for g in goals if g["met"])
    print(f"{met} of {len(goals)} goals met", file=out)


def print_rows(rows: list[list[str]], right: set[int], out: Any) -> None:
    """An aligned table, its first row the header."""
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    for n, r in enumerate(rows):
        cells = [c.rjust(w) if i in right else c.ljust(w)
                 for i, (c, w) in enumerate(zip(r, widths, strict=True))]
        print("  ".join(cells).rstrip(), file=out)
        if n == 0:
            print("  ".join("-" * w for w in widths), file=out)


# ----------------------------------------------------------------------------- main


def rotate(items: list[Any], by: int) -> list[Any]:
    if not items:
        return items
    k = by % len(items)
    return items[k:] + items[:k]


def _raise_interrupt(signum: int, _frame: object) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def git_version() -> str:
    try:
        rev = subprocess.run(["git", "-C", str(REPO), "describe", "--always", "--dirty"],
                             capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return rev


def tool_version(argv: list[str]) -> str:
    try:
        res = subprocess.run(argv, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "absent"
    lines = (res.stdout or res.stderr).strip().splitlines()
    return lines[0] if lines else "unknown"


def parse_args(argv: list[str]) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="scripts/bench", description=__doc__.split("\n")[0])
    p.add_argument("--runs", type=int, help="repetitions per workload (default 5, quick 2)")
    p.add_argument("--quick", action="store_true", help="smaller sizes, 2 runs")
    p.add_argument("--only", metavar="NAME[,NAME]",
                   help="workloads to run: " + ", ".join(
                       [w.name for w in make_workloads(DEFAULT)] + ["memory"]))
    p.add_argument("--walk-files", type=int, metavar="N",
                   help="files walked for the memory figures, a multiple of 1,000 "
                        "(default 1,000,000, quick 20,000)")
    p.add_argument("--targets", metavar="KIND[,KIND]",
                   help="FUSE targets to mount (default: all there are but serve-fs-inline and "
                        "c-ll-perm; "
                        "native always runs): serve-fs, serve-fs-uring, serve-fs-libfuse, "
                        "serve-fs-inline (no worker threads), serve-fs-before (with "
                        "CNTR_BENCH_BEFORE=DIR), c-ll, c-ll-wb, c-ll-perm (with "
                        "default_permissions), bindfs")
    p.add_argument("--json", type=Path, metavar="FILE", help="also write the results as JSON")
    p.add_argument("--profile", type=Path, metavar="DIR",
                   help="run serve-fs under cProfile, stats in DIR (timings inflated)")
    return p.parse_args(argv)


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    if os.geteuid() != 0:
        print("bench: needs root (FUSE mounts, drop_caches, chroot)", file=sys.stderr)
        return 2
    sizes = QUICK if args.quick else DEFAULT
    if args.runs is not None:
        if args.runs < 1:
            print("bench: --runs must be at least 1", file=sys.stderr)
            return 2
        sizes = dataclasses.replace(sizes, runs=args.runs)
    if args.walk_files is not None:
        if args.walk_files < 1000:
            print("bench: --walk-files must be at least 1000", file=sys.stderr)
            return 2
        sizes = dataclasses.replace(sizes, walk_dirs=args.walk_files // 1000)
    if args.targets and (unknown_targets := set(args.targets.split(",")) - set(TARGETS)):
        print(f"bench: unknown target(s) {', '.join(sorted(unknown_targets))}; one of: "
              f"{', '.join(TARGETS)}", file=sys.stderr)
        return 2
    if args.targets and "serve-fs-before" in args.targets.split(",") and not BEFORE:
        print("bench: target serve-fs-before needs CNTR_BENCH_BEFORE=DIR (another checkout)",
              file=sys.stderr)
        return 2
    workloads = make_workloads(sizes)
    names = [w.name for w in workloads] + ["memory"]
    only = set(names if not args.only else args.only.split(","))
    if unknown := only - set(names):
        print(f"bench: unknown workload(s) {', '.join(sorted(unknown))}; one of: "
              f"{', '.join(names)}", file=sys.stderr)
        return 2
    for w in workloads:  # a workload and the one whose runs yield its figures go together
        if w.run_by is not None and (w.name in only or w.run_by in only):
            only |= {w.name, w.run_by}
    workloads = [w for w in workloads if w.name in only]
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_interrupt)

    started = time.monotonic()
    load_before = os.getloadavg()
    CACHE.mkdir(parents=True, exist_ok=True)
    tools = Tools(passthrough_ll=build_passthrough_ll(), bindfs=shutil.which("bindfs"),
                  fio=shutil.which("fio"), profile_dir=args.profile)
    if args.profile is not None:
        args.profile.mkdir(parents=True, exist_ok=True)
        args.profile = args.profile.resolve()
        tools.profile_dir = args.profile
    host_ns = os.open("/proc/self/ns/mnt", os.O_RDONLY | os.O_CLOEXEC)
    variants: dict[str, list[SessionVariant]] = {}
    if any(w.group == "session" for w in workloads):
        # Before unshare: the engines and the demo must not inherit our mounts.
        variants = SessionTargets(host_ns).variants()
    # A private mount namespace: our FUSE mounts are invisible to everybody else and die
    # with us (unshare(CLONE_NEWNS) needs a single-threaded process: we are).
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)

    kinds = ["serve-fs", "serve-fs-libfuse"]
    # The module parameter is the machine's: turned on only when an io_uring target runs.
    wanted = args.targets.split(",") if args.targets else None
    uring_was = (enable_fuse_uring() if wanted is None or "serve-fs-uring" in wanted
                 else None)
    if uring_was is not None:
        kinds.insert(1, "serve-fs-uring")
    if tools.passthrough_ll is not None:
        kinds += ["c-ll", "c-ll-wb"]
    if tools.bindfs is not None:
        kinds.append("bindfs")
    if BEFORE and wanted is None:
        kinds.insert(1, "serve-fs-before")
    if wanted is not None:
        kinds = wanted
    work = Path(tempfile.mkdtemp(prefix="cntr-bench-", dir="/var/tmp"))
    (work / "logs").mkdir()
    mounts: list[Mount] = []
    failures: list[str] = []
    memory: dict[str, Any] | None = None
    scratch: str | None = None
    try:
        if any(w.group == "fs" for w in workloads):
            scratch = scratch_fs(work / "scratch.img", work / "backing")
            log(f"scratch ext4 on {scratch} at {work / 'backing'}")
        rng = random.Random(42)
        ctx = FsContext(sizes, tools, work)
        if any(w.unit == "tps" or w.name.startswith("pg-") for w in workloads):
            ctx.pg_bin = pg_bindir()
            os.chmod(work, 0o755)  # the postgres user reaches its data dir on each target
        ctx.payload = os.urandom(sizes.max_file)
        ctx.file_sizes = [rng.randrange(sizes.max_file + 1) for _ in range(sizes.files)]
        fs_t: list[Target] = []
        root_t: list[Target] = []
        if any(w.group == "fs" for w in workloads):
            native = work / "backing" / "native"
            native.mkdir(parents=True)
            fs_t.append(Target("native", native))
            tar_src = work / "tarsrc"
            tar_src.mkdir()
            make_tree(ctx, tar_src / "tree")
            ctx.tarball = work / "tree.tar"
            run_quiet(["tar", "-cf", str(ctx.tarball), "-C", str(tar_src), "tree"],
                      what="tar -c")
        if any(w.group == "exec" for w in workloads):
            root_t.append(Target("native", Path("/")))
        for kind in kinds:
            try:
                if fs_t:
                    backing = work / "backing" / kind
                    backing.mkdir(parents=True)
                    m = start_mount(kind, backing, work / "mnt" / kind, tools, work / "logs")
                    mounts.append(m)
                    fs_t.append(Target(kind, m.mountpoint, m))
                if root_t:
                    m = start_mount(kind, Path("/"), work / "rootmnt" / kind, tools,
                                    work / "logs")
                    mounts.append(m)
                    root_t.append(Target(kind, m.mountpoint, m))
            except BenchError as exc:
                failures.append(str(exc))
                log(f"skipping {kind}: {exc}")
        ctx.fs_targets = fs_t
        log(f"targets mounted in {work}; {sizes.runs} runs of {len(workloads)} workloads")

        for rep in range(sizes.runs):
            for wl in workloads:
                if wl.group == "session":
                    items: list[Any] = variants.get(wl.name, [])
                else:
                    items = fs_t if wl.group == "fs" else root_t
                if wl.run_by is not None:
                    continue  # its figures come with wl.run_by's runs
                for item in rotate(items, rep):
                    if item.name in wl.errors:
                        continue
                    sec: float | dict[str, float]
                    if isinstance(item, Target):
                        item.counted = {}
                    try:
                        if wl.group == "session":
                            n = (sizes.attach_launches if wl.name == "attach"
                                 else sizes.resolve_launches)
                            sec = mean_launch(item.argv(), n, preexec=in_namespace(host_ns))
                        else:
                            assert wl.run is not None
                            sec = wl.run(ctx, item)
                    except (BenchError, OSError, subprocess.SubprocessError) as exc:
                        wl.errors[item.name] = str(exc)
                        for other in workloads:
                            if other.run_by == wl.name:
                                other.errors[item.name] = f"(in {wl.name}) {exc}"
                        failures.append(f"{wl.name} on {item.name}: {exc}")
                        log(f"FAILED {wl.name} on {item.name}: {exc}")
                        continue
                    if isinstance(item, Target):
                        record_requests(workloads, wl.name, item)
                    if isinstance(sec, dict):
                        record_figures(workloads, item.name, sec, f"{rep + 1}/{sizes.runs}")
                        continue
                    wl.samples.setdefault(item.name, []).append(sec)
                    log(f"run {rep + 1}/{sizes.runs} {wl.name:<13} {item.name:<16} "
                        f"{fmt_time(sec)}")
        for m in mounts:
            if m.proc.poll() is not None:
                failures.append(f"{m.name} on {m.mountpoint} died (exit {m.proc.returncode})")
        if "memory" in only:
            log(f"memory: walking {sizes.walk_dirs * 1000:,} files through serve-fs")
            try:
                memory = memory_section(sizes, tools, work)
            except (BenchError, OSError) as exc:
                failures.append(f"memory: {exc}")
                log(f"FAILED memory: {exc}")
    finally:
        for m in mounts:
            m.stop()
        if scratch is not None:
            drop_scratch_fs(scratch, work / "backing")
        if uring_was is not None:
            ENABLE_URING.write_text(uring_was)
        left = mounted_below(work)
        if left:
            log(f"still mounted, {work} is left in place: {', '.join(left)}")
        else:
            subprocess.run(["rm", "-rf", "--one-file-system", str(work)], check=False)
        os.close(host_ns)

    elapsed = time.monotonic() - started
    # The machine may be shared: the load says how much the figures were disturbed.
    load = {"before": list(load_before), "after": list(os.getloadavg())}
    summaries = [summarize(w) for w in workloads]
    scal = scaling(summaries)
    goals = goal_rows(summaries, scal, memory)
    print_table(summaries, memory)
    print_scaling(scal)
    print_goals(goals)
    print_requests(summaries)
    print(f"\n{sizes.runs} runs, {elapsed / 60:.1f} min, load average "
          f"{load['before'][0]:.2f} before, {load['after'][0]:.2f} "
          f"(5 min: {load['after'][1]:.2f}) after"
          + (f"; profiles in {args.profile}" if args.profile else ""))
    if args.json is not None:
        doc = {
            "meta": {
                "date": time.strftime("%Y-%m-%dT%H:%M:%S%z"), "host": platform.node(),
                "kernel": platform.release(), "cpus": os.cpu_count(),
                "python": platform.python_version(), "cntr": git_version(),
                "libfuse": tool_version(["pkg-config", "--modversion", "fuse3"]),
                "bindfs": tool_version(["bindfs", "--version"]),
                "fio": tool_version(["fio", "--version"]),
                "quick": args.quick, "sizes": dataclasses.asdict(sizes), "elapsed_s": elapsed,
                "profiled": args.profile is not None, "loadavg": load,
            },
            "workloads": summaries, "memory": memory, "failures": failures,
            "scaling": scal, "goals": goals,
        }
        args.json.write_text(json.dumps(doc, indent=2) + "\n")
        log(f"JSON in {args.json}")
    if failures:
        log("something broke:\n  " + "\n  ".join(failures))
        return 1
    return 0


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except KeyboardInterrupt:
        print("bench: interrupted; mounts and temp dirs were cleaned up", file=sys.stderr)
        sys.exit(130)
