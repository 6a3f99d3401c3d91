"""The noise floor: how large a gap numerical noise alone produces, and each row's standing.

A ranking always has a top, even when target and reference are the same model. Two floors
tell signal from noise:

- **self** (always available): the reference against itself through the same scoring path.
  A sample of rows is scored again one at a time (no batching, no padding) and compared with
  the batched scores the ranking used. This is the scorer's own numerical noise: about 1e-6
  nats/token in fp32 on a CPU, far larger in bf16 on a GPU, and a bug detector for padding.
- **base** (when the user has one): a run of the *untouched base model served the same way
  as the target* (e.g. ``fixtures/base-smollm2``: the Q4_1 GGUF in llama-server against the
  same weights in fp32 transformers). Its per-row gaps are the floor of quantisation, kernels
  and batching on the target's side: 0.028 nats/token at p99 for that fixture
  (docs/noise-floor.md).

A user who measured a base floor passes it as ``--noise-floor`` (nats/token, or the base
run's directory, measured here with ``base_floor``). The
floor used for standing is the largest p99 |ΔNLL| of the serving floors present (base or
given; the self floor alone says nothing about serving noise, so without one no row gets a
``vs_floor``); each ranked row then gets ``vs_floor = nll_diff / floor``: below 1, its gap is
within what noise produces.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .records import Completion, Score


def _nearest_rank(xs: Sequence[float], p: float) -> float:
    """The ``p`` quantile of sorted ``xs`` by nearest rank."""
    return xs[min(len(xs) - 1, max(0, round(p * (len(xs) - 1))))]


def quantiles(values: Sequence[float]) -> dict[str, float]:
    """Median, p1, p5, p95, p99, and the p99 and max of |v| (nearest rank)."""
    xs = sorted(values)
    if not xs:
        return {}
    out = {"n": len(xs), **{name: _nearest_rank(xs, p) for name, p in (
        ("median", 0.5), ("p1", 0.01), ("p5", 0.05), ("p95", 0.95), ("p99", 0.99))}}
    absolute = sorted(abs(x) for x in xs)
    return {**out, "max_abs": absolute[-1], "p99_abs": _nearest_rank(absolute, 0.99)}


def sample_rank(key: str, seed: int = 0) -> int:
    """A row's place in the self floor's sample order: a hash of its key. The sample is the
    rows of lowest rank (a bottom-k rule), so whether a row is sampled does not depend on the
    rows around it or on the order they arrive in: a scorer fed rows one at a time
    (``RowScorer``, while generation runs) keeps the sample as it goes and scores it in idle
    moments, and picks the rows a pass over the finished run would pick."""
    return int.from_bytes(hashlib.blake2b(f"{seed}:{key}".encode(), digest_size=8).digest(),
                          "big")


def single_pass_nll(reference, item: Any) -> float:
    """Mean NLL per token of one row scored alone: no batch, no padding."""
    (lps,) = reference.score([item.ids], [item.start])
    return -sum(lps) / len(lps)


def base_floor(completions: dict[str, Completion], scores: dict[str, Score],
               min_tokens: int = 5) -> dict[str, float]:
    """Per-row ΔNLL of a base-against-itself run (rows the ranking would keep)."""
    return quantiles([s.nll_diff for k, s in scores.items()
                      if k in completions and completions[k].usable
                      and s.n_target_tokens >= min_tokens])


def floor_value(noise: dict[str, Any]) -> float | None:
    """The floor rows are measured against: the larger p99 |ΔNLL| of the *serving* floors
    present (a base run's, or one the user gave). The scorer's own floor is recorded but
    never stands alone: at ~1e-6 nats/token it would put every row at 1e5 floors, which
    tells a reader nothing about serving noise (None then: no vs_floor)."""
    values = [f["p99_abs"] for f in (noise.get(k) for k in ("base", "given")) if f]
    return max(values) if values else None


def given_floor(value: str | float) -> dict[str, Any]:
    """``--noise-floor``: a number (nats/token), or the directory of a scored base run (the
    untouched base served like the target, audited against itself) whose per-row gaps are
    the floor."""
    try:
        return {"p99_abs": float(value), "source": "given"}
    except (TypeError, ValueError):
        pass
    from .rundir import RunDir

    path = Path(str(value))
    if not (path / "manifest.json").is_file():
        raise ConfigError(f"--noise-floor {value}: neither a number (nats/token) nor a run "
                          "directory (no manifest.json there).")
    run = RunDir(path)
    ref = (run.read_manifest().reference or {}).get("name")
    scored = sorted(f.name[len("scores."):-len(".jsonl")] for f in path.glob("scores.*.jsonl"))
    if ref not in scored:  # rescored runs: the one reference that scored it
        ref = scored[0] if len(scored) == 1 else None
    scores = run.load_scores(ref) if ref else {}
    floor = base_floor(run.load_completions(), scores) if scores else {}
    if not floor:
        raise ConfigError(f"--noise-floor {value}: that run has no scored rows of 5 tokens or "
                          "more to measure a floor from; score it first (blackbox-audit score).")
    return {**floor, "source": str(path)}


def combine(previous: dict[str, Any] | None, measured: dict[str, Any] | None,
            given: str | float | None) -> dict[str, Any]:
    """The run's noise-floor record: this scoring's self floor (else the one kept from an
    earlier session), a user-given floor, and the floor rows stand against."""
    noise = {k: v for k, v in (previous or {}).items() if k != "floor"}
    noise.update(measured or {})
    if given is not None:
        noise["given"] = given_floor(given)
    return {**noise, "floor": floor_value(noise)}
