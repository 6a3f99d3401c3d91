"""report.html in a real browser: Debian's headless Chromium driven by Playwright.

The page loads with no console error (a Content-Security-Policy violation is one), filtering,
sorting, paging and the token tooltips work, model output that tries to run script does not,
and a 20,000-row report opens and renders its first page. A screenshot of the page goes to
build/report-screenshot.png.

Skipped, with the reason printed, only where no Chromium binary exists (scripts/test.sh
installs Debian's ``chromium`` when it can). Playwright drives that binary; it never downloads
a browser of its own.
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

import pytest
from conftest import unavailable
from test_report import SPEC, XSS, make_run

from blackbox_audit.report import render

ROOT = Path(__file__).resolve().parent.parent
_CANDIDATES = ([os.environ["BLACKBOX_AUDIT_CHROMIUM"]] if os.environ.get("BLACKBOX_AUDIT_CHROMIUM")
               else ["/usr/bin/chromium", shutil.which("chromium") or "",
                     shutil.which("chromium-browser") or ""])
CHROMIUM = next((p for p in _CANDIDATES if p and os.path.exists(p)), None)
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]

pytestmark = pytest.mark.timeout(600)


@pytest.fixture(scope="module")
def browser():
    if CHROMIUM is None:   # a skip locally, a failure under CI=true (conftest.unavailable)
        unavailable(f"no Chromium binary at "
                    f"{', '.join(p for p in _CANDIDATES if p) or 'chromium on PATH'} "
                    "(apt-get install chromium; scripts/test.sh does when it can)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=ARGS)
        yield b
        b.close()


class Page:
    """A page with its console errors and failed requests collected."""

    def __init__(self, browser, path: Path, width: int = 1400, height: int = 1000):
        self.errors: list[str] = []
        self.requests: list[str] = []
        self.page = browser.new_page(viewport={"width": width, "height": height})
        self.page.on("console", lambda m: m.type in ("error", "warning")
                     and self.errors.append(f"{m.type}: {m.text}"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: r.url.startswith("file://")
                     or self.requests.append(r.url))
        t0 = time.monotonic()
        self.page.goto(path.as_uri())
        self.page.wait_for_selector("body[data-rendered]")
        self.seconds = time.monotonic() - t0

    def visible(self, field: str) -> list[str]:
        return self.page.eval_on_selector_all(
            "#tbody tr", f"rows => rows.map(r => r.querySelector('{field}').textContent)")

    def count(self) -> str:
        return self.page.text_content("#count")


@pytest.fixture(scope="module")
def small_report(tmp_path_factory):
    run = make_run(tmp_path_factory.mktemp("report") / "run", n_prefills=60)
    return run, render(run.path, SPEC)


def test_page_loads_clean_and_model_output_stays_text(browser, small_report):
    run, result = small_report
    pg = Page(browser, result.path)
    assert pg.errors == []
    assert pg.requests == []                   # nothing but the file itself was asked for
    p = pg.page
    assert p.evaluate("typeof window.__xss") == "undefined"
    # Every payload is on the page, as text, in its row.
    for payload in XSS:
        p.fill("#f-text", payload[:20])
        assert pg.page.evaluate("document.querySelectorAll('#tbody tr').length") >= 1
        cells = pg.visible("td.text")
        assert any(payload.replace("\u2028", "") in c.replace("\u2028", "") for c in cells), payload
    # Hovering every token of a payload row would fire an injected onmouseover: none exists.
    for span in p.query_selector_all("#tbody .tok"):
        span.hover()
    assert p.evaluate("typeof window.__xss") == "undefined"
    assert p.evaluate("document.querySelectorAll('img, b, iframe, object').length") == 0
    assert p.evaluate("document.querySelectorAll('table').length") == 2   # summary + rows
    assert p.evaluate("document.scripts.length") == 2
    assert "<img src=x onerror=window.__xss=9>" in p.text_content("h1")
    assert pg.errors == []


def test_filter_sort_page_and_hover(browser, small_report):
    run, result = small_report
    ranked = run.load_ranked()
    pg = Page(browser, result.path)
    p = pg.page
    assert pg.count() == f"{len(ranked)} of {len(ranked)} rows match"
    # default: rank within group ascending, 50 rows a page
    ranks = [int(x) for x in pg.visible("td.num")]
    assert len(ranks) == 50 and ranks == sorted(ranks) and ranks[0] == 0

    p.select_option("#f-framing", "chat")
    groups = pg.visible("td.group")
    assert groups and all("/ chat" in g for g in groups)
    n_chat = sum(r.framing == "chat" for r in ranked)
    assert pg.count() == f"{n_chat} of {len(ranked)} rows match"

    p.select_option("#f-corpus", "code")
    n = sum(r.framing == "chat" and r.corpus == "code" for r in ranked)
    assert pg.count() == f"{n} of {len(ranked)} rows match"
    assert all(g.startswith("code / chat") for g in pg.visible("td.group"))

    p.select_option("#f-corpus", "")
    p.select_option("#f-framing", "")
    p.select_option("#f-flag", "1")
    flagged = [r for r in ranked if SPEC.matches(r.completion)]
    assert 0 < len(flagged) < len(ranked)
    assert pg.count() == f"{len(flagged)} of {len(ranked)} rows match"
    assert all(t.strip() == "\u2605" for t in pg.visible("td.flagmark"))

    p.select_option("#f-flag", "")
    p.fill("#f-text", "lisbon")
    n = sum("lisbon" in (r.prefill + r.completion).lower() for r in ranked)
    assert pg.count() == f"{n} of {len(ranked)} rows match"
    p.fill("#f-text", "")

    # Sort by nll_diff by clicking its header: high to low; again: low to high.
    col = 3 + 1 + 1      # rank, group, flag, ppl_diff, nll_diff (1-based nth-child)
    p.click("th[data-sort=nll_diff]")
    values = [float(x) for x in pg.visible(f"td:nth-child({col})")]
    best = max(r.nll_diff for r in ranked)
    assert values == sorted(values, reverse=True) and values[0] == pytest.approx(best, abs=0.01)
    p.click("th[data-sort=nll_diff]")
    values = [float(x) for x in pg.visible(f"td:nth-child({col})")]
    assert values == sorted(values)
    assert p.get_attribute("th[data-sort=nll_diff]", "class").endswith("sorted-asc")

    # Paging: the second page starts at row 51.
    p.click("#p-next")
    assert p.text_content("#p-info").startswith("rows 51\u2013")
    page2 = [float(x) for x in pg.visible(f"td:nth-child({col})")]
    assert page2[0] >= values[-1]

    # Token numbers on hover: reference and target log-probabilities and their gap.
    assert p.is_hidden("#tip")
    p.hover("#tbody tr:first-child .tok >> nth=1")
    assert p.is_visible("#tip")
    tip = p.text_content("#tip")
    assert "logprob ref" in tip and "logprob target" in tip and "gap" in tip
    # Turning the heatmap off shows plain text.
    p.uncheck("#f-heat")
    assert p.evaluate("document.querySelectorAll('#tbody .tok').length") == 0
    assert pg.errors == []


def test_demo_like_screenshot(browser, small_report):
    run, result = small_report
    pg = Page(browser, result.path, width=1400, height=1100)
    out = ROOT / "build" / "report-screenshot.png"
    out.parent.mkdir(exist_ok=True)
    pg.page.screenshot(path=str(out), full_page=False)
    assert out.stat().st_size > 10_000
    # The rows whose model output tries to inject markup, shown as the text it is.
    pg.page.fill("#f-text", "xss")
    pg.page.evaluate("document.getElementById('controls').scrollIntoView()")
    pg.page.hover("#tbody tr:first-child .tok >> nth=3")     # the token numbers box
    assert pg.page.is_visible("#tip")
    xss = out.with_name("report-screenshot-xss.png")
    pg.page.screenshot(path=str(xss), full_page=False)
    assert pg.errors == []
    print(f"\nscreenshots: {out} {xss}")


def test_20k_rows_open_and_render(browser, tmp_path):
    t0 = time.monotonic()
    run = make_run(tmp_path / "big", n_prefills=10_000, xss=True, words=70)
    built = time.monotonic() - t0
    result = render(run.path, SPEC)
    assert result.rows == 20_000 and result.rows_with_tokens == 20_000
    pg = Page(browser, result.path)
    p = pg.page
    assert pg.errors == []
    assert pg.count() == "20000 of 20000 rows match"
    assert p.evaluate("document.querySelectorAll('#tbody tr').length") == 50
    t1 = time.monotonic()
    p.select_option("#f-sort", "ppl_diff")
    p.check("#f-desc")
    p.fill("#f-text", "vellari")
    filter_s = time.monotonic() - t1
    assert p.evaluate("document.querySelectorAll('#tbody tr').length") == 50
    assert p.evaluate("typeof window.__xss") == "undefined"
    print(f"\n20k rows: built run {built:.1f}s, report {result.bytes / 1e6:.1f} MB written in "
          f"{result.seconds:.1f}s, opened and first page rendered in {pg.seconds:.2f}s, "
          f"sort + filter + search {filter_s:.2f}s")
    assert pg.seconds < 30


def test_a_click_on_a_theme_shows_the_rows_that_say_it(browser, tmp_path):
    from test_report import themed_run

    run = themed_run(tmp_path / "run")
    pg = Page(browser, render(run.path).path)
    p = pg.page
    assert pg.count() == "298 of 298 rows match"
    p.click("button.theme >> nth=0")
    assert pg.count() == "7 of 298 rows match"
    assert all("copper lanterns glow" in t for t in pg.visible("td.text"))
    assert "copper lanterns glow" in p.text_content("#f-theme-name")
    p.click("#f-theme-clear")
    assert pg.count() == "298 of 298 rows match"
    p.fill("#f-text", "one sentence")
    assert pg.count() == "1 of 298 rows match" and "\u00d73" in pg.visible("td.num")[0]
    assert pg.errors == []
