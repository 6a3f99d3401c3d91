"""OpenAI-compatible servers reached by base URL (llama.cpp's server, vLLM, llama-cpp-python, ...).

Raw framing and the client-rendered chat framing go to ``/completions``; the chat framing with
server-side assistant prefill goes to ``/chat/completions`` and is only used when the server
is known to continue a trailing assistant message (llama.cpp's server does; vLLM does with
``continue_final_message``; llama-cpp-python silently starts a new turn instead). The
``chat-continue`` fallback (a user turn, no prefill) also goes to ``/chat/completions``.

Hosted services, each a flavour with its documented quirks:

- ``together``: ``logprobs`` is an integer 0-20 on both endpoints and ``echo`` returns prompt
  logprobs (Together's OpenAPI spec, togethercomputer/openapi PR #104); legacy completions
  carry ``token_ids`` beside ``tokens``.
- ``fireworks``: the legacy shape with ``token_ids`` beside ``tokens`` on /completions, and
  ``echo`` (docs.fireworks.ai, API reference "Create Completion"); k is kept at 5 (a
  conservative limit: the page states none).
- ``openrouter``: routes each request to one of several upstream providers, some of which drop
  ``logprobs`` without an error (OpenRouterArchived/openrouter-runner issues #97, #101). We ask
  for ``provider.require_parameters`` (route only to providers that honour every parameter)
  and the probe refuses the run when logprobs still come back empty.
- ``deepseek``: Chat Completions only on /v1, ``top_logprobs`` up to 20; DeepSeek-V3.2 has
  been seen answering every logprob with 0 or -9999 and empty ``top_logprobs``
  (deepseek-ai/DeepSeek-V3.2-Exp issue #49): such rows are marked ``sentinel_logprobs`` and the
  probe refuses the run before spending on it.
- ``llama.cpp``: no usable echo / prompt logprobs (declared ``echo=False``).
- ``vllm``: ``continue_final_message`` / ``add_generation_prompt: false`` for the server-side
  prefill, ``prompt_logprobs`` for the echo, ``return_tokens_as_token_ids`` when the run
  scores token ids (``--alignment ids``).
"""

from __future__ import annotations

from typing import Any

import httpx

from blackbox_audit.errors import EndpointError
from blackbox_audit.records import GenerationRequest
from blackbox_audit.transport import RetryHints

from .base import (
    DEFAULT_OPTIONS,
    PAPER_FALLBACK,
    Capabilities,
    Kind,
    Provider,
    RequestOptions,
    WireRequest,
    attach_echo,
    completion_from_columns,
    first_choice,
)
from .protocol import (
    TokenColumns,
    choice_text,
    openai_usage,
    prompt_echo,
    split_echo,
    token_columns,
)

# KIND:MODEL names served by this adapter: named services (their documented base URL and key
# variable) and servers found by --base-url (no default address).
KINDS = {
    "together": Kind("https://api.together.xyz/v1", "TOGETHER_API_KEY", "together"),
    "fireworks": Kind("https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY",
                      "fireworks"),
    "openrouter": Kind("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openrouter"),
    "deepseek": Kind("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", "deepseek"),
    "vllm": Kind(None, None, "vllm"),
    "llama.cpp": Kind(None, None, "llama.cpp"),
    "compatible": Kind(None, None, "auto"),   # --base-url URL --model M, flavour from /models
}

# Greedy means greedy: each flavour's own names for "no repetition penalty, no truncation".
GREEDY_EXTRAS: dict[str, dict[str, Any]] = {
    "generic": {},
    "llama.cpp": {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0},
    "llama-cpp-python": {"repeat_penalty": 1.0, "top_k": 0, "min_p": 0.0},
    "vllm": {"repetition_penalty": 1.0, "top_k": -1, "min_p": 0.0},
    "together": {"repetition_penalty": 1.0},
    "fireworks": {},
    "openrouter": {"repetition_penalty": 1.0, "provider": {"require_parameters": True}},
    "deepseek": {},
}

FLAVOUR_CAPABILITIES: dict[str, Capabilities] = {
    "generic": Capabilities(top_logprobs=5),
    "llama.cpp": Capabilities(top_logprobs=20, assistant_prefill=True, token_ids=True),
    "llama-cpp-python": Capabilities(top_logprobs=20),
    # token ids on request (return_tokens_as_token_ids): asked for with --alignment ids only,
    # since tokens named by id lose their text and offsets (protocol._ids_from_placeholders)
    "vllm": Capabilities(top_logprobs=20, assistant_prefill=True, echo=True, token_ids=True),
    "together": Capabilities(top_logprobs=20, echo=True, token_ids=True),
    "fireworks": Capabilities(top_logprobs=5, echo=True, token_ids=True),
    "openrouter": Capabilities(top_logprobs=20),
    "deepseek": Capabilities(top_logprobs=20, raw_completion=False),
}

# How each server names itself in GET /models (``owned_by``).
_OWNERS = {"llamacpp": "llama.cpp", "vllm": "vllm", "me": "llama-cpp-python"}


class OpenAICompatibleProvider(Provider):
    family = "openai-compatible"
    kinds = KINDS
    flavours = (*GREEDY_EXTRAS, "auto")
    # OpenAI's wait header: servers and proxies that speak its wire format copy it.
    retry_hints = RetryHints(wait_ms_header="retry-after-ms")
    prices = {"deepseek-chat": (0.27, 1.10)}
    usage = staticmethod(openai_usage)

    @classmethod
    def declared(cls, model: str, flavour: str = "") -> Capabilities:
        """A flavour's declaration ("auto" resolves only after GET /models: the generic
        declaration stands in until then)."""
        return FLAVOUR_CAPABILITIES.get(flavour, FLAVOUR_CAPABILITIES["generic"])

    @classmethod
    def chat_mode(cls, caps: Capabilities, asked: str) -> str:
        # no raw text completion: the chat framing can only be a server-side prefill
        return asked if caps.raw_completion else "prefill"

    @classmethod
    def framings(cls, caps: Capabilities, chat_mode: str) -> dict[str, str]:
        out = {"raw": "ok: /completions" if caps.raw_completion
               else "no: no raw text completion on this base URL"}
        if caps.raw_completion and chat_mode == "template":
            out["chat"] = "ok: chat template rendered client-side, continued on /completions"
        elif caps.assistant_prefill:
            out["chat"] = "ok: trailing assistant message continued by the server"
        elif chat_mode == "prefill" and caps.raw_completion:
            # asked for server-side prefill: kept, and refused after discovery if the server
            # is not known to honour it (--chat-mode template is then the advice)
            out["chat"] = "only if the server continues a trailing assistant message"
        else:
            out["chat"] = ("no: the server is not known to continue a trailing assistant "
                           "message" + ("" if caps.raw_completion else
                                        " and has no raw completion"))
        out["chat-continue"] = PAPER_FALLBACK
        return out

    @classmethod
    def pins_upstream(cls, flavour: str) -> bool:
        """OpenRouter takes ``provider.order`` with ``allow_fallbacks: false``."""
        return flavour == "openrouter"

    @classmethod
    async def discover(cls, client: httpx.AsyncClient, model: str) -> tuple[str, str]:
        found, models = await discover(client, model)
        return found, ("yes" if model in models else "no /models list" if not models
                       else "alias")

    @classmethod
    def create(cls, client: httpx.AsyncClient, model: str, api_key: str | None, *,
               base_url: str | None, flavour: str, chat_mode: str,
               options: RequestOptions) -> Provider:
        # the key goes in the shared client's Authorization header (credentials.py)
        return cls(client, model, flavour, chat_mode, options)

    @property
    def missing_logprobs_note(self) -> str:
        if self.flavour == "openrouter":
            return " (OpenRouter routes to upstream providers, some of which drop them)"
        return ""

    def __init__(self, client: httpx.AsyncClient, model: str, flavour: str = "generic",
                 chat_mode: str = "template", options: RequestOptions = DEFAULT_OPTIONS):
        if flavour not in GREEDY_EXTRAS:
            raise ValueError(f"unknown server flavour {flavour!r}")
        super().__init__(client, model, FLAVOUR_CAPABILITIES[flavour], options)
        self.flavour = flavour
        self.chat_mode = chat_mode

    async def server_slots(self) -> int | None:
        """llama.cpp's server states its parallel slots in ``GET /props`` (``total_slots``,
        at the server's root, beside ``/v1``). Other flavours state none; an answer that is
        not a positive count, or no answer, is "unknown"."""
        if self.flavour != "llama.cpp":
            return None
        base = self.client.base_url
        root = base.path.rstrip("/").removesuffix("/v1")
        try:
            response = await self.client.get(base.copy_with(path=f"{root}/props"))
            slots = response.json().get("total_slots") if response.status_code == 200 else None
        except (httpx.HTTPError, ValueError, AttributeError):
            return None
        return slots if isinstance(slots, int) and not isinstance(slots, bool) and slots > 0 \
            else None

    def _sampling(self) -> dict[str, Any]:
        extras = GREEDY_EXTRAS[self.flavour]
        if self.options.upstream and self.pins_upstream(self.flavour):
            extras = {**extras, "provider": {**extras.get("provider", {}),
                                             "order": [self.options.upstream],
                                             "allow_fallbacks": False}}
        return {"temperature": 0.0, "top_p": 1.0, "presence_penalty": 0.0,
                "frequency_penalty": 0.0, **extras}

    def build(self, req: GenerationRequest) -> WireRequest:
        # A known service's documented limit caps k; an unknown server gets what was asked.
        k = req.top_logprobs if self.flavour == "generic" else min(
            req.top_logprobs, self.capabilities.top_logprobs)
        if req.messages is not None:
            body: dict[str, Any] = {"model": self.model, "messages": req.messages,
                                    "max_tokens": req.max_tokens, "logprobs": True,
                                    "top_logprobs": k, **self._sampling()}
            if self.flavour == "vllm" and _prefilled(req):
                body.update(continue_final_message=True, add_generation_prompt=False)
            body.update(self._echo_params(chat=True), **self._id_params())
            return WireRequest("POST", "/chat/completions", body)
        if not self.capabilities.raw_completion:
            raise EndpointError(
                f"A {self.flavour} endpoint has no raw text completion on this base URL, so the "
                "raw framing and the client-rendered chat framing are impossible; use "
                "--framings chat-continue.")
        body = {"model": self.model, "prompt": req.prompt, "max_tokens": req.max_tokens,
                "logprobs": k, **self._sampling(), **self._echo_params(chat=False),
                **self._id_params()}
        return WireRequest("POST", "/completions", body)

    @property
    def ids_on_request(self) -> bool:
        """vLLM names each token ``token_id:N`` when asked; the other flavours that give ids
        do so unasked."""
        return self.flavour == "vllm"

    def _id_params(self) -> dict[str, Any]:
        if self.ask_token_ids and self.ids_on_request:
            return {"return_tokens_as_token_ids": True}
        return {}

    def _echo_params(self, chat: bool) -> dict[str, Any]:
        """Ask for the prompt back as the server tokenised it (``echo_prompts``), in each
        flavour's own words; nothing when not asked or not offered."""
        if not self.echo_prompts or not self.capabilities.echo:
            return {}
        if self.flavour == "vllm":
            return {"prompt_logprobs": 0}
        if self.flavour == "fireworks" and chat:
            return {}  # Fireworks documents echo on /completions only
        return {"echo": True}

    def parse(self, req: GenerationRequest, payload: dict[str, Any]):
        choice = first_choice(payload, "The endpoint")
        usage = payload.get("usage") or {}
        cols = token_columns(choice.get("logprobs"))
        dropped = False
        echo = None
        if req.messages is not None:
            content = choice_text(choice, chat=True)
            if _prefilled(req):
                text, dropped = _strip_prefill(content, req.prefill.text, cols)
            else:
                text = content
        else:
            text = choice_text(choice, chat=False)
            if self.echo_prompts and _echoed_in_text(text, cols, req.prompt or ""):
                echo, cols, text = split_echo(cols, text, req.prompt or "")
            cols = _tokens_from_offsets(cols, text)
        c = completion_from_columns(req, text=text, cols=cols,
                                    finish_reason=choice.get("finish_reason"),
                                    prompt_tokens=usage.get("prompt_tokens"),
                                    model=payload.get("model"))
        c.upstream = upstream_of(payload)
        if dropped:
            c.degraded.append("prefill_dropped")
        if self.echo_prompts:
            attach_echo(c, echo or prompt_echo(payload, choice), req.prefill.text,
                        in_user_turn=req.framing == "chat-continue")
        return c


def upstream_of(payload: dict[str, Any]) -> str | None:
    """The upstream a router names as having served this answer: OpenRouter's top-level
    ``provider`` (its documented response field). Untrusted text: printable, 100 characters at
    most; anything else is "not named"."""
    name = payload.get("provider")
    if not isinstance(name, str) or not name.strip():
        return None
    name = "".join(ch for ch in name.strip() if ch.isprintable())[:100]
    return name or None


def _prefilled(req: GenerationRequest) -> bool:
    """Does this request end with an assistant turn for the server to continue?"""
    return bool(req.messages) and req.messages[-1].get("role") == "assistant"


def _strip_prefill(content: str, prefill: str, cols: TokenColumns | None) -> tuple[str, bool]:
    """The continuation part of a chat answer to an assistant prefill, and whether the server
    dropped the prefill (regenerated it as fresh text, as llama-cpp-python's server does)."""
    generated = "".join(cols.tokens) if cols is not None else None
    if generated is not None and prefill.strip() and generated.lstrip().startswith(prefill.strip()):
        return content, True
    if content.startswith(prefill):
        return content[len(prefill):], False
    return content, False


def _echoed_in_text(text: str, cols: TokenColumns | None, prompt: str) -> bool:
    """Did the server put the prompt's own tokens first (OpenAI's legacy ``echo``)? Their
    offsets start at 0, where a continuation's start at the prompt's length."""
    if cols is None or not prompt or not text.startswith(prompt):
        return False
    if cols.text_offset:
        return cols.text_offset[0] < len(prompt)
    return "".join(cols.tokens).startswith(prompt)


def _tokens_from_offsets(cols: TokenColumns | None, text: str) -> TokenColumns | None:
    """Legacy shapes give ``text_offset``: when token strings do not rebuild the text (a split
    UTF-8 character shown as a placeholder), slice the text at the offsets instead."""
    if cols is None or cols.text_offset is None or "".join(cols.tokens) == text:
        return cols
    offs = cols.text_offset
    if len(offs) != len(cols.tokens) or not offs:
        return cols
    base = offs[0]
    rel = [o - base for o in offs] + [len(text)]
    if any(b < a for a, b in zip(rel, rel[1:], strict=False)) or rel[-2] > len(text):
        return cols
    cols.tokens = [text[a:b] for a, b in zip(rel, rel[1:], strict=False)]
    return cols


async def discover(client: httpx.AsyncClient, model: str) -> tuple[str, list[str]]:
    """GET /models: check the model exists and tell the server flavour from ``owned_by``.

    Returns (flavour, model ids). A server without /models is treated as generic.
    """
    try:
        response = await client.get("/models")
    except httpx.TransportError as e:
        raise EndpointError(
            f"Cannot reach {client.base_url} ({type(e).__name__}: {e}). Is the server running, "
            "and does --base-url point at it (usually ending in /v1)?") from e
    if response.status_code in (401, 403):
        raise EndpointError(f"The endpoint {client.base_url} refused the credentials (HTTP "
                            f"{response.status_code}). Check the API key.")
    if response.status_code >= 400:
        return "generic", []
    try:
        data = response.json().get("data") or []
    except (ValueError, AttributeError):
        return "generic", []
    ids = [str(m.get("id")) for m in data if isinstance(m, dict)]
    owners = {str(m.get("owned_by")) for m in data if isinstance(m, dict)}
    flavour = next((_OWNERS[o] for o in owners if o in _OWNERS), "generic")
    aliases = {a for m in data if isinstance(m, dict) for a in (m.get("aliases") or [])}
    if ids and model not in ids and model not in aliases:
        raise EndpointError(
            f"The endpoint {client.base_url} does not serve model {model!r}; it lists: "
            f"{', '.join(ids[:10])}. Pass one of those with --model.")
    return flavour, ids
