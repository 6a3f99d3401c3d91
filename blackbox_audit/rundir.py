"""The run directory: every stage reads and writes plain files here (design §4).

    manifest.json        config, versions, probe, counts, cost; rewritten atomically
    exchanges.jsonl      the transport's record of every paid answer (auto/record modes)
    completions.jsonl    one row per (prefill, framing); append-only, fsync'd: the resume point
    scores.<ref>.jsonl   per reference model; append-only
    ranked.jsonl/.csv    the ranking, within each (corpus, framing)

Appends are written and flushed to the kernel line by line (fsync'd in batches on a
background thread, transport.jsonl.BackgroundSync) and reads tolerate a torn last line, so
``kill -9`` at any moment loses at most the row being written, never one already written.
Everything written passes through the run's redactor.
"""

from __future__ import annotations

import csv
import fcntl
import io
import json
import os
import threading
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fastjson
from .errors import ConfigError
from .manifest import Manifest
from .rank import RankedRow
from .records import Completion, Score
from .redact import Redactor
from .transport.jsonl import SYNC, heal_torn_tail


class JsonlAppender:
    """Append JSON lines with fsync; heal a torn tail before the first append."""

    def __init__(self, path: Path, redactor: Redactor):
        self.path = path
        self.redactor = redactor
        self._fh = None

    def append(self, obj: dict[str, Any]) -> None:
        self.append_line(fastjson.dumps(obj))  # strict JSON: a NaN score is written null

    def append_line(self, text: str) -> None:
        """Append one line of JSON text (redacted here)."""
        if self._fh is None:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            heal_torn_tail(self.path)
            self._fh = open(self.path, "a", encoding="utf-8")  # noqa: SIM115
        self._fh.write(self.redactor.text(text) + "\n")
        self._fh.flush()  # the kernel has it: a killed process loses nothing
        SYNC.mark(self._fh)  # fsync'd on a background thread, batched (transport/jsonl.py)

    def close(self) -> None:
        if self._fh is not None:
            SYNC.close(self._fh)
            self._fh = None


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file; a torn last line is skipped, a bad line elsewhere is an error."""
    if not path.exists():
        return
    lines = path.read_text(encoding="utf-8").split("\n")
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            yield fastjson.loads(line)
        except ValueError as e:
            if n >= len(lines) - 1:
                continue
            raise ConfigError(f"{path} line {n} is not JSON ({e}); the file was edited or "
                              "damaged. Remove that line to go on.") from e


def write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(text)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class WriterLock:
    """One writer per run directory: an exclusive ``flock`` on ``RUN/.lock``, holding the
    writer's pid so a second one can say who it waits for. The kernel drops the lock when its
    process dies, however it dies, so a stale lock is taken over by the next writer; readers
    (``show``, ``report``, ``eval``) take none. Re-entrant within a process (the stages of one
    audit nest)."""

    _held: dict[Path, tuple[Any, int]] = {}
    _guard = threading.Lock()

    def __init__(self, path: Path):
        self.path = path.resolve()

    def __enter__(self) -> WriterLock:
        with self._guard:
            held = self._held.get(self.path)
            if held is not None:
                self._held[self.path] = (held[0], held[1] + 1)
                return self
            self.path.mkdir(parents=True, exist_ok=True)
            fh = open(self.path / ".lock", "a+", encoding="utf-8")  # noqa: SIM115
            try:
                fcntl.flock(fh.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                fh.seek(0)
                holder = fh.read().strip() or "unknown"
                fh.close()
                raise ConfigError(
                    f"Another blackbox-audit (pid {holder}) is writing {self.path}. Wait for it "
                    "to finish (then rerun: nothing on disk is asked for again), or pass "
                    "another --out.") from None
            fh.seek(0)
            fh.truncate()
            fh.write(str(os.getpid()))
            fh.flush()
            self._held[self.path] = (fh, 1)
        return self

    def __exit__(self, *exc: object) -> None:
        with self._guard:
            fh, depth = self._held[self.path]
            if depth > 1:
                self._held[self.path] = (fh, depth - 1)
                return
            del self._held[self.path]
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)
            fh.close()


class RunDir:
    def __init__(self, path: str | Path, redactor: Redactor | None = None):
        self.path = Path(path)
        self.redactor = redactor or Redactor()
        self._completions = JsonlAppender(self.completions_path, self.redactor)
        self._scores: dict[str, JsonlAppender] = {}

    def writer(self) -> WriterLock:
        """The run directory's writer lock (``with run.writer(): ...``)."""
        return WriterLock(self.path)

    @property
    def manifest_path(self) -> Path:
        return self.path / "manifest.json"

    @property
    def completions_path(self) -> Path:
        return self.path / "completions.jsonl"

    @property
    def exchanges_path(self) -> Path:
        return self.path / "exchanges.jsonl"

    def scores_path(self, ref_name: str) -> Path:
        return self.path / f"scores.{ref_name}.jsonl"

    def exists(self) -> bool:
        return self.manifest_path.exists() or self.completions_path.exists()

    # manifest -----------------------------------------------------------------------------
    def read_manifest(self) -> Manifest:
        """The run's manifest (an empty one for a new run)."""
        if not self.manifest_path.exists():
            return Manifest()
        try:
            obj = json.loads(self.manifest_path.read_text(encoding="utf-8"))
        except ValueError as e:
            raise ConfigError(f"{self.manifest_path} is not valid JSON ({e}).") from e
        if not isinstance(obj, dict):
            raise ConfigError(f"{self.manifest_path} is not a JSON object.")
        return Manifest.from_json(obj)

    def write_manifest(self, manifest: Manifest) -> None:
        self.path.mkdir(parents=True, exist_ok=True)
        write_atomic(self.manifest_path,
                     self.redactor.dumps(manifest.to_json(), indent=2) + "\n")

    # completions --------------------------------------------------------------------------
    def append_completion(self, c: Completion) -> None:
        # Compact JSON through msgspec (fastjson): the stdlib's encode of a 100-token row
        # with top logprobs was a tenth of the client's CPU per answer (bench/client.py).
        self._completions.append_line(fastjson.dumps(c.to_json()))

    def load_completions(self) -> dict[str, Completion]:
        """Latest row per (prefill, framing): a failed row is superseded by a later answer."""
        rows: dict[str, Completion] = {}
        for obj in read_jsonl(self.completions_path):
            try:
                c = Completion.from_json(obj)
            except TypeError as e:
                raise ConfigError(f"{self.completions_path} holds a row that is not a "
                                  f"completion ({e}).") from e
            prev = rows.get(c.row_key)
            if prev is None or prev.error is not None or c.error is None:
                rows[c.row_key] = c
        return rows

    # scores -------------------------------------------------------------------------------
    def append_score(self, ref_name: str, s: Score) -> None:
        app = self._scores.get(ref_name)
        if app is None:
            app = self._scores[ref_name] = JsonlAppender(self.scores_path(ref_name),
                                                         self.redactor)
        app.append(s.to_json())

    def load_scores(self, ref_name: str) -> dict[str, Score]:
        out = {}
        for obj in read_jsonl(self.scores_path(ref_name)):
            s = Score.from_json(obj)
            out[f"{s.prefill_id}:{s.framing}"] = s
        return out

    # ranking ------------------------------------------------------------------------------
    def write_ranked(self, rows: Iterable[RankedRow], columns: list[str]) -> None:
        dicts = [r.to_json() for r in rows]
        write_atomic(self.path / "ranked.jsonl",
                     "".join(self.redactor.dumps(r) + "\n" for r in dicts))
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=columns, extrasaction="ignore")
        w.writeheader()
        for r in dicts:
            w.writerow({k: self.redactor.text(str(r.get(k, ""))) for k in columns})
        write_atomic(self.path / "ranked.csv", buf.getvalue())

    @property
    def themes_path(self) -> Path:
        return self.path / "themes.json"

    def write_themes(self, by_group: dict[tuple[str, str], list[Any]],
                     settings: dict[str, Any]) -> None:
        """themes.json: each (corpus, framing) group's themes (themes.py), strongest first."""
        doc = {"settings": settings,
               "groups": [{"corpus": c, "framing": f, "themes": [t.to_json() for t in ts]}
                          for (c, f), ts in by_group.items()]}
        write_atomic(self.themes_path, self.redactor.dumps(doc, indent=1) + "\n")

    def load_themes(self) -> dict[tuple[str, str], list[Any]] | None:
        """The themes the last ranking wrote (None when it wrote none: an earlier version)."""
        if not self.themes_path.exists():
            return None
        from .themes import Theme

        try:
            doc = json.loads(self.themes_path.read_text(encoding="utf-8"))
            return {(g["corpus"], g["framing"]): [Theme.from_json(t) for t in g["themes"]]
                    for g in doc["groups"]}
        except (ValueError, KeyError, TypeError) as e:
            raise ConfigError(f"{self.themes_path} is damaged ({e}); rank again with "
                              "blackbox-audit score RUN.") from e

    def load_ranked(self) -> list[RankedRow]:
        return [RankedRow.from_json(obj) for obj in read_jsonl(self.path / "ranked.jsonl")]

    def close(self) -> None:
        self._completions.close()
        for a in self._scores.values():
            a.close()


@dataclass(frozen=True)
class Run:
    """A run directory as read back: its manifest and its ranking, typed (the Python API's
    ``read_run``). Completions and scores stay on disk until asked for."""

    path: Path
    manifest: Manifest
    ranked: list[RankedRow]

    def completions(self) -> dict[str, Completion]:
        """Every row the target answered (the latest per prefill and framing)."""
        return RunDir(self.path).load_completions()

    def scores(self, reference: str | None = None) -> dict[str, Score]:
        """The reference's scores by row id (default: the reference of the latest scoring)."""
        name = reference or _latest_reference(self.manifest)
        if name is None:
            raise ConfigError(f"{self.path} has not been scored; run audit or score first.")
        return RunDir(self.path).load_scores(name)


def _latest_reference(m: Manifest) -> str | None:
    if m.rescoring and m.rescoring[-1].get("reference"):
        return m.rescoring[-1]["reference"]
    return (m.reference or {}).get("name")


def read_run(path: str | Path) -> Run:
    """Read a run directory (one this version or an earlier one wrote)."""
    run = RunDir(path)
    if not run.exists():
        raise ConfigError(f"{run.path} is not a run directory (no manifest.json or "
                          "completions.jsonl).")
    return Run(run.path, run.read_manifest(), run.load_ranked())
