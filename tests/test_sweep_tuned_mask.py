"""A sweep runs the mask you tuned, as tuned: the Sweeps page's DIET run keeps the Mask builder's
count (not rounded to the model's head multiple) and carries its label; ``compare --save`` refuses a
count the model could not save before the sweep, in one line. On the tiny random llama (4 heads:
its config accepts a hidden size that is a multiple of 4 only) and its profiled score cache."""

from __future__ import annotations

import pytest
from app_helpers import run_page
from job_helpers import wait_job

from diet_explore.core.errors import DietError
from diet_explore.experiments.jobs import JobStore
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.profiling.cache import load_cache

SPARSITY, TAU, RTE_WEIGHT = 0.3, 0.6, 0.5  # on the tiny cache: a DIET count that is no multiple of 4


def _tiny_model_multiple(tiny_cache_root) -> int:
    from diet_explore.models.loading import load_config
    from diet_explore.pruning.saving import required_multiple_for_config

    return required_multiple_for_config(load_config(str(tiny_cache_root.parent / "models" / "tiny-llama")))


@pytest.mark.slow
def test_the_sweeps_diet_run_keeps_the_mask_builders_count_and_label(tiny_app, tiny_cache_root):
    """Tuned τ and a weight on the Mask builder, then a sweep: its DIET run is the Mask builder's mask
    (``state.current_config`` + ``build_mask``), a count the model could not save included."""
    from diet_explore.experiments.history import run_label
    from diet_explore.experiments.results import read_results
    from diet_explore_app import state

    at, dirs = tiny_app
    runs = dirs["runs"]
    at = run_page(at.run(), "mask_builder")
    at.slider(key="sparsity").set_value(SPARSITY).run()
    at.slider(key="threshold").set_value(TAU).run()
    at.slider(key="w_rte").set_value(RTE_WEIGHT).run()
    assert not at.exception, [e.value for e in at.exception]
    cache = load_cache(tiny_cache_root / "tiny")
    # the Mask builder's mask, by the app's own function over this browser tab's state, and the count it shows
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(state.st, "session_state", at.session_state.to_dict())
        tuned = state.current_config(cache)
    built = build_mask(cache, tuned)
    assert built.n_keep % _tiny_model_multiple(tiny_cache_root) != 0  # rounding to the model would change it
    assert tuned.label() == f"diet τ{TAU:g} rte×{RTE_WEIGHT:g}"
    assert at.metric[0].label == "Kept dims" and at.metric[0].value == f"{built.n_keep} / 64"

    run_page(at, "sweep")
    assert any(f"**{tuned.label()}**" in m.value and f"**{built.n_keep}** of 64" in m.value for m in at.markdown)
    at.multiselect(key="sw_methods").set_value(["diet"]).run()
    at.multiselect(key="sw_sparsities").set_value([SPARSITY]).run()
    at.multiselect(key="sw_tasks").set_value(["rte"]).run()
    at.number_input(key="sw_limit").set_value(2).run()
    at.toggle(key="sw_ppl").set_value(False).run()
    at.button(key="sw_run").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    store = JobStore(runs)
    (job,) = store.jobs()
    job = wait_job(store, job["job_id"], ("done", "failed", "stopped"))
    assert job["status"] == "done", job.get("error")
    rows = {r["key"]: r for r in read_results(store.folder(job["job_id"]) / "sweep")}
    diet = rows[f"diet@{SPARSITY:g}"]
    assert diet["n_keep"] == built.n_keep
    assert MaskConfig.from_dict(diet["mask_config"]).label() == tuned.label()
    (record,) = [r for r in store.runs.records() if r["source"] == "compare"]
    assert record["n_keep"] == built.n_keep and run_label(record) == tuned.label()


def test_a_sweep_evaluates_a_tuned_count_the_model_could_not_save(tmp_path, tiny_cache_root):
    """round_to_model off: the run is pruned in memory as the mask keeps it (Prune & evaluate does the
    same), where a saveable prune would refuse the count."""
    from test_scoring import WordTokenizer

    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import CompareConfig, run_compare
    from diet_explore.masking.selection import keep_count
    from diet_explore.models.adapters.tiny import tiny_model
    from diet_explore.pruning.saving import required_multiple

    cache = load_cache(tiny_cache_root / "tiny")
    tuned = MaskConfig(sparsity=SPARSITY, threshold=TAU, weights={"rte": RTE_WEIGHT})  # as the Mask builder has it
    built = build_mask(cache, tuned)
    model = tiny_model("llama")
    assert built.n_keep % required_multiple(model) != 0
    config = CompareConfig(
        model="tiny-llama",
        cache=str(cache.path),
        sparsities=[SPARSITY],
        methods=["diet", "random", "single-task"],  # a mask for every task, and one per task
        tasks="rte",
        limit=2,
        perplexity=False,
        mask=tuned,
        round_to_model=False,
    )
    rows = {r["key"]: r for r in run_compare(config, tmp_path / "out", model, WordTokenizer(), RunStore(tmp_path / "runs"))}
    diet = rows[f"diet@{SPARSITY:g}"]
    assert diet["n_keep"] == built.n_keep and diet["tasks"]["rte"]["n"] == 2
    assert MaskConfig.from_dict(diet["mask_config"]).label() == tuned.label() == "diet τ0.6 rte×0.5"
    target = keep_count(64, SPARSITY)  # the baselines' count (not exact: the target's), no multiple of 4 either
    assert target % required_multiple(model) != 0
    assert rows[f"random@{SPARSITY:g}"]["n_keep"] == target and rows[f"single-task@{SPARSITY:g}"]["n_keep_per_task"] == {
        "rte": target
    }


def test_compare_save_refuses_a_count_the_model_cannot_save_before_the_sweep(tmp_path, tiny_cache_root, capsys):
    """--multiple-of 1 evaluates the tuned count, but a saved folder must reload: one line naming the run,
    its count and the multiple, exit code 2, and neither --out nor --save written."""
    from diet_explore.cli import main

    cache = tiny_cache_root / "tiny"
    built = build_mask(load_cache(cache), MaskConfig(sparsity=SPARSITY, threshold=TAU, weights={"rte": RTE_WEIGHT}))
    m = _tiny_model_multiple(tiny_cache_root)
    argv = ["compare", "--model", str(tiny_cache_root.parent / "models" / "tiny-llama"), "--cache", str(cache)]
    argv += ["--methods", "diet", "--sparsity", str(SPARSITY), "--tasks", "rte", "--limit", "2", "--no-perplexity"]
    argv += ["--threshold", str(TAU), "--weights", f"rte={RTE_WEIGHT}", "--no-exact", "--multiple-of", "1"]
    argv += ["--out", str(tmp_path / "out"), "--runs", str(tmp_path / "runs"), "--save", str(tmp_path / "saved")]
    assert main(argv) == 2
    err = capsys.readouterr().err
    assert f"diet-{SPARSITY:g} keeps {built.n_keep} of 64 dims, not a multiple of {m}" in err
    assert f"--multiple-of {m}" in err and "Traceback" not in err
    assert not (tmp_path / "out").exists() and not (tmp_path / "saved").exists()


def test_save_sweep_models_refuses_before_writing_any_folder(tmp_path, tiny_cache_root):
    from diet_explore.experiments.saved_models import check_saveable_sweep, save_sweep_models
    from diet_explore.experiments.sweep import CompareConfig

    model = str(tiny_cache_root.parent / "models" / "tiny-llama")
    tuned = MaskConfig(threshold=TAU, weights={"rte": RTE_WEIGHT})
    kw = dict(model=model, cache=str(tiny_cache_root / "tiny"), methods=["diet"], tasks="rte", limit=2)
    # 0.25 first: it keeps a saveable count, and its folder would be written before 0.3's refusal
    assert (
        build_mask(
            load_cache(tiny_cache_root / "tiny"), MaskConfig(sparsity=0.25, threshold=TAU, weights={"rte": RTE_WEIGHT})
        ).n_keep
        % 4
        == 0
    )
    config = CompareConfig(**kw, sparsities=[0.25, SPARSITY], mask=tuned, round_to_model=False)
    with pytest.raises(DietError, match=f"diet-{SPARSITY:g} keeps"):
        save_sweep_models(config, tmp_path / "saved", log=lambda m: None)
    assert not (tmp_path / "saved").exists()
    check_saveable_sweep(CompareConfig(**kw, sparsities=[0.25, SPARSITY], mask=tuned))  # rounded to the model: saveable


def test_the_progress_text_counts_the_dense_run_and_says_so():
    """A two-method sweep read "run 2 of 3" with no word that the dense model is one of the three."""
    from diet_explore.experiments.sweep import run_count

    todo = ["dense", "diet@0.5", "random@0.5"]
    assert run_count(todo, 1) == "run 2 of 3 (dense + 2 pruned runs; now diet@0.5)"
    assert run_count(todo[2:], 0) == "run 1 of 1 (1 pruned run; now random@0.5)"
