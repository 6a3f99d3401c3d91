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

from blackbox_audit.errors import AuditError, EndpointError
from blackbox_audit.records import Completion, GenerationRequest

from .base import (
    DEFAULT_OPTIONS,
    Capabilities,
    Provider,
    RequestOptions,
    WireRequest,
    completion_from_columns,
    first_choice,
)
from .protocol import choice_text, token_columns
from .sdk_bridge import as_httpx_response, sdk_client, split_params

DEFAULT_BASE_URL = "https://api.openai.com/v1"
DEFAULT_KEY_ENV = "OPENAI_API_KEY"

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


class OpenAIProvider(Provider):
    """OpenAI's Chat Completions or legacy Completions endpoint, by model."""

    kind = "openai"

    def __init__(self, client: httpx.AsyncClient, model: str, api_key: str | None = None,
                 base_url: str = DEFAULT_BASE_URL, options: RequestOptions = DEFAULT_OPTIONS):
        refuse_reasoning(model)
        self.legacy = is_legacy_completion_model(model)
        super().__init__(client, model, LEGACY_CAPABILITIES if self.legacy
                         else CHAT_CAPABILITIES, options)
        import openai
        from openai import _base_client

        self.sdk = sdk_client(openai.AsyncOpenAI, _base_client, client, api_key, base_url)
        self._openai = openai

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
        openai = self._openai
        resource = self.sdk.completions if wire.path == "/completions" \
            else self.sdk.chat.completions
        typed, extra = split_params(resource.create, wire.body)
        try:
            raw = await resource.with_raw_response.create(
                **typed, **({"extra_body": extra} if extra else {}))
        except openai.APIStatusError as e:
            return as_httpx_response(e.response)
        except openai.APIConnectionError as e:
            raise _unwrap(e) from e
        return as_httpx_response(raw.http_response)

    def parse(self, req: GenerationRequest, payload: dict[str, Any]) -> Completion:
        choice = first_choice(payload, "OpenAI")
        usage = payload.get("usage") or {}
        cols = token_columns(choice.get("logprobs"))
        text = choice_text(choice, chat=not self.legacy)
        return completion_from_columns(req, text=text, cols=cols,
                                       finish_reason=choice.get("finish_reason"),
                                       prompt_tokens=usage.get("prompt_tokens"),
                                       model=payload.get("model"))


def _unwrap(e: Exception) -> Exception:
    """The SDK wraps whatever our transport raised in APIConnectionError: give back our own
    error (a replay miss must stay a FixtureError) or the httpx error the loop maps."""
    cause = e.__cause__ or e.__context__
    while cause is not None and not isinstance(cause, AuditError | httpx.TransportError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        return cause
    return httpx.ConnectError(str(e))
