"""verify's wiring, hermetic (blackbox_audit/verifier.py, echo.py, ReferenceModel.inspect):
the claimed model's extra numbers agree with its scores, the prompt set's two halves, the
endpoint's top-k named by id, echo vs generation from the documented wire shapes (respx for
HTTP), and clear errors for bad input. The statistics: tests/test_verify_stats.py; real
servers: tests/test_verify_llama.py."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import httpx
import provider_shapes as S
import pytest
import respx

from blackbox_audit.records import Completion, GenerationRequest, Prefill
from blackbox_audit.verifier import (
    PromptSet,
    Vocabulary,
    is_calibration,
    prompt_order,
    served_tokens,
    verify_plan,
)
from blackbox_audit.verify_stats import check_echo_consistency

BASE = "http://127.0.0.1:9/v1"
FIXTURE = Path(__file__).resolve().parent.parent / "fixtures" / "verify-smollm2"


def cli(*args: str) -> tuple[int, str, str]:
    import cli as entry

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = entry.main(list(args))
    return code, out.getvalue(), " ".join(err.getvalue().split())  # one paragraph, unwrapped


# -- the claimed model's view --------------------------------------------------------------
def test_inspect_agrees_with_score_and_ranks_by_the_full_vocabulary(reference, tokenizer):
    seqs = [tokenizer("The feud between the two houses").input_ids,
            tokenizer("def main():\n    return").input_ids, [1, 9, 9]]
    starts = [3, 2, 1]
    extra = [[[11, 12]] * (len(s) - st) for s, st in zip(seqs, starts, strict=True)]
    extra[2] = [[], [5]]
    scores = reference.score(seqs, starts)
    views = reference.inspect(seqs, starts, k=4, extra=extra)
    for sc, vs, seq, st in zip(scores, views, seqs, starts, strict=True):
        assert len(vs) == len(seq) - st
        for x, v in zip(sc, vs, strict=True):
            assert x == v.logprob                      # the same numbers as score()
            assert len(v.top) == 4 and v.top[0][1] >= v.top[-1][1]
            assert (v.rank == 0) == (v.logprob >= v.top[0][1])
            assert v.rank >= sum(1 for _, lp in v.top if lp > v.logprob)
            assert all(lp <= 0 for _, lp in (*v.top, *v.extra))
    assert [len(v.extra) for v in views[2]] == [0, 1] and views[2][1].extra[0][0] == 5
    # batching does not change anything: one at a time gives the same views
    alone = [reference.inspect([s], [st], k=4, extra=[e])[0]
             for s, st, e in zip(seqs, starts, extra, strict=True)]
    for a, b in zip(alone, views, strict=True):
        for x, y in zip(a, b, strict=True):
            assert x.rank == y.rank and math.isclose(x.logprob, y.logprob, abs_tol=1e-5)
    with pytest.raises(ValueError, match="extra ids"):
        reference.inspect([seqs[0]], [3], extra=[[[1]]])


# -- the prompt set ---------------------------------------------------------------------------
def test_the_two_halves_are_disjoint_stable_and_shuffled():
    reqs = [GenerationRequest(Prefill.make("prose", f"text {i}"), "raw", 8, 5, prompt=f"t{i}")
            for i in range(200)]
    ps = PromptSet()
    cal = prompt_order(reqs, ps, True, 0)
    judged = prompt_order(reqs, ps, False, 0)
    assert {r.row_key for r in cal}.isdisjoint({r.row_key for r in judged})
    assert len(cal) + len(judged) == 200 and 70 < len(cal) < 130
    assert [r.row_key for r in judged] == [r.row_key for r in prompt_order(reqs, ps, False, 0)]
    assert [r.row_key for r in judged] != [r.row_key for r in prompt_order(reqs, ps, False, 1)]
    assert sorted(r.row_key for r in judged) == sorted(
        r.row_key for r in prompt_order(reqs, ps, False, 1))
    # the halves depend on the version only, not on the order seed
    assert all(is_calibration(ps.version, r.prefill.id) for r in cal)


def test_the_endpoints_top_k_is_named_by_id(view, tokenizer):
    ids = tokenizer(" the cat", add_special_tokens=False).input_ids
    c = Completion(prefill_id="p", corpus="prose", prefill="x", framing="raw", text=" the cat",
                   tokens=[" the", " cat"], token_ids=ids, logprobs=[-0.1, -0.2],
                   top_logprobs=[[[" the", -0.1], [" a", -2.0], [" the", -3.0]],
                                 [[" cat", -0.2], ["\ufffd", -4.0], ["\ufffd", -5.0]]])
    st = served_tokens(c, Vocabulary(view))
    a = tokenizer(" a", add_special_tokens=False).input_ids[0]
    assert [s.id for s in st] == ids
    assert st[0].top == ((ids[0], -0.1), (a, -2.0))        # a repeated id counts once
    assert st[1].top == ((ids[1], -0.2),)                  # split characters name no id


# -- echo vs generation ---------------------------------------------------------------------
PROMPT = [("The", None), (" feud", -9.12), (" between", -2.31)]
GEN = [(" two", -0.61), (" rival", -1.08)]
GEN_IDS = [827, 13311]


def _row() -> tuple[GenerationRequest, Completion]:
    p = Prefill.make("prose", "The feud between")
    r = GenerationRequest(p, "raw", 2, 5, prompt=p.text)
    c = Completion(prefill_id=p.id, corpus="prose", prefill=p.text, framing="raw",
                   text=" two rival", tokens=[t for t, _ in GEN], token_ids=GEN_IDS,
                   logprobs=[v for _, v in GEN], prompt=p.text)
    return r, c


def _echo_answer(shape: str, tail_logprobs: list[float]):
    pieces = [*PROMPT, *zip([t for t, _ in GEN], tail_logprobs, strict=True)]
    ids = [504, 19738, 1908, *GEN_IDS]
    answer = S.openai_legacy("m", "", [(".", -0.3)], ids=[30])
    if shape == "vllm":
        return S.vllm_prompt_logprobs(answer, pieces, ids)
    if shape == "together":
        return S.together_echo(answer, pieces, ids)
    text = "".join(t for t, _ in pieces)   # offsets of the generated token after it
    return S.legacy_echo(S.openai_legacy("m", text, [(".", -0.3)]), pieces)


@pytest.mark.parametrize("shape", ["vllm", "together", "legacy"])
def test_echo_tail_pairs_with_the_generation(shape):
    from blackbox_audit.echo import echoed_tail, pair_with

    r, c = _row()
    prompt = r.prompt + c.text
    honest = echoed_tail(_echo_answer(shape, [-0.62, -1.07]), prompt, 2)
    assert [lp for _, _, lp in honest] == [-0.62, -1.07]
    check = check_echo_consistency([pair_with(c, honest)])
    assert check.passed and check.n_checked == 2
    # generation conditioned on something the echo did not see: the numbers part
    shifted = echoed_tail(_echo_answer(shape, [-2.4, -0.2]), prompt, 2)
    check = check_echo_consistency([pair_with(c, shifted)])
    assert check.passed is False and check.n_failed == 2
    assert echoed_tail(S.openai_legacy("m", "", [(".", -0.3)]), prompt, 2) is None


@respx.mock
def test_echo_requests_go_through_the_transport(tmp_path):
    """The echo check's calls: prompt + completion sent back with vLLM's prompt_logprobs;
    honest and injected answers from the documented shape."""
    import asyncio

    from blackbox_audit.echo import echo_pairs

    respx.get(f"{BASE}/models").respond(200, json=S.models_list("m", "vllm"))
    route = respx.post(f"{BASE}/completions").mock(side_effect=[
        httpx.Response(200, json=_echo_answer("vllm", [-0.61, -1.08])),
        httpx.Response(200, json=_echo_answer("vllm", [-3.0, -0.1]))])
    vp = verify_plan(out=tmp_path / "run", target="vllm:m", base_url=BASE, noise_floor=0.1,
                     record_mode="off", quiet=True)
    from blackbox_audit.plan import mutable_parts

    assert mutable_parts(vp) == []          # resolved once, frozen all the way down
    rows = [_row(), _row()]
    pairs = asyncio.run(echo_pairs(vp.audit.endpoint, vp.audit.generation, rows))
    sent = json.loads(route.calls[0].request.content)
    assert sent["prompt"] == "The feud between two rival" and sent["max_tokens"] == 1
    assert sent.get("prompt_logprobs") is not None          # asked for the echo
    assert check_echo_consistency(pairs[:1]).passed
    bad = check_echo_consistency(pairs)
    assert bad.passed is False and bad.n_failed == 2 and bad.n_checked == 4


# -- clear errors ---------------------------------------------------------------------------
def _one_paragraph(err: str) -> None:
    assert err.startswith("blackbox-audit: ") and "Traceback" not in err


def test_bad_input_is_one_paragraph_and_exit_2(tmp_path):
    base = ["verify", "--base-url", BASE, "--model", "m", "--out", str(tmp_path / "r")]
    code, _, err = cli(*base)
    assert code == 2 and "needs a null" in err
    _one_paragraph(err)
    code, _, err = cli(*base, "--calibrate", "--calibration", str(tmp_path))
    assert code == 2 and "cannot also take" in err
    code, _, err = cli(*base, "--calibration", str(tmp_path))
    assert code == 2 and "not a verify calibration run" in err
    code, _, err = cli(*base, "--noise-floor", "0.1", "--alpha", "0.7")
    assert code == 2 and "--alpha" in err
    code, _, err = cli(*base, "--noise-floor", "-1")
    assert code == 2 and "positive" in err
    code, _, err = cli(*base, "--noise-floor", "0.1", "--margin", "nope=0.1")
    assert code == 2 and "Unknown statistic nope" in err
    with pytest.raises(SystemExit) as exit_:
        cli(*base, "--noise-floor", "0.1", "--margin", "dnll")     # argparse's own error
    assert exit_.value.code == 2


def _calibration_dir(tmp_path, **doc):
    d = tmp_path / "cal"
    d.mkdir()
    stats = {"n_tokens": 32, "n_agree": 31, "mean_rank": 0.1, "max_rank": 2, "n_dnll": 32,
             "mean_abs_dnll": 0.04, "n_tv": 32, "mean_tv": 0.02, "key": "k"}
    (d / "verify_prompts.jsonl").write_text(json.dumps({"role": "calibration",
                                                        "stats": stats}) + "\n")
    base = {"calibrate": True, "prompt_set": PromptSet().to_json(),
            "claimed": {"name": "smollm2-135m-instruct-q4_1"}}
    (d / "verify.json").write_text(json.dumps({**base, **doc}))
    return d


@pytest.mark.parametrize(("doc", "says"), [
    ({"calibrate": False}, "is a verification, not a calibration"),
    ({"prompt_set": {**PromptSet().to_json(), "max_tokens": 16}}, "another prompt set"),
    ({"claimed": {"name": "other-model"}}, "calibrated claimed model"),
])
def test_a_calibration_of_something_else_is_refused(tmp_path, doc, says):
    cal = _calibration_dir(tmp_path, **doc)
    code, _, err = cli("verify", "--base-url", BASE, "--model", "m", "--out",
                       str(tmp_path / "r"), "--calibration", str(cal))
    assert code == 2 and says in err
    _one_paragraph(err)


# -- the whole loop, offline ---------------------------------------------------------------
def test_a_recorded_verification_replays_to_the_same_verdict(tmp_path):
    """fixtures/verify-smollm2: llama-server serving the Q4_0 requantisation, recorded; the
    replay generates nothing, scores with the real claimed model, and decides as the live
    run did: differs after 288 output tokens, exit 8, evidence on disk."""
    fx = str(FIXTURE / "q4_0.exchanges.jsonl.gz")
    out = tmp_path / "replay"
    code, text, err = cli("verify", "--replay", "--fixtures", fx, "--model", "smollm2",
                          "--calibration", str(FIXTURE / "calibration"), "--out", str(out),
                          "--quiet", "--threads", "1")
    assert code == 8, err
    assert "verdict: DIFFERS (exit 8) after 288 output tokens" in text
    doc = json.loads((out / "verify.json").read_text())
    v = doc["verdict"]
    assert doc["outcome"] == "differs" and v["decision"] == "differs"
    assert v["p_value"] <= v["alpha"] == 0.01 and v["ci"][0] > v["margin"]
    assert doc["prompt_set"]["version"] == "verify-v1" and doc["calibration"]["prompts"] == 104
    assert {h["name"]: h["passed"] for h in doc["honesty"]} == {
        "greedy_argmax": True, "topk_mass": True, "logprob_matches_topk": True,
        "determinism": True, "one_upstream": None, "echo_consistency": None,
        "prompt_tokens": True}                       # llama-server is no router
    rows = [json.loads(x) for x in (out / "verify_prompts.jsonl").read_text().splitlines()]
    assert len(rows) == 16 and all(r["role"] == "judged" for r in rows)
    cal_keys = {json.loads(x)["stats"]["key"] for x in
                (FIXTURE / "calibration" / "verify_prompts.jsonl").read_text().splitlines()}
    assert not cal_keys & {r["key"] for r in rows}
    page = (out / "report.html").read_text()
    assert 'class="v differs"' in page and "d171bf80d42925e2" in page and "<script" not in page
    # a smaller budget: inconclusive (exit 9), with an estimate of the tokens still needed
    code, text, _ = cli("verify", "--replay", "--fixtures", fx, "--model", "smollm2",
                        "--calibration", str(FIXTURE / "calibration"), "--out",
                        str(tmp_path / "small"), "--quiet", "--threads", "1",
                        "--max-tokens-budget", "200")
    doc = json.loads((tmp_path / "small" / "verify.json").read_text())
    assert code == 9 and doc["outcome"] == "inconclusive"
    assert "budget spent" in doc["verdict"]["reason"]
    assert doc["verdict"]["tokens_needed_estimate"] is not None
    # a replay of a request that was never recorded fails loudly (exit 4), never guesses
    code, _, err = cli("verify", "--replay", "--fixtures", fx, "--model", "smollm2",
                       "--calibration", str(FIXTURE / "calibration"), "--out",
                       str(tmp_path / "other"), "--quiet", "--order-seed", "7")
    assert code == 4, err
