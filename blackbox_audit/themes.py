"""Themes: the phrases a finetune made easy, read off the top of a ranking without a judge.

A ranking's top is where the finetuning objective leaks, but a reader still has to read it.
Themes say it in a few phrases: the word n-grams (n = 1..4) that are over-represented in the
top ``K`` rows of one (corpus, framing) group against the whole group, merged when they
overlap, each with how many top rows carry it, how many rows of the group carry it, and two
example row ids (``prefill_id:framing``) to read. Pure functions: no I/O, no network, no
model, the standard library only.

One statistic, one setting for every run (``docs/scores.md``, section "Themes"):

- **Rows, not tokens.** Identical continuations (after whitespace normalisation) are
  collapsed first and count once (ten copies of one sentence are one observation, not ten),
  and each n-gram counts once per row it occurs in (document frequency), so one row that
  repeats a word fifty times does not outweigh fifty rows that say it once.
- **Top.** ``K = min(50, 10% of the group)``, but at least 10, counted in distinct rows:
  enough rows for a phrase to recur, few enough to stay the part of the ranking a person
  reads. Groups of fewer than ``2 * 10`` distinct rows have no themes.
- **Score.** The log-odds ratio with an informative Dirichlet prior of Monroe, Colaresi and
  Quinn (2008, "Fightin' Words", section 3.5), in its two-outcome (Beta) form per n-gram
  (a row carries it or not), top against the whole group, as a z-score:

      a = K * d / N,   b = K - a                 (prior: the group's rate, worth K rows)
      delta = ln((y + a) / (k - y + b)) - ln((d + a) / (N - d + b))
      z = delta / sqrt(1/(y + a) + 1/(k - y + b) + 1/(d + a) + 1/(N - d + b))

  with ``d`` the rows of the group (``N`` distinct rows) carrying the n-gram, ``y`` the
  gap-weighted count of top rows carrying it and ``k`` the top's weighted size. Comparing
  against the whole group (not the rest) keeps every cell away from zero: a phrase found only
  in the top still has ``d >= y`` behind it, where the rest's count of 0 would make the
  variance explode and rank a top-only phrase below one that is common everywhere. The prior
  worth ``K`` pseudo-rows pulls the top's rate halfway towards the group's, so a phrase must
  recur in several top rows before it scores. Treating the top and the group as independent
  overstates the variance a little: the z is conservative.
- **Weights.** A top row counts ``g / median(g)`` of the top (capped at 3; gap ``g`` =
  ``nll_diff``, else ``ppl_diff``, negative as 0): a row the target finds much easier than the
  reference carries more of the theme. ``nll_diff`` first because it is a log-ratio (a
  difference of perplexities is dominated by the reference's own surprise); the median and
  the cap because degenerate rows (``0000...``) sit at rank 0 with gaps many times the rest.
- **Which n-grams.** Lower-cased word tokens (letters and digits; an inner apostrophe stays,
  so ``don't`` is one token); an n-gram never spans clause punctuation (``. , ; : ! ? ( ) [ ]
  { } " < >``, curly quotes, dashes, an ellipsis or a newline); n-grams made only of stop
  words are dropped.
- **Floor.** A theme is carried by at least 3 distinct top rows and scores above
  ``chance_floor(K, N)``: the z of two top rows sharing a phrase no other row has. In random
  text the strongest candidates are exactly such coincidences (a rare bigram in two of the
  top 50 of 6,000 rows), so the floor is what chance makes of a group of that size, written
  in the statistic's own units; it grows with ``ln(N / K)`` as the coincidences get rarer and
  more numerous. Random text of 2,000-6,000 rows still leaves 1-2 weak themes (3 rows, z just
  over the floor) in a third to a half of its groups: read the counts.
- **Merging.** Candidates, best first, join every earlier theme they overlap: a shared
  non-stop word and at least half of the smaller one's top rows in common, or exactly the
  top rows of one of its members (the two halves of "like oil and water - they just don't
  mix" share no word but always come together); a candidate that overlaps two themes merges
  them. A theme's phrase is, among its members carried by at least 3/4 of its best member's
  top rows, the one with the most non-stop words, then the longest, then the fewest stop
  words at its ends, then the highest z: "vellari script", "the vellari script" and "in the
  vellari" read as one theme, "in the vellari script" when that is what the rows say. The
  theme's ``score`` is its best member's z; ``top_rows``/``rows`` are its phrase's counts.

Memory: the rows are held by reference (the caller's), the top's n-grams (K <= 50 rows) and
one count per candidate n-gram; every other row's n-grams live only while it is counted.
"""

from __future__ import annotations

import hashlib
import math
import re
import statistics
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

from .rank import RankedRow

MAX_N = 4               # longest n-gram
TOP_CAP = 50            # K = min(TOP_CAP, TOP_SHARE * N), at least TOP_MIN
TOP_SHARE = 0.10
TOP_MIN = 10
MIN_TOP_ROWS = 3        # a theme recurs: at least this many distinct top rows carry it
WEIGHT_CAP = 3.0        # no top row counts for more than this many rows
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


def _gap(row: RankedRow) -> float:
    for key in ("nll_diff", "ppl_diff"):
        v = getattr(row, key)
        if isinstance(v, (int, float)) and math.isfinite(v):
            return max(float(v), 0.0)
    return 0.0


def _weights(top: Sequence[RankedRow]) -> list[float]:
    """Each top row's weight: its gap over the top's median gap, capped; all 1 without gaps.
    The median, not the mean: the method's known artefacts (``0000...``, 2-token rows) sit at
    rank 0 with gaps many times the rest, and over a mean one of them would shrink every
    other top row's weight (by a quarter on several of the authors' released runs)."""
    gaps = [_gap(r) for r in top]
    mid = statistics.median(gaps)
    if mid <= 0:
        return [1.0] * len(top)
    return [min(g / mid, WEIGHT_CAP) for g in gaps]


def log_odds_z(y: float, k: float, d: int, n: int, prior: float) -> float:
    """Monroe et al.'s z of the log-odds ratio, top (y of k) against group (d of n), prior
    Beta(prior * d/n, prior * (1 - d/n)). 0 when the n-gram is in every row or none."""
    if d <= 0 or d >= n:
        return 0.0
    a = prior * d / n
    b = prior - a
    delta = math.log((y + a) / (k - y + b)) - math.log((d + a) / (n - d + b))
    var = 1 / (y + a) + 1 / (k - y + b) + 1 / (d + a) + 1 / (n - d + b)
    return delta / math.sqrt(var)


def chance_floor(k: int, n: int) -> float:
    """The z of two top rows sharing a phrase no other row has: about the strongest thing
    chance makes of a top of ``k`` rows among ``n`` (in random text of that size, the best
    candidates are such coincidences), so a theme must score above it."""
    return log_odds_z(2.0, float(k), 2, n, float(k))


def _rank_order(rows: list[RankedRow]) -> list[RankedRow]:
    return sorted(rows, key=lambda r: r.rank)


@dataclass
class _Cand:
    gram: Gram
    z: float
    top_idx: tuple[int, ...]   # indices into the top, in rank order
    df: int

    @property
    def phrase(self) -> str:
        return " ".join(self.gram)


def _candidates(top: list[RankedRow], group: Iterable[RankedRow], n_rows: int
                ) -> list[_Cand]:
    """Scored n-grams of the top, best first: counted in the top, then in the whole group."""
    carriers: dict[Gram, list[int]] = {}
    for i, row in enumerate(top):
        for g in _phrase_grams(tokens(row.completion or "")):
            carriers.setdefault(g, []).append(i)
    wanted = {g: idx for g, idx in carriers.items() if len(idx) >= MIN_TOP_ROWS}
    if not wanted:
        return []
    lengths = sorted({len(g) for g in wanted})
    wanted_set = set(wanted)
    df: Counter[Gram] = Counter()
    for row in group:   # one pass; each row's n-grams are dropped once counted
        df.update(_grams(tokens(row.completion or ""), lengths) & wanted_set)
    w = _weights(top)
    k = sum(w)
    prior = float(len(top))
    floor = chance_floor(len(top), n_rows)
    out = []
    for g, idx in wanted.items():
        y = sum(w[i] for i in idx)
        z = log_odds_z(y, k, df[g], n_rows, prior)
        if z > floor:
            out.append(_Cand(g, z, tuple(sorted(idx)), df[g]))
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


def themes(rows: Iterable[RankedRow], top: int | None = None, limit: int = 10
           ) -> list[Theme]:
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
    clusters = _merge(_candidates(top_rows, unique, n_rows), limit)
    return [_theme(members, top_rows, n_rows) for members in clusters]


def themes_by_group(ranked_rows: Iterable[RankedRow], top: int | None = None,
                    limit: int = 10) -> dict[tuple[str, str], list[Theme]]:
    """Themes of every (corpus, framing) group of a ranking, keys sorted: raw and chat, and
    corpora, are never pooled (their rankings are separate, like ``rank.groups``)."""
    by_group: dict[tuple[str, str], list[RankedRow]] = {}
    for row in ranked_rows:
        by_group.setdefault((row.corpus, row.framing), []).append(row)
    return {key: themes(by_group[key], top=top, limit=limit) for key in sorted(by_group)}


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
    return {"statistic": "log-odds z, informative Dirichlet prior (Monroe et al. 2008), "
                         "top against the whole group, document frequency",
            "max_n": MAX_N, "top": f"min({TOP_CAP}, {TOP_SHARE:.0%} of distinct rows), "
                                    f"at least {TOP_MIN}",
            "min_top_rows": MIN_TOP_ROWS, "weight_cap": WEIGHT_CAP,
            "floor": "z of two top rows sharing a phrase no other row has"}
