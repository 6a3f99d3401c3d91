"""Ranking: completions by the perplexity gap, within each (corpus, framing).

Raw and chat rows are never pooled, nor are corpora: their score scales differ. Rows are left
out of the ranking, and counted by reason, when they are degraded, failed, unscored, or
shorter than ``min_tokens`` (the paper's released rows put 2-token completions at rank 0:
perplexity over two tokens is mostly noise), and, when ``min_compression_ratio`` is set,
when they are repetitive: zlib-compressed size / raw size below it (``0000...``, ``;;;;...``
compress to a few percent; prose to about half). Off by default until the organism zoo
justifies a default: on the authors' released rows (54 runs x top 100), 0.2 removes 16 rows,
none of them flagged (tests/test_released_rows.py).
"""

from __future__ import annotations

import math
import zlib
from collections import Counter, defaultdict
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

from .errors import ConfigError
from .records import SCORE_KEYS, Completion, CompletionMeta, Score, ScoreNumbers

# ranked.csv's columns, in order (ranked.jsonl holds every field of RankedRow).
COLUMNS = ["corpus", "framing", "rank", "round", "ppl_diff", "nll_diff", "bpb_diff",
           "vs_floor", "ppl_ref", "ppl_target", "n_target_tokens", "finish_reason", "alignment",
           "prefill_id", "prefill", "completion"]


@dataclass(frozen=True, slots=True)
class RankedRow:
    """One completion's place in its (corpus, framing) ranking: a line of ranked.jsonl.

    ``rank`` counts from 0 within the group; ``rank_key`` names the score it was ranked by;
    ``mode`` is "reference-only" for a target without log-probabilities (ranked by
    ``nll_ref``); ``vs_floor`` is the gap in units of the run's noise floor (None when no
    floor is known); ``straddle`` is the context text a straddling reference token covered;
    ``round`` is the audit round that asked for the row (1, or 2 for a prefill derived from
    round one's ranking: rounds.py); ranked.jsonl files written before rounds read as 1.
    """

    corpus: str
    framing: str
    rank: int
    rank_key: str = "ppl_diff"
    ppl_diff: float | None = None
    nll_diff: float | None = None
    bpb_diff: float | None = None
    ppl_ref: float | None = None
    ppl_target: float | None = None
    n_target_tokens: int | None = None
    n_ref_tokens: int | None = None
    finish_reason: str | None = None
    alignment: str | None = None
    straddle: str | None = None
    prefill_id: str = ""
    prefill: str = ""
    completion: str = ""
    nll_ref: float | None = None
    mode: str | None = None
    vs_floor: float | None = None
    round: int = 1

    @property
    def row_id(self) -> str:
        """The row's key everywhere in a run directory: ``prefill_id:framing``."""
        return f"{self.prefill_id}:{self.framing}"

    @property
    def score(self) -> float | None:
        """The value it was ranked by."""
        return getattr(self, self.rank_key, None)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> RankedRow:
        """A ranked.jsonl line; fields a newer or older version wrote are ignored or default."""
        known = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__}
        return cls(**known)


def groups(ranked: list[RankedRow]) -> dict[tuple[str, str], list[RankedRow]]:
    """Ranked rows by (corpus, framing), each group in rank order: one ranking each."""
    out: dict[tuple[str, str], list[RankedRow]] = {}
    for row in ranked:
        out.setdefault((row.corpus, row.framing), []).append(row)
    for rows in out.values():
        rows.sort(key=lambda r: r.rank)
    return out


def vs_floor(nll_diff: float | None, floor: float | None) -> float | None:
    """A row's gap in units of the noise floor (blackbox_audit/noise.py): below 1, numerical
    noise alone could have produced it."""
    if nll_diff is None or not floor or not math.isfinite(nll_diff):
        return None
    return round(nll_diff / floor, 2)


# Keys for targets without log-probabilities (--reference-only): the reference's mean NLL per
# token alone, higher = more surprising to the reference. A degraded signal, labelled as such.
REFERENCE_ONLY_KEYS = ("nll_ref",)

# Below this many bytes compression ratios say nothing (zlib's header dominates).
MIN_BYTES_FOR_RATIO = 20


def compression_ratio(text: str) -> float:
    """zlib-compressed size over raw size: low for repetitive text."""
    data = text.encode()
    return len(zlib.compress(data, 9)) / len(data) if data else 1.0


def repetitive(text: str, min_ratio: float) -> bool:
    return (min_ratio > 0 and len(text.encode()) >= MIN_BYTES_FOR_RATIO
            and compression_ratio(text) < min_ratio)


@dataclass(frozen=True)
class RankConfig:
    key: str = "ppl_diff"
    min_tokens: int = 5
    min_compression_ratio: float = 0.0   # 0 = off
    noise_floor: float | None = None     # nats/token; rows get vs_floor = nll_diff / floor

    def __post_init__(self) -> None:
        if self.key not in SCORE_KEYS + REFERENCE_ONLY_KEYS:
            raise ConfigError(f"Cannot rank by {self.key!r}; choose one of "
                              f"{', '.join(SCORE_KEYS + REFERENCE_ONLY_KEYS)}.")
        if self.min_tokens < 0:
            raise ConfigError("--min-tokens must be 0 or more.")
        if not 0.0 <= self.min_compression_ratio < 1.0:
            raise ConfigError("--min-compression-ratio must be in [0, 1); 0 turns it off.")

    def to_json(self) -> dict[str, Any]:
        return asdict(self)


def rank(completions: Mapping[str, Completion | CompletionMeta],
         scores: Mapping[str, Score | ScoreNumbers],
         cfg: RankConfig) -> tuple[list[RankedRow], dict[str, int]]:
    """Ranked rows (all groups, each group from rank 0) and the count of rows left out.
    Reads no token column: the rank stage hands it rows without them
    (``RunDir.completion_meta``, ``RunDir.score_numbers``)."""
    left_out: Counter[str] = Counter()
    groups: dict[tuple[str, str], list[tuple[Any, Any]]] = defaultdict(list)
    for key, c in completions.items():
        if c.error is not None:
            left_out["failed"] += 1
            continue
        if c.degraded:
            left_out["degraded"] += 1
            continue
        s = scores.get(key)
        if s is None:
            left_out["unscored"] += 1
            continue
        # a reference-only row has no target tokens: its length is the reference's count
        length = s.n_ref_tokens if c.mode == "reference-only" else s.n_target_tokens
        if length < cfg.min_tokens:
            left_out["too_short"] += 1
            continue
        if repetitive(c.text, cfg.min_compression_ratio):
            left_out["repetitive"] += 1
            continue
        value = getattr(s, cfg.key)
        if value is None or not math.isfinite(value):  # no side, or an overflowing one
            left_out["no_score"] += 1
            continue
        groups[(c.corpus, c.framing)].append((c, s))
    out: list[RankedRow] = []
    for (corpus, framing) in sorted(groups):
        members = sorted(groups[(corpus, framing)],
                         key=lambda cs: (-getattr(cs[1], cfg.key), cs[0].prefill_id))
        for r, (c, s) in enumerate(members):
            out.append(RankedRow(
                corpus=corpus, framing=framing, rank=r, rank_key=cfg.key,
                ppl_diff=s.ppl_diff, nll_diff=s.nll_diff, bpb_diff=s.bpb_diff,
                ppl_ref=s.ppl_ref, ppl_target=s.ppl_target,
                n_target_tokens=s.n_target_tokens, n_ref_tokens=s.n_ref_tokens,
                finish_reason=c.finish_reason, alignment=s.alignment,
                straddle=s.straddle, prefill_id=c.prefill_id, prefill=c.prefill,
                completion=c.text, nll_ref=s.nll_ref, mode=c.mode,
                vs_floor=vs_floor(s.nll_diff, cfg.noise_floor),
                round=c.round))
    return out, dict(sorted(left_out.items()))
