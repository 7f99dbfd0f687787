"""Saving a pruned model as a plain Hugging Face folder, and whether a kept count can be saved at all.

transformers 5's Llama and Gemma configs demand ``hidden_size % num_attention_heads == 0`` on save
and load, so a pruned model folder needs a kept count that its config class accepts
(``required_multiple``); ``check_saveable`` refuses other counts before any weight is read. The
folder holds the weights, the tokenizer, the mask (``diet_mask.json``), a summary
(``diet_explore_pruned.json``) and a model card that says how to load and evaluate it.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from pathlib import Path
from typing import Any

from torch import nn

from diet_explore.core import atomic
from diet_explore.core.errors import DietError
from diet_explore.models.adapters import get_adapter
from diet_explore.profiling.cache import MANIFEST
from diet_explore.tasks.registry import builtin_task_names, load_registry

PRUNE_INFO_FILE = "diet_explore_pruned.json"
NOT_PRUNED = (MANIFEST,)  # in a folder to replace: another kind's files (a score cache), never replaced with it
#: The attribute a rotated-and-sliced model carries (``rotate.py``); such a model is no HF architecture.
ROTATION_INFO = "diet_rotation_info"
MASK_FILE = "diet_mask.json"


def size_on_disk(folder: str | Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------------
def save_pruned(
    model: nn.Module,
    tokenizer,
    out: str | Path,
    mask_file=None,
    overwrite: bool = False,
    source_model: str | None = None,
    method: str | None = None,
) -> Path:
    """Save a pruned model as a plain Hugging Face folder (+ tokenizer, mask JSON, model card).

    Written into a staged folder renamed into place at the end: an interrupted save leaves nothing.
    With ``overwrite`` an existing folder is replaced only when it is a pruned folder this tool
    wrote (it holds ``PRUNE_INFO_FILE``) or empty; anything else is refused (``atomic.staged_dir``).
    """
    if getattr(model, ROTATION_INFO, None) is not None:
        raise DietError(
            "a rotated and sliced (SliceGPT) model is no plain Hugging Face architecture (shortcut matrices), "
            "so from_pretrained could not load the folder",
            "save it with diet_explore.pruning.rotated_io.save_rotated, which this package reloads",
        )
    info = dict(getattr(model, "diet_prune_info", None) or {})
    info.setdefault("n_kept", int(model.config.hidden_size))
    dtype = str(next(model.parameters()).dtype).removeprefix("torch.")  # what the weights are saved in
    check_config_saveable(model.config)
    default_source = str(getattr(model.config, "_name_or_path", "") or "") or None
    return write_pruned_folder(
        out, model.save_pretrained, info, dtype, tokenizer, mask_file, overwrite, source_model, method, default_source
    )


def check_config_saveable(config) -> None:
    """Refuse a pruned config whose class would reject its hidden size on save or reload."""
    if not config_accepts(config, int(config.hidden_size), int(config.head_dim)):
        raise DietError(
            f"hidden size {config.hidden_size} is not accepted by the {config.model_type} config "
            "class, so the saved folder would not load",
            f"prune with a kept count that is a multiple of "
            f"{config.num_attention_heads} (mask --multiple-of {config.num_attention_heads})",
        )


def write_pruned_folder(
    out: str | Path,
    write_model: Callable[[Path], Any],
    info: dict[str, Any],
    dtype: str,
    tokenizer=None,
    mask_file=None,
    overwrite: bool = False,
    source_model: str | None = None,
    method: str | None = None,
    default_source: str | None = None,
) -> Path:
    """The folder every pruned model is saved as: ``write_model(folder)`` writes the weights and
    config (``save_pretrained`` of a model in memory, or ``streaming.py`` shard by shard), then the
    tokenizer, mask, summary and card are added, all in a staged folder renamed into place."""
    info = dict(info)
    if mask_file is not None:
        method = method or getattr(mask_file, "method", None)
        source_model = source_model or getattr(mask_file, "model_id", None) or getattr(mask_file, "model_name", None)
    info.update(source_model=source_model or default_source or "unknown", method=method or "unknown", dtype=dtype)
    out = Path(out)
    with atomic.staged_dir(out, overwrite=overwrite, marker=PRUNE_INFO_FILE, foreign=NOT_PRUNED) as tmp:
        write_model(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if mask_file is not None:
            from diet_explore.masking.maskfile import save_mask

            save_mask(mask_file, tmp / MASK_FILE)
        summary = {k: v for k, v in info.items() if k != "kept_indices"}
        summary["n_kept"] = len(info.get("kept_indices", [])) or summary.get("n_kept")
        atomic.write_json(tmp / PRUNE_INFO_FILE, summary)
        tasks = list(getattr(mask_file, "tasks", None) or [])
        atomic.write_text(tmp / "README.md", model_card(summary, out.name, mask_file is not None, tasks, mask_file))
    return out


def model_card(info: dict[str, Any], folder_name: str, has_mask: bool, tasks: list[str] | None = None, mask_file=None) -> str:
    """The folder's README.md; its lm_eval commands evaluate ``tasks`` (those the mask voted with),
    or every built-in task, on the held-out documents (``lmeval_commands.card_section``)."""
    from diet_explore.models.builtin import builtin_for, store_path
    from diet_explore.tasks.lmeval_commands import card_section

    registry = load_registry()
    tasks = [t for t in (tasks or []) if t in registry] or builtin_task_names()
    # a built-in source is a de-quantized GGUF, said beside its hub id (BuiltinModel.provenance)
    builtin = builtin_for(getattr(mask_file, "model_name", None))
    provenance = getattr(mask_file, "model_source", None) or (builtin.provenance if builtin else None)
    source_label = f"`{info.get('source_model')}`" + (f": {provenance}" if provenance else "")

    def fmt(n):
        return f"{n / 1e6:.2f} M" if isinstance(n, (int, float)) else "?"

    before, after = info.get("parameters_before"), info.get("parameters_after")
    lines = [
        f"# {folder_name}",
        "",
        f"Hidden-dimension structured pruning of {source_label}, made with diet-explore.",
        "",
        "| | |",
        "|---|---|",
        f"| source model | {source_label} |",
        f"| method | {info.get('method')} |",
        f"| hidden size | {info.get('hidden_size_before', '?')} → {info.get('hidden_size_after', '?')} "
        f"(sparsity {info.get('sparsity', float('nan')):.3f}) |",
        f"| parameters | {fmt(before)} → {fmt(after)} |",
        f"| weights saved in | {info.get('dtype', '?')} |",
        "",
        "Heads, head size and MLP width are unchanged; only the residual-stream width is smaller.",
    ]
    if info.get("embedding_scale_folded"):
        lines += [
            "",
            f"Gemma embedding scale: the factor sqrt(D)/sqrt(D') = {info['embedding_scale_folded']:.6f} is folded "
            "into the embedding weights (and its inverse into the final norm when the head is tied), so the "
            "model loads and runs with stock transformers.",
        ]
    lines += [
        "",
        "## Load",
        "",
        "```python",
        "from transformers import AutoModelForCausalLM, AutoTokenizer",
        "",
        f'model = AutoModelForCausalLM.from_pretrained("{folder_name}")  # no trust_remote_code needed',
        f'tokenizer = AutoTokenizer.from_pretrained("{folder_name}")',
        "```",
        "",
        *card_section(
            folder_name,
            builtin.name if builtin else str(info.get("source_model")),
            str(store_path(builtin.name)) if builtin else str(info.get("source_model")),
            tasks,
            info.get("dtype", "float32"),
            has_mask,
        ),
    ]
    if has_mask:
        lines += ["", f"The mask is in `{MASK_FILE}` (kept hidden indices and how the mask was built)."]
    return "\n".join(lines) + "\n"


def config_accepts(config, hidden_size: int, head_dim: int) -> bool:
    """Whether this transformers version's config class validates with the new hidden size (Llama and
    Gemma configs demand ``hidden_size % num_attention_heads == 0`` on save and load)."""
    cfg = copy.deepcopy(config)
    cfg.hidden_size, cfg.head_dim = hidden_size, head_dim
    validate = getattr(cfg, "validate", None)
    if validate is None:
        return True
    from huggingface_hub.errors import StrictDataclassError  # what transformers' strict configs raise

    try:
        validate()
    except (ValueError, TypeError, StrictDataclassError):  # the sizes this config refuses
        return False
    return True


def required_multiple(model: nn.Module) -> int:
    """Kept counts must be a multiple of this for the pruned model to save and reload (1 = any)."""
    return required_multiple_for_config(model.config, get_adapter(model).head_dim())


def required_multiple_for_config(cfg, head_dim: int | None = None) -> int:
    """``required_multiple`` from the config alone, so a command can refuse before loading weights."""
    cfg = _text_config(cfg)
    heads = int(cfg.num_attention_heads)
    probe = heads + 1 if heads > 1 else 1
    return 1 if config_accepts(cfg, probe, head_dim or _config_head_dim(cfg)) else heads


def check_saveable(cfg, n_keep: int, head_dim: int | None = None) -> None:
    """Refuse a kept count this config class would reject on save/reload, naming the multiple it needs."""
    cfg = _text_config(cfg)
    if not config_accepts(cfg, n_keep, head_dim or _config_head_dim(cfg)):
        m = required_multiple_for_config(cfg, head_dim)
        raise DietError(
            f"the mask keeps {n_keep} dims, but a {cfg.model_type} config only accepts a hidden size that is a "
            f"multiple of num_attention_heads ({m}), so the pruned model could not be saved or reloaded",
            f"build the mask with --multiple-of {m} (e.g. `diet-explore mask ... --multiple-of {m}`)",
        )


def _text_config(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _config_head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def required_multiple_for_model(name_or_path: str) -> int | None:
    """``required_multiple`` for a built-in name or local folder, read from its config only; None when
    that would mean converting a built-in or asking the hub (the app must not block on either)."""
    from diet_explore.models.builtin import is_installed
    from diet_explore.models.loading import load_config, resolve_source

    kind, loc = resolve_source(name_or_path)
    if kind == "hub" or (kind == "builtin" and not is_installed(loc)):
        return None
    return required_multiple_for_config(load_config(name_or_path))
