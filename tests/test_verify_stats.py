"""verify's statistical core (blackbox_audit/verify_stats.py; the math in docs/verify.md):
per-token and per-prompt statistics on hand-computed cases, the betting bounds, the
sequential rule's verdicts, a simulation of its false-positive rate and power, the honesty
checks, and the exact binomial interval."""

from __future__ import annotations

import json
import math
import time
from dataclasses import replace

import numpy as np
import pytest

from blackbox_audit.verify_stats import (
    STATISTICS,
    Calibration,
    PromptStats,
    SequentialTest,
    ServedToken,
    TokenEvidence,
    beta_ppf,
    betainc,
    check_determinism,
    check_echo_consistency,
    check_greedy_argmax,
    check_logprob_matches_topk,
    check_topk_mass,
    clopper_pearson,
    mean_lcb,
    mean_ucb,
    prompt_stats,
    token_stats,
    topk_tv,
)

LN = math.log

# The simulated world below is on a finer scale than the defaults (which are set against a
# measured llama.cpp null, docs/verify.md §3): its margins are given explicitly.
SIM_MARGINS = {"dnll": 0.005, "disagreement": 0.02, "tv": 0.01}


def sim_calibration(*args, **kw):
    return Calibration.from_prompts(*args, **{"margin": SIM_MARGINS, **kw})

# --------------------------------------------------------------------------- per token


def test_token_stats_agreeing_token():
    t = TokenEvidence(served_id=7, served_logprob=-0.5, claimed_logprob=-0.7, claimed_rank=0)
    s = token_stats(t)
    assert s.agree and s.rank == 0 and s.margin == 0.0 and s.tv is None
    assert s.dnll == pytest.approx(0.2)  # claimed NLL 0.7 - served NLL 0.5


def test_token_stats_disagreeing_token_margin_and_missing_logprob():
    t = TokenEvidence(served_id=7, served_logprob=None, claimed_logprob=-0.7, claimed_rank=2,
                      claimed_top=((3, -0.1), (9, -0.4), (7, -0.7)))
    s = token_stats(t)
    assert not s.agree and s.rank == 2 and s.dnll is None
    assert s.margin == pytest.approx(0.6)  # claimed argmax -0.1 vs served token -0.7
    with pytest.raises(ValueError):
        token_stats(replace(t, claimed_logprob=float("nan")))
    with pytest.raises(ValueError):
        token_stats(replace(t, claimed_rank=-1))


def test_topk_tv_shared_support_plus_remainder():
    # shared {1, 2}: |.5-.4| + |.3-.4| = .2; remainders .2 and .2 -> TV = .1
    p = ((1, LN(0.5)), (2, LN(0.3)))
    q = ((1, LN(0.4)), (2, LN(0.4)), (3, LN(0.1)))
    assert topk_tv(p, q) == pytest.approx(0.1)
    # shared {1}: |.9-.6| = .3; remainders .1 vs .4 -> .3; TV = .3 (a lower bound on the
    # full TV, which is at least .3 here)
    assert topk_tv(((1, LN(0.9)),), ((1, LN(0.6)), (2, LN(0.3)))) == pytest.approx(0.3)
    assert topk_tv(p, p) == pytest.approx(0.0)
    assert topk_tv(((1, -0.1),), ((2, -0.1),)) is None  # nothing shared: no evidence
    # a repeated id counts once (its first entry)
    assert topk_tv(((1, LN(0.5)), (1, LN(0.1))), ((1, LN(0.5)),)) == pytest.approx(0.0)


def test_token_stats_tv_needs_both_sides():
    top = ((1, LN(0.5)), (2, LN(0.3)))
    t = TokenEvidence(1, LN(0.5), LN(0.4), 0, claimed_top=((1, LN(0.4)), (2, LN(0.4))),
                      served_top=top)
    assert token_stats(t).tv == pytest.approx(0.1)
    assert token_stats(replace(t, served_top=None)).tv is None


# --------------------------------------------------------------------------- per prompt


def test_prompt_stats_hand_computed():
    toks = [
        TokenEvidence(1, -0.1, -0.2, 0),   # dnll +0.1
        TokenEvidence(2, -0.3, -0.2, 0),   # dnll -0.1
        TokenEvidence(3, -1.0, -1.6, 3),   # dnll +0.6, disagree
        TokenEvidence(4, None, -0.5, 0),   # no served logprob
    ]
    s = prompt_stats(toks, key="p1")
    assert (s.n_tokens, s.n_agree, s.max_rank, s.n_dnll, s.key) == (4, 3, 3, 3, "p1")
    assert s.mean_rank == pytest.approx(0.75)
    assert s.agreement == pytest.approx(0.75)
    assert s.mean_dnll == pytest.approx(0.6 / 3)
    assert s.mean_abs_dnll == pytest.approx(0.8 / 3)
    assert s.max_abs_dnll == pytest.approx(0.6)
    assert s.value("dnll") == s.mean_abs_dnll
    assert s.value("disagreement") == pytest.approx(0.25)
    assert s.value("tv") is None and s.n_tv == 0
    json.dumps(s.to_json())
    empty = prompt_stats([])
    assert empty.n_tokens == 0 and empty.value("disagreement") is None
    with pytest.raises(KeyError):
        s.value("nope")


# --------------------------------------------------------------------------- bounds


def test_betting_bounds_bracket_the_mean_and_are_tight_near_zero():
    rng = np.random.default_rng(0)
    xs = list(rng.binomial(1, 0.3, 400).astype(float))
    lo, hi = mean_lcb(xs, 0.05), mean_ucb(xs, 0.05)
    hoeffding = math.sqrt(LN(1 / 0.05) / (2 * len(xs)))  # 0.061: the range-only bound
    assert np.mean(xs) - hoeffding < lo < np.mean(xs) < hi < np.mean(xs) + hoeffding
    # all zeros: the UCB is what "no prompt out of n was off" allows, about ln(1/a) / n
    zeros = [0.0] * 300
    assert mean_lcb(zeros, 0.01) == 0.0
    assert 0.0 < mean_ucb(zeros, 0.01) < 2.0 * LN(100) / 300


def test_betting_bounds_cover():
    """One-sided miss rates of the fixed-size bounds stay below alpha (skewed data)."""
    rng = np.random.default_rng(1)
    alpha, reps, miss_lo, miss_hi = 0.1, 300, 0, 0
    mu = 2.0 / 20.0  # Beta(2, 18)
    for _ in range(reps):
        xs = list(rng.beta(2, 18, 60))
        miss_lo += mean_lcb(xs, alpha) > mu
        miss_hi += mean_ucb(xs, alpha) < mu
    assert miss_lo / reps <= alpha and miss_hi / reps <= alpha


# --------------------------------------------------------------------------- synthetic data
#
# Assumptions (docs/verify.md, "Simulation"): 50-token continuations. Null (the claimed
# weights served as in calibration): per-prompt disagreement rate ~ Beta(0.5, 49.5) (mean
# 0.01: near-ties flip now and then), per-token |ΔNLL| half-normal with a per-prompt scale
# (lognormal around 0.01 nats). Requantised to 4 bits: disagreement ~ Beta(2.5, 47.5) (mean
# 0.05, agreement 0.99 -> 0.95) and each token's ΔNLL shifted by a Gamma(0.5) amount of mean
# +0.02 or +0.03 nats (mostly small, a heavy tail where the two models part).

L = 50


def population(rng, n, p_mean=0.01, effect=0.0, scale=0.01, tv=False):
    a = p_mean * 50.0
    k = rng.binomial(L, rng.beta(a, 50.0 - a, n))
    s = scale * np.exp(rng.normal(0.0, 0.5, n) - 0.125)
    eps = rng.normal(0.0, 1.0, (n, L)) * (s[:, None] * math.sqrt(math.pi / 2))
    if effect:
        eps = eps + rng.gamma(0.5, effect / 0.5, (n, L))
    d = np.abs(eps).mean(axis=1)
    tvs = (np.abs(rng.normal(0.0, 0.004, n)) + 0.5 * effect) if tv else [None] * n
    return [PromptStats(n_tokens=L, n_agree=int(L - kk), mean_rank=0.0, max_rank=0, n_dnll=L,
                        mean_abs_dnll=float(dd), n_tv=L if tv else 0,
                        mean_tv=None if t is None else float(t))
            for kk, dd, t in zip(k, d, tvs, strict=True)]


def run_once(rng, judged, alpha=0.01, max_tokens=2000, n_cal=100, cal_population=None, **cal):
    calib = sim_calibration((cal_population or population)(rng, n_cal), **cal)
    test = SequentialTest(calib, alpha=alpha, max_tokens=max_tokens)
    pool = judged(rng, max_tokens // L + 1)
    for p in pool:
        v = test.update(p)
        if v is not None:
            return v
    return test.verdict()


# --------------------------------------------------------------------------- the test


def test_clear_difference_decides_differs_with_its_evidence():
    rng = np.random.default_rng(2)
    v = run_once(rng, lambda r, n: population(r, n, p_mean=0.1, effect=0.05))
    assert v.decision == "differs" and v.statistic in STATISTICS
    assert v.p_value <= v.alpha < v.p_value_equivalence
    assert v.ci is not None and v.effect is not None
    assert v.ci[0] > v.margin - 1e-9        # the effect's lower bound clears the margin
    assert v.ci[0] <= v.effect <= v.ci[1]
    r = next(s for s in v.statistics if s.name == v.statistic)
    assert r.state == "differs" and r.bounds[0] >= r.tolerance_differs - 1e-6
    assert v.tokens_used <= 1000 and v.tokens_needed_estimate is None
    out = v.to_json()
    json.dumps(out)
    assert {"decision", "statistic", "effect", "ci", "p_value", "tokens_used",
            "prompts_used", "tokens_needed_estimate", "alpha", "margin"} <= set(out)


def test_null_decides_consistent_given_the_tokens():
    rng = np.random.default_rng(3)
    v = run_once(rng, lambda r, n: population(r, n), max_tokens=20000, n_cal=300)
    assert v.decision == "consistent"
    assert v.p_value_equivalence <= v.alpha < v.p_value
    assert all(s.state == "within" for s in v.statistics)
    assert all(s.bounds[1] <= s.tolerance_consistent + 1e-6 for s in v.statistics)
    assert v.ci is not None and v.ci[1] < v.margin  # the effect's upper bound is inside it
    assert v.tokens_used < 20000


def test_small_budget_is_inconclusive_with_an_estimate_that_holds():
    """Stopped by the budget at 500 tokens, the verdict estimates the tokens still needed;
    the same streams continued need about that many (median ratio within [0.5, 2])."""
    ratios = []
    for seed in range(20):
        def judged(r, n):
            return population(r, n, p_mean=0.05, effect=0.02)
        v = run_once(np.random.default_rng(seed), judged, max_tokens=500)
        if v.decision != "inconclusive":
            continue
        assert v.tokens_used == 500 and "budget spent" in v.reason
        assert v.tokens_needed_estimate is not None and v.tokens_needed_estimate > 0
        w = run_once(np.random.default_rng(seed), judged, max_tokens=50_000)
        assert w.decision == "differs"
        ratios.append((w.tokens_used - 500) / v.tokens_needed_estimate)
    assert len(ratios) >= 10
    assert 0.5 <= float(np.median(ratios)) <= 2.0


def test_short_prompts_cost_tokens_but_are_no_evidence():
    calib = sim_calibration(population(np.random.default_rng(5), 50))
    t = SequentialTest(calib, max_tokens=10_000)
    short = PromptStats(n_tokens=3, n_agree=0, mean_rank=5.0, max_rank=9, n_dnll=3,
                        mean_abs_dnll=9.0)
    assert t.update(short) is None
    v = t.verdict()
    assert (v.tokens_used, v.prompts_used, v.prompts_skipped) == (3, 0, 1)
    assert v.decision == "inconclusive" and v.tokens_needed_estimate is None


def test_prompts_must_be_disjoint_and_judged_once():
    rng = np.random.default_rng(6)
    cal = [replace(p, key=f"c{i}") for i, p in enumerate(population(rng, 30))]
    t = SequentialTest(sim_calibration(cal))
    with pytest.raises(ValueError, match="calibration prompt"):
        t.update(replace(cal[0]))
    (p,) = population(rng, 1)
    t.update(replace(p, key="j1"))
    with pytest.raises(ValueError, match="judged twice"):
        t.update(replace(p, key="j1"))


def test_verdict_is_final_once_given():
    rng = np.random.default_rng(7)
    calib = sim_calibration(population(rng, 100))
    t = SequentialTest(calib, max_prompts=3)
    ps = population(rng, 5)
    assert t.update(ps[0]) is None and t.update(ps[1]) is None
    v = t.update(ps[2])
    assert v is not None and t.done and t.update(ps[3]) is v and t.verdict() is v
    assert v.prompts_used == 3


def test_floor_only_calibration():
    """No calibration run, only a tolerated mean |ΔNLL|: the floor is the tolerance."""
    calib = sim_calibration([], floor=0.03)
    assert list(calib.specs) == ["dnll"] and calib.specs["dnll"].bound == pytest.approx(0.12)
    rng = np.random.default_rng(8)
    ok = SequentialTest(calib, max_tokens=50_000)
    v = None
    for p in population(rng, 1000):
        if (v := ok.update(p)) is not None:
            break
    assert v is not None and v.decision == "consistent" and v.tolerance == 0.03
    assert v.effect is None  # no null mean to compare with
    bad = SequentialTest(calib, max_tokens=5000)
    for p in population(rng, 100, effect=0.1):
        if (v := bad.update(p)) is not None:
            break
    assert v.decision == "differs" and v.statistic == "dnll"


def test_floor_raises_the_dnll_tolerance():
    rng = np.random.default_rng(9)
    calib = sim_calibration(population(rng, 100), floor=0.04)
    stat = next(s for s in SequentialTest(calib).verdict().statistics if s.name == "dnll")
    assert stat.tolerance_differs == stat.tolerance_consistent == 0.04
    assert stat.clip == pytest.approx(0.16)


def test_calibration_options_and_errors():
    rng = np.random.default_rng(10)
    null = population(rng, 40, tv=True)
    c = sim_calibration(null, margin=0.004)
    assert set(c.specs) == {"dnll", "disagreement", "tv"}
    assert c.specs["dnll"].margin == 0.004 and c.specs["dnll"].bound == pytest.approx(0.04)
    c = sim_calibration(null, margin={"tv": 0.02}, bounds={"tv": 0.5},
                                 statistics=["tv"])
    assert list(c.specs) == ["tv"] and c.specs["tv"].bound == 0.5
    with pytest.raises(ValueError, match="unknown"):
        sim_calibration(null, margin={"nope": 0.1})
    with pytest.raises(ValueError, match="> 0"):
        sim_calibration(null, margin=0.0)
    with pytest.raises(ValueError, match="no calibration data"):
        sim_calibration(population(rng, 20), statistics=["tv"])
    with pytest.raises(ValueError, match="no statistic"):
        sim_calibration([])
    # a null noisier than the margins assume: told, not silently clipped into meaninglessness
    noisy = [replace(p, mean_abs_dnll=1.0) for p in null]
    with pytest.raises(ValueError, match="clip bound"):
        SequentialTest(sim_calibration(noisy))


def test_missing_statistic_blocks_consistent_not_differs():
    """An endpoint without logprobs gives no dnll: it can still be caught by disagreement,
    never passed as consistent."""
    rng = np.random.default_rng(11)
    calib = sim_calibration(population(rng, 300))
    t = SequentialTest(calib, max_tokens=20_000)
    v = None
    for p in population(rng, 400):
        if (v := t.update(replace(p, mean_abs_dnll=None, n_dnll=0))) is not None:
            break
    assert v.decision == "inconclusive"
    t = SequentialTest(calib, max_tokens=20_000)
    for p in population(rng, 400, p_mean=0.3):
        if (v := t.update(replace(p, mean_abs_dnll=None, n_dnll=0))) is not None:
            break
    assert v.decision == "differs" and v.statistic == "disagreement"


# --------------------------------------------------------------------------- simulation


def test_false_positive_rate_and_power_by_simulation():
    """2,000 simulated verifications of the claimed weights (each with its own calibration
    on disjoint prompts, budget 2,000 tokens): false positives <= alpha, with the
    Clopper-Pearson upper bound. Then requantised weights: decided ``differs`` within 2,000
    tokens. Numbers printed with ``pytest -s``."""
    t0 = time.perf_counter()
    alpha, runs = 0.01, 2000
    rng = np.random.default_rng(2024)
    null = [run_once(rng, lambda r, n: population(r, n), alpha=alpha) for _ in range(runs)]
    fp = sum(v.decision == "differs" for v in null)
    upper = clopper_pearson(fp, runs, 0.05, side="upper")[1]
    print(f"\nnull: {fp}/{runs} differs (rate {fp / runs:.4f}, 95% CP upper {upper:.4f}); "
          f"{sum(v.decision == 'consistent' for v in null)} consistent within 2,000 tokens")
    assert fp / runs <= alpha and upper <= alpha
    # at the edge of the margin (every judged prompt shifted by exactly the margin):
    # still within it, so differs must stay rare
    edge = [run_once(rng, lambda r, n: [replace(p, mean_abs_dnll=p.mean_abs_dnll + 0.005,
                                                n_agree=p.n_agree - 1)
                                        for p in population(r, n)], alpha=alpha)
            for _ in range(300)]
    fp_edge = sum(v.decision == "differs" for v in edge)
    print(f"edge of the margin: {fp_edge}/300 differs")
    assert fp_edge / 300 <= alpha
    # a glitchy null: 3% of prompts (calibration and judged alike) wildly off, beyond the
    # clip; the calibration's upper bound must account for what it may have missed
    def glitchy(r, n):
        return [replace(p, mean_abs_dnll=0.3) if u < 0.03 else p
                for p, u in zip(population(r, n), r.random(n), strict=True)]
    glitch = [run_once(rng, glitchy, alpha=alpha, cal_population=glitchy) for _ in range(300)]
    fp_glitch = sum(v.decision == "differs" for v in glitch)
    print(f"glitchy null: {fp_glitch}/300 differs")
    assert fp_glitch / 300 <= alpha
    for effect, need in ((0.03, 0.99), (0.02, 0.95)):
        alt = [run_once(rng, lambda r, n, e=effect: population(r, n, p_mean=0.05, effect=e),
                        alpha=alpha) for _ in range(200)]
        power = sum(v.decision == "differs" for v in alt) / len(alt)
        toks = sorted(v.tokens_used for v in alt if v.decision == "differs")
        print(f"requantised (+{effect} nats/token, agreement 0.95): power {power:.3f} within "
              f"2,000 tokens; tokens to decide median {toks[len(toks) // 2]}, "
              f"p90 {toks[int(0.9 * len(toks))]}")
        assert power >= need
    print(f"simulation took {time.perf_counter() - t0:.1f} s")


# --------------------------------------------------------------------------- honesty


def _tok(i, lp, top=None):
    return ServedToken(i, lp, top)


def test_greedy_argmax_check():
    ok = [[_tok(1, -0.2, ((1, -0.2), (2, -1.9))), _tok(5, -0.5, ((5, -0.5), (6, -0.5)))]]
    c = check_greedy_argmax(ok)
    assert c.passed and (c.n_checked, c.n_failed) == (2, 0)  # a tie within atol passes
    bad = [[_tok(2, -1.9, ((1, -0.2), (2, -1.9))), _tok(9, -3.0, ((1, -0.1), (2, -2.0)))]]
    c = check_greedy_argmax(bad)
    assert c.passed is False and c.n_failed == 2
    assert c.evidence["examples"][0]["top_id"] == 1
    assert c.evidence["worst_gap"] == pytest.approx(2.9)
    assert check_greedy_argmax([[_tok(1, -0.1)]]).passed is None  # no top-k: nothing to check
    json.dumps(c.to_json())


def test_topk_mass_check():
    ok = [[_tok(1, LN(0.6), ((1, LN(0.6)), (2, LN(0.399))))]]
    assert check_topk_mass(ok).passed
    over = [[_tok(1, LN(0.7), ((1, LN(0.7)), (2, LN(0.5))))]]
    c = check_topk_mass(over)
    assert c.passed is False and c.evidence["max_mass"] == pytest.approx(1.2)
    assert check_topk_mass([[_tok(1, 0.5, ((1, 0.5),))]]).passed is False  # logprob > 0
    dup = [[_tok(1, LN(0.3), ((1, LN(0.3)), (1, LN(0.3))))]]
    assert check_topk_mass(dup).passed is False


def test_logprob_matches_topk_check():
    assert check_logprob_matches_topk([[_tok(1, -0.2, ((1, -0.2),))]]).passed
    c = check_logprob_matches_topk([[_tok(1, -0.2, ((1, -0.3),))]])
    assert c.passed is False and c.evidence["max_abs_diff"] == pytest.approx(0.1)


def test_determinism_check():
    a = [_tok(1, -0.1), _tok(2, -0.2), _tok(3, -0.3)]
    assert check_determinism([(a, list(a))]).passed
    jitter = [_tok(1, -0.1), _tok(2, -0.25), _tok(3, -0.3)]
    c = check_determinism([(a, jitter)])
    assert c.passed is False and c.evidence["logprob_mismatches"] == 1
    flip = [_tok(1, -0.1), _tok(9, -0.2), _tok(3, -0.3)]
    c = check_determinism([(a, flip), (a, a)])
    assert c.passed is False and c.evidence["examples"][0]["first_id_divergence"] == 1
    assert check_determinism([(a, flip), (a, a)], allowed_id_mismatches=1).passed
    assert check_determinism([(a, a[:2])]).passed is False  # one stopped early
    assert check_determinism([]).passed is None


def test_echo_consistency_check():
    gen = [_tok(1, -0.1), _tok(2, -0.2), _tok(3, -0.3)]
    echo = [(1, -0.11), (2, -0.19), (3, -0.31)]
    c = check_echo_consistency([(gen, echo)])
    assert c.passed and c.n_checked == 3
    # a generation conditioned on something the echo did not see (an injected system
    # prompt, a raised temperature): the logprobs part
    shifted = [(1, -0.6), (2, -0.9), (3, -0.3)]
    c = check_echo_consistency([(gen, shifted)])
    assert c.passed is False and c.n_failed == 2
    assert check_echo_consistency([(gen, shifted)], max_violation_rate=0.7).passed
    # the echo re-tokenised the text: compared up to the first differing id, not failed
    retok = [(1, -0.1), (7, -5.0), (3, -9.0)]
    c = check_echo_consistency([(gen, retok)])
    assert c.passed and c.n_checked == 1 and c.evidence["retokenised_pairs"] == 1
    assert check_echo_consistency([(gen, [(1, None)])]).passed is None


# --------------------------------------------------------------------------- binomial


def _binom_tail(n, k, p):
    """P(X >= k), X ~ Binomial(n, p), by direct summation (in logs: C(2000, j) is big)."""
    return math.fsum(math.exp(math.lgamma(n + 1) - math.lgamma(j + 1) - math.lgamma(n - j + 1)
                              + j * LN(p) + (n - j) * math.log1p(-p)) for j in range(k, n + 1))


def test_betainc_closed_forms_and_binomial_identity():
    assert betainc(2, 3, 0.5) == pytest.approx(0.6875, abs=1e-13)  # = P(Bin(4, .5) >= 2)
    for x in (0.01, 0.3, 0.77, 0.999):
        assert betainc(1, 4.5, x) == pytest.approx(1 - (1 - x) ** 4.5, rel=1e-12)
        assert betainc(3.2, 1, x) == pytest.approx(x**3.2, rel=1e-12)
        assert betainc(2.5, 7.0, x) == pytest.approx(1 - betainc(7.0, 2.5, 1 - x), abs=1e-13)
    for n, k, p in ((10, 3, 0.2), (50, 1, 0.01), (200, 150, 0.8), (2000, 5, 0.001)):
        assert betainc(k, n - k + 1, p) == pytest.approx(_binom_tail(n, k, p), rel=1e-9)
    assert betainc(2, 3, 0.0) == 0.0 and betainc(2, 3, 1.0) == 1.0
    for q in (0.025, 0.5, 0.975):
        assert betainc(4, 97, beta_ppf(q, 4, 97)) == pytest.approx(q, abs=1e-12)


def test_clopper_pearson_known_values():
    lo, hi = clopper_pearson(0, 10)
    assert lo == 0.0 and hi == pytest.approx(1 - 0.025 ** (1 / 10), abs=1e-12)  # 0.30850
    lo, hi = clopper_pearson(10, 10)
    assert hi == 1.0 and lo == pytest.approx(0.025 ** (1 / 10), abs=1e-12)      # 0.69150
    lo, hi = clopper_pearson(5, 10)
    assert (round(lo, 4), round(hi, 4)) == (0.1871, 0.8129)
    lo, hi = clopper_pearson(3, 100)
    assert (round(lo, 4), round(hi, 4)) == (0.0062, 0.0852)
    # the defining property: at the upper end, P(X <= k) = alpha/2
    assert 1 - _binom_tail(100, 4, hi) == pytest.approx(0.025, abs=1e-10)
    assert _binom_tail(100, 3, lo) == pytest.approx(0.025, abs=1e-10)
    # the bench's one-sided upper bound: 0 false positives in 2,000 runs
    assert clopper_pearson(0, 2000, 0.05, side="upper") == (
        0.0, pytest.approx(1 - 0.05 ** (1 / 2000), abs=1e-12))                   # 0.0014967
    assert clopper_pearson(7, 20, side="lower")[1] == 1.0
    with pytest.raises(ValueError):
        clopper_pearson(3, 2)
