"""How ``--tools SOURCE`` is read: a directory, or ``[ENGINE:]NAME`` resolved as an ID."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cntr.context import Resolved, Tools
from cntr.errors import NotFound
from cntr.stages import capture


def test_directory_absolute_and_relative(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "tools").mkdir()
    assert capture.capture_tools(str(tmp_path / "tools")) == Tools(
        str(tmp_path / "tools"), str(tmp_path / "tools"), "", "", "", 0, 0)
    monkeypatch.chdir(tmp_path)
    assert capture.capture_tools("./tools").root == str(tmp_path / "tools")
    with pytest.raises(NotFound, match=r"^--tools ./nope: no such directory$"):
        capture.capture_tools("./nope")
    (tmp_path / "file").write_text("")
    with pytest.raises(NotFound, match=r"^--tools /.*/file: not a directory$"):
        capture.capture_tools(str(tmp_path / "file"))


@pytest.mark.parametrize(("source", "ident", "types"), [
    ("toolbox", "toolbox", None),
    ("docker:toolbox", "toolbox", ["docker"]),
    ("process-id:1234", "1234", ["process_id"]),
    ("k8s:ns/pod/c", "k8s:ns/pod/c", None),
    ("kubernetes:ns/pod/c", "k8s:ns/pod/c", ["kubernetes"]),
    ("bogus:x", "bogus:x", None),
])
def test_container_sources_resolve_as_ids(monkeypatch: pytest.MonkeyPatch, source: str,
                                          ident: str, types: list[str] | None) -> None:
    asked: list[tuple[str, list[str] | None]] = []

    def resolve(i: str, t: list[str] | None = None) -> Resolved:
        asked.append((i, t))
        return Resolved("docker", "c" * 64, "toolbox", os.getpid(), 42)

    monkeypatch.setattr("cntr.stages.resolve.resolve", resolve)
    tools = capture.capture_tools(source)
    assert asked == [(ident, types)]
    assert tools == Tools(source, f"/proc/{os.getpid()}/root", "docker", "c" * 64, "toolbox",
                          os.getpid(), 42)
