"""No key ever written or printed, whatever a careless or hostile endpoint sends back.

A stub server on 127.0.0.1 (tests/stub_server.py) hands the run's API key back in every way a
server could: in the completion text, split over tokens (text and tokens, tokens alone, their
bytes, their top alternatives), JSON-escaped and ``\\/``-escaped, ``\\u``-escaped, in the
model field, in response headers, as half a key, in error bodies of every status, and in its
model list. Then everything the tool wrote or printed (the run directory, its fixture and
report, stdout, stderr) is searched for every 8-character piece of the key's random part:
as raw bytes, in every JSON-decoded string, and in every list of tokens joined. 0 hits.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import re
import threading
from pathlib import Path
from typing import Any

import pytest
from stub_server import FILLER, Seen, StubServer, completion, json_answer, legacy_choice, models

import cli

# Keys whose random part holds what JSON escapes (", \ and /); one shaped like an OpenAI
# key, one with no recognisable shape at all.
SHAPED = "sk-" + 'Zq8vN3xRt5"Lm2P\\w9K/c7Hd4Jf6Bg1Ys0Tq'
SHAPELESS = "zQ8vN3xRt5Lm2Pw9Kc7Hd4Jf6Bg1Ys0"


def random_part(key: str) -> str:
    return key[3:] if key.startswith("sk-") else key


def pieces(key: str) -> list[str]:
    """Every 8-character piece of the key's random part: none may appear anywhere."""
    r = random_part(key)
    return sorted({r[i:i + 8] for i in range(len(r) - 7)})


# -- what everything the tool produced holds ------------------------------------------------
def _strings(value: Any, out: list[str]) -> None:
    if isinstance(value, str):
        out.append(value)
    elif isinstance(value, dict):
        for k, v in value.items():
            out.append(str(k))
            _strings(v, out)
    elif isinstance(value, list):
        for v in value:
            _strings(v, out)
        if value and all(isinstance(v, str) for v in value):
            out.append("".join(value))                      # tokens joined
        if value and all(isinstance(v, dict) for v in value):
            for field in ("token", "text"):                  # chat-shape tokens joined
                out.append("".join(str(v.get(field, "")) for v in value))
            out.append("".join(str(next(iter(v), "")) for v in value))  # {token: lp} keys
        if value and all(isinstance(v, list) and v and all(isinstance(b, int) for b in v)
                         for v in value):
            out.append(b"".join(bytes(b % 256 for b in v) for v in value)
                       .decode("utf-8", "replace"))          # token bytes joined
        if value and all(isinstance(v, list) and v and isinstance(v[0], list) for v in value):
            out.append("".join(str(v[0][0]) for v in value))  # top-1 alternatives joined


def _json_values(text: str) -> list[Any]:
    values = []
    try:
        values.append(json.loads(text))
    except ValueError:
        for line in text.splitlines():
            with contextlib.suppress(ValueError):
                values.append(json.loads(line))
    # the report's data block
    for block in re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', text,
                            re.S):
        values.append(json.loads(block))
    return values


def leaks(key: str, run: Path, *printed: str) -> list[str]:
    """Where any piece of ``key`` shows: (place, piece) for raw bytes, decoded strings and
    joined tokens of every file under ``run`` and of each printed text."""
    found = []
    sources = [(str(p), p.read_bytes()) for p in sorted(run.rglob("*")) if p.is_file()]
    sources += [(f"printed#{i}", t.encode()) for i, t in enumerate(printed)]
    for where, data in sources:
        texts = [data.decode("utf-8", "replace")]
        strings: list[str] = []
        for v in _json_values(texts[0]):
            _strings(v, strings)
        for piece in pieces(key):
            if piece.encode() in data:
                found.append(f"{where}: raw bytes hold {piece!r}")
            elif any(piece in s for s in strings):
                found.append(f"{where}: a decoded string or joined tokens hold {piece!r}")
    return found


# -- the hostile endpoint -------------------------------------------------------------------
def split3(s: str) -> list[str]:
    return [s[i:i + 3] for i in range(0, len(s), 3)]


def escaped_everywhere(payload: Any) -> bytes:
    """JSON with every character of every string \\u-escaped."""
    def enc(v: Any) -> str:
        if isinstance(v, str):
            return '"' + "".join(f"\\u{ord(c):04x}" for c in v) + '"'
        if isinstance(v, dict):
            return "{" + ",".join(f"{enc(k)}:{enc(x)}" for k, x in v.items()) + "}"
        if isinstance(v, list):
            return "[" + ",".join(enc(x) for x in v) + "]"
        return json.dumps(v)
    return enc(payload).encode()


LEAKS = ["text_and_tokens", "tokens_only", "chat_shape", "json_escaped", "slash_escaped",
         "unicode_escaped", "top1_only", "model_field", "header", "fragment", "error_500",
         "error_429", "error_503_escaped"]


class Hostile:
    """Gives each prompt one way of leaking the key (every way used once), the same on
    every attempt; the preflight's 2-token call and the rest get clean answers."""

    def __init__(self, key: str, model_list_leak: bool = True):
        self.key = key
        self.model_list_leak = model_list_leak
        self.assigned: dict[str, str] = {}
        self.lock = threading.Lock()

    def mode(self, prompt: str) -> str:
        with self.lock:
            if prompt not in self.assigned:
                n = len(self.assigned)
                self.assigned[prompt] = LEAKS[n] if n < len(LEAKS) else "clean"
            return self.assigned[prompt]

    def __call__(self, req: Seen):
        key = self.key
        if req.method == "GET":
            return models("stub-model", *([f"shadow-{key}"] if self.model_list_leak else []))
        body = req.body or {}
        n = int(body.get("max_tokens", 12))
        prompt = str(body.get("prompt", ""))
        if n <= 2:
            return json_answer(completion(legacy_choice(FILLER[:2])))
        mode = self.mode(prompt)
        h = int(hashlib.sha256(prompt.encode()).hexdigest(), 16)
        clean = FILLER[h % 3:][:9] + FILLER[:3]
        if mode == "text_and_tokens":
            return json_answer(completion(legacy_choice(clean[:3] + split3(key) + clean[3:6])))
        if mode == "tokens_only":
            return json_answer(completion(legacy_choice(clean[:2] + split3(key),
                                                        text="".join(clean))))
        if mode == "chat_shape":
            toks = clean[:2] + split3(key)
            content = [{"id": 100 + i, "token": t, "bytes": list(t.encode()),
                        "logprob": -0.1,
                        "top_logprobs": [{"id": 100 + i, "token": t, "bytes": list(t.encode()),
                                          "logprob": -0.1}]} for i, t in enumerate(toks)]
            return json_answer(completion({"index": 0, "text": "".join(toks),
                                           "finish_reason": "length",
                                           "logprobs": {"content": content}}))
        if mode in ("json_escaped", "slash_escaped"):
            data = json.dumps(completion(legacy_choice(clean[:4] + [" " + key] + clean[4:8])))
            if mode == "slash_escaped":
                data = data.replace("/", "\\/")
            return 200, {"content-type": "application/json"}, data.encode()
        if mode == "unicode_escaped":
            return 200, {}, escaped_everywhere(completion(legacy_choice(
                clean[:4] + [" " + key] + clean[4:8])))
        if mode == "top1_only":
            choice = legacy_choice(clean)
            choice["logprobs"]["top_logprobs"] = [
                {p: -0.1, t: -0.2} for p, t in zip(split3(key), clean, strict=False)]
            return json_answer(completion(choice))
        if mode == "model_field":
            return json_answer(completion(legacy_choice(clean), model=key,
                                          system_fingerprint=f"Bearer {key}"))
        if mode == "header":
            return json_answer(completion(legacy_choice(clean)),
                               headers={"x-echo-authorization": f"Bearer {key}"})
        if mode == "fragment":
            half = random_part(key)[: len(random_part(key)) // 2 + 2]
            return json_answer(completion(legacy_choice(clean[:4] + [" " + half] + clean[4:])))
        auth = req.headers.get("authorization", "")
        if mode == "error_500":
            return json_answer({"error": {"message": f"upstream rejected {auth}"}}, 500)
        if mode == "error_429":
            return json_answer({"error": {"message": f"slow down, {auth}"}}, 429,
                               {"retry-after": "0"})
        if mode == "error_503_escaped":
            return 503, {}, json.dumps({"error": f"bad key {auth}"}).replace("/", "\\/") \
                .encode()
        return json_answer(completion(legacy_choice(clean)))


def audit_args(server: StubServer, out: Path, *extra: str) -> list[str]:
    return ["audit", "--base-url", server.base_url, "--model", "stub-model",
            "--api-key-env", "STUB_KEY", "--corpora", "prose", "--per-corpus", "16",
            "--framings", "raw", "--max-tokens", "24", "--top-logprobs", "2",
            "--concurrency", "4", "--retries", "1", "--timeout", "10",
            "--max-degraded-share", "1", "--quiet", "--out", str(out), *extra]


@pytest.mark.parametrize("key", [SHAPED, SHAPELESS], ids=["sk-shaped", "shapeless"])
def test_a_key_sent_back_in_every_way_is_never_written_or_printed(key, tmp_path, monkeypatch,
                                                                   capfd):
    monkeypatch.setenv("STUB_KEY", key)
    run = tmp_path / "run"
    with StubServer(Hostile(key)) as server:
        assert cli.main(audit_args(server, run)) == 0
    hostile: Hostile = server.answer  # type: ignore[assignment]
    assert set(LEAKS) <= set(hostile.assigned.values()), "every way of leaking was exercised"
    assert all(s.headers.get("authorization") == f"Bearer {key}" for s in server.seen)
    assert cli.main(["show", str(run)]) == 0
    assert cli.main(["report", str(run)]) == 0
    # Replayed without the key and with no server (the failed rows, never answered, fail
    # again on a dead port): the same rows withheld, the same rows ranked.
    monkeypatch.delenv("STUB_KEY")
    replay = tmp_path / "replay"
    assert cli.main(["audit", "--fixtures", str(run / "exchanges.jsonl"),
                     "--base-url", "http://127.0.0.1:9/v1", "--retries", "0",
                     "--model", "stub-model", "--corpora", "prose", "--per-corpus", "16",
                     "--framings", "raw", "--max-tokens", "24", "--top-logprobs", "2",
                     "--max-degraded-share", "1", "--quiet", "--out", str(replay)]) == 0
    out, err = capfd.readouterr()

    assert leaks(key, tmp_path, out, err) == []
    manifest = json.loads((run / "manifest.json").read_text())
    counts = manifest["counts"]
    # Each 2xx answer that carried the key is kept, withheld and counted; the error rows
    # failed with the key cut from their message; the clean rows ranked.
    withheld = counts["degraded_reasons"].get("secret_withheld", 0)
    assert withheld >= 8, counts
    assert counts["failed"] == 3 and counts["ranked"] >= 2, counts
    again = json.loads((replay / "manifest.json").read_text())["counts"]
    assert again["degraded_reasons"] == counts["degraded_reasons"]
    assert again["ranked"] == counts["ranked"]
    rows = [json.loads(x) for x in (run / "completions.jsonl").read_text().splitlines()]
    assert any(r["error"] and "<redacted>" in r["error"] for r in rows)


@pytest.mark.parametrize("status", [400, 401, 403, 404, 422])
def test_a_key_quoted_by_a_fatal_error_during_generation_is_not_printed(status, tmp_path,
                                                                         monkeypatch, capfd):
    key = SHAPED
    monkeypatch.setenv("STUB_KEY", key)

    def answer(req: Seen):
        if req.method == "GET":
            return models()
        if int((req.body or {}).get("max_tokens", 0)) <= 2:
            return json_answer(completion(legacy_choice(FILLER[:2])))
        auth = req.headers.get("authorization", "")
        return json_answer({"error": {"message": f"model stub-model: invalid header {auth}"}},
                           status)

    with StubServer(answer) as server:
        code = cli.main(audit_args(server, tmp_path / "run"))
    out, err = capfd.readouterr()
    assert code == 3, err
    assert "HTTP" in err and "<redacted>" in err
    assert leaks(key, tmp_path, out, err) == []


def test_credentials_in_the_base_url_move_to_a_header_and_are_stored_nowhere(tmp_path,
                                                                           monkeypatch, capfd):
    password = "Pw9Kc7Hd4Jf6Bg1Ys0TqZ"
    with StubServer(Hostile(password, model_list_leak=False)) as server:
        url = f"http://auditor:{password}@127.0.0.1:{server.port}/v1"
        args = audit_args(server, tmp_path / "run")
        args[args.index("--base-url") + 1] = url
        args.remove("--api-key-env")
        args.remove("STUB_KEY")
        assert cli.main(args) == 0
        assert cli.main(["report", str(tmp_path / "run")]) == 0
    out, err = capfd.readouterr()
    import base64

    basic = "Basic " + base64.b64encode(f"auditor:{password}".encode()).decode()
    assert all(s.headers.get("authorization") == basic for s in server.seen)
    assert all(s.path.startswith("/v1/") for s in server.seen)
    assert leaks("sk-" + password, tmp_path, out, err) == []
    token = basic.split()[1]
    assert leaks(token, tmp_path, out, err) == []
    manifest = json.loads((tmp_path / "run" / "manifest.json").read_text())
    assert manifest["target"]["base_url"] == f"http://127.0.0.1:{server.port}/v1"


def test_a_key_in_the_base_url_query_is_refused_without_repeating_it(tmp_path, capfd):
    secret = "Qs7Hd4Jf6Bg1Ys0TqZw9Kc"
    code = cli.main(["audit", "--base-url", f"http://127.0.0.1:9/v1?api_key={secret}",
                     "--model", "m", "--out", str(tmp_path / "run"), "--quiet"])
    out, err = capfd.readouterr()
    assert code == 2
    assert "query string" in err and "--api-key-env" in err
    assert secret not in out + err
    assert not (tmp_path / "run").exists() or leaks("sk-" + secret, tmp_path) == []


@pytest.mark.parametrize("key", [SHAPED, SHAPELESS], ids=["sk-shaped", "shapeless"])
@pytest.mark.parametrize("mode", LEAKS)
def test_each_way_of_sending_the_key_back_is_cut_from_the_row_and_the_fixture(mode, key,
                                                                              tmp_path):
    """One case at a time, hermetic (httpx.MockTransport plays the endpoint): the row as it
    is kept, the recorded exchange and the completions file hold no piece of the key, live
    and replayed alike."""
    import asyncio

    import httpx

    from blackbox_audit.quality import withhold_secrets
    from blackbox_audit.records import Completion, GenerationRequest, Prefill
    from blackbox_audit.redact import Redactor
    from blackbox_audit.rundir import RunDir
    from blackbox_audit.transport import FixtureStore, RetryPolicy, build_client
    from providers.base import RequestFailed
    from providers.openai_compatible import OpenAICompatibleProvider

    hostile = Hostile(key)
    hostile.assigned["Once upon a"] = mode

    def handler(request: httpx.Request) -> httpx.Response:
        seen = Seen(request.method, request.url.path,
                    {k.lower(): v for k, v in request.headers.items()},
                    json.loads(request.content or b"null"))
        status, headers, data = hostile(seen)
        return httpx.Response(status, headers=headers, content=data)

    req = GenerationRequest(Prefill.make("prose", "Once upon a"), "raw", 24, 2,
                            prompt="Once upon a")

    async def once(mode: str) -> Completion:
        redactor = Redactor([key])
        store = FixtureStore(tmp_path / "exchanges.jsonl", redactor)
        async with build_client("http://stub/v1", mode=mode, store=store,
                                network=httpx.MockTransport(handler),
                                headers={"Authorization": f"Bearer {key}"},
                                retry=RetryPolicy(attempts=1, max_wait=0.0)) as client:
            provider = OpenAICompatibleProvider(client, "stub-model")
            try:
                c = await provider.generate(req)
            except RequestFailed as e:
                c = Completion.failed(req, str(e))
        return withhold_secrets(c, redactor)

    live = asyncio.run(once("auto"))
    replayed = asyncio.run(once("auto")) if not mode.startswith("error") else live
    for name, c in (("live", live), ("replayed", replayed)):
        run = RunDir(tmp_path / name, Redactor([key]))
        run.append_completion(c)
        run.close()
    assert leaks(key, tmp_path) == []
    if mode.startswith("error"):
        assert live.error and "<redacted>" in live.error
    elif mode in ("header", "model_field"):
        # outside the completion (headers are never written; the model field is cut): the
        # row's content is untouched, so it is kept and scored
        assert live.degraded == [] == replayed.degraded
        assert live.text == replayed.text and "<redacted>" not in live.text
    else:
        assert live.degraded == ["secret_withheld"] == replayed.degraded
