"""SliceGPT-style rotate-and-slice: exactness at k = D, equality with a direct recomputation from
the projected activations at k < D, the parameter counts, refusals, and the real SmolLM2."""

from __future__ import annotations

import copy
import json

import numpy as np
import pytest
import torch

from diet_explore.core.errors import DietError
from diet_explore.experiments.reports import as_sweep
from diet_explore.models.adapters import get_adapter
from diet_explore.models.adapters.tiny import tiny_model
from diet_explore.pruning.pca import pca_rotations, slicegpt_model
from diet_explore.pruning.rotate import (
    SCHEMES,
    ScaleFreeRMSNorm,
    ShortcutBlock,
    Sites,
    count_parameters,
    keep_for_parameters,
    rotate_and_slice,
    rotated_parameters,
    rotation_summary,
)

ROTATABLE = ("llama", "mistral", "qwen2", "qwen3")
IDS = torch.tensor([[1, 5, 9, 33, 70, 100, 3, 4, 17, 88, 41], [1, 6, 6, 2, 90, 11, 12, 13, 14, 15, 16]])


def calibration(n: int = 14, seed: int = 0) -> tuple[list[list[int]], list[float]]:
    g = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, 30, (n,), generator=g)
    seqs = [torch.randint(3, 128, (int(t),), generator=g).tolist() for t in lengths]
    return seqs, [1.0 + (i % 3) for i in range(n)]  # unequal weights: every code path uses them


def logits(model, ids=IDS) -> torch.Tensor:
    with torch.no_grad():
        return model(input_ids=ids).logits


def rotated(model, keep: int, scheme: str = "half", seed: int = 0):
    """(the rotations, the rotated model) on a copy, as ``slicegpt_model`` makes them."""
    seqs, weights = calibration(seed=seed)
    work = copy.deepcopy(model)
    rotations = pca_rotations(work, seqs, weights, keep, scheme)
    return rotations, rotate_and_slice(work, rotations, copy_model=False)


# --------------------------------------------------------------------------------------------
# Exactness
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("family, tie", [(f, True) for f in ROTATABLE] + [("llama", False)])
@pytest.mark.slow
def test_keeping_every_direction_gives_the_dense_logits(family, tie, scheme):
    model = tiny_model(family, tie=tie)
    seqs, weights = calibration()
    full = slicegpt_model(model, seqs, weights, 64, scheme)
    dense = logits(model)
    torch.testing.assert_close(logits(full), dense, rtol=0, atol=2e-5)  # fp32 round-off of the rotations
    # and it is a different network, not the dense one: every block carries shortcut matrices
    assert all(isinstance(b, ShortcutBlock) and b.mlp_shortcut is not None for b in get_adapter(full).layers())
    assert (full.model.embed_tokens.weight - model.model.embed_tokens.weight).abs().max() > 1e-2


def projected_logits(model, rotations, ids=IDS) -> torch.Tensor:
    """The dense model, written out block by block in its own coordinates with its own (unfolded,
    unrotated) weights, with the residual stream replaced by its projection onto the kept
    directions of each site: what the sliced model must compute."""
    ad = get_adapter(model)
    base = ad.base_model()
    sites = Sites(len(ad.layers()), rotations.scheme)
    proj = [(q @ q.T).float() for q in rotations.bases]
    t = ids.shape[1]
    causal = torch.ones(t, t, dtype=torch.bool).tril()[None, None]
    positions = torch.arange(t)[None].expand(ids.shape[0], t)
    with torch.no_grad():
        x = ad.embedding()(ids) @ proj[0]
        rope = base.rotary_emb(x, positions)
        for i, layer in enumerate(ad.layers()):
            la = ad.layer_adapter(layer)
            _, mid, out = sites.of_layer(i)
            x = x + la.attention()(hidden_states=la.attention_input_norm()(x), position_embeddings=rope, attention_mask=causal)[0]
            x = x @ proj[mid]
            x = x + la.mlp()(la.mlp_input_norm()(x))
            x = x @ proj[out]
        return ad.logits(ad.final_norm()(x))


@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("family", ["llama", "qwen3"])
@pytest.mark.slow
def test_the_sliced_model_equals_the_dense_one_on_projected_activations(family, scheme):
    model = tiny_model(family)
    rotations, sliced = rotated(model, 40, scheme)
    assert sliced.config.hidden_size == 40 and sliced.model.embed_tokens.weight.shape == (128, 40)
    expected = projected_logits(model, rotations)
    torch.testing.assert_close(logits(sliced), expected, rtol=0, atol=2e-5)
    assert (expected - logits(model)).abs().max() > 1e-2  # the slice really changes the model
    # the reference itself is right: with every direction kept it is the dense model
    full, _ = rotated(model, 64, scheme)
    torch.testing.assert_close(projected_logits(model, full), logits(model), rtol=0, atol=2e-5)


def test_the_first_basis_is_the_pca_of_the_weighted_embeddings():
    model = tiny_model("llama")
    seqs, weights = calibration()
    rotations = pca_rotations(copy.deepcopy(model), seqs, weights, 8)
    emb = model.model.embed_tokens.weight.detach().double()
    total = sum(weights)
    moment = sum(w / total / len(s) * emb[s].T @ emb[s] for s, w in zip(seqs, weights))  # per-sequence token means
    values, vectors = np.linalg.eigh(moment.numpy())
    top = vectors[:, ::-1][:, :8]
    np.testing.assert_allclose(rotations.bases[0] @ rotations.bases[0].T, top @ top.T, atol=1e-8)
    assert rotations.kept_variance[0] == pytest.approx(values[::-1][:8].sum() / values.sum())
    assert len(rotations.bases) == Sites(2, "half").count == 5 and all(b.shape == (64, 8) for b in rotations.bases)


def test_the_input_model_is_never_touched():
    model = tiny_model("llama")
    before = {k: v.clone() for k, v in model.state_dict().items()}
    dense = logits(model)
    seqs, weights = calibration()
    slicegpt_model(model, seqs, weights, 40)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert all("forward" not in layer.__dict__ for layer in model.model.layers)  # no recorder left behind
    assert get_adapter(model).ties_embeddings() and model.config.hidden_size == 64
    torch.testing.assert_close(logits(model), dense, rtol=0, atol=0)


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES)
@pytest.mark.parametrize("tie", [True, False])
def test_parameter_counts_include_the_shortcuts_and_the_untied_head(tie, scheme):
    model = tiny_model("llama", tie=tie)
    _, sliced = rotated(model, 40, scheme)
    info = rotation_summary(sliced)
    n_shortcuts = 4 if scheme == "half" else 2  # two layers
    assert info["shortcut_parameters"] == n_shortcuts * 40 * 40
    assert count_parameters(sliced) == info["parameters_after"] == rotated_parameters(model, 40, scheme)
    adapter = get_adapter(model)
    mask_params = count_parameters(model) - adapter.params_per_hidden_dim() * (64 - 40)  # a coordinate mask's
    extra_head = 128 * 40 if tie else 0  # the head, untied, is a second V x k matrix
    norm_weights = 5 * 40  # 2 norms per block + the final one, folded away
    assert info["parameters_after"] == mask_params + n_shortcuts * 1600 + extra_head - norm_weights
    assert info["untied_head"] is tie and not get_adapter(sliced).ties_embeddings()
    # the same parameter count as the mask buys fewer kept dims
    keep = keep_for_parameters(model, mask_params, scheme)
    assert keep < 40 and rotated_parameters(model, keep, scheme) <= mask_params < rotated_parameters(model, keep + 1, scheme)
    assert keep_for_parameters(model, mask_params, scheme, multiple_of=4) == keep // 4 * 4


# --------------------------------------------------------------------------------------------
# Where it does not apply, and bad input
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("family", ["gemma2", "gemma3_text"])
def test_sandwich_norm_families_are_refused_with_the_reason(family):
    seqs, weights = calibration()
    with pytest.raises(DietError, match="sandwich norms") as err:
        slicegpt_model(tiny_model(family), seqs, weights, 32)
    assert "\n" not in err.value.message


def test_bad_input_is_refused():
    model = tiny_model("llama")
    seqs, weights = calibration()
    with pytest.raises(DietError, match="cannot keep 65 of 64"):
        slicegpt_model(model, seqs, weights, 65)
    with pytest.raises(DietError, match="one weight per sequence"):
        slicegpt_model(model, seqs, weights[:-1], 32)
    with pytest.raises(DietError, match="unknown rotation scheme"):
        slicegpt_model(model, seqs, weights, 32, scheme="diagonal")
    _, sliced = rotated(model, 32)
    with pytest.raises(DietError, match="already rotated"):
        slicegpt_model(sliced, seqs, weights, 16)


def test_the_norms_are_scale_free_and_normalise_over_the_dense_width():
    _, sliced = rotated(tiny_model("llama"), 40)
    norms = [sliced.model.norm] + [n for b in sliced.model.layers for n in (b.input_layernorm, b.post_attention_layernorm)]
    assert all(isinstance(n, ScaleFreeRMSNorm) and n.width == 64 for n in norms)
    x = torch.randn(3, 40)
    torch.testing.assert_close(norms[0](x), x / torch.sqrt(x.pow(2).sum(-1, keepdim=True) / 64 + norms[0].eps))


# --------------------------------------------------------------------------------------------
# Export: this package's own format
# --------------------------------------------------------------------------------------------
@pytest.mark.parametrize("scheme", SCHEMES)
def test_a_saved_rotated_model_reloads_with_its_logits_and_only_through_this_package(scheme, tmp_path):
    from transformers import AutoModelForCausalLM

    from diet_explore.pruning.rotated_io import META_FILE, load_rotated, save_rotated
    from diet_explore.pruning.saving import save_pruned

    _, sliced = rotated(tiny_model("qwen2"), 40, scheme)
    folder = save_rotated(sliced, tmp_path / "sliced")
    back = load_rotated(folder)
    torch.testing.assert_close(logits(back), logits(sliced), rtol=0, atol=0)
    assert count_parameters(back) == count_parameters(sliced) and rotation_summary(back)["scheme"] == scheme
    assert not (folder / "config.json").exists() and "from_pretrained` alone" in (folder / "README.md").read_text()
    with pytest.raises((OSError, ValueError)):
        AutoModelForCausalLM.from_pretrained(folder)
    with pytest.raises(DietError, match="no plain Hugging Face architecture"):
        save_pruned(sliced, None, tmp_path / "hf")
    meta = json.loads((folder / META_FILE).read_text())
    (folder / META_FILE).write_text(json.dumps({**meta, "version": 99}))
    with pytest.raises(DietError, match="version 99"):
        load_rotated(folder)
    with pytest.raises(DietError, match="not a saved rotated model"):
        load_rotated(tmp_path)


# --------------------------------------------------------------------------------------------
# Through the scorer, the sweep and the CLI
# --------------------------------------------------------------------------------------------
def test_a_full_rotation_scores_and_perplexes_like_the_dense_model():
    """The rotated model runs through the adapter-based scorer (tree attention masks, logits at the
    scored positions only) and perplexity, and with every direction kept gives the dense numbers."""
    from test_scoring import WordTokenizer

    from diet_explore.evaluation.scoring import LoglikelihoodScorer, perplexity
    from diet_explore.tasks.data import requests_for
    from diet_explore.tasks.registry import resolve_tasks

    model = tiny_model("qwen2")
    seqs, weights = calibration()
    full = slicegpt_model(model, seqs, weights, 64)
    requests = [r for t in ("rte", "hellaswag") for r in requests_for(resolve_tasks([t])[0], [0, 1, 2])]
    dense_scores = LoglikelihoodScorer(model, WordTokenizer(), workers=2).score(requests)
    full_scores = LoglikelihoodScorer(full, WordTokenizer(), workers=2).score(requests)
    for a, b in zip(dense_scores, full_scores):
        np.testing.assert_allclose(b.lls, a.lls, rtol=0, atol=1e-4)
    windows = np.random.default_rng(1).integers(3, 128, size=(5, 16))
    assert perplexity(full, windows, 1) == pytest.approx(perplexity(model, windows, 1), rel=1e-5)


@pytest.fixture(scope="module")
def sweep(tmp_path_factory):
    """A tiny llama with SmolLM2's vocabulary, its real score cache (2 tasks + wiki, 6 samples each),
    a sweep of diet, then slicegpt and slicegpt-wiki resumed into the same folder."""
    from transformers import AutoTokenizer

    from diet_explore.experiments.runs import RunStore
    from diet_explore.experiments.sweep import CompareConfig, run_compare
    from diet_explore.models.builtin import store_path
    from diet_explore.models.loading import ModelInfo
    from diet_explore.profiling.runner import ProfileConfig, profile

    root = tmp_path_factory.mktemp("slicegpt-sweep")
    tok = AutoTokenizer.from_pretrained(store_path("smollm2-135m"))
    model = tiny_model("llama")
    model.resize_token_embeddings(len(tok))
    info = ModelInfo("tiny", "tiny", None, None, None, "llama", 64, 2, count_parameters(model))
    cfg = ProfileConfig(model="tiny", tasks="rte,winogrande", samples=6, generic=True, device="cpu")
    profile(cfg, root / "cache", progress=lambda *a: None, loaded=(model, tok, info))
    config = CompareConfig(
        model="tiny",
        cache=str(root / "cache"),
        sparsities=[0.25],
        methods=["diet"],
        tasks="rte,winogrande",
        limit=3,
        ppl_windows=2,
    )
    store = RunStore(root / "runs")
    run_compare(config, root / "out", model, tok, store, log=lambda m: None)
    logs: list[str] = []
    more = CompareConfig.from_dict({**config.to_dict(), "methods": ["slicegpt", "slicegpt-wiki"]})
    rows = run_compare(more, root / "out", model, tok, store, log=logs.append)
    return root, more, model, tok, rows, logs


@pytest.mark.slow
def test_slicegpt_resumes_into_a_sweep_and_keeps_the_mask_count(sweep):
    root, config, model, tok, rows, logs = sweep
    assert logs[0] == f"1 of 3 runs already in {root / 'out'}; 2 to go"  # dense and diet were kept
    by = {r["key"]: r for r in rows}
    assert list(by) == ["dense", "diet@0.25", "slicegpt@0.25", "slicegpt-wiki@0.25"]
    assert by["slicegpt@0.25"]["n_keep"] == by["diet@0.25"]["n_keep"] == by["slicegpt-wiki@0.25"]["n_keep"] == 48
    tasks_cal = by["slicegpt@0.25"]["rotation"]["calibration"]
    wiki_cal = by["slicegpt-wiki@0.25"]["rotation"]["calibration"]
    assert (tasks_cal["sets"], tasks_cal["sequences"]) == (["rte", "winogrande"], 12)
    assert (wiki_cal["sets"], wiki_cal["sequences"]) == (["wikitext"], 6)
    rot = by["slicegpt@0.25"]["rotation"]
    assert rot["parameters"] == rotated_parameters(model, 48) and rot["scheme"] == "half"
    mask_params = count_parameters(model) - get_adapter(model).params_per_hidden_dim() * 16
    assert rot["parameters_mask_same_keep"] == mask_params and rot["parameters"] > mask_params
    assert rot["keep_at_mask_parameters"] == keep_for_parameters(model, mask_params, "half", 4) < 48
    for r in rows[1:]:
        assert r["ppl"] > 1 and set(r["tasks"]) == {"rte", "winogrande"} and "delta_ci_low" in r
    md = (root / "out" / "table.md").read_text()
    diet = as_sweep(rows).labels()["diet"]  # the run's mask label (history.run_label)
    assert f"| 0.25 | {diet} − slicegpt | 48 |" in md and f"| 0.25 | {diet} − slicegpt-wiki | 48 |" in md
    assert "SliceGPT parameters" in md


def test_a_slicegpt_row_equals_rotating_and_evaluating_directly(sweep):
    from diet_explore.evaluation.evaluate import evaluate_model
    from diet_explore.profiling.cache import load_cache
    from diet_explore.pruning.pca import calibration_from_cache

    root, config, model, tok, rows, logs = sweep
    seqs, weights, _ = calibration_from_cache(load_cache(config.cache), tok, "wiki")
    direct = evaluate_model(slicegpt_model(model, seqs, weights, 48, pad_id=tok.pad_token_id), tok, config.eval_config())
    row = next(r for r in rows if r["key"] == "slicegpt-wiki@0.25")
    for t in ("rte", "winogrande"):
        assert row["tasks"][t]["correct"] == [int(x) for x in direct.tasks[t].correct]
    assert row["ppl"] == pytest.approx(direct.perplexity, rel=1e-6)


def test_the_calibration_is_the_data_the_cache_was_profiled_on(sweep):
    from diet_explore.profiling.cache import load_cache
    from diet_explore.pruning.pca import calibration_from_cache

    root, config, model, tok, rows, logs = sweep
    cache = load_cache(config.cache)
    seqs, weights, info = calibration_from_cache(cache, tok, "tasks")
    assert [len(s) for s in seqs] == [n for t in ("rte", "winogrande") for n in cache.tasks[t].token_counts]
    assert info["tokens"] == {t: sum(cache.tasks[t].token_counts) for t in ("rte", "winogrande")}
    assert weights == pytest.approx([1 / 12] * 12)  # each task 1/2, each of its 6 samples 1/6 of that

    class OtherTokenizer:
        pad_token_id = bos_token_id = None

        def __call__(self, texts, **kw):
            return {"input_ids": [[3] * 5 for _ in texts]}

    with pytest.raises(DietError, match="tokenize to other lengths than the cache recorded"):
        calibration_from_cache(cache, OtherTokenizer(), "tasks")
    with pytest.raises(DietError, match="unknown calibration source"):
        calibration_from_cache(cache, tok, "books")


def test_mask_and_the_mask_config_refuse_slicegpt_with_the_reason(sweep, tmp_path, capsys):
    from diet_explore.cli import main
    from diet_explore.experiments.results import METHODS, ROTATION_METHODS
    from diet_explore.masking.build import NOT_MASKS, MaskConfig

    root, config, *_ = sweep
    assert set(NOT_MASKS) == set(ROTATION_METHODS) and set(ROTATION_METHODS) <= set(METHODS)
    with pytest.raises(DietError, match="keeps directions, not hidden coordinates"):
        MaskConfig(method="slicegpt")
    code = main(["mask", "--cache", config.cache, "--method", "slicegpt-wiki", "--out", str(tmp_path / "m.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("error: 'slicegpt-wiki' is not a masking method") and "compare --methods" in err
    assert "Traceback" not in err and not (tmp_path / "m.json").exists()


def test_the_mask_builder_offers_no_slicegpt_and_says_why(app):
    from app_helpers import run_page

    at = run_page(app.run(), "mask_builder")
    assert not at.exception and not any("slicegpt" in o for o in at.selectbox(key="method").options)
    assert any("No SliceGPT here" in c.value and "keeps directions, not hidden coordinates" in c.value for c in at.caption)


# --------------------------------------------------------------------------------------------
# The real SmolLM2
# --------------------------------------------------------------------------------------------
@pytest.mark.slow
def test_smollm2_with_every_direction_kept_gives_the_dense_logits(smollm2):
    from diet_explore.profiling.runner import wiki_sequences

    model, tok, _ = smollm2
    seqs = wiki_sequences(tok, [0], 128)  # any bases are exact at k = D: one window does
    full = slicegpt_model(model, seqs, [1.0], 576, pad_id=tok.pad_token_id)
    ids = torch.tensor([tok("The capital of France is Paris, and the capital of Italy is")["input_ids"]])
    dense, got = logits(model, ids), logits(full, ids)
    err = (got - dense).abs().max().item()
    assert err < 2e-3, err  # logits of magnitude ~30 through 30 blocks of fp32 rotations
    assert torch.equal(got.argmax(-1), dense.argmax(-1))
    info = rotation_summary(full)
    assert info["parameters_after"] == rotated_parameters(model, 576) == count_parameters(full)
    assert info["shortcut_parameters"] == 60 * 576 * 576 and info["untied_head"]
