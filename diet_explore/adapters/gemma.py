"""Gemma-2 / Gemma-3 text decoders.

Differences from Llama that matter here: norms scale by (1 + w); four norms per block (the
attention and MLP outputs are normed again before the residual add); embeddings are multiplied by
sqrt(hidden_size) at run time (computed from the config, so slicing changes it unless folded);
Gemma-2 soft-caps logits.
"""

from __future__ import annotations

import math

from torch import nn

from diet_explore.adapters.base import LayerAdapter, ModelAdapter


class GemmaLayerAdapter(LayerAdapter):
    def attention_input_norm(self) -> nn.Module:
        return self.layer.input_layernorm

    def mlp_input_norm(self) -> nn.Module:
        return self.layer.pre_feedforward_layernorm

    def hidden_norms(self) -> list[nn.Module]:
        layer = self.layer
        return [layer.input_layernorm, layer.post_attention_layernorm,
                layer.pre_feedforward_layernorm, layer.post_feedforward_layernorm]

    def attention_inputs(self) -> list[nn.Linear]:
        attn = self.layer.self_attn
        return [attn.q_proj, attn.k_proj, attn.v_proj]

    def attention_output(self) -> nn.Linear:
        return self.layer.self_attn.o_proj

    def mlp_inputs(self) -> list[nn.Linear]:
        return [self.layer.mlp.gate_proj, self.layer.mlp.up_proj]

    def mlp_output(self) -> nn.Linear:
        return self.layer.mlp.down_proj


class GemmaAdapter(ModelAdapter):
    model_types = ("gemma2", "gemma3_text")
    norm_offset = 1.0

    def base_model(self) -> nn.Module:
        return self.model.model

    def layers(self):
        return self.model.model.layers

    def layer_adapter(self, layer: nn.Module) -> LayerAdapter:
        return GemmaLayerAdapter(layer)

    def embedding(self) -> nn.Embedding:
        return self.model.model.embed_tokens

    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    def lm_head(self) -> nn.Linear:
        return self.model.lm_head

    def embedding_scale(self) -> float:
        return math.sqrt(self.config.hidden_size)
