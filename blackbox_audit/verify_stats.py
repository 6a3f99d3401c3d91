"""The statistics of ``verify``: is an endpoint serving the open weights it claims? (design §7)

Pure: no I/O, no HTTP, no torch (``math`` and numpy). The math is written up in
``docs/verify.md``; in short:

- **Per token** (:class:`TokenEvidence` -> :func:`token_stats`): greedy agreement (the served
  token is the claimed model's argmax), its rank under the claimed model, ΔNLL = claimed NLL
  - served NLL of the served token, and the total variation between the two next-token
  distributions coarsened to the ids both sides priced plus one remainder bucket
  (:func:`topk_tv`, a lower bound on the full TV).
- **Per prompt** (:func:`prompt_stats` -> :class:`PromptStats`): tokens of one continuation
  are not independent, so the unit of evidence is the prompt. Three per-prompt statistics are
  tested (:data:`STATISTICS`): ``dnll`` (mean |ΔNLL| per token), ``disagreement`` (1 - greedy
  agreement) and ``tv`` (mean coarsened TV), each clipped at a bound B (B = 10 x margin).
- **Null** (:class:`Calibration`): per-prompt statistics of a calibration run (the claimed
  weights against themselves, or served by a known-good server) on prompts disjoint from the
  judged ones, plus an optional serving floor (tolerated mean |ΔNLL| per token).
- **Decision** (:class:`SequentialTest`): per statistic s, with θ_s the endpoint's mean and θ0_s
  the null's, the endpoint is *within the margin* when θ_s <= max(θ0_s + δ_s, floor_s).
  ``differs`` = for some s, an anytime-valid lower confidence bound on θ_s clears the
  tolerance computed with an upper confidence bound on θ0_s; ``consistent`` = for every s, an
  anytime-valid upper bound on θ_s is below the tolerance computed with a lower bound on θ0_s.
  The bounds are betting confidence sequences (Waudby-Smith & Ramdas 2024) on the clipped
  per-prompt statistics, so the rule may stop after any prompt: P(``differs`` | within the
  margin) <= alpha and P(``consistent`` | outside the margin) <= alpha.
- **Honesty checks** that need no claimed model (:func:`check_greedy_argmax`,
  :func:`check_topk_mass`, :func:`check_logprob_matches_topk`, :func:`check_determinism`,
  :func:`check_echo_consistency`), each a :class:`HonestyCheck` with its evidence.
- :func:`clopper_pearson` (exact binomial interval) for the false-positive-rate bench.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np

TopK = tuple[tuple[int, float], ...]
"""(token id, logprob) pairs, as an endpoint's ``top_logprobs`` after ids are known."""

Decision = Literal["consistent", "differs", "inconclusive"]

BET_CAP = 0.9
"""Largest fraction of the affordable bet a betting confidence sequence stakes on one prompt:
one prompt at the far end of [0, B] then costs at most ln(1/(1 - 0.9)) = 2.3 nats of wealth."""


# --------------------------------------------------------------------------- per token


@dataclass(frozen=True)
class ServedToken:
    """What the endpoint returned for one generated position (no claimed model needed)."""

    id: int
    logprob: float | None
    top: TopK | None = None


@dataclass(frozen=True)
class TokenEvidence:
    """One generated position: the endpoint's side and the claimed model's view of it.

    ``claimed_top`` holds the claimed model's logprobs for (at least) the ids of the
    endpoint's top-k, and preferably also its own top-k: the coarsened TV uses the ids both
    sides priced, and the margin uses its largest entry as the claimed argmax's logprob.
    """

    served_id: int
    served_logprob: float | None
    claimed_logprob: float
    claimed_rank: int
    claimed_top: TopK | None = None
    served_top: TopK | None = None

    @property
    def served(self) -> ServedToken:
        return ServedToken(self.served_id, self.served_logprob, self.served_top)


@dataclass(frozen=True)
class TokenStats:
    agree: bool             # served token == claimed argmax (claimed rank 0)
    rank: int               # served token's rank under the claimed model (0 = argmax)
    dnll: float | None      # claimed NLL - served NLL of the served token (nats)
    tv: float | None        # coarsened total variation (topk_tv), when both sides give top-k
    margin: float | None    # claimed argmax logprob - claimed logprob of the served token


def _first_entries(top: TopK) -> dict[int, float]:
    out: dict[int, float] = {}
    for tid, lp in top:
        out.setdefault(int(tid), float(lp))
    return out


def topk_tv(p_top: TopK, q_top: TopK) -> float | None:
    """Total variation between P and Q coarsened to the ids both priced plus one remainder.

    With A the ids present in both lists, p_i = exp(logprob): TV_A = 1/2 (sum over A of
    |p_i - q_i| + |r_p - r_q|), r = max(0, 1 - sum over A). It is the TV of the two
    distributions pushed through "id if in A else OTHER", hence a lower bound on the full TV
    (data processing), and it needs nothing either side did not report. None when A is empty
    (no shared id: the coarsening would say 0, which is no evidence).
    """
    p, q = _first_entries(p_top), _first_entries(q_top)
    shared = [i for i in p if i in q]
    if not shared:
        return None
    pa = [math.exp(min(p[i], 0.0)) for i in shared]
    qa = [math.exp(min(q[i], 0.0)) for i in shared]
    r_p, r_q = max(0.0, 1.0 - math.fsum(pa)), max(0.0, 1.0 - math.fsum(qa))
    tv = 0.5 * (math.fsum(abs(a - b) for a, b in zip(pa, qa, strict=True)) + abs(r_p - r_q))
    return min(1.0, tv)


def _check_number(name: str, x: float | None) -> None:
    if x is not None and math.isnan(x):
        raise ValueError(f"{name} is NaN")


def token_stats(t: TokenEvidence) -> TokenStats:
    """The per-token statistics of one position (see the module docstring)."""
    _check_number("claimed_logprob", t.claimed_logprob)
    _check_number("served_logprob", t.served_logprob)
    if t.claimed_rank < 0:
        raise ValueError(f"claimed_rank {t.claimed_rank} < 0")
    dnll = None if t.served_logprob is None else t.served_logprob - t.claimed_logprob
    tv = (topk_tv(t.served_top, t.claimed_top)
          if t.served_top and t.claimed_top else None)
    margin = None
    if t.claimed_rank == 0:
        margin = 0.0
    elif t.claimed_top:
        margin = max(0.0, max(lp for _, lp in t.claimed_top) - t.claimed_logprob)
    return TokenStats(agree=t.claimed_rank == 0, rank=t.claimed_rank, dnll=dnll, tv=tv,
                      margin=margin)


# --------------------------------------------------------------------------- per prompt


@dataclass(frozen=True)
class PromptStats:
    """Aggregates over one prompt's continuation: the unit the test treats as independent.

    ``mean_abs_dnll`` over the tokens with a served logprob, ``mean_tv`` over the tokens
    where both sides gave a top-k; None when there were none.
    """

    n_tokens: int
    n_agree: int
    mean_rank: float
    max_rank: int
    n_dnll: int = 0
    mean_dnll: float | None = None       # signed, descriptive
    mean_abs_dnll: float | None = None   # the tested ``dnll`` statistic
    max_abs_dnll: float | None = None
    n_tv: int = 0
    mean_tv: float | None = None
    mean_margin: float | None = None
    key: str | None = None

    @property
    def agreement(self) -> float | None:
        return self.n_agree / self.n_tokens if self.n_tokens else None

    def value(self, statistic: str) -> float | None:
        """This prompt's value of a tested statistic (natural units, unclipped)."""
        if statistic == "dnll":
            return self.mean_abs_dnll
        if statistic == "disagreement":
            return None if not self.n_tokens else 1.0 - self.n_agree / self.n_tokens
        if statistic == "tv":
            return self.mean_tv
        raise KeyError(statistic)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _mean(xs: Sequence[float]) -> float | None:
    return math.fsum(xs) / len(xs) if xs else None


def prompt_stats(tokens: Sequence[TokenEvidence], key: str | None = None) -> PromptStats:
    """Per-token statistics of one prompt's generated tokens, aggregated."""
    ts = [token_stats(t) for t in tokens]
    dnll = [s.dnll for s in ts if s.dnll is not None]
    absd = [abs(x) for x in dnll]
    tvs = [s.tv for s in ts if s.tv is not None]
    margins = [s.margin for s in ts if s.margin is not None]
    return PromptStats(
        n_tokens=len(ts), n_agree=sum(s.agree for s in ts),
        mean_rank=_mean([float(s.rank) for s in ts]) or 0.0,
        max_rank=max((s.rank for s in ts), default=0),
        n_dnll=len(dnll), mean_dnll=_mean(dnll), mean_abs_dnll=_mean(absd),
        max_abs_dnll=max(absd, default=None), n_tv=len(tvs), mean_tv=_mean(tvs),
        mean_margin=_mean(margins), key=key)


# --------------------------------------------------------------------------- statistics


@dataclass(frozen=True)
class StatisticSpec:
    """A tested per-prompt statistic: its default margin δ and clip bound B.

    Each prompt's value is clipped to [0, B] before testing, so the tested parameter is the
    mean of min(value, B). B = 10 δ by default: ``consistent`` then needs at least about
    10 ln(2/alpha) prompts (docs/verify.md: no test can exclude with fewer prompts that a
    fraction of them is served by something else), and a prompt counts at most 10 margins.
    """

    name: str
    description: str
    unit: str
    margin: float
    bound: float


STATISTICS: dict[str, StatisticSpec] = {
    "dnll": StatisticSpec("dnll", "mean |ΔNLL| per token (claimed NLL - served NLL)",
                          "nats/token", margin=0.02, bound=0.2),
    "disagreement": StatisticSpec("disagreement", "1 - greedy agreement (served token is not "
                                  "the claimed argmax)", "fraction of tokens",
                                  margin=0.03, bound=0.3),
    "tv": StatisticSpec("tv", "mean total variation over the shared top-k + remainder",
                        "TV", margin=0.01, bound=0.1),
}
"""Default margins δ (B = 10 δ), set against a measured null (docs/verify.md §3): the packaged
SmolLM2 Q4_1 served by llama-server against the same file dequantised in transformers, 104
calibration prompts of 32 tokens: per-prompt mean |ΔNLL| 0.046 (p99 0.072), disagreement
0.039 (p99 0.094), TV 0.020 (p99 0.028). δ is added to the *calibrated* null mean, so it is
the tolerated excess over what an honest serving stack already shows."""


# --------------------------------------------------------------------------- betting CS
#
# Data x_i in [0, 1] (a clipped statistic divided by B). For a candidate mean m:
#   upper-tail wealth  K+(m) = prod (1 + l_i (x_i - m)),  0 <= l_i <= BET_CAP / m,
#   lower-tail wealth  K-(m) = prod (1 + l_i (m - x_i)),  0 <= l_i <= BET_CAP / (1 - m),
# with l_i chosen from x_1..x_{i-1} only. Under mean <= m (resp. >= m) K+ (resp. K-) is a
# nonnegative supermartingale, so by Ville's inequality P(sup_t K_t >= 1/a) <= a. The bets
# l_i do not depend on m except through the cap, which makes K+ decreasing and K- increasing
# in m: the rejected sets are intervals and a bound is found by bisection.


def _wealth_max(xs: np.ndarray, lams: np.ndarray, ms: np.ndarray, upper: bool) -> np.ndarray:
    """max over t of log K_t(m) (0 at t = 0), for each m in ``ms``, with stored bets
    ``lams`` capped per m."""
    with np.errstate(divide="ignore"):
        caps = BET_CAP / ms if upper else BET_CAP / (1.0 - ms)
    lam = np.minimum(lams[None, :], caps[:, None])
    step = (xs[None, :] - ms[:, None]) if upper else (ms[:, None] - xs[None, :])
    logk = np.cumsum(np.log1p(lam * step), axis=1)
    return np.maximum(logk.max(axis=1), 0.0)


def _bound(xs: Sequence[float], lams: Sequence[float], alpha: float, upper: bool) -> float:
    """Lower (``upper`` wealth) or upper confidence bound on the mean of ``xs`` in [0, 1]:
    the edge of the set of m never rejected at level ``alpha``. The rejected set is [0, LCB)
    (resp. (UCB, 1]), so a grid refined three times brackets the edge to 64^-3 and the
    bracket's conservative end is returned."""
    x, lam = np.asarray(xs, dtype=float), np.asarray(lams, dtype=float)
    target = math.log(1.0 / alpha)
    lo, hi = 0.0, 1.0
    for _ in range(3):
        ms = np.clip(np.linspace(lo, hi, 65), 1e-12, 1.0 - 1e-12)
        rejected = _wealth_max(x, lam, ms, upper) >= target
        if upper:  # rejected: a prefix of the grid; the edge lies after the last rejected m
            if not rejected[0]:
                return lo
            k = int(np.argmin(rejected)) if not rejected.all() else len(ms)
            if k == len(ms):
                return hi
        else:      # rejected: a suffix of the grid; the edge lies before the first rejected m
            if not rejected[-1]:
                return hi
            k = int(np.argmax(rejected))
            if k == 0:
                return lo
        lo, hi = float(ms[k - 1]), float(ms[k])
    return lo if upper else hi  # the conservative end of the last bracket


def _fixed_n_bets(xs: Sequence[float], alpha: float) -> list[float]:
    """Predictable plug-in bets for a sample of known size n (Waudby-Smith & Ramdas 2024,
    eq. 26 with t = n): l_i = sqrt(2 ln(1/alpha) / (n var_{i-1})), var from a prior 1/4."""
    x = np.asarray(xs, dtype=float)
    k = np.arange(1, len(x) + 1, dtype=float)                        # 1 + observations so far
    mean = (0.5 + np.concatenate(([0.0], np.cumsum(x)[:-1]))) / k    # mean before x_i
    ss = 0.25 + np.concatenate(([0.0], np.cumsum((x - mean) ** 2)[:-1]))
    var = np.maximum(ss / k, 1e-12)
    return list(np.sqrt(2.0 * math.log(1.0 / alpha) / (len(x) * var)))


def mean_lcb(xs: Sequence[float], alpha: float) -> float:
    """Lower confidence bound (level ``alpha``) on the mean of i.i.d. ``xs`` in [0, 1]
    (fixed-size betting; the null calibration's bounds)."""
    return _bound(xs, _fixed_n_bets(xs, alpha), alpha, True) if len(xs) else 0.0


def mean_ucb(xs: Sequence[float], alpha: float) -> float:
    """Upper confidence bound, as :func:`mean_lcb`."""
    return _bound(xs, _fixed_n_bets(xs, alpha), alpha, False) if len(xs) else 1.0


# --------------------------------------------------------------------------- calibration


@dataclass(frozen=True)
class Calibration:
    """The null: per-prompt statistics of the claimed weights against themselves (or served
    by a known-good server) on prompts disjoint from the judged ones, and an optional floor.

    ``samples`` holds each statistic's per-prompt values (natural units, unclipped) for the
    calibration prompts with at least ``min_tokens`` tokens; ``floor`` is a tolerated mean
    |ΔNLL| per token (nats), used as an absolute tolerance on ``dnll``.
    """

    samples: Mapping[str, tuple[float, ...]]
    specs: Mapping[str, StatisticSpec]
    floor: float | None = None
    keys: frozenset[str] = frozenset()
    n_prompts: int = 0
    min_tokens: int = 5

    @classmethod
    def from_prompts(cls, null_prompt_stats: Iterable[PromptStats], floor: float | None = None,
                     margin: float | Mapping[str, float] | None = None,
                     bounds: Mapping[str, float] | None = None,
                     statistics: Sequence[str] | None = None,
                     min_tokens: int = 5, min_prompts: int = 10) -> Calibration:
        """Build the null from calibration prompts' statistics.

        ``margin``: δ per statistic (a number is the ``dnll`` margin in nats/token);
        ``bounds``: clip bounds B per statistic (default 10 δ; ``dnll``'s is raised to
        4 x ``floor`` when a floor is given); ``statistics``: which to test (default: each
        present in at least ``min_prompts`` calibration prompts, and ``dnll`` when only a
        floor is given).
        """
        if floor is not None and not floor > 0:
            raise ValueError(f"floor {floor} must be a positive number of nats/token")
        margins = {"dnll": float(margin)} if isinstance(margin, (int, float)) else dict(
            margin or {})
        specs: dict[str, StatisticSpec] = {}
        for name, spec in STATISTICS.items():
            d = margins.pop(name, spec.margin)
            if not d > 0:
                raise ValueError(f"margin for {name} must be > 0, got {d}")
            if bounds and name in bounds:
                b = bounds[name]
            else:
                b = 10.0 * d
                if name == "dnll" and floor is not None:
                    b = max(b, 4.0 * floor)
            if not b > 0:
                raise ValueError(f"bound for {name} must be > 0, got {b}")
            specs[name] = replace(spec, margin=d, bound=float(b))
        if margins:
            raise ValueError(f"unknown statistics in margin: {sorted(margins)}")
        prompts = [p for p in null_prompt_stats if p.n_tokens >= min_tokens]
        samples: dict[str, tuple[float, ...]] = {}
        for name in STATISTICS:
            vals = [p.value(name) for p in prompts]
            samples[name] = tuple(float(v) for v in vals if v is not None)
        if statistics is None:
            statistics = [n for n in STATISTICS if len(samples[n]) >= min_prompts]
            if floor is not None and "dnll" not in statistics:
                statistics = ["dnll", *statistics]
        for name in statistics:
            if name not in STATISTICS:
                raise ValueError(f"unknown statistic {name!r}")
            if not samples[name] and not (name == "dnll" and floor is not None):
                raise ValueError(f"statistic {name!r} has no calibration data (and no floor)")
        if not statistics:
            raise ValueError(f"no statistic has {min_prompts} calibration prompts of "
                             f">= {min_tokens} tokens, and no floor was given")
        keys = frozenset(p.key for p in prompts if p.key is not None)
        return cls(samples={n: samples[n] for n in statistics},
                   specs={n: specs[n] for n in statistics}, floor=floor, keys=keys,
                   n_prompts=len(prompts), min_tokens=min_tokens)


# --------------------------------------------------------------------------- the test


@dataclass(frozen=True)
class StatisticResult:
    """One statistic's standing (natural units; bounds are anytime-valid)."""

    name: str
    n_prompts: int
    mean: float | None              # judged prompts' mean of the clipped statistic
    null_mean: float | None         # calibration's mean (None: floor only)
    null_bounds: tuple[float, float] | None
    null_clipped_fraction: float | None  # calibration prompts at the clip (raise B if many)
    effect: float | None            # mean - null_mean
    effect_ci: tuple[float, float] | None
    bounds: tuple[float, float]     # (LCB at alpha_differs, UCB at alpha_consistent)
    margin: float | None            # δ (None: no calibration, the floor is the tolerance)
    clip: float
    tolerance_differs: float        # differs once LCB > this
    tolerance_consistent: float     # consistent (for this statistic) once UCB < this
    p_differs: float
    p_consistent: float
    state: Literal["differs", "within", "open"]
    prompts_needed_differs: int | None      # more prompts estimated until LCB > tolerance
    prompts_needed_consistent: int | None   # ... until UCB < tolerance (0: already)

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        for k in ("null_bounds", "effect_ci", "bounds"):
            out[k] = list(out[k]) if out[k] is not None else None
        return out


@dataclass(frozen=True)
class Verdict:
    """The decision with its evidence. ``p_value`` is against "within the margin" (small:
    differs); ``p_value_equivalence`` against "outside the margin" (small: consistent); both
    anytime-valid. ``effect``/``ci`` belong to ``statistic``: its judged mean minus its null
    mean, natural units; the CI's lower end fails with probability <= alpha/S, its upper end
    with <= alpha (S = number of statistics)."""

    decision: Decision
    statistic: str | None
    effect: float | None
    ci: tuple[float, float] | None
    p_value: float
    p_value_equivalence: float
    alpha: float
    margin: float | None
    tolerance: float | None
    tokens_used: int
    prompts_used: int
    prompts_skipped: int
    tokens_needed_estimate: int | None
    prompts_needed_estimate: int | None
    reason: str
    statistics: tuple[StatisticResult, ...] = field(default_factory=tuple)
    max_tokens: int | None = None

    def to_json(self) -> dict[str, Any]:
        out = {name: getattr(self, name) for name in self.__dataclass_fields__}
        out["ci"] = list(self.ci) if self.ci is not None else None
        out["statistics"] = [s.to_json() for s in self.statistics]
        return out


class _Stat:
    """Sequential state of one statistic: two e-processes at fixed thresholds."""

    def __init__(self, name: str, spec: StatisticSpec, cal: tuple[float, ...],
                 floor: float | None, alpha: float, n_stats: int):
        self.name, self.spec, self.clip = name, spec, spec.bound
        calibrated = bool(cal)
        # alpha split: differs is Bonferroni over statistics, half to the calibration's bound
        # when there is one; consistent needs every statistic (intersection-union: no split).
        self.alpha_d = alpha / n_stats / (2 if calibrated else 1)
        self.alpha_c = alpha / (2 if calibrated else 1)
        self.cal_fail_d = self.alpha_d if calibrated else 0.0
        self.cal_fail_c = self.alpha_c if calibrated else 0.0
        self.n_stats = n_stats
        self.log_d, self.log_c = math.log(1.0 / self.alpha_d), math.log(1.0 / self.alpha_c)
        xs = [min(max(v, 0.0), self.clip) / self.clip for v in cal]
        self.null_clipped = sum(x >= 1.0 for x in xs) / len(xs) if xs else None
        if calibrated:
            lcb, ucb = mean_lcb(xs, self.alpha_c), mean_ucb(xs, self.alpha_d)
            self.null_mean: float | None = math.fsum(xs) / len(xs) * self.clip
            self.null_bounds: tuple[float, float] | None = (lcb * self.clip, ucb * self.clip)
            tol_d, tol_c = ucb * self.clip + spec.margin, lcb * self.clip + spec.margin
            mean = math.fsum(xs) / len(xs)
            self.var0 = max(math.fsum((x - mean) ** 2 for x in xs) / len(xs), 1e-4)
        else:
            self.null_mean, self.null_bounds = None, None
            tol_d = tol_c = 0.0
            self.var0 = 1e-2
        if floor is not None and name == "dnll":
            tol_d, tol_c = max(tol_d, floor), max(tol_c, floor)
        self.tol_d, self.tol_c = tol_d, tol_c
        self.m_d, self.m_c = tol_d / self.clip, tol_c / self.clip
        self.usable = 0.0 < self.m_d < 1.0 and 0.0 < self.m_c < 1.0
        self.xs: list[float] = []
        self.lam_d: list[float] = []
        self.lam_c: list[float] = []
        self.logk_d = self.logk_c = 0.0
        self.best_d = self.best_c = 0.0
        self.sum = 0.0
        self.wmean = self.wm2 = 0.0  # Welford over the judged data

    def _var(self) -> float:
        n = len(self.xs)
        return (self.var0 + self.wm2) / (n + 1)

    def update(self, v: float) -> None:
        x = min(max(v, 0.0), self.clip) / self.clip
        n, var = len(self.xs), self._var()
        # aGRAPA (Waudby-Smith & Ramdas 2024, §B.2): l = gap / (var + gap^2), the bet that
        # maximises the wealth's growth for the current estimates; the mean's prior is the
        # threshold itself (first bet 0) and the variance's the calibration's.
        mu_d = (self.m_d + self.sum) / (n + 1)
        mu_c = (self.m_c + self.sum) / (n + 1)
        g_d, g_c = mu_d - self.m_d, self.m_c - mu_c
        lam_d = min(max(g_d / (var + g_d * g_d), 0.0), BET_CAP / self.m_d)
        lam_c = min(max(g_c / (var + g_c * g_c), 0.0), BET_CAP / (1.0 - self.m_c))
        self.logk_d += math.log1p(lam_d * (x - self.m_d))
        self.logk_c += math.log1p(lam_c * (self.m_c - x))
        self.best_d = max(self.best_d, self.logk_d)
        self.best_c = max(self.best_c, self.logk_c)
        self.xs.append(x)
        self.lam_d.append(lam_d)
        self.lam_c.append(lam_c)
        self.sum += x
        delta = x - self.wmean
        self.wmean += delta / (n + 1)
        self.wm2 += delta * (x - self.wmean)

    @property
    def differs(self) -> bool:
        return self.best_d >= self.log_d

    @property
    def within(self) -> bool:
        return self.best_c >= self.log_c

    def p_differs(self) -> float:
        return min(1.0, self.n_stats * (self.cal_fail_d + math.exp(-self.best_d)))

    def p_consistent(self) -> float:
        return min(1.0, self.cal_fail_c + math.exp(-self.best_c))

    def _needed(self, upper: bool) -> int | None:
        """Prompts more until this side's wealth reaches its threshold, if the judged
        prompts so far are representative: (ln(1/a) - ln K_t) / g*, where g* is the best
        growth rate mean ln(1 + l(x - m)) of a constant bet on their empirical distribution.
        """
        if len(self.xs) < 2:
            return None
        m = self.m_d if upper else self.m_c
        cap = BET_CAP / m if upper else BET_CAP / (1.0 - m)
        x = np.asarray(self.xs)
        lams = cap * np.arange(1, 65) / 64
        step = (x - m) if upper else (m - x)
        best = max(0.0, float(np.log1p(lams[:, None] * step[None, :]).mean(axis=1).max()))
        if best <= 1e-12:
            return None
        left = (self.log_d - self.logk_d) if upper else (self.log_c - self.logk_c)
        return max(1, math.ceil(left / best))

    def result(self) -> StatisticResult:
        n = len(self.xs)
        c = self.clip
        if n:
            lcb = _bound(self.xs, self.lam_d, self.alpha_d, True) * c
            ucb = _bound(self.xs, self.lam_c, self.alpha_c, False) * c
            mean: float | None = self.sum / n * c
        else:
            lcb, ucb, mean = 0.0, c, None
        effect = eci = None
        if mean is not None and self.null_mean is not None and self.null_bounds is not None:
            effect = mean - self.null_mean
            eci = (lcb - self.null_bounds[1], ucb - self.null_bounds[0])
        state: Literal["differs", "within", "open"] = (
            "differs" if self.differs else "within" if self.within else "open")
        need_d = self._needed(True) if state == "open" else None
        need_c = 0 if self.within else self._needed(False) if state == "open" else None
        return StatisticResult(
            name=self.name, n_prompts=n, mean=mean, null_mean=self.null_mean,
            null_bounds=self.null_bounds, null_clipped_fraction=self.null_clipped,
            effect=effect, effect_ci=eci, bounds=(lcb, ucb),
            margin=self.spec.margin if self.null_mean is not None else None, clip=c,
            tolerance_differs=self.tol_d,
            tolerance_consistent=self.tol_c, p_differs=self.p_differs(),
            p_consistent=self.p_consistent(), state=state, prompts_needed_differs=need_d,
            prompts_needed_consistent=need_c)


class SequentialTest:
    """The sequential rule: feed judged prompts' statistics one at a time (in a random order
    fixed by a recorded seed); ``update`` returns a :class:`Verdict` as soon as the verdict
    is clear or the budget is spent, else None.

    Guarantees (prompts i.i.d. from the same bank as the calibration's, disjoint from them),
    whatever the stopping time: P(differs) <= alpha when every statistic is within its margin,
    P(consistent) <= alpha when some statistic is outside it.
    """

    def __init__(self, calibration: Calibration, alpha: float = 0.01,
                 max_tokens: int | None = None, max_prompts: int | None = None):
        if not 0.0 < alpha < 1.0:
            raise ValueError(f"alpha {alpha} must be in (0, 1)")
        self.calibration, self.alpha = calibration, alpha
        self.max_tokens, self.max_prompts = max_tokens, max_prompts
        names = list(calibration.specs)
        self._stats = [_Stat(n, calibration.specs[n], tuple(calibration.samples.get(n, ())),
                             calibration.floor, alpha, len(names)) for n in names]
        bad = [s.name for s in self._stats if not s.usable]
        if bad:
            raise ValueError(
                f"tolerance at or beyond the clip bound for {bad}: the calibration is noisier "
                "than the margins assume; raise bounds= (or margins) in Calibration")
        self.tokens_used = self.prompts_used = self.prompts_skipped = 0
        self._seen: set[str] = set()
        self._final: Verdict | None = None

    @property
    def done(self) -> bool:
        return self._final is not None

    @property
    def tokens_left(self) -> int | None:
        return None if self.max_tokens is None else max(0, self.max_tokens - self.tokens_used)

    def update(self, stats: PromptStats) -> Verdict | None:
        if self._final is not None:
            return self._final
        if stats.key is not None:
            if stats.key in self.calibration.keys:
                raise ValueError(f"prompt {stats.key!r} was a calibration prompt: the null must "
                                 "come from prompts disjoint from the judged ones")
            if stats.key in self._seen:
                raise ValueError(f"prompt {stats.key!r} judged twice: prompts are the "
                                 "independent units")
            self._seen.add(stats.key)
        self.tokens_used += stats.n_tokens
        if stats.n_tokens < self.calibration.min_tokens:
            self.prompts_skipped += 1
        else:
            self.prompts_used += 1
            for s in self._stats:
                v = stats.value(s.name)
                if v is not None:
                    s.update(v)
        decided = any(s.differs for s in self._stats) or all(s.within for s in self._stats)
        spent = (self.max_tokens is not None and self.tokens_used >= self.max_tokens) or (
            self.max_prompts is not None
            and self.prompts_used + self.prompts_skipped >= self.max_prompts)
        if decided or spent:
            self._final = self.verdict()
        return self._final

    def verdict(self) -> Verdict:
        """The verdict now (``inconclusive`` unless decided)."""
        if self._final is not None:
            return self._final
        results = tuple(s.result() for s in self._stats)
        p_d = min(1.0, min(r.p_differs for r in results))
        p_c = min(1.0, max(r.p_consistent for r in results))
        per_prompt = self.tokens_used / max(1, self.prompts_used)  # skipped ones cost too
        differs = [s for s in self._stats if s.differs]
        if differs:
            top = max(differs, key=lambda s: s.best_d - s.log_d)
            r = next(x for x in results if x.name == top.name)
            return self._make("differs", r, p_d, p_c, results, None, None,
                              f"{r.name}: lower bound {r.bounds[0]:.4g} > tolerance "
                              f"{r.tolerance_differs:.4g} {top.spec.unit}")
        if all(s.within for s in self._stats):
            # the statistic that was last to settle (least wealth to spare) bounds the claim
            top = min(self._stats, key=lambda s: s.best_c - s.log_c)
            r = next(x for x in results if x.name == top.name)
            parts = ", ".join(f"{x.name} {x.bounds[1]:.4g} < {x.tolerance_consistent:.4g}"
                              for x in results)
            return self._make("consistent", r, p_d, p_c, results, None, None,
                              f"every statistic's upper bound is below its tolerance ({parts})")
        # inconclusive: which way is closer, and roughly how much more data. differs needs
        # one statistic, consistent all of them.
        d_opts = [(r.prompts_needed_differs, r) for r in results
                  if r.prompts_needed_differs is not None]
        c_opts = [(r.prompts_needed_consistent, r) for r in results]
        best_d = min(d_opts, key=lambda o: o[0], default=None)
        best_c = (max(c_opts, key=lambda o: o[0])
                  if all(n is not None for n, _ in c_opts) else None)
        cands = [o for o in (best_d, best_c) if o is not None]
        est, lead = min(cands, key=lambda o: o[0]) if cands else (
            None, min(results, key=lambda r: r.p_differs))
        if est is None:
            why = ("the estimates sit between the tolerances (or too few prompts to say): more "
                   "judged prompts are not expected to decide; more calibration prompts or a "
                   "wider margin would")
        else:
            way = "differs" if best_d is not None and est == best_d[0] else "consistent"
            why = (f"about {est} more prompts (~{math.ceil(est * per_prompt)} tokens) may "
                   f"decide ({way}, {lead.name})")
        spent = (self.max_tokens is not None and self.tokens_used >= self.max_tokens) or (
            self.max_prompts is not None
            and self.prompts_used + self.prompts_skipped >= self.max_prompts)
        budget = "budget spent" if spent else "not decided"
        tokens_est = None if est is None else math.ceil(est * per_prompt)
        return self._make("inconclusive", lead, p_d, p_c, results, tokens_est, est,
                          f"{budget}; {why}")

    def _make(self, decision: Decision, r: StatisticResult, p_d: float, p_c: float,
              results: tuple[StatisticResult, ...], tokens_est: int | None,
              prompts_est: int | None, reason: str) -> Verdict:
        return Verdict(
            decision=decision, statistic=r.name, effect=r.effect, ci=r.effect_ci,
            p_value=p_d, p_value_equivalence=p_c, alpha=self.alpha, margin=r.margin,
            tolerance=(r.tolerance_differs if decision != "consistent"
                       else r.tolerance_consistent),
            tokens_used=self.tokens_used, prompts_used=self.prompts_used,
            prompts_skipped=self.prompts_skipped, tokens_needed_estimate=tokens_est,
            prompts_needed_estimate=prompts_est, reason=reason, statistics=results,
            max_tokens=self.max_tokens)


# --------------------------------------------------------------------------- honesty checks


@dataclass(frozen=True)
class HonestyCheck:
    """One check that needs no claimed model. ``passed`` is None when there was nothing to
    check (e.g. no top-k returned)."""

    name: str
    passed: bool | None
    n_checked: int
    n_failed: int
    summary: str
    evidence: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


def _check(name: str, n: int, failed: int, summary: str, evidence: dict[str, Any],
           allowed: int = 0) -> HonestyCheck:
    return HonestyCheck(name=name, passed=None if n == 0 else failed <= allowed, n_checked=n,
                        n_failed=failed, summary=summary, evidence=evidence)


class _Tally:
    """Positions checked and failed, the worst value seen, and the first failures (evidence
    a reader can look up): what every per-position honesty check reports."""

    def __init__(self) -> None:
        self.n = self.failed = 0
        self.worst = 0.0
        self.examples: list[dict[str, Any]] = []

    def seen(self, value: float = 0.0) -> None:
        self.n += 1
        self.worst = max(self.worst, value)

    def failure(self, value: float, example: dict[str, Any]) -> None:
        self.failed += 1
        self.worst = max(self.worst, value)
        if len(self.examples) < 5:
            self.examples.append(example)


def _with_top(sequences: Sequence[Sequence[ServedToken]]
              ) -> Iterator[tuple[int, int, ServedToken]]:
    """(sequence, position, token) for every served token that came with its top-k."""
    for si, seq in enumerate(sequences):
        for pos, t in enumerate(seq):
            if t.top:
                yield si, pos, t


def check_greedy_argmax(sequences: Sequence[Sequence[ServedToken]],
                        atol: float = 1e-4) -> HonestyCheck:
    """At temperature 0 the served token must be the argmax of its own top-k: its logprob
    (the top-k entry for its id when present, else the token's logprob) is at least the top-k
    maximum minus ``atol`` (ties within ``atol`` pass)."""
    tally = _Tally()
    for si, pos, t in _with_top(sequences):
        entries = _first_entries(t.top)
        own = entries.get(t.id, t.logprob)
        best_id, best = max(entries.items(), key=lambda kv: kv[1])
        tally.seen()
        gap = best - own if own is not None else math.inf
        if own is None or gap > atol:
            tally.failure(gap, {"sequence": si, "position": pos, "served_id": t.id,
                                "served_logprob": own, "top_id": best_id,
                                "top_logprob": best})
    n, failed = tally.n, tally.failed
    return _check("greedy_argmax", n, failed,
                  f"{failed} of {n} positions served a token that is not its own top-k argmax"
                  if failed else f"served token was its own top-k argmax at all {n} positions",
                  {"atol": atol, "worst_gap": tally.worst, "examples": tally.examples})


def check_topk_mass(sequences: Sequence[Sequence[ServedToken]],
                    tol: float = 1e-3) -> HonestyCheck:
    """The top-k probabilities of one position sum to at most 1 + ``tol``, no logprob is
    above ``tol``, and no id appears twice."""
    tally = _Tally()
    for si, pos, t in _with_top(sequences):
        ids = [int(i) for i, _ in t.top]
        mass = math.fsum(math.exp(min(lp, 50.0)) for _, lp in t.top)
        tally.seen(mass)
        if mass > 1.0 + tol or any(lp > tol for _, lp in t.top) or len(set(ids)) != len(ids):
            tally.failure(mass, {"sequence": si, "position": pos, "mass": mass,
                                 "duplicate_ids": len(set(ids)) != len(ids)})
    n, failed, worst = tally.n, tally.failed, tally.worst
    return _check("topk_mass", n, failed,
                  f"{failed} of {n} positions had top-k mass above 1 (max {worst:.6f})"
                  if failed else f"top-k mass at most 1 at all {n} positions (max {worst:.6f})",
                  {"tol": tol, "max_mass": worst, "examples": tally.examples})


def check_logprob_matches_topk(sequences: Sequence[Sequence[ServedToken]],
                               atol: float = 1e-4) -> HonestyCheck:
    """Where the served token appears in its own top-k, both report the same logprob."""
    tally = _Tally()
    for si, pos, t in _with_top(sequences):
        entry = _first_entries(t.top).get(t.id) if t.logprob is not None else None
        if entry is None:
            continue
        d = abs(entry - t.logprob)
        tally.seen(d)
        if d > atol:
            tally.failure(d, {"sequence": si, "position": pos, "logprob": t.logprob,
                              "top_entry": entry})
    n, failed = tally.n, tally.failed
    return _check("logprob_matches_topk", n, failed,
                  f"{failed} of {n} positions reported two logprobs for the served token"
                  if failed else f"token and top-k logprobs agree at all {n} positions",
                  {"atol": atol, "max_abs_diff": tally.worst, "examples": tally.examples})


def check_determinism(pairs: Sequence[tuple[Sequence[ServedToken], Sequence[ServedToken]]],
                      atol: float = 1e-3, allowed_id_mismatches: int = 0) -> HonestyCheck:
    """Identical requests (T = 0) answered twice: same token ids, and logprobs within
    ``atol`` over the positions where the ids agree. A pair whose ids diverge counts as a
    failure (``allowed_id_mismatches`` of them are tolerated: servers whose kernels are not
    batch-invariant flip near-ties now and then)."""
    id_mis = lp_mis = 0
    worst = 0.0
    examples: list[dict[str, Any]] = []
    for pi, (a, b) in enumerate(pairs):
        first = next((k for k, (x, y) in enumerate(zip(a, b, strict=False)) if x.id != y.id), None)
        if first is None and len(a) != len(b):
            first = min(len(a), len(b))
        common = len(a) if first is None else first
        diffs = [abs(x.logprob - y.logprob) for x, y in zip(a[:common], b[:common], strict=True)
                 if x.logprob is not None and y.logprob is not None]
        d = max(diffs, default=0.0)
        worst = max(worst, d)
        if first is not None:
            id_mis += 1
        elif d > atol:
            lp_mis += 1
        if (first is not None or d > atol) and len(examples) < 5:
            examples.append({"pair": pi, "first_id_divergence": first, "max_abs_logprob": d})
    n = len(pairs)
    failed = id_mis + lp_mis
    passed = None if n == 0 else (id_mis <= allowed_id_mismatches and lp_mis == 0)
    return HonestyCheck(
        name="determinism", passed=passed, n_checked=n, n_failed=failed,
        summary=(f"{id_mis} of {n} repeated requests changed tokens, {lp_mis} changed "
                 f"logprobs by more than {atol} (max {worst:.2e})"),
        evidence={"atol": atol, "id_mismatches": id_mis, "logprob_mismatches": lp_mis,
                  "max_abs_logprob_diff": worst, "allowed_id_mismatches":
                  allowed_id_mismatches, "examples": examples})


def check_echo_consistency(
        pairs: Sequence[tuple[Sequence[ServedToken], Sequence[tuple[int, float | None]]]],
        atol: float = 0.05, max_violation_rate: float = 0.0) -> HonestyCheck:
    """A generation against the echo of the same text (prompt + completion sent back with
    ``echo``/prompt logprobs): at each position where both exist and name the same id, the
    two logprobs agree within ``atol`` nats (prefill and decode kernels differ a little).
    Comparison of a pair stops at the first id that differs (the echo re-tokenises text);
    such pairs are counted, not failed. Fails when more than ``max_violation_rate`` of the
    compared positions differ by more than ``atol``."""
    n = bad = retok = 0
    worst = 0.0
    total = 0.0
    examples: list[dict[str, Any]] = []
    for pi, (gen, echo) in enumerate(pairs):
        for pos, (g, (eid, elp)) in enumerate(zip(gen, echo, strict=False)):
            if g.id != int(eid):
                retok += 1
                break
            if g.logprob is None or elp is None:
                continue
            d = abs(g.logprob - elp)
            n += 1
            total += d
            worst = max(worst, d)
            if d > atol:
                bad += 1
                if len(examples) < 5:
                    examples.append({"pair": pi, "position": pos, "generation": g.logprob,
                                     "echo": elp})
    allowed = math.floor(max_violation_rate * n)
    return _check("echo_consistency", n, bad,
                  f"{bad} of {n} positions: echo and generation logprobs differ by more than "
                  f"{atol} (max {worst:.3g})" if bad else
                  f"echo and generation logprobs agree within {atol} at all {n} positions",
                  {"atol": atol, "max_abs_diff": worst,
                   "mean_abs_diff": total / n if n else None, "retokenised_pairs": retok,
                   "max_violation_rate": max_violation_rate, "examples": examples},
                  allowed=allowed)


# --------------------------------------------------------------------------- exact binomial


def betainc(a: float, b: float, x: float) -> float:
    """The regularised incomplete beta function I_x(a, b) (continued fraction, modified
    Lentz; Numerical Recipes §6.4). Relative accuracy about 1e-14."""
    if not (a > 0 and b > 0):
        raise ValueError("a and b must be positive")
    if x <= 0.0:
        return 0.0
    if x >= 1.0:
        return 1.0
    ln_front = (math.lgamma(a + b) - math.lgamma(a) - math.lgamma(b)
                + a * math.log(x) + b * math.log1p(-x))
    if x > (a + 1.0) / (a + b + 2.0):  # the fraction converges fast below this point
        return 1.0 - betainc(b, a, 1.0 - x)
    tiny = 1e-300
    c, d = 1.0, 1.0 - (a + b) * x / (a + 1.0)
    d = 1.0 / (d if abs(d) > tiny else tiny)
    h = d
    for m in range(1, 500):
        m2 = 2 * m
        num = m * (b - m) * x / ((a + m2 - 1.0) * (a + m2))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        h *= d * c
        num = -(a + m) * (a + b + m) * x / ((a + m2) * (a + m2 + 1.0))
        d = 1.0 + num * d
        d = 1.0 / (d if abs(d) > tiny else tiny)
        c = 1.0 + num / c
        c = c if abs(c) > tiny else tiny
        step = d * c
        h *= step
        if abs(step - 1.0) < 1e-15:
            break
    return math.exp(ln_front) * h / a


def beta_ppf(q: float, a: float, b: float) -> float:
    """The q quantile of Beta(a, b) (bisection on :func:`betainc`, to 1e-15)."""
    if not 0.0 <= q <= 1.0:
        raise ValueError("q must be in [0, 1]")
    if q == 0.0:
        return 0.0
    if q == 1.0:
        return 1.0
    lo, hi = 0.0, 1.0
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if betainc(a, b, mid) < q:
            lo = mid
        else:
            hi = mid
        if hi - lo < 1e-15:
            break
    return 0.5 * (lo + hi)


def clopper_pearson(k: int, n: int, alpha: float = 0.05,
                    side: Literal["two", "upper", "lower"] = "two") -> tuple[float, float]:
    """Exact binomial confidence interval for a proportion k/n at level 1 - ``alpha``.

    ``side="upper"``: (0, U) with P(p > U) <= alpha (what a false-positive-rate bench
    reports); ``"lower"``: (L, 1); ``"two"``: alpha/2 on each side.
    """
    if not (0 <= k <= n and n > 0):
        raise ValueError(f"need 0 <= k <= n and n > 0, got k={k}, n={n}")
    a = alpha / 2 if side == "two" else alpha
    lo = 0.0 if k == 0 or side == "upper" else beta_ppf(a, k, n - k + 1)
    hi = 1.0 if k == n or side == "lower" else beta_ppf(1.0 - a, k + 1, n - k)
    return lo, hi
