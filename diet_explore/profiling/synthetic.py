"""Synthetic score caches shaped like real ones: tests, benchmarks and demos at sizes we cannot profile here.

The default task list comes from the task registry (its built-in tasks), so it can never drift from it.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from diet_explore import __version__
from diet_explore.core.clock import utc_timestamp
from diet_explore.profiling.cache import CACHE_KIND, SCHEMA_VERSION, SITES, ScoreCache, TaskScores
from diet_explore.tasks.registry import builtin_task_names

DEFAULT_TASKS = tuple(builtin_task_names())


def synthetic_cache(
    hidden_size: int = 576,
    num_layers: int = 30,
    tasks: tuple[str, ...] | list[str] = DEFAULT_TASKS,
    n_samples: int = 100,
    seed: int = 0,
    task_noise: float = 0.35,
) -> ScoreCache:
    """A cache shaped like a real one: a shared heavy-tailed per-dimension importance, a few
    massive-activation outlier dimensions, per-task and per-sample log-normal noise."""
    rng = np.random.default_rng(seed)
    base = rng.lognormal(0.0, 0.6, hidden_size)  # (D,)
    outliers = rng.choice(hidden_size, size=max(1, hidden_size // 200), replace=False)
    base[outliers] *= 30.0
    depth = np.linspace(0.5, 2.0, num_layers)[:, None]  # residual norm grows with depth
    out: dict[str, TaskScores] = {}
    tmeta: dict[str, Any] = {}
    for t in tasks:
        task_base = base * rng.lognormal(0.0, task_noise, hidden_size)  # (D,)
        layer_noise = rng.lognormal(0.0, 0.2, (num_layers, hidden_size))
        per_sample = task_base[None, :] * rng.lognormal(0.0, 0.3, (n_samples, hidden_size))  # (N, D)
        layer = (depth * layer_noise * per_sample.mean(0)[None, :]).astype(np.float32)  # (L, D)
        # make the documented invariant hold exactly: layer.mean(0) == sample.mean(0)
        sample = (per_sample * (layer.mean(0) / per_sample.mean(0))[None, :]).astype(np.float32)
        ids = sorted(rng.choice(10 * n_samples, size=n_samples, replace=False).tolist())
        counts = rng.integers(20, 200, n_samples).tolist()
        layers_by_site = {"residual": layer, "normed": (layer / depth).astype(np.float32)}
        samples_by_site = {"residual": sample, "normed": (sample / depth.mean()).astype(np.float32)}
        out[t] = TaskScores(layers_by_site, samples_by_site, ids, counts, "task")
        tmeta[t] = {"kind": "task", "n_samples": n_samples, "sample_ids": ids, "token_counts": counts}
    manifest = {
        "schema_version": SCHEMA_VERSION,
        "kind": CACHE_KIND,
        "model": {
            "name": f"synthetic-{hidden_size}x{num_layers}",
            "id": "synthetic",
            "model_type": "synthetic",
            "hidden_size": hidden_size,
            "num_layers": num_layers,
            "revision": None,
            "weights_sha256": None,
        },
        "sites": list(SITES),
        "prompt_format_version": 1,
        "config": {"seed": seed, "samples": n_samples, "synthetic": True},
        "environment": {"device": "none", "dtype": "float32"},
        "package_version": __version__,
        "created": utc_timestamp(),
        "tasks": tmeta,
        "baselines": None,
    }
    weight_mag = (base * rng.lognormal(0, 0.5, hidden_size)).astype(np.float32)
    return ScoreCache(manifest, out, {"weight_magnitude": weight_mag}, None)
