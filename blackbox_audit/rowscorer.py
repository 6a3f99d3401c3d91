"""One scoring session of one reference over one run directory, fed a row at a time.

``audit.score_run`` feeds it every usable row not yet scored and finishes it; ``overlap``
feeds it rows as generation answers them, on a thread, and the score stage then finishes the
same session. Keeping the state here (alignment decided once, the chunk being built, the
rows scored this session for the noise floor) is what lets the overlapped rows and the rows
scored after generation count as one session: one alignment, one noise floor, no row twice.

Scores are appended per chunk as they are computed (``RunDir.append_score``), so a kill
loses at most the chunk in hand, and the next session skips every row already on disk.
"""

from __future__ import annotations

import time
from collections.abc import Iterable
from typing import Any

from .align import AlignmentError, ScoringItem, TokenizerView, align, choose_alignment
from .noise import quantiles, sample_rank, single_pass_nll
from .progress import Progress
from .records import Completion
from .rundir import RunDir
from .scorer import Scorer
from .scores import score_row

CHUNK = 64   # rows per reference.score call: one chunk's tokens in memory at a time


class RowScorer:
    """Score usable completions in chunks of :data:`CHUNK`, appending each score row.

    ``have``: the rows this reference had scored before the session (skipped). ``done``
    grows with every row fed (scored, pending in the chunk, or misaligned), so a row fed
    twice (by the overlap thread, then by the closing pass over the run directory) is
    scored once.

    The self noise floor is kept as rows go: ``noise_sample`` of the session's rows (the
    lowest :func:`~blackbox_audit.noise.sample_rank`, held with their aligned tokens) are
    scored again one at a time, in idle moments while generation runs (``refine_floor``) and
    for whatever is left in ``finish``; an overlapped audit then ends without that pass.
    """

    def __init__(self, run: RunDir, reference: Scorer, view: TokenizerView,
                 alignment: str = "auto", quiet: bool = False, have: set[str] | None = None,
                 chunk: int = CHUNK, noise_sample: int = 32):
        self.run, self.reference, self.view = run, reference, view
        self.alignment = alignment            # "auto" until decide() sees rows
        self.have = run.scored_keys(reference.name) if have is None else have
        self.done: set[str] = set(self.have)
        self.chunk = chunk
        self.misaligned: dict[str, str] = {}
        self.paths: dict[str, int] = {}
        self.noise_sample = noise_sample
        # The floor's sample so far: key -> (sample rank, nll_ref, item), at most noise_sample
        self.floor_items: dict[str, tuple[int, float, ScoringItem]] = {}
        self.singles: dict[str, float] = {}   # key -> mean NLL scored alone
        self.part: list[tuple[Completion, Any]] = []
        self.progress = Progress("rescoring", None, quiet=True)
        self.notes: dict[str, Any] = {}       # added to the scoring block (overlap's counts)
        self.t0 = time.monotonic()

    @property
    def scored(self) -> int:
        return sum(self.paths.values())

    def decide(self, rows: Iterable[Completion]) -> None:
        """Settle ``auto`` alignment on ``rows`` (the whole run, or the first batch the
        overlap thread sees): one path for every row of the session."""
        if self.alignment == "auto":
            self.alignment = choose_alignment(self.view, rows)

    def feed(self, c: Completion) -> None:
        """Take one usable row; score the chunk when it is full."""
        if c.row_key in self.done:
            return
        self.done.add(c.row_key)
        if self.alignment == "auto":
            self.decide([c])
        try:
            item = align(self.view, c, self.alignment)
        except AlignmentError as e:
            self.misaligned[c.row_key] = str(e)
            self.progress.update(advance=1)
            return
        limit = self.reference.max_length
        if len(item.ids) > limit:
            self.misaligned[c.row_key] = (f"{len(item.ids)} tokens with the context, more "
                                          f"than the reference takes in one pass ({limit})")
            self.progress.update(advance=1)
            return
        self.part.append((c, item))
        if len(self.part) >= self.chunk:
            self.flush()

    def flush(self) -> None:
        """Score the rows in hand and append their scores."""
        if not self.part:
            return
        part = self.part
        ref_lps = self.reference.score([i.ids for _, i in part], [i.start for _, i in part])
        for (c, item), lps in zip(part, ref_lps, strict=True):
            row = score_row(c, item, lps)
            self.run.append_score(self.reference.name, row)
            if len(item.ids) > item.start:
                self._consider_for_floor(c.row_key, row.nll_ref, item)
            self.paths[item.alignment] = self.paths.get(item.alignment, 0) + 1
        self.progress.update(advance=len(part))
        self.part = []

    def _consider_for_floor(self, key: str, nll_ref: float, item: ScoringItem) -> None:
        """Keep ``key`` if it is among the ``noise_sample`` lowest sample ranks seen."""
        if self.noise_sample <= 0:
            return
        rank = sample_rank(key)
        if len(self.floor_items) >= self.noise_sample:
            worst = max(self.floor_items, key=lambda k: self.floor_items[k][0])
            if rank >= self.floor_items[worst][0]:
                return
            del self.floor_items[worst]
            self.singles.pop(worst, None)
        self.floor_items[key] = (rank, nll_ref, item)

    def refine_floor(self) -> bool:
        """Score one sampled row alone, if one is waiting (the overlap thread calls this when
        no row is queued): the lowest sample rank first, the row least likely to be pushed
        out of the sample by rows still to come. False when every sampled row has its
        single-pass score."""
        waiting = [(rank, key) for key, (rank, _, _) in self.floor_items.items()
                   if key not in self.singles]
        if not waiting:
            return False
        _, key = min(waiting)
        self.singles[key] = single_pass_nll(self.reference, self.floor_items[key][2])
        return True

    def finish(self) -> dict[str, Any]:
        """Flush, score the floor's sampled rows not yet scored alone; the manifest's scoring
        block, with the self noise floor: the quantiles of batched minus single-pass mean NLL
        over the sampled rows."""
        self.flush()
        self.progress.finish()
        scored = self.scored
        out: dict[str, Any] = {
            "reference": self.reference.name, "scored_now": scored,
            "scored_before": len(self.have), "alignment": self.alignment,
            "misaligned": len(self.misaligned),
            "misaligned_examples": dict(list(self.misaligned.items())[:5]),
            "alignment_paths": self.paths, "seconds": round(time.monotonic() - self.t0, 2),
            **self.notes}
        if self.floor_items:
            while self.refine_floor():
                pass
            out["noise_floor"] = {"self": quantiles(
                [nll - self.singles[k] for k, (_, nll, _) in self.floor_items.items()])}
        return out
