"""Model-family adapters, looked up by ``config.model_type``.

Every module in this folder is imported and every ``ModelAdapter`` subclass that lists
``model_types`` is a supported family: adding a family is one new file here.
"""

from __future__ import annotations

import importlib
import pkgutil

from torch import nn

from diet_explore.core.errors import DietError
from diet_explore.models.adapters.base import LayerAdapter, ModelAdapter

_NOT_FAMILIES = {"base", "tiny"}


def _discover() -> tuple[type[ModelAdapter], ...]:
    for info in pkgutil.iter_modules(__path__):
        if info.name not in _NOT_FAMILIES:
            importlib.import_module(f"{__name__}.{info.name}")
    found, todo = [], list(ModelAdapter.__subclasses__())
    while todo:
        cls = todo.pop(0)
        todo += cls.__subclasses__()
        if cls.__dict__.get("model_types"):  # its own list: a family, not just a shared base
            found.append(cls)
    return tuple(sorted(found, key=lambda c: c.__name__))


ADAPTERS: tuple[type[ModelAdapter], ...] = _discover()
SUPPORTED_MODEL_TYPES: tuple[str, ...] = tuple(t for a in ADAPTERS for t in a.model_types)


def adapter_class(model_type: str) -> type[ModelAdapter]:
    for cls in ADAPTERS:
        if model_type in cls.model_types:
            return cls
    raise DietError(
        f"model family {model_type!r} is not supported",
        f"supported families: {', '.join(SUPPORTED_MODEL_TYPES)} (add one: a new file in diet_explore/models/adapters/)",
    )


def check_supported(model_type: str) -> None:
    adapter_class(model_type)


def get_adapter(model: nn.Module) -> ModelAdapter:
    return adapter_class(model.config.model_type)(model)


__all__ = ["ADAPTERS", "SUPPORTED_MODEL_TYPES", "LayerAdapter", "ModelAdapter", "get_adapter", "check_supported", "adapter_class"]
