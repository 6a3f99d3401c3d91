"""Echo vs generation, for ``verify``'s honesty checks: send a generated text back as a prompt
with echo / prompt log-probabilities, and pair the echoed log-probabilities of the
completion's tokens with the ones the generation reported.

An endpoint that conditions generation on something the caller did not send (an injected
system prompt), samples at a temperature it was not asked for, or routes the two calls to
different upstreams gives two sets of numbers that part; one model decoding the same ids
gives the same numbers up to kernel noise (prefill and decode paths differ a little).

The wire shapes are the providers' (``providers/protocol.py``: vLLM ``prompt_logprobs``,
Together's ``prompt`` beside the choices, OpenAI's legacy ``echo`` in the choice); the
requests go through the same transport as generation, so they are recorded and replayed.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from .credentials import read_key, request_headers
from .plan import EndpointPlan, GenerationPlan
from .records import Completion, GenerationRequest, Prefill
from .redact import Redactor
from .transport import FixtureStore, build_client
from .verify_stats import ServedToken


def echo_request(r: GenerationRequest, c: Completion) -> GenerationRequest:
    """Prompt + the completion's text as the new prompt, one token to generate."""
    return GenerationRequest(Prefill(f"{r.prefill.id}-echo", r.prefill.corpus, r.prefill.text),
                             r.framing, 1, r.top_logprobs, prompt=(r.prompt or "") + c.text)


def echoed_tail(payload: dict[str, Any], prompt: str, n: int
                ) -> list[tuple[int | None, str, float | None]] | None:
    """The last ``n`` echoed prompt tokens as (id or None, text, logprob), from any of the
    documented echo shapes; None when the answer holds no echo."""
    from providers.base import first_choice
    from providers.protocol import choice_text, prompt_echo, split_echo, token_columns

    choice = first_choice(payload, "the endpoint")
    echo = prompt_echo(payload, choice)
    if echo is None:
        cols = token_columns(choice.get("logprobs"))
        text = choice_text(choice, chat=False)
        if cols is not None and text.startswith(prompt):
            echo, _, _ = split_echo(cols, text, prompt)
    if echo is None or n == 0 or len(echo.tokens) < n:
        return None
    ids = echo.ids[-n:] if echo.ids is not None else [None] * n
    return list(zip(ids, echo.tokens[-n:], echo.logprobs[-n:], strict=True))


def pair_with(c: Completion, tail: Sequence[tuple[int | None, str, float | None]]
              ) -> tuple[list[ServedToken], list[tuple[int, float | None]]]:
    """(generation, echo) for ``check_echo_consistency``: the echo names a token by id where
    it gives ids, else by its text (a different text is a different token: -1)."""
    ids = c.token_ids or []
    gen = [ServedToken(int(i), c.logprobs[k]) for k, i in enumerate(ids)]
    echo = []
    for k, (eid, etext, elp) in enumerate(tail):
        if eid is None:
            eid = ids[k] if k < len(c.tokens) and etext == c.tokens[k] else -1
        echo.append((int(eid), elp))
    return gen, echo


async def echo_pairs(e: EndpointPlan, g: GenerationPlan,
                     rows: Sequence[tuple[GenerationRequest, Completion]]
                     ) -> list[tuple[list[ServedToken], list[tuple[int, float | None]]]]:
    """Ask for the echo of each row's prompt + completion; pair it with the generation."""
    from providers.base import RequestOptions
    from providers.registry import make_provider

    key = read_key(e.api_key_env, required=True, why=" (named by --api-key-env)")
    redactor = Redactor()
    redactor.add(key)
    store = None
    if e.record_mode != "off":
        store = FixtureStore(e.fixtures, redactor, writable=e.record_mode in ("record", "auto"))
    target = e.target
    headers = request_headers(target.url_headers, key, sdk=target.uses_sdk)
    out = []
    async with build_client(e.base_url or "http://replay.invalid/v1", mode=e.record_mode,
                            store=store, headers=headers, timeout=e.timeout, retry=e.retry,
                            usage=target.adapter.usage, max_connections=2) as client:
        provider = make_provider(target, client, key,
                                 options=RequestOptions(echo_prompts=True, ask_token_ids=True))
        for r, c in rows:
            req = echo_request(r, c)
            response = await provider.send(provider.build(req))
            if response.status_code >= 400:
                provider.raise_for_status(response)
            try:
                payload = response.json()
            except ValueError:
                continue
            tail = echoed_tail(payload, req.prompt or "", len(c.token_ids or []))
            if tail is not None:
                out.append(pair_with(c, tail))
    return out
