"""Targets: ``KIND:MODEL`` (or ``--base-url URL --model M``) to an adapter.

The one table here is :data:`ADAPTERS`, the adapter classes; everything else is read from
them: each adapter names its kinds with their default base URL and key variable
(``Provider.kinds``), declares its capabilities and builds itself (``Provider.create``). Named
services that speak the OpenAI wire format (Together, Fireworks, OpenRouter, DeepSeek) are
kinds of the OpenAI-compatible adapter, each with its flavour (its quirks and declared
capabilities, :mod:`providers.openai_compatible`). A new provider is one adapter module and
one entry in :data:`ADAPTERS`.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

import httpx

from blackbox_audit.credentials import split_url
from blackbox_audit.errors import ConfigError

from .anthropic_api import AnthropicProvider
from .base import DEFAULT_OPTIONS, Capabilities, Kind, Provider, RequestOptions
from .openai_api import OpenAIProvider
from .openai_compatible import OpenAICompatibleProvider

ADAPTERS: tuple[type[Provider], ...] = (OpenAIProvider, AnthropicProvider,
                                        OpenAICompatibleProvider)
FAMILIES: dict[str, type[Provider]] = {a.family: a for a in ADAPTERS}
KINDS: dict[str, tuple[type[Provider], Kind]] = {
    name: (a, kind) for a in ADAPTERS for name, kind in a.kinds.items()}
BY_URL = "compatible"   # the kind of a target given as --base-url URL --model M
# --flavour's choices: "auto" (from the kind, else asked of the endpoint), then every
# adapter's server flavours.
FLAVOURS: tuple[str, ...] = tuple(dict.fromkeys(["auto", *(f for a in ADAPTERS
                                                          for f in a.flavours)]))

TARGET_HELP = ("KIND:MODEL with KIND one of " + ", ".join(KINDS) + " (e.g. openai:gpt-4o-mini, "
               "anthropic:claude-3-5-haiku-latest), or leave it out and pass --base-url URL "
               "--model M for any OpenAI-compatible server")


@dataclass(frozen=True)
class Target:
    kind: str                 # a key of KINDS
    family: str               # the adapter's: openai | anthropic | openai-compatible
    model: str
    base_url: str | None
    api_key_env: str | None
    flavour: str              # server flavour ("auto": ask the endpoint); "" without flavours
    # Credentials that came inside --base-url, as the header that carries them now (held in
    # memory only: never in to_json, never in a repr).
    url_headers: tuple[tuple[str, str], ...] = field(default=(), repr=False, compare=False)

    def to_json(self) -> dict[str, Any]:
        out = asdict(self)
        del out["url_headers"]
        return out

    @property
    def adapter(self) -> type[Provider]:
        """The adapter class: everything known about this kind of endpoint."""
        return FAMILIES[self.family]

    @property
    def uses_sdk(self) -> bool:
        """SDK adapters set their own auth headers; the shared client must not add one."""
        return self.adapter.uses_sdk


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
        adapter, defaults = KINDS[kind]
        url = base_url or defaults.base_url
        if url is None:
            raise ConfigError(f"Target kind {kind!r} has no default address: pass --base-url "
                              "(e.g. http://127.0.0.1:8000/v1).")
        if not adapter.flavours:
            fl = ""
        elif flavour != "auto":
            fl = flavour                 # the user knows better than the kind's default
        else:
            fl = defaults.flavour
        return Target(kind, adapter.family, name, url, api_key_env or defaults.key_env, fl,
                      clean.headers)
    if not model:
        raise ConfigError(f"No target: pass {TARGET_HELP}.")
    adapter = KINDS[BY_URL][0]
    return Target(BY_URL, adapter.family, model, base_url, api_key_env,
                  flavour if adapter.flavours else "", clean.headers)


def adapter_of(kind: str) -> type[Provider]:
    """The adapter class of a ``KIND`` (a key of :data:`KINDS`)."""
    return KINDS[kind][0]


def judge_kinds() -> dict[str, Kind]:
    """The kinds whose adapter offers a chat API a judge can ask (``Provider.api``)."""
    return {name: kind for name, (a, kind) in KINDS.items() if a.api is not None}


def builtin_prices() -> dict[str, tuple[float, float]]:
    """Every adapter's list prices, USD per million tokens (input, output) by model name."""
    return {name: price for a in ADAPTERS for name, price in a.prices.items()}


def declared_capabilities(target: Target) -> Capabilities:
    """What the adapter declares for this target, before any call (flavour "auto" resolves
    only after the endpoint's model list; the adapter's generic declaration stands in)."""
    return target.adapter.declared(target.model, target.flavour)


def make_provider(target: Target, client: httpx.AsyncClient, api_key: str | None, *,
                  flavour: str | None = None, chat_mode: str = "template",
                  options: RequestOptions = DEFAULT_OPTIONS) -> Provider:
    """The adapter for ``target`` on ``client``, asking as ``options`` say (fixed here)."""
    return target.adapter.create(client, target.model, api_key, base_url=target.base_url,
                                 flavour=flavour or target.flavour, chat_mode=chat_mode,
                                 options=options)
