"""Wire schemas of OpenAI-style responses, and the one conversion into token columns.

Two logprob shapes exist in the wild:
- legacy completions:
  ``logprobs = {tokens, token_logprobs, top_logprobs: [{tok: lp}], text_offset}``
  (OpenAI's /v1/completions, llama-cpp-python, vLLM, Together);
- chat shape: ``logprobs = {content: [{token, logprob, bytes, id?, top_logprobs: [...]}]}``
  (OpenAI's /v1/chat/completions, and llama.cpp's server even on /v1/completions, with ids).

Everything here is data shape only: no policy, no HTTP.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, TypedDict

from blackbox_audit.records import ID_PLACEHOLDER


class TopLogprob(TypedDict, total=False):
    token: str
    logprob: float
    bytes: list[int] | None
    id: int


class ContentLogprob(TypedDict, total=False):
    token: str
    logprob: float
    bytes: list[int] | None
    id: int
    top_logprobs: list[TopLogprob]


class LegacyLogprobs(TypedDict, total=False):
    tokens: list[str]
    token_logprobs: list[float | None]
    top_logprobs: list[dict[str, float] | None]
    text_offset: list[int]


class Choice(TypedDict, total=False):
    text: str
    message: dict[str, Any]
    logprobs: LegacyLogprobs | dict[str, list[ContentLogprob]] | None
    finish_reason: str | None


class Usage(TypedDict, total=False):
    prompt_tokens: int
    completion_tokens: int


@dataclass
class TokenColumns:
    """Per-token data of one choice, whatever shape it came in."""

    tokens: list[str]
    logprobs: list[float | None]
    ids: list[int] | None
    token_bytes: list[list[int]] | None
    top: list[list[list[Any]]] | None
    text_offset: list[int] | None = None


def token_columns(logprobs: Any) -> TokenColumns | None:
    """Convert either logprob shape to columns; None when the response has no logprobs."""
    cols = _columns(logprobs)
    return _ids_from_placeholders(cols) if cols is not None else None


def _ids_from_placeholders(cols: TokenColumns) -> TokenColumns:
    """vLLM with ``--return-tokens-as-token-ids`` names each token ``token_id:N``. The ids are
    then the only truth: some ``bytes`` it sends are those of the placeholder string (a token
    missing from its top dict), and its ``text_offset`` counts placeholder lengths (a known
    vLLM bug), so both are dropped and the reference's vocabulary decides (align.py)."""
    if not cols.tokens:
        return cols
    matches = [ID_PLACEHOLDER.fullmatch(t) for t in cols.tokens]
    if not all(matches):
        return cols
    cols.ids = [int(m.group(1)) for m in matches if m]
    cols.token_bytes = None
    cols.text_offset = None
    return cols


def _columns(logprobs: Any) -> TokenColumns | None:
    if not logprobs:
        return None
    if isinstance(logprobs, dict) and "content" in logprobs:
        content = logprobs.get("content") or []
        if not isinstance(content, list):
            return None
        tokens = [str(c.get("token", "")) for c in content]
        lps = [_float(c.get("logprob")) for c in content]
        ids = [c.get("id") for c in content]
        raw_bytes = [c.get("bytes") for c in content]
        tops = [[[t.get("token", ""), _float(t.get("logprob"))]
                 for t in (c.get("top_logprobs") or [])] for c in content]
        return TokenColumns(
            tokens=tokens, logprobs=lps,
            ids=ids if content and all(isinstance(i, int) for i in ids) else None,
            token_bytes=raw_bytes if content and all(isinstance(b, list) for b in raw_bytes)
            else None,
            top=tops if any(tops) else None)
    if isinstance(logprobs, dict) and "tokens" in logprobs:
        tokens = [str(t) for t in logprobs.get("tokens") or []]
        lps = [x if type(x) is float else _float(x)
               for x in logprobs.get("token_logprobs") or []]
        top_raw = logprobs.get("top_logprobs") or []
        # type() fast path: 500 values per 100-token answer, nearly all plain floats.
        tops = [[[k, v if type(v) is float else _float(v)] for k, v in d.items()] if d else []
                for d in top_raw]
        offsets = logprobs.get("text_offset")
        raw_ids = logprobs.get("token_ids")  # Together's legacy shape carries ids
        ids = ([int(i) for i in raw_ids] if isinstance(raw_ids, list) and len(raw_ids) ==
               len(tokens) and all(isinstance(i, int) for i in raw_ids) else None)
        return TokenColumns(tokens=tokens, logprobs=lps, ids=ids, token_bytes=None,
                            top=tops if any(tops) else None,
                            text_offset=list(offsets) if isinstance(offsets, list) else None)
    return None


def _float(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
