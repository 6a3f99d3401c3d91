"""JSON on the generation path: msgspec where it gives the same answer, the stdlib otherwise.

A 100-token answer with top-5 logprobs is ~11 KB of JSON, and each becomes a ~12 KB
completions.jsonl row: at 256 answers a second the standard library's parse (~70 µs) and
encode (~160 µs, mostly float reprs) were a sixth of the client's CPU (bench/client.py).
msgspec does each in ~25 µs.

Both directions are exact, or they are not used:

- :func:`loads` gives the value ``json.loads`` gives. msgspec accepts a strict subset of what
  the stdlib accepts (no NaN/Infinity literals, no lone surrogate escapes, no BOM, no
  numbers out of float range) and agrees with it on everything it accepts, big integers
  included; whatever it refuses goes to ``json.loads``, which parses it or raises the same
  ValueError as before.
- :func:`dumps` writes the same JSON value as ``json.dumps(obj, ensure_ascii=False)``, in
  compact form (no spaces after separators), for plain JSON data (dict, list, tuple, str,
  int, float, bool, None), except that NaN and infinities are written as ``null``: JSON has
  no such numbers, a strict parser (a browser's ``JSON.parse``) refuses the stdlib's
  ``NaN``, and nothing we write may hold one (:func:`finite`). Anything msgspec cannot
  encode (a str subclass, a lone surrogate) goes to ``json.dumps``, made finite first.
"""

from __future__ import annotations

import json
import math
from typing import Any

import msgspec

_decoder = msgspec.json.Decoder()
_encoder = msgspec.json.Encoder()
_REFUSED = (msgspec.DecodeError, msgspec.ValidationError)


def loads(data: bytes | str) -> Any:
    """``json.loads(data)``, faster when the text is plain JSON (nearly always)."""
    try:
        return _decoder.decode(data)
    except _REFUSED:
        return json.loads(data)


def dumps(obj: Any) -> str:
    """Compact, strict JSON of ``obj`` (non-finite numbers as null), faster than the stdlib."""
    try:
        return _encoder.encode(obj).decode("utf-8")
    except (TypeError, UnicodeEncodeError):
        return json.dumps(finite(obj), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False)


def finite(value: Any, named: bool = False) -> Any:
    """``value`` with every NaN and infinity replaced: by None, or with ``named`` by the
    strings "NaN", "Infinity", "-Infinity" (which our readers turn back into the same floats:
    a recorded answer must replay as it came). Returns ``value`` itself when it holds none."""
    if type(value) is float:
        if math.isfinite(value):
            return value
        return (str(value).replace("inf", "Infinity").replace("nan", "NaN")
                if named else None)
    if isinstance(value, dict):
        out = {k: finite(v, named) for k, v in value.items()}
        return value if all(out[k] is v for k, v in value.items()) else out
    if isinstance(value, list | tuple):
        items = [finite(v, named) for v in value]
        return value if all(a is b for a, b in zip(items, value, strict=True)) else items
    return value
