"""Keep secrets in memory only.

Credentials are never written: request headers are not recorded at all, and every string
that leaves the process for a file (fixtures, manifests, logs, reports) passes through a
:class:`Redactor` that knows the secrets of this run and replaces them wherever they appear
(a key echoed back in an error body, pasted into a prompt, or embedded in a URL).
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterable
from typing import Any

REDACTED = "<redacted>"

# Shapes of well-known API keys, caught even when the run was not told about them.
_KEY_PATTERNS = re.compile(
    r"(sk-ant-[A-Za-z0-9_\-]{8,}|sk-(?:proj-|svcacct-)?[A-Za-z0-9_\-]{16,}|"
    r"hf_[A-Za-z0-9]{20,}|Bearer\s+[A-Za-z0-9._\-]{12,})"
)
# Each alternative above begins with one of these (case-sensitive): a text holding none of them
# cannot match, and the check is a fraction of the regex scan of a 12 KB completions row.
_KEY_PREFIXES = ("sk-", "hf_", "Bearer")


class Redactor:
    def __init__(self, secrets: Iterable[str | None] = ()):
        # Longest first so a secret that contains another is replaced whole.
        self._secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def add(self, secret: str | None) -> None:
        if secret and len(secret) >= 4 and secret not in self._secrets:
            self._secrets = sorted([*self._secrets, secret], key=len, reverse=True)

    def text(self, s: str) -> str:
        for secret in self._secrets:
            if secret in s:
                s = s.replace(secret, REDACTED)
        if any(p in s for p in _KEY_PREFIXES):
            return _KEY_PATTERNS.sub(REDACTED, s)
        return s

    def obj(self, value: Any) -> Any:
        """Redact every string inside a JSON-like value (keys included)."""
        if isinstance(value, str):
            return self.text(value)
        if isinstance(value, dict):
            return {self.text(k): self.obj(v) for k, v in value.items()}
        if isinstance(value, list | tuple):
            return [self.obj(v) for v in value]
        return value

    def dumps(self, value: Any, **kw: Any) -> str:
        return self.text(json.dumps(value, ensure_ascii=False, **kw))
