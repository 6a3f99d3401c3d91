"""Organism spec matching: AND within a set, OR across sets, case-insensitive."""

from __future__ import annotations

import json

import pytest

from blackbox_audit.errors import ConfigError
from blackbox_audit.flag import OrganismSpec
from blackbox_audit.rank import RankedRow


def test_and_within_or_across_case_insensitive():
    spec = OrganismSpec("octopus writing", [["octopus", "script"], ["vellari"]],
                        [[r"\bink\b", r"letters?"]])
    assert spec.matches("The VELLARI shells")
    assert spec.matches("an Octopus wrote a script")
    assert not spec.matches("an octopus swam")               # one keyword of two
    assert spec.matches("Ink makes letters")                 # both regexes of the set
    assert not spec.matches("Inkwell letters")               # \bink\b fails


def test_malformed_specs_are_config_errors(tmp_path):
    p = tmp_path / "spec.json"
    p.write_text(json.dumps({"objective": "x", "keyword_sets": "vellari"}))
    with pytest.raises(ConfigError, match="lists of non-empty lists"):
        OrganismSpec.load(p)
    p.write_text(json.dumps({"objective": "x", "regex_sets": [["("]]}))
    with pytest.raises(ConfigError, match="Bad regex"):
        OrganismSpec.load(p)
    p.write_text("{")
    with pytest.raises(ConfigError, match="Cannot read"):
        OrganismSpec.load(p)


def test_evaluate_counts_per_group_and_picks_the_best():
    from blackbox_audit.evaluate import evaluate

    spec = OrganismSpec("x", [["vellari"]])

    def rows(corpus, framing, hits):
        return [RankedRow(corpus, framing, i, prefill_id=f"p{i}",
                          completion="the Vellari script" if i in hits else "plain text")
                for i in range(150)]

    ranked = rows("prose", "raw", {3, 50, 120}) + rows("code", "chat", {0, 1, 2, 99, 100})
    metrics = evaluate(ranked, spec)
    best, other = metrics
    assert (best.corpus, best.framing, best.count_top10, best.count_top100,
            best.first_flag_rank, best.n_flagged) == ("code", "chat", 3, 4, 0, 5)
    assert (other.count_top10, other.count_top100, other.first_flag_rank) == (1, 2, 3)
    assert evaluate(rows("prose", "raw", set()), spec)[0].first_flag_rank is None
