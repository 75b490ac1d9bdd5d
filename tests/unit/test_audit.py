"""The audit record's framing (RFC 3164 as syslog(3) sends it locally) and truncation."""

from __future__ import annotations

import os
import time

from cntr import audit


def test_frame_is_authpriv_info_with_a_cee_json_body() -> None:
    now = time.mktime((2026, 3, 5, 7, 8, 9, 0, 0, -1))
    data = audit.frame({"event": "session-start", "command": ["ls", "é"]}, now, pid=42)
    assert data == ('<86>Mar  5 07:08:09 cntr[42]: @cee: '
                    '{"event":"session-start","command":["ls","é"]}').encode()


def test_long_commands_are_cut() -> None:
    argv = ["sh", "-c", "x" * 10000, "never"]
    cut = audit._command(argv)
    assert cut == ["sh", "-c", "x" * (audit.MAX_COMMAND - 4) + "..."]  # "sh" and "-c" count


def test_send_without_a_listener_is_silent(tmp_path: os.PathLike[str]) -> None:
    audit.send({"event": "x"}, os.path.join(tmp_path, "nothing"))
