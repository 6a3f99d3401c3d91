"""The I/O seam: record, replay and retry at the httpx transport.

Business code makes plain httpx calls; whether an answer comes from the network, from a
fixture, or after three retries is decided here, in transports stacked around the real one
(:func:`build_client`):

    RecordReplayTransport(mode, store)         replay.py   (keys.py, store.py)
      -> RetryTransport(policy, feedback)      retry.py    (ledger.py: each attempt on disk)
        -> ShardedTransport                    pool.py     (httpx.AsyncHTTPTransport shards)

The transport knows no provider: it sees requests and answers only. What it counts
(stats.py) it counts from what it is told (the adapter's usage reader). ``jsonl.py`` holds the
crash-safe JSON-lines appends the fixture store and the run directory share.
"""

from .client import build_client
from .jsonl import SYNC, BackgroundSync, heal_torn_tail
from .keys import canonical_body, key_digest, relative_path, request_key
from .ledger import AttemptLedger, LedgerTotals, body_digest, ledger_totals, read_ledger
from .pool import ShardedTransport
from .replay import MODES, RecordReplayTransport
from .retry import (
    JSON_EXTENSION,
    MAX_BODY_BYTES,
    LoadFeedback,
    OversizedBody,
    RetryableStatus,
    RetryHints,
    RetryPolicy,
    RetryTransport,
    TruncatedBody,
    retry_after_seconds,
)
from .stats import TransportStats, UsageReader
from .store import Exchange, FixtureStore

__all__ = [
    "JSON_EXTENSION", "MAX_BODY_BYTES", "MODES", "SYNC", "AttemptLedger", "BackgroundSync",
    "Exchange", "FixtureStore", "LedgerTotals", "LoadFeedback", "OversizedBody",
    "RecordReplayTransport", "RetryHints", "RetryPolicy", "RetryTransport", "RetryableStatus",
    "ShardedTransport", "TransportStats", "TruncatedBody", "UsageReader", "body_digest",
    "build_client", "canonical_body", "heal_torn_tail", "key_digest", "ledger_totals",
    "read_ledger", "relative_path", "request_key", "retry_after_seconds",
]
