"""Engine parsers and lookups fed recorded real output; no privileges, no engine needed.

The files in data/engines/ were recorded on Debian 12 from dockerd 20.10, podman 4.3,
containerd 1.6 (ctr), LXC 5, LXD 5.0 and systemd-nspawn 252 running the test containers of
scripts/engines.  The rkt sample is NOT recorded (rkt runs nowhere here): it is written from
rkt's documented `rkt status` output format, see data/engines/rkt-status.txt.

API sockets are faked by a small HTTP server on a unix socket in tmp_path that replays the
recorded bodies; /proc is faked by a directory tree of stat and cmdline files.
"""

from __future__ import annotations

import http.server
import json
import os
import socket
import socketserver
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from cntr import engines
from cntr.engines import base, command, containerd, docker, lxc, lxd, nspawn, podman, rkt
from cntr.engines.base import EngineError, Match, NotRunning
from cntr.engines.process_id import ProcessIdEngine
from cntr.errors import Ambiguous, NotFound

DATA = Path(__file__).parent / "data" / "engines"


def data(name: str) -> str:
    return (DATA / name).read_text()


def data_json(name: str) -> object:
    return json.loads(data(name))


# --------------------------------------------------------------------------- fakes


Routes = dict[str, tuple[int, str]]


class _Handler(http.server.BaseHTTPRequestHandler):
    routes: ClassVar[Routes] = {}
    delay = 0.0
    protocol_version = "HTTP/1.1"

    def do_GET(self) -> None:
        if self.delay:
            time.sleep(self.delay)
        status, body = self.routes.get(self.path, (404, '{"message":"No such container"}'))
        raw = body.encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(raw)))
        self.end_headers()
        self.wfile.write(raw)

    def log_message(self, format: str, *args: object) -> None:
        pass

    def address_string(self) -> str:
        return "unix"


class _Server(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@pytest.fixture
def api_server(tmp_path: Path) -> Iterator[Callable[..., str]]:
    """Start a fake engine API on a unix socket: serve(routes, delay=0) -> socket path."""
    servers: list[_Server] = []

    def serve(routes: Routes, delay: float = 0.0) -> str:
        path = str(tmp_path / f"api{len(servers)}.sock")
        handler = type("H", (_Handler,), {"routes": routes, "delay": delay})
        server = _Server(path, handler)
        servers.append(server)
        threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.05}).start()
        return path

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def fake_proc(root: Path, pid: int, comm: str, argv: list[str], *, ppid: int = 1,
              state: str = "S", start: int = 100) -> None:
    """One process in a fake /proc tree (stat fields per proc(5))."""
    d = root / str(pid)
    d.mkdir(parents=True, exist_ok=True)
    rest = ["0"] * 17 + [str(start)] + ["0"] * 10
    (d / "stat").write_text(f"{pid} ({comm}) {state} {ppid} {' '.join(rest)}\n")
    (d / "cmdline").write_bytes(b"".join(a.encode() + b"\0" for a in argv))


@pytest.fixture
def no_tools(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No engine CLI on PATH."""
    empty = tmp_path / "empty-bin"
    empty.mkdir()
    monkeypatch.setenv("PATH", str(empty))


# --------------------------------------------------------------------------- docker


def test_docker_parse_api_inspect() -> None:
    m = docker.parse_inspect(data_json("docker-api-inspect.json"), "docker")
    assert m.engine == "docker"
    assert m.name == "cntr-test-docker"  # the API's "/cntr-test-docker" without its slash
    assert len(m.container_id) == 64
    assert m.pid > 0


def test_docker_parse_cli_inspect_matches_api() -> None:
    (m,) = docker.parse_inspect_list(data("docker-cli-inspect.json"), "docker")
    assert m == docker.parse_inspect(data_json("docker-api-inspect.json"), "docker")


def test_docker_stopped_is_not_running() -> None:
    with pytest.raises(NotRunning, match="'cntr-stopped-docker' is not running"):
        docker.parse_inspect_list(data("docker-cli-inspect-stopped.json"), "docker")


def test_docker_messages() -> None:
    assert docker.is_no_such(data("docker-cli-no-such.txt"))
    assert docker.is_no_such(base.api_message(data_json("docker-api-404.json")))
    assert docker.is_ambiguous(base.api_message(data_json("docker-api-ambiguous.json")))
    assert docker.is_ambiguous(data("docker-cli-ambiguous.txt"))
    assert not docker.is_ambiguous(data("docker-cli-no-such.txt"))


def test_docker_parse_rejects_garbage() -> None:
    with pytest.raises(EngineError, match="expected"):
        docker.parse_inspect({"foo": 1}, "docker")
    with pytest.raises(EngineError, match="no JSON"):
        docker.parse_inspect_list("Cannot connect", "docker")


def test_socket_from_host() -> None:
    assert docker.socket_from_host(None, "/d.sock") == "/d.sock"
    assert docker.socket_from_host("unix:///x/y.sock", "/d.sock") == "/x/y.sock"
    assert docker.socket_from_host("tcp://1.2.3.4:2375", "/d.sock") is None


def _docker_routes() -> Routes:
    inspect = data("docker-api-inspect.json")
    obj = json.loads(inspect)
    return {
        "/containers/cntr-test-docker/json": (200, inspect),
        f"/containers/{obj['Id']}/json": (200, inspect),
        "/containers/d/json": (500, data("docker-api-ambiguous.json")),
        "/containers/json?all=1": (200, data("docker-api-list-all.json")),
        "/containers/json": (200, data("docker-api-list.json")),
    }


def test_docker_lookup_through_api(api_server: Callable[..., str], no_tools: None) -> None:
    eng = docker.DockerEngine(socket_path=api_server(_docker_routes()))
    (m,) = eng.lookup("cntr-test-docker")
    assert m.name == "cntr-test-docker" and m.pid > 0
    assert eng.lookup("nope") == [] and eng.reason == "no such container"


def test_docker_lookup_ambiguous_prefix_lists_candidates(
    api_server: Callable[..., str], no_tools: None
) -> None:
    found = docker.DockerEngine(socket_path=api_server(_docker_routes())).lookup("d")
    assert len(found) >= 2
    assert all(m.container_id.startswith("d") for m in found)


def test_docker_list_through_api(api_server: Callable[..., str], no_tools: None) -> None:
    (m,) = docker.DockerEngine(socket_path=api_server(_docker_routes())).list()
    assert m.name == "cntr-test-docker"


def test_docker_hanging_api_fails_fast(api_server: Callable[..., str], no_tools: None) -> None:
    eng = docker.DockerEngine(socket_path=api_server(_docker_routes(), delay=3), timeout=0.3)
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="timed out"):
        eng.lookup("cntr-test-docker")
    assert time.monotonic() - t0 < 2


def test_docker_not_installed(tmp_path: Path, no_tools: None) -> None:
    eng = docker.DockerEngine(socket_path=str(tmp_path / "absent.sock"))
    assert eng.lookup("x") == []
    assert eng.reason == "not installed"


def test_docker_dead_socket_is_an_error(tmp_path: Path, no_tools: None) -> None:
    path = str(tmp_path / "dead.sock")
    s = socket.socket(socket.AF_UNIX)
    s.bind(path)  # bound, never listening: ECONNREFUSED, as after a crash of dockerd
    try:
        with pytest.raises(EngineError, match="refused"):
            docker.DockerEngine(socket_path=path).lookup("x")
    finally:
        s.close()


# --------------------------------------------------------------------------- podman


def test_podman_parse_cli_and_api_agree() -> None:
    (cli,) = docker.parse_inspect_list(data("podman-cli-inspect.json"), "podman")
    api = docker.parse_inspect(data_json("podman-api-inspect.json"), "podman")
    assert cli == api
    assert cli.name == "cntr-test-podman" and cli.pid > 0


def test_podman_stopped_and_missing() -> None:
    with pytest.raises(NotRunning, match="'cntr-stopped' is not running"):
        docker.parse_inspect_list(data("podman-cli-inspect-stopped.json"), "podman")
    assert docker.is_no_such(data("podman-cli-no-such.txt"))
    assert docker.is_no_such(base.api_message(data_json("podman-api-404.json")))


def test_conmon_cmdline() -> None:
    argv = data("podman-conmon.cmdline").split("\0")[:-1]
    c = podman.parse_conmon(77, argv, 1000)
    assert c is not None
    (m,) = docker.parse_inspect_list(data("podman-cli-inspect.json"), "podman")
    assert (c.cid, c.name, c.uid) == (m.container_id, "cntr-test-podman", 1000)
    assert c.pidfile.endswith("/userdata/pidfile")
    assert podman.parse_conmon(1, ["conmon", "--version"], 0) is None


def test_conmon_scan_finds_rootless_container(tmp_path: Path, no_tools: None) -> None:
    proc = tmp_path / "proc"
    argv = data("podman-conmon.cmdline").split("\0")[:-1]
    cid = base.option_value(argv, "-c")
    assert cid
    fake_proc(proc, 500, "conmon", argv)
    fake_proc(proc, 501, "sleep", ["/bin/sleep", "100000"], ppid=500)
    eng = podman.PodmanEngine(socket_path=str(tmp_path / "none.sock"), proc=str(proc))
    # the recorded pidfile is absent here: conmon's child is the container
    assert eng.lookup("cntr-test-podman") == [Match("podman", cid, "cntr-test-podman", 501)]
    assert eng.lookup(cid[:5]) == [Match("podman", cid, "cntr-test-podman", 501)]
    assert eng.lookup("other") == []
    assert eng.reason == "not installed"
    assert eng.list() == [Match("podman", cid, "cntr-test-podman", 501)]


def test_podman_lookup_through_api(api_server: Callable[..., str], no_tools: None) -> None:
    body = data("podman-api-inspect.json")
    sock = api_server({"/containers/cntr-test-podman/json": (200, body)})
    (m,) = podman.PodmanEngine(socket_path=sock, proc="/nonexistent").lookup("cntr-test-podman")
    assert m.engine == "podman" and m.name == "cntr-test-podman"


# --------------------------------------------------------------------------- helpers


def test_option_value_forms() -> None:
    argv = ["x", "-n", "a", "--name=b", "-Mc", "--machine", "d"]
    assert base.option_value(argv[:3], "-n", "--name") == "a"
    assert base.option_value(argv, "-n", "--name") == "b"
    assert base.option_value(argv[:5], "-M", "--machine") == "c"
    assert base.option_value(argv, "-M", "--machine") == "d"
    assert base.option_value(argv, "-q") is None


def test_run_tool_timeout_kills_fast() -> None:
    t0 = time.monotonic()
    with pytest.raises(EngineError, match="no answer within"):
        base.run_tool(["sh", "-c", "sleep 30 & sleep 30"], timeout=0.3)
    assert time.monotonic() - t0 < 3
    assert base.run_tool(["cntr-no-such-tool-xyz"]) is None


def test_read_stat_with_odd_comm(tmp_path: Path) -> None:
    fake_proc(tmp_path, 9, "a) (b", ["x"], ppid=4, state="Z", start=7)
    st = base.read_stat(9, str(tmp_path))
    assert st is not None
    assert (st.comm, st.state, st.ppid, st.starttime) == ("a) (b", "Z", 4, 7)
    assert not base.alive(9, str(tmp_path))


# --------------------------------------------------------------------------- process_id, command


def test_process_id(tmp_path: Path) -> None:
    fake_proc(tmp_path, 42, "sleep", ["sleep", "1"])
    fake_proc(tmp_path, 43, "dead", [], state="Z")
    pe = ProcessIdEngine(proc=str(tmp_path))
    assert pe.lookup("42") == [Match("process_id", "42", "sleep", 42)]
    assert pe.lookup("43") == [] and pe.reason == "process is a zombie"
    assert pe.lookup("44") == [] and pe.reason == "no such process"
    assert pe.lookup("abc") == [] and pe.reason == "not a pid"
    assert pe.lookup("٣") == []  # a unicode digit is not a pid


def test_process_id_live() -> None:
    (m,) = ProcessIdEngine().lookup(str(os.getpid()))
    assert m.pid == os.getpid()


def test_command_oldest_and_not_self(tmp_path: Path) -> None:
    fake_proc(tmp_path, 10, "sleep", ["sleep", "1000"], start=50)
    fake_proc(tmp_path, 11, "sleep", ["sleep", "1000"], start=20)
    fake_proc(tmp_path, 12, "sleep", ["sleep", "1000"], state="Z", start=1)
    fake_proc(tmp_path, 30, "bash", ["bash", "-c", "cntr attach 'sleep 1000'"], start=5)
    fake_proc(tmp_path, 31, "cntr", ["cntr", "attach", "sleep 1000"], ppid=30, start=6)
    eng = command.CommandEngine(proc=str(tmp_path), self_pid=31)
    assert eng.lookup("sleep 1000") == [Match("command", "11", "sleep", 11)]
    assert eng.lookup("nothing-like-it") == []


# --------------------------------------------------------------------------- types and resolve


def test_parse_types() -> None:
    assert engines.parse_types("docker, podman") == ["docker", "podman"]
    assert engines.parse_types("process-id,docker,docker") == ["process_id", "docker"]
    assert engines.parse_types("k8s") == ["kubernetes"]
    with pytest.raises(ValueError, match="'dokker'"):
        engines.parse_types("docker,dokker")
    with pytest.raises(ValueError):
        engines.parse_types(" , ")


def test_default_order() -> None:
    assert engines.TYPES == [
        "process_id", "docker", "podman", "lxc", "lxd", "nspawn", "containerd", "kubernetes", "rkt",
    ]
    assert "command" in engines.ENGINES and "command" not in engines.TYPES


class FakeEngine(base.BaseEngine):
    def __init__(self, name: str, found: list[Match], reason: str = "no such container",
                 error: Exception | None = None) -> None:
        super().__init__()
        self.name, self.found, self.why, self.error = name, found, reason, error

    def lookup(self, ident: str) -> list[Match]:
        if self.error:
            raise self.error
        return self.found if self.found else self._none(self.why)

    def list(self) -> list[Match]:
        return self.found


@pytest.fixture
def fake_engines(monkeypatch: pytest.MonkeyPatch) -> Callable[..., None]:
    def install(**spec: FakeEngine) -> None:
        table = {t: (lambda t=t: spec.get(t) or FakeEngine(t, [])) for t in engines.ENGINES}
        monkeypatch.setattr(engines, "ENGINES", table)

    return install


def test_resolve_pid_first(fake_engines: Callable[..., None]) -> None:
    pid = Match("process_id", "12", "sleep", 12)
    fake_engines(process_id=FakeEngine("process_id", [pid]),
                 docker=FakeEngine("docker", [Match("docker", "12ab", "x", 99)]))
    assert engines.resolve("12") == pid
    assert engines.resolve("12", ["docker"]).engine == "docker"


def test_resolve_same_process_twice_is_one(fake_engines: Callable[..., None]) -> None:
    d = Match("docker", "abc", "web", 7)
    fake_engines(docker=FakeEngine("docker", [d]),
                 containerd=FakeEngine("containerd", [Match("containerd", "abc", "abc", 7)]))
    assert engines.resolve("abc") == d


def test_resolve_ambiguous(fake_engines: Callable[..., None]) -> None:
    fake_engines(docker=FakeEngine("docker", [Match("docker", "a1", "web", 7)]),
                 podman=FakeEngine("podman", [Match("podman", "b2", "web", 8)]))
    with pytest.raises(Ambiguous, match=r"docker:web.*podman:web"):
        engines.resolve("web")
    assert engines.resolve("web", ["podman"]).pid == 8


def test_resolve_not_found_says_what_each_answered(fake_engines: Callable[..., None]) -> None:
    fake_engines(podman=FakeEngine("podman", [], reason="not installed"),
                 lxd=FakeEngine("lxd", [], error=EngineError("lxd: /x.sock: timed out")),
                 rkt=FakeEngine("rkt", [], error=RuntimeError("bug")))
    with pytest.raises(NotFound) as info:
        engines.resolve("foo")
    msg = str(info.value)
    assert msg.startswith("no container 'foo': docker: no such container; podman: not installed")
    assert "lxd: /x.sock: timed out" in msg and "rkt: internal error" in msg
    assert "process_id" not in msg  # "not a pid" is noise for a non-numeric name
    assert "\n" not in msg


def test_resolve_k8s_goes_to_kubernetes_only(fake_engines: Callable[..., None]) -> None:
    k = Match("kubernetes", "c1", "default/pod/main", 5)
    fake_engines(kubernetes=FakeEngine("kubernetes", [k]),
                 docker=FakeEngine("docker", [Match("docker", "x", "y", 6)]))
    assert engines.resolve("k8s:pod") == k
    with pytest.raises(NotFound, match="kubernetes type"):
        engines.resolve("k8s:pod", ["docker"])


def test_list_all_dedups(fake_engines: Callable[..., None]) -> None:
    d = Match("docker", "abc", "web", 7)
    fake_engines(docker=FakeEngine("docker", [d]),
                 containerd=FakeEngine("containerd", [Match("containerd", "abc", "abc", 7)]),
                 lxc=FakeEngine("lxc", [Match("lxc", "u", "u", 9)]))
    assert engines.list_all() == [d, Match("lxc", "u", "u", 9)]


_ = (containerd, lxc, lxd, nspawn, rkt)  # their tests follow below
