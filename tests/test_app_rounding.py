"""AppTest: rounding the kept count is a visible change of the mask (before → after, "not the mask
evaluated"), and a kept-count multiple is never carried silently to another model's cache."""

from __future__ import annotations

import pytest
from app_helpers import metrics, run_page
from test_app_prune_eval import tiny  # noqa: F401  (fixture; tiny_app is in conftest)

from diet_explore.masking.build import MaskConfig, build_mask


def _kept(at) -> int:
    return int(metrics(at)["Kept dims"].split("/")[0])


def test_the_round_button_says_old_and_new_count_and_that_it_is_another_mask(tiny_app, tiny):  # noqa: F811
    at, _ = tiny_app
    at = run_page(at.run(), "mask_builder")
    before = _kept(at)
    after = build_mask(tiny, MaskConfig(multiple_of=4)).n_keep
    assert before != after
    button = at.button(key="mb_round_for_saving")
    assert button.label == f"Round the kept count to a multiple of 4: {before} → {after} kept dims"
    button.click().run()
    assert _kept(at) == after
    note = f"Rounded: {before} → {after} kept dims"
    assert any(note in w.value and "not the mask evaluated before rounding" in w.value for w in at.warning)
    run_page(at, "export")
    assert any(note in w.value for w in at.warning)  # the page that saves it says so too
    at.switch_page("views/mask_builder.py").run()
    at.number_input(key="multiple").set_value(1).run()  # back to the evaluated mask: no note
    assert _kept(at) == before and not any("Rounded:" in w.value for w in at.warning)


@pytest.mark.parametrize("needs, expected", [({"alpha-576": 8, "synthetic-64x4": 4}, 4), ({}, 1)])
def test_a_multiple_is_re_derived_or_reset_with_a_note_on_another_models_cache(app, monkeypatch, needs, expected):
    """A multiple of 9 carried from SmolLM2 to the Gemma-3 cache pruned dims whose share passed τ, with no reason."""
    from diet_explore_app import loaders

    monkeypatch.setattr(loaders, "saveable_multiple", lambda name: needs.get(name))
    at = run_page(app.run(), "mask_builder")
    at.number_input(key="multiple").set_value(8).run()
    at.run()
    beta = next(o for o in at.selectbox(key="cache_choice").options if o.endswith("beta"))
    at.selectbox(key="cache_choice").select(beta).run()
    assert not at.exception
    assert at.number_input(key="multiple").value == expected
    (note,) = [w.value for w in at.warning if "Kept count a multiple of" in w.value]
    assert "8 was chosen on a alpha-576 cache; this cache is synthetic-64x4" in note
    assert ("re-derived as 4" in note) if expected == 4 else ("reset to 1" in note)
    at.run()
    assert not [w for w in at.warning if "Kept count a multiple of" in w.value]  # said once
