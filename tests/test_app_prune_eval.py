"""AppTest of Prune & evaluate (a background job), of the Sweep and History pages, and of saving a
pruned model, on a tiny random llama profiled into a real score cache (the model folder is named
in the cache's manifest).

The page only submits and renders jobs; the work runs in the library's worker process (a child of
the test process). To look at a job mid-run, a test pauses that process with SIGSTOP (its pid is
in the store's worker.json) and resumes it with SIGCONT."""

from __future__ import annotations

import os
import re
import signal

import numpy as np
import pytest
from app_helpers import APP, TIMEOUT, arr, chart_by_key, metrics, run_page
from job_helpers import paired, scored, stop_workers, wait_job, worker_pid

from diet_explore.core.numbers import points
from diet_explore.evaluation.decision import decide, format_entry, format_estimate
from diet_explore.experiments.history import compare_runs, run_heading, run_view
from diet_explore.experiments.jobs import JobStore
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.profiling.cache import load_cache


@pytest.fixture(scope="module")
def tiny(tiny_cache_root):
    return load_cache(tiny_cache_root / "tiny")


def new_session():
    """Another browser tab, or the same one reloaded: a fresh session on the same server."""
    from streamlit.testing.v1 import AppTest

    return AppTest.from_file(str(APP), default_timeout=TIMEOUT)


def start_tiny_eval(at, sparsity: float, limit: int, tasks=("rte",)):
    """Set the sparsity on the Mask builder, then queue Prune and evaluate (no perplexity)."""
    at = run_page(at.run(), "mask_builder")
    at.slider(key="sparsity").set_value(sparsity).run()
    run_page(at, "prune_eval")
    at.number_input(key="pe_limit").set_value(limit).run()
    at.multiselect(key="pe_tasks").set_value(list(tasks)).run()
    at.toggle(key="pe_ppl").set_value(False).run()
    at.button(key="pe_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    return at


def only_job(dirs) -> dict:
    (job,) = JobStore(dirs["runs"]).jobs()
    return job


def finish(at, dirs, job_id: str | None = None):
    """Wait for the job to end and show the page again."""
    store = JobStore(dirs["runs"])
    wait_job(store, job_id or only_job(dirs)["job_id"], ("done", "failed", "stopped"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def frame_with(at, column):
    """The first table on the page with ``column`` (AppTest does not expose a dataframe's key)."""
    for d in at.dataframe:
        if column in d.value.columns:
            return d.value
    raise AssertionError(f"no table with a column {column!r}: {[list(d.value.columns) for d in at.dataframe]}")


def _shown(view: dict) -> str:
    """A stored run's mean Δ as the page's metric shows it (``decision.format_estimate``)."""
    return format_estimate(view["delta_avg"], view["ci_low"], view["ci_high"])


def texts(at) -> str:
    return "\n".join(str(m.value) for m in [*at.markdown, *at.caption, *at.warning, *at.info])


def test_prune_and_evaluate_runs_as_a_job_and_shows_the_run_the_library_computes(tiny_app, tiny):
    from diet_explore.evaluation.evaluate import EvalConfig, evaluate_pair
    from diet_explore.experiments.runs import RunStore
    from diet_explore.models.loading import load_model
    from diet_explore.pruning.slicing import count_parameters, prune_model

    at, dirs = tiny_app
    at = start_tiny_eval(at, sparsity=0.25, limit=4)
    assert "**queued**" in texts(at) or "**running**" in texts(at)  # the click returns at once
    at = finish(at, dirs)
    assert not at.error, [e.value for e in at.error]

    result = build_mask(tiny, MaskConfig(sparsity=0.25))
    dense, tok, _ = load_model(tiny.model_name, device="cpu")
    pruned = prune_model(dense, result.keep, saveable=False)
    cfg = EvalConfig(tasks=["rte"], limit=4, perplexity=False, exclude_cache=str(tiny.path))
    pair = evaluate_pair(dense, pruned, tok, cfg)
    expected = pair.to_frame()

    from diet_explore_app.tables import number

    table = frame_with(at, "Main metric").set_index("Task")  # plain headers, every cell formatted once
    row = expected.loc["rte"]
    assert table.loc["rte", "n"] == "4" and table.loc["rte", "Main metric"] == "acc"
    assert table.loc["rte", "Dense"] == number(row["dense_main"]) and table.loc["rte", "Pruned"] == number(row["pruned_main"])
    rte_delta = format_estimate(row["delta_main"], row["delta_main_ci_low"], row["delta_main_ci_high"])
    assert table.loc["rte", "Δ, points [95% CI]"] == rte_delta
    assert table.loc["rte", "acc (dense → pruned)"] == f"{number(row['dense_acc'])} → {number(row['pruned_acc'])}"
    assert table.loc["average", "Δ, points [95% CI]"] == format_estimate(*pair.average_delta())
    m = metrics(at)
    assert m["Mean Δ main metric"] == format_estimate(*pair.average_delta())
    assert m["Parameters"] == f"{count_parameters(pruned) / 1e6:,.2f} M"
    assert m["Perplexity (pruned)"] == "off"

    runs = RunStore(dirs["runs"]).records()
    assert len(runs) == 1
    run = runs[0]
    assert run["n_keep"] == result.n_keep and run["model"] == tiny.model_name and run["tasks"] == ["rte"]
    assert run["mask_config"] == MaskConfig(sparsity=0.25).to_dict()
    assert run["cache_manifest_hash"] == tiny.manifest_hash and run["run_id"] == only_job(dirs)["run_id"]
    assert "delta_avg" not in run and run_view(run)["delta_avg"] == pytest.approx(pair.average_delta()[0])
    # the decision vs dense, in words, from the same paired numbers; the run history is the History page's alone
    said = decide(pair.paired()["average"]["main"], candidate="diet", reference="dense").sentence
    assert said in texts(at)
    assert "pe_history_plot" not in str(at) and "pe_history" not in [getattr(d, "key", None) for d in at.dataframe]


def test_compare_with_a_baseline_scores_it_in_the_same_job_and_shows_the_paired_difference(tiny_app):
    at, dirs = tiny_app
    at = run_page(at.run(), "prune_eval")
    at.multiselect(key="pe_vs").set_value(["random"]).run()
    at = start_tiny_eval(at, sparsity=0.25, limit=4, tasks=("rte", "arc_easy"))
    at = finish(at, dirs)
    job = only_job(dirs)
    assert job["status"] == "done" and "vs random" in job["label"], job.get("error")
    versus = job["partial"]["others"]["random"]["versus"]["average"]
    shown = metrics(at)
    assert shown["Δ main metric vs random"] == format_entry(versus["main"])
    assert shown["Δ gold LL/char vs random"] == format_entry(versus["gold_ll_per_char"], "gold_ll_per_char")
    said = decide(versus["main"], candidate="diet", reference="random").sentence  # a finished job: decided in words
    assert said in texts(at) and "not decided" not in texts(at)
    runs = JobStore(dirs["runs"]).runs.records()
    assert sorted(r["method"] for r in runs) == ["diet", "random"] and len({r["n_keep"] for r in runs}) == 1


@pytest.mark.slow  # several worker runs and restarts
def test_a_running_job_survives_a_page_switch_a_reload_and_a_second_tab_and_then_shows_its_result(tiny_app):
    at, dirs = tiny_app
    at = start_tiny_eval(at, sparsity=0.25, limit=300, tasks=("arc_easy",))
    store = JobStore(dirs["runs"])
    job_id = only_job(dirs)["job_id"]
    wait_job(store, job_id, lambda j: paired(j) > 0)
    pid = worker_pid(store)
    os.kill(pid, signal.SIGSTOP)  # hold it mid-run while we look
    try:
        at.run()
        job = store.get(job_id)
        assert job["status"] == "running" and 0 < scored(job) < 300
        assert f"**Job {job_id}**" in texts(at) and "**running**" in texts(at)
        (bar,) = at.get("progress")  # the bar shows the job's share done, and its text starts with the same share
        assert bar.proto.value == int(100 * job["progress"]["fraction"]), (bar.proto.value, job["progress"])
        assert bar.proto.text.startswith(f"{bar.proto.value}% of the job"), bar.proto.text
        shown = metrics(at)
        assert shown["Examples scored (pruned)"] == f"{scored(job)} / 300"
        assert shown["Mean Δ main metric so far"] == format_entry(job["partial"]["average"]["main"])
        assert "Mean Δ main metric" not in shown  # not the final number yet

        run_page(at, "mask_builder")  # the work is not the page's: switching away changes nothing
        assert store.get(job_id)["status"] == "running"
        run_page(at, "prune_eval")
        assert f"**Job {job_id}**" in texts(at) and metrics(at)["Examples scored (pruned)"] == f"{scored(job)} / 300"

        other = run_page(new_session().run(), "prune_eval")  # a reload, or a second tab: no session state
        assert f"**Job {job_id}**" in texts(other) and "**running**" in texts(other)
        assert metrics(other)["Mean Δ main metric so far"] == shown["Mean Δ main metric so far"]
        assert len(store.jobs()) == 1  # looking at it queued nothing
    finally:
        os.kill(pid, signal.SIGCONT)
    for session in (at, other):
        finish(session, dirs, job_id)
        record = JobStore(dirs["runs"]).runs.load(store.get(job_id)["run_id"])
        assert metrics(session)["Mean Δ main metric"] == _shown(run_view(record))
        assert f"Run {record['run_id']}" in [h.value for h in session.subheader][0]


@pytest.mark.slow  # several worker runs and restarts
def test_stop_on_the_page_keeps_the_partial_results_and_resume_finishes_the_run(tiny_app):
    at, dirs = tiny_app
    at = start_tiny_eval(at, sparsity=0.25, limit=300, tasks=("arc_easy",))
    store = JobStore(dirs["runs"])
    job_id = only_job(dirs)["job_id"]
    wait_job(store, job_id, lambda j: scored(j) > 0)
    at.run()
    at.button(key="job_stop").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = wait_job(store, job_id, ("stopped", "done"))
    assert job["status"] == "stopped", "the job finished before Stop was seen"
    at.run()
    assert "Partial results" in texts(at)
    assert metrics(at)["Mean Δ main metric (partial)"] == format_entry(job["result"]["average"]["main"])
    assert not store.runs.records()
    at.button(key="job_resume").click().run()
    assert not at.exception, [e.value for e in at.exception]
    done = wait_job(store, job_id, ("done",))
    at.run()
    assert metrics(at)["Mean Δ main metric"] == _shown(run_view(store.runs.load(done["run_id"])))
    assert len(store.runs.records()) == 1 and done["attempts"] == 2


@pytest.mark.slow  # several worker runs and restarts
def test_an_interrupted_job_is_shown_so_and_resumes_from_the_page_to_the_numbers_of_an_uninterrupted_run(tiny_app, tmp_path):
    from diet_explore.experiments.jobs import run_worker

    at, dirs = tiny_app
    at = start_tiny_eval(at, sparsity=0.25, limit=120, tasks=("arc_easy",))
    store = JobStore(dirs["runs"])
    job = only_job(dirs)
    wait_job(store, job["job_id"], lambda j: scored(j) > 0)
    os.kill(worker_pid(store), signal.SIGKILL)  # the server machine went down mid-run
    wait_job(store, job["job_id"], ("interrupted",))
    at = run_page(new_session().run(), "prune_eval")  # after the restart
    assert "was interrupted" in texts(at) and "**interrupted**" in texts(at)
    at.button(key="job_resume").click().run()
    done = wait_job(store, job["job_id"], ("done",))
    at.run()
    resumed = store.runs.load(done["run_id"])

    fresh = JobStore(tmp_path / "uninterrupted")
    fresh.submit("prune_eval", job["config"], "the same, in one go")
    run_worker(fresh, until_empty=True)
    (reference,) = fresh.runs.records()
    assert metrics(at)["Mean Δ main metric"] == _shown(run_view(reference))
    assert [run_view(resumed)[k] for k in ("ci_low", "ci_high")] == pytest.approx(
        [run_view(reference)[k] for k in ("ci_low", "ci_high")]
    )
    assert resumed["paired"]["average"]["gold_ll_per_char"]["delta"] == pytest.approx(
        reference["paired"]["average"]["gold_ll_per_char"]["delta"], abs=1e-6
    )


def test_missing_weights_name_the_install_command(tiny_app, monkeypatch):
    import diet_explore.models.builtin as models

    at, _ = tiny_app
    monkeypatch.setattr(models, "is_installed", lambda name: False)
    at = run_page(at.run(), "prune_eval")
    at.text_input(key="pe_model").input("gemma3-270m").run()
    assert not at.exception and not at.error  # not an error: an info box that says how to install it
    assert at.info and "not installed" in at.info[0].value
    assert f"`{models.install_command('gemma3-270m')}`" in at.info[0].value
    run = at.button(key="pe_run")
    assert run.disabled and "not installed" in run.help  # the reason, on the disabled button
    run_page(at, "export")
    assert at.info and f"`{models.install_command('gemma3-270m')}`" in at.info[0].value
    assert at.button(key="export_save_model").disabled


def test_a_missing_model_folder_is_named_not_sent_to_an_install_command(tiny_app, tmp_path):
    at, _ = tiny_app
    at = run_page(at.run(), "prune_eval")
    at.text_input(key="pe_model").input(str(tmp_path / "no-such-model")).run()
    assert not at.exception
    assert at.error and f"model folder {tmp_path / 'no-such-model'} does not exist" in at.error[0].value
    assert "models --install" not in at.error[0].value


def test_a_model_that_fails_to_load_in_the_worker_is_an_error_box_and_the_history_is_intact(tiny_app, tiny_cache_root, tmp_path):
    import shutil

    from diet_explore.experiments.runs import RunStore

    at, dirs = tiny_app
    store = RunStore(dirs["runs"])
    earlier = store.save({"source": "earlier", "model": "tiny", "method": "diet", "sparsity": 0.2, "delta_avg": -0.01})
    broken = tmp_path / "broken-model"
    shutil.copytree(tiny_cache_root.parent / "models" / "tiny-llama", broken)
    for weights in broken.glob("*.safetensors"):
        weights.write_bytes(b"truncated")  # the config reads fine: only loading the weights fails
    before = sorted((p.name, p.read_bytes()) for p in dirs["runs"].glob("*.json"))
    at = run_page(at.run(), "prune_eval")
    at.text_input(key="pe_model").input(str(broken)).run()
    at.multiselect(key="pe_tasks").set_value(["rte"]).run()
    at.button(key="pe_run").click().run()
    at = finish(at, dirs)
    assert only_job(dirs)["status"] == "failed"
    assert at.error and "**failed**" in texts(at)
    assert sorted((p.name, p.read_bytes()) for p in dirs["runs"].glob("*.json")) == before
    assert [r["run_id"] for r in store.records()] == [earlier]


@pytest.mark.slow  # several worker runs and restarts
def test_a_second_run_reuses_the_dense_results_even_after_a_restart(tiny_app):
    import streamlit as st

    from diet_explore.experiments.runs import RunStore

    at, dirs = tiny_app
    at = finish(start_tiny_eval(at, sparsity=0.25, limit=3), dirs)
    first = only_job(dirs)
    assert first["status"] == "done" and first["result"]["dense_reused"] is False
    stop_workers(JobStore(dirs["runs"]))  # the server restarts: no worker, nothing in memory
    st.cache_data.clear()
    st.cache_resource.clear()
    at = finish(start_tiny_eval(new_session(), sparsity=0.5, limit=3), dirs, _newest(dirs))
    second = JobStore(dirs["runs"]).get(_newest(dirs))
    assert second["status"] == "done" and second["result"]["dense_reused"] is True
    assert "Dense results reused" in texts(at)
    a, b = sorted(RunStore(dirs["runs"]).records(), key=lambda r: r["n_keep"], reverse=True)
    assert a["dense_avg"] == b["dense_avg"] and a["n_keep"] > b["n_keep"]


def _newest(dirs) -> str:
    return max(JobStore(dirs["runs"]).jobs(), key=lambda j: j["queue_seq"])["job_id"]


def test_a_reprofiled_cache_changes_the_examples_so_the_dense_model_is_evaluated_again(
    tiny_app, tiny_cache_root, tmp_path, monkeypatch
):
    """The page's config names the cache folder, not its contents: profiling it again with other
    samples moves the held-out draw, and a dense result from the old draw must not be paired."""
    import json
    import shutil

    from diet_explore.evaluation.evaluate import EvalConfig, eval_requests

    root = tmp_path / "caches"
    shutil.copytree(tiny_cache_root, root)
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(root))
    at, dirs = tiny_app
    at = finish(start_tiny_eval(at, sparsity=0.25, limit=3), dirs)
    manifest_path = root / "tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    held_out = eval_requests(EvalConfig(tasks=["rte"], limit=3, exclude_cache=str(root / "tiny")))["rte"]
    ids = manifest["tasks"]["rte"]["sample_ids"]
    manifest["tasks"]["rte"]["sample_ids"] = sorted([*ids[1:], held_out[0].doc_id])  # another calibration draw
    manifest_path.write_text(json.dumps(manifest))
    at.run()
    at.button(key="pe_run").click().run()
    at = finish(at, dirs, _newest(dirs))
    second = JobStore(dirs["runs"]).get(_newest(dirs))
    assert second["status"] == "done" and second["result"]["dense_reused"] is False
    assert not any("Dense results reused" in str(m.value) for m in at.markdown)


# --------------------------------------------------------------------------------------------
# Sweep and History
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_a_sweep_runs_as_a_job_and_draws_its_curves_from_its_results(tiny_app):
    from diet_explore.experiments.reports import as_sweep, curve_frame
    from diet_explore.experiments.results import read_results

    at, dirs = tiny_app
    at = run_page(at.run(), "sweep")
    at.multiselect(key="sw_methods").set_value(["diet", "random"]).run()
    at.multiselect(key="sw_sparsities").set_value([0.25, 0.5]).run()
    at.multiselect(key="sw_tasks").set_value(["arc_easy"]).run()
    at.number_input(key="sw_limit").set_value(4).run()
    at.toggle(key="sw_ppl").set_value(False).run()
    at.button(key="sw_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    at = finish(at, dirs)
    job = only_job(dirs)
    assert job["type"] == "sweep" and job["status"] == "done", job.get("error")
    rows = read_results(JobStore(dirs["runs"]).folder(job["job_id"]) / "sweep")
    assert sorted(r["key"] for r in rows) == ["dense", "diet@0.25", "diet@0.5", "random@0.25", "random@0.5"]
    for curve in ("main", "gold_ll_per_char"):
        spec = chart_by_key(at, f"sw_curve_{curve}")
        expected = curve_frame(rows, curve)
        drawn = {tr["name"]: tr["y"] for tr in spec["data"] if tr.get("mode") == "lines+markers"}
        assert sorted(drawn) == sorted(as_sweep(rows).labels()[m] for m in ("diet", "random"))  # the runs' mask labels
        for method, g in expected.groupby("method"):
            assert np.allclose(arr(drawn[method]).astype(float), g.sort_values("sparsity")["value"].to_numpy())
    assert len([r for r in JobStore(dirs["runs"]).runs.records() if r["source"] == "compare"]) == 4
    # a reload (a new session) shows the form as the job below ran it, and offers that sweep among the results
    again = run_page(new_session().run(), "sweep")
    assert again.multiselect(key="sw_methods").value == ["diet", "random"] and again.number_input(key="sw_limit").value == 4
    assert again.toggle(key="sw_ppl").value is False and again.multiselect(key="sw_tasks").value == ["arc_easy"]
    assert list(again.multiselect(key="sw_sparsities").value) == [0.25, 0.5]
    assert any(o.startswith("app sweep ") for o in again.selectbox(key="rs_sweep").options)
    assert any("Mask settings from the Mask builder: **diet" in m.value for m in again.markdown)


def test_history_compares_picked_runs_side_by_side_and_pairs_them_on_shared_examples(tiny_app, tiny_cache_root):
    from job_helpers import prune_eval_config

    from diet_explore.experiments.jobs import run_worker

    at, dirs = tiny_app
    store = JobStore(dirs["runs"])
    for s in (0.25, 0.5):
        store.submit("prune_eval", prune_eval_config(tiny_cache_root, sparsity=s, limit=6, tasks=("rte", "arc_easy")), f"s{s}")
    assert run_worker(store, until_empty=True) == 2
    a, b = sorted(store.runs.records(), key=lambda r: r["target_sparsity"])
    at = run_page(at.run(), "history")
    table = frame_with(at, "Mask")
    assert set(table["Run"]) == {a["run_id"].rsplit("-", 1)[1], b["run_id"].rsplit("-", 1)[1]}
    assert len(table.columns) <= 12 and not any("_" in c for c in table.columns)  # readable names, fits the page
    assert at.get("download_button")
    hist = chart_by_key(at, "hist_plot")
    assert hist["layout"]["xaxis"]["range"] == [0.0, 0.9] and [tr["name"] for tr in hist["data"]] == ["diet"]
    assert "points" in hist["layout"]["yaxis"]["title"]["text"]  # history.in_points: the table's unit
    # b is the reference, a the candidate: the comparison is a − b whichever order they were picked in
    at.selectbox(key="hist_ref").set_value(b["run_id"]).run()
    at.multiselect(key="hist_pick").set_value([b["run_id"], a["run_id"]]).run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert "target sparsity" in texts(at) and "kept dims" in texts(at)  # what differs, in words
    ha = run_heading(a)
    side = frame_with(at, (ha, "main metric"))  # printed by the one number rule: points, never a raw fraction
    assert side.loc["rte", (ha, "main metric")] == points(next(r["pruned_main"] for r in a["task_results"] if r["task"] == "rte"))
    ll = side.xs("Δ gold LL/char", axis=1, level="value").stack()
    assert len(ll) and all(re.fullmatch(r"[+\u2212]\d+\.\d{3}|0\.000|—", v) for v in ll), list(ll)
    paired = frame_with(at, "shared examples")
    # recomputed by hand: a's main-metric correctness minus b's, on the examples both scored
    for task in ("rte", "arc_easy"):
        ra = next(r for r in a["task_results"] if r["task"] == task)["examples"]["pruned"]
        rb = next(r for r in b["task_results"] if r["task"] == task)["examples"]["pruned"]
        assert ra["doc_id"] == rb["doc_id"]
        norm = task == "arc_easy"  # its main metric is acc_norm
        diff = _correct(ra, norm) - _correct(rb, norm)
        assert paired.loc[task, "Δ main metric, points [95% CI]"].startswith(format_estimate(float(np.mean(diff))).split(" ")[0])
        assert paired.loc[task, "shared examples"] == 6
    said = compare_runs(a, b)["sentences"][0]
    assert said in texts(at) and ha in said.split(run_heading(b))[0]  # the candidate is named first
    # Prune & evaluate compares the run it shows with an earlier one, in the same words
    at = run_page(at, "prune_eval")
    shown, other = (a, b) if a["run_id"] in at.subheader[0].value else (b, a)
    at.selectbox(key="pe_vs_run").set_value(other["run_id"]).run()
    assert not at.exception and compare_runs(shown, other)["sentences"][0] in texts(at)


def _correct(ex: dict, norm: bool) -> np.ndarray:
    """0/1 per example: the argmax of the log-likelihood (per character with ``norm``) is the gold answer."""
    lls = np.array(ex["lls"], dtype=float) / (np.array(ex["chars"], dtype=float) if norm else 1.0)
    return (lls.argmax(axis=1) == np.array(ex["gold"])).astype(float)


# --------------------------------------------------------------------------------------------
# Export
# --------------------------------------------------------------------------------------------
def test_export_saves_a_loadable_pruned_model(tiny_app, tiny):
    from transformers import AutoModelForCausalLM

    from diet_explore.masking.maskfile import load_mask

    at, dirs = tiny_app
    at = run_page(at.run(), "mask_builder")
    at.number_input(key="multiple").set_value(8).run()
    n_keep = int(metrics(at)["Kept dims"].split("/")[0])
    assert n_keep % 8 == 0
    assert not at.warning  # a multiple of 8 is a multiple of the 4 heads: no save warning
    run_page(at, "export")
    at.text_input(key="export_name").input("tiny-pruned").run()
    at.button(key="export_save_model").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    # a job in the worker, not work on the page's thread: the click returns with the job queued or running
    job = only_job(dirs)
    assert job["type"] == "prune_save" and ("**queued**" in texts(at) or "**running**" in texts(at))
    at = finish(at, dirs)
    assert not at.error and only_job(dirs)["status"] == "done", [e.value for e in at.error]
    folder = dirs["export"] / "tiny-pruned"
    assert any(f"{folder.name}/ (" in s.value and f"{n_keep} hidden dims kept" in s.value for s in at.success)
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.hidden_size == n_keep
    mask = load_mask(folder / "diet_mask.json", expected_hidden_size=64)
    expected = build_mask(tiny, MaskConfig(multiple_of=8))
    assert np.array_equal(mask.keep, expected.keep)
    assert mask.calibration_ids == {t: list(tiny.tasks[t].sample_ids) for t in tiny.task_names}  # eval leaves them out


def test_export_of_an_unsaveable_kept_count_is_disabled_with_the_reason(tiny_app):
    """The button was offered and failed after loading and pruning the model (with a CLI hint)."""
    at, dirs = tiny_app
    at = run_page(at.run(), "mask_builder")
    n_keep = int(metrics(at)["Kept dims"].split("/")[0])
    assert n_keep % 4 != 0  # the tiny llama has 4 heads: this count cannot be saved
    # said before anyone tries: an information on the Mask builder (the mask evaluates as it is), a warning on Export
    assert any("needs a multiple of 4" in i.value for i in at.info) and not at.warning
    run_page(at, "export")
    assert any("needs a multiple of 4" in w.value for w in at.warning)
    button = at.button(key="export_save_model")
    assert button.disabled and f"{n_keep} kept dims cannot be saved" in button.help
    assert not (dirs["export"] / at.text_input(key="export_name").value).exists()


def test_the_saveable_hint_sets_the_multiple_in_one_click(tiny_app):
    """The hint named the setting to change on another page; its button now changes it."""
    at, _ = tiny_app
    at = run_page(at.run(), "export")
    hint = next(b.value for b in [*at.info, *at.warning] if "needs a multiple of" in b.value)
    assert "the Sweeps page evaluates it as tuned" in hint  # the Sweeps page never rounds (round_to_model off)
    at.button(key="export_round_for_saving").click().run()
    assert not at.exception and not any("needs a multiple of" in w.value for w in at.warning)
    assert not at.button(key="export_save_model").disabled
    run_page(at, "mask_builder")
    assert at.number_input(key="multiple").value == 4
    assert int(metrics(at)["Kept dims"].split("/")[0]) % 4 == 0 and not at.info
    at.number_input(key="multiple").set_value(1).run()  # back to an unsaveable count: the Mask builder's button
    assert any("needs a multiple of 4" in i.value for i in at.info)
    at.button(key="mb_round_for_saving").click().run()
    assert at.number_input(key="multiple").value == 4 and not at.info


def test_an_emptied_model_field_shows_the_model_it_runs(tiny_app):
    """Clearing the Model field ran the cache's model behind a blank field; it now shows that model."""
    at, _ = tiny_app
    at = run_page(at.run(), "prune_eval")
    model = at.text_input(key="pe_model").value  # it follows the cache's model
    assert model
    at.text_input(key="pe_model").input("   ").run()
    assert not at.exception
    assert at.text_input(key="pe_model").value == model
    run_page(at, "sweep")
    assert any(model in c.value for c in [*at.caption, *at.markdown])
