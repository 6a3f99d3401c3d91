"""Record / replay / retry at the httpx transport."""

from __future__ import annotations

import asyncio
import json
import re

import httpx
import pytest

from blackbox_audit.errors import FixtureError
from blackbox_audit.redact import Redactor
from blackbox_audit.transport import (
    FixtureStore,
    RetryPolicy,
    TransportStats,
    build_client,
    request_key,
)


class Network:
    """Counts what reaches 'the network' and answers with a JSON echo."""

    def __init__(self, statuses=None, headers=None):
        self.calls: list[httpx.Request] = []
        self.statuses = list(statuses or [])
        self.headers = headers or {}

    def __call__(self, request: httpx.Request) -> httpx.Response:
        self.calls.append(request)
        status = self.statuses.pop(0) if self.statuses else 200
        return httpx.Response(status, headers=self.headers,
                              json={"echo": json.loads(request.content or b"null"),
                                    "n": len(self.calls)})


def run(coro):
    return asyncio.run(coro)


async def post(client, path, body):
    r = await client.post(path, json=body)
    return r.status_code, r.json()


def test_record_then_replay_on_another_port_without_network(tmp_path):
    net = Network()
    store = FixtureStore(tmp_path / "ex.jsonl")
    client = build_client("http://127.0.0.1:1111/v1", mode="record", store=store,
                          network=httpx.MockTransport(net))
    recorded = run(post(client, "/completions", {"b": 1, "a": [1, 2]}))
    run(client.aclose())
    assert len(net.calls) == 1

    stats = TransportStats()
    replay = build_client("http://127.0.0.1:2222/v1", mode="replay",
                          store=FixtureStore(tmp_path / "ex.jsonl", writable=False), stats=stats)
    # Same body, other key order, other port, other headers: same answer, no network.
    r = run(replay.post("/completions", content=b'{"a":[1,2],  "b":1}',
                        headers={"x-other": "1", "content-type": "application/json"}))
    assert (r.status_code, r.json()) == recorded
    assert stats.replayed == 1 and stats.sent == 0


def test_replay_miss_names_nearest_key(tmp_path):
    store = FixtureStore(tmp_path / "ex.jsonl")
    client = build_client("http://h/v1", mode="record", store=store,
                          network=httpx.MockTransport(Network()))
    run(post(client, "/completions", {"prompt": "The cat sat", "max_tokens": 100}))
    run(post(client, "/completions", {"prompt": "Lorem ipsum dolor", "max_tokens": 100}))
    replay = build_client("http://h/v1", mode="replay",
                          store=FixtureStore(tmp_path / "ex.jsonl", writable=False))
    with pytest.raises(FixtureError) as e:
        run(post(replay, "/completions", {"prompt": "The cat sat", "max_tokens": 99}))
    assert "The cat sat" in e.value.message and "Lorem" not in e.value.message


def test_auto_mode_asks_network_only_for_unrecorded(tmp_path):
    net = Network()
    path = tmp_path / "ex.jsonl"
    c1 = build_client("http://h/v1", mode="auto", store=FixtureStore(path),
                      network=httpx.MockTransport(net))
    run(post(c1, "/x", {"i": 1}))
    run(c1.aclose())
    c2 = build_client("http://h/v1", mode="auto", store=FixtureStore(path),
                      network=httpx.MockTransport(net))
    first = run(post(c2, "/x", {"i": 1}))
    run(post(c2, "/x", {"i": 2}))
    assert first[1]["n"] == 1  # the recorded answer
    assert [json.loads(c.content)["i"] for c in net.calls] == [1, 2]


def test_errors_are_not_recorded(tmp_path):
    net = Network(statuses=[400])
    store = FixtureStore(tmp_path / "ex.jsonl")
    client = build_client("http://h/v1", mode="record", store=store,
                          network=httpx.MockTransport(net))
    status, _ = run(post(client, "/x", {"i": 1}))
    assert status == 400 and len(store) == 0


def test_torn_last_line_is_tolerated_and_healed(tmp_path):
    path = tmp_path / "ex.jsonl"
    client = build_client("http://h/v1", mode="record", store=FixtureStore(path),
                          network=httpx.MockTransport(Network()))
    run(post(client, "/x", {"i": 1}))
    run(client.aclose())
    with open(path, "a") as fh:
        fh.write('{"method": "POST", "path": "/x", "bo')  # killed mid-write
    store = FixtureStore(path)
    assert len(store) == 1
    client = build_client("http://h/v1", mode="record", store=store,
                          network=httpx.MockTransport(Network()))
    run(post(client, "/x", {"i": 2}))
    run(client.aclose())
    lines = path.read_text().splitlines()
    assert len(lines) == 2 and all(json.loads(line) for line in lines)


def test_malformed_fixture_is_a_clear_error(tmp_path):
    path = tmp_path / "ex.jsonl"
    path.write_text('not json\n{"method": "GET", "path": "/m", "body": null, '
                    '"status": 200, "response": {}}\n')
    with pytest.raises(FixtureError, match="line 1"):
        FixtureStore(path)


def test_gzip_fixture_replays(tmp_path):
    import gzip

    rec = {"method": "POST", "path": "/x", "body": {"i": 1}, "status": 200, "response": {"ok": 1}}
    with gzip.open(tmp_path / "ex.jsonl.gz", "wt") as fh:
        fh.write(json.dumps(rec) + "\n")
    client = build_client("http://h/v1", mode="replay",
                          store=FixtureStore(tmp_path / "ex.jsonl.gz", writable=False))
    assert run(post(client, "/x", {"i": 1})) == (200, {"ok": 1})


def test_credentials_never_reach_the_fixture(tmp_path):
    secret = "sk-test-0123456789abcdefSECRET"
    net = Network()

    def leaky(request):  # an endpoint that echoes the key back in its body
        net.calls.append(request)
        return httpx.Response(200, json={"auth": request.headers["authorization"]})

    path = tmp_path / "ex.jsonl"
    client = build_client("http://h/v1", mode="record",
                          store=FixtureStore(path, Redactor([secret])),
                          headers={"Authorization": f"Bearer {secret}"},
                          network=httpx.MockTransport(leaky))
    run(post(client, "/x", {"prompt": f"my key is {secret}"}))
    run(client.aclose())
    assert net.calls[0].headers["authorization"] == f"Bearer {secret}"  # it was sent...
    assert secret not in path.read_text()                              # ...never written
    assert "<redacted>" in path.read_text()


def test_key_shapes_are_redacted_even_when_the_run_was_not_told_them():
    r = Redactor()
    for key in ("sk-proj-AbCdEf0123456789xyz", "sk-ant-api03-AbCdEf012345", "hf_" + "a1" * 12,
                "Bearer abcdefghijkl.mnop"):
        assert r.text(f"a log line with {key} in it") == "a log line with <redacted> in it"
    plain = '{"tokens": [" the", " sky"], "note": "ask- her; bearer of news"}'
    assert r.text(plain) == plain   # no key shape: unchanged (and the regex is skipped)


def test_request_key_ignores_host_and_orders_keys():
    assert request_key("post", "/x", {"b": 1, "a": 2}) == request_key("POST", "/x",
                                                                      {"a": 2, "b": 1})


def test_retry_honours_retry_after_and_gives_up_fast_on_401(tmp_path):
    net = Network(statuses=[429, 503, 200], headers={"retry-after-ms": "10"})
    stats = TransportStats()
    client = build_client("http://h/v1", mode="off", stats=stats,
                          network=httpx.MockTransport(net),
                          retry=RetryPolicy(attempts=4, base_delay=0.01))
    status, body = run(post(client, "/x", {"i": 1}))
    assert status == 200 and len(net.calls) == 3 and stats.retried == 2

    net401 = Network(statuses=[401, 200])
    client = build_client("http://h/v1", mode="off", network=httpx.MockTransport(net401),
                          retry=RetryPolicy(attempts=4, base_delay=0.01))
    status, _ = run(post(client, "/x", {"i": 1}))
    assert status == 401 and len(net401.calls) == 1


def test_retries_are_bounded():
    net = Network(statuses=[500] * 10)
    stats = TransportStats()
    client = build_client("http://h/v1", mode="off", stats=stats,
                          network=httpx.MockTransport(net),
                          retry=RetryPolicy(attempts=3, base_delay=0.001))
    status, _ = run(post(client, "/x", {}))
    assert status == 500 and len(net.calls) == 3 and stats.failed == 1


def test_sharded_pool_spreads_requests_and_gives_slots_back():
    from blackbox_audit.transport import ShardedTransport

    gate = asyncio.Event()
    seen: list[int] = []

    def shard(i):
        async def handler(request):
            seen.append(i)
            await gate.wait()
            return httpx.Response(200, json={"shard": i})
        return httpx.MockTransport(handler)

    made = iter(range(100))
    pool = ShardedTransport(6, per_shard=2, factory=lambda size: shard(next(made)))
    assert len(pool.shards) == 3

    async def scenario():
        client = httpx.AsyncClient(transport=pool, base_url="http://h")
        tasks = [asyncio.create_task(client.get("/x")) for _ in range(6)]
        while len(seen) < 6:
            await asyncio.sleep(0)
        assert pool.load == [2, 2, 2]           # least busy first: an even spread
        gate.set()
        answers = await asyncio.gather(*tasks)
        assert pool.load == [0, 0, 0]           # every body read: every slot back
        return sorted(r.json()["shard"] for r in answers)

    assert run(scenario()) == [0, 0, 1, 1, 2, 2]


def test_fixture_store_reads_records_back_by_offset(tmp_path):
    path = tmp_path / "ex.jsonl"
    store = FixtureStore(path)
    client = build_client("http://h/v1", mode="record", store=store,
                          network=httpx.MockTransport(Network()))
    for i in range(3):
        run(post(client, "/x", {"i": i}))
    # The live store answers from the file, not from memory: a byte changed on disk (same
    # length, same offsets) is what it reads back.
    text = path.read_text()
    edited = re.sub(r'("n":\s*)2\b', r"\g<1>7", text)
    assert edited != text and len(edited) == len(text)
    path.write_text(edited)
    answer = store.get(request_key("POST", "/x", {"i": 1}))["response"]
    assert answer["echo"] == {"i": 1} and answer["n"] == 7
    run(client.aclose())
    again = FixtureStore(path, writable=False)
    assert again.get(request_key("POST", "/x", {"i": 2}))["response"]["n"] == 3
    assert sorted(again.keys()) == sorted(request_key("POST", "/x", {"i": i}) for i in range(3))


def test_escaped_credential_in_a_raw_answer_is_still_redacted(tmp_path):
    """An answer that escapes ASCII characters could hide a key from a text search: it is
    searched as a value, and the caller gets the same cleaned answer the fixture holds (a
    live row and its replay are the same row)."""
    secret = "sk-test-0123456789abcdefSECRET"
    hidden = "".join(f"\\u{ord(ch):04x}" for ch in secret)

    def leaky(request):
        return httpx.Response(200, content=('{"auth": "' + hidden + '"}').encode(),
                              headers={"content-type": "application/json"})

    path = tmp_path / "ex.jsonl"
    client = build_client("http://h/v1", mode="record", store=FixtureStore(path,
                                                                         Redactor([secret])),
                          network=httpx.MockTransport(leaky))
    assert run(client.post("/x", json={})).json()["auth"] == "<redacted>"
    run(client.aclose())
    text = path.read_text()
    assert secret not in text and hidden not in text and "<redacted>" in text


def test_a_compressed_fixture_is_indexed_in_flat_memory_and_finds_compact_records(tmp_path):
    """A packed run's exchange log (gzip, compact records) replays without holding its
    records: loading 2,000 answers of ~10 KB (20 MB as text) peaks far below their size, and
    a chat record whose messages were packed as columns is found by the request as sent."""
    import gzip
    import tracemalloc

    from blackbox_audit.compact import MARK, compact

    def answer(i: int) -> dict:
        content = [{"token": f" w{j}", "logprob": -0.5, "bytes": list(f" w{j}".encode()),
                    "top_logprobs": [{"token": f" w{j}", "logprob": -0.5,
                                      "bytes": list(f" w{j}".encode())}]}
                   for j in range(60)]
        return {"id": f"a{i}", "choices": [{"message": {"content": "x" * 4000},
                                            "logprobs": {"content": content}}]}

    chat = {"model": "m", "messages": [{"role": "system", "content": "s"},
                                       {"role": "user", "content": "u"}]}
    records = [{"method": "POST", "path": "/chat/completions", "body": {**chat, "seed": i},
                "status": 200, "content_type": "application/json", "response": answer(i)}
               for i in range(2000)]
    packed = [compact(r) for r in records]
    assert "columns" in packed[0][MARK] and "v" in packed[0]["body"]["messages"]
    text = "".join(json.dumps(p) + "\n" for p in packed)
    path = tmp_path / "exchanges.jsonl.gz"
    path.write_bytes(gzip.compress(text.encode()))
    tracemalloc.start()
    store = FixtureStore(path, writable=False)
    held, peak = tracemalloc.get_traced_memory()
    tracemalloc.stop()
    assert len(store) == 2000
    # measured: peak 4.3 MB whatever the size (the copy's buffers), held 0.3 KB a record
    # (the index); reading the file whole, as the store once did, peaks above the text's size
    assert peak < len(text) / 3 and held < 1_000_000, (peak, held, len(text))
    assert store.get(request_key("POST", "/chat/completions", {**chat, "seed": 1234})) \
        == records[1234]
    store.close()
