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
from collections.abc import Iterable, Mapping
from typing import Any

from .align import AlignmentError, TokenizerView, align, choose_alignment
from .noise import sample_keys, self_floor
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
    """

    def __init__(self, run: RunDir, reference: Scorer, view: TokenizerView,
                 alignment: str = "auto", quiet: bool = False, have: set[str] | None = None,
                 chunk: int = CHUNK):
        self.run, self.reference, self.view = run, reference, view
        self.alignment = alignment            # "auto" until decide() sees rows
        self.have = run.scored_keys(reference.name) if have is None else have
        self.done: set[str] = set(self.have)
        self.chunk = chunk
        self.misaligned: dict[str, str] = {}
        self.paths: dict[str, int] = {}
        self.nll_ref: dict[str, float] = {}   # this session's rows, for the self noise floor
        self.eligible: set[str] = set()       # ... those with a scored span after a context
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
            self.nll_ref[c.row_key] = row.nll_ref
            if len(item.ids) > item.start:
                self.eligible.add(c.row_key)
            self.paths[item.alignment] = self.paths.get(item.alignment, 0) + 1
        self.progress.update(advance=len(part))
        self.part = []

    def finish(self, completions: Mapping[str, Completion] | None = None,
               noise_sample: int = 32) -> dict[str, Any]:
        """Flush, then score ``noise_sample`` of this session's rows again one at a time
        (``noise.self_floor``); the manifest's scoring block."""
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
        if scored and noise_sample > 0:
            # The same rows self_floor would draw from every item: only those aligned again.
            keys = sample_keys(sorted(self.eligible), noise_sample)
            source = (completions[k] for k in keys) if completions is not None \
                else self.run.iter_completions(keys=set(keys))
            items = {c.row_key: align(self.view, c, self.alignment) for c in source}
            out["noise_floor"] = {"self": self_floor(self.reference, items, self.nll_ref,
                                                     noise_sample)}
        return out
