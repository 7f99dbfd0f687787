"""The Dimension page in a real headless Chromium (Playwright), on the repository's caches.

Opens a shared link with ``dim=`` and checks the numbers are the library card's, that the
top-activating contexts show with the token highlighted, that a typed index on Agreement opens the
page, and screenshots it (into docs/screenshots/dimension.png when
DIET_EXPLORE_SCREENSHOTS=docs/screenshots, as `make screenshots` does; else a temp folder).
Missing Chromium/Playwright skips locally but fails when CI=true.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest
from app_helpers import (
    WAIT_MS,
    committed_cache_server,
    goto_page,
    idle,
    launched_browser,
    metric,
    require_browser,
    wait_metric,
)

from diet_explore.profiling.cache import list_caches

pytestmark = pytest.mark.browser

SCREENSHOTS = Path(os.environ["DIET_EXPLORE_SCREENSHOTS"]) if os.environ.get("DIET_EXPLORE_SCREENSHOTS") else None
SHOWN_DIM = 83  # SmolLM2: the dim the tasks disagree on most at 0.2 (3 of 7 keep it), with readable contexts


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    require_browser()
    with committed_cache_server(tmp_path_factory.mktemp("dimension")) as srv:
        yield srv


@pytest.fixture(scope="module")
def browser(server):
    with launched_browser() as b:
        yield b


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
    wait_metric(page, "Current mask", "kept" if card.mask_kept else "pruned")
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
