"""One resolved plan: every setting of an audit decided once, before anything runs.

``plan(**settings)`` takes what a user gives (the CLI's flags, or keyword arguments in
Python), checks it, and resolves it into a frozen :class:`Plan`: the target parsed (credentials
moved out of its URL), the framings and chat mode the target allows, the reference model, the
prefill source, the prices, the retry policy and the process-wide settings. Every stage
(generate, score, rank, report) is a function of (part of) the plan and the run directory;
nothing resolves a setting again and nothing changes a plan after it is built (a test walks it
for anything mutable).

The plan holds no secret: the API key stays in its environment variable until the generation
stage reads it (credentials.read_key).
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields, is_dataclass, replace
from pathlib import Path
from typing import Any

from .errors import ConfigError
from .framing import ALL_FRAMINGS, DEFAULT_PROMPTS, FRAMINGS, SYSTEM, USER, ChatPrompts
from .noise import given_floor
from .rank import REFERENCE_ONLY_KEYS, RankConfig
from .records import SCORE_KEYS
from .reference import ReferenceSpec
from .transport import MODES, RetryPolicy

# Settings that decide which requests a run sends: a resumed run must match them (the
# manifest's "generation" block; unchanged keys, so run directories of earlier versions
# resume).
GENERATION_KEYS = ("model", "framings", "chat_mode", "prefills", "corpora", "per_corpus",
                   "prefill_tokens", "prefill_tokenizer", "seed", "max_tokens", "top_logprobs")


@dataclass(frozen=True)
class Settings:
    """An audit's settings as given (the CLI's flags one for one), before resolution.

    ``per_corpus`` None means every prefill the source has; ``target`` is ``KIND:MODEL``
    (providers/registry.py), else ``base_url`` + ``model`` name an OpenAI-compatible server.
    """

    out: str | Path
    target: str | None = None
    base_url: str | None = None
    model: str = ""
    api_key_env: str | None = None
    flavour: str = "auto"
    framings: tuple[str, ...] | list[str] = FRAMINGS
    chat_mode: str = "template"          # template: render client-side; prefill: server-side
    chat_template: str | None = None     # Jinja file; default: the reference tokenizer's
    system_prompt: str | None = None     # the chat framing's system turn (None: the paper's)
    user_prompt: str | None = None       # the chat framing's user turn (None: the paper's)
    prefills: str = "builtin"
    corpora: tuple[str, ...] | list[str] | None = None
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
    retry: RetryPolicy | None = None     # a whole policy (overrides retries and timeout)
    record_mode: str = "auto"
    fixtures: str | Path | None = None   # default: <out>/exchanges.jsonl
    reference: str | None = None
    device: str | None = None
    alignment: str = "auto"
    rank_key: str = "ppl_diff"
    min_tokens: int = 5
    min_compression_ratio: float = 0.0
    noise_floor: str | float | None = None  # nats/token or a base run dir (docs/scores.md)
    generate_only: bool = False          # stop after generation (recording fixtures)
    max_degraded_share: float = 0.25
    quiet: bool = False
    reference_only: bool = False         # degraded mode for targets without logprobs
    pricing: str | None = None           # JSON file over the built-in pricing table
    verify_prompts: bool = False         # echo every prompt back; mark prefill_altered rows
    pin_upstream: str | None = None      # the one upstream a router must serve from
    torch_threads: int | None = None     # default: the machine's cores
    scorer: str = "local"                # local: this process; ray: a pool of replicas
    ray_address: str | None = None       # None: ray.init() (RAY_ADDRESS, else a local cluster)
    replicas: int = 2                    # --scorer ray: replicas, each holding the model once
    replica_threads: int = 1             # --scorer ray: torch threads (CPUs) per replica
    overlap: bool = False                # score rows on a thread while generation runs
    rounds: int = 1                      # 2: a second round derived from round one's ranking
    round2_budget: float = 0.5           # round two's rows as a share of round one's
    round2_top: int = 10                 # distinct top rows per group that round two reads


@dataclass(frozen=True)
class RoundsPlan:
    """How many rounds an audit runs (rounds.py). Round two (``rounds`` 2) sends prefills
    derived from round one's ranking: at most ``budget`` x round one's rows, read from the
    top ``top`` distinct rows of each (corpus, framing) group and its themes."""

    rounds: int = 1
    budget: float = 0.5
    top: int = 10

    def settings(self) -> dict[str, Any]:
        """The manifest's ``rounds`` settings: a resumed two-round run must have the same."""
        return {"rounds": self.rounds, "round2_budget": self.budget, "round2_top": self.top}


@dataclass(frozen=True)
class GenerationPlan:
    """What decides the requests: a resumed run must have the same."""

    model: str
    framings: tuple[str, ...]
    chat_mode: str
    chat_template: str | None
    prefills: str
    corpora: tuple[str, ...] | None
    per_corpus: int | None
    prefill_tokens: int
    prefill_tokenizer: str
    seed: int
    max_tokens: int
    top_logprobs: int
    prefill_counter: ReferenceSpec | None = None  # the tokenizer that counts; None: reference
    prompts: ChatPrompts = DEFAULT_PROMPTS          # the chat framing's system and user turns

    def settings(self) -> dict[str, Any]:
        """The manifest's "generation" block (lists, as earlier versions wrote it; the chat
        prompts only when they are not the paper's, so earlier runs still resume)."""
        values = {f.name: getattr(self, f.name) for f in fields(self)}
        out = {k: values[k] for k in GENERATION_KEYS}
        out["framings"] = list(self.framings)
        out["corpora"] = list(self.corpora) if self.corpora is not None else None
        if not self.prompts.default:
            out["system_prompt"], out["user_prompt"] = self.prompts.system, self.prompts.user
        return out


@dataclass(frozen=True)
class PriceTable:
    """USD per million tokens (input, output) by model name, and where the prices came from
    (preflight.load_pricing): loaded once per run."""

    entries: tuple[tuple[str, tuple[float, float]], ...]
    source: str
    path: str | None = None             # the user's file over the built-in table

    @classmethod
    def load(cls, path: str | None) -> PriceTable:
        from .preflight import load_pricing

        table, source = load_pricing(path)
        return cls(tuple(sorted(table.items())), source, path)

    def as_dict(self) -> dict[str, tuple[float, float]]:
        return dict(self.entries)


@dataclass(frozen=True)
class EndpointPlan:
    """Where and how to ask: the target, its credentials' variable, the transport."""

    target: Any                         # providers.registry.Target (frozen)
    target_arg: str | None              # KIND:MODEL as given, if it was
    api_key_env: str | None
    record_mode: str
    fixtures: Path
    timeout: float
    concurrency: int
    start_concurrency: int | None
    retry: RetryPolicy
    verify_prompts: bool
    reference_only: bool
    token_ids: bool                     # the run scores token ids: ask where only on request
    prices: PriceTable
    upstream: str | None = None         # a router's pinned upstream (--pin-upstream)

    @property
    def base_url(self) -> str | None:
        return self.target.base_url


@dataclass(frozen=True)
class ScoringPlan:
    """The reference, how completions are aligned to it, and how rows are ranked."""

    reference: ReferenceSpec
    device: str | None
    alignment: str
    chat_template: str | None
    ranking: RankConfig
    noise_floor: str | float | None     # given: nats/token or a base run's directory
    reference_arg: str | None = None    # --reference as given (None: the packaged default)
    scorer: str = "local"               # local | ray (audit.scorer_for)
    ray_address: str | None = None
    replicas: int = 2
    replica_threads: int = 1


@dataclass(frozen=True)
class ProcessSettings:
    """Process-wide settings, applied by the entry point (the CLI, a scorer replica) with
    :func:`blackbox_audit.runtime.apply`, never by library code."""

    torch_threads: int
    quiet_libraries: bool = True
    # The cyclic collector's youngest-generation threshold (CPython's default: 700). httpx's
    # answers are reference cycles, so at 256 requests/s the default collects every few
    # requests, a third of the client's CPU (bench/client.py); 20,000 collects every few
    # hundred, holding a few MB of garbage in between. None: leave the interpreter's.
    gc_young_threshold: int | None = 20000


@dataclass(frozen=True)
class Plan:
    out: Path
    generation: GenerationPlan
    endpoint: EndpointPlan
    scoring: ScoringPlan
    process: ProcessSettings
    mode: str                           # perplexity-difference | reference-only
    generate_only: bool
    max_degraded_share: float
    quiet: bool
    warnings: tuple[str, ...] = ()
    overlap: bool = False               # score while generating (blackbox_audit.overlap)
    rounds: RoundsPlan = RoundsPlan()   # --rounds 2: a second round (blackbox_audit.rounds)

    def config_json(self) -> dict[str, Any]:
        """The manifest's "config" block: the settings as resolved, in the keys earlier
        versions wrote (so ``score RUN`` and older tools read it)."""
        g, e, s = self.generation, self.endpoint, self.scoring
        return {
            "out": str(self.out), "base_url": e.base_url, "model": g.model,
            "api_key_env": e.api_key_env, "flavour": e.target.flavour or "auto",
            "framings": list(g.framings), "chat_mode": g.chat_mode,
            "chat_template": g.chat_template, "system_prompt": g.prompts.system,
            "user_prompt": g.prompts.user, "prefills": g.prefills,
            "corpora": list(g.corpora) if g.corpora is not None else None,
            "per_corpus": g.per_corpus, "prefill_tokens": g.prefill_tokens,
            "prefill_tokenizer": g.prefill_tokenizer, "seed": g.seed,
            "max_tokens": g.max_tokens, "top_logprobs": g.top_logprobs,
            "concurrency": e.concurrency, "start_concurrency": e.start_concurrency,
            "retries": e.retry.attempts - 1, "timeout": e.timeout,
            "record_mode": e.record_mode, "fixtures": str(e.fixtures),
            "reference": s.reference_arg,
            "device": s.device, "alignment": s.alignment, "rank_key": s.ranking.key,
            "min_tokens": s.ranking.min_tokens,
            "min_compression_ratio": s.ranking.min_compression_ratio,
            "noise_floor": s.noise_floor, "generate_only": self.generate_only,
            "max_degraded_share": self.max_degraded_share,
            "target": e.target_arg, "reference_only": e.reference_only,
            "pricing": e.prices.path, "verify_prompts": e.verify_prompts,
            "pin_upstream": e.upstream,
            "scorer": s.scorer, "ray_address": s.ray_address, "replicas": s.replicas,
            "replica_threads": s.replica_threads, "overlap": self.overlap,
            **self.rounds.settings(),
        }


# Named sets of defaults (``--profile``): what a setting is when the caller leaves it out.
# "paper": the scale and framings of arXiv 2605.00994 (about 10,000 3-token openings per
# corpus, raw and chat with the paper's persona turns, 100 greedy tokens).
PROFILES: dict[str, dict[str, Any]] = {
    "paper": {"per_corpus": 10000, "framings": ("raw", "chat"), "prefill_tokens": 3,
              "max_tokens": 100},
}


def plan(profile: str | None = None, **settings: Any) -> Plan:
    """Resolve an audit's settings (:class:`Settings`' fields as keywords) into a Plan.

    ``profile`` (a key of :data:`PROFILES`) supplies the settings not given here; a setting
    given here wins over the profile's."""
    unknown = sorted(set(settings) - {f.name for f in fields(Settings)})
    if unknown:
        raise ConfigError(f"Unknown setting {', '.join(unknown)}; the settings are "
                          f"{', '.join(f.name for f in fields(Settings))}.")
    if profile is not None:
        if profile not in PROFILES:
            raise ConfigError(f"Unknown profile {profile!r}; the profiles are "
                              f"{', '.join(PROFILES)}.")
        settings = {**PROFILES[profile], **settings}
    return resolve(Settings(**settings))


def bank_warning(s: Settings) -> list[str]:
    """Asked for more openings per corpus than the built-in bank holds: say what it gives and
    how to bring more (the paper's came from general web text, encyclopedic prose and code)."""
    if s.prefills != "builtin" or s.per_corpus is None:
        return []
    from .prefills import builtin_sizes

    have = min(builtin_sizes().values())
    if s.per_corpus <= have:
        return []
    return [f"--per-corpus {s.per_corpus}: the built-in bank holds {have:,} openings per "
            f"corpus, so each corpus gives at most {have:,} (fewer after deduplication). For "
            "more, bring openings of your own corpora (e.g. C4 or the Pile) as --prefills "
            'file:PATH.jsonl with one {"text": ..., "corpus": ...} per line.']


def resolve(s: Settings) -> Plan:
    """Check every setting and decide everything that can be decided before a call."""
    from providers.registry import parse_target

    from .preflight import static_plan

    framings = tuple(s.framings)
    bad = [f for f in framings if f not in ALL_FRAMINGS]
    if bad or not framings:
        raise ConfigError(f"Unknown framing {', '.join(bad) or '(none)'}; choose from "
                          f"{', '.join(ALL_FRAMINGS)}.")
    if s.record_mode not in MODES:
        raise ConfigError(f"--record-mode must be one of {', '.join(MODES)}.")
    if s.chat_mode not in ("template", "prefill"):
        raise ConfigError("--chat-mode must be template or prefill.")
    if s.alignment not in ("auto", "ids", "text"):
        raise ConfigError("--alignment must be auto, ids or text.")
    if not s.base_url and not s.target and s.record_mode != "replay":
        raise ConfigError("--base-url is required (the target's OpenAI-compatible endpoint, "
                          "e.g. http://127.0.0.1:8080/v1), unless you --replay fixtures.")
    if not s.model and not s.target:
        raise ConfigError("--model is required: the target model's name at the endpoint.")
    rank_key = s.rank_key
    if s.reference_only and rank_key == "ppl_diff":
        rank_key = "nll_ref"  # the only key without target logprobs
    if s.reference_only and rank_key != "nll_ref":
        raise ConfigError(f"--reference-only ranks by reference surprisal (--rank-by "
                          f"nll_ref); {rank_key} needs target log-probabilities.")
    if rank_key not in SCORE_KEYS + REFERENCE_ONLY_KEYS:
        raise ConfigError(f"Cannot rank by {rank_key!r}; choose one of "
                          f"{', '.join(SCORE_KEYS + REFERENCE_ONLY_KEYS)}.")
    for name, value, lo in (("--max-tokens", s.max_tokens, 1),
                            ("--top-logprobs", s.top_logprobs, 1),
                            ("--concurrency", s.concurrency, 1),
                            ("--start-concurrency", 1 if s.start_concurrency is None
                             else s.start_concurrency, 1),
                            ("--retries", s.retries, 0),
                            ("--prefill-tokens", s.prefill_tokens, 1)):
        if value < lo:
            raise ConfigError(f"{name} must be at least {lo}.")
    if s.per_corpus is not None and s.per_corpus < 0:
        raise ConfigError("--per-corpus must be 0 (every prefill the source has) or more.")
    if not s.timeout > 0:
        raise ConfigError(f"--timeout must be more than 0 seconds (got {s.timeout:g}): it "
                          "bounds each attempt, and 0 would fail every request before it is "
                          "answered.")
    if s.noise_floor is not None:
        given_floor(s.noise_floor)  # a bad floor fails now, not after generation
    if not 0.0 <= s.max_degraded_share <= 1.0:
        raise ConfigError("--max-degraded-share must be between 0 and 1.")
    ranking = RankConfig(rank_key, s.min_tokens, s.min_compression_ratio)
    rounds = rounds_plan(s.rounds, s.round2_budget, s.round2_top, s.generate_only)

    target = parse_target(s.target, base_url=s.base_url, model=s.model or None,
                          api_key_env=s.api_key_env, flavour=s.flavour)
    api_key_env = s.api_key_env if s.record_mode == "replay" or not s.target \
        else target.api_key_env
    planned, warnings, chat_mode = static_plan(target, list(framings), s.chat_mode,
                                               s.reference_only)
    out = writable_run_dir(Path(s.out))
    retry = s.retry or RetryPolicy(attempts=s.retries + 1, attempt_timeout=s.timeout)
    if retry.attempt_timeout is None:
        retry = replace(retry, attempt_timeout=s.timeout)
    retry = retry.hinted(target.adapter.retry_hints)   # the API's own "try again" words
    generation = GenerationPlan(
        model=target.model, framings=tuple(planned), chat_mode=chat_mode,
        chat_template=s.chat_template, prefills=s.prefills,
        corpora=tuple(s.corpora) if s.corpora else None, per_corpus=s.per_corpus,
        prefill_tokens=s.prefill_tokens, prefill_tokenizer=s.prefill_tokenizer, seed=s.seed,
        max_tokens=s.max_tokens, top_logprobs=s.top_logprobs,
        prefill_counter=None if s.prefill_tokenizer == "reference"
        else ReferenceSpec.parse(s.prefill_tokenizer),
        prompts=ChatPrompts(s.system_prompt if s.system_prompt is not None else SYSTEM,
                            s.user_prompt if s.user_prompt is not None else USER))
    endpoint = EndpointPlan(
        target=target, target_arg=s.target, api_key_env=api_key_env,
        record_mode=s.record_mode,
        fixtures=Path(s.fixtures) if s.fixtures else out / "exchanges.jsonl",
        timeout=s.timeout, concurrency=s.concurrency, start_concurrency=s.start_concurrency,
        retry=retry, verify_prompts=s.verify_prompts, reference_only=s.reference_only,
        token_ids=s.alignment == "ids", prices=PriceTable.load(s.pricing),
        upstream=pinned_upstream(s.pin_upstream, target))
    scoring = ScoringPlan(reference=ReferenceSpec.parse(s.reference), device=s.device,
                          alignment=s.alignment, chat_template=s.chat_template,
                          ranking=ranking, noise_floor=s.noise_floor,
                          reference_arg=s.reference,
                          **scorer_settings(s.scorer, s.ray_address, s.replicas,
                                            s.replica_threads))
    return Plan(out=out, generation=generation, endpoint=endpoint, scoring=scoring,
                process=process_settings(s.torch_threads, overlap=s.overlap),
                mode="reference-only" if s.reference_only else "perplexity-difference",
                generate_only=s.generate_only, max_degraded_share=s.max_degraded_share,
                quiet=s.quiet, warnings=(*warnings, *bank_warning(s)), overlap=s.overlap,
                rounds=rounds)


def rounds_plan(rounds: int, budget: float, top: int, generate_only: bool = False
                ) -> RoundsPlan:
    """``--rounds``, ``--round2-budget`` and ``--round2-top``, checked before anything is
    sent."""
    if rounds not in (1, 2):
        raise ConfigError(f"--rounds must be 1 or 2 (got {rounds}): round two follows what "
                          "round one's ranking surfaced; a third round is not supported.")
    if not (isinstance(budget, int | float) and math.isfinite(budget) and budget > 0):
        raise ConfigError(f"--round2-budget must be more than 0 (got {budget}): round two's "
                          "rows as a share of round one's, e.g. 0.5 for half as many again. "
                          "For no second round, leave out --rounds 2.")
    if top < 1:
        raise ConfigError(f"--round2-top must be at least 1 (got {top}): the distinct "
                          "top rows of each ranking that round two reads.")
    if rounds == 2 and generate_only:
        raise ConfigError("--rounds 2 cannot be used with --generate-only: round two's "
                          "prefills are derived from round one's ranking, which needs the "
                          "reference's scores. Drop --generate-only, or run one round.")
    return RoundsPlan(rounds, float(budget), top)


def pinned_upstream(name: str | None, target: Any) -> str | None:
    """``--pin-upstream NAME``, checked against what the target's adapter can pin."""
    if name is None:
        return None
    name = name.strip()
    if not name:
        raise ConfigError("--pin-upstream needs the name of an upstream provider, e.g. "
                          "Together.")
    if not target.adapter.pins_upstream(target.flavour):
        raise ConfigError(f"--pin-upstream applies to routers that take a pin (OpenRouter: "
                          f"openrouter:MODEL or --flavour openrouter); {target.kind} "
                          f"({target.flavour or target.family}) serves from one place.")
    return name


def writable_run_dir(out: Path) -> Path:
    """``out`` if a run directory can be written there, else a clear error: a file in the
    way, a file above it, no permission, a read-only filesystem. Nothing is created here."""
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file, not a directory. Pass a new directory for "
                          "the run (or the directory of the run to resume).")
    parent = out
    while not parent.exists():
        parent = parent.parent
    if not parent.is_dir():
        raise ConfigError(f"--out {out}: {parent} is a file, not a directory.")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise ConfigError(f"--out {out} cannot be written ({parent} is read-only or not "
                          "yours). Pass a directory you may write to.")
    return out


def scoring_plan(reference: str | None = None, device: str | None = None,
                 alignment: str = "auto", rank_key: str = "ppl_diff", min_tokens: int = 5,
                 min_compression_ratio: float = 0.0, noise_floor: str | float | None = None,
                 chat_template: str | None = None, reference_only: bool = False,
                 scorer: str = "local", ray_address: str | None = None, replicas: int = 2,
                 replica_threads: int = 1) -> ScoringPlan:
    """The scoring and ranking part alone, for ``score RUN`` (a run already generated):
    ``chat_template`` and ``reference_only`` come from the run's manifest."""
    if alignment not in ("auto", "ids", "text"):
        raise ConfigError("--alignment must be auto, ids or text.")
    if reference_only and rank_key != "nll_ref":
        if rank_key != "ppl_diff":
            raise ConfigError(f"This is a --reference-only run (no target log-probabilities): "
                              f"it ranks by nll_ref, not {rank_key}.")
        rank_key = "nll_ref"
    if noise_floor is not None:
        given_floor(noise_floor)
    return ScoringPlan(reference=ReferenceSpec.parse(reference), device=device,
                       alignment=alignment, chat_template=chat_template,
                       ranking=RankConfig(rank_key, min_tokens, min_compression_ratio),
                       noise_floor=noise_floor, reference_arg=reference,
                       **scorer_settings(scorer, ray_address, replicas, replica_threads))


def scorer_settings(scorer: str, ray_address: str | None, replicas: int,
                    replica_threads: int) -> dict[str, Any]:
    """The scoring engine's settings, checked before anything loads or is sent."""
    if scorer not in ("local", "ray"):
        raise ConfigError(f"--scorer must be local or ray (got {scorer!r}).")
    if replicas < 1 or replica_threads < 1:
        raise ConfigError("--replicas and --replica-threads must be at least 1.")
    if ray_address and scorer != "ray":
        raise ConfigError("--ray-address is for --scorer ray; add --scorer ray.")
    if ray_address:
        from .ray_address import parse_ray_address

        parse_ray_address(ray_address)   # a malformed address fails here, before anything
    return {"scorer": scorer, "ray_address": ray_address, "replicas": replicas,
            "replica_threads": replica_threads}


def process_settings(torch_threads: int | None = None, overlap: bool = False
                     ) -> ProcessSettings:
    """``overlap``: the reference scores while generation runs, so by default torch leaves
    one core to the event loop (on 2 cores, 1 thread): a torch pool as wide as the machine
    would starve the client it overlaps with."""
    cores = os.cpu_count() or 1
    if torch_threads is not None and torch_threads < 1:
        raise ConfigError("--threads must be at least 1.")
    default = max(1, cores - 1) if overlap else cores
    return ProcessSettings(torch_threads=torch_threads or default)


def mutable_parts(value: Any, path: str = "plan") -> list[str]:
    """Where a value holds something that could change after it is built: a non-frozen
    dataclass, a list, a dict or a set (the test of the plan's immutability uses this)."""
    found: list[str] = []
    if is_dataclass(value) and not isinstance(value, type):
        if not value.__dataclass_params__.frozen:  # type: ignore[attr-defined]
            found.append(f"{path} ({type(value).__name__} is not frozen)")
        for f in fields(value):
            found += mutable_parts(getattr(value, f.name), f"{path}.{f.name}")
    elif isinstance(value, list | dict | set | bytearray):
        found.append(f"{path} ({type(value).__name__})")
    elif isinstance(value, tuple | frozenset):
        for i, v in enumerate(value):
            found += mutable_parts(v, f"{path}[{i}]")
    return found
