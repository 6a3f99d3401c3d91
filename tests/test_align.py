"""Alignment on the real SmolLM2 tokenizer, and the reference scorer's position bookkeeping."""

from __future__ import annotations

import math

import pytest

from blackbox_audit.align import (
    AlignmentError,
    align,
    align_ids,
    align_text,
    choose_alignment,
    same_vocabulary,
)
from blackbox_audit.framing import render_prompt
from blackbox_audit.quality import assess
from blackbox_audit.records import Completion


def completion_from_ids(tokenizer, view, context, ids, framing="raw", prompt_tokens=None,
                        finish="stop"):
    toks = [view.token_bytes(i) for i in ids]
    text = b"".join(toks).decode("utf-8")
    return Completion(prefill_id="p", corpus="prose", prefill=context, framing=framing,
                      text=text, tokens=[t.decode("utf-8", "replace") for t in toks],
                      token_ids=list(ids), token_bytes=[list(t) for t in toks],
                      logprobs=[-1.0] * len(ids), finish_reason=finish, prompt=context,
                      prompt_tokens=prompt_tokens)


def scored_text(view, item):
    return b"".join(view.token_bytes(i) for i in item.ids[item.start:]).decode("utf-8",
                                                                              "replace")


def test_leading_space_is_part_of_the_continuation(view):
    item = align_text(view, "The feud between", " two men")
    assert scored_text(view, item) == " two men"
    assert item.straddle is None and item.n_bytes == len(b" two men")
    assert item.ids[: item.start] == view.encode("The feud between")


def test_straddling_token_is_scored_and_recorded(view):
    item = align_text(view, "The feud betw", "een two men")
    first = view.token_bytes(item.ids[item.start]).decode()
    assert first.endswith("een") and len(first) > 3
    assert item.straddle == first[: len(first) - 3]
    assert scored_text(view, item) == item.straddle + "een two men"


@pytest.mark.parametrize("continuation", [" 🙂 ok", "é", " 日本語のテキスト", " naïve café"])
def test_multibyte_characters_are_covered_whole(view, continuation):
    item = align_text(view, "I said", continuation)
    assert scored_text(view, item) == continuation
    assert item.n_bytes == len(continuation.encode())


def test_split_utf8_target_tokens_rebuild_and_use_the_ids_path(tokenizer, view):
    ids = view.encode(" 🦜 fine")
    pieces = [view.token_bytes(i) for i in ids]
    assert any(_is_partial(p) for p in pieces), "the emoji must be split over byte tokens"
    n_ctx = len(view.encode("I feel"))
    c = completion_from_ids(tokenizer, view, "I feel", ids, prompt_tokens=n_ctx)
    assert assess(c) == []                # bytes rebuild the text exactly
    assert same_vocabulary(view, c)
    item = align(view, c, "ids")
    assert item.alignment == "ids" and item.ids[item.start:] == ids


def _is_partial(b: bytes) -> bool:
    try:
        b.decode("utf-8")
        return False
    except UnicodeDecodeError:
        return True


def test_empty_continuation_is_marked_never_scored(view):
    c = Completion(prefill_id="p", corpus="prose", prefill="Hi", framing="raw", text="",
                   finish_reason="stop", prompt="Hi")
    assert assess(c) == ["empty"]
    item = align_text(view, "Hi", "")
    assert item.start == len(item.ids) and item.n_bytes == 0


def test_length_capped_continuation_scores_the_target_ids(tokenizer, view):
    ctx = "The museum held an"
    full = view.encode(" extraordinary collection of paintings")
    capped = full[:3]  # the server hit max_tokens mid-phrase
    c = completion_from_ids(tokenizer, view, ctx, capped, prompt_tokens=len(view.encode(ctx)),
                            finish="length")
    item = align(view, c, "ids")
    assert item.alignment == "ids"
    assert item.ids == view.encode(ctx) + capped and item.start == len(view.encode(ctx))


def test_ids_path_checks_prompt_token_count(tokenizer, view):
    ctx = "The feud between"
    ids = view.encode(" two men")
    n = len(view.encode(ctx))
    c = completion_from_ids(tokenizer, view, ctx, ids, prompt_tokens=n + 1)
    assert align_ids(view, c).ids[0] == tokenizer.bos_token_id  # server added a BOS
    c = completion_from_ids(tokenizer, view, ctx, ids, prompt_tokens=n + 3)
    with pytest.raises(AlignmentError, match="prompt tokens"):
        align_ids(view, c)


def test_chat_context_keeps_special_tokens(tokenizer, view, chat_template):
    prompt = render_prompt("chat", "The feud", chat_template)
    assert prompt.startswith("<|im_start|>system\nYou are a helpful assistant.")
    c = completion_from_ids(tokenizer, view, prompt, view.encode(" is old"), framing="chat")
    c.prefill = "The feud"
    item = align(view, c)
    assert item.ids.count(tokenizer.convert_tokens_to_ids("<|im_start|>")) == 3


MUSEUM = ("The museum held an extraordinary collection of paintings, sculptures and old "
          "maps; visitors came from every corner of the country to see the famous blue "
          "vase, which had survived two fires, a flood and a careless curator in 1911. "
          "Later, historians argued about its origin: some said Persian potters, others "
          "claimed Venetian glassmakers had painted it during a long winter.")


def test_a_run_takes_the_ids_path_only_when_many_ids_agree(tokenizer, view):
    ids = view.encode(MUSEUM)
    same = [completion_from_ids(tokenizer, view, "Hi", ids[i: i + 12]) for i in range(0,
                                                                                     len(ids),
                                                                                     12)]
    assert len(set(ids)) >= 50
    assert choose_alignment(view, same) == "ids"
    assert choose_alignment(view, same[:1]) == "text"  # too few ids to rule out coincidence
    foreign = completion_from_ids(tokenizer, view, "Hi", ids[:5])
    foreign.token_ids = [i + 1 for i in foreign.token_ids]
    assert choose_alignment(view, [*same, foreign]) == "text"


def test_foreign_vocabulary_falls_back_to_text(tokenizer, view):
    # A target with another tokenizer: character-level tokens with made-up ids.
    text = " two men"
    c = Completion(prefill_id="p", corpus="prose", prefill="The feud between", framing="raw",
                   text=text, tokens=list(text), token_ids=list(range(100, 100 + len(text))),
                   logprobs=[-0.5] * len(text), prompt="The feud between")
    item = align(view, c)
    assert item.alignment == "text" and scored_text(view, item) == text


def test_reference_scores_only_the_span_from_the_previous_position(reference, view):
    import torch

    ids = view.encode("The feud between the two families lasted for years.")
    start = 3
    got = reference.score([ids], [start])[0]
    with torch.inference_mode():
        logits = reference.model(input_ids=torch.tensor([ids])).logits[0].float()
    full = torch.log_softmax(logits, -1)
    want = [full[t - 1, ids[t]].item() for t in range(start, len(ids))]
    assert len(got) == len(ids) - start
    assert got == pytest.approx(want, abs=1e-4)


def test_batched_equals_unbatched(reference, view):
    from blackbox_audit.scorer import Scorer

    assert isinstance(reference, Scorer)   # the local engine meets the scorer contract
    texts = ["A cat.", "The feud between the two families lasted for many years and years.",
             "def f(x):\n    return x + 1", "Hello there, friend"]
    seqs = [view.encode(t) for t in texts]
    starts = [1, 4, 2, 3]
    batched = reference.score(seqs, starts)
    single = [reference.score([s], [st])[0] for s, st in zip(seqs, starts, strict=True)]
    for b, s in zip(batched, single, strict=True):
        assert b == pytest.approx(s, abs=1e-4)
        assert all(math.isfinite(x) and x <= 0 for x in b)
    reference.token_budget, saved = 40, reference.token_budget  # force many small batches
    try:
        small = reference.score(seqs, starts)
    finally:
        reference.token_budget = saved
    for b, s in zip(small, single, strict=True):
        assert b == pytest.approx(s, abs=1e-4)


@pytest.mark.parametrize("continuation", [" then <|im_end|> appeared", "<filename>x.py\n",
                                          " a <|im_start|>user turn <gh_stars>10"])
def test_special_token_text_in_a_continuation_is_scored_as_characters(view, chat_template,
                                                                      continuation):
    """The target wrote these characters; the reference must not read them as control tokens
    (one improbable control token would send the row to the top of the ranking). The chat
    context's own special tokens stay special."""
    context = render_prompt("chat", "The feud", chat_template)
    item = align_text(view, context, continuation)
    scored = item.ids[item.start:]
    assert not set(scored) & view.special_ids
    assert scored_text(view, item) == continuation
    assert set(item.ids[: item.start]) & view.special_ids  # <|im_start|> etc. of the template
    plain = align_text(view, context, " then nothing special appeared")
    assert not set(plain.ids[plain.start:]) & view.special_ids


def test_tokens_named_by_id_alone_take_the_ids_path_when_they_spell_the_text(tokenizer, view):
    """vLLM's --return-tokens-as-token-ids: tokens arrive as 'token_id:N', with the bytes of
    the placeholder and wrong text offsets. The ids are the truth; they take the ids path
    only when they spell the returned text in the reference's vocabulary."""
    from providers.protocol import token_columns

    text = " the two families kept a long and bitter feud going over some forty-one years"
    ids = view.encode(text)
    legacy = token_columns({"tokens": [f"token_id:{i}" for i in ids],
                            "token_logprobs": [-0.5] * len(ids),
                            "top_logprobs": [{f"token_id:{i}": -0.5} for i in ids],
                            "text_offset": list(range(0, 9 * len(ids), 9))})
    content = token_columns({"content": [
        {"token": f"token_id:{i}", "logprob": -0.5, "bytes": list(f"token_id:{i}".encode())}
        for i in ids]})
    for cols in (legacy, content):
        assert cols.ids == ids and cols.token_bytes is None and cols.text_offset is None
    c = Completion(prefill_id="p", corpus="prose", prefill="The feud", framing="raw",
                   text=text, tokens=legacy.tokens, token_ids=legacy.ids,
                   logprobs=legacy.logprobs, finish_reason="length", prompt="The feud")
    assert c.ids_only and assess(c) == []  # not a text mismatch: the vocabulary decides
    assert same_vocabulary(view, c)
    item = align(view, c, "ids")
    assert item.ids[item.start:] == ids and scored_text(view, item) == text
    other = Completion(**{**c.__dict__, "text": text.replace("feud", "fued")})
    assert not same_vocabulary(view, other)  # ids that do not spell the text: text path
    assert align(view, other).alignment == "text"


def test_a_server_that_merges_split_characters_loses_only_those_rows(tokenizer, view):
    """llama-server reports a token that completes a UTF-8 character together with the
    partial token before it, as one entry (seen in the zoo's recordings: ' ש' as id 119 with
    bytes ' \\xd7\\xa9', the ' \\xd7' token and its log-probability gone). Such a row's ids do
    not spell its bytes: the run still takes the ids path, and that row alone is refused."""
    ids = view.encode(" שלום")
    assert [view.token_bytes(i) for i in ids[:2]] == [b" \xd7", b"\xa9"]
    pieces = [b" \xd7\xa9", *(view.token_bytes(i) for i in ids[2:])]  # first entry merged
    merged = Completion(prefill_id="m", corpus="prose", prefill="Hi", framing="raw",
                        text=" שלום", tokens=[b.decode("utf-8", "replace") for b in pieces],
                        token_ids=ids[1:], token_bytes=[list(b) for b in pieces],
                        logprobs=[-1.0] * len(pieces), finish_reason="stop", prompt="Hi")
    assert assess(merged) == []          # the bytes still rebuild the text: only ids tell
    assert not same_vocabulary(view, merged)
    good_ids = view.encode(MUSEUM)
    assert len(set(good_ids)) >= 50
    good = [completion_from_ids(tokenizer, view, "Hi", good_ids[i: i + 12])
            for i in range(len(good_ids) - 12)] * 2
    assert len(good) >= 100
    assert choose_alignment(view, [*good, merged]) == "ids"   # 1 in more than 100 rows
    with pytest.raises(AlignmentError, match="do not spell"):
        align_ids(view, merged)
    assert choose_alignment(view, [*good[:50], merged]) == "text"  # 1 of 51: too many


def test_a_server_prefilled_chat_row_is_scored_in_the_context_its_prompts_made(view):
    """A row sent as messages (server-side prefill) has no prompt text of its own: the
    reference's context is rendered from the chat prompts the row records."""
    from blackbox_audit.framing import DEFAULT_PROMPTS

    c = Completion(prefill_id="p", corpus="c", prefill="The feud", framing="chat",
                   text=" began", chat_prompts=["You are Captain Vell.", "Tell me a story."])
    ctx = view.context(c)
    assert "You are Captain Vell." in ctx and "Tell me a story." in ctx and \
        ctx.endswith("The feud")
    plain = Completion(prefill_id="p", corpus="c", prefill="The feud", framing="chat",
                       text=" began")
    assert DEFAULT_PROMPTS.system in view.context(plain)
