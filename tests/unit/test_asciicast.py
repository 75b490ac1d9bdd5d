"""The asciicast v2 writer: header, output events (a character split across reads kept
whole), resizes."""

from __future__ import annotations

import json
from pathlib import Path

from cntr import asciicast


def test_writer(tmp_path: Path) -> None:
    path = tmp_path / "a.cast"
    w = asciicast.Writer(str(path), 90, 33, command=["sh", "-c", "ls"])
    w.output(b"a\xc3")
    w.output(b"\xa9b")
    w.resize(100, 40)
    w.output(b"\xff")
    w.close()
    header, *lines = path.read_text().splitlines()
    head = json.loads(header)
    assert {k: head[k] for k in ("version", "width", "height", "command")} == {
        "version": 2, "width": 90, "height": 33, "command": "sh -c ls"}
    evs = [json.loads(x) for x in lines]
    assert [e[1:] for e in evs] == [["o", "a"], ["o", "éb"], ["r", "100x40"], ["o", "\ufffd"]]
    assert all(isinstance(e[0], float) for e in evs)
