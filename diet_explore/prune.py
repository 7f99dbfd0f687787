"""Structural pruning of hidden dimensions into a smaller, plain Hugging Face model.

A hidden dimension k lives in every tensor that reads or writes the residual stream: the token
embedding's column k, every hidden norm's weight k, the input column k of q/k/v and gate/up, the
output row k of o_proj and down_proj, the final norm and the lm_head's input column k. Removing
it from all of them gives a model with ``hidden_size = D'`` whose residual stream is exactly the
dense one restricted to the kept dimensions; heads, head_dim and the MLP width are unchanged.
(RMSNorm then averages over D' dimensions instead of D: that is the pruning, not a bug.)

Written once against the adapter. Gemma's trap: the embedding is multiplied at run time by
``sqrt(config.hidden_size)``, which a reloaded D'-model would recompute as sqrt(D'). We set the
new model to sqrt(D') too and fold ``r = sqrt(D)/sqrt(D')`` into the embedding weights, so the
residual stream is unchanged; with a tied lm_head the logits would then grow by r, so the final
norm's scale ``(offset + w)`` is divided by r (exact: the lm_head is linear).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from diet_explore import atomic
from diet_explore.adapters import get_adapter
from diet_explore.errors import DietError

PRUNE_INFO_FILE = "diet_explore_pruned.json"
MASK_FILE = "diet_mask.json"


def check_keep(keep: np.ndarray, hidden_size: int) -> np.ndarray:
    """The mask as a (D,) bool array, or a DietError saying what is wrong with it."""
    keep = np.asarray(keep)
    if keep.dtype != np.bool_:
        raise DietError(f"the keep mask must be a bool array, got dtype {keep.dtype}", "True = keep the dimension")
    if keep.shape != (hidden_size,):
        raise DietError(f"the mask has {keep.shape[0] if keep.ndim == 1 else keep.shape} entries but the model's hidden size is {hidden_size}",
                        "use a mask built from this model's score cache")
    if not keep.any():
        raise DietError("the mask keeps 0 hidden dimensions; no model can be built from that", "use a lower sparsity")
    return keep


# --------------------------------------------------------------------------------------------
# Slicing primitives (in place on the copy)
# --------------------------------------------------------------------------------------------
def _param(t: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.contiguous().clone(), requires_grad=False)


def slice_linear_inputs(lin: nn.Linear, idx: torch.Tensor) -> None:
    lin.weight = _param(lin.weight.data[:, idx])  # (out, D) -> (out, D')
    lin.in_features = len(idx)


def slice_linear_outputs(lin: nn.Linear, idx: torch.Tensor) -> None:
    lin.weight = _param(lin.weight.data[idx, :])  # (D, in) -> (D', in)
    if lin.bias is not None:
        lin.bias = _param(lin.bias.data[idx])
    lin.out_features = len(idx)


def slice_norm(norm: nn.Module, idx: torch.Tensor) -> None:
    norm.weight = _param(norm.weight.data[idx])  # (D,) -> (D',)
    if getattr(norm, "bias", None) is not None:
        norm.bias = _param(norm.bias.data[idx])
    if hasattr(norm, "normalized_shape"):  # nn.LayerNorm
        norm.normalized_shape = (len(idx),)


def slice_embedding(emb: nn.Embedding, idx: torch.Tensor, scale: float = 1.0) -> None:
    emb.weight = _param(emb.weight.data[:, idx] * scale)  # (V, D) -> (V, D')
    emb.embedding_dim = len(idx)


def _set_embed_scale(emb: nn.Module, value: float) -> None:
    """Gemma's ScaledWordEmbedding keeps sqrt(hidden_size) in a buffer (and a float copy)."""
    if isinstance(getattr(emb, "embed_scale", None), torch.Tensor):
        emb.embed_scale.fill_(value)
    if hasattr(emb, "scalar_embed_scale"):
        emb.scalar_embed_scale = value


def config_accepts(config, hidden_size: int, head_dim: int) -> bool:
    """Whether this transformers version's config class validates with the new hidden size (Llama and
    Gemma configs demand ``hidden_size % num_attention_heads == 0`` on save and load)."""
    cfg = copy.deepcopy(config)
    cfg.hidden_size, cfg.head_dim = hidden_size, head_dim
    validate = getattr(cfg, "validate", None)
    if validate is None:
        return True
    try:
        validate()
    except Exception:  # noqa: BLE001 - transformers raises its own validation error types
        return False
    return True


def required_multiple(model: nn.Module) -> int:
    """Kept counts must be a multiple of this for the pruned model to save and reload (1 = any)."""
    return required_multiple_for_config(model.config, _head_dim(model, get_adapter(model)))


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
            f"build the mask with --multiple-of {m} (e.g. `diet-explore mask ... --multiple-of {m}`)")


def _text_config(cfg):
    return cfg.get_text_config() if hasattr(cfg, "get_text_config") else cfg


def _config_head_dim(cfg) -> int:
    return int(getattr(cfg, "head_dim", None) or cfg.hidden_size // cfg.num_attention_heads)


def _head_dim(model: nn.Module, adapter) -> int:
    attn = adapter.layers()[0].self_attn
    if getattr(attn, "head_dim", None):
        return int(attn.head_dim)
    return _config_head_dim(model.config)


def required_multiple_for_model(name_or_path: str) -> int | None:
    """``required_multiple`` for a built-in name or local folder, read from its config only; None when
    that would mean converting a built-in or asking the hub (the app must not block on either)."""
    from diet_explore.models import is_installed, load_config, resolve_source

    kind, loc = resolve_source(name_or_path)
    if kind == "hub" or (kind == "builtin" and not is_installed(loc)):
        return None
    return required_multiple_for_config(load_config(name_or_path))


# --------------------------------------------------------------------------------------------
def prune_model(model: nn.Module, keep: np.ndarray, saveable: bool = True) -> nn.Module:
    """A new model with only the kept hidden dimensions; ``model`` itself is never touched.

    ``saveable=False`` also accepts kept counts the config class would reject on save/reload
    (e.g. not a multiple of the head count for Llama/Gemma in transformers 5): in-memory only.
    """
    adapter = get_adapter(model)
    check_single_device(model)
    d = adapter.hidden_size
    keep = check_keep(keep, d)
    head_dim = _head_dim(model, adapter)
    n_keep = int(keep.sum())
    if saveable:
        check_saveable(model.config, n_keep, head_dim)
    params_before = count_parameters(model)

    new = copy.deepcopy(model)
    ad = get_adapter(new)
    emb, head, final = ad.embedding(), ad.lm_head(), ad.final_norm()
    tied = ad.ties_embeddings()
    idx = torch.as_tensor(np.flatnonzero(keep), device=emb.weight.device)
    d_new = len(idx)
    old_scale = ad.embedding_scale()  # sqrt(D) for Gemma, 1 otherwise (read before the config changes)
    with torch.no_grad():
        for la in ad.layer_adapters():
            for norm in la.hidden_norms():
                slice_norm(norm, idx)
            for lin in la.attention_inputs() + la.mlp_inputs():
                slice_linear_inputs(lin, idx)
            slice_linear_outputs(la.attention_output(), idx)
            slice_linear_outputs(la.mlp_output(), idx)
        slice_norm(final, idx)
        new.config.hidden_size = d_new
        new.config.head_dim = head_dim  # some configs derive it from hidden_size / heads
        new_scale = ad.embedding_scale()  # what a reload of the saved config will compute
        ratio = old_scale / new_scale
        slice_embedding(emb, idx, scale=ratio)
        _set_embed_scale(emb, new_scale)
        if tied:
            head.weight = emb.weight  # one Parameter again, as the dense model had
            if ratio != 1.0:  # the tied head now carries r too: undo it in the final norm's scale
                off = ad.norm_offset  # in fp32: in bf16 the fold itself would add rounding
                final.weight.data = ((off + final.weight.data.float()) / ratio - off).to(final.weight.dtype)
        else:
            slice_linear_inputs(head, idx)
    new.eval()
    new.diet_prune_info = {
        "hidden_size_before": d, "hidden_size_after": d_new, "sparsity": 1.0 - d_new / d,
        "parameters_before": params_before, "parameters_after": count_parameters(new),
        "embedding_scale_folded": ratio if ratio != 1.0 else None, "tied_embeddings": tied,
        "kept_indices": [int(i) for i in np.flatnonzero(keep)],
    }
    return new


def check_single_device(model: nn.Module) -> None:
    """Refuse a model that accelerate spread over several devices (``device_map="auto"``): the
    slicing indexes every tensor with one index tensor, which fails on a device mismatch halfway."""
    device_map = getattr(model, "hf_device_map", None) or {}
    # accelerate names GPUs by bare index (0) or "cuda:0"; count those as one device
    devices = sorted({f"cuda:{d}" if isinstance(d, int) else str(d) for d in device_map.values()})
    if len(devices) > 1:
        raise DietError(f"the model is spread over {len(devices)} devices ({', '.join(devices)}); pruning needs it on one",
                        "load it on one device, e.g. --device cpu (needs enough RAM for the weights)")


def count_parameters(model: nn.Module) -> int:
    """Distinct parameters (a tied embedding / lm_head counts once)."""
    return sum(p.numel() for p in model.parameters())


def size_on_disk(folder: str | Path) -> int:
    """Bytes of every file under ``folder``."""
    return sum(f.stat().st_size for f in Path(folder).rglob("*") if f.is_file())


# --------------------------------------------------------------------------------------------
def save_pruned(model: nn.Module, tokenizer, out: str | Path, mask_file=None, overwrite: bool = False,
                source_model: str | None = None, method: str | None = None) -> Path:
    """Save a pruned model as a plain Hugging Face folder (+ tokenizer, mask JSON, model card).

    Written into a staged folder renamed into place at the end: an interrupted save leaves nothing.
    """
    info = dict(getattr(model, "diet_prune_info", None) or {})
    if mask_file is not None:
        method = method or getattr(mask_file, "method", None)
        source_model = source_model or getattr(mask_file, "model_id", None) or getattr(mask_file, "model_name", None)
    source_model = source_model or str(getattr(model.config, "_name_or_path", "") or "unknown")
    info.update(source_model=source_model, method=method or "unknown",
                dtype=str(next(model.parameters()).dtype).removeprefix("torch."))  # what the weights are saved in
    hd = int(model.config.head_dim)
    if not config_accepts(model.config, int(model.config.hidden_size), hd):
        raise DietError(f"hidden size {model.config.hidden_size} is not accepted by the {model.config.model_type} config "
                        "class, so the saved folder would not load", f"prune with a kept count that is a multiple of "
                        f"{model.config.num_attention_heads} (mask --multiple-of {model.config.num_attention_heads})")
    out = Path(out)
    with atomic.staged_dir(out, overwrite=overwrite) as tmp:
        model.save_pretrained(tmp)
        if tokenizer is not None:
            tokenizer.save_pretrained(tmp)
        if mask_file is not None:
            from diet_explore.maskfile import save_mask

            save_mask(mask_file, tmp / MASK_FILE)
        summary = {k: v for k, v in info.items() if k != "kept_indices"}
        summary["n_kept"] = len(info.get("kept_indices", [])) or int(model.config.hidden_size)
        atomic.write_json(tmp / PRUNE_INFO_FILE, summary)
        atomic.write_text(tmp / "README.md", model_card(summary, out.name, mask_file is not None))
    return out


def model_card(info: dict[str, Any], folder_name: str, has_mask: bool) -> str:
    def fmt(n):
        return f"{n / 1e6:.2f} M" if isinstance(n, (int, float)) else "?"

    before, after = info.get("parameters_before"), info.get("parameters_after")
    lines = [
        f"# {folder_name}",
        "",
        f"Hidden-dimension structured pruning of `{info.get('source_model')}` made with diet-explore.",
        "",
        "| | |", "|---|---|",
        f"| source model | `{info.get('source_model')}` |",
        f"| method | {info.get('method')} |",
        f"| hidden size | {info.get('hidden_size_before', '?')} → {info.get('hidden_size_after', '?')} "
        f"(sparsity {info.get('sparsity', float('nan')):.3f}) |",
        f"| parameters | {fmt(before)} → {fmt(after)} |",
        f"| weights saved in | {info.get('dtype', '?')} |",
        "",
        "Heads, head size and MLP width are unchanged; only the residual-stream width is smaller.",
    ]
    if info.get("embedding_scale_folded"):
        lines += ["", f"Gemma embedding scale: the factor sqrt(D)/sqrt(D') = {info['embedding_scale_folded']:.6f} is folded "
                  "into the embedding weights (and its inverse into the final norm when the head is tied), so the "
                  "model loads and runs with stock transformers."]
    lines += [
        "", "## Load", "", "```python", "from transformers import AutoModelForCausalLM, AutoTokenizer", "",
        f'model = AutoModelForCausalLM.from_pretrained("{folder_name}")  # no trust_remote_code needed',
        f'tokenizer = AutoTokenizer.from_pretrained("{folder_name}")', "```", "",
        "Evaluate: `diet-explore eval --model <this folder> --compare-to <source>` or "
        f"`lm_eval --model hf --model_args pretrained={folder_name},dtype={info.get('dtype', 'float32')} --tasks boolq,rte,hellaswag,winogrande,"
        "arc_easy,arc_challenge,openbookqa`.",
    ]
    if has_mask:
        lines += ["", f"The mask is in `{MASK_FILE}` (kept hidden indices and how the mask was built)."]
    return "\n".join(lines) + "\n"
