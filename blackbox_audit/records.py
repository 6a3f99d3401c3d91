"""Internal records: what flows between the stages of an audit.

Providers turn wire payloads into these (one conversion point per provider); alignment,
scoring, ranking and reports only ever see these. Each record round-trips through one JSON
object per line, so every stage reads and writes plain files in the run directory.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import asdict, dataclass, field
from typing import Any


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

    @property
    def row_key(self) -> str:
        return f"{self.prefill.id}:{self.framing}"


ID_PLACEHOLDER = re.compile(r"token_id:(\d+)")


@dataclass
class Completion:
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

    @property
    def row_key(self) -> str:
        return f"{self.prefill_id}:{self.framing}"

    @property
    def usable(self) -> bool:
        return self.error is None and not self.degraded

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
                   prompt=req.prompt, error=error, chat_prompts=req.chat_prompts)

    @classmethod
    def malformed(cls, req: GenerationRequest, why: str) -> Completion:
        """A 2xx answer that could not be read: kept as a degraded row (it was paid for, and
        a resumed run must not ask again), with what was wrong in ``detail``."""
        p = req.prefill
        return cls(prefill_id=p.id, corpus=p.corpus, prefill=p.text, framing=req.framing,
                   prompt=req.prompt, degraded=["malformed_answer"], detail=why[:300],
                   chat_prompts=req.chat_prompts)


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

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Score:
        return cls(**_known_fields(cls, obj))


SCORE_KEYS = ("ppl_diff", "nll_diff", "bpb_diff")
