"""``cntr diff A B``: what changed between two contexts of a container.

For "what changed since it last worked?": every field of the context record (environment,
capabilities, ids, cgroups, namespaces, LSM label, working directory, root, the captured
files, ...).  Each difference is one line, ``FIELD: ...``; none means the two contexts
describe the same state.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from cntr.context import Caps, Context
from cntr.linux import caps
from cntr.record import fields


def _dict_diff(field: str, a: dict[str, Any], b: dict[str, Any]) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        if key not in b:
            out.append(f"{field}: - {key}={a[key]}")
        elif key not in a:
            out.append(f"{field}: + {key}={b[key]}")
        elif a[key] != b[key]:
            out.append(f"{field}: ~ {key}: {a[key]} -> {b[key]}")
    return out


def diff(a: Context, b: Context) -> list[str]:
    """One line per difference between ``a`` (before) and ``b`` (after), field by field in
    the record's order: a field added to `Context` is compared without a change here."""
    out: list[str] = []
    for name in fields(Context):
        va, vb = getattr(a, name), getattr(b, name)
        if va == vb:
            continue
        show = _SHOW.get(name)
        if show is not None:
            out += show(name, va, vb)
        elif isinstance(va, Caps) and isinstance(vb, Caps):
            out += _caps_diff(name, va, vb)
        elif isinstance(va, dict) and isinstance(vb, dict):
            out += _dict_diff(name, va, vb)
        else:
            out.append(f"{name}: {va} -> {vb}")
    return out


def _caps_diff(field: str, a: Caps, b: Caps) -> list[str]:
    out = []
    for which in fields(Caps):
        ma, mb = getattr(a, which), getattr(b, which)
        out += [f"{field}.{which}: - {n}" for n in caps.names(ma & ~mb)]
        out += [f"{field}.{which}: + {n}" for n in caps.names(mb & ~ma)]
    return out


def _cgroups_diff(field: str, a: list[tuple[int, str, str]],
                  b: list[tuple[int, str, str]]) -> list[str]:
    """Cgroup lines keyed by hierarchy and controllers: a moved process is one change."""
    return _dict_diff(field, {f"{h}:{c}": p for h, c, p in a},
                      {f"{h}:{c}": p for h, c, p in b})


def _files_diff(field: str, a: dict[str, bytes | None],
                b: dict[str, bytes | None]) -> list[str]:
    out = []
    for key in sorted(set(a) | set(b)):
        fa, fb = a.get(key), b.get(key)
        if fa == fb:
            continue
        if fa is None:
            out.append(f"{field}: + {key} ({len(fb or b'')} bytes)")
        elif fb is None:
            out.append(f"{field}: - {key}")
        else:
            out.append(f"{field}: ~ {key} ({len(fa)} -> {len(fb)} bytes)")
            out += _text_diff(f"{field}: {key}", fa, fb)
    return out


_SHOW: dict[str, Callable[[str, Any, Any], list[str]]] = {
    "cgroups": _cgroups_diff,
    "files": _files_diff,
}
"""Fields shown by a function of their own instead of by their type."""


def _text_diff(prefix: str, a: bytes, b: bytes) -> list[str]:
    """Changed lines of a text file, each after ``prefix``; none for binary."""
    if b"\0" in a or b"\0" in b:
        return []
    la = a.decode(errors="replace").splitlines()
    lb = b.decode(errors="replace").splitlines()
    sa, sb = set(la), set(lb)
    return ([f"{prefix}: - {line}" for line in la if line not in sb]
            + [f"{prefix}: + {line}" for line in lb if line not in sa])
