"""The OpenAI-compatible adapter: payloads, both logprob shapes, quirks, refusals (respx)."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest
import respx

from blackbox_audit.errors import EndpointError
from blackbox_audit.framing import chat_messages
from blackbox_audit.records import GenerationRequest, Prefill
from blackbox_audit.transport import RetryPolicy, build_client
from providers.base import RequestFailed
from providers.openai_compatible import OpenAICompatibleProvider, discover

BASE = "http://127.0.0.1:9999/v1"
PREFILL = Prefill.make("prose", "The feud between")


def req(framing="raw", messages=None):
    return GenerationRequest(PREFILL, framing, 100, 2, prompt=None if messages else
                             PREFILL.text, messages=messages)


def provider(flavour="llama.cpp"):
    client = build_client(BASE, mode="off", retry=RetryPolicy(attempts=2, base_delay=0.001))
    return OpenAICompatibleProvider(client, "m", flavour)


def content_entry(tok, tid, lp, alt_lp=None):
    b = list(tok.encode())
    top = [{"id": tid, "token": tok, "bytes": b, "logprob": lp}]
    if alt_lp is not None:
        top.append({"id": 9, "token": " x", "bytes": [32, 120], "logprob": alt_lp})
    return {"id": tid, "token": tok, "bytes": b, "logprob": lp, "top_logprobs": top}


LLAMA_CPP_ANSWER = {
    "model": "m", "usage": {"prompt_tokens": 4, "completion_tokens": 3},
    "choices": [{"text": " Lisbon's", "finish_reason": "stop", "logprobs": {"content": [
        content_entry(" Lisbon", 17, -0.5, -2.0),
        content_entry("'s", 18, -0.25, -3.0),
        {"id": 2, "token": "", "bytes": [], "logprob": -0.016, "top_logprobs": []},
    ]}}]}


def generate(p, r):
    return asyncio.run(p.generate(r))


@respx.mock
def test_llama_cpp_shape_end_token_set_aside():
    route = respx.post(f"{BASE}/completions").mock(
        return_value=httpx.Response(200, json=LLAMA_CPP_ANSWER))
    c = generate(provider(), req())
    sent = json.loads(route.calls[0].request.content)
    assert sent["temperature"] == 0.0 and sent["repeat_penalty"] == 1.0 and sent["top_k"] == 0
    assert sent["prompt"] == "The feud between" and sent["logprobs"] == 2
    assert c.tokens == [" Lisbon", "'s"] and c.token_ids == [17, 18]
    assert c.logprobs == [-0.5, -0.25]
    assert c.end_token == {"token": "", "logprob": -0.016, "id": 2}
    assert c.degraded == [] and c.prompt_tokens == 4


@respx.mock
def test_legacy_shape_rebuilds_split_character_from_offsets():
    # OpenAI-style legacy answer where "é" is split over two tokens shown as byte placeholders.
    text = " café ok"
    answer = {"choices": [{"text": text, "finish_reason": "length", "logprobs": {
        "tokens": [" caf", "bytes:\\xc3", "bytes:\\xa9", " ok"],
        "token_logprobs": [-1.0, -0.5, -0.1, -0.2],
        "top_logprobs": [{" caf": -1.0}, {"bytes:\\xc3": -0.5}, {"bytes:\\xa9": -0.1},
                         {" ok": -0.2}],
        "text_offset": [16, 20, 20, 21]}}]}
    respx.post(f"{BASE}/completions").mock(return_value=httpx.Response(200, json=answer))
    c = generate(provider("generic"), req())
    assert "".join(c.tokens) == text and c.degraded == []


@pytest.mark.parametrize("mutate,reason", [
    (lambda e: e[1].update(logprob=-9999.0), "sentinel_logprobs"),
    (lambda e: [x.update(logprob=0.0) for x in e[:2]], "sentinel_logprobs"),
    (lambda e: e[0].update(logprob=-3.0), "not_greedy"),  # its top alternative is -2.0
    (lambda e: e[0].update(token=" Paris", bytes=list(b" Paris")), "text_mismatch"),
])
@respx.mock
def test_degraded_rows_are_marked(mutate, reason):
    answer = json.loads(json.dumps(LLAMA_CPP_ANSWER))
    mutate(answer["choices"][0]["logprobs"]["content"])
    respx.post(f"{BASE}/completions").mock(return_value=httpx.Response(200, json=answer))
    c = generate(provider(), req())
    assert reason in c.degraded and not c.usable


@respx.mock
def test_missing_and_short_logprobs_are_marked():
    answer = {"choices": [{"text": " a b", "finish_reason": "length"}]}
    respx.post(f"{BASE}/completions").mock(return_value=httpx.Response(200, json=answer))
    assert generate(provider("generic"), req()).degraded == ["no_logprobs"]

    answer = {"choices": [{"text": " a b", "finish_reason": "length", "logprobs": {
        "tokens": [" a", " b"], "token_logprobs": [-1.0], "top_logprobs": None}}]}
    respx.post(f"{BASE}/completions").mock(return_value=httpx.Response(200, json=answer))
    assert "logprob_count" in generate(provider("generic"), req()).degraded


@respx.mock
def test_chat_prefill_stripped_or_marked_dropped():
    # llama.cpp's server: content repeats the prefill, logprobs cover only new tokens.
    ok = {"choices": [{"message": {"content": "The feud between Lisbon's"},
                       "finish_reason": "length", "logprobs": {"content": [
                           content_entry(" Lisbon", 17, -0.5), content_entry("'s", 18, -0.2)]}}]}
    route = respx.post(f"{BASE}/chat/completions").mock(return_value=httpx.Response(200, json=ok))
    c = generate(provider(), req("chat", chat_messages(PREFILL.text)))
    assert c.text == " Lisbon's" and c.degraded == []
    assert json.loads(route.calls[0].request.content)["messages"][-1] == {
        "role": "assistant", "content": "The feud between"}

    # llama-cpp-python's server: a new turn that regenerates the prefill as fresh text.
    dropped = {"choices": [{"message": {"content": "The feud between two"},
                            "finish_reason": "length", "logprobs": {"content": [
                                content_entry("The", 1, -0.5), content_entry(" feud", 2, -0.5),
                                content_entry(" between", 3, -0.1),
                                content_entry(" two", 4, -0.1)]}}]}
    respx.post(f"{BASE}/chat/completions").mock(return_value=httpx.Response(200, json=dropped))
    c = generate(provider(), req("chat", chat_messages(PREFILL.text)))
    assert "prefill_dropped" in c.degraded


def test_vllm_payload_continues_final_message():
    p = provider("vllm")
    wire = p.build(req("chat", chat_messages(PREFILL.text)))
    assert wire.body["continue_final_message"] is True
    assert wire.body["add_generation_prompt"] is False
    assert wire.body["repetition_penalty"] == 1.0 and wire.body["top_logprobs"] == 2


@pytest.mark.parametrize("status,match", [(401, "credentials"), (404, "--base-url"),
                                          (400, "does not accept model")])
@respx.mock
def test_fatal_statuses_fail_fast_with_a_clear_error(status, match):
    route = respx.post(f"{BASE}/completions").mock(return_value=httpx.Response(
        status, json={"error": {"message": "The model `m` does not exist"}}))
    with pytest.raises(EndpointError, match=match):
        generate(provider(), req())
    assert route.call_count == 1  # never retried


@respx.mock
def test_server_errors_fail_one_row_after_bounded_retries():
    route = respx.post(f"{BASE}/completions").mock(return_value=httpx.Response(503))
    with pytest.raises(RequestFailed, match="503"):
        generate(provider(), req())
    assert route.call_count == 2


@respx.mock
def test_discover_names_served_models_and_flavour():
    respx.get(f"{BASE}/models").mock(return_value=httpx.Response(200, json={"data": [
        {"id": "base", "owned_by": "llamacpp", "aliases": ["b"]}]}))
    client = build_client(BASE, mode="off")
    assert asyncio.run(discover(client, "b"))[0] == "llama.cpp"
    with pytest.raises(EndpointError, match="lists: base"):
        asyncio.run(discover(client, "gpt-5"))
