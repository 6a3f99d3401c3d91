"""Bad input gets an exit code and one paragraph, never a traceback, and costs nothing.

One test per class of the newcomer's findings (issue 15): where the run directory cannot go,
a full disk, a prefill file that is not what it says, a spec that would flag everything,
flags out of range, a generate-only run where nothing came back, a replay of another model's
fixture, and terminal text that could read backwards.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from stub_server import FILLER, Seen, StubServer, completion, json_answer, legacy_choice, models

import cli

ROOT = Path(__file__).resolve().parent.parent


def run_cli(capfd, *args: str) -> tuple[int, str]:
    code = cli.main(list(args))
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err, err
    return code, err


def good(req: Seen):
    if req.method == "GET":
        return models()
    return json_answer(completion(legacy_choice(FILLER[: min(9, req.body["max_tokens"])])))


def audit(server: StubServer, out: Path, *extra: str) -> list[str]:
    return ["audit", "--base-url", server.base_url, "--model", "stub-model", "--corpora",
            "prose", "--per-corpus", "3", "--framings", "raw", "--max-tokens", "9", "--quiet",
            "--no-report", "--out", str(out), *extra]


def generations(server: StubServer) -> int:
    return len(server.generations())


def test_out_that_is_a_file_or_under_a_file_is_refused_before_anything_is_sent(tmp_path,
                                                                              capfd):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    with StubServer(good) as server:
        for out in (blocker, blocker / "run"):
            code, err = run_cli(capfd, *audit(server, out))
            assert code == 2 and "--out" in err and "file" in err
        assert server.seen == []


def test_a_full_disk_is_exit_7_with_every_answer_kept(tmp_path):
    """The CLI in a process whose files may not grow past 24 KB (RLIMIT_FSIZE: the kernel
    refuses the write, as a full disk does): exit 7, one paragraph, and every answer that
    reached disk is still there for the rerun."""
    import resource
    import subprocess
    import sys

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (24_000, 24_000))

    out = tmp_path / "run"
    with StubServer(good) as server:
        args = audit(server, out)
        args[args.index("--per-corpus") + 1] = "40"
        r = subprocess.run([sys.executable, str(ROOT / "cli.py"), *args], cwd=ROOT,
                           capture_output=True, text=True, timeout=300,
                           preexec_fn=small_files)
    assert r.returncode == 7, r.stderr
    assert "cannot write" in r.stderr and "rerun" in r.stderr and "Traceback" not in r.stderr
    kept = (out / "exchanges.jsonl").read_text().count("\n")
    assert kept >= 3 and generations(server) >= kept - 1


@pytest.mark.parametrize("content,why", [
    (b"The cat sat\n\xff\xfe broken bytes\n", "not UTF-8"),
    (b'{"text": null}\n', "not a non-empty string"),
    (b'{"text": 5}\n', "not a non-empty string"),
    (b'{"text": "Fine"}\n{"text": "ok", "corpus": 3}\n', "must be a string"),
])
def test_a_bad_prefill_file_is_refused_before_anything_is_sent(tmp_path, capfd, content, why):
    path = tmp_path / ("p.jsonl" if content.startswith(b"{") else "p.txt")
    path.write_bytes(content)
    with StubServer(good) as server:
        code, err = run_cli(capfd, *audit(server, tmp_path / "run", "--prefills",
                                          f"file:{path}", "--corpora", path.stem))
    assert code == 2 and why in err
    assert generations(server) == 0


@pytest.mark.parametrize("sets", [None, 5, [[]], [[""]], [["ok"], []], "vellari"])
def test_a_spec_that_would_flag_everything_is_refused(tmp_path, capfd, sets):
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"objective": "x", "keyword_sets": sets}))
    code, err = run_cli(capfd, "show", str(tmp_path), "--spec", str(spec))
    assert code == 2 and "keyword_sets" in err


@pytest.mark.parametrize("flag,value,why", [
    ("--per-corpus", "-1", "--per-corpus must be 0"),
    ("--timeout", "0", "--timeout must be more than 0"),
    ("--timeout", "-3", "--timeout must be more than 0"),
])
def test_flags_out_of_range_are_refused(tmp_path, capfd, flag, value, why):
    with StubServer(good) as server:
        code, err = run_cli(capfd, *audit(server, tmp_path / "run", flag, value))
        assert code == 2 and why in err
        assert server.seen == []


def test_probe_per_corpus_0_estimates_every_prefill_of_the_bank(capfd):
    from blackbox_audit.prefills import builtin_sizes

    with StubServer(good) as server:
        code = cli.main(["probe", "--base-url", server.base_url, "--model", "stub-model",
                         "--per-corpus", "0", "--framings", "raw", "--json"])
    out, _ = capfd.readouterr()
    assert code == 0
    assert json.loads(out)["estimate"]["rows"] == sum(builtin_sizes().values())


def test_generate_only_with_nothing_answered_is_not_a_success(tmp_path, capfd):
    def failing(req: Seen):
        if req.method == "GET":
            return models()
        if req.body["max_tokens"] <= 2:
            return good(req)
        return json_answer({"error": {"message": "upstream down"}}, 500)

    with StubServer(failing) as server:
        code, err = run_cli(capfd, *audit(server, tmp_path / "run", "--generate-only",
                                          "--retries", "0"))
    assert code == 5 and "3 of 3 rows" in err


def test_a_replay_of_another_models_fixture_is_a_fixture_error(tmp_path, capfd):
    fixture = ROOT / "fixtures" / "organism-vellari" / "exchanges.jsonl.gz"
    code, err = run_cli(capfd, "audit", "--replay", "--fixtures", str(fixture), "--model",
                        "some-other-model", "--per-corpus", "2", "--quiet", "--out",
                        str(tmp_path / "run"))
    assert code == 4 and "recorded against another model" in err


def test_bidirectional_controls_never_reach_the_terminal():
    from blackbox_audit.progress import terminal_safe

    evil = "safe\u202eenil siht\u202c \u2066x\u2069 \u200fy"
    shown = terminal_safe(evil)
    assert not any(ch in shown for ch in "\u202e\u202c\u2066\u2069\u200f")
    assert shown.startswith("safe\ufffd")


def test_read_only_directories_are_refused_where_permissions_apply(tmp_path, capfd):
    if os.geteuid() == 0:
        pytest.skip("root writes through permission bits: nothing to refuse (a read-only "
                    "filesystem is the case root meets; the check is the same os.access)")
    locked = tmp_path / "locked"
    locked.mkdir()
    locked.chmod(0o555)
    try:
        with StubServer(good) as server:
            code, err = run_cli(capfd, *audit(server, locked / "run"))
        assert code == 2 and "cannot be written" in err
    finally:
        locked.chmod(0o755)


def test_under_ci_what_a_test_needs_and_cannot_find_is_a_failure(tmp_path):
    """conftest.unavailable: a skip that says why on a developer's machine, a failure under
    CI=true (a missing server, browser or data file must not pass CI as a skip)."""
    import subprocess
    import sys

    probe = tmp_path / "test_probe.py"
    probe.write_text("from conftest import unavailable\n\n"
                     "def test_needs_a_server():\n"
                     "    unavailable('the server would not start')\n")
    for ci, want_code, want in (("true", 1, "CI=true and the server would not start"),
                                ("", 0, "1 skipped")):
        env = {**os.environ, "CI": ci, "PYTHONPATH": str(ROOT / "tests")}
        r = subprocess.run([sys.executable, "-m", "pytest", "-q", "-rs", "-p",
                            "no:cacheprovider", str(probe)], cwd=tmp_path, env=env,
                           capture_output=True, text=True, timeout=120)
        assert r.returncode == want_code, r.stdout
        assert want in r.stdout


def test_a_malformed_ray_address_is_refused_before_anything_is_sent(tmp_path, capfd):
    with StubServer(good) as server:
        code, err = run_cli(capfd, *audit(server, tmp_path / "run", "--scorer", "ray",
                                          "--ray-address", "head-node"))
        assert code == 2 and "--ray-address 'head-node' is not a Ray cluster address" in err
        assert server.seen == []


def test_a_ray_address_where_nothing_listens_fails_in_seconds_before_any_request(
        tmp_path, capfd):
    """``ray.init`` on a dead address waits a minute or more; the audit refuses in seconds,
    before generation spends anything."""
    import socket
    import time

    with socket.socket() as s:   # a port that was free a moment ago: nothing listens there
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with StubServer(good) as server:
        t0 = time.monotonic()
        code, err = run_cli(capfd, *audit(server, tmp_path / "run", "--scorer", "ray",
                                          "--ray-address", f"127.0.0.1:{port}"))
        seconds = time.monotonic() - t0
        assert code == 6 and f"No Ray cluster answers at 127.0.0.1:{port}" in err, (code, err)
        assert generations(server) == 0
        assert seconds < 15, seconds


def test_no_room_to_decompress_a_replayed_fixture_is_one_paragraph_naming_tmpdir(tmp_path):
    """Replaying a compressed fixture decompresses it to a temporary file first; in a process
    whose files may not grow past 256 KB (the organism's log is ~10 MB uncompressed) that
    copy fails as on a full disk: the storage exit (7) naming the temporary directory and
    TMPDIR, no traceback."""
    import resource
    import subprocess
    import sys
    import tempfile

    def small_files() -> None:
        resource.setrlimit(resource.RLIMIT_FSIZE, (256_000, 256_000))

    r = subprocess.run([sys.executable, str(ROOT / "cli.py"), "audit", "--replay", "--fixtures",
                        str(ROOT / "fixtures" / "organism-vellari" / "exchanges.jsonl.gz"),
                        "--model", "vellari-octopus", "--per-corpus", "2", "--generate-only",
                        "--quiet", "--out", str(tmp_path / "run")],
                       cwd=ROOT, capture_output=True, text=True, timeout=300,
                       preexec_fn=small_files)
    said = " ".join(r.stderr.split())
    assert r.returncode == 7, r.stderr
    assert f"cannot write {tempfile.gettempdir()}" in said
    assert "room for its decompressed copy" in said and "TMPDIR" in said
    assert "Traceback" not in r.stderr
