"""Wire schemas of OpenAI-style responses, and the one conversion into token columns.

Two logprob shapes exist in the wild:
- legacy completions:
  ``logprobs = {tokens, token_logprobs, top_logprobs: [{tok: lp}], text_offset}``
  (OpenAI's /v1/completions, llama-cpp-python, vLLM, Together);
- chat shape: ``logprobs = {content: [{token, logprob, bytes, id?, top_logprobs: [...]}]}``
  (OpenAI's /v1/chat/completions, and llama.cpp's server even on /v1/completions, with ids).

The prompt as the server saw it (echo / prompt log-probabilities) comes in three more shapes,
converted by :func:`prompt_echo` and :func:`split_echo`:
- Together: ``prompt = [{text, logprobs: {tokens, token_logprobs, token_ids}}]`` beside the
  choices (its OpenAPI spec, ``PromptPart``), on both endpoints, with ``echo: true``;
- vLLM: ``prompt_logprobs = [null, {"<id>": {logprob, rank, decoded_token}}, ...]`` per
  choice on /completions and beside the choices on /chat/completions, with
  ``prompt_logprobs: 0`` (one entry per prompt token: the token itself);
- OpenAI's legacy echo (Fireworks, davinci-002): the prompt's tokens lead the choice's own
  ``text`` and ``logprobs``, so they are split off at the prompt's length.

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


def openai_usage(payload: Any) -> tuple[Any, Any] | None:
    """(prompt, completion) tokens of an OpenAI-style answer's ``usage``; None without one."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    return usage.get("prompt_tokens"), usage.get("completion_tokens")


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
    if not cols.tokens or not ID_PLACEHOLDER.fullmatch(cols.tokens[0]):
        return cols  # the first token decides nearly always: no regex per token
    matches = [ID_PLACEHOLDER.fullmatch(t) for t in cols.tokens]
    if not all(matches):
        return cols
    cols.ids = [int(m.group(1)) for m in matches if m]
    cols.token_bytes = None
    cols.text_offset = None
    return cols


class MalformedAnswer(ValueError):
    """A 2xx answer that is not in the shape its endpoint documents; the message names the
    part. The row is kept, marked ``malformed_answer`` (providers/base.py), and the run goes
    on: a recorded answer replays the same way, so it must never stop a run."""


def _columns(logprobs: Any) -> TokenColumns | None:
    if not logprobs:
        return None
    if not isinstance(logprobs, dict):
        raise MalformedAnswer(f"logprobs is a {type(logprobs).__name__}, not an object")
    if "content" in logprobs:
        content = logprobs.get("content") or []
        if not isinstance(content, list) or not all(isinstance(c, dict) for c in content):
            raise MalformedAnswer("logprobs.content is not a list of objects")
        tokens = [str(c.get("token", "")) for c in content]
        lps = [_float(c.get("logprob")) for c in content]
        ids = [c.get("id") for c in content]
        raw_bytes = [c.get("bytes") for c in content]
        tops = [[[str(t.get("token", "")), _float(t.get("logprob"))]
                 for t in _objects(c.get("top_logprobs"), "top_logprobs")] for c in content]
        have_bytes = bool(content) and all(isinstance(b, list) for b in raw_bytes)
        if have_bytes and not all(map(_is_bytes, raw_bytes)):
            raise MalformedAnswer("a token's bytes are not a list of byte values (0-255)")
        return TokenColumns(
            tokens=tokens, logprobs=lps,
            ids=ids if content and all(type(i) is int for i in ids) else None,
            token_bytes=raw_bytes if have_bytes else None,
            top=tops if any(tops) else None)
    if "tokens" in logprobs:
        tokens = _list(logprobs.get("tokens"), "logprobs.tokens")
        tokens = [str(t) for t in tokens]
        lps = [x if type(x) is float else _float(x)
               for x in _list(logprobs.get("token_logprobs"), "logprobs.token_logprobs")]
        top_raw = _list(logprobs.get("top_logprobs"), "logprobs.top_logprobs")
        if not all(d is None or isinstance(d, dict) for d in top_raw):
            raise MalformedAnswer("logprobs.top_logprobs is not a list of {token: logprob} "
                                  "objects")
        # type() fast path: 500 values per 100-token answer, nearly all plain floats.
        tops = [[[k, v if type(v) is float else _float(v)] for k, v in d.items()] if d else []
                for d in top_raw]
        offsets = logprobs.get("text_offset")
        if offsets is not None and not (isinstance(offsets, list)
                                        and all(type(o) is int for o in offsets)):
            raise MalformedAnswer("logprobs.text_offset is not a list of integers")
        raw_ids = logprobs.get("token_ids")  # Together's legacy shape carries ids
        ids = ([int(i) for i in raw_ids] if isinstance(raw_ids, list) and len(raw_ids) ==
               len(tokens) and all(type(i) is int for i in raw_ids) else None)
        return TokenColumns(tokens=tokens, logprobs=lps, ids=ids, token_bytes=None,
                            top=tops if any(tops) else None,
                            text_offset=list(offsets) if offsets is not None else None)
    return None


def choice_text(choice: dict[str, Any], chat: bool) -> str:
    """The text of a choice: ``message.content`` on /chat/completions, ``text`` on
    /completions (absent or null: empty)."""
    if chat:
        message = choice.get("message") or {}
        if not isinstance(message, dict):
            raise MalformedAnswer("choices[0].message is not an object")
        text, where = message.get("content"), "choices[0].message.content"
    else:
        text, where = choice.get("text"), "choices[0].text"
    if text is not None and not isinstance(text, str):
        raise MalformedAnswer(f"{where} is a {type(text).__name__}, not a string")
    return text or ""


def _list(value: Any, where: str) -> list[Any]:
    """A list field (absent or null: empty); anything else is a malformed answer."""
    if value is None:
        return []
    if not isinstance(value, list):
        raise MalformedAnswer(f"{where} is a {type(value).__name__}, not a list")
    return value


def _objects(value: Any, where: str) -> list[dict[str, Any]]:
    items = _list(value, where)
    if not all(isinstance(t, dict) for t in items):
        raise MalformedAnswer(f"{where} is not a list of objects")
    return items


def _is_bytes(b: list[Any]) -> bool:
    return all(type(x) is int and 0 <= x < 256 for x in b)


@dataclass
class PromptEcho:
    """The prompt as the server tokenised it, with its log-probabilities (the first token has
    none: nothing precedes it)."""

    tokens: list[str]
    logprobs: list[float | None]
    ids: list[int] | None = None
    first_unknown: bool = False  # vLLM gives no entry, so no text, for the first token

    @property
    def text(self) -> str:
        return "".join(self.tokens)


def prompt_echo(payload: dict[str, Any], choice: dict[str, Any]) -> PromptEcho | None:
    """The server's echo of the prompt in Together's or vLLM's shape; None when absent."""
    together = payload.get("prompt")
    if isinstance(together, list) and together and isinstance(together[0], dict):
        cols = _columns(together[0].get("logprobs"))
        if cols is not None:
            return PromptEcho(cols.tokens, cols.logprobs, cols.ids)
    entries = choice.get("prompt_logprobs")
    if entries is None:
        entries = payload.get("prompt_logprobs")
    if not isinstance(entries, list) or not entries:
        return None
    ids = choice.get("prompt_token_ids") or payload.get("prompt_token_ids")
    tokens: list[str] = []
    lps: list[float | None] = []
    found: list[int] = []
    for i, entry in enumerate(entries):
        if not isinstance(entry, dict) or not entry:  # the first token: no logprob
            known = ids[i] if isinstance(ids, list) and i < len(ids) else None
            tokens.append("")
            lps.append(None)
            found.append(known if isinstance(known, int) else -1)
            continue
        # prompt_logprobs: 0 leaves one entry, the prompt token; with k > 0 the prompt token
        # is the one named by prompt_token_ids when given, else the first (vLLM puts it first)
        key = next(iter(entry))
        if isinstance(ids, list) and i < len(ids) and str(ids[i]) in entry:
            key = str(ids[i])
        item = entry[key] if isinstance(entry[key], dict) else {}
        tokens.append(str(item.get("decoded_token") or ""))
        lps.append(_float(item.get("logprob")))
        found.append(int(key) if str(key).lstrip("-").isdigit() else -1)
    return PromptEcho(tokens, lps, found if all(i >= 0 for i in found) else None,
                      first_unknown=bool(tokens) and tokens[0] == "")


def split_echo(cols: TokenColumns, text: str, prompt: str
               ) -> tuple[PromptEcho | None, TokenColumns, str]:
    """OpenAI's legacy echo puts the prompt's tokens first in the choice: split them off at
    the prompt's length (by ``text_offset`` when given, else by the tokens' running length).
    Returns (the echo or None when the text does not start with the prompt, the continuation's
    columns, the continuation's text)."""
    if not text.startswith(prompt):
        return None, cols, text
    n = len(prompt)
    if cols.text_offset is not None and len(cols.text_offset) == len(cols.tokens):
        cut = next((i for i, o in enumerate(cols.text_offset) if o >= n), len(cols.tokens))
    else:
        cut, pos = len(cols.tokens), 0
        for i, t in enumerate(cols.tokens):
            if pos >= n:
                cut = i
                break
            pos += len(t)
    echo = PromptEcho(cols.tokens[:cut], cols.logprobs[:cut],
                      cols.ids[:cut] if cols.ids is not None else None)
    rest = TokenColumns(
        tokens=cols.tokens[cut:], logprobs=cols.logprobs[cut:],
        ids=cols.ids[cut:] if cols.ids is not None else None,
        token_bytes=cols.token_bytes[cut:] if cols.token_bytes is not None else None,
        top=cols.top[cut:] if cols.top is not None else None,
        text_offset=cols.text_offset[cut:] if cols.text_offset is not None else None)
    return echo, rest, text[n:]


def _float(x: Any) -> float | None:
    if isinstance(x, bool) or x is None:
        return None
    try:
        return float(x)
    except (TypeError, ValueError):
        return None
