"""Paper scale (issue 16): packed run directories read back exactly, directories written by
the previous release (score rows without per-token pieces) still rank and report alike, and a
large report carries the rows past its top as numbers only."""

from __future__ import annotations

import json
from array import array

from test_report import make_run, page_data

from blackbox_audit.evaluate import evaluate
from blackbox_audit.flag import OrganismSpec
from blackbox_audit.heat import GapStore, token_gaps
from blackbox_audit.records import Completion, narrow, widen
from blackbox_audit.report import render
from blackbox_audit.rundir import RunDir


def f32(xs):
    return array("f", xs).tolist()


def test_narrow_then_widen_gives_back_the_same_doubles():
    row = {"logprobs": f32([-2.133152961730957, -0.1, -1e-7]),
           "top_logprobs": [[["a", f32([-0.5])[0]], ["b", f32([-3.25])[0]]]],
           "ref_token_logprobs": [-0.1, -2.0]}            # -0.1 is no float32: kept whole
    small = narrow(row)
    assert small["f32"] == ["logprobs", "top_logprobs"]
    assert len(json.dumps(small["logprobs"])) < len(json.dumps(row["logprobs"]))
    assert widen(json.loads(json.dumps(small))) == row


def test_pack_reads_back_every_row_exactly_and_appends_go_on(tmp_path):
    run = make_run(tmp_path / "run", xss=True)
    before_c, before_s = run.load_completions(), run.load_scores("ref")
    for c in before_c.values():          # float32 columns, as a llama.cpp server gives
        c.logprobs = f32(c.logprobs)
    run.completions_path.write_text("".join(json.dumps(c.to_json()) + "\n"
                                            for c in before_c.values()))
    sizes = RunDir(run.path).pack()
    assert set(sizes) == {"completions.jsonl.gz", "scores.ref.jsonl.gz", "ranked.jsonl.gz",
                          "ranked.csv.gz"}
    assert not run.completions_path.exists()
    again = RunDir(run.path)
    assert again.load_completions() == before_c and again.load_scores("ref") == before_s
    late = Completion(prefill_id="late", corpus="prose", prefill="P", framing="raw",
                      text=" x", tokens=[" x"], logprobs=[-0.5])
    again.append_completion(late)
    again.close()
    assert RunDir(run.path).load_completions()["late:raw"] == late
    RunDir(run.path).pack()                                # merges the appended rows
    assert RunDir(run.path).load_completions() == {**before_c, "late:raw": late}


def test_a_run_scored_by_the_previous_release_ranks_and_reports_alike(tmp_path):
    new = make_run(tmp_path / "new", xss=False)
    old = make_run(tmp_path / "old", xss=False)
    rows = [json.loads(x) for x in old.scores_path("ref").read_text().splitlines()]
    for r in rows:
        del r["heat"]                                     # the previous release's rows
    old.scores_path("ref").write_text("".join(json.dumps(r) + "\n" for r in rows))
    page_new = page_data(render(new.path).path.read_text())["rows"]
    page_old = page_data(render(old.path).path.read_text())["rows"]
    assert [r["id"] for r in page_new] == [r["id"] for r in page_old]
    for a, b in zip(page_new, page_old, strict=True):
        assert (a["tok"] is None) == (b["tok"] is None)
        if a["tok"]:
            assert a["tok"]["l"] == b["tok"]["l"]
            assert all(abs(x - y) <= 0.011 for x, y in zip(a["tok"]["t"], b["tok"]["t"],
                                                             strict=True))
    # the themes' gaps: from the stored pieces, or from the completion's columns
    c = new.load_completions()
    for key, s in new.load_scores("ref").items():
        with GapStore() as store:
            store.add(key, token_gaps(None, s))
            got = store(type("R", (), {"row_id": key})())
        want = token_gaps(c[key], s)
        assert [(a, b) for a, b, _ in got] == [(a, b) for a, b, _ in want]
        assert all(abs(x - y) < 1e-3 for (_, _, x), (_, _, y) in zip(got, want, strict=True))


def test_a_large_report_shows_its_top_whole_and_the_rest_as_numbers(tmp_path):
    run = make_run(tmp_path / "run", n_prefills=60, xss=False)
    spec = OrganismSpec("Vellari", [["vellari"]], [])
    whole = render(run.path, spec)
    part = render(run.path, spec, text_rows=3, rows=["p00059:raw"])
    data = page_data(part.path.read_text())
    full, lite = data["rows"], data["lite"]
    assert {r["rank"] for r in full if r["id"] != "p00059:raw"} <= {0, 1, 2}
    assert any(r["id"] == "p00059:raw" for r in full)
    assert len(full) + len(lite["id"]) == whole.rows
    assert set(lite) >= {"id", "g", "rank", "n", "flag", "ppl_diff", "nll_diff"}
    assert all(isinstance(v, int | float) or v is None for v in lite["ppl_diff"])
    assert part.bytes < whole.bytes / 2
    assert "numbers" in part.path.read_text() and data["lite"]["groups"]


def test_eval_streams_the_ranking(tmp_path):
    run = make_run(tmp_path / "run", n_prefills=30, xss=False)
    spec = OrganismSpec("Vellari", [["vellari"]], [])
    assert evaluate(run.iter_ranked(), spec) == evaluate(run.load_ranked(), spec)


def test_token_bytes_that_are_each_tokens_utf8_are_left_out_and_derived_back():
    row = {"tokens": [" the", "é"], "token_bytes": [[32, 116, 104, 101], [195, 169]],
           "logprobs": [-0.5, -1.0]}
    small = narrow(row)
    assert small["token_bytes"] is None and small["derived"] == ["token_bytes"]
    assert widen(json.loads(json.dumps(small))) == row
    partial = {"tokens": [" the", "\ufffd"], "token_bytes": [[32, 116, 104, 101], [0xE2]],
               "logprobs": [-0.5, -1.0]}                     # part of a character: kept
    assert "derived" not in narrow(partial)
    assert widen(json.loads(json.dumps(narrow(partial)))) == partial


def test_a_packed_ranking_reads_alike_and_a_new_ranking_replaces_it(tmp_path):
    import gzip

    from blackbox_audit.audit import rank
    from blackbox_audit.plan import scoring_plan

    run = make_run(tmp_path / "run", n_prefills=12, xss=False)
    before = run.load_ranked()
    csv_before = (run.path / "ranked.csv").read_bytes()
    sizes = RunDir(run.path).pack()
    assert {"ranked.jsonl.gz", "ranked.csv.gz"} <= set(sizes)
    assert not (run.path / "ranked.jsonl").exists()
    assert gzip.decompress((run.path / "ranked.csv.gz").read_bytes()) == csv_before
    packed = RunDir(run.path)
    assert packed.ranked_path.name == "ranked.jsonl.gz"
    assert packed.load_ranked() == before
    assert render(run.path).rows == len(before)              # the report reads it too
    again, _ = rank(scoring_plan(reference=None), packed)   # a new ranking, plain again
    packed.close()
    assert (run.path / "ranked.jsonl").exists()
    assert not (run.path / "ranked.jsonl.gz").exists()
    assert not (run.path / "ranked.csv.gz").exists()
    assert RunDir(run.path).load_ranked() == again
