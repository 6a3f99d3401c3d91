"""Per-token data: where each reference token sits in a completion and what each model gave it.

On the ``ids`` alignment path reference and target tokens are the same tokens. On the ``text``
path (different tokenisations) each target token's log-probability is spread evenly over its
UTF-8 bytes and summed over the bytes each reference token covers. The report draws the
result as a heatmap (``token_heat``); the themes weigh phrases by it (``token_gaps``).
"""

from __future__ import annotations

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


def token_heat(c: Completion, s: Score) -> dict[str, Any] | None:
    """Per reference token over the continuation: its length in the completion text (UTF-16
    units, as the page slices the text), reference and target log-probabilities.

    None when the stored columns do not line up (nothing is guessed)."""
    found = token_pieces(c, s)
    if found is None:
        return None
    pieces, approx = found
    text = c.text
    if text.isascii():
        lengths = [p.end - p.start for p in pieces]
    else:
        lengths = [len(text[p.start:p.end].encode("utf-16-le")) // 2 for p in pieces]
    return {"l": lengths, "r": [round(p.ref, 2) for p in pieces],
            "t": [round(p.target, 2) for p in pieces], **({"approx": True} if approx else {})}


def token_gaps(c: Completion, s: Score) -> list[tuple[int, int, float]] | None:
    """(start, end, target minus reference log-probability) per reference token, in
    characters of the completion text: how much easier the target found each piece (the
    themes' per-token gap)."""
    found = token_pieces(c, s)
    if found is None:
        return None
    return [(p.start, p.end, p.target - p.ref) for p in found[0]]
