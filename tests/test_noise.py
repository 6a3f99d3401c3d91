"""The noise floor: self-scoring through the real path, quantiles, and each row's standing."""

from __future__ import annotations

import pytest

from blackbox_audit.noise import base_floor, floor_value, quantiles
from blackbox_audit.rank import RankConfig, rank
from blackbox_audit.records import Completion, Score


def test_quantiles_by_nearest_rank():
    q = quantiles([float(x) for x in range(-50, 51)])  # 101 values
    assert (q["n"], q["median"], q["p1"], q["p99"], q["max_abs"]) == (101, 0.0, -49.0, 49.0,
                                                                        50.0)
    assert q["p99_abs"] == 50.0  # |values|: 0, 1, 1, 2, 2, ..., 50, 50
    assert quantiles([]) == {}


def test_self_floor_is_the_scorers_batching_noise(reference, view, tmp_path):
    """Rows scored in one padded batch, then one at a time: the gap is fp32 noise (tiny);
    a padding bug would show up here as a large gap."""
    from blackbox_audit.rowscorer import RowScorer
    from blackbox_audit.rundir import RunDir

    texts = ["The feud between the two families lasted for many years.",
             "def add(a, b):\n    return a + b\n", "Honey bees dance to tell the hive.",
             "A short one.", "Rivers carve valleys over millions of years of slow work."]
    session = RowScorer(RunDir(tmp_path / "run"), reference, view, "text", quiet=True,
                        chunk=len(texts), noise_sample=5)     # one padded batch of 5
    for k, t in enumerate(texts):
        session.feed(Completion(prefill_id=f"p{k}", corpus="prose", prefill=t[:8],
                                framing="raw", text=t[8:], tokens=[t[8:]], logprobs=[-1.0]))
    floor = session.finish()["noise_floor"]["self"]
    assert floor["n"] == 5
    assert 0.0 <= floor["max_abs"] < 1e-3


def comp(pid):
    return Completion(prefill_id=pid, corpus="prose", prefill="P", framing="raw", text="x" * 30,
                      tokens=["x"] * 10, logprobs=[-1.0] * 10)


def score(pid, nll_diff):
    return Score(prefill_id=pid, framing="raw", corpus="prose", alignment="ids",
                 n_target_tokens=10, n_ref_tokens=10, n_bytes=30, nll_target=1.0,
                 nll_ref=1.0 + nll_diff, ppl_target=1.0, ppl_ref=1.0, ppl_diff=nll_diff,
                 nll_diff=nll_diff, bpb_target=1.0, bpb_ref=1.0, bpb_diff=0.0)


def test_rows_stand_against_the_largest_floor():
    noise = {"self": {"p99_abs": 1e-6}, "base": {"p99_abs": 0.028}, "given": None}
    assert floor_value(noise) == 0.028
    assert floor_value({}) is None
    assert floor_value({"self": {"p99_abs": 1e-6}}) is None   # never alone (issue 19)
    comps = {"a:raw": comp("a"), "b:raw": comp("b")}
    scores = {"a:raw": score("a", 0.014), "b:raw": score("b", 0.28)}
    ranked, _ = rank(comps, scores, RankConfig("nll_diff", noise_floor=0.028))
    assert [(r.prefill_id, r.vs_floor) for r in ranked] == [("b", 10.0), ("a", 0.5)]
    ranked, _ = rank(comps, scores, RankConfig("nll_diff"))
    assert all(r.vs_floor is None for r in ranked)


def test_base_floor_keeps_the_rows_a_ranking_would():
    comps = {"a:raw": comp("a"), "b:raw": comp("b")}
    scores = {"a:raw": score("a", 0.01), "b:raw": score("b", -0.03)}
    scores["b:raw"].n_target_tokens = 2  # too short to be ranked: not part of the floor
    assert base_floor(comps, scores)["n"] == 1
    assert base_floor(comps, scores)["p99_abs"] == pytest.approx(0.01)


def test_the_floor_sample_is_the_same_whatever_order_rows_arrive_in(reference, view,
                                                                    tmp_path):
    """RowScorer keeps the self floor's sample as rows come (the lowest sample ranks), so a
    session fed while generation runs, in whatever order answers arrive, re-scores the rows
    a pass over the finished run would choose, and the floor agrees."""
    import random

    from blackbox_audit.noise import sample_rank
    from blackbox_audit.rowscorer import RowScorer
    from blackbox_audit.rundir import RunDir

    texts = [f"Row {i}: rivers carve valleys over {i} million years of slow, patient work."
             for i in range(12)]
    comps = [Completion(prefill_id=f"p{i}", corpus="prose", prefill=t[:8], framing="raw",
                        text=t[8:], tokens=[t[8:]], logprobs=[-1.0]) for i, t in enumerate(texts)]
    floors = []
    for order in range(2):
        rows = comps[:]
        random.Random(order).shuffle(rows)
        session = RowScorer(RunDir(tmp_path / f"run{order}"), reference, view, "text",
                            quiet=True, chunk=3, noise_sample=4)
        for c in rows:
            session.feed(c)
            session.refine_floor()      # as the overlap thread does when idle
        assert len(session.floor_items) <= 4
        floors.append((set(session.floor_items), session.finish()["noise_floor"]["self"]))
    expected = set(sorted((c.row_key for c in comps), key=sample_rank)[:4])   # bottom 4
    assert floors[0][0] == floors[1][0] == expected
    assert floors[0][1]["n"] == floors[1][1]["n"] == 4
    assert floors[0][1]["max_abs"] < 1e-3
