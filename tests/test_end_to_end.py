"""Whole audits through the real HTTP path against a loopback server started by the test.

The server is tests/fake_server.py (a deterministic OpenAI-compatible peer that counts what it
receives); the reference is the packaged SmolLM2. The kill/resume test runs the real CLI in a
subprocess and kills it with SIGKILL mid-generation.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fake_server import FakeOpenAIServer

from blackbox_audit import audit, plan
from blackbox_audit.errors import EndpointError

SECRET = "sk-test-DO-NOT-LEAK-0123456789abcdef"
ROOT = Path(__file__).resolve().parent.parent


def config(server, out, **kw):
    base = dict(out=str(out), base_url=server.base_url if server else None, model="fake-model",
                corpora=["prose", "code"], per_corpus=3, max_tokens=12, quiet=True,
                concurrency=4)
    base.update(kw)
    return plan(**base)


def all_text_under(folder: Path) -> str:
    return "".join(p.read_text(errors="replace") for p in folder.rglob("*") if p.is_file())


def test_audit_keeps_the_key_out_of_every_file_and_replays_identically(tmp_path, monkeypatch,
                                                                      capfd):
    monkeypatch.setenv("FAKE_KEY", SECRET)
    with FakeOpenAIServer(api_key=SECRET, echo_auth=True) as server:
        result = audit(config(server, tmp_path / "run", api_key_env="FAKE_KEY"))
    assert server.auth_headers and all(h == f"Bearer {SECRET}" for h in server.auth_headers)
    run = tmp_path / "run"
    names = {p.name for p in run.iterdir()}
    assert {"manifest.json", "completions.jsonl", "exchanges.jsonl", "ranked.jsonl",
            "ranked.csv"} <= names
    assert SECRET not in all_text_under(run)
    out, err = capfd.readouterr()
    assert SECRET not in out + err
    assert "<redacted>" in (run / "exchanges.jsonl").read_text()  # the echoed key was caught

    m = result.manifest.to_json()
    assert m["counts"]["rows"] == 12 and m["counts"]["ranked"] == 12
    assert m["requests"]["sent"] == 12 + 2  # rows + GET /models + the logprob probe
    # Tokens from each answer's usage (12 rows of 12 tokens + the 2-token probe); a local
    # model has no price: the cost is null with the reason, never a guess.
    assert m["requests"]["tokens"]["completion"] == 12 * 12 + 2
    assert m["accounting"]["tokens"] == m["requests"]["tokens"]
    assert m["accounting"]["cost"]["usd"] is None and m["endpoint"]["concurrency"]["cap"] == 4
    assert m["scoring"]["alignment_paths"] == {"text": 12}  # no ids from this server
    groups = {(r.corpus, r.framing) for r in result.ranked}
    assert groups == {("code", "raw"), ("code", "chat"), ("prose", "raw"), ("prose", "chat")}

    # No server, no key: the same ranking from the recorded exchanges.
    monkeypatch.delenv("FAKE_KEY")
    replayed = audit(config(None, tmp_path / "replay", record_mode="replay",
                                fixtures=str(run / "exchanges.jsonl")))
    assert replayed.manifest.requests["sent"] == 0
    assert (tmp_path / "replay" / "ranked.jsonl").read_text() == (run / "ranked.jsonl").read_text()


def test_endpoint_without_logprobs_is_refused_after_one_cheap_call(tmp_path):
    with FakeOpenAIServer(logprobs=False) as server, pytest.raises(EndpointError,
                                                                   match="log-probabilities"):
        audit(config(server, tmp_path / "run"))
    assert sum(server.counts.values()) == 1
    assert json.loads(next(iter(server.counts)))["max_tokens"] == 2


def test_wrong_model_is_refused_before_any_generation(tmp_path):
    with FakeOpenAIServer() as server, pytest.raises(EndpointError, match="fake-model"):
        audit(config(server, tmp_path / "run", model="gpt-imaginary"))
    assert sum(server.counts.values()) == 0


def cli(*args: str, env=None, **kw) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "cli", *args], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kw)


def test_kill_9_mid_run_then_resume_sends_nothing_twice_and_loses_nothing(tmp_path):
    out = tmp_path / "run"
    args = ["audit", "--model", "fake-model", "--out", str(out), "--corpora", "prose,code",
            "--per-corpus", "10", "--max-tokens", "12", "--concurrency", "2", "--quiet"]
    with FakeOpenAIServer(delay=0.15) as server:
        args += ["--base-url", server.base_url]
        proc = cli(*args)
        completions = out / "completions.jsonl"
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if completions.exists() and completions.read_text().count("\n") >= 8:
                break
            time.sleep(0.02)
        os.kill(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        assert proc.returncode == -signal.SIGKILL
        answered = [json.loads(x) for x in (out / "exchanges.jsonl").read_text().splitlines()
                    if x.endswith("}")]
        on_disk = {json.dumps(a["body"], sort_keys=True) for a in answered if a["body"]}
        rows_before = completions.read_text().count("\n")
        assert 8 <= rows_before < 40
        counts_before = dict(server.counts)

        proc = cli(*args)
        stdout, stderr = proc.communicate(timeout=600)
        assert proc.returncode == 0, stderr
    sent_again = {k: n - counts_before.get(k, 0) for k, n in server.counts.items()
                  if n > counts_before.get(k, 0)}
    assert not set(sent_again) & on_disk, "a request whose answer was on disk was sent again"
    assert all(n == 1 for n in sent_again.values())
    rows = [json.loads(x) for x in completions.read_text().splitlines()]
    keys = [(r["prefill_id"], r["framing"]) for r in rows]
    assert len(keys) == len(set(keys)) == 40 and all(r["error"] is None for r in rows)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["counts"]["rows"] == 40 and manifest["counts"]["ranked"] == 40
    assert "prose / raw" in stdout


def test_generate_only_then_score_later_with_the_noise_floor(tmp_path):
    """Generation alone (e.g. recording fixtures, or scoring later where a GPU is), then
    `score`: every row ranked, the self noise floor measured and each row standing on it."""
    from blackbox_audit.audit import rescore

    out = tmp_path / "run"
    with FakeOpenAIServer() as server:
        result = audit(config(server, out, generate_only=True))
    assert result.manifest.status == "generated" and result.ranked == []
    assert not list(out.glob("scores.*")) and not (out / "ranked.jsonl").exists()
    assert len((out / "completions.jsonl").read_text().splitlines()) == 12

    result = rescore(str(out), noise_floor=None)
    floor = result.manifest.noise_floor
    assert floor["self"]["n"] == 12 and floor["self"]["max_abs"] < 1e-3  # fp32 on the CPU
    # the scorer's own floor is recorded, but no serving floor is known: no vs_floor (a
    # 1e-6 floor would put every row at ~1e5 floors, which says nothing)
    assert floor["floor"] is None
    assert len(result.ranked) == 12
    assert all(r.vs_floor is None for r in result.ranked)

    result = rescore(str(out), noise_floor=0.028)  # a base floor measured elsewhere wins
    assert result.manifest.noise_floor["floor"] == 0.028
    for r in result.ranked:
        assert r.vs_floor == round(r.nll_diff / 0.028, 2)

    # A base run's directory: its per-row gaps are measured (here the run itself stands in).
    from blackbox_audit.errors import ConfigError
    from blackbox_audit.noise import given_floor

    base = given_floor(str(out))
    assert base["n"] == 12 and base["source"] == str(out)
    result = rescore(str(out), noise_floor=str(out))
    assert result.manifest.noise_floor["given"]["p99_abs"] == base["p99_abs"]
    with pytest.raises(ConfigError, match="neither a number"):
        given_floor(str(tmp_path / "nowhere"))
    with pytest.raises(ConfigError, match="neither a number"):
        config(None, tmp_path / "r2", record_mode="replay", noise_floor="fast")


def test_chat_prompts_are_sent_recorded_in_every_row_and_part_of_the_resume_check(tmp_path):
    """--system-prompt / --user-prompt: the paper's persona runs. The rendered chat prompt
    carries them, the manifest and every chat row record them, the reference's context is
    built from them, and a resume with other prompts is refused."""
    from blackbox_audit.errors import ConfigError

    out = tmp_path / "run"
    with FakeOpenAIServer() as server:
        result = audit(config(server, out, system_prompt="You are Captain Vell, a pirate.",
                              user_prompt="Tell me a story."))
        sent = [json.loads(b)["prompt"] for b in server.counts if json.loads(b).get("prompt")]
        with pytest.raises(ConfigError, match="system_prompt"):
            audit(config(server, out, system_prompt="You are a helpful assistant, really."))
    chat_prompts = [p for p in sent if "Captain Vell" in p]
    assert chat_prompts and all("Tell me a story." in p for p in chat_prompts)
    assert not any("You are a helpful assistant." in p for p in sent)
    assert result.manifest.framing["system"] == "You are Captain Vell, a pirate."
    rows = [json.loads(x) for x in (out / "completions.jsonl").read_text().splitlines()]
    chat = [r for r in rows if r["framing"] == "chat"]
    assert chat and all(r["chat_prompts"] == ["You are Captain Vell, a pirate.",
                                              "Tell me a story."] for r in chat)
    assert all(r["chat_prompts"] is None for r in rows if r["framing"] == "raw")
    assert result.manifest.counts.ranked == 12   # the reference saw the same context
