"""AppTest of what the hardening run (#17) found in the app: caches every page failed on, readability,
helpful defaults, and exports that replaced folders without asking."""

from __future__ import annotations

import contextlib
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from app_helpers import APP, TIMEOUT, arr, chart_by_key, heat_table, metrics, open_tab, run_page, shell_argv
from job_helpers import stop_workers, wait_job

from diet_explore.experiments.jobs import JobStore
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.importance import ScorePrecompute
from diet_explore.masking.selection import keep_count, top_k_mask
from diet_explore.masking.vote import vote_share
from diet_explore.profiling.cache import MANIFEST, save_cache
from diet_explore.profiling.synthetic import synthetic_cache
from diet_explore_app import tables

PAGES = ["overview", "rankings", "agreement", "mask_builder", "prune_eval", "export"]

TOP_BLUE, BOTTOM_BLUE = "rgb(8, 48, 107)", "rgb(247, 251, 255)"  # the ends of plotly's Blues scale


def _app(monkeypatch, root: Path, tmp_path: Path):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(root))
    monkeypatch.setenv("DIET_EXPLORE_EXPORT_DIR", str(tmp_path / "export"))
    monkeypatch.setenv("DIET_EXPLORE_RUNS_DIR", str(tmp_path / "runs"))
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


# -------------------------------------------------------------------------------- item 5: caches every page failed on
def _generic_only(root: Path) -> Path:
    cache = synthetic_cache(hidden_size=32, num_layers=2, tasks=("wikitext",), n_samples=4, seed=1)
    cache = replace(cache, tasks={"wikitext": replace(cache.tasks["wikitext"], kind="generic")})
    cache.manifest["tasks"]["wikitext"]["kind"] = "generic"
    return save_cache(cache, root / "generic-only")


def _no_sites(root: Path) -> Path:
    folder = save_cache(synthetic_cache(hidden_size=32, num_layers=2, tasks=("rte",), n_samples=4, seed=1), root / "no-sites")
    manifest = json.loads((folder / MANIFEST).read_text())
    manifest["sites"] = []
    (folder / MANIFEST).write_text(json.dumps(manifest))
    return folder


@pytest.mark.parametrize("make, message", [(_generic_only, "holds no evaluation task"), (_no_sites, "'sites' is empty")])
def test_a_cache_with_nothing_to_vote_on_is_an_error_on_every_page(monkeypatch, tmp_path, clear_st_caches, make, message):
    make(tmp_path / "caches")
    at = _app(monkeypatch, tmp_path / "caches", tmp_path).run()
    for page in PAGES:
        run_page(at, page)  # an IndexError on every page before
        assert at.error and message in at.error[0].value, page


def test_a_cache_link_of_5000_characters_is_an_error_not_an_exception(app):
    at = app
    at.query_params["cache"] = "c" * 5000
    at.run()
    assert not at.exception
    assert at.error and "a file or folder name is at most 255 bytes" in at.error[0].value
    assert "c" * 300 not in at.error[0].value  # the value is named, shortened


def test_export_of_a_cache_profiled_with_task_file_tasks(monkeypatch, tmp_path, clear_st_caches):
    save_cache(synthetic_cache(hidden_size=64, num_layers=2, tasks=("rte", "my_task"), n_samples=6, seed=2), tmp_path / "c" / "x")
    at = run_page(_app(monkeypatch, tmp_path / "c", tmp_path).run(), "export")  # the lm_eval command raised here
    assert not at.error or all("my_task" not in e.value for e in at.error)
    write = next(shell_argv(c.value) for c in at.code if c.value.startswith("diet-explore lmeval-tasks"))
    assert write[write.index("--tasks") + 1] == "rte"
    lm_eval = [shell_argv(c.value) for c in at.code if c.value.startswith("lm_eval")]
    assert lm_eval and all(argv[argv.index("--tasks") + 1] == "diet_rte" for argv in lm_eval)
    assert any("Not in this task registry: my_task" in c.value for c in at.caption)


# -------------------------------------------------------------------------------- item 8: readability
def test_results_table_has_plain_headers_blank_cells_and_the_main_metric_highlighted():
    rows = [
        {"task": "rte", "n": 50, "metric": "acc", "dense_main": 0.64, "pruned_main": 0.52, "delta_main": -0.12,
         "delta_main_ci_low": -0.45, "delta_main_ci_high": 0.25, "dense_acc": 0.64, "pruned_acc": 0.52,
         "dense_acc_norm": 0.6, "pruned_acc_norm": 0.5},
        {"task": "winogrande", "n": 50, "metric": "acc", "dense_main": 0.51, "pruned_main": 0.5, "delta_main": -0.01,
         "delta_main_ci_low": -0.1, "delta_main_ci_high": 0.08, "dense_acc": 0.51, "pruned_acc": 0.5,
         "dense_acc_norm": None, "pruned_acc_norm": float("nan")},
        {"task": "hellaswag", "n": 50, "metric": "acc_norm", "dense_main": 0.42, "pruned_main": 0.25, "delta_main": -0.17,
         "delta_main_ci_low": -0.3, "delta_main_ci_high": -0.04, "dense_acc": 0.4, "pruned_acc": 0.3,
         "dense_acc_norm": 0.42, "pruned_acc_norm": 0.25},
    ]  # fmt: skip
    avg = {"n": 150, "dense": 0.523, "pruned": 0.423, "delta": -0.1, "ci_low": -0.2, "ci_high": 0.0}
    table = tables.format_results_table(rows, avg)
    assert list(table.columns[:6]) == ["Task", "n", "Main metric", "Dense", "Pruned", "Δ, points [95% CI]"]
    rte = table.set_index("Task").loc["rte"]
    # the difference and its interval in one cell, as decision.format_estimate prints it on every page
    assert rte["Δ, points [95% CI]"] == "−12.0 [−45.0, +25.0]" and rte["Dense"] == "0.640"
    assert table.set_index("Task").loc["average", "Δ, points [95% CI]"] == "−10.0 [−20.0, 0.0]"
    no_ci = tables.format_results_table([{**rows[0], "delta_main_ci_low": None, "delta_main_ci_high": float("nan")}])
    assert no_ci.loc[0, "Δ, points [95% CI]"] == "−12.0 (no interval: too few examples)"
    wino = table.set_index("Task").loc["winogrande"]
    assert wino["acc_norm (dense → pruned)"] == ""  # undefined: a blank cell, not "None" or "nan"
    text = table.to_string()
    assert "None" not in text and "nan" not in text.lower()
    styles = tables.results_styler(table)._compute().ctx  # (row, col) -> css
    cols = list(table.columns)
    hot = {(r, c) for (r, c), css in styles.items() if css}
    hella = list(table["Task"]).index("hellaswag")
    assert (hella, cols.index("acc_norm (dense → pruned)")) in hot and (hella, cols.index("acc (dense → pruned)")) not in hot
    assert (0, cols.index("acc (dense → pruned)")) in hot and (0, cols.index("Δ, points [95% CI]")) in hot


def test_history_table_fits_with_short_headers():
    runs = pd.DataFrame(
        [{"run_id": "20261128T213845-9339a21d", "created": "2026-11-28T21:38:45+00:00", "model": "smollm2-135m",
          "method": "diet", "sparsity": 0.2483, "n_keep": 433, "limit": 2, "dense_avg": 0.2857, "pruned_avg": 0.2143,
          "delta_avg": -0.0714, "ci_low": -0.3845, "ci_high": 0.2416, "dense_ppl": None, "pruned_ppl": None}]
    )  # fmt: skip
    out = tables.format_history_table(runs)
    # no perplexity and no gold LL in any run: those columns are dropped, not shown blank
    assert list(out.columns) == [h for h in tables.HISTORY_COLUMNS.values() if h not in ("Δ gold LL", "PPL")]
    row = out.iloc[0]
    assert row["When (UTC)"] == "2026-11-28 21:38" and row["Kept"] == "433" and row["n/task"] == "2"
    # dense → pruned in points, as the Δ beside it (decision.format_estimate, as every page prints it)
    assert row["Main %"] == "28.6 → 21.4" and row["Δ pts [95% CI]"] == "−7.1 [−38.5, +24.2]"
    assert row["Run"] == "9339a21d"
    with_ppl = tables.format_history_table(runs.assign(dense_ppl=[20.0], pruned_ppl=[31.5]))
    assert with_ppl.iloc[0]["PPL"] == "20.00 → 31.50"


def test_tasks_keeping_a_dim_respect_the_task_weights(app, alpha):
    at = run_page(app.run(), "rankings")
    at.slider(key="w_rte").set_value(0.0)
    at.slider(key="w_boolq").set_value(2.0).run()
    top = at.dataframe[0].value
    scores = alpha.task_names
    in_top = top_k_mask(ScorePrecompute(alpha).matrix(scores, "residual", "mean", 4), keep_count(576, 0.2))
    w = np.array([2.0 if t == "boolq" else 0.0 if t == "rte" else 1.0 for t in scores])
    share = vote_share(in_top, w)
    assert np.allclose(top["task weight keeping it"], np.round(share[top["dim"].to_numpy()], 3))
    (kept,) = [c for c in top.columns if c.startswith("kept by the mask (diet ")]  # the mask's label names it
    assert list(top[kept]) == list(share[top["dim"].to_numpy()] >= 0.5 - 1e-12)
    bottom = at.dataframe[1].value  # a weight-0 task counts for nothing: its votes used to count as 1
    rte = in_top[scores.index("rte")]
    others = np.delete(in_top, scores.index("rte"), axis=0).any(0)
    lone = np.flatnonzero(rte & ~others)
    if lone.size:
        assert np.all(share[lone] == 0)
    assert set(bottom.columns) == set(top.columns)


def test_agreement_histogram_marks_tau_and_heatmaps_fit_their_colours(app, alpha):
    at = run_page(app.run(), "agreement")
    at.slider(key="threshold").set_value(0.75).run()
    hist = chart_by_key(open_tab(at, "agree_view", "Votes per dim"), "agree_vote_hist")
    # each bar split by the mask's decision: with equal weights, k ≤ 1.75 prune votes kept, k ≥ 2 pruned
    kept, pruned = (arr(tr["y"]) for tr in hist["data"])
    assert hist["layout"]["barmode"] == "stack" and "diet τ0.75" in hist["layout"]["title"]["text"]
    assert not kept[2:].any() and not pruned[:2].any() and kept[:2].all()
    open_tab(at, "agree_view", "Task overlap")
    jac, fills, title = heat_table(at, "Jaccard overlap")
    off = ~np.eye(7, dtype=bool)
    lo, hi = jac.to_numpy()[off].min(), jac.to_numpy()[off].max()
    assert set(fills[~off]) == {TOP_BLUE} and "colours:" not in title  # the diagonal's 1s: the top of [0, 1]
    assert TOP_BLUE not in set(fills[off]) and BOTTOM_BLUE not in set(fills[off])  # 0.4-0.8: neither end
    at.toggle(key="agree_fit_colours").set_value(True).run()
    jac, fills, title = heat_table(at, "Jaccard overlap")
    assert f"(colours: {lo:.2f} to {hi:.2f})" in title
    assert set(fills[jac.to_numpy() == lo]) == {BOTTOM_BLUE} and set(fills[jac.to_numpy() == hi]) == {TOP_BLUE}
    run_page(at, "rankings")
    open_tab(at, "rank_view", "Task correlation")
    corr, fills, title = heat_table(at, "Spearman correlation")
    assert "colours:" not in title and "rgb(5, 48, 97)" in set(fills.ravel())  # the diagonal's 1s: RdBu's top
    at.toggle(key="rank_fit_colours").set_value(True).run()
    corr, fitted, title = heat_table(at, "Spearman correlation")
    off = ~np.eye(len(corr), dtype=bool)
    assert f"(colours: {corr.to_numpy()[off].min():.2f} to {corr.to_numpy()[off].max():.2f})" in title
    assert (fitted != fills).any()  # the off-diagonal range, not [-1, 1]


def test_a_dimension_is_named_by_its_index_everywhere(app, alpha):
    at = run_page(app.run(), "rankings")
    top = at.dataframe[0].value["dim"].head(10)
    heat = chart_by_key(open_tab(at, "rank_dim_view", "Score by layer"), "rank_layer_heatmap")
    assert heat["data"][0]["x"] == [str(d) for d in top]  # as the table names them
    run_page(at, "agreement")
    matrix = chart_by_key(open_tab(at, "agree_view", "Vote matrix"), "agree_vote_matrix")
    assert "dim %{customdata}" in matrix["data"][0]["hovertemplate"]
    assert not any(str(v).startswith("d") for v in arr(matrix["data"][0]["y"]).ravel())


# -------------------------------------------------------------------------------- item 10: helpful defaults
def test_reset_to_paper_default_keeps_the_sparsity(app, alpha):
    at = run_page(app.run(), "mask_builder")
    at.slider(key="sparsity").set_value(0.3).run()
    at.slider(key="threshold").set_value(0.8).run()
    at.slider(key="w_rte").set_value(0.0).run()
    at.toggle(key="exact").set_value(True).run()  # before borda, which always keeps the exact count (greyed out)
    at.selectbox(key="method").select("borda").run()
    assert int(metrics(at)["Kept dims"].split("/")[0]) != build_mask(alpha, MaskConfig(sparsity=0.3)).n_keep
    at.button(key="reset_paper_default").click().run()
    assert int(metrics(at)["Kept dims"].split("/")[0]) == build_mask(alpha, MaskConfig(sparsity=0.3)).n_keep
    assert at.slider(key="threshold").value == 0.5 and at.slider(key="w_rte").value == 1.0
    assert at.selectbox(key="method").value == "diet" and at.toggle(key="exact").value is False
    assert at.slider(key="sparsity").value == 0.3
    assert dict(at.query_params) in ({"sparsity": "0.3"}, {"sparsity": ["0.3"]})  # the link is the paper's mask


def test_the_terms_have_tooltips_and_a_glossary(app):
    at = app.run()
    glossary = next(e for e in at.expander if e.label == "Glossary")
    text = " ".join(m.value for m in glossary.markdown)
    for term in ("τ", "Jaccard", "acc_norm", "UpSet", "Stable", "Site", "Layer aggregation"):
        assert term in text, term
    run_page(at, "mask_builder")
    assert "τ" in at.slider(key="threshold").help and "vote counts" in at.slider(key="w_boolq").help
    assert "residual" in at.selectbox(key="site").help and "mean over layers" in at.selectbox(key="layer_agg").help
    helps = {m.label: m.help for m in at.metric}
    assert "unstable" in helps["Unstable dims"] and "|A ∩ B|" in helps["Jaccard vs full mask"]
    run_page(at, "agreement")
    assert "|A ∩ B|" in {m.label: m.help for m in at.metric}["Mean pairwise Jaccard"]
    open_tab(at, "agree_view", "Task intersections")
    assert any("UpSet plot" in c.value for c in at.caption)


@pytest.fixture
def tiny_at(monkeypatch, tmp_path, tiny_cache_root, clear_st_caches):
    yield _app(monkeypatch, tiny_cache_root, tmp_path), tmp_path / "export"
    stop_workers(JobStore(tmp_path / "runs"))


def _saved(at, export: Path):
    """Wait for the prune_save job the click queued, then show the page again."""
    store = JobStore(export.parent / "runs")
    job = max(store.jobs(), key=lambda j: j["queue_seq"])
    assert job["type"] == "prune_save"
    wait_job(store, job["job_id"], ("done", "failed"))
    return at.run()


def test_saving_confirms_the_path_and_the_size(tiny_at):
    at, export = tiny_at
    at = run_page(at.run(), "export")
    name = at.text_input(key="export_name").value
    at.button(key="export_save").click().run()
    (ok,) = at.success
    size = (export / f"{name}.json").stat().st_size
    assert f"{name}.json ({size / 1024:,.1f} KiB)" in ok.value and f"{name}.npy (" in ok.value


def test_export_asks_before_replacing_and_never_replaces_a_foreign_folder(tiny_at, tiny_cache_root):
    at, export = tiny_at
    at = run_page(at.run(), "mask_builder")
    at.number_input(key="multiple").set_value(8).run()  # a count the tiny llama's 4 heads can save
    run_page(at, "export")
    at.text_input(key="export_name").input("tiny-pruned").run()
    _saved(at.button(key="export_save_model").click().run(), export)
    assert not at.error and (export / "tiny-pruned" / "config.json").is_file()
    before = (export / "tiny-pruned" / "config.json").stat().st_mtime_ns
    at.run()
    assert any("already holds a pruned model" in w.value for w in at.warning)
    assert at.button(key="export_save_model").disabled  # was: replaced at once (overwrite=True)
    at.checkbox(key="export_replace_model").check().run()
    assert not at.button(key="export_save_model").disabled
    _saved(at.button(key="export_save_model").click().run(), export)
    assert not at.error and (export / "tiny-pruned" / "config.json").stat().st_mtime_ns != before

    theirs = export / "notes"
    theirs.mkdir(parents=True)
    (theirs / "todo.txt").write_text("mine")
    at.text_input(key="export_name").input("notes").run()
    assert at.button(key="export_save_model").disabled and "not a pruned folder" in at.button(key="export_save_model").help
    assert sorted(p.name for p in theirs.iterdir()) == ["todo.txt"]

    at.button(key="export_save").click().run()  # the mask: saved once, then it asks too
    assert (export / "notes.json").is_file()
    at.run()
    assert at.button(key="export_save").disabled
    at.checkbox(key="export_replace_mask").check().run()
    assert not at.button(key="export_save").disabled


def test_the_default_export_name_carries_the_settings(tiny_at):
    at, _ = tiny_at
    at = run_page(at.run(), "export")
    first = at.text_input(key="export_name").value
    run_page(at, "mask_builder")
    at.slider(key="threshold").set_value(0.7).run()
    run_page(at, "export")
    second = at.text_input(key="export_name").value
    assert first != second and first.rsplit("-", 1)[0] == second.rsplit("-", 1)[0]  # same sparsity, other hash


def test_the_app_server_runs_numpy_products_on_one_thread(tmp_path):
    """Two OpenBLAS threads on two busy cores made the Mask builder's bootstrap products 35-55x slower."""
    from diet_explore.cli.app import app_environment

    env = app_environment(None, tmp_path, {"PATH": "/bin"})
    assert env["OPENBLAS_NUM_THREADS"] == "1" and env["DIET_EXPLORE_APP_DIR"] == str(tmp_path)
    assert app_environment(None, tmp_path, {"OPENBLAS_NUM_THREADS": "4"})["OPENBLAS_NUM_THREADS"] == "4"  # the user's wins


def test_the_app_server_skips_streamlits_forced_gc_after_every_rerun(tmp_path, monkeypatch):
    """Streamlit's default ``runner.postScriptGC`` runs gc.collect(2) after each rerun; with torch
    and transformers imported that held the GIL ~250 ms per key press, before the finished page
    left the server (bench_browser: 403-476 ms server time, 162-229 ms without it)."""
    import argparse

    from diet_explore.cli import app as app_cli

    seen = {}

    def fake_execve(exe, cmd, env):
        seen["cmd"] = cmd
        raise SystemExit(0)

    monkeypatch.setattr(app_cli.os, "execve", fake_execve)
    monkeypatch.setattr(app_cli.subprocess, "call", lambda cmd, env: seen.setdefault("cmd", cmd) and 0)
    monkeypatch.chdir(tmp_path)
    args = argparse.Namespace(port=8501, host="127.0.0.1", open=False, cache=None, executor=None, workers=None)
    with contextlib.suppress(SystemExit):
        app_cli.run(args)
    cmd = seen["cmd"]
    assert cmd[cmd.index("--runner.postScriptGC") + 1] == "false"
    # and for `streamlit run` from the checkout, the repository's config says the same
    import tomllib

    config = tomllib.loads((Path(__file__).resolve().parents[1] / ".streamlit" / "config.toml").read_text())
    assert config["runner"]["postScriptGC"] is False
