"""Hostile command lines from the hardening run (#17): each gets one clear line and exit code 2,
before any work is done or any file is written; never a traceback."""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest

from diet_explore.cli import main
from diet_explore.masking.build import MaskConfig, build_mask, mask_overlap
from diet_explore.masking.maskfile import mask_file_from_result, save_mask
from diet_explore.profiling.cache import BASELINES_FILE, load_cache

LONG = "n" * 300  # one name over the 255-byte limit


def _run(argv, capsys) -> str:
    rc = main(argv)
    err = capsys.readouterr().err
    assert rc == 2, (argv, err)
    assert err.startswith("error: ") and "Traceback" not in err
    return err


@pytest.fixture
def mask_path(synthetic_cache_dir, tmp_path):
    cache = load_cache(synthetic_cache_dir)
    return save_mask(mask_file_from_result(build_mask(cache, MaskConfig()), cache), tmp_path / "mask.json")


# -------------------------------------------------------------------------------- negative seeds
@pytest.mark.parametrize(
    "command",
    [
        ["mask", "--method", "random", "--seed", "-1", "--out", "{tmp}/m.json"],
        ["stability", "--seed", "-1", "--resamples", "5"],
    ],
)
def test_a_negative_mask_seed_is_refused(synthetic_cache_dir, tmp_path, capsys, command):
    argv = [a.format(tmp=tmp_path) for a in command[:1]] + ["--cache", str(synthetic_cache_dir)]
    argv += [a.format(tmp=tmp_path) for a in command[1:]]
    assert "--seed must be a whole number ≥ 0, got -1" in _run(argv, capsys)
    assert not (tmp_path / "m.json").exists()


def test_eval_with_a_negative_seed_is_refused_before_a_model_loads(tmp_path, capsys):
    err = _run(["eval", "--model", str(tmp_path / "no-model"), "--seed", "-1"], capsys)
    assert "--seed must be a whole number ≥ 0, got -1" in err


def test_compare_with_a_negative_seed_writes_nothing(synthetic_cache_dir, tmp_path, capsys):
    out = tmp_path / "out"
    for flag in ("--mask-seed", "--seed"):
        argv = ["compare", "--cache", str(synthetic_cache_dir), "--out", str(out), "--runs", str(tmp_path / "runs"), flag, "-1"]
        assert f"{flag} must be a whole number ≥ 0, got -1" in _run(argv, capsys)
        assert not out.exists()  # config.json and results.jsonl were written before the seed failed


# -------------------------------------------------------------------------------- names over 255 bytes
@pytest.mark.parametrize(
    "command, what",
    [
        (["mask", "--cache", "{cache}", "--out", "{tmp}/{long}.json"], "--out"),
        (["mask", "--cache", "{tmp}/{long}", "--out", "{tmp}/m.json"], "cache folder"),
        (["agreement", "--cache", "{tmp}/{long}"], "cache folder"),
        (["prune", "--mask", "{mask}", "--out", "{tmp}/{long}"], "output folder"),
        (["prune", "--mask", "{tmp}/{long}.json", "--out", "{tmp}/pruned"], "mask file"),
        (["profile", "--tasks", "rte", "--samples", "2", "--out", "{tmp}/{long}"], "--out"),
        (["eval", "--model", "{tmp}/{long}"], "--model"),
        (["eval", "--model", "{tmp}/no-model", "--cache", "{tmp}/{long}"], "cache folder"),
        (["eval", "--model", "{tmp}/no-model", "--predictions", "{tmp}/{long}.jsonl"], "--predictions"),
        (["compare", "--cache", "{cache}", "--out", "{tmp}/{long}"], "--out"),
    ],
)
def test_a_name_over_255_bytes_is_one_clear_line(synthetic_cache_dir, mask_path, tmp_path, capsys, command, what):
    argv = [a.format(cache=synthetic_cache_dir, tmp=tmp_path, long=LONG, mask=mask_path) for a in command]
    err = _run(argv, capsys)
    assert f"error: {what} " in err and re.search(r"is 30[056] bytes long; a file or folder name is at most 255 bytes", err)
    assert LONG not in err  # the value is named, shortened, not pasted whole


def test_a_name_close_to_the_limit_still_writes(synthetic_cache_dir, tmp_path):
    """The temporary sibling of a 250-byte name would not fit in 255 bytes itself: it is shortened."""
    out = tmp_path / ("m" * 245 + ".json")
    assert main(["mask", "--cache", str(synthetic_cache_dir), "--npy", "--out", str(out)]) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([out.name, out.with_suffix(".npy").name])


# -------------------------------------------------------------------------------- damaged mask files
@pytest.mark.parametrize("field, value", [("kept_indices", [0, 1, 10**30]), ("hidden_size", 10**30)])
def test_a_mask_with_a_huge_number_is_refused(mask_path, tmp_path, capsys, field, value):
    data = json.loads(mask_path.read_text())
    data[field] = value
    mask_path.write_text(json.dumps(data))
    err = _run(["prune", "--model", str(tmp_path / "no-model"), "--mask", str(mask_path), "--out", str(tmp_path / "p")], capsys)
    assert str(10**30) in err and "rebuild" in err


@pytest.mark.parametrize(
    "field, value", [("tasks", 5), ("tasks", [[1]]), ("method", {"a": 1}), ("model_name", ["x"]), ("schema_version", True)]
)
def test_a_mask_with_a_wrongly_typed_field_is_refused_before_the_model_loads(mask_path, tmp_path, capsys, field, value):
    data = json.loads(mask_path.read_text())
    data[field] = value
    mask_path.write_text(json.dumps(data))
    err = _run(["prune", "--model", str(tmp_path / "no-model"), "--mask", str(mask_path), "--out", str(tmp_path / "p")], capsys)
    assert str(mask_path) in err and field in err and "rebuild the mask" in err and "no-model" not in err
    assert not (tmp_path / "p").exists()


# -------------------------------------------------------------------------------- resamples that cannot fit
def test_stability_refuses_resamples_that_cannot_fit_before_allocating(synthetic_cache_dir, capsys):
    err = _run(["stability", "--cache", str(synthetic_cache_dir), "--resamples", "100000000"], capsys)
    assert "100,000,000 resamples of 7 task(s) × 576 dims need about" in err and "GiB is free" in err
    assert "use at most" in err
    err = _run(["stability", "--cache", str(synthetic_cache_dir), "--resamples", "10", "--curve-resamples", "100000000"], capsys)
    assert "100,000,000 resamples" in err


# -------------------------------------------------------------------------------- smaller defects
def test_a_weight_on_a_task_that_does_not_vote_is_refused(app_cache_root, tmp_path, capsys):
    alpha = app_cache_root / "alpha"  # seven tasks and a generic wikitext set
    err = _run(["mask", "--cache", str(alpha), "--weights", "wikitext=3", "--out", str(tmp_path / "m.json")], capsys)
    assert "weight given for 'wikitext', generic text, which does not vote" in err
    err = _run(
        ["mask", "--cache", str(alpha), "--tasks", "boolq,rte", "--weights", "hellaswag=2", "--out", str(tmp_path / "m.json")],
        capsys,
    )
    assert "weight given for 'hellaswag', not among the voting tasks (boolq, rte)" in err
    assert main(["mask", "--cache", str(alpha), "--weights", "boolq=2,rte=0", "--out", str(tmp_path / "m.json")]) == 0
    # an unknown name: the hint lists what can carry a weight (it listed wikitext, which cannot)
    err = _run(["mask", "--cache", str(alpha), "--weights", "BoolQ=2", "--out", str(tmp_path / "m.json")], capsys)
    assert "weight given for unknown task 'BoolQ'" in err and "voting tasks: boolq" in err and "wikitext" not in err


@pytest.mark.parametrize(
    "argv, message",
    [
        (["--method", "union", "--threshold", "0.7"], "--threshold 0.7 does nothing with --method union: union keeps a dim any"),
        (["--method", "mean_score", "--threshold", "0.5"], "--threshold 0.5 does nothing with --method mean-score"),
        (["--method", "random", "--weights", "boolq=2"], "--weights boolq=2 does nothing with --method random: random has no"),
        (["--method", "magnitude", "--tasks", "boolq,rte"], "--tasks boolq,rte does nothing with --method magnitude"),
        (["--method", "random", "--site", "normed"], "--site normed does nothing with --method random: random reads no"),
        (["--method", "borda", "--exact"], "--exact does nothing with --method borda: borda always keeps exactly"),
    ],
)
def test_a_mask_flag_the_method_reads_nothing_of_is_refused(app_cache_root, tmp_path, capsys, argv, message):
    """--threshold with --method union, --weights with random: accepted and silently ignored, as --last-k was."""
    out = tmp_path / "m.json"
    err = _run(["mask", "--cache", str(app_cache_root / "alpha"), *argv, "--out", str(out)], capsys)
    assert message in err and not out.exists()
    assert (
        main(["mask", "--cache", str(app_cache_root / "alpha"), "--method", "diet", "--threshold", "0.7", "--out", str(out)]) == 0
    )


def test_a_mask_that_prunes_nothing_says_so_and_the_target_is_printed_as_given(app_cache_root, tmp_path, capsys):
    """--multiple-of 64 on a 64-dim cache kept every dim with no word; --sparsity 0.9999999 printed "target 1"."""
    alpha = str(app_cache_root / "alpha")
    hidden = load_cache(alpha).hidden_size
    assert main(["mask", "--cache", alpha, "--multiple-of", str(hidden), "--out", str(tmp_path / "m.json")]) == 0
    out, err = capsys.readouterr()
    assert f"kept {hidden} of {hidden}" in out and "note: nothing is pruned" in err
    assert main(["mask", "--cache", alpha, "--sparsity", "0.9999999", "--out", str(tmp_path / "n.json")]) == 0
    assert "(target 0.9999999)" in capsys.readouterr().out


def test_all_in_a_task_list_goes_alone_and_blanks_around_it_are_read_past(capsys):
    """eval --tasks rte,all and --tasks " all " said "unknown task(s): all"; profile --sites , "unknown site(s) []"."""
    from diet_explore.core.errors import DietError
    from diet_explore.tasks.registry import builtin_task_names, resolve_tasks

    assert [s.name for s in resolve_tasks([" all "])] == list(builtin_task_names())
    with pytest.raises(DietError, match="'all' is every task and goes alone"):
        resolve_tasks(["rte", "all"])
    err = _run(["eval", "--model", "smollm2-135m", "--tasks", "rte,all", "--limit", "2"], capsys)
    assert "'all' is every task and goes alone" in err
    err = _run(["profile", "--model", "smollm2-135m", "--tasks", "rte", "--sites", ",", "--out", "/tmp/never-written"], capsys)
    assert "no site given" in err


@pytest.mark.parametrize(
    "argv, flag",
    [
        (["models", "--install", ""], "--install"),
        (["agreement", "--cache", ""], "--cache"),
        (["jobs", "--runs", " "], "--runs"),
        (["mask", "--cache", "{cache}", "--tasks", "", "--out", "{tmp}/m.json"], "--tasks"),
        (["eval", "--model", "x", "--eval-cache", ""], "--eval-cache"),
    ],
)
def test_an_empty_value_is_refused_by_its_flag(synthetic_cache_dir, tmp_path, capsys, argv, flag):
    """An empty value was read as the current folder (--cache: "manifest.json is missing: ."), as
    every task, or as nothing (models --install '' listed the models)."""
    argv = [a.format(cache=synthetic_cache_dir, tmp=tmp_path) for a in argv]
    assert f"error: {flag} is empty" in _run(argv, capsys)
    assert not (tmp_path / "m.json").exists()


def test_mask_out_replaces_a_mask_but_never_an_unrelated_file(synthetic_cache_dir, tmp_path, capsys):
    other = tmp_path / "notes.txt"
    other.write_text("mine")
    argv = ["mask", "--cache", str(synthetic_cache_dir), "--out", str(other)]
    assert f"--out {other} exists and is not a diet-explore mask file" in _run(argv, capsys)
    assert other.read_text() == "mine"
    mask = tmp_path / "m.json"
    argv = ["mask", "--cache", str(synthetic_cache_dir), "--out", str(mask), "--npy"]
    assert main(argv) == 0 and main(argv + ["--sparsity", "0.3"]) == 0  # a re-run replaces its own mask and .npy
    assert json.loads(mask.read_text())["config"]["sparsity"] == 0.3
    (tmp_path / "n.npy").write_text("mine")
    err = _run(["mask", "--cache", str(synthetic_cache_dir), "--out", str(tmp_path / "n.json"), "--npy"], capsys)
    assert "--npy output" in err and "exists and is not a .npy file" in err
    assert (tmp_path / "n.npy").read_text() == "mine" and not (tmp_path / "n.json").exists()


def test_minus_zero_and_non_ascii_digits(synthetic_cache_dir, capsys):
    assert main(["agreement", "--cache", str(synthetic_cache_dir), "--sparsity", "-0"]) == 0
    assert "at sparsity 0:" in capsys.readouterr().out  # was "at sparsity -0"
    err = _run(["dim", "--cache", str(synthetic_cache_dir), "--dim", "\u0665"], capsys)  # ARABIC-INDIC DIGIT FIVE
    assert "dimension '\u0665' is not an index in 0..575" in err


def test_models_overwrite_without_install_is_refused(capsys):
    assert "--overwrite re-converts the model --install names, and none is named" in _run(["models", "--overwrite"], capsys)


def test_generic_text_listed_as_a_voting_task_is_refused_like_its_weight(app_cache_root, tmp_path, capsys):
    alpha = app_cache_root / "alpha"
    for tasks in ("wikitext,boolq", "wikitext"):
        err = _run(["mask", "--cache", str(alpha), "--tasks", tasks, "--out", str(tmp_path / "m.json")], capsys)
        assert "task 'wikitext' is generic text, which does not vote" in err
    assert "generic text" in _run(["stability", "--cache", str(alpha), "--tasks", "wikitext", "--resamples", "5"], capsys)
    assert not (tmp_path / "m.json").exists()


def test_weights_too_large_to_add_up_are_named(synthetic_cache_dir, tmp_path, capsys):
    argv = ["mask", "--cache", str(synthetic_cache_dir), "--weights", "boolq=1e308,rte=1e308", "--out", str(tmp_path / "m.json")]
    err = _run(argv, capsys)  # was: numpy overflow warnings, then "keeps no dimension: lower the sparsity"
    assert "the task weights are too large to add up (e.g. boolq=1e+308)" in err and "warning" not in err
    assert main(argv[:-4] + ["--weights", "boolq=1e300,rte=1e300", "--out", str(tmp_path / "m.json")]) == 0


@pytest.mark.parametrize("command", [["dim", "--dim", "5"], ["mask", "--out", "{tmp}/m.json"], ["agreement"]])
def test_last_k_beyond_the_layer_count_is_refused(synthetic_cache_dir, tmp_path, capsys, command):
    argv = [command[0], "--cache", str(synthetic_cache_dir)] + [a.format(tmp=tmp_path) for a in command[1:]]
    err = _run(argv + ["--layer-agg", "last_k", "--last-k", "999"], capsys)  # was "the mean of the last 999 layers"
    assert "--last-k must be 1 to the 30 layers this cache has, got 999" in err
    assert main(argv + ["--layer-agg", "last_k", "--last-k", "30"]) == 0


def test_stability_counts_that_name_nothing(synthetic_cache_dir, capsys):
    assert "--counts is empty" in _run(["stability", "--cache", str(synthetic_cache_dir), "--counts", ""], capsys)
    assert "names no sample count" in _run(["stability", "--cache", str(synthetic_cache_dir), "--counts", ","], capsys)
    argv = ["stability", "--cache", str(synthetic_cache_dir), "--resamples", "5", "--counts", "500", "--curve-resamples", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "Empty DataFrame" not in out and "no point: every --counts value was skipped" in out
    assert "note: skipped n=500: the tasks have 40 samples" in out


@pytest.mark.parametrize("values", [{"weight_magnitude": np.float32("nan")}, {"weight_magnitude": None}])
def test_baselines_with_nan_or_non_float_arrays_are_refused(synthetic_cache_dir, tmp_path, values):
    from safetensors.numpy import save as st_save

    from diet_explore.core.errors import DietError

    folder = tmp_path / "cache"
    shutil.copytree(synthetic_cache_dir, folder)
    cache = load_cache(folder)
    arr = np.array(cache.baselines["weight_magnitude"])
    if values["weight_magnitude"] is None:
        arr = arr.astype(np.int64)  # a whole-number array: the profile writes float32
    else:
        arr[:5] = np.nan
    manifest = json.loads((folder / "manifest.json").read_text())
    blob = st_save({"weight_magnitude": arr})
    (folder / BASELINES_FILE).write_bytes(blob)
    import hashlib

    manifest["baselines"]["sha256"] = hashlib.sha256(blob).hexdigest()
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(DietError, match="weight_magnitude (contains NaN|has shape .*int64)"):
        load_cache(folder)


def test_the_magnitude_mask_of_a_valid_cache_keeps_the_largest_weights(synthetic_cache_dir):
    cache = load_cache(synthetic_cache_dir)
    res = build_mask(cache, MaskConfig(method="magnitude", sparsity=0.25))
    order = np.argsort(-cache.baselines["weight_magnitude"], kind="stable")
    assert mask_overlap(res.keep, np.isin(np.arange(576), order[: res.n_keep]))["n_diff"] == 0


def test_eval_cache_that_is_a_file_is_refused_before_the_evaluation(tiny_cache_root, tmp_path, capsys):
    model = tiny_cache_root.parent / "models" / "tiny-llama"
    (tmp_path / "afile").write_text("")
    argv = ["eval", "--model", str(model), "--tasks", "rte", "--limit", "1", "--no-perplexity", "--device", "cpu"]
    rc = main([*argv, "--eval-cache", str(tmp_path / "afile")])
    out, err = capsys.readouterr()
    assert rc == 2 and "--eval-cache" in err and "is not a folder" in err
    assert "evaluating" not in out  # refused before the model loaded, not after its evaluation


def test_repeated_eval_tasks_are_evaluated_and_named_once(tiny_cache_root, capsys):
    model = tiny_cache_root.parent / "models" / "tiny-llama"
    argv = ["eval", "--model", str(model), "--tasks", "rte,rte", "--limit", "1", "--no-perplexity", "--device", "cpu"]
    assert main([*argv, "--no-eval-cache"]) == 0
    out = capsys.readouterr().out
    assert "--tasks diet_rte --batch_size" in out and "rte,rte" not in out  # the lm_eval hand-off names it once too
    assert sum(line.startswith("rte ") for line in out.splitlines()) == 1


# -------------------------------------------------------------------------------- second hostile run
DEEP = "[" * 100_000 + "]" * 100_000  # valid JSON that Python's parser cannot descend into


def test_json_nested_too_deeply_is_one_clear_line_everywhere_it_is_read(synthetic_cache_dir, tmp_path, capsys):
    deep = tmp_path / "deep.json"
    deep.write_text(DEEP)
    err = _run(["prune", "--mask", str(deep), "--out", str(tmp_path / "p")], capsys)
    assert "nested too deeply" in err and str(deep) in err
    assert "nested too deeply" in _run(["tasks", "--task-file", str(deep)], capsys)
    cache = tmp_path / "cache"
    shutil.copytree(synthetic_cache_dir, cache)
    (cache / "manifest.json").write_text(DEEP)
    assert "nested too deeply" in _run(["mask", "--cache", str(cache), "--out", str(tmp_path / "m.json")], capsys)


def test_a_task_file_that_is_a_fifo_or_a_folder_is_refused_without_reading(tmp_path, capsys):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # reading it would block for ever
    assert f"task file {fifo} is not a regular file" in _run(["tasks", "--task-file", str(fifo)], capsys)
    assert "is not a regular file" in _run(["tasks", "--task-file", str(tmp_path)], capsys)
    assert "does not exist" in _run(["tasks", "--task-file", str(tmp_path / "none.json")], capsys)


def test_mask_npy_target_refused_before_the_json_is_written(synthetic_cache_dir, tmp_path, capsys):
    import os

    out = tmp_path / "m.json"
    assert main(["mask", "--cache", str(synthetic_cache_dir), "--sparsity", "0.3", "--out", str(out)]) == 0
    original = out.read_text()  # an earlier mask, which a re-run may replace
    os.mkfifo(tmp_path / "m.npy")
    err = _run(["mask", "--cache", str(synthetic_cache_dir), "--npy", "--out", str(out)], capsys)
    assert "--npy output" in err and "FIFO" in err
    assert out.read_text() == original


def test_eval_outputs_inside_a_folder_it_reads_are_refused(synthetic_cache_dir, tmp_path, capsys):
    """--json <cache>/manifest.json replaced the score cache's manifest (exit 0); --predictions
    <model>/config.json the model's config. Both are refused before anything loads."""
    manifest = synthetic_cache_dir / "manifest.json"
    before = manifest.read_text()
    err = _run(["eval", "--model", "smollm2-135m", "--cache", str(synthetic_cache_dir), "--json", str(manifest)], capsys)
    assert "--json" in err and "is inside the --cache folder" in err and manifest.read_text() == before
    model = tmp_path / "model"
    model.mkdir()
    (model / "config.json").write_text("{}")
    err = _run(["eval", "--model", str(model), "--predictions", str(model / "config.json")], capsys)
    assert "is inside the --model folder" in err and (model / "config.json").read_text() == "{}"


def test_mask_npy_that_links_to_the_json_is_refused(synthetic_cache_dir, tmp_path, capsys):
    """s.npy -> s.json: --npy wrote the array through the link over the mask JSON, and said it wrote both."""
    (tmp_path / "s.npy").symlink_to("s.json")
    err = _run(["mask", "--cache", str(synthetic_cache_dir), "--npy", "--out", str(tmp_path / "s.json")], capsys)
    assert "leads to --out" in err and "symlink" in err
    assert not (tmp_path / "s.json").exists()


def test_a_file_system_that_refuses_writes_despite_its_permission_bits(synthetic_cache_dir, tmp_path, capsys, monkeypatch):
    """As root on /sys, os.access says writable and the write fails: the check now writes a probe
    file, so the refusal comes first, as one line; a write that fails later is one line too."""
    import tempfile

    from diet_explore.core import atomic

    real_mkstemp = tempfile.mkstemp
    refused = tmp_path / "sysfs"
    refused.mkdir()

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == refused:
            raise PermissionError(13, "Permission denied")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    err = _run(["mask", "--cache", str(synthetic_cache_dir), "--out", str(refused / "m.json")], capsys)
    assert f"--out {refused / 'm.json'} is not writable" in err and "Permission denied" in err
    with pytest.raises(atomic.DietError, match="could not be written .Permission denied"):
        atomic.write_text(refused / "x.txt", "x")
    assert list(refused.iterdir()) == []


def test_app_refuses_an_address_it_cannot_listen_on_before_starting_streamlit(capsys, monkeypatch):
    import os
    import socket

    def no_exec(*args):  # without the check the command would become the Streamlit server here
        raise AssertionError("streamlit was started")

    monkeypatch.setattr(os, "execve", no_exec)
    assert "--host not a host! is not an address" in _run(["app", "--host", "not a host!", "--port", "8611"], capsys)
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        err = _run(["app", "--host", "127.0.0.1", "--port", str(port)], capsys)
    assert f"cannot listen on 127.0.0.1:{port}" in err and f"--port {port + 1}" in err


def test_compare_refuses_a_folder_of_someone_elses_files(synthetic_cache_dir, tmp_path, capsys):
    from diet_explore.experiments.sweep import CompareConfig, check_sweep_folder

    mine = tmp_path / "mine"
    mine.mkdir()
    for name in ("table.md", "config.json", "notes.txt"):
        (mine / name).write_text("MY OWN")
    argv = ["compare", "--cache", str(synthetic_cache_dir), "--out", str(mine), "--runs", str(tmp_path / "runs")]
    assert "holds files that diet-explore compare did not write" in _run(argv, capsys)
    assert sorted(p.read_text() for p in mine.iterdir()) == ["MY OWN"] * 3
    killed = tmp_path / "killed"  # a sweep killed before its first result row: its config.json marks it
    killed.mkdir()
    (killed / "config.json").write_text(CompareConfig(cache=str(synthetic_cache_dir)).to_json())
    check_sweep_folder(killed)
    check_sweep_folder(tmp_path / "new")


def test_eval_predictions_and_json_on_one_file_are_refused_before_a_model_loads(tmp_path, capsys):
    same = tmp_path / "x.json"
    link = tmp_path / "link.json"
    link.symlink_to(same)
    for other in (same, link):  # the same file, also through a symlink
        argv = ["eval", "--model", str(tmp_path / "no-model"), "--predictions", str(same), "--json", str(other)]
        assert "--predictions and --json name the same file" in _run(argv, capsys)


@pytest.mark.parametrize(
    "command, message",
    [
        (["compare", "--multiple-of", "0", "--out", "{tmp}/o", "--runs", "{tmp}/r"], "--multiple-of must be at least 1, got 0"),
        (["agreement", "--top", "-1"], "--top must be 0 or more, got -1"),
        (["stability", "--counts", "0,-5", "--resamples", "5"], "a sample count must be at least 1, got -5"),
    ],
)
def test_numbers_that_mean_nothing_are_refused(synthetic_cache_dir, tmp_path, capsys, command, message):
    argv = [command[0], "--cache", str(synthetic_cache_dir)] + [a.format(tmp=tmp_path) for a in command[1:]]
    assert message in _run(argv, capsys)
    assert not (tmp_path / "o").exists()


def test_a_path_of_the_wrong_kind_is_named_as_such_not_as_missing(synthetic_cache_dir, tmp_path, capsys):
    import os

    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    a_file = tmp_path / "a.json"
    a_file.write_text("{}")
    err = _run(["prune", "--mask", str(tmp_path), "--out", str(tmp_path / "p")], capsys)
    assert f"mask file {tmp_path} is not a regular file" in err
    assert "is not a regular file" in _run(["prune", "--mask", str(fifo), "--out", str(tmp_path / "p")], capsys)
    assert f"cache folder {a_file} is not a folder" in _run(["agreement", "--cache", str(a_file)], capsys)
    assert f"--runs {a_file} is not a folder" in _run(["jobs", "--runs", str(a_file)], capsys)
    assert "--stop is empty" in _run(["jobs", "--runs", str(tmp_path), "--stop", ""], capsys)
    # a typo or an empty value is not an empty run store; listing one that is creates nothing in it
    assert f"--runs {tmp_path / 'typo'}: no such folder" in _run(["jobs", "--runs", str(tmp_path / "typo")], capsys)
    assert "--runs is empty" in _run(["jobs", "--runs", ""], capsys)
    (tmp_path / "empty").mkdir()
    assert main(["jobs", "--json", "--runs", str(tmp_path / "empty")]) == 0 and not any((tmp_path / "empty").iterdir())


def test_a_task_file_task_named_as_a_path_is_refused_before_the_model_loads_and_writes_nothing(tmp_path, capsys):
    """A task-file name is a cache file name: '../../victim/model' made profile replace a file outside --out."""
    victim = tmp_path / "victim" / "model.safetensors"
    victim.parent.mkdir()
    victim.write_bytes(b"PRECIOUS WEIGHTS")
    name = "../../victim/model"
    entry = {"dataset": {"path": str(tmp_path / "data")}, "text": "{s}", "choices": ["a", "b"], "gold": {"field": "y"}}
    task_file = tmp_path / "tasks.json"
    task_file.write_text(json.dumps({name: entry}))
    out = tmp_path / "run" / "cache"
    argv = ["profile", "--task-file", str(task_file), "--tasks", name, "--samples", "2", "--no-generic", "--out", str(out)]
    assert "is not a valid task name" in _run(argv, capsys)
    assert victim.read_bytes() == b"PRECIOUS WEIGHTS" and not out.exists()


@pytest.mark.parametrize("command", [["mask", "--sparsity", "0.2", "--out", "m.json"], ["stability", "--resamples", "2"]])
def test_a_cache_of_generic_text_alone_says_there_is_nothing_to_vote_on(tmp_path, capsys, command):
    from dataclasses import replace

    from diet_explore.profiling.cache import save_cache
    from diet_explore.profiling.synthetic import synthetic_cache

    cache = synthetic_cache(hidden_size=32, num_layers=2, tasks=("wikitext",), n_samples=4, seed=1)
    cache = replace(cache, tasks={"wikitext": replace(cache.tasks["wikitext"], kind="generic")})
    cache.manifest["tasks"]["wikitext"]["kind"] = "generic"
    root = save_cache(cache, tmp_path / "generic-only")
    err = _run(
        [command[0], "--cache", str(root), *[str(tmp_path / a) if a.endswith(".json") else a for a in command[1:]]], capsys
    )
    assert (
        "holds no evaluation task (only generic text: wikitext), so there is nothing to vote on" in err
    )  # was "every voting task () has weight 0"


# -------------------------------------------------------------------------------- Ctrl-C
RESUMES = "interrupted; finished work was saved and a re-run resumes from it\n"


@pytest.mark.parametrize(
    "argv, said",
    [
        (["prune", "--mask", "m.json", "--out", "p"], "interrupted\n"),  # a staged folder: nothing is kept
        (["mask", "--cache", "c", "--out", "m.json"], "interrupted\n"),
        (["eval", "--model", "m", "--no-eval-cache"], "interrupted\n"),
        (["app"], "interrupted\n"),
        (["jobs"], "interrupted\n"),  # a listing
        (["eval", "--model", "m"], RESUMES),  # each finished model is in the evaluation cache
        (["profile", "--out", "c"], RESUMES),
        (["compare", "--cache", "c", "--out", "o"], RESUMES),
        (["jobs", "--resume", "20260101T000000-deadbeef"], RESUMES),  # the job is recorded interrupted
    ],
)
def test_ctrl_c_says_a_re_run_resumes_only_for_a_command_that_does(monkeypatch, capsys, argv, said):
    def interrupted(args):
        raise KeyboardInterrupt

    monkeypatch.setattr(f"diet_explore.cli.{argv[0]}.run", interrupted)
    assert main(argv) == 130
    assert capsys.readouterr().err == said


# -------------------------------------------------------------------------------- third hostile run
@pytest.mark.parametrize(
    "flags, message, hint",
    [
        (["--tasks", ","], "--tasks names no task", "--tasks all"),
        (["--method", "single"], "--method single-task needs --single-task", "e.g. --single-task "),
        (["--method", "single-task", "--single-task", "wikitext"], "--single-task wikitext is generic text", "voting task"),
        (["--method", "leave_one_out"], "--method leave-one-out needs --held-out-task", "e.g. --held-out-task "),
        (["--layer-agg", "last_k", "--last-k", "0"], "--last-k must be at least 1, got 0", "--layer-agg last_k --last-k 4"),
        (["--multiple-of", "0"], "--multiple-of must be at least 1, got 0", "--multiple-of 1"),
    ],
)
def test_mask_messages_name_the_flags_and_the_fix(app_cache_root, tmp_path, capsys, flags, message, hint):
    err = _run(["mask", "--cache", str(app_cache_root / "alpha"), *flags, "--out", str(tmp_path / "m.json")], capsys)
    assert message in err and hint in err.split("hint:")[1]
    assert not re.search(r"\b(single_task|held_out_task|last_k|multiple_of|None)\b", err.replace("last_k --", ""))
    assert "wikitext" not in err.split("hint:")[1]  # generic text cannot vote, so it is never offered
    assert not (tmp_path / "m.json").exists()


@pytest.mark.parametrize(
    "flags, message, hint",
    [
        (["--limit", "0"], "--limit must be at least 1, got 0", "--limit 50"),
        (["--workers", "0"], "--workers must be at least 1, got 0", "--workers 2"),
        (["--batch-tokens", "0"], "--batch-tokens must be at least 64, got 0", "--batch-tokens 1024"),
        (["--ppl-windows", "-1"], "--ppl-windows must be at least 1, got -1", "--no-perplexity"),
        (["--ppl-windows", "100000000"], "--ppl-windows 100000000 is more than the wiki text holds", "--no-perplexity"),
    ],
)
def test_eval_numbers_name_their_flags_before_a_model_loads(tiny_cache_root, capsys, flags, message, hint):
    model = tiny_cache_root.parent / "models" / "tiny-llama"
    rc = main(["eval", "--model", str(model), "--tasks", "rte", "--no-eval-cache", "--device", "cpu", *flags])
    out, err = capsys.readouterr()
    assert rc == 2 and message in err and hint in err.split("hint:")[1], err
    assert err.startswith(f"error: {flags[0]}") and not re.search(r"batch_tokens|ppl_windows|perplexity off", err)
    assert "evaluating" not in out  # refused before the model loaded


def test_an_existing_folder_that_takes_no_files_is_not_called_missing(synthetic_cache_dir, tmp_path, capsys, monkeypatch):
    """/proc exists, but creating a file in it fails with ENOENT: the message said "(/proc: No such
    file or directory)", as if /proc were missing."""
    import tempfile

    real_mkstemp = tempfile.mkstemp
    special = tmp_path / "proc"
    special.mkdir()

    def mkstemp(*args, dir=None, **kwargs):
        if dir is not None and Path(dir) == special:
            raise FileNotFoundError(2, "No such file or directory")
        return real_mkstemp(*args, dir=dir, **kwargs)

    monkeypatch.setattr(tempfile, "mkstemp", mkstemp)
    for out in (special / "version", special / "new.json"):
        if out.name == "version":
            out.write_text("a kernel's file")
        err = _run(["mask", "--cache", str(synthetic_cache_dir), "--out", str(out)], capsys)
        assert f"--out {out} is not writable: the folder {special} exists but takes no new files" in err
        assert f"{special}: No such file" not in err and "special file system" in err


@pytest.mark.parametrize(
    "command",
    [
        ["mask", "--out", "{tmp}/{name}.json"],
        ["stability", "--resamples", "3", "--counts", "5"],
        ["agreement"],
        ["dim", "--dim", "5"],
    ],
)
def test_tasks_all_is_every_voting_task_of_the_cache_as_for_profile_and_eval(app_cache_root, tmp_path, capsys, command):
    """``--tasks all`` was "task 'all' is not in this cache" wherever --tasks selects cache tasks."""
    argv = [command[0], "--cache", str(app_cache_root / "alpha")] + command[1:]
    outputs = []
    for name, tasks in (("m1", ["--tasks", "all"]), ("m2", [])):
        assert main([a.format(tmp=tmp_path, name=name) for a in argv] + tasks) == 0
        outputs.append(capsys.readouterr().out.replace(f"{name}.json", "m.json"))
    assert outputs[0] == outputs[1]
    if command[0] == "mask":
        masks = [json.loads((tmp_path / f"{name}.json").read_text()) for name in ("m1", "m2")]
        assert masks[0]["kept_indices"] == masks[1]["kept_indices"] and masks[0]["config"] == masks[1]["config"]


FULL_WIDTH = str.maketrans("0123456789.", "０１２３４５６７８９．")


@pytest.mark.parametrize(
    "command",
    [
        ["mask", "--sparsity", "0.2", "--out", "{tmp}/m.json"],
        ["mask", "--weights", "boolq=1", "--out", "{tmp}/m.json"],
        ["mask", "--last-k", "4", "--layer-agg", "last_k", "--out", "{tmp}/m.json"],
        ["agreement", "--sparsity", "0.2"],
        ["dim", "--dim", "5"],
        ["stability", "--counts", "10", "--resamples", "3"],
        ["compare", "--sparsity", "0.2", "--out", "{tmp}/c", "--runs", "{tmp}/r"],
    ],
)
def test_numbers_in_other_scripts_digits_are_refused_everywhere(synthetic_cache_dir, tmp_path, capsys, command):
    """float() read "０.２" as 0.2 and "boolq=１" as 1 while --dim refused "５": every number is ASCII now."""
    argv = [command[0], "--cache", str(synthetic_cache_dir)] + [a.format(tmp=tmp_path) for a in command[1:]]
    argv[4] = argv[4].translate(FULL_WIDTH)  # the value of the first flag
    assert not argv[4].isascii()
    with pytest.raises(SystemExit) as exc:  # argparse: "argument --sparsity: '０.２' is not a number ..."
        raise SystemExit(main(argv))
    err = capsys.readouterr().err
    assert exc.value.code == 2 and "Traceback" not in err and "digits 0-9" in err, err
    assert not (tmp_path / "m.json").exists() and not (tmp_path / "c").exists()
    # one line and where the options are listed, as for any bad input (argparse printed its usage block first)
    lines = err.splitlines()
    assert len(lines) == 2 and "error: " in lines[0] and lines[1].startswith("  hint: ") and "usage:" not in err, err


def test_no_cli_option_reads_numbers_with_plain_int_or_float():
    """One rule: every number option goes through _common.int_arg / float_arg (ASCII digits)."""
    import argparse

    from diet_explore.cli import build_parser

    (commands,) = [a for a in build_parser()._actions if isinstance(a, argparse._SubParsersAction)]
    plain = [
        (name, max(a.option_strings, key=len))
        for name, sub in commands.choices.items()
        for a in sub._actions
        if a.type in (int, float)
    ]
    assert plain == []


def test_app_links_read_ascii_digits_only():
    from diet_explore_app import settings as S

    config, _, warnings = S.decode_query({"sparsity": "０.３", "last_k": "３"})
    assert config.sparsity == 0.2 and config.last_k == 4 and len(warnings) == 2


def test_tasks_with_a_bad_task_file_prints_no_table_header(tmp_path, capsys):
    assert main(["tasks", "--task-file", str(tmp_path / "none.json")]) == 2
    out, err = capsys.readouterr()
    assert out == "" and err.startswith("error: ") and "does not exist" in err


@pytest.mark.parametrize(
    "command, flags, message",
    [
        (
            ["mask", "--out", "{tmp}/m.json"],
            ["--last-k", "8"],
            "--last-k 8 applies only with --layer-agg last_k, but --layer-agg is mean",
        ),
        (
            ["agreement"],
            ["--last-k", "8", "--layer-agg", "max"],
            "--last-k 8 applies only with --layer-agg last_k, but --layer-agg is max",
        ),
        (
            ["mask", "--out", "{tmp}/m.json"],
            ["--single-task", "rte"],
            "--single-task rte applies only with --method single-task, but --method is diet",
        ),
        (
            ["stability"],
            ["--held-out-task", "rte", "--method", "single"],
            "--held-out-task rte applies only with --method leave-one-out",
        ),
    ],
)
def test_a_flag_that_would_be_ignored_is_refused(synthetic_cache_dir, tmp_path, capsys, command, flags, message):
    argv = [command[0], "--cache", str(synthetic_cache_dir)] + [a.format(tmp=tmp_path) for a in command[1:]]
    err = _run(argv + flags, capsys)
    assert message in err and "hint: add " in err and "or leave " in err
    assert not (tmp_path / "m.json").exists()
    assert main(argv + ["--layer-agg", "last_k", "--last-k", "8"]) == 0  # with the setting it needs it is read


def test_a_mask_command_leaves_out_settings_the_mask_does_not_use(synthetic_cache_dir, tmp_path):
    """The app keeps e.g. a last_k while the layer aggregation is mean: its printed command must still run."""
    import shlex

    from diet_explore.masking.maskfile import mask_command

    config = MaskConfig(last_k=8, single_task="rte", held_out_task="boolq", sparsity=0.3)
    command = mask_command(synthetic_cache_dir, config, tmp_path / "m.json")
    assert "--last-k" not in command and "--single-task" not in command and "--held-out-task" not in command
    assert main(shlex.split(command)[1:]) == 0


def test_a_truncated_baselines_file_is_named_as_baselines_not_a_task(tmp_path, capsys):
    folder = tmp_path / "cache"
    shutil.copytree(Path(__file__).resolve().parents[1] / "cache" / "smollm2-135m", folder)
    blob = (folder / BASELINES_FILE).read_bytes()
    (folder / BASELINES_FILE).write_bytes(blob[: len(blob) // 2])
    err = _run(["mask", "--cache", str(folder), "--out", str(tmp_path / "m.json")], capsys)
    assert f"{folder / BASELINES_FILE} does not match its sha256" in err
    hint = err.split("hint:")[1]
    assert "this task" not in hint and "not a task" in hint and "diet-explore profile" in hint and "rebuilds this file" in hint


def test_app_names_an_address_of_another_machine_and_brackets_ipv6(capsys, monkeypatch):
    import os
    import socket

    from diet_explore.cli.app import app_url

    class Started(Exception):
        pass

    def no_exec(*args):  # the command would become the Streamlit server here: no server is left running
        raise Started

    monkeypatch.setattr(os, "execve", no_exec)
    err = _run(["app", "--host", "8.8.8.8", "--port", "8615"], capsys)
    assert "cannot listen on 8.8.8.8: it is not an address of this machine" in err and "another server" not in err
    assert app_url("::1", 8615) == "http://[::1]:8615" and app_url("localhost", 8615) == "http://localhost:8615"
    try:
        with socket.socket(socket.AF_INET6) as s:
            s.bind(("::1", 0))
    except OSError:
        pytest.skip("no IPv6 loopback here")
    with pytest.raises(Started):
        main(["app", "--host", "::1", "--port", "8615"])
    assert "diet-explore app on http://[::1]:8615 " in capsys.readouterr().err


@pytest.mark.parametrize(
    "flags, cause",
    [
        (["--sparsity", "1e-300"], "--sparsity 1e-300 is less than one of the 576 dims"),
        (["--threshold", "0"], "the vote at τ 0 keeps every dim"),
        (["--multiple-of", "576"], "--multiple-of 576 rounds the kept count up to every dim"),
    ],
)
def test_a_mask_that_prunes_nothing_names_the_cause(app_cache_root, tmp_path, capsys, flags, cause):
    """The note blamed --multiple-of for --threshold 0 and for a sparsity under one dim."""
    assert main(["mask", "--cache", str(app_cache_root / "alpha"), *flags, "--out", str(tmp_path / "m.json")]) == 0
    assert f"note: nothing is pruned: {cause}" in capsys.readouterr().err


@pytest.mark.parametrize("runs", ["{out}", "{out}/runs"])
def test_compare_refuses_a_run_store_inside_its_out(tmp_path, capsys, runs):
    out = tmp_path / "sweep"
    argv = ["compare", "--cache", "c", "--out", str(out), "--runs", runs.format(out=out)]
    assert "is inside --out" in _run(argv, capsys) and not out.exists()
