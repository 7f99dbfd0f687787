"""Gemma-2 / Gemma-3 text decoders.

The q/k/v/o and gate/up/down projections and the module paths are Llama's, so these adapters
extend the Llama ones and override only what differs here: norms scale by (1 + w); four norms per
block (the attention and MLP outputs are normed again before the residual add); embeddings are
multiplied by sqrt(hidden_size) at run time (computed from the config, so slicing changes it
unless folded); Gemma-2 soft-caps logits (the model applies it; nothing here touches it).
"""

from __future__ import annotations

import math

from torch import nn

from diet_explore.adapters.base import LayerAdapter
from diet_explore.adapters.llama import LlamaAdapter, LlamaLayerAdapter


class GemmaLayerAdapter(LlamaLayerAdapter):
    def mlp_input_norm(self) -> nn.Module:
        return self.layer.pre_feedforward_layernorm

    def hidden_norms(self) -> list[nn.Module]:
        layer = self.layer
        return [layer.input_layernorm, layer.post_attention_layernorm,
                layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm]


class GemmaAdapter(LlamaAdapter):
    model_types = ("gemma2", "gemma3_text")
    norm_offset = 1.0

    def layer_adapter(self, layer: nn.Module) -> LayerAdapter:
        return GemmaLayerAdapter(layer)

    def embedding_scale(self) -> float:
        return math.sqrt(self.config.hidden_size)
