"""The Dimension page in a real headless Chromium (Playwright), on the repository's caches.

Opens a shared link with ``dim=`` and checks the numbers are the library card's, that the
top-activating contexts show with the token highlighted, that a typed index on Agreement opens the
page, and screenshots it (into docs/screenshots/dimension.png when
DIET_EXPLORE_SCREENSHOTS=docs/screenshots, as `make screenshots` does; else a temp folder).
Missing Chromium/Playwright skips locally but fails when CI=true.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
from app_helpers import (
    APP,
    CHROME_ARGS,
    CHROMIUM,
    WAIT_MS,
    build_cache_root,
    goto_page,
    idle,
    metric,
    require_browser,
    start_app_server,
)

from diet_explore.profiling.cache import list_caches

pytestmark = pytest.mark.browser

ROOT = APP.parents[1]
SCREENSHOTS = Path(os.environ["DIET_EXPLORE_SCREENSHOTS"]) if os.environ.get("DIET_EXPLORE_SCREENSHOTS") else None
SHOWN_DIM = 83  # SmolLM2: the dim the tasks disagree on most at 0.2 (3 of 7 keep it), with readable contexts


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    tmp = tmp_path_factory.mktemp("dimension")
    real_root = ROOT / "cache"
    cache_root = real_root if list_caches(real_root) else build_cache_root(tmp / "caches")
    extra = {
        "DIET_EXPLORE_CACHE_DIR": str(cache_root),
        "DIET_EXPLORE_EXPORT_DIR": str(tmp / "export"),
        "DIET_EXPLORE_RUNS_DIR": str(tmp / "runs"),
    }
    with start_app_server(tmp, extra) as url:
        yield {"url": url, "cache_root": cache_root, "tmp": tmp}


@pytest.fixture(scope="module")
def browser(server):
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=CHROME_ARGS)
        try:
            yield b
        finally:
            b.close()


def _wait_metric(page, label: str, expected: str) -> None:
    deadline = time.monotonic() + WAIT_MS / 1000
    while time.monotonic() < deadline:
        try:
            if metric(page, label) == expected:
                return
        except Exception:
            pass
        page.wait_for_timeout(200)
    raise AssertionError(f"metric {label!r} is {metric(page, label)!r}, expected {expected!r}")


def test_a_dim_link_opens_the_page_with_its_card_and_contexts(server, browser, tmp_path):
    from diet_explore.masking.build import MaskConfig
    from diet_explore.masking.dims import dim_card
    from diet_explore.profiling.cache import load_cache
    from diet_explore_app import settings as S

    cache = load_cache(S.default_cache(list_caches(Path(server["cache_root"]))))
    dim = SHOWN_DIM if cache.hidden_size > SHOWN_DIM else 5
    card = dim_card(cache, MaskConfig(), dim)
    context = browser.new_context(viewport={"width": 1440, "height": 1600})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(f"{server['url']}/dimension?dim={dim}", wait_until="domcontentloaded")
    page.get_by_role("heading", name="Dimension").first.wait_for(timeout=WAIT_MS)
    idle(page)
    _wait_metric(page, "Current mask", "kept" if card.mask_kept else "pruned")
    assert metric(page, "Vote share (keep)") == f"{card.vote_share:.2f}"
    assert metric(page, "Weight-magnitude rank") == f"{card.weight_magnitude_rank} / {cache.hidden_size}"
    page.wait_for_function("() => document.querySelectorAll('.js-plotly-plot').length == 2", timeout=WAIT_MS)
    if card.has_contexts:
        marks = page.locator("mark")
        marks.first.wait_for(timeout=WAIT_MS)
        first = card.tasks[0].contexts[0]
        from diet_explore.masking.dims import display_token

        assert marks.first.inner_text().strip() == display_token(first.tokens[first.marked]).strip()
        assert page.locator("mark:visible").count() == 8  # the first tab's 8 contexts, one highlighted token each
    else:
        page.get_by_text("re-profile to see contexts", exact=False).first.wait_for(timeout=WAIT_MS)
    assert f"dim={dim}" in page.url
    idle(page)
    folder = SCREENSHOTS or tmp_path / "screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(folder / "dimension.png"), full_page=True)
    assert (folder / "dimension.png").stat().st_size > 10_000

    # from Agreement: type an index and open it
    goto_page(page, "Agreement")
    page.get_by_label("Inspect a dimension").first.fill("17")
    page.get_by_role("button", name="Open in Dimension").first.click()
    page.get_by_role("heading", name="Dimension").first.wait_for(timeout=WAIT_MS)
    idle(page)
    page.wait_for_function("() => location.search.includes('dim=17')", timeout=WAIT_MS)
    assert page.get_by_label(f"Hidden dimension (0 to {cache.hidden_size - 1})").input_value() == "17"
    assert not errors, errors
    context.close()
