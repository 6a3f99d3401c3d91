"""``audit --overlap``: rows scored while generation runs, against a loopback fake server.

The observable that rows were scored during generation is the manifest's
``scoring.overlap.scored_while_generating``: the rows the overlap thread had scored when
generation handed over. To make it deterministic rather than a race between the server's
pace and the reference's load, the server (:class:`HoldsForScores`) holds back its answers
after the first ``hold_after`` rows until the run's scores file has a row: generation
cannot end before scoring has begun, which only overlap achieves (in sequence the run would
wait the hold's timeout out; the plain run here uses a plain server).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from fake_server import FakeOpenAIServer

from blackbox_audit import audit, plan

ROOT = Path(__file__).resolve().parent.parent
ROWS = 68    # 17 prefills x 2 corpora x 2 framings: above one chunk (64), which decides "auto"


class HoldsForScores(FakeOpenAIServer):
    """Answers the first ``hold_after`` generation requests at once; later ones wait until
    ``run``'s scores file holds ``scores`` rows (default 1), then ``after`` seconds more."""

    def __init__(self, run: Path, hold_after: int, after: float = 0.0, scores: int = 1, **kw):
        super().__init__(**kw)
        self.run, self.hold_after, self.after = run, hold_after, after
        self.wanted = scores
        self.answered = 0
        self.held = 0
        self._count = threading.Lock()

    def scored(self) -> bool:
        return any(p.read_bytes().count(b"\n") >= self.wanted
                   for p in self.run.glob("scores.*.jsonl"))

    def completion(self, body: dict) -> dict:
        if body.get("max_tokens") != 2:          # the preflight's probe is never held
            with self._count:
                self.answered += 1
                hold = self.answered > self.hold_after
            if hold and not self.scored():
                self.held += 1
                deadline = time.monotonic() + 120
                while not self.scored() and time.monotonic() < deadline:
                    time.sleep(0.01)
                time.sleep(self.after)
        return super().completion(body)


def config(server, out, **kw):
    base = dict(out=str(out), base_url=server.base_url, model="fake-model",
                corpora=["prose", "code"], per_corpus=17, max_tokens=12, quiet=True,
                concurrency=2, torch_threads=1)
    base.update(kw)
    return plan(**base)


def score_lines(run: Path) -> list[dict]:
    [path] = run.glob("scores.*.jsonl")
    return [json.loads(x) for x in path.read_text().splitlines()]


def test_overlap_scores_during_generation_each_row_once_same_ranking(tmp_path):
    # The last two answers wait until every earlier row is scored, then a second more: the
    # thread has caught up with generation, and scores noise floor rows alone meanwhile
    # (a race between the scorer and the server's pace otherwise, lost on a busy machine).
    with HoldsForScores(tmp_path / "over", hold_after=ROWS - 2, after=1.0,
                        scores=ROWS - 2) as server:
        over = audit(config(server, tmp_path / "over", overlap=True))
    assert server.held >= 1            # generation waited on the scorer: it was running
    with FakeOpenAIServer() as server:
        seq = audit(config(server, tmp_path / "seq"))
    m = over.manifest.to_json()
    o = m["scoring"]["overlap"]
    assert o["scored_while_generating"] >= 1, o
    assert m["config"]["overlap"] is True
    rows = [json.loads(x) for x in (tmp_path / "over" / "completions.jsonl").read_text()
            .splitlines()]
    usable = {f"{r['prefill_id']}:{r['framing']}" for r in rows
              if r["error"] is None and not r["degraded"]}
    assert len(rows) == len(usable) == ROWS
    keys = [f"{s['prefill_id']}:{s['framing']}" for s in score_lines(tmp_path / "over")]
    assert len(keys) == len(set(keys)) and set(keys) == usable     # each row scored once
    assert m["scoring"]["scored_now"] == ROWS and "self" in m["scoring"]["noise_floor"]
    assert o["floor_rows_scored_alone_while_generating"] >= 1, o
    # The floor's sample does not depend on when rows arrived: the same rows as in sequence.
    assert m["scoring"]["noise_floor"]["self"]["n"] == \
        seq.manifest.to_json()["scoring"]["noise_floor"]["self"]["n"] == 32
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
            "--per-corpus", "17", "--max-tokens", "12", "--concurrency", "2", "--quiet",
            "--overlap", "--threads", "1", "--no-report"]
    # The last rows wait for the first score, then 3 s more: the kill lands while the
    # scorer has appended rows and generation has not finished.
    with HoldsForScores(out, hold_after=ROWS - 4, after=3.0) as server:
        args += ["--base-url", server.base_url]
        proc = cli(*args)
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline and proc.poll() is None and not server.scored():
            time.sleep(0.01)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        completions = out / "completions.jsonl"
        rows_before = completions.read_text().count("\n")
        scored_before = score_lines(out)
        assert scored_before and rows_before < ROWS, (len(scored_before), rows_before)
        counts_before = dict(server.counts)

        server.after = 0.0
        proc = cli(*args)
        _, stderr = proc.communicate(timeout=300)
        assert proc.returncode == 0, stderr
    sent_again = {k: n - counts_before.get(k, 0) for k, n in server.counts.items()
                  if n > counts_before.get(k, 0)}
    assert all(n == 1 for n in sent_again.values())
    rows = [json.loads(x) for x in completions.read_text().splitlines()]
    keys = [(r["prefill_id"], r["framing"]) for r in rows]
    assert len(keys) == len(set(keys)) == ROWS
    scored = [f"{s['prefill_id']}:{s['framing']}" for s in score_lines(out)]
    assert len(scored) == len(set(scored)) == ROWS          # none lost, none written twice
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["ranked"] == ROWS
    assert manifest["scoring"]["scored_before"] == len(scored_before)
