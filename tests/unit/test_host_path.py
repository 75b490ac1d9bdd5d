"""``host_path``: the host's paths below ``$CNTR_HOST_ROOT`` (cntr in a node debug pod)."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from cntr.engines.base import host_path


def test_unset_leaves_paths_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CNTR_HOST_ROOT", raising=False)
    assert host_path("/var/run/docker.sock") == "/var/run/docker.sock"


def test_symlinks_resolve_inside_the_root(tmp_path: Path,
                                          monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "run/containerd").mkdir(parents=True)
    (tmp_path / "var").mkdir()
    os.symlink("/run", tmp_path / "var/run")  # absolute, as on the host
    os.symlink("../run/containerd", tmp_path / "var/cd")  # relative
    os.symlink("loop", tmp_path / "loop")
    monkeypatch.setenv("CNTR_HOST_ROOT", f"{tmp_path}/")
    assert host_path("/var/run/docker.sock") == f"{tmp_path}/run/docker.sock"
    assert host_path("/var/cd/x.sock") == f"{tmp_path}/run/containerd/x.sock"
    assert host_path("/run/../var/./run") == f"{tmp_path}/run"
    assert host_path("/loop/x") == f"{tmp_path}/loop/x"  # ELOOP for whoever opens it
    assert host_path("relative") == "relative"
