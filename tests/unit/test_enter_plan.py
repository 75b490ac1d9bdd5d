"""The enter plan (``cntr.session.plan.build``) for a few contexts and hosts, built from
facts given by hand: no privileges, nothing read from the machine.  What the session's
processes carry out is checked against the same plan by tests/integration/test_attach_plan.py."""

from __future__ import annotations

from typing import Any

import pytest

from cntr.context import Context, Tools
from cntr.linux import caps
from cntr.record import replace
from cntr.session import plan
from cntr.session.plan import EnterOptions, Facts
from tests.unit.test_offline_records import sample_offline
from tests.unit.test_records import sample_context

OWN_NS = {"mnt": 4026531841, "pid": 4026531836, "user": 4026531837, "net": 4026531840,
          "uts": 4026531838, "ipc": 4026531839, "cgroup": 4026531835, "time": 4026531834}
"""cntr's own namespaces (the sample context shares its user namespace)."""
CGROUP_MOUNTS = {"0": "/sys/fs/cgroup/unified", "pids": "/sys/fs/cgroup/pids"}
LAST_CAP = 40


def facts(**over: Any) -> Facts:
    base = Facts(own_ns=OWN_NS, cgroup_mounts=CGROUP_MOUNTS, cap_last_cap=LAST_CAP,
                 argv=["sh"], env={"PATH": "/bin"}, interactive=False)
    return replace(base, **over)


def shape(p: plan.Plan) -> list[tuple[str, ...]]:
    """Each step as (step, what it acts on)."""
    out: list[tuple[str, ...]] = []
    for s in p.show():
        on = s.get("target") or s.get("namespace") or s.get("process") or s.get("path")
        out.append((s["step"], str(on)) if on else (s["step"],))
    return out


def test_a_docker_container_with_mounts_of_its_own() -> None:
    ctx = sample_context()
    p = plan.build(ctx, EnterOptions(command=["sh"]),
                   facts(sysfs=True, files=("etc/hostname", "etc/localtime")))
    assert shape(p) == [
        ("verify",), ("open", "/dev/fuse"), ("mkdir", "/var/lib/cntr"), ("serve-fs",),
        ("join-cgroups",), ("setns", "mnt"), ("unshare", "mnt"), ("mount", "/"),
        ("bind", "/var/lib/cntr"), ("bind", "/proc"), ("bind", "/dev"), ("bind", "/sys"),
        ("bind", "/etc/hostname"), ("bind", "/etc/localtime"), ("pivot_root", "/"),
        ("setns", "pid"), ("mount", "/sys"),
        ("fork", "reaper"), ("session",), ("lsm-label",), ("capabilities",), ("ids",),
        ("capability-sets",), ("fork", "command"), ("chdir", "/var/lib/cntr/srv"), ("exec",)]
    show = p.show()
    assert show[4] == {"step": "join-cgroups", "paths": ["/sys/fs/cgroup/unified/docker/abc",
                                                         "/sys/fs/cgroup/pids/docker/abc"]}
    assert show[8] == {"step": "bind", "target": "/var/lib/cntr", "recursive": True,
                       "source": "/var/lib/docker/overlay2/x/merged (container /)"}
    assert show[12] == {"step": "bind", "source": "container /etc/hostname",
                        "target": "/etc/hostname"}
    assert show[16] == {"step": "mount", "target": "/sys",
                        "source": "sysfs (read-only, of the container's net namespace)",
                        "if": "the container's /sys shows another net namespace"}
    # docker's default set lacks cap_wake_alarm: it is the guard
    assert show[20] == {
        "step": "capabilities", "drop_bounding": caps.names(((1 << 41) - 1) & ~0xA80425FB
                                                             & ~(1 << caps.WAKE_ALARM)),
        "guard": "cap_wake_alarm",
        "seccomp_refuses": ["timerfd_create(CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM)",
                            "timer_create(CLOCK_REALTIME_ALARM, CLOCK_BOOTTIME_ALARM)"],
        "unguarded": None}
    assert show[19] == {"step": "lsm-label", "lsm": "apparmor", "label": "docker-default"}
    assert show[-1] == {"step": "exec", "argv": ["sh"], "env": {"PATH": "/bin"}, "pty": False}


def test_a_chroot_style_container_gets_fresh_proc_dev_sys() -> None:
    ctx = sample_context(namespaces={"mnt": 1, "pid": 2, "net": 3, "user": 4})
    p = plan.build(ctx, EnterOptions(), facts(fresh=("proc", "dev", "sys")))
    assert shape(p)[6:15] == [
        ("unshare", "mnt"), ("mount", "/"), ("bind", "/var/lib/cntr"), ("mount", "/dev"),
        ("pivot_root", "/"), ("setns", "net"), ("setns", "pid"), ("mount", "/proc"),
        ("mount", "/sys")]
    # joined after the fresh mounts: the user namespace (the time one is cntr's own)
    assert shape(p)[15:17] == [("setns", "user"), ("fork", "reaper")]
    assert "if" not in p.show()[14]


def test_what_the_host_lacks_is_left_out() -> None:
    """A bind onto a name the served tree lacks is not planned: a directory is a warning,
    a file is not."""
    p = plan.build(sample_context(), EnterOptions(),
                   facts(files=("etc/hostname", "etc/localtime"),
                         missing=("sys", "etc/localtime")))
    binds = [s["target"] for s in p.show() if s["step"] == "bind"]
    assert binds == ["/var/lib/cntr", "/proc", "/dev", "/etc/hostname"]
    i = shape(p).index(("pivot_root", "/"))
    assert p.show()[i + 1] == {"step": "warn",
                               "text": "not bound in the session: /sys (absent on the host)"}
    serve = p.find(plan.ServeFs)
    assert serve is not None
    assert serve.synthetic == ("var/lib/cntr/", "proc/", "dev/", "sys/", "etc/hostname")


def test_a_tools_session_serves_the_tools_and_shows_what_they_lack() -> None:
    tools = Tools("docker:box", "/proc/77/root", "docker", "c" * 64, "box", 77, 5)
    p = plan.build(sample_context(tools=tools), EnterOptions(base_dir="/cntr"),
                   facts(files=("etc/hosts",)))
    show = p.show()
    assert show[3] == {"step": "serve-fs", "root": "/proc/77/root",
                       "uid_map": [(0, 0, 4294967295)], "gid_map": [(0, 100000, 65536)],
                       "effective_user": None,
                       "tools": {"source": "docker:box", "engine": "docker",
                                 "container_id": "c" * 64, "name": "box", "pid": 77}}
    assert show[7] == {"step": "mount", "target": "/",
                       "source": "fuse.cntr (serve-fs: the tools of docker:box)"}
    serve = p.find(plan.ServeFs)
    assert serve is not None
    assert serve.synthetic == ("cntr/", "proc/", "dev/", "sys/", "etc/hosts")


def test_cntr_exec_runs_in_the_containers_root() -> None:
    ctx = sample_context(lsm="", label="", no_new_privs=True)
    p = plan.build(ctx, EnterOptions(command=["id"], container_root=True), facts())
    assert shape(p) == [
        ("verify",), ("join-cgroups",), ("setns", "mnt"),
        ("chroot", "/var/lib/docker/overlay2/x/merged"), ("setns", "pid"), ("fork", "reaper"),
        ("session",), ("no-new-privs",), ("capabilities",), ("ids",), ("capability-sets",),
        ("fork", "command"), ("chdir", "/srv"), ("exec",)]


def test_an_offline_session_makes_its_namespaces() -> None:
    off = sample_offline()
    ctx = sample_context(pid=0, start_time=0, namespaces={}, cgroups=[], lsm="", label="",
                         offline=off)
    p = plan.build(ctx, EnterOptions(network="host"),
                   facts(fresh=("proc", "dev", "sys"), files=("etc/passwd",)))
    assert shape(p) == [
        ("hold", "/l/c/merged"), ("open", "/dev/fuse"), ("mkdir", "/var/lib/cntr"),
        ("serve-fs",), ("setns", "mnt"), ("unshare", "mnt"), ("mount", "/"),
        ("bind", "/var/lib/cntr"), ("mount", "/dev"), ("bind", "/etc/passwd"),
        ("pivot_root", "/"), ("unshare",),
        ("fork", "reaper"), ("mount",), ("session",), ("capabilities",), ("ids",),
        ("capability-sets",), ("fork", "command"), ("chdir", "/var/lib/cntr/srv"), ("exec",)]
    show = p.show()
    assert show[4]["inode"] == OWN_NS["mnt"]  # cntr's own stands for the container's
    assert show[11] == {"step": "unshare", "namespaces": ["uts", "ipc", "cgroup", "pid"],
                        "hostname": "web", "loopback": "host network"}
    assert show[13]["targets"] == ["/proc", "/sys", "/var/lib/cntr/proc",
                                   "/var/lib/cntr/sys", "/var/lib/cntr/dev"]


@pytest.mark.parametrize("ctx", [
    sample_context(),
    sample_context(caps=replace(sample_context().caps, bounding=1 << caps.SYS_PTRACE)),
    sample_context(lsm="apparmor", label="unconfined"),
])
def test_each_process_carries_out_one_stretch_of_the_plan(ctx: Context) -> None:
    """The parts follow each other (supervisor, setup child, reaper, command), each fork
    ends its process's part, and a label the kernel would not change is not planned."""
    p = plan.build(ctx, EnterOptions(tty=True), facts(interactive=True))
    order = ["supervisor", "setup", "reaper", "command"]
    wheres = [order.index(op.where) for op in p.ops]
    assert wheres == sorted(wheres)
    assert isinstance(p.part("setup")[-1], plan.ForkReaper)
    assert isinstance(p.part("reaper")[-1], plan.ForkCommand)
    assert [type(op) for op in p.part("command")] == [plan.Chdir, plan.Exec]
    assert p.show()[-1]["pty"] is True
    if ctx.label == "unconfined":
        assert p.find(plan.LsmLabel) is None


def test_without_a_guard_the_plan_says_why() -> None:
    ctx = sample_context(caps=replace(sample_context().caps, bounding=1 << caps.SYS_PTRACE))
    step = next(s for s in plan.build(ctx, EnterOptions(), facts()).show()
                if s["step"] == "capabilities")
    assert step["guard"] is None and step["seccomp_refuses"] == []
    assert step["unguarded"] == ("container web holds cap_sys_ptrace: its processes can "
                                 "trace the session's processes and read their memory")
