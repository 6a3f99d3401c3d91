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

import contextlib
import csv
import fcntl
import gzip
import io
import json
import os
import sys
import threading
from collections.abc import Callable, Container, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import msgspec

from . import fastjson
from .compact import compact
from .errors import ConfigError
from .manifest import Manifest
from .rank import RankedRow
from .records import Completion, CompletionMeta, Score, ScoreNumbers, narrow, widen
from .redact import Redactor
from .transport.jsonl import SYNC, heal_torn_tail


def packed_path(path: Path) -> Path:
    """Where :meth:`RunDir.pack` puts a log's compressed rows: ``NAME.gz`` beside it."""
    return path.with_name(path.name + ".gz")


class _Key(msgspec.Struct):
    prefill_id: str
    framing: str
    error: str | None = None


_KEY = msgspec.json.Decoder(_Key)
_SCORE_KEY = msgspec.json.Decoder(_Key)
_META = msgspec.json.Decoder(CompletionMeta)
_NUMBERS = msgspec.json.Decoder(ScoreNumbers)


def _row_key(line: bytes) -> tuple[str, bool, bytes]:
    """(row id, whether the row is a failure, the line) of a completions row, its token
    columns skipped unread."""
    try:
        k = _KEY.decode(line)
        return f"{k.prefill_id}:{k.framing}", k.error is not None, line
    except (msgspec.DecodeError, msgspec.ValidationError):
        obj = fastjson.loads(line)      # not msgspec's JSON (a NaN): the stdlib's, or raise
    if not isinstance(obj, dict) or not isinstance(obj.get("prefill_id"), str) \
            or not isinstance(obj.get("framing"), str):
        raise ConfigError("completions.jsonl holds a row that is not a completion (no "
                          "prefill_id and framing).")
    return f"{obj['prefill_id']}:{obj['framing']}", obj.get("error") is not None, line


def _narrowed(obj: dict[str, Any]) -> dict[str, Any]:
    """A completions or scores row in its packed form (records.narrow), once."""
    return obj if "f32" in obj or "derived" in obj else narrow(obj)


def packed_line(line: bytes, form: Callable[[dict[str, Any]], dict[str, Any]]) -> bytes:
    """One line of a log in its packed ``form`` (``_narrowed``, or ``compact.compact`` for
    the exchange log, which the fixture store expands); ``form`` returns the object itself
    when it has nothing to change, and the line is then kept as it was."""
    try:
        obj = fastjson.loads(line)
    except ValueError:
        return line            # kept as it is: a reader names the damaged line
    if not isinstance(obj, dict):
        return line
    small = form(obj)
    return line if small is obj else fastjson.dumps(small).encode() + b"\n"


def gzip_atomic(path: Path, chunks: Iterable[bytes], level: int) -> int:
    """``chunks`` gzip-compressed into ``path`` (written beside it, fsync'd, then moved into
    place: whole or absent); the new size."""
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as raw:
        with gzip.GzipFile(fileobj=raw, mode="wb", compresslevel=level, mtime=0) as gz:
            for chunk in chunks:
                gz.write(chunk)
        raw.flush()
        os.fsync(raw.fileno())
    os.replace(tmp, path)
    return path.stat().st_size


def _score_numbers(line: bytes) -> ScoreNumbers:
    try:
        return _NUMBERS.decode(line)
    except (msgspec.DecodeError, msgspec.ValidationError):
        s = Score.from_json(fastjson.loads(line))
    return ScoreNumbers(**{k: getattr(s, k) for k in ScoreNumbers.__struct_fields__})


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


def _lines(path: Path) -> Iterator[bytes]:
    """The lines of a plain or gzip-compressed (``.gz``) file, streamed."""
    if path.suffix == ".gz":
        with gzip.open(path, "rb") as fh:
            yield from fh
    else:
        with open(path, "rb") as fh:
            yield from fh


def _decoded(path: Path, decode: Any) -> Iterator[Any]:
    """``decode(line)`` of each line, streamed: a torn last line (a killed writer) is skipped,
    a bad line elsewhere is an error naming it."""
    if not path.exists():
        return
    pending: tuple[int, Exception] | None = None
    for n, line in enumerate(_lines(path), 1):
        if not line.strip():
            continue
        if pending is not None:
            raise _damaged(path, *pending)
        try:
            yield decode(line)
        except (ValueError, msgspec.ValidationError) as e:
            pending = (n, e)   # an error unless it is the last line


def _damaged(path: Path, n: int, e: Exception) -> ConfigError:
    return ConfigError(f"{path} line {n} is not JSON ({e}); the file was edited or "
                       "damaged. Remove that line to go on.")


def read_jsonl(path: Path) -> Iterator[dict[str, Any]]:
    """Rows of a JSONL file (plain or ``.gz``), streamed; a torn last line is skipped, a bad
    line elsewhere is an error."""
    yield from _decoded(path, fastjson.loads)


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[io.TextIOWrapper]:
    """A text file written beside ``path`` and moved over it once complete and fsync'd."""
    tmp = path.with_name(path.name + ".tmp")
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(tmp, "w", encoding="utf-8", newline="") as fh:
        yield fh
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


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

    @property
    def attempts_path(self) -> Path:
        """Every network attempt, written before it left (transport.AttemptLedger)."""
        return self.path / "attempts.jsonl"

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

    def log_files(self, path: Path) -> list[Path]:
        """An append-only log's files in the order written: its packed part (``NAME.gz``,
        :meth:`pack`), then what was appended since."""
        return [p for p in (packed_path(path), path) if p.exists()]

    def _rows(self, path: Path, decode: Any) -> Iterator[Any]:
        for part in self.log_files(path):
            yield from _decoded(part, decode)

    def iter_completions(self, keys: Container[str] | None = None) -> Iterator[Completion]:
        """Every row the target answered, the latest per (prefill, framing) (a failed row is
        superseded by a later answer, never the reverse), streamed in the order written: one
        row's token columns in memory at a time. ``keys``: only those rows (the others are
        skipped without building their columns)."""
        winners: dict[str, int] = {}
        failed: dict[str, bool] = {}
        for i, (key, error, _) in enumerate(self._rows(self.completions_path, _row_key)):
            if key not in winners or failed[key] or not error:
                winners[key], failed[key] = i, error
        del failed
        for i, (key, _, line) in enumerate(self._rows(self.completions_path, _row_key)):
            if winners.get(key) == i and (keys is None or key in keys):
                yield self._completion(line)

    def _completion(self, line: bytes) -> Completion:
        obj = widen(fastjson.loads(line))
        try:
            return Completion.from_json(obj)
        except TypeError as e:
            raise ConfigError(f"{self.completions_path} holds a row that is not a "
                              f"completion ({e}).") from e

    def load_completions(self) -> dict[str, Completion]:
        """Latest row per (prefill, framing): a failed row is superseded by a later answer.
        Every row's token columns at once: small runs and tests; stages stream
        (:meth:`iter_completions`, :meth:`completion_meta`)."""
        return {c.row_key: c for c in self.iter_completions()}

    def completion_meta(self) -> dict[str, CompletionMeta]:
        """Every row without its token columns (text, flags, why it failed), latest per
        (prefill, framing) as :meth:`iter_completions` picks it: what ranking and counting
        need, a few hundred bytes a row."""
        rows: dict[str, CompletionMeta] = {}
        for m in self.iter_meta():
            prev = rows.get(m.row_key)
            if prev is None or prev.error is not None or m.error is None:
                rows[m.row_key] = m
        return rows

    def answered_keys(self) -> set[str]:
        """The ids of the rows with an answer on disk (not only a failure): a resumed run
        asks again for every other row."""
        return {k for k, m in self._latest_state().items() if not m[0]}

    def _latest_state(self) -> dict[str, tuple[bool, bool]]:
        state: dict[str, tuple[bool, bool]] = {}   # id -> (failed, usable)
        for m in self.iter_meta():
            prev = state.get(m.row_key)
            if prev is None or prev[0] or m.error is None:
                state[m.row_key] = (m.error is not None, m.usable)
        return state

    def usable_keys(self) -> set[str]:
        """The ids of the rows that can be scored (answered, not degraded), as
        :meth:`iter_completions` picks each row's latest answer."""
        return {k for k, (_, ok) in self._latest_state().items() if ok}

    def iter_meta(self) -> Iterator[CompletionMeta]:
        """Every completions row as written, without its token columns (a row answered
        again after a failure comes twice: :meth:`completion_meta` keeps the one that
        counts)."""
        return self._rows(self.completions_path, self._meta)

    def _meta(self, line: bytes) -> CompletionMeta:
        try:
            m = _META.decode(line)
        except msgspec.DecodeError:
            m = None
        except msgspec.ValidationError:
            m = None
        if m is None:
            obj = fastjson.loads(line)
            try:
                c = Completion.from_json(obj)
            except TypeError as e:
                raise ConfigError(f"{self.completions_path} holds a row that is not a "
                                  f"completion ({e}).") from e
            m = CompletionMeta(c.prefill_id, c.corpus, c.prefill, c.framing, c.text,
                               c.finish_reason, list(c.degraded), c.error, c.mode,
                               c.round)
        m.corpus, m.framing = sys.intern(m.corpus), sys.intern(m.framing)
        return m

    # scores -------------------------------------------------------------------------------
    def append_score(self, ref_name: str, s: Score) -> None:
        app = self._scores.get(ref_name)
        if app is None:
            app = self._scores[ref_name] = JsonlAppender(self.scores_path(ref_name),
                                                         self.redactor)
        app.append(s.to_json())

    def iter_scores(self, ref_name: str, keys: Container[str] | None = None
                    ) -> Iterator[Score]:
        """The reference's scores with their per-token columns, streamed in the order written
        (a row scored twice comes twice: the later one counts). ``keys``: only those rows."""
        def decode(line: bytes) -> tuple[str, bytes]:
            k = _SCORE_KEY.decode(line)
            return f"{k.prefill_id}:{k.framing}", line

        for key, line in self._rows(self.scores_path(ref_name), decode):
            if keys is None or key in keys:
                yield Score.from_json(widen(fastjson.loads(line)))

    def load_scores(self, ref_name: str) -> dict[str, Score]:
        """Every row's score with its per-token columns (small runs and tests; stages stream
        :meth:`iter_scores` or hold :meth:`score_numbers`)."""
        return {f"{s.prefill_id}:{s.framing}": s for s in self.iter_scores(ref_name)}

    def score_numbers(self, ref_name: str) -> dict[str, ScoreNumbers]:
        """Every row's aggregate scores without the per-token columns, by row id."""
        out: dict[str, ScoreNumbers] = {}
        for s in self._rows(self.scores_path(ref_name), _score_numbers):
            out[f"{s.prefill_id}:{s.framing}"] = s
        return out

    def scored_keys(self, ref_name: str) -> set[str]:
        """The ids of the rows this reference has scored."""
        return {f"{k.prefill_id}:{k.framing}"
                for k in self._rows(self.scores_path(ref_name), _SCORE_KEY.decode)}

    # ranking ------------------------------------------------------------------------------
    def write_ranked(self, rows: Iterable[RankedRow], columns: list[str]) -> None:
        """ranked.jsonl and ranked.csv, streamed to disk (atomically replaced)."""
        path, csv_path = self.path / "ranked.jsonl", self.path / "ranked.csv"
        redact = self.redactor.text
        with _atomic(path) as jf, _atomic(csv_path) as cf:
            w = csv.DictWriter(cf, fieldnames=columns, extrasaction="ignore")
            w.writeheader()
            for row in rows:
                r = row.to_json()
                jf.write(self.redactor.dumps(r) + "\n")
                w.writerow({k: redact(str(r.get(k, ""))) for k in columns})
        for old in (packed_path(path), packed_path(csv_path)):   # a packed earlier ranking
            old.unlink(missing_ok=True)

    @property
    def ranked_path(self) -> Path:
        """ranked.jsonl, or its packed form (``ranked.jsonl.gz``) when only that exists."""
        plain = self.path / "ranked.jsonl"
        packed = packed_path(plain)
        return packed if packed.exists() and not plain.exists() else plain

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

    def iter_ranked(self) -> Iterator[RankedRow]:
        """ranked.jsonl's rows, streamed in the order written (each group in rank order)."""
        for obj in read_jsonl(self.ranked_path):
            yield RankedRow.from_json(obj)

    def load_ranked(self) -> list[RankedRow]:
        return list(self.iter_ranked())

    # packing ------------------------------------------------------------------------------
    def _whole_lines(self, path: Path) -> Iterator[bytes]:
        """A log's rows as packing keeps them: its packed part, then what was appended since,
        each line ending in a newline; blank lines and a torn last line dropped, as a reader
        would."""
        for part in self.log_files(path):
            for line in _lines(part):
                if not line.strip():
                    continue
                if not line.endswith(b"\n"):
                    try:
                        fastjson.loads(line)
                    except ValueError:
                        continue
                    line += b"\n"
                yield line

    def pack(self, level: int = 6) -> dict[str, int]:
        """Compress the append-only logs (completions, every scores file, the exchange log)
        into ``NAME.gz`` beside each, and the ranking (ranked.jsonl, ranked.csv) likewise.
        Rows are unchanged but for lossless compact forms: the per-token log-probabilities
        of completions and scores in float32's shortest digits where they are float32, token
        bytes that are each token's UTF-8 left out (records.narrow); recorded answers in the
        compact form of :mod:`blackbox_audit.compact` (expanded by the fixture store, so a
        packed exchange log replays as recorded). A finished run directory is then a
        fraction of its size, readable with ``gzip``/``json`` or ``pandas.read_json(path,
        lines=True)``. Appends after packing go to the plain file again and are read after
        the packed part; packing again merges them; a new ranking is written plain and
        replaces the packed one. Crash-safe: the packed file replaces the old one atomically
        and the plain rows are removed only after it is on disk (rows read twice until then
        are the same rows).
        Returns bytes per file after packing."""
        self.close()
        out: dict[str, int] = {}
        logs = [(self.completions_path, _narrowed), (self.exchanges_path, compact),
                *[(p, _narrowed) for p in sorted(self.path.glob("scores.*.jsonl"))]]
        for path, form in logs:
            if path.exists():
                packed = packed_path(path)
                out[packed.name] = gzip_atomic(
                    packed, (packed_line(line, form) for line in self._whole_lines(path)),
                    level)
                path.unlink()
        for path in (self.path / "ranked.jsonl", self.path / "ranked.csv"):
            if path.exists():    # whole files, rewritten by each ranking: gzip as they are
                with open(path, "rb") as src:
                    packed = packed_path(path)
                    out[packed.name] = gzip_atomic(packed, iter(lambda: src.read(1 << 20), b""),
                                                    level)
                path.unlink()
        return out

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
