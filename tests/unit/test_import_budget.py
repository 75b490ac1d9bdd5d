"""The import budget of ``cntr attach``: what the plain attach path may not import.

Several modules carry hand-written stand-ins whose only reason is start-up time:
``TYPE_CHECKING = False`` instead of importing typing (~9 ms), ``cntr.record`` instead of
dataclasses (which imports inspect, ast, dis, ...), plain threads instead of
concurrent.futures (~5 ms), a few lines of HTTP over a unix socket instead of http.client
(~16 ms) and urllib.parse/ipaddress (~5 ms), the C module _socket instead of socket
(~3 ms), _signal instead of signal and cntr.cjson instead of json (with re and enum,
~6 ms), a console script without site and re (scripts/setup's, ~7 ms), an attach that
runs without click (~30 ms), cntr.errors.suppress instead of contextlib and _thread's locks
instead of threading's (with the collections and functools they import, ~6 ms; an attach
by pid imports none of them, nor termios and tty without a terminal),
and a serve-fs whose default session imports neither pyfuse3 nor trio.  These tests are
what holds them to it: they name the modules the attach process must never load, and
bound how many modules it loads at all.  Both are properties of the code, not timings:
nothing here measures a clock.

Three views of it:
- the console entry ``cntr.entry.main`` run on ``attach ID -- true`` up to the point it
  would act (``check_host``, the first thing ``cntr.stages.attach.attach`` does), in a fresh
  interpreter, with serve-fs's prestart turned off (it forks; its imports are its own
  process's): needs no privileges;
- a real ``cntr attach ID -- true`` into the demo and the docker test container, with
  ``PYTHONPROFILEIMPORTTIME=1``: every module the attach process and the setup child
  import on the way, including the lazy imports of resolve, capture and enter (none but
  the engines resolve asks may be imported after cntr.stages.attach).  serve-fs
  sends its stderr to /dev/null before its imports, so its pyfuse3 is not counted;
- serve-fs's own imports (its log, ``CNTR_SERVE_FS_LOG``, gets its report): never
  pyfuse3 or trio, nor logging, typing or signal, and few modules outside cntr.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import REPO, Container

FORBIDDEN = frozenset({
    "typing",                 # TYPE_CHECKING = False in cntr's modules
    "dataclasses", "inspect",  # cntr.record
    "concurrent.futures",     # cntr.engines.base.in_threads
    "urllib.parse", "ipaddress",  # cntr.engines.base's unix-socket HTTP
    "http.client",            # idem
    "socket", "selectors",    # _socket in cntr.engines.base and cntr.audit
    "json", "re", "enum",     # cntr.cjson; json imports re, and re enum
    "signal",                 # _signal in the session's modules (signal imports enum)
    "site",                   # scripts/setup's console script runs with python -S
    "importlib.metadata",     # pyfuse3's (the libfuse session's) only
    "click",                  # cntr.entry's plain attach
    "trio", "pyfuse3",        # serve-fs's own process only
    "cntr.cli", "cntr.stages.serve_fs", "cntr.fs",
})
"""Modules (and packages: their submodules too) the attach process never imports."""

NOT_BY_PID = frozenset({
    "contextlib", "functools", "collections",  # cntr.errors.suppress; with their imports,
    "threading",  # ~4 ms of CPU; engines.base.in_threads imports it where threads run
    "termios", "tty", "fcntl",  # cntr.linux.pty: with a pty only; fresh: offline only
})
"""Modules an attach by pid with no terminal (and the entry, up to its first act) never
imports; an attach by name imports fcntl (podman's database lock) and, when its engines
are slow, threading."""

MAX_STDLIB_MODULES = 35
"""Modules outside cntr that the entry may add to a bare interpreter's on the
way to attaching (28 when this was written, 44 before cntr.cjson and _signal): a new
dependency of the attach path must fit here or raise this on purpose."""

MAX_RUN_STDLIB_MODULES = 58
"""Distinct modules outside cntr that a whole ``cntr attach ID -- true`` imports, the
interpreter's own start-up included (49 when this was written, by name through docker
and by pid; 75 with pip's console script, json and signal; cntr's own modules are not
counted, so splitting one is free)."""

PROBE = """
import os, sys
before = set(sys.modules)
from cntr import launch

def stop():
    sys.stdout.write("\\n".join(sorted(set(sys.modules) - before)) + "\\n")
    sys.stdout.flush()
    os._exit(0)

launch.prestart = lambda: None  # forks serve-fs: its imports are another process's
launch.check_host = stop  # cntr.stages.attach.attach's first call, bound when it is imported
sys.argv = ["cntr", "attach", "cntr-import-budget", "--", "true"]
from cntr.entry import main
main()
sys.exit("the entry returned without reaching cntr.stages.attach.attach")
"""


def forbidden(modules: set[str]) -> list[str]:
    """The modules of ``modules`` that FORBIDDEN names, or that belong to a package it
    names."""
    return sorted(m for m in modules
                  if any(m == f or m.startswith(f + ".") for f in FORBIDDEN))


def entry_modules() -> set[str]:
    out = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    return set(out.stdout.split())


def test_attach_entry_imports_nothing_forbidden() -> None:
    modules = entry_modules()
    assert {"cntr.entry", "cntr.stages.attach", "cntr.stages.enter", "cntr.stages.resolve",
            "cntr.stages.capture"} <= modules
    assert forbidden(modules) == []
    assert sorted(modules & NOT_BY_PID) == []


def test_attach_entry_stays_within_its_module_count() -> None:
    modules = entry_modules()
    stdlib = sorted(m for m in modules if m.split(".")[0] != "cntr")
    assert len(stdlib) <= MAX_STDLIB_MODULES, stdlib


GC_PROBE = """
import gc, os, sys
from cntr import launch

def stop():
    print(gc.isenabled())
    import cntr.stages.attach
    cntr.stages.attach._collect_again()  # what attach does before enter
    print(gc.isenabled(), gc.get_freeze_count() > 0)
    os._exit(0)

launch.prestart = lambda: None
launch.check_host = stop
sys.argv = ["cntr", "attach", "cntr-import-budget", "--", "true"]
from cntr.entry import main
main()
"""


def test_attach_starts_without_garbage_collection_and_enters_with_it() -> None:
    out = subprocess.run([sys.executable, "-c", GC_PROBE], capture_output=True, text=True,
                         cwd=REPO, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True", "True"]


def test_forbidden_matches_packages_and_their_submodules() -> None:
    assert forbidden({"typing", "trio._core", "urllib", "cntr.errors", "clickhouse"}) == [
        "trio._core", "typing"]


def imported_tree(report: str) -> list[tuple[str, int]]:
    """The modules of a ``-X importtime`` report, in order, each with its depth (0: imported
    by the program itself, 1: by a module of depth 0, ...); a module comes after those
    it imported."""
    out = []
    for line in report.splitlines():
        # import time: self [us] | cumulative | imported package
        if line.startswith("import time:") and line.count("|") == 2:
            field = line.rsplit("|", 1)[1]
            name = field.strip()
            if name != "imported package":
                out.append((name, (len(field) - len(field.lstrip()) - 1) // 2))
    return out


def imported(report: str) -> list[str]:
    """The module names of a ``-X importtime`` report, in order."""
    return [name for name, _ in imported_tree(report)]


def outside_engines(tree: list[tuple[str, int]]) -> list[str]:
    """The modules of ``tree`` (`imported_tree`) that are neither an engine module
    (``cntr.engines.*``) nor imported, directly or not, by one, in order."""
    out = []
    above: list[tuple[str, int]] = []  # the modules this one was imported by
    for name, depth in reversed(tree):
        while above and above[-1][1] >= depth:
            above.pop()
        if not any(m.startswith("cntr.engines.") for m, _ in [*above, (name, depth)]):
            out.append(name)
        above.append((name, depth))
    return out[::-1]


def run_imports(ident: str, serve_fs_log: Path | None = None) -> list[tuple[str, int]]:
    """The modules a real ``cntr attach IDENT -- true`` imports, in order, by name with
    their depth (`imported_tree`; serve-fs's go to ``serve_fs_log`` when one is given,
    else nowhere)."""
    cntr = Path(sys.executable).with_name("cntr")
    assert cntr.exists(), f"no console script {cntr}: scripts/setup installs it"
    # The venv's script names the checkout scripts/setup ran in; this one is under test
    # (scripts/mutants runs a copy): its text runs with the checkout swapped in.
    lines = cntr.read_text().splitlines()
    swap = [i for i, line in enumerate(lines) if line.startswith("sys.path[0] = ")]
    assert len(swap) == 1, f"{cntr} is not scripts/setup's launcher"
    lines[swap[0]] = f"sys.path[0] = {str(REPO)!r}"
    env = {**os.environ, "PYTHONPROFILEIMPORTTIME": "1"}
    if serve_fs_log is not None:
        env["CNTR_SERVE_FS_LOG"] = str(serve_fs_log)
    out = subprocess.run([sys.executable, "-S", "-c", "\n".join(lines), "attach", ident,
                          "--", "true"], capture_output=True, text=True, env=env, cwd=REPO,
                         timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    return imported_tree(out.stderr)


@pytest.mark.fuse
@pytest.mark.parametrize("which", ["demo", "docker_container"])
def test_real_attach_imports_nothing_forbidden(which: str,
                                               request: pytest.FixtureRequest) -> None:
    container: Container = request.getfixturevalue(which)
    tree = run_imports(container.ident)
    names = [name for name, _ in tree]
    assert "cntr.stages.attach" in names
    assert forbidden(set(names)) == []
    # Nothing is imported once cntr.stages.attach is but the engines resolve asks (each is
    # imported when it is first asked, with what it imports): not lazily by capture or
    # enter, and not in the session's processes, whose / is the served tree (an import
    # there, such as os.execvpe's of warnings, is a round of FUSE requests before the
    # command).  threading comes when the engines take longer than
    # `cntr.engines.base.inline_then_threads` runs them inline (a loaded machine).
    later = outside_engines(tree[names.index("cntr.stages.attach") + 1:])
    assert [m for m in later if m != "threading"] == [], later
    if container.ident.isdigit():  # by pid: process_id answers, no other engine is loaded
        assert [m for m in names[names.index("cntr.stages.attach") + 1:]
                if m.startswith("cntr.engines.")] == ["cntr.engines.process_id"]
        assert sorted(set(names) & NOT_BY_PID) == []
    stdlib = sorted({m for m in names if m.split(".")[0] != "cntr"})
    assert len(stdlib) <= MAX_RUN_STDLIB_MODULES, stdlib


SERVE_FS_FORBIDDEN = frozenset({"pyfuse3", "trio", "importlib.metadata", "cntr.fs.libfuse",
                                "click", "cntr.cli", "cntr.stages", "shutil",
                                "logging", "typing", "signal", "re", "enum", "queue",
                                "contextlib", "functools", "collections", "threading",
                                "cntr.fs.uring"})
"""What serve-fs's own process never imports on its default (wire) session: neither
pyfuse3 nor trio (~140 ms; only `cntr.fs.libfuse`, the libfuse session, imports them) nor
importlib.metadata (~15 ms, pyfuse3's), nor shutil (~2.5 ms with bz2, lzma and zlib: only
a --tools session's helper copy needs it); nor logging (~16 ms with re, enum, traceback,
string, weakref: `cntr.fs.log` imports it at the first message that can show), typing
(TYPE_CHECKING = False), signal (_signal) or queue (_queue), nor contextlib, functools,
collections or threading (`cntr.errors.suppress`, `_thread` locks, `_collections`'
OrderedDict; threading with the first fsync worker), nor the FUSE over io_uring
transport (imported when an INIT grants it); and nothing of the stages above it:
cntr.launch forks it with `cntr.fs.tree` alone.  Its imports come before the session's
first exec, which goes through its mount."""

MAX_SERVE_FS_STDLIB_MODULES = 4
"""Modules outside cntr that serve-fs's own process imports: _collections, fcntl, mmap and
_queue (2 when this was written, _queue and mmap, the fsync ring's; 26 with logging,
typing and signal; 16 while it imported threading, contextlib, functools and collections
itself, ~3-4 ms of its start on this machine): what the attach process imported before
the fork is not counted."""


@pytest.mark.fuse
def test_serve_fs_imports_neither_pyfuse3_nor_trio_nor_logging(
        demo: Container, tmp_path: Path) -> None:
    log = tmp_path / "serve-fs.log"
    run_imports(demo.ident, serve_fs_log=log)
    names = set(imported(log.read_text()))
    assert "cntr.fs.tree" in names
    assert sorted(m for m in names if any(m == f or m.startswith(f + ".")
                                          for f in SERVE_FS_FORBIDDEN)) == []
    stdlib = sorted(m for m in names if m.split(".")[0] != "cntr")
    assert len(stdlib) <= MAX_SERVE_FS_STDLIB_MODULES, stdlib


def imports_of(path: Path) -> set[str]:
    """Every module ``path`` imports, at its top or inside a function (``from X import
    Y``: X, and X.Y where that is a module of cntr)."""
    import ast

    out: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            out.add(node.module)
            for a in node.names:
                sub = REPO / (node.module.replace(".", "/") + f"/{a.name}.py")
                if sub.exists():
                    out.add(f"{node.module}.{a.name}")
    return out


def module_name(path: Path) -> str:
    """The module a file of the checkout is: ``stages/X.py`` is ``cntr.stages.X`` (the
    package's directory is linked into cntr/ as cntr/stages)."""
    rel = path.relative_to(REPO).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(("cntr", *parts) if parts[0] == "stages" else parts)


def test_the_library_never_imports_a_stage() -> None:
    """cntr/ is the floor the stages stand on: no module of it imports ``cntr.stages`` but
    the command line above them (``cntr.cli`` and the console entry ``cntr.entry``).
    (``rglob`` does not follow the cntr/stages link.)"""
    upward = {module_name(p) for p in sorted((REPO / "cntr").rglob("*.py"))
              if any(m == "cntr.stages" or m.startswith("cntr.stages.")
                     for m in imports_of(p))}
    assert upward == {"cntr.cli", "cntr.entry"}


SESSION_IMPORTS = {
    "cntr.session": set(),
    "cntr.session.plan": set(),
    "cntr.session.messages": set(),
    "cntr.session.inherit": {"cntr.session.plan"},
    "cntr.session.reaper": {"cntr.session", "cntr.session.messages", "cntr.session.plan",
                            "cntr.session.inherit"},
    "cntr.session.setup": {"cntr.session", "cntr.session.messages", "cntr.session.plan",
                           "cntr.session.inherit", "cntr.session.reaper"},
    "cntr.session.supervisor": {"cntr.session", "cntr.session.messages",
                                "cntr.session.plan", "cntr.session.inherit",
                                "cntr.session.setup"},
}
"""What each module of ``cntr.session`` imports of it: the plan and the message pipe at
the bottom, the supervisor on top, each process's module below the one that forks it; no
circle."""


def test_the_session_modules_import_one_way() -> None:
    found = {module_name(p): {m for m in imports_of(p) if m.startswith("cntr.session")}
             for p in sorted((REPO / "cntr/session").glob("*.py"))}
    assert found == SESSION_IMPORTS
    # and the stage is the only one above them: only cntr.stages.enter imports the supervisor
    users = sorted(module_name(p) for p in sorted(REPO.glob("[cs]*/**/*.py"))
                   if "cntr.session.supervisor" in imports_of(p))
    assert users == ["cntr.stages.enter"]
