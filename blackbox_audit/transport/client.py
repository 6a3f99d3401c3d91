"""The one httpx client of a run: record/replay over retries over the connection pool.

A plain ``httpx.AsyncClient``: the stack is in its transport, so every httpx feature (base
URL, cookies, headers, timeouts) works as httpx documents it.
"""

from __future__ import annotations

from dataclasses import replace

import httpx

from .ledger import AttemptLedger
from .pool import ShardedTransport
from .replay import RecordReplayTransport
from .retry import LoadFeedback, RetryPolicy, RetryTransport
from .stats import TransportStats, UsageReader
from .store import FixtureStore


def build_client(base_url: str, *, mode: str = "off", store: FixtureStore | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 120.0,
                 retry: RetryPolicy | None = None, stats: TransportStats | None = None,
                 network: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 64,
                 feedback: LoadFeedback | None = None,
                 usage: UsageReader | None = None,
                 ledger: AttemptLedger | None = None) -> httpx.AsyncClient:
    """The one httpx client of a run: record/replay over retries over the network.

    ``timeout`` bounds each attempt in all (the retry policy's ``attempt_timeout`` unless it
    sets its own); ``feedback`` (a concurrency controller) hears how each attempt went;
    ``usage`` reads each answer's tokens for ``stats`` (the endpoint adapter's ``usage``);
    ``ledger`` writes down every network attempt before it is sent (ledger.py).
    """
    stats = stats or TransportStats()
    retry = retry or RetryPolicy()
    if retry.attempt_timeout is None:
        retry = replace(retry, attempt_timeout=timeout)
    inner: httpx.AsyncBaseTransport | None = None
    if mode != "replay":
        net = network or ShardedTransport(max_connections)
        inner = RetryTransport(net, retry, stats, feedback, ledger=ledger, usage=usage)
    base_path = httpx.URL(base_url).path
    transport = RecordReplayTransport(inner, mode, store, base_path, stats, usage)
    return httpx.AsyncClient(base_url=base_url, transport=transport, headers=headers or {},
                       timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)))
