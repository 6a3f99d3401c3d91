#!/usr/bin/env python3
"""Rewrite recorded exchange logs (``*.jsonl.gz``) in the compact form the fixture store reads.

The same lossless form ``blackbox-audit pack`` gives a run directory's exchange log
(:mod:`blackbox_audit.compact`: token bytes that are the token's UTF-8 left out, float32
log-probabilities in their shortest digits, same-keyed object lists as columns). Each record
is checked to expand back to exactly what was recorded before the file is replaced, so a
replay of the rewritten file sends and answers the same. Why: the fixtures' 20 MB budget;
recordings made before the compact form existed take about twice the room.

    .venv/bin/python scripts/compact_fixture.py fixtures/zoo-*/exchanges.jsonl.gz
"""

from __future__ import annotations

import argparse
import gzip
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from blackbox_audit import fastjson  # noqa: E402
from blackbox_audit.compact import compact, expand  # noqa: E402
from blackbox_audit.rundir import gzip_atomic, packed_line  # noqa: E402


def compact_file(path: Path) -> tuple[int, int]:
    """Rewrite ``path`` in place, as ``pack`` writes an exchange log (atomically, gzip -9);
    its size before and after."""
    def checked_lines():
        with gzip.open(path, "rb") as src:
            for n, line in enumerate(src, 1):
                small = packed_line(line, compact)
                if expand(fastjson.loads(small)) != expand(fastjson.loads(line)):
                    raise SystemExit(f"{path}:{n}: the compact form does not expand back to "
                                     "the record; nothing was replaced")
                yield small

    before = path.stat().st_size
    return before, gzip_atomic(path, checked_lines(), 9)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("files", nargs="+", type=Path)
    for path in ap.parse_args().files:
        before, after = compact_file(path)
        print(f"{path}: {before / 1e6:.2f} MB -> {after / 1e6:.2f} MB")


if __name__ == "__main__":
    main()
