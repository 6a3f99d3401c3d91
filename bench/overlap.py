#!/usr/bin/env python3
"""``audit --overlap`` against running the stages in sequence, in one command.

A loopback server in its own process (bench/client.py's canned-answer server: every request
answered after a fixed latency) stands in for the target; each run below is the real CLI in
its own process, timed wall to wall (imports and the reference's load included, as a user
would see them):

1. generation alone: ``audit --generate-only``;
2. scoring alone: ``score RUN`` on that run;
3. a sequential audit (generation, then scoring);
4. an overlapped audit (``--overlap``).

The latency is chosen so that generation alone and scoring alone take about as long (within
20%), the case where overlap matters most: a first generation at ``--probe-latency``
measures the fixed costs, scoring alone is measured, and the latency that makes the two meet
is set, and measured again until the two meet (twice at most; ``--latency`` skips this).
Printed:

    overlap_ratio = wall_overlapped / max(wall_generation_alone, wall_scoring_alone)

(target <= 1.15) and the sequential ratio beside it (about 2 when the stages are equal).
Every run uses the same torch threads (``--threads``, default what ``--overlap`` defaults
to: the cores less one), so the comparison is of the overlap, not of the thread count.

    .venv/bin/python bench/overlap.py [--per-corpus 60] [--max-tokens 16] [--latency S]
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CLIENT = ROOT / "bench" / "client.py"   # its --serve mode: the canned-answer server


class Server:
    """bench/client.py's server in its own process, at a fixed latency."""

    def __init__(self, latency: float):
        self.latency = latency
        self.proc = subprocess.Popen([sys.executable, str(CLIENT), "--serve", "--latency",
                                      str(latency)], stdout=subprocess.PIPE, text=True)
        self.port = int(self.proc.stdout.readline())  # type: ignore[union-attr]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=10)


def timed(*args: str, threads: int) -> float:
    """Wall seconds of one CLI command in its own process; raises on a non-zero exit."""
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "TOKENIZERS_PARALLELISM": "false"}
    t0 = time.perf_counter()
    r = subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env,
                       capture_output=True, text=True)
    wall = time.perf_counter() - t0
    if r.returncode != 0:
        raise SystemExit(f"`{' '.join(args)}` failed ({r.returncode}):\n{r.stderr[-3000:]}")
    return wall


def audit_args(server: Server, out: Path, a: argparse.Namespace) -> list[str]:
    return ["audit", "--base-url", server.base_url, "--model", "bench-model", "--out",
            str(out), "--corpora", "prose,code", "--per-corpus", str(a.per_corpus),
            "--max-tokens", str(a.max_tokens), "--concurrency", str(a.concurrency),
            "--threads", str(a.threads), "--quiet", "--no-report"]


def rows_of(run: Path) -> int:
    return (run / "completions.jsonl").read_text().count("\n")


def main() -> int:
    cores = os.cpu_count() or 1
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--per-corpus", type=int, default=60,
                    help="prefills per corpus (2 corpora x 2 framings: 4 rows each)")
    ap.add_argument("--max-tokens", type=int, default=16)
    ap.add_argument("--concurrency", type=int, default=8)
    ap.add_argument("--threads", type=int, default=max(1, cores - 1),
                    help="torch threads for every run (default: the cores less one)")
    ap.add_argument("--latency", type=float, help="the server's latency (default: chosen)")
    ap.add_argument("--probe-latency", type=float, default=0.05)
    a = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        d = Path(tmp)
        latency = a.latency
        walls: dict[str, float] = {}
        if latency is None:
            server = Server(a.probe_latency)
            try:
                g0 = timed(*audit_args(server, d / "probe", a), "--generate-only",
                           threads=a.threads)
            finally:
                server.close()
            s0 = timed("score", str(d / "probe"), "--threads", str(a.threads), "--quiet",
                       threads=a.threads)
            waves = rows_of(d / "probe") / a.concurrency   # requests in turn per connection
            fixed = g0 - waves * a.probe_latency
            latency = max(0.0, (s0 - fixed) / waves)
            print(f"calibration: generation {g0:.1f}s at latency {a.probe_latency}s "
                  f"(fixed {fixed:.1f}s), scoring {s0:.1f}s -> latency {latency:.3f}s",
                  flush=True)
        waves = None
        for attempt in range(3):
            server = Server(latency)
            try:
                walls["generation"] = timed(*audit_args(server, d / f"gen{attempt}", a),
                                            "--generate-only", threads=a.threads)
            finally:
                server.close()
            walls["scoring"] = timed("score", str(d / f"gen{attempt}"), "--threads",
                                     str(a.threads), "--quiet", threads=a.threads)
            balance = walls["generation"] / walls["scoring"]
            if a.latency is not None or 0.8 <= balance <= 1.2 or attempt == 2:
                break
            # A busy machine moves scoring's wall between runs: meet it again, from the
            # generation just measured (fixed costs + waves x latency).
            waves = rows_of(d / f"gen{attempt}") / a.concurrency
            fixed = walls["generation"] - waves * latency
            latency = max(0.0, (walls["scoring"] - fixed) / waves)
            print(f"generation/scoring={balance:.2f}: latency -> {latency:.3f}s", flush=True)
        server = Server(latency)
        try:
            walls["sequential"] = timed(*audit_args(server, d / "seq", a), threads=a.threads)
            walls["overlapped"] = timed(*audit_args(server, d / "over", a), "--overlap",
                                        threads=a.threads)
        finally:
            server.close()
        m = json.loads((d / "over" / "manifest.json").read_text())
        overlap = {**m["scoring"]["overlap"], "generation_seconds": m["generation_seconds"],
                   "scoring_seconds": m["scoring"]["seconds"], "audit_seconds": m["seconds"]}
        rows = rows_of(d / "over")
    longer = max(walls["generation"], walls["scoring"])
    balance = walls["generation"] / walls["scoring"]
    print(f"rows={rows} latency={latency:.3f}s concurrency={a.concurrency} "
          f"threads={a.threads} cpus={cores}")
    print("walls: " + " ".join(f"{k}={v:.1f}s" for k, v in walls.items())
          + f" (generation/scoring={balance:.2f}"
          + ("" if 0.8 <= balance <= 1.2 else ", NOT within 20%: pass --latency") + ")")
    print(f"overlap: {json.dumps(overlap)}")
    print(f"overlap_ratio={walls['overlapped'] / longer:.3f} (target <= 1.15) "
          f"sequential_ratio={walls['sequential'] / longer:.3f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
