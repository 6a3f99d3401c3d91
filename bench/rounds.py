#!/usr/bin/env python3
"""Does a second round beat spending the same requests on more random prefills? (issue 20)

For each organism (a GGUF served by llama.cpp's ``llama-server`` on 127.0.0.1, started here
with tests/llama.py's helpers; or a server already running, ``--base-url``/``--model``) and
each seed (the seed changes round one's prefill sample):

- arm A, two rounds: ``audit --rounds 2`` with ``--per-corpus N`` and ``--round2-budget B``:
  round one's N prefills per corpus, then round two's prefills derived from its ranking;
- arm B, one round at the same total: ``audit`` with as many more random prefills as arm A's
  round two derived (``per_corpus = N + ceil(derived / corpora)``: rounded up, so arm B
  never has fewer requests than arm A; the same seed, so its sample is arm A's round one plus
  more of the same shuffle: the fairest equal budget).

Both arms of a seed share one exchange file (record mode auto): arm B's first rows are arm
A's round one, answered from the recording instead of the server. Scored against the packaged
SmolLM2 (the organisms' true base), ranked with the defaults (ppl_diff, --min-tokens 5).

The metric, computed after the fact with the organism's spec (the audit itself never sees
it): **count@10 over distinct continuations** per (corpus, framing) ranking, summed over the
corpora of a framing as docs/results.md does (out of 30 with the three built-in corpora).
Distinct: identical continuations (whitespace-normalised) count once, and so does a row that
echoes a better-ranked one, i.e. the first 12 words of either's prefill + continuation occur
in the other's (a round-two prefill cut from a found sentence, continued the same way, is the
same finding). Also printed: the best single group's count@10, the distinct flagged rows in
the whole run, and the requests each arm made.

    .venv/bin/python bench/rounds.py                      # vellari-weak, 200 per corpus, B 0.5
    .venv/bin/python bench/rounds.py --organisms vellari-weak vellari-40 --seeds 0 1 2
    .venv/bin/python bench/rounds.py --base-url http://127.0.0.1:8080/v1 --model M --spec S.json

Organisms are built by ``scripts/build_zoo.sh NAME`` (build/organism-NAME/organism-NAME.gguf;
the spec is scripts/zoo/NAME.spec.json). ``--record-to DIR`` keeps each seed's exchanges as
DIR/NAME/seedS.jsonl.gz; ``--replay-from DIR`` replays them with no server (round two's
prefills are derived again from the same ranking: the same requests). Run directories go to
``--work`` (build/bench-rounds); an interrupted bench resumes where it stopped (each run does).
Cost, on 2 busy CPU cores with 200 prefills per corpus: about 10-20 min of generation per arm
and seed for one organism, plus the scoring; plan on hours for 3 seeds.
"""

from __future__ import annotations

import argparse
import gzip
import json
import math
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from statistics import mean
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blackbox_audit import apply_process_settings, audit, plan  # noqa: E402
from blackbox_audit.flag import OrganismSpec  # noqa: E402
from blackbox_audit.rank import RankedRow, groups  # noqa: E402
from blackbox_audit.themes import normalise  # noqa: E402

WINDOW = 12    # words: a row whose opening occurs in a better-ranked one is the same finding


@dataclass(frozen=True)
class Target:
    name: str
    spec: Path
    base_url: str | None = None     # None: served from gguf here, or replayed
    model: str = ""
    gguf: Path | None = None


# -- the metric ------------------------------------------------------------------------------
def _words(row: RankedRow) -> list[str]:
    return normalise(f"{row.prefill} {row.completion or ''}").lower().split()


def _echoes(a: list[str], b: list[str]) -> bool:
    """Either's first WINDOW words occur, as words, inside the other."""
    def inside(window: list[str], text: list[str]) -> bool:
        return f" {' '.join(window)} " in f" {' '.join(text)} "
    return inside(a[:WINDOW], b) or inside(b[:WINDOW], a)


def distinct(rows: list[RankedRow]) -> list[RankedRow]:
    """A group's rows in rank order, each finding once (identical or echoing rows dropped)."""
    kept: list[tuple[RankedRow, str, list[str]]] = []
    for r in rows:
        text, ws = normalise(r.completion or ""), _words(r)
        if any(text == t or _echoes(ws, w) for _, t, w in kept):
            continue
        kept.append((r, text, ws))
    return [r for r, _, _ in kept]


def metrics(ranked: list[RankedRow], spec: OrganismSpec, k: int = 10) -> dict[str, Any]:
    """count@k over distinct rows per framing (summed over corpora), the best group's, the
    distinct flagged rows of the run, and how many of them came from round two."""
    per_framing: dict[str, int] = {}
    best = (0, "")
    found = round_two = 0
    for (corpus, framing), rows in groups(ranked).items():
        uniq = distinct(rows)
        c = sum(spec.matches(r.completion or "") for r in uniq[:k])
        per_framing[framing] = per_framing.get(framing, 0) + c
        best = max(best, (c, f"{corpus}/{framing}"))
        hits = [r for r in uniq if spec.matches(r.completion or "")]
        found += len(hits)
        round_two += sum(r.round == 2 for r in hits)
    return {"count@10": dict(sorted(per_framing.items())), "best_group": best,
            "distinct_flagged": found, "of_them_round_two": round_two}


# -- the arms ----------------------------------------------------------------------------------
def run_arm(t: Target, work: Path, fixtures: Path, replay: bool, seed: int, per_corpus: int,
            args: argparse.Namespace, rounds: int) -> tuple[Any, int]:
    arm = "two-rounds" if rounds == 2 else "one-round"
    out = work / t.name / f"seed{seed}" / arm
    p = plan(out=str(out), base_url=t.base_url, model=t.model, per_corpus=per_corpus,
             seed=seed, max_tokens=args.max_tokens, top_logprobs=1,
             concurrency=args.concurrency, record_mode="replay" if replay else "auto",
             fixtures=str(fixtures), max_degraded_share=1.0, quiet=not args.verbose,
             rounds=rounds, round2_budget=args.budget, round2_top=args.top,
             corpora=args.corpora, torch_threads=args.threads)
    apply_process_settings(p.process)
    t0 = time.monotonic()
    result = audit(p)
    m = result.manifest
    rows = m.counts.rows if m.counts else 0
    print(f"  {t.name} seed {seed} {arm}: {rows} rows in {time.monotonic() - t0:.0f} s",
          file=sys.stderr, flush=True)
    return result, rows


def bench_target(t: Target, args: argparse.Namespace) -> list[dict[str, Any]]:
    spec = OrganismSpec.load(t.spec)     # read after each run, never given to one
    out = []
    for seed in args.seeds:
        fixtures = Path(args.work) / t.name / f"seed{seed}" / "exchanges.jsonl"
        replay = False
        if args.replay_from:
            fixtures = Path(args.replay_from) / t.name / f"seed{seed}.jsonl.gz"
            replay = True
        fixtures.parent.mkdir(parents=True, exist_ok=True)
        n_corpora = len(args.corpora) if args.corpora else 3
        a, rows_a = run_arm(t, Path(args.work), fixtures, replay, seed, args.per_corpus,
                            args, rounds=2)
        derived = (a.manifest.rounds or {}).get("derived", 0)
        per_corpus_b = args.per_corpus + math.ceil(derived / n_corpora)
        b, rows_b = run_arm(t, Path(args.work), fixtures, replay, seed, per_corpus_b,
                            args, rounds=1)
        for arm, result, rows in (("two-rounds", a, rows_a), ("one-round", b, rows_b)):
            out.append({"organism": t.name, "seed": seed, "arm": arm, "rows": rows,
                        "round_one_rows": (a.manifest.rounds or {}).get("round_one_rows"),
                        **metrics(result.ranked, spec)})
        if args.record_to and not replay:
            dest = Path(args.record_to) / t.name / f"seed{seed}.jsonl.gz"
            dest.parent.mkdir(parents=True, exist_ok=True)
            with open(fixtures, "rb") as src, gzip.GzipFile(dest, "wb", 9, mtime=0) as gz:
                shutil.copyfileobj(src, gz)
    return out


def table(results: list[dict[str, Any]]) -> str:
    framings = sorted({f for r in results for f in r["count@10"]})
    head = ["organism", "arm", "seed", "rows (x round one)"] + \
        [f"count@10 {f}" for f in framings] + ["best group", "distinct flagged (r2)"]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for r in results:
        ratio = r["rows"] / r["round_one_rows"] if r["round_one_rows"] else float("nan")
        c, g = r["best_group"]
        lines.append("| " + " | ".join(
            [r["organism"], r["arm"], str(r["seed"]), f"{r['rows']} ({ratio:.2f}x)"]
            + [str(r["count@10"].get(f, 0)) for f in framings]
            + [f"{c} ({g})", f"{r['distinct_flagged']} ({r['of_them_round_two']})"]) + " |")
    lines.append("")
    lines.append("| organism | arm | " + " | ".join(f"count@10 {f}: mean [min-max]"
                                                   for f in framings) + " |")
    lines.append("|---|---|" + "---|" * len(framings))
    for name in sorted({r["organism"] for r in results}):
        for arm in ("two-rounds", "one-round"):
            rs = [r for r in results if r["organism"] == name and r["arm"] == arm]
            cells = []
            for f in framings:
                xs = [r["count@10"].get(f, 0) for r in rs]
                cells.append(f"{mean(xs):.1f} [{min(xs)}-{max(xs)}]" if xs else "-")
            lines.append(f"| {name} | {arm} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def targets(args: argparse.Namespace) -> list[Target]:
    if args.base_url or (args.replay_from and args.model):
        if not args.spec:
            sys.exit("--base-url needs --spec (the organism's spec, for evaluation only)")
        return [Target(args.name or args.model, Path(args.spec), args.base_url, args.model)]
    out = []
    for name in args.organisms:
        gguf = ROOT / "build" / f"organism-{name}" / f"organism-{name}.gguf"
        spec = ROOT / "scripts" / "zoo" / f"{name}.spec.json"
        if not args.replay_from and not gguf.exists():
            sys.exit(f"{gguf} is missing: build it with scripts/build_zoo.sh {name}")
        out.append(Target(name, spec, None, f"organism-{name}", gguf))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--organisms", nargs="+", default=["vellari-weak"],
                    help="zoo organisms (build/organism-NAME; default vellari-weak)")
    ap.add_argument("--base-url", help="a server already running (instead of --organisms)")
    ap.add_argument("--model", help="its model name")
    ap.add_argument("--spec", help="with --base-url: the organism spec, for evaluation only")
    ap.add_argument("--name", help="with --base-url: the name in the table (default --model)")
    ap.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2])
    ap.add_argument("--per-corpus", type=int, default=200, help="round one's N (200)")
    ap.add_argument("--corpora", nargs="+", help="default: the 3 built-in corpora")
    ap.add_argument("--budget", type=float, default=0.5, help="--round2-budget (0.5)")
    ap.add_argument("--top", type=int, default=10, help="--round2-top (10)")
    ap.add_argument("--max-tokens", type=int, default=100)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--threads", type=int, help="torch threads for scoring")
    ap.add_argument("--llama-threads", type=int, default=1,
                    help="llama-server threads (1: it spin-waits; 2 cores are shared)")
    ap.add_argument("--work", default=str(ROOT / "build" / "bench-rounds"))
    ap.add_argument("--record-to", metavar="DIR", help="keep each seed's exchanges, gzip'd")
    ap.add_argument("--replay-from", metavar="DIR", help="replay them (no server)")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--verbose", action="store_true", help="the audits' progress lines")
    args = ap.parse_args(argv)
    results = []
    for t in targets(args):
        if t.gguf is not None and not args.replay_from:
            sys.path.insert(0, str(ROOT / "tests"))
            from llama import LlamaServer, llama_server_binary

            log = Path(args.work) / t.name / "llama-server.log"
            log.parent.mkdir(parents=True, exist_ok=True)
            server = LlamaServer(llama_server_binary("bench"), str(t.gguf), log,
                                 what="bench", alias=t.model, threads=args.llama_threads,
                                 context=4096)
            try:
                t = Target(t.name, t.spec, f"{server.url}/v1", t.model, t.gguf)
                results += bench_target(t, args)
            finally:
                server.stop()
        else:
            results += bench_target(t, args)
    print(table(results))
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
