"""Saving and reloading a rotated-and-sliced (SliceGPT) model in this package's own format.

A rotated model is no stock Hugging Face architecture: its blocks carry shortcut matrices on the
residual path and its norms divide by the dense width. ``from_pretrained`` alone cannot load it,
and the folder has no ``config.json`` on purpose, so it fails loudly instead of loading something
else. The format (version 1)::

    diet_slicegpt.json   {"format": "diet-explore-slicegpt", "version": 1, "scheme", "hidden_size" (D),
                          "keep" (k), "dtype", "dense_config" (the dense model's config),
                          "rotation" (what rotate_and_slice recorded: parameter counts, calibration)}
    model.safetensors    every tensor of the rotated model's state dict (no pickle)
    tokenizer files      as the tokenizer saves them (optional)
    README.md            what this is and how to load it

``load_rotated(folder)`` rebuilds the dense architecture from ``dense_config``, gives it the rotated
structure (``rotate_and_slice`` with placeholder bases) and loads the saved tensors into it, strictly.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from torch import nn

from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.pruning.rotate import ROTATION_INFO, Rotations, Sites, rotate_and_slice, rotation_summary

FORMAT = "diet-explore-slicegpt"
VERSION = 1
META_FILE = "diet_slicegpt.json"
WEIGHTS_FILE = "model.safetensors"


def save_rotated(model: nn.Module, out: str | Path, tokenizer=None, overwrite: bool = False) -> Path:
    """Write a rotated model (from ``rotate_and_slice``) into the folder ``out`` (staged, renamed into place)."""
    from safetensors.torch import save_file

    info = rotation_summary(model)
    if info is None:
        raise DietError("this model is not rotated and sliced", "save a pruned model with `diet-explore prune`")
    meta = {
        "format": FORMAT,
        "version": VERSION,
        "note": "not a plain Hugging Face folder: load it with diet_explore.pruning.rotated_io.load_rotated",
        "scheme": info["scheme"],
        "hidden_size": info["hidden_size_before"],
        "keep": info["hidden_size_after"],
        "dtype": str(next(model.parameters()).dtype).removeprefix("torch."),
        "dense_config": info["dense_config"],
        "rotation": {k: v for k, v in info.items() if k != "dense_config"},
    }
    state = {k: v.detach().cpu().contiguous() for k, v in model.state_dict().items()}
    with atomic.staged_dir(out, overwrite=overwrite) as tmp:
        save_file(state, str(tmp / WEIGHTS_FILE), metadata={"format": FORMAT, "version": str(VERSION)})
        atomic.write_json(tmp / META_FILE, meta)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
            (tmp / "config.json").unlink(missing_ok=True)  # never a config that from_pretrained would half-load
        atomic.write_text(tmp / "README.md", _card(meta, Path(out).name))
    return Path(out)


def load_rotated(folder: str | Path, dtype: torch.dtype | None = None) -> nn.Module:
    """The rotated model saved in ``folder`` (on the CPU, in its saved dtype unless ``dtype``)."""
    from safetensors.torch import load_file
    from transformers import CONFIG_MAPPING, AutoModelForCausalLM

    from diet_explore.models.adapters import check_supported

    folder = Path(folder)
    meta = _read_meta(folder)
    dense = dict(meta["dense_config"])
    model_type = dense.get("model_type")
    check_supported(model_type)
    config = CONFIG_MAPPING[model_type].from_dict(dense)
    dtype = dtype or getattr(torch, meta["dtype"])
    skeleton = AutoModelForCausalLM.from_config(config, dtype=dtype)
    d, k = int(meta["hidden_size"]), int(meta["keep"])
    sites = Sites(int(config.num_hidden_layers), meta["scheme"])
    placeholder = torch.eye(d, dtype=torch.float64)[:, :k]  # gives the structure; every weight is then loaded
    model = rotate_and_slice(skeleton, Rotations(meta["scheme"], k, d, [placeholder] * sites.count), copy_model=False)
    state = load_file(str(folder / WEIGHTS_FILE))
    try:
        model.load_state_dict({n: t.to(dtype) for n, t in state.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise DietError(
            f"{folder / WEIGHTS_FILE} does not match the model {META_FILE} describes ({str(exc).splitlines()[0][:200]})",
            "save the folder again with save_rotated",
        ) from None
    info = dict(meta["rotation"], dense_config=dense)
    setattr(model, ROTATION_INFO, info)
    return model.eval()


def _read_meta(folder: Path) -> dict[str, Any]:
    path = folder / META_FILE
    if not path.is_file():
        raise DietError(f"{folder} has no {META_FILE}, so it is not a saved rotated model", "save one with save_rotated")
    try:
        meta = atomic.loads_json(path.read_text())
    except json.JSONDecodeError as exc:
        raise DietError(f"{path} is not valid JSON ({exc})", "save the folder again with save_rotated") from None
    if meta.get("format") != FORMAT or meta.get("version") != VERSION:
        raise DietError(
            f"{path} is format {meta.get('format')!r} version {meta.get('version')!r}; this package reads {FORMAT!r} version {VERSION}",
            "save the folder again with this version of diet-explore",
        )
    return meta


def _card(meta: dict[str, Any], name: str) -> str:
    rot = meta["rotation"]
    return (
        f"# {name}\n\n"
        f"A SliceGPT-style rotated and sliced model made with diet-explore: the residual stream rotated into "
        f"its principal directions ({meta['scheme']!r} scheme) and sliced from {meta['hidden_size']} to "
        f"{meta['keep']} dims. Parameters: {rot['parameters_before']:,} -> {rot['parameters_after']:,} "
        f"({rot['shortcut_parameters']:,} of them in shortcut matrices; the head is its own matrix).\n\n"
        "**This is not a plain Hugging Face folder.** The blocks carry shortcut matrices on the residual "
        "path and the norms divide by the dense width, so `AutoModelForCausalLM.from_pretrained` alone "
        "cannot load it (the folder has no `config.json` on purpose). Load it with diet-explore:\n\n"
        "```python\n"
        "from diet_explore.pruning.rotated_io import load_rotated\n\n"
        f'model = load_rotated("{name}")\n'
        "```\n\n"
        f"Format: `{META_FILE}` (format {FORMAT!r}, version {VERSION}: scheme, sizes, the dense config, what the "
        f"rotation recorded) and `{WEIGHTS_FILE}` (the state dict).\n"
    )
