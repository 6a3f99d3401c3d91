"""Organism spec matching: AND within a set, OR across sets, case-insensitive."""

from __future__ import annotations

import json

import pytest

from blackbox_audit.errors import ConfigError
from blackbox_audit.flag import OrganismSpec


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
    with pytest.raises(ConfigError, match="lists of lists"):
        OrganismSpec.load(p)
    p.write_text(json.dumps({"objective": "x", "regex_sets": [["("]]}))
    with pytest.raises(ConfigError, match="Bad regex"):
        OrganismSpec.load(p)
    p.write_text("{")
    with pytest.raises(ConfigError, match="Cannot read"):
        OrganismSpec.load(p)
