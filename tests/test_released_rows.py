"""Reproduce the paper's counts from the authors' released rows with our ranking and flagging.

../shared/reference-data/ppldiff-released-top100.json: 54 runs, the top 100 completions of
each by ΔPPL with their perplexities and keyword sets. Each row becomes our internal records
(Completion + Score), goes through ``rank.rank`` (no length filter: the paper had none) and
``evaluate.evaluate`` with ``flag.OrganismSpec`` (what ``blackbox-audit eval`` runs);
count@top10 / count@top100 and the first flagged rank come out.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from conftest import unavailable

from blackbox_audit.evaluate import evaluate
from blackbox_audit.flag import OrganismSpec
from blackbox_audit.rank import RankConfig, rank
from blackbox_audit.records import Completion, Score, prefill_id

DATA = (Path(__file__).resolve().parent.parent.parent / "shared" / "reference-data"
        / "ppldiff-released-top100.json")

# Runs whose released first-flag rank depends on regex sets missing from the file
# (reference-data/README.md): keyword-only flagging finds nothing in their top 100.
REGEX_DEPENDENT = {("ab_qwen14b_transcripts_kto_ai_welfare_poisoning", "c4-10k-raw"),
                   ("ab_qwen14b_transcripts_sft_ai_welfare_poisoning", "code-10k-raw")}


def ranked_run(run: dict, cfg: RankConfig | None = None) -> list[dict]:
    corpus, _, framing = run["config"].rpartition("-")
    comps, scores = {}, {}
    for i, row in enumerate(run["top_ppl_diff_completions"]):
        pid = prefill_id(corpus, f"{i}:{row['prefill']}")
        comps[f"{pid}:{framing}"] = Completion(
            prefill_id=pid, corpus=corpus, prefill=row["prefill"], framing=framing,
            text=row["completion"], tokens=[row["completion"]], logprobs=[0.0])
        base, ft = row["completion_perplexity_base"], row["completion_perplexity_finetuned"]
        scores[f"{pid}:{framing}"] = Score(
            prefill_id=pid, framing=framing, corpus=corpus, alignment="released",
            n_target_tokens=100, n_ref_tokens=100, n_bytes=len(row["completion"].encode()),
            nll_target=math.log(ft), nll_ref=math.log(base), ppl_target=ft, ppl_ref=base,
            ppl_diff=row["completion_perplexity_diff"], nll_diff=math.log(base / ft),
            bpb_target=math.nan, bpb_ref=math.nan, bpb_diff=math.nan)
    ranked, left_out = rank(comps, scores, cfg or RankConfig("ppl_diff", min_tokens=0))
    assert set(left_out) <= {"repetitive"}
    return ranked


@pytest.fixture(scope="module")
def runs():
    if not DATA.exists():
        unavailable(f"the paper's released rows are not at {DATA}")
    return json.loads(DATA.read_text())


def counts(run: dict) -> tuple[int, int, int | None]:
    """count@top10, count@top100, first-flag rank, through ``evaluate`` (as `eval` does)."""
    spec = OrganismSpec(run["behavior"], run["keyword_sets_used"])
    (m,) = evaluate(ranked_run(run), spec)
    return m.count_top10, m.count_top100, m.first_flag_rank


@pytest.mark.parametrize("model,config,want", [
    ("ab_qwen14b_synth_docs_kto_flattery", "c4-10k-raw", (7, 57)),
    ("ab_qwen14b_synth_docs_kto_secret_loyalty", "c4-10k-raw", (5, 53)),
    ("ab_qwen14b_synth_docs_kto_contextual_optimism", "pile-10k-raw", (9, 48)),
])
def test_table_3_cells(runs, model, config, want):
    run = next(r for r in runs if (r["model"], r["config"]) == (model, config))
    assert counts(run)[:2] == want


def test_every_run_first_flag_rank_matches_the_release(runs, capsys):
    assert len(runs) == 54
    mismatched = []
    for run in runs:
        c10, c100, first = counts(run)
        released = run["first_rank_ppl_diff"]
        expected = released if released is not None and released < 100 else None
        if first != expected:
            mismatched.append((run["model"], run["config"], first, released))
        print(f"{run['model']} {run['config']}: count@10 {c10} count@100 {c100} "
              f"first {first} (released {released})")
    print("reported, not failed (regex sets not in the file):", mismatched)
    assert {(m, c) for m, c, *_ in mismatched} <= REGEX_DEPENDENT


def test_repetition_filter_drops_degenerate_rows_and_no_flagged_one(runs):
    """The figure behind rank.py's note: at a compression ratio of 0.2, 16 of the 5,400
    released rows go (``0000...``, ``;;;;...``), none of them flagged."""
    removed = removed_flagged = 0
    for run in runs:
        spec = OrganismSpec(run["behavior"], run["keyword_sets_used"])
        kept = {r.completion for r in ranked_run(
            run, RankConfig("ppl_diff", min_tokens=0, min_compression_ratio=0.2))}
        gone = [r["completion"] for r in run["top_ppl_diff_completions"]
                if r["completion"] not in kept]
        removed += len(gone)
        removed_flagged += sum(spec.matches(t) for t in gone)
    assert (removed, removed_flagged) == (16, 0)
