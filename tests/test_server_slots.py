"""A server that states its capacity is never sent more than it computes at once (issue 15).

16 requests in flight against a 4-slot llama-server on a busy machine timed out and were
retried while the server kept computing the abandoned ones: the wait in the server's queue
counted against each attempt's timeout. llama.cpp states its slots in ``GET /props``; the run
keeps its window at or under them, so requests wait on our side, where no timeout runs.

The stub plays a 2-slot llama.cpp server: requests beyond two wait in its queue.
"""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
from stub_server import FILLER, Seen, StubServer, completion, json_answer, legacy_choice

import cli
from blackbox_audit.transport import ledger_totals

SLOTS = 2
LATENCY = 0.4


class TwoSlotServer:
    def __init__(self, props: bool):
        self.props = props
        self.slots = threading.Semaphore(SLOTS)
        self.lock = threading.Lock()
        self.waiting_or_running = 0
        self.most = 0

    def __call__(self, req: Seen):
        if req.method == "GET" and req.path.endswith("/models"):
            return json_answer({"object": "list", "data": [
                {"id": "stub-model", "object": "model", "owned_by": "llamacpp"}]})
        if req.method == "GET" and req.path == "/props":
            return json_answer({"total_slots": SLOTS}) if self.props \
                else json_answer({"error": "not found"}, status=404)
        with self.lock:
            self.waiting_or_running += 1
            self.most = max(self.most, self.waiting_or_running)
        try:
            with self.slots:                 # the server's queue, then one of its slots
                if int(req.body["max_tokens"]) > 2:
                    time.sleep(LATENCY)
                return json_answer(completion(legacy_choice(FILLER[:9])))
        finally:
            with self.lock:
                self.waiting_or_running -= 1


def audit_args(server: StubServer, out: Path) -> list[str]:
    # 8 in flight: the last of them would wait 3 x 0.4 s in a 2-slot queue, past 1 s.
    return ["audit", "--base-url", server.base_url, "--model", "stub-model", "--corpora",
            "prose", "--per-corpus", "12", "--framings", "raw", "--max-tokens", "9",
            "--concurrency", "8", "--start-concurrency", "8", "--timeout", "1",
            "--retries", "3", "--max-degraded-share", "1", "--quiet", "--no-report",
            "--out", str(out)]


@pytest.mark.timeout(300)
def test_the_window_stays_within_the_slots_a_llama_server_states(tmp_path):
    run = tmp_path / "run"
    with StubServer(TwoSlotServer(props=True)) as server:
        assert cli.main(audit_args(server, run)) == 0
    stub: TwoSlotServer = server.answer  # type: ignore[assignment]
    assert stub.most <= SLOTS                       # nothing ever waited in its queue
    ledger = ledger_totals(run / "attempts.jsonl")
    assert set(ledger.outcomes) == {"200"}          # no attempt timed out, none retried
    endpoint = json.loads((run / "manifest.json").read_text())["endpoint"]
    assert endpoint["server_slots"] == SLOTS
    assert endpoint["concurrency"]["cap"] == SLOTS


@pytest.mark.timeout(300)
def test_without_stated_slots_the_same_run_queues_at_the_server_and_times_out(tmp_path):
    """The contrast that shows what the cap buys: same server, no /props."""
    run = tmp_path / "run"
    with StubServer(TwoSlotServer(props=False)) as server:
        cli.main(audit_args(server, run))
    stub: TwoSlotServer = server.answer  # type: ignore[assignment]
    assert stub.most > SLOTS
    assert ledger_totals(run / "attempts.jsonl").outcomes["timeout"] >= 1
    assert "server_slots" not in json.loads((run / "manifest.json").read_text())["endpoint"]
