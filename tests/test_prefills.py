"""Prefill sources, cutting and deduplication."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from blackbox_audit.errors import ConfigError
from blackbox_audit.prefills import (
    BUILTIN_CORPORA,
    builtin_documents,
    documents,
    make_cutter,
    select_prefills,
)


@pytest.fixture(scope="module")
def cut(tokenizer):
    return make_cutter(lambda s: tokenizer(s, add_special_tokens=False).input_ids,
                       tokenizer.decode)


def test_builtin_bank_has_3000_distinct_3_token_prefills_in_three_genres(cut, tokenizer):
    prefills = select_prefills(builtin_documents(), cut, 3, None, seed=0)
    per = Counter(p.corpus for p in prefills)
    assert set(per) == set(BUILTIN_CORPORA)
    assert len({(p.corpus, p.text) for p in prefills}) == len(prefills) >= 3000
    assert min(per.values()) >= 1000
    for p in prefills[:200]:
        assert len(tokenizer(p.text, add_special_tokens=False).input_ids) == 3


def test_cutting_deduplicates_and_sampling_is_seeded(cut):
    docs = [("c", "The cat sat on the mat"), ("c", "The cat sat down"),
            ("c", "A big dog barked"), ("c", "Hi")]
    ps = select_prefills(docs, cut, 3, None, seed=1)
    assert sorted(p.text for p in ps) == ["A big dog", "The cat sat"]
    a = [p.text for p in select_prefills(builtin_documents(), cut, 3, 50, seed=7)]
    b = [p.text for p in select_prefills(builtin_documents(), cut, 3, 50, seed=7)]
    c = [p.text for p in select_prefills(builtin_documents(), cut, 3, 50, seed=8)]
    assert a == b and a != c and len(a) == 150


def test_file_sources_text_and_jsonl(tmp_path, cut):
    txt = tmp_path / "notes.txt"
    txt.write_text("Alpha beta gamma delta\nOne two three four\n")
    ps = select_prefills(documents(f"file:{txt}"), cut, 2, None, seed=0)
    assert {p.corpus for p in ps} == {"notes"} and len(ps) == 2
    jl = tmp_path / "docs.jsonl"
    jl.write_text(json.dumps({"text": "Quantum fields oscillate", "corpus": "physics"}) + "\n")
    assert select_prefills(documents(f"file:{jl}"), cut, 2, None, 0)[0].corpus == "physics"
    jl.write_text("{oops\n")
    with pytest.raises(ConfigError, match="line 1"):
        list(documents(f"file:{jl}"))


def test_unknown_or_unavailable_sources_fail_clearly(cut):
    with pytest.raises(ConfigError, match="Unknown prefill source"):
        documents("s3://bucket")
    with pytest.raises(ConfigError, match="does not exist"):
        list(documents("file:/nonexistent/x.txt"))
    with pytest.raises(ConfigError, match="hf: sources|datasets"):
        list(documents("hf:allenai/c4:en:validation:text"))
    with pytest.raises(ConfigError, match="corpus"):
        select_prefills(builtin_documents(), cut, 3, 5, 0, corpora=["poetry"])
