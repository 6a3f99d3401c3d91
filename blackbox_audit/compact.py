"""A lossless compact form of recorded exchanges, for packed run directories.

A 100-token answer with top-5 log-probabilities is ~30 KB of JSON, and gzip leaves ~6 KB of
it: most of the exchange log of a paper-scale run. Three properties of such answers make it
far smaller without losing a bit of what was paid for:

- **bytes**: OpenAI-style logprob entries carry each token's UTF-8 bytes beside the token
  (``{"token": " the", "bytes": [32, 116, 104, 101], ...}``); where they are exactly the
  token's UTF-8 they are dropped (a token that is part of a multi-byte character keeps its
  bytes: its text cannot say them);
- **float32**: servers compute log-probabilities in float32 and print them as doubles with
  17 digits; a value that is exactly a float32 is written in float32's shortest decimal
  form and read back through float32, which gives the very same double;
- **columns**: a list of objects that all have the same keys (the per-token entries, the
  top alternatives of each) is written as one list per key.

Each rule is applied to a record only where it is exactly reversible, and the record names
the rules it went through under :data:`MARK`; :func:`expand` undoes them, so a replay of a
packed exchange log sends back the very answer recorded (equal as a JSON value: key order
within an object may differ, which no JSON reader sees). A record that already holds the
marker's text as a key anywhere (a server's answer could) is left as it is.

The rules know JSON shapes, not providers: any answer with such entries shrinks, others pass
through unchanged.
"""

from __future__ import annotations

from array import array
from typing import Any

MARK = "\u0000packed"     # the rules a record went through (never a key a server sends)
COLUMNS = "\u0000columns"  # an object list written as columns: {COLUMNS: keys, "v": columns}
F32_KEYS = ("logprob",)   # the keys whose float values the float32 rule narrows


def shortest_f32(x: float) -> float:
    """The shortest decimal (as a double) that reads back as the same float32 as ``x``."""
    target = array("f", [x])
    for digits in (6, 7, 8):
        s = float(f"{x:.{digits}g}")
        if array("f", [s]) == target:
            return s
    return float(f"{x:.9g}")


def _objects(value: Any) -> list[dict[str, Any]]:
    """Every JSON object in ``value``."""
    out: list[dict[str, Any]] = []
    stack = [value]
    while stack:
        v = stack.pop()
        if type(v) is dict:
            out.append(v)
            stack.extend(v.values())
        elif type(v) is list:
            stack.extend(v)
    return out


def _utf8(token: str) -> list[int] | None:
    try:
        return list(token.encode("utf-8"))
    except UnicodeEncodeError:   # a lone surrogate: no UTF-8 form to derive from
        return None


def _bytes_rule_applies(objects: list[dict[str, Any]]) -> bool:
    """Every object with a text token has a bytes list (so a missing one means derived)."""
    tokens = [o for o in objects if type(o.get("token")) is str]
    return bool(tokens) and all(type(o.get("bytes")) is list for o in tokens)


def _f32_rule_applies(objects: list[dict[str, Any]]) -> bool:
    """Every float under a narrowed key is exactly a float32 (ints and others pass)."""
    values = [v for o in objects for k in F32_KEYS if type(v := o.get(k)) is float]
    return bool(values) and array("f", values).tolist() == values


class _Compactor:
    """One pass over a record: narrow (bytes, float32) and write object lists as columns."""

    def __init__(self, drop_bytes: bool, f32: bool):
        self.drop_bytes, self.f32 = drop_bytes, f32
        self.columns = False

    def value(self, v: Any) -> Any:
        t = type(v)
        if t is dict:
            return self.obj(v)
        if t is list:
            return self.list(v)
        return v

    def obj(self, o: dict[str, Any]) -> dict[str, Any]:
        out = {}
        token = o.get("token")
        for k, v in o.items():
            if self.drop_bytes and k == "bytes" and type(token) is str and v == _utf8(token):
                continue
            if self.f32 and k in F32_KEYS and type(v) is float:
                out[k] = shortest_f32(v)
            else:
                out[k] = self.value(v)
        return out

    def list(self, xs: list[Any]) -> Any:
        items = [self.value(v) for v in xs]
        if len(items) >= 2 and all(type(v) is dict for v in items):
            keys = list(items[0])
            if all(list(v) == keys for v in items[1:]):
                self.columns = True
                return {COLUMNS: keys, "v": [[v[k] for v in items] for k in keys]}
        return items


class _Expander:
    """One pass undoing :class:`_Compactor`."""

    def __init__(self, rules: list[str]):
        self.add_bytes, self.f32 = "bytes" in rules, "f32" in rules

    def value(self, v: Any) -> Any:
        t = type(v)
        if t is dict:
            if COLUMNS in v:
                keys, cols = v[COLUMNS], v["v"]
                n = len(cols[0]) if cols else 0
                return [self.obj({k: col[i] for k, col in zip(keys, cols, strict=True)})
                        for i in range(n)]
            return self.obj(v)
        if t is list:
            return [self.value(x) for x in v]
        return v

    def obj(self, o: dict[str, Any]) -> dict[str, Any]:
        out = {}
        for k, v in o.items():
            if self.f32 and k in F32_KEYS and type(v) is float:
                out[k] = array("f", [v])[0]
            else:
                out[k] = self.value(v)
        token = o.get("token")
        if self.add_bytes and type(token) is str and "bytes" not in out:
            out["bytes"] = _utf8(token)
        return out


def compact(record: dict[str, Any]) -> dict[str, Any]:
    """``record`` in its compact form (itself when no rule applies or it is not ours to
    touch); :func:`expand` gives back an equal value."""
    objects = _objects(record)
    if any(MARK in o or COLUMNS in o for o in objects):
        return record
    drop_bytes = _bytes_rule_applies(objects)
    f32 = _f32_rule_applies(objects)
    c = _Compactor(drop_bytes, f32)
    out = c.obj(record)
    rules = [name for name, on in (("bytes", drop_bytes), ("f32", f32), ("columns", c.columns))
             if on]
    return {**out, MARK: rules} if rules else record


def expand(record: Any) -> Any:
    """The record as it was recorded (a record without :data:`MARK` comes back as it is)."""
    if type(record) is not dict or MARK not in record:
        return record
    rules = record[MARK]
    return _Expander(rules).obj({k: v for k, v in record.items() if k != MARK})


__all__ = ["MARK", "compact", "expand", "shortest_f32"]
