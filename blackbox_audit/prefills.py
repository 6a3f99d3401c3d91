"""Prefill sources: short document openings for the target to continue.

Sources:
- ``builtin``: the bank shipped in the package (prose, encyclopedic, code; 6,000 openings
  each; provenance in docs/prefill-bank.md, built by scripts/build_prefill_bank.py);
- ``file:PATH``: a text file (one document per line) or JSONL (``{"text": ..., "corpus": ...}``
  per line; corpus defaults to the file's stem);
- ``hf:DATASET[:CONFIG]:SPLIT[:FIELD]``: Hugging Face ``datasets`` streaming (optional extra
  ``blackbox-audit[hf]``; needs network).

Openings are cut at run time to the first N tokens of a tokenizer (default: the reference's)
and deduplicated after cutting: "The cat sat" and "The cat sat down" are one prefill.
Selection is a seeded shuffle, so a smaller run is a random sample of a larger one.
"""

from __future__ import annotations

import gzip
import json
import random
from collections.abc import Callable, Iterable, Iterator
from functools import lru_cache
from importlib import resources
from pathlib import Path

from .errors import ConfigError
from .records import Prefill

BUILTIN_CORPORA = ("prose", "encyclopedic", "code")


def builtin_documents() -> Iterator[tuple[str, str]]:
    data = resources.files("blackbox_audit").joinpath("data/prefill_bank.jsonl.gz")
    with data.open("rb") as raw, gzip.open(raw, "rt", encoding="utf-8") as fh:
        for line in fh:
            row = json.loads(line)
            yield row["corpus"], row["text"]


@lru_cache(maxsize=1)
def builtin_sizes() -> dict[str, int]:
    """Openings per corpus in the built-in bank (before cutting and deduplication)."""
    sizes: dict[str, int] = {}
    for corpus, _ in builtin_documents():
        sizes[corpus] = sizes.get(corpus, 0) + 1
    return sizes


def file_documents(path: Path) -> Iterator[tuple[str, str]]:
    if not path.is_file():
        raise ConfigError(f"Prefill file {path} does not exist.")
    corpus = path.stem
    is_jsonl = path.suffix in (".jsonl", ".json")
    n = 0
    try:
        with open(path, encoding="utf-8") as fh:
            for n, line in enumerate(fh, 1):  # noqa: B007 - n names the line of an error
                if not line.strip():
                    continue
                if not is_jsonl:
                    yield corpus, line.rstrip("\n")
                    continue
                try:
                    row = json.loads(line)
                    text = row["text"]
                except (ValueError, KeyError, TypeError) as e:
                    raise ConfigError(f"{path} line {n} is not a JSON object with a \"text\" "
                                      f"field ({e}).") from e
                if not isinstance(text, str) or not text.strip():
                    raise ConfigError(
                        f"{path} line {n}: \"text\" is {json.dumps(text)[:40]}, not a "
                        "non-empty string. Fix or remove that line; nothing was sent.")
                label = row.get("corpus")
                if label is not None and not isinstance(label, str):
                    raise ConfigError(f"{path} line {n}: \"corpus\" must be a string.")
                yield label or corpus, text
    except UnicodeDecodeError as e:
        raise ConfigError(f"{path} is not UTF-8 text (line {n + 1}, byte {e.start}: "
                          f"{e.reason}). Convert it to UTF-8; nothing was sent.") from None
    except OSError as e:
        raise ConfigError(f"Cannot read prefill file {path}: {e.strerror or e}.") from None


def hf_documents(spec: str) -> Iterator[tuple[str, str]]:
    parts = spec.split(":")
    if len(parts) < 2:
        raise ConfigError(f"hf: source {spec!r} must be DATASET[:CONFIG]:SPLIT[:FIELD], e.g. "
                          "hf:allenai/c4:en:validation:text.")
    field = "text"
    if len(parts) == 4:
        name, config, split, field = parts
    elif len(parts) == 3:
        name, config, split = parts
    else:
        (name, split), config = parts, None
    try:
        import datasets
    except ImportError as e:
        raise ConfigError("hf: prefill sources need the optional datasets package: "
                          "pip install 'blackbox-audit[hf]'.") from e
    try:
        ds = datasets.load_dataset(name, config, split=split, streaming=True)
        corpus = name.split("/")[-1]
        for row in ds:
            yield corpus, str(row[field])
    except Exception as e:  # noqa: BLE001 - datasets raises many kinds; all mean "unavailable"
        raise ConfigError(f"Cannot stream {name!r} from the Hugging Face hub ({type(e).__name__}: "
                          f"{str(e)[:200]}). hf: sources need network access; offline, export "
                          "the documents to a file and use file:PATH.") from e


def documents(source: str) -> Iterator[tuple[str, str]]:
    if source == "builtin":
        return builtin_documents()
    if source.startswith("file:"):
        return file_documents(Path(source[5:]).expanduser())
    if source.startswith("hf:"):
        return hf_documents(source[3:])
    raise ConfigError(f"Unknown prefill source {source!r}: use builtin, file:PATH or "
                      "hf:DATASET[:CONFIG]:SPLIT[:FIELD].")


def make_cutter(encode: Callable[[str], list[int]],
                decode: Callable[[list[int]], str]) -> Callable[[str, int], str | None]:
    """Cut a text to its first n tokens; None when it is shorter, or when the cut splits a
    character or does not give back a prefix of the text (normalising tokenizers)."""

    def cut(text: str, n: int) -> str | None:
        ids = encode(text)
        if len(ids) < n:
            return None
        out = decode(ids[:n])
        if not out.strip() or not text.startswith(out) or "\ufffd" in out:
            return None
        return out
    return cut


def select_prefills(docs: Iterable[tuple[str, str]], cut: Callable[[str, int], str | None],
                    n_tokens: int, per_corpus: int | None, seed: int,
                    corpora: Iterable[str] | None = None,
                    hf_limit: int = 50_000) -> list[Prefill]:
    """Seeded sample of up to ``per_corpus`` distinct cut prefills from each corpus."""
    if n_tokens < 1:
        raise ConfigError("--prefill-tokens must be at least 1.")
    wanted = set(corpora) if corpora else None
    by_corpus: dict[str, list[str]] = {}
    for i, (corpus, text) in enumerate(docs):
        if i >= hf_limit * 10:
            break
        if wanted is None or corpus in wanted:
            by_corpus.setdefault(corpus, []).append(text)
    if wanted and (missing := wanted - set(by_corpus)):
        raise ConfigError(f"No documents for corpus {', '.join(sorted(missing))}; this source "
                          f"has: {', '.join(sorted(by_corpus)) or 'none'}.")
    out: list[Prefill] = []
    for corpus in sorted(by_corpus):
        texts = by_corpus[corpus]
        random.Random(f"{seed}:{corpus}").shuffle(texts)
        seen: set[str] = set()
        for text in texts:
            p = cut(text, n_tokens)
            if p is None or p in seen:
                continue
            seen.add(p)
            out.append(Prefill.make(corpus, p))
            if per_corpus is not None and len(seen) >= per_corpus:
                break
    if not out:
        raise ConfigError("No prefills: every document was shorter than --prefill-tokens.")
    return out
