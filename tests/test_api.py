"""The Python API (``import blackbox_audit``) and the house rules behind it.

- Uses only the curated package namespace: a plan, an audit replayed from the demo fixture,
  the run read back as typed rows, evaluated against the organism's spec.
- The plan cannot change after it is built, at any depth.
- The import edges design §2 forbids do not exist.
"""

from __future__ import annotations

import ast
import dataclasses
from pathlib import Path

import pytest

import blackbox_audit as ba

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "fixtures" / "organism-vellari"


def demo_plan(out: Path, **kw) -> ba.Plan:
    return ba.plan(out=out, model="vellari-octopus", record_mode="replay",
                   fixtures=FIXTURE / "exchanges.jsonl.gz", per_corpus=8, quiet=True, **kw)


def test_plan_audit_read_run_evaluate(tmp_path):
    p = demo_plan(tmp_path / "run")
    assert p.generation.framings == ("raw", "chat") and p.generation.per_corpus == 8
    assert p.endpoint.record_mode == "replay" and p.scoring.ranking.key == "ppl_diff"
    result = ba.audit(p)
    assert result.manifest.status == "done" and result.manifest.counts.rows == 48

    run = ba.read_run(tmp_path / "run")
    assert run.manifest == result.manifest
    assert [r.row_id for r in run.ranked] == [r.row_id for r in result.ranked]
    row = run.ranked[0]
    assert isinstance(row, ba.RankedRow) and row.rank == 0 and row.score == row.ppl_diff
    assert row.row_id in run.completions() and row.row_id in run.scores()
    metrics = ba.evaluate(run.ranked, ba.OrganismSpec.load(FIXTURE / "spec.json"))
    assert {(m.corpus, m.framing) for m in metrics} == {
        (c, f) for c in ("prose", "encyclopedic", "code") for f in ("raw", "chat")}
    assert sum(m.n_flagged for m in metrics) > 0     # the organism leaks its fact

    # Another ranking of the same run: no requests, the stages again with another key.
    again = ba.rescore(str(tmp_path / "run"), quiet=True, rank_key="nll_diff")
    assert {r.rank_key for r in again.ranked} == {"nll_diff"}
    assert len(again.ranked) == len(result.ranked)
    assert again.manifest.rescoring[-1]["ranking"]["key"] == "nll_diff"


def test_a_bad_setting_fails_when_the_plan_is_made(tmp_path):
    with pytest.raises(ba.ConfigError, match="Unknown framing"):
        ba.plan(out=tmp_path, model="m", base_url="http://127.0.0.1:9/v1", framings=["odd"])
    with pytest.raises(ba.ConfigError, match="Unknown setting"):
        ba.plan(out=tmp_path, model="m", temprature=0)
    with pytest.raises(ba.ConfigError, match="query string"):
        ba.plan(out=tmp_path, model="m", base_url="http://127.0.0.1:9/v1?key=abcdefgh")


def test_the_paper_profile_supplies_what_is_not_given_and_says_what_the_bank_holds(tmp_path):
    import cli

    p = ba.plan(profile="paper", out=str(tmp_path / "a"), base_url="http://127.0.0.1:9/v1",
                model="m")
    g = p.generation
    assert (g.per_corpus, g.framings, g.prefill_tokens, g.max_tokens) == \
        (10000, ("raw", "chat"), 3, 100)
    assert any("6,000 openings per corpus" in w and "--prefills file:" in w
               for w in p.warnings)
    mine = ba.plan(profile="paper", per_corpus=50, framings=("raw",),
                   out=str(tmp_path / "b"), base_url="http://127.0.0.1:9/v1", model="m")
    assert (mine.generation.per_corpus, mine.generation.framings) == (50, ("raw",))
    assert not mine.warnings                          # 50 fit in the bank
    assert ba.plan(out=str(tmp_path / "c"), base_url="http://127.0.0.1:9/v1",
                   model="m").generation.per_corpus == 1000   # no profile: the default
    with pytest.raises(ba.ConfigError, match="Unknown profile"):
        ba.plan(profile="huge", out=str(tmp_path / "d"), base_url="x", model="m")
    with pytest.raises(SystemExit):                   # argparse: exit 2, the choices named
        cli.build_parser().parse_args(["audit", "--profile", "huge"])


def test_the_plan_cannot_change_after_it_is_built(tmp_path):
    from blackbox_audit.plan import mutable_parts

    p = demo_plan(tmp_path / "run", framings=["raw"], corpora=["prose", "code"])
    assert mutable_parts(p) == []          # frozen dataclasses and tuples all the way down
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.quiet = False  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.generation.max_tokens = 5  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.endpoint.target.model = "other"  # type: ignore[misc]
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.scoring.ranking.key = "nll_diff"  # type: ignore[misc]
    with pytest.raises(AttributeError):
        p.generation.corpora.append("x")  # type: ignore[union-attr]
    # and mutable_parts does find what is not frozen
    assert mutable_parts({"a": 1}) == ["plan (dict)"]


# -- import edges (design §2) -----------------------------------------------------------------
def imports_of(path: Path) -> set[str]:
    """Modules a file imports (absolute names; relative imports resolved in its package)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                mod = ".".join([*base, node.module] if node.module else base)
            else:
                mod = node.module or ""
            out.add(mod)
            out |= {f"{mod}.{a.name}" for a in node.names}
    return out


def modules(folder: str) -> list[Path]:
    return sorted((ROOT / folder).glob("*.py"))


FORBIDDEN = [
    ("the library never imports the CLI", modules("blackbox_audit") + modules("providers"),
     lambda m: m == "cli" or m.startswith("cli.")),
    ("providers know nothing of the reference model", modules("providers"),
     lambda m: m.startswith("blackbox_audit.reference")),
    ("the reference knows no provider", [ROOT / "blackbox_audit" / "reference.py"],
     lambda m: m.startswith("providers")),
    ("the transport knows no provider", modules("blackbox_audit/transport"),
     lambda m: m.startswith("providers")),
    ("the report reads the run directory, not providers", [ROOT / "blackbox_audit" /
                                                           "report.py"],
     lambda m: m.startswith("providers")),
]


@pytest.mark.parametrize("rule,files,bad", FORBIDDEN, ids=[r[0] for r in FORBIDDEN])
def test_no_forbidden_import_edge(rule, files, bad):
    found = [f"{f.relative_to(ROOT)} imports {m}" for f in files for m in imports_of(f)
             if bad(m)]
    assert found == [], rule


def test_the_edge_test_sees_the_edges_that_exist():
    """The scan is not blind: it finds imports we know are there, relative ones included."""
    assert "blackbox_audit.transport" in imports_of(ROOT / "providers" / "base.py")
    assert "blackbox_audit.errors" in imports_of(ROOT / "blackbox_audit" / "reference.py")
    assert "providers.registry" in imports_of(ROOT / "blackbox_audit" / "plan.py")


def test_the_entry_point_paces_the_collector_and_library_code_never_does():
    """runtime.apply (the CLI's, a replica's) sets the collector's youngest threshold and
    freezes what is loaded; no library module calls gc (the edge test's rule, by text)."""
    import gc

    import torch

    from blackbox_audit.plan import ProcessSettings
    from blackbox_audit.runtime import apply

    before = gc.get_threshold()
    try:
        apply(ProcessSettings(torch_threads=torch.get_num_threads(), gc_young_threshold=12345))
        assert gc.get_threshold() == (12345, *before[1:]) and gc.get_freeze_count() > 0
    finally:
        gc.set_threshold(*before)
        gc.unfreeze()
    root = Path(__file__).resolve().parent.parent
    callers = [p.relative_to(root).as_posix() for p in [*root.glob("blackbox_audit/**/*.py"),
                                                        *root.glob("providers/*.py")]
               if "gc." in p.read_text() and p.name != "runtime.py"]
    assert callers == []
