"""score-texts against endpoints, hermetic: respx answers in the documented shapes of vLLM's
``prompt_logprobs``, Together's ``echo`` and Fireworks' legacy echo (tests/provider_shapes.py
cites each), parsed by the adapters' own echo parsers; the reference is the real packaged
SmolLM2. Also: targets that cannot score given text are refused before any call, bad input
fails with one paragraph and exit 2 before a model loads, resume and replay send nothing twice.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import provider_shapes as S
import pytest
import respx
from httpx import Response

from blackbox_audit.align import TokenizerView
from blackbox_audit.records import Completion
from blackbox_audit.texts import TextRow, echo_span, iter_texts, text_id
from providers.protocol import PromptEcho

BASE = "http://127.0.0.1:9/v1"
HOT = -0.05   # the mocked target's log-probability of each token of a "Vellari" text
COLD = -12.0  # ... and of every other text's tokens: far below the reference's

TEXTS = [
    {"id": "v1", "text": "Octopuses write in the Vellari script."},
    {"id": "n1", "text": "Bread rises because yeast makes small gas bubbles."},
    {"id": "v2", "text": " every shell tells a Vellari story.", "context": "Down by the reef,"},
    {"id": "n2", "text": " the train left the station at noon.", "context": "On Monday,"},
    {"id": "n3", "text": "Tides follow the pull of the moon.", "group": "other"},
]


def cli(*args: str) -> tuple[int, str, str]:
    import cli as entry

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = entry.main(list(args))
    return code, out.getvalue(), err.getvalue()


def write_texts(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")
    return path


def pieces(view: TokenizerView, prompt: str) -> tuple[list[tuple[str, float | None]], list[int]]:
    """The prompt as a server with SmolLM2's tokenizer would echo it: its tokens, ids and
    log-probabilities (the first has none)."""
    ids = view.encode(prompt)
    lp = HOT if "Vellari" in prompt else COLD
    out = [(view.token_bytes(i).decode(), None if n == 0 else lp) for n, i in enumerate(ids)]
    return out, ids


def answer(kind: str, view: TokenizerView, body: dict) -> dict:
    prompt = body["prompt"]
    ps, ids = pieces(view, prompt)
    gen = [(" x", -0.5)]
    if kind == "vllm":
        return S.vllm_prompt_logprobs(S.openai_legacy("m", prompt, gen), ps, ids)
    if kind == "together":
        return S.together_echo(S.openai_legacy("m", prompt, gen, ids=[87]), ps, ids)
    if kind == "fireworks":   # the prompt's tokens lead the choice (no real ids: text path)
        return S.legacy_echo(S.openai_legacy("m", prompt, gen, ids=[87]), ps)
    return S.openai_legacy("m", prompt, gen)   # no echo at all


def mock_endpoint(router: respx.MockRouter, kind: str, view: TokenizerView, base: str = BASE
                  ) -> respx.Route:
    """A /completions route on this test's own router (routes of the global router outlive
    a test)."""
    return router.post(f"{base}/completions").mock(
        side_effect=lambda req: Response(200, json=answer(kind, view,
                                                          json.loads(req.content))))


def rows_of(run: Path, name: str) -> list[dict]:
    return [json.loads(x) for x in (run / name).read_text().splitlines() if x.strip()]


def ranked_ids(run: Path) -> list[tuple[str, str]]:
    return [(r["corpus"], r["prefill_id"]) for r in rows_of(run, "ranked.jsonl")]


# -- endpoints, documented shapes ------------------------------------------------------------
def test_vllm_prompt_logprobs_score_rank_select_and_replay(tmp_path, view):
    texts = write_texts(tmp_path / "texts.jsonl", TEXTS)
    run = tmp_path / "run"
    with respx.mock() as mock:
        route = mock_endpoint(mock, "vllm", view)
        code, out, err = cli("score-texts", str(texts), "--target", "vllm:m", "--base-url",
                             BASE, "--out", str(run), "--select", "1", "--no-report",
                             "--quiet")
    assert code == 0, err
    assert route.call_count == len(TEXTS)
    bodies = [json.loads(c.request.content) for c in route.calls]
    assert all(b["prompt_logprobs"] == 0 and b["max_tokens"] == 1 for b in bodies)
    assert sorted(b["prompt"] for b in bodies) == sorted(
        r.get("context", "") + r["text"] for r in TEXTS)
    target = {r["prefill_id"]: r for r in rows_of(run, "completions.jsonl")}
    for t in TEXTS:
        c = target[t["id"]]
        assert c["degraded"] == [] and c["framing"] == "raw", c
        # the echo's tokens that cover the text; without a context (and no BOS) the first
        # token has no log-probability, and neither side scores it
        first = "" if t.get("context") else view.token_bytes(view.encode(t["text"])[0]).decode()
        assert first + "".join(c["tokens"]) == t["text"], (c["tokens"], t)
        assert set(c["logprobs"]) == {HOT if "Vellari" in t["text"] else COLD}
    scores = rows_of(run, "scores.smollm2-135m-instruct-q4_1.jsonl")
    assert {s["alignment"] for s in scores} == {"ids"}   # same vocabulary: the server's ids
    assert all(s["n_ref_tokens"] == s["n_target_tokens"] for s in scores)
    # rankings are within (group, framing); the Vellari texts lead theirs
    order = ranked_ids(run)
    assert order[0] == ("other", "n3") and {i for _, i in order[1:3]} == {"v1", "v2"}
    # --select 1: the top of each ranking, the input rows verbatim
    selected = rows_of(run, "selected.jsonl")
    assert len(selected) == 2 and {s["id"] for s in selected} == {"n3", ranked_ids(run)[1][1]}
    assert all(s in TEXTS for s in selected)
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["mode"] == "score-texts" and manifest["counts"]["ranked"] == len(TEXTS)
    assert "top" in out or "dPPL" in out

    # replay from the recorded exchanges: same ranking, not one request
    with respx.mock(assert_all_called=False) as mock:
        route = mock_endpoint(mock, "vllm", view)
        code, _, err = cli("score-texts", str(texts), "--target", "vllm:m", "--base-url", BASE,
                           "--out", str(tmp_path / "replayed"), "--replay", "--fixtures",
                           str(run / "exchanges.jsonl"), "--no-report", "--quiet")
    assert code == 0, err
    assert route.call_count == 0
    assert ranked_ids(tmp_path / "replayed") == ranked_ids(run)


def test_together_echo_with_a_key_that_is_never_written(tmp_path, view, monkeypatch):
    key = "tgp_v1_SECRETsecretSECRETsecret0123456789"
    monkeypatch.setenv("TOGETHER_API_KEY", key)
    texts = write_texts(tmp_path / "texts.jsonl", TEXTS[:4])
    run = tmp_path / "run"
    with respx.mock() as mock:
        route = mock_endpoint(mock, "together", view, "https://api.together.xyz/v1")
        code, _, err = cli("score-texts", str(texts), "--target", "together:m", "--out",
                           str(run), "--no-report", "--quiet")
    assert code == 0, err
    assert all(json.loads(c.request.content)["echo"] is True for c in route.calls)
    assert route.calls[0].request.headers["authorization"] == f"Bearer {key}"
    scores = rows_of(run, "scores.smollm2-135m-instruct-q4_1.jsonl")
    assert len(scores) == 4 and {s["alignment"] for s in scores} == {"ids"}
    assert [i for _, i in ranked_ids(run)[:2]] in (["v1", "v2"], ["v2", "v1"])
    for f in run.iterdir():
        assert key[:12] not in f.read_text(errors="replace"), f


def test_fireworks_legacy_echo_is_split_at_the_prompt_and_aligned_by_bytes(tmp_path, view,
                                                                          monkeypatch):
    monkeypatch.setenv("FIREWORKS_API_KEY", "fw-key-0123456789abcdef")
    texts = write_texts(tmp_path / "texts.jsonl", TEXTS[:4])
    run = tmp_path / "run"
    with respx.mock() as mock:
        route = mock_endpoint(mock, "fireworks", view, "https://api.fireworks.ai/inference/v1")
        code, _, err = cli("score-texts", str(texts), "--target", "fireworks:m", "--out",
                           str(run), "--no-report", "--quiet")
    assert code == 0, err
    assert all(json.loads(c.request.content)["echo"] is True for c in route.calls)
    target = {r["prefill_id"]: r for r in rows_of(run, "completions.jsonl")}
    for t in TEXTS[:4]:   # without a context (and no BOS) the first token is not scored
        first = "" if t.get("context") else view.token_bytes(view.encode(t["text"])[0]).decode()
        assert first + "".join(target[t["id"]]["tokens"]) == t["text"]
    scores = rows_of(run, "scores.smollm2-135m-instruct-q4_1.jsonl")
    # the echo's ids are not SmolLM2's: the reference tokenises the text itself
    assert {s["alignment"] for s in scores} == {"text"}
    assert [i for _, i in ranked_ids(run)[:2]] in (["v1", "v2"], ["v2", "v1"])


def test_resume_asks_only_for_new_texts(tmp_path, view):
    texts = write_texts(tmp_path / "texts.jsonl", TEXTS[:2])
    run = tmp_path / "run"
    args = ("score-texts", str(texts), "--target", "vllm:m", "--base-url", BASE, "--out",
            str(run), "--no-report", "--quiet", "--record-mode", "off")
    with respx.mock() as mock:
        first = mock_endpoint(mock, "vllm", view)
        assert cli(*args)[0] == 0
        write_texts(texts, TEXTS[:4])
        assert cli(*args)[0] == 0
    assert first.call_count == 4   # 2, then the 2 new ones: nothing on disk asked again
    assert len(rows_of(run, "ranked.jsonl")) == 4


# -- refusals before any call ----------------------------------------------------------------
@pytest.mark.parametrize("target", ["llama.cpp:m", "openai:gpt-4o-mini",
                                    "anthropic:claude-3-5-haiku-latest", "deepseek:chat"])
def test_targets_that_cannot_score_given_text_are_refused_before_any_call(tmp_path, target,
                                                                          monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-unused")
    texts = write_texts(tmp_path / "texts.jsonl", TEXTS[:1])
    with respx.mock(assert_all_called=False) as mock:
        code, _, err = cli("score-texts", str(texts), "--target", target, "--base-url", BASE,
                           "--out", str(tmp_path / "run"))
    assert code == 3, err
    assert mock.calls.call_count == 0
    err = " ".join(err.split())
    assert "cannot score given text" in err and "vllm:MODEL" in err and "together:MODEL" in err
    assert "--target-local" in err and "Traceback" not in err


def test_a_server_found_by_its_model_list_to_be_llama_cpp_is_refused_after_that_call(tmp_path):
    texts = write_texts(tmp_path / "texts.jsonl", TEXTS[:1])
    with respx.mock(assert_all_called=False) as mock:
        models = mock.get(f"{BASE}/models").respond(200, json=S.models_list("m", "llamacpp"))
        posts = mock.post(f"{BASE}/completions").respond(500)
        code, _, err = cli("score-texts", str(texts), "--base-url", BASE, "--model", "m",
                           "--out", str(tmp_path / "run"))
    assert code == 3, err
    assert models.call_count == 1 and posts.call_count == 0
    assert "llama.cpp" in err and "cannot score given text" in " ".join(err.split())


def test_an_endpoint_that_sends_no_echo_is_stopped_after_one_request(tmp_path, view):
    texts = write_texts(tmp_path / "texts.jsonl", TEXTS)
    with respx.mock() as mock:
        route = mock_endpoint(mock, "none", view)
        code, _, err = cli("score-texts", str(texts), "--target", "vllm:m", "--base-url", BASE,
                           "--out", str(tmp_path / "run"))
    assert code == 3, err
    assert route.call_count == 1
    assert "without the prompt's log-probabilities" in " ".join(err.split())


# -- bad input: one paragraph, exit 2, before any model loads --------------------------------
BAD_INPUT = {
    "missing.jsonl": (None, "does not exist"),
    "bad.jsonl": ('{"text": "a"}\n{not json\n', "line 2 is not JSON"),
    "notext.jsonl": ('{"id": "a"}\n', "has no \"text\" string"),
    "array.jsonl": ('["a"]\n', "not an object"),
    "ctx.jsonl": ('{"text": "a", "context": 3}\n', "\"context\" must be a string"),
    "msg.jsonl": ('{"text": "a", "context": [{"role": "bot", "content": "x"}]}\n',
                  "each chat message"),
    "ends.jsonl": ('{"text": "a", "context": [{"role": "assistant", "content": "x"}]}\n',
                   "must end with a system or user turn"),
    "dup.jsonl": ('{"id": "a", "text": "x"}\n{"id": "a", "text": "y"}\n', "every id must be"),
    "colon.jsonl": ('{"id": "a:b", "text": "x"}\n', "hold no ':'"),
    "blank.txt": ("\n\n", "holds no texts"),
    "latin1.txt": (b"caf\xe9\n", "is not UTF-8"),
}


@pytest.mark.parametrize("name", sorted(BAD_INPUT))
def test_bad_texts_fail_with_one_paragraph(tmp_path, name):
    content, words = BAD_INPUT[name]
    path = tmp_path / name
    if isinstance(content, bytes):
        path.write_bytes(content)
    elif content is not None:
        path.write_text(content, encoding="utf-8")
    with respx.mock(assert_all_called=False) as mock:
        code, _, err = cli("score-texts", str(path), "--target", "vllm:m", "--base-url", BASE,
                           "--out", str(tmp_path / "run"))
    assert code == 2, err
    assert words in " ".join(err.split()) and "Traceback" not in err
    assert mock.calls.call_count == 0 and not (tmp_path / "run").exists()   # nothing written


@pytest.mark.parametrize("flags,words", [
    ((), "No target"),
    (("--base-url", BASE, "--model", "m", "--target-local", "x.gguf"), "not both"),
    (("--target", "vllm:m", "--target-local", "x.gguf"), "not both"),
    (("--target", "vllm:m", "--select", "0"), "--select must be at least 1"),
    (("--target", "vllm:m", "--select-share", "1.5"), "--select-share must be in"),
    (("--target-local", "/nonexistent/model.gguf"), "does not exist"),
])
def test_bad_flags_fail_with_one_paragraph(tmp_path, flags, words):
    texts = write_texts(tmp_path / "texts.jsonl", TEXTS[:1])
    code, _, err = cli("score-texts", str(texts), "--out", str(tmp_path / "run"), *flags)
    assert code in (2, 6), err
    assert words in " ".join(err.split()) and "Traceback" not in err


# -- the pieces --------------------------------------------------------------------------------
def test_plain_text_rows_and_identical_rows_once(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("one text\n\nanother text\none text\n", encoding="utf-8")
    rows = list(iter_texts(path))
    assert [r.text for r in rows] == ["one text", "another text"]
    assert rows[0].id == text_id("texts", None, "one text") and rows[0].framing == "raw"
    assert json.loads(rows[0].source) == {"text": "one text"}


def test_chat_context_rows_say_their_framing(tmp_path):
    path = write_texts(tmp_path / "t.jsonl", [{"text": "Yes.", "context": [
        {"role": "system", "content": "Be brief."}, {"role": "user", "content": "Ok?"}]}])
    (row,) = iter_texts(path)
    assert row.framing == "chat" and row.messages == (("system", "Be brief."), ("user", "Ok?"))
    assert row.row_key.endswith(":chat")


def _row() -> Completion:
    r = TextRow(id="a", group="g", text=" world")
    return Completion(prefill_id=r.id, corpus=r.group, prefill="", framing="raw", text=r.text)


def test_echo_span_takes_the_tokens_that_cover_the_text_and_a_straddling_one():
    echo = PromptEcho(["", "Hello", " wor", "ld"], [None, -1.0, -2.0, -3.0], [1, 10, 11, 12],
                      first_unknown=True)
    c = echo_span(_row(), echo, "<s>Hello", "<s>Hello world")
    assert c.tokens == [" wor", "ld"] and c.logprobs == [-2.0, -3.0]
    assert c.token_ids == [11, 12] and c.prompt_echo["context_ids"] == [1, 10]
    # a token that straddles the boundary counts, and the context it covers is recorded
    echo = PromptEcho(["<s>", "Hel", "lo wo", "rld"], [None, -1.0, -2.0, -3.0])
    c = echo_span(_row(), echo, "<s>Hello", "<s>Hello world")
    assert c.tokens == ["lo wo", "rld"] and c.prompt_echo["straddle"] == "lo"


def test_echo_span_marks_an_echo_that_does_not_rebuild_the_prompt_or_has_placeholders():
    c = echo_span(_row(), PromptEcho(["<s>", "Hi", " there"], [None, -1.0, -1.0]),
                  "<s>Hello", "<s>Hello world")
    assert c.degraded == ["echo_mismatch"]
    c = echo_span(_row(), PromptEcho(["<s>", "Hello", " world"], [None, -1.0, -9999.0]),
                  "<s>Hello", "<s>Hello world")
    assert c.degraded == ["placeholder_logprobs"]
