"""Scoring while generation runs (``audit --overlap``).

Generation waits on the network and scoring on the CPU, so run back to back an audit's wall
time is their sum. Here a thread loads the reference at the start (the same code path as the
score stage: ``tokenizer_for``, ``chat_template``, ``scorer_for``) and scores each usable row
as generation appends it; when generation ends the score stage finishes the same
:class:`~blackbox_audit.rowscorer.RowScorer` session (rows the thread never saw, the noise
floor over every row of the session) without loading the model again. The wall time is then
near the longer stage.

The event loop never waits on the thread: ``offer`` (``generate``'s ``on_row``) puts a row
with ``put_nowait``, and a row that does not fit the bounded queue is left for the closing
pass (it is on disk already). torch releases the GIL while it computes, so the thread costs
the loop little beyond the cores torch takes (``plan.process_settings`` leaves one free).

Crash safety is the score stage's own: a row is appended to completions.jsonl before it is
offered, and its score is appended after; a killed run resumes by generating what has no
answer and scoring what has no score (``RowScorer`` skips rows scored before).

Files: completions.jsonl is appended on the event loop's thread, scores.<ref>.jsonl on this
one; each has its own ``JsonlAppender`` and the fsync thread (``transport.jsonl.SYNC``) takes
a lock, so the two never share a file handle.
"""

from __future__ import annotations

import queue
import threading
import time
from collections.abc import Iterable

from .align import TokenizerView
from .audit import chat_template, scorer_for, tokenizer_for
from .plan import ScoringPlan
from .records import Completion
from .rowscorer import CHUNK, RowScorer
from .rundir import RunDir

IDLE = 0.2   # seconds between checks for the stop signal while no row comes


class _End:
    """The queue's last item: generation is over."""


END = _End()


class OverlapScorer:
    """A thread that loads the reference and scores usable rows as they are offered.

    ``start`` before generation, ``offer`` each row (from the event loop), then ``finish``
    (generation done: drain, return the session for the score stage) or ``abort``
    (generation failed: stop, close the reference).
    """

    def __init__(self, s: ScoringPlan, run: RunDir, framings: Iterable[str],
                 capacity: int = 16 * CHUNK):
        self.plan, self.run = s, run
        self.needs_template = "chat" in set(framings)
        self.queue: queue.Queue[Completion | _End] = queue.Queue(maxsize=capacity)
        self.session: RowScorer | None = None
        self.error: BaseException | None = None
        self.offered = 0
        self.left_for_later = 0   # rows the full queue refused: the closing pass scores them
        self.load_seconds: float | None = None
        self._stop = threading.Event()
        self._torch_threads = 0   # the entry point's setting, read in start()
        self._thread = threading.Thread(target=self._run, name="blackbox-audit-overlap",
                                        daemon=True)

    def start(self) -> None:
        # The tokenizer first, on this thread: generation cuts prefills with it, and two
        # threads loading one lru_cache entry at once would load it twice.
        tokenizer_for(self.plan.reference)
        import torch

        # torch's CPU thread count is held per thread (OpenMP's setting is thread-local): a
        # new thread computes with every core whatever the entry point set, so the setting
        # read here is set again on the scoring thread (measured: a 1-thread setting ran at
        # 2-thread speed on a 2-core box until it was).
        self._torch_threads = torch.get_num_threads()
        self._thread.start()

    def offer(self, c: Completion) -> None:
        """``generate``'s ``on_row``: never blocks the event loop."""
        if not c.usable or self._stop.is_set() or self.error is not None:
            return
        try:
            self.queue.put_nowait(c)
            self.offered += 1
        except queue.Full:
            self.left_for_later += 1

    def finish(self) -> RowScorer:
        """Generation is over: let the thread score what it holds, and hand its session to
        the score stage. Raises what the thread raised (the rows stay on disk)."""
        during = self.session.scored if self.session is not None else 0
        floor_early = len(self.session.singles) if self.session is not None else 0
        while self._thread.is_alive():
            try:
                self.queue.put(END, timeout=IDLE)
                break
            except queue.Full:
                continue
        self._thread.join()
        if self.error is not None:
            raise self.error
        assert self.session is not None
        s = self.session
        s.notes["overlap"] = {"scored_while_generating": during,
                              "drained_after_generation": s.scored - during,
                              "offered": self.offered, "left_for_later": self.left_for_later,
                              "floor_rows_scored_alone_while_generating": floor_early,
                              "reference_load_seconds": self.load_seconds}
        return s

    def abort(self) -> None:
        """Generation failed or was interrupted: stop at the next row, drop the chunk in hand
        (its rows are on disk; the next run scores them), close the reference."""
        self._stop.set()
        self._thread.join(timeout=60)
        session = self.session
        close = getattr(session.reference, "close", None) if session else None
        if close is not None and not self._thread.is_alive():
            close()

    # -- the thread ------------------------------------------------------------------------
    def _run(self) -> None:
        try:
            import torch

            torch.set_num_threads(self._torch_threads)
            self._score_rows()
        except BaseException as e:   # raised again by finish(), on the main thread
            self.error = e
            self._stop.set()

    def _load(self) -> RowScorer:
        t0 = time.monotonic()
        s = self.plan
        tokenizer = tokenizer_for(s.reference)
        template = chat_template(s.chat_template, tokenizer, s.reference.name,
                                 self.needs_template)
        reference = scorer_for(s, tokenizer)
        self.load_seconds = round(time.monotonic() - t0, 2)
        return RowScorer(self.run, reference, TokenizerView(tokenizer, template),
                         s.alignment, quiet=True)

    def _score_rows(self) -> None:
        session = self.session = self._load()
        first: list[Completion] = []     # held until the alignment is decided on them
        while not self._stop.is_set():
            try:
                item = self.queue.get_nowait()
            except queue.Empty:
                # Caught up with generation: score a noise floor row alone now, rather than
                # after generation ends; with none waiting, wait for the next row.
                if session.alignment != "auto" and session.refine_floor():
                    continue
                try:
                    item = self.queue.get(timeout=IDLE)
                except queue.Empty:
                    continue
            if isinstance(item, _End):
                break
            if session.alignment == "auto":
                first.append(item)
                if len(first) < session.chunk:
                    continue
                self._decide(session, first)
                continue
            session.feed(item)
            if self.queue.empty():
                # Score what is in hand rather than wait for a full chunk: when generation is
                # the slower stage the thread would idle; when scoring is, the queue fills
                # meanwhile and the next chunks are full.
                session.flush()
        if self._stop.is_set():
            return
        if first:
            self._decide(session, first)
        session.flush()

    @staticmethod
    def _decide(session: RowScorer, first: list[Completion]) -> None:
        """Alignment ``auto``: one path for the session, chosen on its first batch."""
        session.decide(first)
        for c in first:
            session.feed(c)
        first.clear()


def overlapped_rows(s: ScoringPlan, run: RunDir, framings: Iterable[str]) -> OverlapScorer:
    """A started :class:`OverlapScorer` for ``run``."""
    o = OverlapScorer(s, run, framings)
    o.start()
    return o


__all__ = ["OverlapScorer", "overlapped_rows"]
