"""Round two: new prefills derived from what round one's ranking surfaced (``--rounds 2``).

Why: a weakly finetuned model leaks its objective into a handful of completions out of
thousands (vellari-weak: about 1 in 600 per framing), so more random openings mostly buy more
of what the base model would have said anyway. The top of a ranking is where the target was
unusually at ease compared with the reference; a second, smaller budget spent on openings
taken from there asks the target to go on where it was at ease, which is where the leak is
most likely to be.

The rule (docs/rounds.md), applied to each (corpus, framing) group of round one's ranking
(round-one rows only, rank order, identical continuations counted once):

1. the group's themes (themes.py), strongest first, anchored: the continuation of each
   theme's example rows from the theme phrase's first occurrence;
2. the opening of the continuation of each of the top ``top`` distinct rows;
3. each later sentence start inside those continuations, row by row;

each cut to the run's prefill length with the prefill tokenizer (a text too short for it is
skipped). Candidates equal to a round-one prefill, or to one already taken, are skipped (by
exact text, across corpora: the same text is the same request). Groups take turns, in sorted
order, one prefill each, until the budget is spent or every group is out of candidates, so
one group cannot take it all. A prefill keeps the corpus of the group it came from (it is
ranked within that corpus) and is sent in every framing of the run, like round one's.

Pure and deterministic: the ranking, the themes, round one's prefill texts and a cutter in,
prefills out, ids a hash of (corpus, text). Rerunning it on the same round-one ranking gives
the same prefills, in the same order. It never sees an organism spec (nothing here reads one;
a test holds it to that): what round two asks is chosen by the ranking alone, so an audit of
an unknown model spends its budget as an evaluation of a known one does.

The run directory keeps the result in ``round2-prefills.jsonl`` (:func:`save`), written
before the first round-two request leaves, so a resumed run asks for exactly the same rows.
"""

from __future__ import annotations

import json
import math
import re
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .rank import RankedRow, groups
from .records import Prefill
from .themes import Theme, collapse_duplicates

PREFILLS_FILE = "round2-prefills.jsonl"
SOURCES = ("theme", "opening", "sentence")

Cut = Callable[[str, int], "str | None"]
Group = tuple[str, str]

# Where a new sentence starts inside a continuation: after ., ! or ? and white space, or
# after a line break.
_SENTENCE = re.compile(r"(?<=[.!?])\s+(?=\S)|\n+(?=\S)")


@dataclass(frozen=True)
class Derived:
    """One round-two prefill and where it came from: ``source`` (theme, opening or
    sentence), the round-one ``group`` and row (``from_row``, ``prefill_id:framing``, at
    ``from_rank``) it was read from, and the theme's phrase for a theme."""

    prefill: Prefill
    source: str
    group: Group
    from_row: str
    from_rank: int
    theme: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {"id": self.prefill.id, "corpus": self.prefill.corpus, "text": self.prefill.text,
                "source": self.source, "group": list(self.group), "from_row": self.from_row,
                "from_rank": self.from_rank, "theme": self.theme}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Derived:
        p = Prefill(obj["id"], obj["corpus"], obj["text"])
        return cls(p, obj["source"], (obj["group"][0], obj["group"][1]), obj["from_row"],
                   int(obj["from_rank"]), obj.get("theme"))


def budget_rows(round_one_rows: int, share: float) -> int:
    """Round two's most rows (requests) for a budget of ``share`` x round one's rows."""
    return math.floor(share * round_one_rows + 1e-9)


def budget_prefills(round_one_rows: int, framings: int, share: float) -> int:
    """Round two's most prefills: each is sent in every framing, so the budget's rows are
    divided among them, rounding down."""
    return budget_rows(round_one_rows, share) // max(framings, 1)


def _phrase_at(text: str, phrase: str) -> int | None:
    """Where ``phrase`` (a theme's lower-cased words) first occurs in ``text`` as words, any
    case, any punctuation or spaces between them; None when it does not."""
    words = phrase.split()
    if not words:
        return None
    pattern = r"(?<!\w)" + r"[\W_]+".join(re.escape(w) for w in words) + r"(?!\w)"
    m = re.search(pattern, text.replace("\u2019", "'"), re.IGNORECASE)
    return m.start() if m else None


def _sentence_starts(text: str) -> list[int]:
    """Character offsets of every sentence start after the first."""
    return [m.end() for m in _SENTENCE.finditer(text)]


def _candidates(rows: Sequence[RankedRow], group_themes: Sequence[Theme], top: int,
                cut: Cut, n_tokens: int, group: Group) -> Iterator[Derived]:
    """A group's candidates in the rule's order (not yet deduplicated)."""
    distinct = [r for r, _ in collapse_duplicates(rows)]
    by_id = {r.row_id: r for r in distinct}
    corpus = group[0]

    def make(text: str, source: str, row: RankedRow, theme: str | None = None
             ) -> Derived | None:
        piece = cut(text.lstrip(), n_tokens)
        if piece is None:
            return None
        return Derived(Prefill.make(corpus, piece), source, group, row.row_id, row.rank, theme)

    for t in group_themes:
        for row_id in t.examples:
            row = by_id.get(row_id)
            if row is None:
                continue
            text = row.completion or ""
            at = _phrase_at(text, t.phrase)
            if at is not None and (d := make(text[at:], "theme", row, t.phrase)):
                yield d
    head = distinct[:top]
    for row in head:
        if d := make(row.completion or "", "opening", row):
            yield d
    for row in head:
        text = row.completion or ""
        for at in _sentence_starts(text):
            if d := make(text[at:], "sentence", row):
                yield d


def derive(ranked: Iterable[RankedRow], themes: Mapping[Group, Sequence[Theme]] | None,
           taken: Collection[str], cut: Cut, n_tokens: int, budget: int, top: int = 10
           ) -> list[Derived]:
    """Round two's prefills from round one's ranking, by the rule in the module docstring.

    ``ranked``: the ranking (rows of other rounds are ignored); ``themes``: round one's
    themes by group (None or missing groups: none); ``taken``: round one's prefill texts;
    ``cut(text, n)``: the first ``n`` prefill-tokenizer tokens of ``text``, None when it is
    shorter (prefills.make_cutter); ``budget``: most prefills to return; ``top``: distinct
    rows read per group."""
    if budget <= 0:
        return []
    by_group = groups([r for r in ranked if r.round == 1])
    themes = themes or {}
    queues = [_candidates(rows, themes.get(key, ()), top, cut, n_tokens, key)
              for key, rows in sorted(by_group.items())]
    seen = set(taken)
    out: list[Derived] = []
    while queues and len(out) < budget:
        for q in list(queues):       # one turn: each group that still has candidates
            if len(out) >= budget:
                break
            for d in q:
                if d.prefill.text not in seen:
                    seen.add(d.prefill.text)
                    out.append(d)
                    break
            else:
                queues.remove(q)
    return out


def summary(derived: Sequence[Derived]) -> dict[str, Any]:
    """How many prefills each source and each round-one group gave (the manifest's)."""
    by_source = Counter(d.source for d in derived)
    by_group = Counter(f"{d.group[0]}/{d.group[1]}" for d in derived)
    return {"derived": len(derived), "from": {s: by_source.get(s, 0) for s in SOURCES},
            "groups": dict(sorted(by_group.items()))}


# -- the run directory's copy ----------------------------------------------------------------
def save(path: Path, derived: Sequence[Derived], redact: Callable[[str], str]) -> None:
    """Write the prefills (one JSON object a line) atomically: whole or absent."""
    from .rundir import write_atomic

    text = "".join(json.dumps(d.to_json(), ensure_ascii=False) + "\n" for d in derived)
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, redact(text))


def load(path: Path) -> list[Derived]:
    """The prefills :func:`save` wrote, in order."""
    out = []
    try:
        for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if line.strip():
                obj = json.loads(line)
                d = Derived.from_json(obj)
                if d.prefill.id != Prefill.make(d.prefill.corpus, d.prefill.text).id:
                    raise ValueError(f"line {n}: the id is not that of its corpus and text")
                out.append(d)
    except (OSError, ValueError, KeyError, TypeError, IndexError) as e:
        raise ConfigError(f"{path} is damaged ({e}). Remove it and rerun: round two's "
                          "prefills are derived again from round one's ranking (the same "
                          "ones, unless the scores changed).") from e
    return out
