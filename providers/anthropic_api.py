"""Anthropic's Messages API, through the official ``anthropic`` SDK.

The Messages API returns **no token log-probabilities**. Perplexity differencing needs the
target's log-probability of every generated token, so a normal audit of a Claude model is
impossible, and ``audit`` refuses before the first paid call. What this adapter offers instead
is an explicit, labelled degraded mode (``--reference-only``): the target's greedy completions
are ranked by the reference model's surprisal alone (mean reference NLL per token). That finds
text the reference finds odd, whichever model made it odd: it is a weaker signal than the gap,
and every output of such a run says so.

Assistant prefill: the paper's chat framing puts the prefill at the start of the assistant
turn, which the Messages API supports for older models; newer Claude models answer HTTP 400
("This model does not support assistant message prefill ..."). That answer is detected and
reported as a refusal naming the ``chat-continue`` fallback framing.

As for OpenAI (:mod:`providers.openai_api`): the SDK sends, through our httpx client
(:mod:`providers.sdk_bridge`), with its own retries off; our parse is the one conversion.
"""

from __future__ import annotations

from typing import Any

import httpx

from blackbox_audit.errors import EndpointError
from blackbox_audit.records import Completion, GenerationRequest
from blackbox_audit.transport import RetryHints

from .base import (
    DEFAULT_OPTIONS,
    PAPER_FALLBACK,
    Capabilities,
    Kind,
    Provider,
    RequestOptions,
    WireRequest,
    completion_from_columns,
    error_detail,
)
from .protocol import MalformedAnswer
from .sdk_bridge import sdk_client, sdk_send

DEFAULT_BASE_URL = "https://api.anthropic.com"
DEFAULT_KEY_ENV = "ANTHROPIC_API_KEY"

# USD per million tokens (input, output), list prices as of 2025 (preflight.price_for).
PRICES: dict[str, tuple[float, float]] = {
    "claude-3-haiku": (0.25, 1.25), "claude-3-5-haiku": (0.80, 4.00),
    "claude-haiku-4-5": (1.00, 5.00), "claude-3-5-sonnet": (3.00, 15.00),
    "claude-3-7-sonnet": (3.00, 15.00), "claude-sonnet-4": (3.00, 15.00),
    "claude-opus-4": (15.00, 75.00),
}

CAPABILITIES = Capabilities(logprobs=False, top_logprobs=0, raw_completion=False,
                            assistant_prefill=True, echo=False, token_ids=False)

_STOP = {"end_turn": "stop", "stop_sequence": "stop", "max_tokens": "length"}

NO_LOGPROBS = (
    "Anthropic's Messages API returns no token log-probabilities, so model {model!r} cannot be "
    "audited by perplexity differencing (the method needs the target's log-probability of "
    "every generated token). What would work instead: the same finetune's base or weights "
    "behind an OpenAI-compatible server with logprobs (vLLM, llama.cpp), an OpenAI chat model "
    "(openai:MODEL), or, knowingly, --reference-only: a degraded mode that ranks Claude's "
    "completions by the reference model's surprisal alone (no target log-probabilities, a "
    "weaker signal, labelled in every output).")


def prefill_refused(status: int, detail: str) -> bool:
    """Is this error the model refusing a trailing assistant message (assistant prefill)?"""
    d = detail.lower()
    return status == 400 and ("prefill" in d or "final assistant content" in d
                              or "must end with a user message" in d)


class AnthropicAPI:
    """The official ``anthropic`` SDK over our httpx client (its retries off): what the
    adapter and the judge (blackbox_audit.summarize) send through."""

    def __init__(self, client: httpx.AsyncClient, api_key: str | None,
                 base_url: str = DEFAULT_BASE_URL):
        import anthropic

        self.anthropic = anthropic
        self.sdk = sdk_client(anthropic.AsyncAnthropic, anthropic, client, api_key, base_url)

    async def send(self, wire: WireRequest) -> httpx.Response:
        """POST ``wire.body`` to /v1/messages through the SDK; the raw HTTP answer, errors
        included."""
        return await sdk_send(self.anthropic, self.sdk.messages, wire.body)

    async def chat(self, body: dict[str, Any]) -> httpx.Response:
        return await self.send(WireRequest("POST", "/v1/messages", body))

    @staticmethod
    def judge_body(model: str, system: str, user: str, max_tokens: int) -> dict[str, Any]:
        """A judge's request. No temperature: the SDK (2.x) no longer offers it."""
        return {"model": model, "max_tokens": max_tokens, "system": system,
                "messages": [{"role": "user", "content": user}]}

    @staticmethod
    def text(payload: dict[str, Any]) -> str:
        """The text of a Messages answer (its text blocks, joined)."""
        return "".join(b.get("text", "") for b in payload.get("content") or []
                       if isinstance(b, dict) and b.get("type") == "text")


def anthropic_usage(payload: Any) -> tuple[Any, Any] | None:
    """(input, output) tokens of a Messages answer's ``usage``; None without one."""
    usage = payload.get("usage") if isinstance(payload, dict) else None
    if not isinstance(usage, dict):
        return None
    return usage.get("input_tokens"), usage.get("output_tokens")


class AnthropicProvider(Provider):
    """Claude models on the Messages API; generation only (no logprobs)."""

    family = "anthropic"
    kinds = {"anthropic": Kind(DEFAULT_BASE_URL, DEFAULT_KEY_ENV)}
    uses_sdk = True
    # 529 "overloaded_error": try again later, and send less meanwhile.
    retry_hints = RetryHints(statuses=frozenset({529}), overload=frozenset({529}),
                             wait_ms_header="retry-after-ms")
    prices = PRICES
    logprobs_absent = "the Messages API has none"
    usage = staticmethod(anthropic_usage)
    api = AnthropicAPI

    @classmethod
    def declared(cls, model: str, flavour: str = "") -> Capabilities:
        return Capabilities(**CAPABILITIES.to_json())

    @classmethod
    def framings(cls, caps: Capabilities, chat_mode: str) -> dict[str, str]:
        return {"raw": "no: the Messages API has no raw text completion",
                "chat": ("ok: assistant prefill on the Messages API (some Claude models "
                         "refuse it: HTTP 400)"),
                "chat-continue": PAPER_FALLBACK}

    @classmethod
    def chat_mode(cls, caps: Capabilities, asked: str) -> str:
        return "prefill"  # the Messages API is the only way in: server-side prefill

    @classmethod
    def server_prefill(cls, chat_mode: str) -> bool:
        return True

    @classmethod
    def no_logprobs_refusal(cls, model: str) -> str | None:
        return NO_LOGPROBS.format(model=model)

    @classmethod
    def create(cls, client: httpx.AsyncClient, model: str, api_key: str | None, *,
               base_url: str | None, flavour: str, chat_mode: str,
               options: RequestOptions) -> Provider:
        return cls(client, model, api_key, base_url or DEFAULT_BASE_URL, options)

    def __init__(self, client: httpx.AsyncClient, model: str, api_key: str | None = None,
                 base_url: str = DEFAULT_BASE_URL, options: RequestOptions = DEFAULT_OPTIONS):
        super().__init__(client, model, self.declared(model), options)
        self.sdk = AnthropicAPI(client, api_key, base_url)

    def build(self, req: GenerationRequest) -> WireRequest:
        if req.messages is None:
            raise EndpointError(
                f"Anthropic model {self.model!r} takes messages only (no raw text completion); "
                "use --framings chat or chat-continue.")
        system = [m["content"] for m in req.messages if m["role"] == "system"]
        turns = [dict(m) for m in req.messages if m["role"] != "system"]
        if turns and turns[-1]["role"] == "assistant":
            # The API refuses a final assistant turn that ends in whitespace.
            turns[-1]["content"] = turns[-1]["content"].rstrip()
        body: dict[str, Any] = {"model": self.model, "max_tokens": req.max_tokens,
                                "messages": turns, "temperature": 0.0}
        if system:
            body["system"] = "\n".join(system)
        return WireRequest("POST", "/v1/messages", body)

    async def send(self, wire: WireRequest) -> httpx.Response:
        return await self.sdk.send(wire)

    def raise_for_status(self, response: httpx.Response) -> None:
        detail = error_detail(response)
        if prefill_refused(response.status_code, detail):
            raise EndpointError(
                f"Anthropic model {self.model!r} refuses assistant prefill (HTTP 400: {detail}), "
                "so the paper's chat framing (the prefill as the start of the assistant turn) "
                "is impossible with it. Use --framings chat-continue (the prefill in the user "
                "turn: a fallback whose results differ from the paper's framing) or a model "
                "that accepts prefill.")
        super().raise_for_status(response)

    def parse(self, req: GenerationRequest, payload: dict[str, Any]) -> Completion:
        blocks = payload.get("content")
        if not isinstance(blocks, list):
            raise MalformedAnswer(f"Anthropic answered without a list of content blocks: "
                                  f"{str(payload)[:300]}")
        text = "".join(b.get("text", "") for b in blocks
                       if isinstance(b, dict) and b.get("type") == "text")
        sent_prefill = req.messages[-1]["content"] if req.messages else ""
        if req.messages and req.messages[-1]["role"] == "assistant":
            cut = sent_prefill[len(sent_prefill.rstrip()):]
            if cut and text.startswith(cut):
                text = text[len(cut):]  # the whitespace we took off the prefill came back
        usage = payload.get("usage") or {}
        return completion_from_columns(req, text=text, cols=None,
                                       finish_reason=_STOP.get(payload.get("stop_reason") or "",
                                                               payload.get("stop_reason")),
                                       prompt_tokens=usage.get("input_tokens"),
                                       model=payload.get("model"))
