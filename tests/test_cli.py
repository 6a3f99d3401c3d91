"""The command line: help texts, and one-paragraph errors with exit codes (no tracebacks)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cli", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


def test_help_explains_every_command():
    top = run_cli("--help")
    assert top.returncode == 0 and "audit" in top.stdout and "exit codes" in top.stdout
    for command, flag in (("audit", "--replay"), ("score", "--reference"), ("show", "--top"),
                          ("eval", "--spec")):
        r = run_cli(command, "--help")
        assert r.returncode == 0 and flag in r.stdout, command


@pytest.mark.parametrize("args,code,phrase", [
    (["audit", "--model", "m", "--out", "{tmp}/r"], 2, "--base-url is required"),
    (["audit", "--model", "m", "--out", "{tmp}/r", "--base-url", "http://127.0.0.1:9/v1",
      "--framings", "poem"], 2, "Unknown framing"),
    (["audit", "--model", "m", "--out", "{tmp}/r", "--replay", "--fixtures",
      "{tmp}/missing.jsonl", "--per-corpus", "2"], 2, "needs recorded fixtures"),
    (["audit", "--model", "m", "--out", "{tmp}/r", "--replay", "--fixtures",
      "{tmp}/bad.jsonl", "--per-corpus", "2"], 4, "not a recorded exchange"),
    (["audit", "--model", "m", "--out", "{tmp}/r", "--base-url", "http://127.0.0.1:9/v1",
      "--api-key-env", "BLACKBOX_AUDIT_TEST_UNSET_KEY", "--per-corpus", "2"], 2,
     "BLACKBOX_AUDIT_TEST_UNSET_KEY"),
    (["audit", "--model", "m", "--out", "{tmp}/r", "--base-url", "http://127.0.0.1:9/v1",
      "--per-corpus", "2", "--timeout", "2"], 3, "Cannot reach"),
    (["audit", "--model", "m", "--out", "{tmp}/r", "--base-url", "http://127.0.0.1:9/v1",
      "--reference", "{tmp}/nope.gguf"], 6, "does not exist"),
    (["show", "{tmp}"], 2, "no ranked.jsonl"),
])
def test_bad_input_gets_one_paragraph_and_an_exit_code(tmp_path, args, code, phrase):
    (tmp_path / "bad.jsonl").write_text("{not json\n\n{}\n")
    r = run_cli(*[a.replace("{tmp}", str(tmp_path)) for a in args])
    assert r.returncode == code, r.stderr
    assert phrase in r.stderr.replace("\n", " ")
    assert "Traceback" not in r.stderr
