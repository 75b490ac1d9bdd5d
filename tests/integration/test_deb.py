"""The Debian package built by scripts/build-deb, installed with apt on Debian's own
python3-pyfuse3/-trio/-msgpack/-click, and the wheel installed with pip beside it."""

from __future__ import annotations

import gzip
import json
import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import REPO, Container

INSTALLED = ["/usr/bin/cntr", "/usr/share/man/man1/cntr.1.gz",
             "/usr/share/bash-completion/completions/cntr",
             "/usr/share/zsh/vendor-completions/_cntr",
             "/usr/share/fish/vendor_completions.d/cntr.fish",
             "/usr/lib/cntr/cntr/cli.py", "/usr/lib/cntr/cntr/stages/enter.py",
             "/usr/lib/cntr/schemas/context.v1.json"]
# the package's cntr first on PATH, whatever the test runner's environment has
ENV = dict(os.environ, PATH="/usr/sbin:/usr/bin:/sbin:/bin")


def version() -> str:
    out = subprocess.run(["/usr/bin/python3", "-c", "import cntr; print(cntr.__version__)"],
                         capture_output=True, text=True, cwd=REPO, check=True)
    return out.stdout.strip()


def run(*args: str, **kw: object) -> subprocess.CompletedProcess[str]:
    # **kw passes env and the like through; mypy cannot match it to run()'s overloads
    out: subprocess.CompletedProcess[str] = subprocess.run(  # type: ignore[call-overload]
        list(args), capture_output=True, text=True, timeout=300, **{"env": ENV, "cwd": "/", **kw})
    return out


def debian_version(package: str) -> str:
    """The upstream part of an installed Debian package's version (3.2.1-2+b2 -> 3.2.1)."""
    out = run("dpkg-query", "-W", "-f=${Version}", package)
    return out.stdout.split(":")[-1].split("-")[0]


@pytest.fixture(scope="module")
def deb() -> Iterator[Path]:
    built = run(str(REPO / "scripts/build-deb"), cwd=REPO)
    assert built.returncode == 0, built.stderr
    path = Path(built.stdout.strip())
    assert path == REPO / "dist" / f"cntr_{version()}_all.deb"
    # apt as a user runs it, from the directory holding dist/
    install = run("apt-get", "install", "-y", "--no-install-recommends",
                  f"./dist/{path.name}", cwd=REPO,
                  env=dict(ENV, DEBIAN_FRONTEND="noninteractive"))
    assert install.returncode == 0, install.stdout + install.stderr
    yield path
    purge = run("dpkg", "--purge", "cntr")
    assert purge.returncode == 0, purge.stderr
    assert not os.path.exists("/usr/lib/cntr")  # byte-code too (prerm)


@pytest.mark.fuse
def test_package_contents_and_dependencies(deb: Path) -> None:
    depends = run("dpkg-deb", "-f", str(deb), "Depends").stdout.strip()
    assert depends == ("python3 (>= 3.11), python3-pyfuse3 (>= 3.2.1), python3-trio "
                       "(>= 0.22), python3-msgpack (>= 1.0.3), python3-click (>= 8.1.3), "
                       "fuse3")
    listed = run("dpkg", "-L", "cntr").stdout.splitlines()
    for path in INSTALLED:
        assert path in listed and os.path.exists(path), path
    assert not [p for p in listed if "dist-packages" in p or "__pycache__" in p]
    # the stages are cntr.stages: no generic top-level name "stages" is installed
    probe = run("/usr/bin/python3", "-c", "import stages")
    assert "ModuleNotFoundError: No module named 'stages'" in probe.stderr


@pytest.mark.fuse
def test_version_names_debians_libraries(deb: Path) -> None:
    out = run("/usr/bin/cntr", "--version")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == f"cntr {version()}"
    assert lines[1].startswith("Python 3.11.") and lines[1].endswith(" (/usr/bin/python3)")
    assert lines[2] == f"pyfuse3 {debian_version('python3-pyfuse3')}"
    assert lines[3] == f"libfuse {debian_version('libfuse3-3')}"


@pytest.mark.fuse
@pytest.mark.docker
def test_attach_and_exec_through_usr_bin_cntr(deb: Path, docker_container: Container) -> None:
    out = run("/usr/bin/cntr", "attach", docker_container.ident, "--", "sh", "-c",
              "hostname; cat /etc/debian_version; cntr exec cat /etc/hostname; exit 5")
    assert (out.returncode, out.stderr) == (5, "")
    with open("/etc/debian_version") as f:
        host_debian = f.read()
    assert out.stdout == (f"{docker_container.hostname}\n{host_debian}"
                          f"{docker_container.hostname}\n")
    out = run("/usr/bin/cntr", "exec", docker_container.ident, "--", "cat", "/etc/hostname")
    assert (out.returncode, out.stdout, out.stderr) == (0, f"{docker_container.hostname}\n", "")
    # pyfuse3's libfuse session (Debian's pyfuse3 3.2.1 and trio 0.22 here) serves a
    # session too
    out = run("/usr/bin/cntr", "attach", docker_container.ident, "--", "cat",
              "/etc/debian_version", env=dict(ENV, CNTR_SERVE_FS_LOOP="libfuse"))
    assert (out.returncode, out.stdout, out.stderr) == (0, host_debian, "")


@pytest.mark.fuse
@pytest.mark.docker
def test_usr_bin_cntr_attaches_within_the_import_budget(deb: Path,
                                                       docker_container: Container) -> None:
    """The package's launcher runs without site (``-sS``): its attach imports nothing the
    venv's may not (tests/unit/test_import_budget.py), on Debian's python3."""
    from tests.unit.test_import_budget import forbidden, imported

    out = run("/usr/bin/cntr", "attach", docker_container.ident, "--", "true",
              env=dict(ENV, PYTHONPROFILEIMPORTTIME="1"))
    assert out.returncode == 0, out.stderr[-2000:]
    names = imported(out.stderr)
    assert "cntr.stages.attach" in names
    assert forbidden(set(names)) == []


@pytest.mark.fuse
@pytest.mark.docker
def test_installed_man_page_and_completions(deb: Path, docker_container: Container,
                                            tmp_path: Path) -> None:
    page = tmp_path / "cntr.1"
    with gzip.open("/usr/share/man/man1/cntr.1.gz") as f:
        page.write_bytes(f.read())
    man = run("man", "--warnings", "-l", str(page), env=dict(ENV, MANWIDTH="200"))
    assert man.returncode == 0 and man.stderr == "", man.stderr
    assert "       cntr attach [OPTIONS] ID [COMMAND]..." in man.stdout.splitlines()
    name = docker_container.ident
    bash = run("bash", "--norc", "-c", "source /usr/share/bash-completion/completions/cntr\n"
               f"COMP_WORDS=(cntr attach {name[:-2]}); COMP_CWORD=2; _cntr_completion cntr\n"
               'printf "%s\\n" "${COMPREPLY[@]}"')
    assert (bash.stdout, bash.stderr) == (f"{name}\n", "")
    fish = run("fish", "--no-config", "-c",
               "source /usr/share/fish/vendor_completions.d/cntr.fish\n"
               f"complete -C 'cntr attach {name[:-2]}'")
    assert fish.stdout.split("\t")[0] == name, fish.stderr
    zsh = Path("/usr/share/zsh/vendor-completions/_cntr").read_text()
    assert zsh.startswith("#compdef cntr\n") and "_CNTR_COMPLETE=zsh_complete" in zsh


@pytest.mark.fuse
@pytest.mark.docker
def test_wheel_installs_beside_it(docker_container: Container, tmp_path: Path) -> None:
    """pip install . (offline: Debian's libraries through --system-site-packages)."""
    src = tmp_path / "src"
    shutil.copytree(REPO, src, ignore=shutil.ignore_patterns(
        ".venv", ".git", "dist", "build", "*.egg-info", "__pycache__", ".*_cache"))
    venv = tmp_path / "venv"
    assert run("/usr/bin/python3", "-m", "venv", "--system-site-packages",
               str(venv)).returncode == 0
    pip = run(str(venv / "bin/pip"), "install", "-q", "--no-index", "--no-build-isolation",
              str(src))
    assert pip.returncode == 0, pip.stdout + pip.stderr
    cntr = str(venv / "bin/cntr")
    out = run(cntr, "attach", docker_container.ident, "--", "sh", "-c",
              "hostname; cntr exec cat /etc/hostname")
    assert (out.returncode, out.stderr) == (0, "")
    assert out.stdout == f"{docker_container.hostname}\n" * 2
    # the schemas travel inside the wheel
    resolved = run(cntr, "resolve", docker_container.ident, "--format", "json")
    assert resolved.returncode == 0, resolved.stderr
    captured = run("sh", "-c", f"{cntr} resolve {docker_container.ident} | {cntr} capture "
                   "--format json")
    assert captured.returncode == 0, captured.stderr
    ctx = json.loads(captured.stdout)
    assert (ctx["kind"], ctx["name"], ctx["pid"]) == (
        "cntr.context", docker_container.ident, docker_container.pid)


SUITE = ["tests/integration/test_attach.py", "tests/integration/test_audit.py",
         "tests/integration/test_record.py"]
"""The part of the suite README.md names as run against the installed package."""


@pytest.mark.fuse
@pytest.mark.docker
def test_suite_part_against_the_package(deb: Path, docker_container: Container) -> None:
    # a demo container of its own: the inner run stops its demo when it ends
    env = dict(os.environ, CNTR_UNDER_TEST="/usr/bin/cntr",
               CNTR_DEMO_DIR=os.environ.get("CNTR_DEMO_DIR", "/var/lib/cntr-demo") + "-deb")
    # The host-wide snapshot test (every process, mount and /tmp entry of the host) is left
    # to the checkout's run: whatever runs beside this test changes the host under it.
    out = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                          "-k", "not test_nothing_left_behind", *SUITE],
                         capture_output=True, text=True, cwd=REPO, env=env, timeout=900)
    assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-2000:]
    assert " passed" in out.stdout.splitlines()[-1] and "skipped" not in out.stdout
