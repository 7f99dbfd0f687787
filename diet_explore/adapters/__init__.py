"""Model-family adapters, looked up by ``config.model_type``."""

from __future__ import annotations

from torch import nn

from diet_explore.adapters.base import LayerAdapter, ModelAdapter
from diet_explore.adapters.gemma import GemmaAdapter
from diet_explore.adapters.llama import LlamaAdapter
from diet_explore.errors import DietError

ADAPTERS: tuple[type[ModelAdapter], ...] = (LlamaAdapter, GemmaAdapter)
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_class(model_type: str) -> type[ModelAdapter]:
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise DietError(
        f"model family {model_type!r} is not supported",
        f"supported families: {', '.join(SUPPORTED_MODEL_TYPES)} (add one: a new file in diet_explore/adapters/)",
    )


def check_supported(model_type: str) -> None:
    adapter_class(model_type)


def get_adapter(model: nn.Module) -> ModelAdapter:
    return adapter_class(model.config.model_type)(model)


__all__ = ["ADAPTERS", "SUPPORTED_MODEL_TYPES", "LayerAdapter", "ModelAdapter", "get_adapter", "check_supported", "adapter_class"]
