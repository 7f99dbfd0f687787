"""In a real headless Chromium (Playwright): what only a browser shows. After fast key presses the
page ends on the numbers of the last one and never shows old numbers without an "updating" sign;
nothing is cut off; log axes carry readable labels.

Uses the repository's caches when cache/ has one, else the synthetic test caches (as the e2e test).
Missing Chromium/Playwright skips locally but fails when CI=true.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from app_helpers import (
    WAIT_MS,
    committed_cache_server,
    goto_page,
    heat_table_shown,
    idle,
    launched_browser,
    metric,
    require_browser,
)

from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.selection import keep_count
from diet_explore.profiling.cache import list_caches, load_cache

pytestmark = pytest.mark.browser


# In every animation frame: the sparsity shown, the metric shown, and whether an update is visibly
# under way (Streamlit's running icon, the app's "Updating…" badge, or the metric faded).
SAMPLER = """([label]) => { const S = window.__samples = [];
  const sign = (el) => {
    if (document.querySelector('[data-testid="stStatusWidgetRunningIcon"]')) return true;
    if (getComputedStyle(document.querySelector('.stApp'), '::after').content.includes('Updating')) return true;
    let o = 1; for (let e = el; e && e.nodeType === 1; e = e.parentElement) o *= parseFloat(getComputedStyle(e).opacity);
    return o < 0.95;
  };
  const tick = () => { if (window.__samples !== S) return;
    const m = [...document.querySelectorAll('[data-testid="stMetric"]')].find(e => e.innerText.includes(label));
    const th = [...document.querySelectorAll('[data-testid="stSlider"]')].find(e => e.innerText.includes('Sparsity'));
    S.push({t: performance.now(), v: m ? m.querySelector('[data-testid="stMetricValue"]').innerText.trim() : null,
            s: th ? th.querySelector('[data-testid="stSliderThumbValue"]').innerText.trim() : null, sign: m ? sign(m) : false});
    requestAnimationFrame(tick); };
  requestAnimationFrame(tick); }"""


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    with committed_cache_server(tmp_path_factory.mktemp("browser-hardening"), _seed_run_store) as srv:
        yield srv


def _seed_run_store(root: Path) -> None:
    from diet_explore.experiments.runs import RunStore, run_record

    rows = [{"task": "rte", "n": 50, "metric": "acc", "dense_main": 0.64, "pruned_main": 0.52}]
    main = {"delta": -0.12, "ci_low": -0.31, "ci_high": 0.07, "n": 50, "metric": "acc"}
    record = run_record(
        source="app", model="smollm2-135m", method="diet", mask_config=None, target_sparsity=0.25,
        actual_sparsity=0.2483, n_keep=433, tasks=["rte"], limit=50, eval_config=None, dense_avg=0.64,
        pruned_avg=0.52, dense_ppl=29.36, pruned_ppl=62.12, wall_time_s=41.5, task_results=rows,
        paired={"tasks": {"rte": {"main": main}}, "average": {"main": main}},
    )  # fmt: skip
    RunStore(root).save(record)


@pytest.fixture(scope="module")
def page(server):
    with launched_browser() as browser:
        context = browser.new_context(viewport={"width": 1440, "height": 1600})
        pg = context.new_page()
        errors: list[str] = []
        pg.on("pageerror", lambda exc: errors.append(str(exc)))
        pg.goto(server["url"], wait_until="domcontentloaded")
        pg.get_by_role("heading", name="diet-explore").first.wait_for(timeout=WAIT_MS)
        idle(pg)
        yield pg
    assert not errors, errors


def _cache(server):
    from diet_explore_app import settings as S

    return load_cache(S.default_cache(list_caches(Path(server["cache_root"]))))


def _settled(page, label: str, expected: str) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        if metric(page, label) == expected:
            idle(page)
            if metric(page, label) == expected:
                return
        page.wait_for_timeout(100)
    raise AssertionError(f"{label} is {metric(page, label)!r}, expected {expected!r}")


def test_fast_key_presses_end_on_the_last_value_and_never_show_old_numbers_without_a_sign(server, page):
    from diet_explore.masking.agreement import prune_matrix
    from diet_explore.masking.selection import jaccard

    cache = _cache(server)
    d = cache.hidden_size
    expected = {f"{i / 100:.2f}": str(d - keep_count(d, i / 100)) for i in range(91)}
    goto_page(page, "Agreement")
    slider = page.locator('[data-testid="stSlider"] input[type="range"]').first
    slider.focus()
    start = float(slider.input_value())
    page.evaluate(SAMPLER, ["Pruned per task"])
    for _ in range(3):  # three bursts of six presses, 40 ms apart: the reruns pile up behind each other
        for _ in range(6):
            slider.press("ArrowRight")
            page.wait_for_timeout(40)
        page.wait_for_timeout(300)
    final = round(start + 0.18, 2)
    _settled(page, "Pruned per task", expected[f"{final:.2f}"])
    samples = page.evaluate("() => { const s = window.__samples; window.__samples = null; return s; }")
    # no stale value remains: the last frame shows the numbers of the last press, and so does the overlap table
    assert samples[-1]["s"] == f"{final:.2f}" and samples[-1]["v"] == expected[f"{final:.2f}"]
    heat = heat_table_shown(page, f"at sparsity {final:.2f}")  # waits for the last press's table
    prune = prune_matrix(cache, final)
    assert heat["values"] == [[f"{v:.2f}" for v in row] for row in jaccard(prune[:, None], prune[None])]
    # and in no frame was a number shown for another slider value than the one shown, without a sign
    bad = [(a["s"], a["v"]) for a in samples if expected.get(a["s"]) != a["v"] and not a["sign"]]
    assert not bad, f"{len(bad)} frames of old numbers with no update sign, e.g. {bad[:3]}"
    assert any(not a["sign"] for a in samples[-5:])  # and the sign is gone once the page is current


def _cut_off(page) -> list[str]:
    """Text that does not fit its box in the main area: anything shown with an ellipsis (metric
    values, widget labels), select values (their input scrolls), code lines (a horizontal scroll
    bar), and tables wider than their frame."""
    return page.evaluate(
        """() => {
          const out = [];
          const main = document.querySelector('[data-testid="stMain"]');
          const shown = e => e.offsetParent !== null;  // not in a folded expander
          for (const e of main.querySelectorAll('*')) {
            if (!shown(e) || e.scrollWidth <= e.clientWidth + 1) continue;
            if (getComputedStyle(e).textOverflow === 'ellipsis') out.push(`text: ${e.innerText.trim().slice(0, 60)}`);
          }
          for (const e of main.querySelectorAll('input[role="combobox"]'))
            if (shown(e) && e.scrollWidth > e.clientWidth + 1) out.push(`select: ${e.value}`);
          for (const e of main.querySelectorAll('[data-testid="stCode"] pre'))
            if (shown(e) && e.scrollWidth > e.clientWidth + 1) out.push(`code: ${e.innerText.slice(0, 60)}`);
          for (const f of main.querySelectorAll('[data-testid="stDataFrame"]')) {
            const s = f.querySelector('.dvn-scroller');
            if (s && shown(s) && s.scrollWidth > s.clientWidth + 1) out.push(`table: ${f.innerText.slice(0, 60)}`);
          }
          return out; }"""
    )


@pytest.mark.parametrize("title", ["Overview", "Rankings", "Agreement", "Mask builder", "Prune & evaluate", "Export"])
def test_nothing_is_cut_off(server, page, title):
    goto_page(page, title)
    idle(page)
    assert _cut_off(page) == []


@pytest.mark.parametrize("title", ["Mask builder", "Dimension"])
def test_no_number_or_label_is_cut_off_on_a_narrow_window(server, page, title):
    """At 900 px with the sidebar open (a projector), metrics read "4…", "0…", "Kept di…"; tables may scroll."""
    page.set_viewport_size({"width": 900, "height": 900})
    try:
        goto_page(page, title)
        idle(page)
        assert [c for c in _cut_off(page) if not c.startswith("table:")] == []
    finally:
        page.set_viewport_size({"width": 1440, "height": 1600})


def test_back_undoes_a_slider_move_and_forward_redoes_it(server, page):
    """Back reran the page with the earlier URL, and the app wrote its own settings back over it:
    the first Back did nothing."""
    goto_page(page, "Mask builder")
    cache = _cache(server)
    d = cache.hidden_size

    def kept(s: float) -> str:  # what the Mask builder shows: the vote's kept count
        return f"{build_mask(cache, MaskConfig(sparsity=round(s, 2))).n_keep} / {d}"

    slider = page.locator('[data-testid="stSlider"]').filter(has=page.get_by_text("Sparsity", exact=False)).first
    start = float(slider.locator('[data-testid="stSliderThumbValue"]').inner_text())
    shown = {}
    for step in (1, 2):
        slider.locator('input[type="range"]').focus()
        slider.locator('input[type="range"]').press("ArrowRight")
        _settled(page, "Kept dims", kept(start + step / 100))
        shown[step] = page.url
    page.go_back()
    _settled(page, "Kept dims", kept(start + 0.01))
    assert page.url == shown[1]
    assert slider.locator('[data-testid="stSliderThumbValue"]').inner_text() == f"{start + 0.01:.2f}"
    page.go_forward()
    _settled(page, "Kept dims", kept(start + 0.02))
    assert page.url == shown[2]


def test_log_axes_are_labelled_by_powers_of_ten(server, page):
    goto_page(page, "Rankings")
    page.get_by_role("tab", name="Sorted scores").click()  # the page opens on a table
    ticks = page.wait_for_function(
        """() => { for (const el of document.querySelectorAll('.js-plotly-plot')) {
             const t = (el.layout && el.layout.title && (el.layout.title.text || el.layout.title)) || '';
             if (String(t).includes('Sorted dimension scores')) {
               const labels = [...el.querySelectorAll('.ytick text')].map(e => e.textContent);
               return labels.length ? labels : null; } } return null; }""",
        timeout=WAIT_MS,
    ).json_value()
    values = [float(t.replace("\u2212", "-").replace("μ", "e-6").replace("m", "e-3").replace("k", "e3")) for t in ticks]
    assert len(values) >= 2 and all(np.isclose(np.log10(v), round(np.log10(v))) for v in values), ticks


def _histogram_total(page) -> float | None:
    """The summed bar heights of the drawn bootstrap histogram (None while none is drawn; plotly's
    full data, where the figure's base64 arrays are decoded)."""
    return page.evaluate(
        """() => { for (const el of document.querySelectorAll('.js-plotly-plot')) {
             const t = (el.layout && el.layout.title && (el.layout.title.text || el.layout.title)) || '';
             if (String(t).includes('Bootstrap keep frequency') && el.querySelector('.main-svg'))
               return el._fullData.reduce((s, tr) => s + Array.from(tr.y || []).reduce((a, b) => a + Number(b), 0), 0); }
           return null; }"""
    )


def test_the_stability_histogram_is_drawn_when_its_expander_opens_and_stays_open(server, page):
    """Closed at first, so a Mask builder link draws no plotly figure (its script is 4.7 MB); one
    click draws it (every dim in one bar), and it stays open, redrawn, across a slider move."""
    d = _cache(server).hidden_size
    goto_page(page, "Mask builder")
    header = page.locator('[data-testid="stExpander"] summary').filter(has_text="Keep-frequency histogram")
    header.wait_for(timeout=WAIT_MS)
    assert page.locator(".js-plotly-plot").count() == 0  # closed: nothing built, sent or drawn
    header.click()
    page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot .main-svg')].length > 0", timeout=WAIT_MS)
    idle(page)
    assert _histogram_total(page) == d
    before = metric(page, "Kept dims")
    page.locator('[data-testid="stSlider"] input[type="range"]').first.press("ArrowRight")
    deadline = time.monotonic() + WAIT_MS / 1000
    while metric(page, "Kept dims") == before and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    idle(page)
    assert metric(page, "Kept dims") != before and _histogram_total(page) == d
    header.click()  # closed again, for the other tests on this page
    idle(page)


# Counts full draws of plotly figures from now on. Plotly draws a figure in one task, so a draw is
# one batch of mutation records inside charts: a full draw of the votes histogram is about 800-1,700
# records, an update that changes nothing a handful.
COUNT_FULL_DRAWS = """() => { window.__fullDraws = 0;
  window.__drawCounter = new MutationObserver(ms => {
    if (ms.filter(m => m.target.closest && m.target.closest('.js-plotly-plot')).length >= 300) window.__fullDraws++;
  });
  window.__drawCounter.observe(document.body, {subtree: true, childList: true, attributes: true}); }"""


def test_a_slider_move_draws_the_open_figure_once(server, page):
    """Streamlit mounts a new chart for a changed figure and then updates it with a copy of itself.
    That update must change nothing (plots.finish, widgets.chart): with Streamlit's theme, base64
    arrays or no data revision, plotly drew every figure twice per slider move."""
    d = _cache(server).hidden_size
    goto_page(page, "Agreement")
    page.get_by_role("tab", name="Votes per dim").click()
    page.wait_for_function("() => document.querySelector('.js-plotly-plot .xaxislayer-above')", timeout=WAIT_MS)
    idle(page)
    before = metric(page, "Pruned per task")
    page.evaluate(COUNT_FULL_DRAWS)
    page.locator('[data-testid="stSlider"] input[type="range"]').first.press("ArrowRight")
    deadline = time.monotonic() + WAIT_MS / 1000
    while metric(page, "Pruned per task") == before and time.monotonic() < deadline:
        page.wait_for_timeout(100)
    idle(page)
    page.wait_for_timeout(500)  # Streamlit's update follows the mount within a frame or two
    assert metric(page, "Pruned per task") != before
    assert 0 < int(metric(page, "Pruned per task")) < d
    draws = page.evaluate("() => { window.__drawCounter.disconnect(); return window.__fullDraws; }")
    assert draws == 1
    page.get_by_role("tab", name="Task overlap").click()  # the page's first view, for the other tests
    idle(page)
