"""The I/O seam: record, replay and retry at the httpx transport.

Business code makes plain httpx calls; whether an answer comes from the network, from a
fixture, or after three retries is decided here, in transports stacked around the real one:

    RecordReplayTransport(mode, store) -> RetryTransport(policy, feedback)
        -> httpx.AsyncHTTPTransport

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
import contextlib
import datetime
import difflib
import email.utils
import gzip
import hashlib
import json
import os
import random
import sys
import threading
import time
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Protocol, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from . import fastjson
from .errors import FixtureError
from .redact import Redactor, might_hold_key

MODES = ("off", "record", "replay", "auto")
T = TypeVar("T")


def canonical_body(content: bytes) -> Any:
    """The request body as a JSON value (or text), independent of key order and spacing."""
    if not content:
        return None
    try:
        return fastjson.loads(content)
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
    raw: bytes | None = None  # the JSON body as received: recorded without re-encoding it

    @property
    def key(self) -> str:
        return request_key(self.method, self.path, self.body)


@dataclass
class TransportStats:
    """Per-run accounting of what was asked, answered and paid for (manifest "requests").

    Tokens come from each answer's ``usage`` (OpenAI's prompt/completion_tokens or
    Anthropic's input/output_tokens): ``tokens`` counts answers that came over the network
    this session (what was paid now), ``replayed_tokens`` answers served from fixtures (paid
    in an earlier session, free now). ``answers_without_usage`` says how far to trust them.
    """

    sent: int = 0            # attempts that reached the network (retries included)
    replayed: int = 0        # answered from the store
    retried: int = 0         # extra attempts after a retryable failure
    failed: int = 0          # gave up, or a non-2xx final answer
    by_status: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replayed_prompt_tokens: int = 0
    replayed_completion_tokens: int = 0
    answers_without_usage: int = 0

    def count_usage(self, payload: Any, replayed: bool) -> None:
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if not isinstance(usage, dict):
            self.answers_without_usage += 1
            return
        prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
        if replayed:
            self.replayed_prompt_tokens += prompt
            self.replayed_completion_tokens += completion
        else:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "replayed": self.replayed, "retried": self.retried,
                "failed": self.failed, "by_status": dict(self.by_status),
                "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
                "replayed_tokens": {"prompt": self.replayed_prompt_tokens,
                                    "completion": self.replayed_completion_tokens},
                "answers_without_usage": self.answers_without_usage}


def _int(x: Any) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) and x > 0 else 0


class FixtureStore:
    """Recorded exchanges: one JSON object per line, optionally gzip-compressed.

    Reading tolerates a torn last line (a run killed mid-write). Writing appends each
    exchange and hands it to the operating system (``write`` + ``flush``) before its answer
    is handed back, so a paid answer survives the process being killed at any moment;
    ``fsync`` runs on a background thread (:data:`SYNC`), batched, so a power cut loses at
    most the last ~10 milliseconds and the event loop never waits on the disk. Only
    successful (2xx) exchanges are kept: an error is not an answer.

    Memory stays flat with run size: a plain .jsonl file is indexed by byte offset and a
    record is read back only when replayed (a compressed fixture is small and held whole).
    """

    def __init__(self, path: str | Path, redactor: Redactor | None = None,
                 writable: bool = True):
        self.path = Path(path)
        self.redactor = redactor or Redactor()
        self.writable = writable
        # digest -> (request key, the record or its byte offset in the plain file)
        self._index: dict[str, tuple[str, dict[str, Any] | int]] = {}
        self._lock = threading.Lock()
        self._fh: Any = None
        self._reader: Any = None
        self._load()

    def _load(self) -> None:
        if not self.path.exists():
            return
        gz = self.path.suffix == ".gz"
        try:
            if gz:
                with gzip.open(self.path, "rb") as fh:
                    data = fh.read()
            else:
                data = self.path.read_bytes()
        except (OSError, EOFError) as e:
            raise FixtureError(f"Cannot read fixture file {self.path}: {e}. It may be "
                               "truncated or not a fixture; record it again.") from e
        lines = data.split(b"\n")
        offset = 0
        for n, line in enumerate(lines, 1):
            start, offset = offset, offset + len(line) + 1
            if not line.strip():
                continue
            try:
                rec = fastjson.loads(line)
                key = request_key(rec["method"], rec["path"], rec["body"])
                rec["status"], rec["response"]  # noqa: B018 - presence check
            except (ValueError, KeyError, TypeError) as e:
                if n >= len(lines) - 1:  # torn tail from an interrupted write: ignore
                    continue
                raise FixtureError(
                    f"Fixture file {self.path} line {n} is not a recorded exchange ({e}). "
                    "Fixtures are JSON lines with method, path, body, status and response; "
                    "fix or delete that line, or record the fixture again.") from e
            self._index[key_digest(key)] = (key, rec if gz else start)

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str) -> dict[str, Any] | None:
        hit = self._index.get(key_digest(key))
        if hit is None:
            return None
        rec = hit[1]
        if isinstance(rec, int):
            with self._lock:
                if self._fh is not None:
                    self._fh.flush()
                if self._reader is None:
                    self._reader = open(self.path, "rb")  # noqa: SIM115 - closed in close()
                self._reader.seek(rec)
                rec = fastjson.loads(self._reader.readline())
        return rec

    def keys(self) -> list[str]:
        return [k for k, _ in self._index.values()]

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

    def add(self, ex: Exchange, key: str | None = None) -> None:
        """Record ``ex``; ``key`` is its request key when the caller has it already. The
        answer comes cleaned as a value (RecordReplayTransport); here the serialised line
        passes the redactor's text search too (C-speed), the last net before the disk."""
        if not self.writable:
            return
        text = _exchange_line(ex)
        line = self.redactor.text(text)
        if line != text:  # something was redacted: key the record as it is stored
            try:
                rec = json.loads(line)
            except ValueError:  # a cut across JSON syntax: clean the value instead
                rec = json.loads(text)
                rec = {**rec, "path": self.redactor.text(rec["path"]),
                       "body": self.redactor.obj(rec["body"]),
                       "response": self.redactor.obj(rec["response"])}
            line = json.dumps(rec, ensure_ascii=False, sort_keys=True)
            ex = replace(ex, path=rec["path"], body=rec["body"])
            key = None
        rec_key = key if key is not None else request_key(ex.method, ex.path, ex.body)
        with self._lock:
            if self._fh is None:
                if self.path.suffix == ".gz":
                    raise FixtureError(f"Cannot record into compressed fixture {self.path}; "
                                       "record to a .jsonl file and compress it afterwards.")
                self.path.parent.mkdir(parents=True, exist_ok=True)
                heal_torn_tail(self.path)
                self._fh = open(self.path, "ab")  # noqa: SIM115 - closed in close()
            offset = self._fh.tell()
            self._fh.write(line.encode("utf-8") + b"\n")
            self._fh.flush()
            SYNC.mark(self._fh)
            # Keyed by the redacted request so replay of a redacted fixture finds it too.
            self._index[key_digest(rec_key)] = (rec_key, offset)

    def close(self) -> None:
        with self._lock:
            if self._fh is not None:
                SYNC.close(self._fh)
                self._fh = None
            if self._reader is not None:
                self._reader.close()
                self._reader = None


def _exchange_line(ex: Exchange) -> str:
    """One fixture line. A JSON answer is spliced in as the bytes that came over the wire
    (encoding 100 tokens of top logprobs again cost more than everything else we do per
    answer), unless they span lines, escape ASCII characters (which could hide a key shape
    from the redactor's text search) or hold a NaN or an infinity (not JSON: written as the
    strings "NaN" / "Infinity", which read back as the same numbers); then it is encoded
    from the parsed value."""
    head = {"method": ex.method, "path": ex.path, "body": ex.body, "status": ex.status,
            "content_type": ex.content_type}
    raw = ex.raw
    if raw is not None and b"\n" not in raw and b"\\u00" not in raw and b"NaN" not in raw \
            and b"Infinity" not in raw:
        try:
            body = raw.decode("utf-8").strip()
        except UnicodeDecodeError:
            body = ""
        if body[:1] in ("{", "["):
            return json.dumps(head, ensure_ascii=False, sort_keys=True)[:-1] + \
                ', "response": ' + body + "}"
    return json.dumps({**head, "response": fastjson.finite(ex.response, named=True)},
                      ensure_ascii=False, sort_keys=True, allow_nan=False)


class BackgroundSync:
    """fsync off the event loop, batched (group commit).

    Appends write and flush at once (the data is then the kernel's: a killed process loses
    nothing); a daemon thread fsyncs every file marked dirty, back to back, so each fsync
    covers every line written while the previous one ran. The thread releases the GIL in
    fsync; the event loop never waits on the disk. ``close`` fsyncs synchronously.

    ``window`` spaces the batches: after one, the thread waits until ``window`` seconds have
    passed since it began. Back to back, a run at 256 answers/s paid ~1.2 fsyncs per answer
    (0.07-0.11 ms of CPU each answer, bench/client.py); with SYNC's 10 ms, ~0.4 (0.03-0.04
    ms). A power cut then loses at most the lines of the last ~10 ms plus one fsync, against
    ~1-2 ms before; a killed process still loses nothing (every line is flushed at once).
    """

    def __init__(self, window: float = 0.0) -> None:
        self._dirty: set[Any] = set()
        self._cond = threading.Condition()
        self._thread: threading.Thread | None = None
        self.window = window

    def mark(self, fh: Any) -> None:
        with self._cond:
            self._dirty.add(fh)
            if self._thread is None or not self._thread.is_alive():
                self._thread = threading.Thread(target=self._run, name="blackbox-audit-fsync",
                                                daemon=True)
                self._thread.start()
            self._cond.notify()

    def close(self, fh: Any) -> None:
        with self._cond:
            self._dirty.discard(fh)
        fh.flush()
        os.fsync(fh.fileno())
        fh.close()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._dirty:
                    self._cond.wait()
                batch, self._dirty = self._dirty, set()
            started = time.monotonic()
            for fh in batch:
                # A file closed meanwhile was synced by close().
                with contextlib.suppress(OSError, ValueError):
                    os.fsync(fh.fileno())
            rest = self.window - (time.monotonic() - started)
            if rest > 0:
                time.sleep(rest)


SYNC = BackgroundSync(window=0.01)


def heal_torn_tail(path: Path) -> None:
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
        self.redactor = store.redactor if store is not None else Redactor()
        self.base_path = base_path
        self.stats = stats or TransportStats()

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        body = canonical_body(await request.aread())
        path = relative_path(request.url, self.base_path)
        key = request_key(request.method, path, body)
        if self.mode in ("replay", "auto"):
            assert self.store is not None
            rec = self.store.get(key)
            if rec is None:  # recorded with a credential redacted out of the request?
                redacted = self.store.redactor.obj(body)
                if redacted != body:
                    rec = self.store.get(request_key(request.method, path, redacted))
            if rec is not None:
                self.stats.replayed += 1
                if request.method != "GET":
                    self.stats.count_usage(rec["response"], replayed=True)
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
        if 200 <= response.status_code < 300:
            payload, ctype = _payload(response, content)
            if payload is not _BROKEN:
                clean = self._withheld(payload, content)
                if clean is not payload:
                    # What was cut is cut for everyone: the provider parses the same clean
                    # answer a replay of the record gives, so both make the same row.
                    response = _answer_with(response, clean, request)
                    payload, content = clean, None
                if request.method != "GET":  # listings and probes of state carry no usage
                    self.stats.count_usage(payload, replayed=False)
                if self.mode in ("record", "auto"):
                    assert self.store is not None
                    self.store.add(Exchange(request.method, path, body, response.status_code,
                                            payload, ctype,
                                            content if ctype == "application/json" else None),
                                   key)
        # Handed up as it is: read (its content is there to read again), closed, headers as
        # received. A copy built from the decoded content kept the Content-Encoding header,
        # so a gzip answer failed to decode twice (DecodingError).
        return response

    def _withheld(self, payload: Any, content: bytes) -> Any:
        """The answer as it may be kept: ``payload`` itself, or a copy with this run's secrets
        (in any encoding, split over tokens) and key-shaped strings cut out. The walk is paid
        only when the run holds a secret or the bytes could hold a key shape."""
        if self.redactor.knows_secrets or might_hold_key(content):
            return self.redactor.obj(payload)
        return payload

    async def aclose(self) -> None:
        if self.inner is not None:
            await self.inner.aclose()
        if self.store is not None:
            self.store.close()


_BROKEN = object()


def _answer_with(response: httpx.Response, payload: Any,
                 request: httpx.Request) -> httpx.Response:
    """``response`` with ``payload`` as its JSON body (the original encoding and length
    headers dropped: the new body is plain JSON)."""
    headers = [(k, v) for k, v in response.headers.multi_items()
               if k.lower() not in ("content-encoding", "content-length", "content-type")]
    clean = httpx.Response(response.status_code, headers=headers, json=payload,
                           request=request)
    clean.extensions[JSON_EXTENSION] = payload
    return clean


def _payload(response: httpx.Response, content: bytes) -> tuple[Any, str]:
    """A 2xx body as recorded: parsed JSON (reusing the retry layer's parse), else text. A
    body that claims to be JSON and does not parse (cut off) is _BROKEN: never recorded,
    so a resumed run asks for it again instead of replaying the damage."""
    ctype = response.headers.get("content-type", "application/json")
    if JSON_EXTENSION in response.extensions:
        return response.extensions[JSON_EXTENSION], "application/json"
    if not content and "json" in ctype:
        return _BROKEN, ctype
    try:
        return fastjson.loads(content), "application/json"
    except ValueError:
        if "json" in ctype:
            return _BROKEN, ctype
        return content.decode("utf-8", errors="replace"), ctype


def _response_from_record(rec: dict[str, Any], request: httpx.Request) -> httpx.Response:
    payload = rec["response"]
    if isinstance(payload, str) and rec.get("content_type") != "application/json":
        content = payload.encode()
    else:
        content = json.dumps(payload).encode()
    return httpx.Response(rec["status"], content=content, request=request,
                          headers={"content-type": rec.get("content_type", "application/json"),
                                   "x-blackbox-audit-replayed": "1"})


class LoadFeedback(Protocol):
    """What the retry transport tells a concurrency controller about each network attempt.

    ``started`` is the attempt's start on ``time.monotonic``: a controller can ignore news
    about requests sent before its last adjustment. The transport knows nothing more of the
    controller (dispatch.AdaptiveLimiter implements this).
    """

    def succeeded(self, started: float) -> None: ...

    def throttled_by(self, started: float, retry_after: float | None) -> None: ...

    def overloaded_by(self, started: float) -> None: ...


class RetryableStatus(Exception):
    """A retryable HTTP status; carries the response so the last one can be handed back."""

    def __init__(self, response: httpx.Response):
        super().__init__(f"HTTP {response.status_code}")
        self.response = response


class TruncatedBody(httpx.RemoteProtocolError):
    """A 2xx answer declared as JSON whose body does not parse: cut off on the way."""

    def __init__(self, message: str, *, request: httpx.Request, response: httpx.Response):
        super().__init__(message, request=request)
        self.response = response


class OversizedBody(httpx.TransportError):
    """An answer larger than any completion can be (:data:`MAX_BODY_BYTES`): read no further,
    not retried (asking again gets the same), and the row fails with this message."""


# 100 tokens with 20 top log-probabilities each, bytes and ids, is well under 1 MB; the cap
# only stops a broken or hostile server from filling memory.
MAX_BODY_BYTES = 64 * 1024 * 1024


class _Capped(httpx.AsyncByteStream):
    """A response body that stops with :class:`OversizedBody` past ``limit`` bytes."""

    def __init__(self, stream: httpx.AsyncByteStream, limit: int, request: httpx.Request):
        self.stream, self.limit, self.request = stream, limit, request

    async def __aiter__(self) -> AsyncIterator[bytes]:
        seen = 0
        async for chunk in self.stream:
            seen += len(chunk)
            if seen > self.limit:
                raise OversizedBody(f"the answer is larger than {self.limit // 2**20} MB; "
                                    "no completion is that long", request=self.request)
            yield chunk

    async def aclose(self) -> None:
        await self.stream.aclose()


def retry_after_seconds(headers: httpx.Headers, now: float | None = None) -> float | None:
    """The wait a server asked for: ``retry-after-ms`` (OpenAI, Anthropic), else
    ``Retry-After`` as seconds or as an HTTP date (RFC 9110). None when absent or unreadable;
    never negative."""
    ms = headers.get("retry-after-ms")
    if ms is not None:
        try:
            return max(0.0, float(ms) / 1000.0)
        except ValueError:
            pass
    value = headers.get("retry-after")
    if value is None:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError, IndexError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=datetime.timezone.utc)
    now = time.time() if now is None else now
    return max(0.0, when.timestamp() - now)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with jittered exponential backoff (tenacity), at the transport.

    Retried: connection errors, timeouts, bodies cut off mid-way (a protocol error, or a 2xx
    JSON body that does not parse or is empty), and the statuses in ``retry_statuses`` (429,
    5xx, Anthropic's 529 and the "try again" 4xx); ``overload_statuses`` and timeouts also
    tell the concurrency controller to back off. Never retried: any other 4xx, so a wrong
    URL (404), key (401) or permission (403) fails on the first answer. A server-requested
    wait (``Retry-After``, ``retry-after-ms``) is honoured up to ``max_wait``; otherwise
    attempt n (from 0) waits a uniformly random time in
    [0, min(max_backoff, base_delay * 2**n)] ("full jitter", so a crowd of clients does not
    retry in lockstep). Each attempt is cut off after ``attempt_timeout`` seconds in all
    (connect, send, every read), whatever the server's pace. Hence no request can take
    longer than :meth:`request_bound`.
    """

    attempts: int = 4                 # total tries per request (1 = no retries)
    base_delay: float = 0.5
    max_backoff: float = 30.0
    max_wait: float = 60.0            # cap on a server-requested wait
    attempt_timeout: float | None = None   # None: the client's --timeout (build_client)
    # 529: Anthropic's "overloaded_error".
    retry_statuses: frozenset[int] = frozenset({408, 409, 425, 429, 500, 502, 503, 504, 529})
    overload_statuses: frozenset[int] = frozenset({503, 504, 529})

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")

    def longest_wait(self, n: int) -> float:
        """The longest pause before retry n+1 (n from 0): the backoff's ceiling, or a
        server-requested wait, whichever the policy allows to be longer."""
        return max(min(self.max_backoff, self.base_delay * 2 ** n), self.max_wait)

    def request_bound(self, attempt_timeout: float | None = None) -> float:
        """Worst-case seconds one request can spend in the transport, retries included."""
        t = attempt_timeout if attempt_timeout is not None else self.attempt_timeout
        if t is None:
            raise ValueError("request_bound needs the per-attempt timeout")
        return self.attempts * t + sum(self.longest_wait(n) for n in range(self.attempts - 1))

    def wait(self, state: RetryCallState) -> float:
        """tenacity's wait: the server's word when it gave one, else full-jitter backoff."""
        exc = state.outcome.exception() if state.outcome is not None else None
        return self.pause(exc, state.attempt_number)

    def pause(self, exc: BaseException | None, attempt: int) -> float:
        """The wait after attempt number ``attempt`` (from 1) failed with ``exc``."""
        if isinstance(exc, RetryableStatus):
            asked = retry_after_seconds(exc.response.headers)
            if asked is not None:
                return min(asked, self.max_wait)
        n = attempt - 1
        return random.uniform(0.0, min(self.max_backoff, self.base_delay * 2 ** n))


# Transport errors worth another try; others (a malformed URL, an unsupported scheme, a
# proxy refusing us) will not get better by asking again.
_RETRYABLE_ERRORS = (httpx.TimeoutException, httpx.NetworkError, httpx.RemoteProtocolError,
                     RetryableStatus)
JSON_EXTENSION = "blackbox_audit.json"   # response.extensions key: the body, parsed once


def _is_json(response: httpx.Response) -> bool:
    return "json" in response.headers.get("content-type", "application/json")


class RetryTransport(httpx.AsyncBaseTransport):
    """Retries at the httpx seam (as httpx's own transport retries live there), so business
    code makes one call and gets one final answer: a 2xx, a non-retryable status, the last
    retryable status, or the last transport error once the policy gives up.

    A 2xx JSON body is parsed here, once: a body cut off on the way is retried like any other
    broken answer, and the parsed value rides on ``response.extensions[JSON_EXTENSION]`` so
    recording and the provider do not parse it again.

    The first attempt is made directly; tenacity takes over after a retryable failure, for
    the attempts left (numbered from 2, so waits and the stop are the policy's own). Nearly
    every request succeeds first time, and a tenacity loop per request cost ~10 µs and a
    dozen objects in reference cycles (garbage for the cyclic collector) on each.
    """

    def __init__(self, inner: httpx.AsyncBaseTransport, policy: RetryPolicy | None = None,
                 stats: TransportStats | None = None, feedback: LoadFeedback | None = None,
                 max_body_bytes: int = MAX_BODY_BYTES):
        self.inner = inner
        self.max_body_bytes = max_body_bytes
        self.policy = policy or RetryPolicy()
        if self.policy.attempt_timeout is None:
            self.policy = replace(self.policy, attempt_timeout=120.0)
        self.stats = stats or TransportStats()
        self.feedback = feedback
        # The retries after a failed first attempt: attempt_number 1 here is attempt 2.
        self._retrying = AsyncRetrying(
            stop=stop_after_attempt(self.policy.attempts - 1), wait=self._wait_retry,
            retry=retry_if_exception_type(_RETRYABLE_ERRORS), reraise=True,
            before_sleep=self._before_sleep)

    def _before_sleep(self, state: RetryCallState) -> None:
        self.stats.retried += 1

    def _wait_retry(self, state: RetryCallState) -> float:
        exc = state.outcome.exception() if state.outcome is not None else None
        return self.policy.pause(exc, state.attempt_number + 1)

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        content = await request.aread()
        try:
            try:
                return await self._attempt(request, content)
            except _RETRYABLE_ERRORS as e:
                if self.policy.attempts < 2:
                    raise
                self.stats.retried += 1
                await asyncio.sleep(self.policy.pause(e, 1))
            async for attempt in self._retrying.copy():
                with attempt:
                    return await self._attempt(request, content)
        except RetryableStatus as e:       # the last of the retryable statuses
            self.stats.failed += 1
            return e.response
        except TruncatedBody as e:         # hand the broken body up: the caller names it
            self.stats.failed += 1
            return e.response
        except httpx.TransportError:
            self.stats.failed += 1
            raise
        raise AssertionError("unreachable: tenacity either returned or raised")

    async def _attempt(self, request: httpx.Request, content: bytes) -> httpx.Response:
        started = time.monotonic()
        self.stats.sent += 1
        limit = self.policy.attempt_timeout
        try:
            response, body = await _within(self._send(request, content), limit)
        except (TimeoutError, asyncio.TimeoutError) as e:
            self.stats.by_status["AttemptTimeout"] += 1
            self._overloaded(started)
            raise httpx.ReadTimeout(f"no complete answer within {limit:g} s",
                                    request=request) from e
        except httpx.TransportError as e:
            self.stats.by_status[type(e).__name__] += 1
            if isinstance(e, httpx.TimeoutException):
                self._overloaded(started)
            raise
        status = response.status_code
        self.stats.by_status[str(status)] += 1
        if status in self.policy.retry_statuses:
            if self.feedback is not None:
                if status == 429:
                    self.feedback.throttled_by(started, retry_after_seconds(response.headers))
                elif status in self.policy.overload_statuses:
                    self.feedback.overloaded_by(started)
            raise RetryableStatus(response)
        if 200 <= status < 300 and status != 204 and _is_json(response):
            try:
                response.extensions[JSON_EXTENSION] = fastjson.loads(body)  # b"" fails too
            except ValueError:
                self.stats.by_status["TruncatedBody"] += 1
                raise TruncatedBody(f"HTTP {status} body is not complete JSON ({len(body)} "
                                    f"bytes, ends {body[-40:]!r})", request=request,
                                    response=response) from None
        if self.feedback is not None and status < 400:
            self.feedback.succeeded(started)
        return response

    async def _send(self, request: httpx.Request, content: bytes
                    ) -> tuple[httpx.Response, bytes]:
        # After aread() the request's body is an in-memory stream that can be sent again,
        # so every attempt reuses the request itself.
        response = await self.inner.handle_async_request(request)
        declared = response.headers.get("content-length", "")
        if declared.isdigit() and int(declared) > self.max_body_bytes:
            await response.aclose()
            raise OversizedBody(f"the answer declares {int(declared) // 2**20} MB; no "
                                "completion is that long", request=request)
        if not response.is_closed and isinstance(response.stream, httpx.AsyncByteStream):
            response = httpx.Response(response.status_code, headers=response.headers,
                                      stream=_Capped(response.stream, self.max_body_bytes,
                                                     request),
                                      extensions=response.extensions, request=request)
        return response, await response.aread()

    def _overloaded(self, started: float) -> None:
        if self.feedback is not None:
            self.feedback.overloaded_by(started)

    async def aclose(self) -> None:
        await self.inner.aclose()


async def _within(coro: Awaitable[T], seconds: float | None) -> T:
    """Await ``coro`` for at most ``seconds`` (TimeoutError after), without the extra task
    that ``asyncio.wait_for`` costs on Python 3.11."""
    if seconds is None:
        return await coro
    if sys.version_info >= (3, 11):
        async with asyncio.timeout(seconds):
            return await coro
    return await asyncio.wait_for(coro, seconds)  # pragma: no cover - Python 3.10


class ShardedTransport(httpx.AsyncBaseTransport):
    """Several small connection pools in place of one big one, each request to the least
    busy.

    httpcore's pool walks every connection, with a ``poll`` syscall each, whenever a request
    is queued or a response closed: per request, its cost grows with the pool size. At 64
    connections that walk was most of the client's CPU (bench/client.py); shards of
    ``per_shard`` connections keep it flat. Routing to the shard with the fewest requests in
    progress means a shard never queues while another has a free connection, as long as
    the requests in flight do not exceed ``max_connections`` (the limiter's cap).
    """

    def __init__(self, max_connections: int, per_shard: int = 8,
                 factory: Callable[[int], httpx.AsyncBaseTransport] | None = None):
        n = max(1, -(-max_connections // per_shard))
        size = -(-max_connections // n)
        if factory is None:
            ssl = httpx.create_ssl_context()  # one for all shards: loading CA certs costs

            def factory(size: int) -> httpx.AsyncBaseTransport:
                return httpx.AsyncHTTPTransport(verify=ssl, limits=httpx.Limits(
                    max_connections=size, max_keepalive_connections=size))

        self.shards = [factory(size) for _ in range(n)]
        self.load = [0] * n

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        i = min(range(len(self.load)), key=self.load.__getitem__)
        self.load[i] += 1
        try:
            response = await self.shards[i].handle_async_request(request)
        except BaseException:
            self.load[i] -= 1
            raise
        if response.is_closed:  # read already (an in-memory answer): nothing to wait for
            self.load[i] -= 1
        else:
            response.stream = _Released(response.stream, self.load, i)
        return response

    async def aclose(self) -> None:
        for shard in self.shards:
            await shard.aclose()


class _Released(httpx.AsyncByteStream):
    """A response body that gives its shard's slot back when closed (read to the end or
    abandoned)."""

    def __init__(self, stream: Any, load: list[int], i: int):
        self.stream, self.load, self.i, self.open = stream, load, i, True

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self.stream:
            yield chunk

    async def aclose(self) -> None:
        try:
            await self.stream.aclose()
        finally:
            if self.open:
                self.open = False
                self.load[self.i] -= 1


def build_client(base_url: str, *, mode: str = "off", store: FixtureStore | None = None,
                 headers: dict[str, str] | None = None, timeout: float = 120.0,
                 retry: RetryPolicy | None = None, stats: TransportStats | None = None,
                 network: httpx.AsyncBaseTransport | None = None,
                 max_connections: int = 64,
                 feedback: LoadFeedback | None = None) -> httpx.AsyncClient:
    """The one httpx client of a run: record/replay over retries over the network.

    ``timeout`` bounds each attempt in all (the retry policy's ``attempt_timeout`` unless it
    sets its own); ``feedback`` (a concurrency controller) hears how each attempt went.
    """
    stats = stats or TransportStats()
    retry = retry or RetryPolicy()
    if retry.attempt_timeout is None:
        retry = replace(retry, attempt_timeout=timeout)
    inner: httpx.AsyncBaseTransport | None = None
    if mode != "replay":
        net = network or ShardedTransport(max_connections)
        inner = RetryTransport(net, retry, stats, feedback)
    base_path = httpx.URL(base_url).path
    transport = RecordReplayTransport(inner, mode, store, base_path, stats)
    return AuditClient(base_url=base_url, transport=transport, headers=headers or {},
                       timeout=httpx.Timeout(timeout, connect=min(10.0, timeout)))


class _Cookies(httpx.Cookies):
    def extract_cookies(self, response: httpx.Response) -> None:
        headers = response.headers
        if "set-cookie" in headers or "set-cookie2" in headers:  # what the jar reads
            super().extract_cookies(response)


class AuditClient(httpx.AsyncClient):
    """httpx's client, lighter per request where that changes nothing a caller sees.

    - A read response gives up the client's bound stream (which refers back to the
      response): its body is read and its stream closed, so nothing reads that stream
      again, and without the cycle the response, its request and its body are freed when
      the caller drops them instead of waiting for the cyclic collector (whose passes over
      every answer in flight were ~7% of the client's CPU, bench/client.py).
    - The URL of a relative path is merged with the base URL once per path, not per request.
    - Cookies are taken from an answer only when it sets some (httpx hands every answer to
      the standard library's cookie jar, ~12 µs each, to find no Set-Cookie header).
    """

    _merged: dict[str, tuple[httpx.URL, httpx.URL]]

    def __init__(self, **kwargs: Any):
        super().__init__(**kwargs)
        # httpx keeps its jar in ``_cookies`` (0.27-0.28); should that change, the client
        # stays plain httpx rather than breaking (the cookie shortcut is only a saving).
        if isinstance(getattr(self, "_cookies", None), httpx.Cookies):
            self._cookies = _Cookies(self._cookies)

    @property
    def cookies(self) -> httpx.Cookies:
        return self._cookies

    @cookies.setter
    def cookies(self, cookies: Any) -> None:
        self._cookies = _Cookies(cookies)

    def _merge_url(self, url: httpx.URL | str) -> httpx.URL:
        if not isinstance(url, str):
            return super()._merge_url(url)
        cache = self.__dict__.setdefault("_merged", {})
        hit = cache.get(url)
        base = self.base_url
        if hit is not None and hit[0] is base:
            return hit[1]
        merged = super()._merge_url(url)
        if len(cache) >= 64:
            cache.clear()
        cache[url] = (base, merged)
        return merged

    async def send(self, request: httpx.Request, *, stream: bool = False,
                   **kwargs: Any) -> httpx.Response:
        response = await super().send(request, stream=stream, **kwargs)
        if not stream and response.is_closed:
            response.stream = httpx.ByteStream(response.content)
        return response
