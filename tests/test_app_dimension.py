"""AppTest of the Dimension page: its numbers are the library's card, a ``dim=`` link opens it, the
other pages open it from a table row or a typed index, and bad input is an error box."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_helpers import APP, TIMEOUT, arr, chart_by_key, metrics, run_page

from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.dims import dim_card, split_votes
from diet_explore.masking.massive import massive_dims
from diet_explore.masking.stability import bootstrap_masks
from diet_explore.profiling.cache import load_cache
from diet_explore_app import widgets as ui

REPO = Path(__file__).resolve().parents[1]


def fresh_app(query: dict[str, str] | None = None):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    if query:
        at.query_params.update(query)
    return at


def shown_dim(at) -> int:
    return int(at.number_input(key="inspect_dim").value)


def test_the_page_shows_the_library_card(app, alpha):
    at = run_page(app.run(), "dimension")
    assert not at.error
    flagged = massive_dims(alpha).dims
    dim = shown_dim(at)
    assert dim == flagged[0]  # opens on the strongest massive-activation dim
    config = MaskConfig()
    card = dim_card(alpha, config, dim, bootstrap_masks(alpha, config, n_resamples=100))
    m = metrics(at)
    assert m["Current mask"] == ("kept" if card.mask_kept else "pruned")
    assert m["Vote share (keep)"] == f"{card.vote_share:.2f}"
    assert m["Bootstrap keep frequency"] == f"{card.keep_frequency:.2f}"
    assert m["Weight-magnitude rank"] == f"{card.weight_magnitude_rank} / 576"
    assert m["Wiki rank"] == f"{card.wiki_rank} / 576"
    assert at.warning and "Massive-activation dim" in at.warning[0].value
    bars = chart_by_key(at, "dim_scores")
    assert bars["data"][0]["x"] == [t.task for t in card.tasks]
    assert np.allclose(arr(bars["data"][0]["y"]), [t.score for t in card.tasks])
    assert np.allclose(arr(bars["data"][1]["y"]), [t.threshold for t in card.tasks])
    layers = chart_by_key(at, "dim_layers")
    assert [tr["name"] for tr in layers["data"]] == list(alpha.tasks)
    assert np.allclose(arr(layers["data"][1]["y"]), alpha.layer_scores("rte")[:, dim])
    votes = at.dataframe[0].value
    assert votes["vote"].tolist()[:7] == ["keep" if t.kept else "prune" for t in card.tasks[:7]]
    assert votes["vote"].iloc[-1] == "not voting"  # wikitext does not vote
    # this task's ratio, under its own header (Rankings' median-of-tasks ratio has another)
    assert votes[ui.RATIO_THIS_TASK].tolist()[:7] == [round(t.ratio, 2) for t in card.tasks[:7]]
    assert ui.RATIO_THIS_TASK != ui.RATIO_ACROSS_TASKS
    # a synthetic cache has no contexts: the page says how to get them
    assert any("re-profile to see contexts" in i.value for i in at.info)
    assert at.query_params["dim"] in (str(dim), [str(dim)])


def test_the_page_follows_the_dim_and_the_sparsity(app, alpha):
    at = run_page(app.run(), "dimension")
    at.number_input(key="inspect_dim").set_value(100).run()
    at.slider(key="sparsity").set_value(0.5).run()
    card = dim_card(alpha, MaskConfig(sparsity=0.5), 100)
    assert metrics(at)["Current mask"] == ("kept" if card.mask_kept else "pruned")
    bars = chart_by_key(at, "dim_scores")
    assert np.allclose(arr(bars["data"][1]["y"]), [t.threshold for t in card.tasks])
    assert at.query_params["dim"] in ("100", ["100"]) and at.query_params["sparsity"] in ("0.5", ["0.5"])
    run_page(at, "mask_builder")  # the dim stays for the next visit
    run_page(at, "dimension")
    assert shown_dim(at) == 100


def test_a_link_with_a_dim_opens_it(app_env, alpha):
    at = fresh_app({"dim": "42", "sparsity": "0.3"}).run()
    run_page(at, "dimension")
    assert shown_dim(at) == 42 and not at.error
    card = dim_card(alpha, MaskConfig(sparsity=0.3), 42)
    assert metrics(at)["Current mask"] == ("kept" if card.mask_kept else "pruned")


@pytest.mark.parametrize("bad", ["abc", "-3", "4.5", "1e3"])
def test_a_non_integer_dim_in_the_link_is_a_warning(app_env, alpha, bad):
    at = fresh_app({"dim": bad}).run()
    assert not at.exception
    assert any(f"dim={bad!r}" in w.value for w in at.warning)
    run_page(at, "dimension")
    assert shown_dim(at) == massive_dims(alpha).dims[0] and not at.error


def test_a_dim_out_of_range_in_the_link_is_a_warning_like_any_unusable_link_setting(app_env, alpha):
    at = fresh_app({"dim": "9999"}).run()
    run_page(at, "dimension")  # was a red error box beside another dim's card
    assert not at.error
    assert any("ignored link setting dim=9999: dimension 9999 is not an index in 0..575" in w.value for w in at.warning)
    assert shown_dim(at) == massive_dims(alpha).dims[0]  # the page still works


def test_a_dim_beyond_a_narrower_cache_is_an_error_box(app, alpha):
    at = run_page(app.run(), "dimension")
    at.number_input(key="inspect_dim").set_value(500).run()
    at.selectbox(key="cache_choice").select(next(o for o in at.selectbox(key="cache_choice").options if o.endswith("beta"))).run()
    assert not at.exception and at.error and "500 is not an index in 0..63" in at.error[0].value
    assert 0 <= shown_dim(at) < 64


def test_contexts_are_shown_with_the_token_highlighted(app, monkeypatch, tiny_cache_root):
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(tiny_cache_root))
    at = run_page(app.run(), "dimension")
    at.number_input(key="inspect_dim").set_value(5).run()
    cache = load_cache(tiny_cache_root / "tiny")
    card = dim_card(cache, MaskConfig(), 5)
    assert [t.label for t in at.tabs] == [t.task for t in card.tasks]
    tables = [m.value for m in at.markdown if "<table" in m.value]
    assert len(tables) == len(card.tasks)
    for html, row in zip(tables, card.tasks, strict=True):
        assert html.count("<mark") == 8  # the default 8 contexts per task, one marked token each
        assert f"<td style='padding-right:8px'>{row.contexts[0].sample_id}</td>" in html
        assert f"{row.contexts[0].value:.3f}" in html
    at.number_input(key="dim_contexts_n").set_value(3).run()
    assert all(m.value.count("<mark") == 3 for m in at.markdown if "<table" in m.value)
    assert not any("re-profile" in i.value for i in at.info)


def test_context_text_cannot_inject_markup():
    from diet_explore_app.widgets import context_html

    out = context_html(["<script>", "*bold*", " $x$", "\n"], 1)
    assert "<script>" not in out and "*" not in out and "$" not in out
    assert "<mark" in out and "↵" in out


# -------------------------------------------------------------------------------- reached from the other pages
def test_a_rankings_row_opens_its_dim(app, alpha):
    at = run_page(app.run(), "rankings")
    top = at.dataframe[0].value
    assert "massive" in top and ui.RATIO_ACROSS_TASKS in top
    assert top["massive"].tolist() == massive_dims(alpha).flagged[top["dim"]].tolist()
    at.session_state["rank_top_table"] = {"selection": {"rows": [2], "columns": [], "cells": []}}
    at.run()
    assert at.title[0].value == "Dimension" and shown_dim(at) == int(top["dim"].iloc[2])


def test_a_typed_dim_opens_it_and_a_bad_one_is_an_error(app, alpha):
    at = run_page(app.run(), "agreement")
    at.text_input(key="agree_jump").input("no").run()
    at.button(key="agree_jump_go").click().run()
    assert at.error and "'no' is not an index in 0..575" in at.error[0].value and at.title[0].value == "Agreement"
    at.text_input(key="agree_jump").input("230").run()
    at.button(key="agree_jump_go").click().run()
    assert at.title[0].value == "Dimension" and shown_dim(at) == 230


def test_where_tasks_disagree_is_the_library_table(app, alpha):
    at = run_page(app.run(), "mask_builder")
    at.slider(key="w_rte").set_value(0.0).run()
    at.slider(key="w_boolq").set_value(2.0).run()
    run_page(at, "agreement")
    table = at.dataframe[0].value
    expected = split_votes(
        alpha,
        MaskConfig(
            weights={t: (2.0 if t == "boolq" else 1.0) for t in alpha.task_names if t != "rte"},
            tasks=[t for t in alpha.task_names if t != "rte"],
        ),
        20,
    )
    assert table["dim"].tolist() == expected["dim"].tolist()
    assert np.allclose(table["keep share"], expected["keep share"])
    at.session_state["agree_split"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert at.title[0].value == "Dimension" and shown_dim(at) == int(expected["dim"].iloc[0])


def test_mask_builder_summarises_the_massive_dims(app, alpha):
    at = run_page(app.run(), "mask_builder")
    flagged = massive_dims(alpha).dims
    result = build_mask(alpha, MaskConfig())
    line = next(m.value for m in at.markdown if m.value.startswith("**Massive-activation dims**"))
    kept = sum(bool(result.keep[d]) for d in flagged)
    assert ", ".join(map(str, flagged)) in line and f"keeps {kept} of {len(flagged)}" in line
    table = next(d.value for d in at.dataframe if ui.RATIO_ACROSS_TASKS in d.value.columns)
    assert table["dim"].tolist() == flagged
    at.session_state["mb_massive"] = {"selection": {"rows": [0], "columns": [], "cells": []}}
    at.run()
    assert at.title[0].value == "Dimension" and shown_dim(at) == flagged[0]


def test_the_committed_cache_shows_real_contexts(app, monkeypatch):
    """The page on the committed SmolLM2 cache (what the README's screenshot shows)."""
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(REPO / "cache"))
    at = run_page(app.run(), "dimension")
    assert shown_dim(at) == 507 and not at.error
    cache = load_cache(REPO / "cache" / "smollm2-135m")
    if all(s.contexts is None for s in cache.tasks.values()):
        pytest.fail("the committed cache has no contexts: re-profile it (docs/architecture.md: Score cache)")
    tables = [m.value for m in at.markdown if "<table" in m.value]
    assert len(tables) == len(cache.tasks) and all(t.count("<mark") == 8 for t in tables)
