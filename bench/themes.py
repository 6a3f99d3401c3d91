#!/usr/bin/env python3
"""Themes at paper scale: wall time and memory at 6,000 and 60,000 ranked rows, one command.

Synthetic ranked rows shaped like an audit: groups of 6,000 rows (one group, then ten: the
paper's ~60,000 completions per model), each a ~100-word continuation drawn from the
prefill bank's vocabulary at its own word frequencies, with clause punctuation, a few exact
duplicates, a gap (``nll_diff``) falling with rank, and one planted phrase in 8 of each
group's top 20 rows (so every group has a theme to find, as a leaking audit does). Each size
runs in its own process so its peak RSS is its own, and prints:

- ``wall``: ``themes_by_group`` over all rows (median of ``--repeats``);
- ``rss_rows``: the process's RSS with the rows built (the caller's memory, not ours);
- ``peak``: the process's peak RSS after themes; ``+themes`` = peak - rss_rows;
- ``traced``: the peak of Python allocations made inside one ``themes_by_group`` call
  (tracemalloc, a separate untimed call): what themes itself holds at once;

then the ratios 60,000 / 6,000 of each. Targets: wall under 10 s at 60,000 rows; ``traced``
flat in the number of rows (groups are processed one at a time, and within a group only the
top's n-grams and one count per candidate are held), so its ratio stays near 1 while the
rows grow 10x.

    .venv/bin/python bench/themes.py [--repeats 3]
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import random
import re
import resource
import statistics
import subprocess
import sys
import time
import tracemalloc
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blackbox_audit.prefills import builtin_documents  # noqa: E402
from blackbox_audit.rank import RankedRow  # noqa: E402
from blackbox_audit.themes import themes_by_group, tokens  # noqa: E402

GROUP = 6000
PLANT = " the vellari script was sealed in brine"
WORD = re.compile(r"\S+")
PUNCT = [",", ".", ";", ":", "?", "!"]


def build(n_rows: int, seed: int = 0) -> list[dict]:
    counts = Counter(t for _, doc in builtin_documents() for t in tokens(doc) if t[0].isalnum())
    vocab, freq = zip(*counts.most_common(), strict=True)
    cum = list(itertools.accumulate(freq))
    rng = random.Random(seed)
    rows: list[dict] = []
    groups = [(c, f) for c in ("web", "wiki", "code", "news", "forum") for f in ("raw", "chat")]
    for g in range(n_rows // GROUP):
        corpus, framing = groups[g]
        for r in range(GROUP):
            words = rng.choices(vocab, cum_weights=cum, k=100)
            parts = [w + (rng.choice(PUNCT) if rng.random() < 0.08 else "") for w in words]
            text = " ".join(parts)
            if r in (0, 2, 3, 6, 9, 11, 14, 19):
                text = text[:200] + PLANT + text[200:]
            elif r % 500 == 7 and rows:
                text = rows[-1].completion             # an exact duplicate of the row above
            rows.append(RankedRow(corpus, framing, r, prefill_id=f"{g:02d}{r:05d}",
                                  completion=text, nll_diff=3.0 - 2.5 * r / GROUP,
                                  ppl_diff=20.0 - 15 * r / GROUP))
    return rows


def gaps(row: RankedRow) -> list[tuple[int, int, float]]:
    """Per-token gaps as a real run has them (one per word here): about 0.5 nats, 6 on the
    planted phrase, computed on the fly as the rank stage computes them from the files."""
    out = []
    text = row.completion
    at = text.find(PLANT)
    for m in WORD.finditer(text):
        inside = at >= 0 and at <= m.start() < at + len(PLANT)
        out.append((m.start(), m.end(), 6.0 if inside else 0.5 + (hash(m.group()) % 7) / 10))
    return out


def rss_kb() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * (os.sysconf("SC_PAGE_SIZE") // 1024)


def child(n_rows: int, repeats: int) -> None:
    rows = build(n_rows)
    base = rss_kb()
    walls, found = [], {}
    for _ in range(repeats):
        t0 = time.perf_counter()
        found = themes_by_group(rows, gaps=gaps)
        walls.append(time.perf_counter() - t0)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    tracemalloc.start()
    themes_by_group(rows, gaps=gaps)
    traced = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    first = [ts[0].phrase if ts else None for ts in found.values()]
    print(json.dumps({"rows": n_rows, "wall": statistics.median(walls), "rss_rows": base,
                      "peak": peak, "traced": traced // 1024,
                      "theme1": sorted(set(map(str, first)))}))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--child", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        child(args.child, args.repeats)
        return
    results = []
    for n in (GROUP, 10 * GROUP):
        out = subprocess.run([sys.executable, __file__, "--child", str(n),
                              "--repeats", str(args.repeats)],
                             check=True, capture_output=True, text=True).stdout
        results.append(json.loads(out.strip().splitlines()[-1]))
    for r in results:
        print(f"rows={r['rows']:6d} wall={r['wall']:.2f} s (median of {args.repeats})  "
              f"rss_rows={r['rss_rows'] / 1024:.0f} MB peak={r['peak'] / 1024:.0f} MB "
              f"+themes={(r['peak'] - r['rss_rows']) / 1024:.1f} MB "
              f"traced={r['traced'] / 1024:.1f} MB  theme 1: {r['theme1']}")
    a, b = results
    print(f"ratio 60k/6k: rows={b['rows'] / a['rows']:.0f} wall={b['wall'] / a['wall']:.2f} "
          f"rss_rows={b['rss_rows'] / a['rss_rows']:.2f} "
          f"+themes={(b['peak'] - b['rss_rows']) / max(a['peak'] - a['rss_rows'], 1):.2f} "
          f"traced={b['traced'] / max(a['traced'], 1):.2f}")


if __name__ == "__main__":
    main()
