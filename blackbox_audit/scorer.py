"""The scorer contract: token ids and a scored span in, per-token log-probabilities out.

Everything that rescores text (an audit's reference, ``score-texts``' two models, ``verify``'s
claimed model) talks to a :class:`Scorer` and nothing else, so alignment, scores and ranking
never know which engine ran: the local transformers model (:class:`ReferenceModel`), a pool
of replicas on a cluster, or a server's prompt log-probabilities. A new engine is one more
class with these three members.

Why ids and not text: the caller has already aligned the text to the scorer's tokenizer
(``align``), so the scorer does no tokenizing of its own and two engines given the same ids
return comparable numbers.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Protocol, runtime_checkable

Progress = Callable[[int, int], None]   # (tokens done, tokens in all)


@runtime_checkable
class Scorer(Protocol):
    """What a scoring engine offers.

    - ``name``: what the scores are of (written into every scored row).
    - ``max_length``: the longest sequence one call takes; callers leave longer rows unscored
      (and say so) rather than send them.
    - ``score(sequences, starts)``: for each sequence, the log-probability of every token of
      ``seq[start:]`` given everything before it (``1 <= start <= len(seq)``), in input order.
      Results must not depend on how the engine batches (a test holds this for each engine).
    """

    name: str
    max_length: int

    def score(self, sequences: Sequence[Sequence[int]], starts: Sequence[int],
              progress: Progress | None = None) -> list[list[float]]: ...


def check_spans(sequences: Sequence[Sequence[int]], starts: Sequence[int],
                max_length: int) -> None:
    """What every engine refuses before any work: a scored span that starts before the
    second token or past the end, and a sequence longer than ``max_length`` (callers leave
    such rows unscored rather than send them)."""
    for seq, s in zip(sequences, starts, strict=True):
        if not 1 <= s <= len(seq):
            raise ValueError(f"scored span start {s} out of range for length {len(seq)}")
        if len(seq) > max_length:
            raise ValueError(f"a sequence of {len(seq)} tokens is longer than the "
                             f"{max_length} one forward pass takes (max_length)")


__all__ = ["Progress", "Scorer", "check_spans"]
