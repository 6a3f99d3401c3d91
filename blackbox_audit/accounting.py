"""Per-run accounting: requests, tokens and money, per session and over the whole run.

A user pointing the tool at a paid endpoint needs to know what a run cost, and a resumed run
is several sessions (each a process) against one run directory. Each session's
``TransportStats`` (transport.py) counts what it sent, replayed, retried and lost, and the
tokens of every answer's ``usage``; this module prices those tokens with the preflight's
table (preflight.load_pricing / price_for: one table in the project, user-overridable with
``--pricing``) and sums the sessions into the manifest's ``accounting``.

Costs are estimates: list prices at the table's date, tokens as the endpoint reported them.
A model with no price gets ``usd: null`` and says why, never a guessed number.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .plan import PriceTable
    from .transport import LedgerTotals

COUNTS = ("sent", "replayed", "retried", "failed")


class Pricer:
    """USD per token for one model, looked up once per run in the plan's price table
    (plan.PriceTable: the built-in table, or the user's file over it)."""

    def __init__(self, model: str, prices: PriceTable):
        from .preflight import price_for

        self.source = prices.source
        self.model = model
        self.price = price_for(model, prices.as_dict()) if model else None

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float | None:
        if self.price is None:
            return None
        return (prompt_tokens * self.price[0] + completion_tokens * self.price[1]) / 1e6

    def describe(self, prompt_tokens: int, completion_tokens: int) -> dict[str, Any]:
        usd = self.cost(prompt_tokens, completion_tokens)
        if usd is None:
            return {"usd": None, "note": f"no price for {self.model!r} in the {self.source}; "
                                         "pass --pricing FILE for an estimate"}
        return {"usd": round(usd, 6), "usd_per_million": {"prompt": self.price[0],
                                                          "completion": self.price[1]},
                "pricing_source": self.source,
                "note": "estimate: the answers' own usage counts at list prices"}


def session_requests(stats_json: dict[str, Any], pricer: Pricer) -> dict[str, Any]:
    """One session's request counts with the cost of the tokens it paid for (replayed
    answers were paid in an earlier session and cost nothing now)."""
    tokens = stats_json.get("tokens") or {}
    return {**stats_json, "cost": pricer.describe(tokens.get("prompt", 0),
                                                  tokens.get("completion", 0))}


def run_totals(sessions: list[dict[str, Any]], pricer: Pricer,
               ledger: LedgerTotals | None = None) -> dict[str, Any]:
    """Every session of the run added up: what the whole run sent, retried, lost and cost.

    A session killed with ``kill -9`` never wrote its counts, so where the run has an attempt
    ledger (transport.ledger: each attempt written down before it left) the attempts sent and
    the tokens paid for come from it, and the sessions' sums stay beside it as ``sessions_*``
    for what the ledger does not know (answers replayed from fixtures, retries)."""
    totals: dict[str, Any] = {k: 0 for k in COUNTS}
    prompt = completion = 0
    for s in sessions:
        req = s.get("requests") or {}
        for k in COUNTS:
            totals[k] += int(req.get(k) or 0)
        tokens = req.get("tokens") or {}
        prompt += int(tokens.get("prompt") or 0)
        completion += int(tokens.get("completion") or 0)
    totals["sessions"] = len(sessions)
    if ledger is not None and ledger.sent:
        totals["sessions_sent"] = totals["sent"]
        totals["sent"] = ledger.sent
        totals["answered"] = ledger.answered
        totals["possibly_billed"] = ledger.possibly_billed
        totals["ledger"] = ledger.to_json()
        prompt, completion = ledger.prompt_tokens, ledger.completion_tokens
    totals["tokens"] = {"prompt": prompt, "completion": completion}
    totals["cost"] = pricer.describe(prompt, completion)
    return totals
