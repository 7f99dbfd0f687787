"""AppTest of every page: the numbers shown are the library's numbers, and they follow the widgets."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from app_helpers import (
    ALPHA_PARAMS,
    ALPHA_PER_DIM,
    APP,
    TIMEOUT,
    arr,
    chart_by_key,
    chart_specs,
    charts_drawn_twice,
    heat_table,
    metrics,
    open_expander,
    open_tab,
    run_page,
    shell_argv,
)
from scipy.stats import spearmanr

from diet_explore.masking.agreement import prune_matrix, vote_counts
from diet_explore.masking.build import MaskConfig, build_mask, mask_overlap
from diet_explore.masking.importance import aggregate_scores
from diet_explore.masking.selection import jaccard, keep_count, rank_dims
from diet_explore.masking.stability import bootstrap_masks

# AppTest does not expose dataframe keys; tables are found by their position on the page.
_FRAMES = {"overview_tasks": 0, "overview_provenance": 1, "rank_top_table": 0, "rank_bottom_table": 1}
_TABLES = {"mb_overlaps": 0}  # static tables (st.table), also found by position


def frame(at, key: str):
    return at.table[_TABLES[key]].value if key in _TABLES else at.dataframe[_FRAMES[key]].value


# --------------------------------------------------------------------------------------------
# Overview, cache picking and errors
# --------------------------------------------------------------------------------------------
def test_the_first_run_imports_the_model_libraries_in_the_background(app, monkeypatch):
    """The Mask builder's save check imports torch, transformers and the model's config class (seconds
    on a small machine): the app's first run starts those imports in a thread once the page is sent."""
    import threading

    from diet_explore_app import loaders

    seen, done = [], threading.Event()
    monkeypatch.setattr(loaders, "_import_model_libraries", lambda model_type: (seen.append(model_type), done.set()))
    at = app.run()
    assert not at.exception and done.wait(30)
    run_page(at, "agreement")
    assert seen == ["synthetic"]  # the cache's model type, once per server process


def test_a_model_page_waits_for_the_background_imports(app, monkeypatch):
    """Two threads importing transformers at once can break each other's import: the Mask builder
    (it reads the model's config) starts only once the background imports are done."""
    import threading

    from diet_explore_app import loaders

    order, release = [], threading.Event()

    def slow_imports(model_type):
        release.wait(30)
        order.append("imports")

    def saveable(name):
        order.append("page")
        return None

    monkeypatch.setattr(loaders, "_import_model_libraries", slow_imports)
    monkeypatch.setattr(loaders, "saveable_multiple", saveable)
    at = app.run()  # starts the imports, which wait for the release
    threading.Timer(1.0, release.set).start()
    run_page(at, "mask_builder")
    assert order[:2] == ["imports", "page"]


def test_only_the_model_pages_import_torch_or_transformers(app_env):
    """``settings.MODEL_PAGES`` wait for the background imports before they run; every other page must
    not import torch or transformers itself, beside that thread. Checked in a fresh interpreter (the
    app's environment), with the background imports switched off."""
    import subprocess
    import sys

    from diet_explore_app.settings import MODEL_PAGES

    free = sorted(p.stem for p in (APP.parent / "views").glob("*.py") if p.stem not in MODEL_PAGES)
    assert {"overview", "rankings", "agreement", "dimension", "history"} <= set(free)
    code = f"""
import sys
from diet_explore_app import loaders
loaders._import_model_libraries = lambda model_type: None
from streamlit.testing.v1 import AppTest
at = AppTest.from_file({str(APP)!r}, default_timeout={TIMEOUT})
at.run()
for page in {free!r}:
    at.switch_page(f"views/{{page}}.py").run()
    assert not at.exception, (page, [e.value for e in at.exception])
    found = [m for m in ("torch", "transformers") if m in sys.modules]
    assert not found, f"page {{page}} imported {{found}}: add it to settings.MODEL_PAGES"
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]


def test_overview_and_dimension_say_which_dims_fire_on_the_first_token(app, monkeypatch):
    from diet_explore.masking.dims import first_token_dims
    from diet_explore.profiling.cache import load_cache

    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(APP.parents[1] / "cache"))
    monkeypatch.setenv("DIET_EXPLORE_DEFAULT_CACHE", "smollm2-135m")
    cache = load_cache(APP.parents[1] / "cache" / "smollm2-135m")
    at = app.run()
    line = next(m.value for m in at.markdown if m.value.startswith("**First-token dims**"))
    counts = {s: int(first_token_dims(cache, s).sum()) for s in cache.sites}
    assert all(f"`{s}` {n} of 576" in line for s, n in counts.items())
    at.session_state["inspect_dim"] = 507
    run_page(at, "dimension")
    assert any("top contexts are the first token of their sequence" in c.value for c in at.caption)


def test_overview_says_when_a_cache_leaves_the_first_token_out(app, app_env, monkeypatch, tmp_path):
    import json
    import shutil

    shutil.copytree(app_env["cache"] / "alpha", tmp_path / "caches" / "alpha")  # the shared cache stays as it is
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(tmp_path / "caches"))
    manifest = tmp_path / "caches" / "alpha" / "manifest.json"
    m = json.loads(manifest.read_text())
    m["config"] = {**(m.get("config") or {}), "skip_first_token": True}
    manifest.write_text(json.dumps(m))
    at = app.run()
    assert any(v.value.startswith("**First token left out**") for v in at.markdown)
    assert not any(v.value.startswith("**First-token dims**") for v in at.markdown)


def test_overview_opens_on_first_cache_without_errors(app, alpha):
    at = app.run()
    assert not at.exception and not at.error
    assert at.selectbox(key="cache_choice").value.endswith("alpha")
    m = metrics(at)
    assert m["Model"] == "alpha-576"
    assert m["Hidden size"] == "576" and m["Layers"] == "30" and m["Tasks"] == "7"
    assert m["Parameters"] == f"{ALPHA_PARAMS / 1e6:,.1f} M"
    tasks = frame(at, "overview_tasks")
    assert list(tasks["task"]) == list(alpha.tasks)
    assert tasks.set_index("task").loc["wikitext", "kind"] == "generic"
    assert tasks["samples"].tolist() == [40] * 8
    prov = dict(frame(at, "overview_provenance").values)
    assert prov["device"] == "cpu" and prov["dtype"] == "float32" and prov["profile wall time (s)"] == "12.0"


def test_bad_cache_shows_error_and_app_keeps_running(app):
    at = app.run()
    at.selectbox(key="cache_choice").select(
        next(o for o in at.selectbox(key="cache_choice").options if o.endswith("zz-broken"))
    ).run()
    assert not at.exception
    assert at.error and "not valid JSON" in at.error[0].value
    assert "Hint:" in at.error[0].value
    run_page(at, "mask_builder")  # no cache: the page stops quietly, the error box stays
    assert at.error
    at.selectbox(key="cache_choice").select(
        next(o for o in at.selectbox(key="cache_choice").options if o.endswith("alpha"))
    ).run()
    assert not at.error and metrics(at)["Kept dims"].endswith("/ 576")


def test_typed_cache_path(app, app_cache_root, tmp_path):
    at = app.run()
    at.selectbox(key="cache_choice").select("Other folder…").run()
    n = len(at.selectbox(key="cache_choice").options) - 1
    assert at.info and f"pick one of the {n} found under" in at.info[0].value  # not "none found": the list has them
    at.text_input(key="cache_path").input(str(tmp_path / "nowhere")).run()
    assert at.error and "does not exist" in at.error[0].value and not at.exception
    at.text_input(key="cache_path").input(str(app_cache_root / "beta")).run()
    assert not at.error and metrics(at)["Hidden size"] == "64"


def test_no_caches_found_shows_a_hint(app, monkeypatch, tmp_path):
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(tmp_path / "empty"))
    at = app.run()
    assert not at.exception and not at.error
    assert at.info and "diet-explore profile" in at.info[0].value and "none was found under" in at.info[0].value


# --------------------------------------------------------------------------------------------
# Rankings
# --------------------------------------------------------------------------------------------
def test_rankings_tables_and_charts_match_library(app, alpha):
    at = run_page(app.run(), "rankings")
    scores = aggregate_scores(alpha, "boolq")
    order = rank_dims(scores)
    top = frame(at, "rank_top_table")
    assert top["dim"].tolist() == order[:10].tolist()
    assert np.allclose(top["score"], np.round(scores[order[:10]], 5))
    bottom = frame(at, "rank_bottom_table")
    assert bottom["dim"].tolist() == order[-10:].tolist() and bottom["rank"].iloc[-1] == 576
    # the first view is a coloured table, so a pasted link opens without plotly's script
    assert not at.get("plotly_chart")
    corr, _, title = heat_table(at, "Spearman correlation of task scores")
    assert corr.columns.tolist() == corr.index.tolist() == list(alpha.tasks)  # evaluation tasks and generic text
    by_hand = spearmanr(np.stack([aggregate_scores(alpha, t) for t in alpha.tasks]), axis=1).statistic
    assert np.allclose(corr.to_numpy(), by_hand)
    # lazy tabs, two sets: only the open tab's figure is built
    curves = chart_by_key(open_tab(at, "rank_view", "Sorted scores"), "rank_curves")
    assert [c.key for c in at.get("plotly_chart")] == ["rank_curves"] and not at.table
    dists = chart_by_key(open_tab(at, "rank_view", "Score distributions"), "rank_distributions")
    assert [c.key for c in at.get("plotly_chart")] == ["rank_distributions"] and not charts_drawn_twice(at)
    assert len(dists["data"]) == len(alpha.tasks)
    open_tab(at, "rank_view", "Sorted scores")
    assert [tr["name"] for tr in curves["data"]] == list(alpha.tasks)
    assert arr(curves["data"][0]["y"])[0] == pytest.approx(scores.max())
    heat = chart_by_key(open_tab(at, "rank_dim_view", "Score by layer"), "rank_layer_heatmap")
    assert [c.key for c in at.get("plotly_chart")] == ["rank_curves", "rank_layer_heatmap"]
    assert not charts_drawn_twice(at), charts_drawn_twice(at)
    assert not [d for d in at.dataframe if d.key in ("rank_top_table", "rank_bottom_table")]  # the tables' tab is shut
    assert heat["data"][0]["x"] == [str(d) for d in order[:10]]

    open_tab(at, "rank_dim_view", "Top and bottom dims")
    at.selectbox(key="rank_task").select("rte").run()
    assert frame(at, "rank_top_table")["dim"].tolist() == rank_dims(aggregate_scores(alpha, "rte"))[:10].tolist()
    at.number_input(key="rank_top_n").set_value(3).run()
    assert len(frame(at, "rank_top_table")) == 3
    open_tab(at, "rank_dim_view", "Score by layer")
    assert chart_by_key(at, "rank_layer_heatmap")["data"][0]["x"] == [
        str(d) for d in rank_dims(aggregate_scores(alpha, "rte"))[:3]
    ]
    at.text_input(key="rank_dims").input("5, 17,5").run()
    heat = chart_by_key(at, "rank_layer_heatmap")
    assert heat["data"][0]["x"] == ["5", "17"]
    raw = alpha.layer_scores("rte")[:, [5, 17]]
    # each dim on its own scale by default (a massive dim left every other column one dark colour)
    assert np.allclose(arr(heat["data"][0]["z"]), raw / raw.max(0)) and np.allclose(arr(heat["data"][0]["customdata"]), raw)
    at.toggle(key="rank_heat_per_dim").set_value(False).run()
    assert np.allclose(arr(chart_by_key(at, "rank_layer_heatmap")["data"][0]["z"]), raw)


@pytest.mark.slow
def test_rankings_bad_dims_and_layer_agg(app, alpha):
    at = open_tab(run_page(app.run(), "rankings"), "rank_dim_view", "Score by layer")
    at.text_input(key="rank_dims").input("3, 9999").run()
    assert at.error and "9999" in at.error[0].value and not at.exception
    at.text_input(key="rank_dims").input("").run()
    open_tab(at, "rank_dim_view", "Top and bottom dims")
    at.selectbox(key="layer_agg").select("max").run()
    expected = rank_dims(aggregate_scores(alpha, "boolq", layer_agg="max"))[:10]
    assert frame(at, "rank_top_table")["dim"].tolist() == expected.tolist()


def test_rankings_dims_in_other_scripts_digits_are_one_error(app):
    at = open_tab(run_page(app.run(), "rankings"), "rank_dim_view", "Score by layer")
    for bad in ("3, \u00b2", "\u0665"):  # "²" passed isdigit() and then made int() raise; "٥" was read as 5
        at.text_input(key="rank_dims").input(bad).run()
        assert at.error and "is not an index" in at.error[0].value and not at.exception


# --------------------------------------------------------------------------------------------
# Agreement
# --------------------------------------------------------------------------------------------
def test_agreement_follows_the_sparsity_slider(app, alpha):
    at = run_page(app.run(), "agreement")
    tasks = alpha.task_names
    for s in (0.2, 0.45):
        if s != 0.2:
            at.slider(key="sparsity").set_value(s).run()
        prune = prune_matrix(alpha, s)
        jac = jaccard(prune[:, None], prune[None])
        heat, _, title = heat_table(at, "Jaccard overlap of pruned sets")
        assert heat.columns.tolist() == heat.index.tolist() == tasks and f"at sparsity {s:.2f}" in title
        assert np.allclose(heat.to_numpy(), jac)
        m = metrics(at)
        assert m["Pruned per task"] == str(576 - keep_count(576, s))
        assert m["Mean pairwise Jaccard"] == f"{jac[~np.eye(7, dtype=bool)].mean():.3f}"
        votes = vote_counts(prune)
        assert m["Pruned by every task"] == str(int((votes == 7).sum()))
        assert not at.get("plotly_chart")  # lazy tabs: only the open one is drawn, and the first is a table
        hist = chart_by_key(open_tab(at, "agree_view", "Votes per dim"), "agree_vote_hist")
        assert not charts_drawn_twice(at), charts_drawn_twice(at)
        kept_bars, pruned_bars = (arr(tr["y"]) for tr in hist["data"])  # each bar split by the mask's decision
        assert (kept_bars + pruned_bars).tolist() == np.bincount(votes, minlength=8).tolist()
        upset = chart_by_key(open_tab(at, "agree_view", "Task intersections"), "agree_upset")
        assert arr(upset["data"][0]["y"]).sum() <= int((votes > 0).sum()) and not charts_drawn_twice(at)
        matrix = chart_by_key(open_tab(at, "agree_view", "Vote matrix"), "agree_vote_matrix")
        assert not charts_drawn_twice(at), charts_drawn_twice(at)
        assert arr(matrix["data"][0]["z"]).sum() == int(prune.sum())
        assert [c.key for c in at.get("plotly_chart")] == ["agree_vote_matrix"] and not at.table
        open_tab(at, "agree_view", "Task overlap")
    assert at.query_params.get("sparsity") in (["0.45"], "0.45")


def test_agreement_at_sparsity_0_says_nothing_is_pruned_instead_of_a_perfect_overlap(app, alpha):
    """Two empty pruned sets have Jaccard 1: the page showed 'Mean pairwise Jaccard 1.000', a heatmap of
    1.00 and a 'disagreement' table of dims every task keeps."""
    at = run_page(app.run(), "agreement")
    at.slider(key="sparsity").set_value(0.0).run()
    m = metrics(at)
    assert m["Pruned per task"] == "0" and m["Mean pairwise Jaccard"] == "n/a"
    assert not at.table and not at.dataframe
    assert sum("No dim is pruned at this sparsity" in c.value for c in at.caption) == 2  # the overlap tab, the table
    at.slider(key="sparsity").set_value(0.01).run()  # one dim pruned: the overlap and the table are back
    assert len(at.table) == 1 and at.dataframe


def test_the_open_agreement_tab_is_remembered_and_in_the_link(app_env, alpha):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update({"view": "intersections", "sparsity": "0.3"})
    run_page(at.run(), "agreement")
    assert [c.key for c in at.get("plotly_chart")] == ["agree_upset"]  # the link's tab, open and drawn
    assert at.query_params["view"] in ("intersections", ["intersections"])
    open_tab(at, "agree_view", "Votes per dim")
    assert at.query_params["view"] in ("votes", ["votes"])
    run_page(at, "rankings")
    assert "view" not in at.query_params  # Agreement's own parameter
    run_page(at, "agreement")
    assert [c.key for c in at.get("plotly_chart")] == ["agree_vote_hist"]  # the tab last open
    open_tab(at, "agree_view", "Task overlap")
    assert "view" not in at.query_params  # the default tab: no parameter


def test_an_unknown_view_in_the_link_is_a_warning(app_env, alpha):
    from streamlit.testing.v1 import AppTest

    at = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    at.query_params.update({"view": "pie"})
    at.run()
    assert any(
        "ignored link setting view='pie'" in w.value and "Agreement page's open tab" in w.value and "intersections" in w.value
        for w in at.warning
    )
    run_page(at, "agreement")
    assert heat_table(at, "Jaccard overlap")[0].shape == (7, 7)  # the default tab


def test_agreement_weight_zero_removes_task(app, alpha):
    at = run_page(app.run(), "mask_builder")
    at.slider(key="w_rte").set_value(0.0).run()
    run_page(at, "agreement")
    tasks = [t for t in alpha.task_names if t != "rte"]
    heat = heat_table(at, "Jaccard overlap")[0]
    assert heat.columns.tolist() == tasks
    assert np.allclose(heat.to_numpy(), jaccard(prune_matrix(alpha, 0.2, tasks)[:, None], prune_matrix(alpha, 0.2, tasks)[None]))


# --------------------------------------------------------------------------------------------
# Mask builder
# --------------------------------------------------------------------------------------------
def _kept(at) -> int:
    return int(metrics(at)["Kept dims"].split("/")[0])


def test_mask_builder_numbers_follow_sliders(app, alpha):
    at = run_page(app.run(), "mask_builder")
    res = build_mask(alpha, MaskConfig())
    m = metrics(at)
    assert _kept(at) == res.n_keep and m["Resulting sparsity"] == f"{res.sparsity:.4f}"
    assert m["Params after pruning"] == f"{(ALPHA_PARAMS - ALPHA_PER_DIM * (576 - res.n_keep)) / 1e6:,.2f} M"
    assert m["Voting tasks"] == "7"

    at.slider(key="sparsity").set_value(0.4).run()
    at.slider(key="threshold").set_value(0.7).run()
    res = build_mask(alpha, MaskConfig(sparsity=0.4, threshold=0.7))
    assert _kept(at) == res.n_keep and metrics(at)["Resulting sparsity"] == f"{res.sparsity:.4f}"

    at.slider(key="w_boolq").set_value(0.0).run()
    at.slider(key="w_rte").set_value(2.0).run()
    others = [t for t in alpha.task_names if t != "boolq"]
    res = build_mask(
        alpha, MaskConfig(sparsity=0.4, threshold=0.7, tasks=others, weights={t: (2.0 if t == "rte" else 1.0) for t in others})
    )
    assert metrics(at)["Voting tasks"] == "6" and _kept(at) == res.n_keep

    at.toggle(key="exact").set_value(True).run()
    assert _kept(at) == keep_count(576, 0.4)
    at.toggle(key="exact").set_value(False).run()
    at.number_input(key="multiple").set_value(8).run()
    assert _kept(at) % 8 == 0
    assert at.query_params["multiple_of"] in ("8", ["8"])


def test_mask_builder_paper_default_and_baselines(app, alpha):
    at = run_page(app.run(), "mask_builder")
    table = frame(at, "mb_overlaps").set_index("compared with")
    assert table.iloc[0]["n_diff"] == 0 and table.iloc[0]["jaccard_kept"] == 1.0
    res = build_mask(alpha, MaskConfig())
    same = 1 - res.n_keep / 576
    for method in ("random", "magnitude", "wiki"):
        other = build_mask(alpha, MaskConfig(method=method, sparsity=same))
        assert other.n_keep == res.n_keep
        assert table.loc[method, "n_diff"] == mask_overlap(res.keep, other.keep)["n_diff"]
    at.slider(key="threshold").set_value(0.3).run()
    res2 = build_mask(alpha, MaskConfig(threshold=0.3))
    table = frame(at, "mb_overlaps")
    assert table.iloc[0]["n_diff"] == mask_overlap(res2.keep, res.keep)["n_diff"] > 0


def test_mask_builder_gives_the_proxy_verdicts_in_one_line_and_the_correlations_folded(app, alpha):
    """The validation text (a Spearman ρ per sweep, about 15 lines) filled the page under the live proxy."""
    from diet_explore_app import loaders

    at = run_page(app.run(), "mask_builder")
    checks = loaders.proxy_checks(alpha.model_name)
    line = next(c.value for c in at.caption if c.value.startswith("Validation against the measured paired Δ"))
    assert "ρ" not in line and all(f"**{p}**" in line for p in checks)
    folded = next(e for e in at.expander if e.label.startswith("How the proxies were validated"))
    assert [c.value for c in folded.caption] == [f"**{p}** {text}" for p, (_, text) in checks.items()]


@pytest.mark.parametrize(
    "verdicts, said",
    [
        ((True, True), "**kept_mass** and **kept_energy** predict it."),  # read "a predicts…; b predicts…"
        ((True, False), "**kept_mass** predicts it; **kept_energy** does not predict it."),
        ((None, None), "**kept_mass** and **kept_energy** are not validated for this model."),
    ],
)
def test_the_proxy_verdict_line_names_proxies_with_one_verdict_together(app, monkeypatch, verdicts, said):
    from diet_explore_app import loaders

    checks = {p: (v, f"{p}: ρ per sweep") for p, v in zip(("kept_mass", "kept_energy"), verdicts, strict=True)}
    monkeypatch.setattr(loaders, "proxy_checks", lambda model: checks)
    at = run_page(app.run(), "mask_builder")
    line = next(c.value for c in at.caption if c.value.startswith("Validation against the measured paired Δ"))
    assert line == f"Validation against the measured paired Δ (`tools/proxy_validation.py`): {said}"


def test_mask_builder_bootstrap_matches_library(app, alpha):
    at = run_page(app.run(), "mask_builder")
    at.number_input(key="stab_n").set_value(30).run()
    stab = bootstrap_masks(alpha, MaskConfig(), n_resamples=30, seed=0)
    assert metrics(at)["Jaccard vs full mask"] == f"{stab.mean_jaccard:.4f}"
    assert not chart_specs(at)  # the histogram's expander is closed: no figure built or sent
    hist = chart_by_key(open_expander(at, "stab_hist"), "mb_stability")
    from diet_explore.plots import stability_bins

    assert np.array_equal(arr(hist["data"][0]["y"]), stability_bins(stab.keep_frequency)[2])  # the bars count the dims
    at.toggle(key="stab_on").set_value(False).run()
    assert "Jaccard vs full mask" not in metrics(at)


def test_every_weight_zero_is_an_error_box(app, alpha):
    at = run_page(app.run(), "mask_builder")
    for t in alpha.task_names:
        at.slider(key=f"w_{t}").set_value(0.0)
    at.run()
    assert not at.exception and at.error and "weight" in at.error[0].value
    at.slider(key="w_hellaswag").set_value(1.0).run()
    assert not at.error and metrics(at)["Voting tasks"] == "1"


def test_merge_rule_single_and_baselines(app, alpha):
    at = run_page(app.run(), "mask_builder")
    at.selectbox(key="method").select("single-task").run()
    at.selectbox(key="single_task").select("rte").run()
    assert _kept(at) == build_mask(alpha, MaskConfig(method="single", single_task="rte")).n_keep
    assert at.query_params["single_task"] in ("rte", ["rte"])
    at.selectbox(key="method").select("magnitude").run()
    assert not at.exception and not at.error
    assert _kept(at) == keep_count(576, 0.2)


# --------------------------------------------------------------------------------------------
# Settings across pages and in the URL
# --------------------------------------------------------------------------------------------
def test_settings_survive_page_switches(app):
    at = run_page(app.run(), "mask_builder")
    at.slider(key="sparsity").set_value(0.33).run()
    at.slider(key="w_piqa" if "w_piqa" in at.session_state else "w_arc_easy").set_value(0.5).run()
    at.toggle(key="exact").set_value(True).run()
    kept = _kept(at)
    for page in ("overview", "rankings", "agreement", "export", "export", "agreement", "agreement", "mask_builder"):
        run_page(at, page)  # same page twice too: a widget's stale value must never come back
        if page == "agreement":
            assert at.slider(key="sparsity").value == 0.33
        at.run()
    assert at.slider(key="sparsity").value == 0.33 and at.toggle(key="exact").value is True
    assert at.slider(key="w_arc_easy").value == 0.5 and _kept(at) == kept


def test_a_pasted_link_reproduces_the_view(app, app_env, alpha):
    from app_helpers import APP, TIMEOUT
    from streamlit.testing.v1 import AppTest

    at = run_page(app.run(), "mask_builder")
    at.slider(key="sparsity").set_value(0.37).run()
    at.slider(key="threshold").set_value(0.65).run()
    at.slider(key="w_rte").set_value(1.5).run()
    at.slider(key="w_boolq").set_value(0.0).run()
    at.selectbox(key="cache_choice").select(next(o for o in at.selectbox(key="cache_choice").options if o.endswith("beta"))).run()
    at.selectbox(key="cache_choice").select(
        next(o for o in at.selectbox(key="cache_choice").options if o.endswith("alpha"))
    ).run()
    link = dict(at.query_params)
    shown = metrics(at)
    fresh = AppTest.from_file(str(APP), default_timeout=TIMEOUT)
    fresh.query_params.update(link)
    fresh.run()
    run_page(fresh, "mask_builder")
    assert fresh.slider(key="sparsity").value == 0.37 and fresh.slider(key="w_boolq").value == 0.0
    assert fresh.slider(key="w_rte").value == 1.5
    assert metrics(fresh)["Kept dims"] == shown["Kept dims"]


def _query(at) -> dict[str, str]:
    return {k: v[-1] if isinstance(v, list) else v for k, v in dict(at.query_params).items()}


def test_back_and_forward_take_the_urls_settings(app, alpha, monkeypatch):
    """The browser's Back reruns the page with the earlier URL; the app wrote its own settings back
    over it, so the first Back did nothing (the URL stayed on the new sparsity)."""
    from diet_explore_app import state

    back = []  # AppTest cannot press Back: the runs after a "press" are marked as Streamlit marks them
    monkeypatch.setattr(state, "history_navigation", lambda: bool(back and back.pop()))
    at = run_page(app.run(), "mask_builder")
    at.slider(key="sparsity").set_value(0.3).run()
    before = _query(at)
    at.slider(key="sparsity").set_value(0.45).run()
    at.slider(key="w_rte").set_value(0.0).run()
    after = _query(at)
    at.query_params.clear()
    at.query_params.update(before)  # Back: the earlier URL, and a rerun with it
    back.append(True)
    at.run()
    assert at.slider(key="sparsity").value == 0.3 and at.slider(key="w_rte").value == 1.0
    assert metrics(at)["Kept dims"] == f"{build_mask(alpha, MaskConfig(sparsity=0.3)).n_keep} / 576"
    assert _query(at) == before
    at.query_params.clear()
    at.query_params.update(after)  # Forward
    back.append(True)
    at.run()
    assert at.slider(key="sparsity").value == 0.45 and at.slider(key="w_rte").value == 0.0
    at.slider(key="sparsity").set_value(0.5).run()  # and the sliders go on from there
    assert at.slider(key="sparsity").value == 0.5 and _query(at)["sparsity"] == "0.5"
    at.query_params.clear()
    at.query_params.update(before)  # a URL that differs from the last one written, but no Back (a rerun that
    at.run()  # left before the browser took the last URL): no setting changes
    assert at.slider(key="sparsity").value == 0.5 and at.slider(key="w_rte").value == 0.0
    at.query_params.clear()  # Back to the first entry, before any setting was in the URL: the defaults
    back.append(True)
    at.run()
    assert at.slider(key="sparsity").value == 0.2 and at.slider(key="w_rte").value == 1.0


def test_link_to_another_cache_and_bad_values(app, app_cache_root):
    app.query_params.update({"cache": str(app_cache_root / "beta"), "sparsity": "7", "weights": "piqa:0,mmlu:2"})
    at = app.run()
    assert not at.exception
    assert metrics(at)["Hidden size"] == "64"
    warnings = " ".join(w.value for w in at.warning)
    assert "sparsity='7'" in warnings and "mmlu" in warnings
    run_page(at, "mask_builder")
    assert at.slider(key="w_piqa").value == 0.0 and at.slider(key="sparsity").value == 0.2


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def test_export_writes_a_valid_mask_file(app, app_env, alpha):
    from diet_explore.masking.maskfile import load_mask

    at = run_page(app.run(), "mask_builder")
    at.slider(key="sparsity").set_value(0.3).run()
    at.slider(key="w_rte").set_value(0.0).run()
    run_page(at, "export")
    at.text_input(key="export_name").input("my-mask").run()
    at.button(key="export_save").click().run()
    assert not at.exception and at.success
    path = app_env["export"] / "my-mask.json"
    mask = load_mask(path, expected_hidden_size=576, expected_model="alpha-576")
    cfg = MaskConfig(sparsity=0.3, tasks=[t for t in alpha.task_names if t != "rte"])
    res = build_mask(alpha, cfg)
    assert np.array_equal(mask.keep, res.keep) and mask.config == cfg.to_dict()
    assert np.array_equal(np.load(path.with_suffix(".npy")), res.keep)
    labels = [b.proto.label for b in at.get("download_button")]
    assert labels == ["Download mask JSON", "Download mask .npy (bool keep vector)"]


def test_export_command_reproduces_the_mask(app, app_env, alpha, tmp_path):
    from diet_explore.cli import main
    from diet_explore.masking.maskfile import load_mask

    at = run_page(app.run(), "mask_builder")
    at.slider(key="sparsity").set_value(0.25).run()
    at.slider(key="w_hellaswag").set_value(1.7).run()
    at.number_input(key="multiple").set_value(8).run()
    run_page(at, "export")
    cmd = at.code[0].value
    argv = shell_argv(cmd)  # as pasted into a shell, one flag per line
    assert len(cmd.splitlines()) == 6 and all(line.lstrip().startswith("--") for line in cmd.splitlines()[1:])
    argv[argv.index("--out") + 1] = str(tmp_path / "cli.json")
    argv[argv.index("--cache") + 1] = str(app_env["cache"] / "alpha")
    assert main(argv[1:]) == 0
    cfg = MaskConfig(sparsity=0.25, weights={t: (1.7 if t == "hellaswag" else 1.0) for t in alpha.task_names}, multiple_of=8)
    assert np.array_equal(load_mask(tmp_path / "cli.json").keep, build_mask(alpha, cfg).keep)
    # the step between them, which the page did not show: the mask into a model folder, which lm_eval then reads
    prune = shell_argv(at.code[1].value)
    name = at.text_input(key="export_name").value
    assert prune[:2] == ["diet-explore", "prune"] and prune[prune.index("--mask") + 1] == f"{name}.json"
    # the honest hand-off: task files over the held-out documents (this cache's calibration left out), then the
    # dense and the pruned model on them; lm-eval's stock tasks (whole splits, calibration inside) are never shown
    write = shell_argv(at.code[2].value)
    mask_cache = shell_argv(at.code[0].value)[argv.index("--cache") + 1]
    assert write[:2] == ["diet-explore", "lmeval-tasks"] and write[write.index("--cache") + 1] == mask_cache
    tasks_dir = write[write.index("--out") + 1]
    dense, pruned = (shell_argv(c.value) for c in at.code[3:5])
    assert dense[dense.index("--model_args") + 1].startswith("pretrained=alpha-576,")
    assert pruned[pruned.index("--model_args") + 1].startswith(f"pretrained={prune[prune.index('--out') + 1]},")
    lm_evals = [shell_argv(c.value) for c in at.code if c.value.startswith("lm_eval")]
    assert len(lm_evals) == 6  # dense and pruned: one device, one model over every GPU, vLLM
    for argv in lm_evals:
        assert argv[argv.index("--include_path") + 1] == tasks_dir
        assert argv[argv.index("--tasks") + 1] == ",".join(f"diet_{t}" for t in write[write.index("--tasks") + 1].split(","))


@pytest.mark.parametrize("bad", ["../escape", "sub/dir", "a\\b"])
def test_export_refuses_names_with_separators(app, app_env, bad):
    at = run_page(app.run(), "export")
    at.text_input(key="export_name").input(bad).run()
    assert not at.exception and at.error and "separator" in at.error[0].value
    assert not at.get("download_button")
    assert not app_env["export"].exists()


def test_prune_eval_page_names_a_model_that_is_nowhere(app):
    at = run_page(app.run(), "prune_eval")  # the synthetic cache's model: not built in, no folder, no hub (offline)
    assert at.error and "'alpha-576' is not a built-in model, not a folder here" in at.error[0].value
    assert "models --install" not in at.error[0].value  # an install command that would fail is no fix
    assert at.metric == [] or "Mean Δ main metric" not in metrics(at)


# --------------------------------------------------------------------------------------------
# Switching caches and stale settings
# --------------------------------------------------------------------------------------------
def _switch(at, name: str):
    at.selectbox(key="cache_choice").select(next(o for o in at.selectbox(key="cache_choice").options if o.endswith(name)))
    return at.run()


@pytest.mark.parametrize("page", ["mask_builder", "agreement", "rankings"])
def test_last_k_beyond_the_caches_layers_is_clamped_with_a_notice(app, page):
    app.query_params.update({"layer_agg": "last_k", "last_k": "50"})
    at = run_page(app.run(), page)
    assert not at.exception, at.exception
    assert at.number_input(key="last_k").value == 30
    at = run_page(at, "mask_builder")
    _switch(at, "beta")  # 4 layers: the 30 chosen on alpha cannot stand
    assert not at.exception and at.number_input(key="last_k").value == 4
    assert any("this cache has 4" in w.value for w in at.warning)


def test_prune_eval_follows_the_cache_tasks_and_model(app):
    at = run_page(app.run(), "prune_eval")
    assert at.text_input(key="pe_model").value == "alpha-576"
    _switch(at, "beta")
    assert not at.exception, at.exception
    assert at.multiselect(key="pe_tasks").value == ["boolq", "rte", "piqa"]  # alpha's hellaswag etc. are gone
    assert at.text_input(key="pe_model").value == "synthetic-64x4"  # not alpha's model
    at.text_input(key="pe_model").input("my-model").run()
    _switch(at, "alpha")
    assert at.text_input(key="pe_model").value == "my-model"  # a typed model stays


def test_export_name_follows_the_mask_until_the_user_types_one(app):
    at = run_page(app.run(), "export")
    first = at.text_input(key="export_name").value
    assert first.startswith("alpha-576-")
    run_page(at, "mask_builder")
    at.slider(key="sparsity").set_value(0.5).run()
    run_page(at, "export")
    assert at.text_input(key="export_name").value != first and "0.5" in at.text_input(key="export_name").value
    at.text_input(key="export_name").input("mine").run()
    _switch(at, "beta")
    assert at.text_input(key="export_name").value == "mine"


def test_saving_into_an_export_folder_that_is_a_file_is_an_error_box(app, app_env, monkeypatch, tmp_path):
    (tmp_path / "afile").write_text("")
    monkeypatch.setenv("DIET_EXPLORE_EXPORT_DIR", str(tmp_path / "afile"))
    at = run_page(app.run(), "export")
    at.button(key="export_save").click().run()
    assert not at.exception, at.exception
    assert at.error and "is not a folder" in at.error[0].value


def test_bottom_table_ranks_when_more_rows_than_dims(app):
    at = _switch(run_page(app.run(), "rankings"), "beta")
    at.number_input(key="rank_top_n").set_value(100).run()
    ranks = frame(at, "rank_bottom_table")["rank"]
    assert not at.exception and ranks.min() == 1 and ranks.max() == 64


def test_mask_builder_on_a_cache_without_the_residual_site(app, monkeypatch, tmp_path):
    import json
    from dataclasses import replace

    from diet_explore.profiling.cache import save_cache
    from diet_explore.profiling.synthetic import synthetic_cache

    both = synthetic_cache(hidden_size=64, num_layers=3, tasks=("boolq", "rte"), n_samples=6, seed=2)
    tasks = {
        t: replace(s, layer={"normed": s.layer["normed"]}, sample={"normed": s.sample["normed"]}) for t, s in both.tasks.items()
    }
    manifest = json.loads(json.dumps(both.manifest)) | {"sites": ["normed"]}  # `profile --sites normed`
    save_cache(replace(both, tasks=tasks, manifest=manifest), tmp_path / "caches" / "normed-only")
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(tmp_path / "caches"))
    at = run_page(app.run(), "mask_builder")
    assert not at.exception, at.exception
    assert any("Difference from the paper default" in str(m.value) for m in at.markdown)


def test_a_manifest_with_fields_of_the_wrong_type_is_an_error_box(app, monkeypatch, tmp_path, app_cache_root):
    import json
    import shutil

    shutil.copytree(app_cache_root / "beta", tmp_path / "caches" / "beta")
    path = tmp_path / "caches" / "beta" / "manifest.json"
    manifest = json.loads(path.read_text())
    del manifest["tasks"]["rte"]["sha256"]
    path.write_text(json.dumps(manifest))
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(tmp_path / "caches"))
    at = app.run()
    assert not at.exception, at.exception
    assert at.error and "task 'rte' lacks sha256" in at.error[0].value


def test_a_link_to_a_cache_opens_from_another_working_folder(app, app_env, monkeypatch, tmp_path):
    repo = Path(__file__).resolve().parents[1]
    monkeypatch.setenv("DIET_EXPLORE_APP_DIR", str(repo))  # what `diet-explore app` sets: the folder it was started in
    monkeypatch.chdir(tmp_path)
    app.query_params.update({"cache": "cache/smollm2-135m"})  # links hold paths relative to the app folder
    at = app.run()
    assert (repo / "cache" / "smollm2-135m").is_dir()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert metrics(at)["Hidden size"] == "576"
