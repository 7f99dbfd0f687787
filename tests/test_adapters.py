import math

import pytest
import torch

from diet_explore.core.errors import DietError
from diet_explore.models.adapters import SUPPORTED_MODEL_TYPES, get_adapter
from diet_explore.models.adapters.gemma import GemmaAdapter
from diet_explore.models.adapters.llama import LlamaAdapter
from diet_explore.models.adapters.tiny import TINY_FAMILIES, tiny_model


@pytest.mark.parametrize("family", TINY_FAMILIES)
def test_every_family_has_an_adapter_whose_accessors_touch_the_hidden_dim(family):
    model = tiny_model(family)
    adapter = get_adapter(model)
    d = adapter.hidden_size
    assert isinstance(adapter, GemmaAdapter if family.startswith("gemma") else LlamaAdapter)
    assert len(adapter.layers()) == 2
    assert adapter.embedding().weight.shape[1] == d
    assert adapter.lm_head().weight.shape[1] == d
    assert adapter.final_norm().weight.shape == (d,)
    assert adapter.ties_embeddings()
    for la in adapter.layer_adapters():
        assert all(n.weight.shape == (d,) for n in la.hidden_norms())
        assert len(la.hidden_norms()) == (4 if family.startswith("gemma") else 2)
        assert all(lin.in_features == d for lin in la.attention_inputs() + la.mlp_inputs())
        assert la.attention_output().out_features == d and la.mlp_output().out_features == d
        assert la.attention_input_norm() in la.hidden_norms() and la.mlp_input_norm() in la.hidden_norms()


def test_gemma_scales_embeddings_and_offsets_norms_llama_does_not():
    gemma, llama = get_adapter(tiny_model("gemma2")), get_adapter(tiny_model("llama"))
    assert gemma.embedding_scale() == pytest.approx(math.sqrt(64)) and gemma.norm_offset == 1.0
    assert llama.embedding_scale() == 1.0 and llama.norm_offset == 0.0


def test_base_model_runs_without_vocab_projection():
    adapter = get_adapter(tiny_model("qwen3"))
    out = adapter.base_model()(input_ids=torch.tensor([[1, 4, 5]]))
    assert out.last_hidden_state.shape == (1, 3, 64)


def test_unknown_family_names_the_supported_ones():
    model = tiny_model("llama")
    model.config.model_type = "gpt2"
    with pytest.raises(DietError) as err:
        get_adapter(model)
    assert "'gpt2'" in err.value.message
    for family in SUPPORTED_MODEL_TYPES:
        assert family in err.value.hint
