"""Echo / prompt log-probabilities: the prompt as the server tokenised it.

Three shapes (tests/provider_shapes.py cites each): Together's ``prompt`` beside the choices,
vLLM's ``prompt_logprobs``, and OpenAI's legacy echo with the prompt's tokens first in the
choice (Fireworks). The probe asks for the echo in the calls it makes anyway (no extra call)
and confirms the capability from it; for vLLM's server-side prefill the echo shows whether the
assistant turn was continued or closed. ``audit --verify-prompts`` asks for it on every row
and marks rows whose prompt does not end with the prefill. HTTP is respx only.
"""

from __future__ import annotations

import contextlib
import io
import json

import provider_shapes as S
import respx

from blackbox_audit.records import GenerationRequest, Prefill
from providers.base import RequestOptions, attach_echo
from providers.openai_compatible import OpenAICompatibleProvider
from providers.protocol import prompt_echo, split_echo, token_columns

P = Prefill.make("prose", "The feud between")
PIECES = [(" two", -0.61), (" rival", -1.08)]
PROMPT = [("The", None), (" feud", -9.12), (" between", -2.31)]
PROMPT_BOS = [("<s>", None), ("The", -7.9), (" feud", -9.12), (" between", -2.31)]
IDS_BOS = [1, 504, 19738, 1908]
BASE = "http://127.0.0.1:9/v1"


def cli(*args: str) -> tuple[int, str, str]:
    import cli as entry

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = entry.main(list(args))
    return code, out.getvalue(), err.getvalue()


def raw_req() -> GenerationRequest:
    return GenerationRequest(P, "raw", 2, 5, prompt=P.text)


def parsed(flavour: str, answer: dict, req: GenerationRequest | None = None):
    # parse is pure: no client
    provider = OpenAICompatibleProvider(None, "m", flavour=flavour,
                                        options=RequestOptions(echo_prompts=True))
    return provider.parse(req or raw_req(), answer)


# -- the three wire shapes -------------------------------------------------------------------
def test_vllm_prompt_logprobs_become_an_echo_with_ids_and_an_unknown_first_token():
    answer = S.vllm_prompt_logprobs(S.openai_legacy("m", P.text, PIECES), PROMPT_BOS, IDS_BOS)
    echo = prompt_echo(answer, answer["choices"][0])
    assert echo.tokens == ["", "The", " feud", " between"] and echo.first_unknown
    assert echo.logprobs == [None, -7.9, -9.12, -2.31] and echo.ids == IDS_BOS
    c = parsed("vllm", answer)
    assert c.text == " two rival" and c.tokens == [" two", " rival"] and not c.degraded
    assert c.prompt_echo == {"tokens": 4, "logprobs": "real", "prefill_intact": True}
    # no BOS: the first prompt token's text is unknown, the rest must end the prefill
    answer = S.vllm_prompt_logprobs(S.openai_legacy("m", P.text, PIECES), PROMPT, IDS_BOS[1:])
    assert parsed("vllm", answer).prompt_echo["prefill_intact"] is True


def test_vllm_prompt_token_is_picked_by_id_when_top_entries_come_with_it():
    answer = S.vllm_prompt_logprobs(S.openai_legacy("m", P.text, PIECES), PROMPT_BOS, IDS_BOS)
    entries = answer["choices"][0]["prompt_logprobs"]
    entries[2] = {"77": {"logprob": -0.5, "rank": 1, "decoded_token": " fight"},
                  "19738": {"logprob": -9.12, "rank": 40, "decoded_token": " feud"}}
    echo = prompt_echo(answer, answer["choices"][0])
    assert echo.tokens[2] == " feud" and echo.logprobs[2] == -9.12


def test_together_echo_beside_the_choices():
    answer = S.together_echo(S.openai_legacy("m", P.text, PIECES, ids=[1403, 21425],
                                             with_top=False), PROMPT_BOS, IDS_BOS)
    c = parsed("together", answer)
    assert c.text == " two rival" and c.token_ids == [1403, 21425]
    assert c.prompt_echo == {"tokens": 4, "logprobs": "real", "prefill_intact": True}


def test_legacy_echo_is_split_off_the_continuation():
    answer = S.legacy_echo(S.openai_legacy("m", P.text, PIECES, ids=[1403, 21425]), PROMPT)
    assert answer["choices"][0]["text"].startswith(P.text)
    c = parsed("fireworks", answer)
    assert c.text == " two rival" and c.tokens == [" two", " rival"]
    assert c.logprobs == [-0.61, -1.08] and c.token_ids == [1403, 21425]
    assert c.prompt_echo["tokens"] == 3 and not c.degraded
    # without offsets the split goes by the tokens' running length
    cols = token_columns(answer["choices"][0]["logprobs"])
    cols.text_offset = None
    echo, rest, text = split_echo(cols, answer["choices"][0]["text"], P.text)
    assert echo.tokens == ["The", " feud", " between"] and rest.tokens == [" two", " rival"]
    assert text == " two rival"


def test_a_continuation_that_repeats_the_prompt_is_not_split_when_echo_was_not_asked():
    answer = S.openai_legacy("m", P.text, [("The", -0.1), (" feud", -0.2), (" between", -0.1)])
    provider = OpenAICompatibleProvider(None, "m", flavour="fireworks")
    c = provider.parse(raw_req(), answer)
    assert c.text == "The feud between" and len(c.tokens) == 3 and c.prompt_echo is None


def test_echo_verdicts_placeholders_gaps_and_an_altered_prompt():
    def verdict(pieces):
        c = parsed("generic", S.openai_legacy("m", P.text, PIECES))
        from providers.protocol import PromptEcho

        attach_echo(c, PromptEcho([t for t, _ in pieces], [v for _, v in pieces]), P.text)
        return c

    assert verdict([("The", None), (" feud", -9999.0), (" between", -9999.0)]
                   ).prompt_echo["logprobs"] == "placeholder"
    assert verdict([("The", None), (" feud", None), (" between", -2.0)]
                   ).prompt_echo["logprobs"] == "missing"
    c = verdict([("The", None), (" feud", -9.0), (" between", -2.0), ("<|im_end|>", -1.0)])
    assert c.prompt_echo["prefill_intact"] is False and "prefill_altered" in c.degraded
    assert c.prompt_echo["tail"].endswith("between<|im_end|>")
    c = verdict([("The", None), (" feud", -9.0), (" betwe\ufffd", -2.0)])  # split character
    assert c.prompt_echo["prefill_intact"] is None and not c.degraded


# -- the probe ----------------------------------------------------------------------------------
@respx.mock
def test_probe_sees_through_echo_that_vllm_closed_the_assistant_turn():
    """A vLLM that ignores continue_final_message renders the prefill as a finished turn and
    opens a new one: the answer alone looks plausible, the echoed prompt does not."""
    respx.get(f"{BASE}/models").respond(200, json=S.models_list("m", "vllm"))
    respx.post(f"{BASE}/completions").respond(200, json=S.vllm_prompt_logprobs(
        S.openai_legacy("m", P.text, PIECES), PROMPT_BOS, IDS_BOS))
    closed = PROMPT_BOS + [("<|im_end|>", -1.2), ("\n", -0.1), ("<|im_start|>", -0.1),
                           ("assistant", -0.1), ("\n", -0.1)]
    chat = respx.post(f"{BASE}/chat/completions").respond(200, json=S.vllm_prompt_logprobs(
        S.compatible_chat("m", PIECES), closed, list(range(len(closed))), chat=True))
    code, out, err = cli("probe", "vllm:m", "--base-url", BASE, "--chat-mode", "prefill")
    assert code == 3, err
    assert "NO: the server closed the assistant turn" in out
    err = " ".join(err.split())
    assert "did not continue the assistant prefill" in err and "<|im_start|>assistant" in err
    body = json.loads(chat.calls[0].request.content)
    assert body["prompt_logprobs"] == 0 and body["continue_final_message"] is True
    assert "probe calls: 3" in out   # the echo cost no call of its own


@respx.mock
def test_probe_says_when_an_offered_echo_does_not_come_back():
    respx.get(f"{BASE}/models").respond(200, json=S.models_list("m", "together"))
    route = respx.post(f"{BASE}/completions").respond(200, json=S.openai_legacy(
        "m", P.text, PIECES, ids=[1403, 21425]))
    code, out, err = cli("probe", "together:m", "--base-url", BASE, "--framings", "raw")
    assert code == 0, err   # the method does not need echo: reported, not refused
    assert "NO: asked for, none came back" in out
    assert json.loads(route.calls[0].request.content)["echo"] is True


# -- audit --verify-prompts ----------------------------------------------------------------------
def _altered(prompt: str) -> bool:
    return len(prompt) % 2 == 0


def _vllm_answer(request):
    """vLLM on /completions with prompt_logprobs; for prompts of even length the server's
    prompt comes back with a newline added (a server that normalises text)."""
    import httpx

    body = json.loads(request.content)
    prompt = body["prompt"]
    pieces = [(w, -0.2 - 0.05 * i) for i, w in
              enumerate([" a", " b", " c", " d", " e", " f"][:body["max_tokens"]])]
    out = S.openai_legacy(body["model"], prompt, pieces)
    if body.get("prompt_logprobs") is not None:
        seen = prompt + ("\n" if _altered(prompt) else "")
        words = [("<s>", None)] + [(w if i == 0 else " " + w, -1.0)
                                   for i, w in enumerate(seen.split(" "))]
        out = S.vllm_prompt_logprobs(out, words, list(range(len(words))))
    return httpx.Response(200, json=out)


def test_verify_prompts_marks_rows_whose_prompt_was_altered(tmp_path):
    run = tmp_path / "run"
    with respx.mock:
        respx.get(f"{BASE}/models").respond(200, json=S.models_list("m", "vllm"))
        route = respx.post(f"{BASE}/completions").mock(side_effect=_vllm_answer)
        code, out, err = cli("audit", "vllm:m", "--base-url", BASE, "--out", str(run),
                             "--framings", "raw", "--corpora", "prose", "--per-corpus", "6",
                             "--max-tokens", "6", "--generate-only", "--verify-prompts",
                             "--max-degraded-share", "1")
    assert code == 0, err
    assert all(json.loads(c.request.content).get("prompt_logprobs") == 0 for c in route.calls)
    rows = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert len(rows) == 6
    bad = [r for r in rows if _altered(r["prompt"])]
    good = [r for r in rows if not _altered(r["prompt"])]
    assert bad and good
    for r in bad:
        assert r["degraded"] == ["prefill_altered"] and r["prompt_echo"]["tail"].endswith("\n")
    for r in good:
        assert r["degraded"] == [] and r["prompt_echo"]["prefill_intact"] is True
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["endpoint"]["preflight"]["confirmed"]["echo"].startswith("yes")


@respx.mock
def test_verify_prompts_is_refused_before_generation_where_no_echo_is_offered(tmp_path):
    respx.get(f"{BASE}/models").respond(200, json=S.models_list("m", "llamacpp"))
    route = respx.post(f"{BASE}/completions").respond(200, json=S.llama_cpp_completion(
        "m", PIECES, [1403, 21425]))
    code, _, err = cli("audit", "--base-url", BASE, "--model", "m", "--out",
                       str(tmp_path / "run"), "--framings", "raw", "--corpora", "prose",
                       "--per-corpus", "3", "--generate-only", "--verify-prompts")
    err = " ".join(err.split())
    assert code == 3 and "--verify-prompts needs the endpoint to echo" in err
    assert "Traceback" not in err and route.call_count == 1   # the probe's call only


# -- vLLM token ids on request ----------------------------------------------------------------
def _vllm_ids_answer(request):
    """vLLM naming tokens ``token_id:N`` when asked (return_tokens_as_token_ids), by their
    strings otherwise."""
    import httpx

    body = json.loads(request.content)
    ids = [1403, 21425, 300, 301, 302, 303][:body["max_tokens"]]
    by_id = bool(body.get("return_tokens_as_token_ids"))
    pieces = [(f"token_id:{i}" if by_id else f" w{i}", -0.3) for i in ids]
    out = S.openai_legacy(body["model"], body["prompt"], pieces)
    out["choices"][0]["text"] = "".join(f" w{i}" for i in ids)
    out["choices"][0]["logprobs"]["text_offset"] = None
    return httpx.Response(200, json=out)


def test_vllm_is_asked_for_token_ids_only_when_the_run_scores_ids(tmp_path):
    for alignment, asked in (("ids", True), ("auto", False)):
        run = tmp_path / alignment
        with respx.mock:
            respx.get(f"{BASE}/models").respond(200, json=S.models_list("m", "vllm"))
            route = respx.post(f"{BASE}/completions").mock(side_effect=_vllm_ids_answer)
            code, out, err = cli("audit", "vllm:m", "--base-url", BASE, "--out", str(run),
                                 "--framings", "raw", "--corpora", "prose", "--per-corpus",
                                 "2", "--max-tokens", "6", "--generate-only", "--alignment",
                                 alignment)
        assert code == 0, err
        bodies = [json.loads(c.request.content) for c in route.calls]
        assert len(bodies) == 3   # the probe's call and two rows
        assert all(bool(b.get("return_tokens_as_token_ids")) is asked for b in bodies)
        rows = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
        for r in rows:
            assert (r["token_ids"] == [1403, 21425, 300, 301, 302, 303]) is asked
            assert r["degraded"] == []
        confirmed = json.loads((run / "manifest.json").read_text())["endpoint"]["preflight"][
            "confirmed"]["token_ids"]
        assert confirmed == ("yes" if asked else
                             "not asked (vLLM names tokens by id for --alignment ids)")


def test_chat_continue_needs_the_prefill_inside_the_prompt_not_at_its_end():
    from blackbox_audit.framing import continue_messages
    from providers.protocol import PromptEcho

    req = GenerationRequest(P, "chat-continue", 2, 5, messages=continue_messages(P.text))
    rendered = ["<|im_start|>", "user\n", "Continue the following text:\n\n", "The feud",
                " between", "<|im_end|>\n", "<|im_start|>", "assistant\n"]
    c = parsed("vllm", S.compatible_chat("m", PIECES), req)
    attach_echo(c, PromptEcho(rendered, [None] + [-1.0] * 7), P.text, in_user_turn=True)
    assert c.prompt_echo["prefill_intact"] is True and not c.degraded
    cut = rendered[:3] + ["The", "<|im_end|>\n", "<|im_start|>", "assistant\n"]
    attach_echo(c, PromptEcho(cut, [None] + [-1.0] * 6), P.text, in_user_turn=True)
    assert c.prompt_echo["prefill_intact"] is False and c.degraded == ["prefill_altered"]
