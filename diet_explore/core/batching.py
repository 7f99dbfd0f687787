"""One packer for forward passes: items of different lengths cut into batches of similar length.

Profiling (token sequences) and scoring (request rows) both sort by length, longest first, and cut
the sorted list into consecutive batches padded to their first item's length. Each caller says when
a batch would carry too much padding; the cutting itself is written once, here.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence


def pack_by_length(lengths: Sequence[int], budget: int, too_padded: Callable[[int, int], bool]) -> list[list[int]]:
    """Indices of ``lengths`` in batches: sorted by length descending (ties keep their order), and
    a batch grows while its padded size (items × first item's length) stays within ``budget`` and
    ``too_padded(padded, real)`` (real = the batch's real tokens with the new item) is false. An
    item longer than ``budget`` gets a batch of its own."""
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    batches: list[list[int]] = []
    current: list[int] = []
    real = 0
    for i in order:
        if current:
            padded = lengths[current[0]] * (len(current) + 1)
            if padded > budget or too_padded(padded, real + lengths[i]):
                batches.append(current)
                current, real = [], 0
        current.append(i)
        real += lengths[i]
    if current:
        batches.append(current)
    return batches


# --------------------------------------------------------------------------------------------
# How many tokens one forward pass may hold: the CPU budgets are sized for a laptop's cores, a
# GPU's are what its free memory holds.
#: Share of a GPU's free memory (after the weights) one forward pass's activations may take; the
#: rest is allocator slack, the logits chunks and whatever else runs on the card.
GPU_ACTIVATION_SHARE = 0.5
#: No pass is larger than this, whatever the card: past it a bigger batch stops paying.
MAX_GPU_BATCH_TOKENS = 1 << 17


def activation_bytes_per_token(config, seq_len: int, dtype_bytes: int) -> int:
    """Bytes one token of a ``seq_len``-token sequence adds to an inference forward pass (no KV
    cache kept): the residual stream and one block's transients (norm outputs, q/k/v/o, the MLP's
    gate, up and product) in the model's dtype, and its row of eager attention scores (and their
    softmax) over ``seq_len`` positions in fp32 (Gemma-2's soft-capping needs eager attention)."""
    cfg = config.get_text_config() if hasattr(config, "get_text_config") else config
    d, i, h = int(cfg.hidden_size), int(cfg.intermediate_size), int(cfg.num_attention_heads)
    hd = int(getattr(cfg, "head_dim", None) or d // h)
    kv = int(getattr(cfg, "num_key_value_heads", None) or h)
    return dtype_bytes * (4 * d + 3 * i + 2 * h * hd + 2 * kv * hd) + 2 * 4 * h * int(seq_len)


def device_token_budget(model, cpu_budget: int, seq_len: int) -> int:
    """Padded tokens per forward pass for ``model``: ``cpu_budget`` when it runs on a CPU (or MPS);
    on CUDA, what fits in ``GPU_ACTIVATION_SHARE`` of the free memory of the fullest GPU the model
    sits on, at ``activation_bytes_per_token``, never below ``cpu_budget`` nor above
    ``MAX_GPU_BATCH_TOKENS``."""
    params = list(model.parameters())
    gpus = sorted({str(p.device) for p in params if p.device.type == "cuda"})
    if not gpus:
        return int(cpu_budget)
    free = min(gpu_free_bytes(g) for g in gpus)
    per_token = activation_bytes_per_token(model.config, max(1, seq_len), params[0].element_size())
    return int(min(MAX_GPU_BATCH_TOKENS, max(cpu_budget, GPU_ACTIVATION_SHARE * free // per_token)))


def gpu_free_bytes(device: str = "cuda") -> int:
    """Free bytes on that GPU (``cuda:N``; plain ``cuda`` is the current one), as the driver reports."""
    import torch

    free, _ = torch.cuda.mem_get_info(torch.device(device))  # the named GPU, not the current one
    return int(free)
