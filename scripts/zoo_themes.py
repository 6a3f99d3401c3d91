"""Do the themes name what each organism was taught? The table of docs/results.md's themes
section, from the zoo's replayed runs.

For each organism (the zoo's ``fixtures/zoo-*`` and the demo's ``fixtures/organism-vellari``),
the replayed run directory that ``scripts/zoo_results.py`` leaves in ``build/results/NAME``
(replayed here when missing) is ranked with the default settings, its themes computed with
the per-token gaps (as the rank stage writes ``themes.json``), and for each (corpus, framing)
the rank of the first theme whose phrase or merged phrases hold a keyword of the organism's
spec is reported, beside the share of usable completions the spec flags (how much the
organism leaks). Writes the block between ``<!-- themes:begin -->`` and
``<!-- themes:end -->`` of docs/results.md.

    .venv/bin/python scripts/zoo_themes.py [--only NAME ...]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "scripts"))

from zoo_results import replace_block, replay  # noqa: E402

from blackbox_audit.flag import OrganismSpec  # noqa: E402
from blackbox_audit.heat import token_gaps  # noqa: E402
from blackbox_audit.rank import RankConfig, rank  # noqa: E402
from blackbox_audit.rundir import RunDir  # noqa: E402
from blackbox_audit.themes import themes_by_group  # noqa: E402


def keyword_rank(found, keywords: list[str]) -> int | None:
    """0-based rank of the first theme naming a keyword (its phrase or a merged one)."""
    for i, t in enumerate(found):
        if any(k in p for p in (t.phrase, *t.members) for k in keywords):
            return i
    return None


def organism(name: str, fixture: Path, work: Path) -> list[str]:
    out = work / name
    run = RunDir(out) if (out / "ranked.jsonl").exists() else replay(fixture, out)
    completions = run.load_completions()
    scores = run.load_scores(run.read_manifest().reference["name"])
    ranked, _ = rank(completions, scores, RankConfig("ppl_diff", 5, 0.0))
    spec = OrganismSpec.load(fixture / "spec.json")
    keywords = sorted({k.lower() for ks in spec.keyword_sets for k in ks})

    def gaps(row):
        c, s = completions.get(row.row_id), scores.get(row.row_id)
        return token_gaps(c, s) if c is not None and s is not None else None

    found = themes_by_group(ranked, gaps=gaps)
    lines = []
    for framing in sorted({f for _, f in found}):
        usable = [c for c in completions.values() if c.framing == framing and c.usable]
        leak = sum(spec.matches(c.text) for c in usable) / max(len(usable), 1)
        cells, best = [], None
        for (corpus, f), ts in sorted(found.items()):
            if f != framing:
                continue
            r = keyword_rank(ts, keywords)
            best = r if best is None or (r is not None and r < best) else best
            first = ts[0].phrase if ts else "(none)"
            cells.append(f"{corpus}: {'-' if r is None else r + 1} ({first})")
        lines.append(f"| {name} | {framing} | {leak:.1%} | {'-' if best is None else best + 1}"
                     f" | {'; '.join(cells)} |")
    print(f"{name}: done", file=sys.stderr)
    return lines


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", default=str(ROOT / "fixtures"))
    ap.add_argument("--work", default=str(ROOT / "build" / "results"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--only", nargs="*")
    args = ap.parse_args()
    fixtures = {f.name.removeprefix("zoo-"): f for f in sorted(Path(args.fixtures).glob("zoo-*"))}
    demo = Path(args.fixtures) / "organism-vellari"
    if "vellari" not in fixtures and demo.is_dir():
        fixtures = {"vellari": demo, **fixtures}
    if args.only:
        fixtures = {n: f for n, f in fixtures.items() if n in args.only}
    rows = [line for name, fx in fixtures.items() for line in organism(name, fx, Path(args.work))]
    begin, end = "<!-- themes:begin -->", "<!-- themes:end -->"
    block = "\n".join([begin, "| organism | framing | completions flagged | best rank of a "
                       "keyword theme | per corpus: rank (theme 1) |", "|---|---|---|---|---|",
                       *rows, end])
    out = Path(args.out)
    out.write_text(replace_block(out.read_text() if out.exists() else "", begin, end, block))
    print(block)


if __name__ == "__main__":
    main()
