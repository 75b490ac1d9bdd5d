"""``cntr.fs.log``: serve-fs's logger imports logging only for a message that can show, and
shows what ``logging.getLogger("cntr.fs")`` would: unconfigured, warnings and errors on
stderr (logging's last resort), nothing below; configured, everything at its level."""

from __future__ import annotations

import subprocess
import sys

from tests.conftest import REPO

UNCONFIGURED = """
import sys
from cntr.fs.log import log
log.debug("serve-fs: debug %d", 1)
log.info("serve-fs: info %d", 2)
print("logging" in sys.modules)
log.warning("serve-fs: warning %d", 3)
log.error("serve-fs: error %s", "four")
print("logging" in sys.modules)
"""

CONFIGURED = """
import logging
logging.basicConfig(level=logging.DEBUG, format="%(name)s %(levelname)s %(funcName)s: %(message)s")
from cntr.fs.log import log

def handler():
    log.debug("serve-fs: debug %d", 1)
    log.info("serve-fs: info %d", 2)
    try:
        raise OSError(5, "boom")
    except OSError as exc:
        log.error("serve-fs: failed: %r", exc, exc_info=True)

handler()
"""


def run(code: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=REPO, timeout=60)


def test_unconfigured_drops_debug_and_info_unimported_and_shows_the_rest() -> None:
    out = run(UNCONFIGURED)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["False", "True"]
    assert out.stderr == "serve-fs: warning 3\nserve-fs: error four\n"


def test_configured_logs_every_level_as_its_caller() -> None:
    out = run(CONFIGURED)
    assert out.returncode == 0, out.stderr
    lines = out.stderr.splitlines()
    assert lines[:3] == ["cntr.fs DEBUG handler: serve-fs: debug 1",
                         "cntr.fs INFO handler: serve-fs: info 2",
                         "cntr.fs ERROR handler: serve-fs: failed: OSError(5, 'boom')"]
    assert lines[3] == "Traceback (most recent call last):"
    assert lines[-1] == "OSError: [Errno 5] boom"
