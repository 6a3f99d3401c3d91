"""The committed recordings: within budget, each with its provenance, spec and settings.

docs/results.md is regenerated from these by scripts/zoo_results.py; this test keeps what
that command needs in place (a spec that loads, the recording's generation settings) and the
project's limit on test data (20 MB in all).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from blackbox_audit.flag import OrganismSpec

FIXTURES = Path(__file__).resolve().parent.parent / "fixtures"
RECORDINGS = sorted(p for p in FIXTURES.iterdir() if (p / "exchanges.jsonl.gz").exists())
ZOO = [p for p in RECORDINGS if p.name.startswith("zoo-") or p.name == "organism-vellari"]


def test_fixtures_stay_under_20_mb():
    total = sum(f.stat().st_size for f in FIXTURES.rglob("*") if f.is_file())
    assert total < 20 * 2**20, f"fixtures/ holds {total / 2**20:.1f} MB"


@pytest.mark.parametrize("folder", RECORDINGS, ids=lambda p: p.name)
def test_each_recording_says_where_it_came_from(folder):
    readme = (folder / "README.md").read_text()
    assert "2026-11-" in readme and "ecorded" in readme  # when, and from what
    gen = json.loads((folder / "recording-manifest.json").read_text())["generation"]
    assert {"model", "framings", "per_corpus", "max_tokens", "top_logprobs"} <= set(gen)


def test_the_zoo_covers_the_four_classes():
    names = {p.name for p in ZOO}
    assert {"organism-vellari", "zoo-phrase", "zoo-backdoor", "zoo-persona"} <= names


@pytest.mark.parametrize("folder", ZOO, ids=lambda p: p.name)
def test_each_organism_has_a_spec_that_loads(folder):
    spec = OrganismSpec.load(folder / "spec.json")
    assert spec.objective and (spec.keyword_sets or spec.regex_sets)
