"""Activation statistics recorded by forward hooks that are always removed.

``with record_activations(adapter, sites) as stats:`` registers hooks on every block; inside, call
``stats.begin_batch(attention_mask)`` before each forward and ``stats.end_batch()`` after it.
Everything accumulates in fp32 whatever the model's dtype, and padding tokens are masked out, so a
sample's statistics do not depend on what it was batched with.

With ``top_k > 0`` the stats also keep, per site and hidden dim, the ``top_k`` token positions with
the largest layer-averaged |activation| (``contexts.TopTokens``): the top-activating contexts of the
dimension inspector. That bookkeeping reads the |activation| tensor the statistics are computed
from and never changes them: the arrays are bit-identical with and without it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from functools import partial

import numpy as np
import torch

from diet_explore.models.adapters.base import ModelAdapter
from diet_explore.profiling.contexts import TopTokens, empty_top, merge_top, trim_top


class ActivationStats:
    """Per-sample mean |activation| over non-padding tokens, per site, block and hidden dim.

    ``layer_sum[site]``: (L, D) sum over samples of each sample's token-mean at block l.
    ``end_batch()`` returns each sample's token-mean averaged over blocks: (B, D) per site.
    With ``top_k > 0``, ``top_tokens()`` gives the best ``top_k`` token positions per site and dim.
    """

    def __init__(
        self,
        n_layers: int,
        hidden_size: int,
        sites: Sequence[str],
        device: torch.device | str = "cpu",
        top_k: int = 0,
        skip_first: bool = False,
    ):
        self.n_layers, self.hidden_size, self.sites = n_layers, hidden_size, tuple(sites)
        self.skip_first = bool(skip_first)  # leave each sequence's first real token out of the statistics
        self.layer_sum = {s: torch.zeros(n_layers, hidden_size, dtype=torch.float32, device=device) for s in self.sites}
        self.n_samples = 0
        self.top_k = int(top_k)
        self._top = {s: empty_top(hidden_size, self.top_k) for s in self.sites} if self.top_k else {}
        self._mask: torch.Tensor | None = None  # (B, T) fp32, 1 = real token
        self._count: torch.Tensor | None = None  # (B, 1) real tokens per sample
        self._batch_sum: dict[str, torch.Tensor] = {}
        self._token_sum: dict[str, torch.Tensor] = {}  # (B, T, D) weighted |activation| summed over blocks
        self._rows: list[int] = []
        self._calls: dict[str, int] = {}

    def begin_batch(self, attention_mask: torch.Tensor, rows: Sequence[int] | None = None) -> None:
        """Before each forward. ``rows``: the sequence index of each batch row (for the top-k
        positions; default: the rows continue the count of samples seen so far)."""
        self._mask = (without_first_token(attention_mask) if self.skip_first else attention_mask).to(torch.float32)
        self._count = self._mask.sum(1, keepdim=True).clamp_min(1.0)
        b = attention_mask.shape[0]
        self._batch_sum = {
            s: torch.zeros(b, self.hidden_size, dtype=torch.float32, device=attention_mask.device) for s in self.sites
        }
        if self.top_k:
            self._rows = list(range(self.n_samples, self.n_samples + b)) if rows is None else [int(r) for r in rows]
            if len(self._rows) != b:
                raise ValueError(f"{len(self._rows)} rows given for a batch of {b}")
            shape = (*attention_mask.shape, self.hidden_size)
            self._token_sum = {s: torch.zeros(shape, dtype=torch.float32, device=attention_mask.device) for s in self.sites}
        self._calls = {s: 0 for s in self.sites}

    def add(self, site: str, layer: int, hidden: torch.Tensor, weight: float = 1.0) -> None:
        """Accumulate one block's activations ``hidden`` (B, T, D) with ``weight`` (0.5 for each of
        the two normed inputs of a block, so a block counts once)."""
        if self._mask is None:
            raise RuntimeError("begin_batch() must be called before the forward pass")
        mask = self._mask.to(hidden.device)
        magnitude = hidden.detach().float().abs()  # (B, T, D)
        per_sample = torch.einsum("btd,bt->bd", magnitude, mask) / self._count.to(hidden.device)  # (B, D)
        per_sample = per_sample * weight
        self.layer_sum[site][layer] += per_sample.sum(0).to(self.layer_sum[site].device)
        self._batch_sum[site] += per_sample.to(self._batch_sum[site].device)
        if self.top_k:
            token_sum = self._token_sum[site]
            token_sum.add_(magnitude.to(token_sum.device), alpha=weight)
        self._calls[site] += 1

    def end_batch(self) -> dict[str, torch.Tensor]:
        """Per-sample, block-averaged scores of the batch just run: {site: (B, D)}."""
        if self._mask is None:
            raise RuntimeError("end_batch() without begin_batch()")
        out = {s: self._batch_sum[s] / self.n_layers for s in self.sites}
        if self.top_k:
            padding = self._mask == 0
            for s in self.sites:
                values = (self._token_sum[s] / self.n_layers).masked_fill_(padding.to(self._token_sum[s].device)[..., None], -1.0)
                self._top[s] = merge_top(self._top[s], batch_top(values, self._rows, self.top_k), self.top_k)
            self._token_sum = {}
        self.n_samples += int(self._mask.shape[0])
        self._mask = None
        return out

    def layer_means(self) -> dict[str, torch.Tensor]:
        """{site: (L, D)} mean over samples of per-sample token-means."""
        n = max(self.n_samples, 1)
        return {s: self.layer_sum[s] / n for s in self.sites}

    def top_tokens(self) -> dict[str, TopTokens]:
        """{site: (D, k)} the best positions seen so far (k = ``top_k``, or fewer when fewer tokens
        were seen); empty when ``top_k`` is 0."""
        return {s: trim_top(t) for s, t in self._top.items()}


def batch_top(values: torch.Tensor, rows: Sequence[int], k: int) -> TopTokens:
    """One batch's candidates for the top ``k`` per dim: ``values`` (B, T, D) layer-averaged
    |activation| with padding below 0, ``rows`` the sequence index of each batch row.

    ``torch.topk`` finds the k-th value exactly but breaks ties at it arbitrarily, so for a dim
    where more than k positions reach that value every one of them is a candidate, and
    ``merge_top`` orders them by (value, row, position) like everything else."""
    b, t, d = values.shape
    flat = values.reshape(b * t, d).T  # (D, B*T)
    k_eff = min(k, b * t)
    top_v, top_i = torch.topk(flat, k_eff, dim=1)  # (D, k_eff)
    counts = (flat >= top_v[:, -1:]).sum(1).cpu().numpy()  # (D,) positions reaching the k-th value
    out = empty_top(d, int(counts.max()))
    row_of = np.asarray(rows, dtype=np.int32)
    top_v, top_i = top_v.cpu().numpy(), top_i.cpu().numpy()
    out.row[:, :k_eff], out.position[:, :k_eff], out.value[:, :k_eff] = row_of[top_i // t], top_i % t, top_v
    for dim in np.flatnonzero(counts > k_eff):  # rare: an exact tie straddles the cut
        v = flat[dim].cpu().numpy()
        idx = np.flatnonzero(v >= top_v[dim, -1])
        out.row[dim, : idx.size], out.position[dim, : idx.size], out.value[dim, : idx.size] = row_of[idx // t], idx % t, v[idx]
    padding = out.value < 0  # a batch with fewer than k real tokens leaves slots empty
    if padding.any():
        empty = empty_top(d, out.k)
        out = TopTokens(
            *(
                np.where(padding, e, x)
                for e, x in zip((empty.row, empty.position, empty.value), (out.row, out.position, out.value))
            )
        )
    return out


def without_first_token(mask: torch.Tensor) -> torch.Tensor:
    """``mask`` (B, T; 1 = real token) with each row's first real token set to 0, whatever the padding
    side: what the statistics count when the first token is left out (the model still sees it; on a
    model without a BOS token the first token is the attention sink, largest in most dims)."""
    out = mask.clone()
    real = out > 0
    rows = torch.nonzero(real.any(dim=1)).flatten()
    out[rows, real.to(torch.int64).argmax(dim=1)[rows]] = 0
    return out


def _first(output):
    return output[0] if isinstance(output, (tuple, list)) else output


def _hook(stats: ActivationStats, site: str, layer: int, weight: float, module, args, output) -> None:
    stats.add(site, layer, _first(output), weight)


@contextlib.contextmanager
def record_activations(
    adapter: ModelAdapter, sites: Sequence[str] = ("residual",), top_k: int = 0, skip_first: bool = False
) -> Iterator[ActivationStats]:
    """Hooks on every block for the requested sites; removed on exit, even after an exception.

    Sites: ``residual`` = output of each decoder block (the residual stream the paper averages);
    ``normed`` = outputs of the attention-input and MLP-input norms (Minitron width pruning), each
    weighted 1/2 so that a block counts once. ``top_k``: also keep the top-activating positions.
    ``skip_first``: leave each sequence's first token out of the scores and the positions.
    """
    unknown = set(sites) - {"residual", "normed"}
    if unknown:
        raise ValueError(f"unknown site(s) {sorted(unknown)}")
    layers = adapter.layers()
    device = next(adapter.model.parameters()).device
    stats = ActivationStats(
        len(layers), adapter.hidden_size, sites, device if device.type != "meta" else "cpu", top_k, skip_first
    )
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
