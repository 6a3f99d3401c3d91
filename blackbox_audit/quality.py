"""Degraded data is an error, never a number.

Each check looks at one completion as returned and names what makes it untrustworthy. A
marked row is kept in completions.jsonl (it was paid for, and the reason is evidence about
the endpoint) but left out of the ranking; the manifest counts each reason.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable
from dataclasses import replace
from itertools import chain, repeat
from math import isfinite
from operator import gt, itemgetter, le

from .records import Completion
from .redact import REDACTED, Redactor

# Greedy check tolerance: servers round logprobs, and ties between top tokens happen.
GREEDY_TOLERANCE = 1e-3
SENTINEL = -9999.0
# No tokenizer in use has a token this long (the longest are runs of whitespace, ~128 bytes):
# an answer with more bytes than this per token asked for is not a completion of that length.
MAX_TOKEN_BYTES = 1024
_first, _second = itemgetter(0), itemgetter(1)

REASONS = {
    "empty": "the completion has no tokens",
    "no_logprobs": "the response carried no token log-probabilities",
    "logprob_count": "fewer log-probabilities than tokens",
    "sentinel_logprobs": "log-probabilities are placeholders or impossible (-9999, positive, "
                         "NaN or infinite, or all zero)",
    "text_mismatch": "the tokens do not rebuild the returned text",
    "not_greedy": "a chosen token is not the argmax of its top log-probabilities",
    "prefill_dropped": "the server ignored the prefill and started its own text",
    "prefill_altered": "the prompt the server echoed back does not carry the prefill intact",
    "context_mismatch": "the reference could not rebuild the context the target saw",
    "over_length": "the answer is longer than the max_tokens asked for (more tokens, or more "
                   "bytes than any tokenizer's tokens hold)",
    "malformed_answer": "a 2xx answer whose JSON is not in the endpoint's documented shape",
    "secret_withheld": "the answer held this run's credential or a string shaped like an API "
                       "key: cut from every file, and the row is not scored",
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


def assess(c: Completion, max_tokens: int | None = None) -> list[str]:
    """Reasons this completion cannot be scored; empty when it can. ``max_tokens`` is what
    was asked for: a longer answer is refused before anything reads it."""
    reasons: list[str] = []
    if c.error is not None:
        return reasons
    if max_tokens is not None and over_length(c, max_tokens):
        return ["over_length"]
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


def over_length(c: Completion, max_tokens: int) -> bool:
    """More tokens than asked for, or more text than that many tokens can hold."""
    return (len(c.tokens) > max_tokens or len(c.logprobs) > max_tokens
            or len(c.text) > max_tokens * MAX_TOKEN_BYTES)


def placeholders(vals: list[float]) -> bool:
    """Are these log-probabilities stand-ins rather than values: -9999, positive, NaN or
    infinite, or all zero? (Shared by the completion check above and the prompt echo's,
    providers/base.py.)"""
    # map over C functions: the same tests as a generator, at C speed
    return (not all(map(isfinite, vals)) or any(map(le, vals, repeat(SENTINEL)))
            or any(map(gt, vals, repeat(1e-6)))
            or (len(vals) > 1 and vals.count(0.0) == len(vals)))


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


def withhold_secrets(c: Completion, redactor: Redactor) -> Completion:
    """The row as it may be kept. When its text, its tokens, their bytes or any top
    alternative hold a secret, or the mark of one cut out (the transport cuts secrets from
    every answer before it is parsed, live and replayed alike), only the redacted text and
    the numbers stay, and the row is marked ``secret_withheld`` alone. Everything written
    downstream comes from this record."""
    if c.error is not None:
        error = redactor.text(c.error)
        return c if error == c.error else replace(c, error=error)
    texts = [c.text, "".join(c.tokens)]
    if c.token_bytes:
        texts.append(b"".join(bytes(b) for b in c.token_bytes).decode("utf-8", "replace"))
    if c.top_logprobs:
        texts.append("".join(str(t[0][0]) for t in c.top_logprobs if t and t[0]))
        # every alternative (a cut one may sort anywhere), gathered at C speed
        texts.append("\x00".join(map(str, map(_first, chain.from_iterable(c.top_logprobs)))))
    joined = "\x00".join(texts)  # one search for all (no fragment spans a separator)
    if REDACTED not in joined and redactor.text(joined) == joined:
        return c
    return replace(c, text=redactor.text(c.text), tokens=[], token_ids=None, token_bytes=None,
                   top_logprobs=None, end_token=None, degraded=["secret_withheld"],
                   model=redactor.text(c.model or "") or None)


def count_reasons(rows: Iterable[Completion]) -> dict[str, int]:
    counts: Counter[str] = Counter()
    for c in rows:
        for r in c.degraded:
            counts[r] += 1
    return dict(counts)
