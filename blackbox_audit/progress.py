"""Progress on long work, as plain lines on stderr (CI logs and pipes read them fine).

A line at most every ``interval`` seconds, and one at the end, with done/total, rate and ETA.
"""

from __future__ import annotations

import sys
import time
from typing import TextIO


class Progress:
    def __init__(self, label: str, total: int, unit: str = "rows", interval: float = 5.0,
                 stream: TextIO | None = None, quiet: bool = False):
        self.label, self.total, self.unit = label, total, unit
        self.interval = interval
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.done = 0
        self.extra: dict[str, object] = {}
        self.t0 = time.monotonic()
        self._last = 0.0

    def update(self, done: int | None = None, advance: int = 0, **extra: object) -> None:
        self.done = done if done is not None else self.done + advance
        self.extra.update(extra)
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def finish(self, **extra: object) -> None:
        self.extra.update(extra)
        self._emit(final=True)

    def _emit(self, final: bool = False) -> None:
        if self.quiet:
            return
        elapsed = time.monotonic() - self.t0
        rate = self.done / elapsed if elapsed > 0 else 0.0
        parts = [f"{self.label}: {self.done}/{self.total} {self.unit}", f"{rate:.1f}/s"]
        if not final and rate > 0 and self.total > self.done:
            parts.append(f"ETA {_fmt((self.total - self.done) / rate)}")
        if final:
            parts.append(f"in {_fmt(elapsed)}")
        parts += [f"{k} {v}" for k, v in self.extra.items()]
        print(", ".join(parts), file=self.stream, flush=True)


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"
