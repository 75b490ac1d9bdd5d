"""How an offline session reads a stopped container's configuration: the user through
the container's own /etc/passwd and /etc/group (layer by layer, whiteouts honoured), and
an LXC config file."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cntr import offline
from cntr.context import Offline
from cntr.engines import lxc
from cntr.errors import NotFound
from cntr.linux import caps

PASSWD = b"root:x:0:0:root:/root:/bin/sh\napp:x:1000:1001:App:/home/app:/bin/sh\n"
GROUP = b"root:x:0:\napps:x:1001:\nwheel:x:10:app,root\nweb:x:33:app\n"


def test_resolve_user() -> None:
    assert offline.resolve_user("", PASSWD, GROUP) == (0, 0, [0, 10], "/root")
    assert offline.resolve_user("app", PASSWD, GROUP) == (1000, 1001, [1001, 10, 33],
                                                          "/home/app")
    assert offline.resolve_user("1000", PASSWD, GROUP)[:2] == (1000, 1001)
    assert offline.resolve_user("app:web", PASSWD, GROUP)[:3] == (1000, 33, [33, 10])
    assert offline.resolve_user("4242:99", PASSWD, GROUP)[:3] == (4242, 99, [99])
    with pytest.raises(NotFound, match="user 'nosuch' is not in the container's /etc/passwd"):
        offline.resolve_user("nosuch", PASSWD, GROUP)
    with pytest.raises(NotFound, match="group 'nosuch'"):
        offline.resolve_user("app:nosuch", PASSWD, GROUP)


def _off(lower: list[str], upper: str) -> Offline:
    return Offline(state="exited", exit_code=0, rootfs="overlay", lower=lower, upper=upper,
                   work="", path="", env={}, cwd="/", user="", hostname="", caps=0, image="")


def test_files_come_from_the_topmost_layer(tmp_path: Path) -> None:
    base, upper = tmp_path / "base", tmp_path / "upper"
    for d in (base / "etc", upper / "etc"):
        d.mkdir(parents=True)
    (base / "etc/passwd").write_bytes(b"old\n")
    (base / "etc/group").write_bytes(b"g\n")
    (base / "etc/hosts").symlink_to("/etc/passwd")  # resolved inside the layer
    (upper / "etc/passwd").write_bytes(b"new\n")
    if os.geteuid() == 0:
        os.mknod(upper / "etc/group", 0o600 | 0o020000, 0)  # an overlay whiteout
    off = _off([str(base)], str(upper))
    assert offline.read_file(off, "etc/passwd") == b"new\n"
    assert offline.read_file(off, "etc/hosts") == b"old\n"
    assert offline.read_file(off, "etc/shadow") is None
    if os.geteuid() == 0:
        assert offline.read_file(off, "etc/group") is None


def test_lxc_config(tmp_path: Path) -> None:
    root = tmp_path / "rootfs"
    root.mkdir()
    conf = tmp_path / "config"
    conf.write_text(f"# a comment\nlxc.rootfs.path = dir:{root}\nlxc.uts.name = box\n"
                    "lxc.environment = A=1\nlxc.environment = B=x=y\n"
                    "lxc.cap.drop = sys_module mac_admin\nlxc.init.cwd = /srv\n"
                    "lxc.init.uid = 1000\nlxc.init.gid = 100\n")
    off = lxc.describe_stopped(str(conf), "c1")
    assert off is not None
    assert (off.rootfs, off.path, off.hostname, off.cwd, off.user) == (
        "dir", str(root), "box", "/srv", "1000:100")
    assert off.env == {"A": "1", "B": "x=y"}
    assert "cap_sys_module" not in caps.names(off.caps)
    assert "cap_sys_admin" in caps.names(off.caps)
    conf.write_text(conf.read_text() + "lxc.idmap = u 0 100000 65536\n")
    assert lxc.describe_stopped(str(conf), "c1") is None  # user-namespaced: not offline


def test_lxd_instance(tmp_path: Path) -> None:
    from cntr.engines import lxd

    (tmp_path / "containers/c1/rootfs/root").mkdir(parents=True)
    idmap = ('[{"Isuid":true,"Isgid":false,"Hostid":100000,"Nsid":0,"Maprange":65536},'
             '{"Isuid":false,"Isgid":true,"Hostid":200000,"Nsid":0,"Maprange":65536}]')
    meta = {"name": "c1", "expanded_config": {
        "environment.APP": "x", "raw.lxc": "lxc.init.cmd=/bin/sleep 1\nlxc.uts.name=box",
        "volatile.last_state.idmap": idmap}}
    off = lxd.describe_stopped(meta, str(tmp_path))
    assert off is not None
    assert (off.path, off.hostname, off.cwd, off.env) == (
        str(tmp_path / "containers/c1/rootfs"), "box", "/root", {"APP": "x"})
    assert (off.uid_map, off.gid_map) == ([(0, 100000, 65536)], [(0, 200000, 65536)])
    assert "cap_sys_module" not in caps.names(off.caps)
    meta["expanded_config"]["security.privileged"] = "true"  # type: ignore[index]
    privileged = lxd.describe_stopped(meta, str(tmp_path))
    assert privileged is not None and privileged.uid_map == []
    assert lxd.describe_stopped({"name": "c2"}, str(tmp_path)) is None
