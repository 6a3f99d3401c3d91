"""From two sets of token log-probabilities to the gap between the models.

Per side: mean NLL per token (nats) over that side's scored tokens, perplexity = exp(mean
NLL), and bits per byte = total NLL / (ln 2 x continuation bytes). Then:

- ``ppl_diff = PPL_ref - PPL_target`` (the paper's ranking key): large when the reference
  finds the text surprising and the target finds it easy. Being a plain difference, it also
  grows with the reference's own surprise, which favours odd text in general.
- ``nll_diff = NLL_ref - NLL_target`` = log(PPL_ref / PPL_target): a log-ratio, scale-free.
- ``bpb_diff = BPB_ref - BPB_target``: per byte, so it does not depend on how either
  tokenizer splits the text (the right key across tokenizer families).
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from .align import ScoringItem
from .heat import pieces_json
from .records import Completion, Score

LN2 = math.log(2.0)


def side(logprobs: Sequence[float], n_bytes: int) -> tuple[float, float, float]:
    """(mean NLL per token, perplexity, bits per byte) of one side."""
    total = -math.fsum(logprobs)
    n = len(logprobs)
    nll = total / n if n else float("nan")
    ppl = math.exp(nll) if n and nll < 700 else float("inf") if n else float("nan")
    bpb = total / (LN2 * n_bytes) if n_bytes and n else float("nan")  # no tokens: no side
    return nll, ppl, bpb


def score_row(c: Completion, item: ScoringItem, ref_logprobs: Sequence[float]) -> Score:
    target = [float(x) for x in c.logprobs if x is not None]
    nll_t, ppl_t, bpb_t = side(target, item.n_bytes)
    nll_r, ppl_r, bpb_r = side(ref_logprobs, item.n_bytes)
    s = Score(
        prefill_id=c.prefill_id, framing=c.framing, corpus=c.corpus, alignment=item.alignment,
        n_target_tokens=len(target), n_ref_tokens=len(ref_logprobs), n_bytes=item.n_bytes,
        nll_target=nll_t, nll_ref=nll_r, ppl_target=ppl_t, ppl_ref=ppl_r,
        ppl_diff=ppl_r - ppl_t, nll_diff=nll_r - nll_t,
        bpb_target=bpb_t, bpb_ref=bpb_r, bpb_diff=bpb_r - bpb_t,
        straddle=item.straddle, ref_token_logprobs=[float(x) for x in ref_logprobs],
        ref_tokens=list(item.ref_tokens or []))
    s.heat = pieces_json(c, s)
    return s
