"""``cntr diff A B``: what changed between two contexts of a container.

For "what changed since it last worked?": environment, capabilities, ids, cgroups,
namespaces, LSM label, working directory, root and the captured files.  Each difference is
one line, ``FIELD: ...``; none means the two contexts describe the same state.
"""

from __future__ import annotations

from typing import Any

from cntr.context import Context
from cntr.linux import caps


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
    """One line per difference between ``a`` (before) and ``b`` (after)."""
    out: list[str] = []
    for name in ("engine", "container_id", "name", "pid", "start_time", "boot_id", "nspid",
                 "uid", "gid", "groups", "uid_map", "gid_map", "no_new_privs", "lsm",
                 "label", "cwd", "root"):
        va, vb = getattr(a, name), getattr(b, name)
        if va != vb:
            out.append(f"{name}: {va} -> {vb}")
    for which in ("bounding", "effective", "permitted", "inheritable", "ambient"):
        ma, mb = getattr(a.caps, which), getattr(b.caps, which)
        out += [f"caps.{which}: - {n}" for n in caps.names(ma & ~mb)]
        out += [f"caps.{which}: + {n}" for n in caps.names(mb & ~ma)]
    out += _dict_diff("namespaces", dict(a.namespaces), dict(b.namespaces))
    ca = {f"{h}:{c}": p for h, c, p in a.cgroups}
    cb = {f"{h}:{c}": p for h, c, p in b.cgroups}
    out += _dict_diff("cgroups", ca, cb)
    out += _dict_diff("env", a.env, b.env)
    for key in sorted(set(a.files) | set(b.files)):
        fa, fb = a.files.get(key), b.files.get(key)
        if fa == fb:
            continue
        if fa is None:
            out.append(f"files: + {key} ({len(fb or b'')} bytes)")
        elif fb is None:
            out.append(f"files: - {key}")
        else:
            out.append(f"files: ~ {key} ({len(fa)} -> {len(fb)} bytes)")
            out += _text_diff(key, fa, fb)
    return out


def _text_diff(key: str, a: bytes, b: bytes) -> list[str]:
    """Changed lines of a text file, each prefixed by the file name; none for binary."""
    if b"\0" in a or b"\0" in b:
        return []
    la = a.decode(errors="replace").splitlines()
    lb = b.decode(errors="replace").splitlines()
    sa, sb = set(la), set(lb)
    return ([f"files: {key}: - {line}" for line in la if line not in sb]
            + [f"files: {key}: + {line}" for line in lb if line not in sa])
