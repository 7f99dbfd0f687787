"""Llama-style decoders: pre-norm blocks, RMSNorm(x) * w. Mistral and Qwen2/3 share the layout
(Qwen2 adds q/k/v biases, Qwen3 adds per-head q/k norms; neither touches the hidden dimension)."""

from __future__ import annotations

from torch import nn

from diet_explore.models.adapters.base import LayerAdapter, ModelAdapter


class LlamaLayerAdapter(LayerAdapter):
    def attention_input_norm(self) -> nn.Module:
        return self.layer.input_layernorm

    def mlp_input_norm(self) -> nn.Module:
        return self.layer.post_attention_layernorm

    def hidden_norms(self) -> list[nn.Module]:
        return [self.layer.input_layernorm, self.layer.post_attention_layernorm]

    def attention_inputs(self) -> list[nn.Linear]:
        attn = self.layer.self_attn
        return [attn.q_proj, attn.k_proj, attn.v_proj]

    def attention_output(self) -> nn.Linear:
        return self.layer.self_attn.o_proj

    def mlp_inputs(self) -> list[nn.Linear]:
        return [self.layer.mlp.gate_proj, self.layer.mlp.up_proj]

    def mlp_output(self) -> nn.Linear:
        return self.layer.mlp.down_proj

    def head_dim(self) -> int:
        return int(self.layer.self_attn.head_dim)

    def attention(self) -> nn.Module:
        return self.layer.self_attn

    def mlp(self) -> nn.Module:
        return self.layer.mlp


class LlamaAdapter(ModelAdapter):
    model_types = ("llama", "mistral", "qwen2", "qwen3")
    tiny_configs = {"llama": {}, "mistral": {}, "qwen2": {}, "qwen3": {}}

    def base_model(self) -> nn.Module:
        return self.model.model

    def layers(self):
        return self.model.model.layers

    def layer_adapter(self, layer: nn.Module) -> LayerAdapter:
        return LlamaLayerAdapter(layer)

    def embedding(self) -> nn.Embedding:
        return self.model.model.embed_tokens

    def final_norm(self) -> nn.Module:
        return self.model.model.norm

    def lm_head(self) -> nn.Linear:
        return self.model.lm_head

    def rotation_refusal(self) -> str | None:
        return None  # pre-norm blocks, RMSNorm(x) * w: exact (tests/test_rotate.py)
