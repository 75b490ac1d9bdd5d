"""podman's database read without podman (`cntr.engines.bolt`, `cntr.engines.podman`'s
negative lookup): a recorded podman 4.3 database (data/engines/podman-bolt_state.db.gz,
see its README) against what podman listed of it, damaged copies, a writer's lock, and
the configurations under which podman is asked instead."""

from __future__ import annotations

import fcntl
import gzip
import os
import struct
from pathlib import Path

import pytest

from cntr.engines import bolt, podman
from cntr.engines.base import EngineError
from tests.unit.test_engines_parse import DATA, fake_tool

PAGE = 4096


def recorded() -> list[tuple[str, str]]:
    lines = (DATA / "podman-bolt_state.ps.txt").read_text().split("\n")
    return [(line.split()[0], line.split()[1]) for line in lines if line]


@pytest.fixture
def db(tmp_path: Path) -> Path:
    path = tmp_path / "bolt_state.db"
    path.write_bytes(gzip.decompress((DATA / "podman-bolt_state.db.gz").read_bytes()))
    return path


def test_bucket_keys_are_what_podman_listed(db: Path) -> None:
    ctrs, names, pods, missing = bolt.read_bucket_keys(
        str(db), (b"ctr",), (b"name-registry",), (b"pod",), (b"no-such-bucket",))
    containers = recorded()
    pod_id, pod_name = (DATA / "podman-bolt_state.pods.txt").read_text().split()
    assert ctrs == sorted(cid.encode() for cid, _ in containers)
    assert names == sorted([name.encode() for _, name in containers] + [pod_name.encode()])
    assert pods == [pod_id.encode()]
    assert missing is None


def test_nested_and_inline_buckets(db: Path) -> None:
    cid = recorded()[0][0].encode()
    (keys,) = bolt.read_bucket_keys(str(db), (b"ctr", cid))
    assert keys is not None and b"config" in keys and b"state" in keys
    (config,) = bolt.read_bucket_keys(str(db), (b"runtime-config",))  # an inline bucket
    assert config is not None and b"graph-root" in config


def test_lookup_answers_like_podman(db: Path) -> None:
    cid, name = recorded()[0]
    assert podman.known_to_db(name, str(db))
    assert podman.known_to_db(cid, str(db))
    assert podman.known_to_db(cid[:3], str(db))
    assert podman.known_to_db("pod1", str(db))  # podman tells a pod from a container
    assert not podman.known_to_db("cntr-test-docker", str(db))
    assert not podman.known_to_db(cid + "0", str(db))
    assert not podman.known_to_db("web2", str(db))


def test_the_engine_does_not_ask_podman_about_a_name_it_lacks(
        db: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    bindir = tmp_path / "bin"
    fake_tool(bindir, "podman", {"*": (125, "", "Error: podman must not run")})
    monkeypatch.setenv("PATH", str(bindir))
    eng = podman.PodmanEngine(socket_path=str(tmp_path / "none.sock"), proc="/nonexistent",
                              db=str(db))
    assert eng.lookup("cntr-test-docker") == []
    assert eng.reason == "no such container"
    # a name the database has goes to podman, which answers (here: fails)
    with pytest.raises(EngineError, match="podman: podman must not run"):
        eng.lookup("web")


def test_podman_not_installed_is_said_before_the_database(db: Path, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    eng = podman.PodmanEngine(socket_path=str(tmp_path / "none.sock"), proc="/nonexistent",
                              db=str(db))
    assert eng.lookup("cntr-test-docker") == []
    assert eng.reason == "not installed"


def test_a_writer_holding_the_lock_sends_the_lookup_to_podman(db: Path) -> None:
    fd = os.open(db, os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # what bbolt does while podman has it open
        with pytest.raises(bolt.BoltBusy):
            bolt.read_bucket_keys(str(db), (b"ctr",))
        assert podman.known_to_db("cntr-test-docker", str(db))
    finally:
        os.close(fd)


def _damage(db: Path, offset: int, data: bytes) -> None:
    raw = bytearray(db.read_bytes())
    raw[offset:offset + len(data)] = data
    db.write_bytes(bytes(raw))


@pytest.mark.parametrize("damage", ["checksums", "magic", "root", "page-id", "truncated",
                                    "element", "loop"])
def test_a_damaged_database_is_not_read(db: Path, damage: str) -> None:
    raw = db.read_bytes()
    if damage == "checksums":
        for i in (0, 1):
            _damage(db, PAGE * i + 16 + 56, b"\0" * 8)
    elif damage == "magic":
        for i in (0, 1):
            _damage(db, PAGE * i + 16, b"\0\0\0\0")
    elif damage == "root":  # a valid meta page pointing past the file
        for i in (0, 1):
            body = bytearray(raw[PAGE * i + 16:PAGE * i + 16 + 64])
            body[16:24] = struct.pack("<Q", 10**6)
            body[56:64] = struct.pack("<Q", bolt.fnv1a64(bytes(body[:56])))
            _damage(db, PAGE * i + 16, bytes(body))
    elif damage == "truncated":
        db.write_bytes(raw[:PAGE * 8])
    else:
        # the root page each meta page names (after the page header, magic, version,
        # page size and flags)
        for r in {struct.unpack_from("<Q", raw, PAGE * i + 32)[0] for i in (0, 1)}:
            at = PAGE * r
            if damage == "page-id":
                _damage(db, at, struct.pack("<Q", r + 1))
            elif damage == "element":  # the first key points past its page
                _damage(db, at + 16 + 4, struct.pack("<I", PAGE * 2))
            else:  # a branch page whose first child is itself
                _damage(db, at + 8, struct.pack("<H", bolt.BRANCH))
                _damage(db, at + 16 + 8, struct.pack("<Q", r))
    with pytest.raises(bolt.BoltError):
        bolt.read_bucket_keys(str(db), (b"ctr",), (b"name-registry",))
    assert podman.known_to_db("cntr-test-docker", str(db))  # podman is asked instead


def test_fnv1a64_is_gos() -> None:
    # hash/fnv's New64a of "" and "a" (the FNV reference values)
    assert bolt.fnv1a64(b"") == 0xCBF29CE484222325
    assert bolt.fnv1a64(b"a") == 0xAF63DC4C8601EC8C


def test_db_path_follows_storage_conf(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 0)  # root's database; unit tests need none
    storage = tmp_path / "storage.conf"
    containers = tmp_path / "containers.conf"
    monkeypatch.setattr(podman, "STORAGE_CONFS", (str(storage),))
    monkeypatch.setattr(podman, "CONTAINERS_CONFS", (str(containers),))
    monkeypatch.setattr(podman, "CONTAINERS_CONF_DIR", str(tmp_path / "containers.conf.d"))
    variables = ("CONTAINERS_CONF", "CONTAINERS_STORAGE_CONF", "CONTAINERS_CONF_OVERRIDE",
                 "CONTAINER_HOST", "CONTAINER_CONNECTION", "CNTR_HOST_ROOT")
    for var in variables:
        monkeypatch.delenv(var, raising=False)
    assert podman.db_path() == "/var/lib/containers/storage/libpod/bolt_state.db"
    storage.write_text('[storage]\ndriver = "overlay"\n# graphroot = "/x"\n'
                       'graphroot = "/srv/podman" # moved\n')
    assert podman.db_path() == "/srv/podman/libpod/bolt_state.db"
    storage.write_text('[storage]\ngraphroot = "/srv/\\u0070odman"\n')  # escapes: podman decides
    assert podman.db_path() is None
    storage.write_text('[storage]\ndriver = "overlay"\n')
    assert podman.db_path() == "/var/lib/containers/storage/libpod/bolt_state.db"
    containers.write_text('[engine]\n#static_dir = "/x"\n')
    assert podman.db_path() == "/var/lib/containers/storage/libpod/bolt_state.db"
    containers.write_text('[engine]\nstatic_dir = "/x"\n')
    assert podman.db_path() is None
    containers.write_text("")
    dropin = tmp_path / "containers.conf.d" / "db.conf"
    dropin.parent.mkdir()
    dropin.write_text('[engine]\ndatabase_backend = "sqlite"\n')
    assert podman.db_path() is None
    dropin.unlink()
    (tmp_path / "libpod").mkdir()
    (tmp_path / "libpod" / "db.sql").touch()  # podman >= 4.8 may use SQLite instead
    storage.write_text(f'graphroot = "{tmp_path}"\n')
    assert podman.db_path() is None
    storage.write_text("")
    containers.write_text("[engine]\nremote = true\n")  # podman is a client: its service says
    assert podman.db_path() is None
    containers.write_text("")
    assert podman.db_path() is not None
    for var in variables:
        monkeypatch.setenv(var, "unix:///elsewhere.sock")
        assert podman.db_path() is None
        monkeypatch.delenv(var)
