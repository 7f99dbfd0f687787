"""A live proxy for what a mask does to the model, from the score cache alone (no model loaded).

For task t with per-dimension score s_t (mean |activation| over its calibration tokens, averaged
over layers: the paper's score, whatever layer aggregation the mask itself used) and a keep mask K:

* ``kept_mass``   = Σ_{k∈K} s_t[k] / Σ_k s_t[k]: the share of t's activation mass the mask keeps;
* ``kept_energy`` = Σ_{k∈K} s_t[k]² / Σ_k s_t[k]²: the same for the squared scores, which weighs the
  few massive-activation dimensions (what random and magnitude masks lose first) far more.

Both are in [0, 1] (1 = nothing of the task's activation is pruned), at every profiled site; the
"average" row is the unweighted mean over tasks, as the paper-style average of accuracies.
Whether they predict the measured paired Δ is checked by ``experiments/proxy.py`` against every
committed sweep (``tools/proxy_validation.py`` prints it; the README and the Mask builder show it).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from diet_explore.masking.importance import as_precompute

PROXIES = {"kept_mass": 1, "kept_energy": 2}  # name -> power of the score


def kept_share(cache, keep: np.ndarray, task: str, site: str = "residual", power: int = 1) -> float:
    """Σ_{kept} s^power / Σ s^power of ``task``'s layer-mean scores at ``site`` (``keep``: (D,) bool)."""
    s = as_precompute(cache).task_scores(task, site, "mean")  # (D,) float64
    w = s**power
    total = float(w.sum())
    return float(w[np.asarray(keep, dtype=bool)].sum() / total) if total > 0 else 1.0


def proxy_column(name: str, site: str) -> str:
    return f"{name}@{site}"


def mask_proxies(
    cache, keep: np.ndarray, tasks: Sequence[str] | None = None, sites: Sequence[str] | None = None
) -> list[dict[str, Any]]:
    """One row per task (``tasks``: default every evaluation task of the cache) and an "average" row:
    ``task`` and ``<proxy>@<site>`` for every ``PROXIES`` entry and site (default every profiled site)."""
    pre = as_precompute(cache)
    tasks = list(tasks) if tasks is not None else pre.cache.task_names
    sites = list(sites) if sites is not None else pre.cache.sites
    rows = []
    for t in tasks:
        row: dict[str, Any] = {"task": t}
        for site in sites:
            for name, power in PROXIES.items():
                row[proxy_column(name, site)] = kept_share(pre, keep, t, site, power)
        rows.append(row)
    if rows:
        cols = [c for c in rows[0] if c != "task"]
        rows.append({"task": "average", **{c: float(np.mean([r[c] for r in rows])) for c in cols}})
    return rows
