"""score-texts: rank given texts by how much more likely one model finds them than another.

The third job of the machinery (design §7). Given a set of texts (a finetuning dataset,
candidate training documents, hypotheses from an audit) and two models, score every text under
both and rank by the gap, exactly as an audit ranks completions: the same alignment (exact ids
when the vocabularies match, byte spans across families), the same scores (ppl / nll / bpb
gaps, ``scores.score_row``), the same ranking (``rank.rank``, within each group and framing),
the same run directory (completions.jsonl holds the target's side, scores.<ref>.jsonl the
reference's, ranked.jsonl the ranking; resume and report as for an audit).

Where the target's numbers come from:

- ``--target-local PATH``: a local directory or GGUF, scored by the same local engine as the
  reference (:class:`~blackbox_audit.reference.ReferenceModel`).
- an endpoint that returns the log-probabilities of a *given* prompt: vLLM's
  ``prompt_logprobs``, Together's and Fireworks' ``echo``. The text is sent as the prompt of a
  1-token completion; the adapters' echo parsers (``providers.protocol.prompt_echo`` and
  ``split_echo``) give the prompt back as the server tokenised it, and the tokens that cover
  the text are the target's side. Record / replay, retries and concurrency are the audit's
  transport. An endpoint that cannot echo a prompt (llama.cpp's server, OpenAI chat models,
  Anthropic) is refused before any call, naming the targets that can.

Each row of the input is a text with an optional ``id``, ``group`` (rankings are within a group)
and ``context``: raw text the scored text continues (framing ``raw``), or chat messages rendered
with each model's chat template, the text being the assistant's reply (framing ``chat``). Every
output row records its framing. ``select`` writes the top (or bottom) K or share of each ranking
as the input rows, verbatim, ready for a training pipeline.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import httpx

from .align import AlignmentError, ScoringItem, TokenizerView, align_text, same_vocabulary
from .audit import tokenizer_for
from .errors import ConfigError, EndpointError
from .framing import ChatTemplate
from .manifest import Counts, Manifest
from .progress import Progress
from .rank import COLUMNS, RankConfig, RankedRow
from .rank import rank as rank_rows
from .records import SCORE_KEYS, Completion, GenerationRequest, Prefill
from .redact import Redactor
from .reference import ReferenceModel, ReferenceSpec
from .rundir import RunDir, read_jsonl, write_atomic
from .scorer import Scorer
from .scores import score_row

DEFAULT_GROUP = "texts"
CHUNK = 64            # rows scored per call into a scorer (and per batch of requests)
ROLES = ("system", "user", "assistant")

# What a degraded text row means (manifest "degraded_reason_meanings").
REASONS = {
    "misaligned": "the text could not be tokenised to cover its bytes (see detail)",
    "too_long": "context and text are longer than the model takes in one pass",
    "no_prompt_logprobs": "the endpoint answered without the prompt's log-probabilities",
    "echo_mismatch": "the endpoint's prompt tokens do not rebuild the prompt sent",
    "placeholder_logprobs": "the endpoint's prompt log-probabilities are stand-ins "
                            "(-9999, zero, positive, NaN)",
    "malformed_answer": "a 2xx answer not in the endpoint's documented shape",
}


# -- input ----------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextRow:
    """One text to score. ``context`` is raw text the text continues; ``messages`` are chat
    turns (role, content) the text answers; at most one is set. ``source`` is the input row
    as given (a JSON object's text), written back verbatim by ``select``."""

    id: str
    group: str
    text: str
    context: str = ""
    messages: tuple[tuple[str, str], ...] | None = None
    line: int = 0
    source: str = ""

    @property
    def framing(self) -> str:
        return "chat" if self.messages is not None else "raw"

    @property
    def row_key(self) -> str:
        return f"{self.id}:{self.framing}"

    @property
    def shown_context(self) -> str:
        """The context in a few words, for the ranking and the report (the prefill column)."""
        if self.messages is None:
            return self.context
        return " | ".join(f"{r}: {c}" for r, c in self.messages)


def text_id(group: str, context: Any, text: str) -> str:
    """A stable id for a row without one: the same group, context and text is the same row."""
    blob = json.dumps([group, context, text], ensure_ascii=False, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()[:16]


def iter_texts(path: str | Path) -> Iterator[TextRow]:
    """The rows of a texts file, checked as they are read: ``.jsonl`` (objects with ``text``
    and optional ``id``, ``group``, ``context``), anything else plain text, one per line.
    Identical rows (same group, context and text, no id) come once; a repeated ``id`` is an
    error (it would hide a row)."""
    p = Path(path)
    if not p.is_file():
        raise ConfigError(f"Texts file {p} does not exist (or is not a file).")
    jsonl = p.suffix.lower() == ".jsonl"
    seen: set[str] = set()
    try:
        fh = open(p, encoding="utf-8")  # noqa: SIM115 - closed below, read as it goes
    except OSError as e:
        raise ConfigError(f"Cannot read texts file {p}: {e.strerror or e}.") from e
    with fh:
        n = 0
        try:
            for n, line in enumerate(fh, 1):
                if not line.strip():
                    continue
                row = _json_row(p, n, line) if jsonl else _plain_row(n, line)
                if row.id in seen:
                    if row.source and '"id"' in row.source:
                        raise ConfigError(f"{p} line {n}: id {row.id!r} was used by an earlier "
                                          "row; every id must be unique.")
                    continue   # the same row again: scored once
                seen.add(row.id)
                yield row
        except UnicodeDecodeError as e:
            raise ConfigError(f"{p} is not UTF-8 text (after line {n}: {e.reason}); convert "
                              "it (e.g. iconv -t utf-8) and rerun.") from e
    if not seen:
        raise ConfigError(f"{p} holds no texts (every line is blank).")


def _plain_row(n: int, line: str) -> TextRow:
    text = line.rstrip("\r\n")
    return TextRow(id=text_id(DEFAULT_GROUP, None, text), group=DEFAULT_GROUP, text=text,
                   line=n, source=json.dumps({"text": text}, ensure_ascii=False))


def _json_row(p: Path, n: int, line: str) -> TextRow:
    where = f"{p} line {n}"
    try:
        obj = json.loads(line)
    except ValueError as e:
        raise ConfigError(f"{where} is not JSON ({e}). A .jsonl texts file holds one object "
                          'per line, {"text": ...}; plain text goes in a .txt file.') from e
    if not isinstance(obj, dict):
        raise ConfigError(f"{where} is a JSON {type(obj).__name__}, not an object with a "
                          "\"text\" field.")
    text = obj.get("text")
    if not isinstance(text, str) or not text:
        raise ConfigError(f"{where} has no \"text\" string (got {type(text).__name__}); every "
                          "row needs a non-empty text.")
    group = obj.get("group", DEFAULT_GROUP)
    if not isinstance(group, str) or not group:
        raise ConfigError(f"{where}: \"group\" must be a non-empty string.")
    raw_ctx = obj.get("context")
    context, messages = "", None
    if isinstance(raw_ctx, str):
        context = raw_ctx
    elif isinstance(raw_ctx, list):
        messages = _messages(where, raw_ctx)
    elif raw_ctx is not None:
        raise ConfigError(f"{where}: \"context\" must be a string (raw text the text "
                          "continues) or a list of chat messages {\"role\", \"content\"} (the "
                          f"text is the assistant's reply), not a {type(raw_ctx).__name__}.")
    given = obj.get("id")
    if given is not None and not isinstance(given, str | int) or isinstance(given, bool):
        raise ConfigError(f"{where}: \"id\" must be a string or an integer.")
    rid = str(given) if given is not None else text_id(group, raw_ctx, text)
    if not rid or ":" in rid:
        raise ConfigError(f"{where}: id {rid!r} must be non-empty and hold no ':' (row ids "
                          "are ID:FRAMING in the run directory).")
    return TextRow(id=rid, group=group, text=text, context=context, messages=messages, line=n,
                   source=line.strip())


def _messages(where: str, raw: list[Any]) -> tuple[tuple[str, str], ...]:
    out = []
    for m in raw:
        if not (isinstance(m, dict) and m.get("role") in ROLES
                and isinstance(m.get("content"), str)):
            raise ConfigError(f"{where}: each chat message must be {{\"role\": one of "
                              f"{', '.join(ROLES)}, \"content\": string}}; got {str(m)[:80]}.")
        out.append((m["role"], m["content"]))
    if not out or out[-1][0] == "assistant":
        raise ConfigError(f"{where}: chat context must end with a system or user turn (the "
                          "text is the assistant's reply).")
    return tuple(out)


# -- the plan -------------------------------------------------------------------------------
@dataclass(frozen=True)
class Selection:
    """Which rows ``select`` writes: ``k`` per ranking, or a ``share`` of each; from the
    ``top`` (largest gap) or the ``bottom``."""

    k: int | None = None
    share: float | None = None
    end: str = "top"

    def count(self, n: int) -> int:
        if self.k is not None:
            return min(self.k, n)
        return min(n, math.ceil((self.share or 0.0) * n))


@dataclass(frozen=True)
class TextsPlan:
    """score-texts' settings, resolved once. ``target`` is a providers.registry.Target (an
    endpoint) or None; ``target_local`` the local model's spec, or None; exactly one is set."""

    texts: Path
    out: Path
    reference: ReferenceSpec
    reference_arg: str | None
    target: Any = None
    target_local: ReferenceSpec | None = None
    target_arg: str | None = None
    device: str | None = None
    chat_template: str | None = None
    ranking: RankConfig = RankConfig(min_tokens=1)
    selection: Selection | None = None
    record_mode: str = "auto"
    fixtures: Path | None = None
    api_key_env: str | None = None
    timeout: float = 120.0
    concurrency: int = 16
    retries: int = 3
    quiet: bool = False

    @property
    def target_name(self) -> str:
        if self.target_local is not None:
            return self.target_local.name
        return f"{self.target.kind}:{self.target.model}"

    def settings(self) -> dict[str, Any]:
        """What decides the target's numbers: a resumed run must have the same."""
        return {"target": self.target_arg, "target_local": self.target_local.path + (
                    f"/{self.target_local.gguf_file}" if self.target_local.gguf_file else "")
                if self.target_local else None, "chat_template": self.chat_template}


def texts_plan(texts: str | Path, out: str | Path, *, target: str | None = None,
               target_local: str | None = None, base_url: str | None = None,
               model: str | None = None, api_key_env: str | None = None,
               flavour: str = "auto", reference: str | None = None, device: str | None = None,
               chat_template: str | None = None, rank_key: str = "ppl_diff",
               min_tokens: int = 1, select: int | None = None,
               select_share: float | None = None, select_from: str = "top",
               record_mode: str = "auto", fixtures: str | Path | None = None,
               timeout: float = 120.0, concurrency: int = 16, retries: int = 3,
               quiet: bool = False) -> TextsPlan:
    """Check score-texts' settings and resolve them into a :class:`TextsPlan` (nothing is
    loaded or sent here; an endpoint that cannot score given text is refused here)."""
    from .plan import writable_run_dir
    from .transport import MODES

    if (target or base_url or model) and target_local:
        raise ConfigError("Pass one target: an endpoint (TARGET or --base-url/--model) or "
                          "--target-local PATH, not both.")
    if not (target or base_url or model or target_local):
        raise ConfigError("No target: pass --target-local PATH (a local directory or GGUF) or "
                          "an endpoint that returns prompt log-probabilities (" +
                          ", ".join(echo_kinds()) + ").")
    if select is not None and select_share is not None:
        raise ConfigError("Pass --select K or --select-share P, not both.")
    if select is not None and select < 1:
        raise ConfigError("--select must be at least 1.")
    if select_share is not None and not 0.0 < select_share <= 1.0:
        raise ConfigError("--select-share must be in (0, 1].")
    if select_from not in ("top", "bottom"):
        raise ConfigError("--select-from must be top or bottom.")
    if record_mode not in MODES:
        raise ConfigError(f"--record-mode must be one of {', '.join(MODES)}.")
    if concurrency < 1 or retries < 0 or not timeout > 0:
        raise ConfigError("--concurrency must be at least 1, --retries 0 or more and "
                          "--timeout more than 0 seconds.")
    if rank_key not in SCORE_KEYS:
        raise ConfigError(f"Cannot rank texts by {rank_key!r}; choose one of "
                          f"{', '.join(SCORE_KEYS)}.")
    texts_path = Path(texts)
    if not texts_path.is_file():
        raise ConfigError(f"Texts file {texts_path} does not exist (or is not a file).")
    out_path = writable_run_dir(Path(out))
    selection = (Selection(select, select_share, select_from)
                 if select is not None or select_share is not None else None)
    endpoint = None
    if not target_local:
        endpoint = _endpoint_target(target, base_url, model, api_key_env, flavour)
    return TextsPlan(
        texts=texts_path, out=out_path, reference=ReferenceSpec.parse(reference),
        reference_arg=reference, target=endpoint,
        target_local=ReferenceSpec.parse(target_local) if target_local else None,
        target_arg=target or (f"{base_url} {model}" if endpoint else None), device=device,
        chat_template=chat_template, ranking=RankConfig(rank_key, min_tokens),
        selection=selection, record_mode=record_mode,
        fixtures=Path(fixtures) if fixtures else None,
        api_key_env=endpoint.api_key_env if endpoint else None, timeout=timeout,
        concurrency=concurrency, retries=retries, quiet=quiet)


def echo_kinds() -> list[str]:
    """The ``KIND:`` targets whose adapter returns the log-probabilities of a given prompt."""
    from providers.registry import KINDS

    return [f"{name}:MODEL" for name, (adapter, kind) in KINDS.items()
            if kind.flavour != "auto" and adapter.declared("", kind.flavour).echo]


def _cannot(what: str) -> EndpointError:
    return EndpointError(
        f"{what} cannot score given text: it returns no log-probabilities for a prompt it is "
        "sent (no prompt_logprobs or echo). Targets that can: " + ", ".join(echo_kinds()) +
        " (or --base-url URL --model M --flavour vllm), or a local model with --target-local "
        "PATH (a directory or GGUF). Nothing was sent.")


def _endpoint_target(target: str | None, base_url: str | None, model: str | None,
                     api_key_env: str | None, flavour: str) -> Any:
    """The endpoint, refused now when its adapter declares no prompt echo (flavour ``auto``:
    decided after the model list, the only call made before that)."""
    from providers.registry import parse_target

    t = parse_target(target, base_url=base_url, model=model, api_key_env=api_key_env,
                     flavour=flavour)
    if t.adapter.logprobs_absent or (t.flavour != "auto" and
                                     not t.adapter.declared(t.model, t.flavour).echo):
        raise _cannot(f"The target {t.kind}:{t.model}" + (f" ({t.flavour})" if t.flavour else ""))
    return t


# -- the run --------------------------------------------------------------------------------
@dataclass(frozen=True)
class TextsResult:
    run: RunDir
    manifest: Manifest
    ranked: list[RankedRow]
    selected: Path | None = None
    selected_rows: int = 0


@dataclass
class Side:
    """One model's view of a text: its scorer, its tokenizer and chat template."""

    name: str
    view: TokenizerView
    scorer: Scorer | None = None


def log(quiet: bool, msg: str) -> None:
    if not quiet:
        print(msg, file=sys.stderr, flush=True)


def score_texts(plan: TextsPlan) -> TextsResult:
    """Score every text of the plan not yet scored in its run directory under the target and
    the reference, rank, and write the selection when one is asked for."""
    t0 = time.monotonic()
    # the whole file is checked before anything is written, a model loaded or a request
    # sent: a bad row fails in seconds, not after an hour of scoring
    n_rows = sum(1 for _ in iter_texts(plan.texts))
    log(plan.quiet, f"texts: {n_rows} rows in {plan.texts}")
    run = RunDir(plan.out, Redactor())
    try:
        with run.writer():
            manifest = _start(plan, run)
            ref_tok = tokenizer_for(plan.reference)
            reference = Side(plan.reference.name,
                             TokenizerView(ref_tok, _template(plan.chat_template, ref_tok,
                                                              plan.reference.name)))
            done = run.load_completions()
            if plan.target_local is not None:
                stats = _score_local(plan, run, reference, done, n_rows)
            else:
                stats = asyncio.run(_score_endpoint(plan, run, reference, done, n_rows))
            ranked, manifest = _rank(plan, run, manifest, stats)
            selected, n_sel = (select_rows(plan, run, ranked) if plan.selection
                               else (None, 0))
            manifest = manifest.updated(status="done", seconds=round(time.monotonic() - t0, 2))
            if selected is not None:
                manifest = manifest.updated(extra={**manifest.extra, "selection": {
                    "path": str(selected), "rows": n_sel,
                    "k": plan.selection.k, "share": plan.selection.share,
                    "from": plan.selection.end, "rank_key": plan.ranking.key}})
            run.write_manifest(manifest)
    finally:
        run.close()
    return TextsResult(run, manifest, ranked, selected, n_sel)


@lru_cache(maxsize=2)
def local_model(spec: ReferenceSpec, device: str | None) -> ReferenceModel:
    """A local scorer, loaded once per process (as the tokenizers are: audit.tokenizer_for):
    a session that scores several text sets, or the organism against its base and the base
    against itself, loads each model once. The engine keeps no state between calls."""
    from .audit import tokenizer_for

    return ReferenceModel(spec, device=device, tokenizer=tokenizer_for(spec))


def _template(path: str | None, tokenizer, name: str) -> ChatTemplate | None:
    if path:
        return ChatTemplate.from_file(path)
    return ChatTemplate.from_tokenizer(tokenizer, name) if getattr(
        tokenizer, "chat_template", None) else None


def _start(plan: TextsPlan, run: RunDir) -> Manifest:
    from .audit import versions

    manifest = run.read_manifest()
    old = manifest.extra.get("texts_settings")
    if old is not None and old != plan.settings():
        raise ConfigError(f"{run.path} holds scores of another target ({old}); rerun with the "
                          "same target to resume it, or pass a new --out.")
    if old is None and manifest.mode not in (None, "score-texts"):
        raise ConfigError(f"{run.path} holds an audit, not a score-texts run; pass a new --out.")
    e = plan.target
    target = ({"kind": "local", "model": plan.target_local.name,
               "path": plan.target_local.path, "gguf_file": plan.target_local.gguf_file}
              if plan.target_local else
              {"kind": e.kind, "adapter": e.family, "base_url": e.base_url, "model": e.model,
               "api_key": f"<from ${e.api_key_env}>" if e.api_key_env else None})
    manifest = manifest.updated(
        tool="blackbox-audit", mode="score-texts", status="scoring", versions=versions(),
        target=target,
        config={"texts": str(plan.texts), "out": str(plan.out), "target": plan.target_arg,
                "target_local": plan.settings()["target_local"], "reference": plan.reference_arg,
                "device": plan.device, "chat_template": plan.chat_template,
                "rank_key": plan.ranking.key, "min_tokens": plan.ranking.min_tokens,
                "record_mode": plan.record_mode},
        end_token="not scored: a text ends where its characters end, on both sides",
        extra={**manifest.extra, "texts_settings": plan.settings()})
    run.write_manifest(manifest)
    return manifest


def _chunks(rows: Iterator[TextRow], n: int) -> Iterator[list[TextRow]]:
    chunk: list[TextRow] = []
    for r in rows:
        chunk.append(r)
        if len(chunk) == n:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def context_for(side: Side, row: TextRow) -> str:
    """The text before the scored text, in this model's own format (its chat template)."""
    if row.messages is None:
        return row.context
    if side.view.template is None:
        raise AlignmentError(f"{side.name} has no chat template for a chat context (pass "
                             "--chat-template FILE)")
    return side.view.template.render([{"role": r, "content": c} for r, c in row.messages])


def shared_vocabulary(a: TokenizerView, b: TokenizerView) -> bool:
    """Do two tokenizers give every id the same bytes (the ids path: score the same ids)?"""
    return a.tok is b.tok or (a.tok.get_vocab() == b.tok.get_vocab()
                              and a.added_text == b.added_text)


def _limit(scorer: Scorer | None) -> int:
    return scorer.max_length if scorer is not None else 1 << 30


def _text_row(row: TextRow, model: str, prompt: str) -> Completion:
    return Completion(prefill_id=row.id, corpus=row.group, prefill=row.shown_context,
                      framing=row.framing, text=row.text, prompt=prompt, model=model)


def _degrade(c: Completion, reason: str, detail: str) -> Completion:
    c.degraded = [reason]
    c.detail = detail[:300]
    return c


def _score_local(plan: TextsPlan, run: RunDir, reference: Side,
                 done: dict[str, Completion], n_rows: int) -> dict[str, Any]:
    """Both sides scored here by the local engine; when the two tokenizers share a vocabulary
    and render the context alike, both score the very same ids (the ids path)."""
    spec = plan.target_local
    assert spec is not None
    tgt_tok = tokenizer_for(spec)
    target = Side(spec.name, TokenizerView(tgt_tok, _template(plan.chat_template, tgt_tok,
                                                              spec.name)))
    shared = shared_vocabulary(target.view, reference.view)
    log(plan.quiet, f"target (local): {spec.name}; reference: {reference.name}; "
                    f"{'same vocabulary: exact ids' if shared else 'different vocabularies: '}"
                    f"{'' if shared else 'byte spans'}")
    target.scorer = local_model(spec, plan.device)
    reference.scorer = local_model(plan.reference, plan.device)
    have = run.load_scores(reference.name)
    progress = Progress("scoring texts", n_rows, unit="texts", quiet=plan.quiet)
    counts = {"scored_now": 0, "scored_before": 0, "tokens": 0}
    t0 = time.monotonic()
    for chunk in _chunks(iter_texts(plan.texts), CHUNK):
        new_rows: list[tuple[TextRow, Completion, ScoringItem]] = []
        for row in chunk:
            prev = done.get(row.row_key)
            if prev is not None and prev.error is None and (row.row_key in have
                                                            or not prev.usable):
                counts["scored_before"] += 1
                continue
            c, item = _local_item(target, row)
            if item is None:
                run.append_completion(c)
                continue
            new_rows.append((row, c, item))
        if not new_rows:
            continue
        lps = target.scorer.score([i.ids for _, _, i in new_rows],
                                  [i.start for _, _, i in new_rows])
        for (_row, c, _item), lp in zip(new_rows, lps, strict=True):
            c.logprobs = list(lp)
        ref_items: list[tuple[Completion, ScoringItem]] = []
        for row, c, item in new_rows:
            r_item = _reference_item(reference, row, c, item if shared else None)
            if isinstance(r_item, str):   # the target's side is kept, the row marked
                _degrade(c, "misaligned", f"reference: {r_item}")
            else:
                ref_items.append((c, r_item))
            run.append_completion(c)
        _score_reference(run, reference, ref_items, counts)
        progress.update(advance=len(chunk))
    progress.finish()
    counts["seconds"] = round(time.monotonic() - t0, 2)
    return {**counts, "alignment": "ids" if shared else "text",
            "target_device": getattr(target.scorer, "device", None),
            "reference_device": getattr(reference.scorer, "device", None)}


def _local_item(target: Side, row: TextRow) -> tuple[Completion, ScoringItem | None]:
    """The target's ids and scored span for a text (its own tokenizer and template)."""
    try:
        ctx = context_for(target, row)
        item = align_text(target.view, ctx, row.text)
    except AlignmentError as e:
        return _degrade(_text_row(row, target.name, row.context), "misaligned", str(e)), None
    c = _text_row(row, target.name, ctx)
    if len(item.ids) > _limit(target.scorer):
        return _degrade(c, "too_long", f"{len(item.ids)} tokens with the context, more than "
                                       f"{target.name} takes in one pass"), None
    span = item.ids[item.start:]
    c.token_ids = list(span)
    c.token_bytes = [list(target.view.token_bytes(i)) for i in span]
    c.tokens = list(item.ref_tokens or [])
    c.prompt_tokens = item.start
    c.finish_reason = "text"
    return c, item


def _reference_item(reference: Side, row: TextRow, c: Completion,
                    same: ScoringItem | None) -> ScoringItem | str:
    """The reference's sequence for a text: the target's own ids where the vocabularies and
    the rendered contexts agree, else the reference's tokenisation (byte spans); a string
    saying why when neither can be had."""
    try:
        ctx = context_for(reference, row)
        if same is not None and ctx == c.prompt:
            return ScoringItem(ids=same.ids, start=same.start, alignment="ids",
                               n_bytes=same.n_bytes, straddle=same.straddle,
                               ref_tokens=same.ref_tokens)
        item = align_text(reference.view, ctx, row.text)
    except AlignmentError as e:
        return str(e)
    if len(item.ids) > _limit(reference.scorer):
        return f"{len(item.ids)} tokens, more than the reference takes in one pass"
    return item


def _score_reference(run: RunDir, reference: Side,
                     items: Sequence[tuple[Completion, ScoringItem]],
                     counts: dict[str, Any]) -> None:
    if not items:
        return
    assert reference.scorer is not None
    lps = reference.scorer.score([i.ids for _, i in items], [i.start for _, i in items])
    for (c, item), lp in zip(items, lps, strict=True):
        run.append_score(reference.name, score_row(c, item, lp))
        counts["scored_now"] += 1
        counts["tokens"] += len(item.ids)


# -- endpoint targets: the prompt's log-probabilities ---------------------------------------
async def _score_endpoint(plan: TextsPlan, run: RunDir, reference: Side,
                          done: dict[str, Completion], n_rows: int) -> dict[str, Any]:
    """Ask the endpoint for each text's prompt log-probabilities (1-token completions with
    the prompt echoed), then score the reference over the same text."""
    from providers.base import RequestFailed, RequestOptions
    from providers.registry import make_provider

    from .credentials import read_key, request_headers
    from .dispatch import AdaptiveLimiter, run_all
    from .transport import FixtureStore, RetryPolicy, TransportStats, build_client

    t = plan.target
    mode = plan.record_mode
    fixtures = plan.fixtures or run.exchanges_path
    key = read_key(plan.api_key_env, required=mode != "replay",
                   why=" (the target's API key variable)")
    run.redactor.add(key)
    store = None
    if mode != "off":
        if mode == "replay" and not fixtures.exists():
            raise ConfigError(f"--replay needs recorded fixtures, and {fixtures} does not "
                              "exist. Pass --fixtures PATH.")
        store = FixtureStore(fixtures, run.redactor, writable=mode in ("record", "auto"))
    stats = TransportStats()
    limiter = AdaptiveLimiter(plan.concurrency, None)
    retry = RetryPolicy(attempts=plan.retries + 1,
                        attempt_timeout=plan.timeout).hinted(t.adapter.retry_hints)
    reference.scorer = None
    counts: dict[str, Any] = {"scored_now": 0, "scored_before": 0, "tokens": 0}
    t0 = time.monotonic()
    async with build_client(t.base_url or "http://replay.invalid/v1", mode=mode, store=store,
                            headers=request_headers(t.url_headers, key, sdk=t.uses_sdk),
                            timeout=plan.timeout, stats=stats, retry=retry, feedback=limiter,
                            usage=t.adapter.usage, max_connections=plan.concurrency) as client:
        flavour = t.flavour
        if flavour == "auto":   # the model list (free) says which server this is
            found = await t.adapter.discover(client, t.model)
            flavour = found[0] if found else "generic"
            if not t.adapter.declared(t.model, flavour).echo:
                raise _cannot(f"The endpoint {t.base_url} ({flavour} server)")
        provider = make_provider(t, client, key, flavour=flavour,
                                 options=RequestOptions(echo_prompts=True))
        log(plan.quiet, f"target: {t.kind}:{t.model} ({flavour}), prompt log-probabilities; "
                        f"reference: {reference.name}")
        have = run.load_scores(reference.name)
        progress = Progress("scoring texts", n_rows, unit="texts", quiet=plan.quiet)
        first = True
        for chunk in _chunks(iter_texts(plan.texts), CHUNK):
            todo, rescore = [], []
            for row in chunk:
                prev = done.get(row.row_key)
                if prev is None or prev.error is not None:
                    todo.append(row)
                elif prev.usable and row.row_key not in have:
                    rescore.append((row, prev))
                else:
                    counts["scored_before"] += 1
            answered: list[tuple[TextRow, Completion]] = list(rescore)
            if first and todo:   # one row alone first: an endpoint without echo stops here
                c = await _ask(provider, reference, todo[0], RequestFailed)
                if "no_prompt_logprobs" in c.degraded:
                    raise EndpointError(
                        f"{t.kind}:{t.model} answered without the prompt's log-probabilities "
                        f"(asked for with {flavour}'s echo parameters), so it cannot score "
                        "given text. One request was sent; nothing more.")
                run.append_completion(c)
                answered.append((todo.pop(0), c))
            first = False

            async def call(row: TextRow) -> Completion:
                return await _ask(provider, reference, row, RequestFailed)

            def got(row: TextRow, c: Completion,
                    answered: list[tuple[TextRow, Completion]] = answered) -> None:
                run.append_completion(c)
                answered.append((row, c))

            await run_all(todo, call, got, limiter)
            items = []
            for row, c in answered:
                if not c.usable:
                    continue
                item = _endpoint_reference_item(reference, row, c)
                if isinstance(item, str):   # marked, and written again: the latest row counts
                    run.append_completion(_degrade(c, "misaligned", f"reference: {item}"))
                else:
                    items.append((c, item))
            if reference.scorer is None and items:
                reference.scorer = local_model(plan.reference, plan.device)
            _score_reference(run, reference, items, counts)
            progress.update(advance=len(chunk))
        progress.finish()
    counts["seconds"] = round(time.monotonic() - t0, 2)
    counts["requests"] = stats.to_json()
    counts["flavour"] = flavour
    return counts


async def _ask(provider: Any, reference: Side, row: TextRow, failed: type[Exception]
               ) -> Completion:
    """One text's prompt log-probabilities from the endpoint, as the target's row."""
    from providers.base import first_choice
    from providers.protocol import MalformedAnswer, choice_text, prompt_echo, split_echo
    from providers.protocol import token_columns as columns

    from .transport import JSON_EXTENSION, OversizedBody

    try:
        ctx = context_for(reference, row)
    except AlignmentError as e:
        return _degrade(_text_row(row, provider.model, row.context), "misaligned", str(e))
    prompt = ctx + row.text
    c = _text_row(row, provider.model, ctx)
    req = GenerationRequest(Prefill(row.id, row.group, row.text), row.framing, 1, 1,
                            prompt=prompt)
    try:
        response = await provider.send(provider.build(req))
        if response.status_code >= 400:
            provider.raise_for_status(response)
        payload = response.extensions.pop(JSON_EXTENSION, None) or response.json()
        if not isinstance(payload, dict):
            raise MalformedAnswer(f"the answer is a JSON {type(payload).__name__}")
        choice = first_choice(payload, "The endpoint")
        echo = prompt_echo(payload, choice)
        if echo is None:
            cols = columns(choice.get("logprobs"))
            if cols is not None:
                echo, _, _ = split_echo(cols, choice_text(choice, chat=False), prompt)
    except failed as e:
        c.error = str(e)
        return c
    except (MalformedAnswer, ValueError, TypeError, KeyError) as e:
        return _degrade(c, "malformed_answer", f"{type(e).__name__}: {e}")
    except (httpx.TransportError, OversizedBody) as e:   # after retries: this row only
        c.error = f"request failed after retries: {type(e).__name__}: {e}"
        return c
    if echo is None:
        return _degrade(c, "no_prompt_logprobs", "the answer holds no prompt echo")
    return echo_span(c, echo, ctx, prompt)


def echo_span(c: Completion, echo: Any, ctx: str, prompt: str) -> Completion:
    """The echo's tokens that cover the text (a token straddling the context counts, as in
    align.align_text), as the target's columns; the tokens before them, by id where the server
    gave ids, kept in ``prompt_echo`` for the reference's ids path."""
    from .quality import placeholders

    tokens = list(echo.tokens)
    seen = "".join(tokens)
    if echo.first_unknown and prompt.endswith(seen):
        tokens[0] = prompt[: len(prompt) - len(seen)]   # vLLM names no first token
        seen = prompt
    if seen != prompt:
        return _degrade(c, "echo_mismatch", f"the server's prompt tokens spell "
                                            f"{seen[-60:]!r}, not the end of the prompt sent")
    boundary, pos, start = len(ctx), 0, len(tokens)
    for k, tok in enumerate(tokens):
        if pos + len(tok) > boundary and tok:
            start = k
            break
        pos += len(tok)
    first_unscored = None
    if start == 0:   # no BOS: the text's first token has no log-probability (nothing precedes
        start, first_unscored = 1, tokens[0]   # it); both sides score from the second token
    lps = echo.logprobs[start:]
    if not lps or any(x is None for x in lps):
        return _degrade(c, "no_prompt_logprobs", "the text's tokens came without "
                                                 "log-probabilities")
    if placeholders([float(x) for x in lps]):
        return _degrade(c, "placeholder_logprobs", f"values such as {lps[:3]}")
    c.tokens = tokens[start:]
    c.logprobs = [float(x) for x in lps]
    c.token_ids = list(echo.ids[start:]) if echo.ids is not None else None
    c.prompt_tokens = start
    c.finish_reason = "text"
    c.prompt_echo = {"tokens": len(tokens), "logprobs": "real",
                     "context_ids": list(echo.ids[:start]) if echo.ids is not None else None,
                     "straddle": prompt[pos:boundary] if pos < boundary else None,
                     "first_unscored": first_unscored}
    return c


def _endpoint_reference_item(reference: Side, row: TextRow, c: Completion
                             ) -> ScoringItem | str:
    """The reference's sequence for an endpoint's row: the server's own ids when they mean the
    same bytes to the reference (the ids path), else the reference's tokenisation."""
    echo = c.prompt_echo or {}
    ctx_ids, skipped = echo.get("context_ids"), echo.get("first_unscored") or ""
    try:
        if ctx_ids and same_vocabulary(reference.view, c):
            return ScoringItem(ids=[*ctx_ids, *(c.token_ids or [])], start=len(ctx_ids),
                               alignment="ids", n_bytes=len(row.text.encode()) -
                               len(skipped.encode()), straddle=echo.get("straddle"),
                               ref_tokens=list(c.tokens))
        # the same bytes as the target's side: a first token it could not score is context
        return align_text(reference.view, (c.prompt or "") + skipped, row.text[len(skipped):])
    except AlignmentError as e:
        return str(e)


# -- ranking and selection ------------------------------------------------------------------
def _rank(plan: TextsPlan, run: RunDir, manifest: Manifest, stats: dict[str, Any]
          ) -> tuple[list[RankedRow], Manifest]:
    completions = run.load_completions()
    scores = run.load_scores(plan.reference.name)
    ranked, left_out = rank_rows(completions, scores, plan.ranking)
    run.write_ranked(ranked, COLUMNS)
    reasons: dict[str, int] = {}
    for c in completions.values():
        for r in c.degraded:
            reasons[r] = reasons.get(r, 0) + 1
    counts = Counts(rows=len(completions), ranked=len(ranked),
                    failed=sum(c.error is not None for c in completions.values()),
                    degraded=sum(bool(c.degraded) for c in completions.values()),
                    degraded_reasons=dict(sorted(reasons.items())),
                    left_out_of_ranking=left_out)
    ref = plan.reference
    manifest = manifest.updated(
        reference={"name": ref.name, "path": ref.path, "gguf_file": ref.gguf_file},
        scoring={"reference": ref.name, **stats}, counts=counts,
        degraded_reason_meanings=REASONS,
        ranking={**plan.ranking.to_json(), "within": ["group", "framing"]})
    run.write_manifest(manifest)
    return ranked, manifest


def select_rows(plan: TextsPlan, run: RunDir, ranked: list[RankedRow]
                ) -> tuple[Path, int]:
    """RUN/selected.jsonl: the top (or bottom) of each (group, framing) ranking, as the input
    rows verbatim (a training pipeline reads its own format back), in ranking order."""
    sel = plan.selection
    assert sel is not None
    from .rank import groups

    chosen: list[str] = []
    for rows in groups(ranked).values():
        n = sel.count(len(rows))
        part = rows[:n] if sel.end == "top" else rows[::-1][:n]
        chosen += [r.row_id for r in part]
    order = {k: i for i, k in enumerate(chosen)}
    lines: list[tuple[int, str]] = [(order[row.row_key], row.source)
                                    for row in iter_texts(plan.texts) if row.row_key in order]
    lines.sort()
    path = run.path / "selected.jsonl"
    write_atomic(path, "".join(run.redactor.text(s) + "\n" for _, s in lines))
    return path, len(lines)


def read_selected(path: str | Path) -> list[dict[str, Any]]:
    """The rows a selection wrote (tests, pipelines)."""
    return list(read_jsonl(Path(path)))


__all__ = ["DEFAULT_GROUP", "Selection", "TextRow", "TextsPlan", "TextsResult", "echo_kinds",
           "echo_span", "iter_texts", "score_texts", "select_rows", "texts_plan"]
