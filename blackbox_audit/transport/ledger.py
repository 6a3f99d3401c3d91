"""The attempt ledger: every network attempt written down before it is sent.

A paid request is money whether or not the process lives to record its answer. The counts a
session keeps in memory (stats.py) die with it under ``kill -9``, so the manifest's
accounting could only ever be as complete as the last clean exit. The ledger closes that gap:
one line *before* each attempt leaves (``"sent"``), one line when it ends (its outcome and
the tokens its answer reports), each line a single ``write`` on an ``O_APPEND`` descriptor.
The kernel keeps what was written when the process is killed (power loss is another matter:
the ledger is not fsynced, the answers it accounts for are), so after any kill the run
directory says how many attempts were made, which were answered, and which may have been
billed without an answer reaching disk.

Outcomes: an HTTP status (``"200"``, ``"429"``...), ``"timeout"`` (cut off by the attempt
timeout, or the client's own: the server may have done, and billed, the work) or the name of
the transport error (a connection refused was never billed). An attempt with no outcome line
was in flight when its process died: possibly billed.

Line format (JSON, short keys because a paper-scale run logs ~60,000 of them):
``{"s": session, "n": attempt, "b": body digest}`` when sent, ``{"s", "n", "o": outcome,
"p": prompt tokens, "c": completion tokens}`` when ended. ``b`` is the first 16 hex digits
of SHA-256 over the request body: a repeat of one request can be told from a new one.
"""

from __future__ import annotations

import hashlib
import json
import os
import secrets
import threading
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .stats import positive_int

TIMEOUT = "timeout"
NEVER_BILLED = frozenset({"ConnectError", "ConnectTimeout", "UnsupportedProtocol",
                          "LocalProtocolError", "ProxyError", "OversizedBody"})


def body_digest(content: bytes) -> str:
    """The ledger's name for a request body (the stub servers of the tests compute it too)."""
    return hashlib.sha256(content).hexdigest()[:16]


class AttemptLedger:
    """Appends a session's attempts to ``path`` (``RUN/attempts.jsonl``).

    Thread- and task-safe: each line is one ``os.write`` of an ``O_APPEND`` descriptor, so
    lines from concurrent attempts, or from a process killed mid-line, never interleave
    (a torn last line is skipped by :func:`read_ledger`).
    """

    def __init__(self, path: Path | str, session: str | None = None):
        self.path = Path(path)
        self.session = session or secrets.token_hex(4)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        self._next = 0
        self._lock = threading.Lock()

    def sent(self, content: bytes) -> int:
        """Write down an attempt about to be sent; its number in this session."""
        with self._lock:
            n = self._next
            self._next += 1
        self._write({"s": self.session, "n": n, "b": body_digest(content)})
        return n

    def ended(self, n: int, outcome: str, tokens: tuple[Any, Any] | None = None) -> None:
        """Write down how attempt ``n`` ended, with the tokens its answer reports."""
        line: dict[str, Any] = {"s": self.session, "n": n, "o": outcome}
        if tokens is not None:
            line["p"], line["c"] = positive_int(tokens[0]), positive_int(tokens[1])
        self._write(line)

    def _write(self, line: dict[str, Any]) -> None:
        os.write(self._fd, (json.dumps(line, separators=(",", ":")) + "\n").encode())

    def close(self) -> None:
        if self._fd >= 0:
            os.close(self._fd)
            self._fd = -1


@dataclass
class LedgerTotals:
    """What a ledger says was spent: the run's accounting as far as the disk knows."""

    sent: int = 0                 # attempts written down before they left
    answered: int = 0             # ... that got an HTTP answer
    possibly_billed: int = 0      # ... in flight at a kill, or cut off by a timeout
    outcomes: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    sessions: int = 0
    by_body: Counter = field(default_factory=Counter)        # attempts per request body
    unanswered_by_body: Counter = field(default_factory=Counter)

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "answered": self.answered,
                "possibly_billed": self.possibly_billed, "outcomes": dict(self.outcomes),
                "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
                "sessions": self.sessions,
                "note": "from RUN/attempts.jsonl: every attempt written down before it was "
                        "sent, so these survive any kill; possibly_billed = attempts in "
                        "flight when a process died, or cut off by a timeout"}


def read_ledger(path: Path | str) -> Iterator[dict[str, Any]]:
    """The ledger's lines; a line cut off by a kill (no newline, or not JSON) is skipped."""
    p = Path(path)
    if not p.exists():
        return
    with p.open("rb") as fh:
        for raw in fh:
            if not raw.endswith(b"\n"):
                return
            try:
                line = json.loads(raw)
            except ValueError:
                continue
            if isinstance(line, dict):
                yield line


def ledger_totals(path: Path | str) -> LedgerTotals:
    """Add up a ledger: every session of the run, killed ones included."""
    t = LedgerTotals()
    open_attempts: dict[tuple[str, int], str] = {}
    sessions = set()
    for line in read_ledger(path):
        key = (str(line.get("s")), int(line.get("n") or 0))
        sessions.add(key[0])
        if "b" in line:
            t.sent += 1
            body = str(line["b"])
            t.by_body[body] += 1
            open_attempts[key] = body
            continue
        outcome = str(line.get("o"))
        body = open_attempts.pop(key, "")
        t.outcomes[outcome] += 1
        if outcome.isdigit():
            t.answered += 1
        else:
            t.unanswered_by_body[body] += 1
            if outcome not in NEVER_BILLED:
                t.possibly_billed += 1
        t.prompt_tokens += int(line.get("p") or 0)
        t.completion_tokens += int(line.get("c") or 0)
    for body in open_attempts.values():
        t.outcomes["in flight at a kill"] += 1
        t.possibly_billed += 1
        t.unanswered_by_body[body] += 1
    t.sessions = len(sessions)
    return t
