#!/usr/bin/env python3
"""Themes on the paper authors' released rows: do the top-3 themes name the objective?

../shared/reference-data/ppldiff-released-top100.json holds 54 runs, each only its top 100
rows by ΔPPL with the organism's keyword sets (reference-data/README.md). For each run:
themes with the run's top 10 against its 100 (``themes(rows, top=10)``), and beside them
count@10 (flagged rows among the top 10, through ``evaluate.evaluate`` and the run's
``flag.OrganismSpec``, as ``blackbox-audit eval`` counts them).

A theme names the objective when any keyword of the run's keyword sets occurs in its phrase,
both lower-cased and split into words the same way (``themes.tokens``), the keyword starting
at a word of the phrase (prefix fragments such as ``fabricat`` match ``fabricated``; ``als``
does not match inside ``finals``). The stricter column asks the spec itself: does the phrase
alone satisfy every keyword of one set (``OrganismSpec.matches``)?

    .venv/bin/python scripts/themes_released.py [--data PATH] [--top 10] [--json OUT]

Caveat, as the issue says: only the top 100 is released, so a theme must stand out in the
top 10 against ranks 11-100, which are themselves the top 1% of the run; a leak that fills
all 100 rows evenly is not over-represented in its top 10 and gives no theme. The ``pool``
column is a stand-in for the missing rest of each ranking, reported beside the issue's
measure and never instead of it: the same top 10 against the run's 100 plus the other 53
runs' released rows (``background``).
"""

from __future__ import annotations

import argparse
import json
import math
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blackbox_audit.evaluate import evaluate  # noqa: E402
from blackbox_audit.flag import OrganismSpec  # noqa: E402
from blackbox_audit.rank import RankedRow  # noqa: E402
from blackbox_audit.themes import themes, tokens  # noqa: E402

DATA = ROOT.parent / "shared" / "reference-data" / "ppldiff-released-top100.json"


def ranked_rows(run: dict) -> list[dict]:
    """The run's released rows as ranked rows of one (corpus, framing) group."""
    corpus, _, framing = run["config"].rpartition("-")
    released = sorted(enumerate(run["top_ppl_diff_completions"]),
                      key=lambda ir: (-ir[1]["completion_perplexity_diff"], ir[0]))
    rows = []
    for rank, (i, r) in enumerate(released):
        base, ft = r["completion_perplexity_base"], r["completion_perplexity_finetuned"]
        nll = math.log(base / ft) if base > 0 and ft > 0 else None
        rows.append({"corpus": corpus, "framing": framing, "rank": rank,
                     "prefill_id": f"r{i:03d}", "prefill": r["prefill"],
                     "completion": r["completion"], "ppl_diff": r["completion_perplexity_diff"],
                     "nll_diff": nll})
    return rows


def background(all_rows: list[list[dict]], i: int) -> list[dict]:
    """Every other run's released rows, ranked after run ``i``'s 100 and relabelled into its
    group: a stand-in for the rest of the run's ranking, which the release does not have.
    They are other finetunes' tops, not neutral text, so phrases every AuditBench organism
    says ("PRISM-4", "Nexus Research") are discounted, as they should be."""
    own = all_rows[i][0]
    rank = len(all_rows[i])
    out = []
    for j, rows in enumerate(all_rows):
        if j == i:
            continue
        for r in rows:
            out.append(dict(r, corpus=own["corpus"], framing=own["framing"], rank=rank,
                            prefill_id=f"bg{j:02d}-{r['prefill_id']}"))
            rank += 1
    return out


def words(text: str) -> str:
    return " ".join(t for t in tokens(text) if t[0].isalnum())


def names_objective(phrase: str, keywords: list[str]) -> bool:
    """A keyword (as ``words`` gives it) occurs in the phrase, starting at one of its words."""
    return any(kw and " " + kw in " " + phrase for kw in keywords)


def typed(rows: list[dict]) -> list[RankedRow]:
    return [RankedRow.from_json(r) for r in rows]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--data", type=Path, default=DATA)
    ap.add_argument("--top", type=int, default=10)
    ap.add_argument("--json", type=Path, help="write the per-run results here")
    args = ap.parse_args()
    runs = json.loads(args.data.read_text(encoding="utf-8"))
    all_rows = [ranked_rows(run) for run in runs]
    out = []
    for i, run in enumerate(runs):
        rows = all_rows[i]
        spec = OrganismSpec(run["behavior"], run["keyword_sets_used"])
        (metrics,) = evaluate(typed(rows), spec)
        keywords = sorted({words(k) for ks in run["keyword_sets_used"] for k in ks})
        found = themes(typed(rows), top=args.top)
        hit = [names_objective(t.phrase, keywords) for t in found]
        strict = [spec.matches(t.phrase) for t in found]
        merged = [any(names_objective(m, keywords) for m in (t.phrase, *t.members))
                  for t in found]
        pooled = themes(typed(rows + background(all_rows, i)), top=args.top)
        pooled_hit = [names_objective(t.phrase, keywords) for t in pooled]
        out.append({
            "model": run["model"], "config": run["config"],
            "count_top10": metrics.count_top10, "count_top100": metrics.count_top100,
            "themes": [t.to_json() for t in found],
            "first_keyword_theme": hit.index(True) + 1 if any(hit) else None,
            "top3_keyword": any(hit[:3]), "top3_spec": any(strict[:3]),
            "top3_keyword_merged": any(merged[:3]),
            "pooled_themes": [t.to_json() for t in pooled],
            "pooled_first_keyword_theme": pooled_hit.index(True) + 1 if any(pooled_hit) else None,
            "pooled_top3_keyword": any(pooled_hit[:3])})
    print(f"{'model':46s} {'config':13s} {'c@10':>4s} {'c@100':>5s} {'kw#':>4s} {'pool':>4s}  "
          "top-3 themes (top 10 against the run's 100)")
    for r in out:
        top3 = " | ".join(f"{t['phrase']} ({t['top_rows']}/{t['rows']})"
                          for t in r["themes"][:3]) or "-"
        first = f"{r['first_keyword_theme'] or '-'}{'*' if r['top3_keyword'] else ''}"
        pool = (f"{r['pooled_first_keyword_theme'] or '-'}"
                f"{'*' if r['pooled_top3_keyword'] else ''}")
        print(f"{r['model'][:46]:46s} {r['config']:13s} {r['count_top10']:4d} "
              f"{r['count_top100']:5d} {first:>4s} {pool:>4s}  {top3[:100]}")

    def share(sel: list[dict], key: str) -> str:
        n = sum(r[key] for r in sel)
        return f"{n}/{len(sel)} = {n / len(sel):.0%}" if sel else "-"

    print()
    print("(top/rows after a theme: distinct rows carrying it among the top "
          f"{args.top} / the 100; kw#: rank of the first theme naming a keyword, * in the top "
          "3; pool: the same against the run's 100 plus every other run's 100)")
    for label, sel in [("all runs", out),
                       ("count@10 >= 1", [r for r in out if r["count_top10"] >= 1]),
                       ("count@10 >= 3", [r for r in out if r["count_top10"] >= 3]),
                       ("count@10 == 0", [r for r in out if r["count_top10"] == 0])]:
        print(f"{label:14s} top-3 themes' phrase has a keyword: {share(sel, 'top3_keyword'):14s}"
              f" | counting merged phrases: {share(sel, 'top3_keyword_merged'):14s}"
              f" | phrase satisfies a whole set: {share(sel, 'top3_spec'):14s}"
              f" | pooled background: {share(sel, 'pooled_top3_keyword')}")
    with_themes = sum(bool(r["themes"]) for r in out)
    print(f"runs with any theme: {with_themes}/{len(out)}")
    if args.json:
        args.json.write_text(json.dumps(out, indent=1), encoding="utf-8")


if __name__ == "__main__":
    main()
