"""manifest.json, typed: what a run is, what it cost, and where it stands.

One frozen record, read and written as one JSON object. A stage that learns something returns
a new manifest (``updated``); nothing changes one in place. The keys are those earlier
versions wrote, so their run directories still read; keys this version does not know are kept
(``extra``) and written back as they were.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace
from typing import Any


@dataclass(frozen=True)
class Counts:
    """The rows of a finished ranking: how many, how many ranked, and why the rest are not."""

    rows: int
    ranked: int
    failed: int
    degraded: int
    degraded_reasons: dict[str, int] = field(default_factory=dict)
    left_out_of_ranking: dict[str, int] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {f.name: getattr(self, f.name) for f in fields(self)}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Counts:
        return cls(**{k: v for k, v in obj.items() if k in cls.__dataclass_fields__})

    def __getitem__(self, key: str) -> Any:  # the dict spelling older callers used
        return getattr(self, key)

    def get(self, key: str, default: Any = None) -> Any:
        return getattr(self, key, default)


@dataclass(frozen=True)
class Manifest:
    """manifest.json. Blocks are plain JSON objects: ``generation`` (the settings a resume
    must match), ``config`` (every setting), ``target``, ``framing``, ``endpoint`` (flavour,
    capabilities, the probe), ``sessions`` (one per invocation: requests, tokens, cost),
    ``accounting`` (the sessions added up), ``reference``, ``scoring``, ``noise_floor``,
    ``ranking``, ``rescoring`` (one per ``score RUN``), ``rounds`` (``--rounds 2``: its
    settings, then how many prefills round two derived and from what)."""

    tool: str = "blackbox-audit"
    status: str | None = None           # generating | interrupted | generated | done
    mode: str | None = None             # perplexity-difference | reference-only
    versions: dict[str, str] | None = None
    generation: dict[str, Any] | None = None
    config: dict[str, Any] | None = None
    target: dict[str, Any] | None = None
    framing: dict[str, Any] | None = None
    warnings: list[str] = field(default_factory=list)
    end_token: str | None = None
    endpoint: dict[str, Any] | None = None
    requests: dict[str, Any] | None = None
    generation_seconds: float | None = None
    sessions: list[dict[str, Any]] = field(default_factory=list)
    accounting: dict[str, Any] | None = None
    reference: dict[str, Any] | None = None
    scoring: dict[str, Any] | None = None
    noise_floor: dict[str, Any] | None = None
    counts: Counts | None = None
    degraded_reason_meanings: dict[str, str] | None = None
    ranking: dict[str, Any] | None = None
    seconds: float | None = None
    rescoring: list[dict[str, Any]] = field(default_factory=list)
    rounds: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    def updated(self, **changes: Any) -> Manifest:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for f in fields(self):
            if f.name == "extra":
                continue
            value = getattr(self, f.name)
            if value is None or value == [] and f.name in ("sessions", "rescoring"):
                continue
            out[f.name] = value.to_json() if isinstance(value, Counts) else value
        return {**self.extra, **out}

    @classmethod
    def from_json(cls, obj: dict[str, Any]) -> Manifest:
        known = {k: v for k, v in obj.items() if k in cls.__dataclass_fields__ and k != "extra"}
        if isinstance(known.get("counts"), dict):
            known["counts"] = Counts.from_json(known["counts"])
        extra = {k: v for k, v in obj.items() if k not in cls.__dataclass_fields__}
        return cls(**known, extra=extra)
