"""report.html: one self-contained, offline page for triaging a run (issue 7).

Reads the run directory only (design §2): ``manifest.json``, ``ranked.jsonl``,
``completions.jsonl`` (the target's per-token log-probabilities) and ``scores.<ref>.jsonl``
(the reference's). Writes one HTML file with no network access of any kind:

- the ranked rows as JSON in a ``<script type="application/json">`` block, rendered page by
  page by a small script of ours (``templates/report.js``): filters (corpus, framing, flag,
  text), sort by any score, paging; so 20,000 rows cost one JSON.parse, not 20,000 table rows;
- each continuation as a token heatmap: every reference token coloured by the gap
  ``logprob_target - logprob_ref`` (positive: the target expects the token far more than the
  reference does, what the ranking rewards), the numbers on hover;
- the ΔPPL distribution per framing as inline SVG generated here;
- the manifest summary: target, reference, capabilities, counts, requests, cost.

Model output is untrusted. The page is a Jinja2 template with autoescape on; the JSON block
goes through Jinja's ``tojson`` (``<``, ``>``, ``&`` and ``'`` become ``\\u003c`` ...), so
``</script>`` in a completion cannot end the block; the script only ever writes model text with
``textContent``; and a Content-Security-Policy allows no network and no script but ours (by
its hash), so even a mistake could not load or run anything.

Token heatmap: on the ``ids`` alignment path reference and target tokens are the same tokens.
On the ``text`` path (different tokenisations) each target token's log-probability is spread
evenly over its UTF-8 bytes and summed over the bytes each reference token covers.
"""

from __future__ import annotations

import base64
import hashlib
import html
import math
import time
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from . import fastjson
from .errors import ConfigError
from .flag import OrganismSpec, flagged_ids, summary_lines
from .heat import pieces_fit, token_heat
from .manifest import Manifest
from .rank import RankedRow, groups
from .rundir import RunDir, write_atomic
from .themes import Theme, carriers, collapse_duplicates, themes_by_group

TEMPLATES = Path(__file__).parent / "templates"
SCORE_COLUMNS = ["ppl_diff", "nll_diff", "bpb_diff", "vs_floor", "nll_ref", "ppl_ref",
                 "ppl_target"]


@dataclass
class ReportResult:
    path: Path
    rows: int
    rows_with_tokens: int
    bytes: int
    seconds: float


# -- the data ------------------------------------------------------------------------------
def finite(x: Any, digits: int = 4) -> float | None:
    """A JSON-safe number: inf and nan (a perplexity can overflow) become null."""
    if x is None:
        return None
    try:
        v = float(x)
    except (TypeError, ValueError):
        return None
    return round(v, digits) if math.isfinite(v) else None


def reference_name(run: RunDir, manifest: Manifest, wanted: str | None = None) -> str | None:
    """Which scores file the ranking came from: asked for, else the latest rescoring, else the
    audit's reference, else the only scores file present."""
    if wanted:
        return wanted
    rescoring = manifest.rescoring
    if rescoring and rescoring[-1].get("reference"):
        return rescoring[-1]["reference"]
    ref = (manifest.reference or {}).get("name")
    if ref:
        return ref
    files = sorted(run.path.glob("scores.*.jsonl"))
    return files[0].name[len("scores."):-len(".jsonl")] if len(files) == 1 else None


def report_rows(run: RunDir, ranked: list[RankedRow], ref: str | None,
                token_rows: int | None = None, flagged: frozenset[str] | None = None
                ) -> tuple[list[dict[str, Any]], int]:
    """The rows as the page needs them; per-token data for the top ``token_rows`` of each
    (corpus, framing) ranking (all when None); ``flagged``: the ids matching a spec (None:
    no spec given)."""
    completions = run.load_completions()
    scores = run.load_scores(ref) if ref else {}
    redact = run.redactor.text
    out, with_tokens = [], 0
    # Identical continuations (after whitespace) are shown once, with their count; the
    # ranking file keeps every row.
    distinct = [(row, copies) for rows in groups(ranked).values()
                for row, copies in collapse_duplicates(rows)]
    for row, copies in distinct:
        key = row.row_id
        text = row.completion or ""
        shown = redact(text)
        heat = None
        if token_rows is None or row.rank < token_rows:
            c, s = completions.get(key), scores.get(key)
            # Token spans index the text shown: none where a secret was cut out of it.
            if c is not None and s is not None and c.text == text == shown:
                heat = token_heat(c, s)
        with_tokens += heat is not None
        out.append({
            "id": key, "corpus": row.corpus, "framing": row.framing,
            "rank": row.rank, "flag": None if flagged is None else key in flagged,
            **{k: finite(getattr(row, k)) for k in SCORE_COLUMNS},
            "n": row.n_target_tokens, "finish": row.finish_reason,
            "prefill": redact(row.prefill or ""), "text": shown, "tok": heat,
            **({"dup": copies} if copies > 1 else {}),
            **({"round": row.round} if row.round > 1 else {}),
        })
    return out, with_tokens


def theme_data(ranked: list[RankedRow], found: dict[tuple[str, str], list[Theme]],
               rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The page's themes, per group, and on each page row (``th``) the indices of the themes
    its text carries, so a click on a theme filters to the rows that say it."""
    by_id = {r["id"]: r for r in rows}
    out = []
    for (corpus, framing), members in groups(ranked).items():
        ts = found.get((corpus, framing)) or []
        for row_id, idx in carriers(members, ts).items():
            if row_id in by_id:
                by_id[row_id]["th"] = list(idx)
        out.append({"corpus": corpus, "framing": framing,
                    "themes": [{"phrase": t.phrase, "top_rows": t.top_rows, "top": t.top,
                                "rows": t.rows, "total": t.total, "score": round(t.score, 2)}
                               for t in ts]})
    return out


# -- the page's rows, streamed ------------------------------------------------------------
# Past FULL_ROWS distinct rows a page carrying every row's text and tokens stops opening
# comfortably (issue 16: 118 MB at 60,000 rows). Then the top TEXT_ROWS of each ranking come
# whole (text, per-token data) and every other row as numbers only, in columns: its place,
# scores and flag, enough to sort, filter and chart; its text is one command away
# (``report RUN --row ID``, or ranked.jsonl).
FULL_ROWS = 20_000
TEXT_ROWS = 200
LITE_DIGITS = 4


@dataclass
class _Entry:
    rank: int
    index: int          # line of ranked.jsonl
    digest: bytes
    id: str
    group: int
    flag: bool | None
    scores: tuple[float | None, ...]
    n: int | None
    finish: str | None
    th: tuple[int, ...] | None
    copies: int = 1
    round: int = 1


@dataclass
class PageRows:
    full: list[dict[str, Any]]          # rows with text (and per-token data where kept)
    lite: dict[str, Any] | None         # the other rows, numbers only, in columns
    with_tokens: int
    n_ranked: int
    n_distinct: int
    groups: list[tuple[str, str]]
    top: list[RankedRow]                # the first 10 of each ranking (the spec summary)
    rank_key: str
    reference_only: bool
    chart_rows: list[dict[str, Any]]


def _digest(row: RankedRow) -> bytes:
    text = " ".join((row.completion or "").split())
    return hashlib.blake2b(text.encode(), digest_size=16).digest()


def page_rows(run: RunDir, ref: str | None, spec: OrganismSpec | None,
              flagged: frozenset[str] | None, themes: dict[tuple[str, str], list[Theme]],
              token_rows: int | None = None, text_rows: int | None = None,
              extra: frozenset[str] = frozenset()) -> PageRows:
    """The page's rows from the run directory in two streamed passes over ranked.jsonl and
    one over the scores of the rows shown whole: memory holds a few numbers per row, and text
    and tokens for the rows shown whole only. Identical continuations (after whitespace) are
    shown once, with their count. ``text_rows``: rows shown whole per ranking (None: all up
    to FULL_ROWS distinct rows, else TEXT_ROWS); ``token_rows``: of those, the ones with
    per-token data (None: all); ``extra``: row ids shown whole wherever they rank."""
    group_ix: dict[tuple[str, str], int] = {}
    per_group: list[list[_Entry]] = []
    rank_key, ref_only, n_ranked = "ppl_diff", False, 0
    for i, row in enumerate(run.iter_ranked()):
        key = (row.corpus, row.framing)
        g = group_ix.get(key)
        if g is None:
            g = group_ix[key] = len(per_group)
            per_group.append([])
        if n_ranked == 0:
            rank_key = row.rank_key or "ppl_diff"
        n_ranked += 1
        ref_only = ref_only or row.mode == "reference-only"
        flag = None
        if flagged is not None:
            flag = row.row_id in flagged
        elif spec is not None:
            flag = spec.matches(row.completion or "")
        th = carriers([row], themes.get(key) or []).get(row.row_id)
        per_group[g].append(_Entry(
            row.rank, i, _digest(row), row.row_id, g, flag,
            tuple(finite(getattr(row, k)) for k in SCORE_COLUMNS), row.n_target_tokens,
            row.finish_reason, th, round=row.round))
    distinct: list[_Entry] = []
    for entries in per_group:
        entries.sort(key=lambda e: (e.rank, e.index))
        seen: dict[bytes, _Entry] = {}
        for e in entries:
            first = seen.get(e.digest)
            if first is None:
                seen[e.digest] = e
                distinct.append(e)
            else:
                first.copies += 1
        entries.clear()
    if text_rows is None and len(distinct) > FULL_ROWS:
        text_rows = TEXT_ROWS
    whole = {e.index for e in distinct
             if text_rows is None or e.rank < text_rows or e.id in extra}
    rows_whole: dict[int, RankedRow] = {}
    top: list[RankedRow] = []
    for i, row in enumerate(run.iter_ranked()):
        if i in whole:
            rows_whole[i] = row
        if row.rank < 10:
            top.append(row)
    # per-token data for the rows shown whole (those within token_rows)
    heat_for = {rows_whole[e.index].row_id: rows_whole[e.index] for e in distinct
                if e.index in whole and (token_rows is None or e.rank < token_rows)}
    redact = run.redactor.text
    heat: dict[str, dict[str, Any] | None] = {}
    if ref and heat_for:
        older: dict[str, Any] = {}
        for sc in run.iter_scores(ref, keys=heat_for.keys()):
            key = f"{sc.prefill_id}:{sc.framing}"
            if sc.heat is None:
                older[key] = sc
                continue
            older.pop(key, None)
            text = heat_for[key].completion or ""
            heat[key] = token_heat(None, sc, text) \
                if text == redact(text) and pieces_fit(sc, text) else None
        if older:    # scored by an earlier version: from the completions' token columns
            for c in run.iter_completions(keys=older.keys()):
                text = heat_for[c.row_key].completion or ""
                if c.text == text == redact(text):
                    heat[c.row_key] = token_heat(c, older[c.row_key])
    groups_list = list(group_ix)
    full: list[dict[str, Any]] = []
    lite_entries: list[_Entry] = []
    with_tokens = 0
    for e in distinct:
        if e.index not in whole:
            lite_entries.append(e)
            continue
        row = rows_whole[e.index]
        tok = heat.get(e.id)
        with_tokens += tok is not None
        full.append({
            "id": e.id, "corpus": row.corpus, "framing": row.framing, "rank": e.rank,
            "flag": e.flag, **dict(zip(SCORE_COLUMNS, e.scores, strict=True)),
            "n": e.n, "finish": e.finish, "prefill": redact(row.prefill or ""),
            "text": redact(row.completion or ""), "tok": tok,
            **({"dup": e.copies} if e.copies > 1 else {}),
            **({"round": e.round} if e.round > 1 else {}),
            **({"th": list(e.th)} if e.th else {})})
    lite = None
    if lite_entries:
        finishes = sorted({e.finish or "" for e in lite_entries})
        fix = {f: i for i, f in enumerate(finishes)}
        lite = {"groups": [list(g) for g in groups_list], "finishes": finishes,
                "id": [e.id for e in lite_entries], "g": [e.group for e in lite_entries],
                "rank": [e.rank for e in lite_entries],
                "n": [e.n for e in lite_entries],
                "finish": [fix[e.finish or ""] for e in lite_entries],
                "dup": {str(k): e.copies for k, e in enumerate(lite_entries) if e.copies > 1},
                "th": {str(k): list(e.th) for k, e in enumerate(lite_entries) if e.th},
                "round": {str(k): e.round for k, e in enumerate(lite_entries) if e.round > 1},
                **({"flag": [1 if e.flag else 0 for e in lite_entries]}
                   if spec is not None or flagged is not None else {}),
                **{k: [_short(e.scores[j]) for e in lite_entries]
                   for j, k in enumerate(SCORE_COLUMNS)}}
    chart_rows = [{"framing": groups_list[e.group][1], "flag": e.flag,
                   **dict(zip(SCORE_COLUMNS, e.scores, strict=True))} for e in distinct]
    return PageRows(full, lite, with_tokens, n_ranked, len(distinct), groups_list, top,
                    rank_key, ref_only, chart_rows)


def _short(v: float | None) -> float | None:
    """A score in 4 significant digits: what the table shows, a third of the bytes."""
    if v is None or v == 0:
        return v
    return float(f"{v:.{LITE_DIGITS}g}")


# -- the ΔPPL chart ------------------------------------------------------------------------
def _symlog(x: float) -> float:
    return math.copysign(math.log10(1.0 + abs(x)), x)


def distribution_svg(rows: list[dict[str, Any]], key: str = "ppl_diff", bins: int = 40,
                     width: int = 460, height: int = 170) -> list[dict[str, Any]]:
    """One histogram per framing of ``key`` on a symmetric log axis, flagged rows stacked in
    another colour. Returns [{framing, svg (markup we built, numbers and escaped labels only),
    n, not_shown}]."""
    charts = []
    for framing in sorted({r["framing"] for r in rows}):
        vals = [(r[key], bool(r.get("flag"))) for r in rows
                if r["framing"] == framing and r.get(key) is not None]
        not_shown = sum(1 for r in rows if r["framing"] == framing and r.get(key) is None)
        if not vals:
            continue
        xs = [_symlog(v) for v, _ in vals]
        lo, hi = min(xs + [0.0]), max(xs + [0.0])
        if hi - lo < 1e-9:
            hi = lo + 1.0
        plain, flagged = [0] * bins, [0] * bins
        for x, (_, f) in zip(xs, vals, strict=True):
            b = min(int((x - lo) / (hi - lo) * bins), bins - 1)
            (flagged if f else plain)[b] += 1
        top = max(p + f for p, f in zip(plain, flagged, strict=True)) or 1
        ml, mr, mt, mb = 36, 8, 8, 30
        pw, ph = width - ml - mr, height - mt - mb
        bw = pw / bins
        parts = [f'<svg xmlns="http://www.w3.org/2000/svg" class="hist" width="{width}" '
                 f'height="{height}" viewBox="0 0 {width} {height}" role="img" '
                 f'aria-label="{html.escape(key)} distribution, {html.escape(framing)}">']
        for i in range(bins):
            x = ml + i * bw
            y_base = mt + ph
            for count, cls in ((plain[i], "bar"), (flagged[i], "bar flagged")):
                if not count:
                    continue
                h = count / top * ph
                y_base -= h
                lo_v = lo + i * (hi - lo) / bins
                hi_v = lo + (i + 1) * (hi - lo) / bins
                label = (f"{count} {'flagged ' if 'flagged' in cls else ''}rows, "
                         f"{key} {_unsymlog(lo_v):.3g} to {_unsymlog(hi_v):.3g}")
                parts.append(f'<rect class="{cls}" x="{x:.1f}" y="{y_base:.1f}" '
                             f'width="{max(bw - 1, 0.5):.1f}" height="{h:.1f}">'
                             f'<title>{html.escape(label)}</title></rect>')
        axis_y = mt + ph
        parts.append(f'<line class="axis" x1="{ml}" y1="{axis_y}" x2="{ml + pw}" '
                     f'y2="{axis_y}"/>')
        for tick in (-1000, -100, -10, -1, 0, 1, 10, 100, 1000, 10000):
            t = _symlog(tick)
            if lo <= t <= hi:
                tx = ml + (t - lo) / (hi - lo) * pw
                parts.append(f'<line class="tick" x1="{tx:.1f}" y1="{axis_y}" x2="{tx:.1f}" '
                             f'y2="{axis_y + 4}"/><text x="{tx:.1f}" y="{axis_y + 16}" '
                             f'text-anchor="middle">{tick}</text>')
        parts.append(f'<text x="{ml - 4}" y="{mt + 8}" text-anchor="end">{top}</text>')
        parts.append(f'<text x="{ml + pw}" y="{height - 2}" text-anchor="end">'
                     f'{html.escape(key)} (symmetric log scale)</text>')
        parts.append("</svg>")
        charts.append({"key": key, "framing": framing, "svg": "".join(parts), "n": len(vals),
                       "flagged": sum(f for _, f in vals), "not_shown": not_shown})
    return charts


def _unsymlog(t: float) -> float:
    return math.copysign(10 ** abs(t) - 1.0, t)


# -- the manifest summary ------------------------------------------------------------------
def manifest_summary(m: Manifest, ref: str | None) -> list[tuple[str, Any]]:
    """(label, value) pairs; values are plain data, rendered (escaped) by the template."""
    target = m.target or {}
    endpoint = m.endpoint or {}
    counts = m.counts.to_json() if m.counts else {}
    reference = m.reference or {}
    items: list[tuple[str, Any]] = [
        ("target", {"model": target.get("model"), "base_url": target.get("base_url")
                    or "(replayed)", "kind": target.get("kind"),
                    "flavour": endpoint.get("flavour")}),
        ("reference", {"name": ref, "device": reference.get("device"),
                       "dtype": reference.get("dtype"),
                       "alignment": (m.scoring or {}).get("alignment")}),
        ("capabilities", endpoint.get("capabilities")),
        ("rows", {k: counts.get(k) for k in ("rows", "ranked", "degraded", "failed")
                  if k in counts}),
        ("degraded reasons", counts.get("degraded_reasons") or "none"),
        ("left out of ranking", counts.get("left_out_of_ranking") or "none"),
        ("ranking", m.ranking or None),
        ("requests", m.requests),
        ("cost", m.extra.get("cost") or (m.requests or {}).get("cost")),
        ("status", m.status),
        ("seconds", m.seconds),
        ("versions", m.versions),
    ]
    return [(k, v) for k, v in items if v not in (None, {}, [])]


# -- the page ------------------------------------------------------------------------------
def _env():
    import jinja2

    env = jinja2.Environment(loader=jinja2.FileSystemLoader(str(TEMPLATES)),
                             autoescape=True, undefined=jinja2.StrictUndefined,
                             trim_blocks=True, lstrip_blocks=True)
    # tojson escapes < > & ' inside strings (so "</script>" cannot end the block); compact.
    env.policies["json.dumps_kwargs"] = {"ensure_ascii": False, "separators": (",", ":")}

    def fmt(v: Any) -> str:
        if isinstance(v, dict):
            return ", ".join(f"{k}: {fmt(x)}" for k, x in v.items()
                             if x is not None and x != "" and x != {} and x != [])
        if isinstance(v, list | tuple):
            return ", ".join(fmt(x) for x in v)
        if isinstance(v, float):
            return f"{v:.4g}"
        return str(v)

    env.filters["fmt"] = fmt
    return env


def render(run_path: str | Path, spec: OrganismSpec | None = None, reference: str | None = None,
           token_rows: int | None = None, out: str | Path | None = None,
           flagged: frozenset[str] | None = None, text_rows: int | None = None,
           rows: Iterable[str] = ()) -> ReportResult:
    """Write ``report.html`` (or ``out``) for a run directory. ``flagged``: the ids matching
    ``spec``, when the caller has them already (flagged once per command). ``text_rows``:
    rows of each ranking shown whole (text and tokens); by default all up to FULL_ROWS
    distinct rows, else the top TEXT_ROWS, the rest as numbers; ``rows``: ids shown whole
    wherever they rank. Streams the run directory (page_rows)."""
    t0 = time.monotonic()
    run = RunDir(run_path)
    manifest = run.read_manifest()
    if not run.ranked_path.exists() or next(run.iter_ranked(), None) is None:
        raise ConfigError(f"{run.path} has no ranked.jsonl; run audit or score first.")
    if not spec:
        flagged = None
    ref = reference_name(run, manifest, reference)
    found = run.load_themes()
    if found is None:   # ranked by an earlier version: themes computed here
        found = themes_by_group(run.load_ranked())
    pr = page_rows(run, ref, spec, flagged, found, token_rows, text_rows, frozenset(rows))
    themes = [{"corpus": c, "framing": f,
               "themes": [{"phrase": t.phrase, "top_rows": t.top_rows, "top": t.top,
                           "rows": t.rows, "total": t.total, "score": round(t.score, 2)}
                          for t in found.get((c, f)) or []]}
              for (c, f) in pr.groups]
    key = pr.rank_key
    if spec:
        top_flagged = flagged if flagged is not None else flagged_ids(pr.top, spec)
        spec_lines = summary_lines(pr.top, spec, top_flagged, 10)
    else:
        spec_lines = []
    script = (TEMPLATES / "report.js").read_text(encoding="utf-8")
    script_hash = base64.b64encode(hashlib.sha256(script.encode()).digest()).decode()
    # JSON.parse refuses NaN: nothing non-finite may reach the page's data block.
    data = {"rows": fastjson.finite(pr.full), "lite": fastjson.finite(pr.lite),
            "rank_key": key, "has_flag": spec is not None,
            "scores": [k for k in SCORE_COLUMNS
                       if any(r.get(k) is not None for r in pr.chart_rows)],
            "corpora": sorted({c for c, _ in pr.groups}),
            "framings": sorted({f for _, f in pr.groups}), "themes": themes}
    page = _env().get_template("report.html.j2").render(
        title=f"blackbox-audit: {(manifest.target or {}).get('model') or run.path.name}",
        run_path=str(run.path), summary=manifest_summary(manifest, ref),
        charts=[c for k in dict.fromkeys(["ppl_diff", key]) if k in data["scores"]
                for c in distribution_svg(pr.chart_rows, k)], rank_key=key,
        spec=spec.objective if spec else None, spec_lines=spec_lines,
        reference_only=pr.reference_only,
        fallback="chat-continue" in data["framings"],
        n_rows=pr.n_distinct, n_ranked=pr.n_ranked, themes=themes,
        with_tokens=pr.with_tokens, token_rows=token_rows,
        n_whole=len(pr.full), text_rows=text_rows if text_rows is not None
        else TEXT_ROWS if pr.lite else None,
        generated=time.strftime("%Y-%m-%d %H:%M:%SZ", time.gmtime()),
        data=data, script=script, script_hash=script_hash)
    path = Path(out) if out else run.path / "report.html"
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, page)
    return ReportResult(path, pr.n_distinct, pr.with_tokens, path.stat().st_size,
                        time.monotonic() - t0)


__all__ = ["ReportResult", "distribution_svg", "render", "report_rows", "token_heat"]
