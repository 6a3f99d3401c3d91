"""Keep secrets in memory only.

Credentials are never written: request headers are not recorded at all, and every string
that leaves the process for a file, a report or the terminal passes through a
:class:`Redactor` that knows the secrets of this run and cuts them out wherever they appear.

A server can hand a key back in many shapes, so a secret is looked for as more than itself:

- **Its encodings** (:func:`forms`): as JSON writes it (``\\"``, ``\\\\``, ``\\/``, ``\\u``)
  and percent-encoded; an answer from a run with a secret is searched as a decoded value
  (:meth:`Redactor.obj`, by the transport before anyone reads it), which sees through any
  escaping.
- **Its fragments**: any run of :data:`MIN_FRAGMENT` or more characters of any form is cut
  out, so half a key pasted into an error message is caught, and what is left beside a cut
  never joins back into eight characters of the key.
- **Split over pieces** (:meth:`Redactor.obj`): a completion's tokens each hold a few
  characters, so no single string holds a fragment while the tokens joined spell the key.
  Every list in a JSON value is read as columns (the same field of each element, in order)
  and each column's join is searched; an element that holds part of a hit is blanked whole
  (its strings, byte lists and ids), because the pieces of a key are an encoding of it.

Keys the run was not told about are still caught by their well-known shapes (``sk-``, ``hf_``,
``Bearer ...``).

Secrets are registered process-wide (:func:`register`) as well as per redactor: an error
message raised deep in a provider (a 401 body quoting the ``Authorization`` header) is
cleaned by :func:`scrub` before the CLI prints it, without threading a redactor through every
call that can fail.
"""

from __future__ import annotations

import json
import re
import threading
from collections.abc import Iterable
from typing import Any
from urllib.parse import quote

from . import fastjson

REDACTED = "<redacted>"
# Runs of this many characters of a secret (in any of its forms) are cut out.
MIN_FRAGMENT = 8
# The prefilter's blocks: every MIN_FRAGMENT-long run of a form holds one of its blocks of
# BLOCK characters that start at multiples of BLOCK (BLOCK + BLOCK - 1 <= MIN_FRAGMENT), so
# a text holding none of the blocks holds no fragment, and most texts are let through after a
# few C-speed substring searches.
BLOCK = 4

# Shapes of well-known API keys, caught even when the run was not told about them.
_KEY_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{16,}|"
    r"hf_[A-Za-z0-9]{20,}|Bearer\s+[A-Za-z0-9._\-]{12,})"
)
# Each alternative above begins with one of these (case-sensitive): a text holding none of them
# cannot match, and the check is a fraction of the regex scan of a 12 KB completions row.
_KEY_PREFIXES = ("sk-", "hf_", "Bearer")

# A list whose items are all ints in 0..255 is read as bytes (a token's ``bytes`` field).
_BYTE_RANGE = range(256)


def _json_escaped(s: str) -> list[str]:
    """``s`` as it sits inside a JSON string: escaped by json.dumps, and with ``/`` escaped
    too (some servers write ``\\/``)."""
    inner = json.dumps(s)[1:-1]
    ascii_inner = json.dumps(s, ensure_ascii=True)[1:-1]
    return [inner, inner.replace("/", "\\/"), ascii_inner, ascii_inner.replace("/", "\\/")]


def forms(secret: str) -> list[str]:
    """Every text a secret can reach a file or a terminal as: itself, its JSON and percent
    encodings (and the JSON escapes of those), its UTF-8 bytes read as Latin-1 (how a byte
    list is joined here), longest first; only those long enough to hold a fragment. (A
    secret sent in base64, a Basic auth header, is registered as its own secret in that
    form: credentials.py.)"""
    raw = secret.encode("utf-8")
    bases = [secret, quote(secret, safe=""), raw.decode("latin-1")]
    found = {f for b in bases for f in (b, *_json_escaped(b)) if len(f) >= MIN_FRAGMENT}
    return sorted(found, key=len, reverse=True)


class _Secret:
    """One secret: its forms, their fragments and the prefilter's blocks."""

    def __init__(self, value: str):
        self.value = value
        self.forms = forms(value)
        self.grams = {f[i:i + MIN_FRAGMENT] for f in self.forms
                      for i in range(len(f) - MIN_FRAGMENT + 1)}
        self.blocks = {f[i:i + BLOCK] for f in self.forms
                       for i in range(0, len(f) - BLOCK + 1, BLOCK)}


class Redactor:
    """Cuts the secrets it knows (its own and the process's, :func:`register`) out of text and
    JSON values."""

    def __init__(self, secrets: Iterable[str | None] = ()):
        self._own: dict[str, _Secret] = {}
        for s in secrets:
            self.add(s)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4 and secret not in self._own:
            self._own[secret] = _Secret(secret)

    @property
    def knows_secrets(self) -> bool:
        """Does this redactor (or the process) hold any secret? Without one, only key shapes
        are looked for."""
        return bool(self._own) or bool(_REGISTRY.secrets())

    @property
    def _secrets(self) -> list[_Secret]:
        shared = _REGISTRY.secrets()
        if not self._own:
            return shared
        return [*self._own.values(), *(s for s in shared if s.value not in self._own)]

    # -- text ------------------------------------------------------------------------------
    def text(self, s: str) -> str:
        """``s`` with every form and fragment of a known secret, and every key-shaped string,
        replaced by :data:`REDACTED`."""
        if any(p in s for p in _KEY_PREFIXES):  # shapes first: a cut inside one hides it
            s = _KEY_PATTERNS.sub(REDACTED, s)
        for sec in self._secrets:
            s = _cut(s, sec)
        return s

    def holds_secret(self, s: str) -> bool:
        """Does ``s`` hold a form or fragment of a known secret?"""
        return any(sec.value in s or _spans(s, sec) for sec in self._secrets)

    # -- JSON ------------------------------------------------------------------------------
    def obj(self, value: Any) -> Any:
        """``value`` (JSON-like) with every string redacted (keys included) and every list's
        columns searched for a secret split over its items (the module doc). Returns
        ``value`` itself when nothing needs cutting: one walk gathers the strings and column
        joins, one search over them decides, and only a hit pays for the copy."""
        secrets = self._secrets
        scan = _Scan()
        scan.visit(value)
        found = scan.text()
        if not any(sec.value in found or _spans(found, sec) for sec in secrets) \
                and not any(p in found for p in _KEY_PREFIXES):
            return value
        return self._clean(value)

    def dumps(self, value: Any, **kw: Any) -> str:
        """Strict JSON of ``value`` as it may be written: redacted, non-finite numbers as
        null (fastjson.finite)."""
        return self.text(json.dumps(fastjson.finite(self.obj(value)), ensure_ascii=False,
                                    allow_nan=False, **kw))

    def _clean(self, value: Any) -> Any:
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(str(k)): self._clean(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            items = [self._clean(v) for v in value]
            return self._split_secrets(items) if len(items) > 1 else items
        return value

    def _split_secrets(self, items: list[Any]) -> list[Any]:
        """Blank the items of a list that together spell part of a secret (column joins)."""
        tainted: set[int] = set()
        for col in _columns(items).values():
            if len(col) < 2:
                continue
            joined = "".join(p for _, p in col)
            spans = [sp for sec in self._secrets for sp in _spans(joined, sec)]
            pos = 0
            for i, piece in col:
                end = pos + len(piece)
                if any(a < end and pos < b for a, b in spans):
                    tainted.add(i)
                pos = end
        if not tainted:
            return items
        return [_blank(x) if i in tainted else x for i, x in enumerate(items)]


def _is_bytes(v: Any) -> bool:
    return type(v) is list and bool(v) and all(type(x) is int and x in _BYTE_RANGE for x in v)


def _as_text(v: Any) -> str | None:
    """A list item's own text: a string, or a byte list read as Latin-1."""
    if type(v) is str:
        return v
    if type(v) is list and v and type(v[0]) is int:
        try:
            return bytes(v).decode("latin-1")
        except (TypeError, ValueError):
            return None
    return None


def _columns(items: list[Any] | tuple[Any, ...]) -> dict[Any, list[tuple[int, str]]]:
    """The columns of a list: for each field, (item index, text) in item order. An item's
    texts are itself (a string, or a byte list read as Latin-1), and when it is a dict, its
    string and byte-list fields and its first key (``{token: logprob}``). A key spelled by a
    run of tokens, their bytes, or the first keys of their top dicts is one column's join."""
    cols: dict[Any, list[tuple[int, str]]] = {}
    for i, item in enumerate(items):
        if type(item) is dict:
            first = True
            for k, v in item.items():
                if first and type(k) is str:
                    cols.setdefault("#key", []).append((i, k))
                first = False
                t = _as_text(v)
                if t is not None:
                    cols.setdefault(k, []).append((i, t))
        else:
            t = _as_text(item)
            if t is not None:
                cols.setdefault("#item", []).append((i, t))
    return cols


class _Scan:
    """One walk over a JSON value gathering what a secret could hide in: every string value,
    each distinct key, and the join of each list's columns (the same texts as
    :func:`_columns`, gathered in the same pass)."""

    def __init__(self) -> None:
        self.strings: list[str] = []
        self.keys: set[str] = set()

    def visit(self, value: Any) -> None:
        strings, keys = self.strings, self.keys
        stack = [value]
        while stack:
            v = stack.pop()
            tv = type(v)
            if tv is dict:
                for k, x in v.items():
                    keys.add(k if type(k) is str else str(k))
                    tx = type(x)
                    if tx is str:
                        strings.append(x)
                    elif tx is dict or tx is list or tx is tuple:
                        stack.append(x)
            elif tv is list or tv is tuple:
                if v and type(v[0]) is int and _as_text(v) is not None:
                    continue  # a byte list: read as text in its parent's columns
                cols: dict[Any, list[str]] = {}
                for item in v:
                    ti = type(item)
                    if ti is dict:
                        first = True
                        for k, x in item.items():
                            if first and type(k) is str:
                                cols.setdefault("#key", []).append(k)
                            first = False
                            keys.add(k if type(k) is str else str(k))
                            tx = type(x)
                            if tx is str:
                                strings.append(x)
                                cols.setdefault(k, []).append(x)
                            elif tx is list and x and type(x[0]) is int:
                                t = _as_text(x)
                                if t is not None:
                                    cols.setdefault(k, []).append(t)
                                else:
                                    stack.append(x)
                            elif tx is dict or tx is list or tx is tuple:
                                stack.append(x)
                    elif ti is str:
                        strings.append(item)
                        cols.setdefault("#item", []).append(item)
                    elif ti is list or ti is tuple:
                        t = _as_text(item)
                        if t is not None:
                            cols.setdefault("#item", []).append(t)
                        else:
                            stack.append(item)
                    elif item is not None and ti not in _SCALARS:
                        strings.append(str(item))
                strings += ["".join(col) for col in cols.values() if len(col) > 1]
            elif tv is str:
                strings.append(v)
            elif v is not None and tv not in _SCALARS:
                strings.append(str(v))

    def text(self) -> str:
        return "\x00".join([*self.strings, *self.keys])


_SCALARS = (int, float, bool)


def _blank(value: Any) -> Any:
    """A value with its content gone and its shape kept: strings become REDACTED, ids -1,
    byte lists the bytes of REDACTED; floats and booleans (log-probabilities, flags) stay."""
    if isinstance(value, str):
        return REDACTED
    if isinstance(value, dict):
        return {REDACTED if n == 0 else k: _blank(v) for n, (k, v) in enumerate(value.items())}
    if isinstance(value, list):
        if _is_bytes(value):
            return list(REDACTED.encode())
        return [_blank(v) for v in value]
    if type(value) is int:
        return -1
    return value


def _spans(s: str, sec: _Secret) -> list[tuple[int, int]]:
    """Where fragments of ``sec`` sit in ``s`` (merged, sorted)."""
    if not any(b in s for b in sec.blocks):
        return []
    hits = []
    for g in sec.grams:
        i = s.find(g)
        while i >= 0:
            hits.append((i, i + MIN_FRAGMENT))
            i = s.find(g, i + 1)
    hits.sort()
    merged: list[list[int]] = []
    for a, b in hits:
        if merged and a <= merged[-1][1]:
            merged[-1][1] = max(merged[-1][1], b)
        else:
            merged.append([a, b])
    return [(a, b) for a, b in merged]


def _cut(s: str, sec: _Secret) -> str:
    if sec.value in s:
        s = s.replace(sec.value, REDACTED)
    spans = _spans(s, sec)
    if not spans:
        return s
    out, pos = [], 0
    for a, b in spans:
        out += [s[pos:a], REDACTED]
        pos = b
    out.append(s[pos:])
    return "".join(out)


class _Registry:
    """The secrets this process holds (API keys, URL passwords), to cut from anything it
    writes or prints. In memory only."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._secrets: dict[str, _Secret] = {}
        self._snapshot: list[_Secret] = []

    def add(self, secret: str) -> None:
        with self._lock:
            if secret not in self._secrets:
                self._secrets[secret] = _Secret(secret)
                self._snapshot = list(self._secrets.values())

    def secrets(self) -> list[_Secret]:
        return self._snapshot

    def clear(self) -> None:
        with self._lock:
            self._secrets = {}
            self._snapshot = []


_REGISTRY = _Registry()


def register(secret: str | None) -> None:
    """Hold ``secret`` in this process's list of things never to write or print."""
    if secret and len(secret) >= 4:
        _REGISTRY.add(secret)


def might_hold_key(data: bytes | str) -> bool:
    """Could this text hold a key shape (:data:`_KEY_PREFIXES`), plainly or behind a
    ``\\u`` escape? A C-speed test that lets nearly every answer skip the value walk."""
    if isinstance(data, str):
        data = data.encode("utf-8", "replace")
    return b"\\u00" in data or any(p.encode() in data for p in _KEY_PREFIXES)


def forget_all() -> None:
    """Drop every registered secret: for a long-lived process (a notebook, a service) that
    audits one target after another, and for tests."""
    _REGISTRY.clear()


def scrub(text: str) -> str:
    """``text`` with every secret this process knows (and every key-shaped string) cut out:
    for messages on their way to a terminal or a log."""
    return Redactor().text(text)


class ScrubbedStream:
    """A text stream (stdout, stderr) that cuts this process's secrets out of each write:
    the CLI's last line of defence for the terminal and CI logs. Each write is scrubbed as a
    whole (a progress frame, a printed line); everything else is the wrapped stream's."""

    def __init__(self, stream: Any):
        self._stream = stream

    def write(self, text: str) -> int:
        self._stream.write(scrub(text))
        return len(text)

    def writelines(self, lines: Iterable[str]) -> None:
        for line in lines:
            self.write(line)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._stream, name)
