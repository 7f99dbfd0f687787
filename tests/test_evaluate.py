"""Quick evaluation: held-out examples, lm-eval's metrics, paired deltas, the lm_eval command."""

from __future__ import annotations

import json
import math
import re
import shlex
from pathlib import Path

import numpy as np
import pytest
from app_helpers import shell_argv
from test_scoring import WordTokenizer

from diet_explore.core.config import command_lines
from diet_explore.core.errors import DietError
from diet_explore.evaluation.evaluate import EvalConfig, eval_requests, evaluate_model, evaluate_pair
from diet_explore.evaluation.metrics import mean_stderr, paired_proportion_delta
from diet_explore.models.adapters.tiny import tiny_model
from diet_explore.pruning.slicing import prune_model
from diet_explore.tasks import data
from diet_explore.tasks.lmeval_commands import lm_eval_command
from diet_explore.tasks.registry import resolve_tasks

REPO = Path(__file__).resolve().parents[1]


def _cache_recording(tmp_path, sample_ids: dict[str, list[int]]):
    """A score cache folder (the committed SmolLM2 manifest) whose tasks record ``sample_ids``."""
    manifest = json.loads((REPO / "cache" / "smollm2-135m" / "manifest.json").read_text())
    for t, ids in sample_ids.items():
        manifest["tasks"][t].update(sample_ids=ids, n_samples=len(ids), token_counts=[1] * len(ids))
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    return tmp_path


def test_evaluation_examples_avoid_the_calibration_draw_and_a_caches_recorded_ids(tmp_path):
    first = eval_requests(EvalConfig(limit=20))
    excluded = {t: [r.doc_id for r in reqs[:5]] for t, reqs in first.items()}
    again = eval_requests(EvalConfig(limit=20, exclude_cache=str(_cache_recording(tmp_path, excluded))))
    assert list(again) == [s.name for s in resolve_tasks("all")] and len(again) == 7
    for spec in resolve_tasks("all"):
        ids = [r.doc_id for r in again[spec.name]]
        assert len(ids) == len(set(ids)) == 20
        assert not set(ids) & set(data.calibration_ids(spec, 100))  # the default profile's draw
        assert not set(ids) & set(excluded[spec.name])  # the cache's recorded ids
        assert ids[:15] == [r.doc_id for r in first[spec.name]][5:]  # the same walk, the 5 excluded skipped


def test_metrics_are_lm_evals():
    assert mean_stderr(np.array([1, 0, 1, 1])) == pytest.approx(0.25)  # std(ddof=1) = 0.5, / sqrt(4)
    m, lo, hi = paired_proportion_delta(np.array([1, 1, 0, 0]), np.array([1, 0, 1, 1]))  # d = [0, -1, 1, 1]
    assert m == pytest.approx(0.25) and -1 <= lo < m < hi <= 1  # Newcombe's interval (tests/test_paired_metrics.py)


def test_dense_vs_pruned_on_the_same_examples():
    dense = tiny_model("qwen2")
    keep = np.ones(64, dtype=bool)
    keep[::3] = False
    pruned = prune_model(dense, keep)
    seen = []
    config = EvalConfig(tasks="rte,winogrande,arc_easy", limit=3, ppl_windows=2)
    pair = evaluate_pair(dense, pruned, WordTokenizer(), config, progress=lambda f, m: seen.append(f))
    assert seen == sorted(seen) and seen[-1] == 1.0 and len(seen) >= 4
    frame = pair.to_frame()
    assert list(frame.index) == ["rte", "winogrande", "arc_easy", "average"]
    assert (frame.loc[["rte", "winogrande", "arc_easy"], "n"] == 3).all()
    for t in ("rte", "winogrande", "arc_easy"):
        d, p = frame.loc[t, "dense_acc"], frame.loc[t, "pruned_acc"]
        assert frame.loc[t, "delta_acc"] == pytest.approx(p - d)
        assert frame.loc[t, "delta_acc_ci_low"] <= p - d <= frame.loc[t, "delta_acc_ci_high"]
    assert math.isnan(frame.loc["winogrande", "dense_acc_norm"])  # undefined for partial scoring, as lm-eval
    assert frame.loc["arc_easy", "metric"] == "acc_norm" and frame.loc["rte", "metric"] == "acc"
    assert frame.loc["average", "delta_main"] == pytest.approx(
        np.mean([frame.loc[t, "delta_main"] for t in ("rte", "winogrande", "arc_easy")])
    )
    preds = pair.dense.predictions
    assert len(preds) == 9 and {p["task"] for p in preds} == {"rte", "winogrande", "arc_easy"}
    for p in preds:
        assert p["pred"] == int(np.argmax(p["lls"])) and p["correct"] == int(p["pred"] == p["gold"])
    assert [p["doc_id"] for p in preds] == [p["doc_id"] for p in pair.pruned.predictions]
    assert pair.dense.perplexity > 1 and pair.pruned.perplexity > 1
    assert pair.dense.perplexity != pytest.approx(pair.pruned.perplexity)
    json.dumps(pair.to_json_dict())  # serialisable as is


def test_a_model_against_itself_has_zero_delta_and_an_interval_that_admits_4_examples_are_few():
    model = tiny_model("llama")
    config = EvalConfig(tasks="rte", limit=4, perplexity=False)
    dense = evaluate_model(model, WordTokenizer(), config)
    pair = evaluate_pair(model, model, WordTokenizer(), config, dense_result=dense)
    assert pair.dense is dense
    m, lo, hi = pair.average_delta()
    assert m == 0.0 and -1 <= lo < 0 < hi <= 1  # never [0, 0] from 4 examples
    assert pair.to_frame().loc["rte", "pruned_acc"] == dense.tasks["rte"].correct.mean()
    deltas = pair.to_json_dict()["deltas"]
    assert deltas["rte"]["agreement"]["delta"] == 1.0 and deltas["rte"]["choice_kl"]["delta"] == 0.0
    assert deltas["rte"]["gold_ll_per_char"]["ci_low"] is None and "too few examples" in deltas["rte"]["gold_ll_per_char"]["note"]


@pytest.mark.parametrize(
    "command",
    [
        lm_eval_command("/tmp/my models/x", "lmeval-tasks", ["diet_rte", "diet_boolq"], limit=5),
        "diet-explore mask --cache 'cache/my cache' --weights boolq=2,rte=0 --out out.json",
        "prog",
    ],
)
def test_command_lines_run_as_the_one_line(command):
    """The Export page shows a long command one flag per line; pasted into bash, it is the same argv."""
    shown = command_lines(command)
    assert shell_argv(shown) == shlex.split(command)
    assert all(line.lstrip().startswith("--") for line in shown.splitlines()[1:])


def test_a_masks_recorded_calibration_examples_are_left_out(tmp_path):
    """A profile with another seed or more samples than the default draw: the mask file in a
    pruned folder says which examples it saw, and the held-out draw skips them."""
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.masking.maskfile import mask_file_from_result, save_mask
    from diet_explore.profiling.synthetic import synthetic_cache

    first = eval_requests(EvalConfig(tasks="rte,boolq", limit=20))
    seen = {t: [r.doc_id for r in reqs[::2]] for t, reqs in first.items()}
    cache = synthetic_cache(hidden_size=64, num_layers=2, tasks=("rte", "boolq"), n_samples=3, seed=1)
    mask_file = mask_file_from_result(build_mask(cache, MaskConfig(sparsity=0.25)), cache)
    assert set(mask_file.calibration_ids) == {"rte", "boolq"}
    mask_file.calibration_ids = seen
    path = save_mask(mask_file, tmp_path / "diet_mask.json")
    again = eval_requests(EvalConfig(tasks="rte,boolq", limit=20, exclude_masks=[str(path)]))
    for t in ("rte", "boolq"):
        ids = [r.doc_id for r in again[t]]
        assert len(ids) == 20 and not set(ids) & set(seen[t])
        assert ids[:10] == [r.doc_id for r in first[t][1::2]]  # the same walk, the recorded ids skipped


def test_a_corrupt_cache_manifest_is_a_clear_error(tmp_path):
    (tmp_path / "manifest.json").write_text("{not json")
    with pytest.raises(DietError, match="manifest.json is not valid JSON"):
        eval_requests(EvalConfig(tasks="rte", limit=2, exclude_cache=str(tmp_path)))


def test_a_reused_dense_result_from_other_examples_is_refused():
    model = tiny_model("llama")
    dense = evaluate_model(model, WordTokenizer(), EvalConfig(tasks="rte", limit=4, perplexity=False, seed=1))
    with pytest.raises(DietError, match="computed on other examples"):
        evaluate_pair(
            model, model, WordTokenizer(), EvalConfig(tasks="rte", limit=4, perplexity=False, seed=2), dense_result=dense
        )


def test_too_many_perplexity_windows_fail_before_any_scoring(monkeypatch):
    def no_scoring(*a, **k):
        raise AssertionError("scored before checking the perplexity windows")

    monkeypatch.setattr("diet_explore.evaluation.evaluate.LoglikelihoodScorer.score", no_scoring)
    # below the bound checked before a model loads (bytes / 128), above this tokenizer's own count
    with pytest.raises(DietError, match="held-out windows; 8000 asked for") as exc:
        evaluate_model(tiny_model("llama"), WordTokenizer(), EvalConfig(tasks="rte", limit=2, ppl_windows=8000))
    limit = int(re.search(r"wiki text has (\d+) held-out", exc.value.message).group(1))
    assert f"use --ppl-windows {limit} or fewer" in exc.value.hint  # was "ask for fewer"


def test_eval_config_round_trips_and_refuses_bad_values():
    config = EvalConfig(tasks=["rte"], limit=7, perplexity=False)
    assert EvalConfig.from_json(config.to_json()) == config
    with pytest.raises(DietError, match="limit must be at least 1"):
        EvalConfig(limit=0)
    with pytest.raises(DietError, match="unknown EvalConfig field"):
        EvalConfig.from_dict({"limt": 3})


def test_cli_eval_refuses_outputs_it_could_not_write_before_any_model_loads(tmp_path, monkeypatch, capsys):
    from diet_explore.cli import main

    def no_load(*a, **k):
        raise AssertionError("loaded a model before checking the output paths")

    monkeypatch.setattr("diet_explore.models.loading.load_model", no_load)
    monkeypatch.setattr("diet_explore.models.loading.load_config", no_load)
    (tmp_path / "file").write_text("")
    for flag, value, message in [
        ("--predictions", tmp_path, f"--predictions {tmp_path} is a folder"),
        ("--json", tmp_path / "file" / "x.json", f"cannot be created: {tmp_path / 'file'} is not a folder"),
    ]:
        rc = main(["eval", "--model", "smollm2-135m", "--tasks", "rte", "--limit", "2", flag, str(value)])
        assert rc == 2 and message in capsys.readouterr().err


@pytest.mark.parametrize("recorded", [True, False])
def test_cli_eval_of_a_pruned_folder_leaves_out_its_masks_calibration_examples(tmp_path, monkeypatch, capsys, recorded):
    from diet_explore.cli import main
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.masking.maskfile import mask_file_from_result, save_mask
    from diet_explore.profiling.synthetic import synthetic_cache
    from diet_explore.pruning.saving import MASK_FILE

    cache = synthetic_cache(hidden_size=64, num_layers=2, tasks=("rte",), n_samples=3, seed=1)
    mask_file = mask_file_from_result(build_mask(cache, MaskConfig(sparsity=0.25)), cache)
    if not recorded:
        mask_file.calibration_ids = None  # a mask written by an older diet-explore
    folder = tmp_path / "pruned"
    save_mask(mask_file, folder / MASK_FILE)
    seen = {}

    def stop(config):
        seen["config"] = config
        raise DietError("stopped after the examples were chosen")

    monkeypatch.setattr("diet_explore.evaluation.evaluate.eval_requests", stop)
    assert main(["eval", "--model", str(folder), "--compare-to", "smollm2-135m", "--tasks", "rte", "--limit", "2"]) == 2
    assert seen["config"].exclude_masks == [str(folder / MASK_FILE)]
    err = capsys.readouterr().err
    assert ("does not record its calibration examples" in err) is not recorded
