"""One step of the tuning loop: prune a copy of the dense model with a mask, evaluate both on the
same held-out examples, and record the run.

The dense model's results are the same for every mask, so they come from ``dense_memo`` (results
this process already has, e.g. the app's shared memo), else from the evaluation cache on disk
that the CLI shares (``evaluation/evalcache.py``), and are computed only when neither has them.
"""

from __future__ import annotations

from collections.abc import Callable, MutableMapping
from typing import Any

from diet_explore.evaluation.evalcache import EvalCache, requests_fingerprint
from diet_explore.evaluation.evaluate import (
    EvalConfig,
    EvalResult,
    PairResult,
    eval_requests,
    evaluate_cached,
    evaluate_model,
    evaluate_pair,
)
from diet_explore.experiments.runs import RunStore, run_record
from diet_explore.pruning.slicing import count_parameters, prune_model

Progress = Callable[[float, str], None]
Log = Callable[[str], None]
DENSE_RESULTS_KEPT = 8  # dense results a memo holds (oldest dropped first)


def evaluate_dense(
    name: str,
    config: EvalConfig,
    model,
    tokenizer,
    progress: Progress | None = None,
    memo: MutableMapping | None = None,
    info: dict[str, Any] | None = None,
    eval_cache: EvalCache | None = None,
) -> tuple[EvalResult, bool]:
    """``name``'s evaluation for ``config`` and whether it was reused (from ``memo`` or the disk
    cache). The examples themselves are in the memo key: a cache folder profiled again changes the
    held-out draw without changing the config's text. Results are never mutated."""
    requests = eval_requests(config)
    key = (name, config.to_json(), requests_fingerprint(requests))
    if memo is not None and key in memo:
        return memo[key], True
    param = next(model.parameters())

    def compute():
        return evaluate_model(model, tokenizer, config, progress, "dense", requests), dict(info or {})

    result = evaluate_cached(
        name,
        config,
        requests,
        eval_cache if eval_cache is not None else EvalCache(),
        param.device.type,
        param.dtype,
        compute,
        label="dense",
    )
    if memo is not None:
        while len(memo) >= DENSE_RESULTS_KEPT:
            memo.pop(next(iter(memo)))  # oldest first (dicts keep insertion order)
        memo[key] = result
    return result, "cached" in result.extra


def model_nbytes(model) -> int:
    """Bytes of the model's parameters in memory."""
    return int(sum(p.numel() * p.element_size() for p in model.parameters()))


def pair_record(
    pair: PairResult,
    *,
    model: str,
    cache_path: str,
    manifest_hash: str,
    mask_config,
    n_keep: int,
    hidden_size: int,
    params: tuple[int, int],
    nbytes: tuple[int, int],
    source: str = "app",
) -> dict[str, Any]:
    """A dense-vs-pruned evaluation as a run-store record (``runs.run_record``), with the
    parameter counts, sizes and time per example of both models."""
    frame = pair.to_frame().reset_index()
    delta, lo, hi = pair.average_delta()
    n_examples = int(sum(r.n for r in pair.dense.tasks.values()))
    task_rows = [r for r in frame.to_dict(orient="records") if r["task"] != "average"]
    return run_record(
        source=source,
        model=model,
        method=mask_config.method,
        sparsity=1.0 - n_keep / hidden_size,
        n_keep=n_keep,
        tasks=list(pair.dense.tasks),
        limit=pair.dense.config.limit,
        dense_avg=pair.dense.average(),
        pruned_avg=pair.pruned.average(),
        delta_avg=delta,
        delta_avg_ci=(lo, hi),
        dense_ppl=pair.dense.perplexity,
        pruned_ppl=pair.pruned.perplexity,
        wall_time_s=pair.dense.wall_time_s + pair.pruned.wall_time_s,
        task_results=task_rows,
        paired=pair.paired(),
        hidden_size=hidden_size,
        cache=cache_path,
        cache_manifest_hash=manifest_hash,
        mask_config=mask_config.to_dict(),
        eval_config=pair.dense.config.to_dict(),
        parameters={"dense": params[0], "pruned": params[1]},
        bytes={"dense": nbytes[0], "pruned": nbytes[1]},
        seconds_per_example={
            "dense": pair.dense.wall_time_s / max(n_examples, 1),
            "pruned": pair.pruned.wall_time_s / max(n_examples, 1),
        },
        n_examples=n_examples,
    )


def prune_and_evaluate(
    model_name: str,
    mask,
    eval_config: EvalConfig,
    model,
    tokenizer,
    store: RunStore,
    *,
    cache_path: str,
    manifest_hash: str,
    info: dict[str, Any] | None = None,
    memo: MutableMapping | None = None,
    progress: Progress | None = None,
    log: Log | None = None,
) -> dict[str, Any]:
    """Prune a copy of ``model`` with ``mask`` (a ``MaskResult``; the loaded model is untouched),
    evaluate dense and pruned on the same examples, store the run and return its record (as stored)."""
    say = log or (lambda m: None)
    show = progress or (lambda f, m: None)
    say(f"Pruning to {mask.n_keep} hidden dims (a copy; the loaded model is untouched)…")
    pruned = prune_model(model, mask.keep, saveable=False)
    dense_result, reused = evaluate_dense(
        model_name, eval_config, model, tokenizer, lambda f, m: show(0.5 * f, f"dense: {m}"), memo, info
    )
    if reused:
        cached = dense_result.extra.get("cached")
        since = f" (evaluation cache, computed {cached['created']})" if cached else ""
        say(f"Dense results reused: same model and held-out examples as an earlier run{since}.")
    lo = 0.0 if reused else 0.5
    pair = evaluate_pair(
        model, pruned, tokenizer, eval_config, dense_result=dense_result, progress=lambda f, m: show(lo + (1 - lo) * f, m)
    )
    record = pair_record(
        pair,
        model=model_name,
        cache_path=cache_path,
        manifest_hash=manifest_hash,
        mask_config=mask.config,
        n_keep=mask.n_keep,
        hidden_size=mask.hidden_size,
        params=(count_parameters(model), count_parameters(pruned)),
        nbytes=(model_nbytes(model), model_nbytes(pruned)),
    )
    return store.load(store.save(record))  # the only write: a failure before it stores nothing
