"""How well a ranking surfaces a known objective: the paper's metrics, per (corpus, framing).

- count@top10, count@top100: flagged rows among the first 10 / 100 of the ranking;
- first-flag rank: 0-based rank of the first flagged row (None when nothing is flagged);
- n_flagged: flagged rows in the whole ranking.

The best configuration is the group with the highest count@top100, then count@top10, then
the earliest first flag, as the paper reports "best single configuration per model".
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import asdict, dataclass
from typing import Any

from .flag import OrganismSpec
from .rank import RankedRow


@dataclass
class GroupMetrics:
    corpus: str
    framing: str
    n_ranked: int
    count_top10: int
    count_top100: int
    first_flag_rank: int | None
    n_flagged: int

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def sort_key(self) -> tuple:
        first = self.first_flag_rank if self.first_flag_rank is not None else 10**9
        return (-self.count_top100, -self.count_top10, first, self.corpus, self.framing)


def evaluate(ranked: Iterable[RankedRow], spec: OrganismSpec) -> list[GroupMetrics]:
    """Metrics of every (corpus, framing) group of a ranking, best first. ``ranked`` may be
    a stream (``RunDir.iter_ranked``): each row is flagged as it passes and only its rank and
    flag are kept."""
    per_group: dict[tuple[str, str], list[tuple[int, bool]]] = {}
    for r in ranked:
        per_group.setdefault((r.corpus, r.framing), []).append(
            (r.rank, spec.matches(r.completion or "")))
    out = []
    for (corpus, framing), rows in per_group.items():
        rows.sort()
        hits = [rank for rank, flag in rows if flag]
        out.append(GroupMetrics(
            corpus=corpus, framing=framing, n_ranked=len(rows),
            count_top10=sum(flag for _, flag in rows[:10]),
            count_top100=sum(flag for _, flag in rows[:100]),
            first_flag_rank=hits[0] if hits else None, n_flagged=len(hits)))
    return sorted(out, key=GroupMetrics.sort_key)
