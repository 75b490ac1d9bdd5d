"""Ad-hoc concurrency experiment (prototype, not part of the suite)."""
import os, sys, time, subprocess, random, shutil, tempfile, statistics
from pathlib import Path
sys.path.insert(0, "/work/wt/conc/scripts")
sys.path.insert(0, "/work/wt/conc")
import bench as B
from cntr.linux import syscalls as sc

def cpu(pid):
    f = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return int(f[11]) / 100, int(f[12]) / 100  # utime, stime (s)

def main():
    variants = sys.argv[1].split(",")
    ns = [int(x) for x in sys.argv[2].split(",")]
    reps = int(sys.argv[3])
    sc.unshare(sc.CLONE_NEWNS)
    sc.mount(None, "/", None, sc.MS_REC | sc.MS_PRIVATE)
    work = Path(tempfile.mkdtemp(prefix="cntr-conc-exp-", dir="/var/tmp"))
    (work / "logs").mkdir()
    B.SCRATCH_GIB = 4
    dev = B.scratch_fs(work / "img", work / "backing")
    tools = B.Tools(passthrough_ll=B.build_passthrough_ll(), bindfs=None, fio=None, profile_dir=None)
    ctx = B.FsContext(B.DEFAULT, tools, work)
    rng = random.Random(42)
    ctx.payload = os.urandom(8192)
    ctx.file_sizes = [rng.randrange(8193) for _ in range(4000)]
    (work / "tarsrc").mkdir()
    B.make_tree(ctx, work / "tarsrc" / "tree")
    ctx.tarball = work / "tree.tar"
    subprocess.run(["tar", "-cf", str(ctx.tarball), "-C", str(work / "tarsrc"), "tree"], check=True)
    mounts = []
    res = {}
    try:
        targets = {}
        for v in variants:
            if v == "native":
                d = work / "backing" / "native"; d.mkdir()
                targets[v] = ([d], [])
                continue
            if v.startswith("multi"):
                ms = []
                for i in range(max(ns)):
                    b = work / "backing" / f"{v}-{i}"; b.mkdir()
                    ms.append(B.start_mount(v.partition(":")[2] or "serve-fs", b, work / "mnt" / f"{v}-{i}" / "m", tools, work / "logs"))
                mounts += ms
                targets[v] = ([m.mountpoint for m in ms], ms)
                continue
            b = work / "backing" / v; b.mkdir()
            m = B.start_mount(v, b, work / "mnt" / v / "m", tools, work / "logs")
            mounts.append(m)
            targets[v] = ([m.mountpoint], [m])
        for rep in range(reps):
            for n in ns:
                for v in B.rotate(variants, rep):
                    roots, ms = targets[v]
                    for r in roots:
                        for old in r.glob("p*-*"):
                            shutil.rmtree(old)
                    os.sync()
                    dests = [roots[i % len(roots)] / f"p{n}-{i}" for i in range(n)]
                    before = [cpu(m.proc.pid) for m in ms]
                    t0 = time.perf_counter()
                    if os.environ.get("EXP_WL") == "fsync":
                        for d in dests: d.mkdir()
                        code = "import os,sys\nfd=os.open(sys.argv[1],os.O_WRONLY|os.O_CREAT,0o644)\nfor i in range(200):\n    os.pwrite(fd,b'x'*4096,i*4096); os.fsync(fd)\n"
                        ps = [subprocess.Popen([sys.executable, "-c", code, str(d / "f")]) for d in dests]
                        assert all(p.wait() == 0 for p in ps)
                    else:
                        B.untar_parallel(ctx, dests)
                    dt = time.perf_counter() - t0
                    after = [cpu(m.proc.pid) for m in ms]
                    u = sum(a[0] - b[0] for a, b in zip(after, before))
                    s = sum(a[1] - b[1] for a, b in zip(after, before))
                    res.setdefault((v, n), []).append((dt, u, s))
                    print(f"rep {rep} n={n} {v:<14} {dt:6.2f}s  server user {u:5.2f} sys {s:5.2f}  load {os.getloadavg()[0]:.2f}", file=sys.stderr, flush=True)
    finally:
        for m in mounts:
            m.stop()
        B.drop_scratch_fs(dev, work / "backing")
        subprocess.run(["rm", "-rf", "--one-file-system", str(work)])
    print(f"{'variant':<14} {'n':>2} {'median':>7} {'min':>6} {'max':>6} {'user':>5} {'sys':>5}")
    for (v, n), rows in sorted(res.items(), key=lambda kv: (kv[0][1], variants.index(kv[0][0]))):
        ts = [r[0] for r in rows]
        print(f"{v:<14} {n:>2} {statistics.median(ts):7.2f} {min(ts):6.2f} {max(ts):6.2f} "
              f"{statistics.median(r[1] for r in rows):5.2f} {statistics.median(r[2] for r in rows):5.2f}")

main()
