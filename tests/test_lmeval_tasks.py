"""The lm-eval hand-off: task files over the quick evaluation's held-out documents, run by lm-eval 0.4.13."""

from __future__ import annotations

import json
import os
import shlex

import numpy as np
import pytest

from diet_explore.core.errors import DietError
from diet_explore.evaluation.evaluate import EvalConfig, calibration_exclusions, eval_requests
from diet_explore.evaluation.lmeval_tasks import MARKER, read_lmeval_tasks, write_lmeval_tasks
from diet_explore.tasks import data
from diet_explore.tasks.lmeval_commands import hand_off, lm_eval_command, lmeval_tasks_command
from diet_explore.tasks.registry import resolve_tasks


def _rows(folder, task):
    return [json.loads(line) for line in (folder / f"{task}.jsonl").read_text().splitlines()]


def test_rows_are_every_held_out_document_in_the_quick_evals_order(tmp_path, synthetic_cache_dir):
    written = write_lmeval_tasks(tmp_path / "t", tasks="rte,winogrande", cache=str(synthetic_cache_dir))
    quick = eval_requests(EvalConfig(tasks="rte,winogrande", limit=5, perplexity=False, exclude_cache=str(synthetic_cache_dir)))
    recorded_ids, n_cal = calibration_exclusions(EvalConfig(exclude_cache=str(synthetic_cache_dir)))
    for spec in resolve_tasks("rte,winogrande"):
        rows = _rows(written.folder, spec.name)
        ids = [r["doc_id"] for r in rows]
        size = len(data.load_task_data(spec))
        calibration = set(data.calibration_ids(spec, n_cal, size=size))
        recorded = {i for i in recorded_ids.get(spec.name, []) if i < size}  # the synthetic cache's ids span more
        assert len(ids) == len(set(ids)) == written.documents[spec.name]
        assert not (set(ids) & (calibration | recorded))  # no calibration example is scored
        assert len(ids) == size - len(calibration | recorded)  # and every other one is
        assert ids[:5] == [r.doc_id for r in quick[spec.name]]  # lm_eval --limit 5 = eval --limit 5
        first = quick[spec.name][0]
        if spec.format == "partial":
            assert rows[0]["contexts"] == first.contexts and " " + rows[0]["continuation"] == first.continuations[0]
        else:
            assert rows[0]["context"] == first.contexts[0] and rows[0]["choices"] == first.choice_texts
        assert rows[0]["gold"] == first.gold
    yaml = (written.folder / "diet_rte.yaml").read_text()
    assert f'validation: "{written.folder / "rte.jsonl"}"' in yaml and "task: diet_rte" in yaml
    assert "acc_norm" in yaml and "acc_norm" not in (written.folder / "diet_winogrande.yaml").read_text()


def test_a_mask_files_calibration_ids_are_left_out(tmp_path, synthetic_cache_dir):
    from diet_explore.masking.build import paper_default
    from diet_explore.masking.maskfile import mask_file_from_result, save_mask
    from diet_explore.profiling.cache import load_cache

    cache = load_cache(synthetic_cache_dir)
    mask = mask_file_from_result(paper_default(cache, 0.2), cache)
    mask.calibration_ids = {"rte": [7, 11, 13]}  # whatever the mask records is excluded
    save_mask(mask, tmp_path / "m.json")
    ids = [r["doc_id"] for r in _rows(write_lmeval_tasks(tmp_path / "t", "rte", masks=[str(tmp_path / "m.json")]).folder, "rte")]
    assert not {7, 11, 13} & set(ids)


def test_only_a_folder_it_wrote_is_replaced(tmp_path):
    write_lmeval_tasks(tmp_path / "t", "rte", limit=3)
    with pytest.raises(DietError):
        write_lmeval_tasks(tmp_path / "t", "rte", limit=3)  # exists: needs overwrite
    assert read_lmeval_tasks(write_lmeval_tasks(tmp_path / "t", "rte", limit=2, overwrite=True).folder).documents == {"rte": 2}
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep")
    with pytest.raises(DietError):
        write_lmeval_tasks(tmp_path / "mine", "rte", limit=2, overwrite=True)
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep"
    with pytest.raises(DietError, match=MARKER):
        read_lmeval_tasks(tmp_path / "mine")


def test_commands_name_the_folder_and_each_variant():
    names = ["diet_rte", "diet_boolq"]
    hf = shlex.split(lm_eval_command("my models/p", "/t", names, dtype="bfloat16", device="cuda:0"))
    assert hf[:5] == ["lm_eval", "--model", "hf", "--model_args", "pretrained=my models/p,dtype=bfloat16"]
    assert hf[5:] == ["--include_path", "/t", "--tasks", "diet_rte,diet_boolq", "--batch_size", "8", "--device", "cuda:0"]
    par = lm_eval_command("p", "/t", names, "hf-parallelize")
    assert "pretrained=p,dtype=float32,parallelize=True" in par and "--device" not in par
    vllm = shlex.split(lm_eval_command("p", "/t", names, "vllm", gpus=4, limit=50))
    assert vllm[2] == "vllm" and "data_parallel_size=4" in vllm[4]
    assert vllm[-2:] == ["--limit", "50"] and "--batch_size" in vllm and vllm[vllm.index("--batch_size") + 1] == "auto"
    lines = hand_off({"dense": "d", "pruned": "p"}, "/t", names)
    assert [line.split(":")[0] for line in lines] == [
        "dense",
        "pruned",
        "dense, one model over every GPU",
        "dense, vLLM, one replica on each of 8 GPUs",
        "pruned, one model over every GPU",
        "pruned, vLLM, one replica on each of 8 GPUs",
    ]
    assert lmeval_tasks_command("out dir", ["rte"], "c", ["p/diet_mask.json"], 7) == (
        "diet-explore lmeval-tasks --out 'out dir' --tasks rte --cache c --mask p/diet_mask.json --seed 7"
    )
    with pytest.raises(DietError, match="variant"):
        lm_eval_command("p", "/t", names, "sglang")


@pytest.mark.slow  # imports lm-eval and runs it: ~30 s on 2 CPU cores
def test_lm_eval_scores_the_task_files_as_the_quick_eval_does(tmp_path):
    """lm-eval 0.4.13 (HF backend, the model folder) on the written YAMLs: the same documents, the same
    per-choice log-likelihoods and the same predictions as diet-explore's quick evaluation."""
    try:
        import lm_eval
        from lm_eval.tasks import TaskManager
    except ImportError:  # `make test` installs it (requirements-bench.txt); CI must not skip silently
        if os.environ.get("CI") == "true":
            pytest.fail("lm-eval is not installed: `pip install -r requirements-bench.txt` (make test does)")
        pytest.skip("lm-eval not installed (pip install -r requirements-bench.txt)")
    import torch
    from transformers import AutoTokenizer

    from diet_explore.evaluation.evaluate import evaluate_model
    from diet_explore.models.adapters.tiny import tiny_model
    from diet_explore.models.builtin import store_path

    tok = AutoTokenizer.from_pretrained(store_path("smollm2-135m"))
    model = tiny_model("llama", hidden_size=64)
    model.resize_token_embeddings(len(tok))
    with torch.no_grad():  # a peaked random model: choices differ by nats, so an argmax is no coin toss
        model.get_input_embeddings().weight.normal_(0, 1.0)
    folder = tmp_path / "model"
    model.save_pretrained(folder)
    tok.save_pretrained(folder)
    limit = 2
    written = write_lmeval_tasks(tmp_path / "tasks", limit=limit + 3)  # lm_eval --limit takes the first ones
    out = lm_eval.simple_evaluate(
        model="hf",
        model_args=f"pretrained={folder},dtype=float32",
        tasks=written.task_names,
        device="cpu",
        batch_size=8,
        task_manager=TaskManager(include_path=str(written.folder), include_defaults=False),
        limit=limit,
        log_samples=True,
        bootstrap_iters=0,
    )
    ours = evaluate_model(model, tok, EvalConfig(limit=limit, perplexity=False, device="cpu"))
    theirs = {
        (name.removeprefix("diet_"), s["doc"]["doc_id"]): [float(r[0]) for r in s["filtered_resps"]]
        for name, samples in out["samples"].items()
        for s in samples
    }
    assert len(ours.predictions) == len(theirs) == 7 * limit
    for p in ours.predictions:
        lls = theirs[(p["task"], p["doc_id"])]  # a KeyError: lm-eval scored another document
        np.testing.assert_allclose(lls, p["lls"], atol=2e-3)
        top2 = np.sort(p["lls"])[-2:]
        assert top2[1] - top2[0] > 2e-2, "a near-tie: make the random model more peaked"
        assert int(np.argmax(lls)) == p["pred"], (p["task"], p["doc_id"])


def test_eval_prints_the_commands_that_write_and_run_its_held_out_documents(tmp_path, synthetic_cache_dir, capsys):
    from diet_explore.cli import main
    from diet_explore.models.adapters.tiny import save_tiny_folder

    model = save_tiny_folder(tmp_path / "tiny")
    argv = ["eval", "--model", str(model), "--compare-to", str(model), "--tasks", "rte", "--limit", "3"]
    assert main([*argv, "--no-perplexity", "--no-eval-cache", "--cache", str(synthetic_cache_dir), "--seed", "7"]) == 0
    out = capsys.readouterr().out
    (write,) = [line.strip() for line in out.splitlines() if line.strip().startswith("diet-explore lmeval-tasks")]
    assert f"--cache {synthetic_cache_dir}" in write and "--seed 7" in write and "--tasks rte" in write
    commands = [line.strip() for line in out.splitlines() if "lm_eval --model" in line]
    assert [c.split(": ")[0] for c in commands][:2] == ["reference", "model"]
    assert f"pretrained={model},dtype=float32" in commands[0] and "--include_path lmeval-tasks" in commands[0]
    assert any("parallelize=True" in c for c in commands) and any("--model vllm" in c for c in commands)
    # the printed command, run, writes every held-out document; eval's 3 come first (lm_eval --limit 3)
    assert main([*shlex.split(write)[1:], "--out", str(tmp_path / "lm")]) == 0
    ids = [r["doc_id"] for r in _rows(tmp_path / "lm", "rte")]
    config = EvalConfig(tasks="rte", limit=3, seed=7, perplexity=False, exclude_cache=str(synthetic_cache_dir))
    assert ids[:3] == [r.doc_id for r in eval_requests(config)["rte"]] and len(ids) > 100


def test_eval_of_a_pruned_folder_alone_hands_off_dense_and_pruned(tmp_path, capsys):
    from diet_explore.cli import main
    from diet_explore.masking.build import paper_default
    from diet_explore.masking.maskfile import mask_file_from_result, save_mask
    from diet_explore.models.adapters.tiny import save_tiny_folder
    from diet_explore.models.builtin import store_path
    from diet_explore.profiling.synthetic import synthetic_cache

    folder = save_tiny_folder(tmp_path / "pruned")
    cache = synthetic_cache(n_samples=8, seed=1)
    cache.manifest["model"]["name"] = "smollm2-135m"  # built from the built-in's cache
    save_mask(mask_file_from_result(paper_default(cache, 0.25), cache), folder / "diet_mask.json")
    argv = ["eval", "--model", str(folder), "--tasks", "rte", "--limit", "2", "--no-perplexity", "--no-eval-cache"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    lines = [line.strip() for line in out.splitlines() if line.strip().startswith(("dense: lm_eval", "pruned: lm_eval"))]
    assert f"pretrained={store_path('smollm2-135m')}," in lines[0] and f"pretrained={folder}," in lines[1]
    assert f"--mask {folder / 'diet_mask.json'}" in out  # its calibration examples are left out of the task files
