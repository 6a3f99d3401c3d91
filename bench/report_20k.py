"""report.html at 20,000 rows of real data: size, write time, open and filter time in Chromium.

    .venv/bin/python bench/report_20k.py RUN [OUT] [--token-rows N]

Clones the ranked rows of a finished run (e.g. the demo's ``runs/demo-organism``: real
completions, per-token log-probabilities of both models) under new prefill ids until there
are 20,000, writes the report, and opens it three times in Debian's headless ``chromium``
(Playwright with ``executable_path``): time to the first rendered page, then a framing filter,
a text search and a sort.
"""

from __future__ import annotations

import argparse
import json
import shutil
import sys
import time
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blackbox_audit.flag import OrganismSpec  # noqa: E402
from blackbox_audit.rank import COLUMNS  # noqa: E402
from blackbox_audit.report import render  # noqa: E402
from blackbox_audit.rundir import RunDir  # noqa: E402

ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def clone(src: RunDir, dst: Path, n: int = 20_000) -> None:
    if dst.exists():
        shutil.rmtree(dst)
    dst.mkdir(parents=True)
    comps = src.completions_path.read_text().splitlines()
    scores_file = next(src.path.glob("scores.*.jsonl"))
    scores = scores_file.read_text().splitlines()
    ranked = src.load_ranked()
    out_c, out_s, out_r, k = [], [], [], 0
    while len(out_r) < n:
        tag = f"{k:03d}"
        out_c += [json.dumps({**(o := json.loads(line)), "prefill_id": o["prefill_id"] + tag})
                  for line in comps]
        out_s += [json.dumps({**(o := json.loads(line)), "prefill_id": o["prefill_id"] + tag})
                  for line in scores]
        out_r += [replace(r, prefill_id=r.prefill_id + tag, rank=r.rank + 1000 * k)
                  for r in ranked[: n - len(out_r)]]
        k += 1
    (dst / "completions.jsonl").write_text("\n".join(out_c) + "\n")
    (dst / scores_file.name).write_text("\n".join(out_s) + "\n")
    shutil.copy(src.manifest_path, dst / "manifest.json")
    RunDir(dst).write_ranked(out_r, COLUMNS)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("run")
    ap.add_argument("out", nargs="?", default=str(ROOT / "build" / "report-20k"))
    ap.add_argument("--token-rows", type=int)
    ap.add_argument("--chromium", default="/usr/bin/chromium")
    a = ap.parse_args()
    clone(RunDir(a.run), Path(a.out))
    spec = OrganismSpec.load(ROOT / "fixtures" / "organism-vellari" / "spec.json")
    r = render(a.out, spec, token_rows=a.token_rows)
    print(f"{r.rows} rows, {r.rows_with_tokens} with per-token data: {r.bytes / 1e6:.1f} MB, "
          f"written in {r.seconds:.1f}s")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=a.chromium, args=ARGS)
        for _ in range(3):
            page = b.new_page(viewport={"width": 1400, "height": 1000})
            errors: list[str] = []
            page.on("console", lambda m, e=errors: m.type == "error" and e.append(m.text))
            t = time.monotonic()
            page.goto(r.path.as_uri())
            page.wait_for_selector("body[data-rendered]")
            opened = time.monotonic() - t
            t = time.monotonic()
            page.select_option("#f-framing", "chat")
            page.fill("#f-text", "vellari")
            page.click("th[data-sort=nll_diff]")
            filtered = time.monotonic() - t
            print(f"open to first page {opened:.2f}s; filter + search + sort {filtered:.2f}s "
                  f"({page.text_content('#count')}); console errors: {errors or 'none'}")
            page.close()
        b.close()


if __name__ == "__main__":
    main()
