"""End to end in a real headless Chromium: ``streamlit run app.py`` on a free port, driven by Playwright.

Visits every page through the sidebar (so session state must carry the settings), moves the
sparsity slider with the keyboard and checks that the Jaccard overlap table and the numbers change to the
library's values, runs a tiny prune + evaluate (2 examples per task) into the run store, downloads
the mask and validates it with ``load_mask``, checks the URL reproduces the view in a fresh browser
context, and screenshots every page (into docs/screenshots/ when DIET_EXPLORE_SCREENSHOTS=docs/screenshots,
as `make screenshots` does; else a temp folder).

Uses the repository's caches when cache/ has one (so the screenshots show real data), else the
synthetic test caches. Missing Chromium/Playwright skips locally but fails when CI=true.
"""

from __future__ import annotations

import json
import os
import warnings
from pathlib import Path

import numpy as np
import pytest
from app_helpers import (
    WAIT_MS,
    arr,
    committed_cache_server,
    goto_page,
    heat_table_shown,
    idle,
    launched_browser,
    metric,
    require_browser,
    wait_metric,
)

from diet_explore.evaluation.decision import format_estimate
from diet_explore.experiments.history import run_view
from diet_explore.profiling.cache import list_caches

pytestmark = pytest.mark.browser

# The README's screenshots are refreshed only on request (DIET_EXPLORE_SCREENSHOTS=docs/screenshots), so a
# test run does not rewrite tracked files; otherwise they go to a throwaway folder (still taken: a page that
# cannot render fails here).
SCREENSHOTS = Path(os.environ["DIET_EXPLORE_SCREENSHOTS"]) if os.environ.get("DIET_EXPLORE_SCREENSHOTS") else None
PAGES = [
    ("overview", "Overview"),
    ("rankings", "Rankings"),
    ("agreement", "Agreement"),
    ("mask_builder", "Mask builder"),
    ("prune_eval", "Prune & evaluate"),
    ("export", "Export"),
]


# --------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    with committed_cache_server(tmp_path_factory.mktemp("e2e")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(server):
    with launched_browser() as b:
        yield b


def _plot_data(page, title_part: str):
    """``data`` of the plotly chart whose title contains ``title_part`` (read from the live graph div);
    waits until it is drawn (charts are drawn after the script run ends)."""
    handle = page.wait_for_function(
        """(part) => {
            for (const el of document.querySelectorAll('.js-plotly-plot')) {
                const t = (el.layout && el.layout.title && (el.layout.title.text || el.layout.title)) || '';
                const conv = v => v == null ? null : ArrayBuffer.isView(v) ? Array.from(v) : Array.isArray(v) ? v.map(conv) : v;
                if (String(t).includes(part)) return el.data.map(d => ({x: conv(d.x), y: conv(d.y), z: conv(d.z)}));
            }
            return null;
        }""",
        arg=title_part,
        timeout=WAIT_MS,
    )
    return handle.json_value()


def _shot(page, name: str, folder: Path) -> None:
    idle(page)  # the whole page, not the half rendered before the last element arrives
    folder = SCREENSHOTS or folder
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / f"{name}.png"), full_page=True)
    assert (folder / f"{name}.png").stat().st_size > 10_000, f"screenshot of {name} is (nearly) empty"


def _load_default_cache(server):
    from diet_explore.profiling.cache import load_cache
    from diet_explore_app import settings as S

    return load_cache(S.default_cache(list_caches(Path(server["cache_root"]))))


# --------------------------------------------------------------------------------------------
def test_every_page_slider_and_download(server, browser, tmp_path):
    from diet_explore.masking.agreement import prune_matrix
    from diet_explore.masking.selection import jaccard

    def jaccard_matrix(p):
        return jaccard(p[:, None], p[None])

    from diet_explore.experiments.runs import RunStore
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.masking.maskfile import load_mask
    from diet_explore.masking.selection import keep_count
    from diet_explore.models.builtin import install_command, is_installed
    from diet_explore.pruning.saving import required_multiple_for_model

    cache = _load_default_cache(server)
    d = cache.hidden_size
    context = browser.new_context(viewport={"width": 1440, "height": 1600}, accept_downloads=True)
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(server["url"], wait_until="domcontentloaded")
    page.get_by_role("heading", name="diet-explore").first.wait_for(timeout=WAIT_MS)
    idle(page)
    assert metric(page, "Hidden size") == str(d)
    _shot(page, "overview", tmp_path / "screenshots")

    goto_page(page, "Rankings")
    assert heat_table_shown(page, "Spearman correlation of task scores")["rows"] == list(cache.tasks)
    _shot(page, "rankings", tmp_path / "screenshots")
    page.get_by_role("tab", name="Sorted scores").click()
    assert _plot_data(page, "Sorted dimension scores") is not None
    idle(page)
    page.get_by_role("tab", name="Score distributions").click()  # its figures in lazy tabs, as on Agreement
    assert len(_plot_data(page, "Distribution of dimension scores")) == len(cache.tasks)
    idle(page)
    page.get_by_role("tab", name="Sorted scores").click()
    assert _plot_data(page, "Sorted dimension scores") is not None
    idle(page)

    # Agreement: move the sparsity slider with the keyboard; the overlap table must follow.
    goto_page(page, "Agreement")
    wait_metric(page, "Pruned per task", str(d - keep_count(d, 0.2)))
    # the overlap is a coloured table (no plotly figure on a page's first view)
    before = heat_table_shown(page, "Jaccard overlap of pruned sets at sparsity 0.20")
    assert before["cols"] == before["rows"] == list(cache.task_names)
    assert before["values"] == [[f"{v:.2f}" for v in row] for row in jaccard_matrix(prune_matrix(cache, 0.2))]
    assert len({f for row in before["fills"] for f in row}) > 2  # coloured by value, not one fill
    handle = page.locator('[data-testid="stSlider"] input[type="range"]').first
    handle.focus()
    for _ in range(5):
        handle.press("ArrowRight")
    wait_metric(page, "Pruned per task", str(d - keep_count(d, 0.25)))
    idle(page)
    after = heat_table_shown(page, "Jaccard overlap of pruned sets at sparsity 0.25")  # waits for the redrawn table
    assert after["values"] != before["values"]
    assert after["values"] == [[f"{v:.2f}" for v in row] for row in jaccard_matrix(prune_matrix(cache, 0.25))]
    page.wait_for_function("() => location.search.includes('sparsity=0.25')", timeout=WAIT_MS)
    _shot(page, "agreement", tmp_path / "screenshots")
    # one view at a time: a click opens another tab's figure (two clicks in a row: neither is lost),
    # the link names it, and the page remembers it
    page.get_by_role("tab", name="Votes per dim").click()
    votes = _plot_data(page, "Prune votes per dimension")
    assert sum(int(arr(trace["y"]).astype(int).sum()) for trace in votes) == d  # every dim counted once (kept + pruned bars)
    idle(page)
    page.get_by_role("tab", name="Vote matrix").click()
    assert _plot_data(page, "Prune votes: dimensions × tasks") is not None
    page.wait_for_function("() => location.search.includes('view=matrix')", timeout=WAIT_MS)
    goto_page(page, "Rankings")
    goto_page(page, "Agreement")
    assert _plot_data(page, "Prune votes: dimensions × tasks") is not None
    page.get_by_role("tab", name="Task overlap").click()
    idle(page)

    # Mask builder: the slider value came along through session state.
    goto_page(page, "Mask builder")
    res = build_mask(cache, MaskConfig(sparsity=0.25))
    wait_metric(page, "Kept dims", f"{res.n_keep} / {d}")
    need = required_multiple_for_model(cache.model_name)
    if need and res.n_keep % need:  # e.g. SmolLM2: 433 kept is not a multiple of its 9 heads
        page.get_by_text(f"needs a multiple of {need}", exact=False).first.wait_for(timeout=WAIT_MS)
    _shot(page, "mask_builder", tmp_path / "screenshots")

    # Prune & evaluate: a tiny run (2 held-out examples per task, no perplexity) into the run store.
    goto_page(page, "Prune & evaluate")
    model_name = cache.model_name
    if is_installed(model_name):
        limit = page.get_by_label("Held-out examples per task")
        limit.fill("2")
        limit.press("Enter")
        idle(page)
        page.get_by_text("Wiki perplexity", exact=True).click()
        idle(page)
        page.get_by_role("button", name="Prune and evaluate").click()
        page.get_by_text("Mean Δ main metric", exact=True).wait_for(timeout=600_000)
        idle(page)
        runs = RunStore(server["tmp"] / "runs").records()
        assert len(runs) == 1
        assert runs[0]["n_keep"] == res.n_keep and runs[0]["limit"] == 2 and runs[0]["dense_ppl"] is None
        assert runs[0]["tasks"] == cache.task_names
        view = run_view(runs[0])
        assert metric(page, "Mean Δ main metric") == format_estimate(view["delta_avg"], view["ci_low"], view["ci_high"])
    else:  # no weights here: the page must say how to install them
        page.get_by_text(install_command(model_name), exact=False).first.wait_for(timeout=WAIT_MS)
        warnings.warn(f"{model_name} is not installed: prune+evaluate checked only the install hint", stacklevel=1)
    _shot(page, "prune_eval", tmp_path / "screenshots")

    goto_page(page, "Export")
    with page.expect_download(timeout=WAIT_MS) as dl:
        page.get_by_role("button", name="Download mask JSON").click()
    path = tmp_path / dl.value.suggested_filename
    dl.value.save_as(path)
    mask = load_mask(path, expected_hidden_size=d)
    assert np.array_equal(mask.keep, res.keep)
    assert json.loads(path.read_text())["config"]["sparsity"] == 0.25
    _shot(page, "export", tmp_path / "screenshots")
    link = page.url
    context.close()
    assert not errors, errors

    # A pasted link reproduces the view in a fresh browser context (a new session).
    fresh = browser.new_context(viewport={"width": 1440, "height": 1000})
    p2 = fresh.new_page()
    p2.goto(link.replace("/export", "/mask_builder"), wait_until="domcontentloaded")
    p2.get_by_role("heading", name="Mask builder").first.wait_for(timeout=WAIT_MS)
    idle(p2)
    wait_metric(p2, "Kept dims", f"{res.n_keep} / {d}")
    fresh.close()


def _slider_value(page, label: str) -> str:
    s = page.locator('[data-testid="stSlider"]').filter(has=page.get_by_text(label, exact=True)).first
    return s.locator('[data-testid="stSliderThumbValue"]').inner_text().strip()


def test_reset_to_paper_default_sticks_in_the_browser(server, browser):
    """The reset button moves the sliders themselves, not only the numbers: a widget's identity is its
    key, so the browser kept showing (and on the next click sent back) the old τ and weight."""
    from diet_explore_app.widgets import THRESHOLD_LABEL

    cache = _load_default_cache(server)
    first = cache.task_names[0]
    context = browser.new_context(viewport={"width": 1440, "height": 1600})
    page = context.new_page()
    elsewhere: list[str] = []  # the app works offline: every request goes to the app's own server
    page.on("request", lambda r: None if r.url.startswith((server["url"], "data:", "blob:")) else elsewhere.append(r.url))
    try:
        page.goto(f"{server['url']}/mask_builder?threshold=1&weights={first}:0", wait_until="domcontentloaded")
        page.get_by_role("heading", name="Mask builder").first.wait_for(timeout=WAIT_MS)
        idle(page)
        n = len(cache.task_names)
        assert metric(page, "Voting tasks") == str(n - 1)
        assert (_slider_value(page, THRESHOLD_LABEL), _slider_value(page, first)) == ("1.00", "0.00")

        page.get_by_role("button", name="Reset to paper default").click()
        wait_metric(page, "Voting tasks", str(n))
        idle(page)
        assert (_slider_value(page, THRESHOLD_LABEL), _slider_value(page, first)) == ("0.50", "1.00")
        # the next, unrelated input must not bring the old values back
        page.locator('[data-testid="stCheckbox"]').filter(has=page.get_by_text("Exact count", exact=True)).first.click()
        idle(page)
        assert metric(page, "Voting tasks") == str(n)
        assert (_slider_value(page, THRESHOLD_LABEL), _slider_value(page, first)) == ("0.50", "1.00")
        assert "threshold" not in page.url and "weights" not in page.url
        assert elsewhere == []
        icon = page.evaluate("() => [...document.querySelectorAll('link[rel~=icon]')].map(l => l.href)")
        assert any("/media/" in h for h in icon), icon  # the app's own favicon, served by the app
    finally:
        context.close()
