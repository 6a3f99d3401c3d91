"""Build the synthetic probe fixtures in fixtures/probe/ (one directory per adapter).

No service is contacted: each service's documented response shape (tests/provider_shapes.py,
with its sources) is served by respx, ``blackbox-audit probe`` runs against it in record mode
with a fake API key, and the exchanges it made are written as the fixture. Error answers (an
HTTP 400 prefill refusal) are not recorded by the transport (an error is not an answer), so
they are appended from respx's call log: replay must show the refusal too. The probe's printed
report is saved beside each fixture as probe.txt (replayed, so it is what a user sees
offline). Run: .venv/bin/python scripts/build_probe_fixtures.py
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import sys
from pathlib import Path

import respx

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import provider_shapes as S  # noqa: E402

OUT = ROOT / "fixtures" / "probe"
FAKE_KEY = "sk-synthetic-DO-NOT-USE-0123456789abcdef"
PIECES = [(" two", -0.61), (" rival", -1.08)]
# The probe's prompt as a server tokenises it (echo / prompt logprobs): without and with a
# BOS token (whose entry, first, has no logprob), and a Llama-3 chat template continued at
# the assistant prefill.
PROMPT = [("The", None), (" feud", -9.12), (" between", -2.31)]
PROMPT_BOS = [("<|begin_of_text|>", None), ("The", -7.95), (" feud", -9.12), (" between", -2.31)]
PROMPT_IDS = [128000, 791, 57367, 1990]
CHAT_PROMPT = [("<|begin_of_text|>", None), ("<|start_header_id|>", -13.2), ("user", -2.9),
               ("<|end_header_id|>", -0.02), ("\n\n", -0.7), ("Continue", -11.4),
               ("<|eot_id|>", -3.1), ("<|start_header_id|>", -0.01), ("assistant", -0.02),
               ("<|end_header_id|>", -0.01), ("\n\n", -0.03), ("The", -5.8), (" feud", -8.7),
               (" between", -2.2)]
CHAT_PROMPT_IDS = [128000, 128006, 882, 128007, 271, 24433, 128009, 128006, 78191, 128007,
                   271, 791, 57367, 1990]


def _routes(name: str, mock: respx.MockRouter) -> None:
    """The documented answers for one adapter's probe calls."""
    if name == "openai":
        mock.post("https://api.openai.com/v1/chat/completions").respond(
            200, json=S.openai_chat("gpt-4o-mini-2024-07-18", PIECES))
    elif name == "openai-legacy":
        mock.post("https://api.openai.com/v1/completions").respond(
            200, json=S.openai_legacy("gpt-3.5-turbo-instruct", "The feud between", PIECES))
    elif name == "anthropic":
        mock.post("https://api.anthropic.com/v1/messages").respond(
            200, json=S.anthropic_message("claude-haiku-4-5-20251001", " two rival"))
    elif name == "anthropic-no-prefill":
        mock.post("https://api.anthropic.com/v1/messages").respond(
            400, json=S.ANTHROPIC_PREFILL_REFUSED)
    elif name == "together":
        base = "https://api.together.xyz/v1"
        mock.get(f"{base}/models").respond(200, json=[
            {"id": "meta-llama/Llama-3.2-3B-Instruct-Turbo", "object": "model",
             "type": "chat"}])
        mock.post(f"{base}/completions").respond(200, json=S.together_echo(S.openai_legacy(
            "meta-llama/Llama-3.2-3B-Instruct-Turbo", "The feud between", PIECES,
            ids=[1403, 21425], with_top=False), PROMPT_BOS, PROMPT_IDS))
    elif name == "fireworks":
        base = "https://api.fireworks.ai/inference/v1"
        mock.get(f"{base}/models").respond(200, json=S.models_list(
            "accounts/fireworks/models/llama-v3p1-8b-instruct", "fireworks"))
        mock.post(f"{base}/completions").respond(200, json=S.legacy_echo(S.openai_legacy(
            "accounts/fireworks/models/llama-v3p1-8b-instruct", "The feud between", PIECES,
            ids=[1403, 21425]), PROMPT))
    elif name == "openrouter":
        base = "https://openrouter.ai/api/v1"
        mock.get(f"{base}/models").respond(200, json=S.models_list(
            "meta-llama/llama-3.1-8b-instruct", "openrouter"))
        answer = S.openai_legacy("meta-llama/llama-3.1-8b-instruct", "The feud between", PIECES)
        answer["choices"][0]["logprobs"] = None  # dropped upstream, no error
        mock.post(f"{base}/completions").respond(200, json=answer)
    elif name == "deepseek":
        base = "https://api.deepseek.com/v1"
        mock.get(f"{base}/models").respond(200, json=S.models_list("deepseek-chat", "deepseek"))
        mock.post(f"{base}/chat/completions").respond(200, json=S.compatible_chat(
            "deepseek-chat", [(" two", 0.0), (" rival", -9999.0)], top=False))
    elif name == "vllm":
        base = "http://127.0.0.1:8000/v1"
        mock.get(f"{base}/models").respond(200, json=S.models_list("my-finetune", "vllm"))
        mock.post(f"{base}/completions").respond(200, json=S.vllm_prompt_logprobs(
            S.openai_legacy("my-finetune", "The feud between", PIECES), PROMPT_BOS,
            PROMPT_IDS))
        mock.post(f"{base}/chat/completions").respond(200, json=S.vllm_prompt_logprobs(
            S.compatible_chat("my-finetune", PIECES, content_prefix="The feud between"),
            CHAT_PROMPT, CHAT_PROMPT_IDS, chat=True))
    elif name == "llama.cpp":
        base = "http://127.0.0.1:8080/v1"
        mock.get(f"{base}/models").respond(200, json=S.models_list("my-finetune", "llamacpp"))
        mock.post(f"{base}/completions").respond(200, json=S.llama_cpp_completion(
            "my-finetune", PIECES, [1403, 21425]))
    else:
        raise KeyError(name)


# adapter -> probe command line (after "probe")
PROBES: dict[str, list[str]] = {
    "openai": ["openai:gpt-4o-mini"],
    "openai-legacy": ["openai:gpt-3.5-turbo-instruct", "--framings", "raw"],
    "anthropic": ["anthropic:claude-haiku-4-5", "--framings", "chat"],
    "anthropic-no-prefill": ["anthropic:claude-opus-4-6", "--framings", "chat",
                             "--reference-only"],
    "together": ["together:meta-llama/Llama-3.2-3B-Instruct-Turbo"],
    "fireworks": ["fireworks:accounts/fireworks/models/llama-v3p1-8b-instruct"],
    "openrouter": ["openrouter:meta-llama/llama-3.1-8b-instruct"],
    "deepseek": ["deepseek:deepseek-chat"],
    "vllm": ["vllm:my-finetune", "--base-url", "http://127.0.0.1:8000/v1", "--chat-mode",
             "prefill", "--api-key-env", "VLLM_API_KEY"],
    "llama.cpp": ["llama.cpp:my-finetune", "--base-url", "http://127.0.0.1:8080/v1",
                  "--api-key-env", "LLAMA_API_KEY"],
}
KEY_ENVS = ["OPENAI_API_KEY", "ANTHROPIC_API_KEY", "TOGETHER_API_KEY", "FIREWORKS_API_KEY",
            "OPENROUTER_API_KEY", "DEEPSEEK_API_KEY", "VLLM_API_KEY", "LLAMA_API_KEY"]


def run_cli(args: list[str]) -> tuple[int, str, str]:
    import cli

    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = cli.main(args)
    return code, out.getvalue(), err.getvalue()


def build(name: str) -> None:
    d = OUT / name
    shutil.rmtree(d, ignore_errors=True)
    d.mkdir(parents=True)
    fx = d / "exchanges.jsonl"
    with respx.mock(assert_all_called=False) as mock:
        _routes(name, mock)
        code, _, err = run_cli(["probe", *PROBES[name], "--fixtures", str(fx),
                                "--record-mode", "record"])
        failed = [c for c in mock.calls if c.response.status_code >= 400]
    with fx.open("a", encoding="utf-8") as fh:
        for call in failed:  # errors are evidence too: replay must refuse the same way
            req, resp = call.request, call.response
            base_path = "/v1" if "/v1/" in req.url.path and "anthropic" not in req.url.host \
                else ""
            path = req.url.path[len(base_path):] if base_path else req.url.path
            fh.write(json.dumps({"method": req.method, "path": path,
                                 "body": json.loads(req.content), "status": resp.status_code,
                                 "content_type": "application/json",
                                 "response": json.loads(resp.content)}, sort_keys=True) + "\n")
    code, out, err = run_cli(["probe", *PROBES[name], "--fixtures", str(fx), "--replay"])
    text = (f"$ blackbox-audit probe {' '.join(PROBES[name])} --replay "
            f"--fixtures {fx.relative_to(ROOT)}\n")
    text += out + (err if err else "") + f"(exit code {code})\n"
    (d / "probe.txt").write_text(text, encoding="utf-8")
    print(text)


def main() -> None:
    for env in KEY_ENVS:
        os.environ[env] = FAKE_KEY
    for name in sys.argv[1:] or PROBES:
        build(name)


if __name__ == "__main__":
    main()
