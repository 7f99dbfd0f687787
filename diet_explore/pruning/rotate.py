"""SliceGPT-style rotate-and-slice of the hidden dimension (Ashkboos et al., ICLR 2024).

DIET deletes hidden *coordinates*. SliceGPT first rotates the residual stream into its principal
components, then deletes the least-variance *directions*. For Llama-style pre-norm blocks the
rotation is exact, so the only approximation is the slice:

* **fold**: every RMSNorm computes ``x / rms(x) * g``; ``g`` is folded into the columns of the
  linears that read the norm (q/k/v, gate/up, the head), so the norms become scale-free and commute
  with any orthogonal Q (``rms(xQ) = rms(x)``);
* **rotate**: the stream at residual site s is carried in the basis Q_s (``y = x Q_s``): the
  embedding becomes ``E Q_0``, a linear reading site s ``W Q_s``, a linear writing site s
  ``Q_sᵀ W`` (and its bias ``b Q_s``), the head ``W_h Q_final``; where consecutive sites have
  different bases the residual path gets the shortcut matrix ``Q_sᵀ Q_{s+1}``;
* **slice**: keep the first k columns of every Q_s (the k principal directions).

The sliced model's scale-free norms divide by the original width D (``ScaleFreeRMSNorm``), so a
sliced stream ``y`` (k coordinates) normalises exactly as its D-dimensional projection
``y Q_{s,k}ᵀ`` does. The whole model then equals the dense one with the stream replaced by its
projection onto ``span(Q_{s,k})`` at every site (``tests/test_rotate.py`` checks this, and k = D
against the dense logits).

Sites: ``scheme="half"`` (SliceGPT's own): one basis before each attention and one before each MLP
(2L + 1 sites with the head's); ``scheme="block"``: one per block, the MLP reads the block's input
basis (L + 1 sites, half the shortcut matrices). The bases come from ``pca.py``.

The head: a tied embedding / lm_head cannot stay tied (the embedding is read in basis Q_0, the head
in Q_final with the final norm's scale folded in), so it is untied, as SliceGPT does: the kept
parameter count includes that second V × k matrix and every shortcut.

Written against the adapter; a family declares itself fit with ``rotation_refusal() is None``
(Gemma-2/3's sandwich norms are refused). The result is an in-memory model that is no longer a
stock Hugging Face architecture: ``rotated_io.py`` saves it in this package's own small format and
reloads it; ``from_pretrained`` alone does not.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from diet_explore.core.errors import DietError
from diet_explore.models.adapters import get_adapter
from diet_explore.models.adapters.base import LayerAdapter, ModelAdapter
from diet_explore.pruning.saving import ROTATION_INFO  # the attribute a rotated model carries
from diet_explore.pruning.slicing import count_parameters  # the one count (shortcut matrices are parameters too)

SCHEMES = ("half", "block")


# --------------------------------------------------------------------------------------------
# Where the residual stream is read
# --------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Sites:
    """Residual sites of a model with ``n_layers`` blocks: per block (attention-input site,
    MLP-input site, output site) and the head's site. Site 0 is the embedding's output."""

    n_layers: int
    scheme: str = "half"

    def __post_init__(self) -> None:
        if self.scheme not in SCHEMES:
            raise DietError(f"unknown rotation scheme {self.scheme!r}", f"choose one of {', '.join(SCHEMES)}")

    def of_layer(self, layer: int) -> tuple[int, int, int]:
        if self.scheme == "half":
            return 2 * layer, 2 * layer + 1, 2 * layer + 2
        return layer, layer, layer + 1

    @property
    def head(self) -> int:
        return self.of_layer(self.n_layers - 1)[2]

    @property
    def count(self) -> int:
        return self.head + 1

    def shortcuts(self) -> int:
        """Shortcut matrices the sliced model carries: one per change of basis along the residual path."""
        return self.n_layers * (2 if self.scheme == "half" else 1)


@dataclass
class Rotations:
    """The first ``keep`` principal directions of every residual site: ``bases[s]`` is (D, k) fp64
    with orthonormal columns, in decreasing order of calibration variance."""

    scheme: str
    keep: int
    hidden_size: int
    bases: list[torch.Tensor]
    kept_variance: list[float] = field(default_factory=list)  # per site: share of the second moment kept
    info: dict[str, Any] = field(default_factory=dict)  # calibration: tokens, sequences, wall time, source

    def sites(self, n_layers: int) -> Sites:
        sites = Sites(n_layers, self.scheme)
        if sites.count != len(self.bases):
            raise DietError(
                f"{len(self.bases)} rotation bases for a {n_layers}-layer model, which has {sites.count} "
                f"residual sites in the {self.scheme!r} scheme",
                "compute the rotations on this model",
            )
        return sites


# --------------------------------------------------------------------------------------------
# The modules a rotated model is made of
# --------------------------------------------------------------------------------------------
class ScaleFreeRMSNorm(nn.Module):
    """``x / sqrt(sum(x²) / width + eps)``: an RMSNorm with its scale folded away that keeps the
    dense model's width D in the mean, so it gives the same result on a sliced stream (k < D
    coordinates) as on that stream's projection in D dimensions. No parameters."""

    def __init__(self, width: int, eps: float):
        super().__init__()
        self.width, self.eps = int(width), float(eps)

    def forward(self, hidden_states: torch.Tensor) -> torch.Tensor:
        dtype = hidden_states.dtype
        x = hidden_states.to(torch.float32)
        x = x * torch.rsqrt(x.pow(2).sum(-1, keepdim=True) / self.width + self.eps)
        return x.to(dtype)

    def extra_repr(self) -> str:
        return f"width={self.width}, eps={self.eps}"


def attention_half(la: LayerAdapter, x: torch.Tensor, kwargs: dict[str, Any]) -> torch.Tensor:
    """What a pre-norm block's attention adds to the residual stream ``x``."""
    return la.attention()(hidden_states=la.attention_input_norm()(x), **kwargs)[0]


def mlp_half(la: LayerAdapter, x: torch.Tensor) -> torch.Tensor:
    """What a pre-norm block's MLP adds to the residual stream ``x``."""
    return la.mlp()(la.mlp_input_norm()(x))


class ShortcutBlock(nn.Module):
    """A pre-norm decoder block whose residual path changes basis: ``x S_attn + attn(norm(x))``,
    then ``h S_mlp + mlp(norm(h))`` (no matrix where the basis stays). It holds the original
    block's submodules under their own names, so the family's adapter reads it as it reads the block."""

    def __init__(self, layer: nn.Module, layer_adapter: type[LayerAdapter]):
        super().__init__()
        for name, child in layer.named_children():
            self.add_module(name, child)
        for attr in ("attention_type", "layer_idx"):  # plain attributes some models read from their layers
            if hasattr(layer, attr):
                setattr(self, attr, getattr(layer, attr))
        self.layer_adapter = layer_adapter
        self.attn_shortcut: nn.Parameter | None = None
        self.mlp_shortcut: nn.Parameter | None = None

    def forward(self, hidden_states: torch.Tensor, *args, **kwargs) -> torch.Tensor:
        if args:
            raise TypeError("ShortcutBlock takes the hidden states positionally and everything else by name")
        la = self.layer_adapter(self)
        h = _shortcut(hidden_states, self.attn_shortcut) + attention_half(la, hidden_states, kwargs)
        return _shortcut(h, self.mlp_shortcut) + mlp_half(la, h)


def _shortcut(x: torch.Tensor, matrix: nn.Parameter | None) -> torch.Tensor:
    return x if matrix is None else x @ matrix


# --------------------------------------------------------------------------------------------
# Rotate and slice
# --------------------------------------------------------------------------------------------
def check_rotatable(model: nn.Module) -> ModelAdapter:
    """The model's adapter, or a DietError saying why this family cannot be rotated exactly."""
    from diet_explore.pruning.slicing import check_single_device

    adapter = get_adapter(model)
    check_single_device(model)
    reason = adapter.rotation_refusal()
    if reason:
        raise DietError(f"SliceGPT is not available for this model: {reason}", "use a coordinate mask (diet, wiki, ...)")
    if isinstance(adapter.layers()[0], ShortcutBlock) or hasattr(model, ROTATION_INFO):
        raise DietError("this model is already rotated and sliced", "rotate the dense model")
    return adapter


def rotate_and_slice(model: nn.Module, rotations: Rotations, copy_model: bool = True) -> nn.Module:
    """The model rotated into ``rotations``' bases and sliced to their k directions.

    With ``copy_model`` (default) a new model is returned and ``model`` is never touched; with
    ``copy_model=False`` the model itself is converted (for a private copy the caller made)."""
    start = time.perf_counter()
    adapter = check_rotatable(model)
    d, k = adapter.hidden_size, rotations.keep
    if rotations.hidden_size != d:
        raise DietError(f"rotations for hidden size {rotations.hidden_size}, the model has {d}", "compute them on this model")
    sites = rotations.sites(len(adapter.layers()))
    if not 1 <= k <= d or any(tuple(q.shape) != (d, k) for q in rotations.bases):
        raise DietError(f"the rotations are not {d} x {k} bases for keeping {k} of {d} dims", "compute them on this model")
    params_before = count_parameters(model)
    dense_config = model.config.to_dict()  # what a saved rotated model is rebuilt from (rotated_io.py)
    new = copy.deepcopy(model) if copy_model else model
    ad = get_adapter(new)
    eps = ad.rms_norm_eps()
    off = ad.norm_offset
    head_dim = ad.head_dim()
    tied = ad.ties_embeddings()
    layer_cls = type(ad.layer_adapter(ad.layers()[0]))
    with torch.no_grad():
        emb = ad.embedding()
        dev = emb.weight.device
        math = _math_dtype(emb.weight.dtype)
        bases = [q.to(device=math_device(dev), dtype=math) for q in rotations.bases]
        # the head first: its weight may be the embedding's, which is rotated below
        head = ad.lm_head()
        final = ad.final_norm()
        head_in = _math(head.weight) * (off + _math(final.weight))[None, :]  # the final norm's scale, folded
        head.weight = _param(head_in @ bases[sites.head], head.weight)
        head.in_features = k
        emb.weight = _param(_math(emb.weight) @ bases[0], emb.weight)
        emb.embedding_dim = k
        _replace_module(ad.base_model(), final, ScaleFreeRMSNorm(d, eps))
        layers = ad.layers()
        for i, layer in enumerate(list(layers)):
            la = ad.layer_adapter(layer)
            a, m, o = (bases[s] for s in sites.of_layer(i))
            for lin in la.attention_inputs():
                _rotate_inputs(lin, la.attention_input_norm(), off, a)
            _rotate_output(la.attention_output(), m)
            for lin in la.mlp_inputs():
                _rotate_inputs(lin, la.mlp_input_norm(), off, m)
            _rotate_output(la.mlp_output(), o)
            block = ShortcutBlock(layer, layer_cls)
            if sites.of_layer(i)[0] != sites.of_layer(i)[1]:
                block.attn_shortcut = _param(a.T @ m, la.attention_output().weight)
            block.mlp_shortcut = _param(m.T @ o, la.mlp_output().weight)
            lb = layer_cls(block)
            for norm in (lb.attention_input_norm(), lb.mlp_input_norm()):
                _replace_module(block, norm, ScaleFreeRMSNorm(d, eps))
            layers[i] = block
    new.config.hidden_size = k
    new.config.head_dim = head_dim  # some configs derive it from hidden_size / heads
    new.config.tie_word_embeddings = False
    new.eval()
    setattr(
        new,
        ROTATION_INFO,
        {
            "method": "slicegpt",
            "scheme": rotations.scheme,
            "hidden_size_before": d,
            "hidden_size_after": k,
            "sparsity": 1.0 - k / d,
            "parameters_before": params_before,
            "parameters_after": count_parameters(new),
            "shortcut_parameters": sum(p.numel() for n, p in new.named_parameters() if n.endswith("_shortcut")),
            "untied_head": tied,
            "kept_variance": list(rotations.kept_variance),
            "calibration": dict(rotations.info),
            "rotate_s": round(time.perf_counter() - start, 3),
            "dense_config": dense_config,
        },
    )
    return new


def math_device(device: torch.device) -> torch.device:
    return torch.device("cpu") if device.type == "mps" else device  # MPS has no float64


def _math_dtype(dtype: torch.dtype) -> torch.dtype:
    """What the rotations multiply in: fp32, or fp64 for an fp64 model. On SmolLM2 with every
    direction kept, fp64 products gave the same logit error as fp32 ones (max 1.30e-4 against
    1.34e-4, logits up to 29: the error is the fp32 forward's own) and took 1.5-2.4x the time."""
    return torch.float64 if dtype == torch.float64 else torch.float32


def _math(t: torch.Tensor) -> torch.Tensor:
    return t.detach().to(device=math_device(t.device), dtype=_math_dtype(t.dtype))


def _param(t: torch.Tensor, like: torch.Tensor) -> nn.Parameter:
    return nn.Parameter(t.to(device=like.device, dtype=like.dtype).contiguous(), requires_grad=False)


def _rotate_inputs(lin: nn.Linear, norm: nn.Module, offset: float, q: torch.Tensor) -> None:
    """A linear reading a norm's output: the norm's scale folded into its input columns, then rotated."""
    scale = offset + _math(norm.weight)
    lin.weight = _param((_math(lin.weight) * scale[None, :]) @ q, lin.weight)  # (out, D) -> (out, k)
    lin.in_features = q.shape[1]


def _rotate_output(lin: nn.Linear, q: torch.Tensor) -> None:
    """A linear writing the residual stream: its output rows (and bias) rotated into the site's basis."""
    lin.weight = _param(q.T @ _math(lin.weight), lin.weight)  # (D, in) -> (k, in)
    if lin.bias is not None:
        lin.bias = _param(_math(lin.bias) @ q, lin.bias)
    lin.out_features = q.shape[1]


def _replace_module(root: nn.Module, old: nn.Module, new: nn.Module) -> None:
    for module in root.modules():
        for child_name, child in module.named_children():
            if child is old:
                setattr(module, child_name, new)
                return
    raise RuntimeError(f"{type(old).__name__} is not a submodule of {type(root).__name__}")  # an adapter bug


# --------------------------------------------------------------------------------------------
# Parameter counts
# --------------------------------------------------------------------------------------------
def rotated_parameters(model: nn.Module, keep: int, scheme: str = "half") -> int:
    """Parameters of ``model`` rotated and sliced to ``keep`` dims, without building it: every
    tensor on the hidden dimension shrinks to ``keep`` (``params_per_hidden_dim``), the norms lose
    their weights (folded), a tied head becomes its own V × k matrix and each shortcut adds k × k."""
    fixed, linear, square = _parameter_formula(model, scheme)
    return fixed + linear * keep + square * keep * keep


def keep_for_parameters(model: nn.Module, parameters: int, scheme: str = "half", multiple_of: int = 1) -> int:
    """The largest kept count (a multiple of ``multiple_of``) whose rotated model has at most
    ``parameters`` parameters; 0 when even ``multiple_of`` dims have more."""
    fixed, linear, square = _parameter_formula(model, scheme)
    d = get_adapter(model).hidden_size
    fits = [k for k in range(multiple_of, d + 1, multiple_of) if fixed + linear * k + square * k * k <= parameters]
    return max(fits, default=0)


def _parameter_formula(model: nn.Module, scheme: str) -> tuple[int, int, int]:
    """(fixed, per kept dim, per kept dim squared): the rotated model's parameter count is
    ``fixed + a·k + b·k²``."""
    adapter = get_adapter(model)
    per_dim = adapter.params_per_hidden_dim()
    norms = 1 + sum(len(la.hidden_norms()) for la in adapter.layer_adapters())
    untie = adapter.embedding().weight.shape[0] if adapter.ties_embeddings() else 0
    fixed = count_parameters(model) - adapter.hidden_size * per_dim
    return fixed, per_dim - norms + untie, Sites(len(adapter.layers()), scheme).shortcuts()


def rotation_summary(model: nn.Module) -> dict[str, Any] | None:
    """What ``rotate_and_slice`` recorded on a rotated model (None for any other model)."""
    return getattr(model, ROTATION_INFO, None)
