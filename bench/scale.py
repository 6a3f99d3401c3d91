#!/usr/bin/env python3
"""Paper scale on one machine (issue 16): peak RSS and wall time of every stage after
generation at 1,000 / 10,000 / 100,000 rows, bytes per row of the run directory, report size
and its first page in headless Chromium, one command:

    .venv/bin/python bench/scale.py SEED_RUN [--sizes 1000 10000 100000] [--out build/scale]

SEED_RUN is a finished audit (e.g. the demo's, ``scripts/demo.sh --out runs/demo-organism``:
600 real rows of a llama.cpp server with 100 greedy tokens and top-5 log-probabilities,
scored by the packaged reference) recorded with its exchange log, or with
``--exchanges fixtures/organism-vellari/exchanges.jsonl.gz`` to take the recorded answers as
the run's exchange log. Each size clones the seed's rows under new prefill ids (completions,
score rows with their per-token pieces, one recorded exchange per row) to N rows: synthetic
rows with real shapes, so the stages after generation see what a paper-scale run holds,
without hours of generation and scoring on 2 cores. Then each stage runs in its own process
(its peak RSS is its own):

- ``score``: ``blackbox-audit score RUN`` on a run already scored (streams the completions to
  find nothing left to score; then ranks, writes ranked.* and themes.json);
- ``rank``: the rank stage alone; ``eval``: ``evaluate`` over the streamed ranking with the
  demo organism's spec; ``show``: the terminal's top 10; ``report``: report.html;
- ``pack``: ``RunDir.pack`` (gzip and lossless compact forms), then bytes per row of the
  whole directory, the exchange log included. One caveat of cloning: the clones of a row
  rank side by side (equal scores), so the packed ranking compresses far better than a real
  one (18 B a row at 100,000 against 170 B for the real 600-row demo ranking): add the
  difference when reading the total.

Why clones and not a loopback server with canned answers: a canned answer repeated 100,000
times is one row to gzip, which would flatter every size figure here; clones of 600 real
answers keep real token variety within gzip's window, and generation itself is measured by
``bench/client.py``.

Baseline in the same command: the same stages' figures at the smallest size; the targets are
growth of at most 2 KB per row in peak RSS from the smallest to the largest size, under
1.5 GB, rank + eval under 30 s at 100,000 rows, at most 7 KB a row on disk, a report under
20 MB whose first page opens within 2x the smallest one's time.
"""

from __future__ import annotations

import argparse
import gzip
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
SPEC = ROOT / "fixtures" / "organism-vellari" / "spec.json"
CHROMIUM = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update", "--disable-sync", "--no-first-run"]

STAGE = r"""
import json, sys, time
sys.path.insert(0, {root!r})
run, stage = {run!r}, {stage!r}
t = time.monotonic()
if stage == "score":
    import blackbox_audit as ba
    ba.rescore(run, quiet=True)
elif stage == "rank":
    from blackbox_audit.audit import rank
    from blackbox_audit.plan import scoring_plan
    from blackbox_audit.rundir import RunDir
    rank(scoring_plan(), RunDir(run))
elif stage == "eval":
    from blackbox_audit.evaluate import evaluate
    from blackbox_audit.flag import OrganismSpec
    from blackbox_audit.rundir import RunDir
    evaluate(RunDir(run).iter_ranked(), OrganismSpec.load({spec!r}))
elif stage == "show":
    import io
    from blackbox_audit import presentation
    from blackbox_audit.flag import OrganismSpec
    from blackbox_audit.rundir import RunDir
    r = RunDir(run)
    presentation.show_top(r.load_ranked(), 10, OrganismSpec.load({spec!r}), out=io.StringIO(),
                          plain=True, themes=r.load_themes())
elif stage == "report":
    from blackbox_audit.flag import OrganismSpec
    from blackbox_audit.report import render
    res = render(run, OrganismSpec.load({spec!r}))
elif stage == "pack":
    from blackbox_audit.rundir import RunDir
    RunDir(run).pack()
# VmHWM: this process's own peak (ru_maxrss survives exec: it would report the bench's size)
hwm = next(int(x.split()[1]) for x in open("/proc/self/status") if x.startswith("VmHWM"))
print(json.dumps({{"wall": time.monotonic() - t, "rss_mb": hwm / 1024}}))
"""


def clone(seed: Path, dst: Path, n: int, exchanges: Path | None) -> None:
    """N rows cloned from the seed run, new prefill ids, score rows in today's format."""
    from blackbox_audit.heat import pieces_json, text_digest
    from blackbox_audit.rundir import RunDir

    src = RunDir(seed)
    ref = src.read_manifest().reference["name"]
    comps = {c.row_key: c for c in src.iter_completions()}
    scores = []
    for s in src.iter_scores(ref):
        c = comps.get(f"{s.prefill_id}:{s.framing}")
        if c is not None and s.heat is None:
            s.heat = pieces_json(c, s)
        scores.append(s)
    comp_lines = [json.dumps(c.to_json(), ensure_ascii=False) for c in comps.values()]
    score_lines = [json.dumps(s.to_json(), ensure_ascii=False) for s in scores]
    if exchanges is None:
        exchanges = src.exchanges_path
    opener = gzip.open if exchanges.suffix == ".gz" else open
    with opener(exchanges, "rt", encoding="utf-8") as fh:
        ex_lines = [line for line in fh.read().splitlines() if '"/completions"' in line
                    or '"/chat/completions"' in line]
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    shutil.copy(src.manifest_path, dst / "manifest.json")
    k = 0
    written = 0
    with open(dst / "completions.jsonl", "w", encoding="utf-8") as fc, \
            open(dst / f"scores.{ref}.jsonl", "w", encoding="utf-8") as fs, \
            open(dst / "exchanges.jsonl", "w", encoding="utf-8") as fe:
        while written < n:
            tag = f"{k:05d}"
            take = min(len(comp_lines), n - written)
            # Each clone's text gets its own tag, so no two rows are identical continuations
            # (the report and themes collapse those): the last piece of the score row's
            # per-token data covers it.
            suffix = f" #{tag}"
            texts = {}
            for line in comp_lines[:take]:
                o = json.loads(line)
                if o.get("text"):
                    o["text"] += suffix
                texts[o["prefill_id"] + ":" + o["framing"]] = o["text"]
                o["prefill_id"] += tag
                fc.write(json.dumps(o, ensure_ascii=False) + "\n")
            for line in score_lines:
                o = json.loads(line)
                text = texts.get(o["prefill_id"] + ":" + o["framing"])
                if text is not None:
                    o["prefill_id"] += tag
                    h = o.get("heat")
                    if h and h.get("e"):
                        h["e"][-1] += len(suffix)
                        h["h"] = text_digest(text)
                    fs.write(json.dumps(o, ensure_ascii=False) + "\n")
            for j in range(take):   # one recorded answer per row, its request made unique
                o = json.loads(ex_lines[j % len(ex_lines)])
                o["body"]["seed_row"] = f"{k}:{j}"
                fe.write(json.dumps(o, ensure_ascii=False) + "\n")
            written += take
            k += 1


def stage(run: Path, name: str) -> dict:
    code = STAGE.format(root=str(ROOT), run=str(run), stage=name, spec=str(SPEC))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    if out.returncode:
        raise SystemExit(f"{name} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def first_page(path: Path, chromium: str) -> float | None:
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        return None
    if not Path(chromium).exists():
        return None
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=chromium, args=CHROMIUM)
        times = []
        for _ in range(2):
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            t = time.monotonic()
            page.goto(path.as_uri())
            page.wait_for_selector("body[data-rendered]", timeout=120_000)
            times.append(time.monotonic() - t)
            page.close()
        b.close()
    return min(times)


def du(path: Path) -> int:
    return sum(f.stat().st_size for f in path.iterdir() if f.is_file())


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("seed")
    ap.add_argument("--sizes", type=int, nargs="+", default=[1000, 10_000, 100_000])
    ap.add_argument("--out", default=str(ROOT / "build" / "scale"))
    ap.add_argument("--exchanges", type=Path)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    ap.add_argument("--keep", action="store_true", help="keep the cloned runs")
    a = ap.parse_args()
    names = ["score", "rank", "eval", "show", "report", "pack"]
    results = {}
    for n in a.sizes:
        run = Path(a.out).resolve() / f"n{n}"
        t = time.monotonic()
        clone(Path(a.seed), run, n, a.exchanges)
        plain = du(run)
        print(f"n={n}: cloned in {time.monotonic() - t:.0f}s, plain run directory "
              f"{plain / n / 1e3:.1f} KB/row", flush=True)
        r = {"plain_kb_row": plain / n / 1e3}
        for name in names:
            r[name] = stage(run, name)
            print(f"  {name:<7} {r[name]['wall']:7.1f}s  peak RSS {r[name]['rss_mb']:7.0f} MB",
                  flush=True)
        r["packed_kb_row"] = du(run) / n / 1e3
        r["files"] = {f.name: round(f.stat().st_size / n) for f in sorted(run.iterdir())
                      if f.is_file() and f.stat().st_size > 1000}
        report = run / "report.html"
        r["report_mb"] = report.stat().st_size / 1e6
        r["first_page_s"] = first_page(report, a.chromium)
        print(f"  packed {r['packed_kb_row']:.2f} KB/row {r['files']}; report "
              f"{r['report_mb']:.1f} MB, first page {r['first_page_s']}", flush=True)
        results[n] = r
        if not a.keep:
            shutil.rmtree(run)
    lo, hi = min(results), max(results)
    print(f"\n{'stage':<8}" + "".join(f"{f'{n:,} rows':>24}" for n in results)
          + f"{'KB/row growth':>15}")
    for name in names:
        cells = "".join(f"{results[n][name]['wall']:>9.1f}s {results[n][name]['rss_mb']:>8.0f} MB"
                        + " " * 4 for n in results)
        growth = (results[hi][name]["rss_mb"] - results[lo][name]["rss_mb"]) * 1024 \
            / max(hi - lo, 1)
        print(f"{name:<8}{cells}{growth:>13.2f}")
    for key, unit in (("plain_kb_row", "KB/row"), ("packed_kb_row", "KB/row"),
                      ("report_mb", "MB"), ("first_page_s", "s")):
        print(f"{key:<14}" + "".join(
            f"{(results[n][key] if results[n][key] is not None else float('nan')):>18.2f} {unit}"
            for n in results))
    print(json.dumps({str(n): r for n, r in results.items()}), file=sys.stderr)


if __name__ == "__main__":
    main()
