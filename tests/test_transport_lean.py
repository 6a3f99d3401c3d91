"""The lean request path keeps the transport's behaviour: retries numbered as the policy says,
answers handed up as received (a gzip body too), httpx's own URL merging and cookie jar."""

from __future__ import annotations

import asyncio
import gzip
import json

import httpx

from blackbox_audit.transport import (
    FixtureStore,
    RetryPolicy,
    TransportStats,
    build_client,
)


def run(coro):
    return asyncio.run(coro)


class Chunks(httpx.AsyncByteStream):
    """A body that arrives in pieces, as it does from a socket (not read in advance)."""

    def __init__(self, data: bytes, size: int = 7):
        self.data, self.size = data, size

    async def __aiter__(self):
        for i in range(0, len(self.data), self.size):
            yield self.data[i: i + self.size]


class Recorder(RetryPolicy):
    """The policy, with every pause it was asked for noted (and no real waiting)."""

    def __init__(self, **kw):
        super().__init__(**kw)
        self.asked: list[tuple[str, int]] = []

    def pause(self, exc, attempt):
        self.asked.append((type(exc).__name__, attempt))
        return 0.0


def test_retries_are_numbered_from_the_first_attempt():
    statuses = [503, 429, 500]
    seen = []

    def handler(request):
        seen.append(request)
        status = statuses.pop(0) if statuses else 200
        return httpx.Response(status, json={"n": len(seen)})

    policy = Recorder(attempts=4, attempt_timeout=5)
    stats = TransportStats()
    client = build_client("http://h/v1", retry=policy, stats=stats,
                          network=httpx.MockTransport(handler))
    r = run(client.post("/completions", json={"a": 1}))
    assert r.status_code == 200 and r.json() == {"n": 4}
    assert policy.asked == [("RetryableStatus", 1), ("RetryableStatus", 2),
                            ("RetryableStatus", 3)]
    assert (stats.sent, stats.retried, stats.failed) == (4, 3, 0)


def test_the_last_retryable_answer_comes_back_when_attempts_run_out():
    policy = Recorder(attempts=2, attempt_timeout=5)
    stats = TransportStats()
    client = build_client("http://h/v1", retry=policy, stats=stats,
                          network=httpx.MockTransport(lambda r: httpx.Response(503, json={})))
    assert run(client.post("/x", json={})).status_code == 503
    # tenacity computes the wait before its stop check, so the last attempt is asked too
    assert policy.asked == [("RetryableStatus", 1), ("RetryableStatus", 2)]
    assert (stats.sent, stats.retried, stats.failed) == (2, 1, 1)

    once = Recorder(attempts=1, attempt_timeout=5)
    stats = TransportStats()
    client = build_client("http://h/v1", retry=once, stats=stats,
                          network=httpx.MockTransport(lambda r: httpx.Response(503, json={})))
    assert run(client.post("/x", json={})).status_code == 503
    assert once.asked == [] and (stats.sent, stats.retried, stats.failed) == (1, 0, 1)


def test_a_gzip_answer_is_decoded_once_recorded_and_replayed(tmp_path):
    answer = {"choices": [{"text": " hi"}], "usage": {"prompt_tokens": 2,
                                                       "completion_tokens": 1}}
    body = gzip.compress(json.dumps(answer).encode())

    def handler(request):
        return httpx.Response(200, stream=Chunks(body), headers={
            "content-encoding": "gzip", "content-type": "application/json"})

    path = tmp_path / "ex.jsonl"
    client = build_client("http://h/v1", mode="record", store=FixtureStore(path),
                          network=httpx.MockTransport(handler))
    r = run(client.post("/completions", json={"prompt": "x"}))
    assert r.json() == answer and r.headers["content-encoding"] == "gzip"
    run(client.aclose())
    assert json.loads(path.read_text())["response"] == answer
    replay = build_client("http://h/v1", mode="replay",
                          store=FixtureStore(path, writable=False))
    assert run(replay.post("/completions", json={"prompt": "x"})).json() == answer


def test_merged_urls_follow_a_new_base_url():
    seen = []
    client = build_client("http://a/v1", network=httpx.MockTransport(
        lambda r: seen.append(str(r.url)) or httpx.Response(200, json={})))
    run(client.post("/completions", json={}))
    run(client.post("/completions", json={}))
    client.base_url = "http://b/v2"
    run(client.post("/completions", json={}))
    run(client.get("http://c/abs"))
    assert seen == ["http://a/v1/completions"] * 2 + ["http://b/v2/completions", "http://c/abs"]


def test_background_sync_groups_fsyncs_within_its_window(tmp_path, monkeypatch):
    import os
    import time

    from blackbox_audit.transport import jsonl

    synced: list[float] = []
    real = os.fsync

    def counting(fd):
        synced.append(time.monotonic())
        real(fd)

    monkeypatch.setattr(jsonl.os, "fsync", counting)
    sync = jsonl.BackgroundSync(window=0.1)
    with open(tmp_path / "f.jsonl", "ab") as fh:
        t0 = time.monotonic()
        for i in range(40):           # ~40 lines over ~0.2 s
            fh.write(b'{"i": %d}\n' % i)
            fh.flush()
            last = time.monotonic()
            sync.mark(fh)
            time.sleep(0.005)
        while not synced or synced[-1] < last:   # an fsync begun after the last mark
            assert time.monotonic() - last < 2.0, "the last lines were never synced"
            time.sleep(0.01)
        # one fsync per 0.1 s window (~0.2 s of lines), not one per line
        assert 2 <= len(synced) <= (last - t0) / 0.1 + 2 < 20
        assert all(b - a >= 0.09 for a, b in zip(synced, synced[1:], strict=False))
        assert synced[0] - t0 < 0.08   # the first line is synced at once
        sync.close(fh)


def test_cookies_an_answer_sets_are_sent_back():
    sent = []

    def handler(request):
        sent.append(request.headers.get("cookie"))
        if len(sent) == 1:
            return httpx.Response(200, json={}, headers={"Set-Cookie": "lb=shard7; Path=/"})
        return httpx.Response(200, json={})

    client = build_client("http://h/v1", network=httpx.MockTransport(handler))
    for _ in range(3):
        run(client.post("/completions", json={}))
    assert sent == [None, "lb=shard7", "lb=shard7"]
    client.cookies = {"a": "1"}
    run(client.post("/completions", json={}))
    assert sent[-1] == "a=1"
