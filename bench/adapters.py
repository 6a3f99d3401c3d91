#!/usr/bin/env python3
"""Client CPU per request of each adapter: what the official SDKs cost on top of raw httpx.

Every adapter sends through the same stack (record/replay off, retry transport) to an
in-process ``httpx.MockTransport`` that answers at once with a canned 100-token completion in
the service's shape (5 top log-probabilities per token), so the time measured is the client's
alone: build, SDK call (OpenAI, Anthropic) or plain httpx (OpenAI-compatible), bridge, parse,
quality checks. Sequential requests, process CPU time; the first 20 are warm-up.

    .venv/bin/python bench/adapters.py [--requests 500]

Prints ``adapter cpu_ms_per_request=...`` per adapter and each SDK adapter's ratio to the
OpenAI-compatible one (same answer shape, no SDK).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import provider_shapes as S  # noqa: E402

from blackbox_audit.framing import chat_messages, continue_messages  # noqa: E402
from blackbox_audit.records import GenerationRequest, Prefill  # noqa: E402
from blackbox_audit.transport import build_client  # noqa: E402

P = Prefill.make("prose", "The feud between")
PIECES = [(f" w{i}", -0.1 - i / 1000) for i in range(100)]
BODIES = {
    "openai-compatible": json.dumps(S.openai_legacy("m", P.text, PIECES)).encode(),
    "openai": json.dumps(S.openai_chat("gpt-4o-mini", PIECES)).encode(),
    "anthropic": json.dumps(S.anthropic_message("claude-haiku-4-5",
                                                "".join(t for t, _ in PIECES))).encode(),
}


def network(body: bytes) -> httpx.MockTransport:
    async def answer(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200, content=body, headers={"content-type": "application/json"})
    return httpx.MockTransport(answer)


def make(name: str):
    from providers.anthropic_api import AnthropicProvider
    from providers.openai_api import OpenAIProvider
    from providers.openai_compatible import OpenAICompatibleProvider

    if name == "openai-compatible":
        c = build_client("http://bench.invalid/v1", network=network(BODIES[name]))
        return (OpenAICompatibleProvider(c, "m", "generic"),
                GenerationRequest(P, "raw", 100, 5, prompt=P.text))
    if name == "openai":
        c = build_client("https://api.openai.com/v1", network=network(BODIES[name]))
        return (OpenAIProvider(c, "gpt-4o-mini", api_key="sk-bench"),
                GenerationRequest(P, "chat-continue", 100, 5,
                                  messages=continue_messages(P.text)))
    c = build_client("https://api.anthropic.com", network=network(BODIES[name]))
    p = AnthropicProvider(c, "claude-haiku-4-5", api_key="sk-bench")
    p.reference_only = True
    return p, GenerationRequest(P, "chat", 100, 5, messages=chat_messages(P.text))


async def measure(name: str, n: int) -> float:
    provider, req = make(name)
    for _ in range(20):
        await provider.generate(req)
    t0 = time.process_time()
    for _ in range(n):
        c = await provider.generate(req)
    cpu = time.process_time() - t0
    assert c.text and (c.usable or name == "anthropic"), c.degraded
    return cpu / n * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=500)
    args = ap.parse_args()
    base = None
    for name in ("openai-compatible", "openai", "anthropic"):
        ms = asyncio.run(measure(name, args.requests))
        base = base or ms
        ratio = "" if name == "openai-compatible" else f"  ratio_to_compatible={ms / base:.2f}"
        print(f"{name:18s} cpu_ms_per_request={ms:.3f}{ratio}")


if __name__ == "__main__":
    main()
