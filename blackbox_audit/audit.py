"""The audit, end to end: prefills -> completions -> reference scores -> ranking.

Each stage is a function of (part of) a resolved :class:`~blackbox_audit.plan.Plan` and the run
directory, reads what it needs from the directory and writes what it made back, so each can be
rerun alone (``score`` with another reference never pays for generation again):

1. ``generate``: a :class:`Prefill` is framed into a :class:`GenerationRequest`
   (``build_requests``), the provider turns it into a :class:`Completion` appended to
   completions.jsonl (``send``); requests already answered on disk are not sent again.
2. ``score``: alignment and the reference turn each usable completion into a :class:`Score`
   appended to scores.<ref>.jsonl (``score_run``).
3. ``rank``: rows ranked within each (corpus, framing), ranked.jsonl/.csv written.

With ``--rounds 2`` (rounds.py), between 2 and 3: ``generate_round_two`` derives new prefills
from round one's ranking, writes them to round2-prefills.jsonl and sends them; ``score`` scores
the new rows; the ranking then holds both rounds, each row marked with its ``round``.

``audit`` runs the three and checks the share of degraded rows; ``rescore`` runs 2 and 3 on an
existing run.
"""

from __future__ import annotations

import asyncio
import platform
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from functools import lru_cache, wraps
from typing import Any, TypeVar

from . import __version__
from .accounting import Pricer, run_totals, session_requests
from .align import TokenizerView
from .credentials import read_key, request_headers
from .dispatch import AdaptiveLimiter, run_all
from .errors import ConfigError, DegradedShareExceeded, EndpointError
from .framing import (
    CONTINUE_INSTRUCTION,
    FALLBACK_FRAMINGS,
    ChatTemplate,
    chat_messages,
    continue_messages,
    render_prompt,
)
from .heat import GapStore, pieces_fit, token_gaps
from .manifest import Counts, Manifest
from .noise import combine
from .plan import EndpointPlan, GenerationPlan, Plan, ScoringPlan, scoring_plan
from .prefills import documents, make_cutter, select_prefills
from .progress import Progress, count_progress
from .quality import REASONS, count_reasons
from .rank import COLUMNS, RankedRow
from .rank import rank as rank_rows
from .records import Completion, GenerationRequest, Prefill
from .redact import Redactor
from .reference import ReferenceModel, ReferenceSpec, load_tokenizer
from .rounds import PREFILLS_FILE, Derived, budget_prefills, budget_rows, derive
from .rounds import load as load_derived
from .rounds import save as save_derived
from .rounds import summary as derivation_summary
from .rowscorer import RowScorer
from .rundir import RunDir
from .scorer import Scorer
from .themes import settings as theme_settings
from .themes import themes_by_group
from .transport import AttemptLedger, FixtureStore, TransportStats, build_client, ledger_totals

T = TypeVar("T")


@dataclass(frozen=True)
class AuditResult:
    run: RunDir
    manifest: Manifest
    ranked: list[RankedRow]


def log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def versions() -> dict[str, str]:
    import httpx
    import torch
    import transformers

    return {"blackbox_audit": __version__, "python": platform.python_version(),
            "torch": torch.__version__, "transformers": transformers.__version__,
            "httpx": httpx.__version__}


@lru_cache(maxsize=4)
def tokenizer_for(spec: ReferenceSpec):
    """The reference's tokenizer, loaded once per process (generation cuts prefills and
    renders the chat template with it; scoring aligns with it)."""
    return load_tokenizer(spec)


def chat_template(path: str | None, tokenizer, name: str, needed: bool) -> ChatTemplate | None:
    """The chat framing's template: a given Jinja file, else the reference tokenizer's."""
    if path:
        return ChatTemplate.from_file(path)
    return ChatTemplate.from_tokenizer(tokenizer, name) if needed else None


# -- stage 1: prefills, requests and generation ---------------------------------------------
def build_requests(g: GenerationPlan, reference: ReferenceSpec, quiet: bool = True
                   ) -> tuple[list[Prefill], list[GenerationRequest], ChatTemplate | None]:
    """Every request of round one, in a stable order: each prefill in each framing."""
    tokenizer = tokenizer_for(reference)
    template = chat_template(g.chat_template, tokenizer, reference.name,
                             any(f != "raw" for f in g.framings))
    docs = count_progress(documents(g.prefills), "prefills", "documents read", quiet=quiet)
    prefills = select_prefills(docs, prefill_cutter(g, reference), g.prefill_tokens,
                               g.per_corpus, g.seed, list(g.corpora) if g.corpora else None)
    return prefills, frame_requests(prefills, g, template), template


def prefill_cutter(g: GenerationPlan, reference: ReferenceSpec
                   ) -> Callable[[str, int], str | None]:
    """Cuts a text to its first N tokens of the prefill tokenizer (the reference's, unless
    --prefill-tokenizer names another): round one's openings and round two's alike."""
    tokenizer = tokenizer_for(reference)
    counter = tokenizer if g.prefill_counter is None else tokenizer_for(g.prefill_counter)
    return make_cutter(lambda s: counter(s, add_special_tokens=False).input_ids, counter.decode)


def frame_requests(prefills: list[Prefill], g: GenerationPlan, template: ChatTemplate | None,
                   round_no: int = 1) -> list[GenerationRequest]:
    """Each prefill in each framing of the plan, in a stable order, marked with its round."""
    requests = []
    prompts = g.prompts
    said = prompts.to_json()   # recorded in every chat row
    for p in prefills:
        for framing in g.framings:
            if framing == "chat-continue":
                requests.append(GenerationRequest(p, framing, g.max_tokens, g.top_logprobs,
                                                  messages=continue_messages(p.text, prompts),
                                                  chat_prompts=said, round=round_no))
            elif framing == "chat" and g.chat_mode == "prefill":
                requests.append(GenerationRequest(p, framing, g.max_tokens, g.top_logprobs,
                                                  messages=chat_messages(p.text, prompts),
                                                  chat_prompts=said, round=round_no))
            else:
                requests.append(GenerationRequest(
                    p, framing, g.max_tokens, g.top_logprobs,
                    prompt=render_prompt(framing, p.text, template, prompts),
                    chat_prompts=said if framing != "raw" else None, round=round_no))
    return requests


def writes(stage: Callable[..., T]) -> Callable[..., T]:
    """A stage that writes the run directory holds its writer lock (rundir.WriterLock) for
    as long as it runs: two writers of one directory would pay for every request twice."""
    @wraps(stage)
    def locked(first: Any, run: RunDir, *args: Any, **kw: Any) -> T:
        with run.writer():
            return stage(first, run, *args, **kw)
    return locked


def check_resume(manifest: Manifest, plan: Plan, run: RunDir) -> None:
    """A run directory resumes only under the settings that decided its requests: the
    generation block, and for a run with a second round, its rounds settings."""
    g = plan.generation
    if manifest.generation and manifest.generation != g.settings():
        old, new = manifest.generation, g.settings()
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new.get(k)!r}" for k in new
                         if old.get(k) != new.get(k))
        raise ConfigError(f"{run.path} holds a run with other generation settings ({diff}). "
                          "Rerun with the same flags to resume it, or pass a new --out.")
    if manifest.rounds:
        old, new = manifest.rounds, plan.rounds.settings()
        diff = ", ".join(f"{k}: {old.get(k)!r} -> {new[k]!r}" for k in new
                         if old.get(k) != new[k])
        if diff:
            raise ConfigError(f"{run.path} holds an audit with a second round ({diff}). "
                              "Rerun with the same --rounds, --round2-budget and --round2-top "
                              "to resume it, or pass a new --out.")


@writes
def generate(plan: Plan, run: RunDir,
             on_row: Callable[[Completion], None] | None = None) -> Manifest:
    """Stage 1: send every request of round one not yet answered on disk; account for every
    session (an interrupted one too: its calls were paid). ``on_row``: called with each row
    once it is on disk (``overlap`` scores it meanwhile); it must not block."""
    manifest = run.read_manifest()
    check_resume(manifest, plan, run)
    g = plan.generation
    spec = plan.scoring.reference
    where = f"{spec.path}/{spec.gguf_file}" if spec.gguf_file else spec.path
    log(plan.quiet, f"reference: {spec.name} ({where})")
    for w in plan.warnings:
        log(plan.quiet, f"warning: {w}")
    prefills, requests, template = build_requests(g, spec, plan.quiet)
    return send_round(plan, run, manifest, requests, template, f"prefills: {len(prefills)}",
                      on_row=on_row)


def send_round(plan: Plan, run: RunDir, manifest: Manifest, requests: list[GenerationRequest],
               template: ChatTemplate | None, what: str, round_no: int = 1,
               on_row: Callable[[Completion], None] | None = None,
               sample: GenerationRequest | None = None) -> Manifest:
    """Send the requests of one round not yet answered on disk, as one session of the
    manifest's accounting (marked with its round). ``sample``: the request whose 2-token
    version probes the endpoint first (default: the first not on disk; send)."""
    t_start = time.monotonic()
    g = plan.generation
    done = run.answered_keys()   # ids only: a resumed 100,000-row run holds no tokens
    todo = [r for r in requests if r.row_key not in done]
    log(plan.quiet, f"{what} x {len(g.framings)} framings = {len(requests)} rows; "
                    f"{len(requests) - len(todo)} already on disk, {len(todo)} to generate")
    e = plan.endpoint
    manifest = manifest.updated(
        tool="blackbox-audit", versions=versions(), generation=g.settings(),
        config=plan.config_json(),
        target={"kind": e.target.kind, "adapter": e.target.family, "base_url": e.base_url,
                "model": g.model,
                "api_key": f"<from ${e.api_key_env}>" if e.api_key_env else None},
        framing={"system": g.prompts.system, "user": g.prompts.user, "chat_mode": g.chat_mode,
                 "framings": list(g.framings),
                 "fallback": [f for f in g.framings if f in FALLBACK_FRAMINGS],
                 "continue_instruction": CONTINUE_INSTRUCTION
                 if "chat-continue" in g.framings else None,
                 "chat_template": template.source if template else None},
        mode=plan.mode, warnings=list(plan.warnings),
        end_token="dropped: an end-of-turn token reported by the target is not scored on "
                  "either side",
        status="generating")
    run.write_manifest(manifest)
    stats = TransportStats()
    pricer = Pricer(g.model, e.prices)
    t0 = time.monotonic()

    def account(m: Manifest, status: str) -> Manifest:
        requests_now = session_requests(stats.to_json(), pricer)
        seconds = round(time.monotonic() - t0, 2)
        started = time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                time.gmtime(time.time() - (time.monotonic() - t_start)))
        session = {"started": started, "rows_requested": len(todo), "status": status,
                   "requests": requests_now, "generation_seconds": seconds}
        if round_no != 1:
            session["round"] = round_no
        sessions = [*m.sessions, session]
        return m.updated(requests=requests_now, generation_seconds=seconds, sessions=sessions,
                         accounting=run_totals(sessions, pricer,
                                               ledger_totals(run.attempts_path)))

    endpoint_info = manifest.endpoint
    if todo:  # a finished run re-ranks without touching the network
        try:
            endpoint_info = asyncio.run(send(e, g, todo, run, stats, plan.quiet,
                                              sample=sample, on_row=on_row))
        except BaseException:
            run.write_manifest(account(manifest, "interrupted").updated(status="interrupted"))
            raise
    manifest = account(manifest, "done").updated(endpoint=endpoint_info, status="generated")
    run.write_manifest(manifest)
    return manifest


# -- round two (--rounds 2; rounds.py) ------------------------------------------------------
@writes
def generate_round_two(plan: Plan, run: RunDir) -> Manifest:
    """Stage 1 again, for round two: the prefills derived from round one's ranking
    (:func:`blackbox_audit.rounds.derive`), each sent in every framing of the run. Round one
    must be generated and scored.

    The prefills are written to RUN/round2-prefills.jsonl before the first of them is sent,
    and a resumed run reads them back from there instead of deriving again: it asks for the
    same rows, and what is on disk is not asked twice. The manifest's ``rounds`` block holds
    the settings (written first, so a resume with other ones is refused), the budget, and how
    many prefills were derived and from what."""
    manifest = run.read_manifest()
    check_resume(manifest, plan, run)
    g, r = plan.generation, plan.rounds
    prefills, requests, template = build_requests(g, plan.scoring.reference, quiet=True)
    budget = budget_prefills(len(requests), len(g.framings), r.budget)
    block = {**r.settings(), "round_one_rows": len(requests),
             "budget_rows": budget_rows(len(requests), r.budget), "budget_prefills": budget,
             "prefills_file": PREFILLS_FILE}
    path = run.path / PREFILLS_FILE
    if path.exists():
        derived = load_derived(path)
    else:
        run.write_manifest(manifest.updated(rounds=block))
        derived = derive_round_two(plan, run, prefills, budget)
        save_derived(path, derived, run.redactor.text)
    block.update(derivation_summary(derived))
    manifest = run.read_manifest().updated(rounds=block)
    run.write_manifest(manifest)
    sources = ", ".join(f"{k} {v}" for k, v in block["from"].items())
    log(plan.quiet, f"round two: {len(derived)} prefills derived from round one's ranking "
                    f"(budget {budget}; {sources}): {path}")
    new = frame_requests([d.prefill for d in derived], g, template, round_no=2)
    if not new:
        return manifest
    # every session of round two probes with its first request: one recorded probe, so a
    # resumed round two asks no new one and a replay finds it
    return send_round(plan, run, manifest, new, template,
                      f"round two: {len(derived)} prefills", round_no=2, sample=new[0])


def derive_round_two(plan: Plan, run: RunDir, round_one: list[Prefill], budget: int
                     ) -> list[Derived]:
    """Round two's prefills from round one's ranking and themes, as the ranking stage would
    compute them from round one's rows alone (rows of round two are never read)."""
    s = plan.scoring
    meta = {k: m for k, m in run.completion_meta().items() if m.round == 1}
    ranked, _ = rank_rows(meta, run.score_numbers(s.reference.name), s.ranking)
    del meta
    with gap_store(run, s.reference.name, ranked) as gaps:
        found = themes_by_group(ranked, gaps=gaps)
    return derive(ranked, found, {p.text for p in round_one},
                  prefill_cutter(plan.generation, s.reference), plan.generation.prefill_tokens,
                  budget, plan.rounds.top)


async def send(e: EndpointPlan, g: GenerationPlan, todo: list[GenerationRequest],
               run: RunDir, stats: TransportStats, quiet: bool = True,
               sample: GenerationRequest | None = None,
               on_row: Callable[[Completion], None] | None = None) -> dict[str, Any]:
    """Send every request in ``todo``; append each answer (or failure) as it arrives. Returns
    what the endpoint turned out to be (flavour, capabilities, the probe's report).

    The preflight probes with a 2-token version of ``sample`` (default: the first of
    ``todo``). A caller that sends in turns (verify) passes the same sample every turn, so
    each turn's probe is the one recorded request, and no turn is judged by a prompt that
    happens to end at once. ``on_row``: called on the event loop with each row after it is
    appended (so a consumer never sees a row that is not on disk); it must not block."""
    from providers.base import RequestFailed

    from .preflight import run_preflight

    key = read_key(e.api_key_env, required=True, why=" (named by --api-key-env)")
    redactor = run.redactor
    redactor.add(key)
    store = None
    if e.record_mode != "off":
        if e.record_mode == "replay" and not e.fixtures.exists():
            raise ConfigError(f"--replay needs recorded fixtures, and {e.fixtures} does "
                              "not exist. Pass --fixtures PATH.")
        store = FixtureStore(e.fixtures, redactor,
                             writable=e.record_mode in ("record", "auto"))
    target = e.target
    # SDK adapters (OpenAI, Anthropic) put the key in their own header.
    headers = request_headers(target.url_headers, key, sdk=target.uses_sdk)
    limiter = AdaptiveLimiter(e.concurrency, e.start_concurrency)
    pricer = Pricer(g.model, e.prices)
    info: dict[str, Any] = {}
    # Every network attempt is written down before it leaves: the accounting survives a kill.
    ledger = AttemptLedger(run.attempts_path) if e.record_mode != "replay" else None
    try:
        async with build_client(e.base_url or "http://replay.invalid/v1", mode=e.record_mode,
                                store=store, headers=headers, timeout=e.timeout, stats=stats,
                                retry=e.retry, feedback=limiter, usage=target.adapter.usage,
                                max_connections=e.concurrency, ledger=ledger) as client:
            # Preflight: the same 2-token version of the first request the run has always sent
            # (so recorded runs replay), plus a prefill check when the run relies on one.
            first = sample or todo[0]
            sample = GenerationRequest(first.prefill, first.framing, 2, first.top_logprobs,
                                       prompt=first.prompt, messages=first.messages)
            provider, report = await run_preflight(
                target, client, key, planned=list(g.framings), warnings=[],
                chat_mode=g.chat_mode, reference_only=e.reference_only,
                top_logprobs=g.top_logprobs, sample=sample,
                rows_per_framing=len(todo) // max(len(g.framings), 1), max_tokens=g.max_tokens,
                prices=e.prices, for_audit=True, token_ids=e.token_ids,
                offline=e.record_mode == "replay", upstream=e.upstream)
            info.update(flavour=report.target.get("flavour") or target.kind,
                        capabilities=provider.capabilities.to_json(), preflight=report.to_json())
            if report.refusal:
                raise EndpointError(report.refusal + " Nothing more was sent.")
            if e.verify_prompts:
                echo = report.confirmed.get("echo", "not offered by this endpoint")
                if not echo.startswith("yes"):
                    raise EndpointError(
                        f"--verify-prompts needs the endpoint to echo the prompt back with its "
                        f"tokens, and this one cannot ({echo}; offered by vLLM, Together and "
                        "Fireworks). Run without --verify-prompts. Nothing more was sent.")
                provider = provider.with_options(echo_prompts=True)
            log(quiet, report.summary())
            if e.record_mode != "replay":   # offline, the window is moot
                slots = await provider.server_slots()
                if slots is not None:
                    info["server_slots"] = slots
                    if slots < limiter.cap:
                        log(quiet, f"the server computes {slots} requests at once (its "
                                   f"/props): at most {slots} in flight, not {limiter.cap}")
                        limiter.cap_at(slots)
            progress = Progress("generation", len(todo), quiet=quiet)
            failed = 0

            async def call(req: GenerationRequest) -> Completion:
                try:
                    # the provider withholds a row whose content held a secret (quality.py)
                    return await provider.generate(req)
                except RequestFailed as err:  # this row only; retries are behind us (transport)
                    return Completion.failed(req, redactor.text(str(err)))

            def done(req: GenerationRequest, c: Completion) -> None:
                nonlocal failed
                failed += c.error is not None
                c.round = req.round    # providers know no rounds: the row is marked here
                run.append_completion(c)
                if on_row is not None:
                    on_row(c)
                progress.update(advance=1, failed=failed, retries=stats.retried,
                                in_flight=limiter.in_flight,
                                tokens=stats.prompt_tokens + stats.completion_tokens,
                                cost_usd=pricer.cost(stats.prompt_tokens, stats.completion_tokens))

            try:
                await run_all(todo, call, done, limiter)
            finally:
                info["concurrency"] = limiter.to_json()
            progress.finish(failed=failed, retries=stats.retried)
    finally:
        if ledger is not None:
            ledger.close()
    return info


# -- stage 2: reference scoring ------------------------------------------------------------
@writes
def score(s: ScoringPlan, run: RunDir, quiet: bool = True, rescoring: bool = False,
          session: RowScorer | None = None, reference: Scorer | None = None) -> Manifest:
    """Stage 2: score every usable completion not yet scored by this reference. Streams the
    run directory: one chunk of rows' tokens in memory at a time. ``session``: the scoring
    that ran while generation did (``overlap``), finished here with its loaded reference.
    ``reference``: a loaded scorer the caller holds and closes (a second round is scored
    with round one's); else one is loaded here (or the session's taken) and closed."""
    manifest = run.read_manifest()
    framings = {m.framing for m in run.iter_meta()}
    if not framings:
        raise ConfigError(f"{run.path} has no completions.jsonl rows to score.")
    owned = reference is None
    if session is not None:
        reference, view = session.reference, session.view
    else:
        tokenizer = tokenizer_for(s.reference)
        template = chat_template(s.chat_template, tokenizer, s.reference.name,
                                 "chat" in framings)
        if reference is None:
            reference = scorer_for(s, tokenizer)
        view = TokenizerView(tokenizer, template)
    try:
        scoring = score_run(run, None, reference, view, s.alignment, quiet, session=session)
    finally:
        close = getattr(reference, "close", None)
        if owned and close is not None:
            close()
    noise = combine(manifest.noise_floor, scoring.get("noise_floor"), s.noise_floor)
    info = {"name": reference.name, "path": s.reference.path,
            "gguf_file": s.reference.gguf_file, "device": reference.device,
            "dtype": str(reference.dtype).replace("torch.", ""), "scorer": s.scorer}
    if s.scorer == "ray":
        info.update(replicas=s.replicas, replica_threads=s.replica_threads)
    if rescoring:
        manifest = manifest.updated(rescoring=[*manifest.rescoring, scoring],
                                    noise_floor=noise)
    else:
        manifest = manifest.updated(reference=info, scoring=scoring, noise_floor=noise)
    run.write_manifest(manifest)
    return manifest


def scorer_for(s: ScoringPlan, tokenizer: Any) -> Scorer:
    """The engine the plan names: the local transformers model in this process, or a pool of
    replicas on a Ray cluster (ray_scorer.RayScorer); score_run cannot tell them apart."""
    if s.scorer == "ray":
        from .ray_scorer import RayScorer

        return RayScorer(s.reference, address=s.ray_address, replicas=s.replicas,
                         threads_per_replica=s.replica_threads, device=s.device)
    return ReferenceModel(s.reference, device=s.device, tokenizer=tokenizer)


def score_run(run: RunDir, completions: dict[str, Completion] | None, reference: Scorer,
              view: TokenizerView, alignment: str = "auto", quiet: bool = False,
              noise_sample: int = 32, session: RowScorer | None = None) -> dict[str, Any]:
    """Score every usable completion not yet scored by this reference; append as we go.

    ``completions`` None: stream them from the run directory (``RunDir.iter_completions``),
    so memory holds one chunk of rows' tokens and a few numbers per row, whatever the run's
    size. Then score ``noise_sample`` of the new rows again one at a time: the scorer's own
    noise floor (``RowScorer``'s sample), which the ranking's ``vs_floor`` column is measured
    against. ``session``: a :class:`RowScorer` already fed rows while generation ran
    (``overlap``): it goes on, so its rows are not scored again and count in the floor.
    """
    rows = session or RowScorer(run, reference, view, alignment, quiet,
                                 noise_sample=noise_sample)

    def usable() -> Iterator[Completion]:
        source = completions.values() if completions is not None else run.iter_completions()
        return (c for c in source if c.usable)

    if rows.alignment == "auto":
        rows.decide(usable())
    n_todo = sum(1 for c in (completions or {}).values()
                 if c.usable and c.row_key not in rows.done) \
        if completions is not None else len(run.usable_keys() - rows.done)
    rows.progress = Progress("rescoring", n_todo, quiet=quiet)
    for c in usable():
        rows.feed(c)
    return rows.finish()


# -- stage 3: ranking ----------------------------------------------------------------------
@writes
def rank(s: ScoringPlan, run: RunDir, rescoring: bool = False
         ) -> tuple[list[RankedRow], Manifest]:
    """Stage 3: rank the scored rows within each (corpus, framing); write ranked.jsonl/.csv
    and the manifest's counts."""
    manifest = run.read_manifest()
    meta = run.completion_meta()       # no token columns: a few hundred bytes a row
    floor = (manifest.noise_floor or {}).get("floor")
    cfg = replace(s.ranking, noise_floor=floor)
    ranked, left_out = rank_rows(meta, run.score_numbers(s.reference.name), cfg)
    counts = Counts(rows=len(meta), ranked=len(ranked),
                    failed=sum(1 for c in meta.values() if c.error is not None),
                    degraded=sum(1 for c in meta.values() if c.degraded),
                    degraded_reasons=count_reasons(meta.values()),
                    left_out_of_ranking=left_out)
    del meta
    run.write_ranked(ranked, COLUMNS)
    with gap_store(run, s.reference.name, ranked) as gaps:
        run.write_themes(themes_by_group(ranked, gaps=gaps), theme_settings())
    ranking = {**cfg.to_json(), "within": ["corpus", "framing"]}
    if rescoring and manifest.rescoring:
        last = {**manifest.rescoring[-1], "ranking": cfg.to_json(),
                "left_out_of_ranking": left_out}
        manifest = manifest.updated(rescoring=[*manifest.rescoring[:-1], last])
    else:
        manifest = manifest.updated(counts=counts, degraded_reason_meanings=REASONS,
                                    ranking=ranking)
    run.write_manifest(manifest)
    return ranked, manifest


def gap_store(run: RunDir, ref_name: str, ranked: list[RankedRow]) -> GapStore:
    """The ranked rows' per-token gaps, streamed from the scores into a temporary file
    (heat.GapStore): from the pieces each score row keeps; for rows scored by an earlier
    version (no pieces), from their completion's token columns."""
    wanted = {r.row_id: r for r in ranked}
    store = GapStore()
    older: dict[str, Any] = {}
    for sc in run.iter_scores(ref_name, keys=wanted):
        key = f"{sc.prefill_id}:{sc.framing}"
        if sc.heat is None:
            older[key] = sc
        else:
            older.pop(key, None)
            fits = pieces_fit(sc, wanted[key].completion or "")
            store.add(key, token_gaps(None, sc) if fits else None)
    if older:
        for c in run.iter_completions(keys=older.keys()):
            store.add(c.row_key, token_gaps(c, older[c.row_key]))
    return store


# -- the whole audit -----------------------------------------------------------------------
def audit(plan: Plan) -> AuditResult:
    """Generate, score and rank; exit 5 (DegradedShareExceeded) above the plan's share of
    degraded or failed rows, everything kept on disk either way."""
    t_start = time.monotonic()
    run = RunDir(plan.out, Redactor())
    with run.writer():
        return _audit(plan, run, t_start)


def _audit(plan: Plan, run: RunDir, t_start: float) -> AuditResult:
    try:
        overlap = None
        if plan.scoring.scorer == "ray" and not plan.generate_only:
            from .ray_address import check_reachable

            check_reachable(plan.scoring.ray_address)   # a mistyped address costs no request
        if plan.overlap and not plan.generate_only:
            from .overlap import overlapped_rows

            overlap = overlapped_rows(plan.scoring, run, plan.generation.framings)
        try:
            manifest = generate(plan, run, on_row=overlap.offer if overlap else None)
            session = overlap.finish() if overlap else None
        except BaseException:
            if overlap is not None:
                overlap.abort()
            raise
        if plan.generate_only:  # score later, elsewhere: `blackbox-audit score RUN`
            completions = run.completion_meta()
            counts = Counts(rows=len(completions), ranked=0,
                            failed=sum(c.error is not None for c in completions.values()),
                            degraded=sum(bool(c.degraded) for c in completions.values()),
                            degraded_reasons=count_reasons(completions.values()))
            check_share(counts, plan.max_degraded_share, run)
            log(plan.quiet, f"generated; score and rank later with: blackbox-audit score "
                            f"{run.path}")
            return AuditResult(run, manifest, [])
        if plan.rounds.rounds == 2:
            two_rounds(plan, run, session)
        else:
            score(plan.scoring, run, plan.quiet, session=session)
        ranked, manifest = rank(plan.scoring, run)
        manifest = manifest.updated(status="done",
                                    seconds=round(time.monotonic() - t_start, 2))
        run.write_manifest(manifest)
    finally:
        run.close()
    assert manifest.counts is not None
    check_share(manifest.counts, plan.max_degraded_share, run)
    return AuditResult(run, manifest, ranked)


def two_rounds(plan: Plan, run: RunDir, session: RowScorer | None) -> None:
    """Round one scored, round two derived, sent and scored, with one loaded reference.
    The manifest's scoring block is round two's pass, with round one's under ``round_one``
    (each pass's rows, seconds and noise-floor sample)."""
    s = plan.scoring
    reference = session.reference if session is not None \
        else scorer_for(s, tokenizer_for(s.reference))
    try:
        first = score(s, run, plan.quiet, session=session, reference=reference).scoring
        generate_round_two(plan, run)
        second = score(s, run, plan.quiet, reference=reference)
        run.write_manifest(second.updated(scoring={**(second.scoring or {}),
                                                   "round_one": first}))
    finally:
        close = getattr(reference, "close", None)
        if close is not None:
            close()


def check_share(counts: Counts, most: float, run: RunDir) -> None:
    """Exit 5 (DegradedShareExceeded) when more than ``most`` of the rows are degraded or
    failed: a ranking of what is left would not mean much. Everything stays on disk."""
    n = counts.rows
    share = (counts.degraded + counts.failed) / n if n else 0.0
    if share > most:
        raise DegradedShareExceeded(
            f"{counts.degraded + counts.failed} of {n} rows ({share:.0%}) are degraded or "
            f"failed, above --max-degraded-share {most:.0%}: "
            f"{counts.degraded_reasons or {'failed': counts.failed}}. Everything is kept in "
            f"{run.path} (see manifest.json); rerun the same command to retry the failed "
            "rows.")


def rescore(out: str, *, quiet: bool = False, **scoring: Any) -> AuditResult:
    """Score and rank an existing run again (another reference, another key): no requests.
    ``scoring``: :func:`blackbox_audit.plan.scoring_plan`'s settings (reference, device,
    alignment, rank_key, min_tokens, min_compression_ratio, noise_floor)."""
    run = RunDir(out)
    manifest = run.read_manifest()
    plan = scoring_plan(**scoring, chat_template=(manifest.config or {}).get("chat_template"),
                        reference_only=manifest.mode == "reference-only")
    try:
        with run.writer():
            score(plan, run, quiet, rescoring=True)
            ranked, manifest = rank(plan, run, rescoring=True)
    finally:
        run.close()
    return AuditResult(run, manifest, ranked)


__all__ = ["AuditResult", "audit", "build_requests", "generate", "generate_round_two", "rank",
           "rescore", "score", "score_run", "send"]
