"""Bad answers never crash, wedge or poison a run.

Against a stub server on 127.0.0.1 (tests/stub_server.py) that answers some prompts with
NaN log-probabilities, JSON of the wrong shape, or a completion far longer than asked:
every row ends as a row (usable, or marked with its reason), the run and its report finish,
no JSON file or page holds a non-finite number, and a rerun replays the recorded answers the
same way without a new request (the wedge: a recorded malformed answer crashed every rerun).
"""

from __future__ import annotations

import json
import re
import threading
from pathlib import Path

import httpx
import pytest
from stub_server import FILLER, Seen, StubServer, completion, json_answer, legacy_choice, models

import cli
from blackbox_audit.transport import OversizedBody, RetryTransport


def _strict(text: str):
    def refuse(name: str):
        raise ValueError(f"non-finite number {name} in JSON")
    return json.loads(text, parse_constant=refuse)


def assert_strict_json_everywhere(run: Path) -> None:
    """Every JSON file of the run and the report's data block parse as strict JSON."""
    for p in run.rglob("*"):
        if p.suffix == ".json":
            _strict(p.read_text())
        elif p.suffix == ".jsonl":
            for line in p.read_text().splitlines():
                _strict(line)
    page = (run / "report.html").read_text()
    blocks = re.findall(r'<script type="application/json"[^>]*>(.*?)</script>', page, re.S)
    assert blocks, "the report has its data block"
    for block in blocks:
        _strict(block)


def raw_answer(payload_text: str):
    return 200, {"content-type": "application/json"}, payload_text.encode()


GOOD = FILLER[:9]

# prompt index -> (what the stub sends, the reason the row must carry)
BAD = [
    ("nan_literal", "sentinel_logprobs"),
    ("nan_string", "sentinel_logprobs"),
    ("infinity", "sentinel_logprobs"),
    ("positive", "sentinel_logprobs"),
    ("token_logprobs_number", "malformed_answer"),
    ("top_logprobs_lists", "malformed_answer"),
    ("choices_object", "malformed_answer"),
    ("text_number", "malformed_answer"),
    ("bytes_out_of_range", "malformed_answer"),
    ("logprobs_string", "malformed_answer"),
    ("answer_is_list", "malformed_answer"),
    ("huge_token", "over_length"),
    ("too_many_tokens", "over_length"),
]


class BadAnswers:
    def __init__(self) -> None:
        self.assigned: dict[str, str] = {}
        self.lock = threading.Lock()

    def __call__(self, req: Seen):
        if req.method == "GET":
            return models()
        body = req.body or {}
        if int(body.get("max_tokens", 0)) <= 2:
            return json_answer(completion(legacy_choice(FILLER[:2])))
        prompt = str(body.get("prompt"))
        with self.lock:
            n = len(self.assigned)
            mode = self.assigned.setdefault(prompt, BAD[n][0] if n < len(BAD) else "good")
        good = json.dumps(completion(legacy_choice(GOOD, [-0.1] * len(GOOD))))
        lps = json.dumps([-0.1] * len(GOOD))
        if mode == "nan_literal":
            assert lps in good
            return raw_answer(good.replace(lps, "[-0.1, NaN" + ", -0.1" * (len(GOOD) - 2)
                                           + "]"))
        if mode == "nan_string":
            return json_answer(completion(legacy_choice(GOOD, ["NaN"] + [-0.1] * 8)))
        if mode == "infinity":
            assert lps in good
            return raw_answer(good.replace(lps, "[-Infinity" + ", -0.1" * (len(GOOD) - 1)
                                           + "]"))
        if mode == "positive":
            return json_answer(completion(legacy_choice(GOOD, [0.7] + [-0.1] * 8)))
        if mode == "token_logprobs_number":
            choice = legacy_choice(GOOD)
            choice["logprobs"]["token_logprobs"] = 5
            return json_answer(completion(choice))
        if mode == "top_logprobs_lists":
            choice = legacy_choice(GOOD)
            choice["logprobs"]["top_logprobs"] = [[t, -0.1] for t in GOOD]
            return json_answer(completion(choice))
        if mode == "choices_object":
            return json_answer({**completion(legacy_choice(GOOD)),
                                "choices": {"0": legacy_choice(GOOD)}})
        if mode == "text_number":
            return json_answer(completion({**legacy_choice(GOOD), "text": 5}))
        if mode == "bytes_out_of_range":
            content = [{"token": t, "logprob": -0.1, "bytes": [300], "top_logprobs": []}
                       for t in GOOD]
            return json_answer(completion({"index": 0, "text": "".join(GOOD),
                                           "finish_reason": "length",
                                           "logprobs": {"content": content}}))
        if mode == "logprobs_string":
            return json_answer(completion({**legacy_choice(GOOD), "logprobs": "yes"}))
        if mode == "answer_is_list":
            return json_answer([completion(legacy_choice(GOOD))])
        if mode == "huge_token":
            return json_answer(completion(legacy_choice(GOOD[:5] + [" x" * 2_500_000]
                                                        + GOOD[5:])))
        if mode == "too_many_tokens":
            return json_answer(completion(legacy_choice(GOOD * 4)))
        return json_answer(completion(legacy_choice(GOOD)))


def args(server_url: str, out: Path, *extra: str) -> list[str]:
    return ["audit", "--base-url", server_url, "--model", "stub-model", "--corpora", "prose",
            "--per-corpus", "16", "--framings", "raw", "--max-tokens", "12",
            "--top-logprobs", "2", "--concurrency", "4", "--retries", "0", "--timeout", "20",
            "--max-degraded-share", "1", "--quiet", "--out", str(out), *extra]


def test_bad_answers_become_marked_rows_and_reruns_replay_them_without_a_request(tmp_path,
                                                                                  capfd):
    run = tmp_path / "run"
    with StubServer(BadAnswers()) as server:
        assert cli.main(args(server.base_url, run)) == 0
        sent = len(server.seen)
        # The rerun: every answer is on disk; nothing is asked again, nothing crashes.
        assert cli.main(args(server.base_url, run)) == 0
        assert len(server.seen) == sent
    out, err = capfd.readouterr()
    assert "Traceback" not in out + err
    bad: BadAnswers = server.answer  # type: ignore[assignment]
    assert {m for m, _ in BAD} <= set(bad.assigned.values())

    rows = {json.loads(x)["prompt"]: json.loads(x)
            for x in (run / "completions.jsonl").read_text().splitlines()}
    reasons = dict(BAD)
    for prompt, mode in bad.assigned.items():
        row = rows[prompt]
        want = reasons.get(mode)
        if want is None:
            assert row["degraded"] == [] and row["error"] is None, row
        else:
            assert want in row["degraded"], (mode, row["degraded"])
        if want == "malformed_answer":
            assert row["detail"], mode   # what was wrong, in words
    manifest = json.loads((run / "manifest.json").read_text())
    assert manifest["counts"]["ranked"] == 3                  # the good rows, and only them
    assert all("NaN" not in json.dumps(r) for r in rows.values())
    assert_strict_json_everywhere(run)
    page = (run / "report.html").read_text()
    data = json.loads(re.findall(r'<script type="application/json"[^>]*>(.*?)</script>',
                                 page, re.S)[0])
    # The three good rows continue identically, so the report shows them once with a count.
    assert sum(r.get("dup", 1) for r in data["rows"]) == 3


def test_a_malformed_first_answer_is_refused_before_anything_else_is_sent(tmp_path, capfd):
    def answer(req: Seen):
        if req.method == "GET":
            return models()
        return json_answer({"id": "x", "choices": {"text": "nope"}})

    with StubServer(answer) as server:
        code = cli.main(args(server.base_url, tmp_path / "run"))
    out, err = capfd.readouterr()
    assert code == 3 and "not in the shape" in err and "Traceback" not in err
    assert len([s for s in server.seen if s.method == "POST"]) == 1


def test_an_answer_past_the_body_cap_fails_its_row_without_being_read_whole():
    big = b'{"choices": [{"text": "' + b"x" * 5000 + b'"}]}'

    def handler(request: httpx.Request) -> httpx.Response:
        chunked = request.url.path.endswith("chunked")
        if chunked:
            return httpx.Response(200, headers={"content-type": "application/json"},
                                  stream=_Chunks(big))
        return httpx.Response(200, headers={"content-type": "application/json"}, content=big)

    import asyncio

    async def go(path: str):
        t = RetryTransport(httpx.MockTransport(handler), max_body_bytes=1000)
        async with httpx.AsyncClient(transport=t, base_url="http://stub") as c:
            return await c.post(path, json={})

    with pytest.raises(OversizedBody, match="larger than"):
        asyncio.run(go("/chunked"))
    with pytest.raises(OversizedBody):
        asyncio.run(go("/declared"))


class _Chunks(httpx.AsyncByteStream):
    """A body sent in 100-byte chunks with no declared length."""

    def __init__(self, data: bytes):
        self.data = data

    async def __aiter__(self):
        for i in range(0, len(self.data), 100):
            yield self.data[i:i + 100]


def test_the_reference_refuses_a_sequence_past_one_pass_and_keeps_batches_in_budget(
        reference):
    too_long = [1] * (reference.max_length + 1)
    with pytest.raises(ValueError, match="max_length"):
        reference.score([too_long], [1])
    assert reference.max_length <= reference.token_budget
