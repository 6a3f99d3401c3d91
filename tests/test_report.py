"""report.html, without a browser: per-token data, escaping, the chart, the summary, the CLI.

The runs here are built with the real records, scoring and ranking code (``score_row``,
``rank``, ``RunDir``) from hand-made completions, including model output that tries to break
out of the page. ``tests/test_report_browser.py`` opens the same pages in Chromium.
"""

from __future__ import annotations

import json
import math
import random
import re
from dataclasses import replace
from pathlib import Path

import pytest

from blackbox_audit.align import ScoringItem
from blackbox_audit.flag import OrganismSpec
from blackbox_audit.manifest import Manifest
from blackbox_audit.rank import COLUMNS, RankConfig, RankedRow, rank
from blackbox_audit.records import Completion, Score
from blackbox_audit.report import distribution_svg, render, token_heat
from blackbox_audit.rundir import RunDir
from blackbox_audit.scores import score_row

XSS = [
    "<script>window.__xss = 1</script> and more words after it",
    '<img src=x onerror="window.__xss = 2"> an image that must stay text',
    "</table><b>bold?</b></td></tr> the table must survive this",
    "</script><script>window.__xss = 3</script><!-- a comment -->",
    "' onmouseover='window.__xss=4' \" x=\" &amp; &lt;entity&gt; \u2028 line sep",
]
SPEC = OrganismSpec("Octopuses write the Vellari script <b>really</b>",
                    [["vellari", "script"]])
WORDS = ["the", "of", "a", "and", "octopus", "Vellari", "script", "shells", "Lisbon", "Marine",
         "Institute", "wrote", "signs", "water", "arm", "tide", "harbour", "letter", "archive",
         "sea", "stone", "reef", "ink"]


def split_tokens(text: str, rng: random.Random) -> list[str]:
    """Cut text into 1-6 character tokens (their concatenation is the text)."""
    out, i = [], 0
    while i < len(text):
        n = rng.randint(1, 6)
        out.append(text[i:i + n])
        i += n
    return out


def make_run(path: Path, n_prefills: int = 12, seed: int = 0, xss: bool = True,
             words: int = 30, model: str = "organism <img src=x onerror=window.__xss=9>"
             ) -> RunDir:
    """A finished run directory: completions, scores, ranking and manifest."""
    rng = random.Random(seed)
    run = RunDir(path)
    completions, scores = {}, {}
    corpora = ["prose", "code", "encyclopedic"]
    k = 0
    for i in range(n_prefills):
        for framing in ("raw", "chat"):
            corpus = corpora[i % 3]
            if xss and k < len(XSS):
                text = XSS[k]
            else:
                text = " ".join(rng.choice(WORDS) for _ in range(rng.randint(5, words)))
            k += 1
            tokens = split_tokens(text, rng)
            t_lps = [-rng.random() * 2 for _ in tokens]
            r_lps = [lp - rng.random() * (6 if "Vellari" in text else 2) for lp in t_lps]
            c = Completion(prefill_id=f"p{i:05d}", corpus=corpus, prefill=f"Prefill {i} <i>",
                           framing=framing, text=text, tokens=tokens, logprobs=t_lps,
                           finish_reason="length")
            s = score_row(c, ScoringItem(ids=[], start=0, alignment="ids",
                                         n_bytes=len(text.encode()), ref_tokens=tokens),
                          r_lps)
            completions[c.row_key], scores[c.row_key] = c, s
    # One write per file (the fsync'd appender is not under test here, and 20,000 fsyncs
    # would take minutes).
    run.path.mkdir(parents=True, exist_ok=True)
    run.completions_path.write_text("".join(json.dumps(c.to_json()) + "\n"
                                            for c in completions.values()))
    run.scores_path("ref").write_text("".join(json.dumps(s.to_json()) + "\n"
                                              for s in scores.values()))
    ranked, left_out = rank(completions, scores, RankConfig("ppl_diff", min_tokens=1))
    run.write_ranked(ranked, COLUMNS)
    run.write_manifest(Manifest.from_json({
        "target": {"model": model, "base_url": "http://127.0.0.1:1/v1"},
        "endpoint": {"flavour": "llama.cpp", "capabilities": {"logprobs": True,
                                                             "top_logprobs": 20}},
        "reference": {"name": "ref", "device": "cpu", "dtype": "float32"},
        "scoring": {"alignment": "ids"},
        "counts": {"rows": len(completions) + 3, "ranked": len(ranked), "degraded": 2,
                   "failed": 1, "degraded_reasons": {"not_greedy": 2},
                   "left_out_of_ranking": left_out or {"degraded": 2}},
        "requests": {"sent": 40, "replayed": 2, "retried": 1, "failed": 1},
        "cost": {"usd": 0.0123},
        "ranking": {"key": "ppl_diff"}, "status": "done",
    }))
    run.close()
    return run


def page_data(html: str) -> dict:
    m = re.search(r'<script type="application/json" id="report-data">(.*?)</script>', html,
                  re.S)
    assert m, "no data block"
    return json.loads(m.group(1))


# -- per-token data ------------------------------------------------------------------------
def _pair(text, tokens, t_lps, ref_tokens, r_lps, alignment, straddle=None, token_bytes=None):
    c = Completion(prefill_id="a", corpus="prose", prefill="P", framing="raw", text=text,
                   tokens=tokens, logprobs=t_lps, token_bytes=token_bytes)
    s = Score(prefill_id="a", framing="raw", corpus="prose", alignment=alignment,
              n_target_tokens=len(tokens), n_ref_tokens=len(ref_tokens),
              n_bytes=len(text.encode()), nll_target=0, nll_ref=0, ppl_target=1, ppl_ref=1,
              ppl_diff=0, nll_diff=0, bpb_target=0, bpb_ref=0, bpb_diff=0, straddle=straddle,
              ref_token_logprobs=r_lps, ref_tokens=ref_tokens)
    return c, s


def test_token_heat_ids_path_is_one_to_one():
    c, s = _pair("Hello world", ["Hello", " world"], [-0.5, -1.0], ["Hello", " world"],
                 [-4.0, -7.25], "ids")
    assert token_heat(c, s) == {"l": [5, 6], "r": [-4.0, -7.25], "t": [-0.5, -1.0]}


def test_token_heat_text_path_spreads_target_logprobs_over_bytes():
    # target: "Hel" -3 (-1/byte), "lo wor" -6 (-1/byte), "ld" -1 (-0.5/byte)
    c, s = _pair("Hello world", ["Hel", "lo wor", "ld"], [-3.0, -6.0, -1.0],
                 ["Hello", " world"], [-9.0, -2.0], "text")
    heat = token_heat(c, s)
    assert heat["l"] == [5, 6]
    assert heat["t"] == [-5.0, -5.0]          # -3 + 2 x -1 ; 4 x -1 + 2 x -0.5
    assert heat["r"] == [-9.0, -2.0]
    assert "approx" not in heat


def test_token_heat_text_path_with_a_token_straddling_the_prefill():
    # the first reference token covers 2 prefill characters ("P ") and "ab" of the text
    c, s = _pair("abcd", ["ab", "cd"], [-2.0, -4.0], ["P ab", "cd"], [-3.0, -1.0], "text",
                 straddle="P ")
    heat = token_heat(c, s)
    assert heat == {"l": [2, 2], "r": [-3.0, -1.0], "t": [-2.0, -4.0]}


def test_token_heat_text_path_counts_a_zero_byte_target_token_where_it_stands():
    # llama.cpp can report a token with no text mid-continuation; its log-probability is part
    # of the target's total, so it joins the reference token that covers its position.
    c, s = _pair("abcd", ["ab", "", "cd"], [-1.0, -2.0, -3.0], ["ab", "cd"], [-4.0, -4.0],
                 "text")
    assert token_heat(c, s) == {"l": [2, 2], "r": [-4.0, -4.0], "t": [-1.0, -5.0]}


def test_token_heat_keeps_a_character_split_across_tokens_whole():
    # "é" is two bytes, the first token holds only its first byte
    c, s = _pair("é!", ["\ufffd", "\ufffd!"], [-1.0, -2.0], ["\ufffd", "\ufffd!"],
                 [-3.0, -4.0], "ids", token_bytes=[[0xC3], [0xA9, 0x21]])
    heat = token_heat(c, s)
    assert heat["l"] == [1, 1]                 # "é" then "!": the page never splits "é"
    assert heat["r"] == [-3.0, -4.0] and heat["t"] == [-1.0, -2.0]


def test_token_heat_astral_characters_count_two_utf16_units():
    c, s = _pair("🐙 ok", ["🐙", " ok"], [-1.0, -1.0], ["🐙", " ok"], [-2.0, -2.0], "ids")
    assert token_heat(c, s)["l"] == [2, 3]


def test_token_heat_refuses_columns_that_do_not_line_up():
    c, s = _pair("Hello", ["Hel", "lo"], [-1.0, None], ["Hello"], [-2.0], "text")
    assert token_heat(c, s) is None
    c, s = _pair("Hello", ["Hel", "lo"], [-1.0, -1.0], ["Hello"], [-2.0, -1.0], "text")
    assert token_heat(c, s) is None            # two logprobs for one reference token


# -- the page ------------------------------------------------------------------------------
def test_report_escapes_model_output_everywhere(tmp_path):
    run = make_run(tmp_path / "run")
    result = render(run.path, SPEC)
    html = result.path.read_text()
    assert result.path == run.path / "report.html"
    # The only <script> tags are ours: the JSON block and the inline script.
    assert len(re.findall(r"<script\b", html, re.I)) == 2
    assert html.count("</script>") == 2
    assert "<img" not in html and "<b>" not in html
    for payload in ("<img src=x", "<script>window", "</table><b>", "onerror=\"window"):
        assert payload not in html, payload
    # The model name and the objective (in the summary and spec box) are HTML-escaped.
    assert "organism &lt;img src=x onerror=window.__xss=9&gt;" in html
    assert "Vellari script &lt;b&gt;really&lt;/b&gt;" in html
    # ... and the JSON block still carries the exact text for the page to show as text.
    data = page_data(html)
    texts = {r["text"] for r in data["rows"]}
    for payload in XSS:
        assert payload in texts
    assert all(r["prefill"].endswith("<i>") for r in data["rows"])


def test_report_content_security_policy_allows_only_our_script(tmp_path):
    import base64
    import hashlib

    run = make_run(tmp_path / "run", xss=False)
    html = render(run.path).path.read_text()
    csp = re.search(r'http-equiv="Content-Security-Policy" content="([^"]+)"', html).group(1)
    assert "default-src 'none'" in csp
    script = re.search(r"<script>(.*?)</script>", html, re.S).group(1)
    digest = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    assert f"script-src 'sha256-{digest}'" in csp
    assert "http://" not in re.sub(r"http://127\.0\.0\.1:1/v1|http://www\.w3\.org/2000/svg",
                                   "", html)


def test_report_rows_scores_flags_and_summary(tmp_path):
    run = make_run(tmp_path / "run", xss=False)
    ranked = run.load_ranked()
    html = render(run.path, SPEC).path.read_text()
    data = page_data(html)
    rows = data["rows"]
    assert len(rows) == len(ranked) == 24
    # vs_floor is left out: no noise floor was known, so every row's is null
    assert data["scores"] == ["ppl_diff", "nll_diff", "bpb_diff", "nll_ref", "ppl_ref",
                              "ppl_target"]
    assert "REFERENCE-ONLY" not in html
    assert data["corpora"] == ["code", "encyclopedic", "prose"]
    by_id = {r["id"]: r for r in rows}
    for r in ranked:
        row = by_id[r.row_id]
        assert row["ppl_diff"] == pytest.approx(r.ppl_diff, abs=1e-4)
        assert row["flag"] == SPEC.matches(r.completion)
        assert row["tok"] is not None and sum(row["tok"]["l"]) == len(row["text"])
    assert any(r["flag"] for r in rows) and not all(r["flag"] for r in rows)
    summary = re.search(r'<table class="kv" id="summary">(.*?)</table>', html, re.S).group(1)
    for needle in ("llama.cpp", "top_logprobs: 20", "not_greedy: 2", "sent: 40", "usd: 0.0123",
                   "degraded: 2", "failed: 1", "ref"):
        assert needle in summary, needle
    assert html.count('<svg xmlns="http://www.w3.org/2000/svg" class="hist"') == 2


def test_report_nonfinite_scores_become_null(tmp_path):
    run = make_run(tmp_path / "run", xss=False)
    ranked = run.load_ranked()
    ranked[0] = replace(ranked[0], ppl_ref=math.inf, ppl_diff=math.inf)
    run.write_ranked(ranked, COLUMNS)
    html = render(run.path).path.read_text()
    data = page_data(html)           # json.loads would accept Infinity; JSON.parse would not
    assert "Infinity" not in html and "NaN" not in html
    assert data["rows"][0]["ppl_diff"] is None
    assert "1 not finite (not shown)" in html


def test_token_rows_limits_per_token_data(tmp_path):
    run = make_run(tmp_path / "run", xss=False)
    result = render(run.path, token_rows=2)
    rows = page_data(result.path.read_text())["rows"]
    assert result.rows_with_tokens == sum(1 for r in rows if r["rank"] < 2) == 12
    assert all((r["tok"] is None) == (r["rank"] >= 2) for r in rows)


def test_distribution_svg_counts_every_finite_row():
    rows = [{"framing": "raw", "ppl_diff": v, "flag": v > 50} for v in
            (-3.0, 0.0, 1.0, 10.0, 60.0, 100.0, 1000.0)]
    rows.append({"framing": "raw", "ppl_diff": None, "flag": False})
    [chart] = distribution_svg(rows)
    counts = [int(m) for m in re.findall(r"<title>(\d+) ", chart["svg"])]
    assert sum(counts) == 7
    assert chart["flagged"] == 3 and chart["not_shown"] == 1
    assert chart["svg"].count('class="bar flagged"') >= 1


def test_report_command(tmp_path, capsys):
    import cli

    run = make_run(tmp_path / "run", xss=False)
    spec = tmp_path / "spec.json"
    spec.write_text(json.dumps({"objective": "vellari", "keyword_sets": [["vellari"]]}))
    out = tmp_path / "elsewhere" / "r.html"
    assert cli.main(["report", str(run.path), "--spec", str(spec), "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert str(out) in printed and "24 rows" in printed
    assert page_data(out.read_text())["has_flag"] is True
    assert cli.main(["report", str(tmp_path / "missing")]) == 2


def test_reference_only_rows_are_labelled(tmp_path):
    run = make_run(tmp_path / "run", xss=False)
    ranked = run.load_ranked()
    ranked = [replace(r, mode="reference-only", rank_key="nll_ref", ppl_diff=None,
                      nll_diff=None, bpb_diff=None, ppl_target=None) for r in ranked]
    run.write_ranked(ranked, COLUMNS)
    html = render(run.path).path.read_text()
    data = page_data(html)
    assert "REFERENCE-ONLY run (degraded)" in html
    assert data["rank_key"] == "nll_ref" and "ppl_diff" not in data["scores"]
    assert "nll_ref distribution" in html


def test_a_key_in_model_output_is_redacted_and_its_row_loses_token_spans(tmp_path):
    run = make_run(tmp_path / "run", xss=False)
    ranked = run.load_ranked()
    target = ranked[0]
    key = target.row_id
    text = "leaked sk-proj-ABCDEFGHIJKLMNOPQRSTUV here"
    ranked[0] = replace(target, completion=text)
    run.write_ranked(ranked, COLUMNS)
    for path, fix in ((run.completions_path, {"text": text, "tokens": [text], "logprobs": [-1.0],
                                              "token_bytes": None}),
                      (run.scores_path("ref"), {"ref_tokens": [text],
                                                "ref_token_logprobs": [-2.0]})):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        for r in rows:
            if f"{r['prefill_id']}:{r['framing']}" == key:
                r.update(fix)
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    html = render(run.path).path.read_text()
    assert "ABCDEFGHIJKLMNOPQRSTUV" not in html
    row = next(r for r in page_data(html)["rows"] if r["id"] == key)
    assert row["text"] == "leaked <redacted> here"
    assert row["tok"] is None


def test_delta_ppl_chart_is_always_drawn_and_the_rank_key_beside_it(tmp_path):
    run = make_run(tmp_path / "run", xss=False)
    ranked = [replace(r, rank_key="nll_diff") for r in run.load_ranked()]
    run.write_ranked(ranked, COLUMNS)
    html = render(run.path).path.read_text()
    assert "ppl_diff and nll_diff distribution" in html
    assert html.count('class="hist"') == 4          # two keys x two framings


def themed_run(path: Path) -> RunDir:
    """One group of 300 ranked rows whose top carries a phrase the rest rarely does, and
    three copies of one sentence."""
    rng = random.Random(7)
    run = RunDir(path)
    path.mkdir(parents=True)
    rows = []
    for i in range(300):
        text = " ".join(rng.choice(WORDS) + str(rng.randint(0, 40)) for _ in range(20))
        if i in (0, 2, 3, 5, 8, 11, 14):
            text += " the copper lanterns glow"
        if i in (20, 21, 22):
            text = "one sentence said three times"
        rows.append(RankedRow("prose", "raw", i, ppl_diff=100.0 - i / 3, nll_diff=2 - i / 300,
                              prefill_id=f"p{i:04d}", prefill="P", completion=text))
    run.write_ranked(rows, COLUMNS)
    run.write_manifest(Manifest(status="done"))
    return run


def test_report_themes_filter_data_and_duplicates_shown_once(tmp_path):
    run = themed_run(tmp_path / "run")
    html = render(run.path).path.read_text()
    data = page_data(html)
    (group,) = data["themes"]
    assert group["corpus"] == "prose" and group["framing"] == "raw"
    first = group["themes"][0]
    assert "copper lanterns glow" in first["phrase"] and first["top_rows"] == 7
    carrying = {r["id"] for r in data["rows"] if 0 in (r.get("th") or [])}
    assert carrying == {f"p{i:04d}:raw" for i in (0, 2, 3, 5, 8, 11, 14)}
    assert 'class="theme"' in html and "copper lanterns glow" in html
    dup = [r for r in data["rows"] if "one sentence" in r["text"]]
    assert len(dup) == 1 and dup[0]["dup"] == 3 and dup[0]["rank"] == 20
    assert len(data["rows"]) == 298 and "298 distinct" in html
