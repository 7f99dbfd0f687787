"""Quick evaluation: zero-shot accuracy on held-out examples and wiki perplexity, dense vs pruned.

Examples come from ``data.evaluation_ids``: never among the calibration draw (the default
profile's first ``n_calibration`` of the seeded permutation, plus a cache's recorded sample ids
when one is given), so a mask is never scored on the examples it was built from. Scores use the
shared task formatting and ``scoring.LoglikelihoodScorer`` (lm-eval's tokenization); the rules
that turn scores into numbers (acc, acc_norm, the main metric, stderrs, paired CIs) are in
``metrics.py``.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from diet_explore.core.config import JsonConfig, check_seed
from diet_explore.core.errors import DietError
from diet_explore.evaluation.blocks import ScoreLog, StopCheck, Stopped, Unit, score_blocks
from diet_explore.evaluation.evalcache import CachedEval, EvalCache
from diet_explore.evaluation.metrics import MAIN, PAIRED_METRICS, TaskResult, average_stderr, paired_metrics, task_result
from diet_explore.evaluation.parallel import default_workers
from diet_explore.evaluation.scoring import DEFAULT_BATCH_TOKENS, ChoiceScores, LoglikelihoodScorer, perplexity
from diet_explore.models.tokens import bos_prefix
from diet_explore.tasks import data, wiki
from diet_explore.tasks.registry import Request, resolve_tasks

Progress = Callable[[float, str], None]
PPL_WINDOW = 128


@dataclass
class EvalConfig(JsonConfig):
    tasks: str | list[str] = "all"  # "all" or names from the task registry
    limit: int = 50  # held-out examples per task
    clip_limit: bool = False  # True: a task with fewer held-out examples than `limit` uses all it has
    seed: int = data.DEFAULT_SEED  # the seeded permutation shared with calibration (disjointness)
    batch_size: int = 8  # perplexity windows per forward; also the --batch_size of the lm_eval command
    batch_tokens: int = DEFAULT_BATCH_TOKENS  # padded-token budget of one scoring pass (scoring.py)
    device: str = "auto"
    dtype: str | None = None  # None: fp32 on CPU, bf16 on GPU (models.pick_dtype)
    perplexity: bool = True
    ppl_windows: int = 32  # held-out wiki windows of 128 tokens
    exclude_cache: str | None = None  # a score cache whose recorded calibration ids are excluded too
    exclude_masks: list[str] = field(default_factory=list)  # mask files whose recorded calibration ids are excluded too
    n_calibration: int = 100  # size of the default profile's calibration draw (excluded)
    workers: int | None = None  # forward passes side by side; None: 2 on a multi-core CPU, 1 on GPU (parallel.py)

    def __post_init__(self) -> None:
        self.limit, self.ppl_windows = int(self.limit), int(self.ppl_windows)
        check_seed(self.seed, "--seed")
        if isinstance(self.tasks, list):  # --tasks rte,rte: one task, evaluated and named once
            self.tasks = list(dict.fromkeys(self.tasks))
        if self.limit < 1:
            raise DietError(f"--limit must be at least 1, got {self.limit}", "e.g. --limit 50")
        if self.ppl_windows < 1 and self.perplexity:
            raise DietError(
                f"--ppl-windows must be at least 1, got {self.ppl_windows}", "e.g. --ppl-windows 32, or --no-perplexity"
            )
        if self.workers is not None and int(self.workers) < 1:
            raise DietError(
                f"--workers must be at least 1, got {self.workers}", "e.g. --workers 2, or leave it out for the default"
            )
        self.exclude_masks = [str(p) for p in self.exclude_masks]
        if self.batch_tokens < 64:
            raise DietError(
                f"--batch-tokens must be at least 64, got {self.batch_tokens}",
                f"e.g. --batch-tokens {DEFAULT_BATCH_TOKENS} (the default), or leave it out",
            )


# --------------------------------------------------------------------------------------------
# Examples
# --------------------------------------------------------------------------------------------
def calibration_exclusions(config: EvalConfig) -> tuple[dict[str, set[int]], int]:
    """Per task, the example ids a held-out draw must avoid besides the default draw: the samples
    recorded in ``exclude_cache``'s manifest and in every ``exclude_masks`` file; and how much of
    the seeded permutation's head to avoid (the default draw, or a cache's larger one)."""
    from diet_explore.masking.maskfile import calibration_ids_of, load_mask
    from diet_explore.profiling.cache import read_manifest

    found: list[dict[str, list[int]]] = []
    n_cal = config.n_calibration
    if config.exclude_cache:
        manifest = read_manifest(config.exclude_cache)
        found.append(calibration_ids_of(manifest))
        n_cal = max(n_cal, int(manifest.get("config", {}).get("samples") or 0))
    for path in config.exclude_masks:
        found.append(load_mask(path).calibration_ids or {})
    excluded: dict[str, set[int]] = {}
    for ids in found:
        for task, values in ids.items():
            excluded.setdefault(task, set()).update(int(i) for i in values)
    return excluded, n_cal


def eval_requests(config: EvalConfig) -> dict[str, list[Request]]:
    """The held-out requests of every configured task (deterministic in the config and the files it
    names). Called before a model loads, so it also refuses a perplexity window count no tokenizer could give."""
    specs = resolve_tasks(config.tasks)
    if config.perplexity:
        wiki.check_heldout_windows(config.ppl_windows, PPL_WINDOW)
    excluded, n_cal = calibration_exclusions(config)
    out = {}
    for spec in specs:
        ids = data.evaluation_ids(
            spec, config.limit, config.seed, frozenset(excluded.get(spec.name, ())), n_cal, clip=config.clip_limit
        )
        out[spec.name] = data.requests_for(spec, ids)
    return out


@dataclass
class EvalResult:
    model_name: str
    config: EvalConfig
    tasks: dict[str, TaskResult]
    perplexity: float | None
    scores: list[ChoiceScores] = field(repr=False)  # per request, as scored; what the eval cache stores
    wall_time_s: float
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def predictions(self) -> list[dict[str, Any]]:
        """Per-example records (task, doc id, log-likelihoods, gold, predictions) for the JSONL audit file."""
        return [_prediction_record(s) for s in self.scores]

    def task_scores(self, task: str) -> list[ChoiceScores]:
        """``task``'s scored requests, in request order."""
        return [s for s in self.scores if s.task == task]

    def task_metrics(self) -> dict[str, dict[str, float]]:
        return {t: r.metrics() for t, r in self.tasks.items()}

    def average(self) -> float:
        """Unweighted mean of the per-task main metric (the paper-style 'Avg' column)."""
        return float(np.mean([r.metrics()["main"] for r in self.tasks.values()]))

    def to_frame(self):
        import pandas as pd

        rows = [{"task": t, **m} for t, m in self.task_metrics().items()]
        rows.append(
            {
                "task": "average",
                "n": sum(r.n for r in self.tasks.values()),
                "main": self.average(),
                "main_stderr": average_stderr([r.metrics()["main_stderr"] for r in self.tasks.values()]),
            }
        )
        return pd.DataFrame(rows).set_index("task")

    def to_json_dict(self) -> dict[str, Any]:
        return {
            "model": self.model_name,
            "config": self.config.to_dict(),
            "tasks": self.task_metrics(),
            "average": self.average(),
            "perplexity": self.perplexity,
            "wall_time_s": self.wall_time_s,
            **self.extra,
        }


def evaluate_model(
    model,
    tokenizer,
    config: EvalConfig,
    progress: Progress | None = None,
    model_name: str | None = None,
    requests: dict[str, list[Request]] | None = None,
    **blocks: Any,
) -> EvalResult:
    """Score the held-out examples of every task (and wiki perplexity) with one model, in blocks
    interleaved across tasks (``blocks.py``; ``log``, ``on_block`` and ``should_stop`` go there)."""
    name = model_name or str(getattr(model.config, "_name_or_path", "") or "model")
    return evaluate_models({name: model}, tokenizer, config, progress, requests, **blocks)[name]


def evaluate_models(
    models: dict[str, Any],
    tokenizer,
    config: EvalConfig,
    progress: Progress | None = None,
    requests: dict[str, list[Request]] | None = None,
    *,
    log: ScoreLog | None = None,
    on_block: Callable[[Unit, list[ChoiceScores]], None] | None = None,
    should_stop: StopCheck | None = None,
) -> dict[str, EvalResult]:
    """Score the same held-out examples with several models (label -> model, one tokenizer), their
    blocks interleaved (block 0 of each, block 1 of each, ...), so paired numbers between them
    exist from the first block; then each model's wiki perplexity. ``log`` keeps finished blocks
    (a resume reuses them); ``on_block`` sees each; ``should_stop`` can stop between forward
    passes (``blocks.Stopped``). A result's wall time is its share of the scoring time (by its
    forward passes' time) plus its own perplexity time."""
    start = time.perf_counter()
    report = progress or (lambda f, m: None)
    requests = requests if requests is not None else eval_requests(config)
    share = 0.85 if config.perplexity else 1.0
    # the wiki windows first: too many asked for is an error before minutes of scoring, not after
    windows = heldout_wiki_windows(tokenizer, config.ppl_windows) if config.perplexity else None
    scorers = {
        label: LoglikelihoodScorer(model, tokenizer, batch_tokens=config.batch_tokens, workers=config.workers)
        for label, model in models.items()
    }
    busy = dict.fromkeys(models, 0.0)
    scores = score_blocks(
        scorers,
        requests,
        log=log,
        on_block=on_block,
        should_stop=should_stop,
        progress=lambda f, m: report(share * f, m),
        busy=busy,
    )
    scored_s = time.perf_counter() - start
    ppl: dict[str, float | None] = dict.fromkeys(models)
    ppl_s = dict.fromkeys(models, 0.0)
    for label, model in models.items():
        if windows is not None:
            if should_stop is not None and (why := should_stop()):
                raise Stopped(why)
            report(share, f"{label}: wiki perplexity" if len(models) > 1 else "wiki perplexity")
            t0 = time.perf_counter()
            ppl[label] = perplexity(model, windows, bos_prefix(tokenizer), config.batch_size, config.workers)
            ppl_s[label] = time.perf_counter() - t0
    report(1.0, "done")
    total_busy = sum(busy.values())
    out = {}
    for label in models:
        scoring = scored_s * (busy[label] / total_busy if total_busy else 1 / len(models))
        out[label] = result_from_scores(label, config, requests, scores[label], ppl[label], scoring + ppl_s[label])
    return out


def result_from_scores(
    name: str,
    config: EvalConfig,
    requests: dict[str, list[Request]],
    scores: list[ChoiceScores],
    ppl: float | None,
    wall_time_s: float,
) -> EvalResult:
    """The result of per-request scores (in request order): per-task metrics; predictions derive from the scores."""
    specs = {s.name: s for s in resolve_tasks(list(requests))}
    by_task: dict[str, list[ChoiceScores]] = {}
    for s in scores:
        by_task.setdefault(s.task, []).append(s)
    tasks = {t: task_result(specs[t], by_task.get(t, [])) for t in requests}
    return EvalResult(name, config, tasks, ppl, list(scores), wall_time_s)


def cached_result(
    name: str,
    config: EvalConfig,
    requests: dict[str, list[Request]],
    cache: EvalCache | None,
    device: str,
    dtype,
    label: str | None = None,
) -> EvalResult | None:
    """THE evaluation-cache lookup (app jobs, ``eval``, ``compare``): ``name``'s stored evaluation
    of these requests with these settings, device and dtype (``extra["cached"]`` says where
    from), or None (no cache, a model the key cannot describe, no entry). ``label`` names a reused
    result as its caller would have (the entry's label is its first caller's)."""
    key = cache.key_for(name, requests, config, device, dtype) if cache is not None else None
    entry = cache.load(key, requests) if key else None
    if entry is None:
        return None
    result = result_from_cache(entry, config, requests, str(cache.path(key)))
    result.model_name = label or entry.info.get("name") or result.model_name
    return result


def evaluate_cached(
    name: str,
    config: EvalConfig,
    requests: dict[str, list[Request]],
    cache: EvalCache | None,
    device: str,
    dtype,
    compute: Callable[[], tuple[EvalResult, dict[str, Any]]],
    label: str | None = None,
) -> EvalResult:
    """``name``'s evaluation from ``cache`` (``cached_result``); else ``compute()`` (the result and
    the model's ``ModelInfo.to_dict()``), stored for next time. ``cache=None`` always computes."""
    hit = cached_result(name, config, requests, cache, device, dtype, label)
    if hit is not None:
        return hit
    key = cache.key_for(name, requests, config, device, dtype) if cache is not None else None
    path = cache.path(key) if key else None
    if path is not None and (path.exists() or path.is_symlink()) and not path.is_file():  # said now, not after the run
        warnings.warn(f"eval cache entry {path} is not a file, so this evaluation will not be stored there", stacklevel=2)
        key = None
    result, info = compute()
    if key:
        made_with = {
            "batch_tokens": config.batch_tokens,
            "workers": config.workers or default_workers(device),
            "batch_size": config.batch_size,
        }
        try:
            cache.save(key, result, info, made_with)
        except (OSError, DietError) as exc:  # a read-only or full disk costs the next run time, never this run's result
            warnings.warn(
                f"could not store the evaluation in {cache.root} ({exc}); it will be recomputed next time", stacklevel=2
            )
    return result


def result_from_cache(entry: CachedEval, config: EvalConfig, requests: dict[str, list[Request]], path: str = "") -> EvalResult:
    """The result a cached evaluation stands for (``EvalCache.load`` checked that its examples are
    ``requests``); ``extra["cached"]`` says where it came from."""
    flat = [r for reqs in requests.values() for r in reqs]
    scores = [ChoiceScores.from_stored(r, s) for r, s in zip(flat, entry.scores)]
    result = result_from_scores(entry.model_name, config, requests, scores, entry.perplexity, entry.wall_time_s)
    result.extra["cached"] = {"path": path, "created": entry.created, "made_with": entry.made_with}
    return result


def _prediction_record(s: ChoiceScores) -> dict[str, Any]:
    return {
        "task": s.task,
        "doc_id": s.doc_id,
        "lls": [round(x, 6) for x in s.lls],
        "is_greedy": s.is_greedy,
        "gold": s.gold,
        "pred": s.pred,
        "pred_norm": s.pred_norm,
        "correct": int(s.pred == s.gold),
    }


def heldout_wiki_windows(tokenizer, n_windows: int = 32) -> np.ndarray:
    """(n_windows, PPL_WINDOW) held-out wiki token windows (the second half of the windows;
    calibration uses the first); a ``DietError`` when the text has fewer."""
    windows = wiki.wiki_token_windows(tokenizer, PPL_WINDOW)
    return windows[wiki.wiki_heldout_ids(len(windows), n_windows)]


# --------------------------------------------------------------------------------------------
# Dense vs pruned
# --------------------------------------------------------------------------------------------
@dataclass
class PairResult:
    dense: EvalResult
    pruned: EvalResult
    _paired: dict[str, Any] | None = field(default=None, init=False, repr=False, compare=False)

    def paired(self) -> dict[str, Any]:
        """Every paired metric per task and averaged (``metrics.paired_metrics``), computed once."""
        if self._paired is None:
            specs = {s.name: s for s in resolve_tasks(list(self.dense.tasks))}
            dense = {t: self.dense.task_scores(t) for t in self.dense.tasks}
            pruned = {t: self.pruned.task_scores(t) for t in self.dense.tasks}
            self._paired = paired_metrics(dense, pruned, specs)
        return self._paired

    def task_deltas(self) -> dict[str, dict[str, float]]:
        """Per task, flat ``delta_<metric>``, ``delta_<metric>_ci_low`` and ``_ci_high`` columns for
        ``PAIRED_METRICS`` and ``main`` (NaN where ``paired()`` has None)."""
        return {t: _flat(entries) for t, entries in self.paired()["tasks"].items()}

    def average_delta(self) -> tuple[float, float, float]:
        """Mean over tasks of the paired main-metric delta, with its 95% CI (``metrics.average_paired``)."""
        e = self.paired()["average"][MAIN]
        return _num(e["delta"]), _num(e["ci_low"]), _num(e["ci_high"])

    def to_frame(self):
        import pandas as pd

        rows = []
        dm, pm, deltas = self.dense.task_metrics(), self.pruned.task_metrics(), self.task_deltas()
        for t in dm:
            row = {"task": t, "n": dm[t]["n"], "metric": dm[t]["main_metric"]}
            for key in ("acc", "acc_norm", "main"):
                row[f"dense_{key}"], row[f"dense_{key}_stderr"] = dm[t][key], dm[t][f"{key}_stderr"]
                row[f"pruned_{key}"], row[f"pruned_{key}_stderr"] = pm[t][key], pm[t][f"{key}_stderr"]
            row.update(deltas[t])
            rows.append(row)
        rows.append(
            {
                "task": "average",
                "n": sum(r["n"] for r in rows),
                "metric": "main",
                "dense_main": self.dense.average(),
                "pruned_main": self.pruned.average(),
                **_flat(self.paired()["average"]),
            }
        )
        return pd.DataFrame(rows).set_index("task")

    def predictions(self) -> list[dict[str, Any]]:
        """Per example: the dense and pruned records side by side."""
        out = []
        for d, p in zip(self.dense.predictions, self.pruned.predictions):
            out.append(
                {
                    "task": d["task"],
                    "doc_id": d["doc_id"],
                    "gold": d["gold"],
                    "dense_lls": d["lls"],
                    "dense_pred": d["pred"],
                    "dense_pred_norm": d["pred_norm"],
                    "pruned_lls": p["lls"],
                    "pruned_pred": p["pred"],
                    "pruned_pred_norm": p["pred_norm"],
                }
            )
        return out

    def to_json_dict(self) -> dict[str, Any]:
        """Both results, and ``deltas[task][metric]`` / ``deltas["average"][metric]`` =
        ``{"delta", "ci_low", "ci_high", "n", "note"?}`` for ``PAIRED_METRICS`` and ``main``;
        ``average_delta`` repeats the paper-style average (main metric)."""
        paired = self.paired()
        main = paired["average"][MAIN]
        return {
            "dense": self.dense.to_json_dict(),
            "pruned": self.pruned.to_json_dict(),
            "deltas": {**paired["tasks"], "average": paired["average"]},
            "average_delta": {k: main[k] for k in ("delta", "ci_low", "ci_high", "n")},
        }


def _num(x: float | None) -> float:
    return float("nan") if x is None else float(x)


def _flat(entries: dict[str, dict[str, Any]]) -> dict[str, float]:
    """``{metric: entry}`` -> ``delta_<metric>``, ``delta_<metric>_ci_low``, ``delta_<metric>_ci_high``."""
    out = {}
    for metric in (*PAIRED_METRICS, MAIN):
        e = entries[metric]
        out |= {f"delta_{metric}": _num(e["delta"]), f"delta_{metric}_ci_low": _num(e["ci_low"])}
        out[f"delta_{metric}_ci_high"] = _num(e["ci_high"])
    return out


def evaluate_pair(
    dense,
    pruned,
    tokenizer,
    config: EvalConfig,
    progress: Progress | None = None,
    names: tuple[str, str] = ("dense", "pruned"),
    dense_result: EvalResult | None = None,
) -> PairResult:
    """Both models on the same held-out examples. ``dense_result`` reuses an earlier dense run
    (same config), which is how comparison sweeps evaluate the dense model once."""
    report = progress or (lambda f, m: None)
    requests = eval_requests(config)
    if dense_result is not None:
        check_same_examples(dense_result, requests)
    if dense_result is None:
        dense_result = evaluate_model(dense, tokenizer, config, lambda f, m: report(0.5 * f, f"dense: {m}"), names[0], requests)
        lo = 0.5
    else:
        lo = 0.0
    pruned_result = evaluate_model(
        pruned, tokenizer, config, lambda f, m: report(lo + (1 - lo) * f, f"pruned: {m}"), names[1], requests
    )
    return PairResult(dense_result, pruned_result)


def check_same_examples(result: EvalResult, requests: dict[str, list[Request]]) -> None:
    """A paired delta means something only on the same examples: refuse a reused result made on others."""
    expected = [(t, r.doc_id) for t, reqs in requests.items() for r in reqs]
    got = [(s.task, s.doc_id) for s in result.scores]
    if got != expected:
        differ = (
            f"{len(got)} examples, not {len(expected)}"
            if len(got) != len(expected)
            else f"{sum(a != b for a, b in zip(got, expected))} of {len(expected)} examples differ"
        )
        raise DietError(
            f"the earlier result of {result.model_name} was computed on other examples ({differ})",
            "evaluate both models with the same tasks, limit, seed and calibration exclusions",
        )
