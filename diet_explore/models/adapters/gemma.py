"""Gemma-2 / Gemma-3 text decoders.

The q/k/v/o and gate/up/down projections and the module paths are Llama's, so these adapters
extend the Llama ones and override only what differs here: norms scale by (1 + w); four norms per
block (the attention and MLP outputs are normed again before the residual add); embeddings are
multiplied by sqrt(hidden_size) at run time (computed from the config, so slicing changes it
unless folded); Gemma-2 soft-caps the output logits.
"""

from __future__ import annotations

import math

from torch import nn

from diet_explore.models.adapters.base import LayerAdapter
from diet_explore.models.adapters.llama import LlamaAdapter, LlamaLayerAdapter


class GemmaLayerAdapter(LlamaLayerAdapter):
    def mlp_input_norm(self) -> nn.Module:
        return self.layer.pre_feedforward_layernorm

    def hidden_norms(self) -> list[nn.Module]:
        layer = self.layer
        return [
            layer.input_layernorm,
            layer.post_attention_layernorm,
            layer.pre_feedforward_layernorm,
            layer.post_feedforward_layernorm,
        ]


class GemmaAdapter(LlamaAdapter):
    model_types = ("gemma2", "gemma3_text")
    tiny_configs = {
        "gemma2": {
            "sliding_window": 64,
            "query_pre_attn_scalar": 16,
            "final_logit_softcapping": 30.0,
            "attn_logit_softcapping": 50.0,
        },
        "gemma3_text": {
            "sliding_window": 64,
            "query_pre_attn_scalar": 16,
            "layer_types": ["sliding_attention", "full_attention"],
        },
    }
    norm_offset = 1.0

    def layer_adapter(self, layer: nn.Module) -> LayerAdapter:
        return GemmaLayerAdapter(layer)

    def embedding_scale(self) -> float:
        return math.sqrt(self.config.hidden_size)

    def rotation_refusal(self) -> str | None:
        return (
            f"{self.config.model_type} normalises the attention and MLP outputs again before the residual add "
            "(sandwich norms), and that per-dimension (1 + w) scale on the residual stream does not commute "
            "with a rotation, so rotate-and-slice would not be exact"
        )

    def final_logit_softcap(self) -> float | None:
        return getattr(self.config, "final_logit_softcapping", None)
