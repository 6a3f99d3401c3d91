"""What a run's transport sent, replayed, retried and lost, and the tokens it was paid for."""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from typing import Any


@dataclass
class TransportStats:
    """Per-run accounting of what was asked, answered and paid for (manifest "requests").

    Tokens come from each answer's ``usage`` (OpenAI's prompt/completion_tokens or
    Anthropic's input/output_tokens): ``tokens`` counts answers that came over the network
    this session (what was paid now), ``replayed_tokens`` answers served from fixtures (paid
    in an earlier session, free now). ``answers_without_usage`` says how far to trust them.
    """

    sent: int = 0            # attempts that reached the network (retries included)
    replayed: int = 0        # answered from the store
    retried: int = 0         # extra attempts after a retryable failure
    failed: int = 0          # gave up, or a non-2xx final answer
    by_status: Counter = field(default_factory=Counter)
    prompt_tokens: int = 0
    completion_tokens: int = 0
    replayed_prompt_tokens: int = 0
    replayed_completion_tokens: int = 0
    answers_without_usage: int = 0

    def count_usage(self, payload: Any, replayed: bool) -> None:
        usage = payload.get("usage") if isinstance(payload, dict) else None
        if not isinstance(usage, dict):
            self.answers_without_usage += 1
            return
        prompt = _int(usage.get("prompt_tokens", usage.get("input_tokens")))
        completion = _int(usage.get("completion_tokens", usage.get("output_tokens")))
        if replayed:
            self.replayed_prompt_tokens += prompt
            self.replayed_completion_tokens += completion
        else:
            self.prompt_tokens += prompt
            self.completion_tokens += completion

    def to_json(self) -> dict[str, Any]:
        return {"sent": self.sent, "replayed": self.replayed, "retried": self.retried,
                "failed": self.failed, "by_status": dict(self.by_status),
                "tokens": {"prompt": self.prompt_tokens, "completion": self.completion_tokens},
                "replayed_tokens": {"prompt": self.replayed_prompt_tokens,
                                    "completion": self.replayed_completion_tokens},
                "answers_without_usage": self.answers_without_usage}


def _int(x: Any) -> int:
    return x if isinstance(x, int) and not isinstance(x, bool) and x > 0 else 0
