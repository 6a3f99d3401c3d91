#!/usr/bin/env python3
"""verify's false-positive rate and power, by resampling prompts from recorded pools.

One pool per condition, each a verify run directory of real llama-server answers scored by
the claimed model (the packaged SmolLM2 Q4_1):

- ``null-cal``: the same GGUF served, the *calibration* half of the prompt set;
- ``same``:     the same GGUF served, the judged half (condition (a));
- ``q4_0``:     the weights requantised to Q4_0, the judged half (condition (b));
- ``weak``:     the 12-step LoRA organism, the judged half (condition (c)).

Each replicate draws ``--cal`` calibration prompts from ``null-cal`` (without replacement)
and feeds the sequential test judged prompts drawn from the condition's pool in a random
order, with the output-token budget of the column: (a) counts ``differs`` (false
positives, with the Clopper-Pearson upper bound), (b) and (c) count ``differs`` (power), and
the tokens each decision took. Replicates share prompts (the pools are finite), so they are
not independent and the binomial bound is a guide, not a guarantee.

    .venv/bin/python bench/verify_power.py [--collect] [--pool-tokens 4800] [--reps 1000]

``--collect`` builds the pools first (needs scripts/build_verify_models.sh and the llama-server
binary; about 10-15 minutes on 2 busy cores), into build/verify-bench/; without it the pools
there are read (a pool's run directory replays offline: verify --replay).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blackbox_audit.rundir import read_jsonl  # noqa: E402
from blackbox_audit.verify_stats import (  # noqa: E402
    Calibration,
    PromptStats,
    SequentialTest,
    clopper_pearson,
)

POOLS = ROOT / "build" / "verify-bench"
BUDGETS = (250, 500, 1000, 2000)


def _port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def collect(pool_tokens: int) -> None:
    """Serve each model with llama-server (-t 1) and gather its pool (generation and scoring
    take turns inside verify)."""
    from blackbox_audit.plan import process_settings
    from blackbox_audit.runtime import apply
    from blackbox_audit.verifier import verify, verify_plan

    apply(process_settings(1))
    server = subprocess.run(["bash", "scripts/build_llama_server.sh"], cwd=ROOT, check=True,
                            capture_output=True, text=True).stdout.split()[-1]
    found = subprocess.run(["bash", "scripts/build_verify_models.sh"], cwd=ROOT, check=True,
                           capture_output=True, text=True).stdout
    models = dict(line.split(" ", 1) for line in found.strip().splitlines())
    jobs = [("null-cal", "same", True), ("same", "same", False), ("q4_0", "q4_0", False),
            ("weak", "weak", False)]
    for pool, model, calibrate in jobs:
        out = POOLS / pool
        if (out / "verify.json").exists():
            print(f"{pool}: cached in {out}")
            continue
        port = _port()
        log = open(POOLS / f"{pool}.server.log", "w")  # noqa: SIM115
        proc = subprocess.Popen([server, "-m", models[model].strip(), "--host", "127.0.0.1",
                                 "--port", str(port), "-c", "2048", "-t", "1", "-np", "2",
                                 "--alias", "smollm2"], stdout=log, stderr=subprocess.STDOUT)
        try:
            import httpx

            for _ in range(300):
                try:
                    if httpx.get(f"http://127.0.0.1:{port}/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.3)
            t0 = time.monotonic()
            vp = verify_plan(out=out, base_url=f"http://127.0.0.1:{port}/v1", model="smollm2",
                             calibrate=calibrate, collect=not calibrate,
                             max_tokens_budget=pool_tokens, concurrency=2, repeats=0,
                             batch=16, torch_threads=1)
            r = verify(vp)
            print(f"{pool}: {len(r.prompts)} prompts in {time.monotonic() - t0:.0f} s")
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
            log.close()


def pool(name: str) -> list[PromptStats]:
    rows = read_jsonl(POOLS / name / "verify_prompts.jsonl")
    fields = PromptStats.__dataclass_fields__
    return [PromptStats(**{k: v for k, v in r["stats"].items() if k in fields}) for r in rows]


def replicate(rng: np.random.Generator, cal: list[PromptStats], judged: list[PromptStats],
              n_cal: int, budget: int, alpha: float):
    pick = rng.choice(len(cal), size=min(n_cal, len(cal)), replace=False)
    calibration = Calibration.from_prompts([cal[i] for i in pick])
    test = SequentialTest(calibration, alpha=alpha, max_tokens=budget)
    for i in rng.permutation(len(judged)):
        if (v := test.update(judged[i])) is not None:
            return v
    return test.verdict()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--collect", action="store_true", help="build the pools first")
    ap.add_argument("--pool-tokens", type=int, default=4800,
                    help="output tokens per pool when collecting (4800 = 150 prompts)")
    ap.add_argument("--reps", type=int, default=1000, help="replicates per cell (1000)")
    ap.add_argument("--cal", type=int, default=100, help="calibration prompts drawn (100)")
    ap.add_argument("--alpha", type=float, default=0.01)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    POOLS.mkdir(parents=True, exist_ok=True)
    if args.collect:
        collect(args.pool_tokens)
    cal = pool("null-cal")
    pools = {name: pool(name) for name in ("same", "q4_0", "weak")}
    print(f"pools: null-cal {len(cal)} prompts; " + ", ".join(
        f"{k} {len(v)}" for k, v in pools.items()) + f"; {args.cal} calibration prompts per "
        f"replicate, alpha {args.alpha}, {args.reps} replicates per cell")
    rng = np.random.default_rng(args.seed)
    t0 = time.monotonic()
    table = {}
    print(f"{'condition':24s} " + " ".join(f"{b:>7d}" for b in BUDGETS)
          + "   tokens to differs (median, p90) at 2000")
    for name, label in (("same", "(a) same GGUF: FPR"), ("q4_0", "(b) Q4_0: power"),
                        ("weak", "(c) LoRA 12 steps: power")):
        cells, toks = [], []
        for b in BUDGETS:
            vs = [replicate(rng, cal, pools[name], args.cal, b, args.alpha)
                  for _ in range(args.reps)]
            k = sum(v.decision == "differs" for v in vs)
            cells.append((k, len(vs)))
            if b == BUDGETS[-1]:
                toks = sorted(v.tokens_used for v in vs if v.decision == "differs")
                table[name + "_consistent"] = sum(v.decision == "consistent" for v in vs)
        table[name] = cells
        row = " ".join(f"{k / n:7.3f}" for k, n in cells)
        extra = (f"   {toks[len(toks) // 2]}, {toks[int(0.9 * (len(toks) - 1))]}" if toks
                 else "   -")
        print(f"{label:24s} {row}{extra}")
    k, n = table["same"][-1]
    hi = clopper_pearson(k, n, 0.05, side="upper")[1]
    print(f"(a) at 2000 tokens: {k}/{n} differs, 95% Clopper-Pearson upper bound {hi:.4f}; "
          f"{table['same_consistent']}/{n} consistent")
    print(f"({time.monotonic() - t0:.0f} s)")
    (POOLS / "power.json").write_text(json.dumps({"budgets": BUDGETS, "table": table,
                                                  "fpr_upper": hi, "args": vars(args)},
                                                 indent=1))
    if not math.isfinite(hi):
        raise SystemExit(1)


if __name__ == "__main__":
    main()
