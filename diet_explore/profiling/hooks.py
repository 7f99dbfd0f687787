"""Activation statistics recorded by forward hooks that are always removed.

``with record_activations(adapter, sites) as stats:`` registers hooks on every block; inside, call
``stats.begin_batch(attention_mask)`` before each forward and ``stats.end_batch()`` after it.
Everything accumulates in fp32 whatever the model's dtype, and padding tokens are masked out, so a
sample's statistics do not depend on what it was batched with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial

import torch

from diet_explore.models.adapters.base import ModelAdapter


class ActivationStats:
    """Per-sample mean |activation| over non-padding tokens, per site, block and hidden dim.

    ``layer_sum[site]``: (L, D) sum over samples of each sample's token-mean at block l.
    ``end_batch()`` returns each sample's token-mean averaged over blocks: (B, D) per site.
    """

    def __init__(self, n_layers: int, hidden_size: int, sites: Sequence[str], device: torch.device | str = "cpu"):
        self.n_layers, self.hidden_size, self.sites = n_layers, hidden_size, tuple(sites)
        self.layer_sum = {s: torch.zeros(n_layers, hidden_size, dtype=torch.float32, device=device) for s in self.sites}
        self.n_samples = 0
        self._mask: torch.Tensor | None = None  # (B, T) fp32, 1 = real token
        self._count: torch.Tensor | None = None  # (B, 1) real tokens per sample
        self._batch_sum: dict[str, torch.Tensor] = {}
        self._calls: dict[str, int] = {}

    def begin_batch(self, attention_mask: torch.Tensor) -> None:
        self._mask = attention_mask.to(torch.float32)
        self._count = self._mask.sum(1, keepdim=True).clamp_min(1.0)
        b = attention_mask.shape[0]
        self._batch_sum = {
            s: torch.zeros(b, self.hidden_size, dtype=torch.float32, device=attention_mask.device) for s in self.sites
        }
        self._calls = {s: 0 for s in self.sites}

    def add(self, site: str, layer: int, hidden: torch.Tensor, weight: float = 1.0) -> None:
        """Accumulate one block's activations ``hidden`` (B, T, D) with ``weight`` (0.5 for each of
        the two normed inputs of a block, so a block counts once)."""
        if self._mask is None:
            raise RuntimeError("begin_batch() must be called before the forward pass")
        mask = self._mask.to(hidden.device)
        per_sample = torch.einsum("btd,bt->bd", hidden.detach().float().abs(), mask) / self._count.to(hidden.device)  # (B, D)
        per_sample = per_sample * weight
        self.layer_sum[site][layer] += per_sample.sum(0).to(self.layer_sum[site].device)
        self._batch_sum[site] += per_sample.to(self._batch_sum[site].device)
        self._calls[site] += 1

    def end_batch(self) -> dict[str, torch.Tensor]:
        """Per-sample, block-averaged scores of the batch just run: {site: (B, D)}."""
        if self._mask is None:
            raise RuntimeError("end_batch() without begin_batch()")
        out = {s: self._batch_sum[s] / self.n_layers for s in self.sites}
        self.n_samples += int(self._mask.shape[0])
        self._mask = None
        return out

    def layer_means(self) -> dict[str, torch.Tensor]:
        """{site: (L, D)} mean over samples of per-sample token-means."""
        n = max(self.n_samples, 1)
        return {s: self.layer_sum[s] / n for s in self.sites}


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _hook(stats: ActivationStats, site: str, layer: int, weight: float, module, args, output) -> None:
    stats.add(site, layer, _first(output), weight)


@contextlib.contextmanager
def record_activations(adapter: ModelAdapter, sites: Sequence[str] = ("residual",)) -> Iterator[ActivationStats]:
    """Hooks on every block for the requested sites; removed on exit, even after an exception.

    Sites: ``residual`` = output of each decoder block (the residual stream the paper averages);
    ``normed`` = outputs of the attention-input and MLP-input norms (Minitron width pruning), each
    weighted 1/2 so that a block counts once.
    """
    unknown = set(sites) - {"residual", "normed"}
    if unknown:
        raise ValueError(f"unknown site(s) {sorted(unknown)}")
    layers = adapter.layers()
    device = next(adapter.model.parameters()).device
    stats = ActivationStats(len(layers), adapter.hidden_size, sites, device if device.type != "meta" else "cpu")
    handles = []
    try:
        for i, layer in enumerate(layers):
            if "residual" in sites:
                handles.append(layer.register_forward_hook(partial(_hook, stats, "residual", i, 1.0)))
            if "normed" in sites:
                la = adapter.layer_adapter(layer)
                for norm in (la.attention_input_norm(), la.mlp_input_norm()):
                    handles.append(norm.register_forward_hook(partial(_hook, stats, "normed", i, 0.5)))
        yield stats
    finally:
        for handle in handles:
            handle.remove()
