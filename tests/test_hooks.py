import copy

import numpy as np
import pytest
import torch
from torch import nn

from diet_explore.models.adapters import get_adapter
from diet_explore.models.adapters.tiny import TINY_FAMILIES, tiny_model
from diet_explore.profiling.hooks import record_activations, without_first_token
from diet_explore.profiling.runner import profile_batches, profile_sequences

SEQS = [[1, 5, 6, 7, 8, 9], [1, 9, 10], [1, 3, 4, 5, 6, 7, 8, 9, 11, 12], [1, 20]]


def reference_scores(model, seqs, skip_first: bool = False):
    """Per-block mean |h| over tokens then samples, from output_hidden_states.

    transformers puts the *final-normed* state last in hidden_states, so the reference runs a copy
    whose final norm is the identity to read the last block's raw output."""
    ref = copy.deepcopy(model)
    ref.model.norm = nn.Identity()
    per_sample = []
    with torch.no_grad():
        for s in seqs:
            hs = ref.model(torch.tensor([s]), output_hidden_states=True).hidden_states[1:]
            start = 1 if skip_first else 0  # the model sees every token; the statistic skips the first
            per_sample.append(torch.stack([h[0, start:].abs().mean(0) for h in hs]))  # (L, D)
    return torch.stack(per_sample).numpy()  # (N, L, D)


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_hook_statistics_equal_output_hidden_states_reference(family):
    model = tiny_model(family)
    scores, tokens = profile_sequences(get_adapter(model), SEQS, ["residual"], max_batch_tokens=64, pad_id=0)
    ref = reference_scores(model, SEQS)
    np.testing.assert_allclose(scores.layer["residual"], ref.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores.sample["residual"], ref.mean(1), rtol=1e-5, atol=1e-6)
    assert tokens["real_tokens"] == sum(map(len, SEQS))


def test_skip_first_token_leaves_it_out_of_the_scores_and_the_top_positions():
    """profile --skip-first-token: each sequence's mean |h| over its tokens after the first, batched and
    padded as usual; no recorded top-activating position is a first token."""
    model = tiny_model("llama")
    scores, _ = profile_sequences(
        get_adapter(model), SEQS, ["residual"], 4096, 0, min_fill=0.0, top_k=4, decode=str, skip_first=True
    )
    ref = reference_scores(model, SEQS, skip_first=True)
    np.testing.assert_allclose(scores.layer["residual"], ref.mean(0), rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(scores.sample["residual"], ref.mean(1), rtol=1e-5, atol=1e-6)
    assert (scores.contexts.top["residual"].position > 0).all()
    full, _ = profile_sequences(get_adapter(model), SEQS, ["residual"], 4096, 0, min_fill=0.0)
    assert not np.allclose(full.layer["residual"], scores.layer["residual"])  # it did change the scores


def test_without_first_token_drops_each_rows_first_real_token_whatever_the_padding_side():
    right = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0], [0, 0, 0, 0]])
    left = torch.tensor([[0, 1, 1, 1], [0, 0, 1, 1]])
    assert without_first_token(right).tolist() == [[0, 1, 1, 0], [0, 1, 0, 0], [0, 0, 0, 0]]
    assert without_first_token(left).tolist() == [[0, 0, 1, 1], [0, 0, 0, 1]]
    assert right.tolist()[0] == [1, 1, 1, 0]  # the model's own mask is untouched


def test_normed_site_averages_attention_and_mlp_inputs():
    model = tiny_model("llama")
    adapter = get_adapter(model)
    seen = {}

    def keep(name):
        return lambda m, a, o: seen.setdefault(name, []).append(o[0].abs().mean(0))

    la = adapter.layer_adapter(adapter.layers()[1])
    handles = [
        la.attention_input_norm().register_forward_hook(keep("attn")),
        la.mlp_input_norm().register_forward_hook(keep("mlp")),
    ]
    with torch.no_grad():
        model.model(torch.tensor([SEQS[0]]))
    for h in handles:
        h.remove()
    scores, _ = profile_sequences(adapter, [SEQS[0]], ["normed"], 64, 0)
    expected = 0.5 * (seen["attn"][0] + seen["mlp"][0])
    np.testing.assert_allclose(scores.layer["normed"][1], expected.numpy(), rtol=1e-5, atol=1e-6)


def test_padding_does_not_change_a_samples_scores():
    adapter = get_adapter(tiny_model("gemma3_text"))
    alone, _ = profile_sequences(adapter, [SEQS[1]], ["residual", "normed"], 64, 0)
    batched, tokens = profile_sequences(adapter, SEQS, ["residual", "normed"], 4096, 0, min_fill=0.0)
    assert tokens["padded_tokens"] > tokens["real_tokens"]  # the batch really was padded
    for site in ("residual", "normed"):
        np.testing.assert_allclose(batched.sample[site][1], alone.sample[site][0], rtol=1e-5, atol=1e-6)


def test_statistics_accumulate_in_fp32_for_a_bf16_model():
    """The bf16 block outputs, averaged in fp64 here, must match the recorded statistics to fp32
    precision: 8 x 256 tokens of similar magnitude per dimension, where a bf16 sum (or even only a
    bf16 result, 8 significant bits) is off by ~1e-3 relative, far over the 1e-5 allowed."""
    model = tiny_model("llama").to(torch.bfloat16)
    adapter = get_adapter(model)
    ids = torch.randint(3, 128, (8, 256), generator=torch.Generator().manual_seed(0))
    seen = []  # each block's raw bf16 output, from a hook of our own on the same forward
    handles = [
        layer.register_forward_hook(lambda m, a, o: seen.append((o[0] if isinstance(o, tuple) else o).detach()))
        for layer in adapter.layers()
    ]
    try:
        with record_activations(adapter, ["residual"]) as stats:
            stats.begin_batch(torch.ones_like(ids))
            with torch.no_grad():
                model.model(ids)
            out = stats.end_batch()
            layer = stats.layer_means()["residual"]
    finally:
        for h in handles:
            h.remove()
    assert all(h.dtype == torch.bfloat16 for h in seen) and len(seen) == 2
    ref = torch.stack([h.double().abs().mean(1) for h in seen])  # (L, B, D) token means in fp64
    assert stats.layer_sum["residual"].dtype == torch.float32 and out["residual"].dtype == torch.float32
    np.testing.assert_allclose(layer.double().numpy(), ref.mean(1).numpy(), rtol=1e-5)
    np.testing.assert_allclose(out["residual"].double().numpy(), ref.mean(0).numpy(), rtol=1e-5)


def test_hooks_are_removed_even_when_the_forward_fails():
    model = tiny_model("mistral")
    adapter = get_adapter(model)
    modules = list(model.modules())
    with pytest.raises(RuntimeError, match="boom"), record_activations(adapter, ["residual", "normed"]):
        assert sum(len(m._forward_hooks) for m in modules) == 2 + 4
        raise RuntimeError("boom")
    assert sum(len(m._forward_hooks) for m in modules) == 0


def test_profile_batches_cover_every_index_once_within_budget():
    lengths = [5, 100, 7, 99, 3, 50, 51, 52, 1, 200]
    batches = profile_batches(lengths, max_batch_tokens=210)
    assert sorted(i for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert max(lengths[i] for i in b) * len(b) <= 210 or len(b) == 1
        fill = sum(lengths[i] for i in b) / (max(lengths[i] for i in b) * len(b))
        assert fill >= 0.92 or len(b) == 1
