"""cntr.errors's helpers that are not error types."""

from __future__ import annotations

import pytest

from cntr.errors import suppress


def test_suppress_swallows_the_kinds_given_and_their_subclasses_only() -> None:
    done = []
    with suppress(ProcessLookupError, ChildProcessError):
        done.append(1)
    with suppress(OSError):
        raise FileNotFoundError(2, "gone")  # a subclass
    with suppress(ProcessLookupError, ChildProcessError):
        raise ChildProcessError(10, "no child")
    with pytest.raises(PermissionError), suppress(ProcessLookupError):
        raise PermissionError(1, "not permitted")
    with pytest.raises(KeyboardInterrupt), suppress(Exception):
        raise KeyboardInterrupt
    assert done == [1]
