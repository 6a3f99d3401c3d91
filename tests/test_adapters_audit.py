"""Whole audits through the SDK adapters (respx answers, the packaged reference rescoring on
CPU): the chat-continue fallback and the reference-only mode are named in every row, the
manifest and the printed output; degraded rows are counted by reason and kept out of the
ranking; the API key is written nowhere."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import httpx
import provider_shapes as S
import pytest
import respx

KEY = "sk-test-SECRET-abcdefghijklmnop0123"
WORDS = [" river", " stones", " carry", " old", " songs", " across", " quiet", " valleys"]
pytestmark = pytest.mark.timeout(600)


def cli(*args: str) -> tuple[int, str, str]:
    import cli as entry

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = entry.main(list(args))
    return code, out.getvalue(), err.getvalue()


def all_text(run: Path) -> str:
    return "\n".join(p.read_text(errors="replace") for p in run.rglob("*") if p.is_file())


def openai_answer(request: httpx.Request) -> httpx.Response:
    """Greedy continuations; the 2nd and 3rd distinct prompts come back degraded."""
    body = json.loads(request.content)
    n = body["max_tokens"]
    user = body["messages"][-1]["content"]
    pieces = [(w, -0.3 - 0.1 * i) for i, w in enumerate(WORDS[:n])]
    answer = S.openai_chat(body["model"] + "-2024-07-18", pieces)
    seen = openai_answer.prompts
    if n > 2 and user not in seen:
        seen.append(user)
    order = seen.index(user) if user in seen else -1
    content = answer["choices"][0]["logprobs"]["content"]
    if order == 1:     # a chosen token below an alternative: not greedy
        content[1]["top_logprobs"][1]["logprob"] = -0.01
    elif order == 2:   # one token without its logprob
        content[2]["logprob"] = None
    return httpx.Response(200, json=answer)


openai_answer.prompts = []


def test_openai_chat_continue_audit_marks_fallback_and_degraded_rows(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    openai_answer.prompts = []
    run = tmp_path / "run"
    with respx.mock:
        route = respx.post("https://api.openai.com/v1/chat/completions").mock(
            side_effect=openai_answer)
        code, out, err = cli("audit", "openai:gpt-4o-mini", "--out", str(run),
                             "--corpora", "prose", "--per-corpus", "4", "--max-tokens", "8",
                             "--min-tokens", "1", "--max-degraded-share", "1")
    assert code == 0, err
    assert route.call_count == 1 + 4   # the preflight's 2-token call, then one per row
    rows = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert {r["framing"] for r in rows} == {"chat-continue"} and len(rows) == 4
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["framing"]["fallback"] == ["chat-continue"]
    assert "Continue the following text" in manifest["framing"]["continue_instruction"]
    assert any("differ from the paper's chat framing" in w for w in manifest["warnings"])
    assert manifest["target"]["adapter"] == "openai"
    assert manifest["endpoint"]["preflight"]["calls"] == 1
    assert manifest["counts"]["degraded_reasons"] == {"not_greedy": 1, "logprob_count": 1}
    ranked = [json.loads(x) for x in (run / "ranked.jsonl").read_text().splitlines()]
    assert len(ranked) == 2 and {r["framing"] for r in ranked} == {"chat-continue"}
    assert "warning: chat framing impossible" in err
    assert "preflight: 1 probe call, logprobs yes" in err and "at most $" in err
    assert "fallback framing: the prefill in the user turn" in out
    assert "1  not_greedy: a chosen token is not the argmax" in out
    assert "1  logprob_count: fewer log-probabilities than tokens" in out
    assert KEY not in all_text(run) and KEY not in out and KEY not in err


def test_anthropic_reference_only_audit_is_labelled_everywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    texts = iter([" two"] + [f"{w} of the{WORDS[i + 1]}" for i, w in enumerate(WORDS[:4])])

    def answer(request: httpx.Request) -> httpx.Response:
        body = json.loads(request.content)
        return httpx.Response(200, json=S.anthropic_message(body["model"], next(texts)))

    run = tmp_path / "run"
    with respx.mock:
        respx.post("https://api.anthropic.com/v1/messages").mock(side_effect=answer)
        code, out, err = cli("audit", "anthropic:claude-haiku-4-5", "--reference-only",
                             "--out", str(run), "--corpora", "prose", "--per-corpus", "4",
                             "--max-tokens", "8", "--framings", "chat", "--min-tokens", "1")
    assert code == 0, err
    rows = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 4 and all(r["mode"] == "reference-only" for r in rows)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["mode"] == "reference-only" and manifest["ranking"]["key"] == "nll_ref"
    assert any("reference-only mode" in w for w in manifest["warnings"])
    ranked = [json.loads(x) for x in (run / "ranked.jsonl").read_text().splitlines()]
    assert len(ranked) == 4 and all(r["mode"] == "reference-only" for r in ranked)
    values = [r["nll_ref"] for r in ranked]
    assert values == sorted(values, reverse=True)   # most surprising to the reference first
    assert "REFERENCE-ONLY (degraded)" in out and "nll_ref" in out
    code, shown, _ = cli("show", str(run))
    assert code == 0 and "REFERENCE-ONLY (degraded)" in shown
    code, rescored, _ = cli("score", str(run), "--min-tokens", "1", "--quiet")
    assert code == 0 and "by nll_ref" in rescored   # a rescore keeps the only usable key
    code, _, err2 = cli("score", str(run), "--rank-by", "bpb_diff", "--quiet")
    assert code == 2 and "reference-only run" in err2
    assert KEY not in all_text(run) and KEY not in out and KEY not in err
