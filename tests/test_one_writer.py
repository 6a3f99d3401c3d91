"""One writer per run directory (issue 15): two audits started together into one --out used
to both exit 0, the server paid twice and every row written twice. Now the second refuses at
once, naming the first's pid; readers need no lock; a dead writer's lock is taken over."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from stub_server import FILLER, Seen, StubServer, completion, json_answer, legacy_choice, models

from blackbox_audit.errors import ConfigError
from blackbox_audit.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent


def slow(req: Seen):
    if req.method == "GET":
        return models()
    if req.body["max_tokens"] > 2:
        time.sleep(0.3)
    return json_answer(completion(legacy_choice(FILLER[: min(9, req.body["max_tokens"])])))


def cli(server: StubServer, out: Path) -> list[str]:
    return [sys.executable, str(ROOT / "cli.py"), "audit", "--base-url", server.base_url,
            "--model", "stub-model", "--corpora", "prose", "--per-corpus", "12", "--framings",
            "raw", "--max-tokens", "9", "--concurrency", "2", "--quiet", "--no-report",
            "--out", str(out)]


@pytest.mark.timeout(300)
def test_a_second_writer_refuses_at_once_and_nothing_is_paid_twice(tmp_path):
    out = tmp_path / "run"
    with StubServer(slow) as server:
        first = subprocess.Popen(cli(server, out), cwd=ROOT, stdout=subprocess.PIPE,
                                 stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 120
        while not server.generations() and time.monotonic() < deadline:
            time.sleep(0.1)       # the first writer is generating (it holds the lock)
        second = subprocess.run(cli(server, out), cwd=ROOT, capture_output=True, text=True,
                                timeout=120)
        _, err = first.communicate(timeout=240)
    assert first.returncode == 0, err
    assert second.returncode == 2
    assert f"pid {first.pid}" in second.stderr and "Traceback" not in second.stderr
    rows = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == len({(r["prefill_id"], r["framing"]) for r in rows}) == 12
    assert len(server.generations()) == 12          # each row paid for once


def test_readers_need_no_lock_and_a_dead_writers_lock_is_taken_over(tmp_path):
    run = RunDir(tmp_path / "run")
    # a writer that dies holding the lock (SIGKILL: no cleanup of its own)
    code = (f"import sys, time; sys.path.insert(0, {str(ROOT)!r})\n"
            "from blackbox_audit.rundir import RunDir\n"
            f"lock = RunDir({str(run.path)!r}).writer().__enter__()\n"
            "print('held', flush=True); time.sleep(60)")
    holder = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert holder.stdout.readline().strip() == "held"
    with pytest.raises(ConfigError, match=f"pid {holder.pid}"), run.writer():
        pass
    assert run.read_manifest().status is None and run.load_ranked() == []   # readers: fine
    os.kill(holder.pid, signal.SIGKILL)
    holder.wait(timeout=30)
    # the kernel dropped the dead writer's lock; and the same process may nest it
    with run.writer(), run.writer():
        pass
    assert (run.path / ".lock").read_text() == str(os.getpid())
