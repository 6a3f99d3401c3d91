"""What the terminal shows: the top of each ranking, the run's counts, eval's table.

Every command's output is rendered here, so the CLI only parses flags and calls one function
(design §2). Model text is untrusted: it reaches the terminal only through
``progress.terminal_safe`` (whitespace folded, control and bidi characters replaced, secrets
cut) and, in a rich table, as ``rich.text.Text`` (never parsed as markup).

On a terminal the top rows are one compact rich table; elsewhere (logs, pipes, tests) plain
lines that stay stable for the programs that read them.
"""

from __future__ import annotations

import json
import sys
from typing import TYPE_CHECKING, Any, TextIO

from .evaluate import GroupMetrics
from .flag import OrganismSpec, flagged_ids, summary_lines
from .progress import terminal_safe, use_rich
from .quality import REASONS
from .rank import RankedRow, groups
from .themes import Theme, collapse_duplicates, themes_by_group

if TYPE_CHECKING:
    from .preflight import ProbeReport
    from .summarize import SummaryResult

REFERENCE_ONLY_LABEL = ("REFERENCE-ONLY (degraded): ranked by reference surprisal alone, the "
                        "target returned no log-probabilities")
FALLBACK_LABEL = "fallback framing: the prefill in the user turn, not the paper's"


def show_top(ranked: list[RankedRow], top: int, spec: OrganismSpec | None = None,
             out: TextIO | None = None, plain: bool = False,
             flagged: frozenset[str] | None = None,
             themes: dict[tuple[str, str], list[Theme]] | None = None) -> None:
    """The top ``top`` distinct rows of each (corpus, framing) ranking (identical
    continuations shown once, with their count), then each group's themes; with a spec,
    matching rows get a '*' and each framing says how many of its top rows match
    (``flagged``: the matching ids, when the caller has them already). ``plain``: lines even
    on a terminal. ``themes``: as the run wrote them (computed here when not given)."""
    out = out or sys.stdout
    if flagged is None:
        flagged = flagged_ids(ranked, spec)
    if themes is None:
        themes = themes_by_group(ranked)
    rich = use_rich(out) and not plain
    if rich:
        top_table(ranked, top, flagged if spec else None, out)
        print(file=out)
        for (corpus, framing), found in themes.items():
            theme_lines(f"{corpus} / {framing}", found, out)
    else:
        top_lines(ranked, top, flagged, out, themes)
    if spec:
        print(("" if rich else "\n") + f"spec: {spec.objective}", file=out)
        for line in summary_lines(ranked, spec, flagged, top):
            print(line, file=out)


def theme_lines(label: str, found: list[Theme], out: TextIO, limit: int = 5) -> None:
    """A group's strongest themes, one line each: the phrase, how many of the top rows and of
    all rows carry it, two rows to read."""
    if not found:
        print(f"   themes of {label}: none above chance", file=out)
        return
    print(f"   themes of {label} (phrases over-represented in its top; docs/scores.md):",
          file=out)
    for t in found[:limit]:
        print(f"     \"{terminal_safe(t.phrase)}\"  {t.top_rows} of the top {t.top}, "
              f"{t.rows} of {t.total} rows  (z {t.score:.1f}; e.g. "
              f"{', '.join(t.examples)})", file=out)


def top_lines(ranked: list[RankedRow], top: int, flagged: frozenset[str],
              out: TextIO, themes: dict[tuple[str, str], list[Theme]] | None = None) -> None:
    for (corpus, framing), rows in groups(ranked).items():
        key = rows[0].rank_key
        labels = []
        if rows[0].mode == "reference-only":
            labels.append(REFERENCE_ONLY_LABEL)
        if framing == "chat-continue":
            labels.append(FALLBACK_LABEL)
        print(f"\n== {corpus} / {framing}: top {min(top, len(rows))} of {len(rows)} "
              f"by {key}" + "".join(f"\n   [{lab}]" for lab in labels), file=out)
        name = "dPPL" if key == "ppl_diff" else key
        for row, copies in collapse_duplicates(rows)[:top]:
            mark = "*" if row.row_id in flagged else " "
            value = row.score if row.score is not None else row.ppl_diff
            shown = f"{value:>9.2f}" if isinstance(value, int | float) else f"{'-':>9s}"
            times = f" (x{copies})" if copies > 1 else ""
            print(f"{row.rank:>3}{mark} {name} {shown}{times}  {round_mark(row)}"
                  f"[{terminal_safe(row.prefill or '')}] "
                  f"{terminal_safe(row.completion or '')[:110]}", file=out)
        if themes is not None:
            theme_lines(f"{corpus} / {framing}", themes.get((corpus, framing), []), out)


def round_mark(row: RankedRow) -> str:
    """'r2 ' before a row of a second round (--rounds 2: a prefill derived from round one's
    ranking); nothing for round one's."""
    return f"r{row.round} " if row.round != 1 else ""


def top_table(ranked: list[RankedRow], top: int, flagged: frozenset[str] | None,
              stream: TextIO | None = None, width: int | None = None) -> None:
    """The top ``top`` rows of each (corpus, framing) ranking as one compact rich table
    (a '*' column when a spec was given: ``flagged`` not None)."""
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    key = ranked[0].rank_key if ranked else "ppl_diff"
    notes = []
    if any(r.mode == "reference-only" for r in ranked):
        notes.append(REFERENCE_ONLY_LABEL)
    if any(r.framing == "chat-continue" for r in ranked):
        notes.append("chat-continue is a fallback framing: the prefill in the user turn")
    table = Table(title=f"top {top} of each (corpus, framing) by {key}", title_justify="left",
                  caption=Text("\n".join(notes)) if notes else None, caption_justify="left",
                  show_lines=False, pad_edge=False, expand=True)
    table.add_column("corpus / framing", no_wrap=True)
    table.add_column("#", justify="right", no_wrap=True)
    if flagged is not None:
        table.add_column("*", no_wrap=True)
    table.add_column(key, justify="right", no_wrap=True)
    table.add_column(Text("[prefill] completion"), ratio=1, no_wrap=True,
                     overflow="ellipsis")
    last = None
    shown = [(row, copies) for rows in groups(ranked).values()
             for row, copies in collapse_duplicates(rows)[:top]]
    for row, copies in shown:
        group = f"{row.corpus} / {row.framing}"
        if last is not None and group != last:
            table.add_section()
        cells: list[Any] = [Text(group if group != last else ""),
                            str(row.rank) + (f" x{copies}" if copies > 1 else "")]
        last = group
        if flagged is not None:
            cells.append(Text("*", style="bold red") if row.row_id in flagged else "")
        value = row.score
        cells.append(f"{value:.2f}" if isinstance(value, int | float) else "-")
        text = Text()
        text.append(round_mark(row), style="bold")
        text.append(f"[{terminal_safe(row.prefill or '')}] ", style="dim italic")
        text.append(terminal_safe(row.completion or ""))
        cells.append(text)
        table.add_row(*cells)
    Console(file=stream or sys.stdout, width=width).print(table)


def audit_summary(counts: dict[str, Any], run_path: Any, out: TextIO | None = None) -> None:
    """The closing lines of an audit: rows ranked and left out, degraded rows by reason."""
    out = out or sys.stdout
    print(f"\n{counts['ranked']} of {counts['rows']} rows ranked "
          f"({counts['degraded']} degraded, {counts['failed']} failed, left out: "
          f"{counts['left_out_of_ranking'] or 'none'}); run directory: {run_path}", file=out)
    if counts.get("degraded_reasons"):
        print("degraded rows (kept in completions.jsonl, left out of the ranking):", file=out)
        for reason, n in sorted(counts["degraded_reasons"].items(), key=lambda kv: -kv[1]):
            print(f"  {n:6d}  {reason}: {REASONS.get(reason, reason)}", file=out)


def eval_table(metrics: list[GroupMetrics], out: TextIO | None = None,
               as_json: bool = False) -> None:
    """``eval``'s table, best configuration first (or its JSON)."""
    out = out or sys.stdout
    if as_json:
        print(json.dumps([m.to_json() for m in metrics], indent=2), file=out)
        return
    print(f"{'corpus':14s} {'framing':8s} {'ranked':>6s} {'@10':>4s} {'@100':>5s} "
          f"{'first':>5s} {'flagged':>7s}", file=out)
    for m in metrics:
        first = "-" if m.first_flag_rank is None else str(m.first_flag_rank)
        print(f"{m.corpus:14s} {m.framing:8s} {m.n_ranked:6d} {m.count_top10:4d} "
              f"{m.count_top100:5d} {first:>5s} {m.n_flagged:7d}", file=out)
    if metrics:
        best = metrics[0]
        print(f"best: {best.corpus} / {best.framing} (count@top100 {best.count_top100}, "
              f"count@top10 {best.count_top10})", file=out)


def probe(report: ProbeReport, out: TextIO | None = None, as_json: bool = False) -> None:
    """``probe``'s report: the capability matrix, framings, estimate and verdict."""
    out = out or sys.stdout
    print(json.dumps(report.to_json(), indent=2) if as_json else report.to_text(), file=out)


def hypotheses(result: SummaryResult, out: TextIO | None = None) -> None:
    """``summarize``'s lines: each hypothesis with its confidence and support, and where the
    whole answer was written."""
    out = out or sys.stdout
    for n, h in enumerate(result.hypotheses, 1):
        print(f"H{n} ({h['confidence']}, {len(h['row_ids'])} rows): "
              f"{terminal_safe(h['objective'])[:160]}", file=out)
    print(f"{result.rows_sent} rows sent; hypotheses and caveats: {result.path}", file=out)
