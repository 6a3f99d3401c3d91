"""Progress on long work: a ``rich`` bar on a terminal, plain lines on stderr elsewhere.

Plain mode (CI logs, pipes, files, ``TERM=dumb``): a line at most every ``interval`` seconds,
and one at the end, with done/total, rate and ETA, then the extra fields (``failed 0,
retries 0, ...``). These lines are stable: logs and tests read them.

Terminal mode: one live bar per stage (prefill loading, generation, rescoring) with done/total,
rate, ETA and the same extra fields in short form (in flight, retries, tokens, cost so far).

``BLACKBOX_AUDIT_PROGRESS=plain`` or ``=rich`` overrides the choice; ``CI`` set means plain.
"""

from __future__ import annotations

import os
import sys
import time
from typing import Any, TextIO

from .redact import scrub

MODES = ("auto", "plain", "rich")


def use_rich(stream: TextIO, mode: str | None = None) -> bool:
    """Whether progress on ``stream`` should be a live bar."""
    mode = mode or os.environ.get("BLACKBOX_AUDIT_PROGRESS", "auto")
    if mode == "plain":
        return False
    if mode == "rich":
        return True
    if os.environ.get("CI") or os.environ.get("TERM") == "dumb":
        return False
    isatty = getattr(stream, "isatty", None)
    return bool(isatty and isatty())


class Progress:
    """``update`` as work is done, ``finish`` once at the end.

    ``total`` None: an open-ended count (prefill loading). ``plain=False``: say nothing in
    plain mode (a stage whose result is logged anyway), a bar on a terminal.
    """

    def __init__(self, label: str, total: int | None, unit: str = "rows",
                 interval: float = 5.0, stream: TextIO | None = None, quiet: bool = False,
                 mode: str | None = None, plain: bool = True):
        self.label, self.total, self.unit = label, total, unit
        self.interval = interval
        self.stream = stream or sys.stderr
        self.quiet = quiet
        self.plain = plain
        self.done = 0
        self.extra: dict[str, object] = {}
        self.t0 = time.monotonic()
        self._last = 0.0
        self._bar = None if quiet or not use_rich(self.stream, mode) else _Bar(self)

    @property
    def rich(self) -> bool:
        return self._bar is not None

    def update(self, done: int | None = None, advance: int = 0, **extra: object) -> None:
        self.done = done if done is not None else self.done + advance
        self.extra.update(extra)
        if self._bar is not None:
            self._bar.update()
            return
        now = time.monotonic()
        if now - self._last >= self.interval:
            self._last = now
            self._emit()

    def finish(self, **extra: object) -> None:
        self.extra.update(extra)
        if self._bar is not None:
            self._bar.update()
            self._bar.stop()
            self._bar = None
            return
        self._emit(final=True)

    def rate(self) -> float:
        elapsed = time.monotonic() - self.t0
        return self.done / elapsed if elapsed > 0 else 0.0

    def _emit(self, final: bool = False) -> None:
        if self.quiet or not self.plain:
            return
        elapsed = time.monotonic() - self.t0
        rate = self.rate()
        total = "" if self.total is None else f"/{self.total}"
        parts = [f"{self.label}: {self.done}{total} {self.unit}", f"{rate:.1f}/s"]
        if not final and rate > 0 and self.total is not None and self.total > self.done:
            parts.append(f"ETA {_fmt((self.total - self.done) / rate)}")
        if final:
            parts.append(f"in {_fmt(elapsed)}")
        parts += [f"{k} {v}" for k, v in self.extra.items() if v is not None]
        print(", ".join(parts), file=self.stream, flush=True)


# Short forms of the extra fields on a bar.
def short_fields(extra: dict[str, Any]) -> str:
    out = []
    for k, v in extra.items():
        if v is None:
            continue
        if k == "in_flight":
            out.append(f"in flight {v}")
        elif k == "tokens":
            out.append(f"{_si(v)} tok")
        elif k == "cost_usd":
            out.append(f"${v:.4f}" if isinstance(v, float) else f"${v}")
        elif k in ("failed", "retries") and not v:
            continue                       # zero failures and retries: nothing to say
        else:
            out.append(f"{k.replace('_', ' ')} {v}")
    return " · ".join(out)


def _si(n: Any) -> str:
    try:
        n = float(n)
    except (TypeError, ValueError):
        return str(n)
    for div, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "k")):
        if abs(n) >= div:
            return f"{n / div:.1f}{suffix}"
    return f"{n:.0f}"


class _Bar:
    """One rich live bar for one Progress."""

    def __init__(self, p: Progress):
        from rich.console import Console
        from rich.progress import (
            BarColumn,
            MofNCompleteColumn,
            SpinnerColumn,
            TextColumn,
            TimeElapsedColumn,
            TimeRemainingColumn,
        )
        from rich.progress import Progress as RichProgress
        from rich.table import Column

        self.p = p
        console = Console(file=p.stream, stderr=p.stream is sys.stderr)
        def fixed(n: int) -> dict[str, Column]:
            return {"table_column": Column(no_wrap=True, min_width=n)}

        digits = len(str(p.total or 0))
        columns = [SpinnerColumn() if p.total is None else TextColumn(""),
                   TextColumn("[bold]{task.description}", **fixed(len(p.label))),
                   BarColumn(bar_width=20),
                   MofNCompleteColumn(**fixed(2 * digits + 1)),
                   TextColumn("{task.fields[unit]}", **fixed(len(p.unit))),
                   TextColumn("{task.fields[rate]}", **fixed(8)),
                   (TimeRemainingColumn if p.total is not None else TimeElapsedColumn)(
                       **fixed(7)),
                   # the fields give way first on a narrow terminal
                   TextColumn("{task.fields[extra]}", markup=False,
                              table_column=Column(no_wrap=True, overflow="ellipsis",
                                                  ratio=1))]
        self.rp = RichProgress(*columns, console=console, refresh_per_second=4,
                               redirect_stdout=False, redirect_stderr=False)
        self.task = self.rp.add_task(p.label, total=p.total, unit=p.unit, rate="", extra="")
        self.rp.start()

    def update(self) -> None:
        p = self.p
        self.rp.update(self.task, completed=p.done, rate=f"{_si(p.rate())}/s",
                       extra=short_fields(p.extra))

    def stop(self) -> None:
        self.rp.refresh()
        self.rp.stop()


def count_progress(items, label: str, unit: str, quiet: bool = False, **kw: Any):
    """Yield ``items`` while counting them on a bar (terminal only: plain mode stays quiet)."""
    p = Progress(label, None, unit=unit, quiet=quiet, plain=False, **kw)
    try:
        for item in items:
            p.update(advance=1)
            yield item
    finally:
        p.finish()


def _fmt(seconds: float) -> str:
    seconds = int(seconds)
    if seconds < 60:
        return f"{seconds}s"
    if seconds < 3600:
        return f"{seconds // 60}m{seconds % 60:02d}s"
    return f"{seconds // 3600}h{seconds % 3600 // 60:02d}m"


# -- the closing table ---------------------------------------------------------------------
# C0 and C1 controls, and the bidirectional overrides and isolates (U+202E can make a line
# read backwards: "Trojan Source").
_CONTROL = {c: "\ufffd" for c in (*range(0x00, 0x09), 0x0B, 0x0C, *range(0x0E, 0x20), 0x7F,
                                   *range(0x80, 0xA0), 0x200E, 0x200F,
                                   *range(0x202A, 0x202F), *range(0x2066, 0x206A))}


def terminal_safe(text: str) -> str:
    """Model text for a terminal: whitespace runs become one space, control characters
    (ESC sequences could move the cursor or retitle the window) become U+FFFD, and any
    secret this process holds is cut out."""
    return " ".join(scrub(text).translate(_CONTROL).split())
