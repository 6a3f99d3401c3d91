"""The fixture store: recorded exchanges, one JSON object per line (JSON, never pickle)."""

from __future__ import annotations

import difflib
import gzip
import json
import tempfile
import threading
import zlib
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from .. import fastjson
from ..compact import MARK, expand
from ..errors import FixtureError
from ..redact import Redactor
from .jsonl import SYNC, heal_torn_tail
from .keys import key_digest, request_key


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


class FixtureStore:
    """Recorded exchanges: one JSON object per line, optionally gzip-compressed.

    Reading tolerates a torn last line (a run killed mid-write). Writing appends each
    exchange and hands it to the operating system (``write`` + ``flush``) before its answer
    is handed back, so a paid answer survives the process being killed at any moment;
    ``fsync`` runs on a background thread (:data:`SYNC`), batched, so a power cut loses at
    most the last ~10 milliseconds and the event loop never waits on the disk. Only
    successful (2xx) exchanges are kept: an error is not an answer.

    Memory stays flat with run size: the file is indexed by byte offset and a record is read
    back only when replayed (a compressed fixture through a temporary plain copy).
    """

    def __init__(self, path: str | Path, redactor: Redactor | None = None,
                 writable: bool = True):
        self.path = Path(path)
        self.redactor = redactor or Redactor()
        self.writable = writable
        # digest -> (request key, the record's byte offset in the plain file)
        self._index: dict[str, tuple[str, int]] = {}
        self._lock = threading.Lock()
        self._fh: Any = None
        self._reader: Any = None
        self._load()

    def _load(self) -> None:
        """Index every record by its request key, streaming the file: memory holds the
        index (a key and a byte offset per record), never the records. A compressed fixture
        is first decompressed into an anonymous temporary file and indexed the same way (a
        packed 100,000-row exchange log is gigabytes as values)."""
        if not self.path.exists():
            return
        with self._lock:
            self._index_lines(self._open_reader())

    def _open_reader(self) -> Any:
        """The plain file records are read back from (held open until :meth:`close`)."""
        if self._reader is None:
            if self.path.suffix == ".gz":
                self._reader = self._decompressed_copy()
            else:
                try:
                    self._reader = open(self.path, "rb")  # noqa: SIM115 - closed in close()
                except OSError as e:
                    raise self._unreadable(e) from e
        self._reader.seek(0)
        return self._reader

    def _decompressed_copy(self) -> Any:
        """The compressed fixture, decompressed into an anonymous temporary file. A fixture
        that cannot be read is a :class:`FixtureError`; a temporary disk that cannot take the
        copy is an OSError naming that directory: the CLI's storage error (exit 7), as for any
        other full disk."""
        try:
            src = open(self.path, "rb")  # noqa: SIM115 - closed by the with below
        except OSError as e:
            raise self._unreadable(e) from e

        def chunk() -> bytes:
            try:
                return gz.read(1 << 20)
            except (OSError, EOFError, zlib.error) as e:
                raise self._unreadable(e) from e

        copy = tempfile.TemporaryFile()  # noqa: SIM115 - the store's reader, or closed here
        try:
            with src, gzip.GzipFile(fileobj=src, mode="rb") as gz:
                try:
                    for data in iter(chunk, b""):
                        copy.write(data)
                    copy.flush()
                except OSError as e:
                    raise OSError(e.errno, f"{e.strerror}; replaying {self.path.name} needs "
                                  "room for its decompressed copy there: point TMPDIR at a "
                                  "disk with room", tempfile.gettempdir()) from e
        except BaseException:
            copy.close()
            raise
        return copy

    def _unreadable(self, e: BaseException) -> FixtureError:
        return FixtureError(f"Cannot read fixture file {self.path}: {e}. It may be truncated "
                            "or not a fixture; record it again.")

    def _index_lines(self, fh: Any) -> None:
        offset, n, pending = 0, 0, None
        for line in fh:
            n += 1
            start, offset = offset, offset + len(line)
            if pending is not None:   # a bad line with more after it: not a torn tail
                raise pending
            if not line.strip():
                continue
            try:
                rec = fastjson.loads(line)
                key = request_key(rec["method"], rec["path"], _recorded_body(rec))
                rec["status"], rec["response"]  # noqa: B018 - presence check
            except (ValueError, KeyError, TypeError) as e:
                # the last line torn by an interrupted write is ignored; any other refuses
                pending = FixtureError(
                    f"Fixture file {self.path} line {n} is not a recorded exchange ({e}). "
                    "Fixtures are JSON lines with method, path, body, status and response; "
                    "fix or delete that line, or record the fixture again.")
                continue
            self._index[key_digest(key)] = (key, start)

    def __len__(self) -> int:
        return len(self._index)

    def get(self, key: str) -> dict[str, Any] | None:
        hit = self._index.get(key_digest(key))
        if hit is None:
            return None
        with self._lock:
            if self._fh is not None:
                self._fh.flush()
            reader = self._open_reader()
            reader.seek(hit[1])
            line = reader.readline()
        return expand(fastjson.loads(line))

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


def _recorded_body(rec: dict[str, Any]) -> Any:
    """The request body of a record as it was sent: a compact record (a packed run's log)
    may hold its body's object lists as columns. Only the body is expanded: the key needs
    nothing else, and expanding a 100-token answer costs fifty times more."""
    if MARK not in rec:
        return rec["body"]
    return expand({MARK: rec[MARK], "body": rec["body"]})["body"]


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
