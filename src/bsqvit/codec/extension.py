"""The ``.bsq`` header extension: a small, flat JSON object (zlib-compressed in the header).

Flat on purpose: string keys, scalar values, at most ``EXT_MAX_KEYS`` entries. Nesting is found by
a bounded scan of the bytes *before* ``json.loads`` runs, so a hostile file cannot make the parser
recurse (docs/FORMAT.md section 2.3).
"""

from __future__ import annotations

import json
import zlib

from .errors import BSQFormatError

EXT_MAX_KEYS = 64  # the extension is a flat JSON object of at most 64 scalar entries
EXT_MAX_STRING = 256


def check_ext(ext) -> None:
    """The extension is a flat object: at most EXT_MAX_KEYS string keys, values None, bool, int,
    float or strings of at most EXT_MAX_STRING characters."""
    if not isinstance(ext, dict) or len(ext) > EXT_MAX_KEYS:
        raise BSQFormatError(f"bad header extension (not a mapping of at most {EXT_MAX_KEYS} entries)")
    for k, v in ext.items():
        if not isinstance(k, str) or len(k) > EXT_MAX_STRING:
            raise BSQFormatError("bad header extension (key)")
        if isinstance(v, str) and len(v) > EXT_MAX_STRING or not isinstance(v, (type(None), bool, int, float, str)):
            raise BSQFormatError(f"bad header extension (value of {k[:32]!r} is not a short scalar)")
        if isinstance(v, int) and not isinstance(v, bool) and v.bit_length() > 64:
            raise BSQFormatError(f"bad header extension (integer {k[:32]!r} out of range)")


def _nesting_depth(raw: bytes) -> int:
    """Deepest bracket nesting of a JSON text, outside strings (a bounded scan before json.loads)."""
    depth = deepest = 0
    in_str = esc = False
    for ch in raw:
        if in_str:
            esc, in_str = (False, in_str) if esc else (ch == 0x5C, ch != 0x22)
        elif ch == 0x22:
            in_str = True
        elif ch in (0x5B, 0x7B):
            depth += 1
            deepest = max(deepest, depth)
        elif ch in (0x5D, 0x7D):
            depth -= 1
    return deepest


def parse_ext(blob: bytes, max_bytes: int) -> dict:
    """zlib blob -> the extension dict, at most ``max_bytes`` of JSON, flat (checked before parsing)."""
    d = zlib.decompressobj()
    try:
        raw = d.decompress(blob, max_bytes)
        if d.unconsumed_tail or not d.eof or d.unused_data:
            raise BSQFormatError("header extension too large or truncated")
        if _nesting_depth(raw) > 1:
            raise BSQFormatError("bad header extension (nested values)")
        ext = json.loads(raw)
    except (zlib.error, ValueError, RecursionError) as e:
        if isinstance(e, BSQFormatError):
            raise
        raise BSQFormatError(f"bad header extension ({type(e).__name__})") from None
    check_ext(ext)
    return ext
