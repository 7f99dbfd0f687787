import json
import shlex

import numpy as np
import pytest

from diet_explore.cli import main
from diet_explore.masking.agreement import agreement_report
from diet_explore.masking.build import MaskConfig, build_mask
from diet_explore.masking.maskfile import load_mask
from diet_explore.masking.selection import keep_count
from diet_explore.masking.stability import bootstrap_masks
from diet_explore.profiling.cache import load_cache


@pytest.fixture(scope="module")
def cache(synthetic_cache_dir):
    return load_cache(synthetic_cache_dir)


def test_mask_writes_a_valid_file_matching_the_library(synthetic_cache_dir, cache, tmp_path, capsys):
    out = tmp_path / "mask.json"
    rc = main(
        [
            "mask",
            "--cache",
            str(synthetic_cache_dir),
            "--sparsity",
            "0.2",
            "--threshold",
            "0.5",
            "--weights",
            "boolq=2,rte=0.5",
            "--npy",
            "--out",
            str(out),
        ]
    )
    assert rc == 0
    want = build_mask(cache, MaskConfig(sparsity=0.2, weights={"boolq": 2.0, "rte": 0.5}))
    mf = load_mask(out, expected_hidden_size=576, expected_model=cache.model_name)
    np.testing.assert_array_equal(mf.keep, want.keep)
    np.testing.assert_array_equal(np.load(tmp_path / "mask.npy"), want.keep)
    text = capsys.readouterr().out
    assert f"kept {want.n_keep} of 576" in text and f"{want.sparsity:.4f}" in text and str(out) in text


def test_mask_exact_multiple_and_colon_weights(synthetic_cache_dir, tmp_path):
    out = tmp_path / "m.json"
    argv = [
        "mask",
        "--cache",
        str(synthetic_cache_dir),
        "--sparsity",
        "0.3",
        "--exact",
        "--multiple-of",
        "8",
        "--weights",
        "boolq:2",
        "--tasks",
        "boolq,rte,hellaswag",
        "--out",
        str(out),
    ]
    assert main(argv) == 0
    mf = load_mask(out)
    assert mf.n_keep == keep_count(576, 0.3, 8) == 408 and mf.tasks == ["boolq", "rte", "hellaswag"]
    assert mf.config["weights"] == {"boolq": 2.0} and mf.config["exact"] is True


@pytest.mark.parametrize(
    "extra, message",
    [
        (["--weights", "boolq2"], "bad --weights item 'boolq2'"),
        (["--weights", "boolq=x"], "bad --weights item 'boolq=x'"),
        (["--weights", "boolq=1,boolq=2"], "'boolq' appears twice"),
        (["--weights", "boolq=-1"], "'boolq' is -1.0"),
        (["--tasks", "boolq,nope"], "task 'nope' is not in this cache"),
        (["--sparsity", "1.2"], "got 1.2"),
        (["--site", "attn"], "'attn'"),
    ],
)
def test_mask_bad_input_exits_2_with_one_line(synthetic_cache_dir, tmp_path, capsys, extra, message):
    out = tmp_path / "m.json"
    assert main(["mask", "--cache", str(synthetic_cache_dir), "--out", str(out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err and not out.exists()


def test_mask_missing_cache_exits_2(tmp_path, capsys):
    assert main(["mask", "--cache", str(tmp_path / "none"), "--out", str(tmp_path / "m.json")]) == 2
    assert "does not exist" in capsys.readouterr().err


def test_agreement_json_and_csv(synthetic_cache_dir, cache, capsys):
    assert main(["agreement", "--cache", str(synthetic_cache_dir), "--sparsity", "0.3", "--format", "json"]) == 0
    data = json.loads(capsys.readouterr().out)
    rep = agreement_report(cache, 0.3)
    assert data["jaccard"]["boolq"]["rte"] == pytest.approx(rep.jaccard.loc["boolq", "rte"], abs=1e-6)
    assert sum(u["size"] for u in data["upset"]) == int((rep.vote_counts > 0).sum())
    assert main(["agreement", "--cache", str(synthetic_cache_dir), "--format", "csv", "--tasks", "boolq,rte"]) == 0
    lines = capsys.readouterr().out.strip().splitlines()
    assert lines[0] == "metric,task_a,task_b,value" and len(lines) == 1 + 2 * 4 and lines[1] == "jaccard,boolq,boolq,1.000000"


def test_agreement_table_and_bad_task(synthetic_cache_dir, capsys):
    assert main(["agreement", "--cache", str(synthetic_cache_dir)]) == 0
    out = capsys.readouterr().out
    assert (
        "Jaccard of pruned sets at sparsity 0.2" in out
        and "the mask (diet) prunes 100 of 576 dims; prune votes per dim (kept / pruned by the mask): 0 tasks:" in out
        and ", 1 task: " in out
    )  # not "1 tasks"
    assert "prunes no dim" not in out
    assert main(["agreement", "--cache", str(synthetic_cache_dir), "--sparsity", "0"]) == 0  # empty sets: Jaccard 1
    out = capsys.readouterr().out
    assert out.startswith("note: sparsity 0 prunes no dim, so every pruned set is empty")
    assert "largest exact overlaps (of 0 combinations): none" in out  # not a heading over nothing
    # stability: an empty mask is not "perfectly stable" without a word
    assert main(["stability", "--cache", str(synthetic_cache_dir), "--sparsity", "0", "--resamples", "3", "--counts", "2"]) == 0
    assert "note: sparsity 0 prunes no dim" in capsys.readouterr().out
    # 'all' with other tasks said "task 'all' is not in this cache"
    assert main(["agreement", "--cache", str(synthetic_cache_dir), "--tasks", "all,boolq"]) == 2
    assert "'all' is every task and goes alone" in capsys.readouterr().err
    assert main(["agreement", "--cache", str(synthetic_cache_dir), "--tasks", "nope"]) == 2
    assert "task 'nope' is not in this cache" in capsys.readouterr().err


def test_stability_json_matches_the_library(synthetic_cache_dir, cache, capsys):
    argv = [
        "stability",
        "--cache",
        str(synthetic_cache_dir),
        "--sparsity",
        "0.2",
        "--resamples",
        "30",
        "--counts",
        "10,40,80",
        "--curve-resamples",
        "5",
        "--format",
        "json",
    ]
    assert main(argv) == 0
    data = json.loads(capsys.readouterr().out)
    want = bootstrap_masks(cache, MaskConfig(sparsity=0.2), n_resamples=30, seed=0)
    assert data["mean_jaccard"] == pytest.approx(want.mean_jaccard) and data["n_resamples"] == 30
    assert [row["n"] for row in data["curve"]] == [10, 40] and data["curve"][1]["mean_jaccard"] == pytest.approx(1.0)
    assert data["notes"] == ["skipped n=80: the tasks have 40 samples (the smallest task)"]
    assert main(["stability", "--cache", str(synthetic_cache_dir), "--counts", "ten"]) == 2
    assert "bad --counts 'ten'" in capsys.readouterr().err


def test_stability_table_prints_mean_jaccard_and_curve(synthetic_cache_dir, capsys):
    argv = ["stability", "--cache", str(synthetic_cache_dir), "--resamples", "10", "--counts", "10", "--curve-resamples", "3"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "bootstrap (10 resamples of 40 samples per task): mean Jaccard" in out and "mean_jaccard" in out


def test_app_mask_command_is_accepted_by_the_cli(synthetic_cache_dir, cache, tmp_path):
    """The app shows `diet-explore mask ...` lines (maskfile.mask_command); they must run as-is."""
    from diet_explore.masking.maskfile import mask_command

    cfg = MaskConfig(
        sparsity=0.35,
        threshold=0.6,
        weights={"boolq": 1.5, "rte": 0.25},
        tasks=["boolq", "rte", "winogrande"],
        layer_agg="last_k",
        last_k=3,
        normalize="sum",
        exact=True,
        multiple_of=8,
    )
    argv = shlex.split(mask_command(synthetic_cache_dir, cfg, tmp_path / "m.json"))
    assert main(argv[1:]) == 0
    mf = load_mask(tmp_path / "m.json")
    assert MaskConfig.from_dict(mf.config) == cfg
    np.testing.assert_array_equal(mf.keep, build_mask(cache, cfg).keep)


@pytest.mark.parametrize(
    "out, extra, message",
    [
        ("a-folder", [], "is a folder"),
        ("a-file/m.json", [], "cannot be created"),
        ("m.npy", ["--npy"], "ends in .npy"),
    ],
)
def test_mask_out_that_cannot_hold_the_mask_exits_2(synthetic_cache_dir, tmp_path, capsys, out, extra, message):
    (tmp_path / "a-folder").mkdir()
    (tmp_path / "a-file").write_text("keep me")
    assert main(["mask", "--cache", str(synthetic_cache_dir), "--out", str(tmp_path / out), *extra]) == 2
    err = capsys.readouterr().err
    assert message in err and "Traceback" not in err
    assert (tmp_path / "a-file").read_text() == "keep me" and not (tmp_path / "m.npy").exists()


@pytest.mark.parametrize("tasks, message", [("boolq,boolq", "task(s) listed twice: boolq"), (",", "--tasks names no task")])
def test_agreement_refuses_repeated_or_no_tasks(synthetic_cache_dir, capsys, tasks, message):
    assert main(["agreement", "--cache", str(synthetic_cache_dir), "--tasks", tasks, "--format", "csv"]) == 2
    assert message in capsys.readouterr().err  # the mask's own rule: agreement takes the flags of mask


def test_stability_refuses_zero_curve_resamples(synthetic_cache_dir, capsys):
    assert main(["stability", "--cache", str(synthetic_cache_dir), "--curve-resamples", "0"]) == 2
    assert "resamples must be at least 1, got 0" in capsys.readouterr().err
