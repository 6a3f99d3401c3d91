"""``verify``: is this endpoint serving the open weights it claims? (issue 18, design §7)

The audit's machinery, pointed at another question. The endpoint continues prompts of a
fixed, versioned prompt set greedily with token log-probabilities (``audit.send``: the same
providers, preflight, transport, record / replay and run directory); the claimed weights,
run locally, rescore the *same token ids* (``align.align_ids``, exact: no re-encoding) and
report more than a scorer does (``ReferenceModel.inspect``: rank, own top-k, the endpoint's
top-k ids priced). Per-token evidence becomes per-prompt statistics that a sequential test
(``verify_stats``) compares with a null calibrated on *disjoint* prompts; it stops as soon
as the verdict is clear, within the token / cost budget.

Generation and scoring take turns (a batch of prompts is generated, then scored, then the
test looks): on a small CPU box a llama-server generating while torch scores collapses.

The prompt set is split in two, once and for all, by a hash of each prompt: the
*calibration* half (a known-good serving of the claimed weights is verified with
``calibrate=True`` on it; its per-prompt statistics are the null) and the *judged* half
(every verification of a suspect endpoint, in a seeded random order). So the null is never
calibrated on a prompt a verdict is judged on, whatever runs are combined.

Run directory (besides the audit's ``completions.jsonl`` and ``exchanges.jsonl``):
``verify.json`` (settings, prompt-set version, verdict, honesty checks, counts) and
``verify_prompts.jsonl`` (one line per prompt judged or calibrated: its statistics and
per-token evidence). A run replays offline from its exchanges with the same verdict.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import random
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

from .align import AlignmentError, TokenizerView, align_ids
from .errors import ConfigError, EndpointError
from .plan import Plan
from .plan import plan as audit_plan
from .records import Completion, GenerationRequest, Prefill
from .redact import Redactor
from .reference import PositionView
from .rundir import RunDir, read_jsonl, write_atomic
from .verify_stats import (
    STATISTICS,
    Calibration,
    HonestyCheck,
    PromptStats,
    SequentialTest,
    ServedToken,
    TokenEvidence,
    Verdict,
    check_determinism,
    check_echo_consistency,
    check_greedy_argmax,
    check_logprob_matches_topk,
    check_topk_mass,
    prompt_stats,
)

PROMPT_SET_VERSION = "verify-v1"
"""The prompt set's name. v1: the builtin prefill bank (prose, encyclopedic, code), a seeded
sample of ``per_corpus`` openings per corpus cut to ``prefill_tokens`` tokens of the claimed
model's tokenizer, raw framing, split into calibration / judged halves by
sha256(version:prefill id). Changing any of these makes another prompt set: the run records
them all, with a digest of the prompt ids, and a calibration of another set is refused."""

EXIT_CODES = {"consistent": 0, "differs": 8, "inconclusive": 9, "honesty": 10}
"""consistent 0; differs 8 (a statistic left the margin); inconclusive 9 (budget spent);
honesty 10 (statistics not ``differs`` but an honesty check failed: the numbers the endpoint
returns are not what greedy decoding of one model gives)."""

CLAIMED_TOP_K = 10
DETERMINISM_ATOL = 0.05


@dataclass(frozen=True)
class PromptSet:
    """What decides the prompts: recorded in verify.json, compared on resume and with the
    calibration's."""

    version: str = PROMPT_SET_VERSION
    per_corpus: int = 200
    prefill_tokens: int = 4
    seed: int = 18
    max_tokens: int = 32
    top_logprobs: int = 5

    def to_json(self) -> dict[str, Any]:
        return {name: getattr(self, name) for name in self.__dataclass_fields__}


@dataclass(frozen=True)
class VerifyPlan:
    """A verification's settings, resolved once: the audit plan that reaches the endpoint
    (raw framing, ids alignment, the claimed model as its reference) and the test's."""

    audit: Plan
    prompts: PromptSet
    calibrate: bool                      # this run *is* a calibration (the null's source)
    calibration: Path | None             # a calibration run's directory
    noise_floor: float | None            # tolerated mean |ΔNLL| per token (nats)
    alpha: float
    max_tokens_budget: int               # output tokens judged (or calibrated), at most
    max_cost: float | None               # USD, at most (needs a priced model)
    batch: int                           # prompts generated before each scoring turn
    repeats: int                         # repeated requests for the determinism check
    margins: tuple[tuple[str, float], ...] = ()
    order_seed: int = 0
    collect: bool = False                # judged half, no test: a pool (bench/verify_power.py)

    @property
    def out(self) -> Path:
        return self.audit.out

    def settings_json(self) -> dict[str, Any]:
        return {"calibrate": self.calibrate,
                "calibration": str(self.calibration) if self.calibration else None,
                "noise_floor": self.noise_floor, "alpha": self.alpha,
                "max_tokens_budget": self.max_tokens_budget, "max_cost": self.max_cost,
                "batch": self.batch, "repeats": self.repeats, "margins": dict(self.margins),
                "collect": self.collect,
                "order_seed": self.order_seed}


def verify_plan(*, out: str | Path, claimed: str | None = None, target: str | None = None,
                base_url: str | None = None, model: str = "", api_key_env: str | None = None,
                flavour: str = "auto", calibrate: bool = False,
                calibration: str | Path | None = None, noise_floor: float | None = None,
                alpha: float = 0.01, max_tokens_budget: int = 3000,
                max_cost: float | None = None, batch: int = 8, repeats: int = 4,
                margins: dict[str, float] | None = None, prompts: PromptSet | None = None,
                order_seed: int = 0, collect: bool = False, record_mode: str = "auto",
                fixtures: str | Path | None = None, device: str | None = None,
                concurrency: int = 4, timeout: float = 120.0, retries: int = 3,
                pricing: str | None = None, quiet: bool = False,
                torch_threads: int | None = None,
                pin_upstream: str | None = None) -> VerifyPlan:
    """Check a verification's settings and resolve them (``claimed``: a local directory,
    GGUF file or hub id; None = the packaged SmolLM2)."""
    ps = prompts or PromptSet()
    if not 0.0 < alpha < 0.5:
        raise ConfigError(f"--alpha {alpha} must be between 0 and 0.5.")
    if max_tokens_budget < 1:
        raise ConfigError("--max-tokens-budget must be at least 1 output token.")
    if max_cost is not None and not max_cost > 0:
        raise ConfigError("--max-cost must be more than 0 USD.")
    if batch < 1 or repeats < 0:
        raise ConfigError("--batch must be at least 1 and --repeats at least 0.")
    if noise_floor is not None and not (isinstance(noise_floor, int | float)
                                        and math.isfinite(noise_floor) and noise_floor > 0):
        raise ConfigError(f"--noise-floor {noise_floor!r} must be a positive number of "
                          "nats/token (the tolerated mean |ΔNLL| per token).")
    unknown = sorted(set(margins or {}) - set(STATISTICS))
    if unknown:
        raise ConfigError(f"Unknown statistic {', '.join(unknown)} in --margin; the "
                          f"statistics are {', '.join(STATISTICS)}.")
    if any(not v > 0 for v in (margins or {}).values()):
        raise ConfigError("Every --margin must be more than 0.")
    cal = Path(calibration) if calibration else None
    if calibrate and cal is not None:
        raise ConfigError("--calibrate makes this run a calibration; it cannot also take "
                          "--calibration RUN.")
    if collect and (calibrate or cal is not None):
        raise ConfigError("collect gathers the judged half without a test: no calibration.")
    if not calibrate and not collect and cal is None and noise_floor is None:
        raise ConfigError(
            "verify needs a null to compare the endpoint with: --calibration RUN (a verify "
            "--calibrate run of a known-good serving of the claimed weights, e.g. llama-server "
            "or vLLM on the same checkpoint: its prompts are disjoint from the judged ones), "
            "or --noise-floor NATS (a tolerated mean |ΔNLL| per token; then only ΔNLL is "
            "tested). See docs/verify.md.")
    if cal is not None and not (cal / "verify_prompts.jsonl").is_file():
        raise ConfigError(f"--calibration {cal} is not a verify calibration run (no "
                          "verify_prompts.jsonl). Make one with verify --calibrate.")
    p = audit_plan(out=out, target=target, base_url=base_url, model=model,
                   api_key_env=api_key_env, flavour=flavour, framings=("raw",),
                   prefills="builtin", per_corpus=ps.per_corpus,
                   prefill_tokens=ps.prefill_tokens, seed=ps.seed, max_tokens=ps.max_tokens,
                   top_logprobs=ps.top_logprobs, concurrency=concurrency,
                   start_concurrency=min(concurrency, 4), retries=retries, timeout=timeout,
                   record_mode=record_mode, fixtures=fixtures, reference=claimed,
                   device=device, alignment="ids", quiet=quiet, pricing=pricing,
                   torch_threads=torch_threads, pin_upstream=pin_upstream)
    return VerifyPlan(audit=p, prompts=ps, calibrate=calibrate, calibration=cal,
                      noise_floor=float(noise_floor) if noise_floor is not None else None,
                      alpha=alpha, max_tokens_budget=max_tokens_budget, max_cost=max_cost,
                      batch=batch, repeats=repeats,
                      margins=tuple(sorted((margins or {}).items())), order_seed=order_seed,
                      collect=collect)


# -- the prompt set -------------------------------------------------------------------------
def is_calibration(version: str, prefill_id: str) -> bool:
    """Which half of the prompt set a prompt belongs to: fixed by its id and the version,
    so calibration and judged prompts are disjoint across every run of one version."""
    return hashlib.sha256(f"{version}:{prefill_id}".encode()).digest()[0] % 2 == 0


def prompt_order(requests: Sequence[GenerationRequest], ps: PromptSet, calibrate: bool,
                 order_seed: int) -> list[GenerationRequest]:
    """This run's half of the prompt set, in a seeded random order (the test assumes the
    judged prompts come as a random sample: their order must not follow the bank's)."""
    mine = [r for r in requests if is_calibration(ps.version, r.prefill.id) == calibrate]
    random.Random(f"{ps.version}:{order_seed}:{'cal' if calibrate else 'judged'}").shuffle(mine)
    return mine


def digest(ids: Sequence[str]) -> str:
    return hashlib.sha256("\n".join(ids).encode()).hexdigest()[:16]


# -- per-token evidence ---------------------------------------------------------------------
class Vocabulary:
    """The claimed tokenizer's bytes -> id, to name the endpoint's top-k entries (wire shapes
    give them as strings; llama.cpp gives ids but the record keeps [token, logprob]). An
    entry whose string names no single token (a split UTF-8 character) is left out: its mass
    falls into the coarsened TV's remainder, which is exact for what is left."""

    def __init__(self, view: TokenizerView):
        self.view = view
        self._by_bytes: dict[bytes, int] | None = None

    def id_of(self, token: str) -> int | None:
        if self._by_bytes is None:
            table: dict[bytes, int] = {}
            for i in range(len(self.view.tok)):
                if i in self.view.special_ids:
                    continue
                table.setdefault(self.view.token_bytes(i), i)
            self._by_bytes = table
        return self._by_bytes.get(token.encode())


def served_tokens(c: Completion, vocab: Vocabulary) -> list[ServedToken]:
    """The endpoint's side of each generated position, with its top-k named by id."""
    ids = c.token_ids or []
    out = []
    for k, tid in enumerate(ids):
        lp = c.logprobs[k] if k < len(c.logprobs) else None
        top = None
        if c.top_logprobs is not None and k < len(c.top_logprobs):
            pairs, seen = [], set()
            for tok, tlp in c.top_logprobs[k]:
                # U+FFFD: a split character, shown alike for several tokens; no single id
                i = None if "\ufffd" in str(tok) else vocab.id_of(str(tok))
                if i is not None and i not in seen and isinstance(tlp, int | float) \
                        and math.isfinite(tlp):
                    seen.add(i)
                    pairs.append((i, float(tlp)))
            top = tuple(pairs) or None
        out.append(ServedToken(int(tid), lp if isinstance(lp, int | float) else None, top))
    return out


def token_evidence(served: Sequence[ServedToken], views: Sequence[PositionView]
                   ) -> list[TokenEvidence]:
    """Pair each served position with the claimed model's view of it (same ids, same
    context)."""
    return [TokenEvidence(served_id=s.id, served_logprob=s.logprob,
                          claimed_logprob=v.logprob, claimed_rank=v.rank,
                          claimed_top=(*v.top, *v.extra), served_top=s.top)
            for s, v in zip(served, views, strict=True)]


# -- the run --------------------------------------------------------------------------------
@dataclass
class VerifyResult:
    """What a verification found: the verdict (None for a calibration run), the honesty
    checks, the overall outcome and its exit code, and where it is written."""

    out: Path
    outcome: str                         # consistent | differs | inconclusive | honesty |
    verdict: Verdict | None              # calibrated
    honesty: list[HonestyCheck] = field(default_factory=list)
    prompts: list[PromptStats] = field(default_factory=list)
    report: dict[str, Any] = field(default_factory=dict)

    @property
    def exit_code(self) -> int:
        return EXIT_CODES.get(self.outcome, 0)


def verify(vp: VerifyPlan) -> VerifyResult:
    """Run a verification (or a calibration) over the run directory; resumable, replayable."""
    run = RunDir(vp.out, Redactor())
    try:
        with run.writer():
            return _verify(vp, run)
    finally:
        run.close()


def _log(vp: VerifyPlan, msg: str) -> None:
    if not vp.audit.quiet:
        import sys

        print(msg, file=sys.stderr, flush=True)


def load_calibration(vp: VerifyPlan, claimed: str) -> tuple[list[PromptStats], dict[str, Any]]:
    """A calibration run's per-prompt statistics, checked to be of this prompt set and
    claimed model."""
    assert vp.calibration is not None
    doc_path = vp.calibration / "verify.json"
    try:
        doc = json.loads(doc_path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise ConfigError(f"--calibration {vp.calibration}: cannot read {doc_path} ({e}).") \
            from e
    if not doc.get("calibrate"):
        raise ConfigError(f"--calibration {vp.calibration} is a verification, not a "
                          "calibration: its prompts are judged ones. Use a verify --calibrate "
                          "run.")
    if doc.get("prompt_set") != vp.prompts.to_json():
        raise ConfigError(f"--calibration {vp.calibration} used another prompt set "
                          f"({doc.get('prompt_set')}); this run uses {vp.prompts.to_json()}.")
    if doc.get("claimed", {}).get("name") != claimed:
        raise ConfigError(f"--calibration {vp.calibration} calibrated claimed model "
                          f"{doc.get('claimed', {}).get('name')!r}, not {claimed!r}.")
    stats = [PromptStats(**{k: v for k, v in row["stats"].items()
                            if k in PromptStats.__dataclass_fields__})
             for row in read_jsonl(vp.calibration / "verify_prompts.jsonl")
             if row.get("role") == "calibration"]
    return stats, {"run": str(vp.calibration), "prompts": len(stats),
                   "endpoint": doc.get("target"), "digest": doc.get("prompts_digest")}


def _verify(vp: VerifyPlan, run: RunDir) -> VerifyResult:
    from .audit import build_requests, send, tokenizer_for
    from .transport import TransportStats

    p = vp.audit
    spec = p.scoring.reference
    doc_path = run.path / "verify.json"
    testing = not vp.calibrate and not vp.collect
    settings = {"prompt_set": vp.prompts.to_json(), "calibrate": vp.calibrate,
                "collect": vp.collect,
                "claimed": {"name": spec.name, "path": spec.path, "gguf_file": spec.gguf_file},
                "model": p.generation.model, "order_seed": vp.order_seed}
    if doc_path.exists():
        old = json.loads(doc_path.read_text(encoding="utf-8"))
        diff = [k for k in settings if old.get(k) != settings[k]]
        if diff:
            raise ConfigError(f"{run.path} holds a verification with other settings "
                              f"({', '.join(diff)}). Pass a new --out.")
    # the calibration first: a bad one fails before anything is sent
    calibration = None
    cal_info: dict[str, Any] | None = None
    if testing:
        cal_stats: list[PromptStats] = []
        if vp.calibration is not None:
            cal_stats, cal_info = load_calibration(vp, spec.name)
        try:
            calibration = Calibration.from_prompts(
                cal_stats, floor=vp.noise_floor, margin=dict(vp.margins) or None)
            test = SequentialTest(calibration, alpha=vp.alpha,
                                  max_tokens=vp.max_tokens_budget)
        except ValueError as e:
            raise ConfigError(f"The null cannot be built: {e}.") from e
    prefills, requests, _ = build_requests(p.generation, spec, p.quiet)
    order = prompt_order(requests, vp.prompts, vp.calibrate, vp.order_seed)
    if not order:
        raise ConfigError("This prompt set has no prompts in this half; raise per_corpus.")
    tokenizer = tokenizer_for(spec)
    view = TokenizerView(tokenizer, None)
    vocab = Vocabulary(view)
    claimed = claimed_model(spec, p.scoring.device, tokenizer)
    stats_io = TransportStats()
    from .accounting import Pricer

    pricer = Pricer(p.generation.model, p.endpoint.prices)
    if vp.max_cost is not None and pricer.price is None:
        raise ConfigError(f"--max-cost needs a price for {p.generation.model!r} (none in the "
                          "table; pass --pricing FILE).")
    info: dict[str, Any] = {}

    anchor = order[0]

    def generate(todo: list[GenerationRequest]) -> None:
        """One generation turn. ``send`` preflights with a 2-token version of the run's
        first prompt every turn (answered from the recording after the first turn), so a
        later turn cannot be refused for a prompt that ends at once, and no row is sent
        again to serve as the probe."""
        nonlocal info
        if not todo:
            return
        info = asyncio.run(send(p.endpoint, p.generation, todo, run, stats_io,
                                quiet=True, sample=anchor)) or info

    prompt_log = run.path / "verify_prompts.jsonl"
    write_atomic(prompt_log, "")   # rewritten from the completions on every run: derived
    used: list[PromptStats] = []
    served_all: list[list[ServedToken]] = []
    skipped: dict[str, int] = {}
    prompt_counts = [0, 0, []]           # rows with usage, rows whose prompt count differs
    degraded: dict[str, int] = {}
    verdict: Verdict | None = None
    tokens = 0
    spent_cost = False
    _log(vp, f"verify: {'calibration' if vp.calibrate else 'judged'} half of {len(requests)} "
             f"prompts ({len(order)} here), {spec.name} claimed, budget "
             f"{vp.max_tokens_budget} output tokens")
    with open(prompt_log, "a", encoding="utf-8") as log_fh:
        for lo in range(0, len(order), vp.batch):
            batch = order[lo: lo + vp.batch]
            done = run.load_completions()
            generate([r for r in batch if r.row_key not in done
                      or done[r.row_key].error is not None])
            done = run.load_completions()
            rows: list[tuple[GenerationRequest, Completion, Any, list[ServedToken]]] = []
            for r in batch:
                c = done.get(r.row_key)
                if c is None or c.error is not None:
                    skipped["failed"] = skipped.get("failed", 0) + 1
                    continue
                for reason in c.degraded:
                    degraded[reason] = degraded.get(reason, 0) + 1
                if not c.token_ids or len(c.logprobs) != len(c.token_ids):
                    why = "no token ids" if not c.token_ids else "logprob count"
                    skipped[why] = skipped.get(why, 0) + 1
                    continue
                item = _align(view, c, prompt_counts)
                if item is None:
                    skipped["misaligned"] = skipped.get("misaligned", 0) + 1
                    continue
                rows.append((r, c, item, served_tokens(c, vocab)))
            if not rows:
                continue
            views = claimed.inspect([it.ids for _, _, it, _ in rows],
                                    [it.start for _, _, it, _ in rows], k=CLAIMED_TOP_K,
                                    extra=[[[i for i, _ in (s.top or ())] for s in st]
                                           for _, _, _, st in rows])
            for (r, c, _, st), vs in zip(rows, views, strict=True):
                ev = token_evidence(st, vs)
                ps = prompt_stats(ev, key=r.prefill.id)
                used.append(ps)
                served_all.append(st)
                tokens += ps.n_tokens
                log_fh.write(run.redactor.dumps({
                    "role": "calibration" if vp.calibrate else "judged", "key": r.prefill.id,
                    "corpus": r.prefill.corpus, "stats": ps.to_json(),
                    "finish_reason": c.finish_reason, "degraded": c.degraded,
                    "tokens": {"served_id": [e.served_id for e in ev],
                               "served_logprob": [e.served_logprob for e in ev],
                               "claimed_logprob": [round(e.claimed_logprob, 6) for e in ev],
                               "claimed_rank": [e.claimed_rank for e in ev]}}) + "\n")
                if testing and verdict is None:
                    verdict = test.update(ps)
            log_fh.flush()
            cost = pricer.cost(stats_io.prompt_tokens, stats_io.completion_tokens)
            spent_cost = vp.max_cost is not None and cost is not None and cost >= vp.max_cost
            if verdict is not None or spent_cost or tokens >= vp.max_tokens_budget:
                break
    if testing and verdict is None:
        verdict = test.verdict()
    if not used:
        raise EndpointError(
            f"No prompt gave usable evidence ({skipped or 'nothing answered'}): verify needs "
            "token ids and log-probabilities from the endpoint (llama.cpp's server and vLLM "
            "return ids; see docs/verify.md). Everything is kept in " + str(run.path) + ".")
    honesty = [*honesty_checks(vp, run, order, done, served_all, generate, info, vocab),
               check_prompt_tokens(*prompt_counts)]
    outcome = ("calibrated" if vp.calibrate else "collected" if vp.collect
               else outcome_of(verdict, honesty))
    report = {
        **settings, "tool": "blackbox-audit verify", "settings": vp.settings_json(),
        "prompts_digest": digest([r.prefill.id for r in order]),
        "prompts_in_set": len(requests), "prompts_in_half": len(order),
        "target": {"kind": p.endpoint.target.kind, "base_url": p.endpoint.base_url,
                   "model": p.generation.model,
                   "flavour": info.get("flavour"), "capabilities": info.get("capabilities")},
        "outcome": outcome, "exit_code": EXIT_CODES.get(outcome, 0),
        "verdict": verdict.to_json() if verdict is not None else None,
        "calibration": cal_info, "noise_floor": vp.noise_floor,
        "null": _null_summary(calibration) if calibration is not None else None,
        "honesty": [h.to_json() for h in honesty],
        "counts": {"prompts_used": len(used), "output_tokens": tokens, "skipped": skipped,
                   "degraded_reasons": degraded},
        "spent": {"requests": stats_io.to_json(),
                  "usd": pricer.cost(stats_io.prompt_tokens, stats_io.completion_tokens),
                  "stopped_by_cost": spent_cost},
        "summary": summary_of(used),
    }
    write_atomic(doc_path, run.redactor.dumps(report, indent=2) + "\n")
    write_atomic(run.path / "report.html", run.redactor.text(render_html(report, prompt_log)))
    return VerifyResult(run.path, outcome, verdict, honesty, used, report)


def render_html(report: dict[str, Any], prompt_log: Path) -> str:
    """report.html of a verification: the verdict, its statistics, the honesty checks and
    every prompt's statistics (no model text: ids and numbers only; Jinja2 autoescape, a
    content security policy that runs nothing)."""
    import jinja2

    env = jinja2.Environment(loader=jinja2.PackageLoader("blackbox_audit", "templates"),
                             autoescape=True, undefined=jinja2.StrictUndefined)

    def fmt(x: float | None) -> str:
        return "n/a" if x is None else f"{x:.4g}"

    claimed = report["claimed"]
    return env.get_template("verify.html.j2").render(
        outcome=report["outcome"], exit_code=report["exit_code"],
        base_url=report["target"].get("base_url") or "(replayed)",
        model=report["target"].get("model"),
        claimed=claimed.get("gguf_file") or claimed.get("path"),
        prompt_set=json.dumps(report["prompt_set"]), digest=report["prompts_digest"],
        verdict=report["verdict"], honesty=report["honesty"],
        prompts=list(read_jsonl(prompt_log)), fmt=fmt)


def _align(view: TokenizerView, c: Completion, counts: list) -> Any:
    """The claimed model's sequence for a row (exact ids), counting rows whose endpoint says
    it saw another number of prompt tokens than the claimed tokenizer gives: such a row is
    still scored on the prompt as sent (what the endpoint claims to have continued), and the
    count is an honesty check (an injected system prompt or prefix shows here first)."""
    if c.prompt_tokens is not None:
        counts[0] += 1
    try:
        return align_ids(view, c)
    except AlignmentError as e:
        if c.prompt_tokens is None or "prompt tokens" not in str(e):
            return None
        counts[1] += 1
        if len(counts[2]) < 5:
            counts[2].append({"key": c.prefill_id, "detail": str(e)})
        try:
            return align_ids(view, replace(c, prompt_tokens=None))
        except AlignmentError:
            return None


def check_prompt_tokens(n: int, failed: int, examples: list) -> HonestyCheck:
    """The endpoint's ``usage.prompt_tokens`` equals the claimed tokenizer's count of the
    prompt sent (with or without BOS)."""
    return HonestyCheck(
        "prompt_tokens", None if n == 0 else failed == 0, n, failed,
        f"{failed} of {n} answers counted another number of prompt tokens than the prompt "
        "sent has" if failed else f"prompt token counts match at all {n} answers"
        if n else "not checked: the endpoint reports no prompt token counts",
        {"examples": examples})


@lru_cache(maxsize=1)
def claimed_model(spec: Any, device: str | None, tokenizer: Any) -> Any:
    """The claimed weights, loaded once per process (a calibration and the verifications
    after it, in one program or test session, share them; scoring changes nothing in them)."""
    from .reference import ReferenceModel

    return ReferenceModel(spec, device=device, tokenizer=tokenizer)


def _null_summary(cal: Calibration) -> dict[str, Any]:
    return {"prompts": cal.n_prompts, "floor": cal.floor,
            "statistics": {n: {"margin": s.margin, "clip": s.bound,
                               "mean": (math.fsum(cal.samples[n]) / len(cal.samples[n])
                                        if cal.samples.get(n) else None)}
                           for n, s in cal.specs.items()}}


def summary_of(used: Sequence[PromptStats]) -> dict[str, Any]:
    """Descriptive means over the prompts used (what a reader looks at first)."""
    n_tok = sum(p.n_tokens for p in used)

    def mean(name: str) -> float | None:
        vals = [p.value(name) for p in used if p.value(name) is not None]
        return math.fsum(vals) / len(vals) if vals else None

    return {"prompts": len(used), "tokens": n_tok,
            "greedy_agreement": sum(p.n_agree for p in used) / n_tok if n_tok else None,
            **{f"mean_{n}": mean(n) for n in STATISTICS}}


def outcome_of(verdict: Verdict | None, honesty: Sequence[HonestyCheck]) -> str:
    """``differs`` when the statistics say so; else ``honesty`` when a check failed; else the
    verdict's decision."""
    assert verdict is not None
    if verdict.decision == "differs":
        return "differs"
    if any(h.passed is False for h in honesty):
        return "honesty"
    return verdict.decision


def honesty_checks(vp: VerifyPlan, run: RunDir, order: Sequence[GenerationRequest],
                   done: dict[str, Completion], served: list[list[ServedToken]],
                   generate, info: dict[str, Any], vocab: Vocabulary) -> list[HonestyCheck]:
    """The checks that need no claimed model: the served token is its own top-k's argmax,
    top-k mass <= 1, token and top-k logprobs agree, repeated requests answer alike, and
    (where the endpoint echoes prompts) echo and generation logprobs agree."""
    checks = [check_greedy_argmax(served), check_topk_mass(served),
              check_logprob_matches_topk(served)]
    firsts = [r for r in order if r.row_key in done and done[r.row_key].usable][: vp.repeats]
    # The repeat asks the same prompt for one more token: a new request (a recorded answer
    # cannot stand in for it), whose first max_tokens tokens greedy decoding must repeat.
    again = [repeat_request(r) for r in firsts]
    generate([a for a in again if a.row_key not in run.load_completions()])
    now = run.load_completions()
    pairs = []
    for r, a in zip(firsts, again, strict=True):
        first, second = done[r.row_key], now.get(a.row_key)
        if second is None or second.error is not None or not first.token_ids \
                or not second.token_ids:
            continue
        x = served_tokens(first, vocab)
        y = served_tokens(second, vocab)
        if first.finish_reason != "stop" or len(y) > len(x):
            y = y[: len(x)]
        pairs.append((x, y))
    # Kernels that are not batch-invariant (llama.cpp on f16 weights, vLLM) flip a near-tie
    # now and then and move logprobs by ~1e-2 when requests share a batch: tolerated up to a
    # quarter of the pairs and 0.05 nats; sampling changes nearly every 32-token pair.
    checks.append(check_determinism(pairs, atol=DETERMINISM_ATOL,
                                    allowed_id_mismatches=len(pairs) // 4))
    checks.append(check_one_upstream(done.values()))
    caps = info.get("capabilities") or {}
    if caps.get("echo"):
        checks.append(echo_check(vp, firsts, done))
    else:
        checks.append(HonestyCheck("echo_consistency", None, 0, 0,
                                   "not checked: the endpoint offers no echo / prompt "
                                   "logprobs", {}))
    return checks


def check_one_upstream(rows: Iterable[Completion]) -> HonestyCheck:
    """Every answer came from one upstream, where a router names them (OpenRouter routes one
    model name to several providers unless pinned): a verdict over a mixture says nothing of
    any one of them. Not checked when no answer names its upstream."""
    named = Counter(c.upstream for c in rows if c.upstream and c.error is None)
    n = sum(named.values())
    if not n:
        return HonestyCheck("one_upstream", None, 0, 0, "not checked: no answer named the "
                            "upstream that served it (not a router, or it does not say)", {})
    main, most = named.most_common(1)[0]
    failed = n - most
    summary = (f"all {n} answers from {main}" if not failed else
               f"{failed} of {n} answers came from another upstream than {main} "
               f"({dict(named)}): verify one at a time (OpenRouter: provider.order with "
               "allow_fallbacks false)")
    return HonestyCheck("one_upstream", failed == 0, n, failed, summary,
                        {"upstreams": dict(named)})


def repeat_request(r: GenerationRequest) -> GenerationRequest:
    """The same prompt, one more token, under another row key (the determinism check)."""
    return replace(r, prefill=Prefill(f"{r.prefill.id}-repeat", r.prefill.corpus,
                                      r.prefill.text), max_tokens=r.max_tokens + 1)


def echo_check(vp: VerifyPlan, firsts: Sequence[GenerationRequest],
               done: dict[str, Completion]) -> HonestyCheck:
    """Echo vs generation: prompt + completion sent back with echo / prompt logprobs; the
    echoed logprobs of the completion's tokens must match the generation's."""
    from .echo import echo_pairs

    pairs = asyncio.run(echo_pairs(vp.audit.endpoint, vp.audit.generation,
                                   [(r, done[r.row_key]) for r in firsts]))
    return check_echo_consistency(pairs)


def describe(result: VerifyResult, as_json: bool = False) -> str:
    """What the terminal shows: the outcome in one line, why, the evidence that decided,
    the honesty checks, and where everything is (model output is never printed)."""
    rep = result.report
    if as_json:
        return json.dumps(rep, indent=2)
    s = rep.get("summary", {})
    lines = []
    agreement = s.get("greedy_agreement")
    agree = f"{agreement:.3f}" if agreement is not None else "n/a"
    seen = (f"{s.get('prompts')} prompts, {s.get('tokens')} output tokens; greedy agreement "
            f"{agree}")
    v = result.verdict
    if v is None:
        lines.append(f"calibrated: {seen}. Use it with --calibration {result.out}.")
    else:
        lines.append(f"verdict: {result.outcome.upper()} (exit {result.exit_code}) after "
                     f"{v.tokens_used} output tokens, {v.prompts_used} prompts; alpha {v.alpha}")
        lines.append(f"  {v.decision}: {v.reason}")
        if v.effect is not None and v.ci is not None:
            lines.append(f"  {v.statistic}: effect {v.effect:+.4g} over the null, CI "
                         f"[{v.ci[0]:+.4g}, {v.ci[1]:+.4g}], margin {v.margin}; p (within the "
                         f"margin) {v.p_value:.3g}, p (outside it) {v.p_value_equivalence:.3g}")
        for r in v.statistics:
            mean = "n/a" if r.mean is None else f"{r.mean:.4g}"
            null = "floor" if r.null_mean is None else f"{r.null_mean:.4g}"
            lines.append(f"  {r.name:12s} mean {mean} (null {null}), bounds [{r.bounds[0]:.4g}, "
                         f"{r.bounds[1]:.4g}], tolerances {r.tolerance_consistent:.4g} / "
                         f"{r.tolerance_differs:.4g}: {r.state}")
        lines.append(f"  seen: {seen}")
    for h in result.honesty:
        mark = {True: "ok  ", False: "FAIL", None: "--  "}[h.passed]
        lines.append(f"  honesty {mark} {h.name}: {h.summary}")
    ps = rep.get("prompt_set", {})
    lines.append(f"prompt set {ps.get('version')} ({rep.get('prompts_digest')}); evidence: "
                 f"{result.out}/verify.json, {result.out}/verify_prompts.jsonl")
    return "\n".join(lines)


__all__ = ["EXIT_CODES", "PROMPT_SET_VERSION", "PromptSet", "VerifyPlan", "VerifyResult",
           "describe", "is_calibration", "prompt_order", "verify", "verify_plan"]
