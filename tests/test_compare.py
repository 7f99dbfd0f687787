"""Comparison sweeps on a tiny model and a matching synthetic cache: rows, deltas, reports, resume."""

from __future__ import annotations

import json

import numpy as np
import pytest
from test_scoring import WordTokenizer

from diet_explore.core.errors import DietError
from diet_explore.evaluation.evaluate import evaluate_model
from diet_explore.evaluation.metrics import average_interval, paired_proportion_delta
from diet_explore.experiments.history import run_view, runs_frame
from diet_explore.experiments.reports import as_sweep, markdown_table
from diet_explore.experiments.results import read_results
from diet_explore.experiments.runs import RunStore
from diet_explore.experiments.sweep import CompareConfig, run_compare, sweep_grid
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.models.adapters.tiny import tiny_model
from diet_explore.profiling.cache import save_cache
from diet_explore.profiling.synthetic import synthetic_cache
from diet_explore.pruning.slicing import prune_model

METHODS = ["diet", "random", "magnitude", "single-task", "leave-one-out"]


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    root = tmp_path_factory.mktemp("compare")
    cache = save_cache(
        synthetic_cache(hidden_size=64, num_layers=2, tasks=("rte", "winogrande"), n_samples=8, seed=1), root / "cache"
    )
    config = CompareConfig(
        model="tiny-llama",
        cache=str(cache),
        sparsities=[0.25],
        methods=METHODS,
        tasks="rte,winogrande",
        limit=3,
        perplexity=False,
    )
    model, tok, store = tiny_model("llama"), WordTokenizer(), RunStore(root / "runs")
    logs: list[str] = []
    rows = run_compare(config, root / "out", model, tok, store, log=logs.append)
    return root, config, model, tok, store, rows, logs


def test_every_method_keeps_the_same_count_and_gets_paired_deltas(setup):
    root, config, model, tok, store, rows, logs = setup
    by = {r["key"]: r for r in rows}
    assert list(by) == ["dense"] + [f"{m}@0.25" for m in METHODS]
    assert {r["n_keep"] for r in rows if r["key"] != "dense"} == {48}  # 64 * 0.75, a multiple of 4 heads
    dense = by["dense"]
    for r in rows[1:]:
        for t, v in r["tasks"].items():
            assert v["n"] == 3
            d = np.array(v["correct"]) - np.array(dense["tasks"][t]["correct"])
            assert v["delta"] == pytest.approx(d.mean()) and v["ci_low"] <= v["delta"] <= v["ci_high"]
        assert r["avg"] == pytest.approx(np.mean([v["main"] for v in r["tasks"].values()]))
        se = [np.std(v["correct"], ddof=1) / np.sqrt(len(v["correct"])) for v in r["tasks"].values()]
        assert r["avg_stderr"] == pytest.approx(np.sqrt(np.sum(np.square(se))) / len(se))  # independent tasks: variances add
        assert r["delta_avg"] == pytest.approx(r["avg"] - dense["avg"])
    assert set(by["single-task@0.25"]["n_keep_per_task"]) == {"rte", "winogrande"}
    for r in rows:  # every example's choice log-likelihoods are kept, on the dense row's examples
        for t, v in r["tasks"].items():
            ex = v["examples"]
            assert ex["doc_id"] == dense["tasks"][t]["examples"]["doc_id"] and len(ex["lls"]) == v["n"] == 3
            preds = [
                int(np.argmax(np.array(ll) / (np.array(ch) if v["metric"] == "acc_norm" else 1)))
                for ll, ch in zip(ex["lls"], ex["chars"])
            ]
            assert [int(p == g) for p, g in zip(preds, ex["gold"])] == v["correct"]


def test_the_normed_site_vote_is_the_diet_vote_on_the_normed_scores():
    import dataclasses

    from diet_explore.experiments.results import mask_for as _mask
    from diet_explore.masking.importance import ScorePrecompute

    cache = synthetic_cache(hidden_size=64, num_layers=2, n_samples=8, seed=2)
    flip = {
        t: dataclasses.replace(ts, layer={**ts.layer, "normed": ts.layer["normed"][:, ::-1].copy()})
        for t, ts in cache.tasks.items()
    }  # the normed site ranks the dims the other way round
    pre = ScorePrecompute(dataclasses.replace(cache, tasks=flip))
    cfg = CompareConfig(methods=["diet-normed", "diet"])
    normed, residual = (_mask(pre, m, 0.25, cfg, 4).keep for m in ("diet-normed", "diet"))
    expected = build_mask(pre, MaskConfig(sparsity=0.25, site="normed", exact=True, multiple_of=4)).keep
    assert np.array_equal(normed, expected) and not np.array_equal(normed, residual)


def test_a_row_equals_pruning_and_evaluating_that_mask_directly(setup):
    root, config, model, tok, store, rows, logs = setup
    from diet_explore.profiling.cache import load_cache

    mask = build_mask(load_cache(config.cache), MaskConfig(sparsity=0.25, method="random", exact=True, multiple_of=4))
    res = evaluate_model(prune_model(model, mask.keep), tok, config.eval_config())
    row = next(r for r in rows if r["key"] == "random@0.25")
    for t in ("rte", "winogrande"):
        assert row["tasks"][t]["correct"] == [int(x) for x in res.tasks[t].correct]


def test_reports_and_run_store(setup):
    root, config, model, tok, store, rows, logs = setup
    out = root / "out"
    for name in ("table.csv", "table.md", "sweep.html", "results.jsonl", "config.json"):
        assert (out / name).is_file(), name
    md = (out / "table.md").read_text()
    assert md.startswith("| sparsity | method | kept | rte (acc) | winogrande (acc) | avg |")
    main_table, versus = md.split("\nDIET minus each other method")
    assert main_table.count("\n| 0.25 |") == len(METHODS) and "| 0 | dense | 64 |" in main_table
    assert "plotly" in (out / "sweep.html").read_text()[:5000].lower()
    diet, rnd = (next(r for r in rows if r["method"] == m) for m in ("diet", "random"))
    per_task = [paired_proportion_delta(rnd["tasks"][t]["correct"], diet["tasks"][t]["correct"]) for t in diet["tasks"]]
    m, lo, hi = average_interval(per_task)
    assert m == pytest.approx(
        np.mean([np.mean(diet["tasks"][t]["correct"]) - np.mean(rnd["tasks"][t]["correct"]) for t in diet["tasks"]])
    )
    labels = as_sweep(rows).labels()  # each run named by its mask's label (history.run_label), e.g. "diet exact multiple 4"
    line = next(ln for ln in versus.splitlines() if f"| {labels['diet']} − {labels['random']} |" in ln)
    assert f"| {100 * m:+.1f} [{100 * lo:+.1f}, {100 * hi:+.1f}] |" in line
    assert versus.count(f" | {labels['diet']} − ") == len(METHODS) - 1
    runs = runs_frame(store.records())
    assert sorted(runs["method"]) == sorted(METHODS) and set(runs["sparsity"]) == {0.25}
    assert {r["run_id"] for r in rows[1:]} == set(runs["run_id"])
    record = store.load(diet["run_id"])  # the writer app jobs use: what was asked and what was done, no stored deltas
    assert record["target_sparsity"] == 0.25 and record["actual_sparsity"] == pytest.approx(1 - diet["n_keep"] / 64)
    assert record["mask_config"]["method"] == "diet" and record["eval_config"]["limit"] == config.limit
    assert "delta_avg" not in record and run_view(record)["delta_avg"] == pytest.approx(diet["delta_avg"])
    csv = (out / "table.csv").read_text().splitlines()
    assert len(csv) == 1 + (1 + len(METHODS)) * 3  # header + (tasks + average) per row


def test_resume_skips_finished_runs_and_refuses_other_settings(setup, tmp_path):
    import shutil

    root, config, model, tok, _, rows, logs = setup
    out = tmp_path / "out"  # a copy: the shared sweep stays as the other tests expect it, in any order
    shutil.copytree(root / "out", out)
    shutil.copytree(root / "runs", tmp_path / "runs")
    store = RunStore(tmp_path / "runs")
    logs2: list[str] = []
    again = run_compare(config, out, None, None, store, log=logs2.append)  # no model given, and none loaded:
    assert logs2 == [f"{len(METHODS) + 1} of {len(METHODS) + 1} runs already in {out}; 0 to go"]  # "tiny-llama" is no model
    assert again == rows and len(store.records()) == len(METHODS)
    more = CompareConfig.from_dict({**config.to_dict(), "sparsities": [0.25, 0.5], "methods": ["random"]})
    logs3: list[str] = []
    run_compare(more, out, model, tok, store, log=logs3.append)
    assert logs3[0].endswith("1 to go") and len(read_results(out)) == len(METHODS) + 2
    with pytest.raises(DietError, match="a different --limit"):
        run_compare(CompareConfig.from_dict({**config.to_dict(), "limit": 4}), out, model, tok, store)
    assert len(read_results(root / "out")) == len(METHODS) + 1  # the shared sweep is untouched


def test_bad_methods_and_sparsities_are_refused():
    with pytest.raises(DietError, match="unknown method"):
        CompareConfig(methods=["diet", "bogus"])
    with pytest.raises(DietError, match="outside"):
        CompareConfig(sparsities=[0.0])
    assert markdown_table([]) == ""


@pytest.mark.slow
def test_a_sweep_reuses_cached_dense_results_and_only_evaluates_the_pruned_models(tiny_cache_root, tmp_path, monkeypatch):
    """On the tiny llama saved as a model folder: the rule is the sweep's, not the model's."""
    import diet_explore.experiments.sweep as compare
    from diet_explore.evaluation.evalcache import EvalCache

    config = CompareConfig(
        model=str(tiny_cache_root.parent / "models" / "tiny-llama"),
        cache=str(tiny_cache_root / "tiny"),
        sparsities=[0.25],
        methods=["random"],
        tasks="rte",
        limit=2,
        perplexity=False,
        device="cpu",
    )
    cache, store = EvalCache(tmp_path / "eval-cache"), RunStore(tmp_path / "runs")
    first = run_compare(config, tmp_path / "a", store=store, eval_cache=cache, log=lambda m: None)
    evaluated: list[int] = []
    real = compare.evaluate_model
    monkeypatch.setattr(
        compare, "evaluate_model", lambda model, *a, **k: evaluated.append(model.config.hidden_size) or real(model, *a, **k)
    )
    logs: list[str] = []
    second = run_compare(config, tmp_path / "b", store=store, eval_cache=cache, log=logs.append)
    assert evaluated == [second[1]["n_keep"]] and second[1]["n_keep"] < 64  # the pruned model only
    assert second[0]["tasks"] == first[0]["tasks"] and second[0]["reused"].startswith(str(tmp_path / "eval-cache"))
    assert any(m.startswith("dense: reusing its results of") for m in logs)
    run_compare(config, tmp_path / "c", store=store, eval_cache=None, log=lambda m: None)
    assert evaluated[1] == 64  # without the cache the dense model is evaluated again


# --------------------------------------------------------------------------------------------
# Repeats, write order, output folders, early validation, the dtype in the fingerprint
# --------------------------------------------------------------------------------------------
@pytest.fixture
def no_model_load(monkeypatch):
    """Fail the test if run_compare gets as far as loading a model."""
    import diet_explore.models.loading as models

    def refuse(*a, **k):
        raise AssertionError("the model was loaded before the settings were checked")

    monkeypatch.setattr(models, "load_model", refuse)


def test_repeated_sparsities_and_methods_run_once(setup, tmp_path):
    root, config, model, tok, store, rows, logs = setup
    again = CompareConfig.from_dict({**config.to_dict(), "sparsities": [0.25, 0.25, 0.250, 0.5], "methods": ["random", "random"]})
    assert again.sparsities == [0.25, 0.5] and again.methods == ["random"]
    again.sparsities = [0.25, 0.25]  # set after validation: the grid itself still runs each key once
    assert sweep_grid(again) == [("random", 0.25)]
    runs = RunStore(tmp_path / "runs")
    got = run_compare(again, tmp_path / "out", model, tok, runs, log=lambda m: None)
    assert [r["key"] for r in got] == ["dense", "random@0.25"] and len(runs.records()) == 1


class _UncheckedStore(RunStore):
    def check(self, what: str = "run store") -> None:  # lets the sweep start, so saving fails mid-run
        pass


def test_a_failing_run_store_keeps_the_result_and_the_next_run_stores_it(setup, tmp_path):
    root, config, model, tok, store, rows, logs = setup
    one = CompareConfig.from_dict({**config.to_dict(), "methods": ["random"]})
    (tmp_path / "afile").write_text("")
    broken = _UncheckedStore(tmp_path / "afile" / "runs")  # under a regular file: every save fails
    with pytest.raises(DietError, match=r"random@0.25 is saved in .*results.jsonl but not in the run store") as err:
        run_compare(one, tmp_path / "out", model, tok, broken, log=lambda m: None)
    assert "re-run" in err.value.hint
    kept = read_results(tmp_path / "out")
    assert [r["key"] for r in kept] == ["dense", "random@0.25"] and kept[1]["run_id"]
    fixed, logs2 = RunStore(tmp_path / "runs"), []
    got = run_compare(one, tmp_path / "out", model, tok, fixed, log=logs2.append)
    assert logs2[0].endswith("0 to go") and logs2[1].startswith("wrote 1 run-store record(s)")
    assert [r["run_id"] for r in fixed.records()] == [kept[1]["run_id"]]
    assert got[1]["tasks"] == kept[1]["tasks"]  # stored, not evaluated again
    run_compare(one, tmp_path / "out", model, tok, fixed, log=lambda m: None)
    assert len(fixed.records()) == 1  # the id was fixed before: a retry never adds a second record


def test_bad_out_and_runs_folders_are_refused_before_anything_runs(setup, tmp_path, no_model_load):
    root, config, model, tok, store, rows, logs = setup
    (tmp_path / "afile").write_text("keep me")
    with pytest.raises(DietError, match=r"--out .*afile is not a folder") as err:
        run_compare(config, tmp_path / "afile", store=RunStore(tmp_path / "runs"))
    assert "--out" in err.value.hint and (tmp_path / "afile").read_text() == "keep me"
    with pytest.raises(DietError, match=r"--out .*afile/out cannot be created: .*afile is not a folder"):
        run_compare(config, tmp_path / "afile" / "out", store=RunStore(tmp_path / "runs"))
    with pytest.raises(DietError, match=r"--runs .*afile/runs cannot be created"):
        run_compare(config, tmp_path / "out", store=RunStore(tmp_path / "afile" / "runs"))
    assert not (tmp_path / "out").exists() and not (tmp_path / "runs").exists()


def test_the_cli_reports_a_bad_out_as_one_line(setup, tmp_path, capsys, no_model_load):
    from diet_explore.cli import main

    root, config, *_ = setup
    (tmp_path / "afile").write_text("")
    code = main(
        [
            "compare",
            "--cache",
            config.cache,
            "--out",
            str(tmp_path / "afile"),
            "--runs",
            str(tmp_path / "runs"),
            "--sparsity",
            "0.1,0.10",
            "--methods",
            "random,random",
        ]
    )
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: --out ") and "hint:" in err and "Traceback" not in err


@pytest.mark.parametrize(
    "change, match",
    [
        ({"limit": 0}, "limit must be at least 1"),
        ({"tasks": "bogus"}, "unknown task"),
        # refused after the dense evaluation, with config.json written: the corrected run was then refused too
        ({"multiple_of": 10**4}, "--multiple-of 10000 exceeds the hidden size"),
    ],
)
def test_bad_settings_fail_before_the_model_loads_and_leave_no_files(setup, tmp_path, no_model_load, change, match):
    root, config, *_ = setup
    bad = CompareConfig.from_dict({**config.to_dict(), **change})
    with pytest.raises(DietError, match=match):
        run_compare(bad, tmp_path / "out", store=RunStore(tmp_path / "runs"))
    assert not (tmp_path / "out").exists()


def test_the_fingerprint_holds_the_resolved_dtype():
    cpu, cuda = CompareConfig(device="cpu"), CompareConfig(device="cuda")  # no GPU needed: nothing is loaded
    assert (cpu.resolved_dtype(), cuda.resolved_dtype()) == ("float32", "bfloat16")
    assert cpu.fingerprint("h") != cuda.fingerprint("h")  # fp32 and bf16 results never share a results file
    assert CompareConfig(device="cpu", dtype="bfloat16").fingerprint("h") == cuda.fingerprint("h")


def test_results_of_other_settings_are_refused_before_the_model_loads(setup, tmp_path, no_model_load):
    root, config, *_ = setup
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "results.jsonl").write_text(json.dumps({"key": "dense", "fingerprint": "older"}) + "\n")
    with pytest.raises(DietError, match="holds results made with other settings"):
        run_compare(config, tmp_path / "out", store=RunStore(tmp_path / "runs"))


def test_a_resume_with_other_settings_names_the_ones_that_differ(setup, tmp_path, no_model_load):
    root, config, *_ = setup
    out = tmp_path / "out"
    out.mkdir()
    (out / "results.jsonl").write_text(json.dumps({"key": "dense", "fingerprint": "earlier"}) + "\n")
    (out / "config.json").write_text(config.to_json())  # the settings the earlier run wrote
    changed = CompareConfig.from_dict({**config.to_dict(), "limit": 4, "perplexity": True, "methods": ["random"]})
    with pytest.raises(DietError) as exc:
        run_compare(changed, out, store=RunStore(tmp_path / "runs"))
    message = exc.value.message
    assert "a different --limit (3; this run: 4) and --no-perplexity (given; this run: not given)" in message
    assert "--methods" not in message  # the grid is resumable: other methods are no other settings
    assert "resume with the earlier settings" in exc.value.hint
