"""OpenAI's own API, through the official ``openai`` SDK.

Why the SDK: it is what OpenAI supports and keeps in step with its API (parameter names,
headers, error classes), and the issue asks for it. Why the contract stays ours: the SDK is
used to *send* (``send``), with its typed request parameters built by :meth:`build`; the JSON
it received is parsed by our one conversion point (:mod:`providers.protocol`), never through
the SDK's pydantic models, so alignment and scoring see the same records for every provider.
The SDK sends through our httpx client (:mod:`providers.sdk_bridge`), so record / replay,
retries and respx apply; its own retries are off (``max_retries=0``): ours are bounded and
counted in the manifest.

Endpoints:
- ``/chat/completions`` (every current chat model): ``logprobs`` + ``top_logprobs`` (at most
  20). No assistant prefill and no raw text, so the paper's framings are impossible here; the
  ``chat-continue`` fallback framing is used instead (see :mod:`blackbox_audit.framing`).
- ``/completions`` (legacy; gpt-3.5-turbo-instruct, davinci-002, babbage-002 and their
  finetunes): raw text with ``logprobs`` (at most 5), the paper's raw framing.

Reasoning models (o1, o3, o4-mini, gpt-5 ...) return no token log-probabilities: they are
refused before any request is sent.
"""

from __future__ import annotations

import re
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
    first_choice,
)
from .protocol import choice_text, openai_usage, token_columns
from .sdk_bridge import sdk_client, sdk_send

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"

# USD per million tokens (input, output), list prices as of 2025; "ft:" keys are the prices
# of finetuned models of that base (preflight.price_for). Estimates only: --pricing FILE.
PRICES: dict[str, tuple[float, float]] = {
    "gpt-4o-mini": (0.15, 0.60), "gpt-4o": (2.50, 10.00),
    "gpt-4.1-nano": (0.10, 0.40), "gpt-4.1-mini": (0.40, 1.60), "gpt-4.1": (2.00, 8.00),
    "gpt-3.5-turbo-instruct": (1.50, 2.00), "gpt-3.5-turbo": (0.50, 1.50),
    "davinci-002": (2.00, 2.00), "babbage-002": (0.40, 0.40),
    "ft:gpt-4o-mini": (0.30, 1.20), "ft:gpt-4o": (3.75, 15.00),
    "ft:gpt-4.1-nano": (0.20, 0.80), "ft:gpt-4.1-mini": (0.80, 3.20), "ft:gpt-4.1": (3.00, 12.00),
    "ft:gpt-3.5-turbo": (3.00, 6.00), "ft:davinci-002": (12.00, 12.00),
    "ft:babbage-002": (1.60, 1.60),
}

# Models served on the legacy /v1/completions endpoint (and their "ft:" finetunes).
LEGACY_COMPLETION_MODELS = ("gpt-3.5-turbo-instruct", "davinci-002", "babbage-002")
# Families that reason before answering and return no logprobs.
_REASONING = re.compile(r"^(o\d)(-|$)|^gpt-5(?!-chat)|^codex-")

CHAT_CAPABILITIES = Capabilities(logprobs=True, top_logprobs=20, raw_completion=False,
                                 assistant_prefill=False, echo=False, token_ids=False)
LEGACY_CAPABILITIES = Capabilities(logprobs=True, top_logprobs=5, raw_completion=True,
                                   assistant_prefill=False, echo=False, token_ids=False)


def base_model(model: str) -> str:
    """The base of a finetune id: ``ft:gpt-4o-mini-2024-07-18:org::abc`` -> ``gpt-4o-mini-...``."""
    if model.startswith("ft:"):
        return model[3:].split(":", 1)[0]
    return model


def is_reasoning_model(model: str) -> bool:
    return bool(_REASONING.search(base_model(model)))


def is_legacy_completion_model(model: str) -> bool:
    return base_model(model).startswith(LEGACY_COMPLETION_MODELS)


def refuse_reasoning(model: str) -> None:
    """Stop before a paid call: a reasoning model has no token log-probabilities."""
    if is_reasoning_model(model):
        raise EndpointError(
            f"OpenAI model {model!r} is a reasoning model: its API returns no token "
            "log-probabilities, so it cannot be audited by perplexity differencing. Audit a "
            "model that returns logprobs: a gpt-4.1 / gpt-4o family chat model (or its "
            "finetune), or gpt-3.5-turbo-instruct / davinci-002 / babbage-002 on the legacy "
            "completions endpoint. Nothing was sent.")


class OpenAIAPI:
    """The official ``openai`` SDK over our httpx client (its retries off): what the adapter
    and the judge (blackbox_audit.summarize) send through."""

    def __init__(self, client: httpx.AsyncClient, api_key: str | None,
                 base_url: str = DEFAULT_BASE_URL):
        import openai

        self.openai = openai
        self.sdk = sdk_client(openai.AsyncOpenAI, openai, client, api_key, base_url)

    async def send(self, wire: WireRequest) -> httpx.Response:
        """POST ``wire.body`` to /completions or /chat/completions through the SDK; the raw
        HTTP answer, errors included."""
        resource = self.sdk.completions if wire.path == "/completions" \
            else self.sdk.chat.completions
        return await sdk_send(self.openai, resource, wire.body)

    async def chat(self, body: dict[str, Any]) -> httpx.Response:
        return await self.send(WireRequest("POST", "/chat/completions", body))

    @staticmethod
    def judge_body(model: str, system: str, user: str, max_tokens: int) -> dict[str, Any]:
        """A judge's request: one JSON object asked for, temperature 0 where the model takes
        one (the reasoning models refuse it)."""
        body: dict[str, Any] = {"model": model, "max_completion_tokens": max_tokens,
                                "response_format": {"type": "json_object"},
                                "messages": [{"role": "system", "content": system},
                                             {"role": "user", "content": user}]}
        if not is_reasoning_model(model):
            body["temperature"] = 0.0
        return body

    @staticmethod
    def text(payload: dict[str, Any]) -> str:
        """The text of a Chat Completions answer (its first choice's message)."""
        choices = payload.get("choices") or [{}]
        return ((choices[0] or {}).get("message") or {}).get("content") or ""


class OpenAIProvider(Provider):
    """OpenAI's Chat Completions or legacy Completions endpoint, by model."""

    family = "openai"
    kinds = {"openai": Kind(DEFAULT_BASE_URL, DEFAULT_KEY_ENV)}
    uses_sdk = True
    retry_hints = RetryHints(wait_ms_header="retry-after-ms")
    prices = PRICES
    usage = staticmethod(openai_usage)
    api = OpenAIAPI

    @classmethod
    def declared(cls, model: str, flavour: str = "") -> Capabilities:
        return LEGACY_CAPABILITIES if is_legacy_completion_model(model) else CHAT_CAPABILITIES

    @classmethod
    def framings(cls, caps: Capabilities, chat_mode: str) -> dict[str, str]:
        if caps.raw_completion:
            return {"raw": "ok: legacy /completions continues the text",
                    "chat": ("no: a completions model has no chat template and Chat "
                             "Completions cannot prefill the assistant turn"),
                    "chat-continue": "no: a completions model takes no messages"}
        return {"raw": "no: Chat Completions takes messages only",
                "chat": "no: Chat Completions cannot prefill the assistant turn",
                "chat-continue": PAPER_FALLBACK}

    @classmethod
    def refuse_model(cls, model: str) -> None:
        refuse_reasoning(model)

    @classmethod
    def tokenizer_model(cls, model: str) -> str | None:
        return base_model(model)

    @classmethod
    def create(cls, client: httpx.AsyncClient, model: str, api_key: str | None, *,
               base_url: str | None, flavour: str, chat_mode: str,
               options: RequestOptions) -> Provider:
        return cls(client, model, api_key, base_url or DEFAULT_BASE_URL, options)

    def __init__(self, client: httpx.AsyncClient, model: str, api_key: str | None = None,
                 base_url: str = DEFAULT_BASE_URL, options: RequestOptions = DEFAULT_OPTIONS):
        refuse_reasoning(model)
        self.legacy = is_legacy_completion_model(model)
        super().__init__(client, model, self.declared(model), options)
        self.sdk = OpenAIAPI(client, api_key, base_url)

    def build(self, req: GenerationRequest) -> WireRequest:
        """The SDK's create() parameters (which are also the JSON body it sends)."""
        k = min(req.top_logprobs, self.capabilities.top_logprobs)
        greedy = {"temperature": 0.0, "top_p": 1.0, "presence_penalty": 0.0,
                  "frequency_penalty": 0.0}
        if self.legacy:
            if req.prompt is None:
                raise EndpointError(
                    f"OpenAI model {self.model!r} is served on the legacy completions endpoint, "
                    "which takes text, not messages; use --framings raw.")
            body: dict[str, Any] = {"model": self.model, "prompt": req.prompt,
                                    "max_tokens": req.max_tokens, "logprobs": k, **greedy}
            return WireRequest("POST", "/completions", body)
        if req.messages is None:
            raise EndpointError(
                f"OpenAI chat model {self.model!r} takes messages only: no raw text and no "
                "assistant prefill. Use --framings chat-continue (the documented fallback).")
        body = {"model": self.model, "messages": req.messages, "max_tokens": req.max_tokens,
                "logprobs": True, "top_logprobs": k, **greedy}
        return WireRequest("POST", "/chat/completions", body)

    async def send(self, wire: WireRequest) -> httpx.Response:
        """Call the SDK; hand back the raw HTTP answer (errors included) for shared handling."""
        return await self.sdk.send(wire)

    def parse(self, req: GenerationRequest, payload: dict[str, Any]) -> Completion:
        choice = first_choice(payload, "OpenAI")
        usage = payload.get("usage") or {}
        cols = token_columns(choice.get("logprobs"))
        text = choice_text(choice, chat=not self.legacy)
        return completion_from_columns(req, text=text, cols=cols,
                                       finish_reason=choice.get("finish_reason"),
                                       prompt_tokens=usage.get("prompt_tokens"),
                                       model=payload.get("model"))
