"""Chaos (issue 15): an audit killed with SIGKILL at 20 seeded moments, spread over generation
and scoring, resumed after each; at the end every row exists exactly once, no request whose
answer was on disk was sent again, and the attempt ledger's count of sent attempts matches
what the stub server received.

Why a ledger and not the manifest: a process killed with -9 writes nothing on its way out, so
the counts a session keeps in memory die with it. Each attempt is written down before it
leaves (transport.ledger); an attempt with no outcome line was in flight at a kill.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

import pytest
from stub_server import FILLER, Seen, StubServer, completion, json_answer, legacy_choice, models

from blackbox_audit.transport import body_digest, ledger_totals

ROOT = Path(__file__).resolve().parent.parent
ROWS = 36
KILLS = 20
SEED = 15


def answer(req: Seen):
    """Distinct continuations per prompt (so rows rank apart), after a short latency."""
    if req.method == "GET":
        return models()
    n = min(9, int(req.body["max_tokens"]))
    if n > 2:
        time.sleep(0.08)
    h = int(hashlib.sha256(str(req.body.get("prompt")).encode()).hexdigest(), 16)
    tokens = [FILLER[(h >> (4 * i)) % len(FILLER)] for i in range(n)]
    return json_answer(completion(legacy_choice(tokens)))


def command(server: StubServer, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "audit", "--base-url", server.base_url,
            "--model", "stub-model", "--corpora", "prose,code", "--per-corpus",
            str(ROWS // 2), "--framings", "raw", "--max-tokens", "9", "--concurrency", "4",
            "--quiet", "--no-report", "--out", str(out)]


def status(out: Path) -> str:
    try:
        return json.loads((out / "manifest.json").read_text()).get("status") or ""
    except (OSError, ValueError):
        return ""


@pytest.mark.timeout(1200)
def test_twenty_kills_over_generation_and_scoring_lose_nothing_and_repeat_no_paid_call(
        tmp_path):
    out = tmp_path / "run"
    rng = random.Random(SEED)
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    kills = {"generation": 0, "scoring": 0}
    t0 = time.monotonic()
    with StubServer(answer) as server:
        for i in range(KILLS):
            proc = subprocess.Popen(command(server, out), cwd=ROOT, env=env,
                                    stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
            before = len(server.generations())
            # A seeded moment: the first 12 kills after a few more answers (while generation
            # has rows left), the rest at a random instant once scoring has begun.
            more, delay = rng.randint(1, 4), rng.uniform(0.0, 3.0)
            stage, deadline = None, time.monotonic() + 180
            while proc.poll() is None and time.monotonic() < deadline:
                if i < 12 and len(server.generations()) >= before + more:
                    stage = "generation"
                    break
                if status(out) == "generated":
                    time.sleep(delay)
                    stage = "scoring"
                    break
                time.sleep(0.005)
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=30)
                if stage:
                    kills[stage] += 1
            else:
                assert proc.returncode == 0, proc.stderr.read().decode()[-2000:]
                if status(out) == "done":
                    break
        final = subprocess.run(command(server, out), cwd=ROOT, env=env, capture_output=True,
                               text=True, timeout=600)
        seen = list(server.seen)
    wall = time.monotonic() - t0
    assert final.returncode == 0, final.stderr[-2000:]
    assert "Traceback" not in final.stderr
    assert kills["generation"] >= 5 and kills["scoring"] >= 3, kills

    # Every row exactly once, every one answered, scored and ranked.
    rows = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    keys = Counter((r["prefill_id"], r["framing"]) for r in rows)
    assert len(keys) == ROWS and set(keys.values()) == {1}, "a row lost or written twice"
    assert all(r["error"] is None for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["status"] == "done" and manifest["counts"]["ranked"] == ROWS

    # What the ledger says against what the stub received.
    ledger = ledger_totals(out / "attempts.jsonl")
    received = len(seen)
    assert ledger.answered <= received <= ledger.sent
    # An attempt written down but killed before it left can only come from a kill.
    assert ledger.sent - received <= sum(kills.values())
    # No request whose answer was on disk was sent again: each repeat of a generation
    # request is explained by an earlier attempt of it that a kill cut off in flight.
    by_body = Counter(body_digest(s.raw) for s in server.generations())
    for digest, n in by_body.items():
        assert n - 1 <= ledger.unanswered_by_body[digest], (digest, n)
    assert manifest["accounting"]["sent"] == ledger.sent
    assert manifest["accounting"]["possibly_billed"] == ledger.possibly_billed
    print(f"\nchaos: {sum(kills.values())} kills ({kills}), {ROWS} rows, {received} requests "
          f"received by the stub, ledger: {ledger.sent} sent / {ledger.answered} answered / "
          f"{ledger.possibly_billed} possibly billed, {sum(by_body.values()) - len(by_body)} "
          f"generation requests sent again (each after a kill cut it off), {wall:.0f} s")


def test_the_ledger_survives_a_torn_line_and_counts_in_flight_attempts_as_possibly_billed(
        tmp_path):
    from blackbox_audit.transport import AttemptLedger

    path = tmp_path / "attempts.jsonl"
    a = AttemptLedger(path, session="a")
    n0, n1 = a.sent(b"x"), a.sent(b"y")
    a.sent(b"z")                                    # in flight when its process died
    a.ended(n0, "200", (5, 7))
    a.ended(n1, "timeout")
    a.close()
    b = AttemptLedger(path, session="b")
    b.ended(b.sent(b"w"), "ConnectError")
    b.close()
    with path.open("ab") as fh:
        fh.write(b'{"s":"c","n":0,"b":"')   # a kill mid-line
    t = ledger_totals(path)
    assert (t.sent, t.answered, t.sessions) == (4, 1, 2)
    # the timeout and the attempt in flight (z) may have been billed; a refused connect not
    assert t.possibly_billed == 2
    assert (t.prompt_tokens, t.completion_tokens) == (5, 7)
    assert t.unanswered_by_body[body_digest(b"z")] == 1


def test_concurrent_attempts_never_interleave_lines(tmp_path):
    from blackbox_audit.transport import AttemptLedger, read_ledger

    ledger = AttemptLedger(tmp_path / "attempts.jsonl", session="s")

    def work() -> None:
        for _ in range(500):
            ledger.ended(ledger.sent(b"body" * 50), "200", (1, 1))

    threads = [threading.Thread(target=work) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ledger.close()
    lines = list(read_ledger(tmp_path / "attempts.jsonl"))
    assert len(lines) == 4000
    assert sorted({line["n"] for line in lines}) == list(range(2000))
