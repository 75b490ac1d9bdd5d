"""The command's PATH search (`cntr.session.reaper.execute`) gives os.execvpe's result,
the supervisor's look-up in the host's tree (``host_exec_path``) finds what that search
would, or declines, and ``exec_prefetch`` names what an execve looks up (the file, its ELF
interpreter, the loader's cache).

Each case runs in a forked child, once through os.execvpe and once through ``execute``
(with and without the supervisor's answer tried first): the program that ran (it prints
its own path) or the errno of the failure must be the same.  Needs no privileges.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import pytest

from cntr.session.reaper import execute
from cntr.session.supervisor import exec_prefetch, host_exec_path

PROG = "cntr-test-prog"


def outcome(run: Callable[[], None]) -> str:
    """What ``run`` (an exec) did in a forked child: the output of the program it ran,
    or ``errno N``."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child execs or exits
        try:
            os.close(r)
            os.dup2(w, 1)
            run()
        except OSError as exc:
            os.write(w, f"errno {exc.errno}".encode())
        finally:
            os._exit(0)
    os.close(w)
    with os.fdopen(r, "rb") as f:
        out = f.read().decode()
    os.waitpid(pid, 0)
    return out


def tree(tmp_path: Path, layout: dict[str, str]) -> list[str]:
    """Directories ``d0``, ``d1``, ... under ``tmp_path``, in PATH order: each holds PROG
    as ``layout`` says (``exec``: a script printing its path, ``plain``: a file without
    an execute bit, ``dir``: a directory, ``none``: nothing)."""
    entries = []
    for i, kind in enumerate(layout.values()):
        d = tmp_path / f"d{i}"
        d.mkdir()
        p = d / PROG
        if kind == "exec":
            p.write_text(f"#!/bin/sh\necho -n {p}\n")
            p.chmod(0o755)
        elif kind == "plain":
            p.write_text("#!/bin/sh\n")
            p.chmod(0o644)
        elif kind == "dir":
            p.mkdir()
        entries.append(str(d))
    return entries


LAYOUTS = {
    "first": {"a": "exec", "b": "exec"},
    "after missing": {"a": "none", "b": "none", "c": "exec"},
    "after a plain file": {"a": "plain", "b": "exec"},
    "after a directory": {"a": "dir", "b": "exec"},
    "nowhere": {"a": "none", "b": "none"},
    "only a plain file": {"a": "none", "b": "plain", "c": "none"},
}


@pytest.mark.parametrize("name", LAYOUTS)
def test_execute_is_execvpe(tmp_path: Path, name: str) -> None:
    entries = tree(tmp_path, LAYOUTS[name])
    env = {"PATH": ":".join([str(tmp_path / "absent"), *entries])}
    argv = [PROG]
    expected = outcome(lambda: os.execvpe(PROG, argv, env))
    found = host_exec_path(argv, env, [])
    assert outcome(lambda: execute(argv, env, None)) == expected
    assert outcome(lambda: execute(argv, env, found)) == expected
    if expected.startswith("errno"):
        assert found is None
    else:
        assert found == expected


def test_execute_falls_back_when_the_answer_does_not_run(tmp_path: Path) -> None:
    entries = tree(tmp_path, {"a": "plain", "b": "exec"})
    env = {"PATH": ":".join(entries)}
    assert outcome(lambda: execute([PROG], env, f"{entries[0]}/{PROG}")) == \
        f"{entries[1]}/{PROG}"


def test_a_path_is_not_searched(tmp_path: Path) -> None:
    entries = tree(tmp_path, {"a": "exec"})
    env = {"PATH": "/nonexistent"}
    argv = [f"{entries[0]}/{PROG}"]
    assert outcome(lambda: execute(argv, env, None)) == argv[0]
    assert host_exec_path(argv, env, []) is None
    assert outcome(lambda: execute(["./nothing-here"], env, None)) == "errno 2"


def test_without_path_the_default_path(tmp_path: Path) -> None:
    assert host_exec_path(["sh"], {}, []) == next(
        f"{d}/sh" for d in os.defpath.split(":") if os.path.exists(f"{d}/sh"))


def test_undecidable_on_the_host(tmp_path: Path) -> None:
    entries = tree(tmp_path, {"a": "none", "b": "exec"})
    env = {"PATH": ":".join(entries)}
    assert host_exec_path([PROG], env, []) == f"{entries[1]}/{PROG}"
    # A relative entry before it: the session's working directory decides.
    assert host_exec_path([PROG], {"PATH": f"rel:{env['PATH']}"}, []) is None
    # An entry at or below a mount of the session's own (the container's /proc, ...).
    assert host_exec_path([PROG], env, [entries[0]]) is None
    assert host_exec_path([PROG], env, [str(tmp_path)]) is None
    assert host_exec_path([PROG], env, [f"{entries[1]}/{PROG}"]) is None
    # ... also when a symbolic link leads there.
    link = tmp_path / "link"
    link.symlink_to(entries[1])
    assert host_exec_path([PROG], {"PATH": str(link)}, [entries[1]]) is None
    assert host_exec_path([PROG], {"PATH": str(link)}, []) == f"{link}/{PROG}"
    # A mount elsewhere does not matter.
    assert host_exec_path([PROG], env, ["/proc", f"{tmp_path}x"]) == f"{entries[1]}/{PROG}"


def test_what_an_execve_looks_up_ahead(tmp_path: Path) -> None:
    # Debian 12 on x86_64, the machine kind the suite runs on: /bin/true is dynamic.
    assert exec_prefetch("/bin/true") == ("/bin/true", "/lib64/ld-linux-x86-64.so.2",
                                          "/etc/ld.so.cache")
    script = tmp_path / "script"
    script.write_text("#!/bin/sh\n")
    static = next(p for p in ("/bin/busybox", "/usr/bin/busybox") if os.path.exists(p))
    for path in (str(script), static, str(tmp_path / "absent"), str(tmp_path), None):
        assert exec_prefetch(path) == ()


def test_a_path_below_a_mount_of_the_session_as_written_or_resolved(tmp_path: Path) -> None:
    from cntr.session.supervisor import below

    (tmp_path / "proc").mkdir()
    (tmp_path / "bin").symlink_to(tmp_path / "proc")
    mounts = [str(tmp_path / "dev"), str(tmp_path / "proc")]
    assert below(str(tmp_path / "proc" / "x"), mounts)
    assert below(str(tmp_path / "bin" / "x"), mounts)  # only once its link is resolved
    assert below(str(tmp_path / "dev"), mounts)
    assert not below(str(tmp_path / "device"), mounts)
    assert not below(str(tmp_path / "sys" / "x"), mounts)
    # A search in a PATH whose entry leads into one: decided in the session, not here.
    (tmp_path / "proc" / PROG).write_text("#!/bin/sh\n")
    (tmp_path / "proc" / PROG).chmod(0o755)
    assert host_exec_path([PROG], {"PATH": str(tmp_path / "bin")}, mounts) is None
