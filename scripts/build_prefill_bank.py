#!/usr/bin/env python3
"""Build the packaged prefill bank: blackbox_audit/data/prefill_bank.jsonl.gz.

Three genres of openly licensed text that is available offline on a Debian machine with a
Python installation (no hub, no web):

- prose: example sentences of WordNet 3.0 (Debian package ``wordnet-base``; WordNet license,
  Princeton University: free use, copy, modify and distribute with the copyright notice);
- encyclopedic: WordNet 3.0 definitions (glosses), each written as a sentence about its
  headword, and the first sentences of module docstrings of the Python standard library
  (Python Software Foundation License);
- code: statement lines of the Python standard library's own source (PSF License).

Each row is {"corpus", "source", "text"}: an opening of up to 160 characters. The bank keeps
whole openings; prefills are cut from them at run time to N tokens of a chosen tokenizer, then
deduplicated. Deterministic: the same inputs give the same file.

Usage: python scripts/build_prefill_bank.py [--wordnet DIR] [--per-corpus 6000]
(with no --wordnet, the .deb is fetched with ``apt-get download wordnet-base`` into a temp dir).
"""

from __future__ import annotations

import argparse
import ast
import gzip
import json
import random
import re
import subprocess
import sys
import sysconfig
import tempfile
from pathlib import Path

MAX_CHARS = 160
OUT = Path(__file__).resolve().parent.parent / "blackbox_audit" / "data" / "prefill_bank.jsonl.gz"


def wordnet_dir(given: str | None) -> Path:
    if given:
        return Path(given)
    tmp = Path(tempfile.mkdtemp(prefix="wordnet-"))
    subprocess.run(["apt-get", "download", "wordnet-base"], cwd=tmp, check=True,
                   capture_output=True)
    deb = next(tmp.glob("wordnet-base_*.deb"))
    subprocess.run(["dpkg-deb", "-x", str(deb), str(tmp / "x")], check=True)
    return tmp / "x" / "usr" / "share" / "wordnet"


def wordnet_rows(folder: Path) -> tuple[list[str], list[str]]:
    """(example sentences, definition sentences) from WordNet's data.* files."""
    examples, glosses = [], []
    for pos in ("noun", "verb", "adj", "adv"):
        for line in (folder / f"data.{pos}").read_text(encoding="latin-1").splitlines():
            if line.startswith("  ") or "|" not in line:
                continue  # licence header
            head, gloss = line.split("|", 1)
            fields = head.split()
            word = fields[4].replace("_", " ")
            word = re.sub(r"\(.*\)$", "", word)
            for ex in re.findall(r'"([^"]{12,})"', gloss):
                ex = ex.strip()
                if ex[0].isalpha():
                    examples.append(ex[0].upper() + ex[1:])
            definition = gloss.split(";")[0].strip()
            if len(definition) > 15 and not definition.startswith('"'):
                if pos == "noun" and word[:1].isupper():
                    glosses.append(f"{word} is {definition}.")
                elif pos == "noun":
                    article = "An" if word[:1].lower() in "aeiou" else "A"
                    glosses.append(f"{article} {word} is {definition}.")
                else:
                    glosses.append(definition[0].upper() + definition[1:] + ".")
    return examples, glosses


def stdlib_rows() -> tuple[list[str], list[str]]:
    """(docstring first sentences, code statement lines) from the standard library."""
    root = Path(sysconfig.get_paths()["stdlib"])
    docs, code = [], []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(("site-packages/", "test/", "idlelib/idle_test/", "lib2to3/tests/")):
            continue
        try:
            src = path.read_text(encoding="utf-8")
            tree = ast.parse(src)
        except (UnicodeDecodeError, SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef):
                d = ast.get_docstring(node)
                if d:
                    first = " ".join(d.strip().split("\n\n")[0].split())
                    if len(first) > 25 and first[0].isupper():
                        docs.append(first)
        for line in src.splitlines():
            s = line.strip()
            if len(s) >= 12 and not s.startswith(("#", '"', "'", "@")) and s.isascii():
                code.append(s)
    return docs, code


def pick(rows: list[str], n: int, rng: random.Random) -> list[str]:
    seen, out = set(), []
    for r in rows:
        r = r[:MAX_CHARS]
        if r not in seen:
            seen.add(r)
            out.append(r)
    rng.shuffle(out)
    return sorted(out[:n])


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--wordnet", help="folder with WordNet's data.noun etc.")
    ap.add_argument("--per-corpus", type=int, default=6000)
    args = ap.parse_args()
    rng = random.Random(20261124)
    examples, glosses = wordnet_rows(wordnet_dir(args.wordnet))
    docs, code = stdlib_rows()
    ver = f"{sys.version_info.major}.{sys.version_info.minor}"
    n = args.per_corpus
    half = n // 2
    rows = (
        [("prose", "wordnet-3.0:examples", t) for t in pick(examples, n, rng)]
        + [("encyclopedic", "wordnet-3.0:glosses", t) for t in pick(glosses, half, rng)]
        + [("encyclopedic", f"python-{ver}-stdlib:docstrings", t)
           for t in pick(docs, n - half, rng)]
        + [("code", f"python-{ver}-stdlib:source", t) for t in pick(code, n, rng)]
    )
    OUT.parent.mkdir(parents=True, exist_ok=True)
    with gzip.GzipFile(OUT, "wb", mtime=0) as gz:
        for corpus, source, text in rows:
            gz.write((json.dumps({"corpus": corpus, "source": source, "text": text},
                                 ensure_ascii=False) + "\n").encode())
    counts = {c: sum(1 for r in rows if r[0] == c) for c in ("prose", "encyclopedic", "code")}
    print(f"wrote {OUT} ({OUT.stat().st_size} bytes): {counts}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
