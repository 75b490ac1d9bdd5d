"""The suite's own rules: every declared marker is checked, and no test skips but through
`tests.conftest.require` (which fails in CI)."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

from tests.conftest import CHECKS, REPO


def test_every_declared_marker_has_a_check() -> None:
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    declared = {m.split(":")[0] for m in config["tool"]["pytest"]["ini_options"]["markers"]}
    assert declared == set(CHECKS)


def test_no_test_skips_but_through_require() -> None:
    offenders = []
    for path in sorted((REPO / "tests").rglob("*.py")):
        if path.name == "conftest.py":
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"pytest\.(skip|importorskip)\(|mark\.skip", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []


#: modules allowed a timing limit in an assert (none: speed is scripts/bench's business)
KNOWN_TIMING: set[str] = set()


def test_no_timing_asserts() -> None:
    """A hang is caught by pytest-timeout; speed is scripts/bench's business: no assert of
    an elapsed time against a limit in seconds."""
    offenders = []
    for path in sorted(Path(REPO / "tests").rglob("*.py")):
        if str(path.relative_to(REPO)) in KNOWN_TIMING:
            continue
        for n, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"assert .*(monotonic\(\)|perf_counter\(\)|time\.time\(\)) - \w+ "
                         r"< [\d.]+|assert (took|elapsed) < ", line):
                offenders.append(f"{path.relative_to(REPO)}:{n}: {line.strip()}")
    assert offenders == []
