"""The I/O seam: record, replay and retry at the httpx transport.

Business code makes plain httpx calls; whether an answer comes from the network, from a
fixture, or after three retries is decided here, in transports stacked around the real one:

    RecordReplayTransport(mode, store) -> RetryTransport(policy) -> httpx.AsyncHTTPTransport

The request key is the method, the path relative to the base URL and the canonical JSON body
(sorted keys). Host, port and headers are not part of it, so fixtures recorded against one
port replay against another, and no credential can ever be part of a key.

Modes:
- ``off``: straight to the network, nothing written.
- ``record``: to the network, every exchange appended to the store.
- ``replay``: answers only from the store; a miss raises, naming the nearest recorded key.
- ``auto``: answers from the store when it has the key, else the network, recording it.
  This is the response cache and the resume: a paid answer that reached disk is never asked
  for again.
"""

from __future__ import annotations

import asyncio
import difflib
import gzip
import hashlib
import json
import os
import random
import threading
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

from .errors import FixtureError
from .redact import Redactor

MODES = ("off", "record", "replay", "auto")


def canonical_body(content: bytes) -> Any:
    """The request body as a JSON value (or text), independent of key order and spacing."""
    if not content:
        return None
    try:
        return json.loads(content)
    except ValueError:
        return content.decode("utf-8", errors="replace")


def request_key(method: str, path: str, body: Any) -> str:
    return json.dumps([method.upper(), path, body], sort_keys=True, ensure_ascii=False,
                      separators=(",", ":"))


def key_digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def relative_path(url: httpx.URL, base_path: str) -> str:
    """``url``'s path (and query) relative to the base URL's path."""
    path = url.path
    base = base_path.rstrip("/")
    if base and path.startswith(base):
        path = path[len(base):] or "/"
    if url.query:
        path += "?" + url.query.decode()
    return path


@dataclass
class Exchange:
    method: str
    path: str
    body: Any
    status: int
    response: Any            # parsed JSON, or text when the body was not JSON
    content_type: str = "application/json"

    @property
    def key(self) -> str:
        return request_key(self.method, self.path, self.body)


@dataclass
class TransportStats:
    sent: int = 0            # requests that reached the network (retries included)
    replayed: int = 0        # answered from the store
    retried: int = 0         # extra attempts after a retryable failure
    failed: int = 0          # gave up, or a non-2xx final answer
    by_status: Counter = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "replayed": self.replayed, "retried": self.retried,
                "failed": self.failed, "by_status": dict(self.by_status)}


class FixtureStore:
    """Recorded exchanges: one JSON object per line, optionally gzip-compressed.

    Reading tolerates a torn last line (a run killed mid-write). Writing appends and fsyncs
    each exchange before its answer is handed back, so a paid answer is on disk before any
    code can act on it. Only successful (2xx) exchanges are kept: an error is not an answer.
    """

    def __init__(self, path: str | Path, redactor: Redactor | None = None,
                 writable: bool = True):
        self.path = Path(path)
        self.redactor = redactor or Redactor()
        self.writable = writable
        self._by_digest: dict[str, dict[str, Any]] = {}
        self._lock = threading.Lock()
        self._fh = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        opener = gzip.open if self.path.suffix == ".gz" else open
        try:
            with opener(self.path, "rt", encoding="utf-8") as fh:
                lines = fh.read().split("\n")
        except (OSError, EOFError) as e:
            raise FixtureError(f"Cannot read fixture file {self.path}: {e}. It may be "
                               "truncated or not a fixture; record it again.") from e
        for n, line in enumerate(lines, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
                digest = key_digest(request_key(rec["method"], rec["path"], rec["body"]))
                rec["status"], rec["response"]  # noqa: B018 - presence check
            except (ValueError, KeyError, TypeError) as e:
                if n >= len(lines) - 1:  # torn tail from an interrupted write: ignore
                    continue
                raise FixtureError(
                    f"Fixture file {self.path} line {n} is not a recorded exchange ({e}). "
                    "Fixtures are JSON lines with method, path, body, status and response; "
                    "fix or delete that line, or record the fixture again.") from e
            self._by_digest[digest] = rec

    def __len__(self) -> int:
        return len(self._by_digest)

    def get(self, key: str) -> dict[str, Any] | None:
        return self._by_digest.get(key_digest(key))

    def keys(self) -> list[str]:
        return [request_key(r["method"], r["path"], r["body"]) for r in self._by_digest.values()]

    def nearest(self, key: str) -> str | None:
        """The recorded key most like ``key``, for a replay miss message."""
        best, best_ratio = None, -1.0
        for k in self.keys():
            m = difflib.SequenceMatcher(None, key, k, autojunk=False)
            if m.real_quick_ratio() <= best_ratio or m.quick_ratio() <= best_ratio:
                continue
            r = m.ratio()
            if r > best_ratio:
                best, best_ratio = k, r
        return best

    def add(self, ex: Exchange) -> None:
        if not self.writable:
            return
        rec = self.redactor.obj({"method": ex.method, "path": ex.path, "body": ex.body,
                                 "status": ex.status, "content_type": ex.content_type,
                                 "response": ex.response})
        line = json.dumps(rec, ensure_ascii=False, sort_keys=True) + "\n"
        with self._lock:
            if self._fh is None:
                if self.path.suffix == ".gz":
                    raise FixtureError(f"Cannot record into compressed fixture {self.path}; "
                                       "record to a .jsonl file and compress it afterwards.")
                self.path.parent.mkdir(parents=True, exist_ok=True)
                _heal_torn_tail(self.path)
                self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
            self._fh.write(line)
            self._fh.flush()
            os.fsync(self._fh.fileno())
            # Keyed by the redacted request so replay of a redacted fixture finds it too.
            self._by_digest[key_digest(request_key(rec["method"], rec["path"], rec["body"]))] = rec

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                self._fh.close()
                self._fh = None


def _heal_torn_tail(path: Path) -> None:
    """Cut a partial last line left by a killed writer, so appends start on a fresh line."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb+") as fh:
        data = fh.read()
        if data.endswith(b"\n"):
            return
        cut = data.rfind(b"\n") + 1
        fh.truncate(cut)


class RecordReplayTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport | None, mode: str,
                 store: FixtureStore | None, base_path: str = "",
                 stats: TransportStats | None = None):
        if mode not in MODES:
            raise ValueError(f"record mode must be one of {MODES}, not {mode!r}")
        if mode != "off" and store is None:
            raise ValueError(f"record mode {mode!r} needs a fixture store")
        if mode != "replay" and inner is None:
            raise ValueError(f"record mode {mode!r} needs a network transport")
        self.inner, self.mode, self.store = inner, mode, store
        self.base_path = base_path
        self.stats = stats or TransportStats()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = canonical_body(await request.aread())
        path = relative_path(request.url, self.base_path)
        key = request_key(request.method, path, body)
        if self.mode in ("replay", "auto"):
            assert self.store is not None
            rec = self.store.get(key) or self.store.get(
                request_key(request.method, path, self.store.redactor.obj(body)))
            if rec is not None:
                self.stats.replayed += 1
                return _response_from_record(rec, request)
            if self.mode == "replay":
                near = self.store.nearest(key)
                raise FixtureError(
                    f"Replay has no recorded answer for {request.method} {path} "
                    f"(fixture {self.store.path}, {len(self.store)} exchanges). "
                    + (f"Nearest recorded request: {near[:400]}" if near else
                       "The fixture is empty.")
                    + " Replay needs the same prefills, framings and generation settings as "
                    "the recording; rerun with the recording's flags or record again.")
        assert self.inner is not None
        response = await self.inner.handle_async_request(request)
        content = await response.aread()
        if self.mode in ("record", "auto") and 200 <= response.status_code < 300:
            assert self.store is not None
            ctype = response.headers.get("content-type", "application/json")
            try:
                payload: Any = json.loads(content)
                ctype = "application/json"
            except ValueError:
                payload = content.decode("utf-8", errors="replace")
            self.store.add(Exchange(request.method, path, body, response.status_code,
                                    payload, ctype))
        return httpx.Response(response.status_code, headers=response.headers, content=content,
                              request=request, extensions=response.extensions)

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()
        if self.store is not None:
            self.store.close()


def _response_from_record(rec: dict[str, Any], request: httpx.Request) -> httpx.Response:
    payload = rec["response"]
    if isinstance(payload, str) and rec.get("content_type") != "application/json":
        content = payload.encode()
    else:
        content = json.dumps(payload).encode()
    return httpx.Response(rec["status"], content=content, request=request,
                          headers={"content-type": rec.get("content_type", "application/json"),
                                   "x-blackbox-audit-replayed": "1"})


@dataclass
class RetryPolicy:
    """Bounded retries with jittered exponential backoff.

    Retried: connection errors, timeouts, 408, 409, 425, 429 and 5xx. Never retried: other
    4xx (a wrong URL, key or model fails fast). ``Retry-After`` and ``retry-after-ms`` are
    honoured up to ``max_wait``. The worst case wall time of one request is bounded by
    ``attempts * (timeout + max_wait)``.
    """

    attempts: int = 4
    base_delay: float = 0.5
    max_wait: float = 30.0
    retry_statuses: frozenset[int] = frozenset({408, 409, 425, 429, 500, 502, 503, 504})

    def delay(self, attempt: int, response: httpx.Response | None) -> float:
        if response is not None:
            ms = response.headers.get("retry-after-ms")
            sec = response.headers.get("retry-after")
            try:
                if ms is not None:
                    return min(float(ms) / 1000.0, self.max_wait)
                if sec is not None:
                    return min(float(sec), self.max_wait)
            except ValueError:
                pass
        backoff = self.base_delay * (2 ** attempt)
        return min(backoff * (0.5 + random.random()), self.max_wait)


class RetryTransport(httpx.AsyncBaseTransport):
    def __init__(self, inner: httpx.AsyncBaseTransport, policy: RetryPolicy | None = None,
                 stats: TransportStats | None = None):
        self.inner = inner
        self.policy = policy or RetryPolicy()
        self.stats = stats or TransportStats()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        last_exc: Exception | None = None
        for attempt in range(self.policy.attempts):
            if attempt:
                self.stats.retried += 1
            self.stats.sent += 1
            response = None
            try:
                fresh = httpx.Request(request.method, request.url, headers=request.headers,
                                      content=content, extensions=request.extensions)
                response = await self.inner.handle_async_request(fresh)
                await response.aread()
            except httpx.TransportError as e:
                last_exc = e
                self.stats.by_status[type(e).__name__] += 1
            else:
                self.stats.by_status[str(response.status_code)] += 1
                if (response.status_code not in self.policy.retry_statuses
                        or attempt == self.policy.attempts - 1):
                    if response.status_code >= 400:
                        self.stats.failed += 1
                    return response
            if attempt < self.policy.attempts - 1:
                await asyncio.sleep(self.policy.delay(attempt, response))
        self.stats.failed += 1
        assert last_exc is not None
        raise last_exc

    async def aclose(self) -> None:
        await self.inner.aclose()


def build_client(base_url: str, *, mode: str = "off", store: FixtureStore | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 120.0,
                 retry: RetryPolicy | None = None, stats: TransportStats | None = None,
                 network: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 64) -> httpx.AsyncClient:
    """The one httpx client of a run: record/replay over retries over the network."""
    stats = stats or TransportStats()
    inner: httpx.AsyncBaseTransport | None = None
    if mode != "replay":
        net = network or httpx.AsyncHTTPTransport(
            limits=httpx.Limits(max_connections=max_connections,
                                max_keepalive_connections=max_connections))
        inner = RetryTransport(net, retry, stats)
    base_path = httpx.URL(base_url).path
    transport = RecordReplayTransport(inner, mode, store, base_path, stats)
    return httpx.AsyncClient(base_url=base_url, transport=transport, headers=headers or {},
                             timeout=httpx.Timeout(timeout, connect=10.0))


