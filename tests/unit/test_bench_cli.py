"""scripts/bench's command line: it parses, and bad input is one line and exit 2.

The benchmark itself is not run here (its figures are never asserted by tests); this
keeps its options from breaking unseen, since nothing else starts it in CI.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
BENCH = REPO / "scripts" / "bench.py"


def bench(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(BENCH), *args], capture_output=True,
                          text=True, cwd=REPO, timeout=60, env=env)


def test_help_lists_every_option() -> None:
    out = bench("--help")
    assert out.returncode == 0, out.stderr
    for option in ("--runs", "--quick", "--only", "--targets", "--walk-files", "--json",
                   "--profile"):
        assert option in out.stdout, option


def test_an_unknown_target_is_one_line() -> None:
    out = bench("--targets", "serve-fs,bogus")
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "bench: unknown target(s) bogus; one of: serve-fs, serve-fs-uring, serve-fs-libfuse, "
        "serve-fs-inline, serve-fs-before, c-ll, c-ll-wb, c-ll-perm, bindfs"]


def test_the_before_target_needs_a_tree() -> None:
    env = {k: v for k, v in os.environ.items() if k != "CNTR_BENCH_BEFORE"}
    out = bench("--targets", "serve-fs-before", env=env)
    assert out.returncode == 2
    assert out.stderr.splitlines() == [
        "bench: target serve-fs-before needs CNTR_BENCH_BEFORE=DIR (another checkout)"]
