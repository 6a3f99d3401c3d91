"""Alignment: which reference tokens to score, so both models are judged on the same text.

Two paths (design §4):

- ``ids`` (same tokenizer: the reference is the target's base or shares its vocabulary, the
  paper's main setting). The reference scores the target's own token ids after the context
  the target saw. Re-tokenising the text can split it differently and adds noise that is not
  in the models; this path has none. Chosen when the target returned ids (or bytes / strings
  that map back to ids) and every id means the same bytes in the reference vocabulary.
- ``text`` (different tokenizers). The context is the framing in the reference's own format,
  the continuation is the returned text. The full string is tokenised by the reference and
  each token is placed on the UTF-8 bytes it covers (exact for byte-level vocabularies, from
  character offsets otherwise). The scored span is every reference token that covers a byte
  of the continuation; a token straddling the boundary counts, and the context characters it
  covers are recorded.

The target's end-of-turn token was already set aside when the response was parsed
(``Completion.end_token``): neither side scores an end token.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import cached_property

from .framing import DEFAULT_PROMPTS, ChatPrompts, ChatTemplate, render_prompt
from .records import Completion


@dataclass
class ScoringItem:
    """One sequence for the reference: score ``ids[start:]``."""

    ids: list[int]
    start: int
    alignment: str                 # "ids" or "text"
    n_bytes: int                   # UTF-8 bytes of the continuation
    straddle: str | None = None    # context text covered by the first scored token
    ref_tokens: list[str] | None = None


class AlignmentError(Exception):
    """The reference cannot be given the context the target saw; the row is degraded."""


def _bytes_to_unicode() -> dict[int, str]:
    """The byte-level BPE alphabet: printable bytes stand for themselves, the rest are
    shifted past 255 so every byte has a visible character (GPT-2's convention)."""
    keep = [*range(ord("!"), ord("~") + 1), *range(0xA1, 0xAD), *range(0xAE, 0x100)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


_BYTE_OF_CHAR = {c: b for b, c in _bytes_to_unicode().items()}


def row_prompts(c: Completion) -> ChatPrompts:
    """The system and user turns this row's chat framing was sent with (the paper's when the
    row records none: rows of earlier versions, raw rows)."""
    if c.chat_prompts and len(c.chat_prompts) == 2:
        return ChatPrompts(*c.chat_prompts)
    return DEFAULT_PROMPTS


class TokenizerView:
    """What alignment needs to know about a Hugging Face fast tokenizer: token bytes."""

    def __init__(self, tokenizer, template: ChatTemplate | None = None):
        self.tok = tokenizer
        self.template = template
        spec = json.loads(tokenizer.backend_tokenizer.to_str())
        decoder = spec.get("decoder") or {}
        kinds = {decoder.get("type")} | {d.get("type") for d in decoder.get("decoders", [])}
        self.byte_level = "ByteLevel" in kinds
        self.special_ids = set(tokenizer.all_special_ids)
        added = getattr(tokenizer, "added_tokens_decoder", {}) or {}
        self.added_text = {i: t.content for i, t in added.items()}
        self.special_texts = frozenset(t.content for t in added.values()
                                       if getattr(t, "special", False))
        self._cache: dict[int, bytes] = {}

    @cached_property
    def unencodable_bytes(self) -> frozenset[int]:
        """Bytes a byte-level vocabulary has no token for (SmolLM2's lacks a few control
        bytes): text containing them cannot be scored by this reference, only reported."""
        if not self.byte_level:
            return frozenset()
        vocab = self.tok.get_vocab()
        return frozenset(b for b, ch in _bytes_to_unicode().items() if ch not in vocab)

    @cached_property
    def adds_bos(self) -> bool:
        bos = self.tok.bos_token_id
        ids = self.tok("a").input_ids
        return bos is not None and bool(ids) and ids[0] == bos

    def token_bytes(self, token_id: int) -> bytes:
        """The exact bytes a token id stands for (added/special tokens: their literal text)."""
        hit = self._cache.get(token_id)
        if hit is not None:
            return hit
        if token_id in self.added_text:
            out = self.added_text[token_id].encode()
        else:
            piece = self.tok.convert_ids_to_tokens(token_id)
            if self.byte_level and all(ch in _BYTE_OF_CHAR for ch in piece):
                out = bytes(_BYTE_OF_CHAR[ch] for ch in piece)
            elif piece.startswith("<0x") and piece.endswith(">") and len(piece) == 6:
                out = bytes([int(piece[3:5], 16)])
            else:
                out = piece.replace("\u2581", " ").encode()
        self._cache[token_id] = out
        return out

    def encode(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False).input_ids

    def context(self, c: Completion) -> str:
        """The reference's own rendering of the framing (text path)."""
        if c.framing == "raw" or self.template is None:
            return c.prompt if c.prompt is not None else c.prefill
        return render_prompt(c.framing, c.prefill, self.template, row_prompts(c))


def target_bytes(c: Completion) -> list[bytes]:
    if c.token_bytes is not None:
        return [bytes(b) for b in c.token_bytes]
    return [t.encode() for t in c.tokens]


def same_vocabulary(view: TokenizerView, c: Completion) -> bool:
    """True when every target token id means the same bytes to the reference.

    Tokens named by id alone (``token_id:N``) carry no bytes of their own: the ids must then
    spell the returned text exactly in the reference's vocabulary, which is also the check
    that the tokens rebuild the text (quality.py cannot make it without a vocabulary)."""
    if c.token_ids is None or len(c.token_ids) != len(c.tokens):
        return False
    vocab = len(view.tok)
    if c.ids_only:
        return (all(0 <= i < vocab for i in c.token_ids)
                and b"".join(view.token_bytes(i) for i in c.token_ids) == c.text.encode())
    return all(0 <= i < vocab and view.token_bytes(i) == b
               for i, b in zip(c.token_ids, target_bytes(c), strict=True))


# Distinct target token ids that must all mean the same bytes to the reference before a run is
# scored on the ids path: low ids are single bytes in many vocabularies, so a few short
# completions can agree by coincidence (cl100k and SmolLM2 both give id 18 to one byte).
MIN_DISTINCT_IDS = 50
# Rows whose ids do not spell their bytes, tolerated in an ids run (they are left out, counted
# as misaligned). llama-server reports a token that completes a UTF-8 character together with
# the partial tokens before it, as one entry: their ids and log-probabilities are lost, so
# such a row cannot be scored exactly on either path. One of them must not send a whole run
# to the text path (the 1,200-row zoo audits have 0 to 5 each, all in runs of non-Latin text).
MAX_DISAGREEING_SHARE = 0.01


def choose_alignment(view: TokenizerView, completions: Iterable[Completion]) -> str:
    """One path for a whole run, so the rows of one ranking are scored alike: ``ids`` when
    the completions' ids mean the same bytes to the reference (all but at most 1% of rows,
    which ``align_ids`` then refuses) and enough distinct ids were seen to rule out
    coincidence, else ``text``."""
    seen: set[int] = set()
    rows = disagreeing = 0
    for c in completions:
        rows += 1
        if same_vocabulary(view, c):
            seen.update(c.token_ids or ())
        else:
            disagreeing += 1
    if not rows or disagreeing > MAX_DISAGREEING_SHARE * rows:
        return "text"
    return "ids" if len(seen) >= MIN_DISTINCT_IDS else "text"


def align(view: TokenizerView, c: Completion, mode: str = "auto") -> ScoringItem:
    """The reference sequence and scored span for one completion. ``mode`` is ``ids``,
    ``text``, or ``auto`` (decide for this completion alone; a run decides once, with
    :func:`choose_alignment`)."""
    if mode == "ids" or (mode == "auto" and choose_alignment(view, [c]) == "ids"):
        return align_ids(view, c)
    return align_text(view, view.context(c), c.text)


def align_ids(view: TokenizerView, c: Completion) -> ScoringItem:
    if c.token_ids is None:
        raise AlignmentError("the target returned no token ids")
    if not same_vocabulary(view, c):
        raise AlignmentError("the target's token ids do not spell its tokens' bytes in the "
                             "reference's vocabulary (a server that merges the tokens of a "
                             "split UTF-8 character into one entry loses their ids and "
                             "log-probabilities)")
    context = c.prompt if c.prompt is not None else render_prompt(
        c.framing, c.prefill, view.template, row_prompts(c))
    ctx = view.encode(context)
    bos = view.tok.bos_token_id
    if c.prompt_tokens is not None:
        if c.prompt_tokens == len(ctx) + 1 and bos is not None:
            ctx = [bos, *ctx]
        elif c.prompt_tokens != len(ctx):
            raise AlignmentError(f"the target saw {c.prompt_tokens} prompt tokens, the "
                                 f"reference tokenises the same prompt to {len(ctx)}")
    elif view.adds_bos:
        ctx = [bos, *ctx]
    if not ctx:
        raise AlignmentError("empty context: the first token has nothing to condition on")
    return ScoringItem(ids=[*ctx, *c.token_ids], start=len(ctx), alignment="ids",
                       n_bytes=len(c.text.encode()), ref_tokens=list(c.tokens))


def align_text(view: TokenizerView, context: str,
                continuation: str) -> ScoringItem:
    """Tokenise context + continuation with the reference; score every token that covers a
    byte of the continuation."""
    full = context + continuation
    ids, offsets = _tokenize(view, context, continuation)
    spans = _byte_spans(view, ids, full)
    if not spans:
        if view.byte_level:  # exact bytes are known: a mismatch means lost text, not offsets
            raise AlignmentError("the reference's tokens do not rebuild the text"
                                 + _unencodable_note(view, full))
        spans = _spans_from_offsets(full, ids, offsets, view)
    boundary = len(context.encode())
    start = next((k for k, (s, e) in enumerate(spans) if e > boundary and e > s), len(ids))
    if start == 0:
        if view.tok.bos_token_id is None:
            raise AlignmentError("the first reference token straddles the context, and the "
                                 "tokenizer has no BOS to condition it on")
        ids = [view.tok.bos_token_id, *ids]
        spans = [(0, 0), *spans]
        start = 1
    straddle = None
    if start < len(ids) and spans[start][0] < boundary:
        straddle = full.encode()[spans[start][0]:boundary].decode("utf-8", errors="replace")
    covered = sum(max(0, e - max(s, boundary)) for s, e in spans[start:])
    n_bytes = len(continuation.encode())
    if covered < n_bytes:
        raise AlignmentError(f"reference tokens cover {covered} of {n_bytes} continuation "
                             "bytes" + _unencodable_note(view, continuation))
    pieces = [view.token_bytes(i).decode("utf-8", errors="replace") for i in ids[start:]]
    return ScoringItem(ids=ids, start=start, alignment="text", n_bytes=n_bytes,
                       straddle=straddle, ref_tokens=pieces)


def _tokenize(view: TokenizerView, context: str, continuation: str
              ) -> tuple[list[int], list[tuple[int, int]]]:
    """Reference ids and character offsets of context + continuation.

    The context is ours (a chat template's special tokens are meant as such); the
    continuation is the target's *text*. When that text spells a special token
    (``<|im_end|>``, ``<filename>``), the target wrote those characters, not the control
    token, and the reference must score the characters: tokenising it with special tokens
    parsed would score one control token instead, whose improbability would push the row to
    the top of the ranking. Such continuations are tokenised apart, with special tokens split.
    """
    if not any(t in continuation for t in view.special_texts):
        enc = view.tok(context + continuation, add_special_tokens=True,
                       return_offsets_mapping=True)
        return list(enc.input_ids), list(enc.offset_mapping)
    head = view.tok(context, add_special_tokens=True, return_offsets_mapping=True)
    tail = view.tok(continuation, add_special_tokens=False, split_special_tokens=True,
                    return_offsets_mapping=True)
    shift = len(context)
    return ([*head.input_ids, *tail.input_ids],
            [*head.offset_mapping, *((s + shift, e + shift) for s, e in tail.offset_mapping)])


def _unencodable_note(view: TokenizerView, text: str) -> str:
    missing = sorted(set(text.encode()) & view.unencodable_bytes)
    return (f"; its vocabulary has no token for byte(s) {', '.join(map(hex, missing))}"
            if missing else "")


def _byte_spans(view: TokenizerView, ids: Sequence[int], full: str) -> list[tuple[int, int]]:
    """Exact byte span of each token, by walking its bytes along the text. Empty when the
    tokenizer normalises the text (the bytes do not line up)."""
    data = full.encode()
    spans, cursor = [], 0
    for i in ids:
        b = view.token_bytes(i)
        if data.startswith(b, cursor):
            spans.append((cursor, cursor + len(b)))
            cursor += len(b)
        elif i in view.special_ids:
            spans.append((cursor, cursor))
        else:
            return []
    return spans if cursor == len(data) else []


def _spans_from_offsets(full: str, ids: Sequence[int], offsets,
                        view: TokenizerView) -> list[tuple[int, int]]:
    """Byte spans from the tokenizer's character offsets (normalising tokenizers)."""
    char_to_byte = [0]
    for ch in full:
        char_to_byte.append(char_to_byte[-1] + len(ch.encode()))
    spans = []
    for (s, e), i in zip(offsets, ids, strict=True):
        if i in view.special_ids and s == e:
            spans.append((char_to_byte[s], char_to_byte[s]))
        else:
            spans.append((char_to_byte[s], char_to_byte[e]))
    # Offsets may trim a leading space off a token; give each gap to the token after it.
    fixed, prev_end = [], 0
    for s, e in spans:
        if e > s and s > prev_end:
            s = prev_end
        fixed.append((s, e))
        prev_end = max(prev_end, e)
    return fixed
