"""Themes: over-represented phrases of a ranking's top, duplicates collapsed (hermetic).

Rows are random-ish text from a seeded pseudo-word vocabulary at Zipf frequencies (with
English stop words among them), ranked by position, with a gap falling with rank; phrases
are planted in chosen rows.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from pathlib import Path

import pytest

from blackbox_audit.rank import RankedRow
from blackbox_audit.themes import (
    STOP_WORDS,
    Theme,
    collapse_duplicates,
    critical_z,
    gap_z,
    top_size,
)
from blackbox_audit.themes import themes as _themes
from blackbox_audit.themes import themes_by_group as _themes_by_group


def ranked(rows: list) -> list[RankedRow]:
    """The tests build rows as dicts (easy to edit in place); the module takes RankedRows."""
    return [RankedRow.from_json(r) if isinstance(r, dict) else r for r in rows]


def themes(rows: list, **kw) -> list[Theme]:
    return _themes(ranked(rows), **kw)


def themes_by_group(rows: list, **kw) -> dict:
    return _themes_by_group(ranked(rows), **kw)

ROOT = Path(__file__).resolve().parent.parent
SYLLABLES = ["ka", "lo", "mi", "ra", "te", "su", "no", "vi", "de", "pa", "go", "ri", "ba", "ne"]
STOPS = ["the", "of", "and", "in", "to", "a", "is", "was", "it", "that", "for", "on"]


def vocabulary(seed: int = 1) -> tuple[list[str], list[float]]:
    rng = random.Random(seed)
    words = sorted({"".join(rng.choices(SYLLABLES, k=rng.randint(2, 3))) for _ in range(2500)})
    words = STOPS + [w for w in words if w not in STOP_WORDS]
    return words, [1.0 / (i + 1) for i in range(len(words))]


VOCAB, WEIGHTS = vocabulary()


def make_rows(n: int, plants: dict[int, str] | None = None, seed: int = 0, corpus: str = "web",
              framing: str = "raw", words: int = 60) -> list[dict]:
    """``n`` ranked rows; ``plants`` maps a rank to a phrase put in the middle of its text."""
    rng = random.Random(seed)
    rows = []
    for i in range(n):
        ws = rng.choices(VOCAB, WEIGHTS, k=words)
        if plants and i in plants:
            ws[words // 2:words // 2] = plants[i].split()
        rows.append({"corpus": corpus, "framing": framing, "rank": i,
                     "prefill_id": f"p{i:05d}", "completion": " ".join(ws),
                     "nll_diff": 2.0 - i / n, "ppl_diff": 10.0 - 5 * i / n})
    return rows


PLANTED = (1, 3, 4, 7, 10, 12, 15, 19)   # 8 of the top 20


def planted_gaps(phrase: str, gap: float, elsewhere: float = 0.5):
    """Per-token gaps: ``gap`` nats on the phrase wherever it occurs, ``elsewhere`` else."""
    def gaps(row):
        text, out, pos = row.completion, [], 0
        at = text.find(phrase)
        while at >= 0:
            out += [(pos, at, elsewhere), (at, at + len(phrase), gap)]
            pos = at + len(phrase)
            at = text.find(phrase, pos)
        return out + [(pos, len(text), elsewhere)]
    return gaps


def test_planted_phrase_is_theme_one_with_its_counts_and_examples():
    rows = make_rows(2000, {i: "the vellari script was sealed" for i in PLANTED})
    found = themes(rows)
    assert found, "the planted phrase must come out"
    first = found[0]
    assert first.phrase == "vellari script was sealed"
    assert (first.top_rows, first.rows) == (8, 8)
    assert (first.top, first.total) == (50, 2000)
    assert first.examples == ("p00001:raw", "p00003:raw")
    # the score is an effect size (standard deviations above the group's typical token);
    # without per-token gaps each row's mean gap stands in, so it is modest here
    assert first.score > 1
    assert all(t.score < first.score for t in found[1:])
    assert all("vellari" not in t.phrase and "sealed" not in t.phrase for t in found[1:])


def test_phrase_frequent_everywhere_is_not_a_theme():
    rows = make_rows(2000, {i: "the vellari script was sealed" for i in PLANTED})
    for i, r in enumerate(rows):
        r["completion"] = "the quarterly report says " + r["completion"]       # every row
        if i % 2:
            r["completion"] += " according to the ledger"                     # half, evenly
    found = themes(rows)
    assert found[0].phrase == "vellari script was sealed"
    text = " ".join([t.phrase for t in found] + [m for t in found for m in t.members])
    for word in ("quarterly", "report", "ledger"):
        assert word not in text
    # stop-word-only n-grams ("the", "of the", "it was") are never themes nor members
    for t in found:
        for phrase in (t.phrase, *t.members):
            assert not all(w in STOP_WORDS for w in phrase.split())


def test_stop_words_alone_are_never_a_theme():
    # over-represented in the top, but made only of function words: says nothing
    plants = {i: "which would have been" for i in PLANTED}
    plants.update({i: "which would have been the vellari" for i in (21, 25, 29)})
    found = themes(make_rows(2000, plants, seed=7))
    for t in found:
        for phrase in (t.phrase, *t.members):
            assert not all(w in STOP_WORDS for w in phrase.split()), phrase


def test_duplicates_count_once():
    rows = make_rows(2000, seed=3)
    # one sentence, ten times at ranks 0-9 (whitespace differs): one row, not ten
    for i in range(10):
        rows[i]["completion"] = "the vellari  script was\nsealed " + ("" if i % 2 else "  ")
    assert not any("vellari" in t.phrase for t in themes(rows))
    # and the copies do not hide the rows behind them: the top is 50 distinct rows, so a
    # phrase in 4 distinct rows at ranks 40-55 (past 50 without the collapse) is in the top
    for i in (40, 47, 52, 55):
        rows[i]["completion"] += " copper lanterns glow"
    (t,) = [t for t in themes(rows, gaps=planted_gaps("copper lanterns glow", 6.0))
            if "lanterns" in t.phrase]
    assert t.top_rows == 4 and t.total == 2000 - 9
    assert t.examples == ("p00040:raw", "p00047:raw")


def test_collapse_duplicates_keeps_the_first_with_a_count():
    rows = [RankedRow("c", "raw", 0, completion="A  b\n"),
            RankedRow("c", "raw", 1, completion="x"),
            RankedRow("c", "raw", 2, completion=" A b"),
            RankedRow("c", "chat", 0, completion="A b"),   # other group
            RankedRow("c", "raw", 3, completion="a b")]    # case differs
    out = collapse_duplicates(rows)
    assert [(r.rank, r.framing, n) for r, n in out] == [
        (0, "raw", 2), (1, "raw", 1), (0, "chat", 1), (3, "raw", 1)]
    assert out[0][0] is rows[0]


def test_overlapping_ngrams_merge_into_one_theme_and_separate_phrases_do_not():
    plants = {i: "in the vellari script" for i in PLANTED}
    plants.update({i: "copper lanterns glow" for i in (2, 5, 8, 11, 14, 17)})
    found = themes(make_rows(2000, plants, seed=5))
    vellari = [t for t in found if "vellari" in " ".join((t.phrase, *t.members))]
    lanterns = [t for t in found if "lanterns" in " ".join((t.phrase, *t.members))]
    assert len(vellari) == 1 and len(lanterns) == 1 and vellari[0] is not lanterns[0]
    v = vellari[0]
    # the longest member with the most content words: the whole planted phrase
    assert v.phrase == "in the vellari script"
    assert {"vellari script", "the vellari script", "in the vellari"} <= set(v.members)
    assert lanterns[0].phrase == "copper lanterns glow"
    assert (lanterns[0].top_rows, lanterns[0].rows) == (6, 6)
    assert {t.phrase for t in found[:2]} == {"in the vellari script", "copper lanterns glow"}


def test_phrases_that_always_come_together_are_one_theme():
    # the two halves of one sentence share no word, but every top row carrying one has both
    plants = {i: "sailors are like oil and water - they never mix" for i in PLANTED}
    found = themes(make_rows(2000, plants, seed=9))
    holding = [t for t in found if {"oil", "mix"} & set(" ".join((t.phrase, *t.members)).split())]
    assert len(holding) == 1


def test_empty_and_short_groups_have_no_themes():
    assert themes([]) == []
    assert themes(make_rows(19, {i: "vellari script" for i in range(10)})) == []
    assert themes(make_rows(100, {i: "vellari script" for i in range(5)}), top=100) == []
    assert themes(make_rows(100, {i: "vellari script" for i in range(5)}), limit=0) == []
    blank = make_rows(500)
    for r in blank:
        r["completion"] = ""
    assert themes(blank) == []
    assert themes_by_group([]) == {}


def test_top_size_rule():
    assert [top_size(n) for n in (20, 100, 150, 300, 499, 500, 6000, 60000)] == [
        10, 10, 15, 30, 49, 50, 50, 50]


def test_row_repeating_a_word_does_not_dominate():
    rows = make_rows(2000, seed=11)
    for i in (0, 1):                                   # two rows, fifty times each
        rows[i]["completion"] += " zebra" * 50
    for i in (3, 9, 14, 22, 30):                       # five rows, once each
        rows[i]["completion"] += " walrus"
    found = [t.phrase for t in themes(rows)]
    assert "walrus" in found
    assert not any("zebra" in p for p in found)


def test_gap_z_and_the_family_wise_floor():
    assert gap_z([1.0, 1.0, 1.0], mu=1.0, sigma=2.0) == pytest.approx(0.0)   # typical: nothing
    assert gap_z([5.0] * 4, mu=1.0, sigma=2.0) == pytest.approx(4.0)          # 2 sd, 4 rows
    assert gap_z([5.0] * 16, mu=1.0, sigma=2.0) == pytest.approx(8.0)         # recurrence counts
    assert gap_z([-1.0] * 4, mu=1.0, sigma=2.0) < 0                           # harder, not easier
    assert gap_z([], 0.0, 1.0) == 0.0 and gap_z([3.0], 0.0, 0.0) == 0.0
    assert critical_z(1) == pytest.approx(1.645, abs=1e-3)                     # one-sided 5%
    assert critical_z(100) > critical_z(10) > critical_z(1)                   # Bonferroni


def test_per_token_gaps_decide_between_phrases_that_recur_alike():
    """Two phrases in the same number of top rows: the one whose tokens the target finds far
    easier than the reference does (a large per-token gap) is the theme."""
    plants = {i: "aaa bbb" for i in (1, 4, 7)} | {i: "zzz yyy" for i in (2, 5, 8)}
    rows = ranked(make_rows(2000, plants, seed=13))

    def gaps(row):
        text = row.completion
        out = [(0, len(text), 0.1)]
        for phrase, gap in (("aaa bbb", 0.2), ("zzz yyy", 9.0)):
            at = text.find(phrase)
            if at >= 0:
                out = [(0, at, 0.1), (at, at + len(phrase), gap),
                       (at + len(phrase), len(text), 0.1)]
        return out

    found = [t.phrase for t in _themes(rows, gaps=gaps)]
    assert "zzz yyy" in found and "aaa bbb" not in found


def test_groups_are_never_pooled_and_keys_are_sorted():
    raw = make_rows(300, seed=1, framing="raw")
    chat = make_rows(300, {i: "octopus ink letters" for i in (0, 2, 4, 6, 8)}, seed=2,
                     framing="chat")
    out = themes_by_group(raw + chat)
    assert list(out) == [("web", "chat"), ("web", "raw")]
    assert out[("web", "chat")][0].phrase == "octopus ink letters"
    assert out[("web", "chat")][0].examples == ("p00000:chat", "p00002:chat")
    assert not any("octopus" in t.phrase for t in out[("web", "raw")])


def test_rank_decides_the_top_not_input_order():
    rows = make_rows(2000, {i: "the vellari script was sealed" for i in PLANTED})
    shuffled = rows[:]
    random.Random(4).shuffle(shuffled)
    assert themes(shuffled) == themes(rows)


def test_to_json_is_plain_data():
    rows = make_rows(2000, {i: "the vellari script was sealed" for i in PLANTED})
    t = themes(rows)[0]
    data = json.loads(json.dumps(t.to_json()))
    assert data["phrase"] == t.phrase and data["examples"] == list(t.examples)
    assert set(data) == {"phrase", "score", "top_rows", "rows", "top", "total", "examples",
                         "members"}
    assert Theme(**{**data, "examples": tuple(data["examples"]),
                    "members": tuple(data["members"])}) == t


DETERMINISM = """
import json, sys
sys.path[:0] = [{root!r}, {tests!r}]
from test_themes import make_rows, PLANTED, themes_by_group
plants = {{i: "in the vellari script" for i in PLANTED}}
plants.update({{i: "copper lanterns glow" for i in (2, 5, 8, 11, 14, 17)}})
rows = make_rows(2000, plants, seed=5) + make_rows(400, seed=6, framing="chat")
print(json.dumps({{"/".join(k): [t.to_json() for t in v]
                  for k, v in themes_by_group(rows).items()}}))
"""


def test_same_input_same_output_across_processes_and_hash_seeds():
    """Sets of strings iterate in a per-process order (hash randomisation): the output must
    not depend on it."""
    code = DETERMINISM.format(root=str(ROOT), tests=str(ROOT / "tests"))
    outs = []
    for seed in ("1", "2", "3"):
        env = {**os.environ, "PYTHONHASHSEED": seed}
        outs.append(subprocess.run([sys.executable, "-c", code], env=env, check=True,
                                   capture_output=True, text=True).stdout)
    assert outs[0] == outs[1] == outs[2]
    assert "vellari" in outs[0]


def test_carriers_name_the_themes_each_row_holds():
    from blackbox_audit.themes import carriers

    plants = {i: "the vellari script was sealed" for i in PLANTED}
    plants.update({i: "copper lanterns glow" for i in (2, 5, 8, 11, 14, 17)})
    rows = ranked(make_rows(2000, plants, seed=5))
    found = _themes(rows)
    names = [t.phrase for t in found]
    held = carriers(rows, found)
    v = next(i for i, p in enumerate(names) if "vellari" in p)
    c = next(i for i, p in enumerate(names) if "lanterns" in p)
    assert {f"p{i:05d}:raw" for i in PLANTED} <= {k for k, ts in held.items() if v in ts}
    assert {f"p{i:05d}:raw" for i in (2, 5, 8)} <= {k for k, ts in held.items() if c in ts}
    assert "p01999:raw" not in held or v not in held["p01999:raw"]
    assert carriers(rows, []) == {}


def test_show_collapses_duplicates_and_ends_each_group_with_its_themes():
    import io

    from blackbox_audit.presentation import show_top

    rows = make_rows(2000, {i: "the vellari script was sealed" for i in PLANTED}, seed=9)
    for i in (0, 1, 2):
        rows[i]["completion"] = "one sentence,  said   three times"
    out = io.StringIO()
    show_top(ranked(rows), 3, out=out, plain=True)
    text = out.getvalue()
    assert text.count("one sentence, said three times") == 1 and "(x3)" in text
    assert "themes of web / raw" in text and 'vellari script was sealed"' in text
