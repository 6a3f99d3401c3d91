"""Per-token data: where each reference token sits in a completion and what each model gave it.

On the ``ids`` alignment path reference and target tokens are the same tokens. On the ``text``
path (different tokenisations) each target token's log-probability is spread evenly over its
UTF-8 bytes and summed over the bytes each reference token covers. The report draws the
result as a heatmap (``token_heat``); the themes weigh phrases by it (``token_gaps``).
"""

from __future__ import annotations

import hashlib
import tempfile
from array import array
from typing import Any, NamedTuple

from .align import target_bytes
from .records import Completion, Score


class TokenPiece(NamedTuple):
    start: int       # character offsets in the completion text
    end: int
    ref: float       # the reference's log-probability of the token
    target: float    # the target's, over the same text


def _spread(t_bytes: list[int], t_lps: list[float], spans: list[tuple[int, int]]
            ) -> list[float]:
    """Each target token's log-probability spread evenly over its bytes, summed over each
    (monotonic) byte span; one pass over both token lists."""
    bounds = [0]
    for nb in t_bytes:
        bounds.append(bounds[-1] + nb)
    out, j, n = [], 0, len(t_bytes)
    for lo, hi in spans:
        while j < n and bounds[j + 1] <= lo and t_bytes[j]:
            j += 1
        total, k = 0.0, j
        while k < n and bounds[k] < hi:
            nb = t_bytes[k]
            if nb:
                overlap = min(hi, bounds[k + 1]) - max(lo, bounds[k])
                if overlap > 0:
                    total += float(t_lps[k]) * overlap / nb
            elif bounds[k] >= lo:       # a zero-byte token counts where it stands
                total += float(t_lps[k])
            k += 1
        out.append(total)
    return out


def token_pieces(c: Completion, s: Score) -> tuple[list[TokenPiece], bool] | None:
    """The reference's tokens over the continuation: each one's character span in the
    completion text, its reference log-probability and the target's over the same text; and
    whether the spans are approximate (a split character decoded as U+FFFD).

    None when the stored columns do not line up (nothing is guessed)."""
    ref_lps = s.ref_token_logprobs
    text = c.text
    ascii_text = text.isascii()
    n_bytes = len(text) if ascii_text else len(text.encode())
    if not ref_lps or not text or len(s.ref_tokens) != len(ref_lps):
        return None
    t_bytes = [len(b) for b in target_bytes(c)]
    t_lps = list(c.logprobs)
    if len(t_bytes) != len(t_lps) or any(x is None for x in t_lps) or sum(t_bytes) != n_bytes:
        return None
    approx = False
    if s.alignment == "ids" and len(s.ref_tokens) == len(t_lps):
        r_bytes, start, per_ref_t = t_bytes, 0, [float(x) for x in t_lps]
    else:
        r_bytes = [len(p.encode()) for p in s.ref_tokens]
        start = -len(s.straddle.encode()) if s.straddle else 0
        if start + sum(r_bytes) != n_bytes:
            approx = True      # a split character decoded as U+FFFD: spans are near, not exact
        spans, pos = [], start
        for nb in r_bytes:
            spans.append((max(pos, 0), min(pos + nb, n_bytes)))
            pos += nb
        per_ref_t = _spread(t_bytes, t_lps, spans)
    # Token byte ends -> character ends: a token ending inside a character shows that
    # character (the page never splits one); lengths in UTF-16 units, as JavaScript counts.
    if ascii_text:
        char_end = None
    else:
        char_end = [0]                 # char_end[i]: byte offset where character i ends
        for ch in text:
            char_end.append(char_end[-1] + len(ch.encode()))
    pieces: list[TokenPiece] = []
    pos, cur, ci = start, 0, 0
    for nb, r, t in zip(r_bytes, ref_lps, per_ref_t, strict=True):
        end = min(max(pos + nb, 0), n_bytes)
        pos += nb
        if char_end is None:
            stop = end
        else:
            while ci < len(text) and char_end[ci] < end:
                ci += 1               # characters starting before byte `end`
            stop = ci
        if stop <= cur and pieces:    # nothing of its own to show: its mass joins the last
            last = pieces[-1]
            pieces[-1] = TokenPiece(last.start, last.end, last.ref + r, last.target + t)
            continue
        pieces.append(TokenPiece(cur, max(cur, stop), float(r), float(t)))
        cur = max(cur, stop)
    if cur < len(text) and pieces:
        last = pieces[-1]
        pieces[-1] = TokenPiece(last.start, len(text), last.ref, last.target)
    return pieces, approx


def pieces_json(c: Completion, s: Score) -> dict[str, Any] | None:
    """The pieces as a score row keeps them (``Score.heat``): character ends and both
    log-probabilities (4 decimals: what the page shows and the themes weigh), so the report
    and the themes never read the completion's token columns again."""
    found = token_pieces(c, s)
    if found is None:
        return None
    pieces, approx = found
    return {"e": [p.end for p in pieces], "r": [round(p.ref, 4) for p in pieces],
            "t": [round(p.target, 4) for p in pieces], "h": text_digest(c.text),
            **({"approx": True} if approx else {})}


def text_digest(text: str) -> str:
    """Which text the stored pieces index (16 hex digits): a text shown with a secret cut out
    of it, or edited, is another text, and its pieces are not used."""
    return hashlib.blake2b(text.encode(), digest_size=8).hexdigest()


def pieces_fit(s: Score, text: str) -> bool:
    """Whether ``s``'s stored pieces index ``text`` (rows without a digest: by length)."""
    h = s.heat or {}
    if "h" in h:
        return h["h"] == text_digest(text)
    ends = h.get("e") or [0]
    return ends[-1] == len(text)


def stored_pieces(s: Score) -> tuple[list[TokenPiece], bool] | None:
    """The pieces a score row keeps (None when it keeps none or they are damaged)."""
    h = s.heat
    if not isinstance(h, dict):
        return None
    ends, ref, tgt = h.get("e"), h.get("r"), h.get("t")
    if not (isinstance(ends, list) and isinstance(ref, list) and isinstance(tgt, list)
            and len(ends) == len(ref) == len(tgt)):
        return None
    pieces, start = [], 0
    for e, r, t in zip(ends, ref, tgt, strict=True):
        pieces.append(TokenPiece(start, e, float(r), float(t)))
        start = e
    return pieces, bool(h.get("approx"))


def _pieces(c: Completion | None, s: Score) -> tuple[list[TokenPiece], bool] | None:
    if s.heat is not None:
        return stored_pieces(s)
    return token_pieces(c, s) if c is not None else None


def token_heat(c: Completion | None, s: Score, text: str | None = None
               ) -> dict[str, Any] | None:
    """Per reference token over the continuation: its length in the completion text (UTF-16
    units, as the page slices the text), reference and target log-probabilities. From the
    score row's stored pieces when it has them (``c`` may then be None and ``text`` the
    completion text), else from the completion's columns.

    None when the stored columns do not line up (nothing is guessed)."""
    found = _pieces(c, s)
    if found is None:
        return None
    pieces, approx = found
    text = text if text is not None else c.text if c is not None else ""
    if text.isascii():
        lengths = [p.end - p.start for p in pieces]
    else:
        lengths = [len(text[p.start:p.end].encode("utf-16-le")) // 2 for p in pieces]
    return {"l": lengths, "r": [round(p.ref, 2) for p in pieces],
            "t": [round(p.target, 2) for p in pieces], **({"approx": True} if approx else {})}


def token_gaps(c: Completion | None, s: Score) -> list[tuple[int, int, float]] | None:
    """(start, end, target minus reference log-probability) per reference token, in
    characters of the completion text: how much easier the target found each piece (the
    themes' per-token gap). From the score row's stored pieces when it has them."""
    found = _pieces(c, s)
    if found is None:
        return None
    return [(p.start, p.end, p.target - p.ref) for p in found[0]]


class GapStore:
    """Every row's per-token gaps (:func:`token_gaps`) in a temporary file, read back one
    row at a time: the themes weigh each phrase by the gaps of every row of a group, and at
    100,000 rows those gaps would be hundreds of megabytes of Python tuples. Memory: an
    offset per row. Call it with a ranked row (anything with ``row_id``) for its gaps."""

    def __init__(self) -> None:
        self._fh = tempfile.TemporaryFile()  # noqa: SIM115 - closed by close()
        self._at: dict[str, tuple[int, int]] = {}

    def add(self, row_id: str, spans: list[tuple[int, int, float]] | None) -> None:
        if not spans:
            self._at.pop(row_id, None)
            return
        bounds = array("i", [x for a, b, _ in spans for x in (a, b)])
        values = array("d", [g for _, _, g in spans])
        self._fh.seek(0, 2)
        self._at[row_id] = (self._fh.tell(), len(spans))
        self._fh.write(bounds.tobytes() + values.tobytes())

    def __contains__(self, row_id: str) -> bool:
        return row_id in self._at

    def __call__(self, row: Any) -> list[tuple[int, int, float]] | None:
        at = self._at.get(row.row_id)
        if at is None:
            return None
        offset, n = at
        self._fh.seek(offset)
        data = self._fh.read(16 * n)
        bounds, values = array("i"), array("d")
        bounds.frombytes(data[: 8 * n])
        values.frombytes(data[8 * n:])
        return list(zip(bounds[0::2], bounds[1::2], values, strict=True))

    def close(self) -> None:
        self._fh.close()

    def __enter__(self) -> GapStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
