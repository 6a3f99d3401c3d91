"""Degraded data is an error, never a number.

Each check looks at one completion as returned and names what makes it untrustworthy. A
marked row is kept in completions.jsonl (it was paid for, and the reason is evidence about
the endpoint) but left out of the ranking; the manifest counts each reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from itertools import repeat
from operator import gt, itemgetter, le

from .records import Completion

# Greedy check tolerance: servers round logprobs, and ties between top tokens happen.
GREEDY_TOLERANCE = 1e-3
SENTINEL = -9999.0
_second = itemgetter(1)

REASONS = {
    "empty": "the completion has no tokens",
    "no_logprobs": "the response carried no token log-probabilities",
    "logprob_count": "fewer log-probabilities than tokens",
    "sentinel_logprobs": "log-probabilities are placeholders (-9999, positive, or all zero)",
    "text_mismatch": "the tokens do not rebuild the returned text",
    "not_greedy": "a chosen token is not the argmax of its top log-probabilities",
    "prefill_dropped": "the server ignored the prefill and started its own text",
    "prefill_altered": "the prompt the server echoed back does not carry the prefill intact",
    "context_mismatch": "the reference could not rebuild the context the target saw",
}


def rebuilt_text(c: Completion) -> str:
    """The continuation rebuilt from its tokens: bytes when given (they keep split UTF-8
    characters whole), token strings otherwise. Invalid bytes (a model can emit a lone
    continuation byte) decode to U+FFFD, as servers do when they build the text."""
    if c.token_bytes is not None:
        return b"".join(bytes(b) for b in c.token_bytes).decode("utf-8", errors="replace")
    return "".join(c.tokens)


def rebuilds(c: Completion) -> bool:
    """Do the tokens rebuild the returned text? A length-capped completion may end inside a
    character, whose partial bytes a server leaves out of the text."""
    rebuilt = rebuilt_text(c)
    if rebuilt == c.text:
        return True
    return (c.token_bytes is not None and c.finish_reason == "length"
            and rebuilt.rstrip("\ufffd") == c.text)


def assess(c: Completion) -> list[str]:
    """Reasons this completion cannot be scored; empty when it can."""
    reasons: list[str] = []
    if c.error is not None:
        return reasons
    if c.mode == "reference-only":  # no target logprobs by design; only the text is checked
        return [] if c.text else ["empty"]
    if not c.tokens:
        if c.logprobs:
            return ["logprob_count"]
        return ["no_logprobs"] if c.text else ["empty"]
    if not c.logprobs:
        return ["no_logprobs"]
    lps = c.logprobs
    has_none = None in lps
    if len(lps) != len(c.tokens) or has_none:
        reasons.append("logprob_count")
    if placeholders([x for x in lps if x is not None] if has_none else lps):
        reasons.append("sentinel_logprobs")
    if not c.ids_only and not rebuilds(c):  # ids alone: checked by alignment (align.py)
        reasons.append("text_mismatch")
    if c.top_logprobs and _not_greedy(lps, c.top_logprobs):
        reasons.append("not_greedy")
    return reasons


def placeholders(vals: list[float]) -> bool:
    """Are these log-probabilities stand-ins rather than values: -9999, positive, or all zero?
    (Shared by the completion check above and the prompt echo's, providers/base.py.)"""
    # map over operator functions: the same comparisons as a generator, at C speed
    return any(map(le, vals, repeat(SENTINEL))) or any(map(gt, vals, repeat(1e-6))) or (
        len(vals) > 1 and vals.count(0.0) == len(vals))


def _not_greedy(lps: list[float | None], tops: list[list[list]]) -> bool:
    try:  # every value a number (nearly always): max over them in C
        for lp, top in zip(lps, tops, strict=False):
            if top and max(map(_second, top)) > lp + GREEDY_TOLERANCE:
                return True
        return False
    except TypeError:  # a None among them: the exact walk below skips it
        pass
    for lp, top in zip(lps, tops, strict=False):
        if lp is None or not top:
            continue
        best = max((t[1] for t in top if t[1] is not None), default=None)
        if best is not None and best > lp + GREEDY_TOLERANCE:
            return True
    return False


def count_reasons(rows: Iterable[Completion]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for c in rows:
        for r in c.degraded:
            counts[r] += 1
    return dict(counts)
