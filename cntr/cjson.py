"""JSON through ``_json``, the C scanner and encoder under the json package, without it.

``import json`` costs ~2 ms and brings re (~2.5 ms) and enum (~1.7 ms) with it: json's
decoder and encoder compile regular expressions for their pure-Python fallbacks, which
CPython (that always builds _json) never uses for what cntr parses and prints.  That is
most of what the attach path would import for the few objects it decodes (an engine's
answer) and encodes (an audit record, serve-fs's parameters).  ``loads`` and ``dumps``
give what ``json.loads`` and ``json.dumps`` give for the options they take, through the
same C code json runs.

Caveats: a document that is not JSON raises ``json.JSONDecodeError`` from within the
scanner (which imports json.decoder for it) or a ValueError of this module (no value,
extra data), not always with json's message; both are ValueErrors.
"""

from __future__ import annotations

import _json

TYPE_CHECKING = False  # typing costs ~9 ms to import: only for the type checker
if TYPE_CHECKING:
    from typing import Any

_WHITESPACE = " \t\n\r"
"""What JSON allows between tokens (RFC 8259), and so around the document."""

_CONSTANTS = {"-Infinity": float("-inf"), "Infinity": float("inf"), "NaN": float("nan")}


class _Decoder:
    """What the C scanner reads of a ``json.JSONDecoder``: its defaults."""

    strict = True
    object_hook = None
    object_pairs_hook = None
    parse_float = float
    parse_int = int
    parse_constant = _CONSTANTS.__getitem__


_scan = _json.make_scanner(_Decoder())  # type: ignore[arg-type]  # a duck-typed context


def loads(text: str | bytes) -> Any:
    """``json.loads(text)``; bytes are UTF-8 (with or without a byte order mark)."""
    if isinstance(text, bytes):
        text = text.decode("utf-8-sig" if text[:3] == b"\xef\xbb\xbf" else "utf-8",
                           "surrogatepass")
    start = len(text) - len(text.lstrip(_WHITESPACE))
    try:
        value, end = _scan(text, start)
    except StopIteration as exc:
        raise ValueError(f"Expecting value: char {exc.value}") from None
    rest = text[end:].lstrip(_WHITESPACE)
    if rest:
        raise ValueError(f"Extra data: char {len(text) - len(rest)}")
    return value


def _not_serializable(value: object) -> object:
    raise TypeError(f"Object of type {value.__class__.__name__} is not JSON serializable")


def dumps(value: Any, *, compact: bool = False, ensure_ascii: bool = True) -> str:
    """``json.dumps(value, ensure_ascii=ensure_ascii)``, with ``separators=(",", ":")``
    when ``compact``."""
    # A new encoder each time, as json makes one: its markers (the containers being
    # encoded, for the circular check) are left behind by an encoding that fails.
    encoder = _json.make_encoder(
        {},  # markers: a value that contains itself is a ValueError, as in json
        _not_serializable,
        _json.encode_basestring_ascii if ensure_ascii else _json.encode_basestring,
        None,  # no indent
        ":" if compact else ": ",
        "," if compact else ", ",
        False,  # sort_keys
        False,  # skipkeys
        True,  # allow_nan
    )
    return "".join(encoder(value, 0))
