"""The packed exchange log's compact form (blackbox_audit.compact): exactly reversible on
real recorded answers and on the shapes where a rule must not apply, far smaller under gzip,
and a packed run directory's exchange log replays as the original does."""

from __future__ import annotations

import gzip
import json
from array import array
from pathlib import Path

from blackbox_audit import audit, fastjson, plan
from blackbox_audit.compact import MARK, compact, expand, shortest_f32
from blackbox_audit.rundir import RunDir

ROOT = Path(__file__).resolve().parent.parent
ORGANISM = ROOT / "fixtures" / "organism-vellari" / "exchanges.jsonl.gz"


def recorded(n: int | None = None) -> list[dict]:
    """The organism's recorded answers as the server sent them (the committed file holds
    them compact since scripts/compact_fixture.py: expanded here, as the fixture store does)."""
    lines = [x for x in gzip.decompress(ORGANISM.read_bytes()).split(b"\n") if x.strip()]
    return [expand(fastjson.loads(x)) for x in lines[:n]]


def round_trip(rec: dict) -> dict:
    """compact, through JSON text as the packed file holds it, and back."""
    return expand(fastjson.loads(fastjson.dumps(compact(rec))))


def test_recorded_llama_cpp_answers_come_back_equal_and_gzip_to_under_60_percent():
    recs = recorded()
    assert all(round_trip(r) == r for r in recs)
    packed = [compact(r) for r in recs]
    assert sum(MARK in p for p in packed) >= len(recs) - 2       # the /models GETs may not
    plain = gzip.compress("\n".join(fastjson.dumps(r) for r in recs).encode())
    small = gzip.compress("\n".join(fastjson.dumps(p) for p in packed).encode())
    assert len(small) < 0.6 * len(plain), (len(small), len(plain))


def entry(token: str, lp: float, raw: list[int] | None = None) -> dict:
    return {"token": token, "logprob": lp,
            "bytes": list(token.encode()) if raw is None else raw}


def test_each_rule_applies_only_where_it_is_exactly_reversible():
    f = array("f", [-0.7289037108421326, -1.5])
    answer = {"choices": [{"logprobs": {"content": [
        {**entry(" the", f[0]), "top_logprobs": [entry(" the", f[0]), entry(" a", f[1])]},
        {**entry("\ufffd", f[1], raw=[0xE2, 0x80]), "top_logprobs": []},  # part of a char
    ]}}]}
    small = compact(answer)
    assert small[MARK] == ["bytes", "f32", "columns"]
    assert round_trip(answer) == answer
    # a logprob that is no float32 (a server computing in float64): floats kept whole
    wide = json.loads(json.dumps(answer))
    wide["choices"][0]["logprobs"]["content"][0]["logprob"] = -0.1
    assert "f32" not in compact(wide)[MARK] and round_trip(wide) == wide
    # a token without its bytes: a missing bytes key could not be told from a dropped one
    nobytes = json.loads(json.dumps(answer))
    del nobytes["choices"][0]["logprobs"]["content"][1]["bytes"]
    assert "bytes" not in compact(nobytes)[MARK] and round_trip(nobytes) == nobytes
    # objects whose keys differ stay objects; an answer that holds our marker is left alone
    mixed = {"data": [{"a": 1}, {"b": 2}], "x": [1, 2]}
    assert compact(mixed) is mixed
    hostile = {"data": [{MARK: ["columns"], "v": 1}, {MARK: ["columns"], "v": 2}]}
    assert compact(hostile) is hostile and expand(hostile) == hostile
    assert shortest_f32(float(f[0])) == -0.7289037


def test_a_packed_run_replays_as_the_recorded_one(tmp_path):
    """Record a run's exchange log (replaying the organism fixture into the run's own log),
    pack it, then replay from the packed log: the same completions, row for row."""
    def run(out: Path, fixtures: Path, mode: str):
        return audit(plan(out=str(out), model="vellari-octopus", per_corpus=8,
                          fixtures=str(fixtures), record_mode=mode, generate_only=True,
                          quiet=True))

    plain = tmp_path / "recorded.jsonl"      # the answers as the server sent them
    plain.write_text("".join(fastjson.dumps(r) + "\n" for r in recorded()))
    first = tmp_path / "first"
    run(first, plain, "replay")
    packed_dir = tmp_path / "packed"
    packed_dir.mkdir()
    (packed_dir / "exchanges.jsonl").write_bytes(plain.read_bytes())
    RunDir(packed_dir).pack()
    packed_log = packed_dir / "exchanges.jsonl.gz"
    assert any(MARK in json.loads(x)
               for x in gzip.decompress(packed_log.read_bytes()).splitlines())
    second = tmp_path / "second"
    run(second, packed_log, "replay")
    a, b = RunDir(first).load_completions(), RunDir(second).load_completions()
    assert len(a) == 48 and a == b
