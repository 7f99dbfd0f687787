"""Comparison sweeps: masking methods × sparsities, each pruned and evaluated on the same held-out
examples, summarised as a paper-style table (CSV + markdown), a sweep plot and run-store records.

Methods (CLI names → ``MaskConfig.method``): ``diet`` (the weighted vote), ``random``,
``magnitude``, ``wiki`` (top-k on generic text) build one mask per sparsity and evaluate it on
every task. Two methods build one mask *per evaluated task*:

* ``single-task``: task t is evaluated with the mask built from t's scores alone: task-specialist
  pruning, the ceiling a one-task mask reaches on its own task (not "the best single task": that
  choice would be made on the evaluation data);
* ``leave-one-out``: task t is evaluated with the DIET vote of the other tasks: how a merged mask
  transfers to a task it never saw.

For these two, wiki perplexity is not defined (one model per task) and is left empty.

Two methods build no mask: ``slicegpt`` and ``slicegpt-wiki`` rotate the residual stream into its
principal directions and slice the least-variance ones (SliceGPT, ``pruning/rotate.py``), keeping
the same count as DIET's exact mask at that sparsity, calibrated on the same data as DIET (the
cache's recorded samples of its tasks), or on its generic wiki windows (SliceGPT's own choice).
Their rows also carry the parameter counts (``rotation``): the shortcut matrices and the untied
head make a rotated model larger than a mask's at the same kept count.

By default every mask keeps exactly the same number of dims at a given sparsity (``exact``),
rounded to the multiple the model's config needs to save and reload (``prune.required_multiple``,
the head count for Llama/Gemma in transformers 5), so methods differ only in *which* dims they keep
and every compared model is one ``diet-explore prune`` could ship. With ``round_to_model`` off (the
app's Sweeps page, ``compare --multiple-of N``) each count is the one the mask settings give, e.g. the
Mask builder's 332 on SmolLM2 (9 heads): every run is pruned and evaluated in memory, never saved, so
a count its config class would refuse on save is evaluated as it is (``compare --save`` refuses such a
count before the sweep, ``saved_models.check_saveable_sweep``).

Resumable: ``<out>/results.jsonl`` gets one line per finished (method, sparsity) and one for the
dense model; a re-run with the same settings skips what is there (other settings are refused).
A finished line (with its run id) is written before its run-store record, and a record the store
does not have (an interruption, an unwritable ``--runs``) is written by the next re-run under that id.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diet_explore.core import atomic
from diet_explore.core.config import JsonConfig, check_seed, cli_flag
from diet_explore.core.errors import DietError
from diet_explore.core.numbers import perplexity, points
from diet_explore.evaluation.blocks import ScoreLog, StopCheck
from diet_explore.evaluation.evalcache import EvalCache
from diet_explore.evaluation.evaluate import EvalConfig, EvalResult, eval_requests, evaluate_cached, evaluate_model
from diet_explore.evaluation.scoring import DEFAULT_BATCH_TOKENS
from diet_explore.experiments.reports import write_reports
from diet_explore.experiments.results import (
    METHODS,
    PER_TASK_METHODS,
    RESULTS,
    ROTATION_METHODS,
    add_average,
    add_deltas,
    append_result,
    builds_mask,
    check_resumable,
    read_results,
    repair_results,
    run_masks,
    task_row,
)
from diet_explore.experiments.runs import run_record
from diet_explore.masking.config import MaskConfig, canonical_method
from diet_explore.models.builtin import DEFAULT_MODEL
from diet_explore.tasks import data

Progress = Callable[[float, str], None]


#: The settings a sweep's results depend on (a resume must match them). Listed, not derived from the
#: dataclass, so a new setting never silently invalidates a sweep in progress: it joins
#: OPTIONAL_FINGERPRINT_FIELDS, counted only when it differs from its default. The mask's τ, exact
#: count, multiple and seed keep the flat names they had before ``CompareConfig`` held a ``MaskConfig``
#: (``CompareConfig.settings``), so a sweep started then still resumes.
FINGERPRINT_FIELDS = (
    "model",
    "cache",
    "tasks",
    "limit",
    "seed",
    "mask_seed",
    "exact",
    "multiple_of",
    "threshold",
    "perplexity",
    "ppl_windows",
    "dtype",
)
OPTIONAL_FINGERPRINT_FIELDS = {"clip_limit": False, "mask_settings": {}}
#: The flat fields of a sweep's config.json written before it held a ``MaskConfig`` (read, never written).
LEGACY_MASK_FIELDS = ("threshold", "exact", "multiple_of", "mask_seed")


def compare_mask(mask: MaskConfig | dict | None) -> MaskConfig:
    """The sweep's base mask: ``mask`` with the method the runs set (``diet``; each run's method,
    sparsity and task replace it, ``results.sweep_mask_config``)."""
    if mask is None:
        return MaskConfig(exact=True)
    if isinstance(mask, dict):
        mask = MaskConfig.from_dict(mask)
    return dataclasses.replace(mask, method="diet", single_task=None, held_out_task=None)


@dataclass
class CompareConfig(JsonConfig):
    model: str = DEFAULT_MODEL
    cache: str = f"cache/{DEFAULT_MODEL}"
    sparsities: list[float] = field(default_factory=lambda: [0.1, 0.2])
    methods: list[str] = field(default_factory=lambda: ["diet", "random", "magnitude", "wiki"])
    tasks: str | list[str] = "all"
    limit: int = 50
    clip_limit: bool = False  # True: at most `limit` per task, all of a smaller held-out pool (RTE, ARC-C)
    seed: int = data.DEFAULT_SEED  # evaluation draw (shared permutation with calibration)
    # the mask every run builds (τ, weights, site, layer aggregation, exact, multiple-of, the random
    # baseline's seed); each run sets its own method and sparsity. exact by default: every method keeps
    # the same count; mask.exact False: the vote's own count for diet and leave-one-out
    mask: MaskConfig = field(default_factory=lambda: MaskConfig(exact=True))
    # True: round every kept count to the multiple the model needs to save and reload
    # (prune.required_multiple), so every compared model is one `diet-explore prune` could ship;
    # False: mask.multiple_of as set (the mask exactly as tuned in the app, evaluated in memory)
    round_to_model: bool = True
    perplexity: bool = True
    ppl_windows: int = 32
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    device: str = "auto"
    dtype: str | None = None

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> CompareConfig:
        """Also reads a config.json written before the sweep held a ``MaskConfig`` (flat ``threshold``,
        ``exact``, ``multiple_of``, ``mask_seed``): they become the mask's fields."""
        data = dict(data)
        legacy = {k: data.pop(k) for k in LEGACY_MASK_FIELDS if k in data}
        if legacy:
            mask = dict(data.get("mask") or {"exact": True})
            mask.update({k: legacy[k] for k in ("threshold", "exact") if k in legacy})
            if "mask_seed" in legacy:
                mask["seed"] = legacy["mask_seed"]
            if legacy.get("multiple_of") is not None:  # None: the model's multiple, as round_to_model says
                mask["multiple_of"] = legacy["multiple_of"]
                data["round_to_model"] = False
            data["mask"] = mask
        return super().from_dict(data)

    @property
    def threshold(self) -> float:
        return self.mask.threshold

    @property
    def exact(self) -> bool:
        return self.mask.exact

    @property
    def mask_seed(self) -> int:
        return self.mask.seed

    @property
    def multiple_of(self) -> int | None:
        """The kept-count multiple the settings fix (None: it depends on the model, ``kept_multiple``)."""
        return None if self.round_to_model else self.mask.multiple_of

    def kept_multiple(self, model_multiple: int) -> int:
        """Every run's kept-count multiple, given the one the model needs to save and reload
        (``prune.required_multiple``): with ``round_to_model`` a multiple of both it and the mask's own."""
        return math.lcm(self.mask.multiple_of, model_multiple) if self.round_to_model else self.mask.multiple_of

    def settings(self) -> dict[str, Any]:
        """The results-affecting settings by their flat names (``FINGERPRINT_FIELDS``), the mask's
        other settings under ``mask_settings`` (only those that differ from the default)."""
        fields = self.to_dict()
        default = MaskConfig(exact=True).to_dict()
        rest = {k: v for k, v in self.mask.to_dict().items() if k not in ("threshold", "exact", "multiple_of", "seed")}
        fields |= {
            "mask_seed": self.mask_seed,
            "exact": self.exact,
            "multiple_of": self.multiple_of,
            "threshold": self.threshold,
            "mask_settings": {k: v for k, v in rest.items() if v != default[k] and k not in ("sparsity", "method")},
        }
        if self.round_to_model and self.mask.multiple_of > 1:  # rounded to a multiple of both it and the model's
            fields["mask_settings"]["multiple_of"] = self.mask.multiple_of
        return fields

    def __post_init__(self) -> None:
        check_seed(self.seed, "--seed")  # before config.json and results.jsonl are written
        self.mask = compare_mask(self.mask)
        self.methods = [canonical_method(m) for m in self.methods]  # an older name (leave_one_out) is read as its new one
        unknown = [m for m in self.methods if m not in METHODS]
        if unknown:
            raise DietError(f"unknown method(s): {', '.join(unknown)}", f"choose from {', '.join(METHODS)}")
        if not self.methods or not self.sparsities:
            raise DietError("no methods or no sparsities given", "e.g. --methods diet,random --sparsity 0.1,0.2")
        self.sparsities = [float(s) for s in self.sparsities]
        for s in self.sparsities:
            if not 0.0 < s < 1.0:
                raise DietError(f"sparsity {s} is outside (0, 1)", "e.g. --sparsity 0.1,0.2")
        # a repeated value (0.1,0.10 or random,random) would run and report the same combination twice
        self.methods = list(dict.fromkeys(self.methods))
        unique: dict[str, float] = {}
        for s in self.sparsities:
            unique.setdefault(sparsity_label(s), s)
        self.sparsities = list(unique.values())

    def eval_config(self) -> EvalConfig:
        return EvalConfig(
            tasks=self.tasks,
            limit=self.limit,
            clip_limit=self.clip_limit,
            seed=self.seed,
            batch_tokens=self.batch_tokens,
            device=self.device,
            dtype=self.dtype,
            perplexity=self.perplexity,
            ppl_windows=self.ppl_windows,
            exclude_cache=self.cache,
        )

    def resolved_dtype(self) -> str:
        """The dtype a model loaded for this config gets (``models.pick_dtype``), e.g. ``float32``.

        With ``dtype`` None it depends on the device: fp32 on CPU, bf16 on a GPU. A named device is
        not checked for being present here (``load_model`` does that); an unknown one is refused."""
        from diet_explore.models.loading import dtype_name, pick_device, pick_dtype

        device = pick_device("auto") if self.device == "auto" else self.device
        return dtype_name(pick_dtype(self.dtype, device))

    def fingerprint(self, cache_hash: str, dtype: str | None = None) -> str:
        """What the results depend on (not which methods/sparsities: those are the resumable grid).

        ``dtype``: the precision the model is evaluated in (default ``resolved_dtype()``). The device
        is left out (results agree across devices at one precision) but the resolved dtype is not:
        with ``dtype`` None a sweep started on CPU (fp32) and resumed on a GPU (bf16) would mix them."""
        fields = self.settings()
        keys = {k: fields[k] for k in FINGERPRINT_FIELDS}
        keys |= {k: fields[k] for k, default in OPTIONAL_FINGERPRINT_FIELDS.items() if fields[k] != default}
        keys.update(dtype=dtype or self.resolved_dtype(), cache_hash=cache_hash)
        return hashlib.sha256(json.dumps(keys, sort_keys=True).encode()).hexdigest()[:16]


def sparsity_label(sparsity: float) -> str:
    return f"{sparsity:g}"


def combo_key(method: str, sparsity: float) -> str:
    return f"{method}@{sparsity_label(sparsity)}"


def sweep_grid(config: CompareConfig) -> list[tuple[str, float]]:
    """Every (method, sparsity) to run, once each by ``combo_key`` (the resume key), in the order given."""
    grid: dict[str, tuple[str, float]] = {}
    for s in config.sparsities:
        for m in config.methods:
            grid.setdefault(combo_key(m, s), (m, s))
    return list(grid.values())


# --------------------------------------------------------------------------------------------
# The sweep
# --------------------------------------------------------------------------------------------
def check_sweep_folder(out: Path) -> None:
    """``--out`` must be new, empty, or a sweep's own folder (its ``results.jsonl``, or the
    ``config.json`` it writes first), since the sweep writes config.json, table.md, table.csv and
    sweep.html there over whatever has those names: someone's folder of files is refused."""
    try:
        entries = list(out.iterdir()) if out.is_dir() else []
    except OSError as exc:
        raise DietError(f"--out {out} cannot be read ({exc.strerror or exc})", "choose another --out folder") from None
    if not entries or (out / RESULTS).is_file():
        return
    try:
        CompareConfig.from_json((out / "config.json").read_text())
        return  # a sweep killed before its first result row
    except (OSError, UnicodeDecodeError, DietError, TypeError, ValueError):
        pass
    raise DietError(
        f"--out {out} holds files that diet-explore compare did not write (it has no {RESULTS}), and the sweep "
        "would replace its config.json, table.md, table.csv and sweep.html",
        "give a new or empty folder, or the --out of an earlier compare to resume it",
    )


def settings_difference(out: Path, config: CompareConfig) -> str | None:
    """The results-affecting settings of the sweep in ``out`` (its ``config.json``) that ``config``
    changes, named by their flags as a resume check says them (``profile`` does the same), e.g.
    ``a different --limit (50; this run: 4)``; None when its config.json is unreadable or agrees."""
    try:
        old = CompareConfig.from_json((out / "config.json").read_text()).settings()
    except (OSError, UnicodeDecodeError, DietError, TypeError, ValueError):
        return None
    new = config.settings()
    keys = [k for k in (*FINGERPRINT_FIELDS, *OPTIONAL_FINGERPRINT_FIELDS) if old[k] != new[k]]
    if not keys:
        return None

    def shown(key: str, value: Any) -> str:
        if key == "perplexity":  # set by --no-perplexity
            return "not given" if value else "given"
        if isinstance(value, bool):
            return "on" if value else "off"
        if isinstance(value, list):
            return ",".join(str(v) for v in value)
        if isinstance(value, dict):  # the mask's other settings
            return ", ".join(f"{cli_flag(k)} {v}" for k, v in value.items()) or "the defaults"
        return "the default" if value is None else str(value)

    flags = {"perplexity": "--no-perplexity", "mask_settings": "mask setting"}
    return "a different " + " and ".join(
        f"{flags.get(k) or cli_flag(k)} ({shown(k, old[k])}; this run: {shown(k, new[k])})" for k in keys
    )


def run_count(todo: list[str], i: int) -> str:
    """Which of the sweep's runs ``todo[i]`` is, saying what the count holds: the dense model is a run
    too, so a two-method sweep is "run 2 of 3 (dense + 2 pruned runs; now diet@0.5)"."""
    pruned = sum(key != "dense" for key in todo)
    parts = ("dense + " if "dense" in todo else "") + f"{pruned} pruned run{'s' * (pruned != 1)}"
    at = min(i, len(todo) - 1)
    return f"run {at + 1} of {len(todo)} ({parts}; now {todo[at]})"


def run_compare(
    config: CompareConfig,
    out: str | Path,
    model=None,
    tokenizer=None,
    store=None,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    eval_cache: EvalCache | None = None,
    info=None,
    blocks: ScoreLog | None = None,
    should_stop: StopCheck | None = None,
    only: list[str] | None = None,
) -> list[dict[str, Any]]:
    """Run (or resume) the sweep into ``out``; returns every result row (dense first). ``only``: the
    run keys (``combo_key``) this call runs besides dense, e.g. one per job when a sweep is split
    over workers (``executors.submit_sweep``); the rows of every call merge in one results.jsonl. With
    ``eval_cache`` (and the model loaded here from ``config.model``, or passed in with the
    ``info`` ``load_model`` gave for it) the dense row reuses an earlier evaluation of the same
    model on the same examples, e.g. from ``diet-explore eval``. ``blocks`` keeps every finished
    block of examples (a resume reuses them within a run, not only whole runs); ``should_stop``
    can stop between forward passes (``blocks.Stopped``: finished runs and blocks are kept)."""
    from diet_explore.experiments.runs import RunStore, new_run_id
    from diet_explore.masking.importance import as_precompute
    from diet_explore.models.loading import dtype_name
    from diet_explore.profiling.cache import load_cache
    from diet_explore.pruning.saving import required_multiple
    from diet_explore.pruning.slicing import PRUNED_COPY_PEAK, prune_model

    report = progress or (lambda f, m: None)
    out = Path(out)
    # Everything that can be checked without the model is, before it loads (minutes) and before
    # --out is created: a bad folder, limit, task or resume must not cost a load or leave files.
    atomic.check_writable(out, "--out", folder=True)
    check_sweep_folder(out)
    store = store if store is not None else RunStore()
    store.check("--runs")
    if eval_cache is not None:
        eval_cache.check()
    cache = load_cache(config.cache)
    ecfg = config.eval_config()
    requests = eval_requests(ecfg)
    dtype = dtype_name(next(model.parameters()).dtype) if model is not None else config.resolved_dtype()
    fingerprint = config.fingerprint(cache.manifest_hash, dtype)
    done = read_results(out)
    check_resumable(done, out, fingerprint, settings_difference(out, config) if done else None)
    dropped = repair_results(out) if done else 0
    if dropped:
        log(f"removed {dropped} repeated or unreadable line(s) from {out / RESULTS}: one row per run is kept")
    pre = as_precompute(cache)
    # every mask the grid builds, once now (milliseconds each), so what the cache or the settings cannot
    # give (--multiple-of over the hidden size, wiki without wiki text, magnitude without baselines) is
    # refused before the model loads and before config.json is written (a half-made folder blocked the
    # corrected run); with --multiple-of unset the model's own multiple is only known once it loads
    for method, sparsity in sweep_grid(config):
        if builds_mask(method):
            run_masks(pre, method, sparsity, config, config.mask.multiple_of, list(requests))
    have = {r["key"] for r in done}
    grid = [g for g in sweep_grid(config) if only is None or combo_key(*g) in only]
    todo = (["dense"] if "dense" not in have else []) + [combo_key(m, s) for m, s in grid if combo_key(m, s) not in have]
    if not todo:  # every run is in --out already: store what the run store lacks, rewrite the reports, load no model
        log(f"{len(grid) + 1} of {len(grid) + 1} runs already in {out}; 0 to go")
        _store_missing_runs(store, done, next(r for r in done if r["key"] == "dense"), config, out, log)
        report(1.0, "done")
        rows = read_results(out)
        write_reports(rows, out, config)
        return rows
    if model is None:
        from diet_explore.models.loading import load_model

        # in resolved_dtype(); the pre-check counts the pruned copy each run holds beside the dense model
        model, tokenizer, info = load_model(config.model, config.device, config.dtype, copies=PRUNED_COPY_PEAK)
    if cache.hidden_size != int(model.config.hidden_size):
        raise DietError(
            f"cache {config.cache} is for hidden size {cache.hidden_size}, the model has {model.config.hidden_size}",
            "use the score cache of this model",
        )
    if any(method in ROTATION_METHODS for method, _ in grid):  # a family SliceGPT cannot rotate (Gemma's sandwich
        from diet_explore.pruning.rotate import check_rotatable  # norms): refused now, not after dense and DIET ran

        check_rotatable(model)
    out.mkdir(parents=True, exist_ok=True)
    atomic.write_text(out / "config.json", config.to_json() + "\n")
    multiple = config.kept_multiple(required_multiple(model))
    log(f"{len(grid) + 1 - len(todo)} of {len(grid) + 1} runs already in {out}; {len(todo)} to go")

    def step(i: int) -> Progress:
        """Progress of run ``i`` as a share of the whole sweep; the text says the same share first,
        then which run and its own progress (a bar at 37% beside "21/140" read as two answers)."""

        def report_run(f: float, msg: str) -> None:
            overall = (i + f) / max(len(todo), 1)
            report(overall, f"{overall:.0%} of the sweep · {run_count(todo, i)}: {msg}")

        return report_run

    k = 0
    if "dense" not in have:
        start = time.perf_counter()
        param = next(model.parameters())

        def evaluate_dense():
            res = evaluate_model(model, tokenizer, ecfg, step(k), "dense", requests, log=blocks, should_stop=should_stop)
            return res, info.to_dict() if info else {}

        # a model passed in may not be config.model's weights, so only a model loaded here is looked up
        res = evaluate_cached(
            config.model,
            ecfg,
            requests,
            eval_cache if info else None,
            param.device.type,
            param.dtype,
            evaluate_dense,
            label="dense",
        )
        row = {
            "key": "dense",
            "method": "dense",
            "sparsity": 0.0,
            "n_keep": int(model.config.hidden_size),
            "tasks": {t: task_row(r, res.task_scores(t)) for t, r in res.tasks.items()},
            "ppl": res.perplexity,
            "wall_time_s": time.perf_counter() - start,
            "fingerprint": fingerprint,
        }
        if "cached" in res.extra:
            row["reused"] = res.extra["cached"]["path"]
            log(f"dense: reusing its results of {res.extra['cached']['created']} ({row['reused']})")
        add_average(row)
        row = append_result(out, row)  # another run into this --out may have finished it first
        done.append(row)
        log(f"dense: avg {points(row['avg'])} points, ppl {perplexity(row['ppl'])}")
        k += 1
    dense = next(r for r in done if r["key"] == "dense")
    _store_missing_runs(store, done, dense, config, out, log)
    for method, sparsity in grid:
        key = combo_key(method, sparsity)
        if key in have:
            continue
        finished = {r.get("key"): r for r in read_results(out)}
        if key in finished:  # another run into this --out did it meanwhile
            done.append(finished[key])
            have.add(key)
            log(f"{key}: already finished by another run into {out}; keeping that result")
            k += 1
            continue
        start = time.perf_counter()
        row = _run_one(
            model, tokenizer, pre, method, sparsity, config, multiple, ecfg, requests, step(k), prune_model, blocks, should_stop
        )
        row.update(key=key, fingerprint=fingerprint, wall_time_s=time.perf_counter() - start)
        add_average(row)
        add_deltas(row, dense)
        # results.jsonl first, with the run id: it is what a resume trusts, so an interruption or a
        # failing run store from here on costs at most the store record, which the next run writes
        row["run_id"] = new_run_id(key + fingerprint)
        kept = append_result(out, row)
        done.append(kept)
        have.add(key)
        if kept is not row:  # another run into this --out finished it first: its row and its record count
            log(f"{key}: already finished by another run into {out}; keeping that result")
            k += 1
            continue
        _store_run(store, row, dense, config, out)
        log(
            f"{key}: kept {row['n_keep']}, avg {points(row['avg'])} points (Δ {points(row['delta_avg'], signed=True)} "
            f"[{points(row['delta_ci_low'], signed=True)}, {points(row['delta_ci_high'], signed=True)}]), "
            f"ppl {perplexity(row['ppl'])}, {row['wall_time_s']:.0f} s"
        )
        k += 1
    report(1.0, "done")
    rows = read_results(out)
    write_reports(rows, out, config)
    return rows


def _run_one(
    model, tokenizer, pre, method, sparsity, config, multiple, ecfg, requests, progress, prune_model, blocks, should_stop
):
    if method in ROTATION_METHODS:
        return _run_rotation(
            model, tokenizer, pre.cache, method, sparsity, multiple, ecfg, requests, progress, blocks, should_stop
        )
    masks = run_masks(pre, method, sparsity, config, multiple, list(requests))
    # a run is evaluated in memory and never saved here (``compare --save`` checks what it saves), so a
    # count the config class would refuse on save (round_to_model off) is evaluated as the mask keeps it
    if method not in PER_TASK_METHODS:
        mask = next(iter(masks.values()))
        pruned = prune_model(model, mask.keep, saveable=False)
        key = combo_key(method, sparsity)
        res = evaluate_model(pruned, tokenizer, ecfg, progress, key, requests, log=blocks, should_stop=should_stop)
        del pruned
        return {
            "method": method,
            "sparsity": sparsity,
            "n_keep": mask.n_keep,
            "actual_sparsity": mask.sparsity,
            "mask_config": mask.config.to_dict(),  # what was built: the label a run record and a plot show
            "tasks": {t: task_row(r, res.task_scores(t)) for t, r in res.tasks.items()},
            "ppl": res.perplexity,
        }
    tasks, n_keep = {}, {}
    no_ppl = EvalConfig.from_dict({**ecfg.to_dict(), "perplexity": False})
    for i, (t, reqs) in enumerate(requests.items()):
        mask = masks[t]
        pruned = prune_model(model, mask.keep, saveable=False)
        sub = lambda f, msg, i=i, t=t: progress((i + f) / len(requests), f"{t}: {msg}")
        label = f"{combo_key(method, sparsity)}:{t}"
        res: EvalResult = evaluate_model(pruned, tokenizer, no_ppl, sub, label, {t: reqs}, log=blocks, should_stop=should_stop)
        del pruned
        tasks[t], n_keep[t] = task_row(res.tasks[t], res.task_scores(t)), mask.n_keep
    return {
        "method": method,
        "sparsity": sparsity,
        "n_keep": int(np.median(list(n_keep.values()))),
        "n_keep_per_task": n_keep,
        "tasks": tasks,
        "ppl": None,
    }


def _run_rotation(model, tokenizer, cache, method, sparsity, multiple, ecfg, requests, progress, blocks=None, should_stop=None):
    """SliceGPT at ``sparsity``: DIET's exact kept count (``keep_count``), bases calibrated on the
    cache's own calibration data, evaluated in memory; the row also carries the parameter counts
    (with the shortcut matrices and the untied head) beside a mask's at the same kept count."""
    from diet_explore.masking.selection import keep_count
    from diet_explore.models.adapters import get_adapter
    from diet_explore.pruning.pca import calibration_from_cache, slicegpt_model
    from diet_explore.pruning.rotate import count_parameters, keep_for_parameters, rotation_summary

    d = int(model.config.hidden_size)
    n_keep = keep_count(d, sparsity, multiple)
    sequences, weights, info = calibration_from_cache(cache, tokenizer, ROTATION_METHODS[method])
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    pca_share = 0.25  # of the run's progress bar
    rotated = slicegpt_model(
        model, sequences, weights, n_keep, pad_id=pad_id, progress=lambda f, m: progress(pca_share * f, m), info=info
    )
    summary = rotation_summary(rotated)
    res = evaluate_model(
        rotated,
        tokenizer,
        ecfg,
        lambda f, m: progress(pca_share + (1 - pca_share) * f, m),
        combo_key(method, sparsity),
        requests,
        log=blocks,
        should_stop=should_stop,
    )
    del rotated
    mask_params = count_parameters(model) - get_adapter(model).params_per_hidden_dim() * (d - n_keep)
    return {
        "method": method,
        "sparsity": sparsity,
        "n_keep": n_keep,
        "actual_sparsity": 1.0 - n_keep / d,
        "tasks": {t: task_row(r, res.task_scores(t)) for t, r in res.tasks.items()},
        "ppl": res.perplexity,
        "rotation": {
            "scheme": summary["scheme"],
            "parameters": summary["parameters_after"],
            "shortcut_parameters": summary["shortcut_parameters"],
            "untied_head": summary["untied_head"],
            "parameters_dense": summary["parameters_before"],
            "parameters_mask_same_keep": mask_params,
            "keep_at_mask_parameters": keep_for_parameters(model, mask_params, summary["scheme"], multiple),
            "kept_variance_mean": sum(summary["kept_variance"]) / len(summary["kept_variance"]),
            "calibration": summary["calibration"],
            "rotate_s": summary["rotate_s"],
        },
    }


def _store_run(store, row: dict[str, Any], dense: dict[str, Any], config: CompareConfig, out: Path) -> None:
    """Save ``row``'s run-store record under its run id (chosen before: a retry replaces the record)."""
    try:
        store.save(_run_record(row, dense, config), run_id=row["run_id"])
    except DietError as exc:
        raise DietError(
            f"{row['key']} is saved in {out / RESULTS} but not in the run store: {exc.message}",
            f"{exc.hint or 'fix the run store'}; then re-run the same command: finished runs are kept "
            "and the missing record is written",
        ) from None


def _store_missing_runs(
    store, done: list[dict[str, Any]], dense: dict[str, Any], config: CompareConfig, out: Path, log: Callable[[str], None]
) -> None:
    """Write the store records of finished runs the store does not have (an earlier run was
    interrupted between the two writes, or could not write --runs)."""
    missing = [r for r in done if r.get("run_id") and not store.has(r["run_id"])]
    for row in missing:
        _store_run(store, row, dense, config, out)
    if missing:
        log(f"wrote {len(missing)} run-store record(s) an earlier run could not: {', '.join(r['key'] for r in missing)}")


def _run_record(row: dict[str, Any], dense: dict[str, Any], config: CompareConfig) -> dict[str, Any]:
    """A sweep row as a run-store record (``runs.run_record``, the writer app jobs use too): the
    target sparsity and the kept count's actual one, the row's mask config, the eval config."""
    hidden = int(dense["n_keep"])  # the dense row keeps every dim
    task_results = [
        {
            "task": t,
            "n": r["n"],
            "metric": r["metric"],
            "dense_main": dense["tasks"][t]["main"],
            "pruned_main": r["main"],
            # every example of both models, when the rows kept them: runs that share examples can be paired later
            **(
                {"examples": {"dense": dense["tasks"][t]["examples"], "pruned": r["examples"]}}
                if "examples" in r and "examples" in dense["tasks"][t]
                else {}
            ),
        }
        for t, r in row["tasks"].items()
    ]
    return run_record(
        source="compare",
        model=config.model,
        method=row["method"],
        mask_config=row.get("mask_config"),
        target_sparsity=row["sparsity"],
        actual_sparsity=row.get("actual_sparsity", 1.0 - row["n_keep"] / hidden),
        n_keep=row["n_keep"],
        tasks=list(row["tasks"]),
        limit=config.limit,
        eval_config=config.eval_config().to_dict(),
        dense_avg=dense["avg"],
        pruned_avg=row["avg"],
        dense_ppl=dense["ppl"],
        pruned_ppl=row["ppl"],
        wall_time_s=row["wall_time_s"],
        task_results=task_results,
        paired=row.get("paired"),
        hidden_size=hidden,
        cache=config.cache,
        config=config.to_dict(),
    )


def run_sweep_job(config: dict[str, Any], ctx) -> dict[str, Any]:
    """The job behind the app's Sweep page (``ctx``: ``jobs.JobContext``): ``run_compare`` into the
    job's folder, with the worker's model, the evaluation cache (dense results reused) and the
    job's block log (a stopped or interrupted sweep resumes within the run it was in)."""
    from diet_explore.experiments.runs import RunStore

    cfg = CompareConfig.from_dict(config)
    out = ctx.folder / "sweep"
    ctx.log(f"Loading {cfg.model}…")
    model, tokenizer, info = ctx.load_model(cfg.model, cfg.device, cfg.dtype)
    rows = run_compare(
        cfg,
        out,
        model=model,
        tokenizer=tokenizer,
        info=info,
        store=RunStore(ctx.runs.root),
        progress=ctx.progress,
        log=ctx.log,
        eval_cache=EvalCache(),
        blocks=ScoreLog(ctx.folder / "blocks"),
        should_stop=ctx.should_stop,
    )
    return {"out": str(out), "runs": len(rows) - 1}
