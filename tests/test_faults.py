"""Load and faults: adaptive concurrency and bounded retries, against a faulty loopback peer.

The integration test drives the real generation loop (``audit.generate``: transport, retry
policy, adaptive limiter, provider, completions.jsonl) against tests/fake_server.py with
injected faults, and stops before reference scoring, which has nothing to do with faults and
would cost the suite seconds of model loading. The unit tests pin the pieces: Retry-After
parsing, the retry policy's bound, and the limiter's AIMD arithmetic (hermetic, no network).
"""

from __future__ import annotations

import asyncio
import email.utils
import json
import time

import httpx
import pytest
from fake_server import FakeOpenAIServer

from blackbox_audit import plan
from blackbox_audit.audit import send
from blackbox_audit.dispatch import AdaptiveLimiter, run_all, run_bound
from blackbox_audit.plan import PriceTable
from blackbox_audit.records import GenerationRequest, Prefill
from blackbox_audit.rundir import RunDir
from blackbox_audit.transport import (
    RetryPolicy,
    TransportStats,
    build_client,
    retry_after_seconds,
)
from providers.anthropic_api import AnthropicProvider
from providers.protocol import openai_usage

# prompt -> faults of its 1st, 2nd, ... attempt; then a normal answer.
PLAN: dict[str, list[str]] = {
    "Row 00 opens": [],
    "Row 01 opens": [],
    "Row 02 opens": [],
    "Row 03 opens": ["429"],
    "Row 04 opens": ["429ms", "429ms"],
    "Row 05 opens": ["429date"],
    "Row 06 opens": ["500"],
    "Row 07 opens": ["500", "503"],
    "Row 08 opens": ["503"],
    "Row 09 opens": ["503", "503", "503"],       # recovers on the last allowed attempt
    "Row 10 opens": ["timeout"],
    "Row 11 opens": ["timeout", "500"],
    "Row 12 opens": ["truncated"],
    "Row 13 opens": ["truncated", "truncated"],
    "Row 14 opens": ["cut"],
    "Row 15 opens": ["cut", "429ms"],
    "Row 16 opens": ["nologprobs"],              # an answer, degraded: marked, not retried
    "Row 17 opens": ["nologprobs"],
    "Row 18 opens": ["500"] * 10,                # never recovers: a failed row
    "Row 19 opens": ["timeout"] * 10,            # never answers in time: a failed row
    "Row 20 opens": ["truncated"] * 10,          # always broken: a failed row
    "Row 21 opens": ["503", "timeout", "429ms"],
    "Row 22 opens": [],
    "Row 23 opens": [],
}
POLICY = RetryPolicy(attempts=4, base_delay=0.05, max_backoff=0.4, max_wait=1.0,
                     attempt_timeout=0.5)


def requests() -> list[GenerationRequest]:
    return [GenerationRequest(Prefill.make("faults", p), "raw", 12, 5, prompt=p) for p in PLAN]


def expected_attempts(plan: list[str]) -> int:
    """Attempts the policy allows this prompt: its faults, then one good answer, at most
    ``POLICY.attempts``. A missing-logprobs answer is an answer (degraded), not a fault."""
    faults = [f for f in plan if f != "nologprobs"]
    return min(len(faults) + 1, POLICY.attempts)


@pytest.mark.integration
@pytest.mark.timeout(60)
def test_faulty_peer_loses_no_completion_and_stays_within_the_policys_bound(tmp_path):
    out = tmp_path / "run"
    todo = requests()
    stats = TransportStats()
    run = RunDir(out)
    with FakeOpenAIServer(faults=PLAN, stall=1.0) as server:
        p = plan(out=str(out), base_url=server.base_url, model="fake-model",
                 framings=["raw"], concurrency=8, quiet=True,
                 timeout=POLICY.attempt_timeout, retry=POLICY)  # a fast test policy
        t0 = time.monotonic()
        info = asyncio.run(send(p.endpoint, p.generation, todo, run, stats))
        wall = time.monotonic() - t0
    run.close()

    # Zero lost completions: one row per request, each usable, degraded or failed with why.
    rows = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    by_prompt = {r["prompt"]: r for r in rows}
    assert len(rows) == len(by_prompt) == len(PLAN)
    failed = {p: r["error"] for p, r in by_prompt.items() if r["error"]}
    degraded = {p: r["degraded"] for p, r in by_prompt.items() if r["degraded"]}
    usable = [p for p, r in by_prompt.items() if not r["error"] and not r["degraded"]]
    assert set(failed) == {"Row 18 opens", "Row 19 opens", "Row 20 opens"}
    assert failed["Row 18 opens"].startswith("HTTP 500")
    assert "timed out" in failed["Row 19 opens"]
    assert "not JSON" in failed["Row 20 opens"]
    assert degraded == {"Row 16 opens": ["no_logprobs"], "Row 17 opens": ["no_logprobs"]}
    assert len(usable) == len(PLAN) - 5
    assert all(len(by_prompt[p]["tokens"]) == 12 for p in usable)

    # Bounded retries: exactly the attempts the policy allows, never more.
    assert {p: server.attempts[p] for p in PLAN} == {p: expected_attempts(f)
                                                     for p, f in PLAN.items()}
    assert stats.retried == sum(expected_attempts(f) - 1 for f in PLAN.values()), \
        stats.to_json()
    assert stats.failed == 3

    # Wall time: every request within the policy's per-request bound (server-side span from
    # first to last attempt), the run within the bound for the lowest window it reached.
    bound = POLICY.request_bound()
    spans = {p: b - a for p, (a, b) in server.spans.items()}
    assert max(spans.values()) <= bound
    lowest = int(info["concurrency"]["lowest"])
    assert wall <= run_bound(len(PLAN), lowest, bound), (wall, info["concurrency"])
    assert info["concurrency"]["cuts"] >= 1 and info["concurrency"]["throttled"] >= 1

    # Paid answers were recorded as they came; broken bodies never were.
    recorded = [json.loads(x) for x in (out / "exchanges.jsonl").read_text().splitlines()]
    assert all(isinstance(r["response"], dict) for r in recorded)
    assert {r["body"]["prompt"] for r in recorded if r["body"] and r["body"]["max_tokens"] > 2} \
        == set(PLAN) - {"Row 18 opens", "Row 19 opens", "Row 20 opens"}
    print(f"\nfaults: {len(PLAN)} rows, {len(usable)} usable, {len(degraded)} degraded, "
          f"{len(failed)} failed; {stats.sent} attempts, {stats.retried} retries; "
          f"wall {wall:.2f}s, per-request bound {bound:.2f}s (longest {max(spans.values()):.2f}s), "
          f"run bound {run_bound(len(PLAN), lowest, bound):.1f}s; window {info['concurrency']}")


# -- hermetic unit tests -------------------------------------------------------------------
def test_retry_after_forms():
    h = httpx.Headers
    assert retry_after_seconds(h({"retry-after": "2"})) == 2.0
    # a wait in milliseconds, where the endpoint's adapter names its header (RetryHints)
    ms = {"retry-after-ms": "250", "retry-after": "9"}
    assert retry_after_seconds(h(ms), ms_header="retry-after-ms") == 0.25
    assert retry_after_seconds(h(ms)) == 9.0                    # no hint: HTTP's own header
    now = 1_700_000_000.0
    date = email.utils.formatdate(now + 30, usegmt=True)
    assert retry_after_seconds(h({"retry-after": date}), now=now) == pytest.approx(30, abs=1)
    assert retry_after_seconds(h({"retry-after": email.utils.formatdate(now - 5, usegmt=True)}),
                               now=now) == 0.0
    assert retry_after_seconds(h({"retry-after": "soon"})) is None
    assert retry_after_seconds(h({})) is None


def test_policy_bound_and_server_wait_cap():
    p = RetryPolicy(attempts=3, base_delay=1.0, max_backoff=8.0, max_wait=5.0,
                    attempt_timeout=10.0)
    assert p.request_bound() == 3 * 10.0 + 5.0 + 5.0
    assert RetryPolicy(attempts=1, attempt_timeout=7).request_bound() == 7
    with pytest.raises(ValueError):
        RetryPolicy(attempts=0)


def run(coro):
    return asyncio.run(coro)


def test_retry_after_is_honoured_and_capped():
    calls: list[float] = []

    def peer(request: httpx.Request) -> httpx.Response:
        calls.append(time.monotonic())
        if len(calls) == 1:
            return httpx.Response(429, headers={"retry-after": "0.3"}, json={})
        if len(calls) == 2:
            return httpx.Response(429, headers={"retry-after": "3600"}, json={})  # capped
        return httpx.Response(200, json={"ok": 1, "usage": {"prompt_tokens": 3,
                                                            "completion_tokens": 5}})

    stats = TransportStats()
    client = build_client("http://h/v1", network=httpx.MockTransport(peer), stats=stats,
                          retry=RetryPolicy(attempts=3, max_wait=0.2, attempt_timeout=5),
                          usage=openai_usage)   # the adapter reads usage; the transport counts
    r = run(client.post("/x", json={}))
    assert r.status_code == 200 and stats.retried == 2
    assert calls[1] - calls[0] >= 0.2 - 0.01       # asked 0.3, capped at max_wait 0.2
    assert calls[2] - calls[1] == pytest.approx(0.2, abs=0.1)
    assert (stats.prompt_tokens, stats.completion_tokens) == (3, 5)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_client_errors_fail_fast(status):
    calls = []
    client = build_client("http://h/v1", network=httpx.MockTransport(
        lambda r: calls.append(r) or httpx.Response(status, json={"error": "no"})),
        retry=RetryPolicy(attempts=5, base_delay=0.01, attempt_timeout=5))
    assert run(client.post("/x", json={})).status_code == status
    assert len(calls) == 1


def test_unretryable_transport_error_is_not_retried():
    calls = []

    def peer(request):
        calls.append(request)
        raise httpx.UnsupportedProtocol("no such scheme", request=request)

    client = build_client("http://h/v1", network=httpx.MockTransport(peer),
                          retry=RetryPolicy(attempts=5, base_delay=0.01, attempt_timeout=5))
    with pytest.raises(httpx.UnsupportedProtocol):
        run(client.post("/x", json={}))
    assert len(calls) == 1


def test_attempt_deadline_cuts_a_slow_peer():
    """A peer that trickles (never idle long enough for a read timeout) is still cut off."""

    class Slow(httpx.AsyncBaseTransport):
        calls = 0

        async def handle_async_request(self, request):
            Slow.calls += 1
            await asyncio.sleep(5)
            return httpx.Response(200, json={})

    t0 = time.monotonic()
    client = build_client("http://h/v1", network=Slow(),
                          retry=RetryPolicy(attempts=2, base_delay=0.01, attempt_timeout=0.2))
    with pytest.raises(httpx.ReadTimeout, match="0.2"):
        run(client.post("/x", json={}))
    assert Slow.calls == 2 and time.monotonic() - t0 < 1.0


def test_limiter_aimd():
    clock = [0.0]
    lim = AdaptiveLimiter(cap=32, start=4, clock=lambda: clock[0])
    for _ in range(4):
        lim.succeeded(clock[0])          # slow start: +1 per answer
    assert lim.window == 8
    clock[0] = 1.0
    lim.throttled_by(started=0.5, retry_after=1.0)
    assert lim.window == 4 and lim.cuts == 1
    lim.throttled_by(started=0.9, retry_after=1.0)   # sent before the cut: no second cut
    assert lim.window == 4 and lim.cuts == 1
    for _ in range(4):
        lim.succeeded(clock[0])          # congestion avoidance: about +1 per window
    assert lim.window == 4 and 4.9 < lim.limit < 5.0
    lim.succeeded(clock[0])
    assert lim.window == 5
    clock[0] = 2.0
    for _ in range(10):
        lim.overloaded_by(started=clock[0])
        clock[0] += 0.1
    assert lim.window == 1 and lim.lowest_limit == 1  # never below the floor
    for _ in range(10_000):
        lim.succeeded(clock[0])
    assert lim.window == 32                            # never above the cap


def test_run_all_respects_the_window_and_stops_on_a_fatal_error():
    async def scenario():
        lim = AdaptiveLimiter(cap=8, start=3)
        live, peak, seen = [0], [0], []

        async def call(i: int) -> int:
            live[0] += 1
            peak[0] = max(peak[0], live[0])
            await asyncio.sleep(0.005)
            live[0] -= 1
            return i * 2

        await run_all(list(range(40)), call, lambda i, r: seen.append(r), lim)
        assert sorted(seen) == [i * 2 for i in range(40)]
        assert peak[0] <= 8 and lim.in_flight == 0

        lim = AdaptiveLimiter(cap=4, start=4)
        started = []

        async def fatal(i: int) -> int:
            started.append(i)
            if i == 2:
                raise RuntimeError("key refused")
            await asyncio.sleep(0.05)
            return i

        with pytest.raises(RuntimeError, match="key refused"):
            await run_all(list(range(100)), fatal, lambda i, r: None, lim)
        assert len(started) < 10 and lim.in_flight == 0

    run(scenario())


def test_accounting_prices_paid_tokens_and_sums_sessions(tmp_path):
    from blackbox_audit.accounting import Pricer, run_totals, session_requests

    stats = TransportStats(sent=5, retried=1, prompt_tokens=1_000_000,
                           completion_tokens=500_000, replayed_prompt_tokens=7)
    priced = Pricer("gpt-4o-mini", PriceTable.load(None))  # 0.15 / 0.60 USD per million
    s1 = session_requests(stats.to_json(), priced)
    assert s1["cost"]["usd"] == pytest.approx(0.15 + 0.30)
    s2 = session_requests(TransportStats(sent=2, failed=1, prompt_tokens=10).to_json(), priced)
    totals = run_totals([{"requests": s1}, {"requests": s2}], priced)
    assert totals["sent"] == 7 and totals["retried"] == 1 and totals["failed"] == 1
    assert totals["tokens"] == {"prompt": 1_000_010, "completion": 500_000}
    unpriced = session_requests(stats.to_json(), Pricer("my-local-llama", PriceTable.load(None)))
    assert unpriced["cost"]["usd"] is None and "--pricing" in unpriced["cost"]["note"]
    table = tmp_path / "prices.json"
    table.write_text('{"my-local-llama": {"input": 1.0, "output": 2.0}}')
    own = Pricer("my-local-llama", PriceTable.load(str(table)))
    assert own.cost(1_000_000, 1_000_000) == pytest.approx(3.0)


def test_overload_statuses_back_off_and_empty_answers_are_retried_not_recorded(tmp_path):
    from blackbox_audit.transport import FixtureStore

    answers = [httpx.Response(529, json={"type": "error", "error": {"type": "overloaded_error"}}),
               httpx.Response(504, text="gateway timeout"),
               httpx.Response(200, content=b"", headers={"content-type": "application/json"}),
               httpx.Response(200, json={"ok": True})]
    lim = AdaptiveLimiter(cap=16, start=8)
    store = FixtureStore(tmp_path / "ex.jsonl")
    client = build_client("http://h/v1", mode="record", store=store, feedback=lim,
                          network=httpx.MockTransport(lambda r: answers.pop(0)),
                          retry=RetryPolicy(attempts=4, base_delay=0.01, attempt_timeout=5)
                          .hinted(AnthropicProvider.retry_hints))   # 529: Anthropic's overload
    r = run(client.post("/x", json={"i": 1}))
    run(client.aclose())
    assert r.json() == {"ok": True} and not answers
    assert lim.overloaded == 2 and lim.cuts >= 1
    recorded = [json.loads(x) for x in (tmp_path / "ex.jsonl").read_text().splitlines()]
    assert [x["response"] for x in recorded] == [{"ok": True}]
