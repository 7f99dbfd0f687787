"""The Sweeps page (its sweep results) and the Mask builder's live proxy in a real headless Chromium (``diet-explore app``).

Opens the Sweeps page from the sidebar, checks that every committed sweep's paper-style table and
curves are drawn (the curves carry one line per method), and that the Mask builder shows the proxy
table; screenshots the Sweeps page (into docs/screenshots/ when DIET_EXPLORE_SCREENSHOTS is set, as
`make screenshots` does). Missing Chromium/Playwright skips locally but fails when CI=true.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from app_helpers import APP, CHROME_ARGS, CHROMIUM, DOCS_RESULTS, WAIT_MS, goto_page, idle, require_browser, start_app_server

from diet_explore.experiments.reports import RESULTS_DIR_ENV, list_sweeps, load_sweep, sweep_name

pytestmark = pytest.mark.browser
SCREENSHOTS = Path(os.environ["DIET_EXPLORE_SCREENSHOTS"]) if os.environ.get("DIET_EXPLORE_SCREENSHOTS") else None


def _line_names(page, title_part: str) -> list[str]:
    handle = page.wait_for_function(
        """(part) => {
            for (const el of document.querySelectorAll('.js-plotly-plot')) {
                const t = (el.layout && el.layout.title && (el.layout.title.text || el.layout.title)) || '';
                if (String(t).includes(part)) return el.data.filter(d => d.mode === 'lines+markers').map(d => d.name);
            }
            return null;
        }""",
        arg=title_part,
        timeout=WAIT_MS,
    )
    return handle.json_value()


def pick_option(page, box_text: str, option: str, tries: int = 3) -> None:
    """Open the selectbox that shows ``box_text`` and pick ``option``. A rerun that arrives while the
    list is open redraws the box and closes the list (more often on a loaded machine), so the box is
    opened again, up to ``tries`` times."""
    from playwright.sync_api import TimeoutError as PlaywrightTimeout

    for attempt in range(tries):
        idle(page)
        page.locator('[data-testid="stSelectbox"]').filter(has_text=box_text).first.click()
        choice = page.get_by_role("option", name=option, exact=True)
        try:
            choice.wait_for(timeout=WAIT_MS // tries)
        except PlaywrightTimeout:
            if attempt == tries - 1:
                raise
            page.keyboard.press("Escape")
            continue
        choice.click()
        return


def test_the_results_page_draws_every_committed_sweep(tmp_path):
    require_browser()
    from playwright.sync_api import sync_playwright

    sweeps = list_sweeps(DOCS_RESULTS)
    assert sweeps, "no committed sweep under docs/results"
    env = {
        "DIET_EXPLORE_CACHE_DIR": str(APP.parents[1] / "cache"),
        "DIET_EXPLORE_EXPORT_DIR": str(tmp_path / "export"),
        "DIET_EXPLORE_RUNS_DIR": str(tmp_path / "runs"),
        RESULTS_DIR_ENV: str(DOCS_RESULTS),
    }
    with start_app_server(tmp_path, env) as url, sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        page = browser.new_context(viewport={"width": 1440, "height": 1000}).new_page()
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(url, wait_until="domcontentloaded")
        page.get_by_role("heading", name="diet-explore").first.wait_for(timeout=WAIT_MS)
        idle(page)
        goto_page(page, "Mask builder")
        page.get_by_text("Live proxy", exact=False).first.wait_for(timeout=WAIT_MS)
        page.get_by_text("kept_energy", exact=False).first.wait_for(timeout=WAIT_MS)
        goto_page(page, "Sweeps")
        for i, path in enumerate(sweeps):
            sweep = load_sweep(path)
            # picked every time: the page opens on a sweep of the explored model, not the first by name
            pick_option(page, "Sweep", sweep_name(path))
            idle(page)
            page.get_by_text("Paper-style table", exact=True).wait_for(timeout=WAIT_MS)
            page.locator('[data-testid="stDataFrame"]').nth(1).wait_for(timeout=WAIT_MS)  # paper-style and DIET-minus tables
            # the figure of the sweep picked before can stand until the rerun replaces it: wait for this one's lines
            deadline = time.monotonic() + WAIT_MS / 1000
            legend = sorted(sweep.labels()[m] for m in sweep.methods())  # each method by its runs' mask label
            while sorted(_line_names(page, "Δ average main metric")) != legend and time.monotonic() < deadline:
                page.wait_for_timeout(200)
            assert sorted(_line_names(page, "Δ average main metric")) == legend
            assert _line_names(page, "perplexity")  # the perplexity curve is drawn too
            if i == len(sweeps) - 1:
                idle(page)
                folder = SCREENSHOTS or tmp_path / "screenshots"
                folder.mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(folder / "results.png"), full_page=True)
                assert (folder / "results.png").stat().st_size > 10_000
        browser.close()
    assert not errors, errors
