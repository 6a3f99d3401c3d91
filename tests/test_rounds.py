"""--rounds 2: a second round of prefills derived from round one's ranking (rounds.py).

The derivation is tested as the pure function it is (hand-made rankings, a word cutter);
the stages through the real HTTP path against tests/fake_server.py on 127.0.0.1 (it counts
every request body it receives) with the packaged SmolLM2 as the reference: budget, dedup,
rounds marked, both rounds ranked, a rerun that sends nothing, a kill -9 in round two that
resumes without asking twice, the CLI end to end with a spec (which changes nothing), and
bad values refused with one paragraph.
"""

from __future__ import annotations

import ast
import inspect
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_server import FakeOpenAIServer

import cli
from blackbox_audit import audit, plan
from blackbox_audit.rank import RankedRow
from blackbox_audit.records import Completion, Prefill
from blackbox_audit.report import render
from blackbox_audit.rounds import budget_prefills, derive, load, save
from blackbox_audit.rundir import RunDir
from blackbox_audit.themes import Theme

ROOT = Path(__file__).resolve().parent.parent


def words(text: str, n: int) -> str | None:
    """A cutter by words (the real one counts tokenizer tokens): the first n words, or None."""
    ws = text.split()
    return " ".join(ws[:n]) if len(ws) >= n else None


def row(corpus: str, framing: str, rank: int, completion: str, round_no: int = 1,
        pid: str | None = None) -> RankedRow:
    return RankedRow(corpus, framing, rank, prefill_id=pid or f"{corpus[0]}{framing[0]}{rank}",
                     prefill="Once upon a", completion=completion, nll_diff=1.0 - rank / 100,
                     round=round_no)


# -- the derivation, a pure function ---------------------------------------------------------
def test_derivation_takes_turns_dedups_and_reads_round_one_alone():
    ranked = [
        row("code", "raw", 0, " def vellari(x): return x. Then it ends."),
        row("code", "raw", 1, " def vellari(x): return x. Then it ends."),   # the same text
        row("code", "raw", 2, " import os as o"),
        row("code", "raw", 3, " print the round one prefill again"),
        row("prose", "raw", 0, " Octopuses write in script. Scholars read it. Done for now."),
        row("prose", "raw", 1, " The Lisbon Marine Institute said so."),
        row("prose", "raw", 2, " def vellari(x): return x."),  # as code's top: taken once
        row("prose", "raw", 3, " Round two rows are never read", round_no=2),
    ]
    taken = {"print the round"}          # a round-one prefill: never asked again
    out = derive(ranked, None, taken, words, 3, budget=100, top=10)
    texts = [d.prefill.text for d in out]
    assert len(texts) == len(set(texts)) and "print the round" not in texts
    assert "Round two rows" not in texts
    # groups take turns: code, prose, code, prose ... (sorted), openings before sentences
    assert [d.group[0] for d in out[:4]] == ["code", "prose", "code", "prose"]
    assert [(d.source, d.prefill.text) for d in out if d.group[0] == "code"] == [
        ("opening", "def vellari(x): return"), ("opening", "import os as"),
        ("sentence", "Then it ends.")]
    assert [(d.source, d.prefill.text) for d in out if d.group[0] == "prose"] == [
        ("opening", "Octopuses write in"), ("opening", "The Lisbon Marine"),
        ("sentence", "Scholars read it."), ("sentence", "Done for now.")]
    for d in out:                       # each keeps its group's corpus; ids hash the text
        assert d.prefill == Prefill.make(d.group[0], d.prefill.text)
        assert d.from_row.endswith(":raw")
    # the budget caps it, and the cap still goes round the groups
    capped = derive(ranked, None, taken, words, 3, budget=3, top=10)
    assert capped == out[:3]
    assert derive(ranked, None, taken, words, 3, budget=0) == []
    # top: only the first K distinct rows are read (the duplicate does not count)
    assert [d.prefill.text for d in derive(ranked, None, taken, words, 3, 100, top=1)
            if d.group[0] == "code"] == ["def vellari(x): return", "Then it ends."]
    assert derive(list(reversed(ranked)), None, taken, words, 3, 100) == out  # order-free


def test_themes_come_first_anchored_where_the_phrase_occurs_in_the_example_row():
    ranked = [row("prose", "chat", i, f" Filler words number {i}. Then more.") for i in range(5)]
    ranked.append(row("prose", "chat", 5, " It is said the Vellari Script, long lost, is read."))
    theme = Theme(phrase="vellari script", score=5.0, top_rows=3, rows=3, top=10, total=20,
                  examples=(ranked[5].row_id,))
    out = derive(ranked, {("prose", "chat"): [theme]}, set(), words, 3, budget=2)
    assert (out[0].source, out[0].prefill.text, out[0].theme) == \
        ("theme", "Vellari Script, long", "vellari script")
    assert out[1].source == "opening"


def test_the_derivation_never_receives_a_spec():
    """What round two asks is a function of the ranking alone: no parameter can carry an
    organism spec, and neither rounds.py nor the audit stages import the flagging code."""
    import importlib

    from blackbox_audit import rounds

    stages = importlib.import_module("blackbox_audit.audit")   # the module, not the function

    assert list(inspect.signature(derive).parameters) == [
        "ranked", "themes", "taken", "cut", "n_tokens", "budget", "top"]
    for module in (rounds, stages):
        tree = ast.parse(Path(module.__file__).read_text())
        names = {n.module or "" for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        names |= {a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        assert not {m for m in names if m.split(".")[-1] in ("flag", "evaluate")}, module


def test_budget_and_the_file_round_trip(tmp_path):
    assert budget_prefills(1200, 2, 0.5) == 300
    assert budget_prefills(12, 2, 0.5) == 3 and budget_prefills(10, 2, 0.3) == 1
    out = derive([row("code", "raw", 0, " a b c. d e f.")], None, set(), words, 3, 5)
    save(tmp_path / "r2.jsonl", out, lambda s: s)
    assert load(tmp_path / "r2.jsonl") == out
    (tmp_path / "r2.jsonl").write_text('{"id": "x"}\n')
    with pytest.raises(Exception, match="damaged"):
        load(tmp_path / "r2.jsonl")


def test_rows_written_before_rounds_read_as_round_one(tmp_path):
    old = {"prefill_id": "p", "corpus": "prose", "prefill": "A", "framing": "raw", "text": " b"}
    assert Completion.from_json(old).round == 1
    assert RankedRow.from_json({"corpus": "prose", "framing": "raw", "rank": 0}).round == 1
    run = RunDir(tmp_path)
    run.completions_path.write_text(json.dumps(old) + "\n")
    assert run.completion_meta()["p:raw"].round == 1


# -- the stages, through the real HTTP path ----------------------------------------------------
def config(server, out, **kw):
    base = dict(out=str(out), base_url=server.base_url if server else None, model="fake-model",
                corpora=["prose", "code"], per_corpus=3, max_tokens=12, quiet=True,
                concurrency=4, rounds=2)
    base.update(kw)
    return plan(**base)


def rows_of(out: Path, name: str = "completions.jsonl") -> list[dict]:
    return [json.loads(x) for x in (out / name).read_text().splitlines()]


def generations(server: FakeOpenAIServer) -> dict[str, int]:
    return {k: n for k, n in server.counts.items() if json.loads(k).get("max_tokens", 0) > 2}


def test_two_rounds_within_the_budget_ranked_together_and_a_rerun_sends_nothing(
        tmp_path, capfd):
    out = tmp_path / "run"
    with FakeOpenAIServer() as server:
        result = audit(config(server, out, round2_budget=0.5))
        sent = dict(server.counts)
        m = result.manifest
        # round one: 2 corpora x 3 prefills x 2 framings = 12 rows; a budget of 6 rows more
        assert m.rounds["round_one_rows"] == 12 and m.rounds["budget_rows"] == 6
        assert m.rounds["budget_prefills"] == 3 and m.rounds["derived"] == 3
        assert m.config["rounds"] == 2 and m.config["round2_budget"] == 0.5
        rows = rows_of(out)
        assert len(rows) == 18 and sum(r["round"] == 2 for r in rows) == 6
        first = {r["prefill"] for r in rows if r["round"] == 1}
        second = {r["prefill"] for r in rows if r["round"] == 2}
        derived = [json.loads(x) for x in (out / "round2-prefills.jsonl").read_text()
                   .splitlines()]
        assert second == {d["text"] for d in derived} and not first & second
        for d in derived:     # each is the opening of a round-one row it names
            src = next(r for r in rows if f"{r['prefill_id']}:{r['framing']}" == d["from_row"])
            assert src["round"] == 1 and src["text"].lstrip().startswith(d["text"])
        assert len(generations(server)) == 18   # each generation sent once
        assert all(n == 1 for n in generations(server).values())
        # both rounds in one ranking per (corpus, framing), every row marked
        ranked = rows_of(out, "ranked.jsonl")
        assert len(ranked) == 18 and {r["round"] for r in ranked} == {1, 2}
        by_group: dict = {}
        for r in ranked:
            by_group.setdefault((r["corpus"], r["framing"]), []).append(r["rank"])
        assert all(sorted(v) == list(range(len(v))) for v in by_group.values())
        assert (out / "ranked.csv").read_text().splitlines()[0].split(",")[3] == "round"
        assert [s.get("round", 1) for s in m.sessions] == [1, 2]
        # each scoring pass in the manifest: round two's, round one's kept beside it
        assert m.scoring["scored_now"] == 6 and m.scoring["scored_before"] == 12
        assert m.scoring["round_one"]["scored_now"] == 12
        # the report marks round two's rows, shown whole or carried as numbers only
        render(out, text_rows=1)
        page = re.search(r'id="report-data">(.*?)</script>',
                         (out / "report.html").read_text(), re.S)
        data = json.loads(page.group(1))
        whole = {r["id"]: r.get("round", 1) for r in data["rows"]}
        lite = data["lite"]
        as_numbers = {i: lite["round"].get(str(k), 1) for k, i in enumerate(lite["id"])}
        assert whole and as_numbers and not whole.keys() & as_numbers.keys()
        assert {**whole, **as_numbers} == {f"{r['prefill_id']}:{r['framing']}": r["round"]
                                           for r in ranked}

        # A rerun of the finished audit: nothing sent, nothing written twice.
        again = audit(config(server, out, round2_budget=0.5))
        assert server.counts == sent
        assert len(rows_of(out)) == 18 and again.manifest.rounds == m.rounds
        # ... and one with another budget is refused before anything is sent
        with pytest.raises(Exception, match="round2_budget"):
            audit(config(server, out, round2_budget=0.25))
        assert server.counts == sent

        # The CLI, end to end against the same server, with a spec that flags every row:
        # the same round two (the spec is for showing, never for choosing).
        spec = tmp_path / "spec.json"
        spec.write_text(json.dumps({"objective": "x", "keyword_sets": [["the"], ["a"]]}))
        code = cli.main(["audit", "--base-url", server.base_url, "--model", "fake-model",
                         "--corpora", "prose,code", "--per-corpus", "3", "--max-tokens", "12",
                         "--rounds", "2", "--round2-budget", "0.5", "--spec", str(spec),
                         "--quiet", "--no-report", "--out", str(tmp_path / "cli")])
        stdout, stderr = capfd.readouterr()
    assert code == 0, stderr
    assert (tmp_path / "cli" / "round2-prefills.jsonl").read_text() == \
        (out / "round2-prefills.jsonl").read_text()
    assert " r2 [" in stdout            # round two's rows marked in the top lists


def test_kill_9_in_round_two_then_resume_sends_nothing_twice_and_loses_nothing(tmp_path):
    out = tmp_path / "run"
    args = [sys.executable, "-m", "cli", "audit", "--model", "fake-model", "--out", str(out),
            "--corpora", "prose,code", "--per-corpus", "4", "--max-tokens", "12",
            "--concurrency", "1", "--rounds", "2", "--round2-budget", "1", "--quiet",
            "--no-report"]
    completions = out / "completions.jsonl"
    with FakeOpenAIServer(delay=0.25) as server:
        args += ["--base-url", server.base_url]
        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline and proc.poll() is None:
            if completions.exists() and completions.read_text().count("\n") >= 16 + 3:
                break          # round one's 16 rows and 3 of round two's on disk
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        _, err = proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL, err
        assert (out / "round2-prefills.jsonl").exists()
        derived = (out / "round2-prefills.jsonl").read_text()
        rows_before = completions.read_text().count("\n")
        assert 19 <= rows_before < 32
        answered = [json.loads(x) for x in (out / "exchanges.jsonl").read_text().splitlines()
                    if x.endswith("}")]
        on_disk = {json.dumps(a["body"], sort_keys=True) for a in answered if a["body"]}
        before = dict(server.counts)

        proc = subprocess.Popen(args, cwd=ROOT, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, text=True)
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
    again = {k: n - before.get(k, 0) for k, n in server.counts.items()
             if n > before.get(k, 0)}
    assert again and not set(again) & on_disk, "a request answered on disk was sent again"
    assert all(n == 1 for n in again.values())
    assert (out / "round2-prefills.jsonl").read_text() == derived   # read back, not redone
    rows = rows_of(out)
    keys = [(r["prefill_id"], r["framing"]) for r in rows]
    assert len(keys) == len(set(keys)) == 16 + 16 and all(r["error"] is None for r in rows)
    assert sum(r["round"] == 2 for r in rows) == 16
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["ranked"] == 32 and manifest["rounds"]["derived"] == 8


@pytest.mark.parametrize("flags,says", [
    (["--rounds", "3"], "--rounds must be 1 or 2"),
    (["--rounds", "2", "--round2-budget", "-0.5"], "--round2-budget must be more than 0"),
    (["--rounds", "2", "--round2-top", "0"], "--round2-top must be at least 1"),
    (["--rounds", "2", "--generate-only"], "cannot be used with --generate-only"),
])
def test_bad_round_flags_are_exit_2_with_one_paragraph(tmp_path, capfd, flags, says):
    code = cli.main(["audit", "--base-url", "http://127.0.0.1:9/v1", "--model", "m",
                     "--out", str(tmp_path / "run"), *flags])
    out, err = capfd.readouterr()
    assert code == 2 and "Traceback" not in out + err
    assert says in " ".join(err.split()) and "\n\n" not in err.strip()
    assert not (tmp_path / "run").exists()
