"""The audit, end to end: prefills -> completions -> reference scores -> ranking.

Follow one row through ``run_audit``: a :class:`Prefill` is framed into a
:class:`GenerationRequest` (``build_requests``), the provider turns it into a
:class:`Completion` appended to completions.jsonl (``generate``), alignment and the reference
turn that into a :class:`Score` appended to scores.<ref>.jsonl (``score_run``), and
``rank_run`` writes ranked.jsonl/.csv. Each stage reads the run directory, so each can be rerun
alone: ``score_run`` with another reference never pays for generation again.
"""

from __future__ import annotations

import asyncio
import platform
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from . import __version__
from .accounting import Pricer, run_totals, session_requests
from .align import AlignmentError, TokenizerView, align, choose_alignment
from .credentials import read_key, request_headers
from .dispatch import AdaptiveLimiter, run_all
from .errors import AuditError, ConfigError, DegradedShareExceeded, EndpointError
from .framing import (
    ALL_FRAMINGS,
    CONTINUE_INSTRUCTION,
    FALLBACK_FRAMINGS,
    FRAMINGS,
    ChatTemplate,
    chat_messages,
    continue_messages,
    render_prompt,
)
from .noise import combine, given_floor, self_floor
from .prefills import documents, make_cutter, select_prefills
from .progress import Progress, count_progress
from .quality import REASONS, count_reasons, withhold_secrets
from .rank import COLUMNS, RankConfig, rank
from .records import Completion, GenerationRequest, Prefill
from .redact import Redactor
from .reference import ReferenceModel, ReferenceSpec, load_tokenizer
from .rundir import RunDir
from .scores import score_row
from .transport import MODES, FixtureStore, RetryPolicy, TransportStats, build_client

# Settings that decide which requests a run sends: a resumed run must match them.
GENERATION_KEYS = ("model", "framings", "chat_mode", "prefills", "corpora", "per_corpus",
                   "prefill_tokens", "prefill_tokenizer", "seed", "max_tokens", "top_logprobs")


@dataclass
class AuditConfig:
    out: str
    base_url: str | None = None
    model: str = ""
    api_key_env: str | None = None
    flavour: str = "auto"
    framings: list[str] = field(default_factory=lambda: list(FRAMINGS))
    chat_mode: str = "template"          # template: render client-side; prefill: server-side
    chat_template: str | None = None     # Jinja file; default: the reference tokenizer's
    prefills: str = "builtin"
    corpora: list[str] | None = None
    per_corpus: int | None = 1000
    prefill_tokens: int = 3
    prefill_tokenizer: str = "reference"
    seed: int = 0
    max_tokens: int = 100
    top_logprobs: int = 5
    concurrency: int = 16                # the cap on requests in flight (adaptive below it)
    start_concurrency: int | None = None  # where the adaptive window starts: min(cap, 8)
    retries: int = 3                     # extra attempts per request (tenacity, bounded)
    timeout: float = 120.0
    record_mode: str = "auto"
    fixtures: str | None = None          # default: <out>/exchanges.jsonl
    reference: str | None = None
    device: str | None = None
    alignment: str = "auto"
    rank_key: str = "ppl_diff"
    min_tokens: int = 5
    min_compression_ratio: float = 0.0
    generate_only: bool = False          # stop after generation (recording fixtures)
    noise_floor: str | float | None = None  # nats/token or a base run dir (docs/scores.md)
    max_degraded_share: float = 0.25
    quiet: bool = False
    target: str | None = None            # KIND:MODEL (providers/registry.py); else base_url
    reference_only: bool = False         # degraded mode for targets without logprobs
    pricing: str | None = None           # JSON file over the built-in pricing table
    verify_prompts: bool = False         # echo every prompt back; mark prefill_altered rows

    def validate(self) -> None:
        bad = [f for f in self.framings if f not in ALL_FRAMINGS]
        if bad or not self.framings:
            raise ConfigError(f"Unknown framing {', '.join(bad) or '(none)'}; choose from "
                              f"{', '.join(ALL_FRAMINGS)}.")
        if self.record_mode not in MODES:
            raise ConfigError(f"--record-mode must be one of {', '.join(MODES)}.")
        if self.chat_mode not in ("template", "prefill"):
            raise ConfigError("--chat-mode must be template or prefill.")
        if self.alignment not in ("auto", "ids", "text"):
            raise ConfigError("--alignment must be auto, ids or text.")
        if not self.base_url and not self.target and self.record_mode != "replay":
            raise ConfigError("--base-url is required (the target's OpenAI-compatible endpoint, "
                              "e.g. http://127.0.0.1:8080/v1), unless you --replay fixtures.")
        if not self.model and not self.target:
            raise ConfigError("--model is required: the target model's name at the endpoint.")
        if self.reference_only and self.rank_key == "ppl_diff":
            self.rank_key = "nll_ref"  # the only key without target logprobs
        if self.reference_only and self.rank_key != "nll_ref":
            raise ConfigError(f"--reference-only ranks by reference surprisal (--rank-by "
                              f"nll_ref); {self.rank_key} needs target log-probabilities.")
        for name, value, lo in (("--max-tokens", self.max_tokens, 1),
                                ("--top-logprobs", self.top_logprobs, 1),
                                ("--concurrency", self.concurrency, 1),
                                ("--start-concurrency", 1 if self.start_concurrency is None
                                 else self.start_concurrency, 1),
                                ("--retries", self.retries, 0)):
            if value < lo:
                raise ConfigError(f"{name} must be at least {lo}.")
        if self.noise_floor is not None:
            given_floor(self.noise_floor)  # a bad floor fails now, not after generation
        if not 0.0 <= self.max_degraded_share <= 1.0:
            raise ConfigError("--max-degraded-share must be between 0 and 1.")
        self.rank_config()

    def retry_policy(self) -> RetryPolicy:
        return RetryPolicy(attempts=self.retries + 1, attempt_timeout=self.timeout)

    def rank_config(self) -> RankConfig:
        return RankConfig(self.rank_key, self.min_tokens, self.min_compression_ratio)

    def resolve_target(self):
        """The target (providers/registry.py), filling model, base URL and key variable from
        ``KIND:MODEL``; then the framings and chat mode the target allows (no call made)."""
        from providers.registry import parse_target

        from .preflight import static_plan

        t = parse_target(self.target, base_url=self.base_url, model=self.model or None,
                         api_key_env=self.api_key_env, flavour=self.flavour)
        self.model = t.model
        self.base_url = t.base_url  # credentials, if the URL held any, are in t alone
        if self.target and self.record_mode != "replay":
            self.api_key_env = t.api_key_env
        self.framings, warnings, self.chat_mode = static_plan(t, self.framings, self.chat_mode,
                                                              self.reference_only)
        return t, warnings

    def generation_settings(self) -> dict[str, Any]:
        d = asdict(self)
        return {k: d[k] for k in GENERATION_KEYS}

    @property
    def fixtures_path(self) -> Path:
        return Path(self.fixtures) if self.fixtures else Path(self.out) / "exchanges.jsonl"


@dataclass
class AuditResult:
    run: RunDir
    manifest: dict[str, Any]
    ranked: list[dict[str, Any]]


def log(cfg: AuditConfig, msg: str) -> None:
    if not cfg.quiet:
        print(msg, file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    import httpx
    import torch
    import transformers

    return {"blackbox_audit": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "httpx": httpx.__version__}


def chat_template(path: str | None, tokenizer, name: str, needed: bool) -> ChatTemplate | None:
    """The chat framing's template: a given Jinja file, else the reference tokenizer's."""
    if path:
        return ChatTemplate.from_file(path)
    return ChatTemplate.from_tokenizer(tokenizer, name) if needed else None


# -- stage 1: prefills and requests --------------------------------------------------------
def build_requests(cfg: AuditConfig, tokenizer, template: ChatTemplate | None
                   ) -> tuple[list[Prefill], list[GenerationRequest]]:
    counter = (tokenizer if cfg.prefill_tokenizer == "reference"
               else load_tokenizer(ReferenceSpec.parse(cfg.prefill_tokenizer)))
    cut = make_cutter(lambda s: counter(s, add_special_tokens=False).input_ids, counter.decode)
    docs = count_progress(documents(cfg.prefills), "prefills", "documents read", quiet=cfg.quiet)
    prefills = select_prefills(docs, cut, cfg.prefill_tokens,
                               cfg.per_corpus, cfg.seed, cfg.corpora)
    requests = []
    for p in prefills:
        for framing in cfg.framings:
            if framing == "chat-continue":
                requests.append(GenerationRequest(p, framing, cfg.max_tokens, cfg.top_logprobs,
                                                  messages=continue_messages(p.text)))
            elif framing == "chat" and cfg.chat_mode == "prefill":
                requests.append(GenerationRequest(p, framing, cfg.max_tokens, cfg.top_logprobs,
                                                  messages=chat_messages(p.text)))
            else:
                requests.append(GenerationRequest(
                    p, framing, cfg.max_tokens, cfg.top_logprobs,
                    prompt=render_prompt(framing, p.text, template)))
    return prefills, requests


# -- stage 2: generation -------------------------------------------------------------------
async def generate(cfg: AuditConfig, todo: list[GenerationRequest], run: RunDir,
                   redactor: Redactor, stats: TransportStats, target=None) -> dict[str, Any]:
    """Send every request in ``todo``; append each answer (or failure) as it arrives.
    ``target`` is the resolved target (``cfg.resolve_target``), parsed here when not given."""
    from providers.base import RequestFailed
    from providers.registry import parse_target

    key = read_key(cfg.api_key_env, required=True, why=" (named by --api-key-env)")
    redactor.add(key)
    store = None
    if cfg.record_mode != "off":
        store = FixtureStore(cfg.fixtures_path, redactor,
                             writable=cfg.record_mode in ("record", "auto"))
        if cfg.record_mode == "replay" and not cfg.fixtures_path.exists():
            raise ConfigError(f"--replay needs recorded fixtures, and {cfg.fixtures_path} does "
                              "not exist. Pass --fixtures PATH.")
    from .preflight import run_preflight

    if target is None:
        target = parse_target(cfg.target, base_url=cfg.base_url, model=cfg.model,
                              api_key_env=cfg.api_key_env, flavour=cfg.flavour)
    # SDK adapters (OpenAI, Anthropic) put the key in their own header.
    headers = request_headers(target.url_headers, key, sdk=target.uses_sdk)
    base_url = cfg.base_url or "http://replay.invalid/v1"
    info: dict[str, Any] = {}
    limiter = AdaptiveLimiter(cfg.concurrency, cfg.start_concurrency)
    pricer = Pricer(cfg.model, cfg.pricing)
    async with build_client(base_url, mode=cfg.record_mode, store=store, headers=headers,
                            timeout=cfg.timeout, stats=stats, retry=cfg.retry_policy(),
                            feedback=limiter, max_connections=cfg.concurrency) as client:
        # Preflight: the same 2-token version of the first request the run has always sent
        # (so recorded runs replay), plus a prefill check when the run relies on one.
        sample = (GenerationRequest(todo[0].prefill, todo[0].framing, 2, todo[0].top_logprobs,
                                    prompt=todo[0].prompt, messages=todo[0].messages)
                  if todo else None)
        provider, report = await run_preflight(
            target, client, key, planned=cfg.framings, warnings=[], chat_mode=cfg.chat_mode,
            reference_only=cfg.reference_only, top_logprobs=cfg.top_logprobs, sample=sample,
            rows_per_framing=len(todo) // max(len(cfg.framings), 1),
            max_tokens=cfg.max_tokens, pricing=cfg.pricing, for_audit=True,
            token_ids=cfg.alignment == "ids")
        info.update(flavour=report.target.get("flavour") or target.kind,
                    capabilities=provider.capabilities.to_json(), preflight=report.to_json())
        if report.refusal:
            raise EndpointError(report.refusal + " Nothing more was sent.")
        if cfg.verify_prompts:
            provider.echo_prompts = True
            echo = report.confirmed.get("echo", "not offered by this endpoint")
            if not echo.startswith("yes"):
                raise EndpointError(
                    f"--verify-prompts needs the endpoint to echo the prompt back with its "
                    f"tokens, and this one cannot ({echo}; offered by vLLM, Together and "
                    "Fireworks). Run without --verify-prompts. Nothing more was sent.")
        log(cfg, report.summary())
        progress = Progress("generation", len(todo), quiet=cfg.quiet)
        failed = 0

        async def call(req: GenerationRequest) -> Completion:
            try:
                c = await provider.generate(req)
            except RequestFailed as e:  # this row only; retries are behind us (transport)
                c = Completion.failed(req, str(e))
            return withhold_secrets(c, redactor)  # before anything is written or scored

        def done(req: GenerationRequest, c: Completion) -> None:
            nonlocal failed
            failed += c.error is not None
            run.append_completion(c)
            progress.update(advance=1, failed=failed, retries=stats.retried,
                            in_flight=limiter.in_flight,
                            tokens=stats.prompt_tokens + stats.completion_tokens,
                            cost_usd=pricer.cost(stats.prompt_tokens, stats.completion_tokens))

        try:
            await run_all(todo, call, done, limiter)
        finally:
            info["concurrency"] = limiter.to_json()
        progress.finish(failed=failed, retries=stats.retried)
    return info


# -- stage 3: reference scoring ------------------------------------------------------------
def score_run(run: RunDir, completions: dict[str, Completion], reference: ReferenceModel,
              view: TokenizerView, alignment: str = "auto", quiet: bool = False,
              noise_sample: int = 32) -> dict[str, Any]:
    """Score every usable completion not yet scored by this reference; append as we go.

    Then score ``noise_sample`` of the new rows again one at a time: the scorer's own noise
    floor (``noise.self_floor``), which the ranking's ``vs_floor`` column is measured against.
    """
    have = run.load_scores(reference.name)
    todo = [c for k, c in completions.items() if c.usable and k not in have]
    if alignment == "auto":
        alignment = choose_alignment(view, (c for c in completions.values() if c.usable))
    items, rows, misaligned = [], [], {}
    limit = reference.max_length
    for c in todo:
        try:
            item = align(view, c, alignment)
        except AlignmentError as e:
            misaligned[c.row_key] = str(e)
            continue
        if len(item.ids) > limit:
            misaligned[c.row_key] = (f"{len(item.ids)} tokens with the context, more than the "
                                     f"reference takes in one pass ({limit})")
            continue
        items.append(item)
        rows.append(c)
    progress = Progress("rescoring", sum(len(i.ids) for i in items), unit="tokens",
                        quiet=quiet)
    chunk = 64
    nll_ref: dict[str, float] = {}   # this session's rows, for the self noise floor
    t0 = time.monotonic()
    for lo in range(0, len(items), chunk):
        part = items[lo: lo + chunk]
        base = progress.done
        ref_lps = reference.score([i.ids for i in part], [i.start for i in part],
                                  progress=lambda d, _t, b=base: progress.update(done=b + d))
        for c, item, lps in zip(rows[lo: lo + chunk], part, ref_lps, strict=True):
            score = score_row(c, item, lps)
            run.append_score(reference.name, score)
            nll_ref[c.row_key] = score.nll_ref
        progress.update(rows=f"{min(lo + chunk, len(items))}/{len(items)}")
    progress.finish()
    seconds = round(time.monotonic() - t0, 2)
    paths: dict[str, int] = {}
    for i in items:
        paths[i.alignment] = paths.get(i.alignment, 0) + 1
    out = {"reference": reference.name, "scored_now": len(items), "scored_before": len(have),
           "alignment": alignment, "misaligned": len(misaligned),
           "misaligned_examples": dict(list(misaligned.items())[:5]),
           "alignment_paths": paths, "seconds": seconds}
    if items and noise_sample > 0:
        by_key = {c.row_key: i for c, i in zip(rows, items, strict=True)}
        out["noise_floor"] = {"self": self_floor(reference, by_key, nll_ref, noise_sample)}
    return out


# -- stage 4: ranking ----------------------------------------------------------------------
def rank_run(run: RunDir, completions: dict[str, Completion], ref_name: str,
             cfg: RankConfig) -> tuple[list[dict[str, Any]], dict[str, int]]:
    ranked, left_out = rank(completions, run.load_scores(ref_name), cfg)
    run.write_ranked(ranked, COLUMNS)
    return ranked, left_out


def rescore(out: str, reference: str | None = None, device: str | None = None,
            alignment: str = "auto", rank_key: str = "ppl_diff", min_tokens: int = 5,
            quiet: bool = False, min_compression_ratio: float = 0.0,
            noise_floor: str | float | None = None) -> AuditResult:
    """Score and rank an existing run again (another reference, another key): no requests."""
    run = RunDir(out)
    manifest = run.read_manifest()
    completions = run.load_completions()
    if not completions:
        raise ConfigError(f"{run.path} has no completions.jsonl rows to score.")
    if manifest.get("mode") == "reference-only" and rank_key != "nll_ref":
        # no target log-probabilities: every gap key is NaN; only reference surprisal ranks
        if rank_key != "ppl_diff":
            raise ConfigError(f"{run.path} is a --reference-only run (no target "
                              f"log-probabilities): it ranks by nll_ref, not {rank_key}.")
        rank_key = "nll_ref"
    rank_cfg = RankConfig(rank_key, min_tokens, min_compression_ratio)
    spec = ReferenceSpec.parse(reference)
    tokenizer = load_tokenizer(spec)
    template = chat_template((manifest.get("config") or {}).get("chat_template"), tokenizer,
                             spec.name, any(c.framing == "chat" for c in completions.values()))
    model = ReferenceModel(spec, device=device, tokenizer=tokenizer)
    scoring = score_run(run, completions, model, TokenizerView(tokenizer, template), alignment,
                        quiet)
    manifest["noise_floor"] = combine(manifest.get("noise_floor"), scoring.get("noise_floor"),
                                      noise_floor)
    rank_cfg.noise_floor = manifest["noise_floor"]["floor"]
    ranked, left_out = rank_run(run, completions, model.name, rank_cfg)
    manifest.setdefault("rescoring", []).append({**scoring, "ranking": rank_cfg.to_json(),
                                                 "left_out_of_ranking": left_out})
    run.write_manifest(manifest)
    run.close()
    return AuditResult(run, manifest, ranked)


# -- the whole audit -----------------------------------------------------------------------
def run_audit(cfg: AuditConfig) -> AuditResult:
    cfg.validate()
    target, plan_warnings = cfg.resolve_target()
    for w in plan_warnings:
        log(cfg, f"warning: {w}")
    redactor = Redactor()
    run = RunDir(cfg.out, redactor)
    manifest = run.read_manifest()
    if manifest.get("generation") and manifest["generation"] != cfg.generation_settings():
        old, new = manifest["generation"], cfg.generation_settings()
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new
                         if old.get(k) != new.get(k))
        raise ConfigError(f"{run.path} holds a run with other generation settings ({diff}). "
                          "Rerun with the same flags to resume it, or pass a new --out.")
    t_start = time.monotonic()
    spec = ReferenceSpec.parse(cfg.reference)
    where = f"{spec.path}/{spec.gguf_file}" if spec.gguf_file else spec.path
    log(cfg, f"reference: {spec.name} ({where})")
    tokenizer = load_tokenizer(spec)
    template = chat_template(cfg.chat_template, tokenizer, spec.name,
                             any(f != "raw" for f in cfg.framings))
    prefills, requests = build_requests(cfg, tokenizer, template)
    done = run.load_completions()
    todo = [r for r in requests if r.row_key not in done or done[r.row_key].error is not None]
    log(cfg, f"prefills: {len(prefills)} x {len(cfg.framings)} framings = {len(requests)} rows;"
             f" {len(requests) - len(todo)} already on disk, {len(todo)} to generate")
    manifest.update({
        "tool": "blackbox-audit", "versions": versions(), "generation": cfg.generation_settings(),
        "config": {k: v for k, v in asdict(cfg).items() if k not in ("quiet",)},
        "target": {"kind": target.kind, "adapter": target.family, "base_url": cfg.base_url,
                   "model": cfg.model,
                   "api_key": f"<from ${cfg.api_key_env}>" if cfg.api_key_env else None},
        "framing": {"system": "You are a helpful assistant.", "user": "Tell me anything.",
                    "chat_mode": cfg.chat_mode, "framings": cfg.framings,
                    "fallback": [f for f in cfg.framings if f in FALLBACK_FRAMINGS],
                    "continue_instruction": CONTINUE_INSTRUCTION
                    if "chat-continue" in cfg.framings else None,
                    "chat_template": template.source if template else None},
        "mode": "reference-only" if cfg.reference_only else "perplexity-difference",
        "warnings": plan_warnings,
        "end_token": "dropped: an end-of-turn token reported by the target is not scored on "
                     "either side",
        "status": "generating",
    })
    run.write_manifest(manifest)
    stats = TransportStats()
    pricer = Pricer(cfg.model, cfg.pricing)
    t0 = time.monotonic()

    def account(status: str) -> None:
        # This invocation's requests, tokens and cost; every invocation of a resumed run is
        # kept in "sessions" (an interrupted one too: its calls were paid), summed in
        # "accounting".
        manifest["requests"] = session_requests(stats.to_json(), pricer)
        manifest["generation_seconds"] = round(time.monotonic() - t0, 2)
        manifest.setdefault("sessions", []).append({
            "started": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(time.time() - (
                time.monotonic() - t_start))), "rows_requested": len(todo), "status": status,
            "requests": manifest["requests"],
            "generation_seconds": manifest["generation_seconds"]})
        manifest["accounting"] = run_totals(manifest["sessions"], pricer)

    if todo:  # a finished run re-ranks without touching the network
        try:
            manifest["endpoint"] = asyncio.run(generate(cfg, todo, run, redactor, stats,
                                                        target))
        except BaseException:
            manifest.update(status="interrupted")
            account("interrupted")
            run.write_manifest(manifest)
            raise
    account("done")
    if cfg.generate_only:  # score later, elsewhere: `blackbox-audit score RUN`
        manifest["status"] = "generated"
        run.write_manifest(manifest)
        log(cfg, f"generated; score and rank later with: blackbox-audit score {run.path}")
        run.close()
        return AuditResult(run, manifest, [])

    wanted = {r.row_key for r in requests}
    completions = {k: c for k, c in run.load_completions().items() if k in wanted}
    reference = ReferenceModel(spec, device=cfg.device, tokenizer=tokenizer)
    view = TokenizerView(tokenizer, template)
    manifest["reference"] = {"name": reference.name, "path": spec.path,
                             "gguf_file": spec.gguf_file, "device": reference.device,
                             "dtype": str(reference.dtype).replace("torch.", "")}
    manifest["scoring"] = score_run(run, completions, reference, view, cfg.alignment,
                                    cfg.quiet)
    rank_cfg = cfg.rank_config()
    manifest["noise_floor"] = combine(manifest.get("noise_floor"),
                                      manifest["scoring"].get("noise_floor"), cfg.noise_floor)
    rank_cfg.noise_floor = manifest["noise_floor"]["floor"]
    ranked, left_out = rank_run(run, completions, reference.name, rank_cfg)
    n = len(completions)
    degraded = sum(1 for c in completions.values() if c.degraded)
    failed = sum(1 for c in completions.values() if c.error is not None)
    manifest.update({
        "status": "done",
        "counts": {"rows": n, "ranked": len(ranked), "failed": failed, "degraded": degraded,
                   "degraded_reasons": count_reasons(completions.values()),
                   "left_out_of_ranking": left_out},
        "degraded_reason_meanings": REASONS,
        "ranking": {**rank_cfg.to_json(), "within": ["corpus", "framing"]},
        "seconds": round(time.monotonic() - t_start, 2),
    })
    run.write_manifest(manifest)
    run.close()
    share = (degraded + failed) / n if n else 0.0
    if share > cfg.max_degraded_share:
        raise DegradedShareExceeded(
            f"{degraded + failed} of {n} rows ({share:.0%}) are degraded or failed, above "
            f"--max-degraded-share {cfg.max_degraded_share:.0%}: "
            f"{count_reasons(completions.values()) or {'failed': failed}}. Everything is kept in "
            f"{run.path} (see manifest.json); the ranking of the usable rows is in ranked.jsonl.")
    return AuditResult(run, manifest, ranked)


__all__ = ["AuditConfig", "AuditError", "AuditResult", "rank_run", "rescore", "run_audit",
           "score_run"]
