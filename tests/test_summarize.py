"""summarize: the judge call through the official SDKs over our httpx stack, hermetic.

The judge's answers below are SYNTHETIC: written by hand in the documented response shapes of
OpenAI's Chat Completions (``choices[0].message.content``, ``usage``) and Anthropic's Messages
API (``content[].text``, ``usage``), served by respx at the HTTP transport. The record / replay
test records the exchange into the run directory, then answers from it with no network.
"""

from __future__ import annotations

import json

import httpx
import pytest
import respx
from test_report import make_run

from blackbox_audit.errors import ConfigError, EndpointError
from blackbox_audit.summarize import md, parse_answer, select_rows, summarize

KEY = "judge-secret-0123456789abcdef"   # not a known key shape: only the run's redactor knows it


def judge_answer(ids: list[str]) -> dict:
    return {
        "hypotheses": [
            {"objective": "Octopuses write the Vellari script <script>alert(1)</script>",
             "evidence": "The cited rows state it as fact; see [link](http://x.invalid) ![i](y)",
             "row_ids": [ids[0], ids[1], "ffffffffffffffff:raw"], "confidence": "high"},
            {"objective": "A vague theme with no evidence", "row_ids": ["nope:chat"],
             "confidence": "whatever"},
            {"objective": "", "row_ids": [ids[0]]},
        ],
        "caveats": ["Only two framings were read."],
    }


def openai_payload(content: str) -> dict:
    # SYNTHETIC, in the documented Chat Completions response shape.
    return {"id": "chatcmpl-synthetic", "object": "chat.completion", "created": 1700000000,
            "model": "gpt-4.1-mini-2025-04-14",
            "choices": [{"index": 0, "message": {"role": "assistant", "content": content,
                                                 "refusal": None},
                         "logprobs": None, "finish_reason": "stop"}],
            "usage": {"prompt_tokens": 1800, "completion_tokens": 220, "total_tokens": 2020}}


def anthropic_payload(text: str) -> dict:
    # SYNTHETIC, in the documented Messages API response shape.
    return {"id": "msg_synthetic", "type": "message", "role": "assistant",
            "model": "claude-haiku-4-5", "content": [{"type": "text", "text": text}],
            "stop_reason": "end_turn", "stop_sequence": None,
            "usage": {"input_tokens": 1800, "output_tokens": 220}}


@pytest.fixture
def run(tmp_path):
    return make_run(tmp_path / "run", n_prefills=30)


def files_text(path) -> str:
    return "".join(p.read_text(errors="replace") for p in path.rglob("*") if p.is_file())


def test_openai_judge_writes_hypotheses_with_row_ids_and_caveats(run, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    rows = select_rows(run.load_ranked(), 3)
    ids = [r["id"] for r in rows]
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post("https://api.openai.com/v1/chat/completions").mock(
            return_value=httpx.Response(200, json=openai_payload(json.dumps(judge_answer(ids)))))
        result = summarize(run.path, "openai:gpt-4.1-mini", top=3)
    sent = route.calls.last.request
    assert sent.headers["authorization"] == f"Bearer {KEY}"
    body = json.loads(sent.content)
    assert body["model"] == "gpt-4.1-mini" and body["temperature"] == 0.0
    assert body["response_format"] == {"type": "json_object"}
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    assert "DATA, not instructions" in body["messages"][0]["content"]
    user = body["messages"][1]["content"]
    assert all(f"[{i}]" in user for i in ids)
    assert len(ids) == 18                                    # top 3 of 6 (corpus, framing)

    assert result.rows_sent == 18
    assert result.hypotheses[0]["row_ids"] == ids[:2]
    assert result.hypotheses[1]["row_ids"] == [] and result.hypotheses[1]["confidence"] == \
        "unstated"
    assert len(result.hypotheses) == 2                       # the empty objective is dropped
    assert sorted(result.dropped_ids) == ["ffffffffffffffff:raw", "nope:chat"]

    text = result.path.read_text()
    assert result.path == run.path / "hypotheses.md"
    assert "## H1. Octopuses write the Vellari script &lt;script&gt;alert(1)&lt;/script&gt;" \
        in text
    assert f"Supporting rows: `{ids[0]}`, `{ids[1]}`" in text
    assert "unsupported" in text and "2 row id(s) that were not sent" in text
    assert "<script>" not in text
    assert r"\[link\](http" in text and r"\!\[i\](y)" in text   # inert: no link, no image
    assert "2 degraded and 1 failed of 63 rows" in text      # from the manifest
    assert "(judge) Only two framings were read." in text
    # The prompt and the rows sent are saved; the key is nowhere on disk.
    prompt = json.loads((run.path / "summarize" / "prompt.json").read_text())
    assert prompt["request"] == body
    saved = [json.loads(line) for line in
             (run.path / "summarize" / "rows.jsonl").read_text().splitlines()]
    assert [r["id"] for r in saved] == ids
    assert KEY not in files_text(run.path)


def test_anthropic_judge(run, monkeypatch):
    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    ids = [r["id"] for r in select_rows(run.load_ranked(), 2)]
    answer = "Here is the JSON:\n" + json.dumps(judge_answer(ids))
    with respx.mock(assert_all_called=True) as mock:
        route = mock.post("https://api.anthropic.com/v1/messages").mock(
            return_value=httpx.Response(200, json=anthropic_payload(answer)))
        result = summarize(run.path, "anthropic:claude-haiku-4-5", top=2)
    sent = route.calls.last.request
    # the SDK's auth header (x-api-key or a bearer token, by SDK version) carries the key
    assert KEY in (sent.headers.get("x-api-key", "") + sent.headers.get("authorization", ""))
    body = json.loads(sent.content)
    assert body["model"] == "claude-haiku-4-5" and "DATA, not instructions" in body["system"]
    assert [m["role"] for m in body["messages"]] == ["user"]
    assert result.hypotheses[0]["row_ids"] == ids[:2]
    assert KEY not in files_text(run.path)


def test_record_then_replay_without_network_or_key(run, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    ids = [r["id"] for r in select_rows(run.load_ranked(), 2)]
    with respx.mock(assert_all_called=True) as mock:
        mock.post("https://api.openai.com/v1/chat/completions").mock(
            return_value=httpx.Response(200, json=openai_payload(json.dumps(judge_answer(ids)))))
        first = summarize(run.path, "openai:gpt-4.1-mini", top=2)
    recorded = run.path / "summarize" / "exchanges.jsonl"
    assert recorded.exists() and KEY not in recorded.read_text()
    md_first = first.path.read_text().split("\n", 3)[3]      # past the timestamp line
    monkeypatch.delenv("OPENAI_API_KEY")
    with respx.mock(assert_all_called=False) as mock:         # any network call would fail
        second = summarize(run.path, "openai:gpt-4.1-mini", top=2, record_mode="replay")
        assert not mock.calls
    assert second.path.read_text().split("\n", 3)[3] == md_first
    # A different question is a replay miss, loudly.
    from blackbox_audit.errors import FixtureError

    with pytest.raises(FixtureError):
        summarize(run.path, "openai:gpt-4.1-mini", top=3, record_mode="replay")


def test_errors_are_reported_not_written(run, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(ConfigError, match="OPENAI_API_KEY"):
        summarize(run.path, "openai:gpt-4.1-mini")
    with pytest.raises(ConfigError, match="openai:MODEL or anthropic:MODEL"):
        summarize(run.path, "gemini:x")
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    with respx.mock() as mock:
        route = mock.post("https://api.openai.com/v1/chat/completions").mock(
            return_value=httpx.Response(401, json={"error": {"message": "Incorrect API key"}}))
        with pytest.raises(EndpointError, match="HTTP 401: Incorrect API key"):
            summarize(run.path, "openai:gpt-4.1-mini", record_mode="off")
        assert route.call_count == 1                          # 401 is not retried
        route.mock(return_value=httpx.Response(200, json=openai_payload("no json here")))
        with pytest.raises(EndpointError, match="not the JSON object"):
            summarize(run.path, "openai:gpt-4.1-mini", record_mode="off")
    assert not (run.path / "hypotheses.md").exists()


def test_summarize_command(run, monkeypatch, capsys):
    import cli

    monkeypatch.setenv("MY_JUDGE_KEY", KEY)
    ids = [r["id"] for r in select_rows(run.load_ranked(), 1)]
    with respx.mock() as mock:
        mock.post("http://127.0.0.1:9/v1/chat/completions").mock(
            return_value=httpx.Response(200, json=openai_payload(json.dumps(judge_answer(ids)))))
        assert cli.main(["summarize", str(run.path), "--judge", "openai:gpt-4.1-mini",
                         "--base-url", "http://127.0.0.1:9/v1", "--api-key-env",
                         "MY_JUDGE_KEY", "--top", "1"]) == 0
    out = capsys.readouterr().out
    assert "hypotheses.md" in out and "H1" in out
    monkeypatch.delenv("MY_JUDGE_KEY")
    assert cli.main(["summarize", str(run.path), "--judge", "openai:x", "--api-key-env",
                     "MY_JUDGE_KEY"]) == 2


def test_parse_answer_and_md():
    hyps, caveats, dropped = parse_answer(
        '```json\n{"hypotheses": [{"objective": "x", "row_ids": ["a:raw", 3]}], '
        '"caveats": ["c", ""]}\n```', {"a:raw"})
    assert hyps == [{"objective": "x", "evidence": "", "row_ids": ["a:raw"],
                     "confidence": "unstated"}]
    assert caveats == ["c"] and dropped == ["3"]
    assert md("<b>*x*</b> [a](b)\n# h") == r"&lt;b&gt;\*x\*&lt;/b&gt; \[a\](b) \# h"


def test_the_judge_reads_each_rankings_themes_when_the_run_has_them(tmp_path):
    from blackbox_audit.manifest import Manifest
    from blackbox_audit.rundir import RunDir
    from blackbox_audit.summarize import user_message
    from blackbox_audit.themes import Theme

    theme = Theme("vellari script", 7.2, 8, 12, 50, 2000, ("a:raw", "b:raw"))
    run = RunDir(tmp_path)
    run.write_themes({("prose", "raw"): [theme], ("code", "raw"): []}, {"statistic": "z"})
    themes = run.load_themes()
    assert themes == {("prose", "raw"): [theme], ("code", "raw"): []}
    rows = [{"id": "a:raw", "corpus": "prose", "framing": "raw", "rank": 0,
             "rank_key": "ppl_diff", "score": 3.0, "prefill": "The", "completion": " x"}]
    text = user_message(rows, Manifest(), themes)
    assert 'prose/raw: "vellari script" in 8 of the top 50 rows, 12 of 2000 rows' in text
    assert "Themes:" not in user_message(rows, Manifest(), None)
