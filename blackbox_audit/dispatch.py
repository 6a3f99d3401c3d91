"""Adaptive concurrency for generation: how many requests are in progress at once.

A fixed worker count is wrong in both directions: too low wastes a fast endpoint, too high
earns 429s from a rate-limited one (and every 429 is a round trip that bought nothing). The
:class:`AdaptiveLimiter` works like TCP's congestion window (AIMD):

- it starts at a moderate level (``start``) and grows by one slot per successful answer
  (slow start: doubling per round trip) until the first sign of overload, then by one slot
  per window of answers (additive increase), never above ``cap``;
- a 429 halves the window (multiplicative decrease), as do 503/504/529 and timeouts;
  answers to requests sent *before* the last cut do not cut again, so one burst of 429s is
  one cut;
- a slot is held for the whole request, retries and their waits included, so a request
  sleeping on ``Retry-After`` keeps its place and holds back new ones.

The limiter never waits on a clock of its own: the wait the server asked for is honoured by
the retry policy on the request that received it (transport.py), so every request's time is
bounded by that policy, and a run of N requests at a floor of ``floor`` slots is bounded by
``(ceil(N / floor) + 1) * RetryPolicy.request_bound()`` (see :func:`run_bound`).

The transport reports outcomes through the three methods of
:class:`blackbox_audit.transport.LoadFeedback`; it knows nothing else of this module.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, TypeVar

T = TypeVar("T")
R = TypeVar("R")


class AdaptiveLimiter:
    """An AIMD window over requests in progress (one event loop; not thread-safe)."""

    def __init__(self, cap: int, start: int | None = None, floor: int = 1,
                 clock: Callable[[], float] = time.monotonic):
        if cap < 1:
            raise ValueError("the concurrency cap must be at least 1")
        self.cap = cap
        self.floor = max(1, min(floor, cap))
        self.start = max(self.floor, min(start if start is not None else min(cap, 8), cap))
        self.limit = float(self.start)
        self.ssthresh = float(cap)   # slow start until the first overload signal
        self.in_flight = 0
        self.clock = clock
        self._last_cut = -math.inf
        self._waiters: deque[asyncio.Future[None]] = deque()
        # Accounting for the manifest: how the window moved during the run.
        self.cuts = 0
        self.throttled = 0
        self.overloaded = 0
        self.peak_in_flight = 0
        self.lowest_limit = self.limit
        # Time requests waited for a slot on our side: not part of any attempt's timeout.
        self.queue_seconds = 0.0
        self.queue_seconds_max = 0.0

    def cap_at(self, slots: int) -> None:
        """Never more than ``slots`` in progress: what the server computes at once
        (Provider.server_slots). Called before the first request; lowers, never raises."""
        if 1 <= slots < self.cap:
            self.cap = slots
            self.floor = min(self.floor, slots)
            self.start = min(self.start, slots)
            self.limit = min(self.limit, float(slots))
            self.ssthresh = min(self.ssthresh, float(slots))
            self.lowest_limit = min(self.lowest_limit, self.limit)

    # -- slots ----------------------------------------------------------------------------
    @property
    def window(self) -> int:
        return max(self.floor, int(self.limit))

    async def acquire(self) -> None:
        if self.in_flight < self.window and not self._waiters:
            self._take()
            return
        fut = asyncio.get_running_loop().create_future()
        self._waiters.append(fut)
        queued = self.clock()
        try:
            await fut
            waited = self.clock() - queued
            self.queue_seconds += waited
            self.queue_seconds_max = max(self.queue_seconds_max, waited)
        except BaseException:
            if fut.done() and not fut.cancelled():
                self.release()  # we were handed a slot and then cancelled: give it back
            elif fut in self._waiters:
                self._waiters.remove(fut)
            raise

    def release(self) -> None:
        self.in_flight -= 1
        self._wake()

    @asynccontextmanager
    async def slot(self) -> AsyncIterator[None]:
        await self.acquire()
        try:
            yield
        finally:
            self.release()

    def _take(self) -> None:
        self.in_flight += 1
        self.peak_in_flight = max(self.peak_in_flight, self.in_flight)

    def _wake(self) -> None:
        while self._waiters and self.in_flight < self.window:
            fut = self._waiters.popleft()
            if not fut.done():
                self._take()
                fut.set_result(None)

    # -- feedback from the transport (LoadFeedback) ---------------------------------------
    def succeeded(self, started: float) -> None:
        """An answer came back: grow (one slot per answer below ssthresh, else per window)."""
        if self.limit < self.ssthresh:
            self.limit = min(self.limit + 1.0, self.cap)
        else:
            self.limit = min(self.limit + 1.0 / self.limit, self.cap)
        self._wake()

    def throttled_by(self, started: float, retry_after: float | None) -> None:
        """HTTP 429: the endpoint says we are too fast."""
        self.throttled += 1
        self._cut(started)

    def overloaded_by(self, started: float) -> None:
        """HTTP 503 or a timeout: the endpoint is saturated (or unwell); back off alike."""
        self.overloaded += 1
        self._cut(started)

    def _cut(self, started: float) -> None:
        if started < self._last_cut:
            return  # sent before the last cut: that overload is already answered
        self._last_cut = self.clock()
        self.limit = max(float(self.floor), self.limit / 2.0)
        self.ssthresh = max(float(self.floor), self.limit)
        self.cuts += 1
        self.lowest_limit = min(self.lowest_limit, self.limit)

    def to_json(self) -> dict[str, Any]:
        return {"cap": self.cap, "start": self.start, "floor": self.floor,
                "final": round(self.limit, 2), "lowest": round(self.lowest_limit, 2),
                "peak_in_flight": self.peak_in_flight, "cuts": self.cuts,
                "throttled": self.throttled, "overloaded": self.overloaded,
                "queue_seconds": round(self.queue_seconds, 2),
                "queue_seconds_max": round(self.queue_seconds_max, 2)}


def run_bound(n_requests: int, floor: int, request_bound: float) -> float:
    """Worst-case seconds for ``n_requests`` through a limiter whose window never drops
    below ``floor``, each request bounded by ``request_bound`` (its retry policy's worst
    case): at least ``floor`` requests are in progress whenever any is waiting, so the
    requests finish in at most ``ceil(n / floor)`` waves, plus one for the wave in progress
    when the window shrank."""
    if n_requests <= 0:
        return 0.0
    return (math.ceil(n_requests / max(1, floor)) + 1) * request_bound


async def run_all(items: Sequence[T], call: Callable[[T], Awaitable[R]],
                  done: Callable[[T, R], None], limiter: AdaptiveLimiter) -> None:
    """Run ``call`` on every item, at most ``limiter.window`` at once, then ``done`` on each
    result as it arrives (outside the slot: writing a row must not hold back a request).

    One worker per slot of the cap pulls from a shared iterator, so memory stays flat
    whatever the number of items. ``call`` should turn a per-item failure into a result; an
    exception it raises is fatal (a refused key, an unknown model): the other workers are
    cancelled and awaited, and the exception propagates with nothing left running.
    """
    await _run_workers(iter(items), len(items), call, done, limiter)


async def _run_workers(it: Iterator[T], n: int, call: Callable[[T], Awaitable[R]],
                       done: Callable[[T, R], None], limiter: AdaptiveLimiter) -> None:
    async def worker() -> None:
        for item in it:  # one event loop: next() on the shared iterator is never concurrent
            await limiter.acquire()  # limiter.slot() spelled out: no context manager per item
            try:
                result = await call(item)
            finally:
                limiter.release()
            done(item, result)

    tasks = [asyncio.create_task(worker()) for _ in range(min(limiter.cap, n))]
    try:
        await asyncio.gather(*tasks)
    finally:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
