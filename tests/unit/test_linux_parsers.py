"""Parsers of kernel files, fed recorded real content (from this machine) and fake trees."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cntr.linux import caps, cgroups, lsm, procfs

HYBRID_MOUNTINFO = """\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
32 31 0:29 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 31 0:30 / /sys/fs/cgroup/cpuacct rw,relatime - cgroup cgroup rw,cpuacct
39 31 0:36 / /sys/fs/cgroup/pids rw,relatime - cgroup cgroup rw,pids
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,xattr,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw,nsdelegate
90 31 0:40 / /sys/fs/cgroup/net_cls,net_prio rw - cgroup cgroup rw,net_cls,net_prio
91 31 0:36 /docker /mnt/pids-bind rw - cgroup cgroup rw,pids
"""

DEMO_CGROUP = """\
9:name=systemd:/
8:pids:/cntr-demo
2:cpuacct:/
1:cpu:/
0::/cntr-demo
5:net_prio,net_cls:/x
"""


def test_cgroup_mounts_of_a_hybrid_host() -> None:
    mounts = cgroups.cgroup_mounts(HYBRID_MOUNTINFO)
    assert mounts["0"] == "/sys/fs/cgroup/unified"
    assert mounts["name=systemd"] == "/sys/fs/cgroup/systemd"
    assert mounts["pids"] == "/sys/fs/cgroup/pids"  # not the bind of a sub-cgroup
    assert mounts["net_cls,net_prio"] == "/sys/fs/cgroup/net_cls,net_prio"


def test_cgroup_dirs_follow_each_membership() -> None:
    dirs = cgroups.cgroup_dirs(procfs.parse_cgroups(DEMO_CGROUP),
                               cgroups.cgroup_mounts(HYBRID_MOUNTINFO))
    assert dirs == [
        "/sys/fs/cgroup/systemd/", "/sys/fs/cgroup/pids/cntr-demo",
        "/sys/fs/cgroup/cpuacct/", "/sys/fs/cgroup/cpu/", "/sys/fs/cgroup/unified/cntr-demo",
        "/sys/fs/cgroup/net_cls,net_prio/x",
    ]


def test_id_maps() -> None:
    m = procfs.parse_id_map("         0    1000000      65536\n")
    assert m == [(0, 1000000, 65536)]
    assert procfs.map_to_inside(1000000, m) == 0
    assert procfs.map_to_inside(1065535, m) == 65535
    assert procfs.map_to_inside(0, m) is None


def test_environ_parsing_keeps_odd_values() -> None:
    env = procfs.parse_environ(b"A=1\0B=x=y\0EMPTY=\0NOEQ\0\0C=\xff\0")
    assert env == {"A": "1", "B": "x=y", "EMPTY": "", "C": os.fsdecode(b"\xff")}


def _fake_proc(tmp_path: Path, stat: str, status: str) -> Path:
    d = tmp_path / "proc" / "42"
    d.mkdir(parents=True)
    (d / "stat").write_text(stat)
    (d / "status").write_text(status)
    return tmp_path / "proc"


STATUS = """\
Name:\tsleep
Uid:\t1000\t1000\t1000\t1000
Gid:\t100\t100\t100\t100
Groups:\t4 24 100
NSpid:\t10160\t1
NoNewPrivs:\t1
CapInh:\t0000000000000000
CapPrm:\t00000000a80425fb
CapEff:\t00000000a80425fb
CapBnd:\t00000000a80425fb
CapAmb:\t0000000000000400
"""


def test_status_and_stat(tmp_path: Path) -> None:
    # comm with spaces and parentheses must not shift the fields
    stat = "42 (a) b) c) S 1 42 42 0 -1 4194560 1 0 0 0 0 0 0 0 20 0 1 0 45790 2404352 0"
    proc = _fake_proc(tmp_path, stat, STATUS)
    assert procfs.read_start_time(42, str(proc)) == 45790
    st = procfs.read_status(42, str(proc))
    assert st.uids == (1000, 1000, 1000, 1000)
    assert st.groups == (4, 24, 100)
    assert st.nspid == (10160, 1)
    assert st.no_new_privs
    assert st.cap_ambient == 1 << 10
    assert "cap_net_bind_service" in caps.names(st.cap_bounding)
    assert "cap_sys_admin" not in caps.names(st.cap_bounding)


@pytest.mark.parametrize(("lsm_list", "attr", "expected"), [
    ("lockdown,capability,apparmor", "docker-default (enforce)\n", ("apparmor",
                                                                     "docker-default")),
    ("capability,selinux", "system_u:system_r:container_t:s0:c1,c2\0",
     ("selinux", "system_u:system_r:container_t:s0:c1,c2")),
    ("capability", None, ("", "")),
])
def test_lsm_labels_from_a_fake_tree(tmp_path: Path, lsm_list: str, attr: str | None,
                                     expected: tuple[str, str]) -> None:
    """No AppArmor/SELinux in this kernel: the label code runs on a fake proc and sys."""
    sys_root = tmp_path / "sys"
    (sys_root / "kernel/security").mkdir(parents=True)
    (sys_root / "kernel/security/lsm").write_text(lsm_list)
    proc = tmp_path / "proc"
    (proc / "7/attr").mkdir(parents=True)
    if attr is not None:
        (proc / "7/attr/current").write_text(attr)
    label = lsm.read_label(7, str(proc), str(sys_root))
    assert (label.lsm, label.label) == expected


def test_lsm_label_is_applied_through_exec_attr(tmp_path: Path) -> None:
    proc = tmp_path / "proc"
    (proc / "self/attr/apparmor").mkdir(parents=True)
    (proc / "self/attr/apparmor/exec").write_text("")
    lsm.apply_label(lsm.Label("apparmor", "docker-default"), str(proc))
    assert (proc / "self/attr/apparmor/exec").read_text() == "exec docker-default"
    (proc / "self/attr/exec").write_text("")
    lsm.apply_label(lsm.Label("selinux", "system_u:system_r:container_t:s0"), str(proc))
    assert (proc / "self/attr/exec").read_text() == "system_u:system_r:container_t:s0"
    lsm.apply_label(lsm.Label("apparmor", "unconfined"), str(proc))  # nothing to apply
    assert (proc / "self/attr/apparmor/exec").read_text() == "exec docker-default"


def test_verify_names_what_changed(tmp_path: Path) -> None:
    """enter's identity check on a fake proc tree: each field has its own message."""
    from cntr.errors import StaleContext
    from cntr.record import replace
    from cntr.stages.enter import verify
    from tests.unit.test_records import sample_context

    proc = tmp_path / "proc"
    (proc / "sys/kernel/random").mkdir(parents=True)
    boot = "2f907afe-3b62-4616-9348-405ae05e7e19"
    (proc / "sys/kernel/random/boot_id").write_text(boot + "\n")
    ctx = sample_context(namespaces={})
    with pytest.raises(StaleContext, match="gone"):
        verify(ctx, str(proc))
    (proc / "4242").mkdir()
    (proc / "4242/stat").write_text("4242 (sleep) S " + "0 " * 18 + "123456 0")
    verify(ctx, str(proc))
    with pytest.raises(StaleContext, match="start time differs"):
        verify(replace(ctx, start_time=1), str(proc))
    with pytest.raises(StaleContext, match="another boot"):
        verify(replace(ctx, boot_id="x"), str(proc))
    (proc / "4242/ns").mkdir()
    (proc / "4242/ns/net").write_text("")
    with pytest.raises(StaleContext, match="another net namespace"):
        verify(replace(ctx, namespaces={"net": 5}), str(proc))
    with pytest.raises(StaleContext, match="gone"):
        verify(replace(ctx, namespaces={"uts": 5}), str(proc))
    (proc / "4242/stat").write_text("4242 (sleep) Z " + "0 " * 18 + "123456 0")
    with pytest.raises(StaleContext, match="gone"):
        verify(ctx, str(proc))
