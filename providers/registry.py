"""Targets: ``KIND:MODEL`` (or ``--base-url URL --model M``) to an adapter.

One place knows every kind of endpoint the tool can talk to, its default base URL and API key
variable, and builds its adapter; the rest of the code holds a :class:`Target`. Named services
that speak the OpenAI wire format (Together, Fireworks, OpenRouter, DeepSeek) are the
OpenAI-compatible adapter with that service's flavour (its quirks and declared capabilities,
:mod:`providers.openai_compatible`).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from blackbox_audit.credentials import split_url
from blackbox_audit.errors import ConfigError

from .base import DEFAULT_OPTIONS, Capabilities, Provider, RequestOptions

# kind -> (default base URL, API key variable, adapter family, flavour)
KINDS: dict[str, tuple[str | None, str | None, str, str]] = {
    "openai": ("https://api.openai.com/v1", "OPENAI_API_KEY", "openai", ""),
    "anthropic": ("https://api.anthropic.com", "ANTHROPIC_API_KEY", "anthropic", ""),
    "together": ("https://api.together.xyz/v1", "TOGETHER_API_KEY", "openai-compatible",
                 "together"),
    "fireworks": ("https://api.fireworks.ai/inference/v1", "FIREWORKS_API_KEY",
                  "openai-compatible", "fireworks"),
    "openrouter": ("https://openrouter.ai/api/v1", "OPENROUTER_API_KEY", "openai-compatible",
                   "openrouter"),
    "deepseek": ("https://api.deepseek.com/v1", "DEEPSEEK_API_KEY", "openai-compatible",
                 "deepseek"),
    "vllm": (None, None, "openai-compatible", "vllm"),
    "llama.cpp": (None, None, "openai-compatible", "llama.cpp"),
    "compatible": (None, None, "openai-compatible", "auto"),
}

TARGET_HELP = ("KIND:MODEL with KIND one of " + ", ".join(KINDS) + " (e.g. openai:gpt-4o-mini, "
               "anthropic:claude-3-5-haiku-latest), or leave it out and pass --base-url URL "
               "--model M for any OpenAI-compatible server")


@dataclass(frozen=True)
class Target:
    kind: str                 # a key of KINDS
    family: str               # openai | anthropic | openai-compatible
    model: str
    base_url: str | None
    api_key_env: str | None
    flavour: str              # openai-compatible flavour ("auto": ask GET /models); "" else
    # Credentials that came inside --base-url, as the header that carries them now (held in
    # memory only: never in to_json, never in a repr).
    url_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["url_headers"]
        return out

    @property
    def uses_sdk(self) -> bool:
        """SDK adapters set their own auth headers; the shared client must not add one."""
        return self.family in ("openai", "anthropic")


def parse_target(target: str | None, *, base_url: str | None = None, model: str | None = None,
                 api_key_env: str | None = None, flavour: str = "auto") -> Target:
    """Resolve the command line's target. ``--base-url``/``--model``/``--api-key-env`` given
    alongside ``KIND:MODEL`` override the kind's defaults (a proxy, another key variable).
    Credentials inside the URL leave it here (blackbox_audit.credentials.split_url)."""
    clean = split_url(base_url)
    base_url = clean.url
    if target:
        kind, sep, name = target.partition(":")
        if not sep or kind not in KINDS or not name:
            raise ConfigError(f"Cannot read target {target!r}: expected {TARGET_HELP}.")
        if model and model != name:
            raise ConfigError(f"Target {target!r} and --model {model!r} disagree; pass one.")
        default_url, default_env, family, kind_flavour = KINDS[kind]
        url = base_url or default_url
        if url is None:
            raise ConfigError(f"Target kind {kind!r} has no default address: pass --base-url "
                              "(e.g. http://127.0.0.1:8000/v1).")
        if family != "openai-compatible":
            fl = ""
        elif flavour != "auto":
            fl = flavour                 # the user knows better than the kind's default
        else:
            fl = kind_flavour
        return Target(kind, family, name, url, api_key_env or default_env, fl, clean.headers)
    if not model:
        raise ConfigError(f"No target: pass {TARGET_HELP}.")
    return Target("compatible", "openai-compatible", model, base_url, api_key_env, flavour,
                  clean.headers)


def declared_capabilities(target: Target) -> Capabilities:
    """What the adapter declares for this target, before any call (flavour "auto" resolves
    only after GET /models; its generic declaration stands in until then)."""
    if target.family == "openai":
        from .openai_api import CHAT_CAPABILITIES, LEGACY_CAPABILITIES, is_legacy_completion_model

        return LEGACY_CAPABILITIES if is_legacy_completion_model(target.model) \
            else CHAT_CAPABILITIES
    if target.family == "anthropic":
        from .anthropic_api import CAPABILITIES

        return CAPABILITIES
    from .openai_compatible import FLAVOUR_CAPABILITIES

    return FLAVOUR_CAPABILITIES.get(target.flavour, FLAVOUR_CAPABILITIES["generic"])


def make_provider(target: Target, client: httpx.AsyncClient, api_key: str | None, *,
                  flavour: str | None = None, chat_mode: str = "template",
                  options: RequestOptions = DEFAULT_OPTIONS) -> Provider:
    """The adapter for ``target`` on ``client``, asking as ``options`` say (fixed here)."""
    if target.family == "openai":
        from .openai_api import OpenAIProvider

        return OpenAIProvider(client, target.model, api_key, target.base_url or "", options)
    if target.family == "anthropic":
        from .anthropic_api import AnthropicProvider

        return AnthropicProvider(client, target.model, api_key, target.base_url or "",
                                 options)
    from .openai_compatible import OpenAICompatibleProvider

    return OpenAICompatibleProvider(client, target.model, flavour or target.flavour, chat_mode,
                                    options)
