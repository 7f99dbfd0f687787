"""Tune: a search over the vote's settings that reports, on examples it never saw, what tuning buys.

The search (Optuna, an optional extra: ``pip install 'diet-explore[tune]'``) proposes vote settings
(task weights, site, layer aggregation, last-k; τ when the vote keeps its own count) with a TPE
sampler. A trial's examples are its budget: the pruned model is scored on the *tuning* examples in
interleaved blocks (``evaluation/blocks.py``), the paired Δ against the dense model on the examples
scored so far is reported after every block, and the pruner (successive halving on the block ends
after a warm-up, or Hyperband) stops a trial that trails the others at the same number of examples.

The honest split. The held-out examples of every task (``evaluate.eval_requests``: never a
calibration example) are split once, by ``split_seed`` (recorded in the study and the report),
into a tuning and a test set. Trials only ever see the tuning set. When the search ends, the best
setting, the paper default, random, wiki and (llama family) SliceGPT are scored once on the test
set beside the dense model; the report states each paired comparison in a sentence and the gap
between the best trial's tuning-set estimate and its test-set estimate (how much the search
overfitted the tuning examples).

Fair comparisons. By default every candidate keeps exactly the target count (``exact``, as
``compare`` does), so the search cannot buy accuracy by keeping more dims; τ is then not read by
the vote (``vote.merge``) and is not searched. ``exact=False`` searches τ too and every mask keeps
the vote's own count; random and wiki are then built at the tuned mask's count.

Storage and resume: ``<run store>/tune/<name>.db`` (Optuna's SQLite storage) holds the trials;
``<run store>/tune/<name>/`` the blocks of examples scored (a trial of a mask scored before reuses
them) and ``report.json``. One process runs a study at a time (a lock); a trial left running by a
killed process is marked failed and its settings queued again, so a re-run with the same name
continues the study where it stopped.
"""

from __future__ import annotations

import hashlib
import logging
import math
import re
import time
import zlib
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from diet_explore.core import atomic
from diet_explore.core.config import JsonConfig, check_seed
from diet_explore.core.errors import DietError
from diet_explore.evaluation.blocks import ScoreLog, StopCheck, Stopped, block_bounds
from diet_explore.evaluation.evaluate import EvalConfig, eval_requests, evaluate_models
from diet_explore.evaluation.metrics import MAIN, paired_metrics
from diet_explore.evaluation.scoring import DEFAULT_BATCH_TOKENS, ChoiceScores
from diet_explore.masking.importance import LAYER_AGGS
from diet_explore.models.builtin import DEFAULT_MODEL
from diet_explore.tasks import data
from diet_explore.tasks.registry import Request, resolve_tasks

TUNE_DIR = "tune"
INSTALL_HINT = "pip install 'diet-explore[tune]'"
OBJECTIVES = {"main": "paired Δ of the main metric", "gold_ll_per_char": "paired Δ gold log-likelihood per char"}
PRUNERS = ("halving", "hyperband", "none")
BASELINES = ("default", "random", "wiki", "slicegpt")
# the search grid is the Mask builder's slider grid (its τ and weight steps), so the best setting is
# one the app's sliders can show exactly (tests/test_tune.py keeps the two in step)
THRESHOLD_RANGE, THRESHOLD_STEP = (0.1, 0.9), 0.05
WEIGHT_RANGE, WEIGHT_STEP = (0.0, 2.0), 0.1
MIN_RESOURCE = 4  # examples per task a trial is scored on before the pruner may stop it (1-2 examples say nothing)
# Successive halving's rule (``halving_stops``): at a rung a trial goes on only when its value is among
# the top 1/PRUNE_FACTOR of the values every trial had at that rung, and a rung prunes nothing until
# WARMUP_TRIALS earlier trials reached it (as MedianPruner's n_startup_trials: the first trials set the bar).
PRUNE_FACTOR = 3
WARMUP_TRIALS = 5
# a rung must leave at least this share of a trial's examples to come: a later stop saves little and
# costs the search a full value
RUNG_MAX_SHARE = 0.75
WEIGHT_PREFIX = "w_"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
Progress = Callable[[float, str], None]


def require_optuna():
    """The optuna module, or one line saying how to install it (the library imports without it)."""
    try:
        import optuna
    except ImportError:
        raise DietError(f"tuning needs Optuna, which is not installed: {INSTALL_HINT}") from None
    optuna.logging.set_verbosity(logging.WARNING)
    return optuna


# --------------------------------------------------------------------------------------------
# The configuration
# --------------------------------------------------------------------------------------------
@dataclass
class TuneConfig(JsonConfig):
    model: str = DEFAULT_MODEL
    cache: str = f"cache/{DEFAULT_MODEL}"
    name: str = "tune"  # the study: <run store>/tune/<name>.db; the same name continues it
    sparsity: float = 0.2  # target fraction of hidden dims pruned
    multiple_of: int = 1  # kept count rounded to a multiple of this
    exact: bool = True  # every candidate keeps the target count (τ then unused, not searched)
    trials: int | None = 30  # finished trials (complete, pruned or failed) the study reaches
    minutes: float | None = None  # wall-clock budget of this run's search (None: no limit)
    tasks: str | list[str] = "all"  # tasks evaluated (and weighted in the search: the cache's voting tasks)
    limit: int = 50  # held-out examples per task before the split (fewer where a task has fewer)
    test_fraction: float = 0.5  # share of each task's held-out examples kept for the final test
    split_seed: int = 0  # the tuning/test split
    objective: str = "main"  # one of OBJECTIVES
    fixed: dict[str, Any] = field(default_factory=dict)  # parameter -> value not searched (--fix)
    pruner: str = "halving"  # one of PRUNERS (successive halving on the block ends, after a warm-up)
    prefilter: int = 0  # >1: draw this many candidates per trial and evaluate the best by the live proxy
    sampler_seed: int = 0
    baselines: list[str] = field(default_factory=lambda: list(BASELINES))
    seed: int = data.DEFAULT_SEED  # the held-out draw (shared permutation with calibration)
    mask_seed: int = 0  # the random baseline
    batch_tokens: int = DEFAULT_BATCH_TOKENS
    device: str = "auto"
    dtype: str | None = None

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(str(self.name)):
            raise DietError(
                f"--name {self.name!r} is not a study name", "letters, digits, '.', '_' or '-', e.g. --name smollm2-0.2"
            )
        if not 0.0 < float(self.sparsity) < 1.0:
            raise DietError(f"--sparsity {self.sparsity} is outside (0, 1)", "e.g. --sparsity 0.2")
        self.sparsity = float(self.sparsity)
        if self.trials is None and self.minutes is None:
            raise DietError("no budget: neither --trials nor --minutes given", "e.g. --trials 30, or --minutes 60")
        if self.trials is not None and int(self.trials) < 1:
            raise DietError(f"--trials must be at least 1, got {self.trials}", "e.g. --trials 30")
        if self.minutes is not None and not (math.isfinite(float(self.minutes)) and float(self.minutes) > 0):
            raise DietError(f"--minutes must be a number > 0, got {self.minutes}", "e.g. --minutes 60")
        if not 0.0 < float(self.test_fraction) < 1.0:
            raise DietError(f"--test-fraction {self.test_fraction} is outside (0, 1)", "e.g. --test-fraction 0.5")
        if int(self.limit) < 2:
            raise DietError(f"--limit must be at least 2 (a tuning and a test example), got {self.limit}", "e.g. --limit 50")
        for key, choices in (("objective", OBJECTIVES), ("pruner", PRUNERS)):
            if getattr(self, key) not in choices:
                raise DietError(f"unknown --{key} {getattr(self, key)!r}", f"choose one of {', '.join(choices)}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown:
            raise DietError(f"unknown baseline(s): {', '.join(unknown)}", f"choose from {', '.join(BASELINES)}")
        if int(self.prefilter) < 0:
            raise DietError(f"--prefilter must be 0 (off) or a number of candidates, got {self.prefilter}", "e.g. --prefilter 8")
        check_seed(self.split_seed, "--split-seed")
        check_seed(self.sampler_seed, "--sampler-seed")
        check_seed(self.seed, "--seed")

    def eval_config(self) -> EvalConfig:
        """The held-out draw and scoring settings (no perplexity: the search is on the tasks)."""
        return EvalConfig(
            tasks=self.tasks,
            limit=self.limit,
            clip_limit=True,
            seed=self.seed,
            batch_tokens=self.batch_tokens,
            device=self.device,
            dtype=self.dtype,
            perplexity=False,
            exclude_cache=self.cache,
        )

    def fingerprint(self) -> dict[str, Any]:
        """What the trials' values depend on: a study continued with other values is refused. The
        budget, how the search proceeds (pruner, prefilter, sampler seed), the baselines and the device
        are not part of it."""
        out = self.to_dict()
        for k in ("trials", "minutes", "baselines", "device", "prefilter", "batch_tokens", "pruner", "sampler_seed"):
            out.pop(k)
        return out


def study_paths(root: str | Path, name: str) -> tuple[Path, Path]:
    """(the study's SQLite file, its folder of blocks and report) in run store ``root``."""
    base = Path(root) / TUNE_DIR
    return base / f"{name}.db", base / name


def storage_url(db: Path) -> str:
    return f"sqlite:///{Path(db).resolve()}"


def study_storage(db: Path):
    """Optuna's SQLite storage of ``db``, opened under a lock on ``db``'s schema: opening creates
    the tables when they are missing, and two processes creating them at once (a tune starting while
    the Tune page or another reader opens the file) collide with "table … already exists"."""
    optuna = require_optuna()
    with atomic.locked(Path(db).with_name(Path(db).name + ".schema")):
        return optuna.storages.RDBStorage(storage_url(db))


def load_study(db: Path, name: str):
    """The stored study ``name`` of ``db``, for reading its trials (KeyError when there is none)."""
    return require_optuna().load_study(study_name=name, storage=study_storage(db))


# --------------------------------------------------------------------------------------------
# The split
# --------------------------------------------------------------------------------------------
def split_requests(
    requests: dict[str, list[Request]], seed: int, test_fraction: float
) -> tuple[dict[str, list[Request]], dict[str, list[Request]]]:
    """(tuning, test): each task's held-out requests split once by a seeded permutation (the same
    for a task whatever the other tasks are), in their draw order; at least one of each per task."""
    tuning, test = {}, {}
    for task, reqs in requests.items():
        if len(reqs) < 2:
            raise DietError(
                f"task {task} has {len(reqs)} held-out example(s): too few to split", "raise --limit or drop the task"
            )
        order = np.random.default_rng([int(seed), zlib.crc32(task.encode())]).permutation(len(reqs))
        n_test = min(len(reqs) - 1, max(1, round(len(reqs) * test_fraction)))
        in_test = set(int(i) for i in order[:n_test])
        test[task] = [r for i, r in enumerate(reqs) if i in in_test]
        tuning[task] = [r for i, r in enumerate(reqs) if i not in in_test]
    return tuning, test


def doc_ids(requests: dict[str, list[Request]]) -> dict[str, list[int]]:
    return {t: [int(r.doc_id) for r in reqs] for t, reqs in requests.items()}


# --------------------------------------------------------------------------------------------
# The search space
# --------------------------------------------------------------------------------------------
def search_space(config: TuneConfig, cache) -> dict[str, tuple]:
    """Parameter -> ("float", lo, hi) | ("int", lo, hi) | ("choice", options), fixed ones included."""
    space: dict[str, tuple] = {}
    if not config.exact:
        space["threshold"] = ("float", *THRESHOLD_RANGE, THRESHOLD_STEP)
    for t in cache.task_names:
        space[WEIGHT_PREFIX + t] = ("float", *WEIGHT_RANGE, WEIGHT_STEP)
    space["site"] = ("choice", list(cache.sites))
    space["layer_agg"] = ("choice", list(LAYER_AGGS))
    space["last_k"] = ("int", 1, int(cache.num_layers))  # only read with layer_agg = last_k
    return space


def parse_fixed(items: list[str], space: dict[str, tuple]) -> dict[str, Any]:
    """``["threshold=0.5", "boolq=2", "site=residual"]`` -> {param: value}, checked against ``space``
    (a task name stands for its weight)."""
    fixed: dict[str, Any] = {}
    for item in items:
        key, sep, raw = (s.strip() for s in item.partition("="))
        if not sep or not key or not raw:
            raise DietError(f"bad --fix {item!r}: expected name=value", "e.g. --fix threshold=0.5 or --fix boolq=2")
        if key not in space and WEIGHT_PREFIX + key in space:
            key = WEIGHT_PREFIX + key
        if key == "threshold" and key not in space:
            raise DietError(
                "--fix threshold: τ is not read when every mask keeps the target count (--exact, the default)",
                "add --no-exact to search or fix τ, with each mask at the vote's own count",
            )
        if key not in space:
            names = [k.removeprefix(WEIGHT_PREFIX) for k in space]
            raise DietError(f"--fix {key}: not a searched setting here", f"one of {', '.join(names)}")
        fixed[key] = check_fixed(key, raw, space[key])
    return fixed


def check_fixed(key: str, value: Any, spec: tuple) -> Any:
    kind = spec[0]
    if kind == "choice":
        if str(value) not in spec[1]:
            raise DietError(f"--fix {key}={value}: not one of {', '.join(spec[1])}", f"e.g. --fix {key}={spec[1][0]}")
        return str(value)
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise DietError(f"--fix {key}={value}: not a number", f"a number in [{spec[1]}, {spec[2]}]") from None
    if kind == "int":
        if v != int(v) or not spec[1] <= v <= spec[2]:
            raise DietError(f"--fix {key}={value}: not a whole number in [{spec[1]}, {spec[2]}]", f"e.g. --fix {key}={spec[1]}")
        return int(v)
    if key == "threshold" and not 0.0 <= v <= 1.0 or key != "threshold" and not (math.isfinite(v) and v >= 0):
        raise DietError(f"--fix {key}={value}: out of range", "τ in [0, 1]; weights ≥ 0")
    return v


def suggest(trial, space: dict[str, tuple], fixed: dict[str, Any]) -> dict[str, Any]:
    """The trial's full parameter set: searched ones from the sampler, fixed ones as given;
    last_k is asked only when layer_agg is last_k (define-by-run: it is read only then)."""
    params: dict[str, Any] = {}
    for name, spec in space.items():
        if name == "last_k" and params.get("layer_agg") != "last_k":
            continue
        if name in fixed:
            params[name] = fixed[name]
        elif spec[0] == "float":
            params[name] = round(trial.suggest_float(name, spec[1], spec[2], step=spec[3]), 6)
        elif spec[0] == "int":
            params[name] = trial.suggest_int(name, spec[1], spec[2])
        else:
            params[name] = trial.suggest_categorical(name, spec[1])
    return params


def mask_config(params: dict[str, Any], config: TuneConfig):
    """The ``MaskConfig`` a parameter set stands for."""
    from diet_explore.masking.build import MaskConfig

    weights = {k.removeprefix(WEIGHT_PREFIX): float(v) for k, v in params.items() if k.startswith(WEIGHT_PREFIX)}
    return MaskConfig(
        sparsity=config.sparsity,
        threshold=float(params.get("threshold", 0.5)),
        weights={t: w for t, w in weights.items() if w != 1.0},
        site=params.get("site", "residual"),
        layer_agg=params.get("layer_agg", "mean"),
        last_k=int(params.get("last_k", 4)),
        exact=config.exact,
        multiple_of=config.multiple_of,
    )


def mask_label(mc) -> str:
    """The mask's label (``MaskConfig.label()`` where the library has it)."""
    if hasattr(mc, "label"):
        return mc.label()
    parts = [mc.method]
    if not mc.exact:
        parts.append(f"τ{mc.threshold:g}")
    parts += [f"{t}×{w:.2g}" for t, w in sorted(mc.weights.items())]
    if mc.site != "residual":
        parts.append(mc.site)
    if mc.layer_agg != "mean":
        parts.append(mc.layer_agg + (f"{mc.last_k}" if mc.layer_agg == "last_k" else ""))
    return " ".join(parts)


def mask_key(keep: np.ndarray) -> str:
    return hashlib.sha256(np.packbits(np.asarray(keep, dtype=bool)).tobytes()).hexdigest()[:12]


def proxy_value(pre, keep: np.ndarray) -> float:
    """The live proxy (``masking/proxy.py``): kept activation energy at the residual stream, mean over tasks."""
    from diet_explore.masking.proxy import kept_share

    site = "residual" if "residual" in pre.cache.sites else pre.cache.sites[0]
    return float(np.mean([kept_share(pre, keep, t, site, power=2) for t in pre.cache.task_names]))


# --------------------------------------------------------------------------------------------
# Scoring
# --------------------------------------------------------------------------------------------
def objective_of(paired: dict[str, Any], objective: str) -> tuple[float | None, dict[str, Any]]:
    """(the objective's value, its entry) from ``metrics.paired_metrics``' result: the average over tasks."""
    e = paired["average"][MAIN if objective == "main" else objective]
    return e["delta"], e


def _by_task(scored: dict[tuple[str, int], ChoiceScores], requests: dict[str, list[Request]]) -> dict[str, list[ChoiceScores]]:
    return {t: [scored[(r.task, r.doc_id)] for r in reqs if (r.task, r.doc_id) in scored] for t, reqs in requests.items()}


def paired(a, b, requests: dict[str, list[Request]]) -> dict[str, Any]:
    """``paired_metrics`` of ``b`` against ``a`` (b − a) on the examples both scored (dicts keyed by (task, doc id))."""
    specs = {s.name: s for s in resolve_tasks(list(requests))}
    return paired_metrics(_by_task(a, requests), _by_task(b, requests), specs)


def score(
    models: dict[str, Any],
    tokenizer,
    ecfg: EvalConfig,
    requests: dict[str, list[Request]],
    log: ScoreLog,
    on_block=None,
    should_stop: StopCheck | None = None,
    progress: Progress | None = None,
) -> dict[str, dict[tuple[str, int], ChoiceScores]]:
    """Every model on ``requests`` in interleaved blocks (finished blocks kept in ``log``): the one
    place a tune scores examples, so a test can watch which examples each phase sees."""
    results = evaluate_models(models, tokenizer, ecfg, progress, requests, log=log, on_block=on_block, should_stop=should_stop)
    return {label: {(s.task, s.doc_id): s for s in r.scores} for label, r in results.items()}


# --------------------------------------------------------------------------------------------
# Saying the answer (``evaluation/decision.py`` owns the sentence and the format)
# --------------------------------------------------------------------------------------------
def shown(value: float | None, objective: str, entry: dict[str, Any] | None = None) -> str:
    """A value in its metric's unit (``decision.SCALES``), with ``entry``'s interval when given."""
    from diet_explore.evaluation.decision import SCALES, format_estimate

    metric = MAIN if objective == "main" else objective
    if entry is not None:
        return format_estimate(entry.get("delta"), entry.get("ci_low"), entry.get("ci_high"), metric, unit=True)
    if value is None:
        return "—"
    scale = SCALES[metric]
    return f"{value * scale.factor:+.{scale.digits}f}{scale.unit}".replace("-", "\u2212")


def sentence(candidate: str, reference: str, entry: dict[str, Any], objective: str) -> str:
    from diet_explore.evaluation.decision import decide

    return decide(entry, candidate=candidate, reference=reference, metric=MAIN if objective == "main" else objective).sentence


# --------------------------------------------------------------------------------------------
# The search
# --------------------------------------------------------------------------------------------
def rungs(per_task: int) -> list[int]:
    """The examples per task at which the pruner may stop a trial: the block ends (``blocks.block_bounds``,
    where a trial reports its value) from ``MIN_RESOURCE`` on, while at least 1 − ``RUNG_MAX_SHARE`` of
    the examples are still to come. Every trial reports at the same ends, so trials are compared on the
    same examples."""
    ends = [b for _, b in block_bounds(per_task)]
    return [e for e in ends if MIN_RESOURCE <= e <= RUNG_MAX_SHARE * per_task]


def halving_stops(value: float, others: list[float], factor: int = PRUNE_FACTOR, warmup: int = WARMUP_TRIALS) -> bool:
    """Successive halving at one rung: stop a trial whose ``value`` there is below the top 1/``factor``
    of all values at that rung (``others``: the other trials' values there, its own included in the
    ranking; ties go on); never while fewer than ``warmup`` other trials reached the rung."""
    if len(others) < warmup:
        return False
    ranked = sorted([*others, value], reverse=True)
    return value < ranked[max(1, len(ranked) // factor) - 1]


def make_pruner(optuna, name: str, per_task: int):
    """The study's pruner for ``per_task`` tuning examples per task. ``halving`` (the default):
    ``halving_stops`` at each of ``rungs(per_task)``; ``hyperband``: Optuna's, from the first rung to the
    end (a share of its trials fall in brackets that never stop early)."""
    if name == "none":
        return optuna.pruners.NopPruner()
    at = rungs(per_task)
    if name == "hyperband":
        low = at[0] if at else per_task
        return optuna.pruners.HyperbandPruner(min_resource=low, max_resource=max(per_task, low), reduction_factor=PRUNE_FACTOR)

    class RungHalving(optuna.pruners.BasePruner):
        """``halving_stops`` at the rungs: values compared at exactly the same examples per task."""

        def prune(self, study, trial) -> bool:
            step = trial.last_step
            if step not in at:
                return False
            others = [
                t.intermediate_values[step]
                for t in study.get_trials(deepcopy=False)
                if t.number != trial.number and step in t.intermediate_values
            ]
            return halving_stops(trial.intermediate_values[step], others)

    return RungHalving()


def open_study(config: TuneConfig, root: str | Path, resume: bool = False, pruner_examples: int = 1):
    """The study (created, or continued when ``name`` exists with the same settings)."""
    optuna = require_optuna()
    db, _ = study_paths(root, config.name)
    if resume and not db.exists():
        raise DietError(f"no study {config.name!r} in {db.parent}", "start it without --resume, or check --name and --runs")
    db.parent.mkdir(parents=True, exist_ok=True)
    n_before = 0
    storage = study_storage(db)
    if db.exists():
        try:
            n_before = len(optuna.load_study(study_name=config.name, storage=storage).trials)
        except KeyError:
            n_before = 0
    study = optuna.create_study(
        study_name=config.name,
        storage=storage,
        direction="maximize",
        sampler=optuna.samplers.TPESampler(seed=config.sampler_seed + n_before, multivariate=True),
        pruner=make_pruner(optuna, config.pruner, pruner_examples),
        load_if_exists=True,
    )
    stored = study.user_attrs.get("config")
    fingerprint = config.fingerprint()
    if stored is None:
        study.set_user_attr("config", fingerprint)
    elif stored != fingerprint:
        differ = [k for k in fingerprint if stored.get(k) != fingerprint[k]]
        raise DietError(
            f"study {config.name!r} was run with other settings ({', '.join(f'{k}: {stored.get(k)!r}, now {fingerprint[k]!r}' for k in differ)})",
            "continue it with its settings, or give a new --name",
        )
    return study


def finished_trials(study) -> list:
    """The trials that count toward the budget: complete, pruned, or failed because their settings
    built no mask; not a trial a killed run left behind (asked again) nor a candidate the proxy skipped."""
    return finished_trials_of(study.get_trials(deepcopy=False))


def finished_trials_of(trials: list) -> list:
    from optuna.trial import TrialState

    return [
        t
        for t in trials
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or (t.state == TrialState.FAIL and "error" in t.user_attrs)
    ]


def trial_rows(study) -> list[dict[str, Any]]:
    """One row per trial (number, state, value, settings, label, kept count, examples scored, proxy):
    what the app's table and plots read."""
    rows = []
    for t in study.get_trials(deepcopy=False):
        if t.user_attrs.get("skipped"):
            continue
        rows.append(
            {
                "number": t.number,
                "state": t.state.name.lower(),
                "value": t.value
                if t.value is not None
                else (t.intermediate_values[max(t.intermediate_values)] if t.intermediate_values else None),
                "params": dict(t.user_attrs.get("params") or t.params),
                "label": t.user_attrs.get("label"),
                "n_keep": t.user_attrs.get("n_keep"),
                "examples": t.user_attrs.get("examples"),
                "proxy": t.user_attrs.get("proxy"),
                "seconds": (t.datetime_complete - t.datetime_start).total_seconds()
                if t.datetime_complete and t.datetime_start
                else None,
            }
        )
    return rows


def savings(study, n_tuning: int) -> dict[str, int]:
    """Example-evaluations the pruner saved: every evaluated trial run to the end would have scored
    ``n_tuning`` examples (``full``); ``scored`` is what they did score. A trial whose mask a finished
    trial had (``reused``) is scored by neither way of running, so it counts in neither."""
    finished = [t for t in finished_trials(study) if t.user_attrs.get("examples") is not None]
    trials = [t for t in finished if "reused_from" not in t.user_attrs]
    scored = sum(int(t.user_attrs["examples"]) for t in trials)
    full = n_tuning * len(trials)
    return {"trials": len(trials), "scored": scored, "full": full, "saved": full - scored, "reused": len(finished) - len(trials)}


def param_importance(study) -> dict[str, float]:
    """Each searched parameter's share of the objective's variance over the complete trials
    (Optuna's fANOVA); empty with fewer than 2 complete trials or nothing that varies."""
    optuna = require_optuna()
    from optuna.trial import TrialState

    complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
    if len(complete) < 2 or len({t.value for t in complete}) < 2:
        return {}
    try:
        imp = optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))
    except (RuntimeError, ValueError):  # e.g. no parameter varied in every trial
        return {}
    return {k: float(v) for k, v in imp.items()}


def run_tune(
    config: TuneConfig,
    root: str | Path,
    *,
    model=None,
    tokenizer=None,
    info=None,
    resume: bool = False,
    progress: Progress | None = None,
    log: Callable[[str], None] = print,
    should_stop: StopCheck | None = None,
    on_trial: Callable[[dict[str, Any]], None] | None = None,
) -> dict[str, Any]:
    """Run (or continue) the study ``config.name`` in run store ``root`` until its budget is spent,
    then score the best setting and the baselines once on the test set; returns the report (also
    written to ``<root>/tune/<name>/report.json``). ``on_trial(summary)`` after every trial."""
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.masking.importance import as_precompute
    from diet_explore.profiling.cache import load_cache

    require_optuna()
    from optuna.trial import TrialState

    report = progress or (lambda f, m: None)
    stop = should_stop or (lambda: None)
    # everything that can be checked without the model is, before it loads
    cache = load_cache(config.cache)
    pre = as_precompute(cache)
    ecfg = config.eval_config()
    requests = eval_requests(ecfg)
    tuning, test = split_requests(requests, config.split_seed, config.test_fraction)
    space = search_space(config, cache)
    fixed = {k: check_fixed(k, v, space[k]) for k, v in config.fixed.items() if k in space}
    unknown = [k for k in config.fixed if k not in space]
    if unknown:
        raise DietError(f"--fix {unknown[0]}: not a searched setting here", f"one of {', '.join(space)}")
    default_mc = MaskConfig(sparsity=config.sparsity, exact=config.exact, multiple_of=config.multiple_of)
    default_mask = build_mask(pre, default_mc)
    n_tuning = sum(len(r) for r in tuning.values())
    per_task = max(len(r) for r in tuning.values())
    db, folder = study_paths(root, config.name)
    study = open_study(config, root, resume, per_task)
    study.set_user_attr("split", {"seed": config.split_seed, "tuning": doc_ids(tuning), "test": doc_ids(test)})
    with atomic.locked(folder / "study", timeout=0, in_use=f"study {config.name!r} is being run by another process"):
        stale = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.RUNNING]
        for t in stale:  # its process was killed: fail it and ask its settings again
            study.tell(t.number, state=TrialState.FAIL)
            if t.params:
                study.enqueue_trial(t.params, skip_if_exists=False)
        if stale:
            log(f"{len(stale)} trial(s) left running by a stopped run: marked failed, their settings queued again")
        if model is None:
            from diet_explore.models.loading import load_model

            log(f"Loading {config.model}…")
            model, tokenizer, info = load_model(config.model, config.device, config.dtype)
        if int(model.config.hidden_size) != cache.hidden_size:
            raise DietError(
                f"{config.model} has hidden size {model.config.hidden_size}, the cache is for {cache.hidden_size}",
                "use the model the score cache was profiled from",
            )
        from diet_explore.pruning.slicing import prune_model

        blocks_tuning = ScoreLog(folder / "blocks" / "tuning")
        log(f"Dense model on the {n_tuning} tuning examples…")
        dense = score({"dense": model}, tokenizer, ecfg, tuning, blocks_tuning, should_stop=stop)["dense"]
        bounds = block_bounds(per_task)
        done = len(finished_trials(study))
        start = time.monotonic()
        deadline = start + 60 * config.minutes if config.minutes else math.inf
        by_mask = {
            t.user_attrs["mask"]: t
            for t in study.get_trials(deepcopy=False)
            if t.state == TrialState.COMPLETE and "mask" in t.user_attrs
        }
        log(f"study {config.name}: {done} trial(s) finished before; split seed {config.split_seed}")

        def budget_left() -> bool:
            return (config.trials is None or done < config.trials) and time.monotonic() < deadline

        while budget_left():
            if why := stop():
                raise Stopped(why)
            trial, params, mc, mask = _ask(study, space, fixed, config, pre, build_mask)
            if mask is None:
                done += 1
                continue
            key = mask_key(mask.keep)
            trial.set_user_attr("examples", 0)
            if key in by_mask:  # the same kept dims as a finished trial: the same model, the same value
                trial.set_user_attr("reused_from", by_mask[key].number)
                study.tell(trial, by_mask[key].value)
                log(f"trial {trial.number}: the same kept dims as trial {by_mask[key].number}, its value reused")
                done += 1
                _after(on_trial, study, n_tuning, config, done)
                continue
            label = f"mask-{key}"
            pruned = prune_model(model, mask.keep, saveable=False)
            scored: dict[tuple[str, int], ChoiceScores] = {}
            prune_at: list[int] = []

            def on_block(unit, scores, scored=scored, prune_at=prune_at, trial=trial):
                scored.update(((s.task, s.doc_id), s) for s in scores)
                value, _ = objective_of(paired(dense, scored, tuning), config.objective)
                step = bounds[unit.index][1]
                if value is not None:
                    trial.report(value, step)
                    # a trial at its last block has its full value: stopping it there saves nothing
                    if step < bounds[-1][1] and trial.should_prune():
                        prune_at.append(step)

            def trial_stop(prune_at=prune_at):
                return "pruned" if prune_at else stop()

            msg = f"trial {trial.number} ({mask_label(mc)})"
            report(done / max(config.trials or 1, 1), msg)
            try:
                score({label: pruned}, tokenizer, ecfg, tuning, blocks_tuning, on_block, trial_stop)
            except Stopped as s:
                if s.reason != "pruned":
                    raise
            finally:
                del pruned
            trial.set_user_attr("examples", len(scored))  # what was scored, blocks in flight at the stop included
            if prune_at and len(scored) < n_tuning:  # (in flight to the end: it has its full value, so it completes)
                study.tell(trial, state=TrialState.PRUNED)
                log(f"{msg}: pruned after {prune_at[0]} examples per task")
            else:
                value, entry = objective_of(paired(dense, scored, tuning), config.objective)
                trial.set_user_attr("entry", entry)
                study.tell(trial, value)
                by_mask[key] = study.trials[trial.number]
                log(f"{msg}: {shown(value, config.objective)} vs dense on the tuning set")
            done += 1
            _after(on_trial, study, n_tuning, config, done)
        complete = [t for t in study.get_trials(deepcopy=False) if t.state == TrialState.COMPLETE]
        if not complete:
            raise DietError("no trial finished: the budget ended before the first trial did", "raise --trials or --minutes")
        report(0.9, "final evaluation on the test set")
        out = final_evaluation(
            config, study, pre, model, tokenizer, info, ecfg, tuning, test, dense, default_mask, folder, stop, log, report
        )
    out["savings"] = savings(study, n_tuning)
    out["importance"] = param_importance(study)
    atomic.write_json(folder / "report.json", out)
    report(1.0, "done")
    return out


def _ask(study, space, fixed, config: TuneConfig, pre, build_mask):
    """The next trial to evaluate, its params, MaskConfig and mask (mask None: the settings build no
    mask, the trial is failed). With ``prefilter`` > 1, that many candidates are drawn and the one
    the live proxy ranks first is evaluated; the others are recorded as skipped (failed, which the
    sampler ignores)."""
    from optuna.trial import TrialState

    candidates = []
    for _ in range(max(1, int(config.prefilter))):
        trial = study.ask()
        params = suggest(trial, space, fixed)
        trial.set_user_attr("params", params)
        try:
            mc = mask_config(params, config)
            mask = build_mask(pre, mc)
        except DietError as exc:
            trial.set_user_attr("error", exc.message)
            study.tell(trial, state=TrialState.FAIL)
            if config.prefilter > 1:
                continue
            return trial, params, None, None
        proxy = proxy_value(pre, mask.keep)
        trial.set_user_attr("proxy", proxy)
        trial.set_user_attr("label", mask_label(mc))
        trial.set_user_attr("n_keep", mask.n_keep)
        trial.set_user_attr("mask", mask_key(mask.keep))
        trial.set_user_attr("config", mc.to_dict())
        candidates.append((proxy, trial, params, mc, mask))
    if not candidates:
        return None, None, None, None
    candidates.sort(key=lambda c: -c[0])
    for _, trial, *_ in candidates[1:]:
        trial.set_user_attr("skipped", True)
        study.tell(trial, state=TrialState.FAIL)
    _, trial, params, mc, mask = candidates[0]
    return trial, params, mc, mask


def _after(on_trial, study, n_tuning: int, config: TuneConfig, done: int) -> None:
    if on_trial is not None:
        on_trial(summary(study, n_tuning, config, done))


def summary(study, n_tuning: int, config: TuneConfig, done: int) -> dict[str, Any]:
    """What a running tune shows: every trial, the best so far, the savings."""
    rows = trial_rows(study)
    complete = [r for r in rows if r["state"] == "complete" and r["value"] is not None]
    best = max(complete, key=lambda r: r["value"]) if complete else None
    return {"trials": rows, "best": best, "done": done, "budget": config.trials, "savings": savings(study, n_tuning)}


def final_evaluation(
    config, study, pre, model, tokenizer, info, ecfg, tuning, test, dense_tuning, default_mask, folder, stop, log, report
) -> dict[str, Any]:
    """The best trial's mask, the paper default and the baselines, scored once on the test set
    beside the dense model; every comparison as a decision sentence; the tuning-vs-test gap."""
    from diet_explore.masking.build import MaskConfig, build_mask
    from diet_explore.pruning.slicing import prune_model

    best = study.best_trial
    best_mc = MaskConfig.from_dict(best.user_attrs["config"])
    best_mask = build_mask(pre, best_mc)
    n_keep = best_mask.n_keep
    same_count = 1.0 - n_keep / best_mask.hidden_size
    models: dict[str, Any] = {"dense": model, "tuned": prune_model(model, best_mask.keep, saveable=False)}
    labels = {"tuned": mask_label(best_mc), "dense": "dense"}
    # stored blocks are named by what was scored (the kept dims), so a study continued to another best
    # never reuses the blocks of the earlier one
    stored = {"dense": "dense", "tuned": f"mask-{mask_key(best_mask.keep)}", "slicegpt": f"slicegpt-{n_keep}"}
    notes: dict[str, str] = {}
    builds = {
        "default": lambda: default_mask,
        "random": lambda: build_mask(pre, MaskConfig(method="random", sparsity=same_count, seed=config.mask_seed)),
        "wiki": lambda: build_mask(pre, MaskConfig(method="wiki", sparsity=same_count)),
    }
    for name in config.baselines:
        if name == "slicegpt":
            rotated = _slicegpt(model, tokenizer, pre.cache, n_keep, info, notes, log)
            if rotated is not None:
                models["slicegpt"], labels["slicegpt"] = rotated, "SliceGPT"
            continue
        try:
            m = builds[name]()
        except DietError as exc:
            notes[name] = exc.message
            continue
        models[name] = prune_model(model, m.keep, saveable=False)
        labels[name] = "paper default (diet)" if name == "default" else name
        stored[name] = f"mask-{mask_key(m.keep)}"
    log(f"Final evaluation on the {sum(len(r) for r in test.values())} test examples: {', '.join(models)}…")
    as_stored = {stored[k]: m for k, m in models.items()}  # two masks with the same kept dims are scored once
    scored_by = score(
        as_stored,
        tokenizer,
        ecfg,
        test,
        ScoreLog(folder / "blocks" / "test"),
        should_stop=stop,
        progress=lambda f, m: report(0.9 + 0.1 * f, m),
    )
    scored = {k: scored_by[stored[k]] for k in models}
    obj = config.objective
    vs_dense = {k: paired(scored["dense"], scored[k], test) for k in models if k != "dense"}
    versus = {k: paired(scored[k], scored["tuned"], test) for k in models if k not in ("dense", "tuned")}
    sentences = [sentence(f"tuned ({labels['tuned']})", labels[k], objective_of(p, obj)[1], obj) for k, p in versus.items()]
    tuning_value = best.value
    test_value = objective_of(vs_dense["tuned"], obj)[0]
    gap = None if test_value is None else tuning_value - test_value
    sentences.append(
        f"overfitting: the best trial's Δ vs dense was {shown(tuning_value, obj, best.user_attrs.get('entry'))} on the "
        f"tuning set and {shown(None, obj, objective_of(vs_dense['tuned'], obj)[1])} on the test set "
        f"(tuning − test gap {shown(gap, obj)})"
    )
    return {
        "name": config.name,
        "config": config.to_dict(),
        "objective": obj,
        "split": {"seed": config.split_seed, "tuning": doc_ids(tuning), "test": doc_ids(test)},
        "best": {
            "trial": best.number,
            "params": best.user_attrs.get("params"),
            "mask": best_mc.to_dict(),
            "label": labels["tuned"],
            "n_keep": n_keep,
            "tuning_value": tuning_value,
        },
        "labels": labels,
        "notes": notes,
        "test": {
            "vs_dense": {k: {m: p["average"][m] for m in (MAIN, "gold_ll_per_char")} for k, p in vs_dense.items()},
            "tuned_minus": {k: {m: p["average"][m] for m in (MAIN, "gold_ll_per_char")} for k, p in versus.items()},
            # every example of every model: an independent bootstrap can check each sentence
            "examples": {k: {t: examples_of_sorted(v, t) for t in test} for k, v in scored.items()},
        },
        "gap": gap,
        "sentences": sentences,
    }


def examples_of_sorted(scored: dict[tuple[str, int], ChoiceScores], task: str) -> dict[str, list]:
    from diet_explore.evaluation.metrics import examples_of

    return examples_of(sorted((s for (t, _), s in scored.items() if t == task), key=lambda s: s.doc_id))


def _slicegpt(model, tokenizer, cache, n_keep: int, info, notes: dict[str, str], log) -> Any:
    """SliceGPT at ``n_keep`` calibrated on the cache's task samples (llama family only), or None with a note."""
    family = getattr(model.config, "model_type", None)
    if family != "llama":
        notes["slicegpt"] = f"SliceGPT is compared on llama-family models only (this is {family or 'unknown'})"
        return None
    try:
        from diet_explore.pruning.pca import calibration_from_cache, slicegpt_model

        sequences, weights, cal = calibration_from_cache(cache, tokenizer, "tasks")
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
        log("SliceGPT: rotating and slicing…")
        return slicegpt_model(model, sequences, weights, n_keep, pad_id=pad_id, info=cal)
    except DietError as exc:
        notes["slicegpt"] = exc.message
        return None


def run_tune_job(config: dict[str, Any], ctx) -> dict[str, Any]:
    """The job behind the app's Tune page (``ctx``: ``jobs.JobContext``): ``run_tune`` in the job
    store's run store, with the worker's model; every finished trial updates the partial result."""
    cfg = TuneConfig.from_dict(config)
    require_optuna()
    ctx.log(f"Loading {cfg.model}…")
    model, tokenizer, info = ctx.load_model(cfg.model, cfg.device, cfg.dtype)
    out = run_tune(
        cfg,
        ctx.runs.root,
        model=model,
        tokenizer=tokenizer,
        info=info,
        progress=ctx.progress,
        log=ctx.log,
        should_stop=ctx.should_stop,
        on_trial=ctx.partial,
    )
    db, folder = study_paths(ctx.runs.root, cfg.name)
    return {"report": str(folder / "report.json"), "study": str(db), "sentences": out["sentences"], "best": out["best"]}


def proxy_recall(rows: list[dict[str, Any]], k: int) -> dict[str, Any]:
    """How well the live proxy pre-filter finds the best trials: of the ``k`` complete trials with the
    best objective (full evaluation), the share that are among the ``k`` the proxy ranks first;
    ``chance`` is what a random ranking gets on average (k / n). Trials that share a mask count once."""
    seen, done = set(), []
    for r in rows:
        if r["state"] == "complete" and r["value"] is not None and r.get("proxy") is not None and r["label"] not in seen:
            seen.add(r["label"])
            done.append(r)
    n = len(done)
    if n < k or k < 1:
        raise DietError(f"{n} complete trials with distinct masks: too few for best-{k} recall", "run more trials")
    by_value = {r["number"] for r in sorted(done, key=lambda r: -r["value"])[:k]}
    by_proxy = {r["number"] for r in sorted(done, key=lambda r: -r["proxy"])[:k]}
    return {"k": k, "n": n, "recall": len(by_value & by_proxy) / k, "chance": k / n}
