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
  int, float, bool, None). msgspec writes NaN and infinities as ``null``, where the stdlib
  writes ``NaN``/``Infinity``; so the ``null``s in msgspec's text are counted against the
  Nones in the value (a C-speed count, one level deep; a None deeper down, or "null" inside
  a string, only makes the count disagree) and any disagreement re-encodes with
  ``json.dumps``. Anything msgspec cannot encode (a str subclass, a lone surrogate) goes to
  ``json.dumps`` too.
"""

from __future__ import annotations

import json
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
    """``json.dumps(obj, ensure_ascii=False, separators=(",", ":"))``, faster."""
    try:
        out = _encoder.encode(obj)
    except (TypeError, UnicodeEncodeError):
        out = None
    if out is None or out.count(b"null") != _nones(obj):  # a NaN or infinity became null
        return json.dumps(obj, ensure_ascii=False, separators=(",", ":"))
    return out.decode("utf-8")


def _nones(obj: Any) -> int:
    """Nones in ``obj``, its values and their items (no deeper): a lower bound on the
    ``null``s its JSON text holds when it holds no NaN or infinity."""
    if obj is None:
        return 1
    if isinstance(obj, dict):
        obj = obj.values()
    elif not isinstance(obj, list | tuple):
        return 0
    n = 0
    for v in obj:
        if v is None:
            n += 1
        elif isinstance(v, list | tuple):
            n += v.count(None)
        elif isinstance(v, dict):
            n += sum(1 for x in v.values() if x is None)
    return n
