"""``audit --overlap``: rows scored while generation runs, against a loopback fake server.

The observable that rows were scored during generation is the manifest's
``scoring.overlap.scored_while_generating``: the rows the overlap thread had scored when
generation handed over (counted on the thread, before the closing pass). The server is slow
enough (``delay``) that generation outlasts the reference's load by seconds.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_server import FakeOpenAIServer

from blackbox_audit import audit, plan

ROOT = Path(__file__).resolve().parent.parent


def config(server, out, **kw):
    base = dict(out=str(out), base_url=server.base_url, model="fake-model",
                corpora=["prose", "code"], per_corpus=24, max_tokens=12, quiet=True,
                concurrency=2, torch_threads=1)
    base.update(kw)
    return plan(**base)


def score_lines(run: Path) -> list[dict]:
    [path] = run.glob("scores.*.jsonl")
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_overlap_scores_during_generation_each_row_once_same_ranking(tmp_path):
    with FakeOpenAIServer(delay=0.08) as server:
        over = audit(config(server, tmp_path / "over", overlap=True))
        seq = audit(config(server, tmp_path / "seq"))
    m = over.manifest.to_json()
    o = m["scoring"]["overlap"]
    assert o["scored_while_generating"] > 0, o
    assert m["config"]["overlap"] is True
    rows = [json.loads(x) for x in (tmp_path / "over" / "completions.jsonl").read_text()
            .splitlines()]
    usable = {f"{r['prefill_id']}:{r['framing']}" for r in rows
              if r["error"] is None and not r["degraded"]}
    assert len(rows) == 96 and len(usable) == 96
    keys = [f"{s['prefill_id']}:{s['framing']}" for s in score_lines(tmp_path / "over")]
    assert len(keys) == len(set(keys)) and set(keys) == usable     # each row scored once
    assert m["scoring"]["scored_now"] == 96 and "self" in m["scoring"]["noise_floor"]
    assert m["counts"] == seq.manifest.to_json()["counts"]
    # The same ranking as the sequential run; the numbers to batching's float noise.
    assert [r.row_id for r in over.ranked] == [r.row_id for r in seq.ranked]
    for a, b in zip(over.ranked, seq.ranked, strict=True):
        assert a.nll_ref == pytest.approx(b.nll_ref, abs=1e-3)


def cli(*args: str) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_kill_9_while_overlapping_then_resume_loses_and_repeats_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["audit", "--model", "fake-model", "--out", str(out), "--corpora", "prose,code",
            "--per-corpus", "24", "--max-tokens", "12", "--concurrency", "2", "--quiet",
            "--overlap", "--alignment", "text", "--threads", "1", "--no-report"]
    with FakeOpenAIServer(delay=0.08) as server:
        args += ["--base-url", server.base_url]
        proc = cli(*args)
        scores = out / "scores.smollm2.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None:
            if scores.exists() and scores.read_text().count("\n") >= 1:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        completions = out / "completions.jsonl"
        rows_before = completions.read_text().count("\n")
        scored_before = scores.read_text().count("\n")
        assert 1 <= scored_before and rows_before < 96, (scored_before, rows_before)
        counts_before = dict(server.counts)

        proc = cli(*args)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    sent_again = {k: n - counts_before.get(k, 0) for k, n in server.counts.items()
                  if n > counts_before.get(k, 0)}
    assert all(n == 1 for n in sent_again.values())
    rows = [json.loads(x) for x in completions.read_text().splitlines()]
    keys = [(r["prefill_id"], r["framing"]) for r in rows]
    assert len(keys) == len(set(keys)) == 96
    scored = [f"{s['prefill_id']}:{s['framing']}" for s in score_lines(out)]
    assert len(scored) == len(set(scored)) == 96          # none lost, none written twice
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["ranked"] == 96
    assert manifest["scoring"]["scored_before"] == scored_before
