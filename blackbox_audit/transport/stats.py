"""What a run's transport sent, replayed, retried and lost, and the tokens it was paid for."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

# An answer's (prompt, completion) tokens as its API reports them, or None when it reports
# none: each adapter reads its own API's fields (providers: ``Provider.usage``).
UsageReader = Callable[[Any], "tuple[Any, Any] | None"]


@dataclass
class TransportStats:
    """Per-run accounting of what was asked, answered and paid for (manifest "requests").

    Tokens are what the endpoint's adapter reads from each answer (a :data:`UsageReader`
    given to the client): ``tokens`` counts answers that came over the network this session
    (what was paid now), ``replayed_tokens`` answers served from fixtures (paid in an earlier
    session, free now). ``answers_without_usage`` says how far to trust them.
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

    def count_usage(self, tokens: tuple[Any, Any] | None, replayed: bool) -> None:
        """Count one answer's (prompt, completion) tokens as its adapter read them (None:
        the answer says nothing of its usage); anything but a positive integer counts 0."""
        if tokens is None:
            self.answers_without_usage += 1
            return
        prompt, completion = positive_int(tokens[0]), positive_int(tokens[1])
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


def positive_int(x: Any) -> int:
    """A token count as an API reported it: a positive integer, else 0."""
    return x if isinstance(x, int) and not isinstance(x, bool) and x > 0 else 0
