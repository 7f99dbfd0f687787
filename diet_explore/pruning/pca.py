"""Calibration of rotate-and-slice (``rotate.py``): the per-site PCA of the residual stream.

Sequential, as SliceGPT computes it: the basis of site s is fitted to the stream *as the sliced
model computes it*, every earlier site already projected onto its k directions, so the error of
the early slices is in the statistics of the later ones. In the dense model's coordinates, with
``P_s = Q_{s,k} Q_{s,k}ᵀ``::

    z_0 = embedding(tokens)                     x_s = z_s P_s
    z_{s+1} = x_s + block_half_s(x_s)           Q_{s+1} = principal directions of z_{s+1}

The statistic is the uncentred second moment ``Σ_t w_t z_t z_tᵀ`` over real (non-padding) tokens,
accumulated in fp64 whatever the model's dtype, and eigendecomposed in fp64. Every sequence has a
weight shared equally by its tokens: with DIET's calibration (``calibration_from_cache``: the
score cache's recorded samples, 100 per task) every sample and every task counts equally, as they
do in DIET's scores (per-sample token means, equal task weights in the vote).

The sequences are batched and padded as profiling batches them (``profiling.runner``). To run the
blocks one half at a time, each block's call arguments (attention masks, rotary embeddings) are
recorded in one pass of the decoder stack with the blocks replaced by a recorder; that replaces
methods on the model, so ``pca_rotations`` runs on a private copy (``slicegpt_model``).
"""

from __future__ import annotations

import copy
import math
import threading
import time
from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from diet_explore.core.errors import DietError
from diet_explore.pruning.rotate import (
    SCHEMES,
    Rotations,
    Sites,
    attention_half,
    check_rotatable,
    math_device,
    mlp_half,
    rotate_and_slice,
)

Progress = Callable[[float, str], None]
SOURCES = ("tasks", "wiki")  # calibration text: the cache's task samples, or its generic wiki windows


# --------------------------------------------------------------------------------------------
# Calibration data: DIET's own
# --------------------------------------------------------------------------------------------
def calibration_from_cache(cache, tokenizer, source: str = "tasks") -> tuple[list[list[int]], list[float], dict[str, Any]]:
    """(token sequences, weights, description) of the calibration DIET's ``cache`` was profiled on:
    ``tasks``: the recorded samples of every evaluation task (the ids in the manifest, formatted
    and tokenized as profiling did); ``wiki``: its recorded generic-text windows (SliceGPT's own
    choice of calibration text). Weights: each task's samples share 1/T, each sample its share equally.
    A tokenizer that does not reproduce the recorded token counts is refused (other data)."""
    from diet_explore.profiling.runner import task_sequences, wiki_sequences
    from diet_explore.tasks.registry import load_registry, resolve_tasks

    if source not in SOURCES:
        raise DietError(f"unknown calibration source {source!r}", f"choose one of {', '.join(SOURCES)}")
    manifest = cache.manifest
    names = cache.task_names if source == "tasks" else cache.generic_names
    if not names:
        what = "evaluation tasks" if source == "tasks" else "generic (wiki) calibration set"
        raise DietError(f"the cache {cache.path or cache.model_name} has no {what}", "profile with the tasks and --generic")
    science = manifest.get("config", {})
    registry = load_registry() if source == "tasks" else None
    sequences: list[list[int]] = []
    weights: list[float] = []
    tokens: dict[str, int] = {}
    for name in names:
        entry = manifest["tasks"][name]
        ids = [int(i) for i in entry["sample_ids"]]
        if source == "tasks":
            spec = resolve_tasks([name], registry)[0]
            seqs = task_sequences(spec, ids, tokenizer, int(science.get("max_length", 1024)))
        else:
            seqs = wiki_sequences(tokenizer, ids, int(science.get("generic_window", 128)))
        recorded = entry.get("token_counts")
        if recorded is not None and [len(s) for s in seqs] != [int(n) for n in recorded]:
            raise DietError(
                f"the calibration samples of {name} tokenize to other lengths than the cache recorded, "
                "so they are not the data DIET was calibrated on",
                "use the model (and tokenizer) the cache was profiled with",
            )
        sequences += seqs
        weights += [1.0 / (len(names) * len(seqs))] * len(seqs)
        tokens[name] = sum(len(s) for s in seqs)
    info = {"source": source, "sets": list(names), "sequences": len(sequences), "tokens": tokens}
    return sequences, weights, info


# --------------------------------------------------------------------------------------------
# The PCA
# --------------------------------------------------------------------------------------------
@torch.no_grad()
def pca_rotations(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    weights: Sequence[float],
    keep: int,
    scheme: str = "half",
    max_batch_tokens: int = 4096,
    pad_id: int = 0,
    progress: Progress | None = None,
    info: dict[str, Any] | None = None,
) -> Rotations:
    """The k = ``keep`` principal directions of every residual site of ``model``, fitted
    sequentially on ``sequences`` (token ids; ``weights[i]`` is sequence i's share, spread over its
    tokens). ``model`` must be one nobody else uses while this runs: its blocks' ``forward`` is
    replaced for one recording pass (``slicegpt_model`` passes its private copy)."""
    from diet_explore.profiling.runner import pad_batch, profile_batches

    adapter = check_rotatable(model)
    d = adapter.hidden_size
    if scheme not in SCHEMES:
        raise DietError(f"unknown rotation scheme {scheme!r}", f"choose one of {', '.join(SCHEMES)}")
    if isinstance(keep, bool) or not isinstance(keep, int) or not 1 <= keep <= d:
        raise DietError(f"cannot keep {keep!r} of {d} hidden dims", f"keep between 1 and {d}")
    _check_weights(sequences, weights)
    report = progress or (lambda f, m: None)
    start = time.perf_counter()
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    total = float(sum(weights))
    layers = adapter.layers()
    sites = Sites(len(layers), scheme)

    streams: list[torch.Tensor] = []  # per batch: (B, T, D) the stream at the current site
    token_weights: list[torch.Tensor] = []  # per batch: (B, T) fp64, 0 on padding
    layer_kwargs: list[list[dict[str, Any]]] = []  # per batch, per block: its call's keyword arguments
    for batch in profile_batches([len(s) for s in sequences], max_batch_tokens):
        ids, mask = pad_batch([list(sequences[i]) for i in batch], pad_id)
        hidden, kwargs = _block_inputs(adapter, ids.to(device), mask.to(device))
        per_token = torch.tensor([weights[i] / total / len(sequences[i]) for i in batch], dtype=torch.float64)
        streams.append(hidden)
        token_weights.append(mask.to(torch.float64) * per_token[:, None])
        layer_kwargs.append(kwargs)

    bases: list[torch.Tensor] = []
    kept: list[float] = []

    def fit() -> torch.Tensor:
        """Fit the next site's basis to the current streams; its projection, in the model's dtype."""
        q, share = _principal_directions(_second_moment(streams, token_weights), keep)
        bases.append(q.cpu())
        kept.append(share)
        return (q @ q.T).to(device=device, dtype=dtype)

    def project(p: torch.Tensor) -> None:
        for b, x in enumerate(streams):  # in place, one batch at a time: one copy of the streams in memory
            streams[b] = x @ p

    proj = fit()  # site 0: the embedding's output
    project(proj)
    for i, layer in enumerate(layers):
        la = adapter.layer_adapter(layer)
        attn_site, mlp_site, _ = sites.of_layer(i)
        for b, x in enumerate(streams):
            streams[b] = x + attention_half(la, x, layer_kwargs[b][i])
        if mlp_site != attn_site:
            proj = fit()
        project(proj)
        for b, x in enumerate(streams):
            streams[b] = x + mlp_half(la, x)
        proj = fit()
        if i < len(layers) - 1:  # the head's site needs no projected stream
            project(proj)
        report((i + 1) / len(layers), f"PCA: block {i + 1}/{len(layers)}")
    return Rotations(
        scheme=scheme,
        keep=keep,
        hidden_size=d,
        bases=bases,
        kept_variance=kept,
        info={
            **(info or {}),
            "sequences": len(sequences),
            "tokens": int(sum(len(s) for s in sequences)),
            "wall_time_s": round(time.perf_counter() - start, 3),
        },
    )


def slicegpt_model(
    model: nn.Module,
    sequences: Sequence[Sequence[int]],
    weights: Sequence[float],
    keep: int,
    scheme: str = "half",
    max_batch_tokens: int = 4096,
    pad_id: int = 0,
    progress: Callable[[float, str], None] | None = None,
    info: dict[str, Any] | None = None,
) -> nn.Module:
    """``model`` rotated and sliced to ``keep`` dims with bases calibrated on ``sequences`` (token
    ids, each with a weight: see ``pca.pca_rotations``); ``model`` itself is never touched. The
    calibration runs on the private copy that becomes the result, so nothing is hooked on ``model``."""
    check_rotatable(model)
    new = copy.deepcopy(model)
    rotations = pca_rotations(new, sequences, weights, keep, scheme, max_batch_tokens, pad_id, progress, info)
    return rotate_and_slice(new, rotations, copy_model=False)


def _check_weights(sequences: Sequence[Sequence[int]], weights: Sequence[float]) -> None:
    if not sequences:
        raise DietError("no calibration sequences", "calibrate on at least one sequence")
    if len(weights) != len(sequences):
        raise DietError(f"{len(weights)} weights for {len(sequences)} calibration sequences", "give one weight per sequence")
    if any(len(s) == 0 for s in sequences):
        raise DietError("a calibration sequence is empty", "drop empty sequences")
    if not all(math.isfinite(float(w)) and w >= 0 for w in weights) or not sum(weights) > 0:
        raise DietError("calibration weights must be finite, ≥ 0 and not all 0", "e.g. equal weights")


def _block_inputs(adapter, ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, list[dict[str, Any]]]:
    """One pass of the decoder stack with every block replaced by a recorder that passes its input
    through: the first block's input (the embedding output, (B, T, D)) and every block's keyword
    arguments (attention mask, rotary embeddings, ...), as the model itself builds them."""
    layers = adapter.layers()
    first: list[torch.Tensor] = []
    kwargs: list[dict[str, Any]] = []

    def recorder(hidden_states, *args, **kw):
        if args:
            raise DietError(
                f"{adapter.config.model_type} blocks are called with positional arguments besides the hidden states",
                "this family needs its own calibration support",
            )
        if not first:
            first.append(hidden_states)
        kwargs.append(kw)
        return hidden_states

    own = [layer.__dict__.get("forward") for layer in layers]
    try:
        for layer in layers:
            layer.forward = recorder
        adapter.base_model()(input_ids=ids, attention_mask=mask, use_cache=False)
    finally:
        for layer, previous in zip(layers, own):
            del layer.forward
            if previous is not None:
                layer.forward = previous
    return first[0], kwargs


def _second_moment(streams: list[torch.Tensor], token_weights: list[torch.Tensor]) -> torch.Tensor:
    """(D, D) fp64: ``Σ_t w_t z_t z_tᵀ`` over every batch's real tokens."""
    dev = math_device(streams[0].device)
    d = streams[0].shape[-1]
    total = torch.zeros(d, d, dtype=torch.float64, device=dev)
    for x, w in zip(streams, token_weights):
        w = w.to(dev)
        real = w > 0
        z = x.to(dev)[real].to(torch.float64)  # (N, D) real tokens only
        total += (z * w[real][:, None]).T @ z
    return total


def _principal_directions(second_moment: torch.Tensor, keep: int) -> tuple[torch.Tensor, float]:
    """The ``keep`` eigenvectors of largest eigenvalue, (D, k) fp64 in decreasing order, and the
    share of the trace they hold."""
    values, vectors = _eigh(second_moment)  # ascending
    order = torch.argsort(values, descending=True)
    values, vectors = values[order], vectors[:, order]
    trace = float(values.clamp_min(0).sum())
    share = float(values[:keep].clamp_min(0).sum()) / trace if trace > 0 else 1.0
    return vectors[:, :keep].contiguous(), share


def _eigh(matrix: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """``torch.linalg.eigh``; on the CPU in a thread of its own with one intra-op thread. On 2 busy
    cores the two-threaded LAPACK call took 2.2-3.7 s for a 576 x 576 fp64 matrix, one thread
    0.2-0.3 s (the threads wait on each other). The caller's thread count is left as it was."""
    if matrix.device.type != "cpu":
        return torch.linalg.eigh(matrix)
    before = torch.get_num_threads()
    out: dict[str, Any] = {}

    def run() -> None:
        torch.set_num_threads(1)
        try:
            out["result"] = torch.linalg.eigh(matrix)
        except BaseException as exc:  # re-raised in the caller's thread
            out["error"] = exc
        finally:
            torch.set_num_threads(before)  # also the default new threads start with

    worker = threading.Thread(target=run, name="diet-eigh", daemon=True)
    worker.start()
    worker.join()
    if "error" in out:
        raise out["error"]
    return out["result"]
