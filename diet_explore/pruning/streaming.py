"""Pruning a saved checkpoint tensor by tensor, without loading the model.

``prune_model`` slices a loaded model, so a process that prunes that way holds the dense model and
the smaller one. A command that only writes the pruned folder needs neither: each tensor is read
from its safetensors shard, cut by the rule ``slicing.hidden_dim_rules`` takes from the adapter (on
a weightless copy of the model, on the meta device), and written to the output shard before the next
is read, in blocks of rows (the token embedding alone is 2.4 GB in fp32 at Gemma-2 2B's 256k vocab
and 2304 width). Peak memory is the process plus two blocks, whatever the model's size; the folder
holds what ``save_pruned(prune_model(load_model(...)))`` writes, value for value (tested).

Plain reads, not ``mmap``: the pages of a memory-mapped shard count as the process's resident
memory until they are unmapped.

A checkpoint this cannot stream (pickle ``.bin`` files, tensor names that are not the model's,
a tied head saved beside its embedding, a dtype it does not know, modules transformers keeps in
fp32) is pruned by loading it (``prune_to_folder`` says which and why).
"""

from __future__ import annotations

import copy
import json
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from diet_explore.core.errors import DietError
from diet_explore.pruning.slicing import SliceRule, check_keep, embedding_scale_ratio, fold_final_norm, hidden_dim_rules

#: Bytes read (and written) at a time: the peak above the process's own memory is about twice this.
BLOCK_BYTES = 64 << 20
INDEX_FILE = "model.safetensors.index.json"
_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}
_CODES = {v: k for k, v in _DTYPES.items()}
_MAX_HEADER = 100 << 20  # safetensors' own limit on the JSON header


class NotStreamable(Exception):
    """Why a checkpoint cannot be pruned tensor by tensor (the caller loads it instead)."""


# --------------------------------------------------------------------------------------------
# safetensors files, read and written without mmap
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TensorEntry:
    name: str
    dtype: torch.dtype
    shape: tuple[int, ...]
    start: int  # absolute byte offset in the file
    end: int

    @property
    def row_bytes(self) -> int:
        """Bytes of one index along the first axis (the whole tensor for a scalar)."""
        return (self.end - self.start) // self.shape[0] if self.shape and self.shape[0] else self.end - self.start


def read_header(path: Path) -> dict[str, TensorEntry]:
    """The tensors of one safetensors file, by name, in file order."""
    with open(path, "rb") as f:
        raw = f.read(8)
        if len(raw) < 8:
            raise NotStreamable(f"{path.name} is not a safetensors file (shorter than its header length)")
        (n,) = struct.unpack("<Q", raw)
        if n > _MAX_HEADER:
            raise NotStreamable(f"{path.name} has a {n}-byte header, more than safetensors allows")
        try:
            header = json.loads(f.read(n))
        except ValueError:
            raise NotStreamable(f"{path.name} has no readable safetensors header") from None
    header.pop("__metadata__", None)
    entries = []
    for name, v in header.items():
        if v.get("dtype") not in _DTYPES:
            raise NotStreamable(f"{path.name}: tensor {name} has dtype {v.get('dtype')!r}")
        begin, end = v["data_offsets"]
        entries.append(TensorEntry(name, _DTYPES[v["dtype"]], tuple(int(x) for x in v["shape"]), 8 + n + begin, 8 + n + end))
    return {e.name: e for e in sorted(entries, key=lambda e: e.start)}


def _read(f, start: int, nbytes: int) -> torch.Tensor:
    """``nbytes`` from ``start`` as a fresh uint8 tensor (read straight into it: one copy)."""
    buf = torch.empty(nbytes, dtype=torch.uint8)
    view = memoryview(buf.numpy())
    f.seek(start)
    got = 0
    while got < nbytes:
        n = f.readinto(view[got:])
        if not n:
            raise DietError(f"{f.name} ends {nbytes - got} bytes early (truncated?)", "re-download or re-create the model folder")
        got += n
    return buf


def _write(f, t: torch.Tensor) -> int:
    data = t.contiguous().reshape(-1).view(torch.uint8).numpy()  # a view: nothing copied
    f.write(memoryview(data))
    return data.nbytes


# --------------------------------------------------------------------------------------------
# the plan: what each tensor becomes
# --------------------------------------------------------------------------------------------
@dataclass
class _Out:
    entry: TensorEntry
    rule: SliceRule | None
    dtype: torch.dtype
    shape: tuple[int, ...]

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape, dtype=np.int64)) * torch.empty((), dtype=self.dtype).element_size()


@dataclass
class StreamPlan:
    """Everything decided before a byte of weights is read."""

    folder: Path
    shards: dict[str, list[_Out]]  # file name -> its tensors, in file order (tied aliases left out)
    config: Any  # the pruned config (hidden size, head_dim, dtype, architectures)
    info: dict[str, Any]  # the same fields as ``prune_model``'s ``diet_prune_info``
    idx: torch.Tensor
    ratio: float
    norm_offset: float
    tied: bool
    sharded: bool

    @property
    def largest_tensor_bytes(self) -> int:
        return max((o.entry.end - o.entry.start for outs in self.shards.values() for o in outs), default=0)


def plan_stream(folder: Path, config, keep: np.ndarray, dtype: torch.dtype) -> StreamPlan:
    """Check that ``folder``'s safetensors can be pruned tensor by tensor and say how; raises
    ``NotStreamable`` (with the reason) when they cannot."""
    from transformers import AutoModelForCausalLM

    from diet_explore.models.adapters import get_adapter

    folder = Path(folder)
    if any(folder.glob("*.bin")) and not any(folder.glob("*.safetensors")):
        raise NotStreamable("the checkpoint is pickle .bin files, not safetensors")
    index = folder / INDEX_FILE
    if index.is_file():
        weight_map = json.loads(index.read_text()).get("weight_map", {})
        files = sorted(set(weight_map.values()))
    else:
        files = [p.name for p in sorted(folder.glob("*.safetensors"))]
        if len(files) != 1:
            raise NotStreamable(f"{len(files)} safetensors files and no {INDEX_FILE}")
    with torch.device("meta"):
        meta = AutoModelForCausalLM.from_config(config)
    if getattr(meta, "_keep_in_fp32_modules", None) or getattr(meta, "_keep_in_fp32_modules_strict", None):
        raise NotStreamable(f"{type(meta).__name__} keeps some modules in fp32 when loaded")
    adapter = get_adapter(meta)
    d = adapter.hidden_size
    keep = check_keep(keep, d)
    head_dim = adapter.head_dim()
    rules = hidden_dim_rules(meta)
    tied = adapter.ties_embeddings()
    canonical = dict(meta.named_parameters())  # a tied head's alias left out
    known = set(meta.state_dict())  # every name a checkpoint of this class may hold
    n_keep = int(keep.sum())
    shards: dict[str, list[_Out]] = {}
    seen: set[str] = set()
    for name in files:
        path = folder / name
        if not path.is_file():
            raise NotStreamable(f"{INDEX_FILE} names {name}, which is missing")
        outs = []
        for e in read_header(path).values():
            if e.name not in known:
                raise NotStreamable(f"tensor {e.name} in {name} is no parameter of {type(meta).__name__}")
            seen.add(e.name)
            rule = rules.get(e.name)
            if e.name not in canonical and rule is not None and rule.role == "embedding":
                # A tied head saved beside the embedding: which one from_pretrained keeps is its
                # business (they may differ), so such a checkpoint is loaded, not streamed.
                raise NotStreamable(f"it holds {e.name} as well as the embedding it is tied to")
            if rule is not None and (len(e.shape) <= rule.dim or e.shape[rule.dim] != d):
                raise NotStreamable(f"tensor {e.name} has shape {list(e.shape)}, no axis of hidden size {d} where expected")
            out_dtype = dtype if e.dtype.is_floating_point else e.dtype
            shape = tuple(n_keep if rule is not None and i == rule.dim else s for i, s in enumerate(e.shape))
            outs.append(_Out(e, rule, out_dtype, shape))
        shards[name] = outs
    missing = sorted(set(canonical) - seen)
    if missing:
        raise NotStreamable(f"the checkpoint lacks {len(missing)} parameter(s), e.g. {missing[0]}")
    ratio = embedding_scale_ratio(adapter, n_keep)
    new_config = copy.deepcopy(config)
    new_config.hidden_size = n_keep
    new_config.head_dim = head_dim  # some configs derive it from hidden_size / heads
    new_config.dtype = dtype
    new_config.architectures = [type(meta).__name__]
    per_dim = sum(int(np.prod(p.shape)) // d for n, p in canonical.items() if n in rules)
    params_before = sum(p.numel() for p in canonical.values())
    info = {
        "hidden_size_before": d,
        "hidden_size_after": n_keep,
        "sparsity": 1.0 - n_keep / d,
        "parameters_before": params_before,
        "parameters_after": params_before - per_dim * (d - n_keep),
        "embedding_scale_folded": ratio if ratio != 1.0 else None,
        "tied_embeddings": tied,
        "kept_indices": [int(i) for i in np.flatnonzero(keep)],
    }
    return StreamPlan(
        folder, shards, new_config, info, torch.as_tensor(np.flatnonzero(keep)), ratio, adapter.norm_offset, tied, index.is_file()
    )


# --------------------------------------------------------------------------------------------
# writing
# --------------------------------------------------------------------------------------------
def write_streamed(plan: StreamPlan, out: Path) -> None:
    """Write the pruned weights, ``config.json`` and ``generation_config.json`` into ``out``."""
    from transformers import GenerationConfig

    out = Path(out)
    weight_map: dict[str, str] = {}
    total = 0
    for name, outs in plan.shards.items():
        total += _write_shard(plan, plan.folder / name, outs, out / name)
        weight_map.update((o.entry.name, name) for o in outs)
    if plan.sharded:
        index = {"metadata": {"total_size": total}, "weight_map": dict(sorted(weight_map.items()))}
        (out / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    plan.config.save_pretrained(out)
    try:
        generation = GenerationConfig.from_pretrained(plan.folder)
    except OSError:  # no generation_config.json: what from_pretrained would derive
        generation = GenerationConfig.from_model_config(plan.config)
    generation.save_pretrained(out)


def _write_shard(plan: StreamPlan, src: Path, outs: list[_Out], dst: Path) -> int:
    header: dict[str, Any] = {}
    offset = 0
    for o in sorted(outs, key=lambda o: o.entry.name):  # save_pretrained's order: by name
        header[o.entry.name] = {"dtype": _CODES[o.dtype], "shape": list(o.shape), "data_offsets": [offset, offset + o.nbytes]}
        offset += o.nbytes
    header["__metadata__"] = {"format": "pt"}
    text = json.dumps(header, separators=(",", ":")).encode()
    text += b" " * (-len(text) % 8)  # the data starts 8-byte aligned
    with open(src, "rb") as fin, open(dst, "wb") as fout:
        fout.write(struct.pack("<Q", len(text)))
        fout.write(text)
        for o in sorted(outs, key=lambda o: o.entry.name):
            written = sum(_write(fout, block) for block in _sliced_blocks(plan, fin, o))
            if written != o.nbytes:
                raise RuntimeError(f"{o.entry.name}: wrote {written} bytes, expected {o.nbytes}")
    return offset


def _sliced_blocks(plan: StreamPlan, f, o: _Out):
    """The pruned tensor ``o`` in blocks of rows, each computed as ``prune_model`` computes the whole."""
    e, rule = o.entry, o.rule
    if rule is not None and rule.role == "final_norm" or not e.shape:
        yield _slice(plan, _load(f, e, 0, e.shape[0] if e.shape else 1), rule, 0)  # small: whole
        return
    rows = max(1, BLOCK_BYTES // max(e.row_bytes, 1))
    for a in range(0, e.shape[0], rows):
        b = min(a + rows, e.shape[0])
        yield _slice(plan, _load(f, e, a, b), rule, a)


def _load(f, e: TensorEntry, a: int, b: int) -> torch.Tensor:
    """Rows [a, b) of tensor ``e``."""
    if not e.shape:
        return _read(f, e.start, e.end - e.start).view(e.dtype).reshape(())
    t = _read(f, e.start + a * e.row_bytes, (b - a) * e.row_bytes)
    return t.view(e.dtype).reshape((b - a, *e.shape[1:]))


def _slice(plan: StreamPlan, t: torch.Tensor, rule: SliceRule | None, row0: int) -> torch.Tensor:
    t = t.to(plan.config.dtype) if t.is_floating_point() else t
    if rule is None:
        return t
    idx = plan.idx
    if rule.dim == 0:  # the kept rows among this block's rows [row0, row0 + n)
        idx = idx[(idx >= row0) & (idx < row0 + t.shape[0])] - row0
    t = torch.index_select(t, rule.dim, idx)
    if rule.role == "embedding" and plan.ratio != 1.0:
        t.mul_(plan.ratio)
    elif rule.role == "final_norm" and plan.tied and plan.ratio != 1.0:
        t = fold_final_norm(t, plan.norm_offset, plan.ratio)
    return t


# --------------------------------------------------------------------------------------------
# the one way a pruned folder is made from a model name
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class PruneResult:
    folder: Path
    info: dict[str, Any]  # ``diet_prune_info``'s fields: hidden sizes, parameter counts, ...
    streamed: bool  # False: the checkpoint was loaded and sliced in place
    why_loaded: str | None  # why it could not be streamed


def checkpoint_dtype(config) -> str:
    """The dtype the checkpoint was saved in (so pruning neither rounds an fp32 model to bf16 nor
    inflates a bf16 one), else float32."""
    from diet_explore.models.loading import dtype_name

    saved = getattr(config, "dtype", None) or getattr(config, "torch_dtype", None)
    name = dtype_name(saved) if saved is not None else "float32"
    return name if name in ("float32", "bfloat16", "float16") else "float32"


def prune_to_folder(
    source, mask_file, out: str | Path, *, dtype: str | None = None, device: str = "cpu", overwrite: bool = False
) -> PruneResult:
    """Prune the model ``source`` (a ``models.loading.ModelSource``) with ``mask_file`` into the
    plain Hugging Face folder ``out``, holding at most one model's weights.

    Safetensors checkpoints (a folder, a built-in, a hub id's cached snapshot) are pruned tensor by
    tensor, never loaded. Any other is loaded on ``device`` (spread over several devices if it must
    be) and sliced in place: the dense weights plus the largest sliced tensor. ``dtype``: what the
    folder is saved in; default the checkpoint's own (bf16 stays bf16)."""
    from diet_explore.models.loading import check_fits_in_memory, dtype_name, load_model, load_tokenizer, pick_dtype
    from diet_explore.pruning.saving import check_saveable, save_pruned, write_pruned_folder
    from diet_explore.pruning.slicing import prune_model

    torch_dtype = pick_dtype(dtype or checkpoint_dtype(source.config), "cpu")
    dtype = dtype_name(torch_dtype)  # "bf16" -> "bfloat16", the name lm_eval and the card use
    check_saveable(source.config, mask_file.n_keep)
    folder, why = _local_snapshot(source)
    plan = None
    if folder is not None:
        try:
            plan = plan_stream(folder, source.config, mask_file.keep, torch_dtype)
        except NotStreamable as exc:
            why = str(exc)
    n_params, nbytes = source.info.num_parameters, torch.finfo(torch_dtype).bits // 8
    if plan is not None:
        peak = 2 * min(BLOCK_BYTES, plan.largest_tensor_bytes) + plan.largest_tensor_bytes // 8  # blocks + a norm
        check_fits_in_memory(n_params, nbytes, "cpu", source.name, copies=peak / (n_params * nbytes), what="to prune it")
        written = write_pruned_folder(
            out,
            lambda tmp: write_streamed(plan, tmp),
            plan.info,
            dtype,
            load_tokenizer(source),
            mask_file,
            overwrite,
            source.info.id,
        )
        return PruneResult(written, plan.info, True, None)
    # Loaded and sliced in place: the dense weights plus the largest sliced tensor (the embedding).
    cfg = source.config
    largest = int(cfg.vocab_size) * int(cfg.hidden_size) / max(n_params, 1)
    model, tokenizer, info = load_model(source.name, device, dtype, copies=1.0 + largest)
    pruned = prune_model(model, mask_file.keep, inplace=True)
    del model
    written = save_pruned(pruned, tokenizer, out, mask_file=mask_file, overwrite=overwrite, source_model=info.id)
    return PruneResult(written, pruned.diet_prune_info, False, why)


def _local_snapshot(source) -> tuple[Path | None, str | None]:
    """The local folder holding ``source``'s files (a hub id: its snapshot in the Hugging Face cache,
    downloaded as from_pretrained would), or None and why not."""
    if source.kind != "hub":
        return Path(source.loc), None
    from huggingface_hub import snapshot_download

    from diet_explore.models.loading import hub_reachable

    try:
        folder = snapshot_download(
            source.loc,
            allow_patterns=["*.json", "*.safetensors", "*.model", "*.jinja", "*.txt"],
            local_files_only=not hub_reachable(),
        )
    except Exception as exc:  # offline and not cached, gated, renamed...: from_pretrained says what
        return None, f"no local snapshot of {source.loc} ({type(exc).__name__})"
    return Path(folder), None
