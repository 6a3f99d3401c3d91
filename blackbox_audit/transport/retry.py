"""One retry path at the httpx seam: bounded attempts, each cut off in time, with the
server's requested wait honoured and a concurrency controller told how each attempt went."""

from __future__ import annotations

import asyncio
import datetime
import email.utils
import random
import sys
import time
from collections.abc import AsyncIterator, Awaitable
from dataclasses import dataclass, replace
from typing import Protocol, TypeVar

import httpx
from tenacity import AsyncRetrying, RetryCallState, retry_if_exception_type, stop_after_attempt

from .. import fastjson
from .ledger import TIMEOUT, AttemptLedger
from .stats import TransportStats, UsageReader

T = TypeVar("T")


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


def retry_after_seconds(headers: httpx.Headers, now: float | None = None,
                        ms_header: str | None = None) -> float | None:
    """The wait a server asked for: ``Retry-After`` as seconds or as an HTTP date (RFC 9110),
    after ``ms_header`` (a wait in milliseconds, where the endpoint's API has one: its
    adapter's :class:`RetryHints`). None when absent or unreadable; never negative."""
    ms = headers.get(ms_header) if ms_header else None
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
class RetryHints:
    """An API's own words for "try again", beyond HTTP's: declared by its adapter (providers/)
    and added to a policy with :meth:`RetryPolicy.hinted`. The transport reads no header and
    no status of a provider's but these."""

    statuses: frozenset[int] = frozenset()   # more retryable statuses
    overload: frozenset[int] = frozenset()   # ... of them, those that also mean "slow down"
    wait_ms_header: str | None = None        # a requested wait in milliseconds


@dataclass(frozen=True)
class RetryPolicy:
    """Bounded retries with jittered exponential backoff (tenacity), at the transport.

    Retried: connection errors, timeouts, bodies cut off mid-way (a protocol error, or a 2xx
    JSON body that does not parse or is empty), and the statuses in ``retry_statuses`` (429,
    5xx and the "try again" 4xx, plus what the endpoint's adapter adds: :meth:`hinted`);
    ``overload_statuses`` and timeouts also tell the concurrency controller to back off.
    Never retried: any other 4xx, so a wrong URL (404), key (401) or permission (403) fails
    on the first answer. A server-requested wait (``Retry-After``, or the adapter's
    ``wait_ms_header``) is honoured up to ``max_wait``; otherwise
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
    retry_statuses: frozenset[int] = frozenset({408, 409, 425, 429, 500, 502, 503, 504})
    overload_statuses: frozenset[int] = frozenset({503, 504})
    wait_ms_header: str | None = None  # a requested wait in milliseconds (RetryHints)

    def __post_init__(self) -> None:
        if self.attempts < 1:
            raise ValueError("a retry policy needs at least one attempt")

    def hinted(self, hints: RetryHints) -> RetryPolicy:
        """This policy with an API's own retry hints added (its adapter's ``retry_hints``)."""
        return replace(self, retry_statuses=self.retry_statuses | hints.statuses,
                       overload_statuses=self.overload_statuses | hints.overload,
                       wait_ms_header=hints.wait_ms_header or self.wait_ms_header)

    def wait_asked(self, headers: httpx.Headers) -> float | None:
        """The wait a server asked for, in the words this policy knows."""
        return retry_after_seconds(headers, ms_header=self.wait_ms_header)

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
            asked = self.wait_asked(exc.response.headers)
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
                 max_body_bytes: int = MAX_BODY_BYTES, ledger: AttemptLedger | None = None,
                 usage: UsageReader | None = None):
        self.inner = inner
        self.ledger = ledger
        self.usage = usage
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
        """One attempt, written down in the ledger before it leaves and when it ends (an
        attempt cancelled or killed in flight has no end: possibly billed)."""
        if self.ledger is None:
            return await self._attempt_once(request, content)
        n = self.ledger.sent(content)
        outcome, tokens = "cancelled", None
        try:
            response = await self._attempt_once(request, content)
            outcome = str(response.status_code)
            parsed = response.extensions.get(JSON_EXTENSION)
            if parsed is not None and self.usage is not None:
                tokens = self.usage(parsed)
            return response
        except RetryableStatus as e:
            outcome = str(e.response.status_code)
            raise
        except TruncatedBody as e:
            outcome = str(e.response.status_code)
            raise
        except httpx.TimeoutException:
            outcome = TIMEOUT
            raise
        except httpx.TransportError as e:
            outcome = type(e).__name__
            raise
        finally:
            self.ledger.ended(n, outcome, tokens)

    async def _attempt_once(self, request: httpx.Request, content: bytes) -> httpx.Response:
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
                    self.feedback.throttled_by(started, self.policy.wait_asked(response.headers))
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
