#!/usr/bin/env python3
"""score-texts at scale: throughput (texts/s, tokens/s) of a 10,000-text run, and its peak
memory against a 1,000-text run's (the issue's bound: within 1.2x).

    .venv/bin/python bench/score_texts.py [--sizes 1000,10000] [--threads 2] [--words 14]

Each size runs in a fresh process (peak RSS, ``ru_maxrss``, is per process) through the library
call the CLI makes (``texts_plan`` + ``score_texts``): the packaged SmolLM2 GGUF as a local
target against itself as the reference (two models loaded, as in any local run; the same
vocabulary, so the ids path). The texts are synthetic sentences of about ``--words`` words
from a seeded word pool, each distinct. Numbers are for this machine at this load: run it two
or three times (machines here are shared and noisy).
"""

from __future__ import annotations

import argparse
import json
import random
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
_POOL = ("the a river city garden small old new quiet bright teacher doctor farmer child "
         "walked found built carried painted watched opened closed near under across "
         "morning evening winter summer bread stone letter window market bridge road "
         "slowly often never always because while after before green heavy warm cold "
         "music paper ship island forest mountain library station kitchen")
WORDS = _POOL.split()


def write_texts(path: Path, n: int, words: int, seed: int = 0) -> None:
    rng = random.Random(seed)
    with open(path, "w", encoding="utf-8") as fh:
        for i in range(n):
            k = max(4, int(rng.gauss(words, words / 4)))
            text = " ".join(rng.choice(WORDS) for _ in range(k)).capitalize() + f" ({i})."
            fh.write(json.dumps({"id": f"t{i}", "text": text}) + "\n")


def child(n: int, words: int, threads: int) -> None:
    sys.path.insert(0, str(ROOT))
    import blackbox_audit as ba
    from blackbox_audit.plan import process_settings
    from blackbox_audit.reference import packaged_smollm2

    ba.apply_process_settings(process_settings(threads))
    base = packaged_smollm2()
    with tempfile.TemporaryDirectory() as tmp:
        texts = Path(tmp) / "texts.jsonl"
        write_texts(texts, n, words)
        t0 = time.monotonic()
        result = ba.score_texts(ba.texts_plan(texts, Path(tmp) / "run", quiet=True,
                                              target_local=f"{base.path}/{base.gguf_file}"))
        wall = time.monotonic() - t0
        s = result.manifest.scoring or {}
        tokens = s.get("tokens", 0)
        scoring = s.get("seconds") or wall
    print(json.dumps({
        "texts": n, "ranked": result.manifest.counts.ranked, "wall_s": round(wall, 1),
        "scoring_s": scoring, "texts_per_s": round(n / scoring, 1),
        "tokens": tokens, "tokens_per_s": round(2 * tokens / scoring),   # two models score
        "peak_rss_mb": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="1000,10000")
    ap.add_argument("--words", type=int, default=14)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.words, args.threads)
        return
    results = []
    for n in (int(x) for x in args.sizes.split(",")):
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--words",
                              str(args.words), "--threads", str(args.threads)],
                             capture_output=True, text=True, check=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
        r = results[-1]
        print(f"{r['texts']:>6} texts: scoring {r['scoring_s']:.1f} s, {r['texts_per_s']} "
              f"texts/s, {r['tokens_per_s']} tokens/s (both models; {r['tokens']} tokens per "
              f"model), peak RSS {r['peak_rss_mb']} MB", flush=True)
    if len(results) > 1:
        ratio = results[-1]["peak_rss_mb"] / results[0]["peak_rss_mb"]
        print(f"peak RSS {results[-1]['texts']} / {results[0]['texts']} texts: {ratio:.3f}x "
              f"(bound 1.2x: {'ok' if ratio <= 1.2 else 'OVER'})")


if __name__ == "__main__":
    main()
