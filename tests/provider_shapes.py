"""Response shapes of each service, hand-built from its documentation (for respx and for the
synthetic probe fixtures in fixtures/probe/, built by scripts/build_probe_fixtures.py).

Sources, by shape:
- OpenAI Chat Completions with ``logprobs``/``top_logprobs`` (``choices[].logprobs.content``
  entries ``{token, logprob, bytes, top_logprobs}``) and legacy Completions (``choices[].
  logprobs = {tokens, token_logprobs, top_logprobs, text_offset}``): OpenAI's API reference
  (chat/completions and completions "create" pages), as modelled by the openai SDK's
  ``ChatCompletion`` / ``Completion`` types.
- Anthropic Messages (``content: [{type: "text", text}]``, ``stop_reason``, ``usage.
  input_tokens``) and its error body (``{type: "error", error: {type, message}}``): Anthropic's
  Messages API reference; the prefill refusal text as reported in
  agenticloops-ai/agentic-ai-engineering issue #43.
- Together legacy completions with ``token_ids`` beside ``tokens``/``token_logprobs``:
  togethercomputer/openapi (``LogprobsPart``), logprobs 0-20 and echo in PR #104.
- Together's echo: ``prompt: [{text, logprobs: {tokens, token_logprobs, token_ids}}]`` beside
  the choices when ``echo: true`` (togethercomputer/openapi, ``CompletionResponse.prompt`` and
  ``PromptPart``).
- Fireworks legacy completions with ``token_ids`` (docs.fireworks.ai, "Create Completion"),
  and its ``echo``: the prompt's tokens first in the choice's text and logprobs (OpenAI's
  legacy echo; the same page's ``echo_last`` "returns the last N prompt tokens").
- vLLM's ``prompt_logprobs``: ``[null, {"<id>": {logprob, rank, decoded_token}}, ...]`` per
  choice on /completions and beside the choices on /chat/completions, with
  ``prompt_token_ids`` (vllm/entrypoints/openai/protocol.py ``CompletionResponseChoice`` and
  ``ChatCompletionResponse``; vllm/logprobs.py ``Logprob``).
- OpenRouter answering ``logprobs: null`` although they were requested:
  OpenRouterArchived/openrouter-runner issues #97 and #101.
- DeepSeek answering every logprob with 0 or -9999 and empty ``top_logprobs``:
  deepseek-ai/DeepSeek-V3.2-Exp issue #49.
- llama.cpp's server (chat-shaped logprobs with ids even on /completions, ``owned_by:
  llamacpp``): observed in this project (docs/noise-floor.md, the recorded fixtures); vLLM's
  ``owned_by: vllm`` in GET /models, as the adapter's discovery reads it.
"""

from __future__ import annotations

from typing import Any


def _content(pieces: list[tuple[str, float]], ids: list[int] | None = None,
             alt: float | None = -3.5) -> list[dict[str, Any]]:
    out = []
    for n, (tok, lp) in enumerate(pieces):
        b = list(tok.encode())
        top = [{"token": tok, "logprob": lp, "bytes": b}]
        if alt is not None:
            top.append({"token": " the", "logprob": alt, "bytes": list(b" the")})
        entry: dict[str, Any] = {"token": tok, "logprob": lp, "bytes": b, "top_logprobs": top}
        if ids is not None:
            entry["id"] = ids[n]
            for t in top:
                t["id"] = ids[n] if t["token"] == tok else 260
        out.append(entry)
    return out


def openai_chat(model: str, pieces: list[tuple[str, float]], finish: str = "length",
                prompt_tokens: int = 41, logprobs: bool = True) -> dict[str, Any]:
    """OpenAI's chat.completion object with logprobs (the documented shape)."""
    text = "".join(t for t, _ in pieces)
    return {
        "id": "chatcmpl-synthetic0001", "object": "chat.completion", "created": 1735689600,
        "model": model, "system_fingerprint": "fp_synthetic",
        "choices": [{"index": 0, "finish_reason": finish,
                     "message": {"role": "assistant", "content": text, "refusal": None},
                     "logprobs": {"content": _content(pieces), "refusal": None}
                     if logprobs else None}],
        "usage": {"prompt_tokens": prompt_tokens, "completion_tokens": len(pieces),
                  "total_tokens": prompt_tokens + len(pieces)}}


def openai_legacy(model: str, prompt: str, pieces: list[tuple[str, float]],
                  finish: str = "length", ids: list[int] | None = None,
                  with_top: bool = True) -> dict[str, Any]:
    """The legacy text_completion object (OpenAI, Fireworks; Together adds token_ids)."""
    text = "".join(t for t, _ in pieces)
    offsets, pos = [], len(prompt)
    for t, _ in pieces:
        offsets.append(pos)
        pos += len(t)
    lp: dict[str, Any] = {"tokens": [t for t, _ in pieces],
                          "token_logprobs": [v for _, v in pieces]}
    if with_top:
        lp["top_logprobs"] = [{t: v, " the": -3.5} for t, v in pieces]
        lp["text_offset"] = offsets
    if ids is not None:
        lp["token_ids"] = ids
    return {"id": "cmpl-synthetic0001", "object": "text_completion", "created": 1735689600,
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": finish, "logprobs": lp}],
            "usage": {"prompt_tokens": 4, "completion_tokens": len(pieces),
                      "total_tokens": 4 + len(pieces)}}


def compatible_chat(model: str, pieces: list[tuple[str, float]], ids: list[int] | None = None,
                    content_prefix: str = "", top: bool = True,
                    finish: str = "length") -> dict[str, Any]:
    """An OpenAI-compatible server's chat answer (llama.cpp, vLLM, DeepSeek, OpenRouter)."""
    text = "".join(t for t, _ in pieces)
    return {"id": "chatcmpl-synthetic", "object": "chat.completion", "created": 1735689600,
            "model": model,
            "choices": [{"index": 0, "finish_reason": finish,
                         "message": {"role": "assistant", "content": content_prefix + text},
                         "logprobs": {"content": _content(pieces, ids, -3.5 if top else None)
                                      if top else [dict(e, top_logprobs=[]) for e in
                                                   _content(pieces, ids, None)]}}],
            "usage": {"prompt_tokens": 28, "completion_tokens": len(pieces),
                      "total_tokens": 28 + len(pieces)}}


def llama_cpp_completion(model: str, pieces: list[tuple[str, float]], ids: list[int]
                         ) -> dict[str, Any]:
    """llama.cpp's server on /v1/completions: chat-shaped logprobs with ids."""
    text = "".join(t for t, _ in pieces)
    return {"id": "cmpl-synthetic", "object": "text_completion", "created": 1735689600,
            "model": model,
            "choices": [{"index": 0, "text": text, "finish_reason": "length",
                         "logprobs": {"content": _content(pieces, ids)}}],
            "usage": {"prompt_tokens": 4, "completion_tokens": len(pieces),
                      "total_tokens": 4 + len(pieces)}}


def anthropic_message(model: str, text: str, stop: str = "max_tokens",
                      input_tokens: int = 24) -> dict[str, Any]:
    """Anthropic's Message object (no log-probabilities anywhere)."""
    return {"id": "msg_synthetic0001", "type": "message", "role": "assistant", "model": model,
            "content": [{"type": "text", "text": text}], "stop_reason": stop,
            "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": max(1, len(text) // 4)}}


ANTHROPIC_PREFILL_REFUSED = {
    "type": "error", "request_id": "req_synthetic",
    "error": {"type": "invalid_request_error",
              "message": "This model does not support assistant message prefill. The "
                         "conversation must end with a user message."}}


def models_list(model: str, owned_by: str) -> dict[str, Any]:
    return {"object": "list", "data": [{"id": model, "object": "model", "created": 1735689600,
                                        "owned_by": owned_by}]}


def together_echo(answer: dict[str, Any], prompt_pieces: list[tuple[str, float | None]],
                  ids: list[int]) -> dict[str, Any]:
    """Together's answer with ``echo: true``: the prompt and its logprobs beside the choices."""
    answer["prompt"] = [{"text": "".join(t for t, _ in prompt_pieces),
                         "logprobs": {"tokens": [t for t, _ in prompt_pieces],
                                      "token_logprobs": [v for _, v in prompt_pieces],
                                      "token_ids": ids}}]
    return answer


def legacy_echo(answer: dict[str, Any], prompt_pieces: list[tuple[str, float | None]]
                ) -> dict[str, Any]:
    """OpenAI's legacy echo (Fireworks): the prompt's tokens lead the choice's text and
    logprobs, with offsets from 0."""
    choice = answer["choices"][0]
    lp = choice["logprobs"]
    prompt = "".join(t for t, _ in prompt_pieces)
    offsets, pos = [], 0
    for t, _ in prompt_pieces:
        offsets.append(pos)
        pos += len(t)
    choice["text"] = prompt + choice["text"]
    lp["tokens"] = [t for t, _ in prompt_pieces] + lp["tokens"]
    lp["token_logprobs"] = [v for _, v in prompt_pieces] + lp["token_logprobs"]
    if "top_logprobs" in lp:
        lp["top_logprobs"] = [None] + [{t: v} for t, v in prompt_pieces[1:]] + \
            lp["top_logprobs"]
    if "text_offset" in lp:
        lp["text_offset"] = offsets + lp["text_offset"]
    if "token_ids" in lp:
        lp["token_ids"] = list(range(900, 900 + len(prompt_pieces))) + lp["token_ids"]
    return answer


def vllm_prompt_logprobs(answer: dict[str, Any], prompt_pieces: list[tuple[str, float | None]],
                         ids: list[int], chat: bool = False) -> dict[str, Any]:
    """vLLM's answer with ``prompt_logprobs: 0``: one entry per prompt token, the first null."""
    entries: list[Any] = [None]
    for (tok, lp), i in list(zip(prompt_pieces, ids, strict=True))[1:]:
        entries.append({str(i): {"logprob": lp, "rank": 1, "decoded_token": tok}})
    where = answer if chat else answer["choices"][0]
    where["prompt_logprobs"] = entries
    where["prompt_token_ids"] = ids
    return answer
