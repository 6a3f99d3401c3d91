"""Run directory: crash-safe appends, torn tails, latest row wins."""

from __future__ import annotations

import json

import pytest

from blackbox_audit.errors import ConfigError
from blackbox_audit.manifest import Manifest
from blackbox_audit.records import Completion
from blackbox_audit.redact import Redactor
from blackbox_audit.rundir import RunDir


def row(pid, framing="raw", **kw):
    return Completion(prefill_id=pid, corpus="prose", prefill="P", framing=framing, **kw)


def test_torn_last_line_loses_only_that_row(tmp_path):
    run = RunDir(tmp_path)
    run.append_completion(row("a", text=" x"))
    run.append_completion(row("b", text=" y"))
    run.close()
    with open(run.completions_path, "a") as fh:
        fh.write('{"prefill_id": "c", "corp')  # kill -9 mid-write
    assert set(RunDir(tmp_path).load_completions()) == {"a:raw", "b:raw"}
    run2 = RunDir(tmp_path)
    run2.append_completion(row("c", text=" z"))
    run2.close()
    assert set(RunDir(tmp_path).load_completions()) == {"a:raw", "b:raw", "c:raw"}
    assert all(json.loads(x) for x in run.completions_path.read_text().splitlines())


def test_a_later_answer_supersedes_a_failure_but_not_the_reverse(tmp_path):
    run = RunDir(tmp_path)
    run.append_completion(row("a", error="HTTP 503"))
    run.append_completion(row("a", text=" ok"))
    run.append_completion(row("b", text=" ok"))
    run.append_completion(row("b", error="timed out"))
    run.close()
    rows = RunDir(tmp_path).load_completions()
    assert rows["a:raw"].text == " ok" and rows["b:raw"].error is None


def test_damage_in_the_middle_is_a_clear_error(tmp_path):
    run = RunDir(tmp_path)
    run.append_completion(row("a"))
    run.close()
    text = run.completions_path.read_text()
    run.completions_path.write_text("garbage\n" + text)
    with pytest.raises(ConfigError, match="line 1"):
        RunDir(tmp_path).load_completions()


def test_manifest_is_redacted_and_atomic(tmp_path):
    secret = "my-very-secret-token-123"
    run = RunDir(tmp_path, Redactor([secret]))
    run.write_manifest(Manifest(status="done", warnings=[f"key={secret}"],
                                extra={"note": f"key={secret}", "n": 1}))
    assert secret not in run.manifest_path.read_text()
    back = run.read_manifest()
    assert back.extra["n"] == 1 and back.status == "done"   # unknown keys kept as they were
    assert not list(tmp_path.glob("*.tmp"))
