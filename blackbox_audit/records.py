"""Internal records: what flows between the stages of an audit.

Providers turn wire payloads into these (one conversion point per provider); alignment,
scoring, ranking and reports only ever see these. Each record round-trips through one JSON
object per line, so every stage reads and writes plain files in the run directory.
"""

from __future__ import annotations

import hashlib
import re
from array import array
from dataclasses import asdict, dataclass, field
from typing import Any

import msgspec

from .compact import shortest_f32


def _known_fields(cls: type, obj: dict[str, Any]) -> dict[str, Any]:
    """The fields of a record class present in ``obj``: rows written by a newer version with
    extra fields still load."""
    return {k: v for k, v in obj.items() if k in cls.__dataclass_fields__}


def prefill_id(corpus: str, text: str) -> str:
    """A stable id for a prefill: the same text in the same corpus is the same prefill."""
    return hashlib.sha256(f"{corpus}\x00{text}".encode()).hexdigest()[:16]


@dataclass(frozen=True)
class Prefill:
    """A short document opening that the target is asked to continue."""

    id: str
    corpus: str
    text: str

    @classmethod
    def make(cls, corpus: str, text: str) -> Prefill:
        return cls(id=prefill_id(corpus, text), corpus=corpus, text=text)


@dataclass
class GenerationRequest:
    """One prefill in one framing, ready for a provider.

    ``prompt`` is the exact text sent to a raw completion endpoint (for the chat framing: the
    chat template rendered client-side, then the prefill). ``messages`` is set instead when the
    provider continues an assistant turn itself (assistant prefill).
    """

    prefill: Prefill
    framing: str
    max_tokens: int
    top_logprobs: int
    prompt: str | None = None
    messages: list[dict[str, str]] | None = None
    chat_prompts: list[str] | None = None   # [system, user] of a chat framing, as sent
    round: int = 1                           # the audit round that asked (rounds.py)

    @property
    def row_key(self) -> str:
        return f"{self.prefill.id}:{self.framing}"


ID_PLACEHOLDER = re.compile(r"token_id:(\d+)")


class RowIdentity:
    """What a completions row is known by, and whether it can be ranked: shared by the whole
    row (:class:`Completion`) and its numbers-only view (:class:`CompletionMeta`)."""

    __slots__ = ()
    prefill_id: str
    framing: str
    error: str | None
    degraded: list[str]

    @property
    def row_key(self) -> str:
        return f"{self.prefill_id}:{self.framing}"

    @property
    def usable(self) -> bool:
        return self.error is None and not self.degraded


@dataclass
class Completion(RowIdentity):
    """The target's greedy continuation of one prefill in one framing, as internal data.

    Token columns are parallel lists, one entry per generated token of the continuation:
    ``tokens`` (text as returned), ``token_ids`` (when the endpoint gives them),
    ``token_bytes`` (exact UTF-8 bytes when given; a token may hold part of a character),
    ``logprobs`` and ``top_logprobs`` (``[[token, logprob], ...]`` per position).

    An end-of-turn token that the server reports with empty text (llama.cpp's server does) is
    moved out of the columns into ``end_token``: the reference never scores the end token,
    so neither side does (design §4: never score it on one side only).

    ``degraded`` lists the reasons this row cannot be trusted (empty when it can);
    ``error`` is set when no usable answer came back at all (the request failed);
    ``detail`` says in words what was wrong with an answer that did come back, where the
    reason's name alone does not (which field of a malformed answer, say).
    ``prompt_echo`` summarises the server's echo of the prompt when it was asked for
    (``--verify-prompts``; providers/base.py ``attach_echo``).
    ``mode`` is ``"reference-only"`` for a row from a target that returns no log-probabilities
    (Anthropic), kept for ranking by reference surprisal alone; None for the normal method.
    ``round`` is the audit round whose prefill it continues: 1, or 2 for a prefill derived
    from round one's ranking (``--rounds 2``, rounds.py); rows written before rounds existed
    read as 1.
    """

    prefill_id: str
    corpus: str
    prefill: str
    framing: str
    text: str = ""
    tokens: list[str] = field(default_factory=list)
    token_ids: list[int] | None = None
    token_bytes: list[list[int]] | None = None
    logprobs: list[float | None] = field(default_factory=list)
    top_logprobs: list[list[list[Any]]] | None = None
    finish_reason: str | None = None
    prompt: str | None = None
    prompt_tokens: int | None = None
    end_token: dict[str, Any] | None = None
    model: str | None = None
    prompt_echo: dict[str, Any] | None = None
    degraded: list[str] = field(default_factory=list)
    error: str | None = None
    mode: str | None = None
    detail: str | None = None
    chat_prompts: list[str] | None = None   # [system, user] the chat framing used
    upstream: str | None = None   # who served it, where a router says (OpenRouter "provider")
    round: int = 1

    @property
    def ids_only(self) -> bool:
        """The server named tokens by id alone (vLLM's ``--return-tokens-as-token-ids``:
        ``token_id:N``): their text is unknown until a vocabulary is consulted."""
        return (self.token_ids is not None and bool(self.tokens)
                and all(ID_PLACEHOLDER.fullmatch(t) for t in self.tokens))

    def to_json(self) -> dict[str, Any]:
        # Shallow on purpose: the row is serialised at once, and asdict's deep copy of every
        # top-logprob pair cost milliseconds per 100-token row (bench/client.py).
        return {name: getattr(self, name) for name in self.__dataclass_fields__}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Completion:
        return cls(**_known_fields(cls, obj))

    @classmethod
    def failed(cls, req: GenerationRequest, error: str) -> Completion:
        p = req.prefill
        return cls(prefill_id=p.id, corpus=p.corpus, prefill=p.text, framing=req.framing,
                   prompt=req.prompt, error=error, chat_prompts=req.chat_prompts,
                   round=req.round)

    @classmethod
    def malformed(cls, req: GenerationRequest, why: str) -> Completion:
        """A 2xx answer that could not be read: kept as a degraded row (it was paid for, and
        a resumed run must not ask again), with what was wrong in ``detail``."""
        p = req.prefill
        return cls(prefill_id=p.id, corpus=p.corpus, prefill=p.text, framing=req.framing,
                   prompt=req.prompt, degraded=["malformed_answer"], detail=why[:300],
                   chat_prompts=req.chat_prompts, round=req.round)


@dataclass
class Score:
    """The reference's view of one completion, and the gap between the two models.

    NLLs are in nats per token over the scored span of each side; per-byte figures divide
    by the continuation's UTF-8 byte count on both sides, which makes them comparable across
    tokenizers.
    """

    prefill_id: str
    framing: str
    corpus: str
    alignment: str              # "ids" (same tokenizer) or "text" (retokenised with offsets)
    n_target_tokens: int
    n_ref_tokens: int
    n_bytes: int
    nll_target: float           # mean NLL per target token
    nll_ref: float              # mean NLL per reference token
    ppl_target: float
    ppl_ref: float
    ppl_diff: float             # PPL_ref - PPL_target: the paper's ranking key
    nll_diff: float             # nll_ref - nll_target: log of the perplexity ratio
    bpb_target: float
    bpb_ref: float
    bpb_diff: float
    straddle: str | None = None     # context characters covered by a straddling ref token
    ref_token_logprobs: list[float] = field(default_factory=list)
    ref_tokens: list[str] = field(default_factory=list)
    # The reference's tokens over the completion text as the report and the themes read them
    # (heat.pieces_json): {"e": character end of each piece, "r": reference and "t": target
    # log-probability}; None in rows written before it was kept (then computed from the
    # completion row).
    heat: dict[str, Any] | None = None

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Score:
        return cls(**_known_fields(cls, obj))


SCORE_KEYS = ("ppl_diff", "nll_diff", "bpb_diff")


class CompletionMeta(msgspec.Struct, RowIdentity, gc=False):
    """A completions row without its token columns: what ranking and counting read (a few
    hundred bytes a row, where a :class:`Completion` with 100 tokens of top-5 log-probabilities
    holds tens of kilobytes)."""

    prefill_id: str
    corpus: str
    prefill: str
    framing: str
    text: str = ""
    finish_reason: str | None = None
    degraded: list[str] = msgspec.field(default_factory=list)
    error: str | None = None
    mode: str | None = None
    round: int = 1


class ScoreNumbers(msgspec.Struct, gc=False):
    """A :class:`Score` without its per-token columns: the numbers a ranking needs."""

    prefill_id: str
    framing: str
    corpus: str
    alignment: str
    n_target_tokens: int
    n_ref_tokens: int
    n_bytes: int
    nll_target: float | None
    nll_ref: float | None
    ppl_target: float | None
    ppl_ref: float | None
    ppl_diff: float | None
    nll_diff: float | None
    bpb_target: float | None
    bpb_ref: float | None
    bpb_diff: float | None
    straddle: str | None = None


# -- compact columns ------------------------------------------------------------------------
# A packed run directory (RunDir.pack) writes the per-token log-probabilities of a row in
# float32's precision when every one of them is exactly a float32 (a llama.cpp or vLLM server
# computes in float32; the reference scores in fp32): float32's shortest decimal (6 to 9
# significant digits) instead of 17, which reads back as the same float32 and so, widened,
# as the very same double. The row names those columns under "f32"; a reader that ignores
# the key (pandas, json) gets each value within a float32 rounding of the original. Token
# bytes that are exactly each token's UTF-8 are left out and the row says so under
# "derived" (a token holding part of a character keeps them all).
NARROW_COLUMNS = {"logprobs": 1, "top_logprobs": 3, "ref_token_logprobs": 1}


def _floats(values: list[Any], depth: int) -> list[float] | None:
    """The floats of a column (nested ``depth`` lists deep; top logprobs are [token, lp]
    pairs), in order; None when the column holds anything else where a float belongs."""
    if depth == 1:
        return values if all(type(v) is float for v in values) else None
    out: list[float] = []
    for v in values:
        if depth == 3:
            if not isinstance(v, list):
                return None
            for pair in v:
                if not (isinstance(pair, list) and len(pair) == 2 and type(pair[1]) is float):
                    return None
                out.append(pair[1])
    return out


def _put(values: list[Any], depth: int, new: list[float]) -> list[Any]:
    if depth == 1:
        return new
    it = iter(new)
    return [[[tok, next(it)] for tok, _ in pos] for pos in values]


def narrow(obj: dict[str, Any]) -> dict[str, Any]:
    """``obj`` with its float32-exact per-token columns written in float32's 9 digits,
    listed under ``"f32"`` (:func:`widen` undoes it exactly)."""
    done = []
    out = obj
    for name, depth in NARROW_COLUMNS.items():
        col = obj.get(name)
        if not col:
            continue
        xs = _floats(col, depth)
        if xs is None:
            continue
        as32 = array("f", xs).tolist()
        if as32 != xs:
            continue
        short = [shortest_f32(x) for x in xs]
        if out is obj:
            out = dict(obj)
        out[name] = _put(col, depth, short)
        done.append(name)
    if done:
        out["f32"] = done
    if _bytes_derivable(obj):
        out = {**out, "token_bytes": None, "derived": ["token_bytes"]}
    return out


def _bytes_derivable(obj: dict[str, Any]) -> bool:
    tokens, raw = obj.get("tokens"), obj.get("token_bytes")
    if not (isinstance(tokens, list) and isinstance(raw, list) and raw
            and len(tokens) == len(raw) and "derived" not in obj):
        return False
    try:
        return all(isinstance(t, str) and b == list(t.encode("utf-8"))
                   for t, b in zip(tokens, raw, strict=True))
    except UnicodeEncodeError:   # a lone surrogate: its bytes stay written
        return False


def widen(obj: dict[str, Any]) -> dict[str, Any]:
    """A row as it was before :func:`narrow` (rows without ``"f32"`` or ``"derived"`` come
    back as they are)."""
    if not isinstance(obj, dict):
        return obj
    if "token_bytes" in obj.pop("derived", ()):
        obj["token_bytes"] = [list(t.encode("utf-8")) for t in obj["tokens"]]
    names = obj.pop("f32", None)
    if not names:
        return obj
    for name in names:
        depth = NARROW_COLUMNS.get(name)
        col = obj.get(name)
        xs = _floats(col, depth) if depth and col else None
        if xs is not None:
            obj[name] = _put(col, depth, array("f", xs).tolist())
    return obj
