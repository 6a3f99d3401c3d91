"""fastjson gives the stdlib's values: msgspec where it agrees, json where it would not."""

from __future__ import annotations

import json
import math

import pytest

from blackbox_audit import fastjson
from blackbox_audit.quality import assess
from blackbox_audit.records import Completion, GenerationRequest, Prefill
from blackbox_audit.rundir import RunDir

ODD_TEXTS = [
    b'{"a": 1, "b": [1.5, -0.0, 1e-05, 1e+16, 5e-324, 1.7976931348623157e+308]}',
    b"123456789012345678901234567890123",        # beyond 64 bits: still an int
    b"-9223372036854775809",
    b'{"a": 1, "a": 2}',                          # duplicate key: the last wins
    b'"\\u00e9\\ud83d\\ude00 \\/"',
]
STDLIB_ONLY = [
    b"[NaN, Infinity, -Infinity]",                # msgspec refuses; json accepts
    b"1e400",                                     # out of float range: inf
    b'"\\ud800"',                                 # a lone surrogate escape
    b'\xef\xbb\xbf{"bom": true}',                 # a UTF-8 byte order mark
]


def same(a, b) -> bool:
    """Equal as JSON values, NaN equal to NaN, int and float told apart."""
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return a == b


def outcome(loads, text):
    try:
        return loads(text)
    except ValueError:
        return ValueError


@pytest.mark.parametrize("text", ODD_TEXTS + STDLIB_ONLY)
def test_loads_gives_what_json_loads_gives(text):
    assert same(fastjson.loads(text), json.loads(text))
    as_str = text.decode("utf-8", "surrogatepass")  # str input: a BOM is refused by both
    assert same(outcome(fastjson.loads, as_str), outcome(json.loads, as_str))


@pytest.mark.parametrize("text", [b"", b"{", b'{"a": 1', b"[1,]", b'"a\x01"', b"nul"])
def test_loads_refuses_what_json_refuses(text):
    with pytest.raises(ValueError):
        json.loads(text)
    with pytest.raises(ValueError):
        fastjson.loads(text)


@pytest.mark.parametrize("value", [
    {"a": None, "b": [None, 1.5, None], "c": {"d": None}, "e": "é 😀 \x00 \u2028 \"q\" \\"},
    {"tokens": [" null", "x"], "lp": [-0.5, None]},   # "null" inside a string
    [[["tok", -0.25], ["other", None]]],               # a None deeper than the count looks
    {"lp": [-1e-05, 1e16, -0.0, 100, True, False]},
    {"x": [float("nan"), 1.0], "y": None},             # NaN: written as null
    {"x": {"y": [float("-inf")]}},
    {"big": 123456789012345678901234567890},
    {1: "int key", "t": (1, 2)},
])
def test_dumps_writes_the_stdlib_value_compactly_and_strictly(value):
    # The stdlib's value, except that NaN and infinities (not JSON: a browser's JSON.parse
    # refuses them) are null.
    expected = json.dumps(fastjson.finite(value), ensure_ascii=False, separators=(",", ":"),
                          allow_nan=False)
    out = fastjson.dumps(value)
    assert isinstance(out, str)
    assert same(json.loads(out), json.loads(expected))
    assert "NaN" not in out and "Infinity" not in out


def test_finite_names_non_finite_numbers_when_asked_and_keeps_clean_values():
    value = {"a": [1.0, float("nan")], "b": {"c": float("-inf")}, "d": float("inf")}
    assert fastjson.finite(value) == {"a": [1.0, None], "b": {"c": None}, "d": None}
    assert fastjson.finite(value, named=True) == {"a": [1.0, "NaN"], "b": {"c": "-Infinity"},
                                                  "d": "Infinity"}
    clean = {"a": [1.0, -2.5], "b": "x"}
    assert fastjson.finite(clean) is clean


def test_dumps_hands_msgspec_refusals_to_the_stdlib():
    class Name(str):
        pass

    assert fastjson.dumps({"n": Name("x")}) == '{"n":"x"}'
    with pytest.raises(TypeError):
        fastjson.dumps({"s": {1, 2}} | {"o": object()})


def _completion(lps, tops) -> Completion:
    req = GenerationRequest(Prefill.make("c", "Once"), "raw", 3, 2, prompt="Once")
    return Completion(prefill_id=req.prefill.id, corpus="c", prefill="Once", framing="raw",
                      text=" a b", tokens=[" a", " b"], logprobs=lps, top_logprobs=tops,
                      finish_reason="length", prompt="Once")


def test_completion_rows_never_hold_non_finite_numbers(tmp_path):
    run = RunDir(tmp_path)
    weird = _completion([-0.5, float("-inf")], [[[" a", -0.5]], [[" b", float("nan")]]])
    plain = _completion([-0.5, -0.25], [[[" a", -0.5], [" c", -2.0]], [[" b", -0.25]]])
    assert assess(weird) == ["sentinel_logprobs"]  # the row is degraded before it is written
    run.append_completion(weird)
    run.append_completion(plain)
    run.close()
    lines = (tmp_path / "completions.jsonl").read_text().splitlines()
    assert "Infinity" not in lines[0] and "NaN" not in lines[0]
    back = [Completion.from_json(json.loads(x)) for x in lines]
    assert back[0].logprobs[1] is None and back[0].top_logprobs[1][0][1] is None
    assert back[1] == plain


def test_assess_fast_paths_agree_with_the_rules():
    ok = _completion([-0.5, -0.25], [[[" a", -0.5], [" c", -2.0]], [[" b", -0.25]]])
    assert assess(ok) == []
    not_greedy = _completion([-0.5, -0.25], [[[" a", -0.5]], [[" b", -0.25], [" z", -0.1]]])
    assert assess(not_greedy) == ["not_greedy"]
    # a None among the top values: skipped, the rest still checked
    gaps = _completion([-0.5, -0.25], [[[" a", -0.5], [" c", None]], [[" z", -0.1]]])
    assert assess(gaps) == ["not_greedy"]
    gaps_ok = _completion([-0.5, -0.25], [[[" a", None]], [[" b", -0.25], [" z", None]]])
    assert assess(gaps_ok) == []
    assert assess(_completion([-0.5, None], None)) == ["logprob_count"]
    assert assess(_completion([0.0, 0.0], None)) == ["sentinel_logprobs"]
    assert assess(_completion([-0.5, -9999.0], None)) == ["sentinel_logprobs"]
    assert assess(_completion([-0.5, 0.5], None)) == ["sentinel_logprobs"]
    # NaN and infinities are impossible log-probabilities: the row is degraded (issue 12)
    assert assess(_completion([-0.5, float("nan")], None)) == ["sentinel_logprobs"]
    assert assess(_completion([-0.5, float("-inf")], None)) == ["sentinel_logprobs"]
