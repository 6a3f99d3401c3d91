"""Themes: the phrases a finetune made easy, read off a ranking without a judge.

A ranking's top is where the finetuning objective leaks, but a reader still has to read it.
Themes say it in a few phrases: the word n-grams (n = 1..4) that recur in the top ``K`` rows of
one (corpus, framing) group and whose tokens the target finds far easier than the reference
does wherever they occur in the group, merged when they overlap, each with how many top rows
and group rows carry it and two example row ids (``prefill_id:framing``). Pure functions: no
I/O, no network, no model; the per-token gaps come from the caller (``heat.token_gaps``).

The statistic and its one setting are in ``docs/scores.md`` ("Themes"): candidates recur in
at least 3 distinct top rows (K = min(50, 10% of the distinct rows), at least 10; identical
continuations count once); a candidate's score is ``z = sum(x - mu) / (sigma * sqrt(n))`` over
the n rows carrying it, x its mean per-token gap in a row, mu and sigma over every token of
the group; it must pass a one-sided family-wise 5% (Bonferroni) over the candidates.

Memory: the rows are held by reference (the caller's), the top's n-grams (K <= 50 rows) and
the per-row values of the candidates; every row's tokens and gaps live only while it is
counted.
"""

from __future__ import annotations

import hashlib
import math
import re
from bisect import bisect_right
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass
from statistics import NormalDist
from typing import Any

from .rank import RankedRow

MAX_N = 4               # longest n-gram
TOP_CAP = 50            # K = min(TOP_CAP, TOP_SHARE * N), at least TOP_MIN
TOP_SHARE = 0.10
TOP_MIN = 10
MIN_TOP_ROWS = 3        # a theme recurs: at least this many distinct top rows carry it
ALPHA = 0.05            # family-wise: the chance that any candidate passes by noise alone
REP_SHARE = 0.75        # a theme's phrase is carried by at least this share of its best's rows
MAX_MEMBERS = 8         # merged phrases kept on a theme for display

# Words, digits, an inner apostrophe; or one clause-breaking punctuation mark (a break token).
_TOKEN = re.compile(r"[^\W_]+(?:'[^\W_]+)*|[.,;:!?()\[\]{}\"<>\n\u201c\u201d\u2013\u2014\u2026]")

# English function words. An n-gram made only of these says nothing about an objective.
STOP_WORDS = frozenset({
    "a", "about", "above", "after", "again", "against", "all", "am", "an", "and", "any", "are",
    "aren't", "as", "at", "be", "because", "been", "before", "being", "below", "between", "both",
    "but", "by", "can", "can't", "cannot", "could", "couldn't", "did", "didn't", "do", "does",
    "doesn't", "doing", "don't", "down", "during", "each", "few", "for", "from", "further", "had",
    "hadn't", "has", "hasn't", "have", "haven't", "having", "he", "he'd", "he'll", "he's", "her",
    "here", "here's", "hers", "herself", "him", "himself", "his", "how", "how's", "i", "i'd",
    "i'll", "i'm", "i've", "if", "in", "into", "is", "isn't", "it", "it's", "its", "itself",
    "just", "let's", "me", "more", "most", "mustn't", "my", "myself", "no", "nor", "not", "now",
    "of", "off", "on", "once", "only", "or", "other", "ought", "our", "ours", "ourselves", "out",
    "over", "own", "same", "shan't", "she", "she'd", "she'll", "she's", "should", "shouldn't",
    "so", "some", "such", "than", "that", "that's", "the", "their", "theirs", "them", "themselves",
    "then", "there", "there's", "these", "they", "they'd", "they'll", "they're", "they've", "this",
    "those", "through", "to", "too", "under", "until", "up", "very", "was", "wasn't", "we", "we'd",
    "we'll", "we're", "we've", "were", "weren't", "what", "what's", "when", "when's", "where",
    "where's", "which", "while", "who", "who's", "whom", "why", "why's", "will", "with", "won't",
    "would", "wouldn't", "you", "you'd", "you'll", "you're", "you've", "your", "yours", "yourself",
    "yourselves", "also", "s", "t",
})

Gram = tuple[str, ...]


@dataclass(frozen=True)
class Theme:
    """One theme of one (corpus, framing) group.

    ``phrase`` is its representative n-gram; ``score`` the best z of its members;
    ``top_rows`` / ``rows``: distinct rows carrying ``phrase`` among the top ``top`` / all
    ``total`` distinct rows of the group; ``examples``: the best-ranked top rows carrying it
    (``prefill_id:framing``); ``members``: the other n-grams merged into it, best first.
    """

    phrase: str
    score: float
    top_rows: int
    rows: int
    top: int
    total: int
    examples: tuple[str, ...]
    members: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        out["examples"] = list(self.examples)
        out["members"] = list(self.members)
        return out

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Theme:
        return cls(**{**obj, "examples": tuple(obj.get("examples") or ()),
                      "members": tuple(obj.get("members") or ())})


def normalise(text: str) -> str:
    """Whitespace-normalised text: what "identical continuations" compares."""
    return " ".join(text.split())


def collapse_duplicates(rows: Iterable[RankedRow]) -> list[tuple[RankedRow, int]]:
    """Rows with identical continuations (after whitespace normalisation) collapsed to the
    first one, with how many there were, in input order.

    Pass rows in rank order (as ``rank.groups`` gives them) and the kept row is the
    best-ranked. Rows of different (corpus, framing) groups are never collapsed together:
    they are different rankings. A 16-byte digest stands for each text, so the memory held is
    a few dozen bytes per distinct row, not a second copy of every text.
    """
    index: dict[tuple[Any, Any, bytes], int] = {}
    out: list[list[Any]] = []
    for row in rows:
        text = normalise(row.completion or "")
        key = (row.corpus, row.framing,
               hashlib.blake2b(text.encode(), digest_size=16).digest())
        at = index.get(key)
        if at is None:
            index[key] = len(out)
            out.append([row, 1])
        else:
            out[at][1] += 1
    return [(row, count) for row, count in out]


def top_size(n_rows: int) -> int:
    """K for a group of ``n_rows`` distinct rows: min(50, 10%), at least 10."""
    return max(TOP_MIN, min(TOP_CAP, int(n_rows * TOP_SHARE)))


def tokens(text: str) -> list[str]:
    """Lower-cased word tokens with clause punctuation kept as break tokens."""
    return _TOKEN.findall(text.lower().replace("\u2019", "'"))


def _is_word(tok: str) -> bool:
    return tok[0].isalnum()


def _grams(toks: Sequence[str], lengths: Iterable[int]) -> set[Gram]:
    """Every n-gram of the given lengths (break tokens included: callers filter or match)."""
    out: set[Gram] = set()
    for n in lengths:
        out.update(zip(*[toks[i:] for i in range(n)], strict=False))
    return out


def _phrase_grams(toks: Sequence[str]) -> set[Gram]:
    """A top row's candidate n-grams: no break token inside, not only stop words."""
    return {g for g in _grams(toks, range(1, MAX_N + 1))
            if all(_is_word(t) for t in g) and not all(t in STOP_WORDS for t in g)}


# Per-token gaps of a row: (start, end, target minus reference log-probability) per
# reference token, in characters of its completion (heat.token_gaps); None when unknown.
GapSpans = list[tuple[int, int, float]]
Gaps = Callable[[RankedRow], "GapSpans | None"]


def _row_gaps(row: RankedRow, gaps: Gaps | None) -> GapSpans:
    """The row's per-token gaps; without them, its mean gap (``nll_diff``, the same quantity
    averaged over the row) over its whole text: a coarser measurement of the same thing."""
    spans = gaps(row) if gaps is not None else None
    if spans:
        return spans
    g = row.nll_diff
    return [(0, len(row.completion or ""), float(g) if g is not None and math.isfinite(g)
             else 0.0)]


def _occurrence_gap(spans: GapSpans, ends: list[int], a: int, b: int) -> float | None:
    """Mean gap of the tokens overlapping characters [a, b)."""
    i = bisect_right(ends, a)
    total, n = 0.0, 0
    while i < len(spans) and spans[i][0] < b:
        total += spans[i][2]
        n += 1
        i += 1
    return total / n if n else None


def gap_z(values: Sequence[float], mu: float, sigma: float) -> float:
    """How far above the group's typical token a phrase's gaps sit: the z of the mean of its
    per-row gaps against the group's per-token gaps, sum(x - mu) / (sigma * sqrt(n))."""
    if not values or sigma <= 0:
        return 0.0
    return sum(x - mu for x in values) / (sigma * math.sqrt(len(values)))


def critical_z(m: int, alpha: float = ALPHA) -> float:
    """The z a candidate must pass when ``m`` are tested: one-sided, family-wise ``alpha``
    (Bonferroni)."""
    return NormalDist().inv_cdf(1 - alpha / max(m, 1))


def _rank_order(rows: list[RankedRow]) -> list[RankedRow]:
    return sorted(rows, key=lambda r: r.rank)


@dataclass
class _Cand:
    gram: Gram
    z: float                   # the score: effect size (see _candidates)
    top_idx: tuple[int, ...]   # indices into the top, in rank order
    df: int

    @property
    def phrase(self) -> str:
        return " ".join(self.gram)


def _row_tokens(text: str) -> list[tuple[str, int, int]]:
    """(lower-cased token, start, end) in ``text``'s own character offsets (break tokens
    included), the same tokens as :func:`tokens`."""
    return [(m.group(0).lower(), m.start(), m.end())
            for m in _TOKEN.finditer(text.replace("\u2019", "'"))]


def _candidates(top: list[RankedRow], group: Sequence[RankedRow], gaps: Gaps | None
                ) -> list[_Cand]:
    """Scored n-grams of the top, best first. A candidate recurs in at least
    ``MIN_TOP_ROWS`` top rows; it is kept when :func:`gap_z` over every row of the group that
    carries it passes the family-wise floor, and scored by its effect size: its mean gap
    above the group's typical token, in the group's standard deviations (so a phrase made far
    easier in a few rows outranks a word made a little easier in thousands)."""
    top_rows: dict[Gram, list[int]] = {}
    for i, row in enumerate(top):
        for g in _phrase_grams(tokens(row.completion or "")):
            top_rows.setdefault(g, []).append(i)
    wanted = {g: idx for g, idx in top_rows.items() if len(idx) >= MIN_TOP_ROWS}
    if not wanted:
        return []
    lengths = sorted({len(g) for g in wanted})
    firsts = {g[0] for g in wanted}     # most positions start no candidate: skip them at once
    per_row: dict[Gram, list[float]] = {g: [] for g in wanted}
    count = 0
    total = total_sq = 0.0
    for row in group:   # one pass; each row's tokens and gaps are dropped once counted
        spans = sorted(_row_gaps(row, gaps))
        values = [d for _, _, d in spans]
        count += len(values)
        total += sum(values)
        total_sq += sum(d * d for d in values)
        toks = _row_tokens(row.completion or "")
        words = [t for t, _, _ in toks]
        starts = [i for i, w in enumerate(words) if w in firsts]
        if not starts:
            continue
        ends = [e for _, e, _ in spans]
        found: dict[Gram, list[float]] = {}
        for i in starts:
            for n in lengths:
                gram = tuple(words[i:i + n])
                if len(gram) == n and gram in per_row:
                    x = _occurrence_gap(spans, ends, toks[i][1], toks[i + n - 1][2])
                    if x is not None:
                        found.setdefault(gram, []).append(x)
        for gram, xs in found.items():
            per_row[gram].append(sum(xs) / len(xs))
    if count < 2:
        return []
    mu = total / count
    sigma = math.sqrt(max(total_sq / count - mu * mu, 0.0))
    if sigma <= 0:
        return []
    floor = critical_z(len(wanted))
    out = []
    for g, idx in wanted.items():
        xs = per_row[g]
        if gap_z(xs, mu, sigma) > floor:
            effect = (sum(xs) / len(xs) - mu) / sigma
            out.append(_Cand(g, effect, tuple(sorted(idx)), len(xs)))
    out.sort(key=lambda c: (-c.z, -len(c.top_idx), -len(c.gram), c.phrase))
    return out


def _content(gram: Gram) -> int:
    return sum(t not in STOP_WORDS for t in gram)


def _edge_stops(gram: Gram) -> int:
    return (gram[0] in STOP_WORDS) + (gram[-1] in STOP_WORDS)


def _merge(cands: list[_Cand], limit: int) -> list[list[_Cand]]:
    """Themes from candidates (best first): a candidate joins every theme it overlaps (a
    shared non-stop word and at least half of the smaller one's top rows in common, or
    exactly the top rows of one of its members: phrases that always come together, such as
    the two halves of a sentence around a dash), which merges those themes into the oldest;
    a candidate that overlaps none starts a theme. The first ``limit`` themes, best first (a
    theme is as old as its best member)."""
    members: list[list[int]] = []            # per theme: candidate indices, or [] once merged
    words: list[set[str]] = []
    rows: list[set[int]] = []
    by_word: dict[str, set[int]] = {}
    by_rows: dict[frozenset[int], int] = {}  # a candidate's exact top rows -> its theme
    moved: dict[int, int] = {}               # merged theme -> the theme it went into

    def find(ti: int) -> int:
        while ti in moved:
            ti = moved[ti]
        return ti

    for ci, c in enumerate(cands):
        cw = {t for t in c.gram if t not in STOP_WORDS}
        cr = set(c.top_idx)
        same = frozenset(cr)
        hits = sorted({ti for w in cw for ti in by_word.get(w, ())
                       if 2 * len(cr & rows[ti]) >= min(len(cr), len(rows[ti]))}
                      | ({find(by_rows[same])} if same in by_rows else set()))
        if not hits:
            hits = [len(members)]
            members.append([])
            words.append(set())
            rows.append(set())
        keep = hits[0]
        members[keep].append(ci)
        by_rows.setdefault(same, keep)
        for ti in hits[1:]:
            moved[ti] = keep
            members[keep] += members[ti]
            words[keep] |= words[ti]
            rows[keep] |= rows[ti]
            for w in words[ti]:
                by_word[w].discard(ti)
            members[ti], words[ti], rows[ti] = [], set(), set()
        words[keep] |= cw
        rows[keep] |= cr
        for w in cw:
            by_word.setdefault(w, set()).add(keep)
    return [[cands[ci] for ci in sorted(m)] for m in members if m][:limit]


def _theme(members: list[_Cand], top: list[RankedRow], n_rows: int) -> Theme:
    best = members[0]
    eligible = [m for m in members if len(m.top_idx) >= REP_SHARE * len(best.top_idx)]
    rep = min(eligible, key=lambda m: (-_content(m.gram), -len(m.gram), _edge_stops(m.gram),
                                       -m.z, m.phrase))
    others = tuple(m.phrase for m in members if m is not rep)[:MAX_MEMBERS]
    return Theme(phrase=rep.phrase, score=round(best.z, 3), top_rows=len(rep.top_idx),
                 rows=rep.df, top=len(top), total=n_rows,
                 examples=tuple(top[i].row_id for i in rep.top_idx[:2]), members=others)


def themes(rows: Iterable[RankedRow], top: int | None = None, limit: int = 10,
           gaps: Gaps | None = None) -> list[Theme]:
    """The themes of ONE (corpus, framing) group's ranked rows, strongest first.

    ``rows`` need ``completion``, ``prefill_id``, ``framing``, a gap (``nll_diff`` or
    ``ppl_diff``) and ``rank`` (rows are ordered by it; without it, input order is the
    ranking). ``top`` overrides K (e.g. 10 against a released top 100). Deterministic: the
    same rows give the same themes in the same order. [] when the group is too small to have
    a top and a rest, or nothing in the top recurs more than chance would make it.
    """
    if limit <= 0:
        return []
    unique = [r for r, _ in collapse_duplicates(_rank_order(list(rows)))]
    n_rows = len(unique)
    k = top_size(n_rows) if top is None else top
    if top is None and n_rows < 2 * TOP_MIN:
        return []
    if k < MIN_TOP_ROWS or k >= n_rows:
        return []
    top_rows = unique[:k]
    clusters = _merge(_candidates(top_rows, unique, gaps), limit)
    return [_theme(members, top_rows, n_rows) for members in clusters]


def themes_by_group(ranked_rows: Iterable[RankedRow], top: int | None = None,
                    limit: int = 10, gaps: Gaps | None = None
                    ) -> dict[tuple[str, str], list[Theme]]:
    """Themes of every (corpus, framing) group of a ranking, keys sorted: raw and chat, and
    corpora, are never pooled (their rankings are separate, like ``rank.groups``)."""
    by_group: dict[tuple[str, str], list[RankedRow]] = {}
    for row in ranked_rows:
        by_group.setdefault((row.corpus, row.framing), []).append(row)
    return {key: themes(by_group[key], top=top, limit=limit, gaps=gaps)
            for key in sorted(by_group)}


def carriers(rows: Iterable[RankedRow], found: Sequence[Theme]) -> dict[str, tuple[int, ...]]:
    """For each row (of one group) that carries a theme's phrase, the indices of those
    themes in ``found``: what a reader filters on when they click a theme. One tokenisation
    per row; rows carrying none are left out."""
    wanted = {tuple(t.phrase.split()): i for i, t in enumerate(found)}
    if not wanted:
        return {}
    lengths = sorted({len(g) for g in wanted})
    out: dict[str, tuple[int, ...]] = {}
    for row in rows:
        hits = _grams(tokens(row.completion or ""), lengths) & wanted.keys()
        if hits:
            out[row.row_id] = tuple(sorted(wanted[g] for g in hits))
    return out


def settings() -> dict[str, Any]:
    """The one setting every run uses (written beside the themes, docs/scores.md)."""
    return {"statistic": "z of a phrase's per-token gap (target minus reference "
                         "log-probability) over the rows carrying it, against every token of "
                         "the group; candidates recur in the top",
            "max_n": MAX_N, "top": f"min({TOP_CAP}, {TOP_SHARE:.0%} of distinct rows), "
                                    f"at least {TOP_MIN}",
            "min_top_rows": MIN_TOP_ROWS,
            "floor": f"one-sided, family-wise {ALPHA} over the candidates (Bonferroni)"}
