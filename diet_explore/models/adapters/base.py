"""The adapter contract: every algorithm (profiling hooks, slicing, scoring) is written once against it.

One subclass per model family, chosen by ``config.model_type``; adding a family is one new file in
this folder (found by searching subclasses, nothing to register) that lists its ``model_types`` and,
in ``tiny_configs``, the config fields a tiny random test model of each type needs. Accessors are
one-liners that return modules; what differs between families in the numbers (norm offset,
embedding scale, logit soft-capping) is a method here, never a check of the config elsewhere.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from typing import Any, ClassVar

import torch
from torch import nn


class LayerAdapter(ABC):
    """Accessors for one decoder block."""

    def __init__(self, layer: nn.Module):
        self.layer = layer

    @abstractmethod
    def attention_input_norm(self) -> nn.Module:
        """Norm whose output feeds q/k/v (the 'normed' profiling site, attention half)."""

    @abstractmethod
    def mlp_input_norm(self) -> nn.Module:
        """Norm whose output feeds the MLP (the 'normed' profiling site, MLP half)."""

    @abstractmethod
    def hidden_norms(self) -> list[nn.Module]:
        """Every norm in the block whose weight lives on the hidden dimension."""

    @abstractmethod
    def attention_inputs(self) -> list[nn.Linear]:
        """q, k, v projections: their input columns are hidden dimensions."""

    @abstractmethod
    def attention_output(self) -> nn.Linear:
        """o projection: its output rows are hidden dimensions."""

    @abstractmethod
    def mlp_inputs(self) -> list[nn.Linear]:
        """gate/up projections: input columns are hidden dimensions."""

    @abstractmethod
    def mlp_output(self) -> nn.Linear:
        """down projection: output rows are hidden dimensions."""

    @abstractmethod
    def head_dim(self) -> int:
        """Size of one attention head (unchanged by pruning the hidden dimension)."""

    @abstractmethod
    def attention(self) -> nn.Module:
        """The attention module: called as the block calls it, ``attention(hidden_states=..., **kw)[0]``."""

    @abstractmethod
    def mlp(self) -> nn.Module:
        """The MLP module: ``mlp(x)``."""


class ModelAdapter(ABC):
    """Accessors for a whole causal LM of one family."""

    model_types: ClassVar[tuple[str, ...]] = ()
    #: Per model type, the config fields (beyond the shared tiny sizes in ``tiny.py``) that a tiny
    #: random model of that type needs; every type in ``model_types`` must have one (tested).
    tiny_configs: ClassVar[dict[str, dict[str, Any]]] = {}
    #: RMSNorm output is ``x_hat * (norm_offset + weight)``: 0 for Llama-style, 1 for Gemma.
    norm_offset: ClassVar[float] = 0.0

    def __init__(self, model: nn.Module):
        self.model = model
        self.config = model.config

    @property
    def hidden_size(self) -> int:
        return int(self.config.hidden_size)

    @abstractmethod
    def base_model(self) -> nn.Module:
        """The decoder stack without the vocabulary projection (profiling runs only this)."""

    @abstractmethod
    def layers(self) -> Sequence[nn.Module]:
        """The decoder blocks, in order."""

    @abstractmethod
    def layer_adapter(self, layer: nn.Module) -> LayerAdapter:
        """Adapter over one decoder block."""

    @abstractmethod
    def embedding(self) -> nn.Embedding:
        """Token embedding (columns are hidden dimensions)."""

    @abstractmethod
    def final_norm(self) -> nn.Module:
        """Norm applied after the last block."""

    @abstractmethod
    def lm_head(self) -> nn.Linear:
        """Vocabulary projection (input columns are hidden dimensions)."""

    def embedding_scale(self) -> float:
        """Factor the model multiplies embeddings by at run time (Gemma: sqrt(hidden_size))."""
        return 1.0

    def rms_norm_eps(self) -> float:
        """The epsilon every hidden-dimension RMSNorm of this family adds to the mean square."""
        return float(self.config.rms_norm_eps)

    def rotation_refusal(self) -> str | None:
        """Why rotate-and-slice (``pruning/rotate.py``) is not exact for this family, or None when it is:
        pre-norm blocks ``x + attn(norm(x))`` then ``x + mlp(norm(x))`` whose RMSNorm scale folds
        into the linears it feeds. A family says None only after its exactness test passes."""
        return f"rotate-and-slice has not been shown exact for {self.config.model_type} models"

    def final_logit_softcap(self) -> float | None:
        """Soft-capping of the output logits, ``cap * tanh(logits / cap)`` (Gemma-2), else None."""
        return None

    def logits(self, hidden: torch.Tensor) -> torch.Tensor:
        """(..., D) final hidden states -> (..., V) fp32 logits, exactly as the model's forward
        computes them after its last norm (vocabulary projection, then any soft-capping)."""
        logits = self.lm_head()(hidden).float()
        cap = self.final_logit_softcap()
        if cap:
            logits = torch.tanh(logits / cap) * cap
        return logits

    def head_dim(self) -> int:
        """Attention head size of the model (its first block's)."""
        return self.layer_adapter(self.layers()[0]).head_dim()

    def params_per_hidden_dim(self) -> int:
        """Parameters removed with each pruned hidden dimension (the app's live parameter count):
        an embedding column (and an untied head's), a weight in every hidden norm, an input column
        of q/k/v/gate/up and an output row (+ bias) of o/down."""
        n = self.embedding().weight.shape[0] + (0 if self.ties_embeddings() else self.lm_head().weight.shape[0])
        n += 1  # final norm
        for la in self.layer_adapters():
            n += len(la.hidden_norms())
            n += sum(lin.weight.shape[0] for lin in la.attention_inputs() + la.mlp_inputs())
            n += sum(lin.weight.shape[1] + (1 if lin.bias is not None else 0) for lin in (la.attention_output(), la.mlp_output()))
        return n

    def prepared_attention_mask(self, make: Callable[[int | None], torch.Tensor]) -> torch.Tensor | dict[str, torch.Tensor]:
        """The decoder stack's ``attention_mask`` argument for masks built by the caller.

        ``make(window)`` builds one 4D mask (``window`` None: full attention; else a sliding window
        of that many positions). Families whose config lists ``layer_types`` (Qwen2/3, Gemma-2/3)
        take one mask per layer type as a dict; the others take one 4D tensor, which transformers
        uses as-is (Mistral's is its global sliding window's)."""
        window = getattr(self.config, "sliding_window", None)
        types = getattr(self.config, "layer_types", None)
        if types:
            return {t: make(window if t == "sliding_attention" else None) for t in set(types)}
        return make(window)

    def layer_adapters(self) -> list[LayerAdapter]:
        return [self.layer_adapter(layer) for layer in self.layers()]

    def ties_embeddings(self) -> bool:
        return self.lm_head().weight is self.embedding().weight
