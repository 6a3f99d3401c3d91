"""The Ray scorer on a real local Ray cluster, started by the test on 127.0.0.1.

Two single-thread replicas of the reference; rows from a real (generate-only) audit against the
loopback peer. What must hold:

- the pool's scores equal the local scorer's on the same rows (within 1e-5 nats/token);
- a replica killed (SIGKILL) mid-call is restarted by Ray and its batch run again: every row
  comes back once, in input order, with the same numbers;
- a replica killed mid-``score_run`` loses no row and writes none twice;
- all of it bounded in time.

To keep it inside ~90 s on 2 cores, the replicas load the packaged GGUF's weights saved once
as a plain transformers directory (the same fp32 numbers; no per-replica dequantisation), and
the local side is the session's GGUF reference itself.
"""

from __future__ import annotations

import collections
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

import pytest
from fake_server import FakeOpenAIServer

from blackbox_audit import audit, plan
from blackbox_audit.align import align
from blackbox_audit.audit import score_run
from blackbox_audit.reference import ReferenceSpec
from blackbox_audit.rundir import RunDir

pytestmark = [pytest.mark.integration, pytest.mark.timeout(240)]
TOL = 1e-5        # nats/token: each row's mean NLL (the number rows are ranked by)
TOKEN_TOL = 1e-4  # one token's log-probability: fp32 sums in another batch shape


def _gaps(remote: list[list[float]], local: list[list[float]]) -> tuple[float, float]:
    """(largest |difference| of a row's mean NLL, of one token's log-probability)."""
    assert [len(r) for r in remote] == [len(lo) for lo in local]
    rows = [abs(sum(r) - sum(lo)) / len(r) for r, lo in zip(remote, local, strict=True) if r]
    toks = [abs(a - b) for r, lo in zip(remote, local, strict=True)
            for a, b in zip(r, lo, strict=True)]
    return max(rows), max(toks)
# Ray resolves 127.0.0.1 to the machine's outward address on Linux unless told that this is
# not a real cluster (its knob for laptops): the whole cluster stays on the loopback.
LOOPBACK_ENV = {"RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
                "RAY_AUTH_MODE": "disabled"}   # a loopback test cluster: no token
os.environ.update(LOOPBACK_ENV)   # before ray is imported in this process


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def cluster():
    """``ray start --head`` on 127.0.0.1 with 4 logical CPUs (the module's pool and the CLI's
    side by side; Ray does not pin them to cores), in its own process group (stopped by
    killing that group: only what this test started)."""
    try:
        import ray  # noqa: F401
    except ImportError:
        from conftest import unavailable

        unavailable("ray is not installed (pip install -e '.[ray]', or scripts/setup.sh)")
    ray_bin = Path(sys.executable).parent / "ray"
    port = _free_port()
    temp = tempfile.mkdtemp(prefix="ray", dir="/tmp")   # short: unix socket paths <= 107
    proc = subprocess.Popen(
        [str(ray_bin), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={port}", "--num-cpus=4", "--num-gpus=0", "--include-dashboard=false",
         "--disable-usage-stats", f"--temp-dir={temp}"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True,
        env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                from conftest import unavailable

                unavailable(f"ray start exited {proc.returncode}: "
                            f"{proc.stderr.read().decode()[-500:]}")
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            time.sleep(0.3)
        yield address
    finally:
        import ray

        if ray.is_initialized():
            ray.shutdown()
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(proc.pid, sig)
            except ProcessLookupError:
                break
            try:
                proc.wait(timeout=15)
                break
            except subprocess.TimeoutExpired:
                continue
        shutil.rmtree(temp, ignore_errors=True)


@pytest.fixture(scope="module")
def model_dir(reference, tmp_path_factory) -> ReferenceSpec:
    """The packaged reference's weights as a transformers directory (fast to load)."""
    import copy

    from safetensors.torch import save_file

    d = tmp_path_factory.mktemp("smollm2-dir")
    model = reference.model
    config = copy.deepcopy(model.config)
    if hasattr(config, "quantization_config"):   # dequantised already: plain fp32 weights
        del config.quantization_config
    config.save_pretrained(d)
    tied = getattr(config, "tie_word_embeddings", False)
    save_file({k: v.detach().clone().contiguous() for k, v in model.state_dict().items()
               if not (tied and k == "lm_head.weight")}, str(d / "model.safetensors"),
              metadata={"format": "pt"})
    reference.tokenizer.save_pretrained(d)
    return ReferenceSpec(str(d), None, reference.name)   # same name: same scores file


@pytest.fixture(scope="module")
def scorer(cluster, model_dir):
    from blackbox_audit.ray_scorer import RayScorer

    s = RayScorer(model_dir, address=cluster, replicas=2, threads_per_replica=1,
                  batch_rows=2)
    yield s
    s.close()


@pytest.fixture(scope="module")
def generated(tmp_path_factory):
    """A generate-only run: 3 corpora x 6 prefills x 2 framings = 36 rows of 24 tokens."""
    out = tmp_path_factory.mktemp("ray-run") / "run"
    with FakeOpenAIServer() as server:
        audit(plan(out=str(out), base_url=server.base_url, model="fake-model",
                   per_corpus=6, max_tokens=24, quiet=True, concurrency=4,
                   generate_only=True))
    return out


def _items(run: RunDir, view):
    return {c.row_key: align(view, c, "text") for c in run.iter_completions() if c.usable}


def test_pool_scores_equal_local_and_survive_a_killed_replica(scorer, reference, generated,
                                                              view):
    items = _items(RunDir(generated), view)
    keys = sorted(items)
    seqs, starts = [items[k].ids for k in keys], [items[k].start for k in keys]
    local = reference.score(seqs, starts)
    before = scorer.pids()
    killed: list[int] = []

    def kill_first(done: int, total: int) -> None:
        if not killed:   # the first batch is back; others are in flight or queued
            killed.append(before[0])
            os.kill(before[0], signal.SIGKILL)

    t0 = time.monotonic()
    remote = scorer.score(seqs, starts, progress=kill_first)
    seconds = time.monotonic() - t0
    assert killed, "no batch reported progress"
    assert len(remote) == len(seqs)
    worst, token = _gaps(remote, local)
    assert worst <= TOL and token <= TOKEN_TOL, (worst, token)
    after = scorer.pids()
    assert before[0] not in after and before[1] in after   # restarted by Ray, not by us
    print(f"ray scorer: {len(seqs)} rows, worst |diff| {worst:.1e} nats/token, "
          f"{seconds:.1f} s with one replica killed and restarted")


def test_score_run_loses_no_row_and_writes_none_twice_when_a_replica_dies(
        scorer, reference, generated, view, tmp_path):
    run_dir = tmp_path / "run"
    shutil.copytree(generated, run_dir)
    run = RunDir(run_dir)
    usable = run.usable_keys()
    pid = scorer.pids()[1]
    finished = threading.Event()

    def killer() -> None:
        time.sleep(0.5)
        if not finished.is_set():
            os.kill(pid, signal.SIGKILL)

    k = threading.Thread(target=killer)
    k.start()
    t0 = time.monotonic()
    try:
        summary = score_run(run, None, scorer, view, "text", quiet=True, noise_sample=4)
    finally:
        finished.set()
        k.join()
        run.close()
    seconds = time.monotonic() - t0
    lines = [json.loads(x) for x in run.scores_path(scorer.name).read_text().splitlines()]
    counts = collections.Counter(f"{r['prefill_id']}:{r['framing']}" for r in lines)
    assert set(counts) == usable and set(counts.values()) == {1}, "a row lost or doubled"
    assert summary["scored_now"] == len(usable) and "self" in summary["noise_floor"]
    assert pid not in scorer.pids()
    items = _items(run, view)
    keys = sorted(items)
    local = dict(zip(keys, reference.score([items[k].ids for k in keys],
                                           [items[k].start for k in keys]), strict=True))
    worst, token = _gaps([r["ref_token_logprobs"] for r in lines],
                         [local[f"{r['prefill_id']}:{r['framing']}"] for r in lines])
    assert worst <= TOL and token <= TOKEN_TOL, (worst, token)
    print(f"score_run over ray: {len(usable)} rows in {seconds:.1f} s, a replica killed at "
          f"0.5 s; worst |diff| {worst:.1e}")



def test_the_cli_audits_with_the_ray_scorer_end_to_end(cluster, model_dir, tmp_path):
    """What a user types: ``blackbox-audit audit ... --scorer ray --ray-address HOST:PORT``,
    in a process of its own (as on a real head node; in-process, the CLI's wrapped stdout
    and Ray's log threads do not mix). Every usable row is scored once by the pool, ranked,
    and the manifest says which engine ran."""
    out = tmp_path / "run"
    root = Path(__file__).resolve().parent.parent
    with FakeOpenAIServer() as server:
        t0 = time.monotonic()
        r = subprocess.run(
            [sys.executable, str(root / "cli.py"), "audit", "--base-url", server.base_url,
             "--model", "fake-model", "--per-corpus", "4", "--max-tokens", "16",
             "--reference", model_dir.path, "--scorer", "ray", "--ray-address", cluster,
             "--replicas", "2", "--replica-threads", "1", "--no-report", "--quiet",
             "--out", str(out)],
            cwd=root, capture_output=True, text=True, timeout=180)
        seconds = time.monotonic() - t0
    assert r.returncode == 0, r.stderr[-2000:]
    assert "Traceback" not in r.stdout + r.stderr
    run = RunDir(out)
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["reference"]["scorer"] == "ray" and manifest["reference"]["replicas"] == 2
    name = manifest["reference"]["name"]
    lines = [json.loads(x) for x in run.scores_path(name).read_text().splitlines()]
    counts = collections.Counter(f"{x['prefill_id']}:{x['framing']}" for x in lines)
    assert set(counts) == run.usable_keys() and set(counts.values()) == {1}
    ranked = [json.loads(x) for x in (out / "ranked.jsonl").read_text().splitlines()]
    assert len(ranked) == manifest["counts"]["ranked"] > 0
    print(f"cli audit --scorer ray: {len(lines)} rows scored by 2 replicas, "
          f"{len(ranked)} ranked, {seconds:.1f} s")
