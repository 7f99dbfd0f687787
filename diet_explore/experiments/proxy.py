"""Does the cache-only proxy (``masking/proxy.py``) predict what a mask does to the model?

For every finished run of a sweep (committed under ``docs/results`` or a ``compare --out`` folder),
the run's mask(s) are rebuilt from the sweep's score cache and settings (``results.run_masks``, the
code the sweep ran; a rebuilt mask must keep the run's recorded count, else the run is skipped),
its proxies computed per task, and set against the run's measured paired Δ vs dense: the main
metric (``delta_main``) and, where the rows keep per-example log-likelihoods, the gold
log-likelihood per character (``delta_gold_ll_per_char``).

The check is a Spearman rank correlation, on three levels:

* ``average``: over runs, the average proxy over tasks vs the average Δ (n = runs);
* ``within sparsity``: the same after subtracting each sparsity's mean from both, so a proxy that
  only tracks the kept count (which the user sets anyway) does not pass for one that tells masks
  of the same size apart;
* ``per task``: over runs, task t's proxy vs task t's Δ (n = runs), one ρ per task.

``predicts`` is the rule the README and the Mask builder apply: ρ > 0 with a two-sided p < 0.05 at
the average level, on a sweep with at least ``MIN_RUNS`` runs. A sweep whose model has no cache
here, a row of a method that has no hidden-dimension mask (e.g. a rotation method), or a row whose
rebuilt mask keeps another count is skipped and named in ``notes``.
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from math import gcd
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from diet_explore.core.assets import PROJECT_ROOT
from diet_explore.core.errors import DietError
from diet_explore.evaluation.metrics import MAIN
from diet_explore.experiments.reports import Sweep, list_sweeps, load_sweep
from diet_explore.experiments.results import builds_mask, run_masks

TARGETS = {"delta_main": MAIN, "delta_gold_ll_per_char": "gold_ll_per_char"}  # measured Δ -> paired metric
LEVELS = ("average", "within sparsity", "per task")
MIN_RUNS = 6
P_MAX = 0.05
SWEEP_DIRS_ENV = "DIET_EXPLORE_SWEEP_DIRS"  # extra sweep folders (os.pathsep-separated) beside docs/results


def sweep_sources(extra: Sequence[str | Path] = ()) -> list[Path]:
    """The committed sweeps (``reports.results_dir()``: docs/results), the folders named in
    ``DIET_EXPLORE_SWEEP_DIRS`` and ``extra`` (each a sweep, or a folder of sweeps), once each."""
    env = [p for p in os.environ.get(SWEEP_DIRS_ENV, "").split(os.pathsep) if p.strip()]
    out: list[Path] = list(list_sweeps())
    for p in [*env, *extra]:
        path = Path(p).expanduser()
        if path.is_file() or (path / "results.jsonl").is_file():
            out.append(path)
        else:
            out += list_sweeps(path)
    seen, unique = set(), []
    for p in out:
        key = p.resolve()
        if key not in seen:
            seen.add(key)
            unique.append(p)
    return unique


def _resolve_cache(path: str, source: str = "") -> Path | None:
    """A sweep's score cache: its config names it relative to the folder ``compare`` ran in, so it is
    looked for as given, in the working folder, the project root and every folder above the sweep."""
    above = list(Path(source).resolve().parents) if source else []
    for base in (Path(), Path.cwd(), PROJECT_ROOT, *above):
        p = (base / path).expanduser()
        if (p / "manifest.json").is_file():
            return p
    return None


def _multiple(settings, rows: list[dict[str, Any]]) -> int:
    """The kept-count multiple to rebuild the sweep's masks with: its ``multiple_of`` setting, else
    the largest that divides every recorded count. A mask depends on the multiple only through its
    kept count, and ``run_proxies`` checks every rebuilt count against the recorded one, so this
    gives the sweep's masks without reading the model's config (which would load transformers)."""
    if settings.multiple_of:
        return int(settings.multiple_of)
    out = 0
    for r in rows:
        for c in (r.get("n_keep_per_task") or {"": r["n_keep"]}).values():
            out = gcd(out, int(c))
    return max(out, 1)


MASK_SETTINGS = ("cache", "mask")  # what rebuilding a sweep's masks reads from its config
LEGACY_MASK_SETTINGS = ("cache", "threshold", "exact", "mask_seed")  # the same in a config.json written before "mask"


def run_proxies(sweep: Sweep) -> tuple[list[dict[str, Any]], list[str]]:
    """(records, notes): one record per (run, task) with the run's proxies (``masking.proxy``) and its
    measured paired Δ (``TARGETS``), for every run of ``sweep`` whose masks can be rebuilt here."""
    from diet_explore.masking.importance import ScorePrecompute
    from diet_explore.masking.proxy import PROXIES, kept_share, proxy_column
    from diet_explore.profiling.cache import load_cache

    notes: list[str] = []
    if sweep.config is None or sweep.dense is None:
        return [], [f"{sweep.name}: no config.json or no dense row, so its masks cannot be rebuilt"]
    from diet_explore.experiments.sweep import LEGACY_MASK_FIELDS, CompareConfig

    needed = MASK_SETTINGS if "mask" in sweep.config else LEGACY_MASK_SETTINGS
    lacking = [k for k in needed if k not in sweep.config]
    if lacking:
        return [], [f"{sweep.name}: its config.json lacks {', '.join(lacking)}, so its masks cannot be rebuilt"]
    read = ("cache", "mask", "round_to_model", *LEGACY_MASK_FIELDS)
    config = CompareConfig.from_dict({k: v for k, v in sweep.config.items() if k in read})
    where = _resolve_cache(config.cache, sweep.source)
    if where is None:
        return [], [f"{sweep.name}: its score cache {config.cache} is not here"]
    cache = load_cache(where)
    pre = ScorePrecompute(cache)
    multiple = _multiple(config, sweep.pruned)
    vs_dense = sweep.vs_dense()
    records = []
    for row in sweep.pruned:
        if not builds_mask(row["method"]):
            notes.append(f"{sweep.name}: {row['key']} skipped ({row['method']} has no hidden-dimension mask to rebuild)")
            continue
        tasks = list(row["tasks"])
        masks = run_masks(pre, row["method"], row["sparsity"], config, multiple, tasks)
        want = row.get("n_keep_per_task") or {t: row["n_keep"] for t in tasks}
        if any(masks[t].n_keep != int(want[t]) for t in tasks):
            notes.append(f"{sweep.name}: {row['key']} skipped (the rebuilt mask keeps another count than the run did)")
            continue
        paired = vs_dense[row["key"]]["tasks"]
        for t in tasks:
            rec: dict[str, Any] = {"sweep": sweep.name, "model": sweep.config.get("model"), "key": row["key"]}
            rec["method"] = row["method"]
            rec |= {"sparsity": row["sparsity"], "task": t}
            for s in cache.sites:
                for name, power in PROXIES.items():
                    rec[proxy_column(name, s)] = kept_share(pre, masks[t].keep, t, s, power)
            for target, metric in TARGETS.items():
                rec[target] = paired[t][metric]["delta"]
            records.append(rec)
    if records:
        notes.insert(0, f"{sweep.name}: {len({r['key'] for r in records})} runs rebuilt from {config.cache}")
    return records, notes


def predicts(rho: float, p: float, n: int) -> bool:
    """Whether a proxy predicts: more kept activation goes with a better measured Δ (ρ > 0), significantly
    (two-sided p < ``P_MAX``), over at least ``MIN_RUNS`` runs."""
    return bool(rho > 0 and p < P_MAX and n >= MIN_RUNS)


def _spearman(x, y) -> tuple[float, float]:
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    ok = np.isfinite(x) & np.isfinite(y)
    x, y = np.round(x[ok], 12), np.round(y[ok], 12)  # exact ties stay ties whatever the summation order
    if len(x) < 3 or np.ptp(x) == 0 or np.ptp(y) == 0:
        return math.nan, math.nan
    rho, p = stats.spearmanr(x, y)
    return float(rho), float(p)


@dataclass
class ProxyValidation:
    records: Any  # DataFrame: one row per (sweep, run, task), proxies and measured Δ
    correlations: Any  # DataFrame: sweep, target, proxy, level, task, rho, p, n, predicts
    notes: list[str] = field(default_factory=list)

    def summary(self):
        """The ``average`` and ``within sparsity`` rows, and per task the median ρ (``task`` = "median of tasks")."""
        import pandas as pd

        c = self.correlations
        if c.empty:
            return c
        head = c[c["level"] != "per task"]
        per = c[c["level"] == "per task"].groupby(["sweep", "target", "proxy"], sort=False)
        med = per.agg(rho=("rho", "median"), n=("n", "max")).reset_index()
        med = med.assign(level="per task", task="median of tasks", p=math.nan, predicts=False)
        return pd.concat([head, med[head.columns]], ignore_index=True)

    def verdict(self, proxy: str) -> str:
        """One sentence per sweep and target: does ``proxy`` predict it (the ``predicts`` rule)?"""
        c = self.correlations
        lines = []
        for (sweep, target), g in c[(c["proxy"] == proxy) & (c["level"] == "average")].groupby(["sweep", "target"], sort=False):
            r = g.iloc[0]
            within = c[
                (c["sweep"] == sweep) & (c["target"] == target) & (c["proxy"] == proxy) & (c["level"] == "within sparsity")
            ]
            w = (
                f", within sparsity ρ = {within.iloc[0]['rho']:+.2f}"
                if len(within) and np.isfinite(within.iloc[0]["rho"])
                else ""
            )
            if r["n"] < MIN_RUNS:
                lines.append(f"{sweep}, {target}: only {int(r['n'])} runs (need {MIN_RUNS}), not tested")
                continue
            says = "predicts" if r["predicts"] else "does not predict"
            lines.append(f"{sweep}, {target}: {says} (ρ = {r['rho']:+.2f}, p = {r['p']:.3f}, {int(r['n'])} runs{w})")
        return "\n".join(lines)


def describe(validation: ProxyValidation, proxy: str, model: str | None = None) -> tuple[bool | None, str]:
    """(verdict, text) for the Mask builder: does ``proxy`` predict the average Δ (the ``predicts`` rule)?
    The verdict is True when it does on a tested sweep of ``model``, False when it does on none of
    them, and None when ``model`` has no tested sweep here (no sweep of it, or fewer than
    ``MIN_RUNS`` runs). The text gives every tested sweep's ρ, those of ``model`` first, with the
    within-sparsity ρ."""
    import pandas as pd

    c = validation.correlations
    avg = c[(c["proxy"] == proxy) & (c["level"] == "average") & (c["n"] >= MIN_RUNS)]
    if avg.empty:
        return None, f"Not validated: no sweep here has {MIN_RUNS} or more runs whose masks can be rebuilt."
    models = validation.records.drop_duplicates("sweep").set_index("sweep")["model"].to_dict()
    mine = avg["sweep"].map(models) == model
    within = c[(c["proxy"] == proxy) & (c["level"] == "within sparsity")].set_index(["sweep", "target"])["rho"]
    parts = []
    for _, r in pd.concat([avg[mine], avg[~mine]]).iterrows():
        says = "predicts" if r["predicts"] else "does not predict"
        w = within.get((r["sweep"], r["target"]), math.nan)
        w = f", within a sparsity ρ = {w:+.2f}" if np.isfinite(w) else ""
        parts.append(f"{says} {r['target']} on {r['sweep']} (ρ = {r['rho']:+.2f}, p = {r['p']:.3f}, {int(r['n'])} runs{w})")
    verdict = bool(avg[mine]["predicts"].any()) if mine.any() else None
    where = f"of {model}" if mine.any() else f"of other models (none of {model} here, so not validated for it)"
    return verdict, f"Spearman ρ with the measured paired Δ over the runs of the sweeps {where}: " + "; ".join(parts) + "."


def validate_proxies(sources: Sequence[str | Path | Sweep] | None = None) -> ProxyValidation:
    """Rank correlations between every proxy and the measured paired Δ over every run of ``sources``
    (default ``sweep_sources()``: docs/results and the folders of ``DIET_EXPLORE_SWEEP_DIRS``)."""
    import pandas as pd

    from diet_explore.masking.proxy import PROXIES

    records, notes = [], []
    for src in sources if sources is not None else sweep_sources():
        try:
            sweep = src if isinstance(src, Sweep) else load_sweep(src)
        except DietError as exc:
            notes.append(f"{src}: {exc.message}")
            continue
        got, why = run_proxies(sweep)
        records += got
        notes += why
    frame = pd.DataFrame(records)
    out = []
    if not frame.empty:
        proxies = [c for c in frame.columns if any(c.startswith(f"{n}@") for n in PROXIES)]
        for sweep, g in frame.groupby("sweep", sort=False):
            for target in TARGETS:
                if g[target].isna().all():
                    continue
                runs = g.groupby("key", sort=False).agg(
                    sparsity=("sparsity", "first"), **{c: (c, "mean") for c in [*proxies, target]}
                )
                centred = runs[[*proxies, target]] - runs.groupby("sparsity")[[*proxies, target]].transform("mean")
                for proxy in proxies:
                    for level, x, y in (
                        ("average", runs[proxy], runs[target]),
                        ("within sparsity", centred[proxy], centred[target]),
                    ):
                        rho, p = _spearman(x, y)
                        n = int(len(runs))
                        out.append(dict(sweep=sweep, target=target, proxy=proxy, level=level, task="average", rho=rho, p=p, n=n))
                    for task, gt in g.groupby("task", sort=False):
                        rho, p = _spearman(gt[proxy], gt[target])
                        out.append(
                            dict(sweep=sweep, target=target, proxy=proxy, level="per task", task=task, rho=rho, p=p, n=len(gt))
                        )
    corr = pd.DataFrame(out, columns=["sweep", "target", "proxy", "level", "task", "rho", "p", "n"])
    corr["predicts"] = (corr["level"] == "average") & np.array(
        [predicts(r, p, n) for r, p, n in zip(corr["rho"], corr["p"], corr["n"])], dtype=bool
    )
    return ProxyValidation(frame, corr, notes)
