"""Progress: plain lines stay as logs read them; a rich bar on a terminal; the closing table
shows model text as text (no rich markup, no terminal control sequences)."""

from __future__ import annotations

import io
import re

from blackbox_audit.presentation import show_top, top_table
from blackbox_audit.progress import (
    Progress,
    count_progress,
    short_fields,
    terminal_safe,
    use_rich,
)
from blackbox_audit.rank import RankedRow


class Tty(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_plain_lines_keep_their_format(monkeypatch):
    monkeypatch.delenv("BLACKBOX_AUDIT_PROGRESS", raising=False)
    out = io.StringIO()
    p = Progress("generation", 4, stream=out, interval=0.0)
    assert not p.rich                         # not a terminal: plain
    p.update(advance=1, failed=0, retries=0)
    p.update(advance=3, failed=1, retries=2, cost_usd=None)
    p.finish(failed=1, retries=2)
    lines = out.getvalue().splitlines()
    assert re.fullmatch(r"generation: 1/4 rows, [\d.]+/s, ETA \d+s, failed 0, retries 0",
                        lines[0]), lines[0]
    assert re.fullmatch(r"generation: 4/4 rows, [\d.]+/s, in \d+s, failed 1, retries 2",
                        lines[-1]), lines[-1]
    assert "cost" not in out.getvalue()       # an unknown value is left out, not printed


def test_mode_choice(monkeypatch):
    monkeypatch.delenv("BLACKBOX_AUDIT_PROGRESS", raising=False)
    monkeypatch.delenv("CI", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    assert use_rich(Tty()) and not use_rich(io.StringIO())
    monkeypatch.setenv("CI", "true")
    assert not use_rich(Tty())                # CI logs get plain lines even on a pty
    monkeypatch.setenv("BLACKBOX_AUDIT_PROGRESS", "rich")
    assert use_rich(io.StringIO())
    monkeypatch.setenv("BLACKBOX_AUDIT_PROGRESS", "plain")
    assert not use_rich(Tty())


def test_rich_bar_shows_counts_and_fields(monkeypatch):
    monkeypatch.setenv("COLUMNS", "160")     # rich's console width
    out = Tty()
    p = Progress("generation", 10, stream=out, mode="rich")
    assert p.rich
    for _ in range(10):
        p.update(advance=1, in_flight=4, retries=1, failed=0, tokens=12_345, cost_usd=0.0123)
    p.finish()
    text = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue())
    assert "generation" in text and "10/10" in text
    assert "in flight 4" in text and "retries 1" in text and "12.3k tok" in text
    assert "$0.0123" in text and "failed" not in text   # zero failures: nothing to say
    assert "━" in text                        # the bar itself


def test_rich_bar_on_a_narrow_terminal_keeps_the_counts(monkeypatch):
    monkeypatch.setenv("COLUMNS", "60")
    out = Tty()
    p = Progress("rescoring", 41448, unit="tokens", stream=out, mode="rich")
    p.update(done=41448, tokens=41448, retries=3)
    p.finish()
    last = re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.getvalue()).split("\r")[-1]
    assert "41448/41448 tokens" in last       # the extra fields give way first


def test_quiet_says_nothing():
    out = Tty()
    p = Progress("rescoring", 5, stream=out, mode="rich", quiet=True)
    p.update(advance=5)
    p.finish()
    assert out.getvalue() == ""


def test_count_progress_yields_everything_and_is_silent_in_plain_mode():
    out = io.StringIO()
    assert list(count_progress(iter(range(7)), "prefills", "documents", stream=out,
                               mode="plain")) == list(range(7))
    assert out.getvalue() == ""
    out = Tty()
    assert len(list(count_progress(range(7), "prefills", "documents", stream=out,
                                   mode="rich"))) == 7
    assert "prefills" in out.getvalue() and "7" in out.getvalue()


def test_short_fields():
    assert short_fields({"in_flight": 8, "retries": 0, "failed": 2, "tokens": 1_500_000,
                         "cost_usd": 1.5, "window": None}) == \
        "in flight 8 · failed 2 · 1.5M tok · $1.5000"


def test_top_table_prints_model_text_literally():
    ranked = [
        RankedRow("code", "raw", 0, ppl_diff=12.5, prefill="def f(",
                  completion="[bold red]not markup[/] ok", prefill_id="a"),
        RankedRow("code", "raw", 1, ppl_diff=3.25, prefill="x",
                  completion="\x1b]0;pwned\x07\x1b[2Jclear", prefill_id="b"),
        RankedRow("code", "raw", 2, ppl_diff=1.0, prefill="y", completion="below the cut",
                  prefill_id="c"),
        RankedRow("prose", "chat", 0, ppl_diff=7.0, prefill="The", completion="Vellari",
                  prefill_id="d"),
    ]
    out = io.StringIO()
    top_table(ranked, 2, frozenset({"a:raw", "d:chat"}), out, width=140)
    text = out.getvalue()
    assert "[bold red]not markup[/] ok" in text
    assert "\x1b" not in text and "\x07" not in text
    assert "clear" in text and "below the cut" not in text
    assert "12.50" in text and "prose / chat" in text and "*" in text
    assert "[prefill] completion" in text
    assert terminal_safe("a\x1b[31m\tb\n\nc") == "a\ufffd[31m b c"


def test_top_table_labels_reference_only_runs():
    ranked = [RankedRow("prose", "chat-continue", 0, rank_key="nll_ref", nll_ref=4.5,
                        prefill="The", completion="odd text", mode="reference-only")]
    out = io.StringIO()
    top_table(ranked, 5, None, out, width=160)
    text = out.getvalue()
    assert "REFERENCE-ONLY (degraded)" in text and "fallback framing" in text
    assert "4.50" in text and "nll_ref" in text


def test_plain_top_lines_carry_no_terminal_escapes(capsys):
    ranked = [RankedRow("code", "raw", 0, ppl_diff=12.5, prefill="x\x1b[2J",
                        completion="a\x1b]0;pwned\x07 b\n c")]
    show_top(ranked, 5, plain=True)
    out = capsys.readouterr().out
    assert "\x1b" not in out and "\x07" not in out
    assert "[x\ufffd[2J] a\ufffd]0;pwned\ufffd b c" in out
    show_top(ranked, 5)                      # not a terminal here: the same plain lines
    assert capsys.readouterr().out == out
