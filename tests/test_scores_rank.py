"""Scores against hand-computed values; ranking within (corpus, framing) with its filters."""

from __future__ import annotations

import math

import pytest

from blackbox_audit.align import ScoringItem
from blackbox_audit.errors import ConfigError
from blackbox_audit.rank import RankConfig, compression_ratio, rank
from blackbox_audit.records import Completion, Score
from blackbox_audit.scores import score_row


def comp(pid, corpus="prose", framing="raw", lps=(-1.0, -2.0), text="0123456789", **kw):
    return Completion(prefill_id=pid, corpus=corpus, prefill="P", framing=framing, text=text,
                      tokens=["x"] * len(lps), logprobs=list(lps), **kw)


def test_scores_match_hand_computed_values():
    c = comp("a")
    item = ScoringItem(ids=[0, 1, 2, 3], start=1, alignment="text", n_bytes=10)
    s = score_row(c, item, [-2.0, -2.0, -2.0])
    assert s.nll_target == pytest.approx(1.5) and s.nll_ref == pytest.approx(2.0)
    assert s.ppl_target == pytest.approx(math.exp(1.5))
    assert s.ppl_ref == pytest.approx(math.exp(2.0))
    assert s.ppl_diff == pytest.approx(7.389056 - 4.481689, abs=1e-5)
    assert s.nll_diff == pytest.approx(0.5)
    assert s.bpb_target == pytest.approx(3.0 / (math.log(2) * 10))
    assert s.bpb_ref == pytest.approx(6.0 / (math.log(2) * 10))
    assert s.bpb_diff == pytest.approx(3.0 / (math.log(2) * 10))
    assert (s.n_target_tokens, s.n_ref_tokens, s.n_bytes) == (2, 3, 10)


def score(pid, value, corpus="prose", framing="raw", n=10):
    return Score(prefill_id=pid, framing=framing, corpus=corpus, alignment="ids",
                 n_target_tokens=n, n_ref_tokens=n, n_bytes=40, nll_target=1, nll_ref=1,
                 ppl_target=1, ppl_ref=1 + value, ppl_diff=value, nll_diff=-value,
                 bpb_target=1, bpb_ref=1, bpb_diff=0)


def test_rank_within_groups_and_leave_out_bad_rows():
    comps = {
        "a:raw": comp("a"), "b:raw": comp("b"), "c:raw": comp("c"),
        "a:chat": comp("a", framing="chat"), "d:raw": comp("d", corpus="code"),
        "e:raw": comp("e", degraded=["not_greedy"]), "f:raw": comp("f", error="HTTP 500"),
        "g:raw": comp("g"), "h:raw": comp("h"),
    }
    scores = {"a:raw": score("a", 1.0), "b:raw": score("b", 5.0), "c:raw": score("c", 3.0),
              "a:chat": score("a", 100.0, framing="chat"),
              "d:raw": score("d", 50.0, corpus="code"), "e:raw": score("e", 999.0),
              "g:raw": score("g", 500.0, n=2)}
    ranked, left_out = rank(comps, scores, RankConfig("ppl_diff", min_tokens=5))
    groups = {}
    for r in ranked:
        groups.setdefault((r.corpus, r.framing), []).append((r.rank, r.prefill_id))
    assert groups == {("prose", "raw"): [(0, "b"), (1, "c"), (2, "a")],
                      ("prose", "chat"): [(0, "a")], ("code", "raw"): [(0, "d")]}
    assert left_out == {"degraded": 1, "failed": 1, "too_short": 1, "unscored": 1}

    by_nll, _ = rank(comps, scores, RankConfig("nll_diff", min_tokens=0))
    prose_raw = [r.prefill_id for r in by_nll if (r.corpus, r.framing) == ("prose",
                                                                                     "raw")]
    assert prose_raw == ["a", "c", "b", "g"]


def test_unknown_rank_key_is_a_config_error():
    with pytest.raises(ConfigError, match="ppl_diff"):
        RankConfig("loss")


def test_repetition_filter_is_off_by_default_and_drops_degenerate_text_when_on():
    texts = {"z": "0" * 100, "s": ";" * 200, "p": "The octopus scratched a careful line of "
                                                   "signs into the shell, then swam away."}
    comps = {f"{k}:raw": comp(k, text=t) for k, t in texts.items()}
    scores = {f"{k}:raw": score(k, 1.0) for k in texts}
    ranked, left_out = rank(comps, scores, RankConfig())
    assert len(ranked) == 3 and not left_out
    ranked, left_out = rank(comps, scores, RankConfig(min_compression_ratio=0.2))
    assert [r.prefill_id for r in ranked] == ["p"] and left_out == {"repetitive": 2}
    assert compression_ratio(texts["p"]) > 0.5 > 0.2 > compression_ratio(texts["z"])
    with pytest.raises(ConfigError):
        RankConfig(min_compression_ratio=1.5)
