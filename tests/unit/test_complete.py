"""Completion of a comma-separated -t list (the container part needs engines: see
tests/integration/test_completion.py)."""

from __future__ import annotations

from cntr import complete


def test_types_complete_the_last_item() -> None:
    assert complete.types("do") == ["docker"]
    assert complete.types("docker,po") == ["docker,podman"]
    assert complete.types("docker,") == [f"docker,{t}" for t in
                                         complete.types("") if t != "docker"]
    assert complete.types("k") == ["kubernetes", "k8s"]
    assert complete.types("nosuch") == []
